//! The node's in-memory index of everything in its hot log: segments keyed by (volume, PG), and
//! per volume the newest epoch the node knows. Pure (no I/O).
//!
//! The index is a function of the hot log: the appender applies each frame after its fsync, and
//! replay applies the same frames in the same order on start, through the same [`Index::apply`],
//! so a restarted node rebuilds exactly the state it acknowledged. What is not in the hot log is
//! soft state, lost on restart and resent by the writer: gossip peers and the writer's VCL/VDL.
//!
//! Invariants:
//! - a volume's `epoch` never decreases; it is the highest epoch of any epoch, truncation or
//!   record frame of the volume, and of its stored volume metadata;
//! - every segment of the index has an entry in `volumes`.

use std::collections::BTreeMap;
use std::fmt;

use sixfold_proto::collision::{Ballot, Promise};
use sixfold_proto::membership::Membership;
use sixfold_proto::{Epoch, Lsn, PgId};

use crate::error::StoreError;
use crate::members::HeldMembership;
use crate::segment::{Admission, RecordMeta, Segment, Truncation};

/// Names a segment: the replica of one PG of one volume on this node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentKey {
    pub volume: String,
    pub pg: PgId,
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.volume, self.pg)
    }
}

/// What the node knows of a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeState {
    /// Newest volume epoch known: requests of older epochs are fenced. Never decreases.
    pub epoch: Epoch,
    /// The writer's VCL and VDL as last piggybacked on an Append (soft state, for status).
    pub writer_vcl: Lsn,
    pub writer_vdl: Lsn,
}

/// A segment and its soft state.
#[derive(Debug, Default)]
pub struct SegmentSlot {
    pub segment: Segment,
    /// The PG's membership as this segment holds it: durable (membership frames, the
    /// checkpoint); its epoch never decreases. None for a segment created before memberships.
    pub membership: Option<Membership>,
    /// The membership `membership` was a step from (None: a writer's, from the metadata).
    /// `membership` is established once a write quorum of it holds `membership`.
    pub membership_base: Option<Membership>,
    /// The collision-recovery round `membership` was accepted in, and the highest round
    /// promised (durable with it; see `sixfold_proto::collision`).
    pub membership_ballot: Ballot,
    pub promise: Option<Promise>,
    /// Addresses of the PG's other segments, as last sent by the writer (gap-fill peers).
    pub peers: Vec<String>,
    /// The highest PGCL a writer reported for the PG: records up to it exist on a write quorum,
    /// so a segment whose SCL is below it has a gap even when it holds nothing beyond its SCL.
    /// Soft state (the writer sends it with every Append and heartbeat). Never decreases.
    pub pgcl_hint: Lsn,
    /// The highest fold limit a writer reported (soft state, like `pgcl_hint`). Never decreases.
    pub fold_limit_hint: Lsn,
    /// A peer is hydrating from this segment's pages: do not fold until then (soft state).
    pub fold_hold_until: Option<std::time::Instant>,
    /// When the current run of holds began ([`renew_fold_hold`] bounds how long a run lasts).
    pub fold_hold_since: Option<std::time::Instant>,
    /// The archiver is taking a base image of the page store: do not fold (soft state).
    pub image_hold: bool,
    /// The address the writer knows this node by (soft state, with `peers`).
    pub addr: String,
    /// The writer's consistency points not yet archived, oldest first (soft state, at most
    /// [`MARKS_MAX`]; the oldest go first, losing only time resolution).
    pub marks: std::collections::VecDeque<Mark>,
    /// Backup: every record of the PG at or below this volume LSN is archived (as this node
    /// knows: its own uploads, or the archive's head it read). With backup on, the folder
    /// folds no further, so that the records stay in every segment's hot log until archived
    /// and any segment can take over as archiver. Soft state: 0 after a restart until learned.
    pub archived: Lsn,
    /// When the writer reached the newest archived consistency point (Unix µs; 0: unknown).
    pub archived_time_us: u64,
    /// Why the PG cannot be repaired, as this node's repair driver found (soft state).
    pub repair_blocked: Option<String>,
    /// What this node's repair driver saw of the PG on its last pass, if it drives it.
    pub driven: Option<DrivenView>,
    /// Whether this node is the PG's archiver now, and its last archiving error.
    pub archiver: bool,
    pub archive_error: Option<String>,
    /// This segment joins the PG (a replacement's new member) and is copying it from its
    /// peers: progress for status (soft state).
    pub catch_up: Option<CatchUp>,
}

/// A joining segment's copy of its PG, as far as it got (soft state, for status).
#[derive(Clone, Copy, Debug)]
pub struct CatchUp {
    pub since: std::time::Instant,
    pub bytes: u64,
    /// 0.0 to 1.0: the page scan's position while hydrating, then the log tail's; never
    /// decreases.
    pub done: f64,
}

/// A PG as its driver saw it on its last pass (soft state, for the metrics endpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrivenView {
    /// Of its six stable members, how many answered.
    pub answering: usize,
    /// Replacements under way.
    pub changes: usize,
}

impl DrivenView {
    /// healthy (6 answer), degraded (5), at_risk (4), unavailable (under 4).
    pub fn state(&self) -> &'static str {
        match self.answering {
            n if n >= sixfold_proto::COPIES => "healthy",
            5 => "degraded",
            4 => "at_risk",
            _ => "unavailable",
        }
    }
}

/// Most consistency points kept per segment.
pub const MARKS_MAX: usize = 1 << 16;

/// A consistency point as a writer reported it: VDL reached `vdl` at `time_us`, and the PG's
/// PGCL then. Every record of the PG at or below `vdl` is at or below `pgcl` (VCL >= VDL, and
/// every record at or below VCL is at or below its PG's PGCL), so a segment whose SCL reaches
/// `pgcl` holds all of the PG's records up to `vdl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub vdl: Lsn,
    pub pgcl: Lsn,
    pub time_us: u64,
}

impl SegmentSlot {
    /// Keeps `held` unless the segment holds an older epoch's... a newer epoch already: frames
    /// apply in order (the last one wins, a supersede or a collision-recovery round within one
    /// epoch included), and an older epoch can only come from a checkpoint written after them.
    pub fn keep_membership(&mut self, held: HeldMembership) {
        if self
            .membership
            .as_ref()
            .is_none_or(|m| held.current.epoch >= m.epoch)
        {
            self.membership = Some(held.current);
            self.membership_base = held.base;
            self.membership_ballot = held.accepted;
            // A promise never decreases (`sixfold_proto::collision`): a writer's membership
            // names none, and must not erase the one a round counted on.
            self.promise = Promise::highest(self.promise, held.promise);
        }
    }

    /// The segment's durable membership state (None: it holds no membership).
    pub fn held_membership(&self) -> Option<HeldMembership> {
        Some(HeldMembership {
            current: self.membership.clone()?,
            base: self.membership_base.clone(),
            accepted: self.membership_ballot,
            promise: self.promise,
        })
    }

    /// Keeps a writer's consistency point (newer VDLs only).
    pub fn add_mark(&mut self, mark: Mark, now_us: u64, skew_us: u64) {
        if mark.vdl == Lsn::ZERO || self.marks.back().is_some_and(|m| m.vdl >= mark.vdl) {
            return;
        }
        // The time is the writer's word: kept within `skew_us` of this node's clock, and never
        // before the previous point's. A writer clock far behind would otherwise date a recent
        // point into the past, and retention would delete what the window still needs.
        let earliest = now_us
            .saturating_sub(skew_us)
            .max(self.marks.back().map_or(0, |m| m.time_us));
        let latest = now_us.saturating_add(skew_us).max(earliest);
        let mark = Mark {
            time_us: mark.time_us.clamp(earliest, latest),
            ..mark
        };
        if self.marks.len() >= MARKS_MAX {
            self.marks.pop_front();
        }
        self.marks.push_back(mark);
    }

    /// Forgets the consistency points at or below `archived`.
    pub fn drop_marks(&mut self, archived: Lsn) {
        while self.marks.front().is_some_and(|m| m.vdl <= archived) {
            self.marks.pop_front();
        }
    }
}

/// One durable change, as a frame of the hot log carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Record {
        lsn: Lsn,
        meta: RecordMeta,
    },
    Epoch(Epoch),
    Truncation {
        epoch: Epoch,
        truncate_after: Lsn,
    },
    /// A newer recovery's truncation history ([`Segment::adopt`]).
    History(Vec<Truncation>),
    /// The PG's membership and the one it was a step from (kept when newer than the
    /// segment's).
    Membership(HeldMembership),
}

#[derive(Debug, Default)]
pub struct Index {
    segments: BTreeMap<SegmentKey, SegmentSlot>,
    volumes: BTreeMap<String, VolumeState>,
    /// Backup is on: segments fold no further than their `archived` point.
    pub archive_on: bool,
}

impl Index {
    /// Applies one durable change to its segment (created if new). Returns whether a record was
    /// new to the segment (other effects answer `New`).
    pub fn apply(&mut self, key: &SegmentKey, effect: Effect) -> Admission {
        let epoch = match &effect {
            Effect::Record { meta, .. } => meta.epoch,
            Effect::Epoch(epoch) | Effect::Truncation { epoch, .. } => *epoch,
            Effect::History(list) => crate::segment::history_epoch(list),
            Effect::Membership(_) => Epoch(0),
        };
        self.raise_epoch(&key.volume, epoch);
        let slot = self.slot_mut(key);
        match effect {
            Effect::Record { lsn, meta } => slot.segment.insert(lsn, meta),
            Effect::Epoch(_) => Admission::New,
            Effect::Truncation {
                epoch,
                truncate_after,
            } => {
                slot.segment.truncate(epoch, truncate_after);
                Admission::New
            }
            Effect::History(list) => {
                slot.segment.adopt(&list);
                Admission::New
            }
            Effect::Membership(held) => {
                slot.keep_membership(held);
                Admission::New
            }
        }
    }

    /// Starts a segment from its checkpointed fold point (before replay; replaces nothing that
    /// holds records).
    pub fn restore_segment(
        &mut self,
        key: &SegmentKey,
        folded: Lsn,
        truncations: Vec<Truncation>,
        membership: Option<HeldMembership>,
    ) {
        let slot = self.slot_mut(key);
        if slot.segment.record_count() == 0 && slot.segment.folded() <= folded {
            slot.segment = Segment::restore(folded, truncations);
        }
        if let Some(held) = membership {
            slot.keep_membership(held);
        }
    }

    /// Raises the volume's known epoch (never lowers it).
    pub fn raise_epoch(&mut self, volume: &str, epoch: Epoch) {
        let state = self.volume_mut(volume);
        state.epoch = state.epoch.max(epoch);
    }

    /// The segment, created empty if new (a segment exists from its first Append or OpenSegment).
    pub fn slot_mut(&mut self, key: &SegmentKey) -> &mut SegmentSlot {
        if !self.volumes.contains_key(&key.volume) {
            self.volumes
                .insert(key.volume.clone(), VolumeState::default());
        }
        if !self.segments.contains_key(key) {
            self.segments.insert(key.clone(), SegmentSlot::default());
        }
        self.segments.get_mut(key).expect("inserted above")
    }

    pub fn volume_mut(&mut self, volume: &str) -> &mut VolumeState {
        if !self.volumes.contains_key(volume) {
            self.volumes
                .insert(volume.to_string(), VolumeState::default());
        }
        self.volumes.get_mut(volume).expect("inserted above")
    }

    /// Whether the node may hold `key`: it does already, or it holds fewer than `max` segments
    /// counting `pending` more about to be created (a request that would create one more is
    /// refused as from a full node).
    pub fn room_for(&self, key: &SegmentKey, pending: usize, max: usize) -> Result<(), StoreError> {
        let held = self.segments.len().saturating_add(pending);
        if self.segments.contains_key(key) || held < max {
            return Ok(());
        }
        Err(StoreError::Full(format!(
            "this node holds {held} segments, as many as it takes ({max}): it takes no new \
             segment {key}"
        )))
    }

    /// The segment, if the node holds it (never creates one).
    pub fn slot_mut_existing(&mut self, key: &SegmentKey) -> Option<&mut SegmentSlot> {
        self.segments.get_mut(key)
    }

    pub fn slot(&self, key: &SegmentKey) -> Option<&SegmentSlot> {
        self.segments.get(key)
    }

    pub fn segment(&self, key: &SegmentKey) -> Option<&Segment> {
        self.segments.get(key).map(|slot| &slot.segment)
    }

    pub fn slots(&self) -> impl Iterator<Item = (&SegmentKey, &SegmentSlot)> {
        self.segments.iter()
    }

    pub fn volume(&self, volume: &str) -> Option<&VolumeState> {
        self.volumes.get(volume)
    }

    pub fn volumes(&self) -> impl Iterator<Item = (&String, &VolumeState)> {
        self.volumes.iter()
    }

    /// Newest epoch known for the volume (0 when the volume is unknown).
    pub fn epoch(&self, volume: &str) -> Epoch {
        self.volumes
            .get(volume)
            .map_or(Epoch(0), |state| state.epoch)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn record_count(&self) -> usize {
        self.segments
            .values()
            .map(|slot| slot.segment.record_count())
            .sum()
    }

    /// Panics when an invariant does not hold (tests).
    pub fn check_invariants(&self) {
        for (key, slot) in &self.segments {
            assert!(
                self.volumes.contains_key(&key.volume),
                "{key} has no volume state"
            );
            slot.segment.check_invariants();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Location;
    use sixfold_proto::PageId;

    fn record(lsn: u64, backlink: u64, epoch: u64) -> Effect {
        Effect::Record {
            lsn: Lsn(lsn),
            meta: RecordMeta {
                location: Location {
                    file: 1,
                    offset: lsn * 100,
                    len: 50,
                    sealed: false,
                },
                page: PageId(0),
                backlink: Lsn(backlink),
                epoch: Epoch(epoch),
                full_page: false,
            },
        }
    }

    #[test]
    fn epochs_come_from_every_kind_of_frame_and_never_fall() {
        let key = SegmentKey {
            volume: "v".into(),
            pg: PgId(0),
        };
        let mut index = Index::default();
        assert_eq!(index.epoch("v"), Epoch(0));
        index.apply(&key, record(1, 0, 3));
        assert_eq!(index.epoch("v"), Epoch(3));
        index.apply(&key, Effect::Epoch(Epoch(2)));
        assert_eq!(index.epoch("v"), Epoch(3));
        index.apply(
            &key,
            Effect::Truncation {
                epoch: Epoch(5),
                truncate_after: Lsn(0),
            },
        );
        assert_eq!(index.epoch("v"), Epoch(5));
        assert_eq!(index.segment(&key).map(|s| s.scl()), Some(Lsn(0)));
        index.check_invariants();
    }

    #[test]
    fn replaying_the_same_effects_gives_the_same_index() {
        let key = SegmentKey {
            volume: "v".into(),
            pg: PgId(0),
        };
        let effects = [
            record(3, 1, 1),
            record(1, 0, 1),
            record(6, 3, 1),
            Effect::Truncation {
                epoch: Epoch(2),
                truncate_after: Lsn(3),
            },
            record(6, 3, 1),
            record(10, 3, 2),
        ];
        let build = || {
            let mut index = Index::default();
            for effect in &effects {
                index.apply(&key, effect.clone());
            }
            index.check_invariants();
            index
        };
        let (a, b) = (build(), build());
        let state = |i: &Index| {
            let s = i.segment(&key).expect("segment");
            (s.scl(), s.max_lsn(), s.record_count(), i.epoch("v"))
        };
        assert_eq!(state(&a), (Lsn(10), Lsn(10), 3, Epoch(2)));
        assert_eq!(state(&a), state(&b));
    }
}

/// A peer's FetchPages at `now` holds the segment's fold point for `hold` more, within a run
/// of holds that began at `since` and lasts at most `max`; after a run, no hold for `hold`, so
/// that the folder gets its turn. A peer that keeps asking cannot keep the segment from folding
/// for ever: its hydration then copies what changed in a next pass ([`crate::hydrate`]).
/// Returns the new (until, since). Pure: tested on its own.
pub fn renew_fold_hold(
    until: Option<std::time::Instant>,
    since: Option<std::time::Instant>,
    now: std::time::Instant,
    hold: std::time::Duration,
    max: std::time::Duration,
) -> (Option<std::time::Instant>, Option<std::time::Instant>) {
    // A hold that lapsed for `hold` or longer ended its run: the folder had its turn.
    let ended = until.is_none_or(|until| now >= until + hold);
    match since {
        // In a run: hold, up to the run's end.
        Some(since) if !ended && now < since + max => {
            (Some((now + hold).min(since + max)), Some(since))
        }
        // The pause after a run: no hold.
        Some(since) if !ended && now < since + max + hold => (until, Some(since)),
        // A new run.
        _ => (Some(now + hold), Some(now)),
    }
}

#[cfg(test)]
mod hold_tests {
    use super::renew_fold_hold;
    use std::time::{Duration, Instant};

    /// A peer asking every 10 s for an hour no longer holds the fold point for that hour: the
    /// holds come in runs of at most `max`, each followed by a pause the folder can fold in.
    #[test]
    fn fold_holds_renewed_without_end_end_after_their_bound() {
        let (hold, max) = (Duration::from_secs(30), Duration::from_secs(600));
        let start = Instant::now();
        let (mut until, mut since) = (None, None);
        let (mut held_for, mut longest, mut free) = (0u64, 0u64, 0u64);
        for second in 0..3600u64 {
            let now = start + Duration::from_secs(second);
            if second % 10 == 0 {
                (until, since) = renew_fold_hold(until, since, now, hold, max);
            }
            if until.is_some_and(|until| now < until) {
                held_for += 1;
                longest = longest.max(held_for);
            } else {
                held_for = 0;
                free += 1;
            }
        }
        assert!(longest <= max.as_secs(), "held {longest} s in a row");
        assert!(free >= 5 * 20, "free for only {free} s in an hour");
    }
}
