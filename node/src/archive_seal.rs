//! Archived objects under encryption at rest: the archiver seals the objects that hold volume
//! data (runs of records, base-image chunks) with this node's data key of the volume, and
//! restore opens them on any node with the same key-encryption key.
//!
//! ```text
//! sealed object = "SXFE" | clear_len u32 | clear | sealed box of the plaintext object
//!                 (sixfold_archive::format::sealed_envelope; the box's context is the object's key)
//! VOLUME/keys/ID.key = the data key ID, wrapped (sixfold_keys::WrappedKey)
//! ```
//!
//! `clear` is what the admin's commands read without a key: a run's consistency points (the
//! run with its records left out), so that `snapshot` and `restore --to-time` need no key;
//! nothing for page chunks.
//!
//! Invariants: a data key's wrapped form is in the object store before the first object sealed
//! with it (so whatever is archived can be opened by a process with the KEK, even after this
//! node is gone); an object opens only under the key it was put at (its key is authenticated),
//! so objects cannot be swapped or replayed to other places. Heads, base manifests and
//! snapshot manifests hold LSNs, times and counts, no volume data, and stay in the clear.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sixfold_archive::{format, ObjectStore};
use sixfold_keys::{KeyId, Sealed, WrappedKey};

use crate::keyring::Keyring;
use crate::lock;

/// Where a volume's data key `id` is published in the object store.
pub fn data_key_object(volume: &str, id: KeyId) -> String {
    format!("{volume}/keys/{}.key", id.hex())
}

/// What a sealed object's box authenticates: the object's key (no object opens at another
/// place) and its clear part (consistency points changed in the clear make it fail to open).
fn context(object: &str, clear: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(object.len() + clear.len() + 4);
    context.extend_from_slice(&(object.len() as u32).to_le_bytes());
    context.extend_from_slice(object.as_bytes());
    context.extend_from_slice(clear);
    context
}

/// Seals archive objects; remembers which data keys it has published in this process.
#[derive(Debug)]
pub struct ArchiveSealer {
    keys: Arc<Keyring>,
    published: Mutex<HashSet<(String, KeyId)>>,
}

impl ArchiveSealer {
    pub fn new(keys: Arc<Keyring>) -> ArchiveSealer {
        ArchiveSealer {
            keys,
            published: Mutex::new(HashSet::new()),
        }
    }

    /// Seals `body` (to be put at `object`, of `volume`) when encryption is on, with `clear` in
    /// the clear beside it, publishing the data key first; returns `body` unchanged when off.
    /// Sealing runs off the runtime thread.
    pub async fn seal(
        &self,
        objects: &ObjectStore,
        volume: &str,
        object: &str,
        clear: Bytes,
        body: Bytes,
    ) -> Result<Bytes, String> {
        // Making a volume's first key writes a file (and may run a KMS command): off the
        // runtime thread.
        let keys = Arc::clone(&self.keys);
        let scope = volume.to_owned();
        let sealer = tokio::task::spawn_blocking(move || keys.sealer(&scope))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(key) = sealer else {
            return Ok(body);
        };
        let published = (volume.to_owned(), key.id());
        if !lock(&self.published).contains(&published) {
            let wrapped = self
                .keys
                .wrapped(key.id())
                .ok_or_else(|| format!("data key {} is not in the keyring", key.id()))?;
            objects
                .put(
                    &data_key_object(volume, key.id()),
                    Bytes::from(wrapped.encode()),
                )
                .await
                .map_err(|e| format!("publish data key {}: {e}", key.id()))?;
            lock(&self.published).insert(published);
        }
        let context = context(object, &clear);
        tokio::task::spawn_blocking(move || {
            let sealed = key.seal(&context, &body).map_err(|e| e.to_string())?;
            Ok(format::sealed_envelope(&clear, &sealed))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// After a change of KEK (the node started with `--previous-key-*`): publishes every data key
/// this node holds, of every volume, again, now wrapped by the new KEK, so that what this node
/// archived opens with the new KEK alone, quiet volumes and snapshots' objects included. Retries
/// (every 30 s) until every key is published.
pub async fn republish_after_kek_change(keys: Arc<Keyring>, objects: ObjectStore) {
    if !keys.changing_kek() {
        return;
    }
    let mut left = keys.wrapped_all();
    left.retain(|w| w.scope != crate::keyring::NODE_SCOPE);
    let total = left.len();
    while !left.is_empty() {
        let mut failed = Vec::new();
        for wrapped in left {
            let object = data_key_object(&wrapped.scope, wrapped.key);
            if let Err(e) = objects.put(&object, Bytes::from(wrapped.encode())).await {
                tracing::warn!(key = %wrapped.key, volume = %wrapped.scope, "could not publish a rewrapped data key (retrying in 30 s): {e}");
                failed.push(wrapped);
            }
        }
        left = failed;
        if !left.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    }
    tracing::info!(
        keys = total,
        "published every data key again under the new key-encryption key"
    );
}

/// Opens an object fetched from `object` of `volume`'s archive: a plaintext one as it is, a
/// sealed one with its data key (this node's, or fetched from the store and unwrapped with this
/// node's KEK). A wrong or missing KEK is an error that names the key the object needs.
pub async fn open(
    keys: &Arc<Keyring>,
    objects: &ObjectStore,
    volume: &str,
    object: &str,
    body: Bytes,
) -> Result<Bytes, String> {
    let id = match format::split_sealed(&body).map_err(|e| format!("object {object}: {e}"))? {
        None => return Ok(body),
        Some(parts) => {
            Sealed::parse(parts.sealed)
                .map_err(|e| format!("object {object}: {e}"))?
                .key
        }
    };
    let key = match keys.key(id) {
        Ok(key) => key,
        Err(_) => {
            let published = data_key_object(volume, id);
            let bytes = objects
                .get(&published)
                .await
                .map_err(|e| format!("object {object} needs data key {id}: {e}"))?;
            let wrapped = WrappedKey::decode(&bytes).map_err(|e| format!("{published}: {e}"))?;
            if wrapped.key != id {
                return Err(format!("{published} holds data key {}", wrapped.key));
            }
            let keys = Arc::clone(keys);
            tokio::task::spawn_blocking(move || keys.adopt(&wrapped))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("object {object}: {e}"))?
        }
    };
    let object_key = object.to_owned();
    tokio::task::spawn_blocking(move || {
        let parts = format::split_sealed(&body)
            .map_err(|e| e.to_string())?
            .ok_or("not sealed")?;
        let sealed = Sealed::parse(parts.sealed).map_err(|e| e.to_string())?;
        key.open(&context(&object_key, parts.clear), &sealed)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("object {object}: {e}"))
}

#[cfg(test)]
mod kek_change_tests {
    use super::*;
    use crate::testutil::TempDir;
    use sixfold_keys::Kek;

    /// After a change of KEK, every key the node holds (older generations, volumes it no longer
    /// archives to) is published again wrapped by the new KEK, so the archive opens without
    /// the previous one.
    #[tokio::test]
    async fn every_key_is_published_again_after_a_kek_change() {
        let temp = TempDir::new("kek-republish");
        let old = Kek::generate_hex().expect("kek");
        let new = Kek::generate_hex().expect("kek");
        let kek = |hex: &str| Kek::from_hex(hex).expect("kek");
        let ids = {
            let ring = Keyring::open(temp.path(), Some(kek(&old))).expect("ring");
            ring.sealer("a").expect("key");
            ring.sealer("b").expect("key");
            ring.rotate().expect("rotate");
            ring.wrapped_all()
        };
        let ring = Arc::new(
            Keyring::open_changing(temp.path(), Some(kek(&new)), Some(kek(&old))).expect("change"),
        );
        let objects = ObjectStore::open(&temp.path().join("store").display().to_string(), None)
            .await
            .expect("store");
        republish_after_kek_change(Arc::clone(&ring), objects.clone()).await;
        let volume_keys: Vec<_> = ids
            .iter()
            .filter(|w| w.scope != crate::keyring::NODE_SCOPE)
            .collect();
        assert_eq!(volume_keys.len(), 4, "two volumes, two generations each");
        for wrapped in volume_keys {
            let body = objects
                .get(&data_key_object(&wrapped.scope, wrapped.key))
                .await
                .expect("published");
            let published = WrappedKey::decode(&body).expect("decodes");
            assert_eq!(&published.kek, kek(&new).id(), "{}", wrapped.key);
            let fresh =
                Keyring::open(&temp.path().join("elsewhere"), Some(kek(&new))).expect("ring");
            fresh
                .adopt(&published)
                .expect("opens with the new KEK alone");
        }
    }
}
