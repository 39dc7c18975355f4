//! Issue 3, test 1: random writes of at least 256 MiB through `MOUNTPOINT/volume` at random
//! offsets and sizes, fsync, read back and compare with a local shadow copy; then the same after
//! unmounting and mounting again (every page now comes from the storage nodes).

use std::os::unix::fs::FileExt;

use sixfold_tests::shadow::{RandomWrites, Shadow};
use sixfold_tests::{require_fuse, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 64 << 30;
const WRITE_BYTES_MIN: u64 = 256 << 20;

#[test]
fn random_writes_read_back_before_and_after_remount() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("volume_random_io");
    let cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "random", "64G", &mountpoint)?;

    let volume = mount.open_volume()?;
    assert_eq!(volume.metadata()?.len(), VOLUME_BYTES);
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(0x5eed, VOLUME_BYTES, 1 << 20);
    let started = std::time::Instant::now();
    let mut since_fsync = 0u64;
    while shadow.bytes_written < WRITE_BYTES_MIN {
        let (offset, data) = writes.next_write();
        volume.write_all_at(data, offset)?;
        since_fsync += data.len() as u64;
        shadow.record(offset, data)?;
        if since_fsync >= 64 << 20 {
            volume.sync_all()?;
            since_fsync = 0;
        }
    }
    volume.sync_all()?;
    eprintln!(
        "wrote {} MiB in {:.1}s over {} pages",
        shadow.bytes_written >> 20,
        started.elapsed().as_secs_f64(),
        shadow.written_pages.len()
    );
    shadow.verify(&volume, 200, 1)?;
    drop(volume);
    mount.unmount()?;

    // Every PG the writes touched is allocated, and the segments agree.
    let status = cluster.status("random")?;
    let pgs = status["pgs"].as_array().expect("pgs").len();
    assert!(
        pgs >= 2,
        "random offsets over 64 GiB should allocate several PGs, got {pgs}"
    );

    let mount = Mount::start(&cluster, "random", "64G", &mountpoint)?;
    let volume = std::fs::File::open(mount.volume_path())?;
    shadow.verify(&volume, 200, 2)?;
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
