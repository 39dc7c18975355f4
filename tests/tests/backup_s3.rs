//! Backup to an S3-compatible server (issue 6, test 3): moto's server; the archiving node of a
//! PG is killed mid-run, and later the store freezes for a while (nothing answers). Writes go
//! on throughout; the backup lag shows in `sixfold status`; afterwards backup catches up and
//! every recorded point restores, by LSN and by time, hashing to what was recorded. Then the
//! store's own bad inputs: an unreachable endpoint, a bucket that does not exist, no
//! credentials.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sixfold_tests::backup::{
    expect_error, restore_and_hash, rfc3339, sixfold, sixfold_fails, use_test_credentials,
    write_round, Moto, VOLUME_SIZE,
};
use sixfold_tests::{remove_test_dir, require_fuse, test_dir, Cluster, Mount};

/// How long the store stays frozen: 20 s in the test command; `scripts/soak-backup-outage.sh`
/// sets minutes (SIXFOLD_STORE_FROZEN_S).
fn frozen() -> Duration {
    match std::env::var("SIXFOLD_STORE_FROZEN_S") {
        Ok(v) => Duration::from_secs(
            v.parse()
                .unwrap_or_else(|_| panic!("SIXFOLD_STORE_FROZEN_S={v:?}: a number of seconds")),
        ),
        Err(_) => Duration::from_secs(20),
    }
}

#[test]
fn s3_backup_survives_a_killed_archiver_and_a_frozen_store() -> Result<()> {
    require_fuse();
    use_test_credentials();
    let dir = test_dir("backup_s3");
    let moto = Moto::start(&dir)?;
    moto.create_bucket("sixfold")?;
    let endpoint = moto.endpoint();
    let mut cluster = Cluster::start_backed_up(
        &dir,
        6,
        "s3://sixfold/backups",
        Some(&endpoint),
        &["--base-every-mib", "2"],
    )?;
    let mount = Mount::start(&cluster, "v", VOLUME_SIZE, &dir.join("mnt"))?;
    let mut rng = StdRng::seed_from_u64(3);
    let mut points = Vec::new();
    for round in 0..3 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
    }

    // Kill the node archiving PG 0.
    let status = cluster.status("v")?;
    let archiver = status["pgs"][0]["archiver"]
        .as_str()
        .context("PG 0 has an archiver")?
        .to_owned();
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.addr.to_string() == archiver)
        .context("the archiver is a node of the cluster")?;
    println!("killing node {victim} ({archiver}), PG 0's archiver");
    cluster.kill_node(victim);
    for round in 3..6 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
    }

    // Freeze the store: writes go on, the lag grows.
    moto.pause();
    let frozen_at = Instant::now();
    let mut round = 6;
    let frozen = frozen();
    while frozen_at.elapsed() < frozen || round < 9 {
        let started = Instant::now();
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a round took {:?} while the store was frozen: backup held up writes",
            started.elapsed()
        );
        round += 1;
    }
    let status = cluster.status("v")?;
    let lag = status["pgs"][0]["backup_lag_lsns"].as_u64().unwrap_or(0);
    println!("{}", cluster.status_text("v")?);
    assert!(lag > 0, "no backup lag shows while the store is frozen");
    // The same as metrics, for a scraper: the PG's lag and every live node's counters.
    let metrics = cluster.status_metrics("v")?;
    let samples = |name: &str| -> Vec<u64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let lag_metric = samples("sixfold_backup_lag_lsns");
    assert!(
        !lag_metric.is_empty() && lag_metric.iter().all(|&l| l > 0),
        "backup lag metrics while the store is frozen: {lag_metric:?}\n{metrics}"
    );
    let written = samples("sixfold_node_hot_log_written_bytes");
    assert!(
        written.len() == 6 && written.iter().filter(|&&w| w > 0).count() == 5,
        "hot-log bytes written per node, one node killed: {written:?}\n{metrics}"
    );
    moto.resume();

    // Backup catches up: a snapshot of the last point waits for it.
    sixfold(
        &cluster,
        &[
            "snapshot", "create", "after", "--volume", "v", "--wait", "180s",
        ],
    )?;
    println!("{}", cluster.status_text("v")?);
    let last = points.len() - 1;
    for i in [1, 4, 7, last] {
        let point = &points[i];
        let hash = restore_and_hash(
            &cluster,
            &dir,
            "v",
            &format!("lsn{i}"),
            &["--to-lsn", &point.lsn.to_string()],
        )?;
        assert_eq!(
            hash, point.hash,
            "restore of round {i} by LSN {}",
            point.lsn
        );
    }
    let time = rfc3339(points[5].time);
    let hash = restore_and_hash(&cluster, &dir, "v", "time5", &["--to-time", &time])?;
    assert_eq!(hash, points[5].hash, "restore of round 5 by time {time}");
    let hash = restore_and_hash(&cluster, &dir, "v", "snap", &["--from", "after"])?;
    assert_eq!(hash, points[last].hash, "restore of snapshot `after`");

    // The store's bad inputs.
    expect_error(
        &sixfold_fails(
            &cluster,
            &[
                "snapshot",
                "list",
                "--volume",
                "v",
                "--endpoint",
                "http://127.0.0.1:1",
            ],
        )?,
        "cannot list",
    )?;
    expect_error(
        &sixfold_fails(
            &cluster,
            &[
                "snapshot",
                "list",
                "--volume",
                "v",
                "--store",
                "s3://no-such-bucket/x",
            ],
        )?,
        "NoSuchBucket",
    )?;
    let output = sixfold_tests::sixfold_command()
        .args(["snapshot", "list", "--volume", "v", "--cluster"])
        .arg(&cluster.cluster_file)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()?;
    assert!(
        !output.status.success(),
        "listing without credentials succeeded"
    );
    expect_error(&String::from_utf8_lossy(&output.stderr), "no credentials")?;

    mount.unmount()?;
    drop(cluster);
    drop(moto);
    remove_test_dir(&dir);
    Ok(())
}
