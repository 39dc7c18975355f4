//! Rival membership steps that split a PG, with the node that would decide them lost for good
//! (real processes): two drivers each began replacing member F (one as a repair, one as a
//! planned move), three of the five other members took the one that ranks lower and two the
//! higher, so that no supersede can move either side, and F is killed. F might hold the lower
//! step, which would then be established; nothing but a collision-recovery round
//! (`sixfold_proto::collision`) decides without it. The repair drivers must run one, the PG
//! must end healed on live nodes, and every acknowledged write must read back. While a second
//! member is away too (four answers), no round can decide, and `sixfold status` must say why
//! the PG waits. Seen failing (the PG stays split) with a driver that never runs a round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sixfold_proto::membership::Membership;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{ChangeMembershipRequest, SegmentRef, SegmentStateRequest};
use sixfold_proto::NodeId;
use sixfold_tests::shadow::{write_fsynced, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 1 << 30;

fn segment() -> Option<SegmentRef> {
    Some(SegmentRef {
        volume: "split".into(),
        pg: 0,
    })
}

/// Node ids to addresses, from `sixfold cluster nodes --json`.
fn addresses(cluster: &Cluster) -> Result<BTreeMap<NodeId, String>> {
    let json: serde_json::Value =
        serde_json::from_str(&cluster.cluster_command(&["nodes", "--json"])?)?;
    Ok(json["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| {
            Some((
                NodeId::parse(n["id"].as_str()?)?,
                n["addr"].as_str()?.to_string(),
            ))
        })
        .collect())
}

async fn membership_of(addr: &str) -> Result<Membership> {
    let mut client = StorageNodeClient::connect(format!("http://{addr}")).await?;
    let state = client
        .segment_state(SegmentStateRequest {
            segment: segment(),
            seal_epoch: 0,
            learn: vec![],
            membership: None,
        })
        .await?
        .into_inner();
    Ok(Membership::from_wire(
        &state.membership.context("the segment holds a membership")?,
    )?)
}

/// A driver's step from `base` to `proposed`, sent to the node at `addr` by hand.
async fn step(addr: &str, base: &Membership, proposed: &Membership) -> Result<()> {
    let mut client = StorageNodeClient::connect(format!("http://{addr}")).await?;
    client
        .change_membership(ChangeMembershipRequest {
            segment: segment(),
            base: Some(base.to_wire()),
            proposed: Some(proposed.to_wire()),
            peers: vec![],
            catch_up_to: 0,
            catch_up: false,
            superseded: None,
            ballot: None,
        })
        .await
        .with_context(|| format!("step to {proposed} on {addr}"))?;
    Ok(())
}

#[test]
fn rival_steps_split_three_two_with_the_deciding_node_lost_are_recovered() -> Result<()> {
    require_fuse();
    let dir = test_dir("rival_split");
    // No driver while the split is made by hand (it would push one step to every node).
    let mut cluster = Cluster::start_with_options(&dir, 9, &["--no-repair"])?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "split", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(77, VOLUME_BYTES, 64 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 8 << 20)?;
    drop(volume);
    mount.unmount()?;

    let addrs = addresses(&cluster)?;
    let az_of = cluster.az_of();
    let runtime = tokio::runtime::Runtime::new()?;
    let (lost, base, low, high) = runtime.block_on(async {
        let first = addrs.values().next().context("a node")?;
        let holder = cluster.pgs("split")?[0]
            .nodes()
            .first()
            .cloned()
            .unwrap_or_else(|| first.clone());
        let base = membership_of(&holder).await?;
        let lost = base.members[5];
        let az = &az_of[&addrs[&lost]];
        let spare = *addrs
            .iter()
            .find(|(id, addr)| !base.contains(**id) && az_of[*addr] == *az)
            .context("a spare node in the lost node's AZ")?
            .0;
        // Two rival steps of one epoch: F -> spare as a repair, and as a planned move.
        let repair = base.begin(lost, spare)?;
        let moving = base.begin_move(lost, spare)?;
        let (low, high) = if repair.outranks(&moving) {
            (moving, repair)
        } else {
            (repair, moving)
        };
        // Three members take the lower step, two the higher: the lower cannot be superseded
        // (F may hold it too: then it is established), the higher cannot win without F.
        let others: Vec<NodeId> = base.members[..5].to_vec();
        for (i, node) in others.iter().enumerate() {
            let proposed = if i < 3 { &low } else { &high };
            step(&addrs[node], &base, proposed).await?;
        }
        anyhow::Ok((lost, base, low, high))
    })?;
    eprintln!("split: {low} on 3 members, {high} on 2, {lost} lost for good");

    // F is lost for good; the others come back with their repair drivers on, but for one
    // member on the higher step: four answers cannot decide the split, and the status must say
    // so (writes wait).
    let lost_index = cluster.index_of(&addrs[&lost])?;
    let away = cluster.index_of(&addrs[&base.members[4]])?;
    cluster.kill_node(lost_index);
    for i in 0..cluster.nodes.len() {
        cluster.stop_node(i);
    }
    cluster.node_options = vec!["--repair-after".into(), "3s".into()];
    for i in (0..cluster.nodes.len()).filter(|i| *i != lost_index && *i != away) {
        cluster.start_node(i)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.status_text("split").unwrap_or_default();
        if status.contains("CANNOT BE REPAIRED") && status.contains("rival membership steps") {
            eprintln!("with two of six down:\n{status}");
            break;
        }
        if Instant::now() > deadline {
            bail!("the status does not say that the split waits: {status}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.start_node(away)?;

    // The drivers decide the epoch without F (the lower step: F may hold it), then complete
    // the replacement: six healthy segments on live nodes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let healed = cluster
            .pgs("split")
            .ok()
            .and_then(|pgs| pgs.into_iter().find(|pg| pg.pg == 0))
            .filter(|pg| pg.healed_without(&addrs[&lost]) && pg.membership_epoch > base.epoch.0);
        if let Some(pg) = healed {
            ensure!(
                pg.two_per_az(&az_of),
                "two segments per AZ: {:?}",
                pg.nodes()
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "PG 0 not healed within 120 s after the split: {}",
                cluster.status_text("split").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: String = (0..cluster.nodes.len())
        .filter_map(|i| std::fs::read_to_string(&cluster.nodes[i].log).ok())
        .collect();
    ensure!(
        logs.contains("collision-recovery round chose"),
        "a driver decided the split by a collision-recovery round"
    );
    let established = runtime.block_on(async {
        let holder = cluster.pgs("split")?[0].nodes()[0].clone();
        membership_of(&holder).await
    })?;
    ensure!(
        !established.contains(lost),
        "the lost node is replaced: {established}"
    );

    // The writer mounts again: every acknowledged write reads back, and writes go on.
    let mount = Mount::start(&cluster, "split", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;
    shadow
        .verify(&volume, 32, 7)
        .context("every acknowledged write reads back")?;
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    shadow.verify(&volume, 32, 8)?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
