//! Gap-fill (minimal gossip): a node that missed records (it was down, or a message was lost)
//! fetches them from the PG's other segments, so its SCL rises without the writer resending.
//!
//! Every [`GAP_FILL_INTERVAL`], for the segments whose chain has a hole (records held beyond the
//! SCL) or whose SCL is below the PGCL a writer reported, and whose peers are known (the writer
//! sends them with each Append), the task asks peers for `FetchRecords(after_lsn = SCL)`, verifies
//! every record (`record::validate` for the segment's PG) and appends them through the store like
//! any batch: dedup, hot log, fsync, index. It keeps fetching from a peer while that raises the
//! SCL and the segment is still behind, then moves on. The first fetch from each peer is hedged:
//! a peer that has not answered within [`FIRST_FETCH_HEDGE`] (cut off or frozen since it last
//! answered) has the next peer asked too, and the first to answer serves, so a silent peer costs
//! the catch-up 300 ms, not a request timeout. A round that spent its whole budget is
//! followed at once by the next (a node back from a long absence catches up at disk speed).
//!
//! Each round also repairs damage found since the last: a page-store slot that failed its
//! checksum gets a peer's image of the page (ReadPage at the PGCL), and a hot-log record that
//! failed its checksum on read or fold gets a peer's copy (FetchRecords after its backlink), which
//! the store writes again and points its index at ([`Source::Repair`]). Until then the damaged
//! data is never served: reads and folds of it fail with a corruption error.
//!
//! Limits: [`SEGMENTS_PER_ROUND_MAX`] segments (round-robin across rounds), [`FETCHES_PER_ROUND_MAX`]
//! calls and [`ROUND_BYTES_MAX`] bytes per round; each call has connect and request timeouts, and
//! an unreachable peer is skipped until the next round. Clients are created lazily and cached (at
//! most [`PEER_CLIENTS_MAX`]).
//!
//! Crash consistency: nothing of its own; fetched records are hardened like any Append, and a
//! crash mid-round only loses work the next round redoes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{self, FetchRecordsRequest, ReadPageRequest, Record, SegmentRef};
use sixfold_proto::Lsn;
use sixfold_transport::Security;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::appender::Source;
use crate::bandwidth::RepairBandwidth;
use crate::hydrate;
use crate::index::SegmentKey;
use crate::request;
use crate::segment::Truncation;
use crate::store::{GapCandidate, RecordRepair, Store};

/// Time between gap-fill rounds.
pub const GAP_FILL_INTERVAL: Duration = Duration::from_millis(300);
/// Most segments looked at per round.
pub const SEGMENTS_PER_ROUND_MAX: usize = 32;
/// Most FetchRecords calls per round.
pub const FETCHES_PER_ROUND_MAX: usize = 64;
/// Most record bytes fetched per round (then the next round starts at once, cursor moved on).
pub const ROUND_BYTES_MAX: u64 = 64 << 20;
/// `max_bytes` of each FetchRecords call.
pub const FETCH_BYTES: u32 = 16 << 20;
/// Timeouts of one call to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Damaged pages repaired per round.
pub const REPAIRS_PER_ROUND_MAX: usize = 256;
/// Segments filled at once (each with its share of the round's budget).
pub const PARALLEL_FILLS_MAX: usize = 4;
/// Most cached peer clients (the cache is emptied when full).
pub const PEER_CLIENTS_MAX: usize = 256;

/// Runs gap-fill rounds forever (the caller aborts the task on shutdown). `own_addresses` are
/// this node's addresses, skipped when they appear among a segment's peers.
pub async fn run(
    store: Store,
    own_addresses: Vec<String>,
    bandwidth: Arc<RepairBandwidth>,
    security: Security,
) {
    let mut gossip = Gossip {
        store,
        security,
        own_addresses,
        bandwidth,
        clients: HashMap::new(),
        cursor: None,
        health: Arc::default(),
    };
    let mut ticker = tokio::time::interval(GAP_FILL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        while gossip.round().await {}
    }
}

struct Gossip {
    store: Store,
    /// How this node proves itself to its peers.
    security: Security,
    own_addresses: Vec<String>,
    /// The bound on what gap-fill and hydration fetch (`--repair-bandwidth`).
    bandwidth: Arc<RepairBandwidth>,
    clients: HashMap<String, StorageNodeClient<Channel>>,
    /// The last segment looked at: the next round starts after it.
    cursor: Option<SegmentKey>,
    health: Arc<PeerHealth>,
}

/// What one round may still spend.
struct Budget {
    fetches: usize,
    bytes: u64,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.fetches == 0 || self.bytes == 0
    }
}

impl Gossip {
    /// Repairs damaged pages (found by scrub or a read) with a peer's image as of the PGCL the
    /// writer reported; a page no peer can serve now goes back in the queue.
    async fn repair_pages(&mut self) {
        for (key, page, point, peers) in self.store.take_repairs(REPAIRS_PER_ROUND_MAX) {
            let mut repaired = false;
            let history: Vec<sixfold_proto::wire::Truncation> = self
                .store
                .segment_state(&key)
                .truncations
                .iter()
                .map(|t| sixfold_proto::wire::Truncation {
                    epoch: t.epoch.0,
                    truncate_after: t.after.0,
                })
                .collect();
            for peer in &peers {
                if self.own_addresses.contains(peer) {
                    continue;
                }
                let Ok(mut client) = self.client(peer) else {
                    continue;
                };
                let request = ReadPageRequest {
                    segment: Some(SegmentRef {
                        volume: key.volume.clone(),
                        pg: key.pg.0,
                    }),
                    page: page.0,
                    read_lsn: point.0,
                    required_scl: point.0,
                    epoch: 0,
                    // A peer that missed a recovery this segment applied serves no repair.
                    truncations: history.clone(),
                };
                let data = match tokio::time::timeout(REQUEST_TIMEOUT, client.read_page(request))
                    .await
                {
                    Ok(Ok(response)) => response.into_inner().data,
                    Ok(Err(status)) => {
                        debug!(segment = %key, %page, peer, "peer cannot serve the page for repair: {}", status.message());
                        continue;
                    }
                    Err(_) => continue,
                };
                match self
                    .store
                    .repair_page(&key, page, point, data.to_vec())
                    .await
                {
                    Ok(()) => {
                        repaired = true;
                        break;
                    }
                    Err(e) => warn!(segment = %key, %page, peer, "page repair failed: {e}"),
                }
            }
            if !repaired {
                self.store.requeue_repair(key, page);
            }
        }
    }

    /// Fetches a good copy of each hot-log record found damaged from a peer that holds it (a
    /// peer that folded it past cannot help; the record waits for another round), and has the
    /// store write it again and point its index at it.
    async fn repair_records(&mut self) {
        for repair in self.store.take_record_repairs(REPAIRS_PER_ROUND_MAX) {
            let RecordRepair {
                key,
                lsn,
                backlink,
                page,
                peers,
            } = repair;
            if self.store.record_bypassed(&key, page, lsn) {
                continue; // its page was repaired over it; the next fold forgets it
            }
            let mut repaired = false;
            let mut folded = false;
            for peer in &peers {
                if self.own_addresses.contains(peer) {
                    continue;
                }
                let Ok(client) = self.client(peer) else {
                    continue;
                };
                let membership = self.store.membership(&key).map(|m| m.to_wire());
                let records = match fetch_up_to(client, &key, membership, backlink, 1).await {
                    Ok(fetched) => fetched.records,
                    Err(e) => {
                        debug!(segment = %key, lsn = lsn.0, peer, "peer cannot serve the record for repair: {e}");
                        folded |= e.contains("folded into pages");
                        continue;
                    }
                };
                let Some(record) = records.into_iter().find(|r| r.lsn == lsn.0) else {
                    continue;
                };
                let prepared = match request::prepare_records(&key, None, &[record]) {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        warn!(segment = %key, peer, "peer sent an invalid record for repair: {e}");
                        continue;
                    }
                };
                match self
                    .store
                    .append(key.clone(), Source::Repair, prepared)
                    .await
                {
                    Ok(_) => {
                        repaired = true;
                        break;
                    }
                    Err(e) => warn!(segment = %key, lsn = lsn.0, "record repair failed: {e}"),
                }
            }
            if !repaired {
                if folded {
                    // A peer folded it: repair the page over it instead (next round).
                    info!(segment = %key, lsn = lsn.0, %page, "peers folded the damaged record; repairing its page from a peer instead");
                    self.store.repair_page_over_record(key.clone(), page);
                }
                self.store.requeue_record_repair(key, lsn);
            }
        }
    }

    /// One round; true when it fetched its whole byte budget (more data is likely waiting; a
    /// round that only met failures or empty answers never asks for an immediate next one).
    async fn round(&mut self) -> bool {
        self.repair_pages().await;
        self.repair_records().await;
        let candidates = self
            .store
            .gap_candidates(SEGMENTS_PER_ROUND_MAX, self.cursor.as_ref());
        let mut fills = JoinSet::new();
        let mut exhausted = false;
        for candidate in candidates {
            self.cursor = Some(candidate.key.clone());
            // Segments start at different peers, so that one node does not serve every fill.
            // Peers that did not answer lately go last.
            let mut order = candidate.peers.clone();
            if !order.is_empty() {
                let shift = candidate.key.pg.0 as usize % order.len();
                order.rotate_left(shift);
            }
            self.health.order(&mut order);
            let mut peers = Vec::new();
            for peer in &order {
                if self.own_addresses.contains(peer) {
                    continue;
                }
                match self.client(peer) {
                    Ok(client) => peers.push((peer.clone(), client)),
                    Err(reason) => debug!(peer, "no client for a peer: {reason}"),
                }
            }
            let budget = Budget {
                fetches: FETCHES_PER_ROUND_MAX / PARALLEL_FILLS_MAX,
                bytes: ROUND_BYTES_MAX / PARALLEL_FILLS_MAX as u64,
            };
            fills.spawn(fill(
                self.store.clone(),
                candidate,
                peers,
                budget,
                self.bandwidth.clone(),
                self.health.clone(),
            ));
            if fills.len() >= PARALLEL_FILLS_MAX {
                if let Some(Ok(spent)) = fills.join_next().await {
                    exhausted |= spent;
                }
            }
        }
        while let Some(joined) = fills.join_next().await {
            exhausted |= joined.unwrap_or(false);
        }
        exhausted
    }
}

/// Fetches from the segment's peers until its chain has no hole and its SCL reaches the target,
/// or the peers have nothing more. Returns true when it spent its whole byte budget.
async fn fill(
    store: Store,
    candidate: GapCandidate,
    peers: Vec<(String, StorageNodeClient<Channel>)>,
    mut budget: Budget,
    bandwidth: Arc<RepairBandwidth>,
    health: Arc<PeerHealth>,
) -> bool {
    let budget = &mut budget;
    {
        let GapCandidate {
            key,
            mut scl,
            target,
            membership,
            ..
        } = candidate;
        let membership = membership.map(|m| m.to_wire());
        let scl_before = scl;
        // A peer that answered that the records are folded into its pages: hydrate from it if
        // no peer's log has them.
        let mut folded_at: Option<(String, StorageNodeClient<Channel>)> = None;
        let mut peers: VecDeque<(String, StorageNodeClient<Channel>)> = peers.into();
        while let Some((mut peer, mut client)) = peers.pop_front() {
            if budget.exhausted() {
                return true;
            }
            // The first fetch from this peer is hedged: a peer that does not answer within
            // FIRST_FETCH_HEDGE (cut off, frozen) has the next one asked too, and the first to
            // answer serves this pass; the slower goes to the back.
            let mut fetched: Option<Fetched>;
            let next = peers.front().cloned();
            let (hedge, first) = first_fetch(
                (&peer, &client),
                next.as_ref().map(|(p, c)| (p.as_str(), c)),
                &key,
                membership.clone(),
                scl,
            )
            .await;
            budget.fetches =
                budget
                    .fetches
                    .saturating_sub(if hedge == Hedge::NotSent { 1 } else { 2 });
            match (hedge, peers.pop_front()) {
                (Hedge::NotSent, Some(next)) => peers.push_front(next),
                (Hedge::FirstWon, Some(slower)) => peers.push_back(slower),
                (Hedge::SecondWon, Some(faster)) => {
                    health.note(&peer, false);
                    peers.push_back((peer, client));
                    (peer, client) = faster;
                }
                (Hedge::BothFailed, Some((failed, _))) => health.note(&failed, false),
                (_, None) => {}
            }
            match first {
                Ok(first) => fetched = Some(first),
                Err(reason) => {
                    fetch_failed(&key, &peer, &client, &reason, &health, &mut folded_at);
                    continue;
                }
            }
            // The next batch is fetched while this one is hardened (pipelined).
            loop {
                if budget.exhausted() {
                    return true;
                }
                let Fetched {
                    records,
                    truncations,
                } = match fetched.take() {
                    Some(fetched) => fetched,
                    None => {
                        budget.fetches -= 1;
                        match fetch(client.clone(), &key, membership.clone(), scl).await {
                            Ok(fetched) => fetched,
                            Err(reason) => {
                                fetch_failed(
                                    &key,
                                    &peer,
                                    &client,
                                    &reason,
                                    &health,
                                    &mut folded_at,
                                );
                                break;
                            }
                        }
                    }
                };
                health.note(&peer, true);
                let Some(last) = records.last().map(|r| Lsn(r.lsn)) else {
                    break;
                };
                let bytes: u64 = records
                    .iter()
                    .map(|r| sixfold_proto::record::canonical_len(r) as u64)
                    .sum();
                budget.bytes = budget.bytes.saturating_sub(bytes);
                bandwidth.spend(bytes).await;
                let count = records.len() as u64;
                let prepared = match request::prepare_records(&key, None, &records) {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        warn!(segment = %key, peer, "peer sent invalid records: {e}");
                        break;
                    }
                };
                budget.fetches = budget.fetches.saturating_sub(1);
                if let Err(e) = store.learn_truncations(&key, &truncations, None).await {
                    warn!(segment = %key, "failed to harden truncations learned from a peer: {e}");
                    return false;
                }
                let (hardened, next) = tokio::join!(
                    store.append(key.clone(), Source::Gossip, prepared),
                    fetch(client.clone(), &key, membership.clone(), last)
                );
                let scl_new = match hardened {
                    Ok(scl_new) => scl_new,
                    Err(e) => {
                        warn!(segment = %key, "failed to harden gap-fill records: {e}");
                        return false;
                    }
                };
                store.count_gap_fill(count, bytes);
                if target > scl_before {
                    let done = (scl_new.0.saturating_sub(scl_before.0)) as f64
                        / (target.0 - scl_before.0) as f64;
                    store.note_catch_up(&key, bytes, done);
                }
                if scl_new <= scl {
                    break;
                }
                scl = scl_new;
                if !store.segment_has_gap(&key) && scl >= target {
                    info!(segment = %key, peer, from = scl_before.0, to = scl.0, "gap filled from a peer");
                    return false;
                }
                // The prefetched batch follows `last`; it is only good if the chain reached it.
                if scl == last {
                    fetched = next.ok();
                }
            }
        }
        if scl > scl_before {
            info!(segment = %key, from = scl_before.0, to = scl.0, "gap partly filled from peers");
        } else if let Some((peer, client)) = folded_at {
            match hydrate::hydrate(&store, &key, &peer, client, &bandwidth).await {
                Ok(scl_new) if scl_new > scl => return true, // go on from the peers' logs at once
                Ok(_) => {}
                Err(e) => warn!(segment = %key, peer, "hydration failed: {e}"),
            }
        }
    }
    budget.bytes == 0
}

impl Gossip {
    fn client(&mut self, peer: &str) -> Result<StorageNodeClient<Channel>, String> {
        if let Some(client) = self.clients.get(peer) {
            return Ok(client.clone());
        }
        if self.clients.len() >= PEER_CLIENTS_MAX {
            self.clients.clear();
        }
        let client = crate::peer::client(&self.security, peer, CONNECT_TIMEOUT, REQUEST_TIMEOUT)?;
        self.clients.insert(peer.to_string(), client.clone());
        Ok(client)
    }
}

/// Peers that failed lately (no answer, or an error other than "folded into pages"): a round
/// asks them last, so that a node back from a network cut fills its gap from the peers it
/// reached since, not after a timeout on each peer that was cut off with it. (Which peers are
/// cut off *now* it cannot know: a peer cut after it came back costs one request timeout.)
#[derive(Default)]
struct PeerHealth {
    failed_at: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a peer that did not answer stays at the end of the order.
const PEER_FAILURE_MEMORY: Duration = Duration::from_secs(10);

impl PeerHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note(&self, peer: &str, answered: bool) {
        let mut failed_at = self.lock();
        if answered {
            failed_at.remove(peer);
        } else {
            if failed_at.len() >= PEER_CLIENTS_MAX {
                failed_at.clear();
            }
            failed_at.insert(peer.to_owned(), std::time::Instant::now());
        }
    }

    /// `peers`, those that failed within [`PEER_FAILURE_MEMORY`] moved to the end (stable).
    fn order(&self, peers: &mut [String]) {
        let failed_at = self.lock();
        let recent = |peer: &String| {
            failed_at
                .get(peer)
                .is_some_and(|at| at.elapsed() < PEER_FAILURE_MEMORY)
        };
        peers.sort_by_key(recent);
    }
}

/// A FetchRecords answer: records, and the truncations the peer has applied (the asker applies
/// those it missed before the records).
struct Fetched {
    records: Vec<Record>,
    truncations: Vec<Truncation>,
}

/// A fetch from `peer` failed with `reason`. A peer that has the records in its pages answered
/// (it is kept in `folded_at` to hydrate from, if no peer's log has them); any other failure (no
/// answer, no such segment) sends it last in the next rounds.
fn fetch_failed(
    key: &SegmentKey,
    peer: &str,
    client: &StorageNodeClient<Channel>,
    reason: &str,
    health: &PeerHealth,
    folded_at: &mut Option<(String, StorageNodeClient<Channel>)>,
) {
    debug!(segment = %key, peer, "gap-fill fetch failed: {reason}");
    let folded = reason.contains("folded into pages");
    health.note(peer, folded);
    if folded && folded_at.is_none() {
        *folded_at = Some((peer.to_owned(), client.clone()));
    }
}

/// How long the first fetch from a peer may go unanswered before the next peer is asked too.
pub const FIRST_FETCH_HEDGE: Duration = Duration::from_millis(300);

/// What became of a hedged first fetch ([`first_fetch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hedge {
    /// The first peer answered (or failed) in time, or there was no second to ask.
    NotSent,
    /// Both were asked; the first peer's answer serves.
    FirstWon,
    /// Both were asked; the second peer answered first and serves.
    SecondWon,
    /// Both were asked and both failed (the first one's failure is returned).
    BothFailed,
}

/// The first fetch of a pass from `first`, hedged with `second`: if `first` has not answered
/// within [`FIRST_FETCH_HEDGE`], `second` is asked too and the first success wins (the other
/// call is dropped). Returns what happened and the result that serves.
async fn first_fetch(
    first: (&str, &StorageNodeClient<Channel>),
    second: Option<(&str, &StorageNodeClient<Channel>)>,
    key: &SegmentKey,
    membership: Option<wire::Membership>,
    after_lsn: Lsn,
) -> (Hedge, Result<Fetched, String>) {
    let from_first = fetch(first.1.clone(), key, membership.clone(), after_lsn);
    tokio::pin!(from_first);
    let Some((second_peer, second_client)) = second else {
        return (Hedge::NotSent, from_first.await);
    };
    if let Ok(answer) = tokio::time::timeout(FIRST_FETCH_HEDGE, &mut from_first).await {
        return (Hedge::NotSent, answer);
    }
    debug!(segment = %key, peer = first.0, hedge = second_peer, "gap-fill fetch slow; asking the next peer too");
    let from_second = fetch(second_client.clone(), key, membership, after_lsn);
    tokio::pin!(from_second);
    tokio::select! {
        answer = &mut from_first => match answer {
            Ok(fetched) => (Hedge::FirstWon, Ok(fetched)),
            Err(first_error) => match from_second.await {
                Ok(fetched) => (Hedge::SecondWon, Ok(fetched)),
                Err(_) => (Hedge::BothFailed, Err(first_error)),
            },
        },
        answer = &mut from_second => match answer {
            Ok(fetched) => (Hedge::SecondWon, Ok(fetched)),
            Err(_) => match from_first.await {
                Ok(fetched) => (Hedge::FirstWon, Ok(fetched)),
                Err(first_error) => (Hedge::BothFailed, Err(first_error)),
            },
        },
    }
}

async fn fetch(
    client: StorageNodeClient<Channel>,
    key: &SegmentKey,
    membership: Option<wire::Membership>,
    after_lsn: Lsn,
) -> Result<Fetched, String> {
    fetch_up_to(client, key, membership, after_lsn, FETCH_BYTES).await
}

/// FetchRecords after `after_lsn`, at most `max_bytes` (at least one record).
async fn fetch_up_to(
    mut client: StorageNodeClient<Channel>,
    key: &SegmentKey,
    membership: Option<wire::Membership>,
    after_lsn: Lsn,
    max_bytes: u32,
) -> Result<Fetched, String> {
    let request = FetchRecordsRequest {
        segment: Some(SegmentRef {
            volume: key.volume.clone(),
            pg: key.pg.0,
        }),
        after_lsn: after_lsn.0,
        max_bytes,
        membership,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.fetch_records(request)).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            let truncations = request::truncations(&response.truncations)
                .map_err(|e| format!("peer sent invalid truncations: {e}"))?;
            Ok(Fetched {
                records: response.records,
                truncations,
            })
        }
        Ok(Err(status)) => Err(sixfold_transport::status_text(&status)),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}
