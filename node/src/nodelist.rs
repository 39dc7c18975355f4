//! This node's copy of the cluster's node list ([`sixfold_proto::nodes`]), in
//! `data_dir/node-list` (crc32c | protobuf).
//!
//! Invariants: the stored version never decreases; a put of the stored version with other
//! contents is refused (two changes racing for one version cannot both win it); what `get`
//! answers is what the file holds (the copy in memory changes only after the file is durable).
//!
//! Crash consistency: [`crate::durable`]; a damaged file is logged and treated as absent (the
//! list is read from a majority of the nodes, so one lost copy costs nothing).

use std::path::{Path, PathBuf};

use prost::Message;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire;
use tracing::error;

use crate::durable;
use crate::error::{NodeError, StoreError};

pub const FILE_NAME: &str = "node-list";

#[derive(Debug)]
pub struct NodeListStore {
    dir: PathBuf,
    list: Option<NodeList>,
}

impl NodeListStore {
    pub fn open(data_dir: &Path) -> Result<NodeListStore, NodeError> {
        let path = data_dir.join(FILE_NAME);
        let list = match durable::read_checked(&path) {
            Ok(Some(body)) => match wire::NodeList::decode(body.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|list| NodeList::from_wire(&list).map_err(|e| e.to_string()))
            {
                Ok(list) => Some(list),
                Err(e) => {
                    error!(path = %path.display(), "node list file does not decode: ignored: {e}");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                error!(path = %path.display(), "node list file is damaged: ignored: {e}");
                None
            }
        };
        Ok(NodeListStore {
            dir: data_dir.to_owned(),
            list,
        })
    }

    pub fn get(&self) -> Option<&NodeList> {
        self.list.as_ref()
    }

    /// Keeps `list` if it is newer (blocking I/O: call off the async runtime). Returns the
    /// version held afterwards.
    pub fn put(&mut self, list: NodeList) -> Result<u64, StoreError> {
        if let Some(held) = &self.list {
            if list.version < held.version || *held == list {
                return Ok(held.version);
            }
            if list.version == held.version {
                return Err(StoreError::Conflict(format!(
                    "node list version {} is already held with other contents: another change \
                     of the cluster won it; read the list again",
                    held.version
                )));
            }
        }
        durable::write_checked(&self.dir, FILE_NAME, &list.to_wire().encode_to_vec()).map_err(
            |source| StoreError::Io {
                action: "store the node list",
                source,
            },
        )?;
        let version = list.version;
        self.list = Some(list);
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use sixfold_proto::nodes::{NodeRecord, NodeState};
    use sixfold_proto::NodeId;

    fn list(version: u64, addr: &str) -> NodeList {
        NodeList {
            version,
            nodes: vec![NodeRecord {
                id: NodeId(1),
                addr: addr.into(),
                az: "a".into(),
                state: NodeState::Active,
            }],
        }
    }

    #[test]
    fn versions_only_rise_and_a_rival_version_is_refused() {
        let temp = TempDir::new("nodelist");
        let mut store = NodeListStore::open(temp.path()).expect("open");
        assert_eq!(store.get(), None);
        assert_eq!(store.put(list(2, "x:1")).expect("put"), 2);
        assert_eq!(store.put(list(2, "x:1")).expect("retry"), 2);
        assert!(matches!(
            store.put(list(2, "y:1")),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.put(list(1, "z:1")).expect("stale"), 2);
        let reopened = NodeListStore::open(temp.path()).expect("reopen");
        assert_eq!(reopened.get(), Some(&list(2, "x:1")));
        std::fs::write(temp.path().join(FILE_NAME), b"garbage!").expect("damage");
        assert_eq!(
            NodeListStore::open(temp.path()).expect("reopen").get(),
            None
        );
    }
}
