//! Volume metadata on the storage nodes: replicated like a PG.
//!
//! The metadata record (size, PG map, volume epoch) lives on the six nodes that placement picks
//! for the key `VOLUME/meta`. A write goes to all six and succeeds at `WRITE_QUORUM`
//! acknowledgements; a read asks every node of the cluster and needs answers from at least
//! `READ_QUORUM` of the six: any three meet every four that acknowledged the newest write, so
//! the highest version among the answers is the newest durable one.
//!
//! Only the single writer of a volume writes its metadata (versions increase by one per write).

use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::placement;
use sixfold_proto::wire::{GetVolumeMetaRequest, PgPlacement, PutVolumeMetaRequest, VolumeMeta};
use sixfold_proto::{READ_QUORUM, WRITE_QUORUM};

use crate::clients::{ask_all, Answer, Clients};
use crate::error::VolumeError;

const META_TIMEOUT: Duration = Duration::from_secs(5);

/// The six nodes holding the metadata of `volume`.
pub fn meta_nodes(cluster: &ClusterConfig, volume: &str) -> Result<Vec<String>, VolumeError> {
    placement::place(cluster, &placement::meta_key(volume)).ok_or_else(|| VolumeError::Meta {
        volume: volume.to_owned(),
        detail: "the cluster has too few AZs or nodes to place the volume".into(),
    })
}

/// Reads the newest metadata of `volume`: `Ok(None)` when a read quorum says it does not exist.
pub async fn read(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    volume: &str,
) -> Result<Option<VolumeMeta>, VolumeError> {
    let placed = meta_nodes(cluster, volume)?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let answers = ask_all(clients, &addrs, META_TIMEOUT, |mut client| {
        let request = GetVolumeMetaRequest {
            name: volume.to_owned(),
        };
        async move { client.get_volume_meta(request).await }
    })
    .await;
    let mut held: Vec<VolumeMeta> = Vec::new();
    let mut placed_answers = 0;
    let mut failures = Vec::new();
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(response) => {
                if placed.contains(&addr) {
                    placed_answers += 1;
                }
                if let Some(meta) = response.meta {
                    held.push(meta);
                }
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    let newest = newest_of(held);
    if placed_answers < READ_QUORUM {
        // Found metadata or not, fewer than a read quorum cannot prove it is the newest.
        let why = if newest.is_some() {
            " to be sure of the newest version"
        } else {
            ""
        };
        return Err(VolumeError::MetaUnreachable {
            volume: volume.to_owned(),
            answered: placed_answers,
            needed: READ_QUORUM,
            detail: format!("{why}; unreachable: {}", failures.join("; ")),
        });
    }
    Ok(newest)
}

/// The newest metadata among the answers: the highest version, with each PG's membership the
/// newest any answer holds (repair drivers record membership steps per PG, by epoch, on four
/// of the six metadata nodes, whatever version those hold).
fn newest_of(answers: Vec<VolumeMeta>) -> Option<VolumeMeta> {
    let mut newest = answers.iter().max_by_key(|m| m.version)?.clone();
    for placement in &mut newest.pgs {
        let recorded = |p: &PgPlacement| p.membership.as_ref().map_or(0, |m| m.epoch);
        let best = answers
            .iter()
            .flat_map(|m| m.pgs.iter())
            .filter(|p| p.pg == placement.pg)
            .max_by_key(|p| recorded(p));
        if let Some(best) = best {
            if recorded(best) > recorded(placement) {
                placement.membership = best.membership.clone();
                placement.nodes = best.nodes.clone();
            }
        }
    }
    Some(newest)
}

/// Writes `meta` to the volume's six metadata nodes; succeeds at a write quorum.
pub async fn write(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    meta: &VolumeMeta,
) -> Result<(), VolumeError> {
    let placed = meta_nodes(cluster, &meta.name)?;
    let answers = ask_all(clients, &placed, META_TIMEOUT, |mut client| {
        let request = PutVolumeMetaRequest {
            meta: Some(meta.clone()),
        };
        async move { client.put_volume_meta(request).await }
    })
    .await;
    let mut acks = 0;
    let mut failures = Vec::new();
    let mut newer = false;
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(response) if response.version == meta.version => acks += 1,
            Ok(response) => {
                newer = true;
                failures.push(format!(
                    "{addr}: node holds version {}, newer than ours ({}): another writer?",
                    response.version, meta.version
                ))
            }
            Err(error) => {
                newer |= error.contains("FailedPrecondition") || error.contains("InvalidArgument");
                failures.push(format!("{addr}: {error}"))
            }
        }
    }
    if acks < WRITE_QUORUM && !newer {
        // Only unreachable nodes kept it from a quorum: more of them answering would do.
        return Err(VolumeError::MetaUnreachable {
            volume: meta.name.clone(),
            answered: acks,
            needed: WRITE_QUORUM,
            detail: format!(
                " to write metadata version {}; unreachable: {}",
                meta.version,
                failures.join("; ")
            ),
        });
    }
    if acks < WRITE_QUORUM {
        return Err(VolumeError::Meta {
            volume: meta.name.clone(),
            detail: format!(
                "metadata version {} reached only {acks} of 6 nodes, {WRITE_QUORUM} needed: {}",
                meta.version,
                failures.join("; ")
            ),
        });
    }
    Ok(())
}
