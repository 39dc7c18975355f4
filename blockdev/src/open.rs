//! Opening a volume: read the metadata from a quorum, bump the volume epoch, and bring every PG
//! to a known chain tail before the first new record.
//!
//! Steps, in this order (each depends on the one before):
//! 1. Read the metadata from at least 3 of its 6 nodes; create it when a read quorum says it does
//!    not exist.
//! 2. Write it back with `epoch + 1` at a write quorum. From here on, nodes that learned the new
//!    epoch refuse the previous writer.
//! 3. For each PG: ask its six segments for their SCL; with at least 3 answers, the PG's chain
//!    tail is the highest SCL among them (a record a returned flush covered is on 4 segments, so
//!    any 3 include it). Then `OpenSegment(epoch, truncate_after = tail)` at a write quorum:
//!    segments adopt the epoch and drop older-epoch records beyond the tail.
//! 4. New LSNs start above every LSN seen plus LAL (the old writer could not have allocated more).
//!
//! Issue 5 (crash recovery) will harden step 3: a segment away during recovery must learn the
//! truncation from its peers; this version relies on the OpenSegment reaching it later.

use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::wire::{OpenSegmentRequest, SegmentRef, SegmentStateRequest, VolumeMeta};
use sixfold_proto::{Epoch, Lsn, PgId, COPIES, READ_QUORUM, WRITE_QUORUM};
use tokio::task::JoinSet;
use tracing::info;

use crate::clients::{ask_all, Answer, Clients};
use crate::error::VolumeError;

const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What recovery learned about one PG.
#[derive(Debug, Clone)]
pub struct RecoveredPg {
    pub pg: PgId,
    pub nodes: Vec<String>,
    pub tail: Lsn,
    pub scls: [Lsn; COPIES],
    pub max_lsn_seen: Lsn,
}

/// Recovers one PG (steps 3 of the module docs).
pub async fn recover_pg(
    clients: &Arc<Clients>,
    volume: &str,
    pg: PgId,
    nodes: Vec<String>,
    epoch: Epoch,
) -> Result<RecoveredPg, VolumeError> {
    let segment = SegmentRef {
        volume: volume.to_owned(),
        pg: pg.0,
    };
    // Segment states from every node.
    let answers = ask_all(clients, &nodes, RECOVERY_TIMEOUT, |mut client| {
        let request = SegmentStateRequest {
            segment: Some(segment.clone()),
        };
        async move { client.segment_state(request).await }
    })
    .await;
    let mut answered = 0;
    let mut tail = Lsn::ZERO;
    let mut max_lsn_seen = Lsn::ZERO;
    let mut failures = Vec::new();
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(state) => {
                answered += 1;
                tail = tail.max(Lsn(state.scl));
                max_lsn_seen = max_lsn_seen.max(Lsn(state.max_lsn));
                if state.epoch > epoch.0 {
                    return Err(VolumeError::Fenced {
                        volume: volume.to_owned(),
                        epoch,
                    });
                }
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    if answered < READ_QUORUM {
        return Err(VolumeError::QuorumLost {
            volume: volume.to_owned(),
            pg,
            reachable: answered,
            needed: READ_QUORUM,
            detail: failures.join("; "),
        });
    }
    // Adopt the epoch and truncate beyond the tail at a write quorum.
    let answers = ask_all(clients, &nodes, RECOVERY_TIMEOUT, |mut client| {
        let request = OpenSegmentRequest {
            segment: Some(segment.clone()),
            epoch: epoch.0,
            truncate_after: tail.0,
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
    info!(volume, %pg, %tail, answered, opened, "recovered PG");
    Ok(RecoveredPg {
        pg,
        nodes,
        tail,
        scls,
        max_lsn_seen,
    })
}

/// Recovers every PG of the volume in parallel.
pub async fn recover_all(
    clients: &Arc<Clients>,
    meta: &VolumeMeta,
    epoch: Epoch,
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
        tasks.spawn(async move { recover_pg(&clients, &volume, pg, nodes, epoch).await });
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
