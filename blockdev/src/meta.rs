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
use sixfold_proto::wire::{GetVolumeMetaRequest, PutVolumeMetaRequest, VolumeMeta};
use sixfold_proto::{READ_QUORUM, WRITE_QUORUM};
use tokio::task::JoinSet;

use crate::clients::Clients;
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
    let mut tasks = JoinSet::new();
    for node in &cluster.nodes {
        let addr = node.addr.clone();
        let clients = clients.clone();
        let name = volume.to_owned();
        tasks.spawn(async move {
            let result = async {
                let mut client = clients.get(&addr)?;
                let response = tokio::time::timeout(
                    META_TIMEOUT,
                    client.get_volume_meta(GetVolumeMetaRequest { name }),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|status| status.message().to_string())?;
                Ok::<_, String>(response.into_inner().meta)
            }
            .await;
            (addr, result)
        });
    }
    let mut newest: Option<VolumeMeta> = None;
    let mut placed_answers = 0;
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((addr, result)) = joined else { continue };
        match result {
            Ok(meta) => {
                if placed.contains(&addr) {
                    placed_answers += 1;
                }
                if let Some(meta) = meta {
                    if newest.as_ref().is_none_or(|n| meta.version > n.version) {
                        newest = Some(meta);
                    }
                }
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    if placed_answers < READ_QUORUM && newest.is_none() {
        return Err(VolumeError::Meta {
            volume: volume.to_owned(),
            detail: format!(
                "only {placed_answers} of the 6 metadata nodes answered, {READ_QUORUM} needed; unreachable: {}",
                failures.join("; ")
            ),
        });
    }
    if placed_answers < READ_QUORUM {
        // Found some metadata but cannot prove it is the newest.
        return Err(VolumeError::Meta {
            volume: volume.to_owned(),
            detail: format!(
                "only {placed_answers} of the 6 metadata nodes answered, {READ_QUORUM} needed to be sure of the newest version; unreachable: {}",
                failures.join("; ")
            ),
        });
    }
    Ok(newest)
}

/// Writes `meta` to the volume's six metadata nodes; succeeds at a write quorum.
pub async fn write(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    meta: &VolumeMeta,
) -> Result<(), VolumeError> {
    let placed = meta_nodes(cluster, &meta.name)?;
    let mut tasks = JoinSet::new();
    for addr in placed {
        let clients = clients.clone();
        let meta = meta.clone();
        tasks.spawn(async move {
            let result = async {
                let mut client = clients.get(&addr)?;
                let response = tokio::time::timeout(
                    META_TIMEOUT,
                    client.put_volume_meta(PutVolumeMetaRequest {
                        meta: Some(meta.clone()),
                    }),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|status| status.message().to_string())?;
                let stored = response.into_inner().version;
                if stored != meta.version {
                    return Err(format!(
                        "node holds version {stored}, newer than ours ({}): another writer?",
                        meta.version
                    ));
                }
                Ok::<_, String>(())
            }
            .await;
            (addr, result)
        });
    }
    let mut acks = 0;
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((addr, result)) = joined else { continue };
        match result {
            Ok(()) => acks += 1,
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
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
