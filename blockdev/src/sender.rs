//! Segment senders: one task per segment streams its PG's records to the node in batches, with
//! several batches in flight (pipelined), and feeds the acknowledged SCLs back into the ledger.
//!
//! A failed or timed-out request marks the segment down, rewinds what was "sent" to what the
//! segment acknowledged (so unacknowledged records go again; nodes discard duplicates by LSN) and
//! backs off. Records the writer has already released (durable elsewhere) are not resent: the
//! node fills such holes from its peers (gossip), named in every batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sixfold_proto::wire::{AppendRequest, SegmentRef};
use sixfold_proto::{Lsn, PgId};
use tokio::sync::Semaphore;
use tracing::{debug, info, trace, warn};

use crate::shared::{Shared, SEGMENT_BACKOFF_MAX};

/// Largest batch, in records and in payload bytes.
pub const BATCH_RECORDS_MAX: usize = 512;
pub const BATCH_BYTES_MAX: usize = 2 << 20;
/// Batches in flight per segment.
pub const IN_FLIGHT_BATCHES_MAX: usize = 4;
/// How often an idle segment that is down or behind the PGCL gets a heartbeat.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A batch not acknowledged within this time counts as failed.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn spawn_senders(shared: &Arc<Shared>, pg: PgId, segments: usize) {
    for index in 0..segments {
        tokio::spawn(segment_sender(shared.clone(), pg, index));
    }
}

enum Next {
    Send(AppendRequest, String, Lsn),
    Wait(Arc<tokio::sync::Notify>, Option<Duration>),
    Stop,
}

async fn segment_sender(shared: Arc<Shared>, pg: PgId, index: usize) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES_MAX));
    loop {
        let next = {
            let mut state = shared.lock();
            let vcl = state.ledger.vcl();
            let vdl = state.ledger.vdl();
            let closed = state.closed || state.fenced;
            let (pgcl, acked) = state
                .ledger
                .pg(pg)
                .map(|chain| (chain.pgcl, chain.scls[index]))
                .unwrap_or((Lsn::ZERO, Lsn::ZERO));
            match state.pgs.get_mut(&pg) {
                None => Next::Stop,
                Some(_) if closed => Next::Stop,
                Some(queue) => {
                    let peers = queue.peers_of(index);
                    let link = &mut queue.segments[index];
                    let now = Instant::now();
                    match link.retry_at {
                        Some(at) if at > now => Next::Wait(link.wake.clone(), Some(at - now)),
                        _ => {
                            let start = queue.records.partition_point(|r| Lsn(r.lsn) <= link.sent);
                            let mut bytes = 0;
                            let mut records = Vec::new();
                            for record in queue.records.iter().skip(start) {
                                if records.len() >= BATCH_RECORDS_MAX || bytes >= BATCH_BYTES_MAX {
                                    break;
                                }
                                bytes += record
                                    .ranges
                                    .iter()
                                    .map(|r| r.data.len() + 8)
                                    .sum::<usize>()
                                    + 48;
                                records.push((**record).clone());
                            }
                            let request = |records| AppendRequest {
                                segment: Some(SegmentRef {
                                    volume: shared.volume.clone(),
                                    pg: pg.0,
                                }),
                                epoch: shared.epoch.0,
                                records,
                                peers,
                                writer_vcl: vcl.0,
                                writer_vdl: vdl.0,
                                pgcl: pgcl.0,
                            };
                            match records.last() {
                                Some(last) => {
                                    let last = Lsn(last.lsn);
                                    link.sent = last;
                                    link.probed_at = Some(now);
                                    Next::Send(request(records), link.addr.clone(), last)
                                }
                                None => {
                                    // Nothing to send. A segment that is down, or behind the
                                    // PGCL, gets a heartbeat: it tells the writer when it is back
                                    // and tells the node how far the PG is durable, so that it
                                    // fills its gap from its peers.
                                    let due = link
                                        .probed_at
                                        .is_none_or(|at| now.duration_since(at) >= PROBE_INTERVAL);
                                    if (!link.up || acked < pgcl) && due {
                                        link.probed_at = Some(now);
                                        Next::Send(
                                            request(Vec::new()),
                                            link.addr.clone(),
                                            link.sent,
                                        )
                                    } else {
                                        Next::Wait(link.wake.clone(), Some(PROBE_INTERVAL))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        match next {
            Next::Stop => return,
            Next::Wait(wake, timeout) => {
                trace!(%pg, index, ?timeout, "sender waiting");
                let timeout = timeout.unwrap_or(Duration::from_secs(1));
                let _ = tokio::time::timeout(timeout, wake.notified()).await;
            }
            Next::Send(request, addr, last) => {
                trace!(%pg, node = %addr, records = request.records.len(), %last, "sending batch");
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    send_batch(&shared, pg, index, &addr, request, last).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn send_batch(
    shared: &Arc<Shared>,
    pg: PgId,
    index: usize,
    addr: &str,
    request: AppendRequest,
    last: Lsn,
) {
    let started = Instant::now();
    let records = request.records.len();
    let result = match shared.clients.get(addr) {
        Err(error) => Err(error),
        Ok(mut client) => {
            match tokio::time::timeout(APPEND_TIMEOUT, client.append(request)).await {
                Err(_) => Err(format!("no acknowledgement within {APPEND_TIMEOUT:?}")),
                Ok(Err(status))
                    if status.code() == tonic::Code::FailedPrecondition
                        && status.message().contains("fenced") =>
                {
                    on_fenced(shared, addr, status.message());
                    return;
                }
                Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                Ok(Ok(response)) => Ok(Lsn(response.into_inner().scl)),
            }
        }
    };
    match result {
        Ok(scl) => on_ack(shared, pg, index, scl, started.elapsed()),
        Err(error) => on_error(shared, pg, index, addr, records, last, error),
    }
}

fn on_ack(shared: &Shared, pg: PgId, index: usize, scl: Lsn, elapsed: Duration) {
    let mut state = shared.lock();
    let vdl_moved = state.ledger.handle_ack(pg, index, scl);
    let pgcl = state.ledger.pg(pg).map(|c| c.pgcl).unwrap_or(Lsn::ZERO);
    if let Some(queue) = state.pgs.get_mut(&pg) {
        let link = &mut queue.segments[index];
        if !link.up {
            info!(volume = %shared.volume, %pg, node = %link.addr, %scl, "segment is back");
        }
        link.up = true;
        link.retry_at = None;
        link.backoff = crate::shared::SEGMENT_BACKOFF_MIN;
        link.last_error = None;
        let sample = elapsed.as_micros() as u64;
        link.latency_us = if link.latency_us == 0 {
            sample
        } else {
            (link.latency_us * 7 + sample) / 8
        };
        queue.release(pgcl);
    }
    if vdl_moved {
        let vdl = state.ledger.vdl();
        state.cache.unpin(vdl);
        shared.publish(&state);
    }
}

fn on_error(
    shared: &Shared,
    pg: PgId,
    index: usize,
    addr: &str,
    records: usize,
    last: Lsn,
    error: String,
) {
    let mut state = shared.lock();
    let acked = state
        .ledger
        .pg(pg)
        .map(|c| c.scls[index])
        .unwrap_or(Lsn::ZERO);
    let pgcl = state.ledger.pg(pg).map(|c| c.pgcl).unwrap_or(Lsn::ZERO);
    if let Some(queue) = state.pgs.get_mut(&pg) {
        let link = &mut queue.segments[index];
        if link.up {
            warn!(volume = %shared.volume, %pg, node = %addr, records, %last, "segment unreachable: {error}");
        } else {
            debug!(volume = %shared.volume, %pg, node = %addr, "segment still unreachable: {error}");
        }
        link.up = false;
        link.sent = link.sent.min(acked);
        link.retry_at = Some(Instant::now() + link.backoff);
        link.backoff = (link.backoff * 2).min(SEGMENT_BACKOFF_MAX);
        link.last_error = Some(error);
        // A down segment no longer holds records back.
        queue.release(pgcl);
    }
}

fn on_fenced(shared: &Shared, addr: &str, message: &str) {
    let mut state = shared.lock();
    if !state.fenced {
        warn!(volume = %shared.volume, epoch = %shared.epoch, node = %addr, "fenced by a newer writer: {message}");
    }
    state.fenced = true;
    shared.publish(&state);
}
