//! Issue 5, tests 2 and 3, with real processes: a second writer fences the first; a node that was
//! away while a new writer recovered its PG comes back and drops the records that recovery
//! truncated.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sixfold_tests::probe::NodeProbe;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const PAGE: u64 = 4096;

fn write_page(volume: &File, page: u64, seed: u64) -> Result<()> {
    volume
        .write_all_at(&pattern(seed, PAGE as usize), page * PAGE)
        .with_context(|| format!("write page {page}"))
}

fn read_page(volume: &File, page: u64) -> Result<Vec<u8>> {
    let mut data = vec![0u8; PAGE as usize];
    volume.read_exact_at(&mut data, page * PAGE)?;
    Ok(data)
}

/// fsync, failing (instead of hanging the test) when it does not return within a minute.
fn sync_within_a_minute(volume: &File, what: &str) -> Result<()> {
    let file = volume.try_clone()?;
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(file.sync_all());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(result) => result.with_context(|| format!("fsync {what}")),
        Err(_) => anyhow::bail!("fsync {what} did not return within a minute"),
    }
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|log| log.contains(needle))
}

/// Nodes 0 and 1 (AZ a) alone receive two writes no flush covered, then the writer and both
/// nodes die. A new writer recovers the PG from the other four, which truncates those writes,
/// and writes on. Nodes 0 and 1 come back: they must learn the truncation and drop the stale
/// writes before serving anything, and the volume must read the pre-crash data of the pages
/// the stale writes touched, even when only nodes 0, 1, 4 and 5 are up.
#[test]
fn a_node_away_during_recovery_rejoins_and_drops_its_stale_tail() -> Result<()> {
    require_fuse();
    let dir = test_dir("writer_recovery_stale_tail");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let (p, q, r) = (0u64, 256u64, 512u64);

    let mount = Mount::start(&cluster, "stale", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;
    write_page(&volume, p, 1)?;
    write_page(&volume, q, 2)?;
    volume.sync_all()?;
    let mut node0 = NodeProbe::connect(cluster.nodes[0].addr, "stale")?;
    let durable = node0.scl(0)?;

    // Only AZ a hears the next two writes: no quorum, no flush. (The other four are killed, not
    // stalled: a stalled node's socket would still take the writes in and harden them later.)
    for i in 2..6 {
        cluster.kill_node(i);
    }
    write_page(&volume, p, 101)?;
    write_page(&volume, q, 102)?;
    let stale = node0.wait_for_scl(0, durable + 2, Duration::from_secs(20))?;
    let mut node1 = NodeProbe::connect(cluster.nodes[1].addr, "stale")?;
    node1.wait_for_scl(0, stale, Duration::from_secs(20))?;
    drop(volume);
    mount.kill();
    cluster.kill_node(0);
    cluster.kill_node(1);
    for i in 2..6 {
        cluster.start_node(i)?;
    }

    // A new writer recovers from nodes 2..5 and writes on.
    let mount = Mount::start(&cluster, "stale", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;
    ensure!(
        read_page(&volume, q)? == pattern(2, PAGE as usize),
        "recovery kept a write no flush covered and no surviving node held"
    );
    write_page(&volume, p, 201)?;
    sync_within_a_minute(&volume, "with nodes 2..5")?;

    // Nodes 0 and 1 come back; then AZ b stalls, so every flush needs both of them.
    cluster.start_node(0)?;
    cluster.start_node(1)?;
    write_page(&volume, r, 301)?;
    sync_within_a_minute(&volume, "with every node back")?;
    cluster.pause_node(2);
    cluster.pause_node(3);
    write_page(&volume, r, 302)?;
    sync_within_a_minute(&volume, "that needs nodes 0 and 1 (they must have dropped their stale tail to complete their chains)")?;

    for (i, log) in [(0, &cluster.nodes[0].log), (1, &cluster.nodes[1].log)] {
        ensure!(
            log_has(log, "learned truncations it missed"),
            "node {i} never applied the recovery's truncation:\n{}",
            sixfold_tests::log_tail(log, 30)
        );
    }
    // What the volume reads, and what node 0 itself serves at its SCL.
    ensure!(read_page(&volume, p)? == pattern(201, PAGE as usize));
    ensure!(read_page(&volume, q)? == pattern(2, PAGE as usize));
    ensure!(read_page(&volume, r)? == pattern(302, PAGE as usize));
    let mut node0 = NodeProbe::connect(cluster.nodes[0].addr, "stale")?;
    let scl = node0.scl(0)?;
    ensure!(
        scl > stale,
        "node 0 is complete past the new writer's records"
    );
    ensure!(
        node0.page(0, q, scl)? == pattern(2, PAGE as usize),
        "node 0 serves a truncated write"
    );
    cluster.resume_node(2);
    cluster.resume_node(3);
    drop(volume);
    mount.unmount()?;
    Ok(())
}

/// A second writer mounts a volume that is still mounted: it takes over through the epoch bump,
/// and the first one's flushes and writes then fail ("fenced by a newer writer"); the second
/// one's succeed, and it reads everything the first one flushed.
#[test]
fn a_second_writer_fences_the_first() -> Result<()> {
    require_fuse();
    let dir = test_dir("writer_recovery_fencing");
    let cluster = Cluster::start(&dir, 6)?;
    let first = Mount::start(&cluster, "race", "1G", &dir.join("mnt-first"))?;
    let a = first.open_volume()?;
    write_page(&a, 0, 1)?;
    a.sync_all().context("the only writer flushes")?;

    let second = Mount::start(&cluster, "race", "1G", &dir.join("mnt-second"))?;
    let b = second.open_volume()?;
    // The first writer learns it was fenced at its next flush, at the latest.
    write_page(&a, 1, 2)?;
    let error = a.sync_all().expect_err("a fenced writer's flush fails");
    eprintln!("fenced flush: {error}");
    ensure!(
        log_has(&first.log, "fenced by a newer writer"),
        "the first writer's log names the fencing:\n{}",
        sixfold_tests::log_tail(&first.log, 20)
    );
    ensure!(
        write_page(&a, 2, 3).is_err() || a.sync_all().is_err(),
        "a fenced writer never flushes again"
    );

    ensure!(read_page(&b, 0)? == pattern(1, PAGE as usize));
    ensure!(
        read_page(&b, 1)? == vec![0u8; PAGE as usize],
        "the fenced writer's unflushed write is not in the new writer's volume"
    );
    write_page(&b, 1, 4)?;
    b.sync_all().context("the new writer flushes")?;
    ensure!(read_page(&b, 1)? == pattern(4, PAGE as usize));
    drop(a);
    first.kill();
    drop(b);
    second.unmount()?;
    Ok(())
}

/// Two mounts of one volume start at the same moment, round after round: they race for the
/// same epoch. Either one of them is refused at open (the metadata version it wanted is taken)
/// or both open and the later one fences the earlier: never may both flush. The volume keeps
/// every flush that returned.
#[test]
fn two_writers_racing_to_open_never_both_flush() -> Result<()> {
    require_fuse();
    let dir = test_dir("writer_recovery_race");
    let cluster = Cluster::start(&dir, 6)?;
    // Create the volume first, so that both racers open an existing one.
    Mount::start(&cluster, "duel", "1G", &dir.join("mnt-0"))?.unmount()?;
    let mut flushed = Vec::new();
    for round in 0..3u64 {
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| Mount::start(&cluster, "duel", "1G", &dir.join("mnt-a")));
            let b = scope.spawn(|| Mount::start(&cluster, "duel", "1G", &dir.join("mnt-b")));
            (a.join(), b.join())
        });
        let mounts: Vec<Mount> = [a, b]
            .into_iter()
            .filter_map(|joined| joined.ok().and_then(Result::ok))
            .collect();
        ensure!(!mounts.is_empty(), "round {round}: neither racer opened");
        let mut succeeded = Vec::new();
        for (i, mount) in mounts.iter().enumerate() {
            let page = 16 * round + i as u64;
            let volume = mount.open_volume()?;
            let wrote = write_page(&volume, page, 1000 + page).is_ok();
            if wrote && sync_within_a_minute(&volume, "a racer's").is_ok() {
                succeeded.push(page);
            }
        }
        ensure!(
            succeeded.len() == 1,
            "round {round}: {} of {} open racers flushed ({succeeded:?}); exactly one may",
            succeeded.len(),
            mounts.len()
        );
        flushed.extend(succeeded);
        for mount in mounts {
            mount.kill();
        }
    }
    // Every flush that returned is in the volume.
    let mount = Mount::start(&cluster, "duel", "1G", &dir.join("mnt-0"))?;
    let volume = mount.open_volume()?;
    for page in &flushed {
        ensure!(
            read_page(&volume, *page)? == pattern(1000 + page, PAGE as usize),
            "page {page}, flushed by the winner of its round, is not there"
        );
    }
    drop(volume);
    mount.unmount()?;
    Ok(())
}
