//! Issue 4: a node whose disk is replaced (killed, its data directory wiped, restarted empty)
//! while its peers have already folded the volume's early records into their page stores and
//! can no longer send them as records. It hydrates: it copies the pages that changed from a
//! peer, then takes the later records from the peers' hot logs, and reaches the PGCL; the pages
//! read straight from it match what was written.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_proto::wire::{ReadPageRequest, SegmentRef, SegmentStateRequest};
use sixfold_proto::PAGE_SIZE;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const CHUNK: u64 = 1 << 20;

#[test]
fn a_wiped_node_hydrates_from_its_peers_pages() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_hydrate");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "hydrate", "16G", &mountpoint)?;
    let volume = std::fs::File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let write = |from: u64, to: u64| -> anyhow::Result<()> {
        for i in from..to {
            volume.write_all_at(&pattern(i, CHUNK as usize), i * CHUNK)?;
        }
        volume.sync_all()?;
        Ok(())
    };
    write(0, 64)?;
    // Let the peers fold what every segment holds.
    std::thread::sleep(Duration::from_secs(2));
    let victim = 4;
    cluster.kill_node(victim);
    std::fs::remove_dir_all(&cluster.nodes[victim].data)?;
    std::fs::create_dir_all(&cluster.nodes[victim].data)?;
    write(64, 96)?;
    cluster.start_node(victim)?;
    write(96, 128)?;
    let status = cluster.status("hydrate")?;
    let pgcl = status["pgs"][0]["pgcl"].as_u64().unwrap_or(0);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = cluster.nodes[victim].addr;
        let mut client = StorageNodeClient::connect(format!("http://{addr}"))
            .await?
            .max_decoding_message_size(64 << 20);
        let segment = SegmentRef {
            volume: "hydrate".into(),
            pg: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let scl = loop {
            let scl = client
                .segment_state(SegmentStateRequest {
                    segment: Some(segment.clone()),
                })
                .await?
                .into_inner()
                .scl;
            if scl >= pgcl {
                break scl;
            }
            assert!(
                Instant::now() < deadline,
                "node {victim} stuck at SCL {scl}, PGCL is {pgcl}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for i in 0..128u64 {
            let expected = pattern(i, CHUNK as usize);
            for k in [0u64, 77, 255] {
                let served = client
                    .read_page(ReadPageRequest {
                        segment: Some(segment.clone()),
                        page: i * 256 + k,
                        read_lsn: scl,
                        required_scl: scl,
                    })
                    .await?
                    .into_inner()
                    .data;
                let at = (k as usize) * PAGE_SIZE;
                assert!(
                    served[..] == expected[at..at + PAGE_SIZE],
                    "node {victim} serves wrong bytes for chunk {i}, page {k}"
                );
            }
        }
        anyhow::Ok(())
    })?;
    let log = std::fs::read_to_string(&cluster.nodes[victim].log)?;
    assert!(
        log.contains("hydrated from a peer's pages"),
        "node {victim} caught up without hydrating: the peers had not folded (test premise)"
    );
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
