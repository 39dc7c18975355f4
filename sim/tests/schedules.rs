//! Thousands of seeded fault schedules of the protocol (see `sixfold_sim::world` for the faults
//! and the invariants). A failure prints its seed; `SIXFOLD_SIM_SEED=N` replays that one seed,
//! `SIXFOLD_SIM_SCHEDULES=N` changes how many run and `SIXFOLD_SIM_STEPS=N` how long each is.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use sixfold_sim::{run, Config, Variant};

fn schedules() -> u64 {
    std::env::var("SIXFOLD_SIM_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

/// One schedule; a panic inside a state machine (its own invariant checks) counts as a failure.
fn run_seed(seed: u64, variant: Variant) -> Result<sixfold_sim::Stats, String> {
    let mut config = Config::new(seed, variant);
    if let Some(steps) = std::env::var("SIXFOLD_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        config.steps = steps;
    }
    match catch_unwind(AssertUnwindSafe(|| run(config))) {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

#[test]
fn the_protocol_keeps_every_invariant_over_thousands_of_schedules() {
    if let Some(seed) = std::env::var("SIXFOLD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let stats = run_seed(seed, Variant::Correct)
            .unwrap_or_else(|e| panic!("seed {seed} (SIXFOLD_SIM_SEED={seed}): {e}"));
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let started = Instant::now();
    let (mut writers, mut flushes, mut crashes, mut steps) = (0, 0, 0, 0);
    let (mut promises, mut splits) = (0, 0);
    for seed in 0..schedules() {
        match run_seed(seed, Variant::Correct) {
            Ok(stats) => {
                writers += stats.writers;
                flushes += stats.flushes;
                crashes += stats.node_crashes;
                steps += stats.membership_steps;
                promises += stats.promises;
                splits += u64::from(stats.split_at_heal);
            }
            Err(e) => panic!("seed {seed} failed (replay: SIXFOLD_SIM_SEED={seed}): {e}"),
        }
    }
    eprintln!(
        "{} schedules in {:.1?}: {writers} writers, {flushes} flushes returned, {crashes} node \
         crashes, {steps} membership steps recorded, {splits} schedules healed with rival \
         steps splitting the PG and a node lost for good, {promises} collision-recovery promise \
         requests",
        schedules(),
        started.elapsed()
    );
    assert!(
        flushes as u64 > schedules(),
        "the schedules must make progress"
    );
    assert!(
        steps > schedules(),
        "the schedules must change memberships (replace lost nodes, move drained ones)"
    );
    assert!(
        splits > 0 && promises > 0,
        "some schedules must end with rival steps splitting the PG and one node lost for good, \
         which only a collision-recovery round decides"
    );
}

/// The first seed where a broken variant breaks one of the safety invariants I1-I6 (a stall or
/// an unrelated panic proves less), if any within `times` the schedules.
fn first_failure(variant: Variant, times: u64) -> Option<(u64, String)> {
    (0..schedules() * times).find_map(|seed| {
        run_seed(seed, variant)
            .err()
            .filter(|e| {
                ["I1:", "I2:", "I3:", "I4:", "I5:", "I6:"]
                    .iter()
                    .any(|tag| e.contains(tag))
            })
            .map(|e| (seed, e))
    })
}

#[test]
fn a_flush_that_returns_on_three_acks_is_caught() {
    let (seed, error) = first_failure(Variant::FlushOnThreeAcks, 1)
        .expect("the simulation must catch flushes that return on 3 of 6 acknowledgements");
    eprintln!("caught at seed {seed}: {error}");
}

/// Rare by nature: LSNs of a new writer start above everything its recovery saw plus LAL, so a
/// record a recovery truncated can only be confused with a newer one when the recovery saw
/// nothing at all (the new writer starts at LSN 1 again) and a node outside its quorum still
/// holds an old LSN 1. Hence three times the schedules (the search stops at the first catch).
#[test]
fn segments_that_ignore_truncations_are_caught() {
    let (seed, error) = first_failure(Variant::NoTruncationLearning, 3)
        .expect("the simulation must catch segments that keep truncated records");
    eprintln!("caught at seed {seed}: {error}");
}

#[test]
fn a_write_counted_on_the_stable_configuration_alone_is_caught() {
    let (seed, error) = first_failure(Variant::WriteQuorumOfStableConfig, 1).expect(
        "the simulation must catch a writer that counts 4 of ABCDEF while ABCDEF -> ABCDEG is \
         under way",
    );
    eprintln!("caught at seed {seed}: {error}");
}

/// A node that answers an Append before hardening it (the append server's machine bypassed):
/// flushes return on records that a crash then loses.
#[test]
fn an_acknowledgement_before_hardening_is_caught() {
    let (seed, error) = first_failure(Variant::AckBeforeHarden, 1)
        .expect("the simulation must catch nodes that acknowledge before they harden");
    eprintln!("caught at seed {seed}: {error}");
}
