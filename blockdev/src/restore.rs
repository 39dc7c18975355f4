//! Restore, the cluster side: creates a new volume whose PGs the storage nodes rebuild from the
//! archive, each node its own segment, every PG in parallel (RestoreSegment).
//!
//! 1. The new volume must not exist. Its metadata is written first with `restoring` set (a
//!    writer refuses to mount it), placing every PG as a writer would.
//! 2. Every node of every PG builds its segment from the plan's objects, all at once. A PG is
//!    restored when at least [`WRITE_QUORUM`] of its six segments are (the others catch up by
//!    gap-fill once the volume is mounted); otherwise the restore fails and the volume stays
//!    marked `restoring`, never usable by mistake.
//! 3. The metadata is written again without `restoring`, with an epoch above every restored
//!    record's, so the first writer's recovery finds each PG's chain whole at the target and
//!    replays nothing.

use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::membership::Membership;
use sixfold_proto::placement;
use sixfold_proto::wire::{PgPlacement, RestoreSegmentRequest, SegmentRef, VolumeMeta};
use sixfold_proto::{Lsn, PgId, PAGE_SIZE, WRITE_QUORUM};
use tokio::task::JoinSet;

use crate::clients::Clients;
use crate::error::VolumeError;
use crate::meta;

/// Longest a node may go without reporting progress on a segment.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);

/// What to rebuild one PG from.
#[derive(Clone, Debug)]
pub struct PgSource {
    pub pg: PgId,
    /// Base image LSN (None: from the PG's first record).
    pub base: Option<Lsn>,
    /// Run names under the PG's `log/` folder, in order.
    pub runs: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct RestoreRequest {
    pub source_volume: String,
    pub volume: String,
    pub size_bytes: u64,
    pub target: Lsn,
    pub pgs: Vec<PgSource>,
}

/// Progress of one segment: (PG, node, bytes read so far, bytes to read).
#[derive(Clone, Debug)]
pub enum RestoreEvent {
    Progress {
        pg: PgId,
        node: String,
        bytes: u64,
        total: u64,
    },
    PgDone {
        pg: PgId,
        segments: usize,
    },
}

#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub pgs: usize,
    pub bytes: u64,
}

fn failed(volume: &str, detail: String) -> VolumeError {
    VolumeError::Meta {
        volume: volume.to_owned(),
        detail,
    }
}

pub async fn restore(
    cluster: &ClusterConfig,
    security: &sixfold_transport::Security,
    request: &RestoreRequest,
    on_event: impl Fn(RestoreEvent) + Send + Sync + 'static,
) -> Result<RestoreReport, VolumeError> {
    crate::validate_volume_name(&request.volume)?;
    let clients = Arc::new(Clients::new(security.clone()));
    if let Some(existing) = meta::read(&clients, cluster, &request.volume).await? {
        let what = if existing.restoring {
            "a restore that did not finish"
        } else {
            "a volume"
        };
        return Err(failed(
            &request.volume,
            format!("already exists ({what}); restore into a new name"),
        ));
    }
    let list = crate::nodes::current(&clients, cluster)
        .await
        .map_err(|e| {
            failed(
                &request.volume,
                format!("read the cluster's node list: {e}"),
            )
        })?;
    let mut placements = Vec::new();
    for source in &request.pgs {
        let too_few = || {
            failed(
                &request.volume,
                "the cluster has too few AZs with 2 active nodes to place a PG".into(),
            )
        };
        let ids = placement::place_ids(&list, &placement::pg_key(&request.volume, source.pg.0))
            .ok_or_else(too_few)?;
        let membership = Membership::new(ids).map_err(|_| too_few())?;
        let nodes = membership
            .nodes()
            .iter()
            .map(|n| list.get(*n).map(|r| r.addr.clone()).ok_or_else(too_few))
            .collect::<Result<Vec<_>, _>>()?;
        placements.push(PgPlacement {
            pg: source.pg.0,
            nodes,
            membership_epoch: 0,
            membership: Some(membership.to_wire()),
        });
    }
    let mut volume_meta = VolumeMeta {
        name: request.volume.clone(),
        size_bytes: request.size_bytes,
        page_size: PAGE_SIZE as u32,
        epoch: 1,
        version: 1,
        pgs: placements.clone(),
        writer: crate::volume::writer_id(),
        restoring: true,
    };
    meta::write(&clients, cluster, &volume_meta).await?;

    let on_event = Arc::new(on_event);
    let mut tasks = JoinSet::new();
    for (source, placement) in request.pgs.iter().zip(&placements) {
        for node in &placement.nodes {
            let client = clients.get(node).map_err(|e| failed(&request.volume, e))?;
            let grpc = RestoreSegmentRequest {
                segment: Some(SegmentRef {
                    volume: request.volume.clone(),
                    pg: source.pg.0,
                }),
                source_volume: request.source_volume.clone(),
                source_pg: source.pg.0,
                base_lsn: source.base.map_or(0, |l| l.0),
                runs: source.runs.clone(),
                target_lsn: request.target.0,
            };
            let node = node.clone();
            let pg = source.pg;
            let on_event = on_event.clone();
            tasks.spawn(async move {
                let result = restore_segment(client, grpc, pg, &node, &*on_event).await;
                (pg, node, result)
            });
        }
    }
    type Outcome = (usize, Vec<(String, String)>, u64);
    let mut done: std::collections::HashMap<PgId, Outcome> = std::collections::HashMap::new();
    let mut max_epoch = 0;
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        let (pg, node, result) = joined.map_err(|e| failed(&request.volume, e.to_string()))?;
        let entry = done.entry(pg).or_default();
        match result {
            Ok((epoch, read)) => {
                entry.0 += 1;
                entry.2 = entry.2.max(read);
                max_epoch = max_epoch.max(epoch);
                if entry.0 == WRITE_QUORUM {
                    on_event(RestoreEvent::PgDone {
                        pg,
                        segments: entry.0,
                    });
                }
            }
            Err(error) => {
                tracing::debug!(%pg, node, "restoring a segment failed: {error}");
                entry.1.push((node, error));
            }
        }
    }
    for source in &request.pgs {
        let (ok, errors, read) = done.remove(&source.pg).unwrap_or_default();
        bytes += read;
        if ok < WRITE_QUORUM {
            return Err(failed(
                &request.volume,
                format!(
                    "{} was restored on {ok} of 6 nodes, {WRITE_QUORUM} needed (the volume stays unusable): {}",
                    source.pg,
                    describe_errors(&errors)
                ),
            ));
        }
    }
    volume_meta.restoring = false;
    volume_meta.version += 1;
    volume_meta.epoch = volume_meta.epoch.max(max_epoch);
    meta::write(&clients, cluster, &volume_meta).await?;
    Ok(RestoreReport {
        pgs: request.pgs.len(),
        bytes,
    })
}

/// The nodes' errors, each distinct message once with the nodes that gave it.
fn describe_errors(errors: &[(String, String)]) -> String {
    let mut by_message: Vec<(&str, Vec<&str>)> = Vec::new();
    for (node, error) in errors {
        match by_message.iter_mut().find(|(m, _)| *m == error) {
            Some((_, nodes)) => nodes.push(node),
            None => by_message.push((error, vec![node])),
        }
    }
    by_message
        .iter()
        .map(|(message, nodes)| format!("{message} (from {})", nodes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One node's RestoreSegment stream: (newest record epoch, bytes read).
async fn restore_segment(
    mut client: crate::clients::NodeClient,
    request: RestoreSegmentRequest,
    pg: PgId,
    node: &str,
    on_event: &(dyn Fn(RestoreEvent) + Send + Sync),
) -> Result<(u64, u64), String> {
    let mut stream = tokio::time::timeout(PROGRESS_TIMEOUT, client.restore_segment(request))
        .await
        .map_err(|_| format!("no answer within {PROGRESS_TIMEOUT:?}"))?
        .map_err(|status| sixfold_transport::status_text(&status))?
        .into_inner();
    loop {
        let next = tokio::time::timeout(PROGRESS_TIMEOUT, stream.message())
            .await
            .map_err(|_| format!("no progress within {PROGRESS_TIMEOUT:?}"))?
            .map_err(|status| sixfold_transport::status_text(&status))?;
        let Some(progress) = next else {
            return Err("the node ended the restore without an answer".into());
        };
        on_event(RestoreEvent::Progress {
            pg,
            node: node.to_owned(),
            bytes: progress.bytes,
            total: progress.total_bytes,
        });
        if progress.done {
            return Ok((progress.max_epoch, progress.bytes));
        }
    }
}
