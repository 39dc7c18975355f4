//! sixfold's shared vocabulary and wire protocol.
//!
//! Both sides of the wire use this crate: the writer (`sixfold-blockdev`) and the storage node
//! (`sixfold-node`). It holds the newtypes of DESIGN.md's vocabulary ([`Lsn`], [`PageId`],
//! [`PgId`], [`Epoch`]), the geometry constants with the assertions that tie them together, the
//! canonical record encoding and its checksum ([`record`]), the cluster file ([`cluster`]) and
//! segment placement ([`placement`]).

pub mod cluster;
pub mod collision;
pub mod geometry;
pub mod membership;
pub mod nodes;
pub mod placement;
pub mod rebalance;
pub mod record;
pub mod types;

pub use geometry::*;
pub use types::*;

/// The generated protobuf messages and tonic client/server of `proto/sixfold.proto`.
#[allow(clippy::all, missing_docs)]
pub mod wire {
    tonic::include_proto!("sixfold.v1");
}
