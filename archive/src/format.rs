//! Archive object bodies: a prost message, compressed (LZ4) and checksummed (crc32c).
//!
//! ```text
//! magic "SXFA" | kind (4 bytes) | crc32c of the rest (u32 LE) | raw length (u64 LE) | LZ4 block
//! ```
//!
//! Kinds: `RUN1` ([`ArchiveRun`]: a PG's records in (start, end] with the writer's consistency
//! points) and `PGS1` ([`ArchivePages`]: page images of a base image chunk). Decoding checks the
//! magic, the kind, the checksum and the length before it parses anything, so a damaged or
//! truncated object is an error naming what is wrong, never a wrong answer.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use sixfold_proto::wire::{ArchivePages, ArchiveRun};
use thiserror::Error;

const MAGIC: &[u8; 4] = b"SXFA";
const HEADER_BYTES: usize = 4 + 4 + 4 + 8;
/// Largest raw body decoded (a run or chunk is at most tens of MiB; this bounds what a corrupt
/// length field could make us allocate).
pub const RAW_BYTES_MAX: u64 = 1 << 30;

pub const RUN: &[u8; 4] = b"RUN1";
pub const PAGES: &[u8; 4] = b"PGS1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("too short to be an archive object ({0} bytes)")]
    Short(usize),
    #[error("not an archive object (bad magic)")]
    Magic,
    #[error("expected a {expected} object, found {found}")]
    Kind { expected: String, found: String },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("body does not decompress: {0}")]
    Compression(String),
    #[error("body does not parse: {0}")]
    Parse(String),
}

/// Encodes `message` as an archive object of `kind`.
pub fn encode(kind: &[u8; 4], message: &impl Message) -> Bytes {
    let raw = message.encode_to_vec();
    let compressed = lz4_flex::block::compress(&raw);
    let mut rest = BytesMut::with_capacity(8 + compressed.len());
    rest.put_u64_le(raw.len() as u64);
    rest.put_slice(&compressed);
    let mut out = BytesMut::with_capacity(HEADER_BYTES + compressed.len());
    out.put_slice(MAGIC);
    out.put_slice(kind);
    out.put_u32_le(crc32c::crc32c(&rest));
    out.put_slice(&rest);
    out.freeze()
}

/// Decodes an archive object of `kind`.
pub fn decode<M: Message + Default>(kind: &[u8; 4], body: &[u8]) -> Result<M, FormatError> {
    if body.len() < HEADER_BYTES {
        return Err(FormatError::Short(body.len()));
    }
    if &body[..4] != MAGIC {
        return Err(FormatError::Magic);
    }
    if &body[4..8] != kind {
        return Err(FormatError::Kind {
            expected: String::from_utf8_lossy(kind).into_owned(),
            found: String::from_utf8_lossy(&body[4..8]).into_owned(),
        });
    }
    let stored = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    let rest = &body[12..];
    let computed = crc32c::crc32c(rest);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&rest[..8]);
    let raw_len = u64::from_le_bytes(len);
    if raw_len > RAW_BYTES_MAX {
        return Err(FormatError::Compression(format!(
            "raw length {raw_len} is over {RAW_BYTES_MAX}"
        )));
    }
    let raw = lz4_flex::block::decompress(&rest[8..], raw_len as usize)
        .map_err(|e| FormatError::Compression(e.to_string()))?;
    M::decode(raw.as_slice()).map_err(|e| FormatError::Parse(e.to_string()))
}

/// First bytes of a sealed object (encryption at rest; the node seals, see its `archive_seal`).
pub const SEALED: &[u8; 4] = b"SXFE";

/// A sealed object: `"SXFE" | clear_len u32 LE | clear | sealed`, where `clear` is what may be
/// read without keys (a run's consistency points: an object of the same kind with no volume
/// data; empty for page chunks) and `sealed` the sealed box of the whole plaintext object.
pub fn sealed_envelope(clear: &[u8], sealed: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + clear.len() + sealed.len());
    out.put_slice(SEALED);
    out.put_u32_le(clear.len() as u32);
    out.put_slice(clear);
    out.put_slice(sealed);
    out.freeze()
}

/// The two parts of a sealed object ([`sealed_envelope`]).
#[derive(Debug, PartialEq, Eq)]
pub struct SealedParts<'a> {
    pub clear: &'a [u8],
    pub sealed: &'a [u8],
}

/// The parts of a sealed object; `None` for a plaintext object.
pub fn split_sealed(body: &[u8]) -> Result<Option<SealedParts<'_>>, FormatError> {
    let Some(rest) = body.strip_prefix(SEALED) else {
        return Ok(None);
    };
    let len = rest
        .get(..4)
        .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or(FormatError::Short(body.len()))?;
    let clear = rest.get(4..4 + len).ok_or(FormatError::Short(body.len()))?;
    Ok(Some(SealedParts {
        clear,
        sealed: &rest[4 + len..],
    }))
}

/// What can be decoded without keys: a sealed object's clear part, or a plaintext object whole.
pub fn clear_part(body: &[u8]) -> Result<&[u8], FormatError> {
    Ok(split_sealed(body)?.map_or(body, |parts| parts.clear))
}

pub fn encode_run(run: &ArchiveRun) -> Bytes {
    encode(RUN, run)
}

pub fn decode_run(body: &[u8]) -> Result<ArchiveRun, FormatError> {
    decode(RUN, body)
}

pub fn encode_pages(pages: &ArchivePages) -> Bytes {
    encode(PAGES, pages)
}

pub fn decode_pages(body: &[u8]) -> Result<ArchivePages, FormatError> {
    decode(PAGES, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixfold_proto::wire::{ArchiveMark, Record};

    fn run() -> ArchiveRun {
        ArchiveRun {
            volume: "v".into(),
            pg: 3,
            start: 10,
            end: 20,
            records: vec![Record {
                lsn: 12,
                backlink: 9,
                epoch: 1,
                page: 5,
                ranges: Vec::new(),
                checksum: 7,
            }],
            marks: vec![ArchiveMark {
                vdl: 15,
                time_us: 1_000,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let body = encode_run(&run());
        assert_eq!(decode_run(&body).unwrap(), run());
    }

    #[test]
    fn sealed_envelopes_split_and_keep_their_clear_part_readable() {
        let clear = encode_run(&run());
        let body = sealed_envelope(&clear, b"opaque sealed box");
        let parts = split_sealed(&body).unwrap().expect("sealed");
        assert_eq!(parts.clear, &clear[..]);
        assert_eq!(parts.sealed, b"opaque sealed box");
        assert_eq!(decode_run(clear_part(&body).unwrap()).unwrap(), run());
        let plain = encode_run(&run());
        assert_eq!(split_sealed(&plain).unwrap(), None);
        assert_eq!(clear_part(&plain).unwrap(), &plain[..]);
        for len in 4..8 + clear.len() {
            assert!(split_sealed(&body[..len]).is_err(), "cut to {len} accepted");
        }
    }

    #[test]
    fn every_damage_is_caught() {
        let body = encode_run(&run()).to_vec();
        for at in 0..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 0x40;
            assert!(
                decode_run(&bad).is_err(),
                "flipped byte {at} went unnoticed"
            );
        }
        for len in 0..body.len() {
            assert!(
                decode_run(&body[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
        assert!(matches!(decode_pages(&body), Err(FormatError::Kind { .. })));
    }
}
