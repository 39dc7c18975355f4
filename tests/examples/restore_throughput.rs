//! Restore throughput, 1 PG against 4 PGs filled alike: a six-node cluster archiving to a local
//! directory; volume `one` gets MIB MiB written into PG 0, volume `four` MIB MiB into each of
//! PGs 0 to 3; each is snapshotted (which waits for the archive) and restored into a new
//! volume. PGs restore in parallel, so the 4-PG volume should restore about 4 times the bytes in
//! about the same time.
//!
//! Usage: `restore_throughput DIR [MIB]` (default 128; run as root, after scripts/setup.sh;
//! `SIXFOLD_BIN` names the binary, else target/release/sixfold). Prints one line per volume and
//! the ratio of throughputs.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use sixfold_tests::backup::sixfold;
use sixfold_tests::{pattern, Cluster, Mount};

const PG_BYTES: u64 = 10 << 30;

fn fill(cluster: &Cluster, dir: &Path, volume: &str, pgs: u64, mib: u64) -> Result<()> {
    let mount = Mount::start(cluster, volume, "40G", &dir.join(format!("mnt-{volume}")))?;
    {
        let mut file = mount.open_volume()?;
        let chunk = 4 << 20;
        for pg in 0..pgs {
            file.seek(SeekFrom::Start(pg * PG_BYTES))?;
            for i in 0..(mib << 20) / chunk {
                file.write_all(&pattern(pg * 100_000 + i, chunk as usize))?;
            }
        }
        file.sync_all()?;
    }
    sixfold(
        cluster,
        &[
            "snapshot", "create", "bench", "--volume", volume, "--wait", "600s",
        ],
    )?;
    mount.unmount()
}

/// CPU seconds the nodes have used so far.
fn nodes_cpu(cluster: &Cluster) -> f64 {
    cluster.nodes.iter().filter_map(|n| n.cpu_seconds()).sum()
}

/// Restores `volume`'s snapshot; returns (seconds, cores the nodes kept busy meanwhile).
fn restore(cluster: &Cluster, volume: &str) -> Result<(f64, f64)> {
    let cpu = nodes_cpu(cluster);
    let started = Instant::now();
    let output = sixfold(
        cluster,
        &[
            "restore",
            "--source",
            volume,
            "--from",
            "bench",
            "--volume",
            &format!("{volume}-restored"),
        ],
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let busy = (nodes_cpu(cluster) - cpu) / seconds;
    eprintln!("{}", output.trim());
    Ok((seconds, busy))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).context("usage: restore_throughput DIR [MIB]")?).to_owned();
    let mib: u64 = args.get(2).map_or(Ok(128), |a| a.parse())?;
    std::fs::create_dir_all(&dir)?;
    let store = dir.join("backup");
    let cluster = Cluster::start_backed_up(
        &dir,
        6,
        store.to_str().context("utf-8 path")?,
        None,
        &["--base-every-mib", "32"],
    )?;
    fill(&cluster, &dir, "one", 1, mib)?;
    fill(&cluster, &dir, "four", 4, mib)?;
    let (one, busy_one) = restore(&cluster, "one")?;
    let (four, busy_four) = restore(&cluster, "four")?;
    let rate_one = mib as f64 / one;
    let rate_four = (4 * mib) as f64 / four;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "restore of 1 PG  ({mib:>5} MiB): {one:6.2} s = {rate_one:7.1} MiB/s, nodes kept {busy_one:.1} of {cores} cores busy"
    );
    println!(
        "restore of 4 PGs ({:>5} MiB): {four:6.2} s = {rate_four:7.1} MiB/s, nodes kept {busy_four:.1} of {cores} cores busy",
        4 * mib
    );
    println!(
        "throughput 4 PGs / 1 PG      : {:6.2}x",
        rate_four / rate_one
    );
    Ok(())
}
