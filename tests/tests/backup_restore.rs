//! Continuous backup and point-in-time restore of a raw volume (issue 6, tests 2 and 5): write
//! and fsync in rounds across three PGs, record a hash of the volume with the time and the LSN
//! of each consistency point, then restore several of them by LSN and by time into new volumes
//! and require each to hash to what was recorded. Then the bad inputs: each a clear error, and a
//! failed restore leaves no volume a writer would mount.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sixfold_tests::{
    pattern, remove_test_dir, require_fuse, run, sixfold_bin, test_dir, Cluster, Mount,
};

const GIB: u64 = 1 << 30;
/// The regions written: 4 MiB at the start of PGs 0, 1 and 2 (the rest of the volume stays
/// zeros in every version).
const REGIONS: [(u64, u64); 3] = [
    (0, 4 << 20),
    (10 * GIB, 4 << 20),
    (20 * GIB + (1 << 20), 4 << 20),
];

/// A consistency point as the test saw it.
#[derive(Clone, Debug)]
struct Point {
    lsn: u64,
    time: SystemTime,
    hash: u64,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// Hash of every written region of the volume file.
fn volume_hash(mount: &Mount) -> Result<u64> {
    let mut file = std::fs::File::open(mount.volume_path())?;
    let mut hash = 0xcbf2_9ce4_8422_2325;
    let mut buffer = vec![0u8; 1 << 20];
    for (offset, len) in REGIONS {
        file.seek(SeekFrom::Start(offset))?;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(buffer.len());
            file.read_exact(&mut buffer[..n])?;
            fnv(&mut hash, &buffer[..n]);
            left -= n;
        }
    }
    Ok(hash)
}

/// The writer's VDL as the nodes report it, once it stops moving (nothing is being written).
fn settled_vdl(cluster: &Cluster, volume: &str) -> Result<u64> {
    let mut last = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(700));
        let vdl = cluster.status(volume)?["vdl"].as_u64();
        if vdl.is_some() && vdl == last {
            return Ok(vdl.unwrap_or(0));
        }
        last = vdl;
    }
    bail!("the VDL did not settle")
}

fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
    let output = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{}.{:06}", since.as_secs(), since.subsec_micros()))
        .arg("+%Y-%m-%dT%H:%M:%S.%6NZ")
        .output()
        .expect("date runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn sixfold(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run(Command::new(sixfold_bin())
        .args(args)
        .arg("--cluster")
        .arg(&cluster.cluster_file))
}

/// Runs a sixfold command that must fail; returns its stderr.
fn sixfold_fails(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let output = Command::new(sixfold_bin())
        .args(args)
        .arg("--cluster")
        .arg(&cluster.cluster_file)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        bail!(
            "sixfold {args:?} succeeded, expected a failure:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(stderr)
}

fn restore_and_hash(
    cluster: &Cluster,
    dir: &std::path::Path,
    name: &str,
    how: &[&str],
) -> Result<u64> {
    let mut args = vec!["restore", "--source", "v", "--volume", name];
    args.extend_from_slice(how);
    let output = sixfold(cluster, &args).with_context(|| format!("restore {name}"))?;
    println!("{}", output.trim());
    let mount = Mount::start(cluster, name, "30G", &dir.join(format!("mnt-{name}")))?;
    let hash = volume_hash(&mount)?;
    mount.unmount()?;
    Ok(hash)
}

#[test]
fn point_in_time_restores_hash_to_what_was_recorded() -> Result<()> {
    require_fuse();
    let dir = test_dir("backup_restore");
    let store = dir.join("backup");
    let cluster = Cluster::start_backed_up(
        &dir,
        6,
        store.to_str().context("utf-8 path")?,
        &["--base-every-mib", "2"],
    )?;
    let mount = Mount::start(&cluster, "v", "30G", &dir.join("mnt"))?;
    let mut rng = StdRng::seed_from_u64(6);
    let mut points = Vec::new();
    {
        let mut file = mount.open_volume()?;
        for round in 0..8u64 {
            for _ in 0..24 {
                let (start, len) = REGIONS[rng.random_range(0..REGIONS.len())];
                let size = rng.random_range(1..=64) * 4096;
                let offset = start + rng.random_range(0..(len - size) / 512) * 512;
                file.seek(SeekFrom::Start(offset))?;
                file.write_all(&pattern(round * 1000 + offset, size as usize))?;
            }
            file.sync_all()?;
            let time = SystemTime::now();
            let lsn = settled_vdl(&cluster, "v")?;
            let hash = volume_hash(&mount)?;
            println!("round {round}: LSN {lsn}, hash {hash:016x}");
            points.push(Point { lsn, time, hash });
        }
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
            &format!("lsn{i}"),
            &["--to-lsn", &point.lsn.to_string()],
        )?;
        assert_eq!(
            by_lsn, point.hash,
            "restore of round {i} by LSN {} hashes differently",
            point.lsn
        );
        let time = rfc3339(point.time);
        let by_time = restore_and_hash(&cluster, &dir, &format!("time{i}"), &["--to-time", &time])?;
        assert_eq!(
            by_time, point.hash,
            "restore of round {i} by time {time} hashes differently"
        );
    }
    let from_snapshot = restore_and_hash(&cluster, &dir, "snap", &["--from", "last"])?;
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

fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn bad_inputs(
    cluster: &Cluster,
    dir: &std::path::Path,
    store: &std::path::Path,
    points: &[Point],
) -> Result<()> {
    let expect = |stderr: String, needle: &str| -> Result<()> {
        if !stderr.contains(needle) {
            bail!("expected an error naming {needle:?}, got:\n{stderr}");
        }
        println!("as expected: {}", stderr.trim());
        Ok(())
    };
    expect(
        sixfold_fails(
            cluster,
            &[
                "restore", "--source", "v", "--volume", "x1", "--from", "nope",
            ],
        )?,
        "snapshot nope of volume v does not exist",
    )?;
    expect(
        sixfold_fails(
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
    expect(
        sixfold_fails(
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
    expect(
        sixfold_fails(
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
        "already exists",
    )?;
    expect(
        sixfold_fails(cluster, &["snapshot", "create", "last", "--volume", "v"])?,
        "already exists",
    )?;
    expect(
        sixfold_fails(cluster, &["snapshot", "delete", "nope", "--volume", "v"])?,
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
    expect(
        sixfold_fails(
            cluster,
            &[
                "restore", "--source", "v", "--volume", "broken", "--from", "last",
            ],
        )?,
        "checksum mismatch",
    )?;
    let refused = Mount::start(cluster, "broken", "30G", &dir.join("mnt-broken"));
    match refused {
        Ok(_) => bail!("a writer mounted the half-restored volume"),
        Err(error) => expect(format!("{error:#}"), "restore that did not finish")?,
    }
    // A missing run: restore fails naming it.
    std::fs::remove_file(&victim)?;
    expect(
        sixfold_fails(
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
