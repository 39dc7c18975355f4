//! `sixfold status`: asks every node and the volume's metadata quorum
//! (`sixfold_blockdev::status::collect`) and prints the report for a person, or as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sixfold_blockdev::ClusterConfig;

#[derive(Debug, Args)]
#[command(
    about = "Show a volume's PGs, segments, SCLs, PGCL, VCL, VDL and unreachable nodes",
    long_about = "Show a volume's state as the storage nodes see it: per PG its six segments with \
                  their nodes and SCLs and the PGCL; the volume's VCL and VDL, bytes used; which \
                  nodes are unreachable. Name the cluster with --cluster FILE --volume NAME, or \
                  with --state DIR for a volume started by `sixfold up`."
)]
pub struct StatusArgs {
    /// Cluster file (TOML, one [[node]] table with `addr` and `az` per storage node).
    #[arg(long, value_name = "FILE", required_unless_present = "state")]
    cluster: Option<PathBuf>,
    /// State directory of `sixfold up` (uses its cluster.toml).
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    state: Option<PathBuf>,
    /// Name of the volume.
    #[arg(long, value_name = "NAME", default_value = "default")]
    volume: String,
    /// Print JSON (for scripts) instead of text.
    #[arg(long, conflicts_with = "metrics")]
    json: bool,
    /// Print metrics in the Prometheus text format (for a node exporter's textfile collector or
    /// a scrape wrapper): backup lag, archived LSN, VDL, node health.
    #[arg(long)]
    metrics: bool,
    /// Show every PG in detail (by default only those that are not healthy).
    #[arg(long)]
    all: bool,
    /// How long to wait for enough nodes to answer (they may still be starting).
    #[arg(long, value_name = "DURATION", default_value = crate::wait::WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
}

pub fn run(args: StatusArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let cluster_file = crate::cluster::cluster_file(args.cluster.as_ref(), args.state.as_ref())?;
    let cluster = ClusterConfig::load(&cluster_file).context("load the cluster file")?;
    let security = tls.security(Some(&cluster_file), sixfold_transport::Role::Admin)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = runtime
        .block_on(async {
            // Nodes still starting: wait for the metadata quorum, then report what answers.
            let waited = crate::wait::retry("status", args.wait, Waiting::is_waiting, || async {
                let report = sixfold_blockdev::status::collect(&cluster, &security, &args.volume)
                    .await
                    .map_err(Waiting::Failed)?;
                if report.metadata_unreachable {
                    return Err(Waiting::Metadata(report));
                }
                Ok(report)
            })
            .await;
            match waited {
                Ok(report) | Err(Waiting::Metadata(report)) => Ok(report),
                Err(Waiting::Failed(error)) => Err(error),
            }
        })
        .with_context(|| format!("collect the status of volume {}", args.volume))?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the status as JSON")?;
        println!("{json}");
    } else if args.metrics {
        print!("{}", report.render_metrics());
    } else {
        print!("{}", report.render_text(args.all));
    }
    Ok(())
}

/// Why a status attempt is not final yet.
enum Waiting {
    /// The report could not be made at all.
    Failed(sixfold_blockdev::VolumeError),
    /// The volume's metadata nodes do not answer (yet): a report without the volume's PGs.
    Metadata(sixfold_blockdev::status::StatusReport),
}

impl Waiting {
    fn is_waiting(&self) -> bool {
        matches!(self, Waiting::Metadata(_))
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Failed(error) => write!(f, "{error}"),
            Waiting::Metadata(report) => {
                write!(
                    f,
                    "{}",
                    report.metadata_error.as_deref().unwrap_or("metadata")
                )
            }
        }
    }
}
