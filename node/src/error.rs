//! Errors: [`NodeError`] for starting and running the node (what `run` returns), [`StoreError`] for
//! one request (mapped to a gRPC status in one place, [`StoreError::to_status`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use prost::Message as _;
use sixfold_proto::wire::{RefusalDetail, RefusalReason};
use sixfold_proto::{Epoch, Lsn, PgId};

use crate::segment::Truncation;
use thiserror::Error;

/// Why the node could not start or stopped serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encryption at rest: {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: sixfold_keys::KeyError,
    },
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("failed to {action}: {message}")]
    Task {
        action: &'static str,
        message: String,
    },
}

/// Why one request failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "volume {volume}: fenced: request epoch {request} is older than the node's epoch {known}"
    )]
    Fenced {
        volume: String,
        request: u64,
        known: u64,
    },
    #[error("segment {volume}/PG {pg} not hosted on this node")]
    NotHosted { volume: String, pg: u32 },
    #[error("segment {volume}/PG {pg}: segment behind: scl {scl} < required {required}")]
    Behind {
        volume: String,
        pg: u32,
        scl: u64,
        required: u64,
    },
    #[error(
        "segment {volume}/PG {pg}: missed the recovery of epoch {epoch} (truncation after LSN \
         {after}): it cannot serve reads until it learns it (another segment can)"
    )]
    HistoryBehind {
        volume: String,
        pg: u32,
        epoch: u64,
        after: u64,
    },
    #[error("segment {volume}/PG {pg}: corrupt data on disk (at LSN {lsn}): {detail}")]
    Corrupt {
        volume: String,
        pg: u32,
        lsn: u64,
        detail: String,
    },
    #[error(
        "segment {volume}/PG {pg}: {what} at or below {folded} are folded into pages here; \
         {advice}"
    )]
    Folded {
        volume: String,
        pg: u32,
        folded: u64,
        what: &'static str,
        advice: &'static str,
    },
    #[error("failed to {action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
    /// The request's PG membership is older than the segment's: a membership change happened.
    #[error(
        "segment {volume}/PG {pg}: stale membership: the request's membership epoch {request} \
         is older than the segment's {held} (re-read the PG's membership)"
    )]
    StaleMembership {
        volume: String,
        pg: u32,
        request: u64,
        held: u64,
    },
    /// A compare-and-set lost: the node holds another value for the version asked.
    #[error("{0}")]
    Conflict(String),
    #[error("the hot log failed earlier (write or fsync error); the node refuses writes until restarted")]
    LogFailed,
    #[error("the node's disk is full ({0}); appends resume when there is room")]
    NoRoom(String),
    /// The node holds as much of something as it takes (segments): refused like a full node.
    #[error("{0}")]
    Full(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl NodeError {
    /// For `map_err`: an I/O error of `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> NodeError {
        let path = path.to_owned();
        move |source| NodeError::Io {
            action,
            path,
            source,
        }
    }
}

impl StoreError {
    /// A copy for each job of a failed group (I/O errors are not `Clone`): the same variant, so
    /// that each job's caller sees the same gRPC status.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Io { action, source } => StoreError::Io {
                action,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::NoRoom(m) => StoreError::NoRoom(m.clone()),
            StoreError::Full(m) => StoreError::Full(m.clone()),
            StoreError::InvalidArgument(m) => StoreError::InvalidArgument(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::StaleMembership {
                volume,
                pg,
                request,
                held,
            } => StoreError::StaleMembership {
                volume: volume.clone(),
                pg: *pg,
                request: *request,
                held: *held,
            },
            StoreError::Fenced {
                volume,
                request,
                known,
            } => StoreError::Fenced {
                volume: volume.clone(),
                request: *request,
                known: *known,
            },
            StoreError::NotHosted { volume, pg } => StoreError::NotHosted {
                volume: volume.clone(),
                pg: *pg,
            },
            StoreError::Behind {
                volume,
                pg,
                scl,
                required,
            } => StoreError::Behind {
                volume: volume.clone(),
                pg: *pg,
                scl: *scl,
                required: *required,
            },
            StoreError::HistoryBehind {
                volume,
                pg,
                epoch,
                after,
            } => StoreError::HistoryBehind {
                volume: volume.clone(),
                pg: *pg,
                epoch: *epoch,
                after: *after,
            },
            StoreError::Corrupt {
                volume,
                pg,
                lsn,
                detail,
            } => StoreError::Corrupt {
                volume: volume.clone(),
                pg: *pg,
                lsn: *lsn,
                detail: detail.clone(),
            },
            StoreError::Folded {
                volume,
                pg,
                folded,
                what,
                advice,
            } => StoreError::Folded {
                volume: volume.clone(),
                pg: *pg,
                folded: *folded,
                what,
                advice,
            },
            StoreError::LogFailed => StoreError::LogFailed,
            StoreError::ShuttingDown => StoreError::ShuttingDown,
        }
    }

    pub fn fenced(volume: &str, request: Epoch, known: Epoch) -> StoreError {
        StoreError::Fenced {
            volume: volume.to_string(),
            request: request.0,
            known: known.0,
        }
    }

    pub fn not_hosted(volume: &str, pg: PgId) -> StoreError {
        StoreError::NotHosted {
            volume: volume.to_string(),
            pg: pg.0,
        }
    }

    pub fn behind(volume: &str, pg: PgId, scl: Lsn, required: Lsn) -> StoreError {
        StoreError::Behind {
            volume: volume.to_string(),
            pg: pg.0,
            scl: scl.0,
            required: required.0,
        }
    }

    pub fn history_behind(volume: &str, pg: PgId, missing: Truncation) -> StoreError {
        StoreError::HistoryBehind {
            volume: volume.to_string(),
            pg: pg.0,
            epoch: missing.epoch.0,
            after: missing.after.0,
        }
    }

    /// The gRPC status a client sees.
    /// The gRPC status of a refusal: a code, the message for people, and the structured reason
    /// ([`RefusalDetail`]) in the status's details, which is what callers decide by.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let (code, reason) = match self {
            StoreError::InvalidArgument(_) => {
                (Code::InvalidArgument, RefusalReason::RefusalInvalidArgument)
            }
            StoreError::Fenced { .. } => (Code::FailedPrecondition, RefusalReason::RefusalFenced),
            StoreError::Behind { .. } | StoreError::HistoryBehind { .. } => {
                (Code::FailedPrecondition, RefusalReason::RefusalBehind)
            }
            StoreError::Folded { .. } => (Code::FailedPrecondition, RefusalReason::RefusalFolded),
            StoreError::Conflict(_) => (Code::FailedPrecondition, RefusalReason::RefusalConflict),
            StoreError::StaleMembership { .. } => (
                Code::FailedPrecondition,
                RefusalReason::RefusalStaleMembership,
            ),
            StoreError::NotHosted { .. } => (Code::NotFound, RefusalReason::RefusalNotHosted),
            StoreError::Corrupt { .. } => (Code::DataLoss, RefusalReason::RefusalCorrupt),
            StoreError::Io { .. } => (Code::Internal, RefusalReason::RefusalUnavailable),
            StoreError::LogFailed | StoreError::ShuttingDown => {
                (Code::Unavailable, RefusalReason::RefusalUnavailable)
            }
            StoreError::NoRoom(_) | StoreError::Full(_) => {
                (Code::ResourceExhausted, RefusalReason::RefusalNoRoom)
            }
        };
        let detail = RefusalDetail {
            reason: reason as i32,
        };
        tonic::Status::with_details(code, self.to_string(), detail.encode_to_vec().into())
    }
}
