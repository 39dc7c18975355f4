//! Hydration: a segment that fell behind every peer's hot log (its peers folded the records it
//! misses into their page stores and deleted them) copies pages instead of records.
//!
//! 1. The segment folds its own chain up to its SCL `S`, so that its page store alone holds its
//!    state at `S`.
//! 2. It asks one peer, page by page range (FetchPages, the next call in flight while a batch is
//!    written), for every stored page whose image is newer than `S`, and stores each batch
//!    durably, without the fold journal ([`crate::pagestore::PageStore::store_copies`]). The peer's fold point `F` holds still while
//!    the scan goes on (each call renews the hold, for at most `FOLD_HOLD_MAX` in a row: a
//!    hydration longer than that sees it move); if it moved anyway (a fold step that was
//!    already running), a second pass copies what changed after the first pass's point.
//! 3. Once a whole pass saw one `F`, the segment starts at `F` (fold point and SCL), durably in
//!    the checkpoint, and gap-fill takes the records after `F` from the peers' logs. `F` is the
//!    peer's claim: it is adopted only up to the PG's commit point the segment knows
//!    ([`Store::finish_hydration_from_peer`]).
//!
//! Safety: until step 3 the segment's SCL stays `S`, so no read above `S` is served from it
//! (required SCL), and a stored image newer than a read point is never served for it (the store
//! refuses). A crash mid-way leaves the fold point at `S` (the checkpoint still names it) and
//! the next gap-fill round starts over, copying again every page newer than `S`, torn ones
//! included.

use std::time::{Duration, Instant};

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{FetchPagesRequest, FetchRecordsRequest, SegmentRef};
use sixfold_proto::{Lsn, PG_PAGES};
use tonic::transport::Channel;
use tracing::info;

use crate::bandwidth::RepairBandwidth;
use crate::index::SegmentKey;
use crate::pagestore::PageImage;
use crate::store::Store;

/// Pages asked for per FetchPages call (4 MiB).
pub const PAGES_PER_CALL: u32 = 1024;
/// Passes over the peer's pages before giving up on a moving fold point.
const PASSES_MAX: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Copies the pages `peer` changed after this segment's SCL and starts the segment at the
/// peer's fold point. Returns the segment's SCL afterwards.
pub async fn hydrate(
    store: &Store,
    key: &SegmentKey,
    peer: &str,
    client: StorageNodeClient<Channel>,
    bandwidth: &RepairBandwidth,
) -> Result<Lsn, String> {
    let started = Instant::now();
    let scl = store.fold_to_scl(key).await.map_err(|e| e.to_string())?;
    let mut after = scl;
    let mut copied = 0u64;
    for _ in 0..PASSES_MAX {
        let mut first = None;
        let mut last;
        // Pipelined: the next call is on its way while this batch is written.
        let mut response = fetch(&client, key, peer, after, 0).await?;
        loop {
            let folded = Lsn(response.folded);
            first.get_or_insert(folded);
            last = folded;
            let images = validate(key, peer, folded, response.pages)?;
            bandwidth
                .spend((images.len() * sixfold_proto::PAGE_SIZE) as u64)
                .await;
            let more = response.next_cursor > response.cursor && response.next_cursor < PG_PAGES;
            let next = async {
                if more {
                    Some(fetch(&client, key, peer, after, response.next_cursor).await)
                } else {
                    None
                }
            };
            // The scan's position in the PG's page range: how far the copy got (the log tail
            // that follows is short).
            let position = response.next_cursor.max(response.cursor) as f64 / PG_PAGES as f64;
            store.note_catch_up(
                key,
                (images.len() * sixfold_proto::PAGE_SIZE) as u64,
                position.min(0.99),
            );
            let stored = async {
                copied += images.len() as u64;
                if images.is_empty() {
                    return Ok(());
                }
                store
                    .store_hydrated_pages(key, images)
                    .await
                    .map_err(|e| e.to_string())
            };
            let (stored, next) = tokio::join!(stored, next);
            stored?;
            match next {
                Some(next) => response = next?,
                None => break,
            }
        }
        let first = first.unwrap_or(last);
        if last <= scl {
            return Ok(scl); // the peer is not ahead of us in pages
        }
        if first == last {
            let scl_new = store
                .finish_hydration_from_peer(key, last)
                .await
                .map_err(|e| e.to_string())?;
            learn_history(store, key, peer, &client, scl_new).await;
            info!(
                segment = %key, peer, from = %scl, to = %scl_new, pages = copied,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "hydrated from a peer's pages"
            );
            return Ok(scl_new);
        }
        // The peer folded during the pass: copy what changed after the pass began.
        after = first;
    }
    Err(format!(
        "{peer}'s fold point kept moving during {PASSES_MAX} passes"
    ))
}

/// Pages carry no truncation history: take the peer's (a FetchRecords answer carries it), so
/// that a segment hydrated in a PG nobody writes to any more still shows the history its
/// repair driver compares to decide it caught up. (Found when a replacement of such a PG
/// never completed.) Best effort: gap-fill and the writer's Appends carry it too.
async fn learn_history(
    store: &Store,
    key: &SegmentKey,
    peer: &str,
    client: &StorageNodeClient<Channel>,
    after: Lsn,
) {
    let request = FetchRecordsRequest {
        segment: Some(SegmentRef {
            volume: key.volume.clone(),
            pg: key.pg.0,
        }),
        after_lsn: after.0,
        max_bytes: 1,
        membership: None,
    };
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.clone().fetch_records(request)).await;
    let learned = match answer {
        Ok(Ok(response)) => match crate::request::truncations(&response.into_inner().truncations) {
            Ok(history) => store
                .learn_truncations(key, &history, None)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("invalid truncations: {e}")),
        },
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("no answer".to_string()),
    };
    if let Err(e) = learned {
        tracing::debug!(segment = %key, peer, "hydrated segment did not learn the peer's history: {e}");
    }
}

/// One FetchPages call: the peer's pages newer than `after` from page `cursor` on.
async fn fetch(
    client: &StorageNodeClient<Channel>,
    key: &SegmentKey,
    peer: &str,
    after: Lsn,
    cursor: u64,
) -> Result<Fetched, String> {
    let request = FetchPagesRequest {
        segment: Some(SegmentRef {
            volume: key.volume.clone(),
            pg: key.pg.0,
        }),
        after_lsn: after.0,
        cursor,
        max_pages: PAGES_PER_CALL,
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, client.clone().fetch_pages(request))
        .await
        .map_err(|_| format!("no answer from {peer} within {CALL_TIMEOUT:?}"))?
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?
        .into_inner();
    Ok(Fetched {
        cursor,
        next_cursor: response.next_cursor,
        folded: response.folded,
        pages: response.pages,
    })
}

/// A FetchPages answer and the cursor it was asked from.
struct Fetched {
    cursor: u64,
    next_cursor: u64,
    folded: u64,
    pages: Vec<sixfold_proto::wire::PageImage>,
}

/// Checks a peer's page images against the segment's PG and the fold point it named.
fn validate(
    key: &SegmentKey,
    peer: &str,
    folded: Lsn,
    pages: Vec<sixfold_proto::wire::PageImage>,
) -> Result<Vec<PageImage>, String> {
    pages
        .into_iter()
        .map(|image| {
            PageImage::from_wire(image, key.pg, folded).map_err(|e| format!("{peer} sent {e}"))
        })
        .collect()
}
