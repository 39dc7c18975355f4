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
//! 3. For each PG: seal its segments in the new epoch (`SegmentState` with `seal_epoch`: each
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
use sixfold_proto::{Epoch, Lsn, NodeId, PgId, READ_QUORUM, WRITE_QUORUM};
use tokio::task::JoinSet;
use tracing::info;

use crate::clients::{ask_all, Answer, Clients};
use crate::error::VolumeError;
use crate::recovery::{chain_tail, ChainTail};

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

/// A sealed segment's answer: its node, address, SCL and truncation history.
type Sealed = (NodeId, String, (Lsn, Vec<Truncation>));

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

/// Recovers one PG (steps 3 of the module docs).
pub async fn recover_pg(
    clients: &Arc<Clients>,
    volume: &str,
    pg: PgId,
    nodes: PgNodes,
    epoch: Epoch,
    read_only: bool,
) -> Result<RecoveredPg, VolumeError> {
    // A reader seals nothing: it must not fence the writer.
    let seal_epoch = if read_only { 0 } else { epoch.0 };
    let segment = SegmentRef {
        volume: volume.to_owned(),
        pg: pg.0,
    };
    let membership = nodes.membership.clone();
    let wire_membership = Some(membership.to_wire());
    let members = nodes.list();
    let addrs = nodes.addresses();
    let node_at = |index: usize| members[index].0;
    // Segment states from every node.
    let answers = ask_all(clients, &addrs, RECOVERY_TIMEOUT, |mut client| {
        let request = SegmentStateRequest {
            segment: Some(segment.clone()),
            seal_epoch,
            learn: Vec::new(),
            membership: wire_membership.clone(),
        };
        async move { client.segment_state(request).await }
    })
    .await;
    let mut states: Vec<Sealed> = Vec::new();
    let mut max_lsn_seen = Lsn::ZERO;
    let mut failures = Vec::new();
    let mut stale = false;
    for Answer {
        index,
        addr,
        result,
    } in answers
    {
        match result {
            Ok(state) => {
                states.push((node_at(index), addr, (Lsn(state.scl), state.truncations)));
                max_lsn_seen = max_lsn_seen.max(Lsn(state.max_lsn));
                if state.epoch > epoch.0 && !read_only {
                    return Err(VolumeError::Fenced {
                        volume: volume.to_owned(),
                        epoch,
                    });
                }
            }
            Err(error) => {
                stale |= error.contains("stale membership");
                failures.push(format!("{addr}: {error}"))
            }
        }
    }
    let answered = |states: &[Sealed]| {
        let set: Vec<NodeId> = states.iter().map(|(n, _, _)| *n).collect();
        move |node: NodeId| set.contains(&node)
    };
    // Sealed at a write quorum: the old writer can no longer gather a write quorum, and every
    // record it did gather one for is held by one of these answers (4 + 4 > 6, in every
    // configuration; 3 would do for that alone).
    let sealed = if read_only {
        membership.is_read_quorum(answered(&states))
    } else {
        membership.is_write_quorum(answered(&states))
    };
    if !sealed && stale {
        return Err(VolumeError::MembershipChanged {
            volume: volume.to_owned(),
            pg,
            detail: failures.join("; "),
        });
    }
    if !read_only && !sealed && failures.iter().any(|f| f.contains("fenced")) {
        // A newer writer sealed these segments first.
        return Err(VolumeError::Fenced {
            volume: volume.to_owned(),
            epoch,
        });
    }
    if !sealed {
        let (needed, detail) = if read_only {
            (
                READ_QUORUM,
                format!("reading the PG's state: {}", failures.join("; ")),
            )
        } else {
            (
                WRITE_QUORUM,
                format!(
                    "sealing the PG in the new epoch; with 3 reachable, `sixfold mount \
                     --read-only` can still read the volume: {}",
                    failures.join("; ")
                ),
            )
        };
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: states.len(),
            needed,
            detail,
        });
    }
    // Answers that missed a truncation another one shows learn it and answer again.
    let view = |states: &[Sealed]| -> Vec<(Lsn, Vec<Truncation>)> {
        states.iter().map(|(_, _, state)| state.clone()).collect()
    };
    for _ in 0..3 {
        let sealed = chain_tail(&view(&states));
        if sealed.incomplete.is_empty() {
            break;
        }
        for position in sealed.incomplete.into_iter().rev() {
            let addr = states[position].1.clone();
            let request = SegmentStateRequest {
                segment: Some(segment.clone()),
                seal_epoch,
                learn: sealed.history.clone(),
                membership: wire_membership.clone(),
            };
            let answer = match clients.get(&addr) {
                Ok(mut client) => {
                    tokio::time::timeout(RECOVERY_TIMEOUT, client.segment_state(request))
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            match answer {
                Some(state) => {
                    let state = state.into_inner();
                    max_lsn_seen = max_lsn_seen.max(Lsn(state.max_lsn));
                    states[position].2 = (Lsn(state.scl), state.truncations);
                }
                None => {
                    states.remove(position);
                }
            }
        }
    }
    let ChainTail {
        tail,
        mut history,
        incomplete,
    } = chain_tail(&view(&states));
    if !read_only && states.len() == members.len() && incomplete.is_empty() {
        // Every segment applied every earlier truncation: none can still hold what those
        // dropped, so this recovery's own truncation is the whole history from now on. (Lists
        // would otherwise grow by one entry per mount and travel with every Append.)
        history.clear();
    }
    let complete: Vec<(NodeId, Lsn)> = states
        .iter()
        .enumerate()
        .filter(|(position, _)| !incomplete.contains(position))
        .map(|(_, (node, _, (scl, _)))| (*node, *scl))
        .collect();
    if !membership.is_read_quorum(|n| complete.iter().any(|(c, _)| *c == n)) {
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: complete.len(),
            needed: READ_QUORUM,
            detail: "sealed segments that applied every earlier truncation, 3 in every \
                     configuration of the PG's membership"
                .into(),
        });
    }
    if read_only {
        // The read point is the tail; the complete answers at it can serve reads.
        let scls = complete
            .iter()
            .map(|(node, scl)| (*node, (*scl).min(tail)))
            .collect();
        info!(volume, %pg, %tail, answered = states.len(), complete = complete.len(), "recovered PG for reading");
        return Ok(RecoveredPg {
            pg,
            nodes,
            tail,
            scls,
            max_lsn_seen,
            truncations: history,
        });
    }
    // Apply the history, adopt the epoch and truncate beyond the tail at a write quorum.
    let answers = ask_all(clients, &addrs, RECOVERY_TIMEOUT, |mut client| {
        let request = OpenSegmentRequest {
            segment: Some(segment.clone()),
            epoch: epoch.0,
            truncate_after: tail.0,
            history: history.clone(),
            peers: addrs.clone(),
            membership: wire_membership.clone(),
        };
        async move { client.open_segment(request).await }
    })
    .await;
    let mut scls: BTreeMap<NodeId, Lsn> = BTreeMap::new();
    let mut failures = Vec::new();
    for Answer {
        index,
        addr,
        result,
    } in answers
    {
        match result {
            Ok(response) => {
                scls.insert(node_at(index), Lsn(response.scl).min(tail));
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    if !membership.is_write_quorum(|n| scls.contains_key(&n)) {
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: scls.len(),
            needed: WRITE_QUORUM,
            detail: format!("opening segments in the new epoch: {}", failures.join("; ")),
        });
    }
    // The kept chain may sit whole on one segment only (records no flush covered, that reached
    // few segments before the old writer died). This writer treats it as durable from the start
    // (its VDL starts above it), so it waits until a write quorum holds it: they gap-fill from
    // the holder, told the tail by OpenSegment. Found by the simulation: a flush returning right
    // after recovery, then a second recovery that did not hear from the holder, lost it.
    let settle_started = Instant::now();
    let holding = |scls: &BTreeMap<NodeId, Lsn>| {
        let holders: Vec<NodeId> = scls
            .iter()
            .filter(|(_, scl)| **scl >= tail)
            .map(|(n, _)| *n)
            .collect();
        (
            membership.is_write_quorum(|n| holders.contains(&n)),
            holders.len(),
        )
    };
    loop {
        let (quorum, held_by) = holding(&scls);
        if quorum {
            break;
        }
        if settle_started.elapsed() > SETTLE_TIMEOUT {
            return Err(VolumeError::QuorumLost {
                volume: volume.to_owned(),
                pg,
                reachable: held_by,
                needed: WRITE_QUORUM,
                detail: format!(
                    "segments holding the recovered chain up to {tail} after {SETTLE_TIMEOUT:?} \
                     (the others could not fill it from their peers)"
                ),
            });
        }
        tokio::time::sleep(SETTLE_POLL).await;
        // A plain question (no seal: nothing to harden on the nodes at every poll).
        let answers = ask_all(clients, &addrs, RECOVERY_TIMEOUT, |mut client| {
            let request = SegmentStateRequest {
                segment: Some(segment.clone()),
                seal_epoch: 0,
                learn: Vec::new(),
                membership: wire_membership.clone(),
            };
            async move { client.segment_state(request).await }
        })
        .await;
        for Answer { index, result, .. } in answers {
            // Only a segment that applied this recovery's truncation holds the kept chain: a
            // stale one may be complete to the tail on another history.
            if let Ok(state) = result.as_ref() {
                if state
                    .truncations
                    .iter()
                    .any(|t| t.epoch == epoch.0 && t.truncate_after == tail.0)
                {
                    let scl = scls.entry(node_at(index)).or_default();
                    *scl = (*scl).max(Lsn(state.scl).min(tail));
                }
            }
        }
    }
    info!(
        volume, %pg, %tail, answered = states.len(), opened = scls.len(),
        earlier_truncations = history.len(),
        settle_ms = settle_started.elapsed().as_millis() as u64, "recovered PG"
    );
    let mut truncations = history;
    truncations.retain(|t| t.epoch < epoch.0);
    truncations.push(Truncation {
        epoch: epoch.0,
        truncate_after: tail.0,
    });
    Ok(RecoveredPg {
        pg,
        nodes,
        tail,
        scls,
        max_lsn_seen,
        truncations,
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
