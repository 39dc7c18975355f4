//! Issue 17: hedged reads. One stalled node must not set the read tail. Six nodes, the mount in
//! AZ a (reads prefer its two nodes) with a page cache too small to hold what is read, so reads
//! go to the segments. Random 4 KiB reads for a few seconds with all nodes healthy, then with
//! both AZ-a nodes frozen (SIGSTOP: their sockets stay open and answer nothing, like a machine in
//! a long pause), so that every read's first choice is a frozen node. Without hedging a read
//! waits for its attempt's timeout (2 s) before it asks the next segment; with it, about one
//! hedge delay. Asserts that no read waits more than READ_MAX and that every read returns what
//! was written; prints p50/p99/max per phase.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sixfold_tests::{latency_summary, pattern, require_fuse, test_dir, Cluster, Mount};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 4096; // 16 MiB: 256 times the mount's page cache (its floor, 16 pages)
/// The longest a read may take with the nodes of the mount's AZ frozen.
const READ_MAX: Duration = Duration::from_millis(500);
const SEED: u64 = 0x4ead_57a1;

/// Reads random blocks for `run`, checking each; returns each read's latency.
fn read_for(
    volume: &std::fs::File,
    run: Duration,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let until = Instant::now() + run;
    let mut read = vec![0u8; BLOCK];
    while Instant::now() < until {
        let block = rng.random_range(0..BLOCKS);
        let started = Instant::now();
        volume.read_exact_at(&mut read, block * BLOCK as u64)?;
        latencies.push(started.elapsed());
        assert!(
            read == pattern(block + 1, BLOCK),
            "block {block} read back wrong"
        );
    }
    Ok(latencies)
}

/// Prints p50/p99/max of `samples` (sorted in place); returns the max.
fn report(phase: &str, samples: &mut [Duration]) -> Duration {
    let Some((p50, p99, max)) = latency_summary(samples) else {
        panic!("no read in phase {phase}");
    };
    eprintln!(
        "{phase}: {} reads, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    max
}

#[test]
fn a_stalled_node_does_not_set_the_read_tail() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("read_stall");
    let cluster = Cluster::start(&dir, 6)?;
    // The harness puts nodes 0 and 1 in AZ a.
    let frozen = [0, 1];
    let az_of = cluster.az_of();
    assert_eq!(
        az_of.values().filter(|az| *az == "a").count(),
        frozen.len(),
        "{az_of:?}"
    );
    let mountpoint = dir.join("mnt");
    let mount = Mount::start_with(
        &cluster,
        "stall",
        "1G",
        &mountpoint,
        &["--az", "a", "--cache-mb", "0"],
    )?;
    let volume = mount.open_volume()?;
    for block in 0..BLOCKS {
        volume.write_all_at(&pattern(block + 1, BLOCK), block * BLOCK as u64)?;
    }
    volume.sync_data()?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut healthy = read_for(&volume, Duration::from_secs(3), &mut rng)?;
    for node in &frozen {
        cluster.pause_node(*node);
    }
    let stalled = read_for(&volume, Duration::from_secs(5), &mut rng);
    for node in &frozen {
        cluster.resume_node(*node);
    }
    let mut stalled = stalled?;
    report("all nodes healthy", &mut healthy);
    let max = report("AZ a's two nodes frozen", &mut stalled);
    let mut resumed = read_for(&volume, Duration::from_secs(2), &mut rng)?;
    report("resumed", &mut resumed);
    drop(volume);
    mount.unmount()?;
    assert!(
        max <= READ_MAX,
        "a read waited {max:?} with the nodes of the mount's AZ frozen (at most {READ_MAX:?})"
    );
    drop(cluster);
    Ok(())
}
