//! The folder: one background thread that coalesces each segment's records into its page store
//! ([`crate::pagestore`]), checkpoints ([`crate::checkpoint`]) and deletes the hot-log files
//! nothing needs any more, so that the hot log, the index in memory and restart time stay bounded.
//!
//! The fold point of a segment may rise to the lowest of its SCL, the PGCL and the fold limit
//! the writer reported (the lowest SCL among the PG's segments as the writer knows them, capped
//! by its VDL, its lowest read point). Records at or below the PGCL are never truncated by a
//! recovery; records at or below every peer's SCL are never asked for by gap-fill; and no read
//! asks for a point below the VDL. A step folds a prefix of the records above the fold point
//! touching at most [`FOLD_PAGES_MAX`] pages: the page images (the store's image, or zeros below
//! a full-page record, plus the records in LSN order) are made durable by [`PageStore::fold`],
//! and only then does the index forget those records.
//!
//! Folding is lazy, as in Aurora: the hot log is where records are cheap, and every fold step
//! costs a journal write and four fsyncs on top of the page writes. Every [`FOLD_INTERVAL`] the
//! folder folds a segment only when it is due: its records reach [`FOLD_BATCH_BYTES`], or it has
//! had something to fold for [`FOLD_DELAY_MAX`], or the node's hot log is over
//! [`HOT_LOG_PRESSURE_BYTES`]. Waiting lets the many records of a hot page (a database's WAL
//! header, a file system's journal and inode blocks) fold into one page write instead of one
//! each. Over [`HOT_LOG_PAST_PEERS_BYTES`] the folder also folds past a lagging peer's SCL, up to
//! the writer's VDL (still capped by the PGCL and its own SCL): a peer that was away that long
//! hydrates from pages ([`crate::hydrate`]) instead of holding every other segment's log on disk
//! (DESIGN.md keeps records for gap-fill without a bound; a bounded log needs this). With the
//! store's hold on writer appends above [`HOT_LOG_LIMIT_BYTES`] ([`crate::store::Store::append`]),
//! this is what keeps the hot log bounded under a sustained write load.
//!
//! With backup on ([`Index::archive_on`]), no segment folds past what its PG's archive holds
//! (`archived`): a hot-log file is collected only once its records are archived as well as
//! folded, so whichever segment archives next still has every record not yet archived.
//!
//! After a round that folded anything: the checkpoint (volume epochs, every segment's fold point
//! and truncations) is written durably, and then every hot-log file older than both the oldest
//! file still holding an indexed record and the appender's applied file is deleted. Order
//! matters: a file goes only once every frame in it is folded, dropped, or summarized in a
//! checkpoint already on disk.
//!
//! The folder writes only page stores, the checkpoint and log-file deletions; the appender stays
//! the only writer of the hot log. A segment whose limit does not rise (a writer that is gone, a
//! peer that is down and so holds the PG's lowest SCL) is not folded, and its log files stay
//! (DESIGN.md folds below PGMRPL only; the lowest-SCL limit is ours, so that peers can gap-fill
//! from logs in the common case). A segment that fell behind every peer's log anyway (its data
//! was lost, or the writer's view of its SCL was stale) hydrates from a peer's pages
//! ([`crate::hydrate`]). One fold step, hydration write or checkpoint runs at a time
//! (`fold_lock`), and every image is built by the page-LSN rule.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sixfold_proto::{record, Lsn, PageId, PgId, PAGE_SIZE};
use tracing::{debug, error, info};

use crate::checkpoint::{Checkpoint, SegmentCheckpoint};
use crate::error::{NodeError, StoreError};
use crate::index::{Index, SegmentKey, SegmentSlot};
use crate::keyring::Keyring;
use crate::lock;
use crate::pagestore::{PageImage, PageStore, Stored};
use crate::segment::RecordMeta;
use crate::store::{read_record, Shared};

/// How often the folder looks for work.
pub const FOLD_INTERVAL: Duration = Duration::from_millis(500);
/// Most pages one fold step writes (its journal is at most this many pages).
pub const FOLD_PAGES_MAX: usize = 4096;
/// The scrubber runs every this many rounds (2 s), over this many page slots of each segment
/// (at most 16 MiB read): a full 10 GiB PG is verified about every 20 minutes.
pub const SCRUB_EVERY_ROUNDS: u64 = 4;
pub const SCRUB_SLOTS_PER_PASS: u64 = 4096;
/// A segment is due for folding once its records in the hot log reach this many bytes...
pub const FOLD_BATCH_BYTES: u64 = 16 << 20;
/// ...or once it has had records to fold for this long (a quiet segment's log does not linger:
/// this also bounds what a restart replays).
pub const FOLD_DELAY_MAX: Duration = Duration::from_secs(5);
/// Above this many hot-log bytes on the node every segment is due, every round...
pub const HOT_LOG_PRESSURE_BYTES: u64 = 128 << 20;
/// ...and above this many each folds up to the writer's VDL, even past a lagging peer's SCL.
pub const HOT_LOG_PAST_PEERS_BYTES: u64 = 256 << 20;
/// Above this many hot-log bytes the store holds writer appends (not gap-fill) until folding
/// and GC bring the log back under it (see [`crate::store::Store::append`]).
pub const HOT_LOG_LIMIT_BYTES: u64 = 384 << 20;
/// Most fold steps per segment per round, so that one busy segment does not starve the others.
const STEPS_PER_ROUND_MAX: usize = 16;

/// Page stores live in `data_dir/pages/<volume>/pg-<N>`.
pub(crate) fn store_dir(data_dir: &Path, key: &SegmentKey) -> std::path::PathBuf {
    data_dir
        .join("pages")
        .join(&key.volume)
        .join(format!("pg-{}", key.pg.0))
}

/// Opens every page store on disk, redoing the newest fold of each where its journal is valid.
/// Returns, per segment, the store and the fold point a redone journal brought it to.
pub type OpenedStores = HashMap<SegmentKey, (Arc<PageStore>, Option<Lsn>)>;

pub fn open_page_stores(data_dir: &Path, keys: &Arc<Keyring>) -> Result<OpenedStores, NodeError> {
    let mut out = HashMap::new();
    let root = data_dir.join("pages");
    let volumes = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(NodeError::io("list page stores", &root)(e)),
    };
    for volume in volumes {
        let volume = volume.map_err(NodeError::io("list page stores", &root))?;
        let Some(name) = volume.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let dir = volume.path();
        for pg in std::fs::read_dir(&dir).map_err(NodeError::io("list page stores", &dir))? {
            let pg = pg.map_err(NodeError::io("list page stores", &dir))?;
            let Some(number) = pg
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("pg-"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let path = pg.path();
            let (store, redone) = PageStore::open(&path, PgId(number), &name, Arc::clone(keys))
                .map_err(NodeError::io("open page store", &path))?;
            if let Some(to) = redone {
                info!(path = %path.display(), %to, "redid the newest fold from its journal");
            }
            let key = SegmentKey {
                volume: name.clone(),
                pg: PgId(number),
            };
            out.insert(key, (Arc::new(store), redone));
        }
    }
    Ok(out)
}

/// The folder thread's handle: stops and joins it.
#[derive(Debug)]
pub struct Folder {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Folder {
    pub fn spawn(shared: Arc<Shared>) -> std::io::Result<Folder> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("sixfold-folder".into())
            .spawn(move || run(&shared, &flag))?;
        Ok(Folder {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                error!("the folder thread panicked");
            }
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Arc<Shared>, stop: &(Mutex<bool>, Condvar)) {
    let mut scrub_cursors = HashMap::new();
    let mut foldable_since = HashMap::new();
    let mut rounds = 0u64;
    let mut behind = false;
    let mut reseal = crate::reseal::Reseal::default();
    loop {
        {
            // A round that folded under pressure is followed at once by the next: the hot log
            // is over its mark and writers may be held.
            let wait = if behind {
                Duration::ZERO
            } else {
                FOLD_INTERVAL
            };
            let stopped = lock(&stop.0);
            let (stopped, _) = stop
                .1
                .wait_timeout_while(stopped, wait, |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
        }
        behind = lazy_round(shared, &mut foldable_since);
        if !behind {
            // Background work: only while folding keeps up.
            reseal.round(shared);
        }
        rounds += 1;
        if rounds >= SCRUB_EVERY_ROUNDS {
            rounds = 0;
            scrub(shared, &mut scrub_cursors);
        }
    }
}

/// Verifies the next [`SCRUB_SLOTS_PER_PASS`] slots of every page store; a damaged one is
/// counted, logged and queued for repair from a peer (the gossip task does it).
fn scrub(shared: &Shared, cursors: &mut HashMap<SegmentKey, u64>) {
    let stores: Vec<(SegmentKey, Arc<PageStore>)> = lock(&shared.pages)
        .iter()
        .map(|(key, store)| (key.clone(), Arc::clone(store)))
        .collect();
    for (key, store) in stores {
        let cursor = cursors.get(&key).copied().unwrap_or(0);
        match store.verify(cursor, SCRUB_SLOTS_PER_PASS) {
            Ok((damaged, next)) => {
                for page in damaged {
                    error!(segment = %key, %page, "scrub found a damaged page; repairing it from a peer");
                    shared.report_corrupt_page(&key, page);
                }
                cursors.insert(key, next.unwrap_or(0));
            }
            Err(e) => error!(segment = %key, "scrub failed to read the page store: {e}"),
        }
    }
}

/// The highest LSN the segment may fold to now (before its own SCL caps it): see the module
/// docs. `past_peers`: a lagging peer no longer holds it back; the writer's VDL still does.
///
/// The hints are the word of the volume's writer (only an authenticated writer of the current
/// epoch gets them in: a fenced append's hints are dropped with it) and are held to each other:
/// a writer's fold limit is never above its VDL, so neither a fold limit nor a PGCL above the
/// VDL that came with it folds anything past that VDL (a record above it may be one a recovery
/// truncates, and folded records are never truncated).
fn fold_limit(index: &Index, slot: &SegmentSlot, writer_vdl: Lsn, past_peers: bool) -> Lsn {
    let hinted = slot.fold_limit_hint.min(slot.pgcl_hint).min(writer_vdl);
    let limit = if past_peers {
        hinted.max(writer_vdl.min(slot.pgcl_hint))
    } else {
        hinted
    };
    if index.archive_on {
        limit.min(slot.archived)
    } else {
        limit
    }
}

/// True when the segment has records it may fold now.
fn foldable(index: &Index, key: &SegmentKey, slot: &SegmentSlot, past_peers: bool) -> bool {
    let vdl = index
        .volume(&key.volume)
        .map_or(Lsn::ZERO, |v| v.writer_vdl);
    fold_limit(index, slot, vdl, past_peers).min(slot.segment.scl()) > slot.segment.folded()
        && !held(slot)
}

/// One pass of the folder thread: folds the segments that are due (see the module docs);
/// `foldable_since` remembers since when each segment has had something to fold. True when it
/// folded something while the hot log was under pressure.
fn lazy_round(shared: &Shared, foldable_since: &mut HashMap<SegmentKey, Instant>) -> bool {
    let log_bytes = shared.log_bytes.load(Ordering::Relaxed);
    let pressure = log_bytes > HOT_LOG_PRESSURE_BYTES;
    let past_peers = log_bytes > HOT_LOG_PAST_PEERS_BYTES;
    let now = Instant::now();
    let due: Vec<SegmentKey> = {
        let index = lock(&shared.index);
        let mut due = Vec::new();
        let mut seen = HashMap::new();
        for (key, slot) in index.slots() {
            if !foldable(&index, key, slot, past_peers) {
                continue;
            }
            let since = foldable_since.get(key).copied().unwrap_or(now);
            seen.insert(key.clone(), since);
            if pressure
                || slot.segment.bytes() >= FOLD_BATCH_BYTES
                || now.duration_since(since) >= FOLD_DELAY_MAX
            {
                due.push(key.clone());
            }
        }
        *foldable_since = seen;
        due
    };
    for key in &due {
        foldable_since.remove(key);
    }
    fold_segments(shared, &due, past_peers) > 0 && pressure
}

/// Folds every segment that has anything to fold, now, within the writer's hints (tests use it
/// to fold on demand); then checkpoints and collects garbage if anything was folded.
#[cfg(test)]
pub fn round(shared: &Shared) {
    let keys: Vec<SegmentKey> = {
        let index = lock(&shared.index);
        index
            .slots()
            .filter(|(key, slot)| foldable(&index, key, slot, false))
            .map(|(key, _)| key.clone())
            .collect()
    };
    fold_segments(shared, &keys, false);
}

/// Returns how many fold steps ran.
fn fold_segments(shared: &Shared, keys: &[SegmentKey], past_peers: bool) -> usize {
    let started = Instant::now();
    let limit = if past_peers {
        Limit::PastPeers
    } else {
        Limit::Hints
    };
    let mut steps = 0;
    for key in keys {
        for _ in 0..STEPS_PER_ROUND_MAX {
            match fold_step(shared, key, limit) {
                Ok(true) => steps += 1,
                Ok(false) => break,
                Err(e) => {
                    error!(segment = %key, "fold failed: {e}");
                    break;
                }
            }
        }
    }
    if steps == 0 {
        return 0;
    }
    match checkpoint_and_collect(shared) {
        Ok((files, bytes)) => debug!(
            steps,
            past_peers,
            files_deleted = files,
            bytes_freed = bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fold round"
        ),
        Err(e) => error!("checkpoint or hot-log GC failed: {e}"),
    }
    steps
}

pub(crate) fn page_store(shared: &Shared, key: &SegmentKey) -> Result<Arc<PageStore>, StoreError> {
    if let Some(store) = lock(&shared.pages).get(key) {
        return Ok(Arc::clone(store));
    }
    let dir = store_dir(&shared.data_dir, key);
    let (store, _) =
        PageStore::open(&dir, key.pg, &key.volume, Arc::clone(&shared.keys)).map_err(|source| {
            StoreError::Io {
                action: "create a page store",
                source,
            }
        })?;
    let store = Arc::new(store);
    lock(&shared.pages).insert(key.clone(), Arc::clone(&store));
    Ok(store)
}

/// True while a peer hydrates from the segment's pages (its fold point must hold still).
fn held(slot: &SegmentSlot) -> bool {
    slot.image_hold
        || slot
            .fold_hold_until
            .is_some_and(|until| Instant::now() < until)
}

/// Folds the segment's whole chain up to its SCL, whatever the writer's hints say (before a
/// hydration, so that the page store alone holds the segment's state at its SCL).
pub fn fold_to_scl(shared: &Shared, key: &SegmentKey) -> Result<(), StoreError> {
    loop {
        let scl = lock(&shared.index)
            .segment(key)
            .map_or(Lsn::ZERO, |s| s.scl());
        if !fold_step(shared, key, Limit::Lsn(scl))? {
            return Ok(());
        }
    }
}

/// How far a fold step may go.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// The writer's hints (see [`fold_limit`]), unless a peer holds the fold point still.
    Hints,
    /// The hints, or the writer's VDL past a lagging peer (the hot log is over
    /// [`HOT_LOG_PAST_PEERS_BYTES`]).
    PastPeers,
    /// This LSN, whatever the hints say (hydration: before a peer copies the pages).
    Lsn(Lsn),
}

/// Folds the next prefix of the segment's records, up to `limit`; false when there is nothing
/// to fold.
fn fold_step(shared: &Shared, key: &SegmentKey, limit: Limit) -> Result<bool, StoreError> {
    let _folding = lock(&shared.fold_lock);
    let plan = {
        let index = lock(&shared.index);
        let Some(slot) = index.slot(key) else {
            return Ok(false);
        };
        let vdl = index
            .volume(&key.volume)
            .map_or(Lsn::ZERO, |v| v.writer_vdl);
        let limit = match limit {
            Limit::Lsn(lsn) => lsn,
            _ if held(slot) => return Ok(false),
            Limit::Hints => fold_limit(&index, slot, vdl, false),
            Limit::PastPeers => fold_limit(&index, slot, vdl, true),
        };
        slot.segment.fold_plan(limit, FOLD_PAGES_MAX)
    };
    let Some(&(to, _)) = plan.last() else {
        return Ok(false);
    };
    let store = page_store(shared, key)?;
    let mut by_page: BTreeMap<PageId, Vec<(Lsn, RecordMeta)>> = BTreeMap::new();
    for (lsn, meta) in plan {
        by_page.entry(meta.page).or_default().push((lsn, meta));
    }
    let io = |action: &'static str| move |source| StoreError::Io { action, source };
    let mut images = Vec::with_capacity(by_page.len());
    for (page, records) in by_page {
        // From the newest full-page record if there is one, else from the stored image; only
        // records above the image's LSN apply to it (it may be newer: hydration, journal redo,
        // or a page repaired from a peer over a damaged record, which then is never read).
        let mut start = records.iter().rposition(|(_, m)| m.full_page);
        if let Some(s) = start {
            let stored = store
                .lsn_of(page)
                .map_err(io("read a page's LSN to fold into"))?;
            if stored.is_some_and(|lsn| lsn >= records[s].0) {
                start = None;
            }
        }
        let mut data = vec![0u8; PAGE_SIZE];
        let mut base = Lsn::ZERO;
        if start.is_none() {
            match store.read(page).map_err(io("read a page to fold into"))? {
                Stored::Absent => {}
                Stored::Page { data: image, lsn } => {
                    data = image;
                    base = lsn;
                }
                Stored::Corrupt(detail) => {
                    return Err(StoreError::Corrupt {
                        volume: key.volume.clone(),
                        pg: key.pg.0,
                        lsn: to.0,
                        detail,
                    })
                }
            }
        }
        let mut last = base;
        for (lsn, meta) in records[start.unwrap_or(0)..]
            .iter()
            .filter(|(lsn, _)| *lsn > base)
        {
            let record = read_record(shared, key, *lsn, meta)?;
            record::apply(&record, &mut data);
            last = *lsn;
        }
        images.push(PageImage {
            page,
            lsn: last,
            data,
        });
    }
    store
        .fold(to, &images)
        .map_err(io("write folded pages to the page store"))?;
    let mut index = lock(&shared.index);
    index.slot_mut(key).segment.forget_folded(to);
    Ok(true)
}

/// Writes the checkpoint, then deletes the hot-log files it and the page stores made useless.
pub(crate) fn checkpoint_and_collect(shared: &Shared) -> Result<(usize, u64), StoreError> {
    let _folding = lock(&shared.fold_lock);
    let applied = shared.applied_file.load(Ordering::Acquire);
    let (checkpoint, oldest_live) = {
        let index = lock(&shared.index);
        let mut checkpoint = Checkpoint::default();
        for (volume, state) in index.volumes() {
            checkpoint.volumes.insert(volume.clone(), state.epoch);
        }
        let mut oldest = None::<u32>;
        for (key, slot) in index.slots() {
            checkpoint.segments.insert(
                key.clone(),
                SegmentCheckpoint {
                    folded: slot.segment.folded(),
                    truncations: slot.segment.truncations().to_vec(),
                    membership: slot.held_membership(),
                },
            );
            if let Some(file) = slot.segment.oldest_log_file() {
                oldest = Some(oldest.map_or(file, |o| o.min(file)));
            }
        }
        (checkpoint, oldest)
    };
    let io = |action: &'static str| move |source| StoreError::Io { action, source };
    checkpoint
        .store(&shared.data_dir, &shared.keys)
        .map_err(io("write the checkpoint"))?;
    let first_kept = oldest_live.map_or(applied, |o| o.min(applied));
    shared
        .files
        .remove_below(first_kept)
        .map_err(io("delete hot-log files"))
}
