//! Issue 3, test 3: a node killed during writes and restarted after more writes catches up from
//! its peers, and serves correct data for everything up to its SCL — read straight from that
//! node over gRPC, page by page, and compared with the shadow copy.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use sixfold_proto::PG_PAGES;
use sixfold_tests::probe::NodeProbe;
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
    let volume = mount.open_volume()?;
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

    let mut probe = NodeProbe::connect(cluster.nodes[victim].addr, "catchup")?;
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
    for (pg, pgcl) in &pgs {
        let scl = probe
            .wait_for_scl(*pg, *pgcl, Duration::from_secs(180))
            .map_err(|e| anyhow::anyhow!("node {victim}: {e}"))?;
        // Every written page of this PG, straight from the restarted node at its SCL.
        let first = u64::from(*pg) * PG_PAGES;
        let mut checked = 0;
        for page in shadow.written_pages.range(first..first + PG_PAGES) {
            let served = probe.page(*pg, *page, scl)?;
            assert!(
                served[..] == shadow.page(*page)?[..],
                "node {victim} serves wrong bytes for page {page}"
            );
            checked += 1;
        }
        eprintln!("PG {pg}: {checked} pages match on node {victim} at SCL {scl}");
    }
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
