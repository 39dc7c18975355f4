//! Continuous backup and point-in-time restore of a raw volume (issue 6, tests 2 and 5): write
//! and fsync in rounds across three PGs, record a hash of the volume with the time and the LSN
//! of each consistency point, then restore several of them by LSN and by time into new volumes
//! and require each to hash to what was recorded. Then the bad inputs: each a clear error, and a
//! failed restore leaves no volume a writer would mount.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sixfold_tests::backup::{
    expect_error, restore_and_hash, rfc3339, sixfold, sixfold_fails, walk, write_round, Point,
    VOLUME_SIZE,
};
use sixfold_tests::{remove_test_dir, require_fuse, test_dir, Cluster, Mount};

#[test]
fn point_in_time_restores_hash_to_what_was_recorded() -> Result<()> {
    require_fuse();
    let dir = test_dir("backup_restore");
    let store = dir.join("backup");
    let cluster = Cluster::start_backed_up(
        &dir,
        6,
        store.to_str().context("utf-8 path")?,
        None,
        &["--base-every-mib", "2"],
    )?;
    let mount = Mount::start(&cluster, "v", VOLUME_SIZE, &dir.join("mnt"))?;
    let mut rng = StdRng::seed_from_u64(6);
    let mut points = Vec::new();
    for round in 0..8u64 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 24)?);
    }
    println!("{}", cluster.status_text("v")?);
    // A snapshot of the last point, while the writer is still mounted.
    sixfold(&cluster, &["snapshot", "create", "last", "--volume", "v"])?;
    assert!(sixfold(&cluster, &["snapshot", "list", "--volume", "v"])?.contains("last"));
    let pick = [1usize, 4, 7];
    for &i in &pick {
        let point = &points[i];
        let by_lsn = restore_and_hash(
            &cluster,
            &dir,
            "v",
            &format!("lsn{i}"),
            &["--to-lsn", &point.lsn.to_string()],
        )?;
        assert_eq!(
            by_lsn, point.hash,
            "restore of round {i} by LSN {} hashes differently",
            point.lsn
        );
        let time = rfc3339(point.time);
        let by_time = restore_and_hash(
            &cluster,
            &dir,
            "v",
            &format!("time{i}"),
            &["--to-time", &time],
        )?;
        assert_eq!(
            by_time, point.hash,
            "restore of round {i} by time {time} hashes differently"
        );
    }
    let from_snapshot = restore_and_hash(&cluster, &dir, "v", "snap", &["--from", "last"])?;
    assert_eq!(
        from_snapshot, points[7].hash,
        "restore of snapshot `last` hashes differently"
    );
    // Base images were taken (every 2 MiB of runs), so restores did not all start at LSN 0.
    let bases = walk(&store)?
        .into_iter()
        .filter(|p| p.ends_with("done.json"))
        .count();
    assert!(bases > 0, "no base image was archived");

    bad_inputs(&cluster, &dir, &store, &points)?;
    mount.unmount()?;
    drop(cluster);
    remove_test_dir(&dir);
    Ok(())
}

fn bad_inputs(
    cluster: &Cluster,
    dir: &std::path::Path,
    store: &std::path::Path,
    points: &[Point],
) -> Result<()> {
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore", "--source", "v", "--volume", "x1", "--from", "nope",
            ],
        )?,
        "snapshot nope of volume v does not exist",
    )?;
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore",
                "--source",
                "v",
                "--volume",
                "x2",
                "--to-time",
                "2001-01-01T00:00:00Z",
            ],
        )?,
        "no consistency point at or before 2001-01-01",
    )?;
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore",
                "--source",
                "v",
                "--volume",
                "x3",
                "--to-lsn",
                "999999999999",
            ],
        )?,
        "cannot be restored",
    )?;
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore",
                "--source",
                "v",
                "--volume",
                "lsn1",
                "--to-lsn",
                &points[2].lsn.to_string(),
            ],
        )?,
        "already",
    )?;
    expect_error(
        &sixfold_fails(cluster, &["snapshot", "create", "last", "--volume", "v"])?,
        "already exists",
    )?;
    expect_error(
        &sixfold_fails(cluster, &["snapshot", "delete", "nope", "--volume", "v"])?,
        "does not exist",
    )?;
    // A corrupt run that the snapshot needs: restore fails naming the checksum; the half-made
    // volume refuses a writer.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("v/snapshots/last.json"))?)?;
    let (pg, run) = manifest["pgs"]
        .as_array()
        .context("manifest lists PGs")?
        .iter()
        .find_map(|pg| {
            let run = pg["runs"].as_array()?.last()?.as_str()?.to_owned();
            Some((pg["pg"].as_u64()?, run))
        })
        .context("the snapshot names a run")?;
    let victim = store.join(format!("v/pg-{pg:05}/log/{run}"));
    let original = std::fs::read(&victim)?;
    let mut damaged = original.clone();
    let at = damaged.len() - 5;
    damaged[at] ^= 0x55;
    std::fs::write(&victim, &damaged)?;
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore", "--source", "v", "--volume", "broken", "--from", "last",
            ],
        )?,
        "checksum mismatch",
    )?;
    let refused = Mount::start(cluster, "broken", VOLUME_SIZE, &dir.join("mnt-broken"));
    match refused {
        Ok(_) => bail!("a writer mounted the half-restored volume"),
        Err(error) => expect_error(&format!("{error:#}"), "restore that did not finish")?,
    }
    // A missing run: restore fails naming it.
    std::fs::remove_file(&victim)?;
    expect_error(
        &sixfold_fails(
            cluster,
            &[
                "restore", "--source", "v", "--volume", "broken2", "--from", "last",
            ],
        )?,
        "is missing",
    )?;
    std::fs::write(&victim, &original)?;
    Ok(())
}
