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
//! - volume metadata: written again by the appender (the only writer of those files) as part of
//!   the rotation itself;
//! - hot-log frames: the rotation starts a new log file; the older files, and the frames under
//!   the older key in them, are deleted once folded and collected like any other
//!   ([`crate::folder`]): [`LogFiles::files_under_old_keys`] counts what is left;
//! - fold journals: every fold and every step of this pass writes a new one, sealed with the
//!   current key.
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
            let total = stores.values().filter_map(|s| s.slots().ok()).sum();
            let mut progress = lock(&shared.reseal);
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
        let mut pages = 0usize;
        let mut slots = 0u64;
        while pages < RESEAL_PAGES_PER_ROUND && slots < RESEAL_SLOTS_PER_ROUND {
            let Some((key, cursor)) = self.cursors.iter().next().map(|(k, c)| (k.clone(), *c))
            else {
                break;
            };
            let Some(store) = stores.get(&key) else {
                // The segment went away: nothing of it is left to re-seal.
                self.finish(shared, &key);
                continue;
            };
            let step = {
                let _folding = lock(&shared.fold_lock);
                store.reseal(cursor, RESEAL_SLOTS_PER_STEP)
            };
            match step {
                Ok((resealed, next)) => {
                    pages += resealed;
                    let swept = next.unwrap_or(cursor + RESEAL_SLOTS_PER_STEP) - cursor;
                    slots += swept;
                    {
                        let mut progress = lock(&shared.reseal);
                        progress.pages_resealed += resealed as u64;
                        progress.slots_swept = progress
                            .slots_swept
                            .saturating_add(swept)
                            .min(progress.slots_total);
                    }
                    match next {
                        Some(next) => {
                            self.cursors.insert(key, next);
                        }
                        None => self.finish(shared, &key),
                    }
                }
                Err(e) => {
                    // Tried again next round (a full disk, an I/O error): the pass never skips
                    // a store it has not finished.
                    error!(segment = %key, "re-seal step failed: {e}");
                    break;
                }
            }
        }
    }

    fn finish(&mut self, shared: &Shared, key: &SegmentKey) {
        self.cursors.remove(key);
        let mut progress = lock(&shared.reseal);
        progress.stores_left = self.cursors.len() as u64;
        if self.cursors.is_empty() {
            progress.slots_swept = progress.slots_total;
            if progress.pages_resealed == 0 {
                return;
            }
            info!(
                pages_resealed = progress.pages_resealed,
                "re-seal pass: every page store swept"
            );
        }
    }
}
