//! Issue 5, test 1: a crash loop. Each round mounts the volume (recovering it), checks it, runs a
//! load, and kill -9s the mount at a random moment (and, in some rounds, one or two nodes first).
//!
//! The load: SQLite in WAL mode with synchronous=FULL and in DELETE mode with synchronous=EXTRA
//! (each on ext4 on the volume, each recording every committed id outside the volume), and a raw
//! writer that writes blocks past the end of the file system and records every block an fsync
//! covered. The checks, at the start of every round: ext4 mounts (replaying its journal) and
//! `fsck.ext4 -n -f` finds nothing; `PRAGMA integrity_check` is ok; every recorded commit and
//! every recorded block is there.
//!
//! `SIXFOLD_CRASH_ROUNDS` sets the number of rounds (20 by default), `SIXFOLD_CRASH_SEED` the
//! random choices (kill moments and victims); a failing run prints both.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sixfold_tests::{pattern, require_fuse, run, test_dir, unmount_lazily, Cluster, Mount};

const VOLUME: &str = "crash";
const FS_BYTES: u64 = 1 << 30;
/// The raw writer's blocks start here, past the end of the file system.
const RAW_BASE: u64 = FS_BYTES + (256 << 20);
const BLOCK: usize = 4096;

/// Lazily unmounts the file system when the test ends, passed or failed.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_lazily(&self.0);
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

struct Paths {
    fs: PathBuf,
    raw_log: PathBuf,
}

impl Paths {
    fn db(&self, mode: &str) -> PathBuf {
        self.fs.join(format!("{mode}.db"))
    }

    fn commit_log(&self, dir: &Path, mode: &str) -> PathBuf {
        dir.join(format!("committed-{mode}.txt"))
    }
}

/// Loop-mounts ext4 from the volume file at `fs` (replaying its journal after a crash).
fn mount_fs(volume: &Path, fs: &Path) -> Result<()> {
    run(Command::new("mount")
        .args(["-o", "loop,noinit_itable"])
        .arg(volume)
        .arg(fs))
    .map(drop)
}

/// Everything the volume must hold after a crash.
fn verify(dir: &Path, paths: &Paths, mount: &Mount) -> Result<()> {
    let volume = mount.volume_path();
    mount_fs(&volume, &paths.fs).context("mount ext4 after the crash")?;
    run(Command::new("umount").arg(&paths.fs))?;
    run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&volume))
        .context("fsck.ext4 -n -f finds problems")?;
    mount_fs(&volume, &paths.fs)?;
    for mode in ["wal", "delete"] {
        let out = run(Command::new("python3")
            .arg(script("sqlite_verify.py"))
            .arg(paths.db(mode))
            .arg(paths.commit_log(dir, mode)))
        .with_context(|| format!("SQLite ({mode}) after the crash"))?;
        eprint!("  {out}");
    }
    let file = mount.open_volume()?;
    let mut blocks = 0;
    if let Ok(log) = File::open(&paths.raw_log) {
        for line in BufReader::new(log).lines() {
            let line = line?;
            let mut fields = line.split_whitespace();
            let (Some(offset), Some(seed)) = (fields.next(), fields.next()) else {
                continue;
            };
            let (offset, seed): (u64, u64) = (offset.parse()?, seed.parse()?);
            let mut data = vec![0u8; BLOCK];
            file.read_exact_at(&mut data, offset)?;
            ensure!(
                data == pattern(seed, BLOCK),
                "raw block at {offset} (seed {seed}) that an fsync covered is not there"
            );
            blocks += 1;
        }
    }
    eprintln!("  raw: all {blocks} fsync'd blocks present");
    Ok(())
}

fn start_load(dir: &Path, paths: &Paths, mode: &str) -> Result<Child> {
    Command::new("python3")
        .arg(script("sqlite_load.py"))
        .arg(paths.db(mode))
        .arg(paths.commit_log(dir, mode))
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the SQLite load")
}

/// Writes blocks from `next` on through the volume file, fsyncs every 8, and records the blocks
/// each returned fsync covered. Runs until `stop` or an error (the mount was killed).
fn raw_writer(volume: File, log: PathBuf, mut next: u64, stop: Arc<AtomicBool>) -> u64 {
    let Ok(mut log) = File::options().create(true).append(true).open(&log) else {
        return next;
    };
    let mut unsynced = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let offset = RAW_BASE + next * BLOCK as u64;
        let seed = next + 1;
        if volume.write_all_at(&pattern(seed, BLOCK), offset).is_err() {
            break;
        }
        next += 1;
        unsynced.push((offset, seed));
        if unsynced.len() == 8 {
            if volume.sync_all().is_err() {
                break;
            }
            for (offset, seed) in unsynced.drain(..) {
                let _ = writeln!(log, "{offset} {seed}");
            }
        }
    }
    next
}

#[test]
fn killing_the_mount_again_and_again_loses_no_acknowledged_write() -> Result<()> {
    require_fuse();
    let rounds = env_u64("SIXFOLD_CRASH_ROUNDS", 20);
    let seed = env_u64("SIXFOLD_CRASH_SEED", 1);
    let dir = test_dir("crash_loop");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mnt = dir.join("mnt");
    let paths = Paths {
        fs: dir.join("fs"),
        raw_log: dir.join("raw-fsynced.txt"),
    };
    std::fs::create_dir_all(&paths.fs)?;
    let _unmount = Unmount(paths.fs.clone());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut raw_next = 0u64;
    let context = |round: u64| {
        format!(
            "round {round} of {rounds} (SIXFOLD_CRASH_SEED={seed} SIXFOLD_CRASH_ROUNDS={rounds})"
        )
    };

    for round in 0..=rounds {
        let mount = Mount::start(&cluster, VOLUME, "2G", &mnt).with_context(|| context(round))?;
        if round == 0 {
            run(Command::new("mkfs.ext4")
                .args([
                    "-F",
                    "-q",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                ])
                .arg(mount.volume_path())
                .arg(format!("{}k", FS_BYTES / 1024)))?;
            mount_fs(&mount.volume_path(), &paths.fs)?;
        } else {
            eprintln!("round {round}: checking after the crash");
            verify(&dir, &paths, &mount).with_context(|| context(round))?;
        }
        if round == rounds {
            run(Command::new("umount").arg(&paths.fs))?;
            mount.unmount()?;
            break;
        }

        // The load, then a kill -9 at a random moment.
        let mut loads = vec![
            start_load(&dir, &paths, "wal")?,
            start_load(&dir, &paths, "delete")?,
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let raw = {
            let (volume, log, stop) = (mount.open_volume()?, paths.raw_log.clone(), stop.clone());
            let next = raw_next;
            std::thread::spawn(move || raw_writer(volume, log, next, stop))
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(800..2500)));
        let mut killed = Vec::new();
        if rng.random_bool(0.4) {
            for _ in 0..rng.random_range(1..=2) {
                let victim = rng.random_range(0..6);
                if !killed.contains(&victim) {
                    cluster.kill_node(victim);
                    killed.push(victim);
                }
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        }
        eprintln!("round {round}: kill -9 the mount (nodes killed first: {killed:?})");
        mount.kill();
        stop.store(true, Ordering::Relaxed);
        for load in &mut loads {
            let _ = load.kill();
            let _ = load.wait();
        }
        raw_next = raw
            .join()
            .map_err(|_| anyhow::anyhow!("raw writer panicked"))?;
        unmount_lazily(&paths.fs);
        for victim in killed {
            cluster.start_node(victim)?;
        }
    }
    for mode in ["wal", "delete"] {
        let log = paths.commit_log(&dir, mode);
        let commits = std::fs::read_to_string(&log).map_or(0, |s| s.lines().count());
        if commits == 0 {
            bail!("the {mode} load never committed: the loop tested nothing");
        }
        eprintln!("{mode}: {commits} commits recorded over {rounds} crashes");
    }
    Ok(())
}
