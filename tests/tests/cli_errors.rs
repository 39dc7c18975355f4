//! Issue 3, bad input at the binary's edge: a cluster file that does not parse, unreachable
//! nodes, a mount point already in use, a shrink; each a clear error naming the problem. Also
//! online growth through `sixfold grow` and through truncating the file larger.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sixfold_tests::{require_fuse, run, test_dir, Cluster, Mount};

fn sixfold(args: &[&str]) -> Output {
    sixfold_tests::sixfold_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sixfold")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cluster_file_that_does_not_parse() {
    let dir = test_dir("cli_bad_cluster");
    let file = dir.join("broken.toml");
    std::fs::write(&file, "[[node]\naddr = 127.0.0.1\n").expect("write");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let output = sixfold(&[
        "mount",
        "--cluster",
        file.to_str().expect("utf8"),
        "--volume",
        "v",
        mnt.to_str().expect("utf8"),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("broken.toml"), "names the file: {message}");
    assert!(
        message.contains("does not parse"),
        "says what is wrong: {message}"
    );
}

#[test]
fn unreachable_nodes_are_named() {
    require_fuse();
    let dir = test_dir("cli_unreachable");
    let file = dir.join("cluster.toml");
    let mut toml = String::new();
    for (i, az) in ["a", "a", "b", "b", "c", "c"].iter().enumerate() {
        // Port 9 (discard) on loopback: nobody listens there.
        toml.push_str(&format!(
            "[[node]]\naddr = \"127.0.0.{}:9\"\naz = \"{az}\"\n",
            40 + i
        ));
    }
    std::fs::write(&file, toml).expect("write");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let started = Instant::now();
    let output = sixfold(&[
        "mount",
        "--cluster",
        file.to_str().expect("utf8"),
        "--volume",
        "v",
        "--wait",
        "3s",
        mnt.to_str().expect("utf8"),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("127.0.0.40:9"),
        "names an unreachable node: {message}"
    );
    assert!(
        message.contains("waiting for nodes") && message.contains("only 0 of"),
        "says it waits, and how many answer: {message}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(30),
        "waits about --wait, then fails: {elapsed:?}"
    );
}

#[test]
fn mount_point_in_use_shrink_and_grow() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("cli_mount_in_use");
    let cluster = Cluster::start(&dir, 6)?;
    let mnt = dir.join("mnt");
    let mount = Mount::start(&cluster, "inuse", "1G", &mnt)?;

    // A second mount on the same mount point is refused before it touches the volume.
    let output = sixfold(&[
        "mount",
        "--cluster",
        cluster.cluster_file.to_str().expect("utf8"),
        "--volume",
        "other",
        mnt.to_str().expect("utf8"),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(mnt.to_str().expect("utf8")),
        "names the mount point: {message}"
    );

    // Shrinking is refused; growing works online, by truncate and by `sixfold grow`.
    let volume = mount.volume_path();
    let file = std::fs::OpenOptions::new().write(true).open(&volume)?;
    assert!(file.set_len(512 << 20).is_err(), "shrinking must fail");
    file.set_len(2 << 30)?;
    assert_eq!(std::fs::metadata(&volume)?.len(), 2 << 30);
    drop(file);
    run(sixfold_tests::sixfold_command()
        .arg("grow")
        .arg(&mnt)
        .args(["--size", "3G"]))?;
    assert_eq!(std::fs::metadata(&volume)?.len(), 3 << 30);
    let status = cluster.status("inuse")?;
    assert_eq!(
        status["size_bytes"].as_u64(),
        Some(3 << 30),
        "the metadata on the nodes has the new size"
    );
    mount.unmount()?;

    // The size survives a remount.
    let mount = Mount::start(&cluster, "inuse", "1G", &mnt)?;
    assert_eq!(std::fs::metadata(mount.volume_path())?.len(), 3 << 30);
    mount.unmount()?;
    Ok(())
}
