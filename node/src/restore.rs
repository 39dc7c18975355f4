//! Restore: this node builds its segment of a new volume's PG straight from archived objects
//! (RestoreSegment), so that every PG of the new volume is rebuilt in parallel by the nodes that
//! will host it, and its writer mounts it with no log to replay.
//!
//! 1. The base image (if the plan names one): every chunk is read, checked (format checksum,
//!    pages of this PG, LSNs at or below the image's) and stored like hydrated pages; then the
//!    segment starts at the image's LSN (fold point and SCL, durably in the checkpoint).
//! 2. The runs, in order: each is checked (checksum, its volume, PG and range match its key),
//!    and its records in (base, target] are validated like any record from the network
//!    (`record::validate`), must chain by backlink (each one's backlink is the previous record,
//!    the first one's at or below the base: a run missing from the middle fails the restore,
//!    never leaves a silent gap), and are applied straight to the page store: nothing goes
//!    through the hot log, and nothing is left to replay or fold.
//! 3. The segment then starts at its last record (fold point and SCL, durably in the
//!    checkpoint), as a hydrated segment does.
//!
//! A failed restore leaves a segment the new volume's metadata does not name as usable (the
//! restore command marks the volume `restoring` until every PG is built).

use sixfold_archive::keys::{self, RunKey};
use sixfold_archive::manifest::BaseManifest;
use sixfold_archive::{format, ObjectStore};
use sixfold_proto::wire::{RestoreSegmentProgress, RestoreSegmentRequest};
use sixfold_proto::{Lsn, PgId};
use tokio::sync::mpsc;
use tracing::info;

use crate::archive_seal;
use crate::error::StoreError;
use crate::index::SegmentKey;
use crate::pagestore::PageImage;
use crate::request;
use crate::store::Store;

/// A validated RestoreSegment request.
#[derive(Debug)]
pub struct RestoreJob {
    pub key: SegmentKey,
    pub source_volume: String,
    pub source_pg: PgId,
    pub base: Option<Lsn>,
    pub runs: Vec<RunKey>,
    pub target: Lsn,
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidArgument(message)
}

impl RestoreJob {
    pub fn parse(request: &RestoreSegmentRequest) -> Result<RestoreJob, StoreError> {
        let key = request::segment_key(request.segment.as_ref())?;
        request::volume_name(&request.source_volume)?;
        if request.source_pg != key.pg.0 {
            return Err(invalid(format!(
                "source PG {} differs from the new segment's PG {} (a restored volume keeps its geometry)",
                request.source_pg, key.pg.0
            )));
        }
        if request.target_lsn == 0 || request.base_lsn > request.target_lsn {
            return Err(invalid(format!(
                "target LSN {} must be positive and at or above the base image's {}",
                request.target_lsn, request.base_lsn
            )));
        }
        let runs = request
            .runs
            .iter()
            .map(|name| {
                RunKey::parse(name).ok_or_else(|| invalid(format!("{name:?} is not a run name")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RestoreJob {
            key,
            source_volume: request.source_volume.clone(),
            source_pg: PgId(request.source_pg),
            base: (request.base_lsn > 0).then_some(Lsn(request.base_lsn)),
            runs,
            target: Lsn(request.target_lsn),
        })
    }
}

/// Progress sent to the client as the job goes.
struct Reporter {
    sender: mpsc::Sender<Result<RestoreSegmentProgress, tonic::Status>>,
    bytes: u64,
    total: u64,
}

impl Reporter {
    async fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        let _ = self
            .sender
            .send(Ok(RestoreSegmentProgress {
                bytes: self.bytes,
                total_bytes: self.total,
                done: false,
                scl: 0,
                max_epoch: 0,
            }))
            .await;
    }
}

/// Runs the job, sending progress and then the final answer (or the error) on `sender`.
pub async fn run(
    store: Store,
    objects: ObjectStore,
    job: RestoreJob,
    sender: mpsc::Sender<Result<RestoreSegmentProgress, tonic::Status>>,
) {
    let result = restore(&store, &objects, &job, sender.clone()).await;
    let message = match result {
        Ok((scl, max_epoch, bytes)) => Ok(RestoreSegmentProgress {
            bytes,
            total_bytes: bytes,
            done: true,
            scl: scl.0,
            max_epoch,
        }),
        Err(error) => {
            tracing::warn!(segment = %job.key, "restore failed: {error}");
            Err(tonic::Status::failed_precondition(format!(
                "restore of {} failed: {error}",
                job.key
            )))
        }
    };
    let _ = sender.send(message).await;
}

async fn restore(
    store: &Store,
    objects: &ObjectStore,
    job: &RestoreJob,
    sender: mpsc::Sender<Result<RestoreSegmentProgress, tonic::Status>>,
) -> Result<(Lsn, u64, u64), String> {
    let started = std::time::Instant::now();
    let key = &job.key;
    if store.segment_exists(key) {
        return Err(format!(
            "this node already holds segment {key}: restore into a new volume name"
        ));
    }
    let source = (&job.source_volume, job.source_pg);
    // Sizes, for progress: one listing of the PG's archive.
    let prefix = keys::pg_prefix(source.0, source.1);
    let listed = objects.list(&prefix).await.map_err(|e| e.to_string())?;
    let size_of = |object: &str| listed.iter().find(|l| l.key == object).map(|l| l.size);
    let mut total = 0;
    if let Some(base) = job.base {
        let base_prefix = keys::base_prefix(source.0, source.1, base);
        total += listed
            .iter()
            .filter(|l| l.key.starts_with(&base_prefix))
            .map(|l| l.size)
            .sum::<u64>();
    }
    for run in &job.runs {
        let object = keys::run_key(source.0, source.1, run);
        total += size_of(&object).ok_or_else(|| format!("object {object} is missing"))?;
    }
    let mut reporter = Reporter {
        sender,
        bytes: 0,
        total,
    };
    let mut at = Lsn::ZERO;
    if let Some(base) = job.base {
        restore_base(store, objects, job, base, &mut reporter).await?;
        at = base;
    }
    let mut max_epoch = 0;
    let mut last_applied = at;
    for run in &job.runs {
        let object = keys::run_key(source.0, source.1, run);
        let body = objects.get(&object).await.map_err(|e| e.to_string())?;
        let fetched = body.len() as u64;
        let body = archive_seal::open(&store.keys(), objects, source.0, &object, body).await?;
        let decoded = decode(body, format::decode_run)
            .await
            .map_err(|e| format!("object {object}: {e}"))?;
        if decoded.volume != *source.0
            || decoded.pg != source.1 .0
            || Lsn(decoded.start) != run.start
            || Lsn(decoded.end) != run.end
        {
            return Err(format!(
                "object {object} holds {}/pg {} ({}, {}], not what its key says",
                decoded.volume, decoded.pg, decoded.start, decoded.end
            ));
        }
        let wanted: Vec<_> = decoded
            .records
            .into_iter()
            .filter(|r| Lsn(r.lsn) > last_applied && Lsn(r.lsn) <= job.target)
            .collect();
        for record in &wanted {
            sixfold_proto::record::validate(record, source.1)
                .map_err(|e| format!("object {object}: {e}"))?;
            let chained = if last_applied == at {
                Lsn(record.backlink) <= at
            } else {
                Lsn(record.backlink) == last_applied
            };
            if !chained || Lsn(record.lsn) <= last_applied {
                return Err(format!(
                    "object {object}: record {} links to {}, not to {last_applied}: the archive has a hole",
                    record.lsn, record.backlink
                ));
            }
            last_applied = Lsn(record.lsn);
            max_epoch = max_epoch.max(record.epoch);
        }
        if !wanted.is_empty() {
            store
                .apply_restored_records(key, wanted)
                .await
                .map_err(|e| e.to_string())?;
        }
        reporter.add(fetched).await;
    }
    if last_applied > at {
        store
            .finish_hydration(key, last_applied)
            .await
            .map_err(|e| e.to_string())?;
    }
    let scl = store.segment_state(key).scl;
    if scl < last_applied {
        return Err(format!(
            "the restored segment ends at LSN {scl}, below its last record {last_applied}"
        ));
    }
    info!(segment = %key, source = %format!("{}/{}", source.0, source.1), target = %job.target, %scl, bytes = reporter.bytes, elapsed_ms = started.elapsed().as_millis() as u64, "restored a segment from the archive");
    Ok((scl, max_epoch, reporter.bytes))
}

/// Decompression off the runtime thread (the node serves requests on one thread).
async fn decode<T: Send + 'static>(
    body: bytes::Bytes,
    decode: fn(&[u8]) -> Result<T, format::FormatError>,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || decode(&body).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

async fn restore_base(
    store: &Store,
    objects: &ObjectStore,
    job: &RestoreJob,
    base: Lsn,
    reporter: &mut Reporter,
) -> Result<(), String> {
    let key = &job.key;
    let (volume, pg) = (&job.source_volume, job.source_pg);
    let done = keys::base_done_key(volume, pg, base);
    let body = objects.get(&done).await.map_err(|e| e.to_string())?;
    let manifest: BaseManifest =
        serde_json::from_slice(&body).map_err(|e| format!("object {done} does not parse: {e}"))?;
    if manifest.lsn != base.0 || manifest.pg != pg.0 || manifest.volume != *volume {
        return Err(format!("object {done} describes another image"));
    }
    for chunk in &manifest.chunks {
        let object = keys::base_chunk_key(volume, pg, base, chunk.index);
        let body = objects.get(&object).await.map_err(|e| e.to_string())?;
        let fetched = body.len() as u64;
        let body = archive_seal::open(&store.keys(), objects, volume, &object, body).await?;
        let decoded = decode(body, format::decode_pages)
            .await
            .map_err(|e| format!("object {object}: {e}"))?;
        if decoded.pages.len() as u64 != chunk.pages {
            return Err(format!(
                "object {object} holds {} pages, its manifest says {}",
                decoded.pages.len(),
                chunk.pages
            ));
        }
        let images = decoded
            .pages
            .into_iter()
            .map(|image| {
                PageImage::from_wire(image, pg, base)
                    .map_err(|e| format!("object {object} has {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        store
            .store_hydrated_pages(key, images)
            .await
            .map_err(|e| e.to_string())?;
        reporter.add(fetched).await;
    }
    store
        .finish_hydration(key, base)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
