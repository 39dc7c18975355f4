//! The store: the node's state behind one cloneable handle. It recovers the index from the hot log
//! and the metadata files on open, sends every durable change to the appender thread
//! ([`crate::appender`]) and serves reads from the index plus positional reads of the hot log.
//!
//! Invariants:
//! - the index only describes hardened frames (the appender applies them after their fsync);
//! - every record served (ReadPage, FetchRecords) was read back from disk and passed
//!   `record::validate` for its PG and the LSN and page the index expected; a mismatch is a
//!   [`StoreError::Corrupt`], logged and never served;
//! - locks (`index`, `meta`) are held only for in-memory work, never across I/O or an await; when
//!   both are taken, `meta` is taken first.
//!
//! Crash consistency: everything acknowledged is in the hot log or a metadata file (see
//! [`crate::hotlog`], [`crate::meta`]); open rebuilds the index by replaying the log and raising
//! each volume's epoch to its stored metadata's. Soft state (gossip peers, the writer's VCL/VDL)
//! is lost and comes back with the writer's next Append.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sixfold_proto::collision::{Ballot, Vote};
use sixfold_proto::membership::Membership;
use sixfold_proto::record;
use sixfold_proto::wire::{Record, VolumeMeta};
use sixfold_proto::{Epoch, Lsn, NodeId, PageId, PAGE_SIZE, PG_PAGES};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::error;

use crate::appender::{
    AppendJob, Appender, Changed, Job, MembershipJob, MergeJob, MetaJob, OpenJob, PromiseJob,
    Reply, Source,
};
use crate::checkpoint::{self, Checkpoint, SegmentCheckpoint};
use crate::error::{NodeError, StoreError};
use crate::folder;
use crate::frame::{Frame, FrameBody};
use crate::hotlog::{self, LogFiles};
use crate::index::{Effect, Index, SegmentKey};
use crate::keyring::{CurrentKey, Keyring};
use crate::lock;
use crate::meta::MetaStore;
use crate::nodelist::NodeListStore;
use crate::pagestore::{PageImage, PageStore, Stored};
use crate::request::PreparedRecord;
use crate::segment::{Location, RecordMeta, Truncation};

/// Jobs queued for the appender before senders wait (back-pressure on writers).
pub const APPEND_QUEUE_JOBS_MAX: usize = 256;
/// Record bytes (in KiB) of the appends queued or being hardened at once; later appends wait.
pub const APPEND_QUEUE_KIB_MAX: usize = 256 << 10;
/// Longest one writer append waits for the hot log to shrink under its limit, and how often it
/// looks.
pub const APPEND_HOLD_MAX: Duration = Duration::from_secs(2);
const APPEND_HOLD_POLL: Duration = Duration::from_millis(10);
/// Most segments a node holds (640 TiB of 10 GiB PGs, ten of the largest volumes): a request
/// that would create one more is refused as from a full node, so that no caller can grow its
/// index, files and checkpoint without bound.
pub const SEGMENTS_MAX: usize = 65_536;
/// Most volumes whose metadata a node holds: a PutVolumeMeta of one more is refused as from a
/// full node (each costs a file, memory, and a line of every status answer).
pub const VOLUMES_MAX: usize = 16_384;
/// Most bytes of a writer's records one segment holds above its SCL (waiting for the hole
/// before them); all segments of the node together hold at most twice it. A writer has at most LAL records
/// (16,384 of at most a page each, 64 MiB) beyond its VDL; more wait only on a segment that
/// missed records, which gap-fill from its peers catches up. A writer's record that would wait
/// beyond either bound is left out of its append (not stored, so not acknowledged; gap-fill
/// brings it later, as it does a record lost on the way); records that extend the chain, the
/// append's hints, and gap-fill are always taken. So a writer that sends records with holes it
/// never fills holds at most this many bytes of them on the node. (The hot-log files holding
/// them stay until the hole is filled or a recovery truncates them, as for any record not
/// folded.)
pub const WAITING_BYTES_MAX: u64 = 128 << 20;
/// How long a segment's fold point holds still after a peer's FetchPages...
pub const FOLD_HOLD: Duration = Duration::from_secs(30);
/// ...and at most how long holds renewed one after the other last: long enough for any
/// hydration pass (a 10 GiB PG at 0.5 MiB/s takes under 6 h); a peer that keeps asking longer
/// lets the segment fold for [`FOLD_HOLD`] before its next run.
pub const FOLD_HOLD_MAX: Duration = Duration::from_secs(24 * 3600);
/// Most pages one FetchPages answers with.
pub const FETCH_PAGES_MAX: usize = 2048;
/// Most bytes of records one FetchRecords answers with.
pub const FETCH_BYTES_MAX: u64 = 16 << 20;

/// State shared by the store handles and the appender thread.
#[derive(Debug)]
pub struct Shared {
    pub index: Mutex<Index>,
    pub meta: Mutex<MetaStore>,
    pub files: LogFiles,
    /// Bytes of hot log on disk (maintained by the writer).
    pub log_bytes: Arc<AtomicU64>,
    /// Bytes written to the hot log since the node started.
    pub log_written_bytes: Arc<AtomicU64>,
    /// Hot-log fsyncs so far (one per group commit).
    pub syncs: AtomicU64,
    /// Why the hot log refuses appends now (a full disk, a failed write), if it does.
    pub log_error: Mutex<Option<String>>,
    /// Damaged data found (page-store slots by scrub or read, hot-log records on read, older
    /// hot-log files at replay) and pages repaired from peers, since start.
    pub corrupt_found: AtomicU64,
    pub corrupt_repaired: AtomicU64,
    /// Writer records left out for the bound on records waiting above a segment's SCL
    /// ([`WAITING_BYTES_MAX`]).
    pub waiting_records_left_out: AtomicU64,
    /// Milliseconds writer appends waited because the hot log was over its limit, since start.
    pub appends_held_ms: AtomicU64,
    /// Above this many hot-log bytes writer appends wait ([`folder::HOT_LOG_LIMIT_BYTES`];
    /// tests lower it).
    pub hot_log_limit: AtomicU64,
    /// Damaged pages waiting for a good copy from a peer (gossip repairs them).
    pub repair_queue: Mutex<BTreeSet<(SegmentKey, PageId)>>,
    /// Hot-log records found damaged on read, waiting for a good copy from a peer.
    pub record_repairs: Mutex<BTreeSet<(SegmentKey, Lsn)>>,
    /// Records (and their bytes) hardened from peers by gap-fill, since start.
    pub gap_fill_records: AtomicU64,
    pub gap_fill_bytes: AtomicU64,
    /// Page bytes copied from peers by hydration, since start.
    pub hydrated_bytes: AtomicU64,
    /// Every frame of hot-log files numbered below this is applied to the index (set by the
    /// appender): the checkpoint taken after reading it covers them.
    pub applied_file: AtomicU32,
    /// Held by whoever writes a page store or the checkpoint (the folder, a hydration), so
    /// that fold journals and checkpoint files are written by one at a time. Taken before
    /// `index`, never while holding it.
    pub fold_lock: Mutex<()>,
    /// Backup: where this node archives (None: backup off), and objects and bytes uploaded
    /// since start.
    pub backup_store: Mutex<Option<String>>,
    pub archived_objects: AtomicU64,
    pub archived_bytes: AtomicU64,
    /// Page stores of the segments that have folded, by segment.
    pub pages: Mutex<HashMap<SegmentKey, Arc<PageStore>>>,
    pub data_dir: PathBuf,
    /// This node's stable id ([`crate::identity`]).
    pub node_id: NodeId,
    /// This node's copy of the cluster's node list. Locked only for in-memory work and the
    /// small durable write of a put (off the async runtime).
    pub node_list: Mutex<NodeListStore>,
    /// The data keys everything this node writes to disk is sealed with (encryption at rest).
    pub keys: Arc<Keyring>,
    /// How far the re-seal pass is ([`crate::reseal`]).
    pub reseal: Mutex<crate::reseal::ResealProgress>,
    /// Most segments the node holds ([`SEGMENTS_MAX`]; tests lower it).
    pub segments_max: std::sync::atomic::AtomicUsize,
    /// Most bytes waiting above one segment's SCL ([`WAITING_BYTES_MAX`]; the node's bound is
    /// twice it; tests lower it).
    pub waiting_max: AtomicU64,
    /// Most volumes whose metadata the node holds ([`VOLUMES_MAX`]; tests lower it).
    pub volumes_max: std::sync::atomic::AtomicUsize,
    /// How far a writer's consistency point may date itself from this node's clock
    /// ([`crate::archiver::ArchiveConfig::max_clock_skew`], set by the archiver).
    pub mark_skew_us: AtomicU64,
    /// Held (by a task, across its blocking work) while a volume's first data key is made.
    pub key_making: tokio::sync::Mutex<()>,
}

/// What recovery found, for the start-up log line.
#[derive(Clone, Debug)]
pub struct RecoveryStats {
    pub segments: usize,
    pub records: usize,
    pub log_files: usize,
    pub log_bytes: u64,
    pub frames: u64,
    pub torn_bytes_cut: u64,
    pub damaged_files: usize,
    /// Bytes a failed fsync covered, cut at replay (see `hotlog::UNSYNCED_MARKER`).
    pub unsynced_bytes_cut: u64,
    pub volumes_with_meta: usize,
    pub elapsed: Duration,
}

impl Shared {
    /// Counts a damaged hot-log record (once until repaired) and queues its repair.
    pub fn report_corrupt_record(&self, key: &SegmentKey, lsn: Lsn) {
        if lock(&self.record_repairs).insert((key.clone(), lsn)) {
            self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a damaged page-store slot (once until repaired) and queues its repair.
    pub fn report_corrupt_page(&self, key: &SegmentKey, page: PageId) {
        if lock(&self.repair_queue).insert((key.clone(), page)) {
            self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A damaged hot-log record to fetch again (see [`Store::take_record_repairs`]).
#[derive(Clone, Debug)]
pub struct RecordRepair {
    pub key: SegmentKey,
    pub lsn: Lsn,
    pub backlink: Lsn,
    pub page: PageId,
    pub peers: Vec<String>,
}

/// A segment's state, as SegmentState answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub exists: bool,
    pub scl: Lsn,
    pub max_lsn: Lsn,
    pub records: u64,
    pub bytes: u64,
    pub epoch: Epoch,
    /// Truncations of the PG the segment has applied, in ascending epoch order.
    pub truncations: Vec<Truncation>,
}

/// A snapshot for NodeStatus.
#[derive(Clone, Debug, Default)]
pub struct StatusSnapshot {
    pub segments: Vec<(SegmentKey, SegmentSummary)>,
    pub volumes: Vec<(String, crate::index::VolumeState)>,
    pub log_bytes: u64,
    pub log_written_bytes: u64,
    pub page_store_bytes: u64,
    pub gap_fill_records: u64,
    pub gap_fill_bytes: u64,
    pub hydrated_bytes: u64,
    pub log_error: Option<String>,
    pub corrupt_found: u64,
    pub corrupt_repaired: u64,
    pub appends_held_ms: u64,
}

/// A segment whose chain has a hole, with the peers that may fill it.
#[derive(Clone, Debug)]
pub struct GapCandidate {
    pub key: SegmentKey,
    pub scl: Lsn,
    /// The highest PGCL a writer reported: the segment is behind until its SCL reaches it.
    pub target: Lsn,
    pub peers: Vec<String>,
    /// The PG's membership as the segment holds it (sent with every fetch: peers refuse an
    /// older one).
    pub membership: Option<Membership>,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    /// [`APPEND_QUEUE_KIB_MAX`] permits, one per KiB of records in flight to the appender.
    append_budget: Arc<Semaphore>,
    appender: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    folder: Arc<Mutex<Option<folder::Folder>>>,
    /// This process's hold on the data directory: released by [`Store::close`], once nothing
    /// writes any more (or when the process exits).
    dir_lock: Arc<Mutex<Option<crate::dirlock::DirLock>>>,
}

fn apply_frame(index: &mut Index, frame: Frame, location: Location) {
    let key = SegmentKey {
        volume: frame.volume,
        pg: frame.pg,
    };
    let effect = match frame.body {
        FrameBody::Record(record) => Effect::Record {
            lsn: Lsn(record.lsn),
            meta: RecordMeta {
                location,
                page: PageId(record.page),
                backlink: Lsn(record.backlink),
                epoch: Epoch(record.epoch),
                full_page: record::is_full_page(&record),
            },
        },
        FrameBody::Epoch(epoch) => Effect::Epoch(epoch),
        FrameBody::Truncation {
            epoch,
            truncate_after,
        } => Effect::Truncation {
            epoch,
            truncate_after,
        },
        FrameBody::History(list) => Effect::History(list),
        FrameBody::Membership(held) => Effect::Membership(held),
    };
    index.apply(&key, effect);
}

impl Store {
    /// Recovers the node's state from `data_dir` (blocking I/O) and starts the appender thread;
    /// no encryption at rest (a data directory with sealed data refuses to open).
    #[cfg(test)]
    pub fn open(data_dir: &Path) -> Result<(Store, RecoveryStats), NodeError> {
        Store::open_with_key(data_dir, None)
    }

    /// [`Store::open`] with the operator's key-encryption key: everything the node writes from
    /// now on is sealed ([`crate::keyring`]).
    #[cfg(test)]
    pub fn open_with_key(
        data_dir: &Path,
        kek: Option<sixfold_keys::Kek>,
    ) -> Result<(Store, RecoveryStats), NodeError> {
        Store::open_changing_key(data_dir, kek, None)
    }

    /// [`Store::open_with_key`] while the key-encryption key changes from `previous` to `kek`
    /// ([`Keyring::open_changing`]).
    pub fn open_changing_key(
        data_dir: &Path,
        kek: Option<sixfold_keys::Kek>,
        previous: Option<sixfold_keys::Kek>,
    ) -> Result<(Store, RecoveryStats), NodeError> {
        let started = Instant::now();
        std::fs::create_dir_all(data_dir).map_err(|source| NodeError::Io {
            action: "create data directory",
            path: data_dir.to_owned(),
            source,
        })?;
        let dir_lock = crate::dirlock::lock(data_dir)?;
        let keys = Arc::new(Keyring::open_changing(data_dir, kek, previous)?);
        // The node's own key (checkpoint, metadata) now, not on the appender thread later.
        keys.sealer(crate::keyring::NODE_SCOPE)
            .map_err(|source| NodeError::Key {
                path: data_dir.join("keys"),
                source,
            })?;
        let node_id = crate::identity::load_or_create(data_dir)?;
        let node_list = NodeListStore::open(data_dir)?;
        let log_dir = data_dir.join("log");
        let mut index = Index::default();
        // The checkpoint and the page stores first: the log replays on top of them.
        let checkpoint = Checkpoint::load(data_dir, &keys)
            .map_err(NodeError::io(
                "read the checkpoint",
                &data_dir.join(checkpoint::FILE_NAME),
            ))?
            .unwrap_or_default();
        for (volume, epoch) in &checkpoint.volumes {
            index.raise_epoch(volume, *epoch);
        }
        let mut restored: BTreeMap<SegmentKey, SegmentCheckpoint> = checkpoint.segments;
        let pages = folder::open_page_stores(data_dir, &keys)?;
        for (key, (_, redone)) in &pages {
            if let Some(to) = redone {
                let entry = restored.entry(key.clone()).or_default();
                entry.folded = entry.folded.max(*to);
            }
        }
        for (key, segment) in restored {
            index.restore_segment(
                &key,
                segment.folded,
                segment.truncations,
                segment.membership,
            );
        }
        let (writer, replay) = hotlog::open(&log_dir, Arc::clone(&keys), |frame, location| {
            apply_frame(&mut index, frame, location)
        })?;
        let meta = MetaStore::open(&data_dir.join("meta"), Arc::clone(&keys))?;
        let mut volumes_with_meta = 0;
        for stored in meta.all() {
            index.raise_epoch(&stored.name, Epoch(stored.epoch));
            volumes_with_meta += 1;
        }
        let stats = RecoveryStats {
            segments: index.segment_count(),
            records: index.record_count(),
            log_files: replay.files,
            log_bytes: replay.log_bytes,
            frames: replay.frames,
            torn_bytes_cut: replay.torn_bytes_cut,
            damaged_files: replay.damaged_files,
            unsynced_bytes_cut: replay.unsynced_bytes_cut,
            volumes_with_meta,
            elapsed: started.elapsed(),
        };
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            meta: Mutex::new(meta),
            files: LogFiles::new(log_dir, &writer),
            log_bytes: writer.total_bytes(),
            log_written_bytes: writer.written_bytes(),
            syncs: AtomicU64::new(0),
            log_error: Mutex::new(None),
            corrupt_found: AtomicU64::new(replay.damaged_files as u64),
            corrupt_repaired: AtomicU64::new(0),
            waiting_records_left_out: AtomicU64::new(0),
            appends_held_ms: AtomicU64::new(0),
            hot_log_limit: AtomicU64::new(folder::HOT_LOG_LIMIT_BYTES),
            record_repairs: Mutex::new(BTreeSet::new()),
            repair_queue: Mutex::new(BTreeSet::new()),
            gap_fill_records: AtomicU64::new(0),
            gap_fill_bytes: AtomicU64::new(0),
            hydrated_bytes: AtomicU64::new(0),
            applied_file: AtomicU32::new(writer.file_number()),
            fold_lock: Mutex::new(()),
            reseal: Mutex::default(),
            segments_max: std::sync::atomic::AtomicUsize::new(SEGMENTS_MAX),
            waiting_max: AtomicU64::new(WAITING_BYTES_MAX),
            volumes_max: std::sync::atomic::AtomicUsize::new(VOLUMES_MAX),
            mark_skew_us: AtomicU64::new(crate::archiver::CLOCK_SKEW_DEFAULT.as_micros() as u64),
            key_making: tokio::sync::Mutex::new(()),
            backup_store: Mutex::new(None),
            archived_objects: AtomicU64::new(0),
            archived_bytes: AtomicU64::new(0),
            pages: Mutex::new(pages.into_iter().map(|(k, (s, _))| (k, s)).collect()),
            data_dir: data_dir.to_owned(),
            node_id,
            node_list: Mutex::new(node_list),
            keys,
        });
        let (jobs, receiver) = mpsc::channel(APPEND_QUEUE_JOBS_MAX);
        let appender = Appender::new(Arc::clone(&shared), writer);
        let handle = std::thread::Builder::new()
            .name("sixfold-appender".into())
            .spawn(move || appender.run(receiver))
            .map_err(|source| NodeError::Io {
                action: "start the appender thread for",
                path: data_dir.to_owned(),
                source,
            })?;
        let folder =
            folder::Folder::spawn(Arc::clone(&shared)).map_err(|source| NodeError::Io {
                action: "start the folder thread for",
                path: data_dir.to_owned(),
                source,
            })?;
        if shared.keys.enabled() {
            // The re-seal pass's log and metadata part, once at start (crate::reseal): first in
            // the queue; its outcome is logged by the appender.
            let (reply, _) = oneshot::channel();
            let _ = jobs.try_send(Job::Reseal(reply));
        }
        let store = Store {
            shared,
            jobs,
            append_budget: Arc::new(Semaphore::new(APPEND_QUEUE_KIB_MAX)),
            appender: Arc::new(Mutex::new(Some(handle))),
            folder: Arc::new(Mutex::new(Some(folder))),
            dir_lock: Arc::new(Mutex::new(Some(dir_lock))),
        };
        Ok((store, stats))
    }

    /// Makes the data key of `key`'s volume, if encryption is on and it has none yet, before a
    /// job that writes the volume's frames reaches the appender: on a blocking thread, one at a
    /// time (waiters park as tasks, not threads), and only for a segment the node holds or has
    /// room for. So a slow or failing key command (a KMS) holds up and fails the requests that
    /// need the new key only, never the appender that hardens every volume's writes, and no
    /// caller can make keys for more volumes than the node could hold segments of.
    async fn prepare_key(&self, key: &SegmentKey) -> Result<(), StoreError> {
        if !self.shared.keys.needs_key(&key.volume) {
            return Ok(());
        }
        self.room_for_segment(key)?;
        let _making = self.shared.key_making.lock().await;
        let keys = Arc::clone(&self.shared.keys);
        if !keys.needs_key(&key.volume) {
            return Ok(()); // made while this request waited
        }
        let volume = key.volume.clone();
        blocking(move || {
            keys.sealer(&volume)
                .map(|_| ())
                .map_err(|e| StoreError::Io {
                    action: "make the volume's data key",
                    source: std::io::Error::other(format!("volume {volume}: {e}")),
                })
        })
        .await
    }

    async fn submit<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Hardens the records (those not already held) and answers the segment's SCL.
    ///
    /// Back-pressure: a writer's append waits while the hot log is over
    /// [`folder::HOT_LOG_LIMIT_BYTES`] (folding has fallen behind ingestion), for at most
    /// [`APPEND_HOLD_MAX`] each, so the writer slows to the pace the folder keeps. Gap-fill
    /// appends never wait: they let a segment's chain, and so its fold point, advance. The wait
    /// is bounded so that a log that cannot shrink (every record above a writer's VDL, a PG
    /// with no writer) slows writers down instead of stopping them.
    pub async fn append(
        &self,
        key: SegmentKey,
        source: Source,
        records: Vec<PreparedRecord>,
    ) -> Result<Lsn, StoreError> {
        // The key first: its wait holds no place in the log or the append budget.
        self.prepare_key(&key).await?;
        // A heartbeat (no records) is never held: it brings the hints that let the node fold.
        if matches!(source, Source::Writer { .. }) && !records.is_empty() {
            self.hold_while_log_full().await;
        }
        let bytes: usize = records.iter().map(|r| r.frame.bytes.len()).sum();
        let kib = bytes.div_ceil(1024).clamp(1, APPEND_QUEUE_KIB_MAX);
        let budget = self
            .append_budget
            .clone()
            .acquire_many_owned(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        self.submit(|reply| {
            Job::Append(AppendJob {
                key,
                source,
                records,
                reply,
                _budget: Some(budget),
            })
        })
        .await
    }

    async fn hold_while_log_full(&self) {
        let log_bytes = || self.shared.log_bytes.load(Ordering::Relaxed);
        let over = || log_bytes() > self.shared.hot_log_limit.load(Ordering::Relaxed);
        if !over() {
            return;
        }
        let started = Instant::now();
        while over() && started.elapsed() < APPEND_HOLD_MAX {
            tokio::time::sleep(APPEND_HOLD_POLL).await;
        }
        let held = started.elapsed().as_millis() as u64;
        let before = self
            .shared
            .appends_held_ms
            .fetch_add(held, Ordering::Relaxed);
        // Logged the first time, then once per minute of holding (many appends wait at once).
        if before == 0 || before / 60_000 != (before + held) / 60_000 {
            tracing::warn!(
                hot_log_bytes = log_bytes(),
                held_ms_total = before + held,
                "hot log over its limit: holding writer appends while folding catches up"
            );
        }
    }

    /// Adopts `epoch` for the volume and truncates the segment after `truncate_after`.
    pub async fn open_segment(
        &self,
        key: SegmentKey,
        epoch: Epoch,
        truncate_after: Lsn,
        history: Vec<Truncation>,
        peers: Vec<String>,
        membership: Option<Membership>,
    ) -> Result<Lsn, StoreError> {
        let mut history: Vec<Truncation> =
            history.into_iter().filter(|t| t.epoch < epoch).collect();
        history.push(Truncation {
            epoch,
            after: truncate_after,
        });
        self.prepare_key(&key).await?;
        self.submit(|reply| {
            Job::Open(OpenJob {
                key,
                epoch: Some(epoch),
                history,
                peers,
                authority: None,
                membership,
                reply,
            })
        })
        .await
    }

    /// Adopts `epoch` durably for the segment's volume (refusing older writers from then on),
    /// without truncating anything: the first step of a writer's recovery of the PG.
    pub async fn seal(
        &self,
        key: SegmentKey,
        epoch: Epoch,
        membership: Option<Membership>,
    ) -> Result<Lsn, StoreError> {
        self.prepare_key(&key).await?;
        self.submit(|reply| {
            Job::Open(OpenJob {
                key,
                epoch: Some(epoch),
                history: Vec::new(),
                peers: Vec::new(),
                authority: None,
                membership,
                reply,
            })
        })
        .await
    }

    /// Whether `history` is newer than the segment's own (a cheap filter before a job; the
    /// appender decides, see `OpenJob::authority`).
    pub fn history_is_newer(&self, key: &SegmentKey, history: &[Truncation]) -> bool {
        let index = lock(&self.shared.index);
        let own = index
            .segment(key)
            .map_or(Epoch::default(), |s| s.history_epoch());
        crate::segment::history_epoch(history) > own
    }

    /// Adopts (durably) a newer recovery's truncation history, before anything that depends on
    /// it: a writer's Append, records from a peer, a recovery's question. A segment that was away
    /// while a writer recovered its PG drops here the records that recovery truncated; a
    /// truncation the newer history does not list (a recovery that died half-way) is voided.
    pub async fn learn_truncations(
        &self,
        key: &SegmentKey,
        history: &[Truncation],
        authority: Option<Epoch>,
    ) -> Result<(), StoreError> {
        if !self.history_is_newer(key, history) {
            return Ok(());
        }
        self.prepare_key(key).await?;
        self.submit(|reply| {
            Job::Open(OpenJob {
                key: key.clone(),
                epoch: None,
                history: history.to_vec(),
                peers: Vec::new(),
                authority,
                membership: None,
                reply,
            })
        })
        .await
        .map(drop)
    }

    /// A membership change step of the segment's PG (see [`crate::appender::MembershipJob`]).
    pub async fn change_membership(
        &self,
        key: SegmentKey,
        base: Membership,
        proposed: Membership,
        peers: Vec<String>,
        catch_up_to: Lsn,
        mode: crate::members::ChangeMode,
    ) -> Result<Changed, StoreError> {
        self.prepare_key(&key).await?;
        self.submit(|reply| {
            Job::Membership(MembershipJob {
                key,
                base,
                proposed,
                peers,
                catch_up_to,
                mode,
                reply,
            })
        })
        .await
    }

    /// A collision-recovery round's promise (see [`crate::appender::PromiseJob`]).
    pub async fn promise_membership(
        &self,
        key: SegmentKey,
        base: Membership,
        ballot: Ballot,
    ) -> Result<Vote, StoreError> {
        self.prepare_key(&key).await?;
        self.submit(|reply| {
            Job::Promise(PromiseJob {
                key,
                base,
                ballot,
                reply,
            })
        })
        .await
    }

    /// Catches the segment up with an established membership (and its base) that its driver
    /// saw on the PG's other nodes (see [`crate::members::ChangeMode::CatchUp`]).
    pub async fn catch_up_membership(
        &self,
        key: SegmentKey,
        current: Membership,
        base: Option<Membership>,
        ballot: Ballot,
    ) -> Result<Changed, StoreError> {
        self.prepare_key(&key).await?;
        self.submit(|reply| {
            Job::Membership(MembershipJob {
                key,
                base: base.unwrap_or_else(|| current.clone()),
                proposed: current,
                peers: Vec::new(),
                catch_up_to: Lsn::ZERO,
                mode: crate::members::ChangeMode::CatchUp(ballot),
                reply,
            })
        })
        .await
    }

    /// Records why the PG cannot be repaired (None: it can), for NodeStatus.
    pub fn note_degraded(&self, key: &SegmentKey, why: Option<String>) {
        if let Some(slot) = lock(&self.shared.index).slot_mut_existing(key) {
            slot.repair_blocked = why;
        }
    }

    /// Counts `bytes` copied from peers into the segment and how far its copy got (`done`,
    /// 0.0 to 1.0), when the segment is joining its PG (a replacement's new member).
    pub fn note_catch_up(&self, key: &SegmentKey, bytes: u64, done: f64) {
        let own = self.node_id();
        let mut index = lock(&self.shared.index);
        let Some(slot) = index.slot_mut_existing(key) else {
            return;
        };
        let joining = slot
            .membership
            .as_ref()
            .is_some_and(|m| m.changes.iter().any(|c| c.to == own));
        if !joining {
            slot.catch_up = None;
            return;
        }
        let progress = slot.catch_up.get_or_insert(crate::index::CatchUp {
            since: std::time::Instant::now(),
            bytes: 0,
            done: 0.0,
        });
        progress.bytes = progress.bytes.saturating_add(bytes);
        progress.done = progress.done.max(done.clamp(0.0, 1.0));
    }

    /// A joining segment's copy so far (None: not joining, or not copying yet).
    pub fn catch_up(&self, key: &SegmentKey) -> Option<crate::index::CatchUp> {
        let own = self.node_id();
        let index = lock(&self.shared.index);
        let slot = index.slot(key)?;
        let joining = slot
            .membership
            .as_ref()
            .is_some_and(|m| m.changes.iter().any(|c| c.to == own));
        slot.catch_up.filter(|_| joining)
    }

    /// Records what this node's driver saw of the PG (None: it does not drive it).
    pub fn note_driven(&self, key: &SegmentKey, view: Option<crate::index::DrivenView>) {
        if let Some(slot) = lock(&self.shared.index).slot_mut_existing(key) {
            slot.driven = view;
        }
    }

    /// The PGs this node drives, as its driver last saw them.
    pub fn driven_pgs(&self) -> Vec<(SegmentKey, crate::index::DrivenView)> {
        lock(&self.shared.index)
            .slots()
            .filter_map(|(key, slot)| slot.driven.map(|view| (key.clone(), view)))
            .collect()
    }

    /// Why the PG cannot be repaired, as this node's driver found.
    pub fn repair_blocked(&self, key: &SegmentKey) -> Option<String> {
        lock(&self.shared.index)
            .slot(key)
            .and_then(|s| s.repair_blocked.clone())
    }

    /// Every segment that holds a membership: (key, membership, its base).
    pub fn segment_memberships(&self) -> Vec<(SegmentKey, Membership, Option<Membership>)> {
        lock(&self.shared.index)
            .slots()
            .filter_map(|(key, slot)| {
                let membership = slot.membership.clone()?;
                Some((key.clone(), membership, slot.membership_base.clone()))
            })
            .collect()
    }

    /// Records a PG's newer membership in the stored volume metadata; answers the PG's
    /// membership epoch afterwards (0: this node holds no metadata of that PG).
    pub async fn merge_pg_membership(
        &self,
        volume: &str,
        pg: sixfold_proto::PgId,
        membership: Membership,
        nodes: Vec<String>,
    ) -> Result<u64, StoreError> {
        self.submit(|reply| {
            Job::MergeMembership(MergeJob {
                volume: volume.to_string(),
                pg: pg.0,
                membership: membership.to_wire(),
                nodes,
                reply,
            })
        })
        .await
    }

    /// The segment's whole membership state (round and promise included).
    pub fn held_membership(&self, key: &SegmentKey) -> Option<crate::members::HeldMembership> {
        lock(&self.shared.index)
            .slot(key)
            .and_then(|s| s.held_membership())
    }

    /// The PG's membership as the segment holds it.
    pub fn membership(&self, key: &SegmentKey) -> Option<Membership> {
        lock(&self.shared.index)
            .slot(key)
            .and_then(|s| s.membership.clone())
    }

    /// Stores the metadata if its version is higher than the stored one; answers the stored version.
    pub async fn put_meta(&self, meta: VolumeMeta) -> Result<u64, StoreError> {
        self.submit(|reply| Job::PutMeta(MetaJob { meta, reply }))
            .await
    }

    /// Key rotation: every scope gets a new data key that seals new data from now on, the hot
    /// log starts a new file and volume metadata is stored again under the new key; the folder's
    /// re-seal pass ([`crate::reseal`]) rewrites the rest. Returns the new current keys.
    pub async fn rotate_keys(&self) -> Result<Vec<CurrentKey>, StoreError> {
        let keys = Arc::clone(&self.shared.keys);
        if !keys.enabled() {
            return Err(StoreError::InvalidArgument(
                "this node has no key-encryption key: encryption at rest is off, there is no \
                 data key to rotate"
                    .into(),
            ));
        }
        // Making keys writes files and may run the KMS command: off the runtime.
        let rotated = tokio::task::spawn_blocking(move || keys.rotate())
            .await
            .map_err(|_| StoreError::ShuttingDown)?
            .map_err(|e| StoreError::Io {
                action: "rotate the data keys",
                source: std::io::Error::other(e),
            })?;
        self.submit(Job::Reseal).await?;
        Ok(rotated)
    }

    pub fn get_meta(&self, volume: &str) -> Option<VolumeMeta> {
        lock(&self.shared.meta).get(volume).cloned()
    }

    /// The page as of `read_lsn`, if the segment's SCL is at least `required_scl`; and the SCL.
    #[cfg(test)]
    pub async fn read_page(
        &self,
        key: &SegmentKey,
        page: PageId,
        read_lsn: Lsn,
        required_scl: Lsn,
    ) -> Result<(Vec<u8>, Lsn), StoreError> {
        self.read_page_for(key, page, read_lsn, required_scl, &[])
            .await
    }

    /// [`Store::read_page`] for a reader that knows the PG's truncations `history`: refused
    /// while the segment has not applied one of them (it missed a recovery; a record it still
    /// holds above that truncation is no longer part of the PG).
    pub async fn read_page_for(
        &self,
        key: &SegmentKey,
        page: PageId,
        read_lsn: Lsn,
        required_scl: Lsn,
        history: &[Truncation],
    ) -> Result<(Vec<u8>, Lsn), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .read_page_once(key, page, read_lsn, required_scl, history)
                .await
            {
                // A fold and hot-log GC ran between planning and reading: plan again (the
                // page store now holds what the deleted file did).
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {}
                other => return other,
            }
        }
    }

    async fn read_page_once(
        &self,
        key: &SegmentKey,
        page: PageId,
        read_lsn: Lsn,
        required_scl: Lsn,
        history: &[Truncation],
    ) -> Result<(Vec<u8>, Lsn), StoreError> {
        let (plan, scl, folded) = {
            let index = lock(&self.shared.index);
            let segment = index
                .segment(key)
                .ok_or_else(|| StoreError::not_hosted(&key.volume, key.pg))?;
            if let Some(missing) = segment.missing_truncation(history) {
                return Err(StoreError::history_behind(&key.volume, key.pg, missing));
            }
            if segment.scl() < required_scl {
                return Err(StoreError::behind(
                    &key.volume,
                    key.pg,
                    segment.scl(),
                    required_scl,
                ));
            }
            (
                segment.page_records(page, read_lsn),
                segment.scl(),
                segment.folded(),
            )
        };
        let store = lock(&self.shared.pages).get(key).cloned();
        let full_page_at = (!plan.base).then(|| plan.records.first().map(|(lsn, _)| *lsn));
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        let data = blocking(move || {
            let mut data = vec![0u8; PAGE_SIZE];
            let mut base = Lsn::ZERO;
            // Below a full-page record the stored image is not needed, unless it is at least
            // as new (a page repaired from a peer over a damaged record): the page-LSN rule
            // then skips the record.
            let store = match (store, full_page_at) {
                (Some(store), Some(Some(at))) => {
                    let stored = store.lsn_of(page).map_err(|source| StoreError::Io {
                        action: "read a page's LSN from the page store",
                        source,
                    })?;
                    stored
                        .is_some_and(|lsn| lsn >= at && lsn <= read_lsn)
                        .then_some(store)
                }
                (store, _) => store,
            };
            if let Some(store) = store {
                match store.read(page).map_err(|source| StoreError::Io {
                    action: "read a page from the page store",
                    source,
                })? {
                    Stored::Absent => {}
                    Stored::Page { lsn, data: image } => {
                        if lsn > read_lsn {
                            // Only when read_lsn < folded: the image is newer than asked.
                            return Err(StoreError::Folded {
                                volume: key.volume.clone(),
                                pg: key.pg.0,
                                folded: folded.0,
                                what: "page versions",
                                advice: "read at a newer LSN",
                            });
                        }
                        data = image;
                        base = lsn;
                    }
                    Stored::Corrupt(detail) => {
                        error!(segment = %key, %page, "corrupt page in the page store: {detail}");
                        shared.report_corrupt_page(&key, page);
                        return Err(StoreError::Corrupt {
                            volume: key.volume.clone(),
                            pg: key.pg.0,
                            lsn: folded.0,
                            detail: format!("page store: {detail}"),
                        });
                    }
                }
            }
            // The page-LSN rule: records the image already holds are not applied again.
            for (lsn, meta) in plan.records.iter().filter(|(lsn, _)| *lsn > base) {
                let record = read_record(&shared, &key, *lsn, meta)?;
                record::apply(&record, &mut data);
            }
            Ok(data)
        })
        .await?;
        Ok((data, scl))
    }

    /// Records of the complete chain above `after_lsn`, in LSN order, up to `bytes_max` (capped at
    /// [`FETCH_BYTES_MAX`]; 0 means the cap); and the SCL.
    pub async fn fetch_records(
        &self,
        key: &SegmentKey,
        after_lsn: Lsn,
        bytes_max: u64,
    ) -> Result<(Vec<Record>, Lsn), StoreError> {
        let bytes_max = if bytes_max == 0 {
            FETCH_BYTES_MAX
        } else {
            bytes_max.min(FETCH_BYTES_MAX)
        };
        let (plan, scl) = {
            let index = lock(&self.shared.index);
            let segment = index
                .segment(key)
                .ok_or_else(|| StoreError::not_hosted(&key.volume, key.pg))?;
            if after_lsn < segment.folded() {
                return Err(StoreError::Folded {
                    volume: key.volume.clone(),
                    pg: key.pg.0,
                    folded: segment.folded().0,
                    what: "records",
                    advice: "fetch them from a peer that still holds them",
                });
            }
            (
                segment.complete_records(after_lsn, bytes_max),
                segment.scl(),
            )
        };
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        let records = blocking(move || {
            plan.iter()
                .map(|(lsn, meta)| read_record(&shared, &key, *lsn, meta))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        Ok((records, scl))
    }

    /// For a peer hydrating its segment: the stored pages newer than `after_lsn`, from page
    /// `cursor` of the PG on, and this segment's fold point (held still for [`FOLD_HOLD`] after
    /// each call, so that the whole scan sees one point). Returns (folded, pages, next cursor).
    pub async fn fetch_pages(
        &self,
        key: &SegmentKey,
        after_lsn: Lsn,
        cursor: u64,
        max_pages: usize,
    ) -> Result<(Lsn, Vec<PageImage>, u64), StoreError> {
        {
            let mut index = lock(&self.shared.index);
            if index.segment(key).is_none() {
                return Err(StoreError::not_hosted(&key.volume, key.pg));
            }
            let slot = index.slot_mut(key);
            (slot.fold_hold_until, slot.fold_hold_since) = crate::index::renew_fold_hold(
                slot.fold_hold_until,
                slot.fold_hold_since,
                Instant::now(),
                FOLD_HOLD,
                FOLD_HOLD_MAX,
            );
        }
        self.scan_pages(key, after_lsn, cursor, max_pages).await
    }

    /// Like [`Store::fetch_pages`] without the hold: for a caller that holds the fold point
    /// itself (the archiver's base image, [`Store::hold_for_image`]).
    pub async fn scan_pages(
        &self,
        key: &SegmentKey,
        after_lsn: Lsn,
        cursor: u64,
        max_pages: usize,
    ) -> Result<(Lsn, Vec<PageImage>, u64), StoreError> {
        let store = lock(&self.shared.pages).get(key).cloned();
        let Some(store) = store else {
            return Ok((Lsn::ZERO, Vec::new(), PG_PAGES));
        };
        let max_pages = max_pages.clamp(1, FETCH_PAGES_MAX);
        let (pages, next) = blocking(move || {
            store
                .scan(after_lsn, cursor, max_pages)
                .map_err(|source| StoreError::Io {
                    action: "scan the page store",
                    source,
                })
        })
        .await?;
        // Read after the scan: a fold step that began before the hold may have finished since.
        let folded = lock(&self.shared.index)
            .segment(key)
            .map_or(Lsn::ZERO, |s| s.folded());
        Ok((folded, pages, next.unwrap_or(PG_PAGES)))
    }

    /// Up to `limit` damaged pages waiting for repair, with the point to repair them at and the
    /// segment's peers. The point is the PGCL the writer last reported: no recovery truncates
    /// at or below it (so the image never holds records that may be taken back), and peers fold
    /// no further than it. Pages of segments that have heard no PGCL yet wait.
    pub fn take_repairs(&self, limit: usize) -> Vec<(SegmentKey, PageId, Lsn, Vec<String>)> {
        let taken: Vec<(SegmentKey, PageId)> = {
            let mut queue = lock(&self.shared.repair_queue);
            let taken: Vec<_> = queue.iter().take(limit).cloned().collect();
            for item in &taken {
                queue.remove(item);
            }
            taken
        };
        let index = lock(&self.shared.index);
        let mut queue = lock(&self.shared.repair_queue);
        taken
            .into_iter()
            .filter_map(|(key, page)| {
                let slot = index.slot(&key)?;
                if slot.pgcl_hint == Lsn::ZERO || slot.peers.is_empty() {
                    queue.insert((key, page));
                    return None;
                }
                Some((key, page, slot.pgcl_hint, slot.peers.clone()))
            })
            .collect()
    }

    /// Damaged hot-log records to fetch again from peers (at most `limit`): each with the LSN
    /// before it in the PG (FetchRecords after it answers the record first), its page and the
    /// peers. Records the segment no longer holds are forgotten; segments with no known peers
    /// wait.
    pub fn take_record_repairs(&self, limit: usize) -> Vec<RecordRepair> {
        let index = lock(&self.shared.index);
        let mut queue = lock(&self.shared.record_repairs);
        let taken: Vec<(SegmentKey, Lsn)> = queue.iter().take(limit).cloned().collect();
        let mut out = Vec::new();
        for (key, lsn) in taken {
            let Some(slot) = index.slot(&key) else {
                queue.remove(&(key, lsn));
                continue;
            };
            let Some(meta) = slot.segment.get(lsn) else {
                queue.remove(&(key, lsn));
                continue;
            };
            if !slot.peers.is_empty() {
                queue.remove(&(key.clone(), lsn));
                out.push(RecordRepair {
                    lsn,
                    backlink: meta.backlink,
                    page: meta.page,
                    peers: slot.peers.clone(),
                    key,
                });
            }
        }
        out
    }

    /// Queues a page for repair from a peer's image without counting new damage: the way around
    /// a damaged hot-log record that every peer has folded already (the image, as of the PGCL,
    /// is at least as new as the record, which the page-LSN rule then never reads).
    pub fn repair_page_over_record(&self, key: SegmentKey, page: PageId) {
        lock(&self.shared.repair_queue).insert((key, page));
    }

    /// True when the page store's image of `page` is at least as new as the record at `lsn`:
    /// the page-LSN rule never reads the record again (a page repair went over it).
    pub fn record_bypassed(&self, key: &SegmentKey, page: PageId, lsn: Lsn) -> bool {
        let store = lock(&self.shared.pages).get(key).cloned();
        store.is_some_and(|store| store.lsn_of(page).ok().flatten().is_some_and(|l| l >= lsn))
    }

    /// Puts a damaged record back in its queue (no peer could help this time).
    pub fn requeue_record_repair(&self, key: SegmentKey, lsn: Lsn) {
        lock(&self.shared.record_repairs).insert((key, lsn));
    }

    /// Puts a page back in the repair queue (no peer could help this time).
    pub fn requeue_repair(&self, key: SegmentKey, page: PageId) {
        lock(&self.shared.repair_queue).insert((key, page));
    }

    /// Replaces a damaged page with a peer's image of it as of `lsn` (the segment's SCL when
    /// asked: the page-LSN rule then skips the segment's own records up to it).
    pub async fn repair_page(
        &self,
        key: &SegmentKey,
        page: PageId,
        lsn: Lsn,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        if data.len() != PAGE_SIZE || !key.pg.contains(page) {
            return Err(StoreError::InvalidArgument(format!(
                "a repair image of {page} must be one page of {}",
                key.pg
            )));
        }
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            let _folding = lock(&shared.fold_lock);
            let folded = lock(&shared.index)
                .segment(&key)
                .map_or(Lsn::ZERO, |s| s.folded());
            let store = folder::page_store(&shared, &key)?;
            store
                .repair(folded, PageImage { page, lsn, data })
                .map_err(|source| StoreError::Io {
                    action: "write a repaired page",
                    source,
                })?;
            shared.corrupt_repaired.fetch_add(1, Ordering::Relaxed);
            tracing::info!(segment = %key, %page, %lsn, "repaired a damaged page from a peer");
            Ok(())
        })
        .await
    }

    /// Before a hydration: folds the segment's chain up to its SCL. Returns the SCL.
    pub async fn fold_to_scl(&self, key: &SegmentKey) -> Result<Lsn, StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            folder::fold_to_scl(&shared, &key)?;
            Ok(lock(&shared.index)
                .segment(&key)
                .map_or(Lsn::ZERO, |s| s.scl()))
        })
        .await
    }

    /// Stores pages copied from a peer ([`PageStore::store_copies`]). The fold point does not
    /// move until [`Store::finish_hydration`], so a crash mid-hydration never advances it (reads
    /// older than an image are refused meanwhile).
    pub async fn store_hydrated_pages(
        &self,
        key: &SegmentKey,
        pages: Vec<PageImage>,
    ) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            let _folding = lock(&shared.fold_lock);
            let store = folder::page_store(&shared, &key)?;
            store
                .store_copies(&pages)
                .map_err(|source| StoreError::Io {
                    action: "store hydrated pages",
                    source,
                })?;
            shared
                .hydrated_bytes
                .fetch_add((pages.len() * PAGE_SIZE) as u64, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    /// After every page changed up to `to` was stored: the segment starts at `to`, durably
    /// (checkpoint). Returns the new SCL.
    pub async fn finish_hydration(&self, key: &SegmentKey, to: Lsn) -> Result<Lsn, StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            {
                let _folding = lock(&shared.fold_lock);
                lock(&shared.index).slot_mut(&key).segment.hydrated(to);
            }
            folder::checkpoint_and_collect(&shared)?;
            Ok(lock(&shared.index)
                .segment(&key)
                .map_or(Lsn::ZERO, |s| s.scl()))
        })
        .await
    }

    /// [`Store::finish_hydration`] at a peer's fold point, which is a claim from the network: it
    /// is adopted only up to the PG's commit point this segment knows (the PGCL its writer
    /// reported, or the target its repair driver gave). A segment that took a larger one would
    /// count records it never stored as held, and acknowledge later writes at or below it
    /// without storing them. A peer's true fold point is never above the PG's commit point
    /// (nodes fold only what a write quorum holds); a hint a heartbeat behind only delays.
    pub async fn finish_hydration_from_peer(
        &self,
        key: &SegmentKey,
        to: Lsn,
    ) -> Result<Lsn, StoreError> {
        let known = lock(&self.shared.index)
            .slot(key)
            .map_or(Lsn::ZERO, |slot| slot.pgcl_hint);
        if to > known {
            return Err(StoreError::Conflict(format!(
                "segment {key}: a peer's fold point {to} is beyond the PG's commit point {known} \
                 this segment knows; not adopted (its writer's next heartbeat or its repair \
                 driver tells it the current one)"
            )));
        }
        self.finish_hydration(key, to).await
    }

    /// Drops what an earlier, unfinished restore of `key` left behind (page images with no
    /// segment, after a restore that failed or whose caller went away), so that a restore starts
    /// from an empty page store: a page the new plan never writes must read as zeros, not as
    /// the earlier attempt's image. Nothing happens when the node holds the segment.
    pub async fn discard_unfinished_restore(&self, key: &SegmentKey) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            let _folding = lock(&shared.fold_lock);
            if lock(&shared.index).slot(&key).is_some() {
                return Ok(());
            }
            lock(&shared.pages).remove(&key);
            let dir = folder::store_dir(&shared.data_dir, &key);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(segment = %key, "dropped the pages an unfinished restore left");
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StoreError::Io {
                    action: "remove the pages an unfinished restore left",
                    source,
                }),
            }
        })
        .await
    }

    /// Whether the node may hold `key` ([`SEGMENTS_MAX`]).
    pub fn room_for_segment(&self, key: &SegmentKey) -> Result<(), StoreError> {
        let max = self.shared.segments_max.load(Ordering::Relaxed);
        lock(&self.shared.index).room_for(key, 0, max)
    }

    pub fn segment_state(&self, key: &SegmentKey) -> SegmentSummary {
        let index = lock(&self.shared.index);
        summarize(&index, key)
    }

    /// The keyring everything this node writes is sealed with.
    pub fn keys(&self) -> Arc<Keyring> {
        Arc::clone(&self.shared.keys)
    }

    /// This node's stable id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// This node's copy of the cluster's node list.
    pub fn node_list(&self) -> Option<sixfold_proto::nodes::NodeList> {
        lock(&self.shared.node_list).get().cloned()
    }

    /// Keeps `list` if it is newer than the copy held ([`NodeListStore::put`]); returns the
    /// version held afterwards.
    pub async fn put_node_list(
        &self,
        list: sixfold_proto::nodes::NodeList,
    ) -> Result<u64, StoreError> {
        let shared = Arc::clone(&self.shared);
        blocking(move || lock(&shared.node_list).put(list)).await
    }

    /// How far a writer's consistency point may date itself from this node's clock.
    pub fn set_mark_skew(&self, skew: Duration) {
        let micros = u64::try_from(skew.as_micros()).unwrap_or(u64::MAX);
        self.shared.mark_skew_us.store(micros, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn shared_for_tests(&self) -> &Shared {
        &self.shared
    }

    /// Counts records hardened from peers by gap-fill.
    pub fn count_gap_fill(&self, records: u64, bytes: u64) {
        self.shared
            .gap_fill_records
            .fetch_add(records, Ordering::Relaxed);
        self.shared
            .gap_fill_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// True when the segment holds records beyond its SCL.
    pub fn segment_has_gap(&self, key: &SegmentKey) -> bool {
        lock(&self.shared.index)
            .segment(key)
            .is_some_and(|s| s.has_gap())
    }

    pub fn status(&self) -> StatusSnapshot {
        let index = lock(&self.shared.index);
        StatusSnapshot {
            segments: index
                .slots()
                .map(|(key, _)| (key.clone(), summarize(&index, key)))
                .collect(),
            volumes: index
                .volumes()
                .map(|(name, state)| (name.clone(), state.clone()))
                .collect(),
            log_bytes: self.shared.log_bytes.load(Ordering::Relaxed),
            log_written_bytes: self.shared.log_written_bytes.load(Ordering::Relaxed),
            page_store_bytes: lock(&self.shared.pages)
                .values()
                .map(|s| s.disk_bytes())
                .sum(),
            gap_fill_records: self.shared.gap_fill_records.load(Ordering::Relaxed),
            gap_fill_bytes: self.shared.gap_fill_bytes.load(Ordering::Relaxed),
            hydrated_bytes: self.shared.hydrated_bytes.load(Ordering::Relaxed),
            log_error: lock(&self.shared.log_error).clone(),
            corrupt_found: self.shared.corrupt_found.load(Ordering::Relaxed),
            corrupt_repaired: self.shared.corrupt_repaired.load(Ordering::Relaxed),
            appends_held_ms: self.shared.appends_held_ms.load(Ordering::Relaxed),
        }
    }

    /// Encryption at rest as status shows it (None: off).
    pub fn encryption_status(&self) -> Option<sixfold_proto::wire::EncryptionStatus> {
        let keys = &self.shared.keys;
        let kek = keys.kek_id()?;
        let mut progress = lock(&self.shared.reseal).clone();
        if progress.sweep_of != Some(keys.rotations()) {
            // The folder has not started the sweep of the latest rotation yet: all of it is left.
            progress.stores_left = lock(&self.shared.pages).len() as u64;
            progress.slots_swept = 0;
            progress.checkpoint_left = true;
        }
        let meta_left = lock(&self.shared.meta).under_old_keys(keys).len() as u64;
        Some(sixfold_proto::wire::EncryptionStatus {
            kek,
            keys: keys
                .current_keys()
                .into_iter()
                .map(|key| sixfold_proto::wire::DataKeyState {
                    scope: key.scope,
                    key: key.key.hex(),
                    generation: key.generation,
                })
                .collect(),
            pages_resealed: progress.pages_resealed,
            slots_swept: progress.slots_swept,
            slots_total: progress.slots_total,
            stores_left: progress.stores_left,
            log_files_left: self.shared.files.files_under_old_keys() as u64,
            checkpoint_left: progress.checkpoint_left,
            meta_left,
        })
    }

    /// Up to `limit` segments with a hole in their chain and known peers, starting after `cursor`
    /// (round-robin across calls).
    pub fn gap_candidates(&self, limit: usize, cursor: Option<&SegmentKey>) -> Vec<GapCandidate> {
        let index = lock(&self.shared.index);
        let candidate = |(key, slot): (&SegmentKey, &crate::index::SegmentSlot)| {
            let behind = slot.segment.scl() < slot.pgcl_hint;
            ((slot.segment.has_gap() || behind) && !slot.peers.is_empty()).then(|| GapCandidate {
                key: key.clone(),
                scl: slot.segment.scl(),
                target: slot.pgcl_hint,
                peers: slot.peers.clone(),
                membership: slot.membership.clone(),
            })
        };
        let after = index
            .slots()
            .filter(|(key, _)| cursor.is_some_and(|c| *key > c))
            .filter_map(candidate);
        let before = index
            .slots()
            .filter(|(key, _)| cursor.is_none_or(|c| *key <= c))
            .filter_map(candidate);
        after.chain(before).take(limit).collect()
    }

    /// Stops the appender after the jobs queued before this call, and waits for it.
    pub async fn close(&self) {
        let folder = lock(&self.folder).take();
        if let Some(mut folder) = folder {
            let _ = tokio::task::spawn_blocking(move || folder.stop()).await;
        }
        let _ = self.jobs.send(Job::Stop).await;
        let handle = lock(&self.appender).take();
        if let Some(handle) = handle {
            if tokio::task::spawn_blocking(move || handle.join())
                .await
                .is_err()
            {
                error!("the appender thread panicked");
            }
        }
        lock(&self.dir_lock).take();
    }
}

fn summarize(index: &Index, key: &SegmentKey) -> SegmentSummary {
    let epoch = index.epoch(&key.volume);
    match index.segment(key) {
        Some(segment) => SegmentSummary {
            exists: true,
            scl: segment.scl(),
            max_lsn: segment.max_lsn(),
            records: segment.record_count() as u64,
            bytes: segment.bytes(),
            epoch,
            truncations: segment.truncations().to_vec(),
        },
        None => SegmentSummary {
            exists: false,
            scl: Lsn::ZERO,
            max_lsn: Lsn::ZERO,
            records: 0,
            bytes: 0,
            epoch,
            truncations: Vec::new(),
        },
    }
}

/// Reads a record back from the hot log and verifies it (pair assertion: checked when hardened,
/// checked again here).
pub(crate) fn read_record(
    shared: &Shared,
    key: &SegmentKey,
    lsn: Lsn,
    meta: &RecordMeta,
) -> Result<Record, StoreError> {
    let corrupt = |detail: String| {
        let detail = format!("hot-log record: {detail}");
        shared.report_corrupt_record(key, lsn);
        error!(segment = %key, lsn = lsn.0, location = ?meta.location, "corrupt record in the hot log: {detail}");
        StoreError::Corrupt {
            volume: key.volume.clone(),
            pg: key.pg.0,
            lsn: lsn.0,
            detail,
        }
    };
    let bytes = shared.files.read(meta.location).map_err(|source| {
        error!(segment = %key, lsn = lsn.0, "failed to read a record from the hot log: {source}");
        StoreError::Io {
            action: "read a record from the hot log",
            source,
        }
    })?;
    let record = record::decode_canonical(&bytes).map_err(|e| corrupt(e.to_string()))?;
    record::validate(&record, key.pg).map_err(|e| corrupt(e.to_string()))?;
    if record.lsn != lsn.0 || record.page != meta.page.0 {
        return Err(corrupt(format!(
            "found record {} of page {} where the index expects {lsn} of {}",
            record.lsn, record.page, meta.page
        )));
    }
    Ok(record)
}

/// Runs blocking disk reads off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            action: "run a blocking read",
            source: std::io::Error::other(e.to_string()),
        })?
}
