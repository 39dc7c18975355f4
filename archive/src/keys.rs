//! The object layout (see the crate docs): every key is derived from the volume, the PG and
//! LSNs, zero-padded so that key order is LSN order. Pure.

use sixfold_proto::{Lsn, PgId};

/// Longest snapshot name, in bytes.
pub const SNAPSHOT_NAME_BYTES_MAX: usize = 128;

/// The folder of one PG's archive.
pub fn pg_prefix(volume: &str, pg: PgId) -> String {
    format!("{volume}/pg-{:05}/", pg.0)
}

pub fn log_prefix(volume: &str, pg: PgId) -> String {
    format!("{}log/", pg_prefix(volume, pg))
}

/// A run of the PG's records in (start, end]; `time_us` is when the writer reached `end` as a
/// consistency point. Every run ends at one, except a run cut by size that holds none (time 0),
/// so that a time maps to an LSN from keys alone (opening at most one run per PG).
pub fn run_key(volume: &str, pg: PgId, run: &RunKey) -> String {
    format!("{}{}", log_prefix(volume, pg), run.name())
}

pub fn base_prefix(volume: &str, pg: PgId, lsn: Lsn) -> String {
    format!("{}base/{:020}/", pg_prefix(volume, pg), lsn.0)
}

pub fn base_chunk_key(volume: &str, pg: PgId, lsn: Lsn, chunk: u32) -> String {
    format!("{}{chunk:06}.pages", base_prefix(volume, pg, lsn))
}

pub fn base_done_key(volume: &str, pg: PgId, lsn: Lsn) -> String {
    format!("{}done.json", base_prefix(volume, pg, lsn))
}

pub fn head_key(volume: &str, pg: PgId) -> String {
    format!("{}head", pg_prefix(volume, pg))
}

pub fn snapshots_prefix(volume: &str) -> String {
    format!("{volume}/snapshots/")
}

pub fn snapshot_key(volume: &str, name: &str) -> String {
    format!("{}{name}.json", snapshots_prefix(volume))
}

/// A snapshot name is 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_snapshot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > SNAPSHOT_NAME_BYTES_MAX {
        return Err(format!(
            "snapshot name must be 1 to {SNAPSHOT_NAME_BYTES_MAX} bytes"
        ));
    }
    if name.starts_with('.') {
        return Err(format!("snapshot name {name:?} starts with a dot"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "snapshot name {name:?} has the character {bad:?} (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// What a run's key says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunKey {
    pub start: Lsn,
    pub end: Lsn,
    pub time_us: u64,
}

impl RunKey {
    pub fn name(&self) -> String {
        format!(
            "{:020}-{:020}-{:020}.run",
            self.start.0, self.end.0, self.time_us
        )
    }

    /// Parses a run's file name (the last part of its key); None for anything else.
    pub fn parse(name: &str) -> Option<RunKey> {
        let stem = name.strip_suffix(".run")?;
        let mut parts = stem.split('-');
        let start = parts.next()?.parse().ok()?;
        let end = parts.next()?.parse().ok()?;
        let time_us = parts.next()?.parse().ok()?;
        if parts.next().is_some() || end <= start {
            return None;
        }
        Some(RunKey {
            start: Lsn(start),
            end: Lsn(end),
            time_us,
        })
    }
}

/// What a key under a PG's folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgObject {
    Run(RunKey),
    BaseChunk(Lsn),
    BaseDone(Lsn),
    Head,
}

/// Classifies a key relative to the PG's folder (`log/...`, `base/...`, `head`).
pub fn parse_pg_object(relative: &str) -> Option<PgObject> {
    if relative == "head" {
        return Some(PgObject::Head);
    }
    if let Some(name) = relative.strip_prefix("log/") {
        return RunKey::parse(name).map(PgObject::Run);
    }
    let rest = relative.strip_prefix("base/")?;
    let (lsn, file) = rest.split_once('/')?;
    let lsn = Lsn(lsn.parse().ok()?);
    if file == "done.json" {
        Some(PgObject::BaseDone(lsn))
    } else if file.ends_with(".pages") {
        Some(PgObject::BaseChunk(lsn))
    } else {
        None
    }
}

/// The PG number of a `<volume>/pg-<N>/` folder name part.
pub fn parse_pg_folder(part: &str) -> Option<PgId> {
    part.strip_prefix("pg-")?.parse().ok().map(PgId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_round_trip_and_sort_by_lsn() {
        let a = RunKey {
            start: Lsn(9),
            end: Lsn(100),
            time_us: 5,
        };
        let b = RunKey {
            start: Lsn(100),
            end: Lsn(1000),
            time_us: 6,
        };
        assert_eq!(RunKey::parse(&a.name()), Some(a));
        assert!(a.name() < b.name());
        assert_eq!(
            run_key("v", PgId(2), &a),
            format!("v/pg-00002/log/{}", a.name())
        );
        assert_eq!(RunKey::parse("1-1-0.run"), None, "empty range");
        assert_eq!(RunKey::parse("x-2-0.run"), None);
        assert_eq!(RunKey::parse("1-2-0.tmp"), None);
    }

    #[test]
    fn pg_objects() {
        assert_eq!(
            parse_pg_object("base/00000000000000000042/000003.pages"),
            Some(PgObject::BaseChunk(Lsn(42)))
        );
        assert_eq!(
            parse_pg_object("base/00000000000000000042/done.json"),
            Some(PgObject::BaseDone(Lsn(42)))
        );
        assert_eq!(parse_pg_object("head"), Some(PgObject::Head));
        assert_eq!(parse_pg_object("junk"), None);
        assert_eq!(parse_pg_folder("pg-00012"), Some(PgId(12)));
    }

    #[test]
    fn snapshot_names() {
        assert!(check_snapshot_name("nightly-2026.11.26_a").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
