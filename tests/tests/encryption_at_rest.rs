//! Issue 16, test 2 (nodes' disks): with a key-encryption key (`sixfold up`'s default), a marker
//! written through SQLite is found nowhere in the state directory (every node's hot log, page
//! stores, journals, checkpoint and metadata); with `--no-encryption` the same search finds it
//! (the search works). The sealed data reads back after `down`/`up`; a node started on a sealed
//! data directory without its key, or with another, refuses with an error naming the key.
//!
//! Both setups run with `--no-backup`: archived objects are not sealed yet (SEMANTICS says so).

use std::path::Path;
use std::process::Command;

use sixfold_tests::{free_port, require_fuse, sixfold_bin, sqlite, test_dir, Up};

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

#[test]
fn a_marker_written_through_sqlite_is_sealed_on_every_node_disk() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("encryption_at_rest");

    // Without a key the marker is on the nodes' disks: the search finds what it looks for.
    let plain_state = dir.join("plain-state");
    let plain = Up::start_with(
        &dir.join("plain"),
        &plain_state,
        "2G",
        &["--no-encryption", "--no-backup"],
    )?;
    write_marker(&dir.join("plain"))?;
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
    let up = Up::start_with(&mnt, &state, "2G", &["--no-backup"])?;
    write_marker(&mnt)?;
    up.down()?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("kek"))?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key-encryption key file is 0600");
    let found = files_with_marker(&state)?;
    assert!(found.is_empty(), "the marker is in the clear in {found:?}");

    // A sealed data directory refuses to open without its key, and with another.
    let wrong = dir.join("wrong-kek");
    sixfold_tests::run(Command::new(sixfold_bin()).args(["key", "new"]).arg(&wrong))?;
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
