//! The cluster file: which storage nodes exist and in which availability zone each one is.
//!
//! ```toml
//! [[node]]
//! addr = "127.0.0.1:7001"
//! az = "a"
//!
//! [backup]                      # optional: where the nodes archive (their --backup)
//! store = "/var/lib/sixfold/backup"   # or "s3://bucket/prefix"
//! endpoint = "http://127.0.0.1:9000"   # optional: an S3-compatible server
//! retention = "7d"                     # optional
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::geometry::{AZ_COUNT, COPIES_PER_AZ};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// host:port of the node's gRPC service.
    pub addr: String,
    /// Availability zone name.
    pub az: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
    /// Where the cluster's nodes archive: `sixfold snapshot` and `sixfold restore` read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSection>,
}

/// The `[backup]` table of a cluster file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSection {
    /// A directory, or `s3://bucket/prefix`.
    pub store: String,
    /// S3 endpoint URL for S3-compatible servers (else AWS_ENDPOINT_URL, else AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How long every consistency point stays restorable (e.g. "7d"; the nodes' default
    /// otherwise). `sixfold up` passes it to its nodes as `--retention`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster file {path} does not parse: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ClusterError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ClusterError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check().map_err(|message| ClusterError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// A cluster can host PGs when it has at least `AZ_COUNT` AZs of `COPIES_PER_AZ` nodes each.
    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for node in &self.nodes {
            if node.addr.trim().is_empty() || node.az.trim().is_empty() {
                return Err("every [[node]] needs a non-empty addr and az".into());
            }
            if !seen.insert(node.addr.as_str()) {
                return Err(format!("node {} is listed twice", node.addr));
            }
        }
        let usable = self
            .nodes_by_az()
            .values()
            .filter(|nodes| nodes.len() >= COPIES_PER_AZ)
            .count();
        if usable < AZ_COUNT {
            return Err(format!(
                "needs at least {AZ_COUNT} AZs with {COPIES_PER_AZ} nodes each, has {} node(s) in {} AZ(s)",
                self.nodes.len(),
                self.nodes_by_az().len()
            ));
        }
        Ok(())
    }

    /// Node addresses grouped by AZ, both sorted.
    pub fn nodes_by_az(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut by_az: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for node in &self.nodes {
            by_az
                .entry(node.az.as_str())
                .or_default()
                .push(node.addr.as_str());
        }
        for nodes in by_az.values_mut() {
            nodes.sort_unstable();
        }
        by_az
    }

    /// The AZ of a node, if it is in the cluster.
    pub fn az_of(&self, addr: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.addr == addr)
            .map(|n| n.az.as_str())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("cluster config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let text = r#"
[[node]]
addr = "127.0.0.1:1"
az = "a"
[[node]]
addr = "127.0.0.1:2"
az = "a"
[[node]]
addr = "127.0.0.1:3"
az = "b"
[[node]]
addr = "127.0.0.1:4"
az = "b"
[[node]]
addr = "127.0.0.1:5"
az = "c"
[[node]]
addr = "127.0.0.1:6"
az = "c"
"#;
        let config = ClusterConfig::parse(text, Path::new("c.toml")).expect("parses");
        assert_eq!(config.nodes.len(), 6);
        let again =
            ClusterConfig::parse(&config.to_toml(), Path::new("c.toml")).expect("round trip");
        assert_eq!(again, config);
        let too_small = "[[node]]\naddr = \"x:1\"\naz = \"a\"\n";
        let error = ClusterConfig::parse(too_small, Path::new("c.toml")).unwrap_err();
        assert!(
            error.to_string().contains("needs at least 3 AZs"),
            "{error}"
        );
        let garbage = ClusterConfig::parse("[[node]\n", Path::new("c.toml")).unwrap_err();
        assert!(matches!(garbage, ClusterError::Parse { .. }));
    }
}
