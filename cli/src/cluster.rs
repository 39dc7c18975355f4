//! `sixfold cluster nodes|add|remove`: show and change the cluster's node list, which the nodes
//! keep themselves (`sixfold_blockdev::nodes`); the cluster file is only where to start asking.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use sixfold_blockdev::nodes::{self, ClusterError};
use sixfold_blockdev::ClusterConfig;
use sixfold_proto::nodes::NodeList;

use crate::laptop::state::CLUSTER_FILE_NAME;
use crate::wait::{retry, WAIT_DEFAULT};

#[derive(Debug, Args)]
#[command(
    about = "Show or change the cluster's node list (ids, addresses, AZs, states)",
    long_about = "Show or change the cluster's node list. The nodes keep the list themselves \
                  (every node a copy, changed at a majority); the cluster file only names where \
                  to start asking, so nodes can be added and removed while writers and nodes \
                  run. The first use creates the list from the cluster file, with the id each \
                  node chose at its first start."
)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    /// Cluster file (TOML, one [[node]] table with `addr` and `az` per storage node).
    #[arg(long, global = true, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// State directory of `sixfold up` (uses its cluster.toml).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "cluster")]
    state: Option<PathBuf>,
    /// How long to wait for enough nodes to answer (they may still be starting).
    #[arg(long, global = true, value_name = "DURATION", default_value = WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List the nodes: id, address, AZ, state, and whether each answered.
    Nodes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a running node (it reports its id) to the cluster, in the AZ it was started with.
    Add {
        /// The node's address (host:port), as writers and peers reach it.
        #[arg(value_name = "ADDR")]
        addr: String,
        /// The node's AZ; checked against what the node says.
        #[arg(long, value_name = "NAME")]
        az: Option<String>,
    },
    /// Mark a node removed for good (its id is never reused).
    Remove {
        /// The node's id (n-...) or address.
        #[arg(value_name = "ID|ADDR")]
        node: String,
    },
}

/// The cluster file named by `--cluster FILE` or `--state DIR`.
pub fn cluster_file(cluster: Option<&PathBuf>, state: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match (cluster, state) {
        (Some(file), _) => Ok(file.clone()),
        (None, Some(state)) => Ok(state.join(CLUSTER_FILE_NAME)),
        (None, None) => anyhow::bail!("name the cluster with --cluster FILE or --state DIR"),
    }
}

/// What a command that talks to the cluster's nodes needs: the cluster file (the seed), a
/// runtime, and the clients.
pub fn connect(
    cluster: Option<&PathBuf>,
    state: Option<&PathBuf>,
    tls: &crate::tls::TlsArgs,
) -> anyhow::Result<(
    ClusterConfig,
    tokio::runtime::Runtime,
    Arc<sixfold_blockdev::Clients>,
)> {
    let path = cluster_file(cluster, state)?;
    let seed = ClusterConfig::load(&path).context("load the cluster file")?;
    let security = tls.security(Some(&path), sixfold_transport::Role::Admin)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    Ok((
        seed,
        runtime,
        Arc::new(sixfold_blockdev::Clients::new(security)),
    ))
}

pub fn run(args: ClusterArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let (seed, runtime, clients) = connect(args.cluster.as_ref(), args.state.as_ref(), tls)?;
    runtime.block_on(async {
        match args.command {
            ClusterCommand::Nodes { json } => {
                let list = retry(
                    "cluster nodes",
                    args.wait,
                    ClusterError::is_unreachable,
                    || nodes::current(&clients, &seed),
                )
                .await
                .context("read the node list")?;
                let read = nodes::read(&clients, &seed).await.ok();
                let answered = |addr: &str| read.as_ref().map(|r| r.answered.contains(addr));
                if json {
                    let value = serde_json::json!({
                        "version": list.version,
                        "nodes": list.nodes.iter().map(|n| serde_json::json!({
                            "id": n.id.to_string(),
                            "addr": n.addr,
                            "az": n.az,
                            "state": n.state.to_string(),
                            "answered": answered(&n.addr),
                        })).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    print!("{}", render(&list, answered));
                }
                Ok(())
            }
            ClusterCommand::Add { addr, az } => {
                let (id, node_az) = retry(
                    "cluster add",
                    args.wait,
                    ClusterError::is_unreachable,
                    || nodes::identify(&clients, &addr),
                )
                .await
                .with_context(|| format!("ask {addr} for its id"))?;
                if let Some(az) = az.filter(|az| *az != node_az) {
                    anyhow::bail!(
                        "{addr} runs in AZ {node_az:?}, not {az:?} (a node's AZ is its --az)"
                    );
                }
                let list = retry(
                    "cluster add",
                    args.wait,
                    ClusterError::is_unreachable,
                    || nodes::change(&clients, &seed, |list| Ok(list.add(id, &addr, &node_az)?)),
                )
                .await
                .with_context(|| format!("add {addr} to the cluster"))?;
                println!(
                    "sixfold cluster: added {id} at {addr} in AZ {node_az} (node list version {})",
                    list.version
                );
                Ok(())
            }
            ClusterCommand::Remove { node } => {
                let list = retry(
                    "cluster remove",
                    args.wait,
                    ClusterError::is_unreachable,
                    || {
                        nodes::change(&clients, &seed, |list| {
                            let id = list.find(&node)?.id;
                            Ok(list.remove(id)?)
                        })
                    },
                )
                .await
                .with_context(|| format!("remove {node} from the cluster"))?;
                println!(
                    "sixfold cluster: removed {node} (node list version {})",
                    list.version
                );
                Ok(())
            }
        }
    })
}

/// The node list as a table.
fn render(list: &NodeList, answered: impl Fn(&str) -> Option<bool>) -> String {
    let mut out = format!("node list version {}\n", list.version);
    out += &format!(
        "{:<20} {:<24} {:<10} {:<9} {}\n",
        "ID", "ADDRESS", "AZ", "STATE", "ANSWERS"
    );
    for node in &list.nodes {
        let answers = match answered(&node.addr) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        out += &format!(
            "{:<20} {:<24} {:<10} {:<9} {}\n",
            node.id.to_string(),
            node.addr,
            node.az,
            node.state.to_string(),
            answers
        );
    }
    out
}
