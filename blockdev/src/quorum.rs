//! Quorum arithmetic, as small pure functions with table tests.
//!
//! PGCL (PG complete LSN) is the highest LSN up to which a write quorum (4 of 6) of the PG's
//! segments holds the whole chain: the `WRITE_QUORUM`-th highest SCL acknowledged by the segments.

use sixfold_proto::{Lsn, COPIES, WRITE_QUORUM};

/// The `WRITE_QUORUM`-th highest of the segments' acknowledged SCLs.
pub fn pgcl(scls: &[Lsn; COPIES]) -> Lsn {
    let mut sorted = *scls;
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted[WRITE_QUORUM - 1]
}

/// Whether `count` answers (acknowledgements or responses) make a write quorum.
pub fn is_write_quorum(count: usize) -> bool {
    count >= WRITE_QUORUM
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(values: [u64; COPIES]) -> [Lsn; COPIES] {
        values.map(Lsn)
    }

    #[test]
    fn pgcl_table() {
        // (SCLs of the six segments, expected PGCL, why)
        let cases = [
            ([0, 0, 0, 0, 0, 0], 0, "nothing acknowledged"),
            ([9, 9, 9, 9, 9, 9], 9, "all caught up"),
            ([9, 9, 9, 9, 0, 0], 9, "one AZ down: four still make quorum"),
            (
                [9, 9, 9, 0, 0, 0],
                0,
                "three segments are not a write quorum",
            ),
            ([9, 8, 7, 6, 5, 4], 6, "fourth highest"),
            ([4, 5, 6, 7, 8, 9], 6, "order of segments does not matter"),
            ([9, 9, 9, 5, 5, 0], 5, "laggards bound the quorum"),
        ];
        for (scls, expected, why) in cases {
            assert_eq!(pgcl(&l(scls)), Lsn(expected), "{why}");
        }
    }

    #[test]
    fn quorum_counts() {
        assert!(!is_write_quorum(3));
        assert!(is_write_quorum(4));
    }
}
