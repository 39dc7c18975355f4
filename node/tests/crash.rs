//! kill -9: a node runs in a child process (this test binary, re-run with an environment variable)
//! while the parent appends; the parent kills it mid-stream with SIGKILL, restarts it, and checks
//! that every acknowledged record is served after the restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_node::{run_with_listener, NodeConfig};
use sixfold_proto::record;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    AppendRequest, ByteRange, ReadPageRequest, Record, SegmentRef, SegmentStateRequest,
};
use sixfold_proto::{Epoch, Lsn, PageId, PAGE_SIZE, PG_PAGES};
use tokio::sync::Mutex;

const CHILD_ENV: &str = "SIXFOLD_NODE_CRASH_CHILD_DIR";
const ROUNDS: usize = 3;
const PGS: u32 = 3;
const PAGES_PER_PG: u64 = 4;

/// Not a test on its own: the node process the parent kills. Does nothing unless `CHILD_ENV` is set.
#[test]
fn crash_child_node() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = NodeConfig {
            security: sixfold_transport::Security::Insecure,
            listen: listener.local_addr().expect("addr"),
            az: "a".into(),
            data_dir: dir.join("data"),
            backup: None,
            repair: Default::default(),
            metrics_listen: None,
            key: None,
            previous_key: None,
        };
        let port_file = dir.join("port");
        let temp = dir.join("port.tmp");
        std::fs::write(&temp, port.to_string()).expect("write port");
        std::fs::rename(&temp, &port_file).expect("publish port");
        run_with_listener(config, listener, std::future::pending())
            .await
            .expect("node runs");
    });
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn_child(dir: &Path) -> (Child, u16) {
    let _ = std::fs::remove_file(dir.join("port"));
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash_child_node",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child node");
    match wait_for_port(dir) {
        Some(port) => (child, port),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child node did not start");
        }
    }
}

fn wait_for_port(dir: &Path) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(dir.join("port")) {
            if let Ok(port) = text.trim().parse() {
                return Some(port);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn record_for(lsn: u64, pg: u32) -> Record {
    let page = u64::from(pg) * PG_PAGES + lsn % PAGES_PER_PG;
    let offset = ((lsn * 37) % 4000) as u32;
    record::seal(
        Lsn(lsn),
        Lsn(lsn - 1),
        Epoch(1),
        PageId(page),
        vec![ByteRange {
            offset,
            data: Bytes::from(format!("lsn {lsn} pg {pg}").into_bytes()),
        }],
    )
}

/// Appends batches of the chain 1, 2, 3... to one PG until the node dies; returns the highest
/// LSN acknowledged.
async fn write_until_killed(port: u16, volume: String, pg: u32, acked: Arc<Mutex<u64>>) {
    let Ok(mut client) = StorageNodeClient::connect(format!("http://127.0.0.1:{port}")).await
    else {
        return;
    };
    let mut next = 1u64;
    loop {
        let batch: Vec<Record> = (next..next + 1 + next % 4)
            .map(|lsn| record_for(lsn, pg))
            .collect();
        let last = batch.last().map_or(0, |r| r.lsn);
        let request = AppendRequest {
            segment: Some(SegmentRef {
                volume: volume.clone(),
                pg,
            }),
            epoch: 1,
            records: batch,
            peers: vec![],
            writer_vcl: 0,
            writer_vdl: 0,
            pgcl: 0,
            fold_limit: 0,
            truncations: vec![],
            ..AppendRequest::default()
        };
        match client.append(request).await {
            Ok(response) => {
                assert_eq!(response.into_inner().scl, last, "acknowledged SCL");
                *acked.lock().await = last;
                next = last + 1;
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_acknowledged_records() {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sixfold-node-crash-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let temp = TempDir(dir.clone());
    let mut acknowledged: Vec<(String, u32, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let (mut child, port) = spawn_child(&dir);
        let volume = format!("vol{round}");
        let mut writers = Vec::new();
        let mut counters = Vec::new();
        for pg in 0..PGS {
            let acked = Arc::new(Mutex::new(0u64));
            counters.push((pg, Arc::clone(&acked)));
            writers.push(tokio::spawn(write_until_killed(
                port,
                volume.clone(),
                pg,
                acked,
            )));
        }
        // Let the writers get going, then kill -9 with appends in flight.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut total = 0;
            for (_, acked) in &counters {
                total += *acked.lock().await;
            }
            if total >= 150 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        for writer in writers {
            writer.await.expect("writer task");
        }
        for (pg, acked) in counters {
            acknowledged.push((volume.clone(), pg, *acked.lock().await));
        }
    }
    // Restart once more and check everything acknowledged in every round.
    let (mut child, port) = spawn_child(&dir);
    let mut client = StorageNodeClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    for (volume, pg, acked) in &acknowledged {
        assert!(*acked > 0, "{volume} PG {pg}: nothing was acknowledged");
        let segment = Some(SegmentRef {
            volume: volume.clone(),
            pg: *pg,
        });
        let state = client
            .segment_state(SegmentStateRequest {
                segment: segment.clone(),
                seal_epoch: 0,
                learn: vec![],
                membership: None,
            })
            .await
            .expect("state")
            .into_inner();
        assert!(
            state.scl >= *acked,
            "{volume} PG {pg}: scl {} < acknowledged {acked}",
            state.scl
        );
        for page_in_pg in 0..PAGES_PER_PG {
            let page = u64::from(*pg) * PG_PAGES + page_in_pg;
            let mut expected = vec![0u8; PAGE_SIZE];
            for lsn in 1..=*acked {
                let r = record_for(lsn, *pg);
                if r.page == page {
                    record::apply(&r, &mut expected);
                }
            }
            let data = client
                .read_page(ReadPageRequest {
                    segment: segment.clone(),
                    page,
                    read_lsn: *acked,
                    required_scl: *acked,
                    ..Default::default()
                })
                .await
                .expect("read")
                .into_inner()
                .data;
            assert_eq!(
                data.to_vec(),
                expected,
                "{volume} page {page} as of {acked}"
            );
        }
    }
    child.kill().expect("kill");
    let _ = child.wait();
    drop(temp);
}
