//! Retention: the PG's archiver deletes the archived objects that neither the retention window
//! nor any snapshot needs. Pure planning ([`plan`]) and one pass that runs it ([`pass`]).
//!
//! The window is every consistency point the writer reached in the last `retention`. Its oldest
//! point `L_w` (the newest point reached at or before its start) must stay restorable, so the
//! PG keeps its newest origin at or below `L_w` (a base image, or LSN 0) and every run and base
//! after it. Older runs (those ending at or below that origin) and older base images go, unless
//! a snapshot manifest names them: a snapshot keeps exactly the objects its manifest lists.
//! Chunks of base images that never completed (no `done.json`) go with the older bases.
//!
//! Deleting runs an archiver no longer needs is safe against a concurrent archiver: objects are
//! only ever deleted below an origin every archiver chains from, never at the head.

use std::collections::BTreeSet;

use sixfold_archive::catalog::PgCatalog;
use sixfold_archive::keys::{self, PgObject};
use sixfold_archive::manifest;
use sixfold_archive::{points, ObjectError, ObjectStore};
use sixfold_proto::{Lsn, PgId};
use tracing::{info, warn};

/// What a snapshot keeps of one PG.
#[derive(Debug, Default)]
pub struct Kept {
    pub runs: BTreeSet<String>,
    pub bases: BTreeSet<Lsn>,
}

/// The keys (relative to the PG's folder) to delete, given the PG's listing, the window's
/// oldest point and what snapshots keep. Pure.
pub fn plan(relative_keys: &[String], window_start: Lsn, kept: &Kept) -> Vec<String> {
    let catalog = PgCatalog::from_keys(PgId(0), relative_keys.iter().map(String::as_str));
    let Some(origin) = catalog.origin_for(window_start) else {
        return Vec::new(); // the window's start is not restorable: delete nothing
    };
    let mut doomed: Vec<String> = relative_keys
        .iter()
        .filter(|key| match keys::parse_pg_object(key) {
            Some(PgObject::Run(run)) => run.end <= origin && !kept.runs.contains(&run.name()),
            Some(PgObject::BaseChunk(lsn)) | Some(PgObject::BaseDone(lsn)) => {
                lsn < origin && !kept.bases.contains(&lsn)
            }
            _ => false,
        })
        .cloned()
        .collect();
    // A base image's done.json goes before its chunks: a pass that fails half-way leaves an
    // incomplete image (ignored), never a "complete" one with chunks missing.
    doomed.sort_by_key(|key| match keys::parse_pg_object(key) {
        Some(PgObject::BaseDone(_)) => 0,
        Some(PgObject::BaseChunk(_)) => 1,
        _ => 2,
    });
    doomed
}

/// What every snapshot of `volume` keeps of `pg`.
async fn kept(objects: &ObjectStore, volume: &str, pg: PgId) -> Result<Kept, ObjectError> {
    let mut kept = Kept::default();
    for manifest in manifest::snapshots(objects, volume).await? {
        for entry in manifest.pgs.iter().filter(|p| p.pg == pg.0) {
            kept.runs.extend(entry.runs.iter().cloned());
            kept.bases.extend(entry.base.map(Lsn));
        }
    }
    Ok(kept)
}

/// One retention pass over a PG's archive: deletes what [`plan`] says. Returns how many objects
/// it deleted.
pub async fn pass(
    objects: &ObjectStore,
    volume: &str,
    pg: PgId,
    window_start_us: u64,
) -> Result<usize, ObjectError> {
    let prefix = keys::pg_prefix(volume, pg);
    let listed = objects.list(&prefix).await?;
    let relative: Vec<String> = listed
        .iter()
        .filter_map(|l| l.key.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let catalog = PgCatalog::from_keys(pg, relative.iter().map(String::as_str));
    let single = std::iter::once((pg, catalog)).collect();
    let Some((window_start, _)) =
        points::lsn_at_time(objects, volume, &single, window_start_us).await?
    else {
        return Ok(0); // nothing is older than the window
    };
    let kept = kept(objects, volume, pg).await?;
    let doomed = plan(&relative, window_start, &kept);
    for key in &doomed {
        if let Err(error) = objects.delete(&format!("{prefix}{key}")).await {
            warn!(%pg, volume, key, "retention could not delete an object: {error}");
            return Err(error);
        }
    }
    if !doomed.is_empty() {
        info!(%pg, volume, deleted = doomed.len(), %window_start, "retention deleted archived objects older than the window");
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixfold_archive::keys::RunKey;

    fn run(start: u64, end: u64) -> String {
        format!(
            "log/{}",
            RunKey {
                start: Lsn(start),
                end: Lsn(end),
                time_us: end,
            }
            .name()
        )
    }

    fn base(lsn: u64) -> Vec<String> {
        vec![
            format!("base/{lsn:020}/000000.pages"),
            format!("base/{lsn:020}/done.json"),
        ]
    }

    #[test]
    fn keeps_the_newest_origin_at_or_below_the_window_and_everything_after() {
        let mut keys = vec![
            run(0, 10),
            run(10, 20),
            run(20, 30),
            run(30, 40),
            run(40, 50),
        ];
        keys.extend(base(15));
        keys.extend(base(35));
        keys.push("base/00000000000000000012/000000.pages".into()); // never completed
        let doomed = plan(&keys, Lsn(37), &Kept::default());
        assert!(
            doomed[0].ends_with("done.json"),
            "done.json goes first: {doomed:?}"
        );
        let mut expected = vec![run(0, 10), run(10, 20), run(20, 30)];
        expected.extend(base(15));
        expected.push("base/00000000000000000012/000000.pages".into());
        expected.sort();
        let mut doomed = doomed;
        doomed.sort();
        assert_eq!(doomed, expected);
        // Run (30, 40] stays: the chain from base 35 starts with it.
    }

    #[test]
    fn snapshots_keep_what_their_manifest_names() {
        let mut keys = vec![run(0, 10), run(10, 20), run(20, 30)];
        keys.extend(base(25));
        let kept = Kept {
            runs: [RunKey::parse(&run(0, 10)[4..])
                .map(|r| r.name())
                .unwrap_or_default()]
            .into_iter()
            .collect(),
            bases: BTreeSet::new(),
        };
        let doomed = plan(&keys, Lsn(28), &kept);
        assert_eq!(doomed, vec![run(10, 20)]);
    }

    #[test]
    fn a_window_start_that_is_not_restorable_deletes_nothing() {
        let keys = vec![run(0, 10), run(20, 30)];
        assert!(plan(&keys, Lsn(15), &Kept::default()).is_empty());
    }

    #[test]
    fn without_a_base_nothing_older_goes() {
        let keys = vec![run(0, 10), run(10, 20)];
        assert!(plan(&keys, Lsn(15), &Kept::default()).is_empty());
    }
}
