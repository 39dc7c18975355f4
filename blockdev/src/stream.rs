//! One segment's append stream (`AppendStream`): a numbered stream on the writer's append
//! connection to the segment's node ([`crate::append_conn`]), which its sender writes batches
//! into; its [`Sink`] takes the node's answers, in order, into the ledger.
//!
//! Batches pipeline, several in flight; the node answers a stream's batches in arrival order.
//!
//! Invariants:
//! - A batch is queued in the sink before it is written to the connection, so every answer
//!   finds the batch it answers.
//! - A stream dies once: on a refusal, a failed connection, an answer for a batch never sent,
//!   or no answer within [`APPEND_TIMEOUT`] while a batch waits. The sink then marks it dead
//!   and reports every unanswered batch through `on_error` (which rewinds the segment's "sent"
//!   mark so they go again), under the same lock a sender takes to queue a batch: a batch is
//!   either reported by the sink or refused (and reported) by [`AppendStream::send`], never
//!   lost.
//! - A stream its sender dropped (the writer is closing) reports nothing; nor does one whose
//!   connection ended while nothing was in flight (a node ends connections idle for a while):
//!   the next batch opens a new stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prost::Message as _;
use sixfold_proto::wire::{AppendRequest, AppendResponse};
use sixfold_proto::{Lsn, NodeId, PgId};
use tokio::sync::OwnedSemaphorePermit;

use crate::append_conn::AppendConn;
use crate::refusal::{self, Refusal};
use crate::sender::{on_ack, on_error, on_fenced, Failure};
use crate::shared::Shared;

/// An acknowledgement that took this long is logged (a node whose disk or folding stalls).
const SLOW_ACK: std::time::Duration = std::time::Duration::from_millis(500);

/// A batch written to the stream and not yet answered.
pub struct InFlight {
    pub last: Lsn,
    pub records: usize,
    pub started: Instant,
    /// Bounds the batches in flight per segment; released with the answer.
    pub _permit: OwnedSemaphorePermit,
    /// The batch's place in its connection's budget (`AppendConn::reserve`); released with the
    /// answer.
    pub _budget: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<InFlight>,
    /// Set once: when the stream fails, or when its owner drops it.
    dead: bool,
}

/// Where a stream's answers go: its unanswered batches, and the segment they are for.
pub struct Sink {
    shared: Arc<Shared>,
    pg: PgId,
    node: NodeId,
    addr: String,
    queue: Mutex<Queue>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sink {
    /// The node acknowledged the oldest unanswered batch; an error if there is none.
    pub fn on_answer(&self, answer: AppendResponse) -> Result<(), String> {
        let Some(batch) = lock(&self.queue).batches.pop_front() else {
            return Err("the node answered a batch that was never sent".to_owned());
        };
        let (elapsed, last) = (batch.started.elapsed(), batch.last);
        if elapsed >= SLOW_ACK {
            tracing::debug!(pg = %self.pg, node = %self.addr, %last, ms = elapsed.as_millis() as u64, "slow acknowledgement");
        }
        // Release the batch's permit first: `on_ack` wakes the sender for records that waited
        // while the batch was in flight, and they go at once if it was the last.
        drop(batch);
        on_ack(
            &self.shared,
            self.pg,
            self.node,
            last,
            Lsn(answer.scl),
            elapsed,
        );
        Ok(())
    }

    /// The node refused the oldest unanswered batch: the stream is over.
    pub fn on_refused(&self, status: &tonic::Status) {
        match refusal::classify(status) {
            Refusal::Fenced => {
                lock(&self.queue).dead = true;
                on_fenced(&self.shared, &self.addr, status.message());
            }
            Refusal::StaleMembership => {
                crate::membership::on_stale(&self.shared, self.pg, &self.addr, status.message());
                self.fail(sixfold_transport::status_text(status));
            }
            Refusal::Other => self.fail(sixfold_transport::status_text(status)),
        }
    }

    /// The stream is over: its unanswered batches are reported failed (none: nothing to say).
    pub fn fail(&self, error: String) {
        let failed: Vec<InFlight> = {
            let mut queue = lock(&self.queue);
            if queue.dead {
                return; // dropped by its sender (the writer is closing), or failed already
            }
            queue.dead = true;
            queue.batches.drain(..).collect()
        };
        if failed.is_empty() {
            tracing::debug!(pg = %self.pg, node = %self.addr, "idle append stream ended: {error}");
            return;
        }
        let failure = Failure {
            records: failed.iter().map(|b| b.records).sum(),
            last: failed.iter().map(|b| b.last).max().unwrap_or(Lsn::ZERO),
            started: Instant::now(),
            error,
        };
        on_error(&self.shared, self.pg, self.node, &self.addr, failure);
    }

    /// When the oldest unanswered batch was sent.
    pub fn oldest_started(&self) -> Option<Instant> {
        lock(&self.queue).batches.front().map(|b| b.started)
    }
}

pub struct AppendStream {
    conn: Arc<AppendConn>,
    stream: u64,
    sink: Arc<Sink>,
}

impl AppendStream {
    /// Opens a stream to the segment of `pg` on the node at `addr`, on the writer's connection
    /// to that node (connecting if needed).
    pub async fn open(
        shared: &Arc<Shared>,
        pg: PgId,
        node: NodeId,
        addr: &str,
    ) -> Result<AppendStream, String> {
        let conn = shared.appends.get(addr).await?;
        let sink = Arc::new(Sink {
            shared: shared.clone(),
            pg,
            node,
            addr: addr.to_owned(),
            queue: Mutex::new(Queue::default()),
        });
        let stream = conn.register(sink.clone())?;
        Ok(AppendStream { conn, stream, sink })
    }

    pub fn is_dead(&self) -> bool {
        lock(&self.sink.queue).dead
    }

    /// Writes one batch to the stream, once its connection's budget has room for it. On a dead
    /// stream or connection the batch is reported failed at once.
    pub async fn send(&self, request: &AppendRequest, mut batch: InFlight) {
        let reserved = self.conn.reserve(request.encoded_len()).await;
        let sink = &self.sink;
        let error = match reserved {
            Ok(budget) => {
                batch._budget = Some(budget);
                batch.started = Instant::now(); // its wait for answers starts now
                let mut queue = lock(&sink.queue);
                if queue.dead {
                    "append stream closed".to_owned()
                } else {
                    queue.batches.push_back(batch);
                    drop(queue);
                    // A connection that died meanwhile failed the stream, this batch with it.
                    self.conn.send(self.stream, request);
                    return;
                }
            }
            Err(error) => error,
        };
        let failure = Failure {
            records: batch.records,
            last: batch.last,
            started: Instant::now(),
            error,
        };
        on_error(&sink.shared, sink.pg, sink.node, &sink.addr, failure);
    }
}

impl Drop for AppendStream {
    fn drop(&mut self) {
        lock(&self.sink.queue).dead = true;
        self.conn.unregister(self.stream);
    }
}
