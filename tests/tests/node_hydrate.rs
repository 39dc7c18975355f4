//! Issue 4: a node whose disk is replaced (killed, its data directory wiped, restarted empty)
//! while its peers have already folded the volume's early records into their page stores and
//! can no longer send them as records. It hydrates: it copies the pages that changed from a
//! peer, then takes the later records from the peers' hot logs, and reaches the PGCL; the pages
//! read straight from it match what was written.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sixfold_proto::PAGE_SIZE;
use sixfold_tests::probe::NodeProbe;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const CHUNK: u64 = 1 << 20;

#[test]
fn a_wiped_node_hydrates_from_its_peers_pages() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_hydrate");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "hydrate", "16G", &mountpoint)?;
    let volume = mount.open_volume()?;
    let write = |from: u64, to: u64| -> anyhow::Result<()> {
        for i in from..to {
            volume.write_all_at(&pattern(i, CHUNK as usize), i * CHUNK)?;
        }
        volume.sync_all()?;
        Ok(())
    };
    write(0, 64)?;
    let victim = 4;
    // The peers fold what every segment holds: wait until each has a page store.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, node) in cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
    {
        let meta = node.data.join("pages/hydrate/pg-0/pages.slots");
        while std::fs::metadata(&meta).map_or(0, |m| m.len()) == 0 {
            assert!(Instant::now() < deadline, "node {i} never folded");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster.kill_node(victim);
    std::fs::remove_dir_all(&cluster.nodes[victim].data)?;
    std::fs::create_dir_all(&cluster.nodes[victim].data)?;
    write(64, 96)?;
    cluster.start_node(victim)?;
    write(96, 128)?;
    let status = cluster.status("hydrate")?;
    let pgcl = status["pgs"][0]["pgcl"].as_u64().unwrap_or(0);

    let mut probe = NodeProbe::connect(cluster.nodes[victim].addr, "hydrate")?;
    let scl = probe.wait_for_scl(0, pgcl, Duration::from_secs(120))?;
    for i in 0..128u64 {
        let expected = pattern(i, CHUNK as usize);
        for k in [0u64, 77, 255] {
            let served = probe.page(0, i * 256 + k, scl)?;
            let at = (k as usize) * PAGE_SIZE;
            assert!(
                served[..] == expected[at..at + PAGE_SIZE],
                "node {victim} serves wrong bytes for chunk {i}, page {k}"
            );
        }
    }
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
