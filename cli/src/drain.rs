//! `sixfold node drain ID|ADDR`: marks a node draining in the cluster's node list, then shows
//! the repair drivers moving its segments away (each PG's segment goes to another node of the
//! same AZ, under load, with no PG ever short of a quorum) until the node holds none. It can
//! then be stopped, and removed with `sixfold cluster remove`, with no PG degraded.
//!
//! Refused (nothing changed) when the node's AZ would keep fewer than two active nodes: its
//! segments would have nowhere to go.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sixfold_blockdev::nodes::{self, ClusterError};
use sixfold_proto::wire::NodeStatusRequest;

use crate::wait::{retry, WAIT_DEFAULT};

/// How often drain looks at the node's segments.
const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(about = "Move every segment off a node (then it can be stopped with no PG degraded)")]
pub struct DrainArgs {
    /// The node's id (n-...) or address.
    #[arg(value_name = "ID|ADDR")]
    node: String,
    /// Cluster file (TOML, one [[node]] table with `addr` and `az` per storage node).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// State directory of `sixfold up` (uses its cluster.toml).
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    state: Option<PathBuf>,
    /// Mark the node draining and return, without waiting for its segments to move.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this long (the moves go on).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long to wait for enough nodes to answer (they may still be starting).
    #[arg(long, value_name = "DURATION", default_value = WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub fn run(args: DrainArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let (seed, runtime, clients) =
        crate::cluster::connect(args.cluster.as_ref(), args.state.as_ref(), tls)?;
    runtime.block_on(async {
        let list = retry("drain", args.wait, ClusterError::is_unreachable, || {
            nodes::change(&clients, &seed, |list| {
                let node = list.find(&args.node)?;
                Ok(list.drain(node.id)?)
            })
        })
        .await
        .with_context(|| format!("drain {}", args.node))?;
        let node = list
            .find(&args.node)
            .context("the node is in the new list")?
            .clone();
        println!(
            "sixfold node drain: {} ({}, AZ {}) is draining: it gets no new segments, and each \
             PG's repair driver moves its segment to another node of AZ {}",
            node.id, node.addr, node.az, node.az
        );
        if args.no_wait {
            return Ok(());
        }
        let started = Instant::now();
        let mut last_line = String::new();
        loop {
            let client = clients.get(&node.addr).map_err(anyhow::Error::msg)?;
            let status = tokio::time::timeout(
                Duration::from_secs(5),
                client.clone().node_status(NodeStatusRequest {}),
            )
            .await;
            let line = match status {
                Ok(Ok(status)) => {
                    let status = status.into_inner();
                    let left = status.segments.iter().filter(|s| s.member).count();
                    if left == 0 {
                        println!(
                            "sixfold node drain: {} holds no segment any more ({:.0} s); it can \
                             be stopped and removed (`sixfold cluster remove {}`)",
                            node.id,
                            started.elapsed().as_secs_f64(),
                            node.id
                        );
                        return Ok(());
                    }
                    format!("{left} segment(s) left on {}", node.id)
                }
                Ok(Err(status)) => format!(
                    "{} does not answer: {}",
                    node.addr,
                    sixfold_transport::status_text(&status)
                ),
                Err(_) => format!("{} does not answer", node.addr),
            };
            if line != last_line {
                println!(
                    "sixfold node drain: {line} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                last_line = line;
            }
            if started.elapsed() >= args.timeout {
                anyhow::bail!(
                    "{} still holds segments after {:?} ({last_line}); the moves go on",
                    node.id,
                    args.timeout
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
}
