//! The volume heals itself: nine nodes (three per AZ), a writer fsync'ing throughout, one node
//! killed for good. Within `--repair-after` plus the copy time every PG it held has six
//! segments on live nodes again, each caught up, the metadata records the new membership, one
//! live node drives each PG (its metrics endpoint says the PG is healthy), and every
//! acknowledged write reads back. Then one node in each of the two other AZs dies: with every
//! PG repaired that is still a write quorum, and writes and fsync go on.

use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sixfold_tests::shadow::{write_fsynced, BackgroundLoad, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

#[test]
fn a_lost_node_is_replaced_and_every_acknowledged_write_survives() -> Result<()> {
    require_fuse();
    let dir = test_dir("repair");
    let mut cluster = Cluster::start_with_options(&dir, 9, &["--repair-after", "3s"])?;
    let mount = Mount::start(&cluster, "heal", "16G", &dir.join("mnt"))?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(11, VOLUME_BYTES, 128 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 24 << 20)?;

    // Kill -9 for good one node of the first PG (the writes reached both PGs).
    let before = cluster.pgs("heal")?;
    ensure!(
        before.len() == 2 && before.iter().all(|pg| pg.segments.len() == 6),
        "two PGs of six segments: {before:?}"
    );
    let victim_addr = before[0].nodes()[0].clone();
    let victim = cluster.index_of(&victim_addr)?;
    let victim_az = cluster.nodes[victim].az.clone();
    cluster.kill_node(victim);
    let killed_at = Instant::now();

    // Writes and fsyncs go on throughout the repair.
    let load = BackgroundLoad::start(&volume, shadow, 12, VOLUME_BYTES)?;

    // Healed: every PG has six segments, none on the dead node, all answering and caught up,
    // no replacement under way; those the dead node held are in a newer membership epoch.
    let deadline = Instant::now() + Duration::from_secs(90);
    let healed = loop {
        let pgs = cluster.pgs("heal")?;
        let whole = pgs.iter().all(|pg| pg.healed_without(&victim_addr))
            && pgs.iter().zip(&before).all(|(now, was)| {
                !was.nodes().contains(&victim_addr) || now.membership_epoch > was.membership_epoch
            });
        if whole {
            break pgs;
        }
        if Instant::now() > deadline {
            bail!(
                "not healed 90 s after the loss: {pgs:?}; node logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "healed {:?} after the loss (repair after 3 s): {healed:?}",
        killed_at.elapsed()
    );
    // Each replacement sits in the lost node's AZ.
    for (now, was) in healed.iter().zip(&before) {
        for newcomer in now.nodes().iter().filter(|n| !was.nodes().contains(n)) {
            let az = &cluster.nodes[cluster.index_of(newcomer)?].az;
            ensure!(
                *az == victim_az,
                "PG {} replaced in AZ {az}, not {victim_az}",
                now.pg
            );
        }
    }

    // Exactly one live node drives each PG, and its metrics endpoint says the PG is healthy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut reports = vec![0; healed.len()];
        for i in (0..cluster.nodes.len()).filter(|i| *i != victim) {
            let metrics = cluster.metrics(i)?;
            for (count, pg) in reports.iter_mut().zip(&healed) {
                let series = format!(
                    "sixfold_pg_state{{volume=\"heal\",pg=\"{}\",state=\"healthy\"}} 1",
                    pg.pg
                );
                *count += metrics.lines().filter(|l| *l == series).count();
            }
        }
        if reports.iter().all(|c| *c == 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes reporting each PG healthy in their metrics: {reports:?}, not one each");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let (mut shadow, rounds) = load.stop()?;
    ensure!(rounds > 0, "the writer made progress during the repair");

    // One node in each of the two other AZs dies: every repaired PG still has a write quorum.
    for az in ["a", "b", "c"].iter().filter(|az| **az != victim_az) {
        let node = cluster
            .nodes
            .iter()
            .position(|n| {
                n.az == *az
                    && healed
                        .iter()
                        .all(|pg| pg.nodes().contains(&n.addr.to_string()))
            })
            .or_else(|| {
                cluster
                    .nodes
                    .iter()
                    .position(|n| n.az == *az && healed[0].nodes().contains(&n.addr.to_string()))
            })
            .context("a node of the PGs in that AZ")?;
        cluster.kill_node(node);
    }
    write_fsynced(&volume, &mut shadow, &mut writes, 4 << 20)
        .context("writes and fsyncs after two more losses")?;
    shadow
        .verify(&volume, 64, 5)
        .context("every acknowledged write reads back")?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
