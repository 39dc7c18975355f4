//! The volume heals itself: nine nodes (three per AZ), a writer fsync'ing throughout, one node
//! killed for good. Within `--repair-after` plus the copy time every PG it held has six
//! segments on live nodes again, each caught up, the metadata records the new membership, and
//! every acknowledged write reads back. Then one node in each of the two other AZs dies: with
//! the repaired PG that is still a write quorum, and writes and fsync go on.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sixfold_tests::shadow::{RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

/// Writes and fsyncs `bytes` more, recording each acknowledged write in the shadow.
fn write_load(
    volume: &File,
    shadow: &mut Shadow,
    writes: &mut RandomWrites,
    bytes: u64,
) -> Result<()> {
    let target = shadow.bytes_written + bytes;
    while shadow.bytes_written < target {
        let (offset, data) = writes.next_write();
        volume.write_all_at(data, offset)?;
        shadow.record(offset, data)?;
        volume.sync_all()?;
    }
    Ok(())
}

/// One segment of the status: (node address, reachable, SCL).
type SegmentSeen = (String, bool, u64);

/// PG 0 of the status: its segments, its PGCL, its membership epoch and the replacements
/// under way.
fn pg0(cluster: &Cluster) -> Result<(Vec<SegmentSeen>, u64, u64, usize)> {
    let status = cluster.status("heal")?;
    let pg = &status["pgs"][0];
    let segments = pg["segments"]
        .as_array()
        .context("segments")?
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap_or_default().to_string(),
                s["reachable"].as_bool().unwrap_or(false),
                s["scl"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Ok((
        segments,
        pg["pgcl"].as_u64().unwrap_or(0),
        pg["membership_epoch"].as_u64().unwrap_or(0),
        pg["changes"].as_array().map_or(0, |c| c.len()),
    ))
}

#[test]
fn a_lost_node_is_replaced_and_every_acknowledged_write_survives() -> Result<()> {
    require_fuse();
    let dir = test_dir("repair");
    let mut cluster = Cluster::start_with_options(&dir, 9, &["--repair-after", "3s"])?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "heal", "16G", &mountpoint)?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(11, VOLUME_BYTES, 128 << 10);
    write_load(&volume, &mut shadow, &mut writes, 24 << 20)?;

    // PG 0 is on six of the nine nodes; kill -9 one of them for good.
    let (before, _, epoch_before, _) = pg0(&cluster)?;
    ensure!(
        before.len() == 6 && epoch_before >= 1,
        "six segments: {before:?}"
    );
    let victim_addr = before[0].0.clone();
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.addr.to_string() == victim_addr)
        .context("the victim is one of the cluster's nodes")?;
    let victim_az = cluster.nodes[victim].az.clone();
    cluster.kill_node(victim);
    let killed_at = Instant::now();

    // Writes and fsyncs go on throughout the repair.
    let stop = Arc::new(AtomicBool::new(false));
    let shadow = Arc::new(Mutex::new(shadow));
    let load = {
        let (volume, stop, shadow) = (volume.try_clone()?, stop.clone(), shadow.clone());
        std::thread::spawn(move || -> Result<u64> {
            let mut writes = RandomWrites::new(12, VOLUME_BYTES, 64 << 10);
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut shadow = shadow.lock().expect("shadow");
                write_load(&volume, &mut shadow, &mut writes, 1 << 20)?;
                rounds += 1;
            }
            Ok(rounds)
        })
    };

    // Healed: six segments, none on the dead node, all reachable and caught up to the PGCL,
    // a newer membership epoch, no replacement under way.
    let deadline = Instant::now() + Duration::from_secs(90);
    let healed = loop {
        let (segments, pgcl, epoch, changes) = pg0(&cluster)?;
        let whole = segments.len() == 6
            && segments
                .iter()
                .all(|(addr, up, scl)| *addr != victim_addr && *up && *scl >= pgcl)
            && epoch > epoch_before
            && changes == 0;
        if whole {
            break segments;
        }
        if Instant::now() > deadline {
            bail!(
                "PG 0 not healed 90 s after the loss: segments {segments:?}, PGCL {pgcl}, \
                 membership epoch {epoch}, {changes} change(s) under way; node logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let heal_time = killed_at.elapsed();
    eprintln!("PG 0 healed {heal_time:?} after the loss (repair after 3 s): {healed:?}");
    // The replacement sits in the lost node's AZ.
    let newcomer = healed
        .iter()
        .find(|(addr, _, _)| !before.iter().any(|(b, _, _)| b == addr))
        .context("a new node holds a segment")?;
    let newcomer_az = cluster
        .nodes
        .iter()
        .find(|n| n.addr.to_string() == newcomer.0)
        .map(|n| n.az.clone())
        .context("the new node is a cluster node")?;
    ensure!(
        newcomer_az == victim_az,
        "replaced in AZ {victim_az}, not {newcomer_az}"
    );

    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().expect("load thread")?;
    ensure!(rounds > 0, "the writer made progress during the repair");

    // One node in each of the two other AZs dies: the repaired PG still has a write quorum.
    for az in ["a", "b", "c"].iter().filter(|az| **az != victim_az) {
        let node = cluster
            .nodes
            .iter()
            .position(|n| {
                n.az == *az
                    && healed
                        .iter()
                        .any(|(addr, _, _)| *addr == n.addr.to_string())
            })
            .context("a node of the PG in that AZ")?;
        cluster.kill_node(node);
    }
    let mut shadow = Arc::try_unwrap(shadow)
        .map_err(|_| anyhow::anyhow!("shadow still shared"))?
        .into_inner()
        .expect("shadow");
    write_load(&volume, &mut shadow, &mut writes, 4 << 20)
        .context("writes and fsyncs after two more losses")?;
    shadow
        .verify(&volume, 64, 5)
        .context("every acknowledged write reads back")?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
