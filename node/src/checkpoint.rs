//! The node checkpoint: what the hot log's garbage-collected files said, kept in one small file
//! (`data_dir/checkpoint`): every volume's epoch, and for every segment its folded LSN and the
//! truncations it must keep refusing. Open starts from it and replays the remaining log on top.
//!
//! Written whole, atomically: a temporary file, fsync, rename, directory fsync. It is written
//! before any hot-log file it covers is deleted ([`crate::folder`]), so every frame ever
//! acknowledged is either in the remaining log or summarized here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use prost::Message;
use sixfold_proto::{Epoch, Lsn, PgId};

use crate::index::SegmentKey;
use crate::keyring::{Keyring, NODE_SCOPE};
use crate::members::HeldMembership;
use crate::segment::Truncation;

/// Version 1 had no memberships; version 2 appends each segment's membership and its base
/// (a length-prefixed protobuf `MembershipStep`, length 0 for none). Both decode.
const MAGIC_V1: u64 = 0x5346_4348_4b50_5431; // "SFCHKPT1"
const MAGIC: u64 = 0x5346_4348_4b50_5432; // "SFCHKPT2"
pub const FILE_NAME: &str = "checkpoint";
/// A sealed checkpoint (encryption at rest): `"SFCS" | sealed box of the plaintext encoding`.
const SEALED_MAGIC: &[u8; 4] = b"SFCS";
const CONTEXT: &[u8] = b"sixfold checkpoint";

/// The plaintext of a checkpoint file: itself, or its sealed box opened. `Ok(None)` never: a
/// checkpoint that does not open is an error (the log it summarizes may be gone).
fn open_sealed(bytes: Vec<u8>, keys: &Keyring) -> io::Result<Option<Vec<u8>>> {
    match bytes.strip_prefix(SEALED_MAGIC) {
        None => Ok(Some(bytes)),
        Some(sealed) => keys
            .open_box(CONTEXT, sealed.to_vec())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("checkpoint: {e}"))),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentCheckpoint {
    pub folded: Lsn,
    pub truncations: Vec<Truncation>,
    /// The PG's membership state (with the one it was a step from).
    pub membership: Option<HeldMembership>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub volumes: BTreeMap<String, Epoch>,
    pub segments: BTreeMap<SegmentKey, SegmentCheckpoint>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.volumes.len() as u32).to_le_bytes());
        for (name, epoch) in &self.volumes {
            put_str(&mut out, name);
            out.extend_from_slice(&epoch.0.to_le_bytes());
        }
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for (key, segment) in &self.segments {
            put_str(&mut out, &key.volume);
            out.extend_from_slice(&key.pg.0.to_le_bytes());
            out.extend_from_slice(&segment.folded.0.to_le_bytes());
            out.extend_from_slice(&(segment.truncations.len() as u32).to_le_bytes());
            for t in &segment.truncations {
                out.extend_from_slice(&t.epoch.0.to_le_bytes());
                out.extend_from_slice(&t.after.0.to_le_bytes());
            }
            let membership = segment
                .membership
                .as_ref()
                .map(|held| held.to_wire().encode_to_vec())
                .unwrap_or_default();
            out.extend_from_slice(&(membership.len() as u32).to_le_bytes());
            out.extend_from_slice(&membership);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let body_len = bytes.len().checked_sub(4)?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return None;
        }
        let mut r = Reader(body);
        let version = match r.u64()? {
            MAGIC_V1 => 1,
            MAGIC => 2,
            _ => return None,
        };
        let mut checkpoint = Checkpoint::default();
        for _ in 0..r.u32()? {
            let name = r.str()?;
            checkpoint.volumes.insert(name, Epoch(r.u64()?));
        }
        for _ in 0..r.u32()? {
            let volume = r.str()?;
            let pg = PgId(r.u32()?);
            let folded = Lsn(r.u64()?);
            let mut truncations = Vec::new();
            for _ in 0..r.u32()? {
                truncations.push(Truncation {
                    epoch: Epoch(r.u64()?),
                    after: Lsn(r.u64()?),
                });
            }
            let membership = if version >= 2 {
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                if len == 0 {
                    None
                } else {
                    let step = sixfold_proto::wire::MembershipStep::decode(bytes).ok()?;
                    Some(HeldMembership::from_wire(&step).ok()?)
                }
            } else {
                None
            };
            checkpoint.segments.insert(
                SegmentKey { volume, pg },
                SegmentCheckpoint {
                    folded,
                    truncations,
                    membership,
                },
            );
        }
        r.0.is_empty().then_some(checkpoint)
    }

    /// Reads the checkpoint of `data_dir`: `Ok(None)` if there is none; an error if it is
    /// damaged (never silently ignored: the log it summarizes may be gone).
    pub fn load(data_dir: &Path, keys: &Keyring) -> io::Result<Option<Checkpoint>> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => open_sealed(bytes, keys)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        .map_or(Ok(None), |bytes| {
            Checkpoint::decode(&bytes).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged (checksum or format)", path.display()),
                )
            })
        })
    }

    /// Replaces the checkpoint of `data_dir` atomically and durably.
    pub fn store(&self, data_dir: &Path, keys: &Keyring) -> io::Result<()> {
        let mut bytes = self.encode();
        if let Some(key) = keys.sealer(NODE_SCOPE).map_err(io::Error::other)? {
            let sealed = key.seal(CONTEXT, &bytes).map_err(io::Error::other)?;
            bytes = SEALED_MAGIC.to_vec();
            bytes.extend_from_slice(&sealed);
        }
        let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, data_dir.join(FILE_NAME))?;
        crate::hotlog::sync_dir(data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixfold_proto::membership::Membership;

    #[test]
    fn round_trips_and_refuses_damage() {
        let mut c = Checkpoint::default();
        c.volumes.insert("vol".into(), Epoch(4));
        c.segments.insert(
            SegmentKey {
                volume: "vol".into(),
                pg: PgId(3),
            },
            SegmentCheckpoint {
                folded: Lsn(77),
                truncations: vec![Truncation {
                    epoch: Epoch(4),
                    after: Lsn(70),
                }],
                membership: Some(HeldMembership::from_writer(
                    Membership::new((1..=6).map(sixfold_proto::NodeId).collect())
                        .expect("membership"),
                )),
            },
        );
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(c.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(Checkpoint::decode(&bytes[..cut]), None);
        }
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert_eq!(Checkpoint::decode(&flipped), None);
        let temp = crate::testutil::TempDir::new("checkpoint");
        assert_eq!(
            Checkpoint::load(temp.path(), &Keyring::plaintext()).expect("load"),
            None
        );
        c.store(temp.path(), &Keyring::plaintext()).expect("store");
        assert_eq!(
            Checkpoint::load(temp.path(), &Keyring::plaintext()).expect("load"),
            Some(c)
        );
        std::fs::write(temp.path().join(FILE_NAME), b"junk").expect("damage");
        assert!(Checkpoint::load(temp.path(), &Keyring::plaintext()).is_err());
    }
}
