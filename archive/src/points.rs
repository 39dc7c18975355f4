//! Restore points of a whole volume: which LSNs every PG's archive can rebuild, and which LSN a
//! time maps to (the newest consistency point the writer had reached by then).
//!
//! A volume is restorable at LSN L when every PG's archive covers L ([`PgCatalog::covers`]).
//! The window reported in errors is from the newest of the PGs' oldest points to the oldest of
//! their heads.

use std::collections::BTreeMap;

use sixfold_proto::{Lsn, PgId};

use crate::catalog::PgCatalog;
use crate::format;
use crate::keys::{self, RunKey};
use crate::store::{ObjectError, ObjectStore};

/// Every PG's catalog of a volume's archive, from one listing.
pub async fn catalogs(
    store: &ObjectStore,
    volume: &str,
) -> Result<BTreeMap<PgId, PgCatalog>, ObjectError> {
    let root = format!("{volume}/");
    let listed = store.list(&root).await?;
    let mut keys_by_pg: BTreeMap<PgId, Vec<String>> = BTreeMap::new();
    for object in listed {
        let Some(relative) = object.key.strip_prefix(&root) else {
            continue;
        };
        let Some((folder, rest)) = relative.split_once('/') else {
            continue;
        };
        if let Some(pg) = keys::parse_pg_folder(folder) {
            keys_by_pg.entry(pg).or_default().push(rest.to_owned());
        }
    }
    Ok(keys_by_pg
        .into_iter()
        .map(|(pg, keys)| {
            (
                pg,
                PgCatalog::from_keys(pg, keys.iter().map(String::as_str)),
            )
        })
        .collect())
}

/// The restorable window: (oldest, newest) LSNs every PG covers at the ends. None when some PG
/// has nothing restorable.
pub fn window(catalogs: &BTreeMap<PgId, PgCatalog>) -> Option<(Lsn, Lsn)> {
    let mut oldest = Lsn::ZERO;
    let mut newest = Lsn(u64::MAX);
    for catalog in catalogs.values() {
        let ranges = catalog.ranges();
        let first = ranges.iter().map(|r| r.0).min()?;
        let head = ranges.iter().map(|r| r.1).max()?;
        oldest = oldest.max(first);
        newest = newest.min(head);
    }
    (!catalogs.is_empty() && oldest <= newest).then_some((oldest, newest))
}

/// The PG (if any) whose archive does not cover `target`.
pub fn uncovered(catalogs: &BTreeMap<PgId, PgCatalog>, target: Lsn) -> Option<PgId> {
    catalogs
        .iter()
        .find(|(_, c)| !c.covers(target))
        .map(|(pg, _)| *pg)
}

/// The newest consistency point the writer had reached at or before `time_us`, and when: from
/// run keys, opening at most one run per PG. None when no point is that old.
pub async fn lsn_at_time(
    store: &ObjectStore,
    volume: &str,
    catalogs: &BTreeMap<PgId, PgCatalog>,
    time_us: u64,
) -> Result<Option<(Lsn, u64)>, ObjectError> {
    let mut best: Option<(Lsn, u64)> = None;
    for (pg, catalog) in catalogs {
        let (from_keys, open) = catalog.time_lookup(time_us);
        if let Some(lsn) = from_keys {
            let time = catalog
                .runs
                .iter()
                .filter(|r| r.end == lsn)
                .map(|r| r.time_us)
                .max()
                .unwrap_or(0);
            if best.is_none_or(|(b, _)| lsn > b) {
                best = Some((lsn, time));
            }
        }
        if let Some(run) = open {
            for mark in run_marks(store, volume, *pg, &run).await? {
                if mark.1 <= time_us && best.is_none_or(|(b, _)| mark.0 > b) {
                    best = Some(mark);
                }
            }
        }
    }
    Ok(best)
}

/// The consistency points a run holds: (VDL, when reached).
pub async fn run_marks(
    store: &ObjectStore,
    volume: &str,
    pg: PgId,
    run: &RunKey,
) -> Result<Vec<(Lsn, u64)>, ObjectError> {
    let key = keys::run_key(volume, pg, run);
    let body = store.get(&key).await?;
    let decoded = format::decode_run(&body).map_err(|e| ObjectError::Corrupt {
        store: store.describe(),
        key: key.clone(),
        why: e.to_string(),
    })?;
    Ok(decoded
        .marks
        .iter()
        .map(|m| (Lsn(m.vdl), m.time_us))
        .collect())
}
