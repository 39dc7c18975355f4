//! Gap-fill (minimal gossip): a node that missed records (it was down, or a message was lost)
//! fetches them from the PG's other segments, so its SCL rises without the writer resending.
//!
//! Every [`GAP_FILL_INTERVAL`], for the segments whose chain has a hole (records held beyond the
//! SCL) and whose peers are known (the writer sends them with each Append), the task asks peers for
//! `FetchRecords(after_lsn = SCL)`, verifies every record (`record::validate` for the segment's PG)
//! and appends them through the store like any batch: dedup, hot log, fsync, index. It keeps
//! fetching from a peer while that raises the SCL, then moves on.
//!
//! Limits: [`SEGMENTS_PER_ROUND_MAX`] segments (round-robin across rounds), [`FETCHES_PER_ROUND_MAX`]
//! calls and [`ROUND_BYTES_MAX`] bytes per round; each call has connect and request timeouts, and
//! an unreachable peer is skipped until the next round. Clients are created lazily and cached (at
//! most [`PEER_CLIENTS_MAX`]).
//!
//! Crash consistency: nothing of its own; fetched records are hardened like any Append, and a
//! crash mid-round only loses work the next round redoes.

use std::collections::HashMap;
use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{FetchRecordsRequest, Record, SegmentRef};
use sixfold_proto::Lsn;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::appender::Source;
use crate::index::SegmentKey;
use crate::request;
use crate::store::{GapCandidate, Store};
use crate::MESSAGE_BYTES_MAX;

/// Time between gap-fill rounds.
pub const GAP_FILL_INTERVAL: Duration = Duration::from_millis(300);
/// Most segments looked at per round.
pub const SEGMENTS_PER_ROUND_MAX: usize = 32;
/// Most FetchRecords calls per round.
pub const FETCHES_PER_ROUND_MAX: usize = 64;
/// Most record bytes fetched per round.
pub const ROUND_BYTES_MAX: u64 = 32 << 20;
/// `max_bytes` of each FetchRecords call.
pub const FETCH_BYTES: u32 = 4 << 20;
/// Timeouts of one call to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most cached peer clients (the cache is emptied when full).
pub const PEER_CLIENTS_MAX: usize = 256;

/// Runs gap-fill rounds forever (the caller aborts the task on shutdown). `own_addresses` are
/// this node's addresses, skipped when they appear among a segment's peers.
pub async fn run(store: Store, own_addresses: Vec<String>) {
    let mut gossip = Gossip {
        store,
        own_addresses,
        clients: HashMap::new(),
        cursor: None,
    };
    let mut ticker = tokio::time::interval(GAP_FILL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        gossip.round().await;
    }
}

struct Gossip {
    store: Store,
    own_addresses: Vec<String>,
    clients: HashMap<String, StorageNodeClient<Channel>>,
    /// The last segment looked at: the next round starts after it.
    cursor: Option<SegmentKey>,
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
    async fn round(&mut self) {
        let candidates = self
            .store
            .gap_candidates(SEGMENTS_PER_ROUND_MAX, self.cursor.as_ref());
        let mut budget = Budget {
            fetches: FETCHES_PER_ROUND_MAX,
            bytes: ROUND_BYTES_MAX,
        };
        for candidate in candidates {
            if budget.exhausted() {
                return;
            }
            self.cursor = Some(candidate.key.clone());
            self.fill(candidate, &mut budget).await;
        }
    }

    /// Fetches from the segment's peers until its chain has no hole or the peers have nothing.
    async fn fill(&mut self, candidate: GapCandidate, budget: &mut Budget) {
        let GapCandidate {
            key,
            mut scl,
            peers,
        } = candidate;
        let scl_before = scl;
        for peer in peers {
            if self.own_addresses.contains(&peer) {
                continue;
            }
            loop {
                if budget.exhausted() {
                    return;
                }
                budget.fetches -= 1;
                let records = match self.fetch(&peer, &key, scl).await {
                    Ok(records) => records,
                    Err(reason) => {
                        debug!(segment = %key, peer, "gap-fill fetch failed: {reason}");
                        break;
                    }
                };
                if records.is_empty() {
                    break;
                }
                let bytes: u64 = records
                    .iter()
                    .map(|r| sixfold_proto::record::canonical_len(r) as u64)
                    .sum();
                budget.bytes = budget.bytes.saturating_sub(bytes);
                let prepared = match request::prepare_records(&key, None, &records) {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        warn!(segment = %key, peer, "peer sent invalid records: {e}");
                        break;
                    }
                };
                let scl_new = match self
                    .store
                    .append(key.clone(), Source::Gossip, prepared)
                    .await
                {
                    Ok(scl_new) => scl_new,
                    Err(e) => {
                        warn!(segment = %key, "failed to harden gap-fill records: {e}");
                        return;
                    }
                };
                if scl_new <= scl {
                    break;
                }
                scl = scl_new;
                if !self.store.segment_has_gap(&key) {
                    info!(segment = %key, peer, from = scl_before.0, to = scl.0, "gap filled from a peer");
                    return;
                }
            }
        }
        if scl > scl_before {
            info!(segment = %key, from = scl_before.0, to = scl.0, "gap partly filled from peers");
        }
    }

    async fn fetch(
        &mut self,
        peer: &str,
        key: &SegmentKey,
        after_lsn: Lsn,
    ) -> Result<Vec<Record>, String> {
        let mut client = self.client(peer)?;
        let request = FetchRecordsRequest {
            segment: Some(SegmentRef {
                volume: key.volume.clone(),
                pg: key.pg.0,
            }),
            after_lsn: after_lsn.0,
            max_bytes: FETCH_BYTES,
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, client.fetch_records(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().records),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }

    fn client(&mut self, peer: &str) -> Result<StorageNodeClient<Channel>, String> {
        if let Some(client) = self.clients.get(peer) {
            return Ok(client.clone());
        }
        if self.clients.len() >= PEER_CLIENTS_MAX {
            self.clients.clear();
        }
        let uri = if peer.contains("://") {
            peer.to_string()
        } else {
            format!("http://{peer}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("bad peer address: {e}"))?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_lazy();
        let client = StorageNodeClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        self.clients.insert(peer.to_string(), client.clone());
        Ok(client)
    }
}
