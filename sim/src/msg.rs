//! What the simulated writer and nodes say to each other: the protocol messages of
//! `proto/sixfold.proto` reduced to the fields the protocol logic reads.

use sixfold_node::members::ChangeMode;
use sixfold_node::repair_pass::Answer;
use sixfold_node::segment::Truncation;
use sixfold_proto::collision::{Ballot, Vote};
use sixfold_proto::membership::Membership;
use sixfold_proto::{Epoch, Lsn};

/// A redo record: every record rewrites one whole page with `value` (enough to tell versions
/// apart; byte ranges are the node's business, tested elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub lsn: Lsn,
    pub backlink: Lsn,
    pub epoch: Epoch,
    pub page: u64,
    pub value: u64,
}

#[derive(Clone, Debug)]
pub enum Msg {
    /// Writer -> segment: records (possibly none: a heartbeat) and every truncation the writer
    /// knows.
    Append {
        epoch: Epoch,
        membership: Membership,
        records: Vec<Rec>,
        truncations: Vec<Truncation>,
    },
    AppendAck {
        scl: Lsn,
    },
    /// The node knows a newer epoch than the request's.
    Fenced {
        epoch: Epoch,
    },
    /// The node holds a newer membership than the request's (or a rival of its epoch).
    StaleMembership,
    /// Recovery, step 1: adopt the epoch, apply `learn` (truncations other answers showed),
    /// then answer the segment's state.
    Seal {
        epoch: Epoch,
        membership: Membership,
        learn: Vec<Truncation>,
    },
    SealAck {
        /// The epoch the segment holds after the seal.
        epoch: Epoch,
        scl: Lsn,
        max_lsn: Lsn,
        truncations: Vec<Truncation>,
    },
    /// Recovery, step 2: apply the history, adopt the epoch, truncate after `tail`.
    Open {
        epoch: Epoch,
        membership: Membership,
        tail: Lsn,
        history: Vec<Truncation>,
    },
    OpenAck {
        scl: Lsn,
    },
    /// Gossip gap-fill between segments.
    Fetch {
        after: Lsn,
        membership: Membership,
    },
    FetchReply {
        records: Vec<Rec>,
        truncations: Vec<Truncation>,
    },
    /// Repair driver -> node: its state (no checks).
    Probe,
    /// Node -> driver (None: the node holds no segment of the PG).
    ProbeReply {
        answer: Option<Answer>,
    },
    /// Repair driver -> node: a membership step, a catch-up with an established membership,
    /// or a step over lost rivals.
    Change {
        base: Membership,
        proposed: Membership,
        mode: ChangeMode,
    },
    /// Node -> driver: the round in which it holds `proposed` after the change (None: it
    /// refused, or does not hold it).
    ChangeAck {
        proposed: Membership,
        held: Option<Ballot>,
    },
    /// Repair driver -> node: promise collision-recovery round `ballot` for the epoch after
    /// `base`'s.
    Promise {
        base: Membership,
        ballot: Ballot,
    },
    /// Node -> driver: its vote for round `ballot` (None: it refused).
    PromiseReply {
        ballot: Ballot,
        vote: Option<Vote>,
    },
}

/// Who sends and receives: node `i` (which may host a segment of the PG), the repair driver
/// running on node `i`, writers numbered in the order they started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    Node(usize),
    Driver(usize),
    Writer(usize),
}
