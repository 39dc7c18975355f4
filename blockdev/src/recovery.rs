//! Recovery decisions, pure: which chain tail a new writer keeps for a PG from the sealed
//! segments' answers, where its LSNs start, and the whole sequence of a PG's recovery as a
//! state machine ([`PgRecovery`]). `open` drives them over the network; the simulation
//! (`sim/`) drives the same code under faults.

mod machine;

pub use machine::{
    Kept, OpenDecision, PgRecovery, RecoveryError, Refused, SealAnswer, SealDecision, MAX_ASK_AGAIN,
};

use sixfold_proto::wire::Truncation;
use sixfold_proto::Lsn;

/// What the sealed answers of a PG say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTail {
    /// The highest SCL among the answers that hold the newest truncation history.
    pub tail: Lsn,
    /// The newest truncation history any answer holds: the list of the newest recovery that
    /// reached them, which is authoritative for every older epoch.
    pub history: Vec<Truncation>,
    /// Positions of the answers with an older history: their chains may still hold records a
    /// newer recovery dropped (or miss records a recovery that died half-way dropped), so their
    /// SCL does not count. Recovery asks them again, handing them `history` to adopt first.
    pub incomplete: Vec<usize>,
}

/// The newest epoch in a truncation list (0 for none): whose history it is.
pub fn history_epoch(list: &[Truncation]) -> u64 {
    list.iter().map(|t| t.epoch).max().unwrap_or(0)
}

/// The chain tail recovery keeps for a PG, from the sealed answers `(SCL, truncation history)`.
/// Recovery needs at least 3 complete answers (a record a returned flush covered is on 4
/// segments, each of which acknowledged it before its seal, so any 3 sealed answers include
/// one that holds it) out of at least 4 sealed.
///
/// DESIGN.md keeps the longest complete chain prefix of the union of the answers' chains; the
/// highest complete SCL keeps every record a returned flush covered too, and one segment holds
/// that chain whole, from which the others gap-fill.
pub fn chain_tail(answers: &[(Lsn, Vec<Truncation>)]) -> ChainTail {
    let newest = answers
        .iter()
        .map(|(_, list)| history_epoch(list))
        .max()
        .unwrap_or(0);
    let history = answers
        .iter()
        .find(|(_, list)| history_epoch(list) == newest)
        .map(|(_, list)| {
            let mut list = list.clone();
            list.sort_by_key(|t| t.epoch);
            list
        })
        .unwrap_or_default();
    let mut tail = Lsn::ZERO;
    let mut incomplete = Vec::new();
    for (position, (scl, list)) in answers.iter().enumerate() {
        if history_epoch(list) == newest {
            tail = tail.max(*scl);
        } else {
            incomplete.push(position);
        }
    }
    ChainTail {
        tail,
        history,
        incomplete,
    }
}

/// The first LSN a new writer may allocate above: nothing the old writer allocated can be above
/// the highest LSN any sealed segment holds plus LAL (it never ran more than LAL ahead of VDL,
/// and VDL is at or below what the segments hold). 0 for a volume that never held a record.
/// None when `max_seen` (a node's word) leaves no room: LSNs stay below [`LSN_MAX`].
pub fn new_start(max_seen: Lsn, lal: u64) -> Option<Lsn> {
    if max_seen == Lsn::ZERO {
        return Some(Lsn::ZERO);
    }
    max_seen
        .0
        .checked_add(lal)
        .filter(|start| *start < LSN_MAX)
        .map(Lsn)
}

/// LSNs stay below this: a writer at 10 million records a second takes 14,000 years to get
/// there, and an LSN near 2^64 from a hostile node must not make new ones wrap.
pub const LSN_MAX: u64 = 1 << 62;

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that reports an LSN near 2^64 (corrupt or hostile) must not make the new
    /// writer's LSNs wrap below what the old one wrote.
    #[test]
    fn new_lsns_never_wrap() {
        assert_eq!(new_start(Lsn::ZERO, 1000), Some(Lsn::ZERO));
        assert_eq!(new_start(Lsn(5), 1000), Some(Lsn(1005)));
        assert_eq!(new_start(Lsn(u64::MAX - 10), 1000), None);
        assert_eq!(new_start(Lsn(LSN_MAX - 1), 1000), None);
    }

    fn t(epoch: u64, after: u64) -> Truncation {
        Truncation {
            epoch,
            truncate_after: after,
        }
    }

    #[test]
    fn the_highest_scl_wins_when_every_answer_has_the_newest_history() {
        let answers = vec![
            (Lsn(10), vec![t(2, 5)]),
            (Lsn(14), vec![t(2, 5)]),
            (Lsn(12), vec![t(2, 5)]),
        ];
        let sealed = chain_tail(&answers);
        assert_eq!((sealed.tail, sealed.history), (Lsn(14), vec![t(2, 5)]));
        assert!(sealed.incomplete.is_empty());
        assert_eq!(chain_tail(&[]).tail, Lsn::ZERO);
    }

    /// A segment away during the epoch-3 recovery still holds epoch-2 records above 20 on its
    /// chain (SCL 27): its SCL does not count until it adopted the newer history.
    #[test]
    fn an_answer_with_an_older_history_does_not_count() {
        let answers = vec![
            (Lsn(27), vec![t(2, 5)]),
            (Lsn(20), vec![t(2, 5), t(3, 20)]),
            (Lsn(18), vec![t(3, 20), t(2, 5)]),
        ];
        let sealed = chain_tail(&answers);
        assert_eq!(sealed.tail, Lsn(20));
        assert_eq!(sealed.history, vec![t(2, 5), t(3, 20)]);
        assert_eq!(sealed.incomplete, vec![0]);
    }

    /// Epoch 4's recovery died after truncating one segment; epoch 5's recovery never heard of
    /// it and kept records above 30. An answer holding (4, 30) but not epoch 5's history is the
    /// stale one, and the history handed to it voids (4, 30).
    #[test]
    fn a_newer_history_overrides_a_truncation_it_does_not_list() {
        let answers = vec![
            (Lsn(30), vec![t(3, 20), t(4, 30)]),
            (Lsn(60), vec![t(3, 20), t(5, 45)]),
            (Lsn(55), vec![t(3, 20), t(5, 45)]),
        ];
        let sealed = chain_tail(&answers);
        assert_eq!(sealed.tail, Lsn(60));
        assert_eq!(sealed.history, vec![t(3, 20), t(5, 45)]);
        assert_eq!(sealed.incomplete, vec![0]);
    }
}
