//! Volume geometry and quorum sizes, with the relations between them asserted at compile time.

/// Size of a page, the unit of the volume and of every record.
pub const PAGE_SIZE: usize = 4096;
/// Pages per protection group: a PG covers 10 GiB of the volume.
pub const PG_PAGES: u64 = 2_621_440;
/// Bytes per protection group.
pub const PG_BYTES: u64 = PG_PAGES * PAGE_SIZE as u64;
/// Largest volume: 64 TiB.
pub const VOLUME_BYTES_MAX: u64 = 64 << 40;
/// Default size of a volume created on first mount: 64 GiB.
pub const VOLUME_BYTES_DEFAULT: u64 = 64 << 30;
/// Most PGs a volume can have.
pub const PG_COUNT_MAX: u32 = VOLUME_BYTES_MAX.div_ceil(PG_BYTES) as u32;

/// Segments (copies) per PG.
pub const COPIES: usize = 6;
/// Availability zones a PG spans, with `COPIES_PER_AZ` segments in each.
pub const AZ_COUNT: usize = 3;
/// Segments per AZ in each PG.
pub const COPIES_PER_AZ: usize = 2;
/// Acknowledgements that make a record durable.
pub const WRITE_QUORUM: usize = 4;
/// Segments a new writer must hear from to recover a PG (any read quorum meets any write quorum).
pub const READ_QUORUM: usize = 3;

const _: () = assert!(PG_BYTES == 10 << 30);
const _: () = assert!(COPIES == AZ_COUNT * COPIES_PER_AZ);
// A read quorum always meets every write quorum: a recovering writer sees every durable record.
const _: () = assert!(WRITE_QUORUM + READ_QUORUM > COPIES);
// Two write quorums always meet: two writers can never both complete a write in one epoch.
const _: () = assert!(2 * WRITE_QUORUM > COPIES);
// Losing a whole AZ (COPIES_PER_AZ segments) leaves a write quorum.
const _: () = assert!(COPIES - COPIES_PER_AZ >= WRITE_QUORUM);
// Losing an AZ and one more segment leaves a read quorum (repair remains possible).
const _: () = assert!(COPIES - COPIES_PER_AZ > READ_QUORUM);
const _: () = assert!(VOLUME_BYTES_MAX.is_multiple_of(PAGE_SIZE as u64));
