//! The node's keyring: the data keys it seals with, stored wrapped by the operator's
//! key-encryption key in `data_dir/keys/` ([`sixfold_keys`] for the hierarchy and the nonce
//! scheme). One data key per volume (scope = the volume's name) and one for the node's own
//! files (scope ""), made the first time something of that scope is sealed.
//!
//! Files: `keys/<key id>.key` (durable, crc | generation u32 | [`WrappedKey`]) and
//! `keys/incarnation` (durable, u32): raised at every open before anything is sealed, which is
//! what keeps nonces unique across restarts.
//!
//! Invariants:
//! - a data key is on disk, wrapped and durable, before the first unit sealed with it is written
//!   anywhere, so whatever this node wrote can be opened again by a process with the KEK;
//! - a keyring without a KEK seals nothing; a data directory with keys refuses to open without
//!   the KEK they are wrapped by (its error names that KEK), and with another one;
//! - of a scope's keys the one of the highest generation seals new data; every key opens.
//!
//! Rotation ([`Keyring::rotate`], `sixfold key rotate`): every scope that has a key gets a new
//! one of the next generation, durable before it seals anything; older keys stay in the keyring
//! (the units they sealed open until the re-seal pass has rewritten them, and archived objects
//! keep naming them). What still holds data under an older key is what [`Keyring::is_current`]
//! says no to; the folder's re-seal pass ([`crate::reseal`]) rewrites it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sixfold_keys::{DataKey, Kek, KeyError, KeyId, NonceSource, Sealed, WrappedKey};
use tracing::info;

use crate::durable;
use crate::error::NodeError;
use crate::lock;

const DIR: &str = "keys";
const INCARNATION_FILE: &str = "incarnation";
/// The scope of the node's own files (checkpoint, volume metadata).
pub const NODE_SCOPE: &str = "";

#[derive(Debug)]
pub struct Keyring {
    dir: PathBuf,
    kek: Option<Kek>,
    nonces: Arc<NonceSource>,
    keys: RwLock<HashMap<KeyId, Arc<DataKey>>>,
    /// This node's keys as stored (wrapped), to publish beside archived objects.
    wrapped: RwLock<HashMap<KeyId, WrappedKey>>,
    /// Per scope, the key that seals new data and its generation.
    current: Mutex<HashMap<String, (u32, Arc<DataKey>)>>,
    /// Rotations since this keyring was opened (the re-seal pass starts a sweep at each).
    rotations: std::sync::atomic::AtomicU64,
    /// Held through a rotation (one at a time).
    rotating: Mutex<()>,
    /// Held while a scope's first key is made (never while `current` is).
    making: Mutex<()>,
    /// The KEK being changed from (`--previous-key-file`): this node's keys were rewrapped
    /// from it at open; other nodes' keys published under it (beside archived objects) still
    /// unwrap with it.
    previous: Option<Kek>,
}

/// A scope's current key, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentKey {
    pub scope: String,
    pub generation: u32,
    pub key: KeyId,
}

impl Keyring {
    /// Opens the keyring of `data_dir` with the operator's KEK (None: no encryption).
    pub fn open(data_dir: &Path, kek: Option<Kek>) -> Result<Keyring, NodeError> {
        Keyring::open_changing(data_dir, kek, None)
    }

    /// [`Keyring::open`] while the KEK changes from `previous` to `kek`: every data key still
    /// wrapped by `previous` is unwrapped, checked, wrapped by `kek` and stored again (each file
    /// replaced durably, one at a time: a crash part way leaves each key wrapped by one of the
    /// two, and the next start finishes). Nothing else changes: the data keys, and so every
    /// sealed byte, stay as they are.
    pub fn open_changing(
        data_dir: &Path,
        kek: Option<Kek>,
        previous: Option<Kek>,
    ) -> Result<Keyring, NodeError> {
        let dir = data_dir.join(DIR);
        let mut stored = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(NodeError::io("list the keyring", &dir))?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if !name.ends_with(".key") {
                        continue;
                    }
                    let path = entry.path();
                    let body = durable::read_checked(&path)
                        .map_err(NodeError::io("read the data key", &path))?
                        .unwrap_or_default();
                    stored.push(decode_key_file(&body).map_err(|e| NodeError::Key {
                        path: path.clone(),
                        source: e,
                    })?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io("list the keyring", &dir)(e)),
        }
        let Some(kek) = kek else {
            if let Some((_, first)) = stored.first() {
                return Err(NodeError::Key {
                    path: dir,
                    source: KeyError::Kek(format!(
                        "this data directory holds data sealed with keys wrapped by \
                         key-encryption key {}; start the node with it (--key-file, SIXFOLD_KEY \
                         or --key-command)",
                        first.kek
                    )),
                });
            }
            return Ok(Keyring::without_kek(dir));
        };
        // A wrong KEK is refused before anything changes (the incarnation, and the rewrapping
        // of a KEK change, included).
        let known = |w: &WrappedKey| {
            &w.kek == kek.id() || previous.as_ref().is_some_and(|p| &w.kek == p.id())
        };
        if let Some((_, wrong)) = stored.iter().find(|(_, w)| !known(w)) {
            return Err(NodeError::Key {
                path: dir.join(key_file_name(wrong.key)),
                source: KeyError::WrongKek {
                    key: wrong.key,
                    wrapped_by: wrong.kek.clone(),
                    have: kek.id().clone(),
                },
            });
        }
        if let Some(previous) = previous.as_ref().filter(|p| p.id() != kek.id()) {
            let mut rewrapped = 0usize;
            for (generation, wrapped) in stored.iter_mut() {
                if &wrapped.kek != previous.id() {
                    continue;
                }
                let path = dir.join(key_file_name(wrapped.key));
                let key_error = |source| NodeError::Key {
                    path: path.clone(),
                    source,
                };
                let new = wrapped.rewrap(previous, &kek).map_err(key_error)?;
                if wrapped.check.is_none() {
                    // A key written before key-check values: nothing tells a wrong answer of
                    // a key command apart, so its old wrapping stays beside it (`ID.key.v1`,
                    // not read at start) until the operator has seen the data read back.
                    durable::write_checked(
                        &dir,
                        &format!("{}.v1", key_file_name(wrapped.key)),
                        &encode_key_file(*generation, wrapped),
                    )
                    .map_err(NodeError::io("keep the data key's old wrapping", &path))?;
                }
                durable::write_checked(
                    &dir,
                    &key_file_name(new.key),
                    &encode_key_file(*generation, &new),
                )
                .map_err(NodeError::io("store the rewrapped data key", &path))?;
                *wrapped = new;
                rewrapped += 1;
            }
            info!(
                from = %previous.id(),
                to = %kek.id(),
                data_keys = rewrapped,
                "key-encryption key changed: data keys rewrapped"
            );
        }
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(NodeError::io("create the keyring", &dir))?;
            crate::hotlog::sync_dir(data_dir).map_err(NodeError::io("sync", data_dir))?;
        }
        if !stored.is_empty() && !dir.join(INCARNATION_FILE).exists() {
            // Its keys sealed with nonces of incarnations it no longer knows: starting over at 1
            // could repeat one.
            return Err(NodeError::Key {
                path: dir.join(INCARNATION_FILE),
                source: KeyError::Kek(
                    "the keyring has data keys but lost its incarnation file; restore the file \
                     from a backup of this directory, or wipe the node's data directory and let \
                     repair copy its segments back"
                        .into(),
                ),
            });
        }
        let incarnation = next_incarnation(&dir)?;
        let nonces = NonceSource::new(incarnation).map_err(|e| NodeError::Key {
            path: dir.clone(),
            source: e,
        })?;
        let mut keys = HashMap::new();
        let mut wrapped_keys = HashMap::new();
        let mut current: HashMap<String, (u32, Arc<DataKey>)> = HashMap::new();
        for (generation, wrapped) in stored {
            let key = Arc::new(wrapped.unwrap(&kek, Arc::clone(&nonces)).map_err(|e| {
                NodeError::Key {
                    path: dir.join(key_file_name(wrapped.key)),
                    source: e,
                }
            })?);
            keys.insert(wrapped.key, Arc::clone(&key));
            let newer = current
                .get(&wrapped.scope)
                .is_none_or(|(g, _)| generation > *g);
            if newer {
                current.insert(wrapped.scope.clone(), (generation, key));
            }
            wrapped_keys.insert(wrapped.key, wrapped);
        }
        info!(
            kek = %kek.id(),
            data_keys = keys.len(),
            incarnation,
            "encryption at rest: on"
        );
        Ok(Keyring {
            dir,
            kek: Some(kek),
            nonces,
            keys: RwLock::new(keys),
            wrapped: RwLock::new(wrapped_keys),
            current: Mutex::new(current),
            rotations: Default::default(),
            rotating: Mutex::new(()),
            making: Mutex::new(()),
            previous,
        })
    }

    /// A keyring that seals nothing and opens nothing (tests of plaintext formats).
    pub fn plaintext() -> Arc<Keyring> {
        Arc::new(Keyring::without_kek(PathBuf::new()))
    }

    /// Encryption off: seals nothing, opens nothing.
    fn without_kek(dir: PathBuf) -> Keyring {
        Keyring {
            dir,
            kek: None,
            nonces: NonceSource::unused(),
            keys: RwLock::new(HashMap::new()),
            wrapped: RwLock::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
            rotations: Default::default(),
            rotating: Mutex::new(()),
            making: Mutex::new(()),
            previous: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.kek.is_some()
    }

    /// The KEK's id, when encryption is on.
    pub fn kek_id(&self) -> Option<String> {
        self.kek.as_ref().map(|k| k.id().to_string())
    }

    /// The key that seals new data of `scope` (made, wrapped and stored durably the first
    /// time); `None` when encryption is off.
    pub fn sealer(&self, scope: &str) -> Result<Option<Arc<DataKey>>, KeyError> {
        let Some(kek) = &self.kek else {
            return Ok(None);
        };
        if let Some((_, key)) = lock(&self.current).get(scope) {
            return Ok(Some(Arc::clone(key)));
        }
        // The first key of a scope is made (a file write, perhaps a KMS call) without holding
        // `current`, which every seal of every scope takes; one first key at a time.
        let _making = lock(&self.making);
        if let Some((_, key)) = lock(&self.current).get(scope) {
            return Ok(Some(Arc::clone(key))); // made while this one waited
        }
        let key = self.make_key(kek, scope, 1)?;
        lock(&self.current).insert(scope.to_owned(), (1, Arc::clone(&key)));
        Ok(Some(key))
    }

    /// True when sealing data of `scope` would first make its key (encryption on, no key yet).
    pub fn needs_key(&self, scope: &str) -> bool {
        self.kek.is_some() && !lock(&self.current).contains_key(scope)
    }

    /// Rotation: gives every scope that has a key a new one of the next generation, durably,
    /// and makes it the one that seals new data. Returns the new current keys (empty when
    /// encryption is off). A failure part way leaves the scopes done so far rotated; rotating
    /// again finishes the rest.
    pub fn rotate(&self) -> Result<Vec<CurrentKey>, KeyError> {
        let Some(kek) = &self.kek else {
            return Ok(Vec::new());
        };
        // One rotation at a time; the keys are made (a file write each, perhaps a KMS call)
        // without holding `current`, which every seal takes.
        let _rotating = lock(&self.rotating);
        let mut scopes: Vec<(String, u32)> = lock(&self.current)
            .iter()
            .map(|(s, (g, _))| (s.clone(), *g))
            .collect();
        scopes.sort();
        let mut made = Vec::with_capacity(scopes.len());
        let mut failure = None;
        for (scope, generation) in scopes {
            let Some(generation) = generation.checked_add(1) else {
                failure = Some(KeyError::Kek(format!(
                    "scope {scope:?} has used up its key generations"
                )));
                break;
            };
            match self.make_key(kek, &scope, generation) {
                Ok(key) => made.push((scope, generation, key)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut rotated = Vec::with_capacity(made.len());
        {
            let mut current = lock(&self.current);
            for (scope, generation, key) in made {
                rotated.push(CurrentKey {
                    scope: scope.clone(),
                    generation,
                    key: key.id(),
                });
                current.insert(scope, (generation, key));
            }
        }
        if !rotated.is_empty() {
            // Whatever rotated gets its re-seal sweep, even when a later scope failed.
            self.rotations
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            info!(keys = rotated.len(), "rotated the data keys");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rotated),
        }
    }

    /// Makes a new data key of `scope`, stores it wrapped and durable, and adds it to the ring.
    fn make_key(&self, kek: &Kek, scope: &str, generation: u32) -> Result<Arc<DataKey>, KeyError> {
        let (wrapped, key) = WrappedKey::generate(kek, scope, Arc::clone(&self.nonces))?;
        durable::write_checked(
            &self.dir,
            &key_file_name(wrapped.key),
            &encode_key_file(generation, &wrapped),
        )
        .map_err(|e| {
            KeyError::Malformed(format!(
                "cannot store new data key {} in {}: {e}",
                wrapped.key,
                self.dir.display()
            ))
        })?;
        let key = Arc::new(key);
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wrapped.key, Arc::clone(&key));
        self.wrapped
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wrapped.key, wrapped.clone());
        info!(key = %wrapped.key, scope, generation, "made a data key");
        Ok(key)
    }

    /// Rotations since the keyring was opened.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(std::sync::atomic::Ordering::Acquire)
    }

    /// True when `id` is the key that seals new data of its scope (data under any other key is
    /// for the re-seal pass).
    pub fn is_current(&self, id: KeyId) -> bool {
        lock(&self.current).values().any(|(_, key)| key.id() == id)
    }

    /// Every scope's current key, sorted by scope.
    pub fn current_keys(&self) -> Vec<CurrentKey> {
        let mut keys: Vec<CurrentKey> = lock(&self.current)
            .iter()
            .map(|(scope, (generation, key))| CurrentKey {
                scope: scope.clone(),
                generation: *generation,
                key: key.id(),
            })
            .collect();
        keys.sort_by(|a, b| a.scope.cmp(&b.scope));
        keys
    }

    /// The key `id`, to open what it sealed.
    pub fn key(&self, id: KeyId) -> Result<Arc<DataKey>, KeyError> {
        if self.kek.is_none() {
            return Err(KeyError::Kek(format!(
                "found data sealed with data key {id}, but this node has no key-encryption key"
            )));
        }
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                KeyError::Kek(format!(
                    "data key {id} is not in this node's keyring: its file keys/{}.key is missing \
                     (restore it from a backup of the data directory, or from VOLUME/keys/ in \
                     the backup store)",
                    id.hex()
                ))
            })
    }

    /// Whether the node started while changing its KEK (a previous one was given).
    pub fn changing_kek(&self) -> bool {
        self.previous.is_some()
    }

    /// Every key of this node as stored (wrapped).
    pub fn wrapped_all(&self) -> Vec<WrappedKey> {
        self.wrapped
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Key `id` as stored (wrapped), if it is one of this node's.
    pub fn wrapped(&self, id: KeyId) -> Option<WrappedKey> {
        self.wrapped
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Takes another node's data key (read from the object store beside what it sealed) to open
    /// with; kept in memory only, never used to seal. Refused, naming both, when it is wrapped by
    /// another KEK than this node's.
    pub fn adopt(&self, wrapped: &WrappedKey) -> Result<Arc<DataKey>, KeyError> {
        if let Some(key) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&wrapped.key)
        {
            return Ok(Arc::clone(key));
        }
        let Some(kek) = &self.kek else {
            return Err(KeyError::Kek(format!(
                "found data sealed with data key {} (wrapped by key-encryption key {}), but this \
                 node has no key-encryption key",
                wrapped.key, wrapped.kek
            )));
        };
        // Published by a node before the KEK changed: the previous KEK opens it.
        let unwrap_with = match &self.previous {
            Some(previous) if &wrapped.kek == previous.id() && &wrapped.kek != kek.id() => previous,
            _ => kek,
        };
        let key = Arc::new(wrapped.unwrap(unwrap_with, Arc::clone(&self.nonces))?);
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wrapped.key, Arc::clone(&key));
        Ok(key)
    }

    /// Seals `plaintext` of `scope` as a sealed box, or returns it as it is when encryption is
    /// off.
    pub fn seal_box(
        &self,
        scope: &str,
        context: &[u8],
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, KeyError> {
        match self.sealer(scope)? {
            Some(key) => key.seal(context, &plaintext),
            None => Ok(plaintext),
        }
    }

    /// Opens a sealed box (any key of the keyring); bytes that are no sealed box are returned
    /// as they are (written before encryption was on, or with it off).
    pub fn open_box(&self, context: &[u8], bytes: Vec<u8>) -> Result<Vec<u8>, KeyError> {
        if !Sealed::is_sealed(&bytes) {
            return Ok(bytes);
        }
        let sealed = Sealed::parse(&bytes)?;
        self.key(sealed.key)?.open(context, &sealed)
    }
}

fn key_file_name(id: KeyId) -> String {
    format!("{}.key", id.hex())
}

fn encode_key_file(generation: u32, wrapped: &WrappedKey) -> Vec<u8> {
    let mut body = generation.to_le_bytes().to_vec();
    body.extend_from_slice(&wrapped.encode());
    body
}

fn decode_key_file(body: &[u8]) -> Result<(u32, WrappedKey), KeyError> {
    let generation = body
        .get(..4)
        .map(|g| u32::from_le_bytes([g[0], g[1], g[2], g[3]]))
        .ok_or_else(|| KeyError::Malformed("key file is cut short".into()))?;
    Ok((generation, WrappedKey::decode(&body[4..])?))
}

/// Raises the stored incarnation by one, durably, and returns the new value.
fn next_incarnation(dir: &Path) -> Result<u32, NodeError> {
    let path = dir.join(INCARNATION_FILE);
    let last = match durable::read_checked(&path)
        .map_err(NodeError::io("read the keyring's incarnation", &path))?
    {
        Some(body) => u32::from_le_bytes(body.as_slice().try_into().map_err(|_| {
            NodeError::io("read the keyring's incarnation", &path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not 4 bytes",
            ))
        })?),
        None => 0,
    };
    let next = last.checked_add(1).ok_or_else(|| NodeError::Key {
        path: path.clone(),
        source: KeyError::Kek(
            "the keyring's incarnations are used up: wipe the node's data directory and let \
             repair copy its segments back (with new keys)"
                .into(),
        ),
    })?;
    durable::write_checked(dir, INCARNATION_FILE, &next.to_le_bytes())
        .map_err(NodeError::io("store the keyring's incarnation", &path))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(hex: &str) -> Kek {
        Kek::from_hex(hex).expect("kek")
    }

    #[test]
    fn keys_persist_and_incarnations_rise_and_a_wrong_kek_is_named() {
        let temp = crate::testutil::TempDir::new("keyring");
        let hex = Kek::generate_hex().expect("hex");
        let ring = Keyring::open(temp.path(), Some(kek(&hex))).expect("open");
        let sealed = ring
            .seal_box("vol", b"ctx", b"marker".to_vec())
            .expect("seal");
        assert_ne!(sealed, b"marker");
        drop(ring);

        let ring = Keyring::open(temp.path(), Some(kek(&hex))).expect("reopen");
        assert_eq!(
            ring.open_box(b"ctx", sealed.clone()).expect("open"),
            b"marker"
        );
        assert_eq!(
            durable::read_checked(&temp.path().join(DIR).join(INCARNATION_FILE))
                .expect("read")
                .expect("present"),
            2u32.to_le_bytes()
        );
        // The scope's key is reused, not replaced.
        let again = ring.seal_box("vol", b"ctx", b"m".to_vec()).expect("seal");
        assert_eq!(
            Sealed::parse(&again).unwrap().key,
            Sealed::parse(&sealed).unwrap().key
        );
        drop(ring);

        let err = Keyring::open(temp.path(), None).expect_err("no kek");
        assert!(err.to_string().contains("kek-"), "{err}");
        let other = Kek::generate_hex().expect("hex");
        let err = Keyring::open(temp.path(), Some(kek(&other))).expect_err("wrong kek");
        assert!(err.to_string().contains("wrapped by"), "{err}");
    }

    #[test]
    fn rotation_makes_the_next_generation_current_and_keeps_the_old_key() {
        let temp = crate::testutil::TempDir::new("keyring-rotate");
        let hex = Kek::generate_hex().expect("hex");
        let ring = Keyring::open(temp.path(), Some(kek(&hex))).expect("open");
        let old = ring.seal_box("vol", b"ctx", b"old".to_vec()).expect("seal");
        let node = ring
            .seal_box(NODE_SCOPE, b"ctx", b"n".to_vec())
            .expect("seal");
        let old_id = Sealed::parse(&old).unwrap().key;
        assert!(ring.is_current(old_id));
        let rotated = ring.rotate().expect("rotate");
        assert_eq!(
            rotated
                .iter()
                .map(|k| (k.scope.as_str(), k.generation))
                .collect::<Vec<_>>(),
            vec![(NODE_SCOPE, 2), ("vol", 2)]
        );
        assert_eq!(ring.rotations(), 1);
        assert!(!ring.is_current(old_id));
        let new = ring.seal_box("vol", b"ctx", b"new".to_vec()).expect("seal");
        let new_id = Sealed::parse(&new).unwrap().key;
        assert_ne!(new_id, old_id);
        assert!(ring.is_current(new_id));
        drop(ring);

        // After a restart the newest generation still seals, and every key still opens.
        let ring = Keyring::open(temp.path(), Some(kek(&hex))).expect("reopen");
        assert_eq!(ring.current_keys(), rotated);
        assert_eq!(ring.open_box(b"ctx", old).expect("old opens"), b"old");
        assert_eq!(ring.open_box(b"ctx", node).expect("node opens"), b"n");
        assert_eq!(ring.open_box(b"ctx", new).expect("new opens"), b"new");
        let again = ring.seal_box("vol", b"ctx", b"x".to_vec()).expect("seal");
        assert_eq!(Sealed::parse(&again).unwrap().key, new_id);

        // Without encryption there is nothing to rotate.
        assert!(Keyring::plaintext().rotate().expect("off").is_empty());
    }
}
