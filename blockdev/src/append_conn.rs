//! The writer's append connections ([`sixfold_transport::frames`]): one per node, carrying the
//! append stream of every segment this writer has on that node ([`crate::stream`]).
//!
//! A connection has two tasks. Its writer task writes whatever the segments' senders put in
//! the connection's outbox, all of it in one write (frames of several PGs share a TLS record
//! and a syscall). Its reader task hands each answer to the stream it answers, pings the node
//! when it has been quiet for [`KEEP_ALIVE`]'s interval while a batch waits, and fails a
//! stream whose oldest batch waited [`APPEND_TIMEOUT`].
//!
//! Invariants:
//! - A connection dies once ([`AppendConn::fail`]): a read or write error, the node's refusal
//!   of the connection, a ping unanswered within [`KEEP_ALIVE`]'s timeout. Every stream then
//!   registered on it fails with the reason (reporting its unanswered batches), and no stream
//!   registers on it again: the next batch of each segment opens a new connection.
//! - A stream is registered under the connection's lock, and a dying connection takes the
//!   registered streams under the same lock: each stream is either failed by the connection or
//!   refused at registration, never forgotten.
//! - An answer for a stream no longer registered is ignored: the stream failed (its batches
//!   were reported then), or its owner dropped it or it was fenced (nothing is reported then:
//!   the writer is closing or may never write again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use prost::Message as _;
use sixfold_proto::wire::{AppendRequest, AppendResponse};
use sixfold_transport::frames::{self, Kind};
use sixfold_transport::Security;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tracing::debug;

use crate::clients::{CONNECT_TIMEOUT, KEEP_ALIVE};
use crate::sender::APPEND_TIMEOUT;
use crate::stream::Sink;

/// How often the reader looks at its pings and its streams' oldest batches: what it adds, at
/// most, to the time a silent node takes to be found ([`KEEP_ALIVE`]'s interval and timeout).
const TICK: std::time::Duration = std::time::Duration::from_millis(50);
/// What a connection may have sent and not had answered, in KiB; a batch counts at least
/// [`BATCH_KIB_MIN`], so at most 768 batches. Below what the node admits on a connection
/// (1,024 batches, 32 MiB): the node never has to stop reading it, so a ping always gets
/// through to be answered, however slow its store.
pub const CONN_BUDGET_KIB: u32 = 24 << 10;
pub const BATCH_KIB_MIN: u32 = 32;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This writer's append connections, one per node address.
pub struct AppendConns {
    security: Security,
    slots: Mutex<HashMap<String, Slot>>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Arc<AppendConn>>,
    /// Held while connecting: the senders of many segments of one node wait for one attempt.
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// The last failed attempt: senders that waited for it take its error.
    failed: Option<(Instant, String)>,
}

impl AppendConns {
    pub fn new(security: Security) -> AppendConns {
        AppendConns {
            security,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The live connection to the node at `addr`, connecting if there is none.
    pub async fn get(&self, addr: &str) -> Result<Arc<AppendConn>, String> {
        let asked = Instant::now();
        let connecting = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(addr.to_owned()).or_default();
            match &slot.conn {
                Some(conn) if !conn.is_dead() => return Ok(conn.clone()),
                _ => slot.connecting.clone(),
            }
        };
        let _connecting = connecting.lock().await;
        {
            let slots = lock(&self.slots);
            if let Some(slot) = slots.get(addr) {
                if let Some(conn) = slot.conn.as_ref().filter(|c| !c.is_dead()) {
                    return Ok(conn.clone());
                }
                if let Some((at, error)) = &slot.failed {
                    if *at >= asked {
                        return Err(error.clone());
                    }
                }
            }
        }
        let opened = sixfold_transport::connect_append(addr, &self.security, CONNECT_TIMEOUT).await;
        let mut slots = lock(&self.slots);
        let slot = slots.entry(addr.to_owned()).or_default();
        match opened {
            Ok(io) => {
                let conn = AppendConn::start(io, addr);
                slot.conn = Some(conn.clone());
                slot.failed = None;
                Ok(conn)
            }
            Err(e) => {
                let error = format!("append connection to {addr}: {e}");
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }
}

impl Drop for AppendConns {
    fn drop(&mut self) {
        for slot in lock(&self.slots).values() {
            if let Some(conn) = &slot.conn {
                conn.close();
            }
        }
    }
}

/// One connection to a node.
pub struct AppendConn {
    addr: String,
    state: Mutex<ConnState>,
    /// [`CONN_BUDGET_KIB`]; closed when the connection dies.
    budget: Arc<Semaphore>,
    /// Wakes the writer task: the outbox has frames (or the connection died).
    wake: Notify,
}

struct ConnState {
    dead: bool,
    next_stream: u64,
    streams: HashMap<u64, Arc<Sink>>,
    /// Frames for the writer task to write.
    outbox: BytesMut,
    tasks: Vec<AbortHandle>,
}

impl AppendConn {
    fn start(io: sixfold_transport::ClientIo, addr: &str) -> Arc<AppendConn> {
        let conn = Arc::new(AppendConn {
            addr: addr.to_owned(),
            budget: Arc::new(Semaphore::new(CONN_BUDGET_KIB as usize)),
            state: Mutex::new(ConnState {
                dead: false,
                next_stream: 1,
                streams: HashMap::new(),
                outbox: BytesMut::new(),
                tasks: Vec::new(),
            }),
            wake: Notify::new(),
        });
        let (read, write) = tokio::io::split(io);
        let reader = tokio::spawn(read_answers(conn.clone(), read));
        let writer = tokio::spawn(write_frames(conn.clone(), write));
        let mut state = lock(&conn.state);
        state.tasks = vec![reader.abort_handle(), writer.abort_handle()];
        drop(state);
        conn
    }

    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// Registers `sink` as a new stream on this connection: its number, or an error if the
    /// connection is dead.
    pub fn register(&self, sink: Arc<Sink>) -> Result<u64, String> {
        let mut state = lock(&self.state);
        if state.dead {
            return Err(format!("append connection to {} closed", self.addr));
        }
        let stream = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(stream, sink);
        Ok(stream)
    }

    /// A place in the connection's budget for a batch of `bytes`, held until it is answered;
    /// waits while the budget is spent; an error once the connection died.
    pub async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, String> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(BATCH_KIB_MIN, CONN_BUDGET_KIB);
        self.budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| format!("append connection to {} closed", self.addr))
    }

    pub fn unregister(&self, stream: u64) {
        lock(&self.state).streams.remove(&stream);
    }

    /// Queues a batch for the writer task.
    pub fn send(&self, stream: u64, request: &AppendRequest) {
        let mut state = lock(&self.state);
        if state.dead {
            return; // the dying connection failed (or will fail) the stream, with this batch
        }
        frames::encode_message(&mut state.outbox, Kind::Append, stream, request);
        drop(state);
        self.wake.notify_one();
    }

    fn sink(&self, stream: u64) -> Option<Arc<Sink>> {
        lock(&self.state).streams.get(&stream).cloned()
    }

    /// The connection dies: every stream on it fails with `error`.
    fn fail(&self, error: &str) {
        let streams = {
            let mut state = lock(&self.state);
            if state.dead {
                return;
            }
            state.dead = true;
            state.outbox.clear();
            for task in state.tasks.drain(..) {
                task.abort();
            }
            std::mem::take(&mut state.streams)
        };
        self.budget.close();
        self.wake.notify_one();
        debug!(node = %self.addr, streams = streams.len(), "append connection closed: {error}");
        for sink in streams.into_values() {
            sink.fail(error.to_owned());
        }
    }

    /// Closes the connection without failing its streams (the writer is closing).
    fn close(&self) {
        let mut state = lock(&self.state);
        state.dead = true;
        state.streams.clear();
        for task in state.tasks.drain(..) {
            task.abort();
        }
        self.budget.close();
    }
}

async fn write_frames(conn: Arc<AppendConn>, mut io: WriteHalf<sixfold_transport::ClientIo>) {
    loop {
        conn.wake.notified().await;
        let out = {
            let mut state = lock(&conn.state);
            if state.dead {
                return;
            }
            std::mem::take(&mut state.outbox)
        };
        if out.is_empty() {
            continue;
        }
        // Flushed: a TLS stream may keep encrypted bytes back when the socket is full, and
        // nothing else would push them out before the next frames.
        let written = async {
            io.write_all(&out).await?;
            io.flush().await
        };
        if let Err(e) = written.await {
            conn.fail(&format!("writing to the node: {e}"));
            return;
        }
    }
}

async fn read_answers(conn: Arc<AppendConn>, mut io: ReadHalf<sixfold_transport::ClientIo>) {
    let mut buffer = BytesMut::with_capacity(16 << 10);
    let mut last_read = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let error = loop {
        tokio::select! {
            read = io.read_buf(&mut buffer) => match read {
                Ok(0) => break "closed by the node".to_owned(),
                Err(e) => break format!("reading from the node: {e}"),
                Ok(_) => {
                    last_read = Instant::now();
                    if let Err(error) = take_frames(&conn, &mut buffer, &mut ping_sent) {
                        break error;
                    }
                }
            },
            _ = ticks.tick() => {
                if let Some(sent) = ping_sent {
                    if sent.elapsed() >= KEEP_ALIVE.timeout {
                        break format!("no answer to a ping within {:?}", KEEP_ALIVE.timeout);
                    }
                }
                let waiting = time_out_streams(&conn);
                if waiting && ping_sent.is_none() && last_read.elapsed() >= KEEP_ALIVE.interval {
                    let mut state = lock(&conn.state);
                    frames::encode(&mut state.outbox, Kind::Ping, 0, &[]);
                    drop(state);
                    conn.wake.notify_one();
                    ping_sent = Some(Instant::now());
                }
            }
        }
    };
    conn.fail(&error);
}

/// Hands every whole frame in `buffer` to its stream.
fn take_frames(
    conn: &AppendConn,
    buffer: &mut BytesMut,
    ping_sent: &mut Option<Instant>,
) -> Result<(), String> {
    while let Some(frame) = frames::decode(buffer).map_err(|e| format!("from the node: {e}"))? {
        match frame.kind {
            Kind::Pong => *ping_sent = None,
            Kind::Ack => {
                let answer = AppendResponse::decode(frame.payload)
                    .map_err(|e| format!("malformed AppendResponse from the node: {e}"))?;
                if let Some(sink) = conn.sink(frame.stream) {
                    if let Err(error) = sink.on_answer(answer) {
                        conn.unregister(frame.stream);
                        sink.fail(error);
                    }
                }
            }
            Kind::Refused if frame.stream == 0 => {
                let status = frames::decode_refusal(frame.payload);
                return Err(format!(
                    "the node refused the connection: {}",
                    sixfold_transport::status_text(&status)
                ));
            }
            Kind::Refused => {
                if let Some(sink) = conn.sink(frame.stream) {
                    conn.unregister(frame.stream);
                    sink.on_refused(&frames::decode_refusal(frame.payload));
                }
            }
            Kind::Append | Kind::Ping => {
                return Err(format!("the node sent a {:?} frame", frame.kind));
            }
        }
    }
    Ok(())
}

/// Fails each stream whose oldest batch has waited [`APPEND_TIMEOUT`]; whether any batch still
/// waits on the connection.
fn time_out_streams(conn: &AppendConn) -> bool {
    let streams: Vec<(u64, Arc<Sink>)> = lock(&conn.state)
        .streams
        .iter()
        .map(|(id, sink)| (*id, sink.clone()))
        .collect();
    let mut waiting = false;
    for (id, sink) in streams {
        match sink.oldest_started() {
            Some(started) if started.elapsed() >= APPEND_TIMEOUT => {
                conn.unregister(id);
                sink.fail(format!("no acknowledgement within {APPEND_TIMEOUT:?}"));
            }
            Some(_) => waiting = true,
            None => {}
        }
    }
    waiting
}
