//! Validation of what arrives from the network, before anything touches the store: volume names,
//! PG numbers, records (checksum and structure, `record::validate`), batch sizes, peer lists,
//! truncation lists.
//! Everything here is pure; every failure is an [`StoreError::InvalidArgument`] naming the problem.
//!
//! Invariant: a [`PreparedRecord`] holds a record that passed `record::validate` for its segment's
//! PG, already encoded as a hot-log frame (the checksum is verified again when it is read back).

use sixfold_proto::record::{self, RecordError};
use sixfold_proto::wire::{self, Record, SegmentRef};
use sixfold_proto::{Epoch, Lsn, PageId, PgId, PG_COUNT_MAX};

use crate::error::StoreError;
use crate::frame::{self, Encoded, FrameBody};
use crate::index::SegmentKey;
use crate::segment::{Location, RecordMeta, Truncation};

/// Longest volume name, in bytes.
pub const VOLUME_NAME_BYTES_MAX: usize = 255;
/// Most record bytes (canonical encoding) in one Append.
pub const APPEND_BYTES_MAX: usize = 64 << 20;
/// Most peers remembered per segment, and the longest peer address.
pub const PEERS_MAX: usize = 16;
pub const PEER_ADDRESS_BYTES_MAX: usize = 255;

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(message.into())
}

/// A volume name is 1..=255 bytes of `[A-Za-z0-9._-]`, not starting with a dot (safe as a file
/// name and an object-key part: never `.` or `..`).
pub fn volume_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(invalid("volume name is empty"));
    }
    if name.starts_with('.') {
        return Err(invalid(format!("volume name {name:?} starts with a dot")));
    }
    if name.len() > VOLUME_NAME_BYTES_MAX {
        return Err(invalid(format!(
            "volume name is {} bytes (at most {VOLUME_NAME_BYTES_MAX})",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "volume name {name:?} has the character {bad:?} (allowed: A-Z a-z 0-9 . _ -)"
        )));
    }
    Ok(())
}

/// The segment a request names: present, a valid volume name, a PG inside the largest volume.
pub fn segment_key(segment: Option<&SegmentRef>) -> Result<SegmentKey, StoreError> {
    let segment = segment.ok_or_else(|| invalid("request names no segment"))?;
    volume_name(&segment.volume)?;
    if segment.pg >= PG_COUNT_MAX {
        return Err(invalid(format!(
            "PG {} is beyond the largest volume ({PG_COUNT_MAX} PGs)",
            segment.pg
        )));
    }
    Ok(SegmentKey {
        volume: segment.volume.clone(),
        pg: PgId(segment.pg),
    })
}

/// A validated record, encoded as a hot-log frame.
#[derive(Clone, Debug)]
pub struct PreparedRecord {
    pub lsn: Lsn,
    pub backlink: Lsn,
    pub epoch: Epoch,
    pub page: PageId,
    pub full_page: bool,
    pub frame: Encoded,
}

impl PreparedRecord {
    /// The index entry once the frame is at `location`.
    pub fn meta(&self, location: Location) -> RecordMeta {
        RecordMeta {
            location,
            page: self.page,
            backlink: self.backlink,
            epoch: self.epoch,
            full_page: self.full_page,
        }
    }
}

/// Validates every record for the segment (and, for a writer's batch, that each carries the
/// batch's epoch) and encodes it as a frame.
pub fn prepare_records(
    key: &SegmentKey,
    batch_epoch: Option<Epoch>,
    records: &[Record],
) -> Result<Vec<PreparedRecord>, StoreError> {
    let mut bytes_total = 0usize;
    let mut prepared = Vec::with_capacity(records.len());
    for record in records {
        let mut checked = record::validate(record, key.pg);
        if let (Ok(()), Some(epoch)) = (&checked, batch_epoch) {
            if record.epoch != epoch.0 {
                checked = Err(RecordError::Epoch {
                    lsn: record.lsn,
                    epoch: record.epoch,
                    batch_epoch: epoch.0,
                });
            }
        }
        if let Err(e) = checked {
            return Err(invalid(format!("segment {key}: {e}")));
        }
        bytes_total += record::canonical_len(record) + 4;
        if bytes_total > APPEND_BYTES_MAX {
            return Err(invalid(format!(
                "segment {key}: batch exceeds {APPEND_BYTES_MAX} bytes of records"
            )));
        }
        prepared.push(PreparedRecord {
            lsn: Lsn(record.lsn),
            backlink: Lsn(record.backlink),
            epoch: Epoch(record.epoch),
            page: PageId(record.page),
            full_page: record::is_full_page(record),
            frame: frame::encode(&key.volume, key.pg, &FrameBody::Record(record.clone())),
        });
    }
    Ok(prepared)
}

/// Most truncations one request may carry (one per writer recovery of the PG).
pub const TRUNCATIONS_MAX: usize = 1024;

/// A PG's truncations as a request carries them, in ascending epoch order, at most one per
/// epoch.
pub fn truncations(list: &[wire::Truncation]) -> Result<Vec<Truncation>, StoreError> {
    if list.len() > TRUNCATIONS_MAX {
        return Err(invalid(format!(
            "{} truncations (at most {TRUNCATIONS_MAX})",
            list.len()
        )));
    }
    let mut out: Vec<Truncation> = list
        .iter()
        .map(|t| Truncation {
            epoch: Epoch(t.epoch),
            after: Lsn(t.truncate_after),
        })
        .collect();
    out.sort_by_key(|t| t.epoch);
    if let Some(pair) = out.windows(2).find(|w| w[0].epoch == w[1].epoch) {
        return Err(invalid(format!(
            "two truncations for epoch {}",
            pair[0].epoch.0
        )));
    }
    Ok(out)
}

/// A request's truncation history may not come from a newer epoch than the request's own
/// (adopting it would raise the node's epoch and fence the legitimate writer).
pub fn history_not_newer(list: &[Truncation], epoch: Epoch) -> Result<(), StoreError> {
    let newest = crate::segment::history_epoch(list);
    if newest > epoch {
        return Err(invalid(format!(
            "truncation history of epoch {} is newer than the request's epoch {}",
            newest.0, epoch.0
        )));
    }
    Ok(())
}

/// The wire form of a segment's truncations.
pub fn truncations_to_wire(list: &[Truncation]) -> Vec<wire::Truncation> {
    list.iter()
        .map(|t| wire::Truncation {
            epoch: t.epoch.0,
            truncate_after: t.after.0,
        })
        .collect()
}

/// The writer's peer list: at most [`PEERS_MAX`] non-empty addresses of bounded length.
/// A PG membership from the network, checked ([`Membership::from_wire`]); None when absent.
pub fn membership(
    wire: Option<&wire::Membership>,
) -> Result<Option<sixfold_proto::membership::Membership>, StoreError> {
    wire.map(|m| {
        sixfold_proto::membership::Membership::from_wire(m)
            .map_err(|e| invalid(format!("membership: {e}")))
    })
    .transpose()
}

/// Most bytes of one volume's metadata: the PG map of the largest volume ([`PG_COUNT_MAX`] PGs,
/// each with eight addresses of [`PEER_ADDRESS_BYTES_MAX`] bytes and a membership with changes
/// under way) takes about 14 MiB.
pub const VOLUME_META_BYTES_MAX: usize = 16 << 20;

/// Volume metadata as a writer or admin puts it (PutVolumeMeta), checked before the node
/// stores it: a valid name, at most [`PG_COUNT_MAX`] PGs, each within range, with at most
/// [`PEERS_MAX`] node addresses of at most [`PEER_ADDRESS_BYTES_MAX`] bytes and a valid
/// membership, and at most [`VOLUME_META_BYTES_MAX`] bytes in all.
pub fn volume_meta(meta: &wire::VolumeMeta) -> Result<(), StoreError> {
    volume_name(&meta.name)?;
    let volume = &meta.name;
    if meta.pgs.len() > PG_COUNT_MAX as usize {
        return Err(invalid(format!(
            "volume {volume}: {} PGs in its metadata (at most {PG_COUNT_MAX})",
            meta.pgs.len()
        )));
    }
    for placement in &meta.pgs {
        if placement.pg >= PG_COUNT_MAX {
            return Err(invalid(format!(
                "volume {volume}: PG {} is beyond the largest volume",
                placement.pg
            )));
        }
        if placement.nodes.len() > PEERS_MAX
            || placement
                .nodes
                .iter()
                .any(|addr| addr.len() > PEER_ADDRESS_BYTES_MAX)
        {
            return Err(invalid(format!(
                "volume {volume}: PG {} names {} nodes (at most {PEERS_MAX}, each at most \
                 {PEER_ADDRESS_BYTES_MAX} bytes)",
                placement.pg,
                placement.nodes.len()
            )));
        }
        membership(placement.membership.as_ref())
            .map_err(|e| invalid(format!("volume {volume}: PG {}: {e}", placement.pg)))?;
    }
    let bytes = prost::Message::encoded_len(meta);
    if bytes > VOLUME_META_BYTES_MAX {
        return Err(invalid(format!(
            "volume {volume}: metadata of {bytes} bytes (at most {VOLUME_META_BYTES_MAX})"
        )));
    }
    Ok(())
}

pub fn peers(list: &[String]) -> Result<Vec<String>, StoreError> {
    if list.len() > PEERS_MAX {
        return Err(invalid(format!(
            "{} peers (at most {PEERS_MAX})",
            list.len()
        )));
    }
    for peer in list {
        if peer.is_empty()
            || peer.len() > PEER_ADDRESS_BYTES_MAX
            || peer.chars().any(char::is_whitespace)
        {
            return Err(invalid(format!("peer address {peer:?} is not a host:port")));
        }
    }
    Ok(list.to_vec())
}

/// The address a writer knows this node by: empty (not told) or like a peer address.
pub fn segment_addr(addr: &str) -> Result<String, StoreError> {
    if addr.is_empty() {
        return Ok(String::new());
    }
    peers(&[addr.to_owned()])?;
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sixfold_proto::wire::ByteRange;

    #[test]
    fn volume_names() {
        assert!(volume_name("db-1.main_v2").is_ok());
        for bad in ["", ".", "..", ".v", "a/b", "é", "a b", &"x".repeat(256)] {
            assert!(volume_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(volume_name(&"x".repeat(255)).is_ok());
    }

    /// Metadata a writer or admin puts is bounded: PG count, PG numbers, node lists, addresses,
    /// memberships, total size; a normal map passes.
    #[test]
    fn volume_metadata_is_checked() {
        let placement = |pg: u32| wire::PgPlacement {
            pg,
            nodes: (0..6).map(|i| format!("10.0.0.{i}:7001")).collect(),
            membership_epoch: 0,
            membership: None,
        };
        let meta = |pgs: Vec<wire::PgPlacement>| wire::VolumeMeta {
            name: "v".into(),
            size_bytes: 1 << 40,
            page_size: 4096,
            epoch: 1,
            version: 1,
            pgs,
            writer: 0,
            restoring: false,
        };
        assert!(volume_meta(&meta((0..103).map(placement).collect())).is_ok());
        let too_many = meta((0..PG_COUNT_MAX + 1).map(placement).collect());
        assert!(volume_meta(&too_many).is_err());
        assert!(volume_meta(&meta(vec![placement(PG_COUNT_MAX)])).is_err());
        let mut crowded = placement(0);
        crowded.nodes = vec!["n:1".into(); PEERS_MAX + 1];
        assert!(volume_meta(&meta(vec![crowded])).is_err());
        let mut long = placement(0);
        long.nodes[0] = "x".repeat(PEER_ADDRESS_BYTES_MAX + 1);
        assert!(volume_meta(&meta(vec![long])).is_err());
        let mut bad_membership = placement(0);
        bad_membership.membership = Some(wire::Membership {
            epoch: 1,
            members: vec![1, 1, 1],
            changes: Vec::new(),
        });
        assert!(volume_meta(&meta(vec![bad_membership])).is_err());
        // Long addresses on every PG of the largest volume still fit...
        let mut long_names = meta((0..PG_COUNT_MAX).map(placement).collect());
        for placement in &mut long_names.pgs {
            placement.nodes = vec!["y".repeat(PEER_ADDRESS_BYTES_MAX); 8];
        }
        assert!(volume_meta(&long_names).is_ok());
        // ...twice as many do not.
        let mut huge = meta((0..PG_COUNT_MAX).map(placement).collect());
        for placement in &mut huge.pgs {
            placement.nodes = vec!["y".repeat(PEER_ADDRESS_BYTES_MAX); PEERS_MAX];
        }
        let err = volume_meta(&huge).expect_err("27 MB of metadata");
        assert!(err.to_string().contains("bytes (at most"), "{err}");
        let mut unnamed = meta(Vec::new());
        unnamed.name = "../etc".into();
        assert!(volume_meta(&unnamed).is_err());
    }

    #[test]
    fn records_are_checked() {
        let key = SegmentKey {
            volume: "v".into(),
            pg: PgId(0),
        };
        let good = record::seal(
            Lsn(2),
            Lsn(1),
            Epoch(4),
            PageId(3),
            vec![ByteRange {
                offset: 0,
                data: Bytes::from_static(b"x"),
            }],
        );
        assert_eq!(
            prepare_records(&key, Some(Epoch(4)), std::slice::from_ref(&good))
                .map(|v| v.len())
                .ok(),
            Some(1)
        );
        let error = prepare_records(&key, Some(Epoch(5)), std::slice::from_ref(&good)).unwrap_err();
        assert!(error.to_string().contains("epoch"), "{error}");
        let mut bad = good.clone();
        bad.checksum ^= 1;
        let error = prepare_records(&key, None, &[bad]).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
        let other_pg = SegmentKey {
            volume: "v".into(),
            pg: PgId(1),
        };
        assert!(prepare_records(&other_pg, None, &[good]).is_err());
        assert!(segment_key(None).is_err());
        assert!(segment_key(Some(&SegmentRef {
            volume: "v".into(),
            pg: PG_COUNT_MAX,
        }))
        .is_err());
    }
}
