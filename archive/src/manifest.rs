//! JSON manifests: snapshots (what rebuilds a volume at one LSN) and base images (which chunks
//! make one complete).

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::store::{ObjectError, ObjectStore};

/// Every snapshot manifest of `volume`, oldest first. A manifest that does not parse is an
/// error naming it (never skipped: retention must not forget what a snapshot keeps).
pub async fn snapshots(
    objects: &ObjectStore,
    volume: &str,
) -> Result<Vec<SnapshotManifest>, ObjectError> {
    let mut out = Vec::new();
    for listed in objects.list(&keys::snapshots_prefix(volume)).await? {
        let body = objects.get(&listed.key).await?;
        let manifest: SnapshotManifest =
            serde_json::from_slice(&body).map_err(|e| ObjectError::Corrupt {
                store: objects.describe(),
                key: listed.key.clone(),
                why: e.to_string(),
            })?;
        out.push(manifest);
    }
    out.sort_by_key(|m| (m.created_unix_s, m.lsn));
    Ok(out)
}

/// A snapshot: a consistency point of a volume and, for each PG, the objects that rebuild it
/// there. Retention keeps every object a snapshot names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub name: String,
    pub volume: String,
    pub size_bytes: u64,
    pub page_size: u32,
    /// The consistency point (a VDL the writer reached).
    pub lsn: u64,
    /// When it was taken (Unix seconds) and when the writer reached `lsn` (Unix microseconds;
    /// 0 when unknown).
    pub created_unix_s: u64,
    pub lsn_time_us: u64,
    pub pgs: Vec<SnapshotPg>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPg {
    pub pg: u32,
    /// LSN of the base image to start from; None: from the PG's first record.
    pub base: Option<u64>,
    /// Run names (under the PG's `log/`), in order.
    pub runs: Vec<String>,
}

/// Written last, after every chunk of a base image: the image is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseManifest {
    pub volume: String,
    pub pg: u32,
    /// Every page of the PG as of this LSN (pages never written are absent: zeros).
    pub lsn: u64,
    pub chunks: Vec<BaseChunk>,
    pub pages: u64,
    pub created_unix_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChunk {
    pub index: u32,
    pub pages: u64,
    pub bytes: u64,
}
