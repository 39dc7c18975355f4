//! The writer's page cache: dirty pages pinned until durable, clean pages in a bounded LRU.
//!
//! Invariants:
//! - A page with a record above VDL is in `dirty` (pinned) with the bytes of its newest record;
//!   reads of it are served here, never from a segment (a segment only serves up to VDL).
//! - `dirty` holds at most LAL pages (one record each at least), so it is bounded by LAL.
//! - `clean` holds at most `clean_pages_max` pages; a clean page equals the page as of VDL.
//! - `loading` latches a page while it is fetched from a segment: nothing else may insert or
//!   modify that page until the fetch has landed, so a slow fetch can never overwrite newer bytes.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use sixfold_proto::{Lsn, PageId};
use tokio::sync::Notify;

#[derive(Debug)]
struct DirtyPage {
    data: Bytes,
    /// LSN of the newest record of the page.
    lsn: Lsn,
}

pub struct PageCache {
    dirty: HashMap<PageId, DirtyPage>,
    /// (lsn, page) of every dirty write, in LSN order, to unpin pages as VDL passes them.
    dirty_order: VecDeque<(Lsn, PageId)>,
    clean: LruCache<PageId, Bytes>,
    loading: HashMap<PageId, Arc<Notify>>,
}

impl PageCache {
    pub fn new(clean_pages_max: usize) -> PageCache {
        let capacity = NonZeroUsize::new(clean_pages_max.max(16)).expect("non-zero");
        PageCache {
            dirty: HashMap::new(),
            dirty_order: VecDeque::new(),
            clean: LruCache::new(capacity),
            loading: HashMap::new(),
        }
    }

    /// The cached bytes of a page (dirty first, then clean).
    pub fn get(&mut self, page: PageId) -> Option<Bytes> {
        if let Some(dirty) = self.dirty.get(&page) {
            return Some(dirty.data.clone());
        }
        self.clean.get(&page).cloned()
    }

    /// The latch of a page being fetched, if any.
    pub fn loading(&self, page: PageId) -> Option<Arc<Notify>> {
        self.loading.get(&page).cloned()
    }

    /// Latches a page for a fetch. The caller must call [`PageCache::finish_load`] afterwards.
    pub fn start_load(&mut self, page: PageId) {
        let previous = self.loading.insert(page, Arc::new(Notify::new()));
        debug_assert!(previous.is_none(), "page latched twice");
    }

    /// Ends a fetch: caches the bytes (if any and the page was not written meanwhile, which the
    /// latch prevents) and wakes everyone waiting on the latch.
    pub fn finish_load(&mut self, page: PageId, data: Option<Bytes>) {
        if let Some(data) = data {
            if !self.dirty.contains_key(&page) {
                self.clean.put(page, data);
            }
        }
        if let Some(latch) = self.loading.remove(&page) {
            latch.notify_waiters();
        }
    }

    /// Records a write of `page` by the record `lsn`: pins the new bytes until VDL passes it.
    pub fn put_dirty(&mut self, page: PageId, data: Bytes, lsn: Lsn) {
        self.clean.pop(&page);
        self.dirty.insert(page, DirtyPage { data, lsn });
        self.dirty_order.push_back((lsn, page));
    }

    /// Unpins every page whose newest record is at or below `vdl`, moving it to the clean LRU.
    pub fn unpin(&mut self, vdl: Lsn) {
        while let Some((lsn, page)) = self.dirty_order.front().copied() {
            if lsn > vdl {
                break;
            }
            self.dirty_order.pop_front();
            if self.dirty.get(&page).is_some_and(|d| d.lsn == lsn) {
                if let Some(dirty) = self.dirty.remove(&page) {
                    self.clean.put(page, dirty.data);
                }
            }
        }
    }

    pub fn dirty_pages(&self) -> usize {
        self.dirty.len()
    }

    pub fn clean_pages(&self) -> usize {
        self.clean.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_are_pinned_until_vdl() {
        let mut cache = PageCache::new(16);
        for i in 0..40u64 {
            cache.put_dirty(PageId(i), Bytes::from(vec![i as u8; 8]), Lsn(i + 1));
        }
        assert_eq!(cache.dirty_pages(), 40, "dirty pages are never evicted");
        cache.unpin(Lsn(20));
        assert_eq!(cache.dirty_pages(), 20);
        assert!(cache.clean_pages() <= 16);
        assert_eq!(cache.get(PageId(39)).expect("dirty")[0], 39);
    }

    #[test]
    fn rewritten_page_stays_pinned_for_its_newest_record() {
        let mut cache = PageCache::new(16);
        cache.put_dirty(PageId(1), Bytes::from_static(b"old"), Lsn(1));
        cache.put_dirty(PageId(1), Bytes::from_static(b"new"), Lsn(5));
        cache.unpin(Lsn(3));
        assert_eq!(cache.dirty_pages(), 1);
        assert_eq!(&cache.get(PageId(1)).expect("cached")[..], b"new");
        cache.unpin(Lsn(5));
        assert_eq!(cache.dirty_pages(), 0);
        assert_eq!(&cache.get(PageId(1)).expect("clean")[..], b"new");
    }
}
