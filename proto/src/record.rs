//! Records: the canonical encoding, its checksum, and validation.
//!
//! The canonical encoding of a record is the byte string its checksum covers, and the form in which
//! storage nodes keep records in their hot log:
//!
//! ```text
//! lsn u64 | backlink u64 | epoch u64 | page u64 | range_count u16 | { offset u16 | len u16 | data }*
//! ```
//!
//! all little-endian. The writer computes `checksum` (crc32c of that encoding) when it makes the
//! record; a node verifies it on arrival, and again whenever it reads the record back from disk or
//! from a peer (pair assertions: checked just before written, and just after read).
//!
//! Invariants of a valid record: `backlink < lsn`; at least one range; every range non-empty and
//! inside the page (`offset + len <= PAGE_SIZE`); ranges sorted and not overlapping; the page
//! belongs to the record's PG.

use bytes::Bytes;
use thiserror::Error;

use crate::geometry::{PAGE_SIZE, PG_COUNT_MAX};
use crate::types::{Epoch, Lsn, PageId, PgId};
use crate::wire::{ByteRange, Record};

/// Largest number of byte ranges in one record.
pub const RANGES_PER_RECORD_MAX: usize = 64;
/// Bytes of the canonical header before the ranges.
const HEADER_BYTES: usize = 8 * 4 + 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record {lsn}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        lsn: u64,
        stored: u32,
        computed: u32,
    },
    #[error("record {lsn}: backlink {backlink} is not below the record's LSN")]
    Backlink { lsn: u64, backlink: u64 },
    #[error("record {lsn}: page {page} is not in PG {pg}")]
    WrongPg { lsn: u64, page: u64, pg: u32 },
    #[error("record {lsn}: PG {pg} is beyond the largest volume ({PG_COUNT_MAX} PGs)")]
    PgOutOfRange { lsn: u64, pg: u32 },
    #[error("record {lsn}: {count} byte ranges (must be 1..={RANGES_PER_RECORD_MAX})")]
    RangeCount { lsn: u64, count: usize },
    #[error("record {lsn}: byte range at {offset} of {len} bytes does not fit a page or overlaps")]
    RangeBounds { lsn: u64, offset: u32, len: usize },
    #[error("record {lsn}: epoch {epoch} differs from its batch's epoch {batch_epoch}")]
    Epoch {
        lsn: u64,
        epoch: u64,
        batch_epoch: u64,
    },
    #[error("record: LSN 0 is reserved")]
    ZeroLsn,
    #[error("canonical record encoding is truncated or malformed")]
    Malformed,
}

/// crc32c of the record's canonical encoding (its `checksum` field excluded).
pub fn checksum(record: &Record) -> u32 {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&record.lsn.to_le_bytes());
    header[8..16].copy_from_slice(&record.backlink.to_le_bytes());
    header[16..24].copy_from_slice(&record.epoch.to_le_bytes());
    header[24..32].copy_from_slice(&record.page.to_le_bytes());
    let count = u16::try_from(record.ranges.len()).unwrap_or(u16::MAX);
    header[32..34].copy_from_slice(&count.to_le_bytes());
    let mut crc = crc32c::crc32c(&header);
    for range in &record.ranges {
        let mut range_header = [0u8; 4];
        let offset = u16::try_from(range.offset).unwrap_or(u16::MAX);
        let len = u16::try_from(range.data.len()).unwrap_or(u16::MAX);
        range_header[0..2].copy_from_slice(&offset.to_le_bytes());
        range_header[2..4].copy_from_slice(&len.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &range_header);
        crc = crc32c::crc32c_append(crc, &range.data);
    }
    crc
}

/// Makes a record with its checksum filled in.
pub fn seal(lsn: Lsn, backlink: Lsn, epoch: Epoch, page: PageId, ranges: Vec<ByteRange>) -> Record {
    let mut record = Record {
        lsn: lsn.0,
        backlink: backlink.0,
        epoch: epoch.0,
        page: page.0,
        ranges,
        checksum: 0,
    };
    record.checksum = checksum(&record);
    record
}

/// Checks the record's checksum and every structural invariant, and that it belongs to `pg`.
pub fn validate(record: &Record, pg: PgId) -> Result<(), RecordError> {
    let lsn = record.lsn;
    if lsn == 0 {
        return Err(RecordError::ZeroLsn);
    }
    if pg.0 >= PG_COUNT_MAX {
        return Err(RecordError::PgOutOfRange { lsn, pg: pg.0 });
    }
    if record.backlink >= lsn {
        return Err(RecordError::Backlink {
            lsn,
            backlink: record.backlink,
        });
    }
    if !pg.contains(PageId(record.page)) {
        return Err(RecordError::WrongPg {
            lsn,
            page: record.page,
            pg: pg.0,
        });
    }
    let count = record.ranges.len();
    if count == 0 || count > RANGES_PER_RECORD_MAX {
        return Err(RecordError::RangeCount { lsn, count });
    }
    let mut end_previous = 0usize;
    for range in &record.ranges {
        let offset = range.offset as usize;
        let len = range.data.len();
        if len == 0 || offset < end_previous || offset + len > PAGE_SIZE {
            return Err(RecordError::RangeBounds {
                lsn,
                offset: range.offset,
                len,
            });
        }
        end_previous = offset + len;
    }
    let computed = checksum(record);
    if computed != record.checksum {
        return Err(RecordError::Checksum {
            lsn,
            stored: record.checksum,
            computed,
        });
    }
    Ok(())
}

/// True when the record rewrites the whole page (older records of the page are then irrelevant).
pub fn is_full_page(record: &Record) -> bool {
    record.ranges.len() == 1
        && record.ranges[0].offset == 0
        && record.ranges[0].data.len() == PAGE_SIZE
}

/// Applies the record's byte ranges to `page` (redo is idempotent: applying twice is harmless).
/// The record must have passed [`validate`].
pub fn apply(record: &Record, page: &mut [u8]) {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    for range in &record.ranges {
        let offset = range.offset as usize;
        page[offset..offset + range.data.len()].copy_from_slice(&range.data);
    }
}

/// Length of the canonical encoding (without the trailing checksum).
pub fn canonical_len(record: &Record) -> usize {
    HEADER_BYTES
        + record
            .ranges
            .iter()
            .map(|r| 4 + r.data.len())
            .sum::<usize>()
}

/// Appends the canonical encoding followed by the 4-byte checksum to `out`.
pub fn encode_canonical(record: &Record, out: &mut Vec<u8>) {
    out.reserve(canonical_len(record) + 4);
    out.extend_from_slice(&record.lsn.to_le_bytes());
    out.extend_from_slice(&record.backlink.to_le_bytes());
    out.extend_from_slice(&record.epoch.to_le_bytes());
    out.extend_from_slice(&record.page.to_le_bytes());
    out.extend_from_slice(&(record.ranges.len() as u16).to_le_bytes());
    for range in &record.ranges {
        out.extend_from_slice(&(range.offset as u16).to_le_bytes());
        out.extend_from_slice(&(range.data.len() as u16).to_le_bytes());
        out.extend_from_slice(&range.data);
    }
    out.extend_from_slice(&record.checksum.to_le_bytes());
}

/// Decodes what [`encode_canonical`] wrote. Does not verify the checksum: call [`validate`].
pub fn decode_canonical(bytes: &[u8]) -> Result<Record, RecordError> {
    let mut cursor = Cursor { bytes, position: 0 };
    let lsn = cursor.u64()?;
    let backlink = cursor.u64()?;
    let epoch = cursor.u64()?;
    let page = cursor.u64()?;
    let count = cursor.u16()? as usize;
    if count > RANGES_PER_RECORD_MAX {
        return Err(RecordError::Malformed);
    }
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = u32::from(cursor.u16()?);
        let len = cursor.u16()? as usize;
        let data = Bytes::copy_from_slice(cursor.take(len)?);
        ranges.push(ByteRange { offset, data });
    }
    let checksum = u32::from_le_bytes(
        cursor
            .take(4)?
            .try_into()
            .map_err(|_| RecordError::Malformed)?,
    );
    if cursor.position != bytes.len() {
        return Err(RecordError::Malformed);
    }
    Ok(Record {
        lsn,
        backlink,
        epoch,
        page,
        ranges,
        checksum,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .position
            .checked_add(len)
            .ok_or(RecordError::Malformed)?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(RecordError::Malformed)?;
        self.position = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let slice = self.take(8)?;
        Ok(u64::from_le_bytes(
            slice.try_into().map_err(|_| RecordError::Malformed)?,
        ))
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let slice = self.take(2)?;
        Ok(u16::from_le_bytes(
            slice.try_into().map_err(|_| RecordError::Malformed)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        seal(
            Lsn(7),
            Lsn(3),
            Epoch(2),
            PageId(5),
            vec![
                ByteRange {
                    offset: 10,
                    data: Bytes::from_static(b"hello"),
                },
                ByteRange {
                    offset: 100,
                    data: Bytes::from_static(b"world"),
                },
            ],
        )
    }

    #[test]
    fn sealed_record_validates_and_round_trips() {
        let record = sample();
        validate(&record, PgId(0)).expect("valid");
        let mut bytes = Vec::new();
        encode_canonical(&record, &mut bytes);
        assert_eq!(bytes.len(), canonical_len(&record) + 4);
        let decoded = decode_canonical(&bytes).expect("decodes");
        assert_eq!(decoded, record);
        validate(&decoded, PgId(0)).expect("still valid");
    }

    #[test]
    fn flipped_byte_is_caught() {
        let mut record = sample();
        let mut data = record.ranges[0].data.to_vec();
        data[0] ^= 1;
        record.ranges[0].data = Bytes::from(data);
        assert!(matches!(
            validate(&record, PgId(0)),
            Err(RecordError::Checksum { .. })
        ));
    }

    #[test]
    fn structural_errors() {
        let mut record = sample();
        assert!(matches!(
            validate(&record, PgId(1)),
            Err(RecordError::WrongPg { .. })
        ));
        record.ranges[1].offset = 12; // overlaps the first range
        assert!(matches!(
            validate(&record, PgId(0)),
            Err(RecordError::RangeBounds { .. })
        ));
        record.ranges[1].offset = 4095;
        assert!(matches!(
            validate(&record, PgId(0)),
            Err(RecordError::RangeBounds { .. })
        ));
        let mut record = sample();
        record.backlink = 7;
        assert!(matches!(
            validate(&record, PgId(0)),
            Err(RecordError::Backlink { .. })
        ));
        assert!(decode_canonical(&[1, 2, 3]).is_err());
    }

    #[test]
    fn apply_writes_ranges() {
        let mut page = vec![0u8; PAGE_SIZE];
        apply(&sample(), &mut page);
        assert_eq!(&page[10..15], b"hello");
        assert_eq!(&page[100..105], b"world");
        assert!(!is_full_page(&sample()));
    }
}
