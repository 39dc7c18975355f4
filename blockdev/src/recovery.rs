//! Recovery decisions, pure: which chain tail a new writer keeps for a PG from the sealed
//! segments' answers, and where its LSNs start. `open` drives them over the network; the
//! simulation (`sim/`) drives them under faults.

use sixfold_proto::wire::Truncation;
use sixfold_proto::Lsn;

/// The chain tail recovery keeps for a PG, from the answers of at least a read quorum: each
/// answer's SCL, capped at the lowest truncation point (among those the answers show) that its
/// segment has not applied; then the highest of them. Also returns every truncation seen, in
/// ascending epoch order (one per epoch; the first answer's point when two disagree).
pub fn chain_tail(answers: &[(Lsn, Vec<Truncation>)]) -> (Lsn, Vec<Truncation>) {
    let mut seen: Vec<Truncation> = Vec::new();
    for (_, truncations) in answers {
        for t in truncations {
            if !seen.iter().any(|s| s.epoch == t.epoch) {
                seen.push(*t);
            }
        }
    }
    seen.sort_by_key(|t| t.epoch);
    let tail = answers
        .iter()
        .map(|(scl, applied)| {
            seen.iter()
                .filter(|t| !applied.iter().any(|a| a.epoch == t.epoch))
                .map(|t| Lsn(t.truncate_after))
                .fold(*scl, Lsn::min)
        })
        .max()
        .unwrap_or(Lsn::ZERO);
    (tail, seen)
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
        assert_eq!(chain_tail(&answers), (Lsn(14), vec![t(2, 5)]));
    }

    /// A segment away during the epoch-3 recovery still holds epoch-2 records above 20 on its
    /// chain (SCL 27): they are not history, so its SCL counts only up to 20.
    #[test]
    fn a_segment_that_missed_a_truncation_counts_only_up_to_it() {
        let answers = vec![
            (Lsn(27), vec![t(2, 5)]),
            (Lsn(20), vec![t(2, 5), t(3, 20)]),
            (Lsn(18), vec![t(3, 20), t(2, 5)]),
        ];
        assert_eq!(chain_tail(&answers), (Lsn(20), vec![t(2, 5), t(3, 20)]));
        // The epoch-3 writer wrote on from 40 (LSNs start above all it saw plus LAL).
        let answers = vec![(Lsn(27), vec![]), (Lsn(45), vec![t(3, 20)])];
        assert_eq!(chain_tail(&answers), (Lsn(45), vec![t(3, 20)]));
        assert_eq!(chain_tail(&[]), (Lsn::ZERO, vec![]));
    }
}
