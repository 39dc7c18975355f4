//! Issue 16, test 3: `sixfold key rotate` under a write load. SQLite keeps committing rows (each
//! commit read back, and the whole table checked, as it goes) while every node of `sixfold up`
//! gets new data keys and re-seals what it holds. Afterwards, with the nodes stopped, read
//! straight from their files (not from what they report): every page slot, hot-log frame, fold
//! journal, checkpoint and metadata file is sealed, and only with the keys `key rotate` printed;
//! none with a key that sealed anything before. Every row reads back, and again after `up`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sixfold_tests::{require_fuse, sixfold_bin, sqlite, test_dir, Up};

const SIZE: &str = "128M";
const META_BYTES: usize = 64;
const MAGIC_PLAIN: u32 = 0x5346_5047; // "SFPG"
const MAGIC_SEALED: u32 = 0x5346_5045; // "SFPE"
const SEAL_MAGIC: u8 = 0xA5;

/// The keys found in a node's files: in page slots and in hot-log frames, and how many of each
/// unit were in the clear.
#[derive(Debug, Default)]
struct Found {
    slot_keys: BTreeSet<[u8; 16]>,
    frame_keys: BTreeSet<[u8; 16]>,
    /// Keys of fold journals, checkpoints and metadata files.
    file_keys: BTreeSet<[u8; 16]>,
    clear_slots: usize,
    clear_frames: usize,
    /// Slots with a magic neither sealed nor clear (damage, or a slot read while written).
    odd_slots: usize,
    /// Journals, checkpoints and metadata files in the clear.
    clear_files: Vec<String>,
    slots: usize,
    frames: usize,
}

impl Found {
    fn all_keys(&self) -> BTreeSet<[u8; 16]> {
        let mut all = self.slot_keys.clone();
        all.extend(&self.frame_keys);
        all.extend(&self.file_keys);
        all
    }
}

/// The key id of a sealed box at `at` in `bytes`, if there is one.
fn box_key(bytes: &[u8], at: usize) -> Option<[u8; 16]> {
    (bytes.get(at) == Some(&SEAL_MAGIC))
        .then(|| bytes.get(at + 1..at + 17)?.try_into().ok())
        .flatten()
}

/// Reads every page-store slot table, hot-log file, fold journal, checkpoint and metadata file
/// under `nodes` (layouts: node/src/pagestore.rs, frame.rs, checkpoint.rs, meta.rs).
fn keys_on_disk(nodes: &Path) -> anyhow::Result<Found> {
    let mut found = Found::default();
    for path in sixfold_tests::backup::walk(nodes)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Layouts: "SFJS" | len | box; "SFCS" | box; crc | box (node/src/pagestore.rs,
        // checkpoint.rs, meta.rs).
        let sealed_at = match name {
            "fold.journal" => Some(8),
            "checkpoint" => Some(4),
            _ if name.ends_with(".meta") => Some(4),
            _ => None,
        };
        let is_log = name.ends_with(".log") && path.parent().is_some_and(|p| p.ends_with("log"));
        if sealed_at.is_none() && name != "pages.slots" && !is_log {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Collected between the listing and the read (the nodes run during the first scan).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(at) = sealed_at {
            match box_key(&bytes, at) {
                Some(key) => {
                    found.file_keys.insert(key);
                }
                None => found.clear_files.push(path.display().to_string()),
            }
            continue;
        }
        if name == "pages.slots" {
            for entry in bytes.chunks_exact(META_BYTES) {
                if entry.iter().all(|b| *b == 0) {
                    continue;
                }
                found.slots += 1;
                match u32::from_le_bytes(entry[12..16].try_into()?) {
                    MAGIC_SEALED => {
                        found.slot_keys.insert(entry[16..32].try_into()?);
                    }
                    MAGIC_PLAIN => found.clear_slots += 1,
                    _ => found.odd_slots += 1,
                }
            }
        } else if is_log {
            let mut at = 0usize;
            while at + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
                if len == 0 {
                    break; // the zeroes after the last frame
                }
                let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
                    break; // a torn tail
                };
                found.frames += 1;
                if payload[0] == SEAL_MAGIC && payload.len() > 17 {
                    found.frame_keys.insert(payload[1..17].try_into()?);
                } else {
                    found.clear_frames += 1;
                }
                at += 8 + len;
            }
        }
    }
    Ok(found)
}

/// Commits rows one by one until told to stop, checking each commit and, every 20 rows, the
/// whole table; returns how many rows it committed.
fn write_load(db: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    sqlite(
        &db,
        "PRAGMA journal_mode=WAL;\nCREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT);\n",
    )?;
    let mut rows = 0u64;
    while !stop.load(Ordering::Acquire) {
        let out = sqlite(
            &db,
            &format!(
                "PRAGMA synchronous=FULL;\nINSERT INTO t VALUES({rows}, 'row-{rows}-' || \
                 hex(randomblob(300)));\nSELECT count(*), max(i) FROM t;\n"
            ),
        )?;
        rows += 1;
        let want = format!("{rows}|{}", rows - 1);
        anyhow::ensure!(
            out.trim() == want,
            "after row {rows}: read {out:?}, want {want}"
        );
        if rows.is_multiple_of(20) {
            check_rows(&db, rows)?;
        }
    }
    Ok(rows)
}

/// Every row 0..rows is there, with its own text.
fn check_rows(db: &Path, rows: u64) -> anyhow::Result<()> {
    let out = sqlite(
        db,
        "PRAGMA integrity_check;\nSELECT count(*) FROM t WHERE v LIKE 'row-' || i || '-%';\n",
    )?;
    let want = format!("ok\n{rows}");
    anyhow::ensure!(out.trim() == want, "table check: {out:?}, want {want:?}");
    Ok(())
}

#[test]
fn key_rotation_under_a_write_load_reseals_everything_and_loses_nothing() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("key_rotation");
    let state = dir.join("state");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &state, SIZE)?;
    let nodes = state.join("nodes");

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (db, stop) = (mnt.join("load.db"), Arc::clone(&stop));
        std::thread::spawn(move || write_load(db, stop))
    };
    // Some data under the first keys, in the hot log and folded into pages. Read while the
    // nodes write (a file may go, a frame be half written): only for the keys.
    sixfold_tests::wait_for(
        "pages and log frames on the nodes",
        Duration::from_secs(60),
        || keys_on_disk(&nodes).is_ok_and(|f| f.slots > 0 && f.frames > 0),
    )?;
    let before = keys_on_disk(&nodes)?;
    assert!(before.slots > 0 && before.frames > 0, "{before:?}");
    let old = before.all_keys();

    // Rotate while the load goes on; the command waits for every node's re-seal pass.
    let out = Command::new(sixfold_bin())
        .args(["key", "rotate", "--state"])
        .arg(&state)
        .args(["--timeout", "120s"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "key rotate: {stdout}\n{stderr}");
    let new_keys = printed_keys(&stdout);
    assert_eq!(
        new_keys.len(),
        12,
        "each of 6 nodes rotates its volume key and its node key: {stdout}"
    );
    assert!(
        stdout.contains("every node re-sealed"),
        "key rotate waits for the passes: {stdout}"
    );
    // More rows under the new keys.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Release);
    let rows = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load panicked"))??;
    assert!(rows > 20, "the load committed only {rows} rows");
    check_rows(&mnt.join("load.db"), rows)?;

    let status = Command::new(sixfold_bin())
        .args(["status", "--state"])
        .arg(&state)
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.matches("nothing under older keys").count(),
        6,
        "every node reports its re-seal done: {status}"
    );

    // What the files hold, with the nodes stopped (nothing changes under the scan): every unit
    // sealed, only with the keys the rotation printed, so none with a key from before.
    up.down()?;
    let after = keys_on_disk(&nodes)?;
    assert_eq!(
        (after.clear_slots, after.clear_frames, after.odd_slots),
        (0, 0, 0),
        "{after:?}"
    );
    assert!(after.clear_files.is_empty(), "{after:?}");
    assert!(after.slots > 0 && after.frames > 0, "{after:?}");
    assert!(!after.file_keys.is_empty(), "{after:?}");
    let all = after.all_keys();
    assert!(
        all.is_subset(&new_keys),
        "units sealed with keys `key rotate` did not print ({} of them are from before the \
         rotation): {after:?}",
        all.intersection(&old).count()
    );

    // Everything reads back after a restart (the nodes reopen under the rotated keyring).
    up.restart()?;
    check_rows(&mnt.join("load.db"), rows)?;
    drop(up);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}

/// The data key ids `key rotate` printed ("... generation 2 (HEX), ...").
fn printed_keys(stdout: &str) -> BTreeSet<[u8; 16]> {
    let mut keys = BTreeSet::new();
    for part in stdout.split('(').skip(1) {
        let Some(hex) = part.split(')').next() else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        let bytes: Option<Vec<u8>> = (0..16)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        if let Some(bytes) = bytes {
            keys.insert(bytes.try_into().expect("16 bytes"));
        }
    }
    keys
}
