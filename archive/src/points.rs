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

/// Merges overlapping or touching ranges, sorted.
fn merge(mut ranges: Vec<(Lsn, Lsn)>) -> Vec<(Lsn, Lsn)> {
    ranges.sort();
    let mut out: Vec<(Lsn, Lsn)> = Vec::new();
    for (from, to) in ranges {
        match out.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

/// The LSN ranges at which the whole volume is restorable: the intersection over PGs of the
/// ranges each PG's archive covers. Empty when there is none.
pub fn restorable(catalogs: &BTreeMap<PgId, PgCatalog>) -> Vec<(Lsn, Lsn)> {
    let mut all: Option<Vec<(Lsn, Lsn)>> = None;
    for catalog in catalogs.values() {
        let ranges = merge(catalog.ranges());
        all = Some(match all {
            None => ranges,
            Some(so_far) => {
                let mut out = Vec::new();
                for a in &so_far {
                    for b in &ranges {
                        let (from, to) = (a.0.max(b.0), a.1.min(b.1));
                        if from <= to {
                            out.push((from, to));
                        }
                    }
                }
                merge(out)
            }
        });
    }
    all.unwrap_or_default()
}

/// The restorable ranges for a person: "LSN 0 to 1439, LSN 9000 to 12211".
pub fn describe_restorable(catalogs: &BTreeMap<PgId, PgCatalog>) -> String {
    let ranges = restorable(catalogs);
    if ranges.is_empty() {
        return "no point is restorable for every PG yet".into();
    }
    let listed: Vec<String> = ranges
        .iter()
        .map(|(from, to)| format!("LSN {from} to {to}"))
        .collect();
    format!("restorable: {}", listed.join(", "))
}

/// The newest restorable point (None: nothing is restorable).
pub fn newest(catalogs: &BTreeMap<PgId, PgCatalog>) -> Option<Lsn> {
    restorable(catalogs).last().map(|r| r.1)
}

/// Whether the archive around `lsn` is whole in every PG: a run continues past it, or it is
/// the PG's head. A time maps to an LSN only where it is: where retention pruned the runs after
/// a point (a snapshot kept the runs up to it), later points of that time are unknown.
pub fn continuous_at(catalogs: &BTreeMap<PgId, PgCatalog>, lsn: Lsn) -> Result<(), PgId> {
    for (pg, catalog) in catalogs {
        let continues = catalog.runs.iter().any(|r| r.start <= lsn && lsn < r.end);
        if !continues && catalog.head() != lsn {
            return Err(*pg);
        }
    }
    Ok(())
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

/// The newest consistency point at or below `lsn`, and when it was reached: from run keys
/// (every timed run ends at one) and the runs that hold `lsn` inside them (opened). None when
/// no point that old is archived.
pub async fn point_at_or_below(
    store: &ObjectStore,
    volume: &str,
    catalogs: &BTreeMap<PgId, PgCatalog>,
    lsn: Lsn,
) -> Result<Option<(Lsn, u64)>, ObjectError> {
    let mut best: Option<(Lsn, u64)> = None;
    let mut consider = |point: (Lsn, u64)| {
        if point.0 <= lsn && best.is_none_or(|(b, _)| point.0 > b) {
            best = Some(point);
        }
    };
    for (pg, catalog) in catalogs {
        for run in catalog
            .runs
            .iter()
            .filter(|r| r.time_us > 0 && r.end <= lsn)
        {
            consider((run.end, run.time_us));
        }
        let inside = catalog
            .runs
            .iter()
            .filter(|r| r.time_us > 0 && r.start < lsn && lsn < r.end)
            .min_by_key(|r| r.end);
        if let Some(run) = inside {
            for mark in run_marks(store, volume, *pg, run).await? {
                consider(mark);
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
    // A sealed run keeps its consistency points in the clear: no key is needed here.
    let clear = format::clear_part(&body).map_err(|e| ObjectError::Corrupt {
        store: store.describe(),
        key: key.clone(),
        why: e.to_string(),
    })?;
    let decoded = format::decode_run(clear).map_err(|e| ObjectError::Corrupt {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RunKey;

    fn catalog(pg: u32, runs: &[(u64, u64)], bases: &[u64]) -> (PgId, PgCatalog) {
        let mut keys: Vec<String> = runs
            .iter()
            .map(|&(start, end)| {
                format!(
                    "log/{}",
                    RunKey {
                        start: Lsn(start),
                        end: Lsn(end),
                        time_us: end,
                    }
                    .name()
                )
            })
            .collect();
        keys.extend(bases.iter().map(|b| format!("base/{b:020}/done.json")));
        (
            PgId(pg),
            PgCatalog::from_keys(PgId(pg), keys.iter().map(String::as_str)),
        )
    }

    #[test]
    fn restorable_is_the_intersection_over_pgs() {
        let catalogs: BTreeMap<_, _> = [
            catalog(0, &[(0, 10), (10, 20), (30, 40), (40, 50)], &[35]),
            catalog(1, &[(0, 15), (15, 50)], &[]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            restorable(&catalogs),
            [(Lsn(0), Lsn(20)), (Lsn(35), Lsn(50))]
        );
        assert_eq!(newest(&catalogs), Some(Lsn(50)));
        assert!(continuous_at(&catalogs, Lsn(12)).is_ok());
        assert_eq!(continuous_at(&catalogs, Lsn(20)), Err(PgId(0)));
        assert!(continuous_at(&catalogs, Lsn(50)).is_ok(), "the head");
    }
}
