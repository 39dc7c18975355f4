//! Volume metadata on the storage nodes: replicated like a PG.
//!
//! The metadata record (size, PG map, volume epoch) lives on the six nodes that placement picks
//! for the key `VOLUME/meta`. A write goes to all six and succeeds at `WRITE_QUORUM`
//! acknowledgements; a read asks every node of the cluster and needs answers from at least
//! `READ_QUORUM` of the six: any three meet every four that acknowledged the newest write, so
//! the highest version among the answers is the newest durable one.
//!
//! Only the single writer of a volume writes its metadata (versions increase by one per write).
//! A mount becomes that writer by [`claim`]ing the next version: a node refuses a version it
//! holds with other contents, so of two mounts claiming one version at most one reaches a write
//! quorum; when they split the nodes so that neither does, both try again at the next version
//! after a random pause (before, both failed).

use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::membership::{Membership, CHANGES_MAX};
use sixfold_proto::placement;
use sixfold_proto::wire::{GetVolumeMetaRequest, PgPlacement, PutVolumeMetaRequest, VolumeMeta};
use sixfold_proto::{COPIES, PG_BYTES, READ_QUORUM, VOLUME_BYTES_MAX, WRITE_QUORUM};

use crate::clients::{ask_all, ask_quorum, at_least, Answer, Clients};
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
                // Metadata that cannot be a volume's (a corrupt or hostile node's) counts as no
                // answer: a version near 2^64 or another volume's PG map must not win.
                if let Some(Err(why)) = response.meta.as_ref().map(|m| check_answer(m, volume)) {
                    failures.push(format!("{addr}: answered unusable metadata: {why}"));
                    continue;
                }
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

/// Whether `meta`, a node's answer for `volume`, can be that volume's metadata at all: its
/// name, size, epoch and version in range, and a PG map of distinct PGs inside the volume,
/// each with at most the nodes of two replacements and a valid membership.
fn check_answer(meta: &VolumeMeta, volume: &str) -> Result<(), String> {
    if meta.name != volume {
        return Err(format!("it names volume {:?}", meta.name));
    }
    if meta.size_bytes > VOLUME_BYTES_MAX {
        return Err(format!(
            "size {} is above the largest volume",
            meta.size_bytes
        ));
    }
    if meta.epoch >= EPOCH_MAX || meta.version == u64::MAX {
        return Err(format!(
            "epoch {} or version {} is out of range",
            meta.epoch, meta.version
        ));
    }
    let pgs_in_size = meta.size_bytes.div_ceil(PG_BYTES);
    let mut seen = std::collections::BTreeSet::new();
    for placement in &meta.pgs {
        if u64::from(placement.pg) >= pgs_in_size || !seen.insert(placement.pg) {
            return Err(format!(
                "PG {} is outside the volume or listed twice",
                placement.pg
            ));
        }
        if placement.nodes.len() > COPIES + CHANGES_MAX {
            return Err(format!(
                "PG {} lists {} nodes",
                placement.pg,
                placement.nodes.len()
            ));
        }
        if let Some(membership) = &placement.membership {
            Membership::from_wire(membership).map_err(|e| format!("PG {}: {e}", placement.pg))?;
        }
    }
    Ok(())
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

/// Why a metadata write fell short of a write quorum.
struct Shortfall {
    /// Metadata nodes asked.
    placed: usize,
    acks: usize,
    /// Nodes that refused the version: they hold it (or a newer one) with other contents.
    refused: usize,
    /// Nodes that did not answer: they may hold anything.
    unreachable: usize,
    /// A node holds a newer version: another writer wrote after the version we read.
    newer: bool,
    failures: Vec<String>,
}

impl Shortfall {
    /// No other writer can have reached a write quorum with this version either (the nodes
    /// that refused ours, plus those that did not answer, are fewer than 4): two mounts
    /// claimed the same version at once and split the nodes between them. Neither won; a new
    /// attempt at the next version can.
    fn nobody_won(&self) -> bool {
        // Every node that did not acknowledge ours (refused, unreachable, or not answering
        // at all) may hold the other claim.
        !self.newer && self.placed.saturating_sub(self.acks) < WRITE_QUORUM
    }

    fn into_error(self, meta: &VolumeMeta) -> VolumeError {
        if self.refused == 0 && !self.newer {
            // Only unreachable nodes kept it from a quorum: more of them answering would do.
            return VolumeError::MetaUnreachable {
                volume: meta.name.clone(),
                answered: self.acks,
                needed: WRITE_QUORUM,
                detail: format!(
                    " to write metadata version {}; unreachable: {}",
                    meta.version,
                    self.failures.join("; ")
                ),
            };
        }
        VolumeError::Meta {
            volume: meta.name.clone(),
            detail: format!(
                "metadata version {} reached only {} of 6 nodes, {WRITE_QUORUM} needed: {}",
                meta.version,
                self.acks,
                self.failures.join("; ")
            ),
        }
    }
}

/// Sends `meta` to the volume's six metadata nodes and counts their answers.
async fn put(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    meta: &VolumeMeta,
) -> Result<Result<(), Shortfall>, VolumeError> {
    let placed = meta_nodes(cluster, &meta.name)?;
    let answers = ask_quorum(
        clients,
        &placed,
        META_TIMEOUT,
        at_least(WRITE_QUORUM),
        |mut client| {
            let request = PutVolumeMetaRequest {
                meta: Some(meta.clone()),
            };
            async move { client.put_volume_meta(request).await }
        },
    )
    .await;
    let mut shortfall = Shortfall {
        placed: placed.len(),
        acks: 0,
        refused: 0,
        unreachable: 0,
        newer: false,
        failures: Vec::new(),
    };
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(response) if response.version == meta.version => shortfall.acks += 1,
            Ok(response) => {
                shortfall.newer = true;
                shortfall.refused += 1;
                shortfall.failures.push(format!(
                    "{addr}: node holds version {}, newer than ours ({}): another writer?",
                    response.version, meta.version
                ))
            }
            Err(error) => {
                if error.contains("FailedPrecondition") || error.contains("InvalidArgument") {
                    shortfall.refused += 1;
                } else {
                    shortfall.unreachable += 1;
                }
                shortfall.failures.push(format!("{addr}: {error}"))
            }
        }
    }
    if shortfall.acks >= WRITE_QUORUM {
        Ok(Ok(()))
    } else {
        Ok(Err(shortfall))
    }
}

/// Writes `meta` to the volume's six metadata nodes; succeeds at a write quorum.
/// Moves `meta` to its next version (and, for a new writer, its next epoch), refusing values
/// the nodes returned that leave no room (a hostile or corrupt metadata node must not make
/// them wrap and let a writer reuse an old epoch).
pub fn next_version(meta: &mut VolumeMeta, new_epoch: bool) -> Result<(), VolumeError> {
    let overflow = |what: &str| VolumeError::Meta {
        volume: meta.name.clone(),
        detail: format!("the stored {what} leaves no room for a next one: the metadata is corrupt"),
    };
    let epoch = if new_epoch {
        meta.epoch
            .checked_add(1)
            .filter(|e| *e < EPOCH_MAX)
            .ok_or_else(|| overflow("epoch"))?
    } else {
        meta.epoch
    };
    let version = meta
        .version
        .checked_add(1)
        .ok_or_else(|| overflow("version"))?;
    meta.epoch = epoch;
    meta.version = version;
    Ok(())
}

/// Volume epochs stay below this (as membership epochs do): an epoch near 2^64 from a hostile
/// node would otherwise fence every later writer for good.
pub const EPOCH_MAX: u64 = 1 << 62;

pub async fn write(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    meta: &VolumeMeta,
) -> Result<(), VolumeError> {
    put(clients, cluster, meta)
        .await?
        .map_err(|shortfall| shortfall.into_error(meta))
}

/// How many times [`claim`] tries again after a tie.
const CLAIM_ATTEMPTS: u32 = 8;

/// Becomes the volume's writer: writes `meta` (read from a quorum, then given the next epoch
/// and version by the caller). When two mounts claim the same version at once and split the
/// nodes so that neither reaches a write quorum, both would fail; each instead waits a random
/// moment, reads the metadata again and, if it is still at the tied version, claims the next
/// one, until one wins. A mount that finds another's claim possibly won (a write quorum may hold
/// it, or the metadata moved past the tie) fails, as before: the node refusing a version held
/// with other contents is what keeps two writers out of one epoch.
pub async fn claim(
    clients: &Arc<Clients>,
    cluster: &ClusterConfig,
    meta: &mut VolumeMeta,
) -> Result<(), VolumeError> {
    let mut attempt = 1;
    loop {
        let shortfall = match put(clients, cluster, meta).await? {
            Ok(()) => return Ok(()),
            Err(shortfall) => shortfall,
        };
        if !shortfall.nobody_won() || attempt == CLAIM_ATTEMPTS {
            return Err(shortfall.into_error(meta));
        }
        let pause = Duration::from_millis(10 + sixfold_proto::random_u64() % 200);
        tracing::info!(
            volume = %meta.name, version = meta.version, acks = shortfall.acks,
            refused = shortfall.refused, ?pause,
            "another mount claimed the same metadata version and neither won: trying again"
        );
        tokio::time::sleep(pause).await;
        let newest =
            read(clients, cluster, &meta.name)
                .await?
                .ok_or_else(|| VolumeError::Meta {
                    volume: meta.name.clone(),
                    detail: "disappeared while mounting".into(),
                })?;
        if newest.restoring || newest.page_size != meta.page_size {
            // The tie was with a restore (or a mount of another format) creating this name.
            return Err(VolumeError::Meta {
                volume: meta.name.clone(),
                detail: "another process created the volume at the same time (a restore?)".into(),
            });
        }
        if newest.version > meta.version {
            // The other mount won meanwhile (at the next version): this one loses the race
            // rather than fencing the winner.
            return Err(VolumeError::Meta {
                volume: meta.name.clone(),
                detail: format!(
                    "another writer opened the volume at the same time (it holds metadata \
                     version {}; ours was {})",
                    newest.version, meta.version
                ),
            });
        }
        let writer = meta.writer;
        *meta = newest;
        next_version(meta, true)?;
        meta.writer = writer;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's answer that cannot be the volume's metadata is refused (it would otherwise win
    /// the read with its version, or hand the writer another volume's PG map).
    #[test]
    fn unusable_metadata_answers_are_refused() {
        let good = VolumeMeta {
            name: "v".into(),
            size_bytes: 20 << 30,
            epoch: 3,
            version: 7,
            pgs: vec![
                PgPlacement {
                    pg: 0,
                    ..PgPlacement::default()
                },
                PgPlacement {
                    pg: 1,
                    ..PgPlacement::default()
                },
            ],
            ..VolumeMeta::default()
        };
        assert_eq!(check_answer(&good, "v"), Ok(()));
        let bad = |change: &dyn Fn(&mut VolumeMeta)| {
            let mut meta = good.clone();
            change(&mut meta);
            check_answer(&meta, "v").expect_err("refused")
        };
        assert!(bad(&|m| m.name = "w".into()).contains("names volume"));
        assert!(bad(&|m| m.size_bytes = u64::MAX).contains("largest"));
        assert!(bad(&|m| m.version = u64::MAX).contains("out of range"));
        assert!(bad(&|m| m.epoch = u64::MAX).contains("out of range"));
        assert!(bad(&|m| m.pgs[1].pg = 0).contains("twice"));
        assert!(bad(&|m| m.pgs[1].pg = 2).contains("outside"));
        assert!(bad(&|m| m.pgs[0].nodes = vec![String::new(); 9]).contains("nodes"));
        assert!(bad(&|m| {
            m.pgs[0].membership = Some(sixfold_proto::wire::Membership {
                epoch: 1,
                members: vec![1, 2, 3],
                changes: vec![],
            })
        })
        .contains("PG 0"));
    }

    /// Metadata whose epoch or version a hostile or corrupt node set near 2^64 is refused, not
    /// wrapped (a wrapped epoch would let a new writer reuse an old one's).
    #[test]
    fn the_next_version_never_wraps() {
        let mut meta = VolumeMeta {
            name: "v".into(),
            epoch: 4,
            version: 9,
            ..VolumeMeta::default()
        };
        next_version(&mut meta, true).expect("room");
        assert_eq!((meta.epoch, meta.version), (5, 10));
        next_version(&mut meta, false).expect("room");
        assert_eq!((meta.epoch, meta.version), (5, 11));
        for (epoch, version, new_epoch) in [
            (u64::MAX, 1, true),
            (EPOCH_MAX - 1, 1, true),
            (1, u64::MAX, false),
        ] {
            let mut bad = VolumeMeta {
                name: "v".into(),
                epoch,
                version,
                ..VolumeMeta::default()
            };
            let error = next_version(&mut bad, new_epoch).expect_err("no room");
            assert!(error.to_string().contains("corrupt"), "{error}");
            assert_eq!((bad.epoch, bad.version), (epoch, version), "unchanged");
        }
    }
}
