//! The re-seal pass: after a key rotation ([`crate::keyring::Keyring::rotate`], `sixfold key
//! rotate`), rewrites what this node holds under keys that no longer seal new data, in the
//! background, on the folder thread.
//!
//! What is sealed where, and how each unit gets to the new key:
//! - page-store slots: swept here, [`RESEAL_SLOTS_PER_STEP`] slots per step under `fold_lock`,
//!   each stale image sealed again at its own LSN through the fold journal
//!   ([`PageStore::reseal`]), at most [`RESEAL_PAGES_PER_ROUND`] pages per folder round so that
//!   folding and reads keep their share of the disk;
//! - the checkpoint: written again here, once per rotation;
//! - volume metadata: written again by the appender (the only writer of those files), in a job
//!   (`Job::Reseal`) sent at every rotation and once at start, for each volume whose file is in
//!   the clear or under an older key ([`crate::meta::MetaStore::under_old_keys`]);
//! - hot-log frames: the same job starts a new log file when the current one holds frames under
//!   an older key; the older files, and the frames under
//!   the older key in them, are deleted once folded and collected like any other
//!   ([`crate::folder`]): [`LogFiles::files_under_old_keys`] counts what is left;
//! - fold journals: every fold and every step of this pass writes a new one, sealed with the
//!   current key; at the end of a store's sweep a journal still under an older key is written
//!   again ([`PageStore::reseal_journal`]).
//!
//! A journal written by a step names the segment's fold point (read under `fold_lock`), never
//! the LSNs of the images it holds: an image may be above the fold point (a repair at the PGCL,
//! a hydration still copying), and a journal redone at open raises the fold point to what it
//! names. Pages under an older key that do not read back (damaged) are left to the scrubber's
//! repair, which writes them under the current key; their store is swept again until none is
//! left. The old hot-log files go only once their segments fold: a volume whose writer is gone,
//! or a PG whose peer is down, keeps them (and status shows them) until it folds again.
//!
//! Archived objects are immutable and keep their keys (their wrapped keys stay published beside
//! them); objects archived after the rotation use the new key.
//!
//! At every start the pass sweeps every page store once (a store's meta entries name their keys,
//! so a pass cut short by a restart is finished then, and data written in the clear before
//! encryption was turned on is sealed). Invariant: a step reads and rewrites its pages while
//! holding `fold_lock`, so no fold, hydration or repair writes the same slots in between, and
//! it rewrites an image at the LSN it read, never older (the page store refuses older).
//!
//! [`LogFiles::files_under_old_keys`]: crate::hotlog::LogFiles::files_under_old_keys

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, info};

use crate::folder::checkpoint_and_collect;
use crate::index::SegmentKey;
use crate::lock;
use crate::pagestore::PageStore;
use crate::store::Shared;

/// Page slots one step reads the meta entries of (at most this many pages re-sealed per step).
pub const RESEAL_SLOTS_PER_STEP: u64 = 1024;
/// Most pages re-sealed per folder round (4 MiB; the folder runs a round every 500 ms).
pub const RESEAL_PAGES_PER_ROUND: usize = 1024;
/// Most slots one round looks at (meta entries only, 64 bytes each).
pub const RESEAL_SLOTS_PER_ROUND: u64 = 64 * RESEAL_SLOTS_PER_STEP;

/// How far the pass is, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResealProgress {
    /// The keyring's rotation count the current sweep is for (None: not started since the node
    /// did): status counts everything as left while it differs from the keyring's.
    pub sweep_of: Option<u64>,
    /// Pages re-sealed since the node started.
    pub pages_resealed: u64,
    /// Page slots the current sweep has looked at, of how many.
    pub slots_swept: u64,
    pub slots_total: u64,
    /// Page stores the current sweep has not finished.
    pub stores_left: u64,
    /// The checkpoint is still under an older key (or not written yet since the rotation).
    pub checkpoint_left: bool,
}

/// The pass's place, owned by the folder thread.
#[derive(Debug, Default)]
pub struct Reseal {
    /// The keyring's rotation count the current sweep is for (None: no sweep yet).
    sweep_of: Option<u64>,
    /// Stores not yet finished in this sweep, and the slot each goes on from.
    cursors: BTreeMap<SegmentKey, u64>,
    /// Stores of this sweep with stale pages that did not read back (damaged): swept again once
    /// they are done, until the scrubber has had them repaired.
    unreadable: BTreeMap<SegmentKey, usize>,
    /// The rotation count the checkpoint was last written for.
    checkpoint_of: Option<u64>,
}

impl Reseal {
    /// One round of the pass (see the module docs); a no-op with encryption off.
    pub fn round(&mut self, shared: &Shared) {
        if !shared.keys.enabled() {
            return;
        }
        let rotation = shared.keys.rotations();
        let stores: BTreeMap<SegmentKey, Arc<PageStore>> = lock(&shared.pages)
            .iter()
            .map(|(key, store)| (key.clone(), Arc::clone(store)))
            .collect();
        if self.sweep_of != Some(rotation) {
            self.sweep_of = Some(rotation);
            self.cursors = stores.keys().map(|key| (key.clone(), 0)).collect();
            self.unreadable.clear();
            let total = stores.values().filter_map(|s| s.slots().ok()).sum();
            let mut progress = lock(&shared.reseal);
            progress.sweep_of = Some(rotation);
            progress.slots_total = total;
            progress.slots_swept = 0;
            progress.stores_left = self.cursors.len() as u64;
            progress.checkpoint_left = true;
            if rotation > 0 {
                info!(
                    stores = self.cursors.len(),
                    slots = total,
                    "re-seal pass started"
                );
            }
        }
        if self.checkpoint_of != Some(rotation) {
            match checkpoint_and_collect(shared) {
                Ok(_) => {
                    self.checkpoint_of = Some(rotation);
                    lock(&shared.reseal).checkpoint_left = false;
                }
                Err(e) => error!("re-seal: cannot write the checkpoint under the new key: {e}"),
            }
        }
        let mut budget = Budget::default();
        let keys: Vec<SegmentKey> = self.cursors.keys().cloned().collect();
        for key in keys {
            if budget.spent() {
                break;
            }
            match stores.get(&key) {
                // The segment went away: nothing of it is left to re-seal.
                None => self.finish(shared, &key),
                Some(store) => {
                    if let Err(e) = self.sweep_store(shared, &key, store, &mut budget) {
                        // Tried again next round (a full disk, an I/O error); the other stores
                        // go on meanwhile.
                        error!(segment = %key, "re-seal step failed: {e}");
                    }
                }
            }
        }
    }

    /// Steps through one store until it is done or the round's budget is spent.
    fn sweep_store(
        &mut self,
        shared: &Shared,
        key: &SegmentKey,
        store: &PageStore,
        budget: &mut Budget,
    ) -> std::io::Result<()> {
        while !budget.spent() {
            let Some(&cursor) = self.cursors.get(key) else {
                return Ok(());
            };
            let step = {
                let _folding = lock(&shared.fold_lock);
                // The fold point under fold_lock: no fold moves it meanwhile.
                let folded = {
                    let index = lock(&shared.index);
                    index.segment(key).map(|s| s.folded())
                };
                let Some(folded) = folded else {
                    drop(_folding);
                    self.finish(shared, key);
                    return Ok(());
                };
                let step = store.reseal(cursor, RESEAL_SLOTS_PER_STEP, folded)?;
                if step.next.is_none() {
                    store.reseal_journal()?;
                }
                step
            };
            let end = step.next.unwrap_or_else(|| store.slots().unwrap_or(cursor));
            let swept = end.saturating_sub(cursor);
            budget.pages += step.resealed;
            budget.slots += swept.max(1);
            *self.unreadable.entry(key.clone()).or_default() += step.unreadable;
            {
                let mut progress = lock(&shared.reseal);
                progress.pages_resealed += step.resealed as u64;
                progress.slots_swept = progress
                    .slots_swept
                    .saturating_add(swept)
                    .min(progress.slots_total);
            }
            match step.next {
                Some(next) => {
                    self.cursors.insert(key.clone(), next);
                }
                None if self.unreadable.remove(key).unwrap_or(0) > 0 => {
                    // Damaged stale pages: sweep the store again (they read once repaired).
                    self.cursors.insert(key.clone(), 0);
                    return Ok(());
                }
                None => {
                    self.finish(shared, key);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, shared: &Shared, key: &SegmentKey) {
        self.cursors.remove(key);
        self.unreadable.remove(key);
        let mut progress = lock(&shared.reseal);
        progress.stores_left = self.cursors.len() as u64;
        if self.cursors.is_empty() {
            progress.slots_swept = progress.slots_total;
            if progress.pages_resealed > 0 {
                info!(
                    pages_resealed = progress.pages_resealed,
                    "re-seal pass: every page store swept"
                );
            }
        }
    }
}

/// What one round of the pass may still do.
#[derive(Debug, Default)]
struct Budget {
    pages: usize,
    slots: u64,
}

impl Budget {
    fn spent(&self) -> bool {
        self.pages >= RESEAL_PAGES_PER_ROUND || self.slots >= RESEAL_SLOTS_PER_ROUND
    }
}
