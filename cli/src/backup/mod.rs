//! `sixfold snapshot` and `sixfold restore`: the backup commands. Both read the archive the
//! storage nodes write (see `sixfold_archive`), found through the cluster file's `[backup]`
//! table or `--store`.

pub mod restore;
pub mod snapshot;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use sixfold_archive::ObjectStore;
use sixfold_proto::cluster::ClusterConfig;

/// Where the cluster and its archive are.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Cluster file (TOML: the nodes, and `[backup] store = ...`).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,
    /// The archive to use instead of the cluster file's: a directory or s3://bucket/prefix.
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
    /// S3 endpoint URL for S3-compatible servers (else the cluster file's, else
    /// AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

impl StoreArgs {
    pub fn cluster(&self) -> anyhow::Result<ClusterConfig> {
        ClusterConfig::load(&self.cluster).context("load the cluster file")
    }

    /// An admin's security for this cluster (see [`crate::tls::TlsArgs::security`]).
    pub fn security(
        &self,
        tls: &crate::tls::TlsArgs,
    ) -> anyhow::Result<sixfold_transport::Security> {
        tls.security(Some(&self.cluster), sixfold_transport::Role::Admin)
    }

    pub async fn open(&self, cluster: &ClusterConfig) -> anyhow::Result<ObjectStore> {
        let section = cluster.backup.as_ref();
        let spec = match (&self.store, section) {
            (Some(spec), _) => spec.clone(),
            (None, Some(section)) => section.store.clone(),
            (None, None) => anyhow::bail!(
                "{} has no [backup] table and no --store was given: backup is off for this cluster",
                self.cluster.display()
            ),
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| section.and_then(|s| s.endpoint.clone()));
        ObjectStore::open(&spec, endpoint.as_deref())
            .await
            .with_context(|| format!("open the backup store {spec}"))
    }
}

/// A Unix-microseconds time as RFC 3339 (UTC, milliseconds).
pub fn show_time(time_us: u64) -> String {
    if time_us == 0 {
        return "unknown time".into();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(time_us)).to_string()
}

pub fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")
}
