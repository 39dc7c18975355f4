//! Delta records: when the old page is cached, a page write sends only the bytes that changed.

use bytes::Bytes;
use sixfold_proto::record::RANGES_PER_RECORD_MAX;
use sixfold_proto::wire::ByteRange;
use sixfold_proto::PAGE_SIZE;

/// Runs of equal bytes shorter than this do not split a changed range (a range costs 4 bytes of
/// header, and fewer ranges are cheaper to apply).
const EQUAL_RUN_SPLIT_MIN: usize = 32;
/// A delta larger than this fraction of a page is sent as the whole page instead.
const DELTA_BYTES_MAX: usize = PAGE_SIZE / 2;

/// The byte ranges that turn `old` into `new` (both whole pages): empty when equal, one whole-page
/// range when the delta would not be much smaller than the page.
pub fn page_delta(old: &[u8], new: &Bytes) -> Vec<ByteRange> {
    debug_assert_eq!(old.len(), PAGE_SIZE);
    debug_assert_eq!(new.len(), PAGE_SIZE);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut index = 0;
    while index < PAGE_SIZE {
        if old[index] == new[index] {
            index += 1;
            continue;
        }
        let start = index;
        let mut end = index + 1;
        let mut equal_run = 0;
        let mut probe = end;
        while probe < PAGE_SIZE && equal_run < EQUAL_RUN_SPLIT_MIN {
            if old[probe] == new[probe] {
                equal_run += 1;
            } else {
                equal_run = 0;
                end = probe + 1;
            }
            probe += 1;
        }
        ranges.push((start, end));
        index = probe;
    }
    let delta_bytes: usize = ranges.iter().map(|(s, e)| e - s + 4).sum();
    if ranges.is_empty() {
        return Vec::new();
    }
    if ranges.len() > RANGES_PER_RECORD_MAX || delta_bytes > DELTA_BYTES_MAX {
        return vec![full_page(new)];
    }
    ranges
        .into_iter()
        .map(|(start, end)| ByteRange {
            offset: start as u32,
            data: new.slice(start..end),
        })
        .collect()
}

pub fn full_page(new: &Bytes) -> ByteRange {
    ByteRange {
        offset: 0,
        data: new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn apply(old: &[u8], ranges: &[ByteRange]) -> Vec<u8> {
        let mut page = old.to_vec();
        for r in ranges {
            page[r.offset as usize..r.offset as usize + r.data.len()].copy_from_slice(&r.data);
        }
        page
    }

    #[test]
    fn equal_pages_need_nothing() {
        let page = Bytes::from(vec![7u8; PAGE_SIZE]);
        assert!(page_delta(&page, &page).is_empty());
    }

    #[test]
    fn small_change_is_small() {
        let old = vec![0u8; PAGE_SIZE];
        let mut new = old.clone();
        new[100] = 1;
        new[110] = 2;
        new[3000] = 3;
        let ranges = page_delta(&old, &Bytes::from(new.clone()));
        assert_eq!(ranges.len(), 2);
        assert_eq!(apply(&old, &ranges), new);
    }

    #[test]
    fn random_deltas_reproduce_the_page() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..500 {
            let old: Vec<u8> = (0..PAGE_SIZE).map(|_| rng.random_range(0..4)).collect();
            let mut new = old.clone();
            for _ in 0..rng.random_range(0..200) {
                let i = rng.random_range(0..PAGE_SIZE);
                new[i] = rng.random();
            }
            let ranges = page_delta(&old, &Bytes::from(new.clone()));
            assert_eq!(apply(&old, &ranges), new);
            assert!(ranges.len() <= RANGES_PER_RECORD_MAX);
        }
    }
}
