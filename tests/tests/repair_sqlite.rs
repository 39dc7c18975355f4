//! SQLite through a repair: nine nodes (three per AZ), SQLite (WAL, synchronous=FULL) on ext4
//! on the volume, committing throughout. One node that holds segments of every PG is killed
//! for good. Within `--repair-after` plus the copy time every PG has six caught-up segments on
//! live nodes and `sixfold status` says the data is safe (and showed each repair's progress
//! while it copied). While the repair copies (bounded by
//! `--repair-bandwidth`), SQLite commits at no less than its rate without a repair (the issue
//! asks 70%; the test allows noise down to 60% and prints the ratio; `scripts/bench-repair.sh`
//! measures it exactly). Then one node in each of the two other AZs dies: commits go on, and
//! afterwards `PRAGMA integrity_check` is ok and every commit SQLite acknowledged is there.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use sixfold_tests::{require_fuse, run, test_dir, unmount_lazily, Cluster, Mount};

const PGS: u64 = 3;
const PG_BYTES: u64 = 10 << 30;
/// Data in each PG for the repair to copy, away from the file system (the first 4 GiB).
const FILL_BYTES: u64 = 48 << 20;
const FS_BYTES: u64 = 4 << 30;
/// How long each commit-rate window lasts.
const WINDOW: Duration = Duration::from_secs(8);

/// Lazily unmounts the file system when the test ends, passed or failed.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_lazily(&self.0);
    }
}

/// The SQLite load: killed when the test ends.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Commits the load logged with a time in `[from_us, to_us)`.
fn commits_between(log: &Path, from_us: u64, to_us: u64) -> Result<u64> {
    let text = std::fs::read_to_string(log).context("read the commit log")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .filter(|t| (from_us..to_us).contains(t))
        .count() as u64)
}

/// Commits per second over `[from_us, to_us)`.
fn rate(log: &Path, from_us: u64, to_us: u64) -> Result<f64> {
    let seconds = to_us.saturating_sub(from_us) as f64 / 1e6;
    ensure!(seconds > 0.0, "an empty window");
    Ok(commits_between(log, from_us, to_us)? as f64 / seconds)
}

#[test]
fn sqlite_commits_through_a_repair_at_its_rate_and_loses_nothing() -> Result<()> {
    require_fuse();
    let dir = test_dir("repair_sqlite");
    let mut cluster = Cluster::start_with_options(
        &dir,
        9,
        &["--repair-after", "3s", "--repair-bandwidth", "8MiB"],
    )?;
    let mount = Mount::start(&cluster, "sql", "30G", &dir.join("mnt"))?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    // Data in every PG (past the file system) for the repair to copy.
    let chunk = vec![0x5au8; 1 << 20];
    for pg in 0..PGS {
        for i in 0..FILL_BYTES >> 20 {
            volume.write_all_at(&chunk, pg * PG_BYTES + (5 << 30) + (i << 20))?;
        }
    }
    volume.sync_all()?;
    drop(volume);
    run(Command::new("mkfs.ext4")
        .args([
            "-F",
            "-q",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .arg(mount.volume_path())
        .arg(format!("{}k", FS_BYTES / 1024)))?;
    let fs = dir.join("fs");
    std::fs::create_dir_all(&fs)?;
    run(Command::new("mount")
        .args(["-o", "loop,noinit_itable"])
        .arg(mount.volume_path())
        .arg(&fs))?;
    let unmount = Unmount(fs.clone());

    let db = fs.join("db.sqlite");
    let log = dir.join("commits.log");
    let load = Load(
        Command::new("python3")
            .arg(script("sqlite_timed_load.py"))
            .arg(&db)
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .context("start the SQLite load")?,
    );
    std::thread::sleep(Duration::from_secs(2));
    let base_from = now_us();
    std::thread::sleep(WINDOW);
    let base_to = now_us();
    let base = rate(&log, base_from, base_to)?;
    ensure!(base > 0.0, "SQLite commits before the loss");

    // Kill -9 for good the node that holds segments of the most PGs.
    let before = cluster.pgs("sql")?;
    ensure!(before.len() == PGS as usize, "{PGS} PGs: {before:?}");
    let victim_addr = cluster
        .nodes
        .iter()
        .map(|n| n.addr.to_string())
        .max_by_key(|addr| before.iter().filter(|pg| pg.nodes().contains(addr)).count())
        .context("a node")?;
    let held = before
        .iter()
        .filter(|pg| pg.nodes().contains(&victim_addr))
        .count();
    let victim = cluster.index_of(&victim_addr)?;
    let victim_az = cluster.nodes[victim].az.clone();
    cluster.kill_node(victim);
    let killed_at = Instant::now();

    // The repair begins after --repair-after; measure the commit rate while it copies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let repair_from = loop {
        if cluster.pgs("sql")?.iter().any(|pg| !pg.changes.is_empty()) {
            break now_us();
        }
        if Instant::now() > deadline {
            bail!(
                "no repair began within 60 s of the loss; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut progress = None;
    let (healed, healed_us) = loop {
        let pgs = cluster.pgs("sql")?;
        let whole = pgs.iter().all(|pg| pg.healed_without(&victim_addr));
        if whole {
            break (pgs, now_us());
        }
        // Status shows each repair's progress: bytes copied, how far, rate, time left.
        if progress.is_none() {
            let text = cluster.status_text("sql")?;
            if let Some(line) = text.lines().find(|l| l.contains(" copied (")) {
                progress = Some(line.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "not healed 180 s after the loss: {pgs:?}; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let took = killed_at.elapsed();
    let repair_to = healed_us.min(repair_from + WINDOW.as_micros() as u64);
    let during = rate(&log, repair_from, repair_to)?;
    let ratio = during / base;
    eprintln!(
        "{held} PG(s) repaired {took:.1?} after the loss (repair after 3 s, 8 MiB/s): SQLite \
         {base:.0} commits/s before, {during:.0} commits/s during the repair ({:.1} s \
         measured): ratio {ratio:.2}",
        (repair_to - repair_from) as f64 / 1e6
    );
    ensure!(
        repair_to - repair_from >= 2_000_000,
        "the repair lasted under 2 s: too short to measure the commit rate during it"
    );
    ensure!(
        ratio >= 0.6,
        "SQLite committed {during:.0}/s during the repair, {base:.0}/s without: ratio {ratio:.2}"
    );
    for (now, was) in healed.iter().zip(&before) {
        for newcomer in now.nodes().iter().filter(|n| !was.nodes().contains(n)) {
            let az = &cluster.nodes[cluster.index_of(newcomer)?].az;
            ensure!(*az == victim_az, "PG {} replaced in AZ {az}", now.pg);
        }
    }
    let progress = progress.context("status showed no repair's progress while it copied")?;
    eprintln!("status during the repair: {progress}");
    ensure!(
        progress.contains("/s") && (progress.contains(" left") || progress.contains("finishing")),
        "{progress}"
    );
    let status = cluster.status_text("sql")?;
    ensure!(status.contains("SAFE"), "status after the repair: {status}");

    // One node in each of the two other AZs dies: commits go on.
    for az in ["a", "b", "c"].iter().filter(|az| **az != victim_az) {
        let node = cluster
            .nodes
            .iter()
            .position(|n| {
                n.az == *az
                    && n.addr.to_string() != victim_addr
                    && healed[0].nodes().contains(&n.addr.to_string())
            })
            .context("a node of the first PG in that AZ")?;
        cluster.kill_node(node);
    }
    let after_from = now_us();
    std::thread::sleep(Duration::from_secs(4));
    let after = commits_between(&log, after_from, now_us())?;
    ensure!(after > 0, "SQLite commits after two more losses");

    drop(load);
    let out = run(Command::new("python3")
        .arg(script("sqlite_verify.py"))
        .arg(&db)
        .arg(&log))
    .context("integrity_check and every acknowledged commit")?;
    eprintln!("{}", out.trim());
    run(Command::new("umount").arg(&fs))?;
    drop(unmount);
    mount.unmount()?;
    Ok(())
}
