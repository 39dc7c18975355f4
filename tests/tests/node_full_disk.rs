//! Issue 4, "a full disk on a node": node 0's data directory is a small tmpfs, nearly filled by a
//! ballast file. Its hot log runs out of room for a new file: it stops acknowledging, says why in
//! its status ("REFUSING APPENDS") and log, and keeps running; the writer goes on with the other
//! five (writes and fsync succeed). When the ballast is removed (space returns), the node resumes
//! by itself and catches up to the PGCL, and every byte written reads back.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sixfold_tests::{pattern, require_fuse, run, test_dir, Cluster, Mount};

const CHUNK: u64 = 1 << 20;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        let _ = Command::new("umount").arg(path).output();
        std::fs::create_dir_all(path)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path))?;
        Ok(Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_stops_acknowledgements_and_space_coming_back_resumes_them() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_full_disk");
    let mut cluster = Cluster::start(&dir, 6)?;
    // Node 0 gets a 512 MiB tmpfs of its own, with room left for about two 64 MiB log files.
    cluster.stop_node(0);
    let data = cluster.nodes[0].data.clone();
    let _ = std::fs::remove_dir_all(&data);
    let _tmpfs = Tmpfs::mount(&data, "512M")?;
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![1u8; 368 << 20])?;
    cluster.start_node(0)?;
    let addr = cluster.nodes[0].addr.to_string();

    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "full", "16G", &mountpoint)?;
    let volume = mount.open_volume()?;
    // 256 MiB of writes: more than node 0 has room for. Every fsync still returns.
    let chunks = 256u64;
    for i in 0..chunks {
        volume.write_all_at(&pattern(i, CHUNK as usize), i * CHUNK)?;
        if i % 32 == 31 {
            volume.sync_all()?;
        }
    }
    volume.sync_all()?;
    let node = cluster.node_report("full", &addr)?;
    let error = node["log_error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains("No space left") || error.contains("no room"),
        "node 0 should say its disk is full: {node}"
    );
    assert!(
        cluster.status_text("full")?.contains("REFUSING APPENDS"),
        "sixfold status shows the refusal"
    );
    let log = std::fs::read_to_string(&cluster.nodes[0].log)?;
    assert!(
        log.contains("no room for a new hot-log file"),
        "node 0 logs why"
    );
    assert!(
        cluster.nodes[0].is_running(),
        "a full disk never stops the node"
    );

    // Space comes back: node 0 resumes by itself and reaches the PGCL.
    std::fs::remove_file(&ballast)?;
    let status = cluster.status("full")?;
    let pgcl = status["pgs"][0]["pgcl"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster.status("full")?;
        let segment = status["pgs"][0]["segments"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["node"] == addr.as_str()).cloned())
            .ok_or_else(|| anyhow::anyhow!("no segment on node 0: {status}"))?;
        let scl = segment["scl"].as_u64().unwrap_or(0);
        let node = cluster.node_report("full", &addr)?;
        if scl >= pgcl && node["log_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 did not resume: SCL {scl} < PGCL {pgcl}, {node}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Everything reads back, after a remount (pages come from the nodes).
    drop(volume);
    mount.unmount()?;
    let mount = Mount::start(&cluster, "full", "16G", &mountpoint)?;
    let volume = std::fs::File::open(mount.volume_path())?;
    let mut got = vec![0u8; CHUNK as usize];
    for i in 0..chunks {
        volume.read_exact_at(&mut got, i * CHUNK)?;
        assert!(got == pattern(i, CHUNK as usize), "chunk {i} differs");
    }
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    drop(_tmpfs);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
