//! Retention (issue 6, test 4): with a short window, the archivers delete the objects older
//! than the window that no snapshot names; every snapshot still restores, points inside the
//! window restore, and a point outside it is refused with an error naming the window.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sixfold_tests::backup::{
    expect_error, restore_and_hash, rfc3339, sixfold, sixfold_fails, walk, write_round, VOLUME_SIZE,
};
use sixfold_tests::{remove_test_dir, require_fuse, test_dir, Cluster, Mount};

const WINDOW: Duration = Duration::from_secs(8);

#[test]
fn retention_deletes_what_neither_the_window_nor_a_snapshot_needs() -> Result<()> {
    require_fuse();
    let dir = test_dir("backup_retention");
    let store = dir.join("backup");
    let window = format!("{}s", WINDOW.as_secs());
    let cluster = Cluster::start_backed_up(
        &dir,
        6,
        store.to_str().context("utf-8 path")?,
        None,
        &[
            "--base-every-mib",
            "1",
            "--retention",
            &window,
            "--retention-pass-every",
            "1s",
            // Retention keeps the window and this much more (the writer's clock is this
            // machine's): a second or two for a consistency point to reach the nodes.
            "--max-clock-skew",
            "3s",
        ],
    )?;
    let mount = Mount::start(&cluster, "v", VOLUME_SIZE, &dir.join("mnt"))?;
    let mut rng = StdRng::seed_from_u64(4);
    let mut points = Vec::new();
    for round in 0..2 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
    }
    sixfold(&cluster, &["snapshot", "create", "early", "--volume", "v"])?;
    for round in 2..5 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
    }
    // The objects of rounds up to here; soon older than the window.
    let mid: Vec<_> = walk(&store)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .collect();
    let started = Instant::now();
    let mut round = 5;
    while started.elapsed() < WINDOW * 2 + Duration::from_secs(4) {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
        round += 1;
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("v/snapshots/early.json"))?)?;
    let named: Vec<String> = manifest["pgs"]
        .as_array()
        .context("PGs")?
        .iter()
        .flat_map(|pg| pg["runs"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let unnamed_mid: Vec<_> = mid
        .iter()
        .filter(|p| !named.iter().any(|n| p.ends_with(n)))
        .collect();
    assert!(!unnamed_mid.is_empty(), "no run to age out");
    // Retention passes run every second: wait (up to 30 s) for them to let the old runs go.
    let deadline = Instant::now() + Duration::from_secs(30);
    let outlived = loop {
        let outlived: Vec<_> = unnamed_mid.iter().filter(|p| p.exists()).collect();
        if outlived.is_empty() || Instant::now() > deadline {
            break outlived;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let files = walk(&store)?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for run in &named {
        assert!(
            names.contains(run),
            "retention deleted {run}, which snapshot `early` names"
        );
    }
    let runs_total = names.iter().filter(|n| n.ends_with(".run")).count();
    println!(
        "{runs_total} runs remain; {} of {} older runs no snapshot names were deleted",
        unnamed_mid.len() - outlived.len(),
        unnamed_mid.len()
    );
    assert!(
        outlived.is_empty(),
        "runs older than the window outlived it: {outlived:?}"
    );

    // The snapshot restores; the newest points restore; an old point is refused.
    let hash = restore_and_hash(&cluster, &dir, "v", "early", &["--from", "early"])?;
    assert_eq!(hash, points[1].hash, "snapshot `early` after retention");
    let last = points.len() - 1;
    let hash = restore_and_hash(
        &cluster,
        &dir,
        "v",
        "last",
        &["--to-lsn", &points[last].lsn.to_string()],
    )?;
    assert_eq!(hash, points[last].hash, "the newest point");
    let recent = &points[last - 1];
    let hash = restore_and_hash(
        &cluster,
        &dir,
        "v",
        "recent",
        &["--to-time", &rfc3339(recent.time)],
    )?;
    assert_eq!(hash, recent.hash, "a point inside the window, by time");
    let old = &points[2];
    expect_error(
        &sixfold_fails(
            &cluster,
            &[
                "restore",
                "--source",
                "v",
                "--volume",
                "old",
                "--to-lsn",
                &old.lsn.to_string(),
            ],
        )?,
        "cannot be restored",
    )?;
    let stderr = sixfold_fails(
        &cluster,
        &[
            "restore",
            "--source",
            "v",
            "--volume",
            "old2",
            "--to-time",
            &rfc3339(old.time),
        ],
    )?;
    assert!(
        stderr.contains("outside the retention window"),
        "an old time was not refused clearly:\n{stderr}"
    );
    println!("as expected: {}", stderr.trim());
    mount.unmount()?;
    drop(cluster);
    remove_test_dir(&dir);
    Ok(())
}
