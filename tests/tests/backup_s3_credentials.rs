//! Wrong credentials (issue 6, bad input): moto's server checking keys as AWS does (IAM users
//! and access keys). The CLI names what is wrong with a key (a wrong secret, a key that does not
//! exist) and works with the right one. Storage nodes given a wrong secret keep taking writes,
//! and `sixfold status` shows why their PGs do not archive; once the nodes restart with the
//! right key, backup catches up and a snapshot of the newest point restores to it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sixfold_tests::backup::{
    expect_error, restore_and_hash, sixfold, sixfold_fails, use_credentials, write_round, Moto,
    VOLUME_SIZE,
};
use sixfold_tests::{remove_test_dir, require_fuse, test_dir, Cluster, Mount};

const STORE: &str = "s3://sixfold/backups";

fn list_args(endpoint: &str) -> Vec<&str> {
    vec![
        "snapshot",
        "list",
        "--volume",
        "v",
        "--store",
        STORE,
        "--endpoint",
        endpoint,
    ]
}

#[test]
fn wrong_s3_credentials_are_named_and_backup_catches_up_once_fixed() -> Result<()> {
    require_fuse();
    let dir = test_dir("backup_s3_credentials");
    let moto = Moto::start_with_auth(&dir)?;
    let (id, secret) = moto.create_user_with_bucket("sixfold")?;
    let endpoint = moto.endpoint();

    // Nodes that cannot sign their requests: writes go on, status says why nothing archives.
    use_credentials(&id, "not-the-secret");
    let mut cluster = Cluster::start_backed_up(&dir, 6, STORE, Some(&endpoint), &[])?;
    let mount = Mount::start(&cluster, "v", VOLUME_SIZE, &dir.join("mnt"))?;
    let mut rng = StdRng::seed_from_u64(6);
    let mut points = Vec::new();
    for round in 0..2 {
        points.push(write_round(&cluster, &mount, "v", &mut rng, round, 16)?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.status("v")?;
        let error = status["pgs"][0]["archive_error"].as_str().unwrap_or("");
        if error.contains("SignatureDoesNotMatch") {
            println!("PG 0 shows: {error}");
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "status never named the wrong secret:\n{}",
                cluster.status_text("v")?
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The CLI with a wrong secret, with a key that does not exist, and with the right key.
    expect_error(
        &sixfold_fails(&cluster, &list_args(&endpoint))?,
        "SignatureDoesNotMatch",
    )?;
    use_credentials("AKIAEXAMPLENOSUCHKEY", &secret);
    expect_error(
        &sixfold_fails(&cluster, &list_args(&endpoint))?,
        "InvalidAccessKeyId",
    )?;
    use_credentials(&id, &secret);
    let listed = sixfold(&cluster, &list_args(&endpoint))?;
    assert!(
        listed.contains("has no snapshots"),
        "listing with the right key: {listed}"
    );

    // The right key, one node at a time (the writer keeps its quorum): backup catches up.
    for i in 0..cluster.nodes.len() {
        cluster.kill_node(i);
        cluster.start_node(i)?;
    }
    points.push(write_round(&cluster, &mount, "v", &mut rng, 2, 16)?);
    sixfold(
        &cluster,
        &[
            "snapshot", "create", "fixed", "--volume", "v", "--wait", "120s",
        ],
    )?;
    let last = points.last().map(|p| p.hash);
    let hash = restore_and_hash(&cluster, &dir, "v", "restored", &["--from", "fixed"])?;
    assert_eq!(
        Some(hash),
        last,
        "the snapshot taken once the key was fixed"
    );
    // Points from before the fix were archived too, once the nodes could sign.
    let first = &points[0];
    let hash = restore_and_hash(
        &cluster,
        &dir,
        "v",
        "first",
        &["--to-lsn", &first.lsn.to_string()],
    )?;
    assert_eq!(
        hash, first.hash,
        "the first round, written under the wrong key"
    );

    mount.unmount()?;
    drop(cluster);
    drop(moto);
    remove_test_dir(&dir);
    Ok(())
}
