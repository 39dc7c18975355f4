//! Snapshots of a running SQLite database (issue 6, test 1): SQLite on `sixfold up` under a
//! steady commit load; snapshots taken while it runs (scripts/snapshot.sh); each restored into
//! a new directory beside the running one (scripts/restore.sh): `PRAGMA integrity_check` = ok,
//! and the rows are exactly a prefix of the commits, holding every commit that returned before
//! the snapshot's consistency point was reached and none that began after the snapshot was
//! taken (the load logs each committed id with its time, outside the volume).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sixfold_tests::{require_fuse, run, sixfold_bin, test_dir, Up};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn script(name: &str, state: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(repo().join("scripts").join(name))
        .env("SIXFOLD_STATE", state)
        .env("SIXFOLD_BIN", sixfold_bin());
    command
}

/// (id, unix µs) of every commit the load saw return.
fn commits(log: &Path) -> Result<Vec<(u64, u64)>> {
    std::fs::read_to_string(log)?
        .lines()
        .filter_map(|line| {
            let (id, time) = line.split_once(' ')?;
            Some((id.parse().ok()?, time.parse().ok()?))
        })
        .map(Ok)
        .collect()
}

struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn snapshots_of_a_running_sqlite_restore_to_their_commits() -> Result<()> {
    require_fuse();
    let dir = test_dir("snapshot_sqlite");
    let mnt = dir.join("mnt");
    let state = dir.join("state");
    let up = Up::start(&mnt, &state, "4G")?;
    let log = dir.join("commits.log");
    let load = Load(
        Command::new("python3")
            .arg(repo().join("tests/scripts/sqlite_timed_load.py"))
            .arg(mnt.join("db.sqlite"))
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .context("start the SQLite load")?,
    );
    std::thread::sleep(Duration::from_secs(3));
    // (name, taken by)
    let mut snapshots = Vec::new();
    for i in 0..3 {
        let name = format!("s{i}");
        let output = run(script("snapshot.sh", &state).arg(&name).arg(&mnt))?;
        println!("{}", output.trim());
        snapshots.push((name, now_us()));
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(load);
    let committed = commits(&log)?;
    println!("{} commits in all", committed.len());
    let listed: serde_json::Value = serde_json::from_str(&run(Command::new(sixfold_bin())
        .args(["snapshot", "list", "--json", "--cluster"])
        .arg(state.join("cluster.toml")))?)?;
    for (name, taken_by) in &snapshots {
        let manifest = listed
            .as_array()
            .and_then(|all| all.iter().find(|m| m["name"] == name.as_str()))
            .with_context(|| format!("snapshot {name} is listed"))?;
        let reached_us = manifest["lsn_time_us"].as_u64().unwrap_or(0);
        let target = dir.join(format!("restored-{name}"));
        let output = run(script("restore.sh", &state)
            .arg(name)
            .arg(&target)
            .arg(&mnt))?;
        println!("{}", output.trim());
        let db = target.join("db.sqlite");
        let check = run(Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA integrity_check;"))?;
        assert_eq!(check.trim(), "ok", "snapshot {name}: integrity_check");
        let ids: Vec<u64> = run(Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT id FROM t ORDER BY id;"))?
        .lines()
        .map(|l| l.trim().parse::<u64>())
        .collect::<Result<_, _>>()?;
        run(script("restore.sh", &state).arg("--unmount").arg(&target))?;
        let count = ids.len() as u64;
        if ids.iter().enumerate().any(|(i, id)| *id != i as u64 + 1) {
            bail!("snapshot {name}: the restored ids are not a prefix of the commits");
        }
        // Every commit that returned before the writer reached the snapshot's point (or, if
        // that time is unknown, a second before the snapshot began) is there...
        let reached = if reached_us > 0 {
            reached_us
        } else {
            taken_by - 1_000_000
        };
        let must = committed
            .iter()
            .filter(|(_, t)| *t <= reached)
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0);
        // ...and none that began after the snapshot command returned (a commit begins after
        // the previous one was logged).
        let may = committed
            .iter()
            .find(|(_, t)| *t > *taken_by)
            .map_or(u64::MAX, |(id, _)| *id);
        println!("snapshot {name}: {count} rows restored, at least {must}, at most {may} (point reached at {reached_us} µs, taken by {taken_by} µs)");
        assert!(
            count >= must,
            "snapshot {name}: {count} rows, but commit {must} had returned before its point"
        );
        assert!(
            count <= may,
            "snapshot {name}: {count} rows, but commit {} began after it was taken",
            may + 1
        );
        assert!(count > 0, "snapshot {name} restored no rows");
    }
    up.down()?;
    Ok(())
}
