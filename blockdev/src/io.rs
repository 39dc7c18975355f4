//! The write and read paths of [`Volume`].
//!
//! Write: split into page pieces; make sure every PG touched is allocated; for a piece that
//! covers part of a page, have the old page in the cache first (fetched under the page's latch);
//! then, in one critical section, allocate an LSN per page within LAL, make each record (only the
//! changed bytes when the old page is cached), pin the new pages in the cache, append the records
//! to their PG queues and mark the request's last LSN as a consistency point.
//!
//! Read: every page comes from the cache (dirty pages are always there) or from one segment whose
//! SCL covers the read point, preferring segments that are up, not lately slow, in the writer's
//! AZ and fast, in that order; the next one is asked too when the first is slower than the hedge
//! delay, and at once when it fails (see `hedge`). No quorum read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_proto::record::seal;
use sixfold_proto::wire::{ByteRange, ReadPageRequest, SegmentRef};
use sixfold_proto::{Lsn, PageId, PgId, PAGE_SIZE};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::debug;

use crate::delta;
use crate::error::VolumeError;
use crate::shared::{Queued, Shared};
use crate::volume::Volume;

/// Bytes of one write request handled in one critical section (bounded well below LAL).
const WRITE_CHUNK_BYTES: usize = 4 << 20;
/// How long one segment may take to serve a page before the next one is asked.
const READ_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read keeps trying segments before it fails with EIO.
const READ_DEADLINE: Duration = Duration::from_secs(60);

struct Piece<'a> {
    page: PageId,
    offset_in_page: usize,
    bytes: &'a [u8],
}

/// What a write has to wait for before it can be staged.
enum Blocked {
    /// The page is being loaded by a reader (read-modify-write must see it first).
    Latch(PageId, Arc<Notify>),
    /// A partially written page is no longer cached.
    Evicted,
    /// The PG has no segments yet.
    NoPg(PgId),
    /// LSN allocation is at LAL ahead of VDL.
    Lal,
}

fn pieces(offset: u64, data: &[u8]) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut position = 0usize;
    while position < data.len() {
        let absolute = offset + position as u64;
        let page = PageId::containing(absolute);
        let offset_in_page = (absolute % PAGE_SIZE as u64) as usize;
        let len = (PAGE_SIZE - offset_in_page).min(data.len() - position);
        out.push(Piece {
            page,
            offset_in_page,
            bytes: &data[position..position + len],
        });
        position += len;
    }
    out
}

/// Waits until the latch is released, without missing a release that happens meanwhile.
async fn wait_latch(shared: &Shared, page: PageId, latch: Arc<Notify>) {
    let notified = latch.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let still_latched = shared
        .lock()
        .cache
        .loading(page)
        .is_some_and(|current| Arc::ptr_eq(&current, &latch));
    if still_latched {
        notified.await;
    }
}

impl Volume {
    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size_bytes = self.size_bytes();
        match offset.checked_add(len) {
            Some(end) if end <= size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                volume: self.shared.volume.clone(),
                offset,
                len,
                size_bytes,
            }),
        }
    }

    /// Writes `data` at `offset`. Returns before the data is durable (like a disk's cache).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.check_read_only()?;
        self.check_range(offset, data.len() as u64)?;
        let mut position = 0;
        while position < data.len() {
            let len = WRITE_CHUNK_BYTES.min(data.len() - position);
            self.write_chunk(offset + position as u64, &data[position..position + len])
                .await?;
            position += len;
        }
        Ok(())
    }

    /// Writes `data` at `offset` if that can be done at once, without waiting: every PG
    /// allocated, every partially written page cached and not loading, allocation within LAL.
    /// `None` means it would have to wait (use [`Volume::write`]); nothing was written then.
    /// Lets the FUSE layer answer most writes on its own thread, with no hand-off.
    pub fn try_write_now(&self, offset: u64, data: &[u8]) -> Option<Result<(), VolumeError>> {
        if let Err(error) = self
            .check_read_only()
            .and_then(|()| self.check_range(offset, data.len() as u64))
        {
            return Some(Err(error));
        }
        if data.len() > WRITE_CHUNK_BYTES {
            return None;
        }
        let pieces = pieces(offset, data);
        match self.stage(&pieces) {
            Ok(None) => Some(Ok(())),
            Ok(Some(_)) => None,
            Err(error) => Some(Err(error)),
        }
    }

    async fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        let pieces = pieces(offset, data);
        let mut pgs: Vec<PgId> = pieces.iter().map(|p| p.page.pg()).collect();
        pgs.dedup();
        for pg in pgs {
            self.ensure_pg(pg).await?;
        }
        let shared = &self.shared;
        loop {
            // Old pages for partial pieces, so that the cache keeps whole pages.
            for piece in pieces.iter().filter(|p| p.bytes.len() < PAGE_SIZE) {
                self.page(piece.page).await?;
            }
            let mut progress = shared.progress.subscribe();
            match self.stage(&pieces)? {
                None => return Ok(()),
                Some(Blocked::Latch(page, latch)) => wait_latch(shared, page, latch).await,
                Some(Blocked::Evicted) => {
                    debug!("old page evicted before the write; fetching again")
                }
                Some(Blocked::NoPg(pg)) => self.ensure_pg(pg).await?,
                Some(Blocked::Lal) => {
                    // Back-pressure: wait for VDL to move (or the writer to be fenced/closed).
                    let _ = tokio::time::timeout(Duration::from_secs(1), progress.changed()).await;
                }
            }
        }
    }

    /// In one critical section: checks that the write can go ahead, then allocates an LSN per
    /// changed page within LAL, makes its record (only the changed bytes when the old page is
    /// cached), caches the new page as dirty and queues the record for the PG's senders.
    /// Returns what it would have to wait for instead, having changed nothing.
    fn stage(&self, pieces: &[Piece<'_>]) -> Result<Option<Blocked>, VolumeError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.fenced {
            return Err(self.fenced_error());
        }
        if state.closed {
            return Err(VolumeError::Closed);
        }
        for piece in pieces {
            let pg = piece.page.pg();
            if !state.ledger.has_pg(pg) {
                return Ok(Some(Blocked::NoPg(pg)));
            }
            if let Some(latch) = state.cache.loading(piece.page) {
                return Ok(Some(Blocked::Latch(piece.page, latch)));
            }
            if piece.bytes.len() < PAGE_SIZE && state.cache.get(piece.page).is_none() {
                return Ok(Some(Blocked::Evicted));
            }
        }
        if !state.ledger.can_allocate(pieces.len() as u64) {
            // Back-pressure: what is allocated must go out now for VDL to move.
            let last = state.ledger.last_allocated();
            state.push(last);
            return Ok(Some(Blocked::Lal));
        }
        let now = Instant::now();
        let mut last = None;
        let mut woken = Vec::new();
        for piece in pieces {
            let old = state.cache.get(piece.page);
            let (page_bytes, ranges) = if piece.bytes.len() == PAGE_SIZE {
                let new = Bytes::copy_from_slice(piece.bytes);
                let ranges = match &old {
                    Some(old) => delta::page_delta(old, &new),
                    None => vec![delta::full_page(&new)],
                };
                (new, ranges)
            } else {
                let old = old.expect("partial pieces were checked to be cached");
                let mut page = old.to_vec();
                let start = piece.offset_in_page;
                page[start..start + piece.bytes.len()].copy_from_slice(piece.bytes);
                let page = Bytes::from(page);
                let range = ByteRange {
                    offset: start as u32,
                    data: page.slice(start..start + piece.bytes.len()),
                };
                (page, vec![range])
            };
            if ranges.is_empty() {
                continue; // the page already holds these bytes
            }
            let pg = piece.page.pg();
            let (lsn, backlink) = state
                .ledger
                .allocate(pg)
                .expect("allocation was checked against LAL under the same lock");
            let record = seal(lsn, backlink, shared.epoch, piece.page, ranges);
            state.cache.put_dirty(piece.page, page_bytes, lsn);
            if let Some(queue) = state.pgs.get_mut(&pg) {
                // A sender with nothing pending decides now (it sends at once when nothing is
                // in flight, else lingers); one with records pending already has a deadline.
                let before = queue.records.back().map(|q| Lsn(q.record.lsn));
                queue.records.push_back(Queued {
                    record: Arc::new(record),
                    at: now,
                });
                if !woken.contains(&pg) {
                    woken.push(pg);
                    for link in &queue.segments {
                        if before.is_none_or(|b| link.sent >= b) {
                            link.wake.notify_one();
                        }
                    }
                }
            }
            last = Some(lsn);
        }
        if let Some(last) = last {
            state.ledger.mark_cpl(last);
        }
        Ok(None)
    }

    /// Reads `len` bytes at `offset` (must lie within the volume).
    pub async fn read(self: &Volume, offset: u64, len: usize) -> Result<Vec<u8>, VolumeError> {
        self.check_range(offset, len as u64)?;
        let mut out = vec![0u8; len];
        let pieces = pieces(offset, &out);
        let layout: Vec<(PageId, usize, usize)> = pieces
            .iter()
            .map(|p| (p.page, p.offset_in_page, p.bytes.len()))
            .collect();
        drop(pieces);
        // Cache hits inline; misses fetched in parallel.
        let mut pages: Vec<Option<Bytes>> = {
            let mut state = self.shared.lock();
            layout
                .iter()
                .map(|(page, _, _)| state.cache.get(*page))
                .collect()
        };
        let misses: Vec<usize> = (0..layout.len()).filter(|i| pages[*i].is_none()).collect();
        if misses.len() == 1 {
            let index = misses[0];
            pages[index] = Some(self.page(layout[index].0).await?);
        } else if !misses.is_empty() {
            let mut tasks = JoinSet::new();
            for index in misses {
                let shared = self.shared.clone();
                let page = layout[index].0;
                tasks.spawn(async move { (index, Volume { shared }.page(page).await) });
            }
            while let Some(joined) = tasks.join_next().await {
                let (index, result) =
                    joined.map_err(|e| VolumeError::Invalid(format!("read task failed: {e}")))?;
                pages[index] = Some(result?);
            }
        }
        let mut position = 0;
        for ((_, offset_in_page, len), page) in layout.iter().zip(pages) {
            let page = page.expect("every page was read");
            out[position..position + len]
                .copy_from_slice(&page[*offset_in_page..offset_in_page + len]);
            position += len;
        }
        Ok(out)
    }

    /// One whole page: from the cache, or fetched from a segment under the page's latch.
    pub(crate) async fn page(&self, page: PageId) -> Result<Bytes, VolumeError> {
        let shared = &self.shared;
        loop {
            let latch = {
                let mut state = shared.lock();
                if let Some(bytes) = state.cache.get(page) {
                    return Ok(bytes);
                }
                match state.cache.loading(page) {
                    Some(latch) => latch,
                    None => {
                        state.cache.start_load(page);
                        break;
                    }
                }
            };
            wait_latch(shared, page, latch).await;
        }
        let result = self.fetch_page(page).await;
        shared
            .lock()
            .cache
            .finish_load(page, result.as_ref().ok().cloned());
        result
    }

    /// Fetches a page as of VDL from one segment whose SCL covers it.
    async fn fetch_page(&self, page: PageId) -> Result<Bytes, VolumeError> {
        let shared = &self.shared;
        let pg = page.pg();
        let deadline = Instant::now() + READ_DEADLINE;
        let mut attempts = Vec::new();
        loop {
            // The read point and the segments to try, best first.
            // With the PG's truncations: a segment that missed a recovery refuses (it may hold
            // records that recovery dropped) and the next candidate serves.
            let (read_lsn, required_scl, candidates, truncations) = {
                let state = shared.lock();
                let Some(chain) = state.ledger.pg(pg) else {
                    // Never allocated: never written.
                    return Ok(Bytes::from(vec![0u8; PAGE_SIZE]));
                };
                let read_lsn = state.ledger.vdl();
                // Read-only, the recovered tail is the PG's durable point: there is no writer
                // to bring 4 segments to it.
                let pgcl = if state.read_only {
                    chain.tail
                } else {
                    chain.pgcl
                };
                let required_scl = pgcl.min(read_lsn).min(chain.tail);
                if pgcl == Lsn::ZERO {
                    // No record of this PG is durable, so none is at or below the read point
                    // (a page with a newer record is pinned in the cache and never fetched).
                    return Ok(Bytes::from(vec![0u8; PAGE_SIZE]));
                }
                let queue = &state.pgs[&pg];
                let now = Instant::now();
                let mut candidates: Vec<(bool, bool, bool, bool, u64, String)> = queue
                    .segments
                    .iter()
                    .map(|link| {
                        let caught_up = chain.scl(link.node) >= required_scl;
                        let same_az = shared.az.as_deref() == Some(link.az.as_str());
                        (
                            !caught_up,
                            !link.up,
                            state.read_routing.is_slow(&link.addr, now),
                            !same_az,
                            link.latency_us,
                            link.addr.clone(),
                        )
                    })
                    .collect();
                candidates.sort();
                let candidates: Vec<String> = candidates.into_iter().map(|c| c.5).collect();
                (
                    read_lsn,
                    required_scl,
                    candidates,
                    queue.truncations.clone(),
                )
            };
            let request = ReadPageRequest {
                segment: Some(SegmentRef {
                    volume: shared.volume.clone(),
                    pg: pg.0,
                }),
                page: page.0,
                read_lsn: read_lsn.0,
                required_scl: required_scl.0,
                epoch: shared.epoch.0,
                truncations,
            };
            if let Some(data) = self
                .ask_segments(page, candidates, &request, &mut attempts)
                .await
            {
                return Ok(data);
            }
            if Instant::now() >= deadline {
                return Err(VolumeError::ReadUnavailable {
                    volume: shared.volume.clone(),
                    pg,
                    lsn: read_lsn,
                    detail: attempts.join("; "),
                });
            }
            if shared.lock().fenced {
                return Err(self.fenced_error());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks `candidates` (best first) for the page, hedged (see [`crate::hedge`]): the next
    /// candidate is asked when those outstanding are slower than the (doubling) hedge delay, and
    /// at once when one fails. Returns the first page served; `None` when every candidate failed
    /// (each failure is added to `attempts`, up to 12).
    async fn ask_segments(
        &self,
        page: PageId,
        candidates: Vec<String>,
        request: &ReadPageRequest,
        attempts: &mut Vec<String>,
    ) -> Option<Bytes> {
        let shared = &self.shared;
        let mut candidates = candidates.into_iter().peekable();
        let mut outstanding: JoinSet<(String, Instant, Result<Bytes, String>)> = JoinSet::new();
        let mut asked: Vec<String> = Vec::new();
        let mut hedge_at = Instant::now();
        loop {
            let ask_next = outstanding.is_empty() || Instant::now() >= hedge_at;
            if ask_next {
                let Some(addr) = candidates.next() else {
                    if outstanding.is_empty() {
                        return None;
                    }
                    hedge_at = Instant::now() + READ_ATTEMPT_TIMEOUT;
                    continue;
                };
                if !outstanding.is_empty() {
                    debug!(volume = %shared.volume, %page, node = %addr, outstanding = ?asked, "hedged read");
                }
                let client = shared.clients.get(&addr);
                let request = request.clone();
                let started = Instant::now();
                asked.push(addr.clone());
                outstanding.spawn(async move {
                    let result = match client {
                        Err(error) => Err(error),
                        Ok(mut client) => read_attempt(&mut client, request).await,
                    };
                    (addr, started, result)
                });
                hedge_at = started
                    + shared
                        .lock()
                        .read_routing
                        .next_hedge_after(outstanding.len());
                continue;
            }
            let hedge = candidates.peek().is_some();
            tokio::select! {
                joined = outstanding.join_next() => {
                    let Some(joined) = joined else { continue };
                    let (addr, started, result) = match joined {
                        Ok(answer) => answer,
                        Err(error) => {
                            if attempts.len() < 12 {
                                attempts.push(format!("read task failed: {error}"));
                            }
                            continue;
                        }
                    };
                    let position = asked.iter().position(|a| *a == addr).unwrap_or(0);
                    match result {
                        Ok(data) => {
                            // Those asked before this one and still outstanding were overtaken.
                            let now = Instant::now();
                            let mut state = shared.lock();
                            state.read_routing.observe(started.elapsed());
                            for slow in &asked[..position] {
                                state.read_routing.mark_slow(slow, now);
                            }
                            return Some(data);
                        }
                        Err(error) => {
                            asked.remove(position);
                            debug!(volume = %shared.volume, %page, node = %addr, "read failed: {error}");
                            shared.lock().read_routing.mark_slow(&addr, Instant::now());
                            if attempts.len() < 12 {
                                attempts.push(format!("{addr}: {error}"));
                            }
                            // The next candidate is asked at once.
                            hedge_at = Instant::now();
                        }
                    }
                }
                _ = tokio::time::sleep_until(hedge_at.into()), if hedge => {}
            }
        }
    }
}

/// One read of one page from one segment, bounded by [`READ_ATTEMPT_TIMEOUT`].
async fn read_attempt(
    client: &mut crate::clients::NodeClient,
    request: ReadPageRequest,
) -> Result<Bytes, String> {
    match tokio::time::timeout(READ_ATTEMPT_TIMEOUT, client.read_page(request)).await {
        Err(_) => Err("timed out".to_string()),
        Ok(Err(status)) => Err(sixfold_transport::status_text(&status)),
        Ok(Ok(response)) => {
            let data = response.into_inner().data;
            if data.len() == PAGE_SIZE {
                Ok(data)
            } else {
                Err(format!("served {} bytes instead of a page", data.len()))
            }
        }
    }
}
