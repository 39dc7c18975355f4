//! One segment's append stream: the long-lived gRPC stream (`AppendStream`) its sender writes
//! batches into, and the task that reads the node's answers, in order, into the ledger.
//!
//! A stream saves each batch the cost of a new HTTP/2 request (headers, stream set-up, trailers)
//! on both sides; batches still pipeline, several in flight.
//!
//! Invariants:
//! - A batch is queued in `in_flight` before it is written to the stream, so every answer finds
//!   the batch it answers (the node answers in arrival order).
//! - A stream dies once: on an error status, an end, or no answer within [`APPEND_TIMEOUT`] while
//!   a batch waits. The reader then marks it dead and reports every unanswered batch through
//!   `on_error` (which rewinds the segment's "sent" mark so they go again), under the same lock
//!   a sender takes to queue a batch: a batch is either reported by the reader or refused (and
//!   reported) by [`AppendStream::send`], never lost.
//! - A stream its sender dropped (the writer is closing) reports nothing; nor does one the node
//!   ended while nothing was in flight (it ends streams idle for a while).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sixfold_proto::wire::{AppendRequest, AppendResponse};
use sixfold_proto::{Lsn, NodeId, PgId};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::refusal::{self, Refusal};
use crate::sender::{on_ack, on_error, on_fenced, Failure, APPEND_TIMEOUT, IN_FLIGHT_BATCHES_MAX};
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
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<InFlight>,
    /// Set once, by the reader when the stream fails or by the owner when it drops the stream.
    dead: bool,
}

pub struct AppendStream {
    requests: mpsc::Sender<AppendRequest>,
    queue: Arc<Mutex<Queue>>,
    /// Notified (once, with a stored permit) when the reader finds the stream dead: a sender
    /// waiting for room in `requests` stops waiting (the node no longer reads the stream, and
    /// the reader reported every batch queued).
    died: Arc<tokio::sync::Notify>,
    pg: PgId,
    node: NodeId,
    addr: String,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AppendStream {
    /// Opens a stream to segment `index` of `pg` (on the node at `addr`) and starts its reader.
    pub async fn open(
        shared: &Arc<Shared>,
        pg: PgId,
        node: NodeId,
        addr: &str,
    ) -> Result<AppendStream, String> {
        let mut client = shared.clients.get(addr)?;
        let (requests, outbound) = mpsc::channel(IN_FLIGHT_BATCHES_MAX + 1);
        let opened = tokio::time::timeout(
            APPEND_TIMEOUT,
            client.append_stream(ReceiverStream::new(outbound)),
        )
        .await;
        let answers = match opened {
            Err(_) => {
                return Err(format!(
                    "append stream not opened within {APPEND_TIMEOUT:?}"
                ))
            }
            Ok(Err(status)) => return Err(sixfold_transport::status_text(&status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        let queue = Arc::new(Mutex::new(Queue::default()));
        let died = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(read_answers(
            shared.clone(),
            pg,
            node,
            addr.to_owned(),
            answers,
            queue.clone(),
            died.clone(),
        ));
        Ok(AppendStream {
            requests,
            queue,
            died,
            pg,
            node,
            addr: addr.to_owned(),
        })
    }

    pub fn is_dead(&self) -> bool {
        lock(&self.queue).dead
    }

    /// Writes one batch to the stream. On a dead stream the batch is reported failed at once.
    pub async fn send(&self, shared: &Shared, request: AppendRequest, batch: InFlight) {
        let (last, records) = (batch.last, batch.records);
        {
            let mut queue = lock(&self.queue);
            if queue.dead {
                drop(queue);
                let failure = Failure {
                    records,
                    last,
                    started: Instant::now(),
                    error: "append stream closed".to_owned(),
                };
                on_error(shared, self.pg, self.node, &self.addr, failure);
                return;
            }
            queue.batches.push_back(batch);
        }
        // If the stream is gone, its reader sees it end and reports this batch with the rest;
        // a node that refused a batch stops reading the stream, so do not wait for room then.
        tokio::select! {
            _ = self.requests.send(request) => {}
            () = self.died.notified() => {}
        }
    }
}

impl Drop for AppendStream {
    fn drop(&mut self) {
        lock(&self.queue).dead = true;
    }
}

async fn read_answers(
    shared: Arc<Shared>,
    pg: PgId,
    node: NodeId,
    addr: String,
    mut answers: Streaming<AppendResponse>,
    queue: Arc<Mutex<Queue>>,
    died: Arc<tokio::sync::Notify>,
) {
    let error = loop {
        match tokio::time::timeout(APPEND_TIMEOUT, answers.message()).await {
            Err(_) => {
                let stalled = lock(&queue)
                    .batches
                    .front()
                    .is_some_and(|b| b.started.elapsed() >= APPEND_TIMEOUT);
                if stalled {
                    break format!("no acknowledgement within {APPEND_TIMEOUT:?}");
                }
            }
            Ok(Ok(Some(answer))) => {
                let Some(batch) = lock(&queue).batches.pop_front() else {
                    break "the node answered a batch that was never sent".to_owned();
                };
                let (elapsed, last) = (batch.started.elapsed(), batch.last);
                if elapsed >= SLOW_ACK {
                    tracing::debug!(%pg, node = %addr, last = %batch.last, ms = elapsed.as_millis() as u64, "slow acknowledgement");
                }
                // Release the batch's permit first: `on_ack` wakes the sender for records that
                // waited while the batch was in flight, and they go at once if it was the last.
                drop(batch);
                on_ack(&shared, pg, node, last, Lsn(answer.scl), elapsed);
            }
            Ok(Ok(None)) => {
                // A node ends a stream that carried no batch for a while: with nothing in
                // flight that is no failure (the next batch opens a new stream).
                let mut queue = lock(&queue);
                if queue.batches.is_empty() && !queue.dead {
                    queue.dead = true;
                    drop(queue);
                    died.notify_one();
                    tracing::debug!(%pg, node = %addr, "append stream ended by the node while idle");
                    return;
                }
                break "append stream closed by the node".to_owned();
            }
            Ok(Err(status)) if refusal::classify(&status) == Refusal::Fenced => {
                lock(&queue).dead = true;
                died.notify_one();
                on_fenced(&shared, &addr, status.message());
                return;
            }
            Ok(Err(status)) if refusal::classify(&status) == Refusal::StaleMembership => {
                crate::membership::on_stale(&shared, pg, &addr, status.message());
                break sixfold_transport::status_text(&status);
            }
            Ok(Err(status)) => break sixfold_transport::status_text(&status),
        }
    };
    let failed: Vec<InFlight> = {
        let mut queue = lock(&queue);
        if queue.dead {
            return; // dropped by its sender: the writer is closing
        }
        queue.dead = true;
        queue.batches.drain(..).collect()
    };
    died.notify_one();
    let failure = Failure {
        records: failed.iter().map(|b| b.records).sum(),
        last: failed.iter().map(|b| b.last).max().unwrap_or(Lsn::ZERO),
        started: Instant::now(),
        error,
    };
    on_error(&shared, pg, node, &addr, failure);
}
