//! Issue 16, test 2: with a key-encryption key (`sixfold up`'s default), a marker written
//! through SQLite is found nowhere in the state directory: not in any node's hot log, page
//! stores, journals, checkpoint or metadata, nor in the backup store; with `--no-encryption` the
//! same search finds it on the nodes' disks and in the backup (the search works). A restore of a
//! snapshot by nodes with another key-encryption key fails naming the key; by nodes with the
//! right one it is byte-identical to the volume it was taken of. The sealed data reads back after
//! `down`/`up`; a node started on a sealed data directory without its key, or with another,
//! refuses with an error naming the key.

use std::path::Path;
use std::process::Command;

use sixfold_tests::backup::{expect_error, sixfold, sixfold_fails};
use sixfold_tests::{
    free_port, require_fuse, run, sixfold_bin, sqlite, test_dir, Cluster, Mount, Up,
};

const MARKER: &str = "sixfold-plaintext-marker-5b0d3e7a91c4";

fn write_marker(mnt: &Path) -> anyhow::Result<()> {
    let db = mnt.join("secret.db");
    let mut script = String::from("PRAGMA synchronous=FULL;\nCREATE TABLE t(v TEXT);\nBEGIN;\n");
    for i in 0..200 {
        script.push_str(&format!("INSERT INTO t VALUES('{MARKER}-{i}');\n"));
    }
    script.push_str("COMMIT;\n");
    sqlite(&db, &script)?;
    Ok(())
}

/// Files under `dir` that contain the marker (GNU grep skips the holes of sparse page stores).
fn files_with_marker(dir: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("grep")
        .args(["-r", "-l", "-F", MARKER])
        .arg(dir)
        .output()?;
    match out.status.code() {
        Some(0) | Some(1) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()),
        _ => anyhow::bail!("grep failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

const SIZE: &str = "128M";

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    sixfold_tests::backup::walk(dir).unwrap_or_default()
}

/// Snapshots `up`'s volume, restores it on clusters reading its backup store: with another
/// key-encryption key (refused, naming the key) and with its own (compared byte for byte).
fn snapshot_and_restore(dir: &Path, state: &Path) -> anyhow::Result<()> {
    let cluster_file = state.join("cluster.toml");
    run(Command::new(sixfold_bin())
        .args([
            "snapshot",
            "create",
            "frozen",
            "--volume",
            "default",
            "--cluster",
        ])
        .arg(&cluster_file))?;
    let store = state.join("backup").display().to_string();
    let wrong = dir.join("wrong-kek");
    run(Command::new(sixfold_bin()).args(["key", "new"]).arg(&wrong))?;
    for cluster in ["other-key", "right-key"] {
        std::fs::create_dir_all(dir.join(cluster))?;
    }
    let restore = [
        "restore", "--source", "default", "--volume", "copy", "--from", "frozen",
    ];
    {
        let other = Cluster::start_backed_up(
            &dir.join("other-key"),
            6,
            &store,
            None,
            &["--key-file", &wrong.display().to_string()],
        )?;
        let stderr = sixfold_fails(&other, &restore)?;
        expect_error(&stderr, "key-encryption key")?;
        expect_error(&stderr, "kek-")?;
    }
    let kek = state.join("kek").display().to_string();
    let right = Cluster::start_backed_up(
        &dir.join("right-key"),
        6,
        &store,
        None,
        &["--key-file", &kek],
    )?;
    println!("{}", sixfold(&right, &restore)?.trim());
    let mount = Mount::start(&right, "copy", SIZE, &dir.join("mnt-copy"))?;
    let same = Command::new("cmp")
        .arg(state.join("fuse").join("volume"))
        .arg(mount.volume_path())
        .status()?;
    mount.unmount()?;
    anyhow::ensure!(
        same.success(),
        "the restored volume differs from the one snapshotted"
    );
    Ok(())
}

#[test]
fn a_marker_written_through_sqlite_is_sealed_on_every_node_disk() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("encryption_at_rest");

    // Without a key the marker is on the nodes' disks: the search finds what it looks for.
    let plain_state = dir.join("plain-state");
    let plain = Up::start_with(&dir.join("plain"), &plain_state, SIZE, &["--no-encryption"])?;
    write_marker(&dir.join("plain"))?;
    // The archive catches up within seconds; wait until a run holds the marker.
    sixfold_tests::wait_for(
        "the marker in the plaintext backup",
        std::time::Duration::from_secs(60),
        || files_with_marker(&plain_state.join("backup")).is_ok_and(|f| !f.is_empty()),
    )?;
    plain.down()?;
    let found = files_with_marker(&plain_state.join("nodes"))?;
    assert!(
        !found.is_empty(),
        "without encryption the marker should be on the nodes' disks"
    );
    assert!(!plain_state.join("kek").exists());
    drop(plain);

    // With `up`'s default: a key-encryption key, 0600, and the marker nowhere.
    let state = dir.join("state");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &state, SIZE)?;
    write_marker(&mnt)?;

    // A snapshot with the file system frozen: nothing is written after its point, so a
    // restore of it must equal the volume byte for byte.
    run(Command::new("fsfreeze").arg("-f").arg(&mnt))?;
    // The nodes hear the writer's newest VDL with its next heartbeat (at most a second after a
    // write, blockdev's PROBE_INTERVAL); the snapshot's point is the VDL they heard.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let frozen = snapshot_and_restore(&dir, &state);
    run(Command::new("fsfreeze").arg("-u").arg(&mnt))?;
    frozen?;
    up.down()?;
    assert!(
        !walk_files(&state.join("backup")).is_empty(),
        "the backup store holds objects"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("kek"))?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key-encryption key file is 0600");
    let found = files_with_marker(&state)?;
    let found_copy = files_with_marker(&dir.join("right-key"))?;
    assert!(
        found_copy.is_empty(),
        "the restored copy's nodes hold plaintext in {found_copy:?}"
    );
    assert!(found.is_empty(), "the marker is in the clear in {found:?}");

    // A sealed data directory refuses to open without its key, and with another.
    let wrong = dir.join("wrong-kek");
    let node_data = state.join("nodes").join("n1");
    for key_args in [
        vec![],
        vec!["--key-file".into(), wrong.display().to_string()],
    ] {
        let out = Command::new(sixfold_bin())
            .env("SIXFOLD_INSECURE", "1")
            .env_remove("SIXFOLD_KEY")
            .args(["node", "--az", "a", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port("127.0.0.1")))
            .arg("--data")
            .arg(&node_data)
            .args(&key_args)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a node opened a sealed data directory with {key_args:?}"
        );
        assert!(
            stderr.contains("kek-") && stderr.contains("key-encryption key"),
            "the refusal names the key ({key_args:?}): {stderr}"
        );
    }

    // The data reads back under the right key.
    up.restart()?;
    let rows = sqlite(
        &mnt.join("secret.db"),
        &format!("SELECT count(*) FROM t WHERE v LIKE '{MARKER}-%';"),
    )?;
    assert_eq!(rows, "200");
    up.down()?;
    drop(up);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
