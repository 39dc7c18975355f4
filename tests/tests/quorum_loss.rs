//! Issue 5, "Quorum loss, said clearly": with only 3 of a PG's 6 segments reachable a writer
//! refuses to open and says why (and what still works); `sixfold mount --read-only` recovers
//! the volume for reading from those 3 and refuses writes; with a fourth back, a writer opens and
//! finds everything.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use anyhow::{ensure, Context, Result};
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const PAGES: u64 = 64;
const PAGE: usize = 4096;

fn check_pages(volume: &File) -> Result<()> {
    for page in 0..PAGES {
        let mut data = vec![0u8; PAGE];
        volume.read_exact_at(&mut data, page * 8 * PAGE as u64)?;
        ensure!(data == pattern(page + 1, PAGE), "page {page} reads wrong");
    }
    Ok(())
}

#[test]
fn three_segments_recover_for_reading_and_four_for_writing() -> Result<()> {
    require_fuse();
    let dir = test_dir("quorum_loss");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mnt = dir.join("mnt");
    let mount = Mount::start(&cluster, "q", "1G", &mnt)?;
    let volume = mount.open_volume()?;
    for page in 0..PAGES {
        volume.write_all_at(&pattern(page + 1, PAGE), page * 8 * PAGE as u64)?;
    }
    volume.sync_all()?;
    drop(volume);
    mount.kill(); // the writer dies

    // Three of the PG's six segments are gone (all six nodes host it).
    for i in [0, 2, 4] {
        cluster.kill_node(i);
    }
    let refused = Mount::start_with(&cluster, "q", "1G", &mnt, &["--wait", "1s"])
        .err()
        .context("a writer must not open with 3 of 6 segments")?;
    let message = format!("{refused:#}");
    ensure!(
        message.contains("only 3 of the 6") && message.contains("--read-only"),
        "the refusal explains the quorum loss and what still works: {message}"
    );

    let reader = Mount::start_with(&cluster, "q", "1G", &mnt, &["--read-only"])?;
    let volume = File::open(reader.volume_path())?;
    check_pages(&volume).context("read-only recovery from 3 segments")?;
    let denied = reader
        .open_volume()
        .err()
        .context("a read-only mount must refuse writers")?;
    ensure!(
        denied
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::ReadOnlyFilesystem),
        "opening for writing fails with EROFS: {denied:#}"
    );
    drop(volume);
    reader.unmount()?;

    // A fourth segment back: a writer opens, reads everything and writes on.
    cluster.start_node(0)?;
    let mount = Mount::start(&cluster, "q", "1G", &mnt)?;
    let volume = mount.open_volume()?;
    check_pages(&volume).context("the writer after the quorum came back")?;
    volume.write_all_at(&pattern(999, PAGE), 0)?;
    volume.sync_all()?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
