//! Volume metadata this node stores for the cluster: one `VolumeMeta` per volume name, in
//! `data_dir/meta/<volume>.meta` (crc32c u32 | protobuf bytes). The writer replicates it like a PG
//! (put at 4/6 with a version, read from 3/6); each node keeps the highest version it was given.
//!
//! Invariants: the stored version of a volume never decreases; what `get` answers is what the file
//! holds (the cache is only updated after the file is durable).
//!
//! Crash consistency: a put writes a temp file, fsyncs it, renames it over the old file and fsyncs
//! the directory before it is acknowledged, so after a crash each volume has either the old or the
//! new metadata, whole. A leftover temp file (crash before the rename) is deleted on start. A file
//! that fails its crc is logged and ignored (the writer reads metadata from 3 nodes and takes the
//! highest version, so one bad copy is not fatal).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use sixfold_proto::wire::VolumeMeta;
use tracing::{error, warn};

use crate::error::NodeError;
use crate::keyring::{Keyring, NODE_SCOPE};
use crate::request;
use sixfold_keys::{KeyId, Sealed};

const SUFFIX: &str = ".meta";
const TEMP_SUFFIX: &str = ".meta.tmp";
const _: () = assert!(TEMP_SUFFIX.len() == SUFFIX.len() + crate::durable::TEMP_SUFFIX.len());
/// Longest volume name used verbatim as a file name (a 255-byte name plus a suffix would exceed
/// the file-name limit of most file systems).
const STEM_BYTES_MAX: usize = 200;

/// The file name stem of a volume's metadata: the name itself, or for long names a prefix, `~`
/// (not allowed in volume names, so no clash) and a 64-bit hash of the whole name. The file also
/// holds the name, checked on load.
fn file_stem(volume: &str) -> String {
    if volume.len() <= STEM_BYTES_MAX {
        return volume.to_string();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in volume.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut end = STEM_BYTES_MAX;
    while !volume.is_char_boundary(end) {
        end -= 1; // Volume names are ASCII once validated; never panic on any other string.
    }
    format!("{}~{hash:016x}", &volume[..end])
}

/// The metadata files of one node, with an in-memory copy of each.
#[derive(Debug)]
pub struct MetaStore {
    dir: PathBuf,
    volumes: BTreeMap<String, VolumeMeta>,
    /// The data key each volume's file is sealed with (None: in the clear), for the re-seal
    /// pass ([`MetaStore::under_old_keys`]).
    sealed_with: BTreeMap<String, Option<KeyId>>,
}

impl MetaStore {
    /// Loads every metadata file of `dir` (created if missing).
    pub fn open(dir: &Path, keys: Arc<Keyring>) -> Result<MetaStore, NodeError> {
        let io_error = NodeError::io;
        std::fs::create_dir_all(dir).map_err(io_error("create metadata directory", dir))?;
        let mut volumes = BTreeMap::new();
        let mut sealed_with = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io_error("list metadata directory", dir))? {
            let entry = entry.map_err(io_error("list metadata directory", dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                warn!(path = %path.display(), "ignoring a metadata file with a non-UTF-8 name");
                continue;
            };
            if name.ends_with(TEMP_SUFFIX) {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(path = %path.display(), "failed to remove a leftover metadata temp file: {e}");
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                warn!(path = %path.display(), "ignoring an unexpected file in the metadata directory");
                continue;
            };
            let bytes = std::fs::read(&path).map_err(io_error("read metadata file", &path))?;
            let decoded = decode(&bytes, stem, &keys).map_err(|source| NodeError::Key {
                path: path.clone(),
                source,
            })?;
            match decoded {
                Some(meta)
                    if file_stem(&meta.name) == stem
                        && request::volume_name(&meta.name).is_ok() =>
                {
                    sealed_with.insert(meta.name.clone(), sealed_key(&bytes));
                    volumes.insert(meta.name.clone(), meta);
                }
                Some(meta) => error!(
                    path = %path.display(), stored_name = %meta.name,
                    "metadata file names another volume: ignored"
                ),
                None => error!(path = %path.display(), "metadata file is corrupt: ignored"),
            }
        }
        Ok(MetaStore {
            dir: dir.to_owned(),
            volumes,
            sealed_with,
        })
    }

    pub fn get(&self, volume: &str) -> Option<&VolumeMeta> {
        self.volumes.get(volume)
    }

    /// How many volumes' metadata the node holds.
    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn all(&self) -> impl Iterator<Item = &VolumeMeta> {
        self.volumes.values()
    }

    /// The version a put of `meta` must beat: `Some(stored)` when the put is a no-op (an older
    /// version, or a retry of the stored one).
    pub fn stale(&self, meta: &VolumeMeta) -> Option<u64> {
        let stored = self.volumes.get(&meta.name)?;
        (meta.version <= stored.version).then_some(stored.version)
    }

    /// Whether `meta` claims the stored version with other contents (another writer's). PG
    /// memberships do not count: they are merged per PG by epoch ([`MetaStore::merged`]).
    pub fn conflicts(&self, meta: &VolumeMeta) -> bool {
        self.volumes.get(&meta.name).is_some_and(|stored| {
            stored.version == meta.version
                && without_memberships(stored) != without_memberships(meta)
        })
    }

    /// `meta` with each PG's membership replaced by the stored one where that is newer: a
    /// writer that read the metadata before a membership change never puts the old one back.
    pub fn merged(&self, meta: &VolumeMeta) -> VolumeMeta {
        let mut merged = meta.clone();
        if let Some(stored) = self.volumes.get(&meta.name) {
            for placement in &mut merged.pgs {
                if let Some(held) = stored.pgs.iter().find(|p| p.pg == placement.pg) {
                    if membership_epoch(held) > membership_epoch(placement) {
                        placement.membership = held.membership.clone();
                        placement.nodes = held.nodes.clone();
                    }
                }
            }
        }
        merged
    }

    /// The stored metadata with PG `pg`'s membership replaced by `membership` if that is newer
    /// (None: nothing to change), and the PG's membership epoch afterwards (0: no such PG).
    pub fn with_membership(
        &self,
        volume: &str,
        pg: u32,
        membership: &sixfold_proto::wire::Membership,
        nodes: &[String],
    ) -> (Option<VolumeMeta>, u64) {
        let Some(stored) = self.volumes.get(volume) else {
            return (None, 0);
        };
        let Some(position) = stored.pgs.iter().position(|p| p.pg == pg) else {
            return (None, 0);
        };
        let held = membership_epoch(&stored.pgs[position]);
        if membership.epoch <= held {
            return (None, held);
        }
        let mut updated = stored.clone();
        updated.pgs[position].membership = Some(membership.clone());
        updated.pgs[position].nodes = nodes.to_vec();
        (Some(updated), membership.epoch)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caches metadata that [`write_durable`] has written, sealed with `sealed_with`.
    pub fn insert(&mut self, meta: VolumeMeta, sealed_with: Option<KeyId>) {
        self.sealed_with.insert(meta.name.clone(), sealed_with);
        self.volumes.insert(meta.name.clone(), meta);
    }

    /// The volumes whose file is in the clear or under a key that no longer seals, with
    /// encryption on: the re-seal pass writes them again.
    pub fn under_old_keys(&self, keys: &Keyring) -> Vec<VolumeMeta> {
        if !keys.enabled() {
            return Vec::new();
        }
        self.volumes
            .values()
            .filter(|meta| {
                self.sealed_with
                    .get(&meta.name)
                    .copied()
                    .flatten()
                    .is_none_or(|key| !keys.is_current(key))
            })
            .cloned()
            .collect()
    }

    /// Writes `meta` durably, then caches it.
    #[cfg(test)]
    pub fn put(&mut self, meta: VolumeMeta) -> io::Result<()> {
        let sealed_with = write_durable(&self.dir, &meta, &Keyring::plaintext())?;
        self.insert(meta, sealed_with);
        Ok(())
    }
}

/// The epoch of a PG's recorded membership (0: none recorded).
pub fn membership_epoch(placement: &sixfold_proto::wire::PgPlacement) -> u64 {
    placement.membership.as_ref().map_or(0, |m| m.epoch)
}

fn without_memberships(meta: &VolumeMeta) -> VolumeMeta {
    let mut meta = meta.clone();
    for placement in &mut meta.pgs {
        placement.membership = None;
        placement.nodes.clear();
    }
    meta
}

/// Writes `meta` to `dir` durably ([`crate::durable::write_checked`]). The caller has
/// validated the name (a file name by construction) and checked [`MetaStore::stale`].
/// With encryption at rest on, the body is sealed under the node's data key, with the file's
/// name as authenticated data (a volume's file copied over another's does not open).
/// Returns the data key the file is sealed with (None: in the clear).
pub fn write_durable(dir: &Path, meta: &VolumeMeta, keys: &Keyring) -> io::Result<Option<KeyId>> {
    let stem = file_stem(&meta.name);
    let body = keys
        .seal_box(NODE_SCOPE, &context(&stem), meta.encode_to_vec())
        .map_err(io::Error::other)?;
    crate::durable::write_checked(dir, &format!("{stem}{SUFFIX}"), &body)?;
    Ok(Sealed::is_sealed(&body)
        .then(|| Sealed::parse(&body).ok().map(|s| s.key))
        .flatten())
}

/// The data key a metadata file's bytes are sealed with (None: in the clear, or damaged).
fn sealed_key(bytes: &[u8]) -> Option<KeyId> {
    let body = crate::durable::decode_checked(bytes)?;
    Sealed::is_sealed(body)
        .then(|| Sealed::parse(body).ok().map(|s| s.key))
        .flatten()
}

fn context(stem: &str) -> Vec<u8> {
    format!("sixfold volume metadata {stem}").into_bytes()
}

/// The metadata in a file's bytes; `Ok(None)` when they are damaged (crc or format); an error
/// when they are intact but do not open with this node's keys (never taken for damage: the file
/// would then be ignored and overwritten).
pub(crate) fn decode(
    bytes: &[u8],
    stem: &str,
    keys: &Keyring,
) -> Result<Option<VolumeMeta>, sixfold_keys::KeyError> {
    let Some(body) = crate::durable::decode_checked(bytes) else {
        return Ok(None);
    };
    let body = keys.open_box(&context(stem), body.to_vec())?;
    Ok(VolumeMeta::decode(body.as_slice()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn meta(version: u64) -> VolumeMeta {
        VolumeMeta {
            name: "vol".into(),
            size_bytes: 1 << 30,
            page_size: 4096,
            epoch: 2,
            version,
            pgs: Vec::new(),
            writer: 0,
            restoring: false,
        }
    }

    #[test]
    fn put_survives_reopen_and_versions_only_rise() {
        let temp = TempDir::new("meta");
        let mut store = MetaStore::open(temp.path(), Keyring::plaintext()).expect("open");
        assert_eq!(store.stale(&meta(1)), None);
        store.put(meta(3)).expect("put");
        assert_eq!(store.stale(&meta(3)), Some(3));
        assert_eq!(store.stale(&meta(2)), Some(3));
        assert_eq!(store.stale(&meta(4)), None);
        std::fs::write(temp.path().join("other.meta.tmp"), b"half").expect("write");
        std::fs::write(temp.path().join("bad.meta"), b"garbage!").expect("write");
        let store = MetaStore::open(temp.path(), Keyring::plaintext()).expect("reopen");
        assert_eq!(store.get("vol"), Some(&meta(3)));
        assert_eq!(store.get("bad"), None);
        assert!(!temp.path().join("other.meta.tmp").exists());
    }

    #[test]
    fn longest_names_fit_a_file_name() {
        let temp = TempDir::new("meta-long");
        let mut store = MetaStore::open(temp.path(), Keyring::plaintext()).expect("open");
        let long = VolumeMeta {
            name: "x".repeat(255),
            ..meta(1)
        };
        let other = VolumeMeta {
            name: format!("{}y", "x".repeat(254)),
            ..meta(1)
        };
        store.put(long.clone()).expect("put");
        store.put(other.clone()).expect("put");
        let store = MetaStore::open(temp.path(), Keyring::plaintext()).expect("reopen");
        assert_eq!(store.get(&long.name), Some(&long));
        assert_eq!(store.get(&other.name), Some(&other));
    }
}
