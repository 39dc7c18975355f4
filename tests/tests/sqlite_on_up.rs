//! Issue 3, test 4: SQLite on ext4 on the volume (via `sixfold up`): thousands of transactions
//! with synchronous=FULL in WAL and rollback-journal modes; `PRAGMA integrity_check` = ok, before
//! and after `sixfold down` / `sixfold up`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use sixfold_tests::{require_fuse, run, sqlite, test_dir, Up};

const TRANSACTIONS: usize = 2000;

/// One transaction per statement group: inserts, some updates and deletes.
fn workload(mode: &str) -> String {
    let mut script = format!(
        "PRAGMA journal_mode={mode};\nPRAGMA synchronous=FULL;\n\
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, pad BLOB);\n\
         CREATE INDEX IF NOT EXISTS t_v ON t(v);\n"
    );
    for i in 0..TRANSACTIONS {
        let _ = writeln!(
            script,
            "BEGIN; INSERT INTO t(id, v, pad) VALUES({i}, 'row-{i}', randomblob(300)); COMMIT;"
        );
        if i % 10 == 9 {
            let _ = writeln!(script, "UPDATE t SET v = v || '-u' WHERE id = {};", i - 5);
        }
        if i % 50 == 49 {
            let _ = writeln!(script, "DELETE FROM t WHERE id = {};", i - 20);
        }
    }
    script
}

fn check(db: &Path) -> anyhow::Result<(u64, u64)> {
    let integrity = sqlite(db, "PRAGMA integrity_check;")?;
    assert_eq!(integrity, "ok", "integrity_check of {}", db.display());
    let counts = sqlite(db, "SELECT count(*), sum(v LIKE '%-u') FROM t;")?;
    let mut parts = counts.split('|').map(|s| s.trim().parse::<u64>());
    let rows = parts.next().context("count")??;
    let updated = parts.next().context("sum")??;
    Ok((rows, updated))
}

#[test]
fn sqlite_wal_and_rollback_journal_on_sixfold_up() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("sqlite_on_up");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &dir.join("state"), "4G")?;
    let fs = run(Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE"])
        .arg(&mnt))?;
    assert_eq!(fs.trim(), "ext4", "sixfold up mounts ext4 at the directory");

    let expected_rows = (TRANSACTIONS - TRANSACTIONS / 50) as u64;
    // Updated ids end in 4, deleted ids in 9: no updated row is deleted.
    let expected_updated = (TRANSACTIONS / 10) as u64;
    let started = std::time::Instant::now();
    for mode in ["WAL", "DELETE"] {
        let db = mnt.join(format!("{}.db", mode.to_lowercase()));
        let journal = sqlite(&db, &workload(mode))?;
        assert!(
            journal.to_lowercase().contains(&mode.to_lowercase()),
            "journal mode: {journal}"
        );
        let (rows, updated) = check(&db)?;
        assert_eq!(rows, expected_rows, "{mode}: rows");
        assert_eq!(updated, expected_updated, "{mode}: updated rows");
    }
    eprintln!(
        "{} transactions in {:.1}s",
        2 * TRANSACTIONS,
        started.elapsed().as_secs_f64()
    );

    // The same data after the whole setup went down and came back.
    up.restart()?;
    for mode in ["wal", "delete"] {
        let (rows, _) = check(&mnt.join(format!("{mode}.db")))?;
        assert_eq!(rows, expected_rows, "{mode} after restart");
    }
    Ok(())
}
