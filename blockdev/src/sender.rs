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
use sixfold_proto::{Lsn, NodeId, PgId};
use tokio::sync::Semaphore;
use tracing::{debug, info, trace, warn};

use crate::refusal::{self, Refusal};
use crate::shared::{Hints, Queued, Shared, SEGMENT_BACKOFF_MAX};
use crate::stream::{AppendStream, InFlight};

/// Largest batch, in records and in payload bytes.
pub const BATCH_RECORDS_MAX: usize = 512;
pub const BATCH_BYTES_MAX: usize = 2 << 20;
/// Records wait up to this long for more to share their batch while an earlier batch to the same
/// segment is in flight (a heartbeat counts too; one goes out at most every PROBE_INTERVAL),
/// unless a flush (or a writer held back by LAL) needs them, or [`BATCH_EAGER_BYTES`] are
/// pending; the last acknowledgement in flight wakes the sender for them. A segment with nothing
/// in flight gets them at once (Nagle's rule): a filesystem on the volume writes, then asks for
/// the flush, and those microseconds overlap the nodes' fsync instead of adding to it (in one
/// interleaved experiment, SQLite on `sixfold up` made about 15% more commits/s than with an
/// unconditional linger, 9 of 12 pairs faster). The linger still gathers what arrives while the
/// pipe is busy, so a burst costs each node few fsyncs.
pub const LINGER: Duration = Duration::from_millis(2);
pub const BATCH_EAGER_BYTES: usize = 256 << 10;
/// Batches in flight per segment.
pub const IN_FLIGHT_BATCHES_MAX: usize = 4;
/// How often an idle segment that is down, behind the PGCL, or not told the latest fold limit
/// gets a heartbeat.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a segment is asked for its SCL while it holds records a flush waits for above a
/// gap it is filling from its peers (see `segment_sender`).
pub const CATCH_UP_PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// A batch not acknowledged within this time counts as failed.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a sender for each of `nodes` (segments of `pg`). A sender stops when its node's link
/// is gone from the PG (the node left the membership), or the writer closes.
pub fn spawn_senders(shared: &Arc<Shared>, pg: PgId, nodes: &[NodeId]) {
    for node in nodes {
        tokio::spawn(segment_sender(shared.clone(), pg, *node));
    }
}

enum Next {
    Send(Box<AppendRequest>, String, Lsn),
    Wait(Arc<tokio::sync::Notify>, Option<Duration>),
    Stop,
}

async fn segment_sender(shared: Arc<Shared>, pg: PgId, node: NodeId) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES_MAX));
    let mut stream: Option<AppendStream> = None;
    loop {
        // Nothing in flight to this segment: records go at once (see LINGER).
        let idle = permits.available_permits() == IN_FLIGHT_BATCHES_MAX;
        let next = {
            let mut state = shared.lock();
            let vcl = state.ledger.vcl();
            let vdl = state.ledger.vdl();
            let vdl_time_us = state.vdl_time_us;
            let closed = state.closed || state.fenced;
            let push_to = state.push_to;
            let (pgcl, acked, lowest_scl) = state
                .ledger
                .pg(pg)
                .map(|chain| (chain.pgcl, chain.scl(node), chain.lowest_scl()))
                .unwrap_or((Lsn::ZERO, Lsn::ZERO, Lsn::ZERO));
            // Nodes may fold what every segment holds and no read will ask below: the writer
            // reads at its VDL.
            let fold_limit = lowest_scl.min(vdl);
            let hints = Hints {
                pgcl,
                fold_limit,
                vdl,
            };
            match state.pgs.get_mut(&pg) {
                None => Next::Stop,
                Some(_) if closed => Next::Stop,
                Some(queue) if queue.link(node).is_none() => Next::Stop,
                Some(queue) => {
                    let peers = queue.peers_of(node);
                    let queue_holds_back = queue.holds_back(pgcl, push_to);
                    let truncations = &queue.truncations;
                    let membership = &queue.membership;
                    let Some(link) = queue.segments.iter_mut().find(|l| l.node == node) else {
                        unreachable!("checked just above");
                    };
                    let now = Instant::now();
                    match link.retry_at {
                        Some(at) if at > now => Next::Wait(link.wake.clone(), Some(at - now)),
                        _ => {
                            let start = queue
                                .records
                                .partition_point(|q| Lsn(q.record.lsn) <= link.sent);
                            let (count, bytes) = batch_extent(queue.records.range(start..));
                            let linger_left = queue.records.get(start).and_then(|first| {
                                linger(Pending {
                                    idle,
                                    pushed: Lsn(first.record.lsn) <= push_to,
                                    count,
                                    bytes,
                                    age: now.saturating_duration_since(first.at),
                                })
                            });
                            let records: Vec<_> = if linger_left.is_some() {
                                Vec::new()
                            } else {
                                queue
                                    .records
                                    .range(start..start + count)
                                    .map(|q| (*q.record).clone())
                                    .collect()
                            };
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
                                fold_limit: fold_limit.0,
                                truncations: truncations.clone(),
                                writer_vdl_time_us: vdl_time_us,
                                segment_addr: link.addr.clone(),
                                membership: Some(membership.clone()),
                            };
                            match records.last() {
                                _ if linger_left.is_some() => {
                                    Next::Wait(link.wake.clone(), linger_left)
                                }
                                Some(last) => {
                                    let last = Lsn(last.lsn);
                                    link.sent = last;
                                    link.probed_at = Some(now);
                                    link.hinted = hints;
                                    Next::Send(Box::new(request(records)), link.addr.clone(), last)
                                }
                                None => {
                                    // Nothing to send. A segment that is down, or behind the
                                    // PGCL, gets a heartbeat: it tells the writer when it is back
                                    // and tells the node how far the PG is durable, so that it
                                    // fills its gap from its peers. So does one whose node has
                                    // not heard the latest fold limit (it could not fold the
                                    // PG's last records), and one that has not heard the
                                    // latest VDL: its archiver needs a recent consistency
                                    // point to archive a quiet PG up to it (at most one
                                    // heartbeat per PROBE_INTERVAL while the volume is written).
                                    // A node that answered batches but holds their records
                                    // above a gap (it fills it from its peers) raises its SCL
                                    // with no batch left to answer: while a flush waits for
                                    // them, ask it often.
                                    let catching_up =
                                        link.up && link.answered > acked && queue_holds_back;
                                    let interval = if catching_up {
                                        CATCH_UP_PROBE_INTERVAL
                                    } else {
                                        PROBE_INTERVAL
                                    };
                                    let due = link
                                        .probed_at
                                        .is_none_or(|at| now.duration_since(at) >= interval);
                                    let stale = link.hinted.stale(&hints);
                                    let new_vdl = hints.vdl > link.hinted.vdl;
                                    let wanted = !link.up || acked < pgcl || stale || new_vdl;
                                    if (wanted || catching_up) && due {
                                        link.probed_at = Some(now);
                                        link.hinted = hints;
                                        Next::Send(
                                            Box::new(request(Vec::new())),
                                            link.addr.clone(),
                                            link.sent,
                                        )
                                    } else {
                                        Next::Wait(link.wake.clone(), Some(interval))
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
                trace!(%pg, %node, ?timeout, "sender waiting");
                let timeout = timeout.unwrap_or(Duration::from_secs(1));
                let _ = tokio::time::timeout(timeout, wake.notified()).await;
            }
            Next::Send(request, addr, last) if request.records.is_empty() => {
                // A heartbeat: one unary request, whatever the state of the stream.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    send_batch(&shared, pg, node, &addr, *request, last).await;
                    drop(permit);
                });
            }
            Next::Send(request, addr, last) => {
                trace!(%pg, node = %addr, records = request.records.len(), %last, "sending batch");
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let records = request.records.len();
                if stream.as_ref().is_none_or(|s| s.is_dead()) {
                    stream = None;
                    let started = Instant::now();
                    match AppendStream::open(&shared, pg, node, &addr).await {
                        Ok(opened) => stream = Some(opened),
                        Err(error) => {
                            let failure = Failure {
                                records,
                                last,
                                started,
                                error,
                            };
                            on_error(&shared, pg, node, &addr, failure);
                            continue;
                        }
                    }
                }
                if let Some(stream) = &stream {
                    let batch = InFlight {
                        last,
                        records,
                        started: Instant::now(),
                        _permit: permit,
                        _budget: None,
                    };
                    stream.send(&request, batch).await;
                }
            }
        }
    }
}

/// What a sender knows about a segment's unsent records when it decides whether to send them.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Nothing is in flight to the segment.
    idle: bool,
    /// A flush (or a writer held back by LAL) waits for the first of them.
    pushed: bool,
    /// Records and approximate payload bytes of the next batch.
    count: usize,
    bytes: usize,
    /// How long the oldest of them has waited.
    age: Duration,
}

/// How much longer the records may wait for more to share their batch (see [`LINGER`]); `None`:
/// send them now.
fn linger(pending: Pending) -> Option<Duration> {
    let urgent = pending.idle
        || pending.pushed
        || pending.count >= BATCH_RECORDS_MAX
        || pending.bytes >= BATCH_EAGER_BYTES;
    (!urgent && pending.age < LINGER).then(|| LINGER - pending.age)
}

/// How many of `pending` records go in the next batch, and their approximate payload bytes.
fn batch_extent<'a>(pending: impl Iterator<Item = &'a Queued>) -> (usize, usize) {
    let mut count = 0;
    let mut bytes = 0;
    for queued in pending {
        if count >= BATCH_RECORDS_MAX || bytes >= BATCH_BYTES_MAX {
            break;
        }
        bytes += queued
            .record
            .ranges
            .iter()
            .map(|r| r.data.len() + 8)
            .sum::<usize>()
            + 48;
        count += 1;
    }
    (count, bytes)
}

/// Tells every segment the writer's final VDL, PGCL and fold limit (a heartbeat each, at once,
/// best effort): called when the volume closes. Nodes learn a VDL only from the Appends that
/// carry it, so without this the last consistency point of a session would never reach them
/// (nor the archive, which could then not restore the final fsync'd writes).
pub async fn final_heartbeats(shared: &Arc<Shared>) {
    let requests: Vec<(String, AppendRequest)> = {
        let state = shared.lock();
        if state.fenced || state.read_only {
            return;
        }
        let vdl = state.ledger.vdl();
        let mut out = Vec::new();
        for (pg, queue) in &state.pgs {
            let Some(chain) = state.ledger.pg(*pg) else {
                continue;
            };
            let lowest = chain.lowest_scl();
            for link in &queue.segments {
                out.push((
                    link.addr.clone(),
                    AppendRequest {
                        segment: Some(SegmentRef {
                            volume: shared.volume.clone(),
                            pg: pg.0,
                        }),
                        epoch: shared.epoch.0,
                        records: Vec::new(),
                        peers: queue.peers_of(link.node),
                        writer_vcl: state.ledger.vcl().0,
                        writer_vdl: vdl.0,
                        pgcl: chain.pgcl.0,
                        fold_limit: lowest.min(vdl).0,
                        truncations: queue.truncations.clone(),
                        writer_vdl_time_us: state.vdl_time_us,
                        segment_addr: link.addr.clone(),
                        membership: Some(queue.membership.clone()),
                    },
                ));
            }
        }
        out
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, request) in requests {
        let client = shared.clients.get(&addr);
        tasks.spawn(async move {
            if let Ok(mut client) = client {
                let _ = tokio::time::timeout(FINAL_HEARTBEAT_TIMEOUT, client.append(request)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How long a closing writer waits for each final heartbeat.
pub const FINAL_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

async fn send_batch(
    shared: &Arc<Shared>,
    pg: PgId,
    node: NodeId,
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
                Ok(Err(status)) => match refusal::classify(&status) {
                    Refusal::Fenced => {
                        on_fenced(shared, addr, status.message());
                        return;
                    }
                    Refusal::StaleMembership => {
                        crate::membership::on_stale(shared, pg, addr, status.message());
                        Err(sixfold_transport::status_text(&status))
                    }
                    Refusal::Other => Err(sixfold_transport::status_text(&status)),
                },
                Ok(Ok(response)) => Ok(Lsn(response.into_inner().scl)),
            }
        }
    };
    match result {
        Ok(scl) => on_ack(shared, pg, node, Lsn::ZERO, scl, started.elapsed()),
        Err(error) => {
            let failure = Failure {
                records,
                last,
                started,
                error,
            };
            on_error(shared, pg, node, addr, failure)
        }
    }
}

/// A segment's answer: its SCL, to a batch whose last record is `answered` (`Lsn::ZERO` for a
/// heartbeat), `elapsed` after it was sent.
pub(crate) fn on_ack(
    shared: &Shared,
    pg: PgId,
    node: NodeId,
    answered: Lsn,
    scl: Lsn,
    elapsed: Duration,
) {
    let mut state = shared.lock();
    let vdl_moved = state.ledger.handle_ack(pg, node, scl);
    if vdl_moved {
        state.vdl_time_us = crate::shared::unix_micros();
    }
    let state = &mut *state;
    let chain = state.ledger.pg(pg);
    let keep = crate::shared::retained_per_pg(state.pgs.len());
    if let Some(queue) = state.pgs.get_mut(&pg) {
        let first_backlink = queue.records.front().map(|q| Lsn(q.record.backlink));
        let Some(link) = queue.link_mut(node) else {
            return; // the node left the PG's membership meanwhile
        };
        // The node holds everything up to its SCL (it may have filled a gap from its peers):
        // none of that needs sending again.
        let scl = chain.map_or(scl, |chain| chain.scl(node));
        link.sent = link.sent.max(scl);
        link.answered = link.answered.max(answered);
        // A gap the queue cannot fill (the record after what it was sent was released: it was
        // away longer than the queue keeps records) is the node's to fill from its peers, who hold
        // everything durable; sending it the queue's durable records meanwhile would ship them
        // twice (in one run, 0.7 s more before a segment back from a 10 s cut counted again).
        // It gets what is not durable yet.
        let gap = first_backlink.is_some_and(|backlink| backlink > link.sent);
        if let (true, Some(chain)) = (gap, chain) {
            link.sent = link.sent.max(chain.pgcl);
        }
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
        // Records that waited for this batch to come back may go now (see LINGER).
        let sent = link.sent;
        let wake = link.wake.clone();
        let waiting = queue
            .records
            .back()
            .is_some_and(|q| Lsn(q.record.lsn) > sent);
        if waiting {
            wake.notify_one();
        }
        if let Some(chain) = chain {
            queue.release(chain.pgcl, |node| chain.scl(node), keep);
        }
    }
    if vdl_moved {
        let vdl = state.ledger.vdl();
        state.cache.unpin(vdl);
        shared.publish(state);
    }
}

/// A request to a segment that failed: the records it carried (up to `last`), when it started,
/// and why.
pub(crate) struct Failure {
    pub records: usize,
    pub last: Lsn,
    /// The back-off counts from here: an attempt that spent its connection timeout already
    /// waited, and a node back meanwhile is tried again at once.
    pub started: Instant,
    pub error: String,
}

pub(crate) fn on_error(shared: &Shared, pg: PgId, node: NodeId, addr: &str, failure: Failure) {
    let Failure {
        records,
        last,
        started,
        error,
    } = failure;
    let mut state = shared.lock();
    let acked = state
        .ledger
        .pg(pg)
        .map(|c| c.scl(node))
        .unwrap_or(Lsn::ZERO);
    if let Some(queue) = state.pgs.get_mut(&pg) {
        let Some(link) = queue.link_mut(node) else {
            return;
        };
        if link.up {
            warn!(volume = %shared.volume, %pg, node = %addr, records, %last, "segment unreachable: {error}");
        } else {
            debug!(volume = %shared.volume, %pg, node = %addr, "segment still unreachable: {error}");
        }
        link.up = false;
        link.sent = link.sent.min(acked);
        link.answered = link.answered.min(acked);
        link.retry_at = Some(started + link.backoff);
        link.backoff = (link.backoff * 2).min(SEGMENT_BACKOFF_MAX);
        link.last_error = Some(error);
        // The records it has not acknowledged stay queued (see `PgQueue::release`): they go
        // again, from the writer, the moment it answers.
    }
}

pub(crate) fn on_fenced(shared: &Shared, addr: &str, message: &str) {
    let mut state = shared.lock();
    if !state.fenced {
        warn!(volume = %shared.volume, epoch = %shared.epoch, node = %addr, "fenced by a newer writer: {message}");
    }
    state.fenced = true;
    shared.publish(&state);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(age_ms: u64) -> Pending {
        Pending {
            idle: false,
            pushed: false,
            count: 2,
            bytes: 8 << 10,
            age: Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn records_go_at_once_when_nothing_is_in_flight() {
        let pending = Pending {
            idle: true,
            ..busy(0)
        };
        assert_eq!(linger(pending), None);
    }

    #[test]
    fn records_linger_while_a_batch_is_in_flight() {
        assert_eq!(linger(busy(0)), Some(LINGER));
        assert_eq!(linger(busy(1)), Some(LINGER - Duration::from_millis(1)));
        assert_eq!(linger(busy(2)), None, "not past LINGER");
        assert_eq!(linger(busy(50)), None);
    }

    #[test]
    fn a_flush_or_a_full_batch_sends_at_once() {
        let pushed = Pending {
            pushed: true,
            ..busy(0)
        };
        let many = Pending {
            count: BATCH_RECORDS_MAX,
            ..busy(0)
        };
        let large = Pending {
            bytes: BATCH_EAGER_BYTES,
            ..busy(0)
        };
        for pending in [pushed, many, large] {
            assert_eq!(linger(pending), None, "{pending:?}");
        }
    }
}
