//! Hot-log frames: the unit the node appends to its hot log and replays on start. Pure (no I/O).
//!
//! ```text
//! frame   = payload_len u32 | crc32c(payload) u32 | payload
//! payload = kind u8 | volume_len u16 | volume bytes | pg u32 | body
//! body    = record:     the record's canonical encoding (`record::encode_canonical`, with checksum)
//!         | epoch:      epoch u64
//!         | truncation: epoch u64 | truncate_after u64
//!         | history:    count u32 | (epoch u64 | truncate_after u64) * count
//!         | membership: the PG's membership and its base (protobuf `MembershipStep`)
//! ```
//!
//! all little-endian.
//!
//! With encryption at rest on ([`crate::keyring`]), the payload is a sealed box of the payload
//! above (`sixfold_keys`: it starts with `SEAL_MAGIC`, which is no kind, and names its data key,
//! the volume's), sealed with [`FRAME_CONTEXT`]: the crc still covers the bytes as stored, so
//! replay tells torn tails and damage from intact frames without opening them, and opening one
//! authenticates it.
//!
//! Invariants: a frame's payload is at most [`FRAME_PAYLOAD_MAX`] bytes and starts with a known
//! kind; the crc covers the whole payload, so a torn or flipped frame never decodes. A record frame
//! holds a record whose own checksum the caller verifies (`record::validate`) after decoding: the
//! frame crc guards the log, the record checksum guards the record end to end (writer to reader).

use prost::Message;
use sixfold_proto::record;
use sixfold_proto::wire::Record;
use sixfold_proto::{Epoch, Lsn, PgId};

use sixfold_keys::{KeyError, SEAL_MAGIC, SEAL_OVERHEAD};

use crate::keyring::Keyring;
use crate::members::HeldMembership;
use crate::segment::Truncation;

/// Bytes before the payload: length and crc.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload: a record is at most one page plus small headers; anything longer is corrupt
/// (this also bounds what a corrupt length field can make replay allocate).
pub const FRAME_PAYLOAD_MAX: usize = 64 * 1024;

const KIND_RECORD: u8 = 1;
const KIND_EPOCH: u8 = 2;
const KIND_TRUNCATION: u8 = 3;
const KIND_HISTORY: u8 = 4;
const KIND_MEMBERSHIP: u8 = 5;

/// What a frame says about its segment.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameBody {
    /// A record was hardened.
    Record(Record),
    /// The volume adopted `epoch` (OpenSegment of this segment).
    Epoch(Epoch),
    /// Records of the segment above `truncate_after` from epochs before `epoch` are dropped.
    Truncation { epoch: Epoch, truncate_after: Lsn },
    /// The segment adopted a newer recovery's truncation history ([`Segment::adopt`]).
    ///
    /// [`Segment::adopt`]: crate::segment::Segment::adopt
    History(Vec<Truncation>),
    /// The segment adopted a membership of its PG: a membership change step from `base`, or
    /// (`base` None) the writer's that created or recovered the PG.
    /// It carries the segment's whole membership state (collision-recovery round and promise
    /// too): replay applies membership frames in order, the last one wins.
    Membership(HeldMembership),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub volume: String,
    pub pg: PgId,
    pub body: FrameBody,
}

/// Authenticated data of every sealed frame payload.
pub const FRAME_CONTEXT: &[u8] = b"sixfold hot-log frame";

/// An encoded frame and where its body sits inside it (a record's body is what reads fetch back).
/// A sealed frame's "body" is its whole sealed payload: reads open it ([`body_of_payload`]).
#[derive(Clone, Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub body_offset: usize,
    pub sealed: bool,
}

impl Encoded {
    pub fn body_len(&self) -> usize {
        self.bytes.len() - self.body_offset
    }

    /// The length a plaintext frame's body takes in the log once stored sealed (`sealed`) or
    /// as it is.
    pub fn stored_body_len(&self, sealed: bool) -> usize {
        if sealed && !self.sealed {
            self.bytes.len() - FRAME_HEADER_BYTES + SEAL_OVERHEAD
        } else {
            self.body_len()
        }
    }
}

/// Seals a plaintext frame under its volume's data key; `None` when encryption is off.
pub fn seal(encoded: &Encoded, keys: &Keyring) -> Result<Option<Encoded>, KeyError> {
    let payload = &encoded.bytes[FRAME_HEADER_BYTES..];
    let (volume, _) = payload_head(payload)
        .map_err(|_| KeyError::Malformed("frame without a volume name".into()))?;
    let Some(key) = keys.sealer(volume)? else {
        return Ok(None);
    };
    let sealed = key.seal(FRAME_CONTEXT, payload)?;
    if sealed.len() > FRAME_PAYLOAD_MAX {
        return Err(KeyError::Malformed(format!(
            "sealed frame payload of {} bytes (at most {FRAME_PAYLOAD_MAX})",
            sealed.len()
        )));
    }
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + sealed.len());
    bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&sealed).to_le_bytes());
    bytes.extend_from_slice(&sealed);
    Ok(Some(Encoded {
        bytes,
        body_offset: FRAME_HEADER_BYTES,
        sealed: true,
    }))
}

/// The record bytes a stored body holds: itself for a plaintext frame, for a sealed one the
/// body inside its opened payload.
pub fn body_of_payload(stored: Vec<u8>, sealed: bool, keys: &Keyring) -> Result<Vec<u8>, String> {
    if !sealed {
        return Ok(stored);
    }
    let mut payload = keys
        .open_box(FRAME_CONTEXT, stored)
        .map_err(|e| e.to_string())?;
    // The reader checks the record's own checksum; only the head is parsed here.
    let (_, body_offset) = payload_head(&payload)?;
    Ok(payload.split_off(body_offset))
}

/// A payload's volume name and where its body starts: `kind u8 | volume_len u16 | volume |
/// pg u32 | body`.
fn payload_head(payload: &[u8]) -> Result<(&str, usize), String> {
    let malformed = || "frame payload is malformed".to_string();
    let volume_len = u16::from_le_bytes(take::<2>(payload, 1).ok_or_else(malformed)?) as usize;
    let volume_bytes = payload.get(3..3 + volume_len).ok_or_else(malformed)?;
    let volume = std::str::from_utf8(volume_bytes)
        .map_err(|_| "frame volume name is not UTF-8".to_string())?;
    let body_offset = 3 + volume_len + 4;
    if payload.len() < body_offset {
        return Err(malformed());
    }
    Ok((volume, body_offset))
}

/// Encodes one frame. `volume` must be a validated volume name (at most 255 bytes).
pub fn encode(volume: &str, pg: PgId, body: &FrameBody) -> Encoded {
    let volume_len =
        u16::try_from(volume.len()).expect("volume names are validated to <= 255 bytes");
    let mut bytes = vec![0u8; FRAME_HEADER_BYTES];
    let kind = match body {
        FrameBody::Record(_) => KIND_RECORD,
        FrameBody::Epoch(_) => KIND_EPOCH,
        FrameBody::Truncation { .. } => KIND_TRUNCATION,
        FrameBody::History(_) => KIND_HISTORY,
        FrameBody::Membership(_) => KIND_MEMBERSHIP,
    };
    bytes.push(kind);
    bytes.extend_from_slice(&volume_len.to_le_bytes());
    bytes.extend_from_slice(volume.as_bytes());
    bytes.extend_from_slice(&pg.0.to_le_bytes());
    let body_offset = bytes.len();
    match body {
        FrameBody::Record(record) => record::encode_canonical(record, &mut bytes),
        FrameBody::Epoch(epoch) => bytes.extend_from_slice(&epoch.0.to_le_bytes()),
        FrameBody::Truncation {
            epoch,
            truncate_after,
        } => {
            bytes.extend_from_slice(&epoch.0.to_le_bytes());
            bytes.extend_from_slice(&truncate_after.0.to_le_bytes());
        }
        FrameBody::History(list) => {
            bytes.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for t in list {
                bytes.extend_from_slice(&t.epoch.0.to_le_bytes());
                bytes.extend_from_slice(&t.after.0.to_le_bytes());
            }
        }
        FrameBody::Membership(held) => bytes.extend_from_slice(&held.to_wire().encode_to_vec()),
    }
    let payload_len = bytes.len() - FRAME_HEADER_BYTES;
    debug_assert!(
        payload_len <= FRAME_PAYLOAD_MAX,
        "frame payload of {payload_len} bytes"
    );
    let crc = crc32c::crc32c(&bytes[FRAME_HEADER_BYTES..]);
    bytes[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    Encoded {
        bytes,
        body_offset,
        sealed: false,
    }
}

/// Whether a frame could start at the start of `buf`: a length in range that fits in `buf` and a
/// known kind. A cheap filter before [`decode`]'s crc when replay looks for the next intact frame
/// after damage (a false positive costs one crc; the crc decides).
pub fn plausible_start(buf: &[u8]) -> bool {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return false;
    };
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if payload_len == 0 || payload_len > FRAME_PAYLOAD_MAX {
        return false;
    }
    buf.len() >= FRAME_HEADER_BYTES + payload_len
        && matches!(
            buf[FRAME_HEADER_BYTES],
            KIND_RECORD
                | KIND_EPOCH
                | KIND_TRUNCATION
                | KIND_HISTORY
                | KIND_MEMBERSHIP
                | SEAL_MAGIC
        )
}

/// The result of decoding the frame at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A whole, intact frame of `len` bytes; its body starts `body_offset` bytes into it (a
    /// sealed frame's: its payload, see [`Encoded`]).
    Frame {
        frame: Frame,
        len: usize,
        body_offset: usize,
        sealed: bool,
    },
    /// The buffer ends inside the frame (a torn write at the end of a log file).
    Incomplete,
    /// The bytes are not a frame (bad length, crc mismatch, unknown kind, malformed payload).
    Corrupt(String),
    /// An intact sealed frame (its crc matches) that does not open with the node's keys: a
    /// missing data key, or bytes changed by someone who fixed the crc. Never a torn write, so
    /// never cut: replay stops instead.
    Unopenable(String),
}

/// Decodes the frame at the start of `buf`, opening it with `keys` if it is sealed. Never panics,
/// whatever the bytes.
pub fn decode(buf: &[u8], keys: &Keyring) -> Decoded {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Decoded::Incomplete;
    };
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc_stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if payload_len == 0 || payload_len > FRAME_PAYLOAD_MAX {
        return Decoded::Corrupt(format!("frame length {payload_len} out of range"));
    }
    let Some(payload) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len) else {
        return Decoded::Incomplete;
    };
    let crc_computed = crc32c::crc32c(payload);
    if crc_computed != crc_stored {
        return Decoded::Corrupt(format!(
            "frame crc mismatch (stored {crc_stored:#010x}, computed {crc_computed:#010x})"
        ));
    }
    if payload[0] == SEAL_MAGIC {
        let opened = match keys.open_box(FRAME_CONTEXT, payload.to_vec()) {
            Ok(opened) => opened,
            Err(e) => return Decoded::Unopenable(format!("sealed frame: {e}")),
        };
        return match decode_payload(&opened) {
            Ok((frame, _)) => Decoded::Frame {
                frame,
                len: FRAME_HEADER_BYTES + payload_len,
                body_offset: FRAME_HEADER_BYTES,
                sealed: true,
            },
            Err(reason) => Decoded::Corrupt(reason),
        };
    }
    match decode_payload(payload) {
        Ok((frame, body_offset)) => Decoded::Frame {
            frame,
            len: FRAME_HEADER_BYTES + payload_len,
            body_offset: FRAME_HEADER_BYTES + body_offset,
            sealed: false,
        },
        Err(reason) => Decoded::Corrupt(reason),
    }
}

fn decode_payload(payload: &[u8]) -> Result<(Frame, usize), String> {
    let malformed = || "frame payload is malformed".to_string();
    let kind = *payload.first().ok_or_else(malformed)?;
    let (volume, body_offset) = payload_head(payload)?;
    // Every frame was written for a validated name; anything else is damage (or a hand-made
    // file), never a segment to rebuild.
    crate::request::volume_name(volume).map_err(|e| format!("frame names no valid volume: {e}"))?;
    let volume = volume.to_string();
    let pg = PgId(u32::from_le_bytes(
        take::<4>(payload, body_offset - 4).ok_or_else(malformed)?,
    ));
    let body = &payload[body_offset..];
    let body = match kind {
        KIND_RECORD => FrameBody::Record(
            record::decode_canonical(body).map_err(|e| format!("frame record: {e}"))?,
        ),
        KIND_EPOCH => {
            if body.len() != 8 {
                return Err(malformed());
            }
            FrameBody::Epoch(Epoch(u64::from_le_bytes(
                take::<8>(body, 0).ok_or_else(malformed)?,
            )))
        }
        KIND_TRUNCATION => {
            if body.len() != 16 {
                return Err(malformed());
            }
            FrameBody::Truncation {
                epoch: Epoch(u64::from_le_bytes(
                    take::<8>(body, 0).ok_or_else(malformed)?,
                )),
                truncate_after: Lsn(u64::from_le_bytes(
                    take::<8>(body, 8).ok_or_else(malformed)?,
                )),
            }
        }
        KIND_HISTORY => {
            let count = u32::from_le_bytes(take::<4>(body, 0).ok_or_else(malformed)?) as usize;
            if body.len() != 4 + 16 * count {
                return Err(malformed());
            }
            let list = (0..count)
                .map(|i| {
                    let at = 4 + 16 * i;
                    Some(Truncation {
                        epoch: Epoch(u64::from_le_bytes(take::<8>(body, at)?)),
                        after: Lsn(u64::from_le_bytes(take::<8>(body, at + 8)?)),
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(malformed)?;
            FrameBody::History(list)
        }
        KIND_MEMBERSHIP => {
            let step =
                sixfold_proto::wire::MembershipStep::decode(body).map_err(|_| malformed())?;
            FrameBody::Membership(
                HeldMembership::from_wire(&step).map_err(|e| format!("frame membership: {e}"))?,
            )
        }
        other => return Err(format!("unknown frame kind {other}")),
    };
    Ok((Frame { volume, pg, body }, body_offset))
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sixfold_proto::collision::{Ballot, Promise};
    use sixfold_proto::membership::Membership;
    use sixfold_proto::wire::ByteRange;
    use sixfold_proto::PageId;

    fn sample_record() -> Record {
        record::seal(
            Lsn(9),
            Lsn(4),
            Epoch(3),
            PageId(17),
            vec![ByteRange {
                offset: 5,
                data: Bytes::from_static(b"abc"),
            }],
        )
    }

    #[test]
    fn round_trips_every_kind() {
        let bodies = [
            FrameBody::Record(sample_record()),
            FrameBody::Epoch(Epoch(4)),
            FrameBody::Truncation {
                epoch: Epoch(5),
                truncate_after: Lsn(77),
            },
            FrameBody::Membership(HeldMembership {
                current: Membership::new((1..=6).map(sixfold_proto::NodeId).collect())
                    .and_then(|m| m.begin(sixfold_proto::NodeId(6), sixfold_proto::NodeId(7)))
                    .expect("membership"),
                base: Some(
                    Membership::new((1..=6).map(sixfold_proto::NodeId).collect())
                        .expect("membership"),
                ),
                accepted: Ballot {
                    number: 3,
                    driver: sixfold_proto::NodeId(2),
                },
                promise: Some(Promise {
                    epoch: sixfold_proto::MembershipEpoch(2),
                    ballot: Ballot {
                        number: 4,
                        driver: sixfold_proto::NodeId(5),
                    },
                }),
            }),
            FrameBody::Membership(HeldMembership::from_writer(
                Membership::new((1..=6).map(sixfold_proto::NodeId).collect()).expect("membership"),
            )),
        ];
        for body in bodies {
            let encoded = encode("vol-1", PgId(2), &body);
            match decode(&encoded.bytes, &Keyring::plaintext()) {
                Decoded::Frame {
                    frame,
                    len,
                    body_offset,
                    sealed: false,
                } => {
                    assert_eq!(len, encoded.bytes.len());
                    assert_eq!(body_offset, encoded.body_offset);
                    assert_eq!(frame.volume, "vol-1");
                    assert_eq!(frame.pg, PgId(2));
                    assert_eq!(frame.body, body);
                }
                other => panic!("did not decode: {other:?}"),
            }
        }
    }

    #[test]
    fn record_body_is_the_canonical_encoding() {
        let record = sample_record();
        let encoded = encode("v", PgId(0), &FrameBody::Record(record.clone()));
        let body = &encoded.bytes[encoded.body_offset..];
        assert_eq!(record::decode_canonical(body), Ok(record));
    }

    #[test]
    fn torn_and_corrupt_frames_are_detected() {
        let encoded = encode("v", PgId(0), &FrameBody::Record(sample_record()));
        for cut in 0..encoded.bytes.len() {
            assert_eq!(
                decode(&encoded.bytes[..cut], &Keyring::plaintext()),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        for position in 0..encoded.bytes.len() {
            let mut bytes = encoded.bytes.clone();
            bytes[position] ^= 0x40;
            assert!(
                !matches!(decode(&bytes, &Keyring::plaintext()), Decoded::Frame { .. }),
                "flip at {position} went unnoticed"
            );
        }
        let mut zeroes = vec![0u8; 64];
        assert!(matches!(
            decode(&zeroes, &Keyring::plaintext()),
            Decoded::Corrupt(_)
        ));
        zeroes[0..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(
            decode(&zeroes, &Keyring::plaintext()),
            Decoded::Corrupt(_)
        ));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if bytes.len() >= 8 {
                // Give the frame a plausible length and crc so the payload decoder runs.
                let payload_len = (bytes.len() - 8) as u32;
                bytes[0..4].copy_from_slice(&payload_len.to_le_bytes());
                let crc = crc32c::crc32c(&bytes[8..]);
                bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&bytes, &Keyring::plaintext());
        }
    }
}
