//! The volume client ("the writer"): turns page writes into LSN-stamped redo records, sends them
//! to the six segments of each protection group, counts 4/6 acknowledgements into VCL and VDL,
//! serves reads from its page cache or from one caught-up segment (hedged to a second when the
//! first is slow), and recovers the volume's
//! chains when it opens it.
//!
//! Modules: `ledger` (LSN allocation, VCL/VDL/LAL; pure), `cache` (dirty
//! and clean pages), `delta` (changed byte ranges), `meta` (volume metadata quorum), `open`
//! (recovery at mount), `sender` (segment streams), `io` (read/write paths), `volume` (the API),
//! `status` (`sixfold status`).

mod append_conn;
mod cache;
pub mod clients;
mod delta;
mod error;
mod hedge;
mod io;
pub mod ledger;
mod membership;
mod meta;
pub mod nodes;
pub mod open;
pub mod recovery;
pub mod refusal;
pub mod restore;
mod sender;
mod shared;
pub mod status;
mod stream;
mod volume;

pub use clients::Clients;
pub use error::VolumeError;
pub use shared::RETAINED_DURABLE_RECORDS_MAX;
pub use sixfold_proto::cluster::ClusterConfig;
pub use volume::{validate_volume_name, Volume, VolumeStats, LAL};

/// How to open (or create) a volume.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub cluster: ClusterConfig,
    pub volume: String,
    /// Size of the volume if it does not exist yet (created on first mount).
    pub create_size_bytes: u64,
    /// Bytes of clean pages the writer's LRU page cache may hold.
    pub cache_bytes: u64,
    /// The writer's AZ, to prefer same-AZ segments for reads.
    pub az: Option<String>,
    /// Open for reading only: no epoch bump, no sealing, no truncation, no writes. Recovers the
    /// chain tails from 3 segments of each PG (a read quorum), so it works where a writer
    /// cannot open (a PG with only 3 segments reachable), and never fences the writer.
    pub read_only: bool,
    /// How connections to the nodes are secured (mutual TLS with a writer certificate).
    pub security: sixfold_transport::Security,
}
