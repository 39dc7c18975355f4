//! A deterministic simulation of sixfold's write, recovery and fencing protocol.
//!
//! The protocol logic under test is the real one, as plain state machines with no I/O: the
//! node's `Segment` (chains, SCL, admission, truncation) and its rules for adopting histories
//! (`segment::adopts_history`) and memberships (`members`), the repair driver's decisions
//! (`repair_pass`), the writer's `Ledger` (LSNs, PGCL, VCL, VDL, LAL) and its whole recovery of
//! a PG (`sixfold_blockdev::recovery::PgRecovery`: seal, ask again, keep a tail, open, settle,
//! the machine `blockdev/src/open.rs` drives over gRPC). This crate supplies
//! what they otherwise get from the network and the disk: messages that are dropped, duplicated,
//! delayed and reordered, nodes that crash and restart, AZs cut off, writers that crash or are
//! taken over, all chosen by one seeded random generator, so that a failing seed replays exactly
//! (`SIXFOLD_SIM_SEED=N cargo test -p sixfold-sim`; add `SIXFOLD_SIM_TRACE=1` for what the
//! repair drivers decided, step by step). See [`world`] for the invariants.
//!
//! The node's append admission (`sixfold_node::admission`: what it takes in, and when and in
//! which order it answers) is the real machine too: nodes harden admitted batches in a random
//! order, in steps of their own, and answer as it says.
//!
//! What is still written here rather than shared: the order in which [`node`] handles a
//! message (learn truncations, fence by epoch and membership, admit), which follows
//! `node/src/service.rs`/`appender.rs`, and the writer's sending loop in [`writer`] (what to
//! resend when), which follows `blockdev/src/sender.rs`; when those change, these must follow.
//! (Issue 17 makes the writer's per-segment link a state machine the simulation drives too.)

pub mod driver;
pub mod msg;
pub mod node;
pub mod world;
pub mod writer;

pub use world::{run, Config, Stats};

/// Which protocol runs: the real one, or a deliberately broken one that the invariants must
/// catch (a simulation that cannot fail proves nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Correct,
    /// A flush returns once three segments (not four) acknowledged its records.
    FlushOnThreeAcks,
    /// Segments ignore the truncations that Appends, peers and OpenSegment's history carry (they
    /// still adopt what a recovery's seal hands them: without that no recovery completes, a
    /// stall rather than a loss): a segment away during a recovery keeps the records it
    /// truncated.
    NoTruncationLearning,
    /// The writer counts a write durable once 4 of the PG's stable configuration (ABCDEF) hold
    /// it, ignoring the replacement under way (4 of ABCDEG too).
    WriteQuorumOfStableConfig,
    /// Nodes acknowledge an Append when they admit it, before it is hardened (an append
    /// server that answers before the fsync).
    AckBeforeHarden,
}

/// Prints a line of the schedule's trace when `SIXFOLD_SIM_TRACE` is set (to replay a seed).
pub(crate) fn trace(step: u64, line: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("SIXFOLD_SIM_TRACE").is_some()) {
        eprintln!("{step}: {}", line());
    }
}
