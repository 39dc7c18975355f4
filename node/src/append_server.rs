//! The node's side of append connections ([`sixfold_transport::frames`]): one task per
//! connection reads a writer's batches, hands each to the store as it arrives (several share a
//! group commit), and writes each answer back as soon as the store has hardened the batch and
//! every earlier batch of its stream is answered ([`crate::admission`]).
//!
//! This is the path every write takes, so it is lean: no task per batch, no channel between the
//! connection and the store's futures, one write for all the answers that are due.
//!
//! Bad input never panics the node and loses nothing: a caller whose certificate is not a
//! writer's, a wrong preface, a malformed frame or an unexpected kind gets a `Refused` frame on
//! stream 0 and the connection closes; a batch the store refuses (or one that does not decode)
//! gets a `Refused` frame on its stream, as a unary call would get its status. Liveness:
//! `Ping`s are answered as soon as they are read, even while admission is full: the server
//! reads [`READ_AHEAD_BYTES`] beyond it, and a writer keeps less than the admission limits in
//! flight on a connection (`blockdev::append_conn::CONN_BUDGET_KIB`), so a slow store never
//! leaves a ping unread. A connection with nothing in flight and no frame for `idle`, or whose
//! writer takes no answer for `stall`, is closed.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use prost::Message as _;
use sixfold_proto::wire::{AppendRequest, AppendResponse};
use sixfold_transport::frames::{self, Frame, Kind, APPEND_PREFACE};
use sixfold_transport::{AppendIncoming, Peer, Role};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::server::Connected as _;
use tonic::Status;
use tracing::{debug, warn};

use crate::admission::{Admission, Limits};
use crate::store::Store;

/// What one connection may have admitted and not yet hardened: as much as gRPC's connection
/// window let one writer connection carry, and as many batches as the writer ever has in
/// flight to one node for a few hundred PGs.
pub const ADMISSION_LIMITS: Limits = Limits {
    batches: 1024,
    bytes: 32 << 20,
};
/// Frames read and waiting for admission: beyond this (plus the frame being read) the
/// connection is not read until admission takes some. Reading ahead lets `Ping`s through while
/// admission is full (a slow disk is no silent node).
const READ_AHEAD_BYTES: usize = 8 << 20;

/// How long the pieces of a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The preface, after the connection is accepted.
    pub preface: Duration,
    /// No frame and nothing in flight for this long: the connection is closed.
    pub idle: Duration,
    /// Answers not taken by the writer for this long: the connection is closed.
    pub stall: Duration,
}

pub const TIMING: Timing = Timing {
    preface: sixfold_transport::HANDSHAKE_TIMEOUT,
    idle: crate::service::APPEND_STREAM_IDLE_MAX,
    stall: crate::service::APPEND_STREAM_STALL_MAX,
};

/// Serves the append connections `incoming` yields until it ends or this task is aborted
/// (which aborts every connection's task).
pub async fn serve(store: Store, mut incoming: AppendIncoming) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            io = incoming.recv() => {
                let Some(io) = io else { break };
                let peer = io.connect_info();
                let store = store.clone();
                let append = move |request| {
                    let store = store.clone();
                    async move { crate::service::append_one(&store, request).await }
                };
                connections.spawn(serve_connection(io, peer, append, TIMING));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The writer closed it, or it failed: nothing to say.
    Quiet(String),
    /// The writer broke the protocol: tell it why on stream 0, then close.
    Refuse(Status),
}

/// Serves one append connection: `append` hardens a batch and answers its response or the
/// status that refuses it.
pub async fn serve_connection<IO, F, Fut>(mut io: IO, peer: Peer, append: F, timing: Timing)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(AppendRequest) -> Fut,
    Fut: Future<Output = Result<AppendResponse, Status>>,
{
    let from = peer
        .addr
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let end = match sixfold_transport::access::role_allows(&peer, &[Role::Writer], "send appends") {
        Err(status) => End::Refuse(status),
        Ok(()) => match read_preface(&mut io, timing.preface).await {
            Err(end) => end,
            Ok(()) => run(&mut io, &append, timing).await,
        },
    };
    match end {
        End::Quiet(why) => debug!(peer = %from, "append connection closed: {why}"),
        End::Refuse(status) => {
            warn!(peer = %from, "append connection refused: {}", status.message());
            let mut out = BytesMut::new();
            frames::encode(&mut out, Kind::Refused, 0, &frames::encode_refusal(&status));
            let _ = tokio::time::timeout(timing.stall, io.write_all(&out)).await;
            let _ = tokio::time::timeout(timing.stall, io.shutdown()).await;
        }
    }
}

async fn read_preface<IO: AsyncRead + Unpin>(io: &mut IO, limit: Duration) -> Result<(), End> {
    let mut preface = [0u8; APPEND_PREFACE.len()];
    match tokio::time::timeout(limit, io.read_exact(&mut preface)).await {
        Err(_) => Err(End::Quiet(format!("no preface within {limit:?}"))),
        Ok(Err(e)) => Err(End::Quiet(format!("reading the preface: {e}"))),
        Ok(Ok(_)) if &preface == APPEND_PREFACE => Ok(()),
        Ok(Ok(_)) => Err(End::Refuse(Status::invalid_argument(
            "not a sixfold append connection (wrong preface)",
        ))),
    }
}

/// The connection's loop, after the preface.
async fn run<IO, F, Fut>(io: &mut IO, append: &F, timing: Timing) -> End
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(AppendRequest) -> Fut,
    Fut: Future<Output = Result<AppendResponse, Status>>,
{
    let mut admission = Admission::new(ADMISSION_LIMITS);
    let mut running = FuturesUnordered::new();
    let mut buffer = BytesMut::with_capacity(64 << 10);
    let mut waiting: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
    let mut waiting_bytes = 0usize;
    let mut out = BytesMut::new();
    let mut last_frame = Instant::now();
    loop {
        // Everything whole in the buffer: pings answered now, batches queued for admission.
        loop {
            match frames::decode(&mut buffer) {
                Ok(None) => break,
                Err(e) => return End::Refuse(Status::invalid_argument(e.to_string())),
                Ok(Some(frame)) => match frame.kind {
                    Kind::Ping => frames::encode(&mut out, Kind::Pong, frame.stream, &[]),
                    Kind::Append => {
                        waiting_bytes += frame.payload.len();
                        waiting.push_back(frame);
                    }
                    other => {
                        return End::Refuse(Status::invalid_argument(format!(
                            "a writer does not send {other:?} frames"
                        )))
                    }
                },
            }
        }
        while admission.wants_more() {
            let Some(frame) = waiting.pop_front() else {
                break;
            };
            waiting_bytes -= frame.payload.len();
            let ticket = admission.handle_batch(frame.stream, frame.payload.len());
            match AppendRequest::decode(frame.payload) {
                Ok(request) => {
                    let batch = append(request);
                    running.push(async move { (ticket, batch.await) });
                }
                Err(e) => admission.handle_done(
                    ticket,
                    Err(Status::invalid_argument(format!(
                        "malformed AppendRequest: {e}"
                    ))),
                ),
            }
        }
        while let Some((stream, outcome)) = admission.poll_answer() {
            match outcome {
                Ok(response) => frames::encode_message(&mut out, Kind::Ack, stream, &response),
                Err(status) => frames::encode(
                    &mut out,
                    Kind::Refused,
                    stream,
                    &frames::encode_refusal(&status),
                ),
            }
        }
        if !out.is_empty() {
            // Flushed: a TLS stream may keep encrypted bytes back when the socket is full.
            let written = async {
                io.write_all(&out).await?;
                io.flush().await
            };
            match tokio::time::timeout(timing.stall, written).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(e)) => return End::Quiet(format!("writing answers: {e}")),
                Err(_) => {
                    warn!(
                        "append connection closed: its writer took no answer for {:?}",
                        timing.stall
                    );
                    return End::Quiet("stalled".to_owned());
                }
            }
        }
        let read_more = waiting_bytes < READ_AHEAD_BYTES;
        let idle_at = last_frame + timing.idle;
        tokio::select! {
            read = io.read_buf(&mut buffer), if read_more => match read {
                Ok(0) => return End::Quiet("closed by the writer".to_owned()),
                Ok(_) => last_frame = Instant::now(),
                Err(e) => return End::Quiet(format!("reading: {e}")),
            },
            Some((ticket, outcome)) = running.next(), if !running.is_empty() => {
                admission.handle_done(ticket, outcome);
            }
            () = tokio::time::sleep_until(idle_at), if running.is_empty() && waiting.is_empty() => {
                return End::Quiet(format!("no batch for {:?}", timing.idle));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Notify;

    const TEST_TIMING: Timing = Timing {
        preface: Duration::from_secs(5),
        idle: Duration::from_secs(60),
        stall: Duration::from_secs(5),
    };

    fn plaintext_peer() -> Peer {
        Peer {
            addr: None,
            tls: false,
            role: None,
        }
    }

    async fn next_frame(io: &mut tokio::io::DuplexStream, buffer: &mut BytesMut) -> Option<Frame> {
        loop {
            if let Some(frame) = frames::decode(buffer).expect("the node sends valid frames") {
                return Some(frame);
            }
            if io.read_buf(buffer).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A connection served over an in-memory pipe of `capacity` bytes: the writer's end, and
    /// the serving task.
    fn start<F, Fut>(
        capacity: usize,
        peer: Peer,
        append: F,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>)
    where
        F: Fn(AppendRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AppendResponse, Status>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(capacity);
        let served = tokio::spawn(serve_connection(server, peer, append, TEST_TIMING));
        (client, served)
    }

    fn batch(out: &mut BytesMut, stream: u64, scl: u64) {
        let request = AppendRequest {
            writer_vcl: scl,
            ..AppendRequest::default()
        };
        frames::encode_message(out, Kind::Append, stream, &request);
    }

    /// An `Ack` leaves only once the store has finished the batch: with the store's work held
    /// back, a ping is answered but no batch is; once released, each stream's batches are
    /// answered in order. (A variant that answered at admission fails the first assertion.)
    #[tokio::test]
    async fn a_batch_is_answered_only_after_the_store_finishes_it() {
        let gate = Arc::new(Notify::new());
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let append = {
            let (gate, released) = (gate.clone(), released.clone());
            move |request: AppendRequest| {
                let (gate, released) = (gate.clone(), released.clone());
                async move {
                    if !released.load(std::sync::atomic::Ordering::SeqCst) {
                        gate.notified().await;
                    }
                    Ok(AppendResponse {
                        scl: request.writer_vcl,
                    })
                }
            }
        };
        let (mut client, served) = start(1 << 20, plaintext_peer(), append);
        let mut out = BytesMut::new();
        out.extend_from_slice(APPEND_PREFACE);
        batch(&mut out, 1, 10);
        batch(&mut out, 2, 20);
        batch(&mut out, 1, 11);
        frames::encode(&mut out, Kind::Ping, 42, &[]);
        client.write_all(&out).await.expect("write");
        let mut buffer = BytesMut::new();
        let pong = next_frame(&mut client, &mut buffer).await.expect("a pong");
        assert_eq!((pong.kind, pong.stream), (Kind::Pong, 42));
        let early = tokio::time::timeout(
            Duration::from_millis(200),
            next_frame(&mut client, &mut buffer),
        )
        .await;
        assert!(
            early.is_err(),
            "answered before the store finished: {early:?}"
        );
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        gate.notify_waiters();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let frame = next_frame(&mut client, &mut buffer)
                .await
                .expect("an answer");
            assert_eq!(frame.kind, Kind::Ack);
            let response = AppendResponse::decode(frame.payload).expect("a response");
            answers.push((frame.stream, response.scl));
        }
        let stream_1: Vec<_> = answers.iter().filter(|a| a.0 == 1).map(|a| a.1).collect();
        assert_eq!(stream_1, vec![10, 11], "stream 1 answered in order");
        assert!(answers.contains(&(2, 20)));
        drop(client);
        served
            .await
            .expect("the connection task ends when the writer goes");
    }

    /// With admission full (more bytes than it admits, none hardened: a stalled store), a ping
    /// behind them is still read and answered: the writer's liveness check must not kill a
    /// connection whose node is only slow. (Seen failing with the server reading nothing
    /// beyond what admission takes.)
    #[tokio::test]
    async fn a_ping_is_answered_while_admission_is_full() {
        let stalled =
            |_request: AppendRequest| std::future::pending::<Result<AppendResponse, Status>>();
        let (client, served) = start(1 << 20, plaintext_peer(), stalled);
        // 1 MiB batches up to 4 MiB past admission's byte limit, then a ping: more than the
        // pipe holds, so the node must read past its admission to reach the ping.
        let mut out = BytesMut::new();
        out.extend_from_slice(APPEND_PREFACE);
        let big = AppendRequest {
            segment_addr: "x".repeat(1 << 20),
            ..AppendRequest::default()
        };
        for i in 0..(ADMISSION_LIMITS.bytes >> 20) + 4 {
            frames::encode_message(&mut out, Kind::Append, 1 + i as u64 % 7, &big);
        }
        frames::encode(&mut out, Kind::Ping, 9, &[]);
        let (mut read, mut write) = tokio::io::split(client);
        let writer = tokio::spawn(async move { write.write_all(&out).await });
        let mut buffer = BytesMut::new();
        let pong = loop {
            if let Some(frame) = frames::decode(&mut buffer).expect("valid frames") {
                break frame;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), read.read_buf(&mut buffer))
                .await
                .expect("a pong within 5 s")
                .expect("read");
            assert!(n > 0, "the node closed the connection");
        };
        assert_eq!((pong.kind, pong.stream), (Kind::Pong, 9));
        writer
            .await
            .expect("writer task")
            .expect("every byte taken");
        drop(read);
        served.abort();
    }

    /// Hostile input: a wrong preface, a malformed frame, an unexpected kind and a batch that
    /// does not decode each get a clear refusal, and the node goes on (no panic).
    #[tokio::test]
    async fn bad_input_is_refused_with_a_reason() {
        let append = |_request: AppendRequest| async { Ok(AppendResponse { scl: 1 }) };
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (b"PRI * HTTP/2.0".to_vec(), 0, "wrong preface"),
            (
                [&APPEND_PREFACE[..], &[0, 0, 0, 1, 1]].concat(),
                0,
                "frame length",
            ),
            (
                [
                    &APPEND_PREFACE[..],
                    &[0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 0],
                ]
                .concat(),
                0,
                "Ack",
            ),
            (
                [
                    &APPEND_PREFACE[..],
                    &[0, 0, 0, 11, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0xff, 0xff],
                ]
                .concat(),
                5,
                "malformed AppendRequest",
            ),
        ];
        for (input, stream, reason) in cases {
            let (mut client, served) = start(1 << 16, plaintext_peer(), append);
            client.write_all(&input).await.expect("write");
            let mut buffer = BytesMut::new();
            let frame = next_frame(&mut client, &mut buffer)
                .await
                .expect("a refusal");
            assert_eq!(
                (frame.kind, frame.stream),
                (Kind::Refused, stream),
                "{reason}"
            );
            let status = frames::decode_refusal(frame.payload);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{reason}");
            assert!(
                status.message().contains(reason),
                "{reason}: {}",
                status.message()
            );
            drop(client);
            served.await.expect("no panic");
        }
    }

    /// A certificate without the writer role is refused before anything is read.
    #[tokio::test]
    async fn only_a_writer_may_append() {
        let append = |_request: AppendRequest| async { Ok(AppendResponse { scl: 1 }) };
        let peer = Peer {
            addr: None,
            tls: true,
            role: Some(Role::Admin),
        };
        let (mut client, served) = start(1 << 16, peer, append);
        let mut buffer = BytesMut::new();
        let frame = next_frame(&mut client, &mut buffer)
            .await
            .expect("a refusal");
        assert_eq!((frame.kind, frame.stream), (Kind::Refused, 0));
        assert_eq!(
            frames::decode_refusal(frame.payload).code(),
            tonic::Code::PermissionDenied
        );
        served.await.expect("no panic");
    }
}
