//! The appender: one thread that owns the hot-log writer and makes every durable change of the
//! node, in the order it receives them (group commit).
//!
//! Loop: wait for a job; if it is an Append, drain every Append already queued behind it (bounded
//! by [`GROUP_JOBS_MAX`] and [`GROUP_BYTES_MAX`]); decide each job against the index (fencing,
//! dedup by LSN, truncation); write all their new frames; fsync ONCE; apply the frames to the index;
//! answer every job. Appends that arrive during that fsync form the next group, so one fsync covers
//! many batches of many segments. OpenSegment and PutVolumeMeta change epochs and truncation state
//! that the decisions of later jobs depend on, so each runs as a group of its own.
//!
//! Invariants:
//! - only this thread writes the hot log and the metadata files and adds to the index (the folder
//!   thread writes page stores and the checkpoint, and removes folded records from the index);
//! - a job is answered only after every frame it depends on is fsync'd (a job whose records were
//!   all duplicates depends on frames an earlier, already answered group made durable, or on frames
//!   of its own group);
//! - the index is updated only after the fsync, so readers never see an unhardened record;
//! - a [`Source::Repair`] job writes good copies of records the segment already holds (found
//!   damaged on read) and only points the index at the new copies: it never adds a record and
//!   never moves the SCL;
//! - an Append of an epoch older than the volume's is refused before anything is written; since
//!   epoch changes run alone and are applied before the next decision, no record of a fenced
//!   writer is acknowledged after the fencing OpenSegment/PutVolumeMeta was.
//!
//! Crash consistency: see [`crate::hotlog`]. After a write or fsync error the state of the log tail
//! is unknown (fsync errors may drop dirty pages silently), so the appender records where the log
//! was last synced and refuses every later write ([`StoreError::LogFailed`]) until a restart
//! replays the log and cuts what the failed fsync covered.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sixfold_proto::collision::{Ballot, Vote};
use sixfold_proto::membership::{Membership, MembershipError};
use sixfold_proto::wire::VolumeMeta;
use sixfold_proto::{Epoch, Lsn};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use crate::hotlog;

use crate::error::StoreError;
use crate::frame::{self, FrameBody};
use crate::hotlog::LogWriter;
use crate::index::{Effect, Index, Mark, SegmentKey};
use crate::lock;
use crate::members::{self, HeldMembership};
use crate::meta;
use crate::request::PreparedRecord;
use crate::segment::{Admission, Location, Truncation};
use crate::store::Shared;

/// Most Append jobs in one group commit.
pub const GROUP_JOBS_MAX: usize = 1024;
/// Most record bytes in one group commit (a single larger batch still forms a group alone).
pub const GROUP_BYTES_MAX: usize = 64 << 20;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Job {
    Append(AppendJob),
    Open(OpenJob),
    Membership(MembershipJob),
    Promise(PromiseJob),
    MergeMembership(MergeJob),
    PutMeta(MetaJob),
    /// After a key rotation, and once at start: start a new hot-log file if the current one
    /// holds frames under an older key, and store again the volume metadata that is under one.
    Reseal(Reply<()>),
    /// Finish what is queued before it, then exit.
    Stop,
}

/// Who sent the records.
pub enum Source {
    /// A writer's Append: fenced by epoch; carries soft state for the segment and volume.
    Writer {
        epoch: Epoch,
        peers: Vec<String>,
        writer_vcl: Lsn,
        writer_vdl: Lsn,
        pgcl: Lsn,
        fold_limit: Lsn,
        /// The writer's consistency point (for backup's archive).
        mark: Mark,
        /// The address the writer knows this node by (empty: not told).
        addr: String,
        /// The PG's membership as the writer uses it (None: not checked).
        membership: Option<Membership>,
    },
    /// Gap-fill from a peer: records of any epoch the segment's truncations allow.
    Gossip,
    /// Good copies, from a peer, of records this segment holds but found damaged in its hot log:
    /// written again and the index pointed at them. Records it does not hold are ignored.
    Repair,
}

pub struct AppendJob {
    pub key: SegmentKey,
    pub source: Source,
    pub records: Vec<PreparedRecord>,
    /// Answered with the segment's SCL after the records are hardened.
    pub reply: Reply<Lsn>,
    /// The job's place in the store's append budget, held until the job is done (whether or
    /// not its caller still waits for the reply: a dropped caller frees no room it still uses).
    pub _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AppendJob {
    fn bytes(&self) -> usize {
        self.records.iter().map(|r| r.frame.bytes.len()).sum()
    }
}

/// Adopt a new writer's epoch (`OpenSegment`), and/or apply truncations the segment has not
/// applied yet (learned from a writer's Append or a peer's FetchRecords answer).
pub struct OpenJob {
    pub key: SegmentKey,
    /// The epoch of the writer opening the segment; `None` when only learning truncations.
    pub epoch: Option<Epoch>,
    /// A recovery's truncation history (an opening writer's own truncation the last), adopted
    /// if newer than the segment's ([`crate::segment::Segment::adopt`]); empty to only seal.
    pub history: Vec<Truncation>,
    /// An opening writer's list of the PG's other segments (gossip peers), if it sent one.
    pub peers: Vec<String>,
    /// For a learning job: the epoch of the writer that handed the history over (an Append,
    /// a recovery's SegmentState), or None when a peer did (gossip).
    pub authority: Option<Epoch>,
    /// The opening (or sealing) writer's membership of the PG: refused when older than the
    /// segment's ([`crate::members::check`]); adopted when newer ([`members::adopt_from_writer`]).
    pub membership: Option<Membership>,
    /// Answered with the segment's SCL after the epoch and truncations are hardened.
    pub reply: Reply<Lsn>,
}

/// A membership refusal as the node's error (what the driver and writer classify).
fn membership_refusal(key: &SegmentKey, e: MembershipError) -> StoreError {
    match e {
        MembershipError::Stale { current, found } => StoreError::StaleMembership {
            volume: key.volume.clone(),
            pg: key.pg.0,
            request: found.0,
            held: current.0,
        },
        MembershipError::Conflict { .. } | MembershipError::Promised { .. } => {
            StoreError::Conflict(format!("segment {key}: {e}"))
        }
        other => StoreError::InvalidArgument(format!("segment {key}: {other}")),
    }
}

/// A collision-recovery round's promise request ([`members::promise`]).
pub struct PromiseJob {
    pub key: SegmentKey,
    pub base: Membership,
    pub ballot: Ballot,
    pub reply: Reply<Vote>,
}

/// What a membership change left: the segment's SCL, and the round in which it holds the
/// proposed membership (None: it does not hold it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    pub scl: Lsn,
    pub holds: Option<Ballot>,
}

/// A repair driver's membership change of the segment's PG ([`members::adopt_change`]).
pub struct MembershipJob {
    pub key: SegmentKey,
    pub base: Membership,
    pub proposed: Membership,
    /// Addresses of the proposed membership's other nodes (gossip peers).
    pub peers: Vec<String>,
    /// The driver's view of how far the PG's chain reaches: the segment fills its gap up to
    /// here from its peers (0: none).
    pub catch_up_to: Lsn,
    /// A step, a catch-up with an established membership, or a step over rivals that lost.
    pub mode: members::ChangeMode,
    /// Answered with the segment's SCL once the membership is hardened (or already held).
    pub reply: Reply<Changed>,
}

/// Record a PG's newer membership in the stored volume metadata (this node is a metadata node).
pub struct MergeJob {
    pub volume: String,
    pub pg: u32,
    pub membership: sixfold_proto::wire::Membership,
    pub nodes: Vec<String>,
    /// Answered with the PG's membership epoch afterwards (0: no such volume or PG here).
    pub reply: Reply<u64>,
}

pub struct MetaJob {
    pub meta: VolumeMeta,
    /// Answered with the stored version.
    pub reply: Reply<u64>,
}

pub struct Appender {
    shared: Arc<Shared>,
    writer: LogWriter,
    /// Set by a write or fsync error: nothing more is written until a restart.
    failed: bool,
}

fn io_error(action: &'static str, e: &io::Error) -> StoreError {
    StoreError::Io {
        action,
        source: io::Error::new(e.kind(), e.to_string()),
    }
}

impl Appender {
    pub fn new(shared: Arc<Shared>, writer: LogWriter) -> Appender {
        Appender {
            shared,
            writer,
            failed: false,
        }
    }

    /// Runs until a [`Job::Stop`] or until every sender is gone.
    pub fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut carried = None;
        loop {
            let job = match carried.take() {
                Some(job) => job,
                None => match jobs.blocking_recv() {
                    Some(job) => job,
                    None => return,
                },
            };
            match job {
                Job::Stop => return,
                Job::Open(job) => self.open_segment(job),
                Job::Membership(job) => {
                    let result = self.change_membership(&job);
                    let _ = job.reply.send(result);
                }
                Job::Promise(job) => {
                    let result = self.promise_membership(&job);
                    let _ = job.reply.send(result);
                }
                Job::PutMeta(job) => self.put_meta(job),
                Job::Reseal(reply) => {
                    let result = self.reseal();
                    if let Err(e) = &result {
                        error!("re-seal of the hot log and volume metadata failed: {e}");
                    }
                    let _ = reply.send(result);
                }
                Job::MergeMembership(job) => {
                    let result = self.merge_membership(&job);
                    let _ = job.reply.send(result);
                }
                Job::Append(first) => {
                    let mut bytes = first.bytes();
                    let mut group = vec![first];
                    while group.len() < GROUP_JOBS_MAX && bytes < GROUP_BYTES_MAX {
                        match jobs.try_recv() {
                            Ok(Job::Append(job)) => {
                                bytes += job.bytes();
                                group.push(job);
                            }
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append_group(group);
                }
            }
            // Every frame in a file before the current one is now in the index.
            self.shared
                .applied_file
                .store(self.writer.file_number(), Ordering::Release);
        }
    }

    fn append_group(&mut self, jobs: Vec<AppendJob>) {
        if self.failed {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::LogFailed));
            }
            return;
        }
        // 1. Decide, against the index and what earlier jobs of this group will add.
        let plans: Vec<Result<Chosen, StoreError>> = {
            let index = lock(&self.shared.index);
            let mut group = GroupView {
                segments_max: self.segments_max(),
                waiting_max: self.shared.waiting_max.load(Ordering::Relaxed),
                ..GroupView::default()
            };
            let plans = jobs.iter().map(|job| group.decide(&index, job)).collect();
            if group.waiting_dropped > 0 {
                let before = self
                    .shared
                    .waiting_records_left_out
                    .fetch_add(group.waiting_dropped as u64, Ordering::Relaxed);
                // Logged the first time, then once per 10,000 records left out.
                if before == 0
                    || before / 10_000 != (before + group.waiting_dropped as u64) / 10_000
                {
                    tracing::warn!(
                        left_out_total = before + group.waiting_dropped as u64,
                        "writer records that would wait above a segment's SCL beyond the bound \
                         were left out (a hole the writer does not fill; gap-fill brings them)"
                    );
                }
            }
            plans
        };
        // 2. Write the new frames and fsync once.
        let mut locations: Vec<Vec<Location>> = Vec::with_capacity(jobs.len());
        let mut written = 0usize;
        let mut outcome = Ok(());
        'jobs: for (job, plan) in jobs.iter().zip(&plans) {
            let mut job_locations = Vec::new();
            if let Ok(chosen) = plan {
                if let Some(membership) = &chosen.membership {
                    let frame = frame::encode(
                        &job.key.volume,
                        job.key.pg,
                        &FrameBody::Membership(HeldMembership::from_writer(membership.clone())),
                    );
                    if let Err(e) = self.writer.append(&frame) {
                        outcome = Err(e);
                        break 'jobs;
                    }
                    written += 1;
                }
                for &i in &chosen.records {
                    match self.writer.append(&job.records[i].frame) {
                        Ok(location) => job_locations.push(location),
                        Err(e) => {
                            outcome = Err(e);
                            break 'jobs;
                        }
                    }
                    written += 1;
                }
            }
            locations.push(job_locations);
        }
        if outcome.is_ok() && written > 0 {
            outcome = self.commit();
        }
        if let Err(e) = outcome {
            let error = self.fail("harden records to the hot log", &e);
            for job in jobs {
                let _ = job.reply.send(Err(error.duplicate()));
            }
            return;
        }
        // 3. Apply to the index, then answer.
        let mut replies = Vec::with_capacity(jobs.len());
        let now_us = crate::now_us();
        let mark_skew_us = self.shared.mark_skew_us.load(Ordering::Relaxed);
        {
            let mut index = lock(&self.shared.index);
            for ((job, plan), job_locations) in jobs.into_iter().zip(plans).zip(locations) {
                let Chosen {
                    records: chosen,
                    membership,
                } = match plan {
                    Ok(chosen) => chosen,
                    Err(e) => {
                        replies.push((job.reply, Err(e), job.key));
                        continue;
                    }
                };
                if let Some(current) = membership {
                    info!(segment = %job.key, membership = %current, "segment adopted the writer's newer membership");
                    index.apply(
                        &job.key,
                        Effect::Membership(HeldMembership::from_writer(current)),
                    );
                }
                let repair = matches!(job.source, Source::Repair);
                let slot = index.slot_mut(&job.key);
                if let Source::Writer {
                    peers,
                    writer_vcl,
                    writer_vdl,
                    pgcl,
                    fold_limit,
                    mark,
                    addr,
                    ..
                } = job.source
                {
                    if !peers.is_empty() {
                        slot.peers = peers;
                    }
                    if !addr.is_empty() {
                        slot.addr = addr;
                    }
                    slot.add_mark(mark, now_us, mark_skew_us);
                    slot.pgcl_hint = slot.pgcl_hint.max(pgcl);
                    slot.fold_limit_hint = slot.fold_limit_hint.max(fold_limit);
                    let volume = index.volume_mut(&job.key.volume);
                    volume.writer_vcl = writer_vcl;
                    volume.writer_vdl = writer_vdl;
                }
                if repair {
                    let slot = index.slot_mut(&job.key);
                    for (i, location) in chosen.into_iter().zip(job_locations) {
                        if slot.segment.relocate(job.records[i].lsn, location) {
                            self.shared.corrupt_repaired.fetch_add(1, Ordering::Relaxed);
                            info!(segment = %job.key, lsn = job.records[i].lsn.0, "damaged hot-log record replaced by a peer's copy");
                        }
                    }
                    replies.push((job.reply, Ok(Lsn::ZERO), job.key));
                    continue;
                }
                for (i, location) in chosen.into_iter().zip(job_locations) {
                    let record = &job.records[i];
                    let effect = Effect::Record {
                        lsn: record.lsn,
                        meta: record.meta(location),
                    };
                    // Usually `New`; a record an earlier frame of the group made the chain step
                    // over (conflicting histories) is dropped here, exactly as replay will.
                    index.apply(&job.key, effect);
                }
                replies.push((job.reply, Ok(Lsn::ZERO), job.key));
            }
            for (_, result, key) in &mut replies {
                if let Ok(scl) = result {
                    *scl = index.segment(key).map_or(Lsn::ZERO, |s| s.scl());
                }
            }
        }
        for (reply, result, _) in replies {
            let _ = reply.send(result);
        }
    }

    fn open_segment(&mut self, job: OpenJob) {
        let result = self.open_segment_inner(&job);
        let _ = job.reply.send(result);
    }

    fn open_segment_inner(&mut self, job: &OpenJob) -> Result<Lsn, StoreError> {
        if self.failed {
            return Err(StoreError::LogFailed);
        }
        let adopt_membership = {
            let index = lock(&self.shared.index);
            index.room_for(&job.key, 0, self.segments_max())?;
            if let Some(epoch) = job.epoch {
                let known = index.epoch(&job.key.volume);
                if epoch < known {
                    return Err(StoreError::fenced(&job.key.volume, epoch, known));
                }
            }
            let held = index.slot(&job.key).and_then(|s| s.membership.as_ref());
            members::check(&job.key, held, job.membership.as_ref())?;
            job.membership
                .as_ref()
                .filter(|m| job.epoch.is_some() && members::adopt_from_writer(held, m))
                .cloned()
        };
        // Adopt a newer history; but a segment sealed by a recovering writer keeps the state
        // that writer read until the history comes from that writer (or a newer one): a peer's
        // intermediate list could drop records that writer decided to keep. Decided here, in the
        // one thread that changes epochs, so no seal slips in between check and change.
        let adopt = {
            let index = lock(&self.shared.index);
            let own = index
                .segment(&job.key)
                .map_or(Epoch::default(), |s| s.history_epoch());
            crate::segment::adopts_history(
                own,
                index.epoch(&job.key.volume),
                crate::segment::history_epoch(&job.history),
                job.epoch.is_some(),
                job.authority,
            )
        };
        let mut frames = Vec::with_capacity(2);
        if let Some(epoch) = job.epoch {
            frames.push(frame::encode(
                &job.key.volume,
                job.key.pg,
                &FrameBody::Epoch(epoch),
            ));
        }
        if adopt {
            frames.push(frame::encode(
                &job.key.volume,
                job.key.pg,
                &FrameBody::History(job.history.clone()),
            ));
        }
        if let Some(membership) = &adopt_membership {
            frames.push(frame::encode(
                &job.key.volume,
                job.key.pg,
                &FrameBody::Membership(HeldMembership::from_writer(membership.clone())),
            ));
        }
        if frames.is_empty() {
            let index = lock(&self.shared.index);
            return Ok(index.segment(&job.key).map_or(Lsn::ZERO, |s| s.scl()));
        }
        let hardened = frames
            .iter()
            .try_for_each(|f| self.writer.append(f).map(drop))
            .and_then(|()| self.commit());
        if let Err(e) = hardened {
            return Err(self.fail("harden an epoch to the hot log", &e));
        }
        let mut index = lock(&self.shared.index);
        let records_before = index.segment(&job.key).map_or(0, |s| s.record_count());
        if let Some(epoch) = job.epoch {
            index.apply(&job.key, Effect::Epoch(epoch));
        }
        if adopt {
            index.apply(&job.key, Effect::History(job.history.clone()));
        }
        if let Some(membership) = adopt_membership {
            index.apply(
                &job.key,
                Effect::Membership(HeldMembership::from_writer(membership)),
            );
        }
        if let (Some(epoch), Some(own)) = (job.epoch, job.history.last()) {
            // The chain recovery kept ends at the writer's truncation point and some peer holds
            // it whole: gap-fill toward it (the PGCL hint drives gossip).
            if own.epoch == epoch {
                let slot = index.slot_mut(&job.key);
                slot.pgcl_hint = slot.pgcl_hint.max(own.after);
                if !job.peers.is_empty() {
                    slot.peers = job.peers.clone();
                }
            }
        }
        let segment = index.segment(&job.key);
        let scl = segment.map_or(Lsn::ZERO, |s| s.scl());
        let dropped = records_before.saturating_sub(segment.map_or(0, |s| s.record_count()));
        let history: Vec<(u64, u64)> = job.history.iter().map(|t| (t.epoch.0, t.after.0)).collect();
        match job.epoch {
            Some(epoch) if job.history.is_empty() => info!(
                segment = %job.key, epoch = epoch.0, scl = scl.0,
                "segment sealed by a recovering writer"
            ),
            Some(epoch) => info!(
                segment = %job.key, epoch = epoch.0, ?history, dropped, scl = scl.0,
                "segment opened by a writer"
            ),
            None => info!(
                segment = %job.key, ?history, dropped, scl = scl.0,
                "segment learned truncations it missed (it was away during a writer's recovery)"
            ),
        }
        Ok(scl)
    }

    /// A repair driver's membership change: adopted durably when [`members::adopt_change`]
    /// says so; the proposed membership's peers become the segment's gossip peers.
    fn change_membership(&mut self, job: &MembershipJob) -> Result<Changed, StoreError> {
        if self.failed {
            return Err(StoreError::LogFailed);
        }
        let adopted = {
            let index = lock(&self.shared.index);
            index.room_for(&job.key, 0, self.segments_max())?;
            let held = index.slot(&job.key).and_then(|s| s.held_membership());
            members::adopt_change(held.as_ref(), &job.base, &job.proposed, &job.mode)
                .map_err(|e| membership_refusal(&job.key, e))?
        };
        if let Some(held) = &adopted {
            self.harden_membership(&job.key, held)?;
        }
        let mut index = lock(&self.shared.index);
        if let Some(held) = adopted {
            let round = held.accepted;
            index.apply(&job.key, Effect::Membership(held));
            info!(segment = %job.key, membership = %job.proposed, %round, "segment adopted a membership change");
        }
        let slot = index.slot_mut(&job.key);
        if !job.peers.is_empty() {
            slot.peers = job.peers.clone();
        }
        slot.pgcl_hint = slot.pgcl_hint.max(job.catch_up_to);
        Ok(Changed {
            scl: slot.segment.scl(),
            holds: (slot.membership.as_ref() == Some(&job.proposed))
                .then_some(slot.membership_ballot),
        })
    }

    /// A collision-recovery round's promise ([`members::promise`]), hardened before it is
    /// answered.
    fn promise_membership(&mut self, job: &PromiseJob) -> Result<Vote, StoreError> {
        if self.failed {
            return Err(StoreError::LogFailed);
        }
        let (held, vote) = {
            let index = lock(&self.shared.index);
            let held = index.slot(&job.key).and_then(|s| s.held_membership());
            members::promise(held.as_ref(), &job.base, job.ballot)
                .map_err(|e| membership_refusal(&job.key, e))?
        };
        self.harden_membership(&job.key, &held)?;
        lock(&self.shared.index).apply(&job.key, Effect::Membership(held));
        info!(segment = %job.key, ballot = %job.ballot, "segment promised a collision-recovery round");
        Ok(vote)
    }

    fn harden_membership(
        &mut self,
        key: &SegmentKey,
        held: &HeldMembership,
    ) -> Result<(), StoreError> {
        let frame = frame::encode(&key.volume, key.pg, &FrameBody::Membership(held.clone()));
        let hardened = self
            .writer
            .append(&frame)
            .map(drop)
            .and_then(|()| self.commit());
        hardened.map_err(|e| self.fail("harden a membership to the hot log", &e))
    }

    /// The re-seal pass's part that writes the log and metadata ([`crate::reseal`]): after a key
    /// rotation, and once at start. Starts a new hot-log file if the current one holds frames
    /// under an older key (or in the clear), and writes again every volume's metadata that is.
    fn reseal(&mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::LogFailed);
        }
        if self.shared.files.is_stale(self.writer.file_number()) {
            if let Err(e) = self.writer.roll_if_written() {
                return Err(self.fail("start a new hot-log file after a key rotation", &e));
            }
        }
        let (dir, stale) = {
            let store = lock(&self.shared.meta);
            (
                store.dir().to_owned(),
                store.under_old_keys(&self.shared.keys),
            )
        };
        // Only this thread writes metadata files: the copies cannot be overtaken meanwhile.
        for meta in stale {
            let sealed_with = meta::write_durable(&dir, &meta, &self.shared.keys)
                .map_err(|e| io_error("store volume metadata under the new key", &e))?;
            lock(&self.shared.meta).insert(meta, sealed_with);
        }
        Ok(())
    }

    fn put_meta(&mut self, job: MetaJob) {
        let result = self.put_meta_inner(&job.meta);
        let _ = job.reply.send(result);
    }

    fn put_meta_inner(&mut self, new: &VolumeMeta) -> Result<u64, StoreError> {
        let dir = {
            let store = lock(&self.shared.meta);
            if store.conflicts(new) {
                return Err(StoreError::InvalidArgument(format!(
                    "volume {}: metadata version {} is already held with other contents: another \
                     writer opened the volume at the same time",
                    new.name, new.version
                )));
            }
            if let Some(stored) = store.stale(new) {
                return Ok(stored);
            }
            let volumes_max = self.shared.volumes_max.load(Ordering::Relaxed);
            if store.get(&new.name).is_none() && store.len() >= volumes_max {
                return Err(StoreError::Full(format!(
                    "this node holds the metadata of {} volumes, as many as it takes \
                     ({volumes_max}): it takes no new volume {}",
                    store.len(),
                    new.name
                )));
            }
            (store.dir().to_owned(), store.merged(new))
        };
        let (dir, new) = (dir.0, &dir.1);
        // Only this thread writes metadata files, so nothing changes between the check and here.
        let sealed_with = match meta::write_durable(&dir, new, &self.shared.keys) {
            Ok(sealed_with) => sealed_with,
            Err(e) => {
                error!(volume = %new.name, "failed to store volume metadata: {e}");
                return Err(io_error("store volume metadata", &e));
            }
        };
        lock(&self.shared.meta).insert(new.clone(), sealed_with);
        lock(&self.shared.index).raise_epoch(&new.name, Epoch(new.epoch));
        Ok(new.version)
    }

    fn merge_membership(&mut self, job: &MergeJob) -> Result<u64, StoreError> {
        let (updated, epoch, dir) = {
            let store = lock(&self.shared.meta);
            let (updated, epoch) =
                store.with_membership(&job.volume, job.pg, &job.membership, &job.nodes);
            (updated, epoch, store.dir().to_owned())
        };
        let Some(updated) = updated else {
            return Ok(epoch);
        };
        let sealed_with = match meta::write_durable(&dir, &updated, &self.shared.keys) {
            Ok(sealed_with) => sealed_with,
            Err(e) => {
                error!(volume = %job.volume, "failed to store volume metadata: {e}");
                return Err(io_error("store volume metadata", &e));
            }
        };
        lock(&self.shared.meta).insert(updated, sealed_with);
        Ok(epoch)
    }

    fn segments_max(&self) -> usize {
        self.shared.segments_max.load(Ordering::Relaxed)
    }

    fn commit(&mut self) -> io::Result<()> {
        self.writer.commit()?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        let mut error = lock(&self.shared.log_error);
        if error.take().is_some() {
            info!("the hot log has room again; appends resume");
        }
        Ok(())
    }

    /// After a failed append or commit: a full disk (no room for the next log file) leaves the
    /// log intact, so appends are refused only until there is room again; any other error leaves
    /// the tail unknown, so every later write is refused until a restart. Returns the error for
    /// the jobs.
    fn fail(&mut self, action: &'static str, e: &io::Error) -> StoreError {
        if hotlog::is_no_room(e) {
            let mut current = lock(&self.shared.log_error);
            if current.is_none() {
                error!("{e}; refusing appends until there is room (the log itself is intact)");
            }
            *current = Some(e.to_string());
            return StoreError::NoRoom(e.to_string());
        }
        error!("failed to harden the hot log: {e}; refusing writes until restart");
        self.failed = true;
        // What the failed write or fsync covered must never be read back as durable.
        if let Err(marker) = self.writer.record_sync_failure() {
            error!(
                "could not record where the hot log was last synced ({marker}): after a restart \
                 the node trusts its log as it reads back"
            );
        }
        *lock(&self.shared.log_error) = Some(format!(
            "{e}; the node refuses writes until it is restarted"
        ));
        io_error(action, e)
    }
}

/// What the jobs of one group decided so far: epochs their records raise, LSNs they add,
/// memberships they adopt.
#[derive(Default)]
struct GroupView<'a> {
    /// Most segments the node holds (a job that would create one more is refused), and the
    /// segments earlier jobs of the group create.
    segments_max: usize,
    /// Most bytes waiting above one segment's SCL (twice it for the node): see
    /// [`crate::store::WAITING_BYTES_MAX`].
    waiting_max: u64,
    /// Per segment, the chain's tip and the bytes that will wait, after the group's earlier
    /// jobs; and the bytes they add to wait on the node.
    tips: HashMap<&'a SegmentKey, Lsn>,
    waiting_added: HashMap<&'a SegmentKey, u64>,
    node_waiting_added: u64,
    /// Writer records the group left out for the waiting bound.
    waiting_dropped: usize,
    new_segments: HashSet<&'a SegmentKey>,
    epochs: HashMap<&'a str, Epoch>,
    lsns: HashMap<&'a SegmentKey, HashSet<Lsn>>,
    memberships: HashMap<&'a SegmentKey, &'a Membership>,
}

/// What one Append job writes: its records (indices) and, first, the writer's membership when
/// it is newer than the segment's.
struct Chosen {
    records: Vec<usize>,
    membership: Option<Membership>,
}

impl<'a> GroupView<'a> {
    /// Of a writer's new records (`chosen`), those the segment takes: every record that
    /// extends the chain (from the SCL, through the earlier jobs of the group and this job's
    /// own records in LSN order), and the others, which would wait above the SCL for a hole
    /// before them, only while the segment holds at most [`crate::store::WAITING_BYTES_MAX`]
    /// of such records and the node twice that. A record left out is not stored, and so not
    /// acknowledged (acknowledgements are the SCL): gap-fill brings it later, as it does a
    /// record lost on the way. The job itself (its hints, the records that extend the chain)
    /// always goes in, so a segment catching up is never held back by this bound.
    fn within_waiting_bound(
        &mut self,
        index: &Index,
        job: &'a AppendJob,
        segment: Option<&crate::segment::Segment>,
        mut chosen: Vec<usize>,
    ) -> Vec<usize> {
        let scl = segment.map_or(Lsn::ZERO, |s| s.scl());
        let mut tip = self.tips.get(&job.key).copied().unwrap_or(scl);
        chosen.sort_by_key(|&i| job.records[i].lsn);
        let added = self.waiting_added.get(&job.key).copied().unwrap_or(0);
        let mut held = segment
            .map_or(0, |s| s.waiting_bytes())
            .saturating_add(added);
        let mut node: Option<u64> = None;
        let node_max = self.waiting_max.saturating_mul(2);
        let mut dropped = 0usize;
        let mut extra = 0u64;
        chosen.retain(|&i| {
            let record = &job.records[i];
            if record.backlink == tip {
                tip = record.lsn;
                return true;
            }
            let bytes = record.frame.bytes.len() as u64;
            // The node's total only when a record would wait (rare: writers send in order).
            let on_node = *node.get_or_insert_with(|| {
                index
                    .slots()
                    .map(|(_, slot)| slot.segment.waiting_bytes())
                    .sum::<u64>()
                    .saturating_add(self.node_waiting_added)
            });
            if held.saturating_add(bytes) > self.waiting_max
                || on_node.saturating_add(extra).saturating_add(bytes) > node_max
            {
                dropped += 1;
                return false;
            }
            held = held.saturating_add(bytes);
            extra = extra.saturating_add(bytes);
            true
        });
        if dropped > 0 {
            self.waiting_dropped += dropped;
            debug!(
                segment = %job.key, %scl, dropped, waiting_bytes = held,
                "records that would wait above the SCL beyond the bound left out (gap-fill brings them)"
            );
        }
        self.tips.insert(&job.key, tip);
        self.waiting_added
            .insert(&job.key, added.saturating_add(extra));
        self.node_waiting_added = self.node_waiting_added.saturating_add(extra);
        chosen
    }

    /// What `job` writes, or why the job is refused.
    fn decide(&mut self, index: &Index, job: &'a AppendJob) -> Result<Chosen, StoreError> {
        if index.slot(&job.key).is_none() && !self.new_segments.contains(&job.key) {
            index.room_for(&job.key, self.new_segments.len(), self.segments_max)?;
            self.new_segments.insert(&job.key);
        }
        let volume = job.key.volume.as_str();
        let mut adopt = None;
        if let Source::Writer {
            epoch,
            ref membership,
            ..
        } = job.source
        {
            let known = index
                .epoch(volume)
                .max(self.epochs.get(volume).copied().unwrap_or_default());
            if epoch < known {
                return Err(StoreError::fenced(volume, epoch, known));
            }
            let held = self
                .memberships
                .get(&job.key)
                .copied()
                .or_else(|| index.slot(&job.key).and_then(|s| s.membership.as_ref()));
            members::check(&job.key, held, membership.as_ref())?;
            // The writer's membership comes from the volume metadata, which records only
            // established steps: a segment that missed steps (it was away) catches up with it
            // here, as with the writer's OpenSegment, and can fill its gaps from its peers
            // again (they refuse an older membership's gossip).
            adopt = membership
                .as_ref()
                .filter(|m| members::adopt_from_writer(held, m));
            if let Some(m) = adopt {
                self.memberships.insert(&job.key, m);
            }
        }
        let segment = index.segment(&job.key);
        if matches!(job.source, Source::Repair) {
            // Only records the segment still holds, each with the length the index expects.
            let records = job
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    segment.and_then(|s| s.get(r.lsn)).is_some_and(|m| {
                        m.location.len as usize == r.frame.stored_body_len(m.location.sealed)
                    })
                })
                .map(|(i, _)| i)
                .collect();
            return Ok(Chosen {
                records,
                membership: None,
            });
        }
        let new: Vec<usize> = {
            let seen = self.lsns.get(&job.key);
            let mut in_job = HashSet::new();
            job.records
                .iter()
                .enumerate()
                .filter(|(_, record)| {
                    segment.map_or(Admission::New, |s| s.admission(record.lsn, record.epoch))
                        == Admission::New
                        && !seen.is_some_and(|seen| seen.contains(&record.lsn))
                        && in_job.insert(record.lsn)
                })
                .map(|(i, _)| i)
                .collect()
        };
        let chosen = if matches!(job.source, Source::Writer { .. }) {
            self.within_waiting_bound(index, job, segment, new)
        } else {
            new
        };
        let seen = self.lsns.entry(&job.key).or_default();
        for &i in &chosen {
            let record = &job.records[i];
            seen.insert(record.lsn);
            let epoch = self.epochs.entry(volume).or_default();
            *epoch = (*epoch).max(record.epoch);
        }
        Ok(Chosen {
            records: chosen,
            membership: adopt.cloned(),
        })
    }
}
