//! `sixfold node`: one storage node (`sixfold_node::run`) on a single-thread tokio runtime,
//! stopped cleanly by SIGTERM or SIGINT; `sixfold node drain` moves every segment off a node
//! ([`crate::drain`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::signals::Signals;

#[derive(Debug, Args)]
#[command(
    about = "Run a storage node: hosts segments, hardens records to its hot log, serves pages",
    long_about = "Run a storage node: a gRPC service that hosts segments of protection groups, \
                  hardens every received batch to its hot log (fsync, group commit) before \
                  acknowledging, serves pages as of a read LSN, and fills chain gaps from its \
                  peers. It rebuilds its state from DIR after a crash, and drives the repair of \
                  the PGs it ranks first for. Stops on SIGTERM/SIGINT. \
                  `sixfold node drain ID|ADDR` moves every segment off a node.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// Address to listen on, e.g. 0.0.0.0:7001 (the cluster file lists it as reachable by others).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Option<SocketAddr>,
    /// Availability zone of this node (a PG keeps two segments in each of three AZs).
    #[arg(long, value_name = "NAME", required = true)]
    az: Option<String>,
    /// Directory for the node's hot log and page store (created if missing).
    #[arg(long = "data", value_name = "DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// Continuous backup: archive every PG this node hosts to STORE, a directory or
    /// s3://bucket/prefix (credentials and region from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION). Every node of a cluster names the same store.
    #[arg(long, value_name = "STORE")]
    backup: Option<String>,
    /// S3 endpoint URL for an S3-compatible server (else AWS_ENDPOINT_URL, else AWS);
    /// path-style addressing is used whenever an endpoint is given.
    #[arg(long, value_name = "URL", requires = "backup")]
    backup_endpoint: Option<String>,
    /// Upload a new base image of a PG after this many MiB of its records were archived.
    #[arg(long, value_name = "MIB", default_value_t = sixfold_node::BASE_EVERY_BYTES >> 20, requires = "backup")]
    base_every_mib: u64,
    /// Keep every consistency point of this long restorable (7d, 12h, 30m...); older archived
    /// objects that no snapshot names are deleted.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration, requires = "backup")]
    retention: std::time::Duration,
    /// Replace a member of a PG that has been unreachable this long (90s, 5m...): a node of the
    /// same AZ that holds no segment of the PG takes its place and copies the data from the
    /// PG's other segments.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    repair_after: std::time::Duration,
    /// Most replacements this node drives at once (repair, drain, rebalance).
    #[arg(long, value_name = "N", default_value_t = 8)]
    repair_concurrency: usize,
    /// Bytes per second this node spends copying data from its peers to catch segments up (a
    /// replacement, a node back from an absence), so that foreground I/O keeps its rate
    /// (256MiB, 1G...; 0: unbounded). Writes and reads are never held back.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = crate::size::parse_bytes)]
    repair_bandwidth: u64,
    /// Serve Prometheus metrics on this address (GET /metrics): the node's counters and the
    /// state of the PGs it drives.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Do not drive repairs from this node (maintenance, tests); the other nodes still do.
    #[arg(long)]
    no_repair: bool,
    /// How far the clocks of writers may be from this node's (NTP keeps them far closer): a
    /// consistency point a writer reports is kept within this of the node's clock, and
    /// retention keeps this much more than its window, so that a writer clock running behind
    /// never makes it delete a point inside the window.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, requires = "backup")]
    max_clock_skew: std::time::Duration,
    /// How often each PG's archiver runs a retention pass.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration, requires = "backup")]
    retention_pass_every: std::time::Duration,
    #[command(flatten)]
    key: crate::keyargs::KeyArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    Drain(crate::drain::DrainArgs),
}

pub fn run(args: NodeArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    if let Some(NodeCommand::Drain(drain)) = args.command {
        return crate::drain::run(drain, tls);
    }
    let (Some(listen), Some(az), Some(data_dir)) = (args.listen, args.az, args.data_dir) else {
        anyhow::bail!("a node needs --listen, --az and --data");
    };
    let security = tls.security(None, sixfold_transport::Role::Node)?;
    let key = args.key.source()?;
    let previous_key = args.key.previous_source()?;
    let args = Node {
        listen,
        az,
        data_dir,
        backup: args.backup,
        backup_endpoint: args.backup_endpoint,
        base_every_mib: args.base_every_mib,
        retention: args.retention,
        retention_pass_every: args.retention_pass_every,
        max_clock_skew: args.max_clock_skew,
        repair_after: args.repair_after,
        repair_concurrency: args.repair_concurrency,
        repair_bandwidth: args.repair_bandwidth,
        no_repair: args.no_repair,
        metrics_listen: args.metrics_listen,
    };
    if args.az.trim().is_empty() {
        anyhow::bail!("--az must not be empty");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data directory {}", args.data_dir.display()))?;
    // One thread serves every request (the hot log has its own thread for writes and fsync):
    // a node's work per request is small, and cross-thread wake-ups cost more than they save.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sixfold-node")
        .build()
        .context("start the tokio runtime")?;
    let signals = Signals::install(&runtime)?;
    let backup = match &args.backup {
        Some(spec) => {
            let objects = runtime
                .block_on(sixfold_archive::ObjectStore::open(
                    spec,
                    args.backup_endpoint.as_deref(),
                ))
                .with_context(|| format!("open the backup store {spec}"))?;
            Some(sixfold_node::ArchiveConfig {
                objects,
                base_every_bytes: args.base_every_mib.max(1) << 20,
                retention: args.retention,
                retention_pass_every: args.retention_pass_every,
                max_clock_skew: args.max_clock_skew,
            })
        }
        None => None,
    };
    let config = sixfold_node::NodeConfig {
        listen: args.listen,
        az: args.az.clone(),
        data_dir: args.data_dir.clone(),
        backup,
        repair: sixfold_node::RepairConfig {
            repair_after: args.repair_after,
            concurrency: args.repair_concurrency.max(1),
            enabled: !args.no_repair,
            bandwidth: args.repair_bandwidth,
        },
        metrics_listen: args.metrics_listen,
        security,
        key,
        previous_key,
    };
    tracing::info!(listen = %args.listen, az = %args.az, data = %args.data_dir.display(), "starting storage node");
    runtime
        .block_on(sixfold_node::run(config, signals.recv()))
        .with_context(|| format!("run the storage node on {}", args.listen))?;
    tracing::info!("storage node stopped");
    Ok(())
}

/// The arguments of a node process, once checked.
struct Node {
    listen: SocketAddr,
    az: String,
    data_dir: PathBuf,
    backup: Option<String>,
    backup_endpoint: Option<String>,
    base_every_mib: u64,
    retention: std::time::Duration,
    retention_pass_every: std::time::Duration,
    max_clock_skew: std::time::Duration,
    repair_after: std::time::Duration,
    repair_concurrency: usize,
    repair_bandwidth: u64,
    no_repair: bool,
    metrics_listen: Option<SocketAddr>,
}
