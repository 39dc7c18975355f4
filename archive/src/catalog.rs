//! What one PG's archive can restore, from its object keys alone. Pure.
//!
//! An *origin* is a point the archive can start a PG from: LSN 0 (when a run starts there: the
//! archive holds the PG from its first record) or a complete base image. From an origin, a chain
//! of runs, each starting at or below where the previous one ended, reaches some LSN: every
//! point from the origin to there is restorable. Runs may overlap (two archivers, or an owner
//! change mid-run, cut the same records differently); the chain takes the run that reaches
//! furthest at each step, and a restore skips records it already has.

use std::collections::BTreeSet;

use sixfold_proto::{Lsn, PgId};

use crate::keys::{parse_pg_object, PgObject, RunKey};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgCatalog {
    pub pg: PgId,
    /// Every run, sorted by (start, end).
    pub runs: Vec<RunKey>,
    /// Complete base images (their done.json exists), by LSN.
    pub bases: BTreeSet<Lsn>,
}

/// How to rebuild a PG at a target LSN: a base image (or none: from the PG's first record) and
/// the runs to apply after it, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: Option<Lsn>,
    pub runs: Vec<RunKey>,
}

impl PgCatalog {
    /// From keys relative to the PG's folder (`log/...`, `base/...`); others are ignored.
    pub fn from_keys<'a>(pg: PgId, keys: impl IntoIterator<Item = &'a str>) -> PgCatalog {
        let mut catalog = PgCatalog {
            pg,
            runs: Vec::new(),
            bases: BTreeSet::new(),
        };
        for key in keys {
            match parse_pg_object(key) {
                Some(PgObject::Run(run)) => catalog.runs.push(run),
                Some(PgObject::BaseDone(lsn)) => {
                    catalog.bases.insert(lsn);
                }
                _ => {}
            }
        }
        catalog.runs.sort();
        catalog.runs.dedup();
        catalog
    }

    fn origins(&self) -> Vec<Lsn> {
        let mut origins: Vec<Lsn> = Vec::new();
        if self.runs.first().is_some_and(|r| r.start == Lsn::ZERO) {
            origins.push(Lsn::ZERO);
        }
        origins.extend(self.bases.iter().copied());
        origins
    }

    /// Runs from `origin` on, each the one reaching furthest among those that start at or
    /// below where the chain is, until `until` is reached or nothing continues the chain.
    fn chain(&self, origin: Lsn, until: Lsn) -> (Lsn, Vec<RunKey>) {
        let mut at = origin;
        let mut chain = Vec::new();
        let mut next = 0;
        while at < until {
            let mut best: Option<RunKey> = None;
            while next < self.runs.len() && self.runs[next].start <= at {
                let run = self.runs[next];
                if run.end > at && best.is_none_or(|b| run.end > b.end) {
                    best = Some(run);
                }
                next += 1;
            }
            let Some(run) = best else { break };
            at = run.end;
            chain.push(run);
        }
        (at, chain)
    }

    /// Restorable ranges: (origin, furthest point reached from it), by origin.
    pub fn ranges(&self) -> Vec<(Lsn, Lsn)> {
        self.origins()
            .into_iter()
            .map(|o| (o, self.chain(o, Lsn(u64::MAX)).0))
            .collect()
    }

    /// How far the archive reaches: the furthest point of any range (0 when empty).
    pub fn head(&self) -> Lsn {
        self.ranges()
            .into_iter()
            .map(|(_, to)| to)
            .max()
            .unwrap_or(Lsn::ZERO)
    }

    /// Whether `target` is restorable.
    pub fn covers(&self, target: Lsn) -> bool {
        self.ranges()
            .iter()
            .any(|&(from, to)| from <= target && target <= to)
    }

    /// The newest origin at or below `target` whose chain reaches it (None: `target` is not
    /// restorable). A restore starts there; retention keeps it and everything after it.
    pub fn origin_for(&self, target: Lsn) -> Option<Lsn> {
        self.ranges()
            .into_iter()
            .filter(|&(from, to)| from <= target && target <= to)
            .map(|(from, _)| from)
            .max()
    }

    /// The cheapest way to rebuild the PG at `target`: from [`PgCatalog::origin_for`]. None
    /// when `target` is not restorable.
    pub fn plan(&self, target: Lsn) -> Option<Plan> {
        let origin = self.origin_for(target)?;
        let (reached, runs) = self.chain(origin, target);
        debug_assert!(reached >= target);
        let base = self.bases.contains(&origin).then_some(origin);
        Some(Plan { base, runs })
    }

    /// The run to open to find the newest consistency point reached at or before `time_us`,
    /// and the newest one known from keys alone: runs are in time order, so every run whose
    /// key time is at or before it contributes its end's point, and only the first run after
    /// those may hold more (its key time is its newest point's). Returns (the best LSN from
    /// keys, the run to open).
    pub fn time_lookup(&self, time_us: u64) -> (Option<Lsn>, Option<RunKey>) {
        let timed: Vec<&RunKey> = self.runs.iter().filter(|r| r.time_us > 0).collect();
        let before = timed
            .iter()
            .filter(|r| r.time_us <= time_us)
            .map(|r| r.end)
            .max();
        let open = timed
            .iter()
            .filter(|r| r.time_us > time_us && before.is_none_or(|b| r.end > b))
            .min_by_key(|r| r.start)
            .map(|r| **r);
        (before, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, end: u64) -> String {
        format!(
            "log/{}",
            RunKey {
                start: Lsn(start),
                end: Lsn(end),
                time_us: end * 10
            }
            .name()
        )
    }

    fn catalog(keys: &[String]) -> PgCatalog {
        PgCatalog::from_keys(PgId(0), keys.iter().map(String::as_str))
    }

    #[test]
    fn chain_from_zero() {
        let c = catalog(&[run(0, 10), run(10, 20), run(20, 35)]);
        assert_eq!(c.head(), Lsn(35));
        assert!(c.covers(Lsn(0)) && c.covers(Lsn(17)) && c.covers(Lsn(35)));
        assert!(!c.covers(Lsn(36)));
        let plan = c.plan(Lsn(15)).unwrap();
        assert_eq!(plan.base, None);
        assert_eq!(plan.runs.len(), 2);
    }

    #[test]
    fn overlapping_runs_from_two_archivers() {
        let c = catalog(&[run(0, 10), run(10, 20), run(10, 30), run(25, 40)]);
        assert_eq!(c.head(), Lsn(40));
        let plan = c.plan(Lsn(40)).unwrap();
        let ends: Vec<u64> = plan.runs.iter().map(|r| r.end.0).collect();
        assert_eq!(ends, [10, 30, 40]);
    }

    #[test]
    fn a_gap_ends_a_range_and_a_base_starts_one() {
        let mut keys = vec![run(0, 10), run(20, 30), run(30, 40)];
        assert!(!catalog(&keys).covers(Lsn(25)));
        assert_eq!(catalog(&keys).head(), Lsn(10));
        keys.push("base/00000000000000000022/done.json".into());
        keys.push("base/00000000000000000005/000000.pages".into()); // incomplete: ignored
        let c = catalog(&keys);
        assert_eq!(c.ranges(), [(Lsn(0), Lsn(10)), (Lsn(22), Lsn(40))]);
        assert!(!c.covers(Lsn(15)));
        assert!(!c.covers(Lsn(5)) || c.plan(Lsn(5)).unwrap().base.is_none());
        let plan = c.plan(Lsn(35)).unwrap();
        assert_eq!(plan.base, Some(Lsn(22)));
        let starts: Vec<u64> = plan.runs.iter().map(|r| r.start.0).collect();
        assert_eq!(starts, [20, 30]);
        assert_eq!(c.plan(Lsn(22)).unwrap().runs, []);
    }

    #[test]
    fn retention_removed_the_start() {
        let c = catalog(&[
            run(10, 20),
            run(20, 30),
            "base/00000000000000000015/done.json".into(),
        ]);
        assert_eq!(c.ranges(), [(Lsn(15), Lsn(30))]);
        assert!(!c.covers(Lsn(12)));
    }

    #[test]
    fn time_lookup_uses_keys_then_one_run() {
        // Key times are end * 10.
        let c = catalog(&[run(0, 10), run(10, 20), run(20, 30)]);
        assert_eq!(c.time_lookup(200), (Some(Lsn(20)), Some(c.runs[2])));
        assert_eq!(c.time_lookup(150).0, Some(Lsn(10)));
        assert_eq!(c.time_lookup(5), (None, Some(c.runs[0])));
        assert_eq!(c.time_lookup(1_000), (Some(Lsn(30)), None));
    }
}
