//! Opening a volume: read the metadata from a quorum, bump the volume epoch, and bring every PG
//! to a known chain tail before the first new record.
//!
//! Steps, in this order (each depends on the one before):
//! 1. Read the metadata from at least 3 of its 6 nodes; create it when a read quorum says it does
//!    not exist.
//! 2. Write it back with `epoch + 1`, `version + 1` and a random writer id at a write quorum. A
//!    node refuses a version it holds with other contents, so of two mounts racing for the same
//!    epoch at most one wins it (before, both did, and both flushed: `writer_recovery.rs` races
//!    them). From here on, nodes that learned the new epoch refuse the previous writer.
//! 3. For each PG ([`recover_pg`], whose decisions are [`crate::recovery::PgRecovery`]'s, the
//!    same code the simulation drives): seal its segments in the new epoch (`SegmentState` with `seal_epoch`: each
//!    adopts the epoch durably, refusing the old writer from then on, and then answers its SCL
//!    and the truncations it has applied, one per earlier writer recovery). The metadata's epoch
//!    bump alone does not fence a PG: in a cluster of more than six nodes its segments sit on
//!    other nodes than the metadata, and an old writer still running could otherwise complete a
//!    flush between this recovery's reads and its truncation. Each answer carries the
//!    segment's truncation history: the list of the newest recovery that reached it, which is
//!    authoritative for every older epoch (a truncation it does not list came from a recovery
//!    that died before opening a write quorum, and is void). Answers with an older history than
//!    the newest one shown may hold records a newer recovery dropped (or lack records a void
//!    truncation dropped): they are asked again with the newest history to adopt first, and
//!    count only then. (Capping their SCL at the missed truncation's point instead lost flushed
//!    records, and spreading half-made truncations stranded later writers: both found by the
//!    simulation.) The chain tail is the highest SCL among at least 3 complete answers out of
//!    at least 4 sealed ([`crate::recovery::chain_tail`]). Then `OpenSegment(epoch,
//!    truncate_after = tail, history)` at a write quorum: segments adopt the history and this
//!    recovery's truncation and drop older-epoch records beyond the tail. When all six answered
//!    and hold the same history, this recovery's truncation alone becomes the history (lists
//!    would otherwise grow by one entry per mount). Then wait until 4 segments that applied
//!    this truncation hold the chain up to the tail (the others gap-fill it from its holder):
//!    this writer's VDL starts above the tail, so a flush right after mount counts on it. If
//!    the holder is gone for good the wait fails after a minute, and mounting again recovers
//!    to a tail the survivors hold.
//! 4. New LSNs start above every LSN seen plus LAL (the old writer could not have allocated more).
//!
//! **Quorums under a membership change.** "4 of 6" above means a write quorum of the PG's
//! membership (4 members of every configuration, see `sixfold_proto::membership`), and "3
//! complete answers" a read quorum of it (3 of every configuration): a record durable before a
//! replacement began sits on 4 of the old configuration only. A segment holding a newer
//! membership than the metadata's refuses the seal ("stale membership"); recovery then fails
//! with [`VolumeError::MembershipChanged`], and the mount reads the metadata again (a change's
//! driver records each step in the metadata once a write quorum holds it).
//!
//! No resurrection: every Append of this writer carries the PG's truncations (the history and its
//! own), and a segment applies those it missed before anything else in the Append; peers pass
//! theirs along with gap-fill records. So a segment that was away during this recovery (or an
//! earlier one) drops the truncated records before it acknowledges, serves or folds anything
//! of this writer's. The highest SCL is used rather than the longest complete chain of the union
//! of the answers (DESIGN.md): both keep every record a returned flush covered, and the highest
//! SCL is held whole by one segment, from which the others gap-fill.
//!
//! A segment sealed by this writer adopts no other history from its peers until this writer's
//! own arrives (its OpenSegment, Appends, or the `learn` of its SegmentState), so the state this
//! recovery read does not change under it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sixfold_proto::membership::Membership;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::{
    OpenSegmentRequest, SegmentRef, SegmentStateRequest, Truncation, VolumeMeta,
};
use sixfold_proto::{Epoch, Lsn, NodeId, PgId, WRITE_QUORUM};
use tokio::task::JoinSet;
use tracing::info;

use crate::clients::{ask_quorum, Answer, Clients};
use crate::error::VolumeError;
use crate::recovery::{OpenDecision, PgRecovery, RecoveryError, Refused, SealAnswer, SealDecision};
use crate::refusal::Refusal;

const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long recovery waits for the kept chain to reach a write quorum, and how often it looks.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// A PG's membership with the address of each of its nodes.
#[derive(Debug, Clone)]
pub struct PgNodes {
    pub membership: Membership,
    /// The address of every node of the membership.
    pub addrs: BTreeMap<NodeId, String>,
}

impl PgNodes {
    /// The nodes of the membership and their addresses, in the membership's order.
    pub fn list(&self) -> Vec<(NodeId, String)> {
        self.membership
            .nodes()
            .into_iter()
            .map(|n| (n, self.addrs.get(&n).cloned().unwrap_or_default()))
            .collect()
    }

    /// The addresses of the membership's nodes, in its order.
    pub fn addresses(&self) -> Vec<String> {
        self.list().into_iter().map(|(_, addr)| addr).collect()
    }

    /// A PG's nodes as the volume metadata records them: its membership, each node found in
    /// the cluster's node list (or, for a placement from before memberships, by address).
    pub fn resolve(
        volume: &str,
        placement: &sixfold_proto::wire::PgPlacement,
        list: &NodeList,
    ) -> Result<PgNodes, VolumeError> {
        let invalid = |detail: String| VolumeError::Meta {
            volume: volume.to_owned(),
            detail: format!("PG {}: {detail}", placement.pg),
        };
        let membership = match &placement.membership {
            Some(wire) => Membership::from_wire(wire).map_err(|e| invalid(e.to_string()))?,
            None => {
                let ids = placement
                    .nodes
                    .iter()
                    .map(|addr| {
                        list.at(addr)
                            .map(|n| n.id)
                            .ok_or_else(|| invalid(format!("node {addr} is not in the cluster")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Membership::new(ids).map_err(|e| invalid(e.to_string()))?
            }
        };
        let mut addrs = BTreeMap::new();
        for node in membership.nodes() {
            let addr = match list.get(node) {
                Some(record) => record.addr.clone(),
                None => {
                    // A node the list does not know: the placement's own address for it.
                    let position = membership.nodes().iter().position(|n| *n == node);
                    position
                        .and_then(|p| placement.nodes.get(p).cloned())
                        .ok_or_else(|| invalid(format!("{node} is not in the cluster")))?
                }
            };
            addrs.insert(node, addr);
        }
        Ok(PgNodes { membership, addrs })
    }
}

/// What recovery learned about one PG.
#[derive(Debug, Clone)]
pub struct RecoveredPg {
    pub pg: PgId,
    pub nodes: PgNodes,
    pub tail: Lsn,
    pub scls: BTreeMap<NodeId, Lsn>,
    pub max_lsn_seen: Lsn,
    /// Every truncation of the PG, this recovery's last, in ascending epoch order: sent with
    /// every Append.
    pub truncations: Vec<Truncation>,
}

/// Asks `nodes` (of `pg_nodes`) one request each, and hands each answer (or failure) to
/// `on_answer` with the node it came from. Once those that answered with success form a write
/// quorum of the membership (of each of its configurations, during a change) the others get a
/// short grace ([`ask_quorum`]); one that did not answer by then counts as failed.
async fn ask_nodes<T, F, Fut>(
    clients: &Arc<Clients>,
    pg_nodes: &PgNodes,
    nodes: &[NodeId],
    call: F,
    mut on_answer: impl FnMut(NodeId, Result<T, Refused>),
) where
    T: Send + 'static,
    F: Fn(crate::clients::NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| pg_nodes.addrs.get(n).cloned().unwrap_or_default())
        .collect();
    let membership = &pg_nodes.membership;
    let enough = |ok: &[bool]| {
        membership.is_write_quorum(|node| {
            nodes
                .iter()
                .position(|n| *n == node)
                .is_some_and(|i| ok.get(i).copied().unwrap_or(false))
        })
    };
    let mut unanswered = vec![true; nodes.len()];
    for Answer {
        index,
        addr,
        result,
        refusal,
    } in ask_quorum(clients, &addrs, RECOVERY_TIMEOUT, enough, call).await
    {
        unanswered[index] = false;
        on_answer(
            nodes[index],
            result.map_err(|error| Refused::new(refusal, format!("{addr}: {error}"))),
        );
    }
    for (index, _) in unanswered.iter().enumerate().filter(|(_, u)| **u) {
        let error = format!("{}: no answer while the others answered", addrs[index]);
        on_answer(nodes[index], Err(Refused::new(Refusal::Other, error)));
    }
}

/// Recovers one PG (step 3 of the module docs), driving [`PgRecovery`] over the network: one
/// round of requests at a time, a timeout (or no answer within the grace after a quorum
/// answered, see [`ask_nodes`]) counting as a failed answer.
pub async fn recover_pg(
    clients: &Arc<Clients>,
    volume: &str,
    pg: PgId,
    nodes: PgNodes,
    epoch: Epoch,
    read_only: bool,
) -> Result<RecoveredPg, VolumeError> {
    let segment = SegmentRef {
        volume: volume.to_owned(),
        pg: pg.0,
    };
    let membership = nodes.membership.clone();
    let wire_membership = Some(membership.to_wire());
    let failed = |error: RecoveryError| match error {
        RecoveryError::Fenced => VolumeError::Fenced {
            volume: volume.to_owned(),
            epoch,
        },
        RecoveryError::MembershipChanged(detail) => VolumeError::MembershipChanged {
            volume: volume.to_owned(),
            pg,
            detail,
        },
        RecoveryError::QuorumLost {
            reachable,
            needed,
            what,
            detail,
        } => {
            let advice = if read_only || needed != WRITE_QUORUM {
                ""
            } else {
                "; with 3 reachable, `sixfold mount --read-only` can still read the volume"
            };
            VolumeError::QuorumLost {
                volume: volume.to_owned(),
                pg,
                reachable,
                needed,
                detail: format!("{what}{advice}: {detail}"),
            }
        }
    };
    // A segment's state: sealing it in `seal_epoch` (0: a plain question) after it learned
    // `learn`.
    let state_request = |seal_epoch: u64, learn: Vec<Truncation>| SegmentStateRequest {
        segment: Some(segment.clone()),
        seal_epoch,
        learn,
        membership: wire_membership.clone(),
    };
    let mut recovery = PgRecovery::new(epoch, membership.clone(), read_only);
    // Each round waits for a write quorum of answers and then only briefly for the rest: a node
    // that is slow or silent counts as not answering, as a down one does (recovery is built to
    // hold with any quorum; a segment that missed the round learns its truncations with the
    // next append). A read-only open with only a read quorum reachable waits for the timeout.

    // Seal (a reader only asks), and ask again answers that missed a truncation.
    let mut ask: Vec<NodeId> = membership.nodes();
    let kept = loop {
        let seal_epoch = recovery.seal_epoch().0;
        let learn = recovery.learn().to_vec();
        ask_nodes(
            clients,
            &nodes,
            &ask,
            |mut client| {
                let request = state_request(seal_epoch, learn.clone());
                async move { client.segment_state(request).await }
            },
            |node, answer| {
                let answer = answer.map(|state| SealAnswer {
                    epoch: Epoch(state.epoch),
                    scl: Lsn(state.scl),
                    max_lsn: Lsn(state.max_lsn),
                    truncations: state.truncations,
                });
                recovery.on_seal(node, answer);
            },
        )
        .await;
        match recovery.decide_seal() {
            SealDecision::Keep(kept) => break kept,
            SealDecision::AskAgain { nodes, .. } => ask = nodes,
            SealDecision::Fail(error) => return Err(failed(error)),
            SealDecision::Wait => {
                return Err(VolumeError::Invalid(format!(
                    "recovery of {pg} waits for answers after a whole round (a bug)"
                )))
            }
        }
    };
    if read_only {
        // The read point is the tail; the complete answers at it can serve reads.
        info!(volume, %pg, tail = %kept.tail, complete = kept.complete.len(), "recovered PG for reading");
        return Ok(RecoveredPg {
            pg,
            nodes,
            tail: kept.tail,
            scls: kept.complete.clone(),
            max_lsn_seen: kept.max_lsn_seen,
            truncations: kept.history.clone(),
        });
    }
    // Apply the history, adopt the epoch and truncate beyond the tail at a write quorum.
    let all = membership.nodes();
    let peers = nodes.addresses();
    ask_nodes(
        clients,
        &nodes,
        &all,
        |mut client| {
            let request = OpenSegmentRequest {
                segment: Some(segment.clone()),
                epoch: epoch.0,
                truncate_after: kept.tail.0,
                history: kept.history.clone(),
                peers: peers.clone(),
                membership: wire_membership.clone(),
            };
            async move { client.open_segment(request).await }
        },
        |node, answer| recovery.on_open(node, answer.map(|r| Lsn(r.scl))),
    )
    .await;
    match recovery.decide_open() {
        OpenDecision::Settle => {}
        OpenDecision::Fail(error) => return Err(failed(error)),
        OpenDecision::Wait => {
            return Err(VolumeError::Invalid(format!(
                "opening {pg} waits for answers after a whole round (a bug)"
            )))
        }
    }
    // The kept chain may sit whole on one segment only (records no flush covered, that reached
    // few segments before the old writer died). This writer treats it as durable from the start
    // (its VDL starts above it), so it waits until a write quorum holds it: they gap-fill from
    // the holder, told the tail by OpenSegment. Found by the simulation: a flush returning right
    // after recovery, then a second recovery that did not hear from the holder, lost it.
    let settle_started = Instant::now();
    while !recovery.settled() {
        if settle_started.elapsed() > SETTLE_TIMEOUT {
            return Err(VolumeError::QuorumLost {
                volume: volume.to_owned(),
                pg,
                reachable: recovery.holders().len(),
                needed: WRITE_QUORUM,
                detail: format!(
                    "segments holding the recovered chain up to {} after {SETTLE_TIMEOUT:?} \
                     (the others could not fill it from their peers)",
                    kept.tail
                ),
            });
        }
        tokio::time::sleep(SETTLE_POLL).await;
        // A plain question (no seal: nothing to harden on the nodes at every poll).
        ask_nodes(
            clients,
            &nodes,
            &all,
            |mut client| {
                let request = state_request(0, Vec::new());
                async move { client.segment_state(request).await }
            },
            |node, answer| {
                if let Ok(state) = answer {
                    recovery.on_state(node, Lsn(state.scl), &state.truncations);
                }
            },
        )
        .await;
    }
    info!(
        volume, %pg, tail = %kept.tail, opened = recovery.opened().len(),
        earlier_truncations = kept.history.len(),
        settle_ms = settle_started.elapsed().as_millis() as u64, "recovered PG"
    );
    Ok(RecoveredPg {
        pg,
        nodes,
        tail: kept.tail,
        scls: recovery.opened().clone(),
        max_lsn_seen: kept.max_lsn_seen,
        truncations: recovery.truncations(),
    })
}

/// Recovers every PG of the volume in parallel.
pub async fn recover_all(
    clients: &Arc<Clients>,
    meta: &VolumeMeta,
    list: &NodeList,
    epoch: Epoch,
    read_only: bool,
) -> Result<Vec<RecoveredPg>, VolumeError> {
    let mut tasks = JoinSet::new();
    for placement in &meta.pgs {
        let nodes = PgNodes::resolve(&meta.name, placement, list)?;
        let clients = clients.clone();
        let volume = meta.name.clone();
        let pg = PgId(placement.pg);
        tasks
            .spawn(async move { recover_pg(&clients, &volume, pg, nodes, epoch, read_only).await });
    }
    let mut recovered = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let result =
            joined.map_err(|e| VolumeError::Invalid(format!("recovery task failed: {e}")))?;
        recovered.push(result?);
    }
    recovered.sort_by_key(|r| r.pg);
    Ok(recovered)
}
