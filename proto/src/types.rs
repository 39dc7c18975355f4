//! Newtypes for the vocabulary of DESIGN.md. No bare `u64` for these crosses a module boundary.

use std::fmt;

use crate::geometry::{PAGE_SIZE, PG_PAGES};

/// Log sequence number: volume-wide, strictly increasing, allocated by the single writer.
/// `Lsn::ZERO` is "before every record" (the backlink of a PG's first record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// The next LSN. Panics on overflow (2^64 records is not a reachable state).
    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("LSN overflow"))
    }

    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 4 KiB page of the volume, addressed by volume offset / 4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u64);

impl PageId {
    /// The PG holding this page.
    pub fn pg(self) -> PgId {
        PgId(u32::try_from(self.0 / PG_PAGES).expect("page id beyond 2^32 PGs"))
    }

    /// Byte offset of the page in the volume.
    pub fn offset(self) -> u64 {
        self.0 * PAGE_SIZE as u64
    }

    /// The page holding byte `offset` of the volume.
    pub fn containing(offset: u64) -> PageId {
        PageId(offset / PAGE_SIZE as u64)
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

/// Protection group number: PG n holds pages [n * PG_PAGES, (n + 1) * PG_PAGES).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgId(pub u32);

impl PgId {
    pub fn first_page(self) -> PageId {
        PageId(u64::from(self.0) * PG_PAGES)
    }

    pub fn contains(self, page: PageId) -> bool {
        page.0 / PG_PAGES == u64::from(self.0)
    }
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PG {}", self.0)
    }
}

/// Volume epoch: bumped by every new writer; nodes refuse records of older epochs (fencing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// A random 64-bit value, different in every process and call (the standard library's hasher
/// keys are random per process; the clock and the process id separate calls and processes).
/// For ids that must not collide by chance, not for secrets.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A storage node's identity: chosen at random at the node's first start and kept in its data
/// directory (`node-id`), so that a segment belongs to a node, not to an address (a node may
/// move to another address; a new node at an old address is another node). Never 0.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl NodeId {
    /// Parses the 16 hex digits [`NodeId`]'s `Display` writes (an optional `n-` prefix allowed).
    pub fn parse(text: &str) -> Option<NodeId> {
        let digits = text.strip_prefix("n-").unwrap_or(text);
        if digits.is_empty() || digits.len() > 16 {
            return None;
        }
        u64::from_str_radix(digits, 16)
            .ok()
            .filter(|id| *id != 0)
            .map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n-{:016x}", self.0)
    }
}

/// A PG's membership epoch: bumped by every change of the PG's member list (see
/// [`crate::membership`]); nodes refuse requests that carry an older one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MembershipEpoch(pub u64);

impl fmt::Display for MembershipEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "membership epoch {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_to_pg() {
        assert_eq!(PageId(0).pg(), PgId(0));
        assert_eq!(PageId(PG_PAGES - 1).pg(), PgId(0));
        assert_eq!(PageId(PG_PAGES).pg(), PgId(1));
        assert!(PgId(1).contains(PageId(PG_PAGES)));
        assert!(!PgId(1).contains(PageId(PG_PAGES - 1)));
        assert_eq!(PageId::containing(4095), PageId(0));
        assert_eq!(PageId::containing(4096), PageId(1));
    }

    #[test]
    fn node_ids_print_and_parse() {
        let id = NodeId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "n-00abcdef01234567");
        assert_eq!(NodeId::parse(&id.to_string()), Some(id));
        assert_eq!(NodeId::parse("abcdef01234567"), Some(id));
        assert_eq!(NodeId::parse("n-0"), None, "0 is never an id");
        assert_eq!(NodeId::parse("n-xyz"), None);
        assert_eq!(NodeId::parse("11112222333344445"), None, "17 digits");
        assert_eq!(NodeId::parse(""), None);
    }
}
