//! A quorum round through six real `sixfold node` processes, with nothing of the writer's
//! machinery around it: each round sends one AppendRequest carrying one 4 KiB record of PG 0 on
//! each node's AppendStream and ends at the fourth acknowledgement (each sent only after the
//! node's group commit fsync'd the record), as a flush of the volume does. Beside
//! `quorum_floor`'s round (the same shape with no sixfold code), it shows what the node's stack
//! (gRPC, request checks, the appender hand-off, the hot log) adds to a round.
//!
//! Usage: `node_quorum_round [ROUNDS]` (default 2000; run as root after scripts/setup.sh;
//! `SIXFOLD_BIN` names the binary, else target/release/sixfold; `SIXFOLD_TEST_RUNS` puts the
//! nodes' data elsewhere, e.g. on tmpfs to take the disk out; `SIXFOLD_WIRE=grpc` sends over
//! gRPC's AppendStream instead of the append wire the writer uses (`transport::frames`);
//! `SIXFOLD_ROUND_TLS=1` runs the cluster with mutual TLS, as users do). Prints the mean and median round
//! in microseconds on its first line, then the CPU each round cost, per thread kind of a node
//! (from /proc: the node's async runtime, its appender, its folder, the rest) and for this
//! process (the writer's side), against what the machine's cores could give in a round: on a
//! machine with fewer cores than processes, CPU per round is what bounds the round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_proto::record::seal;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{AppendRequest, ByteRange, SegmentRef};
use sixfold_proto::{Epoch, Lsn, PageId, PgId, PAGE_SIZE};
use sixfold_tests::{pattern, test_dir, thread_cpu_seconds, Cluster};
use sixfold_transport::frames::{self, Kind};
use sixfold_transport::{ChannelOptions, Security, TlsFiles};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Where a round's requests go: a gRPC AppendStream or an append connection, per node.
enum Wire {
    Grpc(Vec<mpsc::Sender<AppendRequest>>),
    Append(Vec<WriteHalf<sixfold_transport::ClientIo>>),
}

impl Wire {
    async fn send_all(&mut self, request: &AppendRequest) -> anyhow::Result<()> {
        match self {
            Wire::Grpc(senders) => {
                for tx in senders {
                    tx.send(request.clone()).await?;
                }
            }
            Wire::Append(writers) => {
                let mut out = bytes::BytesMut::new();
                frames::encode_message(&mut out, Kind::Append, 1, request);
                for writer in writers {
                    writer.write_all(&out).await?;
                }
            }
        }
        Ok(())
    }
}

const NODES: usize = 6;
const QUORUM: usize = 4;
/// A round that takes longer than this means the nodes are not answering: give up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let rounds: u64 = match std::env::args().nth(1) {
        None => 2000,
        Some(arg) => arg
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow::anyhow!("ROUNDS must be a positive number, not {arg:?}"))?,
    };
    let dir = test_dir("bench_node_quorum_round");
    let cluster = if std::env::var("SIXFOLD_ROUND_TLS").is_ok_and(|v| v == "1") {
        Cluster::start_tls(&dir, NODES)?
    } else {
        Cluster::start(&dir, NODES)?
    };
    // One worker, as the mount runs its writer.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let page = Bytes::from(pattern(7, PAGE_SIZE));
    let (mut times, cpu_before) = runtime.block_on(async {
        // Every node's acknowledgements, as (node, LSN acknowledged), into one channel.
        let (acks_tx, mut acks) = mpsc::unbounded_channel::<(usize, u64)>();
        let grpc = std::env::var("SIXFOLD_WIRE").is_ok_and(|w| w == "grpc");
        let security = match &cluster.tls {
            None => Security::Insecure,
            Some(tls) => Security::load(&TlsFiles {
                ca: tls.join("ca.pem"),
                cert: tls.join("writer.pem"),
                key: tls.join("writer.key"),
            })?,
        };
        let mut wire = if grpc {
            Wire::Grpc(Vec::new())
        } else {
            Wire::Append(Vec::new())
        };
        for (index, node) in cluster.nodes.iter().enumerate() {
            let acks_tx = acks_tx.clone();
            match &mut wire {
                Wire::Grpc(requests) => {
                    let options = ChannelOptions {
                        connect_timeout: Duration::from_secs(5),
                        request_timeout: None,
                        keep_alive: None,
                    };
                    let channel =
                        sixfold_transport::channel(&node.addr.to_string(), &security, options)?;
                    let mut client = StorageNodeClient::new(channel);
                    let (tx, rx) = mpsc::channel(4);
                    let mut answers = client
                        .append_stream(ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    tokio::spawn(async move {
                        loop {
                            match answers.message().await {
                                Ok(Some(answer)) => {
                                    if acks_tx.send((index, answer.scl)).is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    eprintln!("node {index}: append stream failed: {status}");
                                    break;
                                }
                            }
                        }
                    });
                    requests.push(tx);
                }
                Wire::Append(writers) => {
                    let io = sixfold_transport::connect_append(
                        &node.addr.to_string(),
                        &security,
                        Duration::from_secs(5),
                    )
                    .await?;
                    let (mut read, write) = tokio::io::split(io);
                    tokio::spawn(async move {
                        let mut buffer = bytes::BytesMut::new();
                        loop {
                            match frames::decode(&mut buffer) {
                                Ok(Some(frame)) if frame.kind == Kind::Ack => {
                                    use prost::Message as _;
                                    let Ok(answer) =
                                        sixfold_proto::wire::AppendResponse::decode(frame.payload)
                                    else {
                                        break;
                                    };
                                    if acks_tx.send((index, answer.scl)).is_err() {
                                        break;
                                    }
                                }
                                Ok(Some(frame)) => {
                                    let status = frames::decode_refusal(frame.payload);
                                    eprintln!("node {index}: {:?} frame: {status}", frame.kind);
                                    break;
                                }
                                Ok(None) => match read.read_buf(&mut buffer).await {
                                    Ok(n) if n > 0 => {}
                                    _ => break,
                                },
                                Err(e) => {
                                    eprintln!("node {index}: {e}");
                                    break;
                                }
                            }
                        }
                    });
                    writers.push(write);
                }
            }
        }
        // Only the readers hold senders now: once every stream ended, `recv` answers None.
        drop(acks_tx);
        let mut times = Vec::with_capacity(rounds as usize);
        let mut cpu_before = None;
        // The first round (LSN 1) opens the segments and is not timed.
        for lsn in 1..=rounds + 1 {
            let started = Instant::now();
            let record = seal(
                Lsn(lsn),
                Lsn(lsn - 1),
                Epoch(1),
                PageId(PgId(0).first_page().0 + lsn % 1024),
                vec![ByteRange {
                    offset: 0,
                    data: page.clone(),
                }],
            );
            {
                let request = AppendRequest {
                    segment: Some(SegmentRef {
                        volume: "round".into(),
                        pg: 0,
                    }),
                    epoch: 1,
                    records: vec![record.clone()],
                    pgcl: lsn - 1,
                    fold_limit: lsn - 1,
                    writer_vcl: lsn - 1,
                    writer_vdl: lsn - 1,
                    ..AppendRequest::default()
                };
                wire.send_all(&request).await?;
            }
            // A node answers each batch of a group commit with the SCL after the whole group, so
            // a lagging node can answer this LSN twice: count nodes, not answers.
            let mut acked = [false; NODES];
            while acked.iter().filter(|a| **a).count() < QUORUM {
                let (index, scl) = tokio::time::timeout(ROUND_TIMEOUT, acks.recv())
                    .await
                    .map_err(|_| anyhow::anyhow!("round {lsn}: no quorum in {ROUND_TIMEOUT:?}"))?
                    .ok_or_else(|| anyhow::anyhow!("every node's stream ended"))?;
                if scl >= lsn {
                    acked[index] = true;
                }
            }
            if lsn > 1 {
                times.push(started.elapsed().as_micros() as u64);
            } else {
                cpu_before = Some((cpu_now(&cluster), Instant::now()));
            }
        }
        anyhow::Ok((times, cpu_before))
    })?;
    let cpu_after = cpu_now(&cluster);
    times.sort_unstable();
    let mean = times.iter().sum::<u64>() as f64 / times.len().max(1) as f64;
    let median = times.get(times.len() / 2).copied().unwrap_or(0);
    println!(
        "{mean:.0} us per round (mean; median {median} us): {QUORUM} of {NODES} sixfold nodes \
         acknowledged one 4 KiB record over {}{}",
        if std::env::var("SIXFOLD_WIRE").is_ok_and(|w| w == "grpc") {
            "gRPC AppendStream"
        } else {
            "the append wire"
        },
        if std::env::var("SIXFOLD_ROUND_TLS").is_ok_and(|v| v == "1") {
            ", mutual TLS"
        } else {
            ""
        }
    );
    if let Some((before, since)) = cpu_before {
        print_cpu_per_round(&before, &cpu_after, times.len(), since.elapsed());
    }
    drop(cluster);
    Ok(())
}

/// CPU seconds so far: per node, by thread name; and this process's, by thread name.
type CpuNow = (Vec<BTreeMap<String, f64>>, BTreeMap<String, f64>);

fn cpu_now(cluster: &Cluster) -> CpuNow {
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| n.pid().map(thread_cpu_seconds).unwrap_or_default())
        .collect();
    (nodes, thread_cpu_seconds(std::process::id()))
}

/// The kind of a node thread, from its name.
fn kind(thread: &str) -> &'static str {
    if thread.starts_with("sixfold-appende") {
        "appender"
    } else if thread.starts_with("sixfold-folder") {
        "folder"
    } else if thread == "sixfold" {
        "runtime"
    } else {
        "other"
    }
}

fn print_cpu_per_round(before: &CpuNow, after: &CpuNow, rounds: usize, wall: Duration) {
    let us_per_round = |seconds: f64| seconds * 1e6 / rounds.max(1) as f64;
    let mut per_kind: BTreeMap<&str, f64> = BTreeMap::new();
    for (b, a) in before.0.iter().zip(&after.0) {
        for (thread, seconds) in a {
            *per_kind.entry(kind(thread)).or_default() +=
                seconds - b.get(thread).copied().unwrap_or(0.0);
        }
    }
    let nodes_total: f64 = per_kind.values().sum();
    let writer: f64 = after.1.values().sum::<f64>() - before.1.values().sum::<f64>();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = cores as f64 * wall.as_secs_f64();
    let count = before.0.len().max(1) as f64;
    let kinds: Vec<String> = ["runtime", "appender", "folder", "other"]
        .iter()
        .map(|k| {
            let seconds = per_kind.get(k).copied().unwrap_or(0.0);
            format!("{k} {:.0}", us_per_round(seconds) / count)
        })
        .collect();
    println!(
        "  CPU per round, us: each node {:.0} ({}); the writer side {:.0}; all {:.0}, of {:.0} \
         that {cores} cores give in a round ({:.0}% busy)",
        us_per_round(nodes_total) / count,
        kinds.join(", "),
        us_per_round(writer),
        us_per_round(nodes_total + writer),
        us_per_round(capacity),
        (nodes_total + writer) / capacity.max(1e-9) * 100.0
    );
}
