//! Writing page images into a page store's slots: runs of consecutive slots go down in one write
//! each, and the page data bypasses the page cache (O_DIRECT) where the file system allows it.
//!
//! Folding and hydration write many pages at once, often consecutive ones (a database's file
//! written in order, a peer's pages scanned in slot order). One write per page, through the page
//! cache, cost more CPU than the disk's time (copies into the cache, then writeback): on this
//! project's 2-core test machines that capped hydration well below the disk's speed. A run is
//! copied once into an aligned scratch buffer and written with O_DIRECT; its meta entries go in
//! one buffered write. The caller fsyncs both files afterwards, as before (fdatasync covers the
//! block allocations of direct writes too).
//!
//! Where O_DIRECT is refused (tmpfs on older kernels, some network file systems) the data goes
//! through the page cache instead, with the same runs. Reads stay buffered: Linux keeps them
//! coherent with direct writes (a direct write invalidates the cached pages it covers).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sixfold_proto::PAGE_SIZE;

/// Alignment O_DIRECT needs of buffers, offsets and lengths (the page size covers every
/// logical block size in use).
const ALIGN: usize = 4096;
/// Most pages in one write (bounds the scratch buffer).
pub const RUN_PAGES_MAX: usize = 256;

#[derive(Debug)]
pub struct SlotWriter {
    /// `pages.dat` opened with O_DIRECT, when the file system allows it.
    direct: Option<File>,
    scratch: Vec<u8>,
}

impl SlotWriter {
    pub fn open(data_path: &Path) -> SlotWriter {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(data_path)
            .ok();
        SlotWriter {
            direct,
            scratch: Vec::new(),
        }
    }

    /// Writes `pages` (each [`PAGE_SIZE`] bytes) to consecutive slots from `first_slot` on.
    pub fn write_run(&mut self, data: &File, first_slot: u64, pages: &[&[u8]]) -> io::Result<()> {
        let len = pages.len() * PAGE_SIZE;
        let offset = first_slot * PAGE_SIZE as u64;
        if self.scratch.len() < len + ALIGN {
            self.scratch
                .resize(len.max(RUN_PAGES_MAX * PAGE_SIZE) + ALIGN, 0);
        }
        let start = (ALIGN - self.scratch.as_ptr() as usize % ALIGN) % ALIGN;
        let buffer = &mut self.scratch[start..start + len];
        for (chunk, page) in buffer.chunks_exact_mut(PAGE_SIZE).zip(pages) {
            chunk.copy_from_slice(page);
        }
        if let Some(direct) = &self.direct {
            match direct.write_all_at(buffer, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        "direct write refused ({e}); writing pages through the page cache"
                    );
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        data.write_all_at(buffer, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// Direct and page-cache writes put the same bytes at the same slots, and reads through the
    /// page cache see direct writes at once.
    #[test]
    fn direct_and_buffered_runs_write_the_same_bytes() {
        let temp = TempDir::new("pagewrite");
        let pages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; PAGE_SIZE]).collect();
        let refs: Vec<&[u8]> = pages.iter().map(|p| &p[..]).collect();
        let mut images = Vec::new();
        for direct in [true, false] {
            let path = temp.path().join(format!("pages-{direct}.dat"));
            let data = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .expect("create");
            let mut writer = SlotWriter::open(&path);
            if !direct {
                writer.direct = None;
            }
            // Cache a page first, so that a stale cached copy would show.
            data.write_all_at(&[9u8; PAGE_SIZE], 3 * PAGE_SIZE as u64)
                .expect("buffered write");
            writer.write_run(&data, 2, &refs[..3]).expect("run");
            writer.write_run(&data, 7, &refs[3..]).expect("run");
            let mut read = vec![0u8; 9 * PAGE_SIZE];
            data.read_exact_at(&mut read, 0).expect("read");
            images.push(read);
        }
        assert_eq!(images[0], images[1]);
        let slot = |i: usize| &images[0][i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        assert!(slot(0).iter().all(|b| *b == 0));
        assert!(
            slot(3).iter().all(|b| *b == 2),
            "the direct write replaced the cached page"
        );
        assert!(slot(8).iter().all(|b| *b == 5));
    }
}
