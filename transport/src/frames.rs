//! The append wire: the lean transport that carries a writer's appends to a node, beside gRPC
//! (which carries everything else).
//!
//! One connection per writer-node pair carries the append streams of every PG the node hosts
//! for that writer. It is the node's usual port and TLS (mutual, with certificate roles): a TLS
//! client asks for it with ALPN [`APPEND_ALPN`] (gRPC asks for `h2`); every client, TLS or
//! plaintext, then sends [`APPEND_PREFACE`], which a plaintext server tells apart from HTTP/2's
//! preface by its first byte. After that both sides send frames:
//!
//! ```text
//! [u32 big-endian: length of what follows] [u8 kind] [u64 big-endian: stream] [payload]
//! ```
//!
//! - `Append` (writer to node): an `AppendRequest` on one of the writer's streams (one stream
//!   per segment; the writer numbers them).
//! - `Ack` (node to writer): the `AppendResponse` of a stream's oldest unanswered batch; a
//!   node answers each stream's batches in the order they arrived, and only once the store has
//!   hardened them (fsync).
//! - `Refused`: the batch was refused, with the gRPC status a unary call would have had
//!   ([`encode_refusal`]); stream 0 (no stream) refuses the connection, which then closes.
//! - `Ping` / `Pong`: a liveness probe and its echo (the stream field carries a nonce).
//!
//! Frames are checked before anything is allocated for them: a length below the header or
//! above [`FRAME_PAYLOAD_MAX`], or an unknown kind, is a [`FrameError`] and the connection
//! closes; nothing from the network can make a side panic or allocate beyond one frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::MESSAGE_BYTES_MAX;

/// The ALPN protocol a TLS client asks for to open an append connection.
pub const APPEND_ALPN: &[u8] = b"sixfold-append/1";
/// The first bytes of every append connection, TLS or not (HTTP/2's preface starts with `P`).
pub const APPEND_PREFACE: &[u8; 8] = b"SIXFAPP1";
/// Length, kind and stream.
pub const FRAME_HEADER_BYTES: usize = 4 + 1 + 8;
/// Largest payload either side accepts (as for gRPC messages).
pub const FRAME_PAYLOAD_MAX: usize = MESSAGE_BYTES_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Append,
    Ack,
    Refused,
    Ping,
    Pong,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Append => 1,
            Kind::Ack => 2,
            Kind::Refused => 3,
            Kind::Ping => 4,
            Kind::Pong => 5,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Append,
            2 => Kind::Ack,
            3 => Kind::Refused,
            4 => Kind::Ping,
            5 => Kind::Pong,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub stream: u64,
    pub payload: Bytes,
}

/// A frame no sixfold process sends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is below the 9 bytes of kind and stream")]
    TooShort(u32),
    #[error("frame payload of {0} bytes is over the {FRAME_PAYLOAD_MAX}-byte limit")]
    TooLong(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// Appends a frame whose payload `write` puts (exactly `payload_len` bytes) to `out`.
pub fn encode_with(
    out: &mut BytesMut,
    kind: Kind,
    stream: u64,
    payload_len: usize,
    write: impl FnOnce(&mut BytesMut),
) {
    out.reserve(FRAME_HEADER_BYTES + payload_len);
    // A payload over u32 is never built: both sides bound messages far below it.
    let len = u32::try_from(1 + 8 + payload_len).unwrap_or(u32::MAX);
    out.put_u32(len);
    out.put_u8(kind.code());
    out.put_u64(stream);
    let before = out.len();
    write(out);
    debug_assert_eq!(
        out.len() - before,
        payload_len,
        "payload length as announced"
    );
}

/// Appends a frame carrying `payload`.
pub fn encode(out: &mut BytesMut, kind: Kind, stream: u64, payload: &[u8]) {
    encode_with(out, kind, stream, payload.len(), |out| {
        out.put_slice(payload)
    });
}

/// Appends a frame carrying the protobuf `message`.
pub fn encode_message<M: prost::Message>(out: &mut BytesMut, kind: Kind, stream: u64, message: &M) {
    let len = message.encoded_len();
    encode_with(out, kind, stream, len, |out| {
        // Cannot fail: `reserve` made room for `len` bytes.
        let _ = message.encode(out);
    });
}

/// Takes the next whole frame off the front of `buffer`; `Ok(None)` when it holds only part of
/// one (it then reserves room for more of it, at most 1 MiB at a time).
pub fn decode(buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    let body = len as usize;
    if body < FRAME_HEADER_BYTES - 4 {
        return Err(FrameError::TooShort(len));
    }
    let payload_len = body - (FRAME_HEADER_BYTES - 4);
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLong(payload_len));
    }
    let code = buffer.get(4).copied().unwrap_or(0);
    if buffer.len() > 4 && Kind::from_code(code).is_none() {
        return Err(FrameError::UnknownKind(code));
    }
    if buffer.len() < 4 + body {
        // Room for what is still to come, but no more than 1 MiB ahead of the bytes that
        // arrived: a header alone reserves little, whatever length it announces.
        buffer.reserve((4 + body - buffer.len()).min(1 << 20));
        return Ok(None);
    }
    let mut frame = buffer.split_to(4 + body).freeze();
    frame.advance(4);
    let kind = Kind::from_code(frame.get_u8()).ok_or(FrameError::UnknownKind(code))?;
    let stream = frame.get_u64();
    Ok(Some(Frame {
        kind,
        stream,
        payload: frame,
    }))
}

/// A refusal's payload: the gRPC status (code, message, details) a unary call would have had,
/// so that the writer classifies it as it would a call's ([`decode_refusal`]).
pub fn encode_refusal(status: &tonic::Status) -> Vec<u8> {
    let message = status.message().as_bytes();
    let details = status.details();
    let mut out = Vec::with_capacity(8 + message.len() + details.len());
    out.extend_from_slice(&(status.code() as i32).to_be_bytes());
    let message_len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&message_len.to_be_bytes());
    out.extend_from_slice(&message[..message_len as usize]);
    out.extend_from_slice(details);
    out
}

/// The status a refusal frame carries; a payload too short for one is itself a status saying so.
pub fn decode_refusal(mut payload: Bytes) -> tonic::Status {
    if payload.len() < 8 {
        return tonic::Status::internal("malformed refusal frame from the node");
    }
    let code = tonic::Code::from_i32(payload.get_i32());
    let message_len = payload.get_u32() as usize;
    if message_len > payload.len() {
        return tonic::Status::internal("malformed refusal frame from the node");
    }
    let message = String::from_utf8_lossy(&payload.split_to(message_len)).into_owned();
    tonic::Status::with_details(code, message, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let mut wire = BytesMut::new();
        encode(&mut wire, Kind::Append, 7, b"hello");
        encode(&mut wire, Kind::Ping, 1 << 40, b"");
        encode_refusal_frame(&mut wire);
        let whole = wire.clone().freeze();
        // Fed one byte at a time, the decoder yields the same frames, never a partial one.
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in whole.iter() {
            buffer.put_u8(*byte);
            while let Some(frame) = decode(&mut buffer).expect("valid frames") {
                frames.push(frame);
            }
        }
        assert!(buffer.is_empty());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, Kind::Append);
        assert_eq!(frames[0].stream, 7);
        assert_eq!(&frames[0].payload[..], b"hello");
        assert_eq!((frames[1].kind, frames[1].stream), (Kind::Ping, 1 << 40));
        assert!(frames[1].payload.is_empty());
        let status = decode_refusal(frames[2].payload.clone());
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "fenced: epoch 3 is older");
        assert_eq!(status.details(), b"detail");
    }

    fn encode_refusal_frame(out: &mut BytesMut) {
        let status = tonic::Status::with_details(
            tonic::Code::FailedPrecondition,
            "fenced: epoch 3 is older",
            Bytes::from_static(b"detail"),
        );
        encode(out, Kind::Refused, 9, &encode_refusal(&status));
    }

    #[test]
    fn hostile_frames_are_errors_before_any_allocation() {
        let header = |len: u32, kind: u8| {
            let mut b = BytesMut::new();
            b.put_u32(len);
            b.put_u8(kind);
            b
        };
        assert_eq!(decode(&mut header(3, 1)), Err(FrameError::TooShort(3)));
        let mut huge = header(u32::MAX, 1);
        assert_eq!(
            decode(&mut huge),
            Err(FrameError::TooLong(u32::MAX as usize - 9))
        );
        assert!(
            huge.capacity() < 1 << 20,
            "nothing reserved for a frame refused"
        );
        assert_eq!(decode(&mut header(9, 0)), Err(FrameError::UnknownKind(0)));
        assert_eq!(
            decode(&mut header(9, 200)),
            Err(FrameError::UnknownKind(200))
        );
        // A valid header whose body has not arrived yet is no error.
        assert_eq!(decode(&mut header(100, 2)), Ok(None));
    }

    #[test]
    fn malformed_refusals_become_statuses_never_panics() {
        for payload in [
            &b""[..],
            &[0, 0, 0, 9, 0, 0],
            &[0, 0, 0, 9, 255, 255, 255, 255, 1],
        ] {
            let status = decode_refusal(Bytes::copy_from_slice(payload));
            assert_eq!(status.code(), tonic::Code::Internal);
        }
    }
}
