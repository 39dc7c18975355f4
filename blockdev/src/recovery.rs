//! Recovery decisions, pure: which chain tail a new writer keeps for a PG from the sealed
//! segments' answers, and where its LSNs start. `open` drives them over the network; the
//! simulation (`sim/`) drives them under faults.

use sixfold_proto::wire::Truncation;
use sixfold_proto::Lsn;

/// What the sealed answers of a PG say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTail {
    /// The highest SCL among the answers that know every truncation any answer shows.
    pub tail: Lsn,
    /// Every truncation the answers show, in ascending epoch order (one per epoch).
    pub history: Vec<Truncation>,
    /// Positions of the answers that lack one of `history`: their chains may still hold records
    /// an earlier recovery dropped, so their SCL does not count. Recovery asks them again,
    /// handing them the history to apply first.
    pub incomplete: Vec<usize>,
}

/// The chain tail recovery keeps for a PG, from the sealed answers `(SCL, truncations applied)`.
/// Recovery needs at least 3 complete answers (a record a returned flush covered is on 4
/// segments, each of which acknowledged it before its seal, so any 3 sealed answers include
/// one that holds it) out of at least 4 sealed.
///
/// DESIGN.md keeps the longest complete chain prefix of the union of the answers' chains; the
/// highest complete SCL keeps every record a returned flush covered too, and one segment holds
/// that chain whole, from which the others gap-fill.
pub fn chain_tail(answers: &[(Lsn, Vec<Truncation>)]) -> ChainTail {
    let mut history: Vec<Truncation> = Vec::new();
    for (_, truncations) in answers {
        for t in truncations {
            if !history.iter().any(|s| s.epoch == t.epoch) {
                history.push(*t);
            }
        }
    }
    history.sort_by_key(|t| t.epoch);
    let mut tail = Lsn::ZERO;
    let mut incomplete = Vec::new();
    for (position, (scl, applied)) in answers.iter().enumerate() {
        if history.iter().all(|t| knows(applied, t)) {
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

/// Whether a segment that applied `applied` dropped everything `truncation` drops (segments
/// remember only the truncations no later one implies).
pub fn knows(applied: &[Truncation], truncation: &Truncation) -> bool {
    applied
        .iter()
        .any(|a| a.epoch >= truncation.epoch && a.truncate_after <= truncation.truncate_after)
}

/// The first LSN a new writer may allocate above: nothing the old writer allocated can be above
/// the highest LSN any sealed segment holds plus LAL (it never ran more than LAL ahead of VDL,
/// and VDL is at or below what the segments hold). 0 for a volume that never held a record.
pub fn new_start(max_seen: Lsn, lal: u64) -> Lsn {
    if max_seen == Lsn::ZERO {
        Lsn::ZERO
    } else {
        Lsn(max_seen.0 + lal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(epoch: u64, after: u64) -> Truncation {
        Truncation {
            epoch,
            truncate_after: after,
        }
    }

    #[test]
    fn the_highest_scl_wins_when_every_answer_knows_every_truncation() {
        let answers = vec![
            (Lsn(10), vec![t(2, 5)]),
            (Lsn(14), vec![t(2, 5)]),
            (Lsn(12), vec![t(2, 5)]),
        ];
        let sealed = chain_tail(&answers);
        assert_eq!((sealed.tail, sealed.history), (Lsn(14), vec![t(2, 5)]));
        assert!(sealed.incomplete.is_empty());
    }

    /// A segment away during the epoch-3 recovery still holds epoch-2 records above 20 on its
    /// chain (SCL 27): its SCL does not count until it applied the truncation.
    #[test]
    fn an_answer_that_missed_a_truncation_does_not_count() {
        let answers = vec![
            (Lsn(27), vec![t(2, 5)]),
            (Lsn(20), vec![t(2, 5), t(3, 20)]),
            (Lsn(18), vec![t(3, 20), t(2, 5)]),
        ];
        let sealed = chain_tail(&answers);
        assert_eq!(sealed.tail, Lsn(20));
        assert_eq!(sealed.history, vec![t(2, 5), t(3, 20)]);
        assert_eq!(sealed.incomplete, vec![0]);
        // A later truncation at or below an earlier one's point implies it.
        let answers = vec![(Lsn(45), vec![t(3, 20)]), (Lsn(30), vec![t(2, 25)])];
        let sealed = chain_tail(&answers);
        assert_eq!((sealed.tail, sealed.incomplete), (Lsn(45), vec![1]));
        // Epoch-3 records above 20 on a segment that missed (2, 25): they are not dropped by
        // it, and the segment knows (3, 20) anyway, so its SCL counts.
        assert!(knows(&[t(3, 20)], &t(2, 25)));
        assert!(!knows(&[t(2, 25)], &t(3, 20)));
        assert_eq!(chain_tail(&[]).tail, Lsn::ZERO);
    }
}
