//! `sixfold status`: asks every node and the volume's metadata quorum
//! (`sixfold_blockdev::status::collect`) and prints the report for a person, or as JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sixfold_blockdev::ClusterConfig;

use crate::laptop::state::CLUSTER_FILE_NAME;

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
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let cluster_file = match (&args.cluster, &args.state) {
        (Some(file), _) => file.clone(),
        (None, Some(state)) => state.join(CLUSTER_FILE_NAME),
        (None, None) => anyhow::bail!("name the cluster with --cluster FILE or --state DIR"),
    };
    let cluster = ClusterConfig::load(&cluster_file).context("load the cluster file")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = runtime
        .block_on(sixfold_blockdev::status::collect(&cluster, &args.volume))
        .with_context(|| format!("collect the status of volume {}", args.volume))?;
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the status as JSON")?;
        println!("{json}");
    } else if args.metrics {
        print!("{}", report.render_metrics());
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}
