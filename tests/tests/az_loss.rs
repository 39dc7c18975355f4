//! Issue 3, test 2: kill -9 both nodes of one AZ during a write load: writes and fsync go on and
//! all data reads back. Kill a third node: fsync does not return. Restart one: it completes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Duration;

use sixfold_tests::shadow::{RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

fn write_load(
    volume: &File,
    shadow: &mut Shadow,
    writes: &mut RandomWrites,
    bytes: u64,
    fsync_every: u64,
) -> anyhow::Result<()> {
    let target = shadow.bytes_written + bytes;
    let mut since_fsync = 0;
    while shadow.bytes_written < target {
        let (offset, data) = writes.next_write();
        volume.write_all_at(data, offset)?;
        since_fsync += data.len() as u64;
        shadow.record(offset, data)?;
        if since_fsync >= fsync_every {
            volume.sync_all()?;
            since_fsync = 0;
        }
    }
    volume.sync_all()?;
    Ok(())
}

#[test]
fn losing_an_az_keeps_writing_and_a_third_loss_blocks_fsync() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("az_loss");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "azloss", "16G", &mountpoint)?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(7, VOLUME_BYTES, 256 << 10);

    write_load(&volume, &mut shadow, &mut writes, 32 << 20, 8 << 20)?;

    // Both nodes of AZ a die mid-load; writes and fsyncs go on with the other four.
    assert_eq!(
        (cluster.nodes[0].az.as_str(), cluster.nodes[1].az.as_str()),
        ("a", "a")
    );
    let (done_tx, done_rx) = mpsc::channel();
    let load_volume = volume.try_clone()?;
    let mut load_shadow = shadow;
    let mut load_writes = writes;
    let load = std::thread::spawn(move || {
        let result = write_load(
            &load_volume,
            &mut load_shadow,
            &mut load_writes,
            96 << 20,
            8 << 20,
        );
        let _ = done_tx.send(());
        (result, load_shadow, load_writes)
    });
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill_node(0);
    cluster.kill_node(1);
    done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("writes and fsyncs must go on with one AZ down");
    let (result, mut shadow, mut writes) = load.join().expect("load thread");
    result?;
    shadow.verify(&volume, 50, 3)?;
    // An operator sees which nodes are gone, and that every PG still has a quorum of SCLs.
    let text = cluster.status_text("azloss")?;
    for dead in [0, 1] {
        let addr = cluster.nodes[dead].addr.to_string();
        assert!(
            text.lines()
                .any(|l| l.contains(&addr) && l.contains("UNREACHABLE")),
            "status must show {addr} as unreachable:\n{text}"
        );
    }
    let status = cluster.status("azloss")?;
    assert_eq!(
        status["unreachable"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    for pg in status["pgs"].as_array().expect("pgs") {
        assert!(
            pg["pgcl"].as_u64() > Some(0),
            "every PG has durable records: {pg}"
        );
    }
    assert!(
        status["vdl"].as_u64() > Some(0),
        "the writer reported its VDL: {status}"
    );

    // A third node down: only 3 of 6 segments remain, so fsync must not return...
    cluster.kill_node(2);
    write_load_no_fsync(&volume, &mut shadow, &mut writes, 4 << 20)?;
    let (fsync_tx, fsync_rx) = mpsc::channel();
    let fsync_volume = volume.try_clone()?;
    std::thread::spawn(move || {
        let _ = fsync_tx.send(fsync_volume.sync_all().map_err(|e| e.to_string()));
    });
    match fsync_rx.recv_timeout(Duration::from_secs(8)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        Ok(result) => panic!("fsync returned ({result:?}) with only 3 of 6 segments up"),
        Err(error) => panic!("fsync thread vanished: {error}"),
    }
    // Reads from another thread are served meanwhile (dirty pages from the writer's cache, the
    // rest from the three live segments): a waiting fsync holds up nobody.
    shadow.verify(&volume, 20, 9)?;
    assert!(
        fsync_rx.try_recv().is_err(),
        "fsync returned while only 3 segments are up"
    );
    // ...until a fourth segment is back.
    cluster.start_node(2)?;
    let result = fsync_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("fsync must complete once a fourth segment is back");
    assert_eq!(result, Ok(()), "fsync after the fourth segment came back");
    shadow.verify(&volume, 50, 4)?;
    drop(volume);
    mount.unmount()?;

    // Everyone back; a new writer reads everything (segments of AZ a catch up by gossip).
    cluster.start_node(0)?;
    cluster.start_node(1)?;
    let mount = Mount::start(&cluster, "azloss", "16G", &mountpoint)?;
    let volume = File::open(mount.volume_path())?;
    shadow.verify(&volume, 50, 5)?;
    drop(volume);
    mount.unmount()?;
    drop(shadow);
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}

fn write_load_no_fsync(
    volume: &File,
    shadow: &mut Shadow,
    writes: &mut RandomWrites,
    bytes: u64,
) -> anyhow::Result<()> {
    let target = shadow.bytes_written + bytes;
    while shadow.bytes_written < target {
        let (offset, data) = writes.next_write();
        volume.write_all_at(data, offset)?;
        shadow.record(offset, data)?;
    }
    Ok(())
}
