//! Object stores: a local directory (the embedded default) or an S3 bucket.
//!
//! Both offer the four calls backup needs: put a whole object, get it, list the keys under a
//! prefix, delete one. Keys are `/`-separated relative paths made by [`crate::keys`].
//!
//! Invariants:
//! - a put is atomic: a reader sees the whole object or none (the directory store writes a
//!   temporary file, fsyncs it, renames it into place and fsyncs the directory; S3 puts are
//!   atomic by definition);
//! - a put that returned is durable (fsync'd, or acknowledged by S3);
//! - errors name the store, the key and what failed; a missing object is [`ObjectError::NotFound`],
//!   never a generic failure, so callers can tell "not there" from "cannot ask".

use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("{store}: object {key} does not exist")]
    NotFound { store: String, key: String },
    #[error("{store}: cannot {action} {key}: {message}")]
    Failed {
        store: String,
        action: &'static str,
        key: String,
        message: String,
    },
    #[error("{store}: object {key} is corrupt: {why}")]
    Corrupt {
        store: String,
        key: String,
        why: String,
    },
    #[error("bad object store {spec:?}: {why}")]
    BadSpec { spec: String, why: String },
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// Where archived objects live.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    Dir(DirStore),
    S3(Box<crate::s3::S3Store>),
}

impl ObjectStore {
    /// Opens a store spec: `s3://bucket/prefix` (with an endpoint URL for S3-compatible
    /// servers) or a directory path.
    pub async fn open(spec: &str, endpoint: Option<&str>) -> Result<ObjectStore, ObjectError> {
        if spec.trim().is_empty() {
            return Err(ObjectError::BadSpec {
                spec: spec.into(),
                why: "empty".into(),
            });
        }
        if spec.starts_with("s3://") {
            return Ok(ObjectStore::S3(Box::new(crate::s3::S3Store::open(
                spec, endpoint,
            )?)));
        }
        Ok(ObjectStore::Dir(DirStore::new(PathBuf::from(spec))))
    }

    /// The spec this store was opened from, for messages and status.
    pub fn describe(&self) -> String {
        match self {
            ObjectStore::Dir(dir) => dir.root.display().to_string(),
            ObjectStore::S3(s3) => s3.describe(),
        }
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        check_key(self, key)?;
        match self {
            ObjectStore::Dir(dir) => dir.put(key, body).await,
            ObjectStore::S3(s3) => s3.put(key, body).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        check_key(self, key)?;
        match self {
            ObjectStore::Dir(dir) => dir.get(key).await,
            ObjectStore::S3(s3) => s3.get(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (a folder, ending in `/`), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        let mut listed = match self {
            ObjectStore::Dir(dir) => dir.list(prefix).await?,
            ObjectStore::S3(s3) => s3.list(prefix).await?,
        };
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// Deletes an object; deleting one that does not exist is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        check_key(self, key)?;
        match self {
            ObjectStore::Dir(dir) => dir.delete(key).await,
            ObjectStore::S3(s3) => s3.delete(key).await,
        }
    }
}

/// Keys come from [`crate::keys`]; this refuses anything that could leave the store's root.
fn check_key(store: &ObjectStore, key: &str) -> Result<(), ObjectError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(ObjectError::Failed {
            store: store.describe(),
            action: "use the key",
            key: key.into(),
            message: "not a valid object key".into(),
        });
    }
    Ok(())
}

/// The embedded default: objects are files under a root directory.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: PathBuf) -> DirStore {
        DirStore { root }
    }

    fn failed(&self, action: &'static str, key: &str, e: impl std::fmt::Display) -> ObjectError {
        ObjectError::Failed {
            store: self.root.display().to_string(),
            action,
            key: key.into(),
            message: e.to_string(),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        let path = self.root.join(key);
        let this = self.clone();
        let key = key.to_owned();
        blocking(move || write_atomically(&path, &body).map_err(|e| this.failed("put", &key, e)))
            .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let path = self.root.join(key);
        match tokio::fs::read(&path).await {
            Ok(body) => Ok(Bytes::from(body)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ObjectError::NotFound {
                store: self.root.display().to_string(),
                key: key.into(),
            }),
            Err(e) => Err(self.failed("get", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // The folder part of the prefix is walked; the rest filters names.
            let folder = match prefix.rfind('/') {
                Some(at) => &prefix[..at],
                None => "",
            };
            let mut out = Vec::new();
            let start = this.root.join(folder);
            walk(&this.root, &start, &mut out).map_err(|e| this.failed("list", &prefix, e))?;
            out.retain(|l| l.key.starts_with(&prefix));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match tokio::fs::remove_file(self.root.join(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.failed("delete", key, e)),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ObjectError> + Send + 'static,
) -> Result<T, ObjectError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ObjectError::Failed {
            store: "local directory".into(),
            action: "run",
            key: String::new(),
            message: e.to_string(),
        })
    })
}

/// Temporary files are named `<name>.tmp-<random>` next to their object; listings skip them.
const TMP_MARK: &str = ".tmp-";

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no folder"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_file_name(format!(
        "{}{TMP_MARK}{:016x}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        unique()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A name part no other temporary file of this machine has now.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Listed>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(TMP_MARK) {
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            out.push(Listed {
                key: relative.to_string_lossy().into_owned(),
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn directory_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("sixfold-dirstore-{}", unique()));
        let store = ObjectStore::open(dir.to_str().unwrap(), None)
            .await
            .unwrap();
        store
            .put("v/pg-00001/log/a.run", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("v/pg-00001/head", Bytes::from_static(b"7"))
            .await
            .unwrap();
        store
            .put("w/x", Bytes::from_static(b"other"))
            .await
            .unwrap();
        assert_eq!(store.get("v/pg-00001/head").await.unwrap(), "7");
        let listed = store.list("v/pg-00001/").await.unwrap();
        let keys: Vec<_> = listed.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["v/pg-00001/head", "v/pg-00001/log/a.run"]);
        assert!(store.list("nothing/").await.unwrap().is_empty());
        assert!(matches!(
            store.get("v/missing").await,
            Err(ObjectError::NotFound { .. })
        ));
        store.delete("v/pg-00001/head").await.unwrap();
        store.delete("v/pg-00001/head").await.unwrap();
        assert!(store.get("../escape").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
