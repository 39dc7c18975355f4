//! Bad membership requests to a real node are refused with a clear error and change nothing: a
//! stale epoch, a future epoch (more than one step from its base), an unknown node id, a
//! membership that is no membership at all, collision-recovery rounds that are no rounds.
//! (A drain of the last spare of an AZ: `drain.rs`.)

use sixfold_proto::membership::Membership;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    Ballot, ChangeMembershipRequest, PromiseMembershipRequest, SegmentRef, SegmentStateRequest,
};
use sixfold_proto::NodeId;
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};
use tonic::Code;

fn segment() -> Option<SegmentRef> {
    Some(SegmentRef {
        volume: "bad".into(),
        pg: 0,
    })
}

fn step(base: &Membership, proposed: &Membership) -> ChangeMembershipRequest {
    ChangeMembershipRequest {
        segment: segment(),
        base: Some(base.to_wire()),
        proposed: Some(proposed.to_wire()),
        peers: vec![],
        catch_up_to: 0,
        catch_up: false,
        superseded: None,
        ballot: None,
    }
}

#[test]
fn bad_membership_requests_are_refused_and_change_nothing() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("membership_bad_input");
    // Seven nodes: one spare. No repair driver: the steps below are made by hand on one node.
    let cluster = Cluster::start_with_options(&dir, 7, &["--no-repair"])?;
    // A writer creates PG 0 (and the node list), then goes.
    let mount = Mount::start(&cluster, "bad", "1G", &dir.join("mnt"))?;
    mount.open_volume()?.write_all_at_start()?;
    mount.unmount()?;
    let ids: Vec<NodeId> = {
        let json: serde_json::Value =
            serde_json::from_str(&cluster.cluster_command(&["nodes", "--json"])?)?;
        json["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| NodeId::parse(n["id"].as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    };
    anyhow::ensure!(ids.len() == 7, "seven node ids: {ids:?}");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // A node that holds a segment of PG 0.
        let holder = cluster.pgs("bad")?[0].nodes()[0].clone();
        let mut client = StorageNodeClient::connect(format!("http://{holder}")).await?;
        let state = client.clone();
        let held = move || {
            let mut client = state.clone();
            async move {
                let answer = client
                    .segment_state(SegmentStateRequest {
                        segment: segment(),
                        seal_epoch: 0,
                        learn: vec![],
                        membership: None,
                    })
                    .await?
                    .into_inner();
                let membership = answer
                    .membership
                    .ok_or_else(|| anyhow::anyhow!("the segment holds the writer's membership"))?;
                anyhow::Ok(Membership::from_wire(&membership)?)
            }
        };
        let first = held().await?;
        let spare = *ids
            .iter()
            .find(|id| !first.contains(**id))
            .ok_or_else(|| anyhow::anyhow!("a spare node"))?;
        let (member, other) = (first.members[0], first.members[5]);
        // Two good steps: begin replacing a member by the spare, then roll it back.
        let begun = first.begin(member, spare)?;
        client.change_membership(step(&first, &begun)).await?;
        let back = begun.roll_back(spare)?;
        client.change_membership(step(&begun, &back)).await?;
        anyhow::ensure!(held().await? == back, "both steps taken");

        // A stale epoch: a step to epoch 2 when the node holds epoch 3.
        let stale = first.begin(other, spare)?;
        refused(
            "stale epoch",
            client.change_membership(step(&first, &stale)).await,
            Code::FailedPrecondition,
            "stale membership",
        )?;
        // A rival of the epoch held: another step from the same base.
        let rival = begun.complete(spare)?;
        refused(
            "rival step",
            client.change_membership(step(&begun, &rival)).await,
            Code::FailedPrecondition,
            "other members",
        )?;
        // A future epoch: two steps from its base.
        let future = back.begin(member, spare).and_then(|m| m.roll_back(spare))?;
        refused(
            "future epoch",
            client.change_membership(step(&back, &future)).await,
            Code::InvalidArgument,
            "not the next step",
        )?;
        // An unknown node joining.
        let unknown = back.begin(member, NodeId(0x0bad_0bad))?;
        refused(
            "unknown node id",
            client.change_membership(step(&back, &unknown)).await,
            Code::InvalidArgument,
            "is not an active node of the cluster",
        )?;
        // Not a membership at all: five members; an epoch out of range.
        let mut five = back.to_wire();
        five.members.pop();
        refused(
            "five members",
            client
                .change_membership(ChangeMembershipRequest {
                    proposed: Some(five),
                    ..step(&back, &back)
                })
                .await,
            Code::InvalidArgument,
            "distinct",
        )?;
        let mut huge = back.to_wire();
        huge.epoch = u64::MAX;
        refused(
            "epoch out of range",
            client
                .change_membership(ChangeMembershipRequest {
                    proposed: Some(huge),
                    ..step(&back, &back)
                })
                .await,
            Code::InvalidArgument,
            "out of range",
        )?;
        // Collision-recovery rounds that are no rounds: the fast round's number, a round named
        // after no node of the cluster (it would outbid every real driver for good), and an
        // accept that claims to be a learned membership.
        let promise = |ballot: Option<Ballot>| PromiseMembershipRequest {
            segment: segment(),
            base: Some(back.to_wire()),
            ballot,
        };
        refused(
            "promise for round 0",
            client.promise_membership(promise(None)).await,
            Code::InvalidArgument,
            "not a collision-recovery round",
        )?;
        refused(
            "round of an unknown driver",
            client
                .promise_membership(promise(Some(Ballot {
                    number: 1,
                    driver: 0x0bad_0bad,
                })))
                .await,
            Code::InvalidArgument,
            "not in the cluster's node list",
        )?;
        let next = back.begin(member, spare)?;
        refused(
            "accept in a learned round",
            client
                .change_membership(ChangeMembershipRequest {
                    ballot: Some(Ballot {
                        number: u64::MAX,
                        driver: u64::MAX,
                    }),
                    ..step(&back, &next)
                })
                .await,
            Code::InvalidArgument,
            "not a collision-recovery round",
        )?;
        refused(
            "a catch-up that is also a supersede",
            client
                .change_membership(ChangeMembershipRequest {
                    catch_up: true,
                    superseded: Some(back.to_wire()),
                    ..step(&back, &next)
                })
                .await,
            Code::InvalidArgument,
            "one of a step",
        )?;
        anyhow::ensure!(held().await? == back, "nothing changed on the node");
        anyhow::Ok(())
    })
}

/// Checks that `result` is a refusal with `code` whose message says `says`.
fn refused<T>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
    says: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(_) => anyhow::bail!("{what}: must be refused"),
        Err(status) => {
            anyhow::ensure!(
                status.code() == code && status.message().contains(says),
                "{what}: expected {code:?} saying {says:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            eprintln!("{what}: {:?}: {}", status.code(), status.message());
            Ok(())
        }
    }
}

/// Writes a page so that the writer allocates PG 0.
trait WriteAtStart {
    fn write_all_at_start(&self) -> std::io::Result<()>;
}

impl WriteAtStart for std::fs::File {
    fn write_all_at_start(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.write_all_at(&[7u8; 4096], 0)?;
        self.sync_all()
    }
}
