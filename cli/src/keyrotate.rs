//! `sixfold key rotate`: asks every node of the cluster's node list (not removed) for new data
//! keys (`RotateKeys`), then, unless `--no-wait`, shows the nodes' re-seal passes until every
//! node holds nothing under an older key (`NodeStatus.encryption`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sixfold_blockdev::nodes::{self, ClusterError};
use sixfold_blockdev::status::EncryptionReport;
use sixfold_proto::nodes::NodeState;
use sixfold_proto::wire::{NodeStatusRequest, RotateKeysRequest};

use crate::wait::{retry, WAIT_DEFAULT};

const POLL_EVERY: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Cluster file (TOML, one [[node]] table per storage node).
    #[arg(long, value_name = "FILE", required_unless_present = "state")]
    cluster: Option<PathBuf>,
    /// State directory of `sixfold up` (uses its cluster.toml).
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    state: Option<PathBuf>,
    /// Return once every node has its new keys, without waiting for the re-seal passes.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting for the re-seal passes after this long (they go on).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long to wait for the node list (nodes may still be starting).
    #[arg(long, value_name = "DURATION", default_value = WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub fn run(args: RotateArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let (seed, runtime, clients) =
        crate::cluster::connect(args.cluster.as_ref(), args.state.as_ref(), tls)?;
    runtime.block_on(async {
        let list = retry(
            "key rotate",
            args.wait,
            ClusterError::is_unreachable,
            || nodes::current(&clients, &seed),
        )
        .await
        .context("read the node list")?;
        let targets: Vec<(String, String)> = list
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| (n.id.to_string(), n.addr.clone()))
            .collect();
        let mut failed = Vec::new();
        for (id, addr) in &targets {
            let client = clients.get(addr).map_err(anyhow::Error::msg)?;
            let answer = tokio::time::timeout(
                CALL_TIMEOUT,
                client.clone().rotate_keys(RotateKeysRequest {}),
            )
            .await;
            match answer {
                Ok(Ok(answer)) => {
                    let keys: Vec<String> = answer
                        .into_inner()
                        .keys
                        .iter()
                        .map(|k| {
                            let scope = if k.scope.is_empty() {
                                "node files"
                            } else {
                                &k.scope
                            };
                            format!("{scope}: generation {} ({})", k.generation, k.key)
                        })
                        .collect();
                    println!("sixfold key rotate: {id} ({addr}): {}", keys.join(", "));
                }
                Ok(Err(status)) => {
                    let why = sixfold_transport::status_text(&status);
                    println!("sixfold key rotate: {id} ({addr}): FAILED: {why}");
                    failed.push(format!("{id} ({addr}): {why}"));
                }
                Err(_) => {
                    println!("sixfold key rotate: {id} ({addr}): FAILED: no answer");
                    failed.push(format!("{id} ({addr}): no answer in {CALL_TIMEOUT:?}"));
                }
            }
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "{} of {} node(s) did not rotate (run the command again once they answer; the \
                 others keep their new keys): {}",
                failed.len(),
                targets.len(),
                failed.join("; ")
            );
        }
        if args.no_wait {
            return Ok(());
        }
        wait_resealed(&clients, &targets, args.timeout).await
    })
}

/// Polls every node's status until each has re-sealed everything, with a progress bar over the
/// page slots the sweeps have looked at.
async fn wait_resealed(
    clients: &sixfold_blockdev::Clients,
    targets: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} page slots swept, {msg}",
        )
        .context("progress bar template")?,
    );
    loop {
        let (mut swept, mut total, mut pages, mut logs, mut pending) = (0, 0, 0, 0, Vec::new());
        for (id, addr) in targets {
            let client = clients.get(addr).map_err(anyhow::Error::msg)?;
            let status = tokio::time::timeout(
                Duration::from_secs(5),
                client.clone().node_status(NodeStatusRequest {}),
            )
            .await;
            match status {
                Ok(Ok(status)) => match status.into_inner().encryption {
                    Some(enc) => {
                        let enc = EncryptionReport::from_wire(&enc);
                        swept += enc.slots_swept;
                        total += enc.slots_total;
                        pages += enc.pages_resealed;
                        logs += enc.log_files_left;
                        if !enc.resealed {
                            pending.push(id.clone());
                        }
                    }
                    None => pending.push(format!("{id} (encryption off?)")),
                },
                _ => pending.push(format!("{id} (no answer)")),
            }
        }
        bar.set_length(total);
        bar.set_position(swept);
        bar.set_message(format!(
            "{pages} pages re-sealed, {logs} hot-log file(s) under older keys, waiting for {}",
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(" ")
            }
        ));
        if pending.is_empty() {
            bar.finish_and_clear();
            println!(
                "sixfold key rotate: every node re-sealed what it holds under its new keys \
                 ({pages} pages, {:.1} s); archived objects keep the keys they were sealed with",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bar.finish_and_clear();
            anyhow::bail!(
                "the re-seal passes are not done after {timeout:?} (waiting for {}); they go \
                 on: `sixfold status` shows them",
                pending.join(" ")
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
