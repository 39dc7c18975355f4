//! Issue 3, test 3: a node killed during writes and restarted after more writes catches up from
//! its peers, and serves correct data for everything up to its SCL — read straight from that
//! node over gRPC, page by page, and compared with the shadow copy.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{ReadPageRequest, SegmentRef, SegmentStateRequest};
use sixfold_proto::PG_PAGES;
use sixfold_tests::shadow::{RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

#[test]
fn restarted_node_serves_correct_data_up_to_its_scl() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_catch_up");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "catchup", "16G", &mountpoint)?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(11, VOLUME_BYTES, 256 << 10);

    let mut write = |shadow: &mut Shadow, bytes: u64| -> anyhow::Result<()> {
        let target = shadow.bytes_written + bytes;
        while shadow.bytes_written < target {
            let (offset, data) = writes.next_write();
            volume.write_all_at(data, offset)?;
            shadow.record(offset, data)?;
        }
        volume.sync_all()?;
        Ok(())
    };
    write(&mut shadow, 16 << 20)?;
    let victim = 3;
    cluster.kill_node(victim);
    write(&mut shadow, 64 << 20)?;
    cluster.start_node(victim)?;
    // One more write after the restart (the writer also probes the node by itself: heartbeats).
    write(&mut shadow, 1 << 20)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = cluster.nodes[victim].addr;
        let mut client = StorageNodeClient::connect(format!("http://{addr}"))
            .await?
            .max_decoding_message_size(64 << 20);
        // The PGs the writes touched, and the SCL each must reach (the flushed tail).
        let status = cluster.status("catchup")?;
        let pgs: Vec<(u32, u64)> = status["pgs"]
            .as_array()
            .expect("pgs")
            .iter()
            .map(|pg| {
                (
                    pg["pg"].as_u64().expect("pg") as u32,
                    pg["pgcl"].as_u64().expect("pgcl"),
                )
            })
            .collect();
        assert!(!pgs.is_empty());
        let deadline = Instant::now() + Duration::from_secs(180);
        for (pg, pgcl) in &pgs {
            let segment = SegmentRef {
                volume: "catchup".into(),
                pg: *pg,
            };
            loop {
                let state = client
                    .segment_state(SegmentStateRequest {
                        segment: Some(segment.clone()),
                    })
                    .await?
                    .into_inner();
                if state.scl >= *pgcl {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {victim} stuck at SCL {} of PG {pg}, PGCL is {pgcl}",
                    state.scl
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Every written page of this PG, straight from the restarted node at its SCL.
            let scl = client
                .segment_state(SegmentStateRequest {
                    segment: Some(segment.clone()),
                })
                .await?
                .into_inner()
                .scl;
            let first = u64::from(*pg) * PG_PAGES;
            let mut checked = 0;
            for page in shadow.written_pages.range(first..first + PG_PAGES) {
                let served = client
                    .read_page(ReadPageRequest {
                        segment: Some(segment.clone()),
                        page: *page,
                        read_lsn: scl,
                        required_scl: scl,
                    })
                    .await?
                    .into_inner()
                    .data;
                assert!(
                    served[..] == shadow.page(*page)?[..],
                    "node {victim} serves wrong bytes for page {page}"
                );
                checked += 1;
            }
            eprintln!("PG {pg}: {checked} pages match on node {victim} at SCL {scl}");
        }
        anyhow::Ok(())
    })?;
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
