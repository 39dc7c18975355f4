//! What the simulated writer and nodes say to each other: the protocol messages of
//! `proto/sixfold.proto` reduced to the fields the protocol logic reads.

use sixfold_node::segment::Truncation;
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
    /// Recovery, step 1: adopt the epoch, apply `learn` (truncations other answers showed),
    /// then answer the segment's state.
    Seal {
        epoch: Epoch,
        learn: Vec<Truncation>,
    },
    SealAck {
        scl: Lsn,
        max_lsn: Lsn,
        truncations: Vec<Truncation>,
    },
    /// Recovery, step 2: apply the history, adopt the epoch, truncate after `tail`.
    Open {
        epoch: Epoch,
        tail: Lsn,
        history: Vec<Truncation>,
    },
    OpenAck {
        scl: Lsn,
    },
    /// Gossip gap-fill between segments.
    Fetch {
        after: Lsn,
    },
    FetchReply {
        records: Vec<Rec>,
        truncations: Vec<Truncation>,
    },
}

/// Who sends and receives: node `i` hosts segment `i` of the PG; writers are numbered in the
/// order they started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    Node(usize),
    Writer(usize),
}
