//! Ingest rate of one storage node, with fsync: records/s and MiB/s of 4 KiB full-page records
//! streamed to a real `sixfold node` over AppendStream (one stream per segment, several batches in
//! flight), each acknowledged only after its group commit. Each batch carries the hints a writer
//! sends (PGCL, fold limit and VDL: here, what the node acknowledged so far), so the node folds
//! and collects its hot log as it goes, as it must to sustain the rate. Beside it, the baseline:
//! the same bytes written to a file on the same disk in the same batch sizes, one fdatasync per
//! batch.
//!
//! Usage: cargo run --release -p sixfold-tests --example node_ingest [SECONDS]
//! (`scripts/bench-node.sh` runs it; SIXFOLD_BIN names the binary.)

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_proto::record::seal;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{AppendRequest, ByteRange, NodeStatusRequest, SegmentRef};
use sixfold_proto::{Epoch, Lsn, PageId, PgId, PAGE_SIZE};
use sixfold_tests::{pattern, test_dir, Cluster};
use tokio_stream::wrappers::ReceiverStream;

const SEGMENTS: u32 = 4;
const BATCH_RECORDS: u64 = 64;
const IN_FLIGHT: usize = 8;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = test_dir("bench_node_ingest");
    let cluster = Cluster::start(&dir, 1)?;
    let addr = cluster.nodes[0].addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let page = Bytes::from(pattern(7, PAGE_SIZE));
    let records = Arc::new(AtomicU64::new(0));
    // Per segment: the SCL the node last acknowledged (the single node is the write quorum).
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..SEGMENTS).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let status = runtime.block_on(async {
        let client = StorageNodeClient::connect(format!("http://{addr}"))
            .await?
            .max_encoding_message_size(64 << 20);
        let mut tasks = Vec::new();
        for pg in 0..SEGMENTS {
            let mut client = client.clone();
            let records = records.clone();
            let page = page.clone();
            let acked = acked.clone();
            let hints = acked.clone();
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
                let mut answers = client
                    .append_stream(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                // The stream ends (answers drained) once the sender stops and drops `tx`.
                tokio::spawn(async move {
                    let mut lsn = 0u64;
                    while Instant::now() < deadline {
                        let mut batch = Vec::new();
                        for _ in 0..BATCH_RECORDS {
                            let backlink = lsn;
                            lsn += 1;
                            let page_id = PgId(pg).first_page().0 + lsn % 4096;
                            batch.push(seal(
                                Lsn(lsn),
                                Lsn(backlink),
                                Epoch(1),
                                PageId(page_id),
                                vec![ByteRange {
                                    offset: 0,
                                    data: page.clone(),
                                }],
                            ));
                        }
                        let scl = hints[pg as usize].load(Ordering::Relaxed);
                        let vdl = hints
                            .iter()
                            .map(|a| a.load(Ordering::Relaxed))
                            .min()
                            .unwrap_or(0);
                        let request = AppendRequest {
                            segment: Some(SegmentRef {
                                volume: "ingest".into(),
                                pg,
                            }),
                            epoch: 1,
                            records: batch,
                            pgcl: scl,
                            fold_limit: scl,
                            writer_vcl: vdl,
                            writer_vdl: vdl,
                            ..AppendRequest::default()
                        };
                        if tx.send(request).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(answer) = answers.message().await? {
                    acked[pg as usize].fetch_max(answer.scl, Ordering::Relaxed);
                    records.fetch_add(BATCH_RECORDS, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let status = client
            .clone()
            .node_status(NodeStatusRequest {})
            .await?
            .into_inner();
        anyhow::Ok(status)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let count = records.load(Ordering::Relaxed);
    let node_mib = (count * PAGE_SIZE as u64) as f64 / (1 << 20) as f64 / elapsed;

    // Baseline: the same batches to a file on the same disk, one fdatasync each.
    let path = dir.join("baseline.dat");
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let batch = pattern(9, (BATCH_RECORDS as usize) * PAGE_SIZE);
    let base_started = Instant::now();
    let base_deadline = base_started + Duration::from_secs(seconds);
    let mut offset = 0u64;
    let mut batches = 0u64;
    while Instant::now() < base_deadline {
        file.write_all_at(&batch, offset)?;
        file.sync_data()?;
        offset += batch.len() as u64;
        batches += 1;
        if offset >= 4 << 30 {
            offset = 0;
        }
    }
    let base_elapsed = base_started.elapsed().as_secs_f64();
    let base_mib = (batches * batch.len() as u64) as f64 / (1 << 20) as f64 / base_elapsed;
    drop(file);
    let _ = std::fs::remove_file(&path);
    println!(
        "node ingest ({SEGMENTS} segments, {BATCH_RECORDS}-record batches, {IN_FLIGHT} in flight each), {seconds} s"
    );
    println!(
        "  sixfold node                 : {:>9.0} records/s  {:>7.1} MiB/s",
        count as f64 / elapsed,
        node_mib
    );
    println!(
        "    (hot log at the end {} MiB, page stores {} MiB, appends held {} ms)",
        status.hot_log_bytes >> 20,
        status.page_store_bytes >> 20,
        status.appends_held_ms
    );
    println!(
        "  local file, fdatasync/batch  : {:>9.0} records/s  {:>7.1} MiB/s",
        (batches * BATCH_RECORDS) as f64 / base_elapsed,
        base_mib
    );
    println!(
        "  ratio node/local             : {:>9.2}",
        node_mib / base_mib
    );
    drop(cluster);
    Ok(())
}
