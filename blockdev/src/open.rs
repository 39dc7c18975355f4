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

use std::sync::Arc;
use std::time::{Duration, Instant};

use sixfold_proto::wire::{
    OpenSegmentRequest, SegmentRef, SegmentStateRequest, Truncation, VolumeMeta,
};
use sixfold_proto::{Epoch, Lsn, PgId, COPIES, READ_QUORUM, WRITE_QUORUM};
use tokio::task::JoinSet;
use tracing::info;

use crate::clients::{ask_all, Answer, Clients};
use crate::error::VolumeError;
use crate::recovery::{chain_tail, ChainTail};

const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long recovery waits for the kept chain to reach a write quorum, and how often it looks.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// What recovery learned about one PG.
#[derive(Debug, Clone)]
pub struct RecoveredPg {
    pub pg: PgId,
    pub nodes: Vec<String>,
    pub tail: Lsn,
    pub scls: [Lsn; COPIES],
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
    nodes: Vec<String>,
    epoch: Epoch,
    read_only: bool,
) -> Result<RecoveredPg, VolumeError> {
    // A reader seals nothing: it must not fence the writer.
    let seal_epoch = if read_only { 0 } else { epoch.0 };
    let segment = SegmentRef {
        volume: volume.to_owned(),
        pg: pg.0,
    };
    // Segment states from every node.
    let answers = ask_all(clients, &nodes, RECOVERY_TIMEOUT, |mut client| {
        let request = SegmentStateRequest {
            segment: Some(segment.clone()),
            seal_epoch,
            learn: Vec::new(),
        };
        async move { client.segment_state(request).await }
    })
    .await;
    let mut answered = 0;
    let mut states = Vec::new();
    let mut max_lsn_seen = Lsn::ZERO;
    let mut failures = Vec::new();
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(state) => {
                answered += 1;
                states.push((addr, (Lsn(state.scl), state.truncations)));
                max_lsn_seen = max_lsn_seen.max(Lsn(state.max_lsn));
                if state.epoch > epoch.0 && !read_only {
                    return Err(VolumeError::Fenced {
                        volume: volume.to_owned(),
                        epoch,
                    });
                }
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    // Sealed at a write quorum: the old writer can no longer gather 4 acknowledgements, and
    // every record it did gather 4 for is held by one of these answers (4 + 4 > 6; 3 would do
    // for that alone).
    if !read_only && answered < WRITE_QUORUM && failures.iter().any(|f| f.contains("fenced")) {
        // A newer writer sealed these segments first.
        return Err(VolumeError::Fenced {
            volume: volume.to_owned(),
            epoch,
        });
    }
    let needed = if read_only { READ_QUORUM } else { WRITE_QUORUM };
    if answered < needed {
        let detail = if read_only {
            format!("reading the PG's state: {}", failures.join("; "))
        } else {
            format!(
                "sealing the PG in the new epoch; with 3 reachable, `sixfold mount --read-only` \
                 can still read the volume: {}",
                failures.join("; ")
            )
        };
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: answered,
            needed,
            detail,
        });
    }
    // Answers that missed a truncation another one shows learn it and answer again.
    let view = |states: &[(String, (Lsn, Vec<Truncation>))]| -> Vec<(Lsn, Vec<Truncation>)> {
        states.iter().map(|(_, state)| state.clone()).collect()
    };
    for _ in 0..3 {
        let sealed = chain_tail(&view(&states));
        if sealed.incomplete.is_empty() {
            break;
        }
        for position in sealed.incomplete.into_iter().rev() {
            let addr = states[position].0.clone();
            let request = SegmentStateRequest {
                segment: Some(segment.clone()),
                seal_epoch,
                learn: sealed.history.clone(),
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
                    states[position].1 = (Lsn(state.scl), state.truncations);
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
    if !read_only && states.len() == COPIES && incomplete.is_empty() {
        // All six segments applied every earlier truncation: none can still hold what those
        // dropped, so this recovery's own truncation is the whole history from now on. (Lists
        // would otherwise grow by one entry per mount and travel with every Append.)
        history.clear();
    }
    let complete = states.len() - incomplete.len();
    if complete < READ_QUORUM {
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: complete,
            needed: READ_QUORUM,
            detail: "sealed segments that applied every earlier truncation".into(),
        });
    }
    if read_only {
        // The read point is the tail; the complete answers at it can serve reads.
        let mut scls = [Lsn::ZERO; COPIES];
        for (position, (addr, (scl, _))) in states.iter().enumerate() {
            if let (false, Some(index)) = (
                incomplete.contains(&position),
                nodes.iter().position(|n| n == addr),
            ) {
                scls[index] = (*scl).min(tail);
            }
        }
        info!(volume, %pg, %tail, answered, complete, "recovered PG for reading");
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
    let answers = ask_all(clients, &nodes, RECOVERY_TIMEOUT, |mut client| {
        let request = OpenSegmentRequest {
            segment: Some(segment.clone()),
            epoch: epoch.0,
            truncate_after: tail.0,
            history: history.clone(),
            peers: nodes.clone(),
        };
        async move { client.open_segment(request).await }
    })
    .await;
    let mut scls = [Lsn::ZERO; COPIES];
    let mut opened = 0;
    let mut failures = Vec::new();
    for Answer {
        index,
        addr,
        result,
    } in answers
    {
        match result {
            Ok(response) => {
                opened += 1;
                scls[index] = Lsn(response.scl).min(tail);
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    if opened < WRITE_QUORUM {
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: opened,
            needed: WRITE_QUORUM,
            detail: format!("opening segments in the new epoch: {}", failures.join("; ")),
        });
    }
    // The kept chain may sit whole on one segment only (records no flush covered, that reached
    // few segments before the old writer died). This writer treats it as durable from the start
    // (its VDL starts above it), so it waits until 4 segments hold it: they gap-fill from the
    // holder, told the tail by OpenSegment. Found by the simulation: a flush returning right
    // after recovery, then a second recovery that did not hear from the holder, lost it.
    let settle_started = Instant::now();
    loop {
        if scls.iter().filter(|scl| **scl >= tail).count() >= WRITE_QUORUM {
            break;
        }
        if settle_started.elapsed() > SETTLE_TIMEOUT {
            return Err(VolumeError::QuorumLost {
                volume: volume.to_owned(),
                pg,
                reachable: scls.iter().filter(|scl| **scl >= tail).count(),
                needed: WRITE_QUORUM,
                detail: format!(
                    "segments holding the recovered chain up to {tail} after {SETTLE_TIMEOUT:?} \
                     (the others could not fill it from their peers)"
                ),
            });
        }
        tokio::time::sleep(SETTLE_POLL).await;
        // A plain question (no seal: nothing to harden on the nodes at every poll).
        let answers = ask_all(clients, &nodes, RECOVERY_TIMEOUT, |mut client| {
            let request = SegmentStateRequest {
                segment: Some(segment.clone()),
                seal_epoch: 0,
                learn: Vec::new(),
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
                    scls[index] = scls[index].max(Lsn(state.scl).min(tail));
                }
            }
        }
    }
    info!(
        volume, %pg, %tail, answered, opened, earlier_truncations = history.len(),
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
    epoch: Epoch,
    read_only: bool,
) -> Result<Vec<RecoveredPg>, VolumeError> {
    let mut tasks = JoinSet::new();
    for placement in &meta.pgs {
        if placement.nodes.len() != COPIES {
            return Err(VolumeError::Meta {
                volume: meta.name.clone(),
                detail: format!(
                    "PG {} lists {} nodes, expected {COPIES}",
                    placement.pg,
                    placement.nodes.len()
                ),
            });
        }
        let clients = clients.clone();
        let volume = meta.name.clone();
        let nodes = placement.nodes.clone();
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
