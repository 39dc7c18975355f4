//! The sixfold storage node: hosts segments (one PG's replica each) for any number of volumes,
//! hardens the writer's redo records to one hot log per node (group commit: one fsync for many
//! batches of many segments), serves pages as of an LSN, tracks each segment's backlink chain
//! (SCL), fences old writers by volume epoch, stores volume metadata, fills chain holes from
//! peers (gossip gap-fill), and folds records into per-segment page stores so that the hot log,
//! the index in memory and restart time stay bounded.
//!
//! Modules, from pure to driving:
//! - [`frame`]: hot-log frame encoding (pure);
//! - [`segment`]: one segment's index and chain/SCL logic (pure);
//! - [`index`]: all segments and volume epochs, rebuilt from frames (pure);
//! - [`request`]: validation of network input (pure);
//! - [`hotlog`]: log files, appends, replay, torn-tail cut;
//! - [`meta`]: volume metadata files;
//! - [`pagestore`]: one segment's pages as of its fold point (double-write journal, checksums);
//! - [`checkpoint`]: epochs, fold points and truncations that outlive deleted log files;
//! - [`appender`]: the group-commit thread, the only writer of the hot log and metadata;
//! - [`folder`]: the folding thread, the only writer of page stores and the checkpoint, and the
//!   hot-log garbage collector;
//! - [`store`]: the shared handle (recovery, reads, job submission);
//! - [`service`]: the tonic service; [`gossip`]: the gap-fill task; [`hydrate`]: catching up
//!   from a peer's pages when no peer's log still holds the missing records.
//!
//! The node serves what it acknowledged, after any crash: see "Crash consistency" in [`hotlog`],
//! [`appender`], [`meta`] and [`store`], and the ordering rules in [`pagestore`] and [`folder`].

mod access;
pub mod admission;
mod append_server;
mod appender;
mod archive_seal;
mod archiver;
pub mod bandwidth;
mod checkpoint;
mod dirlock;
mod durable;
pub mod error;
mod folder;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
mod gossip;
mod hotlog;
mod hydrate;
mod identity;
pub mod index;
pub mod keyring;
pub mod members;
mod meta;
mod metrics;
mod nodelist;
mod pagestore;
mod pagewrite;
mod peer;
mod repair;
pub mod repair_pass;
pub mod repair_plan;
mod request;
mod reseal;
mod restore;
mod retention;
pub mod segment;
mod service;
mod store;
mod store_archive;

#[cfg(test)]
mod fold_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use sixfold_proto::wire::storage_node_server::StorageNodeServer;
use sixfold_transport::{Authorized, Security};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use archiver::{
    ArchiveConfig, BASE_EVERY_BYTES, CLOCK_SKEW_DEFAULT, RETENTION_DEFAULT, RETENTION_PASS_EVERY,
};
pub use error::NodeError;
pub use repair::{RepairConfig, REPAIR_AFTER_DEFAULT};

use crate::service::Service;
use crate::store::Store;

/// The transport limits, shared with every client (defined once in `sixfold-transport`).
pub use sixfold_transport::{CONNECTION_WINDOW_BYTES, MESSAGE_BYTES_MAX, STREAM_WINDOW_BYTES};

/// How to run one storage node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Address to serve gRPC on.
    pub listen: SocketAddr,
    /// Availability zone of this node (reported by NodeStatus).
    pub az: String,
    /// Where the hot log (`log/`) and volume metadata (`meta/`) live.
    pub data_dir: PathBuf,
    /// Continuous backup: where to archive every PG this node hosts (None: backup off).
    pub backup: Option<ArchiveConfig>,
    /// Automatic repair: when a lost member is replaced, and how many at once.
    pub repair: RepairConfig,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// How gRPC connections, served and made, are secured (mutual TLS, or `--insecure`).
    pub security: Security,
    /// Encryption at rest: where the key-encryption key comes from (None: data is written in
    /// the clear, and a data directory holding sealed data refuses to open).
    pub key: Option<sixfold_keys::KekSource>,
    /// Changing the key-encryption key: the one `key` replaces. The node rewraps its data keys
    /// from it at start, and unwraps with it keys other nodes published under it.
    pub previous_key: Option<sixfold_keys::KekSource>,
}

/// Opens (recovers) the node's state from `data_dir`, then serves gRPC on `config.listen` until
/// `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let store = open_store(&config).await?;
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(source) => {
            store.close().await;
            return Err(NodeError::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    serve(config, store, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind 127.0.0.1:0 and read the port);
/// `config.listen` is ignored.
pub async fn run_with_listener(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let store = open_store(&config).await?;
    serve(config, store, listener, shutdown).await
}

async fn open_store(config: &NodeConfig) -> Result<Store, NodeError> {
    let data_dir = config.data_dir.clone();
    let key = config.key.clone();
    let previous_key = config.previous_key.clone();
    let (store, stats) = tokio::task::spawn_blocking(move || {
        let load = |source: &sixfold_keys::KekSource| {
            sixfold_keys::Kek::load(source).map_err(|e| NodeError::Key {
                path: data_dir.clone(),
                source: e,
            })
        };
        let kek = match &key {
            Some(source) => Some(load(source)?),
            None => {
                warn!("encryption at rest is off: this node writes its data in the clear");
                None
            }
        };
        let previous = previous_key.as_ref().map(load).transpose()?;
        Store::open_changing_key(&data_dir, kek, previous)
    })
    .await
    .map_err(|e| NodeError::Task {
        action: "recover the node's state",
        message: e.to_string(),
    })??;
    if stats.torn_bytes_cut > 0 || stats.damaged_files > 0 || stats.unsynced_bytes_cut > 0 {
        warn!(
            torn_bytes_cut = stats.torn_bytes_cut,
            damaged_files = stats.damaged_files,
            unsynced_bytes_cut = stats.unsynced_bytes_cut,
            "hot log needed repair during recovery"
        );
    }
    info!(
        data_dir = %config.data_dir.display(),
        segments = stats.segments,
        records = stats.records,
        log_files = stats.log_files,
        log_bytes = stats.log_bytes,
        frames = stats.frames,
        volumes_with_meta = stats.volumes_with_meta,
        recovery_ms = stats.elapsed.as_millis() as u64,
        "recovered node state"
    );
    Ok(store)
}

async fn serve(
    config: NodeConfig,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let local = listener.local_addr().unwrap_or(config.listen);
    let own_addresses = vec![local.to_string(), config.listen.to_string()];
    let bandwidth = std::sync::Arc::new(bandwidth::RepairBandwidth::new(config.repair.bandwidth));
    let security = config.security.clone();
    let gossip = tokio::spawn(gossip::run(
        store.clone(),
        own_addresses,
        bandwidth,
        security.clone(),
    ));
    let repair = tokio::spawn(repair::run(
        store.clone(),
        config.repair.clone(),
        security.clone(),
    ));
    let metrics = match config.metrics_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(tokio::spawn(metrics::serve(store.clone(), listener))),
            Err(source) => {
                gossip.abort();
                repair.abort();
                store.close().await;
                return Err(NodeError::Bind { addr, source });
            }
        },
        None => None,
    };
    let archiver = config.backup.clone().map(|backup| {
        store.enable_backup(backup.objects.describe());
        info!(store = %backup.objects.describe(), "backup on: archiving every PG this node hosts");
        tokio::spawn(archiver::run(
            store.clone(),
            backup,
            config.listen.to_string(),
            security.clone(),
        ))
    });
    let objects = config.backup.as_ref().map(|b| b.objects.clone());
    let service = StorageNodeServer::new(Service::new(store.clone(), config.az.clone(), objects))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    // Every request passes the access check by certificate role first.
    let service = Authorized::new(service, access::policy);
    if security.is_insecure() {
        warn!(listen = %local, "serving WITHOUT TLS (--insecure): anyone who reaches this port may read, write or fence every volume");
    }
    info!(listen = %local, az = %config.az, security = %security.describe(), "storage node serving");
    // One service, served directly (the workspace builds tonic without its router).
    let (incoming, appends) = sixfold_transport::incoming(listener, security);
    let append_server = tokio::spawn(append_server::serve(store.clone(), appends));
    let served = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(Some(sixfold_transport::STREAMS_PER_CONNECTION_MAX))
        .http2_keepalive_interval(Some(sixfold_transport::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(sixfold_transport::KEEPALIVE_TIMEOUT))
        .serve_with_incoming_shutdown(service, incoming, shutdown)
        .await;
    append_server.abort();
    let _ = append_server.await;
    gossip.abort();
    let _ = gossip.await;
    repair.abort();
    let _ = repair.await;
    if let Some(metrics) = metrics {
        metrics.abort();
        let _ = metrics.await;
    }
    if let Some(archiver) = archiver {
        archiver.abort();
        let _ = archiver.await;
    }
    store.close().await;
    match &served {
        Ok(()) => info!(listen = %local, "storage node stopped"),
        Err(e) => warn!(listen = %local, "storage node stopped: {e}"),
    }
    served.map_err(NodeError::Serve)
}

/// This machine's clock, in microseconds since the Unix epoch (0 before it).
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Locks a mutex, going on after a panic elsewhere (the state behind our locks stays consistent:
/// no code path panics halfway through a change on any input).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
