//! A reference model of a volume: every write also goes to a sparse local "shadow" file, and the
//! set of pages ever written is kept, so that the volume can be compared with the shadow over
//! exactly the written ranges (plus some never-written pages, which must read as zeroes).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const PAGE: u64 = 4096;

pub struct Shadow {
    file: File,
    pub size: u64,
    pub written_pages: BTreeSet<u64>,
    pub bytes_written: u64,
}

impl Shadow {
    pub fn create(path: &Path, size: u64) -> Result<Shadow> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Shadow {
            file,
            size,
            written_pages: BTreeSet::new(),
            bytes_written: 0,
        })
    }

    /// Records a write that was made to the volume.
    pub fn record(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, offset)?;
        let first = offset / PAGE;
        let last = (offset + data.len() as u64 - 1) / PAGE;
        self.written_pages.extend(first..=last);
        self.bytes_written += data.len() as u64;
        Ok(())
    }

    /// Contiguous runs of written pages, as (first page, page count), runs capped at 256 pages.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for page in &self.written_pages {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == *page && *count < 256 => *count += 1,
                _ => runs.push((*page, 1)),
            }
        }
        runs
    }

    /// Compares `volume` (an open file or device) with the shadow over every written page, and
    /// over `unwritten_samples` random never-written pages (which must be zero).
    pub fn verify(&self, volume: &File, unwritten_samples: usize, seed: u64) -> Result<()> {
        let mut expected = vec![0u8; 256 * PAGE as usize];
        let mut actual = vec![0u8; 256 * PAGE as usize];
        for (first, count) in self.runs() {
            let len = (count * PAGE) as usize;
            let offset = first * PAGE;
            let len = len.min((self.size - offset) as usize);
            self.file.read_exact_at(&mut expected[..len], offset)?;
            volume
                .read_exact_at(&mut actual[..len], offset)
                .with_context(|| format!("read {len} bytes at {offset} from the volume"))?;
            if expected[..len] != actual[..len] {
                let at = expected[..len]
                    .iter()
                    .zip(&actual[..len])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!(
                    "volume differs from the shadow at byte {} (page {}): expected {:#04x}, read {:#04x}",
                    offset + at as u64,
                    (offset + at as u64) / PAGE,
                    expected[at],
                    actual[at]
                );
            }
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let pages = self.size / PAGE;
        let mut checked = 0;
        let mut page_buf = vec![0u8; PAGE as usize];
        for _ in 0..unwritten_samples * 4 {
            if checked >= unwritten_samples {
                break;
            }
            let page = rng.random_range(0..pages);
            if self.written_pages.contains(&page) {
                continue;
            }
            volume.read_exact_at(&mut page_buf, page * PAGE)?;
            if page_buf.iter().any(|b| *b != 0) {
                bail!("never-written page {page} does not read as zeroes");
            }
            checked += 1;
        }
        Ok(())
    }
}

/// Random writes: offsets anywhere in `[0, size)`, lengths 1 byte to `max_len`, random bytes.
pub struct RandomWrites {
    rng: SmallRng,
    size: u64,
    max_len: usize,
    buffer: Vec<u8>,
}

impl RandomWrites {
    pub fn new(seed: u64, size: u64, max_len: usize) -> RandomWrites {
        RandomWrites {
            rng: SmallRng::seed_from_u64(seed),
            size,
            max_len,
            buffer: vec![0u8; max_len],
        }
    }

    /// The next write: (offset, data). Half are page-aligned whole pages, like a filesystem's.
    pub fn next_write(&mut self) -> (u64, &[u8]) {
        let aligned = self.rng.random_bool(0.5);
        let (offset, len) = if aligned {
            let pages = self
                .rng
                .random_range(1..=(self.max_len as u64 / PAGE).max(1));
            let offset = self.rng.random_range(0..self.size / PAGE - pages) * PAGE;
            (offset, (pages * PAGE) as usize)
        } else {
            let len = self.rng.random_range(1..=self.max_len);
            let offset = self.rng.random_range(0..self.size - len as u64);
            (offset, len)
        };
        self.rng.fill_bytes(&mut self.buffer[..len]);
        (offset, &self.buffer[..len])
    }
}

impl Shadow {
    /// The expected bytes of one page.
    pub fn page(&self, page: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; PAGE as usize];
        self.file.read_exact_at(&mut buf, page * PAGE)?;
        Ok(buf)
    }
}

/// Writes `bytes` more from `writes`, fsync'ing after each write, and records every
/// acknowledged write in `shadow` (the load of the membership-change tests).
pub fn write_fsynced(
    volume: &std::fs::File,
    shadow: &mut Shadow,
    writes: &mut RandomWrites,
    bytes: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let target = shadow.bytes_written + bytes;
    while shadow.bytes_written < target {
        let (offset, data) = writes.next_write();
        volume.write_all_at(data, offset)?;
        shadow.record(offset, data)?;
        volume.sync_all()?;
    }
    Ok(())
}

/// A writer thread that writes and fsyncs 1 MiB rounds of random writes, recording each
/// acknowledged one, until stopped: the application load of the repair and drain tests.
pub struct BackgroundLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shadow: std::sync::Arc<std::sync::Mutex<Shadow>>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl BackgroundLoad {
    /// Starts writing to `volume` (of `volume_bytes`), writes chosen by `seed`.
    pub fn start(
        volume: &std::fs::File,
        shadow: Shadow,
        seed: u64,
        volume_bytes: u64,
    ) -> Result<BackgroundLoad> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let shadow = Arc::new(Mutex::new(shadow));
        let (volume, stopping, shared) = (volume.try_clone()?, stop.clone(), shadow.clone());
        let thread = std::thread::spawn(move || -> Result<u64> {
            let mut writes = RandomWrites::new(seed, volume_bytes, 64 << 10);
            let mut rounds = 0;
            while !stopping.load(Ordering::Relaxed) {
                let mut shadow = shared.lock().expect("the load thread owns the shadow");
                write_fsynced(&volume, &mut shadow, &mut writes, 1 << 20)?;
                rounds += 1;
            }
            Ok(rounds)
        });
        Ok(BackgroundLoad {
            stop,
            shadow,
            thread,
        })
    }

    /// Stops the writer: the shadow, and how many rounds it completed (an error if a write or
    /// an fsync failed).
    pub fn stop(self) -> Result<(Shadow, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let shadow = std::sync::Arc::try_unwrap(self.shadow)
            .map_err(|_| anyhow::anyhow!("the shadow is still shared"))?
            .into_inner()
            .map_err(|_| anyhow::anyhow!("the shadow's lock is poisoned"))?;
        Ok((shadow, rounds))
    }
}
