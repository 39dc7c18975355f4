//! One segment's in-memory index: the records it holds, where each sits in the hot log, and its
//! backlink chain (the SCL). Pure: no I/O, no clocks; the store drives it, replay rebuilds it.
//!
//! Records carry `backlink`, the previous LSN of the same PG (0 for the PG's first record). The
//! segment complete LSN (SCL) is the highest LSN up to which the segment holds the PG's whole
//! chain. It starts at 0; a held record whose backlink is the SCL extends it, and so on. Records
//! arrive in any order, with gaps and duplicates; those beyond the SCL wait in `waiting`, keyed by
//! backlink, until the hole before them is filled (by the writer or by gossip gap-fill).
//!
//! When two held records name the same backlink (an old writer's record that a new writer's
//! recovery truncated, on a segment that missed the truncation), the chain follows the one of the
//! newer epoch; records the chain then steps over are not part of the PG's history and are dropped.
//!
//! Truncation (`OpenSegment` of a new writer): records above `truncate_after` written in an older
//! epoch are dropped, the SCL falls back to the chain's last record at or below `truncate_after`
//! and re-extends through what remains. The truncation is remembered, so a dropped record that
//! comes back later (gossip from a peer that missed the truncation) is refused. A segment that
//! missed the OpenSegment (it was away during the recovery) learns every truncation from the new
//! writer's Appends, which carry them all, and from its peers' FetchRecords answers; it applies
//! them before anything else in those messages, so it never acknowledges, serves or folds a
//! truncated record in a later epoch.
//!
//! Folding: records at or below `folded` live in the segment's page store
//! ([`crate::pagestore`]), not here. `folded` is 0 or the LSN of a record that was on the chain;
//! the chain below it is history the page store holds. A restarted segment starts at its
//! checkpointed `folded` ([`Segment::restore`]); the hot-log records at or below it replay as
//! duplicates. Truncation never reaches below `folded` (only records at or below the PGCL, which
//! no recovery truncates, are folded).
//!
//! Invariants (checked by [`Segment::check_invariants`]):
//! - `folded <= scl`; no held record is at or below `folded`;
//! - `scl` is `folded` or the LSN of a held record; every held record at or below `scl` is on the
//!   chain, which walks down by backlinks from `scl` to exactly `folded`;
//! - every held record above `scl` is in `waiting` under its backlink, and nothing else is;
//!   `waiting_bytes` is their canonical lengths' total (what the node bounds, see
//!   [`crate::store::WAITING_BYTES_MAX`]);
//! - `pages` holds exactly one `(page, lsn)` entry per held record; `bytes` is their body total;
//! - `scl` only falls through [`Segment::truncate`]; inserts never lower it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use sixfold_proto::{Epoch, Lsn, PageId};

/// Where a record's canonical encoding sits in the hot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Log file number (`data_dir/log/NNNNNNNN.log`).
    pub file: u32,
    /// Byte offset of the record's canonical encoding in that file.
    pub offset: u64,
    /// Length of the canonical encoding, checksum included.
    pub len: u32,
    /// The frame is sealed (encryption at rest): `offset` and `len` are its sealed payload's,
    /// which reads open ([`crate::frame::body_of_payload`]).
    pub sealed: bool,
}

/// What the index keeps of a record (its bytes stay in the hot log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub location: Location,
    pub page: PageId,
    pub backlink: Lsn,
    pub epoch: Epoch,
    /// The record rewrites the whole page: reads of later LSNs need nothing older.
    pub full_page: bool,
}

/// Whether a record offered to the segment is new to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    New,
    /// Already held, or at or below the SCL (retransmits are normal).
    Duplicate,
    /// Dropped by a truncation of a newer epoch.
    Truncated,
}

/// Records above `after` from epochs before `epoch` are not part of the PG's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub epoch: Epoch,
    pub after: Lsn,
}

/// The newest epoch in a truncation list (0 for none).
pub fn history_epoch(list: &[Truncation]) -> Epoch {
    list.iter().map(|t| t.epoch).max().unwrap_or_default()
}

/// Whether a segment adopts a truncation history whose newest epoch is `list`, holding a history
/// of epoch `own` and knowing volume epoch `known`. `sealing`: the history comes with a
/// recovering writer's epoch (its OpenSegment); `authority`: the epoch of the writer that handed
/// it over in an Append or a seal's `learn` (None: a peer's gossip).
///
/// Only a newer history is adopted. And a segment sealed by a recovering writer (`known` newer
/// than the list) keeps the state that writer read until the history comes from that writer or a
/// newer one: a peer's intermediate list could drop records that writer decided to keep. The
/// appender decides with this, and so does the simulation.
pub fn adopts_history(
    own: Epoch,
    known: Epoch,
    list: Epoch,
    sealing: bool,
    authority: Option<Epoch>,
) -> bool {
    list > own && (sealing || list >= known || authority.is_some_and(|writer| writer >= known))
}

impl Truncation {
    /// Whether applying `self` drops everything `other` drops.
    pub fn implies(&self, other: &Truncation) -> bool {
        self.epoch >= other.epoch && self.after <= other.after
    }
}

#[derive(Clone, Debug, Default)]
pub struct Segment {
    records: BTreeMap<Lsn, RecordMeta>,
    /// (page, lsn) for every held record: the records of one page, in LSN order.
    pages: BTreeSet<(PageId, Lsn)>,
    /// (backlink, lsn) for every held record above the SCL.
    waiting: BTreeSet<(Lsn, Lsn)>,
    /// Sum of the canonical lengths of the records in `waiting`.
    waiting_bytes: u64,
    /// Segment complete LSN. Rises through inserts; falls only through `truncate`.
    scl: Lsn,
    /// Truncations seen, none implied by another (bounded by the number of writer epochs).
    truncations: Vec<Truncation>,
    /// Sum of the held records' canonical lengths.
    bytes: u64,
    /// Records up to here are folded into the page store.
    folded: Lsn,
}

/// What reading a page as of an LSN needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagePlan {
    /// Start from the page store's image (else from zeros: a full-page record comes first).
    pub base: bool,
    /// Held records of the page to apply on top, in LSN order.
    pub records: Vec<(Lsn, RecordMeta)>,
}

impl Segment {
    /// A segment whose records up to `folded` are in its page store (from a checkpoint).
    pub fn restore(folded: Lsn, truncations: Vec<Truncation>) -> Segment {
        Segment {
            scl: folded,
            folded,
            truncations,
            ..Segment::default()
        }
    }

    pub fn scl(&self) -> Lsn {
        self.scl
    }

    pub fn folded(&self) -> Lsn {
        self.folded
    }

    pub fn truncations(&self) -> &[Truncation] {
        &self.truncations
    }

    /// The first of `history` (a reader's view of the PG's truncations) this segment has not
    /// applied: while there is one, the segment may hold records that truncation dropped, and
    /// must not serve reads to that reader.
    pub fn missing_truncation(&self, history: &[Truncation]) -> Option<Truncation> {
        history
            .iter()
            .find(|t| !self.truncations.iter().any(|own| own.implies(t)))
            .copied()
    }

    /// Oldest hot-log file holding one of this segment's records.
    pub fn oldest_log_file(&self) -> Option<u32> {
        self.records.values().map(|m| m.location.file).min()
    }

    /// The next records to fold: those on the chain above `folded`, up to `limit`, in LSN order,
    /// as long a prefix as touches at most `pages_max` distinct pages (at least one record).
    pub fn fold_plan(&self, limit: Lsn, pages_max: usize) -> Vec<(Lsn, RecordMeta)> {
        let limit = limit.min(self.scl);
        let mut out = Vec::new();
        if limit <= self.folded {
            return out;
        }
        let mut pages = BTreeSet::new();
        for (lsn, meta) in self
            .records
            .range((Bound::Excluded(self.folded), Bound::Included(limit)))
        {
            if !pages.contains(&meta.page) && pages.len() >= pages_max && !out.is_empty() {
                break;
            }
            pages.insert(meta.page);
            out.push((*lsn, *meta));
        }
        out
    }

    /// After hydration copied a peer's pages as of its fold point `to` into the page store: the
    /// segment now starts at `to` (records at or below it are dropped; those above wait on the
    /// chain as before). Nothing changes when `to` is not above the SCL.
    pub fn hydrated(&mut self, to: Lsn) {
        if to <= self.scl {
            return;
        }
        let dropped: Vec<Lsn> = self.records.range(..=to).map(|(lsn, _)| *lsn).collect();
        for lsn in dropped {
            self.remove(lsn);
        }
        self.folded = to;
        self.scl = to;
        self.extend();
    }

    /// Forgets the records up to `to`, now folded into the page store. `to` must be a record on
    /// the chain (the last one of a [`Segment::fold_plan`]); anything else is ignored.
    pub fn forget_folded(&mut self, to: Lsn) {
        if to <= self.folded || to > self.scl || !self.records.contains_key(&to) {
            tracing::warn!(%to, folded = %self.folded, scl = %self.scl, "fold point not on the chain; ignored");
            return;
        }
        let done: Vec<Lsn> = self.records.range(..=to).map(|(lsn, _)| *lsn).collect();
        for lsn in done {
            self.remove(lsn);
        }
        self.folded = to;
    }

    /// Highest LSN held, complete chain or not.
    /// The highest LSN the segment holds, on its chain or not (its folded records count: a
    /// hydrated or restored segment holds its chain up to its SCL with no record in memory).
    pub fn max_lsn(&self) -> Lsn {
        self.records
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Lsn::ZERO)
            .max(self.scl)
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when records are held beyond the SCL: the chain has a hole gossip may fill.
    pub fn has_gap(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Bytes of the records held above the SCL, waiting for the hole before them.
    pub fn waiting_bytes(&self) -> u64 {
        self.waiting_bytes
    }

    pub fn get(&self, lsn: Lsn) -> Option<&RecordMeta> {
        self.records.get(&lsn)
    }

    /// Points a held record at a fresh copy of it in the hot log (its old copy was found
    /// damaged). False when the segment no longer holds `lsn` (folded or dropped meanwhile).
    pub fn relocate(&mut self, lsn: Lsn, location: Location) -> bool {
        match self.records.get_mut(&lsn) {
            Some(meta) if meta.location.len == location.len => {
                meta.location = location;
                true
            }
            _ => false,
        }
    }

    /// Would a record of `lsn` and `epoch` be new to this segment?
    pub fn admission(&self, lsn: Lsn, epoch: Epoch) -> Admission {
        if lsn <= self.scl || self.records.contains_key(&lsn) {
            return Admission::Duplicate;
        }
        if self
            .truncations
            .iter()
            .any(|t| epoch < t.epoch && lsn > t.after)
        {
            return Admission::Truncated;
        }
        Admission::New
    }

    /// Adds a record (if new) and extends the SCL through the chain.
    pub fn insert(&mut self, lsn: Lsn, meta: RecordMeta) -> Admission {
        let admission = self.admission(lsn, meta.epoch);
        if admission != Admission::New {
            return admission;
        }
        debug_assert!(meta.backlink < lsn, "validated records link backwards");
        self.records.insert(lsn, meta);
        self.pages.insert((meta.page, lsn));
        self.bytes += u64::from(meta.location.len);
        self.wait(lsn, &meta);
        self.extend();
        Admission::New
    }

    /// Applies a truncation; returns how many records were dropped.
    pub fn truncate(&mut self, epoch: Epoch, after: Lsn) -> usize {
        self.remember(Truncation { epoch, after });
        let doomed: Vec<Lsn> = self
            .records
            .range((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(_, meta)| meta.epoch < epoch)
            .map(|(lsn, _)| *lsn)
            .collect();
        for lsn in &doomed {
            self.remove(*lsn);
        }
        if self.scl > after {
            // Every held record at or below the old SCL is on the chain, so the last one at or
            // below `after` is the chain's tail there; the rest re-enter `waiting`.
            let old_scl = self.scl;
            let new_scl = self
                .records
                .range(..=after)
                .next_back()
                .map_or(self.folded, |(lsn, _)| *lsn)
                .max(self.folded);
            let rejoin: Vec<(Lsn, RecordMeta)> = self
                .records
                .range((Bound::Excluded(new_scl), Bound::Included(old_scl)))
                .map(|(lsn, meta)| (*lsn, *meta))
                .collect();
            for (lsn, meta) in &rejoin {
                self.wait(*lsn, meta);
            }
            self.scl = new_scl;
        }
        self.extend();
        doomed.len()
    }

    /// How to read `page` as of `read_lsn`: the held records of the page at or below it,
    /// starting at the newest full-page record among them, on top of the page store's image
    /// unless such a record comes first. (Below `folded` only the image can answer: the caller
    /// checks that the page did not change after `read_lsn`.)
    pub fn page_records(&self, page: PageId, read_lsn: Lsn) -> PagePlan {
        let mut newest_first = Vec::new();
        let mut base = true;
        for (_, lsn) in self.pages.range((page, Lsn::ZERO)..=(page, read_lsn)).rev() {
            let Some(meta) = self.records.get(lsn) else {
                debug_assert!(false, "pages and records disagree at {lsn}");
                continue;
            };
            newest_first.push((*lsn, *meta));
            if meta.full_page {
                base = false;
                break;
            }
        }
        newest_first.reverse();
        PagePlan {
            base,
            records: newest_first,
        }
    }

    /// Records of the complete chain above `after_lsn`, in LSN order, up to `bytes_max` of
    /// canonical encoding (always at least one record when there is one).
    pub fn complete_records(&self, after_lsn: Lsn, bytes_max: u64) -> Vec<(Lsn, RecordMeta)> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if after_lsn >= self.scl {
            return out;
        }
        for (lsn, meta) in self
            .records
            .range((Bound::Excluded(after_lsn), Bound::Included(self.scl)))
        {
            let len = u64::from(meta.location.len);
            if !out.is_empty() && bytes + len > bytes_max {
                break;
            }
            bytes += len;
            out.push((*lsn, *meta));
        }
        out
    }

    /// Panics when an invariant of the module doc does not hold (tests and simulation).
    pub fn check_invariants(&self) {
        assert!(self.folded <= self.scl, "folded above the SCL");
        assert!(
            self.records.range(..=self.folded).next().is_none(),
            "a record at or below folded {} is still held",
            self.folded
        );
        assert!(
            self.scl == self.folded || self.records.contains_key(&self.scl),
            "SCL {} is not a held record",
            self.scl
        );
        let above: BTreeSet<(Lsn, Lsn)> = self
            .records
            .range((Bound::Excluded(self.scl), Bound::Unbounded))
            .map(|(lsn, meta)| (meta.backlink, *lsn))
            .collect();
        assert_eq!(
            above, self.waiting,
            "waiting is not exactly the records above the SCL"
        );
        let waiting_bytes: u64 = self
            .records
            .range((Bound::Excluded(self.scl), Bound::Unbounded))
            .map(|(_, meta)| u64::from(meta.location.len))
            .sum();
        assert_eq!(
            waiting_bytes, self.waiting_bytes,
            "waiting bytes disagree with the records above the SCL"
        );
        let pages: BTreeSet<(PageId, Lsn)> =
            self.records.iter().map(|(lsn, m)| (m.page, *lsn)).collect();
        assert_eq!(pages, self.pages, "page index disagrees with records");
        let bytes: u64 = self
            .records
            .values()
            .map(|m| u64::from(m.location.len))
            .sum();
        assert_eq!(bytes, self.bytes, "byte count disagrees with records");
        // The chain: walking backlinks down from the SCL visits every record at or below it.
        let mut cursor = self.scl;
        let mut on_chain = 0usize;
        while cursor != self.folded {
            let meta = self.records.get(&cursor).expect("chain link is held");
            on_chain += 1;
            cursor = meta.backlink;
        }
        assert_eq!(
            on_chain,
            self.records.range(..=self.scl).count(),
            "records below the SCL off the chain"
        );
    }

    /// Moves the SCL up while a waiting record links to it. Among several records naming the SCL
    /// as backlink the newest epoch wins (then the lowest LSN); held records the chain steps over
    /// are not in the PG's history and are dropped.
    fn extend(&mut self) {
        loop {
            let scl = self.scl;
            let next = self
                .waiting
                .range((scl, Lsn::ZERO)..=(scl, Lsn(u64::MAX)))
                .map(|(_, lsn)| *lsn)
                .max_by_key(|lsn| (self.records.get(lsn).map(|m| m.epoch), Reverse(*lsn)));
            let Some(next) = next else {
                break;
            };
            if next <= scl {
                // Unreachable while the invariants hold (backlink < lsn); never loop or panic.
                debug_assert!(false, "waiting record {next} at or below the SCL {scl}");
                if self.waiting.remove(&(scl, next)) {
                    let len = self.records.get(&next).map_or(0, |m| m.location.len);
                    self.waiting_bytes = self.waiting_bytes.saturating_sub(u64::from(len));
                }
                continue;
            }
            let bypassed: Vec<Lsn> = self
                .records
                .range((Bound::Excluded(scl), Bound::Excluded(next)))
                .map(|(lsn, _)| *lsn)
                .collect();
            for lsn in bypassed {
                self.remove(lsn);
            }
            if let Some(meta) = self.records.get(&next).copied() {
                self.unwait(next, &meta);
            }
            self.scl = next;
        }
    }

    fn remove(&mut self, lsn: Lsn) {
        if let Some(meta) = self.records.remove(&lsn) {
            self.pages.remove(&(meta.page, lsn));
            self.unwait(lsn, &meta);
            self.bytes -= u64::from(meta.location.len);
        }
    }

    /// Puts a held record in `waiting` (once).
    fn wait(&mut self, lsn: Lsn, meta: &RecordMeta) {
        if self.waiting.insert((meta.backlink, lsn)) {
            self.waiting_bytes += u64::from(meta.location.len);
        }
    }

    /// Takes a record out of `waiting`, if it is there.
    fn unwait(&mut self, lsn: Lsn, meta: &RecordMeta) {
        if self.waiting.remove(&(meta.backlink, lsn)) {
            self.waiting_bytes -= u64::from(meta.location.len);
        }
    }

    /// Keeps the truncation unless another one already implies it; forgets those it implies.
    fn remember(&mut self, new: Truncation) {
        if self.knows(&new) {
            return;
        }
        self.truncations.retain(|old| !new.implies(old));
        self.truncations.push(new);
    }

    /// Whether the segment applied `truncation`, or one that drops everything it drops (only
    /// those are remembered).
    pub fn knows(&self, truncation: &Truncation) -> bool {
        self.truncations.iter().any(|old| old.implies(truncation))
    }

    /// The newest epoch among the truncations: the recovery whose history the list is.
    pub fn history_epoch(&self) -> Epoch {
        history_epoch(&self.truncations)
    }

    /// Adopts `list`, the truncation history of a newer recovery (its own truncation included),
    /// if it is newer than the segment's ([`history_epoch`]); returns how many records it
    /// dropped, or None when the list was not newer.
    ///
    /// The newer history is authoritative for every older epoch: a truncation the segment holds
    /// that it neither lists nor implies is void (a recovery that died after truncating a
    /// minority of segments, which the newer recovery never heard of) and is forgotten, so that
    /// the records it dropped may come back from peers; every listed truncation the segment
    /// missed is applied.
    pub fn adopt(&mut self, list: &[Truncation]) -> Option<usize> {
        if history_epoch(list) <= self.history_epoch() {
            return None;
        }
        self.truncations
            .retain(|old| list.iter().any(|new| new.implies(old)));
        let mut missing: Vec<Truncation> =
            list.iter().filter(|t| !self.knows(t)).copied().collect();
        missing.sort_by_key(|t| t.epoch);
        Some(
            missing
                .into_iter()
                .map(|t| self.truncate(t.epoch, t.after))
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    fn meta(page: u64, backlink: u64, epoch: u64, full_page: bool) -> RecordMeta {
        RecordMeta {
            location: Location {
                file: 1,
                offset: 0,
                len: 100,
                sealed: false,
            },
            page: PageId(page),
            backlink: Lsn(backlink),
            epoch: Epoch(epoch),
            full_page,
        }
    }

    /// Inserts `(lsn, backlink)` at epoch 1 on page lsn % 3.
    fn insert(segment: &mut Segment, lsn: u64, backlink: u64) -> Admission {
        let admission = segment.insert(Lsn(lsn), meta(lsn % 3, backlink, 1, false));
        segment.check_invariants();
        admission
    }

    #[test]
    fn in_order_chain_extends() {
        let mut s = Segment::default();
        assert_eq!(insert(&mut s, 3, 0), Admission::New);
        assert_eq!(s.scl(), Lsn(3));
        assert_eq!(insert(&mut s, 8, 3), Admission::New);
        assert_eq!(s.scl(), Lsn(8));
        assert!(!s.has_gap());
    }

    #[test]
    fn out_of_order_and_gaps() {
        let mut s = Segment::default();
        insert(&mut s, 9, 7);
        insert(&mut s, 7, 4);
        assert_eq!(s.scl(), Lsn::ZERO);
        assert!(s.has_gap());
        assert_eq!(s.max_lsn(), Lsn(9));
        insert(&mut s, 2, 0);
        assert_eq!(s.scl(), Lsn(2), "hole at 4");
        insert(&mut s, 4, 2);
        assert_eq!(s.scl(), Lsn(9));
        assert!(!s.has_gap());
    }

    #[test]
    fn duplicates_are_skipped() {
        let mut s = Segment::default();
        insert(&mut s, 1, 0);
        insert(&mut s, 5, 3);
        assert_eq!(
            insert(&mut s, 1, 0),
            Admission::Duplicate,
            "at or below the SCL"
        );
        assert_eq!(
            insert(&mut s, 5, 3),
            Admission::Duplicate,
            "held beyond the SCL"
        );
        assert_eq!(s.record_count(), 2);
        assert_eq!(s.bytes(), 200);
    }

    #[test]
    fn any_arrival_order_gives_the_same_chain() {
        let chain: Vec<(u64, u64)> =
            vec![(1, 0), (2, 1), (5, 2), (6, 5), (9, 6), (12, 9), (13, 12)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let mut arrivals = chain.clone();
            arrivals.extend(chain.iter().take(3)); // retransmits
            arrivals.shuffle(&mut rng);
            let mut s = Segment::default();
            for (lsn, backlink) in arrivals {
                insert(&mut s, lsn, backlink);
            }
            assert_eq!(s.scl(), Lsn(13));
            assert_eq!(s.record_count(), chain.len());
        }
    }

    #[test]
    fn complete_records_stop_at_scl_and_bytes() {
        let mut s = Segment::default();
        for (lsn, backlink) in [(1, 0), (2, 1), (3, 2), (4, 3), (10, 8)] {
            insert(&mut s, lsn, backlink);
        }
        let lsns = |v: Vec<(Lsn, RecordMeta)>| v.into_iter().map(|(l, _)| l.0).collect::<Vec<_>>();
        assert_eq!(lsns(s.complete_records(Lsn(1), 1 << 20)), vec![2, 3, 4]);
        assert_eq!(lsns(s.complete_records(Lsn(0), 250)), vec![1, 2]);
        assert_eq!(
            lsns(s.complete_records(Lsn(0), 1)),
            vec![1],
            "at least one record"
        );
        assert!(s.complete_records(Lsn(4), 1 << 20).is_empty());
        assert!(s.complete_records(Lsn(99), 1 << 20).is_empty());
    }

    #[test]
    fn page_records_start_at_newest_full_page() {
        let mut s = Segment::default();
        s.insert(Lsn(1), meta(7, 0, 1, false));
        s.insert(Lsn(2), meta(7, 1, 1, true));
        s.insert(Lsn(3), meta(8, 2, 1, false));
        s.insert(Lsn(4), meta(7, 3, 1, false));
        s.insert(Lsn(5), meta(7, 4, 1, true));
        s.insert(Lsn(6), meta(7, 5, 1, false));
        s.check_invariants();
        let lsns = |read: u64| {
            s.page_records(PageId(7), Lsn(read))
                .records
                .into_iter()
                .map(|(l, _)| l.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(lsns(1), vec![1]);
        assert_eq!(lsns(3), vec![2]);
        assert_eq!(lsns(4), vec![2, 4]);
        assert_eq!(lsns(5), vec![5]);
        assert_eq!(lsns(100), vec![5, 6]);
        assert!(s.page_records(PageId(9), Lsn(100)).records.is_empty());
        assert!(s.page_records(PageId(7), Lsn(0)).records.is_empty());
        assert!(
            !s.page_records(PageId(7), Lsn(100)).base,
            "starts at full page 5"
        );
        assert!(s.page_records(PageId(7), Lsn(1)).base);
    }

    #[test]
    fn truncation_drops_old_epoch_tail_and_keeps_new_epoch() {
        let mut s = Segment::default();
        for lsn in 1..=10u64 {
            s.insert(Lsn(lsn), meta(0, lsn - 1, 1, false));
        }
        assert_eq!(s.scl(), Lsn(10));
        // The new writer (epoch 2) recovered the chain up to 6 and truncates the rest.
        assert_eq!(s.truncate(Epoch(2), Lsn(6)), 4);
        s.check_invariants();
        assert_eq!(s.scl(), Lsn(6));
        assert_eq!(s.max_lsn(), Lsn(6));
        // The old records come back from a stale peer: refused.
        assert_eq!(s.insert(Lsn(8), meta(0, 7, 1, false)), Admission::Truncated);
        // The new writer's records link to 6.
        assert_eq!(s.insert(Lsn(100), meta(0, 6, 2, false)), Admission::New);
        assert_eq!(s.scl(), Lsn(100));
        // The same OpenSegment retried: new-epoch records stay, the SCL re-extends.
        assert_eq!(s.truncate(Epoch(2), Lsn(6)), 0);
        s.check_invariants();
        assert_eq!(s.scl(), Lsn(100));
        assert_eq!(s.truncations.len(), 1);
    }

    #[test]
    fn truncation_point_between_records() {
        let mut s = Segment::default();
        for (lsn, backlink) in [(10, 0), (20, 10), (30, 20), (50, 40)] {
            s.insert(Lsn(lsn), meta(0, backlink, 1, false));
        }
        assert_eq!(s.scl(), Lsn(30));
        s.truncate(Epoch(2), Lsn(25));
        s.check_invariants();
        assert_eq!(s.scl(), Lsn(20), "the chain's tail at or below 25");
        assert_eq!(s.max_lsn(), Lsn(20), "50 was above 25 and older");
        s.insert(Lsn(60), meta(0, 20, 2, false));
        assert_eq!(s.scl(), Lsn(60));
    }

    #[test]
    fn newer_epoch_wins_a_shared_backlink() {
        let mut s = Segment::default();
        s.insert(Lsn(1), meta(0, 0, 1, false));
        // An old writer's records 5 and 6 wait on a hole at 3; the new writer links 100 to 1.
        s.insert(Lsn(5), meta(0, 3, 1, false));
        s.insert(Lsn(3), meta(0, 1, 1, false));
        assert_eq!(s.scl(), Lsn(5));
        s.check_invariants();
        let mut t = Segment::default();
        t.insert(Lsn(1), meta(0, 0, 1, false));
        t.insert(Lsn(100), meta(0, 1, 2, false));
        t.insert(Lsn(3), meta(0, 1, 1, false));
        t.check_invariants();
        assert_eq!(t.scl(), Lsn(100));
        assert_eq!(t.get(Lsn(3)), None, "stepped over by the chain");
        let mut u = Segment::default();
        u.insert(Lsn(3), meta(0, 1, 1, false));
        u.insert(Lsn(100), meta(0, 1, 2, false));
        u.insert(Lsn(1), meta(0, 0, 1, false));
        u.check_invariants();
        assert_eq!(
            u.scl(),
            Lsn(100),
            "epoch 2 chosen whatever the arrival order"
        );
        assert_eq!(u.record_count(), 2);
    }

    /// A newer recovery's history voids a truncation it does not list (a recovery that died
    /// half-way), so the records it dropped are admitted again; an older or equal history is
    /// ignored.
    #[test]
    fn a_newer_history_voids_what_it_does_not_list() {
        let mut s = Segment::default();
        for lsn in 1..=10 {
            assert_eq!(
                s.insert(Lsn(lsn), meta(0, lsn - 1, 1, false)),
                Admission::New
            );
        }
        // Epoch 2's recovery truncated this segment after 5, then died.
        s.truncate(Epoch(2), Lsn(5));
        assert_eq!((s.scl(), s.record_count()), (Lsn(5), 5));
        assert_eq!(s.admission(Lsn(6), Epoch(1)), Admission::Truncated);
        // Epoch 3's recovery never heard of it and kept the chain up to 8.
        let history = [Truncation {
            epoch: Epoch(3),
            after: Lsn(8),
        }];
        assert_eq!(s.adopt(&history), Some(0));
        assert_eq!(s.truncations(), &history[..]);
        assert_eq!(s.admission(Lsn(6), Epoch(1)), Admission::New);
        assert_eq!(s.admission(Lsn(9), Epoch(1)), Admission::Truncated);
        for lsn in 6..=8 {
            s.insert(Lsn(lsn), meta(0, lsn - 1, 1, false));
        }
        assert_eq!(s.scl(), Lsn(8));
        assert_eq!(s.adopt(&history), None, "the same history again");
        assert_eq!(
            s.adopt(&[Truncation {
                epoch: Epoch(2),
                after: Lsn(1)
            }]),
            None,
            "an older history"
        );
        s.check_invariants();
    }
}
