//! Issue 4, test 1: a node is killed, at least 1 GiB is written without it, and it is restarted
//! with no further writes. The writer no longer holds those records (it releases a record once
//! it is durable on the live segments) and sends the node nothing but heartbeats naming the PGCL;
//! the node reaches its peers' SCL from its peers alone: gap-fill from their hot logs, and, for
//! what they folded away meanwhile (a peer's hot log over 256 MiB folds past a lagging segment),
//! hydration from their page stores. Its status counts what each brought, and the pages read
//! straight from it match what was written.
//! The catch-up rate is printed (`scripts/bench-node.sh` measures it with a baseline).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sixfold_blockdev::RETAINED_DURABLE_RECORDS_MAX;
use sixfold_proto::PAGE_SIZE;
use sixfold_tests::probe::NodeProbe;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const CHUNK: u64 = 1 << 20;

fn repair_bytes() -> u64 {
    std::env::var("SIXFOLD_REPAIR_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// Chunk `i` goes to PG 0 or PG 1 alternately.
fn offset(i: u64) -> u64 {
    (i % 2) * (10 << 30) + (i / 2) * CHUNK
}

#[test]
fn killed_node_catches_up_through_gossip_alone() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_repair");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "repair", "32G", &mountpoint)?;
    let volume = mount.open_volume()?;
    let chunks = repair_bytes() / CHUNK;
    // Both PGs exist on every node before the victim goes.
    volume.write_all_at(&pattern(0, CHUNK as usize), offset(0))?;
    volume.write_all_at(&pattern(1, CHUNK as usize), offset(1))?;
    volume.sync_all()?;
    let victim = 2;
    cluster.kill_node(victim);
    let started = Instant::now();
    for i in 2..chunks {
        volume.write_all_at(&pattern(i, CHUNK as usize), offset(i))?;
        if i % 128 == 0 {
            volume.sync_all()?;
        }
    }
    volume.sync_all()?;
    eprintln!(
        "wrote {} MiB without node {victim} in {:.1} s",
        (chunks * CHUNK) >> 20,
        started.elapsed().as_secs_f64()
    );
    let status = cluster.status("repair")?;
    let targets: Vec<(u32, u64)> = status["pgs"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("status has no pgs: {status}"))?
        .iter()
        .map(|pg| {
            (
                pg["pg"].as_u64().unwrap_or(0) as u32,
                pg["pgcl"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(targets.len(), 2, "two PGs written: {status}");

    cluster.start_node(victim)?;
    let restarted = Instant::now();
    let mut probe = NodeProbe::connect(cluster.nodes[victim].addr, "repair")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut initial = Vec::new();
    for (pg, _) in &targets {
        initial.push(probe.scl(*pg)?);
    }
    // Repair starts when a segment's SCL first moves or the node first brings anything from a
    // peer (after the restart, the writer's next heartbeat names the peers and the PGCL).
    let mut repair_started = None;
    loop {
        let mut done = true;
        if repair_started.is_none() {
            let node = probe.status()?;
            if node.gap_fill_bytes + node.hydrated_bytes > 0 {
                repair_started = Some(Instant::now());
            }
        }
        for (k, (pg, pgcl)) in targets.iter().enumerate() {
            let scl = probe.scl(*pg)?;
            if scl > initial[k] && repair_started.is_none() {
                repair_started = Some(Instant::now());
            }
            done &= scl >= *pgcl;
            assert!(
                Instant::now() < deadline,
                "node {victim} stuck at SCL {scl} of PG {pg}, PGCL is {pgcl}"
            );
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let repairing = repair_started.map_or(Duration::ZERO, |at| at.elapsed());
    let caught_up = restarted.elapsed();
    let node = probe.status()?;
    let missed = (chunks - 2) * CHUNK;
    let brought = node.gap_fill_bytes + node.hydrated_bytes;
    eprintln!(
        "node {victim} caught up {:.1} s after its restart; {} MiB from peers ({} MiB of records, \
         {} MiB of pages) in {:.1} s of repair = {:.0} MiB/s",
        caught_up.as_secs_f64(),
        brought >> 20,
        node.gap_fill_bytes >> 20,
        node.hydrated_bytes >> 20,
        repairing.as_secs_f64(),
        brought as f64 / (1 << 20) as f64 / repairing.as_secs_f64().max(0.001)
    );
    // The writer keeps the volume's last durable records (RETAINED_DURABLE_RECORDS_MAX across
    // its PGs) for a segment that has not acknowledged them and sends them itself when the node
    // answers again: the rest comes from peers.
    let from_writer_max = RETAINED_DURABLE_RECORDS_MAX as u64 * PAGE_SIZE as u64;
    assert!(
        brought + from_writer_max >= missed,
        "peers brought {} bytes of records and {} of pages, but {missed} were written while the \
         node was down (the writer sends at most {from_writer_max} itself)",
        node.gap_fill_bytes,
        node.hydrated_bytes
    );
    // Pages straight from the repaired node, at its SCL, against what was written.
    for i in (0..chunks).step_by(5) {
        let expected = pattern(i, CHUNK as usize);
        let first_page = offset(i) / PAGE_SIZE as u64;
        let pg = (offset(i) >> 30) as u32 / 10;
        let scl = probe.scl(pg)?;
        for k in [0u64, 100, 255] {
            let served = probe.page(pg, first_page + k, scl)?;
            let at = (k as usize) * PAGE_SIZE;
            assert!(
                served[..] == expected[at..at + PAGE_SIZE],
                "node {victim} serves wrong bytes for chunk {i}, page {k}"
            );
        }
    }
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
