//! Continuous backup: every PG's records and, from time to time, its pages go to the object
//! store, uploaded by one of its segments, the PG's *archiver*.
//!
//! **Who archives.** The PG's six segments rank their nodes' addresses (as the writer names them:
//! `segment_addr` and `peers` of each Append) by a hash of (volume, PG, address). A segment
//! archives when no node ranked above it can: each answered NodeStatus within
//! [`PEER_ALIVE_FOR`] with backup on, the segment hosted and no archiving error for it, or it
//! does not count. So one segment archives at a time while all are up,
//! and the next takes over when it goes down. Two archivers at once (a partition, a flapping
//! node) are harmless: object keys name their LSN range, and restore chains overlapping runs.
//!
//! **What it uploads.** A run `(start, end]` holds every record of the PG with an LSN in that
//! range, in LSN order, with the writer's consistency points in it (see [`Mark`]). The archiver
//! extends the archive from its head (the furthest point a chain of runs reaches, read from a
//! listing when it becomes the archiver) to the newest consistency point whose records its
//! segment holds whole (PGCL at or below its SCL): every record up to there is at write quorum,
//! so no recovery ever takes one back. A run goes up at most every [`RUN_INTERVAL`] (every
//! [`EMPTY_RUN_INTERVAL`] when the PG had no new records: a quiet PG's archive still reaches
//! recent consistency points), holds at most [`RUN_BYTES_MAX`] of records, and is followed by a
//! write of the PG's `head` object (a hint for the other segments).
//!
//! **Base images.** After [`BASE_EVERY_BYTES`] of runs (or [`BASE_MAX_AGE`]), the archiver
//! uploads its page store as of its fold point `F` (chunks, then `done.json`), so that a restore
//! starts from there instead of the PG's first record. `F` is at most the archive's head (folding is capped by it), so the
//! runs continue the image. The fold point holds still during the scan (`image_hold`, set once
//! any fold step under way has finished). A segment whose fold point is past
//! the archive's head (it hydrated from a peer's pages, or folded before backup was on) starts
//! with a base image: the records in between are gone from its log.
//!
//! **Folding waits for the archive.** Every segment folds no further than its PG's archived
//! point (the archiver's own head; the others read the `head` object every
//! [`HEAD_POLL_INTERVAL`]), so a hot-log file is collected only once its records are archived as
//! well as folded, and whichever segment archives next still holds every record not yet
//! archived. An unreachable store shows as growing lag (NodeStatus), never as a gap.
//!
//! **Retention.** Every [`RETENTION_PASS_EVERY`] the archiver deletes the PG's objects that
//! neither the retention window nor a snapshot needs ([`crate::retention`]).
//!
//! **Errors.** A failed upload is retried with exponential back-off (up to [`BACKOFF_MAX`]); it
//! never touches the write path. The error is shown in NodeStatus until an upload succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_archive::keys::{self, RunKey};
use sixfold_archive::manifest::{BaseChunk, BaseManifest};
use sixfold_archive::{catalog::PgCatalog, format, ObjectError, ObjectStore};

use crate::archive_seal::ArchiveSealer;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{ArchiveMark, ArchivePages, ArchiveRun, NodeStatusRequest};
use sixfold_proto::{Lsn, PG_PAGES};
use sixfold_transport::Security;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::index::{Mark, SegmentKey};
use crate::store::Store;
use crate::store_archive::ArchiveView;

/// How often the archiver looks at its segments.
pub const TICK: Duration = Duration::from_millis(250);
/// Least time between two runs of a PG with new records, and of a quiet PG.
pub const RUN_INTERVAL: Duration = Duration::from_secs(1);
pub const EMPTY_RUN_INTERVAL: Duration = Duration::from_secs(10);
/// Most record bytes in one run.
pub const RUN_BYTES_MAX: u64 = 16 << 20;
/// Run bytes after which the archiver uploads a new base image of the PG...
pub const BASE_EVERY_BYTES: u64 = 256 << 20;
/// ...or time after the last one, if the PG folded anything since (so that retention can let
/// the runs of a quietly written PG go).
pub const BASE_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long to wait before taking a base image again after one was put off (the page store
/// held a page newer than the fold point).
pub const BASE_RETRY: Duration = Duration::from_secs(30);
/// Pages per base-image chunk (4 MiB before compression).
pub const BASE_CHUNK_PAGES: usize = 1024;
/// How often a segment that does not archive reads its PG's archive head.
pub const HEAD_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A peer counts as up for this long after it last answered; pinged at most this often.
pub const PEER_ALIVE_FOR: Duration = Duration::from_secs(6);
pub const PEER_PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Back-off after a failed upload, doubling up to the maximum.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Default retention window, and how often the archiver runs a retention pass over a PG.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RETENTION_PASS_EVERY: Duration = Duration::from_secs(60);

/// How far from this node's clock a writer's consistency point may say it was reached, by
/// default ([`ArchiveConfig::max_clock_skew`]).
pub const CLOCK_SKEW_DEFAULT: Duration = Duration::from_secs(60);

/// Tunables (tests and benchmarks lower the base-image interval and the retention).
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub objects: ObjectStore,
    pub base_every_bytes: u64,
    /// Every consistency point of the last `retention` stays restorable (see
    /// [`crate::retention`]); older objects no snapshot names are deleted.
    pub retention: Duration,
    pub retention_pass_every: Duration,
    /// How far writers' clocks may be from this node's: a consistency point is kept within this
    /// of the node's clock when it arrives ([`crate::index::SegmentSlot::add_mark`]), and
    /// retention keeps this much more than its window, so that a writer clock running behind
    /// never makes it delete a point inside the window.
    pub max_clock_skew: Duration,
}

/// Archives the node's segments forever (the caller aborts the task on shutdown; that drops
/// every PG's task with it). `own_address` names this node when no writer has told it its name
/// yet. Each PG gets its own task, so that a slow upload (a big base image, a store that does
/// not answer) holds up no other PG.
pub async fn run(store: Store, config: ArchiveConfig, own_address: String, security: Security) {
    store.set_mark_skew(config.max_clock_skew);
    tokio::spawn(crate::archive_seal::republish_after_kek_change(
        store.keys(),
        config.objects.clone(),
    ));
    let ctx = Arc::new(Ctx {
        sealer: ArchiveSealer::new(store.keys()),
        store,
        security,
        config,
        own_address,
        peers: Mutex::new(HashMap::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashMap<SegmentKey, tokio::task::AbortHandle> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        while tasks.try_join_next().is_some() {}
        let keys = ctx.store.segment_keys();
        running.retain(|key, handle| {
            let keep = keys.contains(key) && !handle.is_finished();
            if !keep {
                handle.abort();
            }
            keep
        });
        for key in keys {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(key) {
                let pg = PgArchiver {
                    ctx: Arc::clone(&ctx),
                    key: slot.key().clone(),
                    state: PgState::default(),
                };
                slot.insert(tasks.spawn(pg.run()));
            }
        }
    }
}

/// The archiver's memory of one PG (soft: rebuilt from a listing after a restart).
#[derive(Debug)]
struct PgState {
    owner: bool,
    /// The archive's head, once listed (owner only).
    head: Option<Lsn>,
    last_base: Lsn,
    bytes_since_base: u64,
    /// When the last base image was taken (or this node started archiving the PG).
    last_base_at: Option<Instant>,
    base_retry_at: Option<Instant>,
    last_run: Option<Instant>,
    last_head_poll: Option<Instant>,
    last_retention: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Default for PgState {
    fn default() -> Self {
        PgState {
            owner: false,
            head: None,
            last_base: Lsn::ZERO,
            bytes_since_base: 0,
            last_base_at: None,
            base_retry_at: None,
            last_run: None,
            last_head_poll: None,
            last_retention: None,
            retry_at: None,
            backoff: BACKOFF_MIN,
        }
    }
}

#[derive(Debug, Default)]
struct PeerState {
    last_ok: Option<Instant>,
    last_try: Option<Instant>,
    client: Option<StorageNodeClient<Channel>>,
    /// From its last NodeStatus: the segments it hosts whose archiving works (it has backup on
    /// and shows no archiving error for them).
    archiving: std::collections::HashSet<SegmentKey>,
}

/// What every PG's task shares.
struct Ctx {
    store: Store,
    /// How this node proves itself to its peers.
    security: Security,
    config: ArchiveConfig,
    own_address: String,
    /// What this node knows of its peers' ability to archive (pinged at most every
    /// [`PEER_PING_EVERY`], whichever PG asks).
    peers: Mutex<HashMap<String, PeerState>>,
    /// Seals the objects that hold volume data (encryption at rest).
    sealer: ArchiveSealer,
}

/// One PG's archiving on this node.
struct PgArchiver {
    ctx: Arc<Ctx>,
    key: SegmentKey,
    state: PgState,
}

/// Rank of a node for archiving a PG: a hash of (volume, PG, address), highest first.
fn rank(key: &SegmentKey, addr: &str) -> u32 {
    crc32c::crc32c(format!("{}/{}/{addr}", key.volume, key.pg.0).as_bytes())
}

impl PgArchiver {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(view) = self.ctx.store.archive_view(&self.key) else {
                return; // the segment is gone
            };
            self.step(view).await;
        }
    }

    /// One tick of the PG: who archives it, then an archiving step (or a look at the archive's
    /// head), with back-off after a failure.
    async fn step(&mut self, view: ArchiveView) {
        let owner = self.is_owner(&view).await;
        let state = &mut self.state;
        if owner != state.owner {
            info!(segment = %view.key, owner, "PG archiver changed: this node {}", if owner { "archives it now" } else { "no longer archives it" });
            state.owner = owner;
            state.head = None;
            self.ctx.store.set_archiver(&view.key, owner, None);
        }
        let now = Instant::now();
        if state.retry_at.is_some_and(|at| at > now) {
            return;
        }
        let result = if owner {
            let stepped = self.archive_step(&view).await;
            if stepped.is_ok() {
                self.retention_due(&view).await;
            }
            stepped
        } else {
            self.poll_head(&view).await
        };
        let state = &mut self.state;
        match result {
            Ok(()) => {
                if state.retry_at.take().is_some() {
                    info!(segment = %view.key, "archiving works again");
                    self.ctx.store.set_archiver(&view.key, owner, None);
                }
                state.backoff = BACKOFF_MIN;
            }
            Err(error) => {
                warn!(segment = %view.key, retry_in_ms = state.backoff.as_millis() as u64, "archiving failed: {error}");
                state.retry_at = Some(now + state.backoff);
                state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
                if owner {
                    // Relist on the next try: a partial step may have moved the head.
                    state.head = None;
                }
                self.ctx
                    .store
                    .set_archiver(&view.key, owner, Some(error.to_string()));
            }
        }
    }

    /// Runs a retention pass over the PG's archive when one is due. A failure is logged and
    /// retried at the next pass; it never holds up archiving.
    async fn retention_due(&mut self, view: &ArchiveView) {
        let state = &mut self.state;
        if state
            .last_retention
            .is_some_and(|at| at.elapsed() < self.ctx.config.retention_pass_every)
        {
            return;
        }
        state.last_retention = Some(Instant::now());
        // Marks are trusted to within the clock skew of this node's clock: the window reaches
        // that much further back, so that no point inside it is lost to a writer's clock
        // running behind.
        let reach = self.ctx.config.retention + self.ctx.config.max_clock_skew;
        let window_start_us = crate::now_us().saturating_sub(reach.as_micros() as u64);
        if let Err(error) = crate::retention::pass(
            &self.ctx.config.objects,
            &view.key.volume,
            view.key.pg,
            window_start_us,
        )
        .await
        {
            warn!(segment = %view.key, "retention pass failed: {error}");
        }
    }

    /// Whether this node archives the segment's PG now: every node ranked above it is down.
    async fn is_owner(&mut self, view: &ArchiveView) -> bool {
        let me = if view.addr.is_empty() {
            self.ctx.own_address.clone()
        } else {
            view.addr.clone()
        };
        let my_rank = (rank(&view.key, &me), me.clone());
        let mut above: Vec<String> = view
            .peers
            .iter()
            .filter(|p| **p != me && (rank(&view.key, p), (*p).clone()) > my_rank)
            .cloned()
            .collect();
        above.sort_by_key(|p| std::cmp::Reverse(rank(&view.key, p)));
        for peer in above {
            if self.alive(&peer, &view.key).await {
                return false;
            }
        }
        true
    }

    /// Whether `peer` can archive the PG: it answered NodeStatus within [`PEER_ALIVE_FOR`], has
    /// backup on, hosts the segment and shows no archiving error for it. A node that is up but
    /// cannot archive (no --backup, a lost segment, a failing store) must not hold the PG's
    /// archiving up.
    async fn alive(&mut self, peer: &str, key: &SegmentKey) -> bool {
        let now = Instant::now();
        // Decide under the lock whether to ping (one PG's task pings for all), ping without it.
        let ping = {
            let mut peers = crate::lock(&self.ctx.peers);
            let state = peers.entry(peer.to_owned()).or_default();
            let due = state
                .last_try
                .is_none_or(|at| now.duration_since(at) >= PEER_PING_EVERY);
            if due {
                state.last_try = Some(now);
                if state.client.is_none() {
                    state.client = client(&self.ctx.security, peer);
                }
                state.client.clone()
            } else {
                None
            }
        };
        if let Some(mut client) = ping {
            let answered =
                tokio::time::timeout(PING_TIMEOUT, client.node_status(NodeStatusRequest {})).await;
            if let Ok(Ok(response)) = answered {
                let status = response.into_inner();
                let archiving = if status.backup_store.is_empty() {
                    Default::default()
                } else {
                    status
                        .segments
                        .iter()
                        .filter(|s| s.archive_error.is_empty())
                        .filter_map(|s| s.segment.as_ref())
                        .map(|r| SegmentKey {
                            volume: r.volume.clone(),
                            pg: sixfold_proto::PgId(r.pg),
                        })
                        .collect()
                };
                let mut peers = crate::lock(&self.ctx.peers);
                let state = peers.entry(peer.to_owned()).or_default();
                state.last_ok = Some(Instant::now());
                state.archiving = archiving;
            }
        }
        let peers = crate::lock(&self.ctx.peers);
        peers.get(peer).is_some_and(|state| {
            state
                .last_ok
                .is_some_and(|at| now.duration_since(at) < PEER_ALIVE_FOR)
                && state.archiving.contains(key)
        })
    }

    /// A segment that does not archive learns how far the archive reaches, to fold that far.
    async fn poll_head(&mut self, view: &ArchiveView) -> Result<(), ObjectError> {
        let state = &mut self.state;
        let now = Instant::now();
        if state
            .last_head_poll
            .is_some_and(|at| now.duration_since(at) < HEAD_POLL_INTERVAL)
        {
            return Ok(());
        }
        state.last_head_poll = Some(now);
        let key = keys::head_key(&view.key.volume, view.key.pg);
        match self.ctx.config.objects.get(&key).await {
            Ok(body) => {
                let head = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok());
                match head {
                    Some(head) => self.ctx.store.note_archived(&view.key, Lsn(head), 0),
                    None => {
                        warn!(segment = %view.key, "archive head object {key} does not parse; ignored")
                    }
                }
                Ok(())
            }
            Err(ObjectError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One step of the archiver of a PG: a base image when one is due, else a run when one is.
    async fn archive_step(&mut self, view: &ArchiveView) -> Result<(), ObjectError> {
        let objects = self.ctx.config.objects.clone();
        let state = &mut self.state;
        let head = match state.head {
            Some(head) => head,
            None => {
                let prefix = keys::pg_prefix(&view.key.volume, view.key.pg);
                let listed = objects.list(&prefix).await?;
                let catalog = PgCatalog::from_keys(
                    view.key.pg,
                    listed.iter().filter_map(|l| l.key.strip_prefix(&prefix)),
                );
                let head = catalog.head();
                state.head = Some(head);
                state.last_base = catalog
                    .bases
                    .iter()
                    .next_back()
                    .copied()
                    .unwrap_or(Lsn::ZERO);
                info!(segment = %view.key, %head, last_base = %state.last_base, runs = catalog.runs.len(), "archiving this PG from its archive's head");
                self.ctx.store.note_archived(&view.key, head, 0);
                head
            }
        };
        if view.folded > head {
            // The records between the head and the fold point are gone from this log.
            warn!(segment = %view.key, %head, folded = %view.folded, "fold point is past the archive's head: starting with a base image (restore points in between are lost)");
            return self.base_image(view).await;
        }
        let state = &mut self.state;
        let base_due = state.bytes_since_base >= self.ctx.config.base_every_bytes
            || state
                .last_base_at
                .is_some_and(|at| at.elapsed() >= BASE_MAX_AGE);
        let may_retry = state.base_retry_at.is_none_or(|at| at <= Instant::now());
        if base_due && view.folded > state.last_base && may_retry {
            return self.base_image(view).await;
        }
        let Some(cover) = view.coverable.filter(|m| m.vdl > head) else {
            return Ok(());
        };
        let has_records = view.scl > head;
        let interval = if has_records {
            RUN_INTERVAL
        } else {
            EMPTY_RUN_INTERVAL
        };
        if state.last_run.is_some_and(|at| at.elapsed() < interval) {
            return Ok(());
        }
        self.upload_run(view, head, cover).await
    }

    async fn upload_run(
        &mut self,
        view: &ArchiveView,
        head: Lsn,
        cover: Mark,
    ) -> Result<(), ObjectError> {
        let key = &view.key;
        let failed = |action: &'static str, message: String| ObjectError::Failed {
            store: "this node".into(),
            action,
            key: key.to_string(),
            message,
        };
        let (mut records, scl) = if view.scl > head {
            self.ctx
                .store
                .fetch_records(key, head, RUN_BYTES_MAX)
                .await
                .map_err(|e| failed("read the records to archive of", e.to_string()))?
        } else {
            (Vec::new(), view.scl)
        };
        let past_cover = records.iter().any(|r| Lsn(r.lsn) > cover.vdl);
        let complete = records.last().is_none_or(|r| Lsn(r.lsn) >= scl);
        records.retain(|r| Lsn(r.lsn) <= cover.vdl);
        let cut = !past_cover && !complete && !records.is_empty();
        let end = match records.last() {
            // Cut by the byte limit: the run ends at its newest consistency point, so that
            // every run's end is one (a time maps to an LSN from keys alone); one that holds
            // none ends at its last record and carries no point at all.
            Some(last) if cut => self
                .ctx
                .store
                .marks_between(key, head, Lsn(last.lsn))
                .last()
                .map_or(Lsn(last.lsn), |m| m.vdl),
            _ => cover.vdl,
        };
        records.retain(|r| Lsn(r.lsn) <= end);
        if end <= head {
            return Ok(());
        }
        let marks = self.ctx.store.marks_between(key, head, end);
        // The key's time is its end's: every run ends at a consistency point, except one cut
        // by size that holds none (time 0).
        let time_us = marks
            .last()
            .filter(|m| m.vdl == end)
            .map_or(0, |m| m.time_us);
        let run = ArchiveRun {
            volume: key.volume.clone(),
            pg: key.pg.0,
            start: head.0,
            end: end.0,
            marks: marks
                .iter()
                .map(|m| ArchiveMark {
                    vdl: m.vdl.0,
                    time_us: m.time_us,
                })
                .collect(),
            records,
        };
        let run_key = RunKey {
            start: head,
            end,
            time_us,
        };
        let records = run.records.len();
        // Compression off the runtime thread: the node serves requests on one thread. The
        // marks alone (no records) are what a sealed run keeps in the clear.
        let (clear, body) = tokio::task::spawn_blocking(move || {
            let marks_only = ArchiveRun {
                volume: run.volume.clone(),
                pg: run.pg,
                start: run.start,
                end: run.end,
                marks: run.marks.clone(),
                records: Vec::new(),
            };
            (format::encode_run(&marks_only), format::encode_run(&run))
        })
        .await
        .map_err(|e| failed("encode a run of", e.to_string()))?;
        let object = keys::run_key(&key.volume, key.pg, &run_key);
        let body = self
            .ctx
            .sealer
            .seal(&self.ctx.config.objects, &key.volume, &object, clear, body)
            .await
            .map_err(|e| failed("seal a run of", e))?;
        let bytes = body.len() as u64;
        self.ctx.config.objects.put(&object, body).await?;
        self.ctx.store.count_archived(bytes);
        self.put_head(key, end).await?;
        self.ctx.store.note_archived(key, end, time_us);
        debug!(segment = %key, %head, %end, records, bytes, "archived a run");
        let state = &mut self.state;
        state.head = Some(end);
        state.bytes_since_base += bytes;
        // Behind (the run was cut by size): the next run goes at once, not a second later.
        state.last_run = (!cut).then(Instant::now);
        Ok(())
    }

    async fn put_head(&self, key: &SegmentKey, head: Lsn) -> Result<(), ObjectError> {
        let object = keys::head_key(&key.volume, key.pg);
        self.ctx
            .config
            .objects
            .put(&object, Bytes::from(head.0.to_string()))
            .await
    }

    /// Uploads the segment's page store as of its fold point, then `done.json`; the fold point
    /// holds still meanwhile.
    async fn base_image(&mut self, view: &ArchiveView) -> Result<(), ObjectError> {
        self.ctx.store.hold_for_image(&view.key, true).await;
        let result = self.scan_and_upload(view).await;
        self.ctx.store.hold_for_image(&view.key, false).await;
        result
    }

    async fn scan_and_upload(&mut self, view: &ArchiveView) -> Result<(), ObjectError> {
        let key = &view.key;
        let started = Instant::now();
        let failed = |message: String| ObjectError::Failed {
            store: "this node".into(),
            action: "read the pages to archive of",
            key: key.to_string(),
            message,
        };
        let mut cursor = 0;
        let mut folded_at: Option<Lsn> = None;
        let mut chunks = Vec::new();
        let mut pages_total = 0u64;
        loop {
            let (folded, images, next) = self
                .ctx
                .store
                .scan_pages(key, Lsn::ZERO, cursor, BASE_CHUNK_PAGES)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if *folded_at.get_or_insert(folded) != folded {
                return Err(failed(format!(
                    "the fold point moved from {} to {folded} during the scan; taking it again later",
                    folded_at.unwrap_or(folded)
                )));
            }
            let lsn = folded;
            // A page stored newer than the fold point (a page repaired from a peer at its
            // PGCL) holds records above it: no image as of the fold point can hold it. Put the
            // image off until folding has passed it.
            if let Some(newer) = images.iter().find(|i| i.lsn > folded) {
                info!(segment = %key, page = %newer.page, page_lsn = %newer.lsn, %folded, "base image put off: a stored page is newer than the fold point");
                self.state.base_retry_at = Some(Instant::now() + BASE_RETRY);
                return Ok(());
            }
            if !images.is_empty() {
                let index = chunks.len() as u32;
                let pages = ArchivePages {
                    pages: images
                        .iter()
                        .map(|image| sixfold_proto::wire::PageImage {
                            page: image.page.0,
                            lsn: image.lsn.0,
                            data: Bytes::from(image.data.clone()),
                        })
                        .collect(),
                };
                let body = tokio::task::spawn_blocking(move || format::encode_pages(&pages))
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                let object = keys::base_chunk_key(&key.volume, key.pg, lsn, index);
                let body = self
                    .ctx
                    .sealer
                    .seal(
                        &self.ctx.config.objects,
                        &key.volume,
                        &object,
                        Bytes::new(),
                        body,
                    )
                    .await
                    .map_err(failed)?;
                let bytes = body.len() as u64;
                self.ctx.config.objects.put(&object, body).await?;
                self.ctx.store.count_archived(bytes);
                pages_total += images.len() as u64;
                chunks.push(BaseChunk {
                    index,
                    pages: images.len() as u64,
                    bytes,
                });
            }
            if next >= PG_PAGES || next <= cursor {
                break;
            }
            cursor = next;
        }
        let lsn = folded_at.unwrap_or(Lsn::ZERO);
        if lsn == Lsn::ZERO {
            return Ok(()); // nothing folded yet: no image to take
        }
        let manifest = BaseManifest {
            volume: key.volume.clone(),
            pg: key.pg.0,
            lsn: lsn.0,
            chunks,
            pages: pages_total,
            created_unix_s: crate::now_us() / 1_000_000,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
        let done = keys::base_done_key(&key.volume, key.pg, lsn);
        self.ctx
            .config
            .objects
            .put(&done, Bytes::from(body))
            .await?;
        info!(segment = %key, %lsn, pages = pages_total, elapsed_ms = started.elapsed().as_millis() as u64, "archived a base image");
        let state = &mut self.state;
        state.last_base = lsn;
        state.bytes_since_base = 0;
        state.last_base_at = Some(Instant::now());
        state.base_retry_at = None;
        if state.head.is_some_and(|head| head < lsn) {
            state.head = Some(lsn);
            self.put_head(key, lsn).await?;
            self.ctx.store.note_archived(key, lsn, 0);
        }
        Ok(())
    }
}

fn client(security: &Security, peer: &str) -> Option<StorageNodeClient<Channel>> {
    crate::peer::client(security, peer, PING_TIMEOUT, PING_TIMEOUT).ok()
}
