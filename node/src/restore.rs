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
//! restore command marks the volume `restoring` until every PG is built). One cut short before
//! its segment existed leaves page images only; the next restore of that segment drops them
//! first, so that it starts from an empty page store.
//!
//! Limits: a node runs at most [`RESTORES_RUNNING_MAX`] restores at once (each decodes and
//! writes at the disk's pace; more would only share it), keeps at most
//! [`RESTORES_WAITING_MAX`] more waiting their turn, and refuses beyond (RESOURCE_EXHAUSTED). A
//! restore whose caller goes away (the command killed, its connection lost) stops at its next
//! step: nothing is left running for no one.

use sixfold_archive::keys::{self, RunKey};
use sixfold_archive::manifest::BaseManifest;
use sixfold_archive::{format, ObjectStore};
use sixfold_proto::wire::{RestoreSegmentProgress, RestoreSegmentRequest};
use sixfold_proto::{Lsn, PgId};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::archive_seal;
use crate::error::StoreError;
use crate::index::SegmentKey;
use crate::pagestore::PageImage;
use crate::request;
use crate::store::Store;

/// Restores a node runs at once.
pub const RESTORES_RUNNING_MAX: usize = 2;
/// Restores a node keeps waiting for their turn; more are refused. A restore asks every node of
/// every PG at once: this takes the largest volume ([`sixfold_proto::PG_COUNT_MAX`] PGs) at a
/// time. A waiting restore costs a task and a channel.
pub const RESTORES_WAITING_MAX: usize = 8192;
/// How often a waiting restore tells its caller it is still there.
const WAITING_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The node's restore slots: admission (running and waiting) and running.
#[derive(Clone, Debug)]
pub struct RestoreSlots {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// The segments being restored: one restore of a segment at a time.
    restoring: Arc<std::sync::Mutex<std::collections::HashSet<SegmentKey>>>,
}

/// A segment's place among those being restored, given back when dropped.
struct Restoring {
    restoring: Arc<std::sync::Mutex<std::collections::HashSet<SegmentKey>>>,
    key: SegmentKey,
}

impl Drop for Restoring {
    fn drop(&mut self) {
        crate::lock(&self.restoring).remove(&self.key);
    }
}

const CALLER_GONE: &str = "its caller went away";

impl Default for RestoreSlots {
    fn default() -> RestoreSlots {
        RestoreSlots::new(RESTORES_RUNNING_MAX, RESTORES_WAITING_MAX)
    }
}

impl RestoreSlots {
    pub fn new(running: usize, waiting: usize) -> RestoreSlots {
        RestoreSlots {
            admitted: Arc::new(Semaphore::new(running + waiting)),
            running: Arc::new(Semaphore::new(running)),
            restoring: Arc::default(),
        }
    }

    /// Claims `key` for one restore; None while another restore of it runs on this node.
    fn claim(&self, key: &SegmentKey) -> Option<Restoring> {
        crate::lock(&self.restoring)
            .insert(key.clone())
            .then(|| Restoring {
                restoring: Arc::clone(&self.restoring),
                key: key.clone(),
            })
    }

    /// A place for one more restore, or None when the node has as many as it keeps.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.admitted).try_acquire_owned().ok()
    }
}

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
    /// Reports progress, unless the caller has not taken the earlier reports: progress is
    /// only news, and a caller that stopped reading must not hold up the restore (and its
    /// slot) for ever.
    /// Fails when the caller went away: the restore then stops here, between two steps (its
    /// blocking work is never cut short, so nothing of it lands after a later attempt began).
    async fn add(&mut self, bytes: u64) -> Result<(), String> {
        if self.sender.is_closed() {
            return Err(CALLER_GONE.to_string());
        }
        self.bytes += bytes;
        let _ = self.sender.try_send(Ok(RestoreSegmentProgress {
            bytes: self.bytes,
            total_bytes: self.total,
            done: false,
            scl: 0,
            max_epoch: 0,
        }));
        Ok(())
    }
}

/// Runs the job once one of the node's restore slots is free, sending progress and then the
/// final answer (or the error) on `sender`; stops, without an answer, as soon as the receiver
/// is gone (the caller went away). `admitted` is the job's place among the node's restores.
pub async fn run(
    store: Store,
    objects: ObjectStore,
    job: RestoreJob,
    sender: mpsc::Sender<Result<RestoreSegmentProgress, tonic::Status>>,
    slots: RestoreSlots,
    admitted: OwnedSemaphorePermit,
) {
    let _admitted = admitted;
    let Some(_restoring) = slots.claim(&job.key) else {
        let _ = sender
            .send(Err(tonic::Status::failed_precondition(format!(
                "a restore of segment {} is already running on this node",
                job.key
            ))))
            .await;
        return;
    };
    let work = async {
        // While it waits for its turn the caller hears from it (an empty progress report every
        // few seconds), so that its timeout without progress does not fire.
        let acquire = slots.running.acquire();
        tokio::pin!(acquire);
        let _running = loop {
            tokio::select! {
                permit = &mut acquire => {
                    break permit.map_err(|_| "the node is shutting down".to_string())?;
                }
                () = sender.closed() => return Err(CALLER_GONE.to_string()),
                () = tokio::time::sleep(WAITING_REPORT_EVERY) => {
                    let waiting = RestoreSegmentProgress {
                        bytes: 0,
                        total_bytes: 0,
                        done: false,
                        scl: 0,
                        max_epoch: 0,
                    };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(Ok(waiting)) {
                        return Err(CALLER_GONE.to_string());
                    }
                }
            }
        };
        restore(&store, &objects, &job, sender.clone()).await
    };
    // The restore stops by itself at its next step once its caller is gone (see Reporter::add).
    let result = work.await;
    if matches!(&result, Err(e) if e == CALLER_GONE) || sender.is_closed() {
        warn!(segment = %job.key, "restore stopped: its caller went away (the segment is left \
              incomplete, as after a failed restore)");
        return;
    }
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
    // The answer waits for a caller that is slow to read, within a bound.
    if tokio::time::timeout(ANSWER_WAIT_MAX, sender.send(message))
        .await
        .is_err()
    {
        warn!(segment = %job.key, "restore finished, but its caller took no answer for {ANSWER_WAIT_MAX:?}");
    }
}

/// How long a finished restore waits for its caller to take the answer.
pub const ANSWER_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

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
    store.room_for_segment(key).map_err(|e| e.to_string())?;
    store
        .discard_unfinished_restore(key)
        .await
        .map_err(|e| e.to_string())?;
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
        reporter.add(fetched).await?;
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
        reporter.add(fetched).await?;
    }
    store
        .finish_hydration(key, base)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{full, TempDir};
    use sixfold_proto::wire::ArchiveRun;

    const RUNS: u64 = 60;

    /// An archive of `RUNS` one-record runs of volume "src", PG 0, in `dir`.
    async fn archive(dir: &std::path::Path) -> (ObjectStore, Vec<RunKey>) {
        let objects = ObjectStore::open(&dir.display().to_string(), None)
            .await
            .expect("object store");
        let mut runs = Vec::new();
        for lsn in 1..=RUNS {
            let run = RunKey {
                start: Lsn(lsn - 1),
                end: Lsn(lsn),
                time_us: lsn,
            };
            let body = format::encode_run(&ArchiveRun {
                volume: "src".into(),
                pg: 0,
                start: lsn - 1,
                end: lsn,
                records: vec![full(lsn, lsn - 1, 1, lsn % 8, lsn as u8)],
                marks: Vec::new(),
            });
            objects
                .put(&keys::run_key("src", PgId(0), &run), body)
                .await
                .expect("put");
            runs.push(run);
        }
        (objects, runs)
    }

    /// Page images an unfinished restore left (no segment yet) are dropped by the next restore
    /// of the segment: a page its plan never writes reads as zeros, not as the earlier image.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_starts_from_an_empty_page_store() {
        let temp = TempDir::new("restore-leftover");
        let (store, _) = Store::open(&temp.path().join("node")).expect("store");
        let (objects, runs) = archive(&temp.path().join("archive")).await;
        let key = SegmentKey {
            volume: "again".into(),
            pg: PgId(0),
        };
        // What an earlier attempt left: an image of page 100 (no run writes it) at LSN 50.
        store
            .store_hydrated_pages(
                &key,
                vec![PageImage {
                    page: sixfold_proto::PageId(100),
                    lsn: Lsn(50),
                    data: vec![0xee; sixfold_proto::PAGE_SIZE],
                }],
            )
            .await
            .expect("leftover pages");
        let slots = RestoreSlots::new(1, 1);
        let (sender, mut receiver) = mpsc::channel(16);
        let mut plan = job("again", &runs[..10]);
        plan.target = Lsn(10);
        let admitted = slots.admit().expect("a slot");
        let task = tokio::spawn(run(store.clone(), objects, plan, sender, slots, admitted));
        let last = last_answer(&mut receiver).await;
        task.await.expect("join");
        assert!(last.is_some_and(|l| l.done && l.scl == 10));
        let (page, _) = store
            .read_page(&key, sixfold_proto::PageId(100), Lsn(10), Lsn(10))
            .await
            .expect("the page reads");
        assert!(
            page.iter().all(|b| *b == 0),
            "the earlier attempt's image came back"
        );
        store.close().await;
    }

    /// The last message a restore sent before it ended its stream.
    async fn last_answer(
        receiver: &mut mpsc::Receiver<Result<RestoreSegmentProgress, tonic::Status>>,
    ) -> Option<RestoreSegmentProgress> {
        let mut last = None;
        while let Some(message) = receiver.recv().await {
            last = Some(message.expect("progress"));
        }
        last
    }

    fn job(volume: &str, runs: &[RunKey]) -> RestoreJob {
        RestoreJob {
            key: SegmentKey {
                volume: volume.into(),
                pg: PgId(0),
            },
            source_volume: "src".into(),
            source_pg: PgId(0),
            base: None,
            runs: runs.to_vec(),
            target: Lsn(RUNS),
        }
    }

    /// A restore whose caller goes away stops at its next step, leaving the rest undone; with
    /// its caller there, the same restore completes; one waiting for its turn reports while it
    /// waits. And a node keeps only so many restores.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_stops_when_its_caller_goes_away() {
        let temp = TempDir::new("restore-cancel");
        let (store, _) = Store::open(&temp.path().join("node")).expect("store");
        let (objects, runs) = archive(&temp.path().join("archive")).await;
        let slots = RestoreSlots::new(1, 1);

        let (sender, mut receiver) = mpsc::channel(16);
        let admitted = slots.admit().expect("a slot");
        let whole = tokio::spawn(run(
            store.clone(),
            objects.clone(),
            job("whole", &runs),
            sender,
            slots.clone(),
            admitted,
        ));
        let last = last_answer(&mut receiver).await;
        whole.await.expect("join");
        let last = last.expect("an answer");
        assert!(last.done && last.scl == RUNS, "{last:?}");

        let (sender, mut receiver) = mpsc::channel(16);
        let admitted = slots.admit().expect("a slot");
        let objects_for_queue = objects.clone();
        let cut = tokio::spawn(run(
            store.clone(),
            objects,
            job("cut", &runs),
            sender,
            slots.clone(),
            admitted,
        ));
        let first = receiver.recv().await.expect("progress").expect("ok");
        assert!(!first.done);
        drop(receiver);
        tokio::time::timeout(std::time::Duration::from_secs(10), cut)
            .await
            .expect("the restore stops")
            .expect("join");
        let key = SegmentKey {
            volume: "cut".into(),
            pg: PgId(0),
        };
        let scl = store.segment_state(&key).scl;
        assert!(
            scl < Lsn(RUNS / 2),
            "the restore went on without its caller (SCL {scl})"
        );

        // A caller that stays but reads nothing does not hold the restore (nor its slot): the
        // progress it does not take is dropped, and the restore completes.
        let (sender, receiver) = mpsc::channel(4);
        let admitted = slots.admit().expect("a slot");
        let unread = tokio::spawn(run(
            store.clone(),
            objects_for_queue.clone(),
            job("unread", &runs),
            sender,
            slots.clone(),
            admitted,
        ));
        let key = SegmentKey {
            volume: "unread".into(),
            pg: PgId(0),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.segment_state(&key).scl < Lsn(RUNS) {
            assert!(
                std::time::Instant::now() < deadline,
                "the restore stalled on a caller that does not read (SCL {})",
                store.segment_state(&key).scl
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        drop(receiver);
        tokio::time::timeout(std::time::Duration::from_secs(10), unread)
            .await
            .expect("the restore ends once its caller is gone")
            .expect("join");

        // A restore waiting for its turn reports while it waits (its caller's timeout without
        // progress must not fire), then runs once the slot is free.
        let running = Arc::clone(&slots.running)
            .try_acquire_owned()
            .expect("the running slot");
        let (sender, mut receiver) = mpsc::channel(16);
        let admitted = slots.admit().expect("a waiting place");
        let queued = tokio::spawn(run(
            store.clone(),
            objects_for_queue,
            job("queued", &runs),
            sender,
            slots.clone(),
            admitted,
        ));
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(8), receiver.recv())
            .await
            .expect("a report while waiting")
            .expect("a message")
            .expect("progress");
        assert_eq!((waiting.bytes, waiting.done), (0, false));
        drop(running);
        let last = last_answer(&mut receiver).await;
        queued.await.expect("join");
        assert!(last.is_some_and(|l| l.done && l.scl == RUNS));

        // One restore of a segment at a time on a node.
        let key = SegmentKey {
            volume: "twice".into(),
            pg: PgId(0),
        };
        let first = slots.claim(&key).expect("the segment is free");
        assert!(
            slots.claim(&key).is_none(),
            "a second restore of the segment"
        );
        drop(first);
        assert!(slots.claim(&key).is_some());

        let held = (slots.admit(), slots.admit());
        assert!(held.0.is_some() && held.1.is_some());
        assert!(
            slots.admit().is_none(),
            "one running and one waiting at most"
        );
        drop(held);
        assert!(slots.admit().is_some());
        store.close().await;
    }
}
