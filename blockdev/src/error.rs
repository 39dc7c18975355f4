//! Errors of the volume client. The FUSE layer maps them to errno in one place.

use sixfold_proto::{Epoch, Lsn, PgId};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VolumeError {
    #[error("volume {volume}: request at offset {offset} of {len} bytes lies beyond the volume's {size_bytes} bytes")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size_bytes: u64,
    },
    #[error("volume {volume}: cannot shrink from {size_bytes} to {requested} bytes")]
    Shrink {
        volume: String,
        size_bytes: u64,
        requested: u64,
    },
    #[error("volume {volume}: size {requested} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        volume: String,
        requested: u64,
        max: u64,
    },
    #[error("volume {volume}: fenced by a newer writer ({epoch} is no longer current)")]
    Fenced { volume: String, epoch: Epoch },
    #[error("volume {volume}: {pg} has only {reachable} of 6 segments reachable, needs {needed} ({detail})")]
    QuorumLost {
        volume: String,
        pg: PgId,
        reachable: usize,
        needed: usize,
        detail: String,
    },
    /// A segment of the PG holds a newer membership than the one the writer used: a membership
    /// change is under way; reading the metadata again gives the new one.
    #[error("volume {volume}: {pg}'s membership changed ({detail}); reading it again")]
    MembershipChanged {
        volume: String,
        pg: PgId,
        detail: String,
    },
    #[error("volume {volume}: no segment of {pg} could serve a read at LSN {lsn}: {detail}")]
    ReadUnavailable {
        volume: String,
        pg: PgId,
        lsn: Lsn,
        detail: String,
    },
    #[error("volume {volume}: metadata: {detail}")]
    Meta { volume: String, detail: String },
    /// Too few of the volume's metadata nodes answered to read its metadata.
    #[error("volume {volume}: metadata: only {answered} of the 6 metadata nodes answered, {needed} needed{detail}")]
    MetaUnreachable {
        volume: String,
        answered: usize,
        needed: usize,
        detail: String,
    },
    /// The cluster's node list could not be read (or made from the cluster file).
    #[error("volume {volume}: the cluster's node list: {detail}")]
    Cluster {
        volume: String,
        /// Too few nodes answered (waiting could help).
        unreachable: bool,
        detail: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("volume is closed")]
    Closed,
    #[error("volume {volume}: mounted read-only")]
    ReadOnly { volume: String },
}

impl VolumeError {
    /// Whether the error only says that too few nodes answer: one that more nodes starting (or
    /// coming back) would cure, so a command started before its nodes may wait and try again.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            VolumeError::MetaUnreachable { .. }
                | VolumeError::QuorumLost { .. }
                | VolumeError::MembershipChanged { .. }
                | VolumeError::Cluster {
                    unreachable: true,
                    ..
                }
        )
    }
}
