//! Membership changes interrupted half-way, with real processes:
//! - the lost node comes back while its replacement cannot catch up (frozen): the change is
//!   rolled back, the PG ends on its six old members (never seven), and the data reads back;
//! - the writer is killed while a PG is on the quorum set of old and new members and mounted
//!   again: recovery uses that quorum set, and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sixfold_tests::shadow::{write_fsynced, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 8 << 30;

/// PG 0 as the status shows it: (segment addresses, membership epoch, changes "from -> to").
fn pg0(cluster: &Cluster, volume: &str) -> Result<(Vec<String>, u64, Vec<String>)> {
    let pgs = cluster.pgs(volume)?;
    let pg = pgs
        .iter()
        .find(|pg| pg.pg == 0)
        .context("PG 0 is allocated")?;
    Ok((pg.nodes(), pg.membership_epoch, pg.changes.clone()))
}

/// Node ids to addresses, from `sixfold cluster nodes --json`.
fn addresses(cluster: &Cluster) -> Result<BTreeMap<String, String>> {
    let json: serde_json::Value =
        serde_json::from_str(&cluster.cluster_command(&["nodes", "--json"])?)?;
    Ok(json["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["addr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Kills one of PG 0's nodes, waits for its replacement to begin and freezes the new node so
/// that it cannot catch up (a driver takes one step per second, and the new node needs a
/// while to copy the 48 MiB written first: the poll sees the begin before the completion).
/// Returns (the lost node's index, the new node's index, the epoch).
fn begin_a_replacement_that_cannot_finish(
    cluster: &mut Cluster,
    volume: &str,
) -> Result<(usize, usize, u64)> {
    let (nodes, epoch, _) = pg0(cluster, volume)?;
    let lost = cluster.index_of(&nodes[0])?;
    cluster.kill_node(lost);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (change, epoch) = loop {
        let (_, now, changes) = pg0(cluster, volume)?;
        if let (Some(change), true) = (changes.first(), now > epoch) {
            break (change.clone(), now);
        }
        if Instant::now() > deadline {
            bail!("no replacement began within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let joining_id = change
        .split(" -> ")
        .nth(1)
        .context("a change reads \"from -> to\"")?;
    let joining = cluster.index_of(&addresses(cluster)?[joining_id])?;
    cluster.pause_node(joining);
    Ok((lost, joining, epoch))
}

#[test]
fn the_lost_node_coming_back_rolls_the_change_back() -> Result<()> {
    require_fuse();
    let dir = test_dir("repair_roll_back");
    // 4 s: the lost node is back (about a second) before its frozen replacement counts as lost.
    let mut cluster = Cluster::start_with_options(&dir, 9, &["--repair-after", "4s"])?;
    let mount = Mount::start(&cluster, "back", "8G", &dir.join("mnt"))?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(31, VOLUME_BYTES, 128 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 48 << 20)?;
    let (original, _, _) = pg0(&cluster, "back")?;

    let (lost, joining, begun) = begin_a_replacement_that_cannot_finish(&mut cluster, "back")?;
    // The lost node comes back before its replacement caught up: rolled back.
    cluster.start_node(lost)?;
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (nodes, epoch, changes) = pg0(&cluster, "back")?;
        if epoch > begun && changes.is_empty() {
            let mut a = nodes.clone();
            let mut b = original.clone();
            a.sort();
            b.sort();
            ensure!(
                a == b,
                "back on the six old members: {nodes:?}, was {original:?}"
            );
            break;
        }
        ensure!(
            nodes.len() <= 7,
            "never more than one replacement here: {nodes:?}"
        );
        if Instant::now() > deadline {
            bail!("not rolled back within 60 s: {nodes:?}, epoch {epoch}, {changes:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.resume_node(joining);
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    shadow
        .verify(&volume, 32, 3)
        .context("every acknowledged write reads back")?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}

#[test]
fn a_writer_killed_mid_change_recovers_with_the_quorum_set() -> Result<()> {
    require_fuse();
    let dir = test_dir("repair_writer_crash");
    // 10 s: the frozen new node counts as lost (and the change is rolled back) only after the
    // writer was killed and mounted again.
    let mut cluster = Cluster::start_with_options(&dir, 9, &["--repair-after", "10s"])?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "crash", "8G", &mountpoint)?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(41, VOLUME_BYTES, 128 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 48 << 20)?;

    let (_, joining, begun) = begin_a_replacement_that_cannot_finish(&mut cluster, "crash")?;
    // Writes acknowledged on the quorum set {old six, new six}, then the writer dies.
    write_fsynced(&volume, &mut shadow, &mut writes, 4 << 20)?;
    drop(volume);
    mount.kill();
    let (_, epoch, changes) = pg0(&cluster, "crash")?;
    ensure!(
        epoch == begun && changes.len() == 1,
        "still mid-change: epoch {epoch}, {changes:?}"
    );
    let mount = Mount::start(&cluster, "crash", "8G", &mountpoint)
        .context("a writer recovers the PG with its quorum set")?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    shadow
        .verify(&volume, 32, 4)
        .context("nothing acknowledged before the crash is lost")?;
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    // Let the change finish (the new node thaws and catches up): the PG ends healed.
    cluster.resume_node(joining);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (nodes, epoch, changes) = pg0(&cluster, "crash")?;
        if epoch > begun && changes.is_empty() && nodes.len() == 6 {
            break;
        }
        if Instant::now() > deadline {
            bail!("not healed within 60 s: {nodes:?}, epoch {epoch}, {changes:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    shadow.verify(&volume, 32, 5)?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
