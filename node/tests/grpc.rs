//! The storage node over real gRPC, in-process: append and read, malformed and refused requests
//! (the server answers each with a clear status and keeps serving), restart on the same data
//! directory, gap-fill between two nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sixfold_node::{run_with_listener, NodeConfig, NodeError};
use sixfold_proto::record;
use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{
    AppendRequest, ByteRange, GetVolumeMetaRequest, NodeStatusRequest, OpenSegmentRequest,
    PutVolumeMetaRequest, ReadPageRequest, Record, SegmentRef, SegmentStateRequest,
    SegmentStateResponse, Truncation, VolumeMeta,
};
use sixfold_proto::{Epoch, Lsn, PageId, PAGE_SIZE, PG_PAGES};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sixfold-node-grpc-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node running in this process.
struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl Node {
    async fn start(data_dir: &Path) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = NodeConfig {
            security: sixfold_transport::Security::Insecure,
            listen: addr,
            az: "az-test".into(),
            data_dir: data_dir.to_owned(),
            backup: None,
            repair: Default::default(),
            metrics_listen: None,
            key: None,
            previous_key: None,
        };
        let task = tokio::spawn(run_with_listener(config, listener, async {
            let _ = stopped.await;
        }));
        Node {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> StorageNodeClient<Channel> {
        StorageNodeClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("node stops in time")
            .expect("node task");
        result.expect("node ran cleanly");
    }
}

fn segment(volume: &str, pg: u32) -> Option<SegmentRef> {
    Some(SegmentRef {
        volume: volume.into(),
        pg,
    })
}

fn rec(lsn: u64, backlink: u64, epoch: u64, page: u64, offset: u32, data: &[u8]) -> Record {
    record::seal(
        Lsn(lsn),
        Lsn(backlink),
        Epoch(epoch),
        PageId(page),
        vec![ByteRange {
            offset,
            data: Bytes::copy_from_slice(data),
        }],
    )
}

fn append(
    volume: &str,
    pg: u32,
    epoch: u64,
    records: Vec<Record>,
    peers: Vec<String>,
) -> AppendRequest {
    AppendRequest {
        segment: segment(volume, pg),
        epoch,
        records,
        peers,
        writer_vcl: 0,
        writer_vdl: 0,
        pgcl: 0,
        fold_limit: 0,
        truncations: vec![],
        ..AppendRequest::default()
    }
}

async fn segment_state(
    client: &mut StorageNodeClient<Channel>,
    volume: &str,
    pg: u32,
) -> SegmentStateResponse {
    client
        .segment_state(SegmentStateRequest {
            segment: segment(volume, pg),
            seal_epoch: 0,
            learn: vec![],
            membership: None,
        })
        .await
        .expect("state")
        .into_inner()
}

fn read(volume: &str, pg: u32, page: u64, read_lsn: u64, required_scl: u64) -> ReadPageRequest {
    ReadPageRequest {
        segment: segment(volume, pg),
        page,
        read_lsn,
        required_scl,
        ..Default::default()
    }
}

fn chain(count: u64, epoch: u64) -> Vec<Record> {
    (1..=count)
        .map(|lsn| {
            rec(
                lsn,
                lsn - 1,
                epoch,
                lsn % 3,
                (lsn * 7) as u32,
                format!("r{lsn}").as_bytes(),
            )
        })
        .collect()
}

fn expected_page(records: &[Record], page: u64, read_lsn: u64) -> Vec<u8> {
    let mut data = vec![0u8; PAGE_SIZE];
    for r in records
        .iter()
        .filter(|r| r.page == page && r.lsn <= read_lsn)
    {
        record::apply(r, &mut data);
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_and_malformed_requests() {
    let temp = TempDir::new("round-trip");
    let node = Node::start(temp.path()).await;
    let mut client = node.client().await;
    let records = chain(6, 1);

    let scl = client
        .append(append("vol", 0, 1, records.clone(), vec![]))
        .await
        .expect("append")
        .into_inner()
        .scl;
    assert_eq!(scl, 6);
    for read_lsn in [0, 3, 6] {
        let data = client
            .read_page(read("vol", 0, 1, read_lsn, 0))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(
            data.data.to_vec(),
            expected_page(&records, 1, read_lsn),
            "as of {read_lsn}"
        );
        assert_eq!(data.scl, 6);
    }

    // Malformed appends: INVALID_ARGUMENT, naming the problem.
    let mut bad_checksum = rec(7, 6, 1, 0, 0, b"x");
    bad_checksum.checksum ^= 1;
    let mut empty_ranges = rec(7, 6, 1, 0, 0, b"x");
    empty_ranges.ranges.clear();
    let mut beyond_page = rec(7, 6, 1, 0, 4090, b"x");
    beyond_page.ranges[0].data = Bytes::from(vec![1u8; 10]);
    let malformed: Vec<(AppendRequest, &str)> = vec![
        (
            AppendRequest {
                segment: None,
                ..append("vol", 0, 1, vec![], vec![])
            },
            "no segment",
        ),
        (append("", 0, 1, vec![], vec![]), "empty"),
        (append("a/b", 0, 1, vec![], vec![]), "character"),
        (append(&"x".repeat(256), 0, 1, vec![], vec![]), "bytes"),
        (append("vol", u32::MAX, 1, vec![], vec![]), "beyond"),
        (append("vol", 0, 1, vec![bad_checksum], vec![]), "checksum"),
        (append("vol", 0, 1, vec![empty_ranges], vec![]), "ranges"),
        (append("vol", 0, 1, vec![beyond_page], vec![]), "byte range"),
        (
            append("vol", 0, 1, vec![rec(7, 6, 2, 0, 0, b"x")], vec![]),
            "epoch",
        ),
        (
            append("vol", 1, 1, vec![rec(7, 6, 1, 0, 0, b"x")], vec![]),
            "not in PG",
        ),
        (
            append("vol", 0, 1, vec![rec(7, 7, 1, 0, 0, b"x")], vec![]),
            "backlink",
        ),
        (
            append("vol", 0, 1, vec![rec(0, 0, 1, 0, 0, b"x")], vec![]),
            "LSN 0",
        ),
        (append("vol", 0, 1, vec![], vec!["".into()]), "peer"),
    ];
    for (request, needle) in malformed {
        let status = client.append(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }

    // Refused reads.
    let status = client
        .read_page(read("other", 0, 1, 1, 0))
        .await
        .expect_err("not hosted");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("not hosted"),
        "{}",
        status.message()
    );
    let status = client
        .read_page(read("vol", 0, PG_PAGES, 1, 0))
        .await
        .expect_err("wrong PG");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .read_page(read("vol", 0, 1, 9, 9))
        .await
        .expect_err("behind");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("segment behind: scl 6 < required 9"),
        "{}",
        status.message()
    );

    // Fencing.
    let opened = client
        .open_segment(OpenSegmentRequest {
            segment: segment("vol", 0),
            epoch: 3,
            truncate_after: 4,
            history: vec![],
            peers: vec![],
            membership: None,
        })
        .await
        .expect("open")
        .into_inner();
    assert_eq!(opened.scl, 4);
    let status = client
        .append(append("vol", 0, 1, vec![rec(7, 6, 1, 0, 0, b"x")], vec![]))
        .await
        .expect_err("fenced");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("fenced")
            && status.message().contains('1')
            && status.message().contains('3'),
        "{}",
        status.message()
    );

    // The server still serves: state, metadata, status.
    let state = segment_state(&mut client, "vol", 0).await;
    assert!(state.exists);
    assert_eq!((state.scl, state.max_lsn, state.epoch), (4, 4, 3));
    let missing = segment_state(&mut client, "vol", 5).await;
    assert!(!missing.exists);
    let meta = VolumeMeta {
        name: "vol".into(),
        size_bytes: 1 << 30,
        page_size: PAGE_SIZE as u32,
        epoch: 3,
        version: 2,
        pgs: vec![],
        writer: 0,
        restoring: false,
    };
    let put = client
        .put_volume_meta(PutVolumeMetaRequest {
            meta: Some(meta.clone()),
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(put.version, 2);
    let got = client
        .get_volume_meta(GetVolumeMetaRequest { name: "vol".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.meta, Some(meta));
    let none = client
        .get_volume_meta(GetVolumeMetaRequest {
            name: "nope".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(none.meta, None);
    let status = client
        .node_status(NodeStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.az, "az-test");
    assert_eq!(status.segments.len(), 1);
    assert!(status.hot_log_bytes > 0);
    assert_eq!(status.volumes.len(), 1);
    assert_eq!(status.volumes[0].epoch, 3);

    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_what_was_acknowledged() {
    let temp = TempDir::new("restart");
    let records = chain(20, 1);
    let node = Node::start(temp.path()).await;
    let mut client = node.client().await;
    for batch in records.chunks(7) {
        client
            .append(append("vol", 0, 1, batch.to_vec(), vec![]))
            .await
            .expect("append");
    }
    drop(client);
    node.stop().await;

    let node = Node::start(temp.path()).await;
    let mut client = node.client().await;
    let state = segment_state(&mut client, "vol", 0).await;
    assert_eq!(
        (state.exists, state.scl, state.max_lsn, state.epoch),
        (true, 20, 20, 1)
    );
    for page in 0..3 {
        let data = client
            .read_page(read("vol", 0, page, 20, 20))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(data.data.to_vec(), expected_page(&records, page, 20));
    }
    drop(client);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_fill_from_a_peer() {
    let (temp_a, temp_b) = (TempDir::new("gossip-a"), TempDir::new("gossip-b"));
    let (node_a, node_b) = (
        Node::start(temp_a.path()).await,
        Node::start(temp_b.path()).await,
    );
    let (mut a, mut b) = (node_a.client().await, node_b.client().await);
    let records = chain(30, 1);
    a.append(append(
        "vol",
        0,
        1,
        records.clone(),
        vec![node_b.addr.to_string()],
    ))
    .await
    .expect("append to a");
    // B missed records 4..=20 (it was down): its chain has a hole at 4.
    let mut partial: Vec<Record> = records[..3].to_vec();
    partial.extend_from_slice(&records[20..]);
    let scl = b
        .append(append(
            "vol",
            0,
            1,
            partial,
            vec![node_a.addr.to_string(), node_b.addr.to_string()],
        ))
        .await
        .expect("append to b")
        .into_inner()
        .scl;
    assert_eq!(scl, 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = segment_state(&mut b, "vol", 0).await;
        if state.scl == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gap not filled: scl {}",
            state.scl
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for page in 0..3 {
        let from_b = b
            .read_page(read("vol", 0, page, 30, 30))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(from_b.data.to_vec(), expected_page(&records, page, 30));
    }
    drop((a, b));
    node_a.stop().await;
    node_b.stop().await;
}

/// A segment that was away while a new writer recovered its PG still holds the old writer's
/// records beyond the recovery's truncation point, on its chain. The new writer's first Append
/// (here a heartbeat with no records and the most permissive hints) carries the truncation: the
/// segment drops those records before it answers, so it never acknowledges, serves or folds
/// them. Without the truncation in the Append it answered SCL 10 and served record 9's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_away_during_recovery_learns_the_truncation_from_the_next_append() {
    let temp = TempDir::new("missed-truncation");
    let node = Node::start(temp.path()).await;
    let mut client = node.client().await;
    let old = chain(10, 1);
    client
        .append(append("vol", 0, 1, old.clone(), vec![]))
        .await
        .expect("append");
    // Elsewhere, the epoch-2 writer recovered the PG up to 6 and wrote on from 40.
    let heartbeat = AppendRequest {
        pgcl: 41,
        fold_limit: 41,
        writer_vcl: 41,
        writer_vdl: 41,
        truncations: vec![Truncation {
            epoch: 2,
            truncate_after: 6,
        }],
        ..append("vol", 0, 2, vec![], vec![])
    };
    let answer = client
        .append(heartbeat)
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(answer.scl, 6, "the truncated records are off the chain");
    let state = segment_state(&mut client, "vol", 0).await;
    assert_eq!((state.scl, state.max_lsn, state.epoch), (6, 6, 2));
    assert_eq!(
        state.truncations,
        vec![Truncation {
            epoch: 2,
            truncate_after: 6
        }]
    );
    for page in 0..3 {
        let data = client
            .read_page(read("vol", 0, page, 10, 0))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(
            data.data.to_vec(),
            expected_page(&old, page, 6),
            "page {page} shows no truncated record"
        );
    }
    // The new writer's records chain on from 6.
    let new = vec![rec(40, 6, 2, 1, 0, b"new"), rec(41, 40, 2, 2, 0, b"newer")];
    let answer = client
        .append(AppendRequest {
            truncations: vec![Truncation {
                epoch: 2,
                truncate_after: 6,
            }],
            ..append("vol", 0, 2, new, vec![])
        })
        .await
        .expect("append")
        .into_inner();
    assert_eq!(answer.scl, 41);
    // A restart keeps all of it.
    drop(client);
    node.stop().await;
    let node = Node::start(temp.path()).await;
    let mut client = node.client().await;
    let state = segment_state(&mut client, "vol", 0).await;
    assert_eq!((state.scl, state.max_lsn, state.epoch), (41, 41, 2));
    drop(client);
    node.stop().await;
}
