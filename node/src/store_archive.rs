//! What the archiver ([`crate::archiver`]) and restore ([`crate::restore`]) need of the store:
//! a view of each segment's backup state, its writer's consistency points, and the archived
//! point that caps folding. All in-memory (soft state); see [`crate::index::SegmentSlot`].

use std::sync::atomic::Ordering;

use sixfold_proto::Lsn;

use crate::index::{Mark, SegmentKey};
use crate::lock;
use crate::store::Store;

/// One segment as the archiver sees it.
#[derive(Clone, Debug)]
pub struct ArchiveView {
    pub key: SegmentKey,
    /// The address the writer knows this node by (empty: not told yet) and the PG's others.
    pub addr: String,
    pub peers: Vec<String>,
    pub scl: Lsn,
    pub folded: Lsn,
    /// The newest consistency point whose records this segment holds whole (its PGCL is at or
    /// below the SCL): the archive can reach its VDL now.
    pub coverable: Option<Mark>,
}

/// Backup state of one segment, for NodeStatus.
#[derive(Clone, Debug, Default)]
pub struct ArchiveStatus {
    pub archived: Lsn,
    pub archiver: bool,
    pub lag_ms: u64,
    pub error: Option<String>,
}

impl Store {
    /// Turns backup on: from now on no segment folds past its archived point.
    pub fn enable_backup(&self, store: String) {
        lock(&self.shared.index).archive_on = true;
        *lock(&self.shared.backup_store) = Some(store);
    }

    /// Every segment the node holds.
    pub fn segment_keys(&self) -> std::collections::HashSet<SegmentKey> {
        lock(&self.shared.index)
            .slots()
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// One segment as the archiver sees it (None: the node no longer holds it).
    pub fn archive_view(&self, key: &SegmentKey) -> Option<ArchiveView> {
        let index = lock(&self.shared.index);
        let slot = index.slot(key)?;
        let scl = slot.segment.scl();
        Some(ArchiveView {
            key: key.clone(),
            addr: slot.addr.clone(),
            peers: slot.peers.clone(),
            scl,
            folded: slot.segment.folded(),
            coverable: slot.marks.iter().rev().find(|m| m.pgcl <= scl).copied(),
        })
    }

    /// The consistency points in (after, to], oldest first.
    pub fn marks_between(&self, key: &SegmentKey, after: Lsn, to: Lsn) -> Vec<Mark> {
        let index = lock(&self.shared.index);
        index.slot(key).map_or_else(Vec::new, |slot| {
            slot.marks
                .iter()
                .filter(|m| m.vdl > after && m.vdl <= to)
                .copied()
                .collect()
        })
    }

    /// Every record of the segment's PG at or below `archived` is in the archive: the segment
    /// may fold that far, and forgets the consistency points up to it. Never moves back.
    pub fn note_archived(&self, key: &SegmentKey, archived: Lsn, time_us: u64) {
        let mut index = lock(&self.shared.index);
        if index.slot(key).is_none() {
            return;
        }
        let slot = index.slot_mut(key);
        if archived > slot.archived {
            slot.archived = archived;
            if time_us > 0 {
                slot.archived_time_us = time_us;
            }
        }
        slot.drop_marks(archived);
    }

    /// Records whether this node archives the segment's PG now, and its last error.
    pub fn set_archiver(&self, key: &SegmentKey, archiver: bool, error: Option<String>) {
        let mut index = lock(&self.shared.index);
        if index.slot(key).is_none() {
            return;
        }
        let slot = index.slot_mut(key);
        slot.archiver = archiver;
        slot.archive_error = error;
    }

    pub fn count_archived(&self, bytes: u64) {
        self.shared.archived_objects.fetch_add(1, Ordering::Relaxed);
        self.shared
            .archived_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// (store, objects, bytes) for NodeStatus.
    pub fn backup_totals(&self) -> (Option<String>, u64, u64) {
        (
            lock(&self.shared.backup_store).clone(),
            self.shared.archived_objects.load(Ordering::Relaxed),
            self.shared.archived_bytes.load(Ordering::Relaxed),
        )
    }

    /// The backup state of a segment: the lag is how long ago the writer reached its oldest
    /// consistency point not yet archived (0 when the archive is caught up).
    pub fn archive_status(&self, key: &SegmentKey, now_us: u64) -> ArchiveStatus {
        let index = lock(&self.shared.index);
        index.slot(key).map_or_else(ArchiveStatus::default, |slot| {
            let lag_ms = slot
                .marks
                .front()
                .map_or(0, |m| now_us.saturating_sub(m.time_us) / 1000);
            ArchiveStatus {
                archived: slot.archived,
                archiver: slot.archiver,
                lag_ms,
                error: slot.archive_error.clone(),
            }
        })
    }

    /// Holds the segment's fold point still (or lets it go) while the archiver scans its page
    /// store for a base image. Taking the hold waits for a fold step under way (the fold lock),
    /// so the page store is whole at the fold point when the scan starts.
    pub async fn hold_for_image(&self, key: &SegmentKey, hold: bool) {
        let shared = std::sync::Arc::clone(&self.shared);
        let key = key.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _folding = lock(&shared.fold_lock);
            let mut index = lock(&shared.index);
            if index.slot(&key).is_some() {
                index.slot_mut(&key).image_hold = hold;
            }
        })
        .await;
    }

    /// Restore: applies `records` (validated, in LSN order, all above every stored image's LSN
    /// of the pages they touch) to the segment's page store, durably. The fold point does not
    /// move (see [`Store::finish_hydration`]). Pages with no stored image start from zeros.
    pub async fn apply_restored_records(
        &self,
        key: &SegmentKey,
        records: Vec<sixfold_proto::wire::Record>,
    ) -> Result<(), crate::error::StoreError> {
        use crate::error::StoreError;
        use crate::pagestore::{PageImage, Stored};
        use sixfold_proto::{record, PageId, PAGE_SIZE};
        let shared = std::sync::Arc::clone(&self.shared);
        let key = key.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _folding = lock(&shared.fold_lock);
            let store = crate::folder::page_store(&shared, &key)?;
            let io = |action: &'static str| move |source| StoreError::Io { action, source };
            let mut pages: std::collections::BTreeMap<PageId, PageImage> = Default::default();
            for r in &records {
                let page = PageId(r.page);
                if let std::collections::btree_map::Entry::Vacant(slot) = pages.entry(page) {
                    let image = if record::is_full_page(r) {
                        PageImage {
                            page,
                            lsn: Lsn::ZERO,
                            data: vec![0u8; PAGE_SIZE],
                        }
                    } else {
                        match store
                            .read(page)
                            .map_err(io("read a page to restore into"))?
                        {
                            Stored::Absent => PageImage {
                                page,
                                lsn: Lsn::ZERO,
                                data: vec![0u8; PAGE_SIZE],
                            },
                            Stored::Page { data, lsn } => PageImage { page, lsn, data },
                            Stored::Corrupt(detail) => {
                                return Err(StoreError::Corrupt {
                                    volume: key.volume.clone(),
                                    pg: key.pg.0,
                                    lsn: r.lsn,
                                    detail,
                                })
                            }
                        }
                    };
                    slot.insert(image);
                }
                if let Some(image) = pages.get_mut(&page) {
                    if Lsn(r.lsn) > image.lsn {
                        record::apply(r, &mut image.data);
                        image.lsn = Lsn(r.lsn);
                    }
                }
            }
            let images: Vec<PageImage> = pages.into_values().collect();
            store
                .store_copies(&images)
                .map_err(io("store restored pages"))?;
            Ok(())
        })
        .await;
        result.map_err(|e| crate::error::StoreError::Io {
            action: "apply restored records",
            source: std::io::Error::other(e.to_string()),
        })?
    }

    /// Whether the node holds anything for the segment.
    pub fn segment_exists(&self, key: &SegmentKey) -> bool {
        lock(&self.shared.index).slot(key).is_some()
    }
}
