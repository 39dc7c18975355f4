//! A deterministic simulation of sixfold's write, recovery and fencing protocol.
//!
//! The protocol logic under test is the real one, as plain state machines with no I/O: the
//! node's `Segment` (chains, SCL, admission, truncation), the writer's `Ledger` (LSNs, PGCL,
//! VCL, VDL, LAL) and its recovery decisions (`sixfold_blockdev::recovery`). This crate supplies
//! what they otherwise get from the network and the disk: messages that are dropped, duplicated,
//! delayed and reordered, nodes that crash and restart, AZs cut off, writers that crash or are
//! taken over, all chosen by one seeded random generator, so that a failing seed replays exactly
//! (`SIXFOLD_SIM_SEED=N cargo test -p sixfold-sim`). See [`world`] for the invariants.
//!
//! The message handling in [`node`] and [`writer`] mirrors `node/src/service.rs` and
//! `blockdev/src/open.rs`/`sender.rs` step for step; when those change, these must follow.

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
    /// Segments ignore the truncations that Appends, peers and OpenSegment carry: a segment away
    /// during a recovery keeps the records it truncated.
    NoTruncationLearning,
}
