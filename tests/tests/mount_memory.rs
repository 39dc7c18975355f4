//! Issue 17: the mount's memory matches its settings. Its peak resident memory stays within its
//! page cache (`--cache-mb`), plus LAL (the pages written but not yet durable, which it must keep),
//! plus the records it keeps for segments that have not acknowledged them (a volume-wide bound),
//! plus a constant: the binary, the runtime, connections and batches in flight.
//!
//! The load is the one that once took a mount with `--cache-mb 256` to 962 MB: writes of 512 B
//! to 1 MiB at random offsets (most not page-aligned: the old page is read first) over six PGs,
//! an fsync every 1-5 writes, here with one node frozen (SIGSTOP) for the whole run, so that every
//! PG keeps records for a segment that never acknowledges them.
//!
//! The six PGs are allocated after the node froze: each allocation must not wait for the frozen
//! node's timeouts (its rounds end at a quorum of answers plus a short grace).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sixfold_blockdev::{LAL, RETAINED_DURABLE_RECORDS_MAX};
use sixfold_proto::PAGE_SIZE;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const CACHE_MIB: u64 = 64;
/// What the mount may use beyond its cache, LAL and retained records: the binary and its
/// runtime (about 20 MiB idle), TLS and HTTP/2 buffers, encoded batches in flight.
const CONSTANT_MIB: u64 = 96;
const PG_BYTES: u64 = 10 << 30;
const SPAN: u64 = 6 * PG_BYTES;
const RUN: Duration = Duration::from_secs(20);
/// The longest a PG's first write and fsync may take with one node frozen.
const ALLOCATION_MAX: Duration = Duration::from_millis(1000);
const SEED: u64 = 0x3e3_0e1;

#[test]
fn the_mounts_memory_stays_within_its_settings() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("mount_memory");
    let cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let cache = CACHE_MIB.to_string();
    let mount = Mount::start_with(
        &cluster,
        "memory",
        "64G",
        &mountpoint,
        &["--cache-mb", &cache],
    )?;
    let volume = mount.open_volume()?;
    let idle = mount.peak_rss_bytes().unwrap_or(0);
    cluster.pause_node(2);
    // The six PGs allocated first, with the node already frozen: each allocation (node list,
    // segments created, metadata written) waits for a quorum of answers and only briefly for
    // the rest, so the frozen node costs no timeouts (it cost about 4 s per PG before).
    let mut slowest = Duration::ZERO;
    for pg in 0..SPAN / PG_BYTES {
        let started = Instant::now();
        volume.write_all_at(&[1u8; 4096], pg * PG_BYTES)?;
        volume.sync_data()?;
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest PG allocation (first write and fsync) with a node frozen: {slowest:?}");

    let data = pattern(SEED, 1 << 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let (mut writes, mut bytes) = (0u64, 0u64);
    let until = Instant::now() + RUN;
    while Instant::now() < until {
        let len = rng.random_range(512..=data.len());
        let offset = rng.random_range(0..SPAN - len as u64);
        volume.write_all_at(&data[..len], offset)?;
        writes += 1;
        bytes += len as u64;
        if rng.random_range(0..5) == 0 || writes % 5 == 0 {
            volume.sync_data()?;
        }
    }
    volume.sync_data()?;
    let peak = mount.peak_rss_bytes().unwrap_or(u64::MAX);
    cluster.resume_node(2);
    drop(volume);
    mount.unmount()?;

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let lal = LAL * PAGE_SIZE as u64;
    let retained = RETAINED_DURABLE_RECORDS_MAX as u64 * PAGE_SIZE as u64;
    let bound = (CACHE_MIB << 20) + lal + retained + (CONSTANT_MIB << 20);
    eprintln!(
        "{writes} writes ({:.0} MiB) in {RUN:?} with one node frozen: mount peak RSS {:.0} MiB \
         (idle {:.0}); bound {:.0} MiB = cache {CACHE_MIB} + LAL {:.0} + retained records {:.0} + \
         constant {CONSTANT_MIB}",
        mib(bytes),
        mib(peak),
        mib(idle),
        mib(bound),
        mib(lal),
        mib(retained)
    );
    assert!(writes > 0);
    assert!(
        slowest <= ALLOCATION_MAX,
        "allocating a PG with one node frozen took {slowest:?} (at most {ALLOCATION_MAX:?})"
    );
    assert!(
        peak <= bound,
        "the mount's peak RSS {:.0} MiB exceeds its bound of {:.0} MiB",
        mib(peak),
        mib(bound)
    );
    drop(cluster);
    Ok(())
}
