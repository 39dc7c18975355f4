//! The node's stable identity: a random [`NodeId`] chosen at its first start and kept in
//! `data_dir/node-id`, so that the segments it holds belong to it wherever it listens.
//!
//! Crash consistency: the id is written durably ([`crate::durable`]) before the node serves
//! anything, so no peer or writer ever learns an id the node could forget. A damaged id file
//! stops the node with an error (a node that silently took a new id would look like a new,
//! empty node to its cluster while holding old segments).

use std::path::Path;

use sixfold_proto::NodeId;
use tracing::info;

use crate::durable;
use crate::error::NodeError;

pub const FILE_NAME: &str = "node-id";

/// The node's id: read from `data_dir`, or chosen and stored on first start.
pub fn load_or_create(data_dir: &Path) -> Result<NodeId, NodeError> {
    let path = data_dir.join(FILE_NAME);
    let damaged = |detail: String| NodeError::Io {
        action: "read the node id",
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
    };
    if let Some(body) =
        durable::read_checked(&path).map_err(NodeError::io("read the node id", &path))?
    {
        let text = String::from_utf8(body).map_err(|_| damaged("not UTF-8".into()))?;
        return NodeId::parse(text.trim())
            .ok_or_else(|| damaged(format!("{text:?} is not a node id")));
    }
    let id = random_id();
    durable::write_checked(data_dir, FILE_NAME, id.to_string().as_bytes())
        .map_err(NodeError::io("store the node id", &path))?;
    info!(node_id = %id, "first start: chose the node's id");
    Ok(id)
}

/// A random non-zero id.
fn random_id() -> NodeId {
    loop {
        let id = sixfold_proto::random_u64();
        if id != 0 {
            return NodeId(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn the_id_survives_restarts_and_a_damaged_file_is_an_error() {
        let temp = TempDir::new("identity");
        let id = load_or_create(temp.path()).expect("first start");
        assert_eq!(load_or_create(temp.path()).expect("restart"), id);
        let other = TempDir::new("identity-other");
        assert_ne!(load_or_create(other.path()).expect("another node"), id);
        std::fs::write(temp.path().join(FILE_NAME), b"garbage!").expect("damage");
        assert!(load_or_create(temp.path()).is_err());
    }
}
