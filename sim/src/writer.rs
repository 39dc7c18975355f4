//! A simulated writer: the mount's protocol logic with the network replaced by messages. Its
//! decisions are the real writer's: `sixfold_blockdev::ledger::Ledger` (LSN allocation, chains,
//! PGCL/VCL/VDL, LAL), `sixfold_blockdev::recovery::PgRecovery` (the whole recovery of a PG:
//! seal, ask again, keep a chain tail, open, settle; `blockdev/src/open.rs` drives the same
//! machine over gRPC), `recovery::new_start` (where new LSNs start) and the PG's `Membership`
//! (what a write quorum and a read quorum are). What this file adds is the driving: a request
//! is sent again every `RESEND_STEPS` (the transport's retransmission) and counts as failed
//! after `TIMEOUT_STEPS` (the real recovery's timeout); a recovery that fails makes this writer
//! give up (the mount is tried again by a new writer, reading the metadata again). An open
//! writer refused as stale follows the metadata's newer membership
//! (`blockdev/src/membership.rs`).

use std::collections::{HashMap, HashSet};

use sixfold_blockdev::ledger::Ledger;
use sixfold_blockdev::recovery::{
    new_start, OpenDecision, PgRecovery, RecoveryError, Refused, SealAnswer, SealDecision,
};
use sixfold_blockdev::refusal::Refusal;
use sixfold_node::segment::Truncation;
use sixfold_proto::membership::Membership;
use sixfold_proto::wire;
use sixfold_proto::{Epoch, Lsn, NodeId, PgId};

use crate::msg::{Msg, Rec};
use crate::Variant;

/// The simulated volume has one PG.
pub const PG: PgId = PgId(0);

/// Nodes of the simulated cluster: three per AZ (node `i` is in AZ `i / 3`), so that each AZ
/// has a spare to replace a lost member with.
pub const NODES: usize = 9;

/// The node id of simulated node `i` (ids are never 0).
pub fn node_id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

/// The simulated node with id `node`.
pub fn index_of(node: NodeId) -> usize {
    (node.0 - 1) as usize
}

/// The PG's first membership: two nodes of each AZ (nodes 0, 1, 3, 4, 6, 7).
pub fn first_membership() -> Membership {
    Membership::new([0, 1, 3, 4, 6, 7].map(node_id).to_vec()).expect("six distinct nodes")
}
/// The membership the ledger counts quorums by: the PG's, or (the deliberate bug) only its
/// stable configuration, as if no replacement were under way.
fn counted(membership: &Membership, variant: Variant) -> Membership {
    if variant == Variant::WriteQuorumOfStableConfig {
        Membership {
            changes: Vec::new(),
            ..membership.clone()
        }
    } else {
        membership.clone()
    }
}

/// Steps without an answer before a request is sent again.
const RESEND_STEPS: u64 = 12;
/// Steps without an answer before a recovery request counts as failed (the real recovery's
/// per-request timeout).
const TIMEOUT_STEPS: u64 = 4 * RESEND_STEPS;
/// Records per Append.
const BATCH_MAX: usize = 8;
/// Steps a writer waits for 4 segments to hold its kept chain before it gives up (the real
/// mount fails after `SETTLE_TIMEOUT`, and its operator mounts again: a new recovery).
const SETTLE_STEPS: u64 = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Sealing,
    Opening,
    Active,
    /// A node answered with a newer epoch: this writer may never flush again.
    Fenced,
    /// Crashed (kill -9): gone, with everything it had in memory.
    Dead,
}

/// What a message made happen, for the checks.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Sealing reached a write quorum: the chain tail recovery keeps, and the node whose answer
    /// holds that chain.
    Sealed {
        tail: Lsn,
        holder: usize,
    },
    /// Opened at a write quorum: the writer starts writing.
    Opened,
    FlushReturned {
        target: Lsn,
    },
    Fenced,
}

pub struct SimWriter {
    pub epoch: Epoch,
    /// The PG's membership this writer uses (from the volume metadata).
    pub membership: Membership,
    /// A node refused the membership as stale: the writer wants the metadata's newer one.
    pub stale: bool,
    pub phase: Phase,
    pub lal: u64,
    /// The recovery of the PG: the real writer's decisions.
    recovery: PgRecovery,
    /// Per node: when the current recovery request was first sent (for its timeout).
    asked_at: [Option<u64>; NODES],
    /// Recovery's chain tail, and every truncation (its own last) sent with every Append.
    pub tail: Lsn,
    start: Lsn,
    pub truncations: Vec<Truncation>,
    pub ledger: Option<Ledger>,
    /// The page values recovery found (the volume as this writer started it).
    pub base: HashMap<u64, u64>,
    /// This writer's own records, in LSN order.
    pub records: Vec<Rec>,
    pending_flushes: Vec<Lsn>,
    /// Per node: highest LSN sent, and when the request last went out.
    sent: [Lsn; NODES],
    sent_at: [u64; NODES],
    /// When opening began (for the settle timeout).
    opening_since: Option<u64>,
}

fn truncation(t: &wire::Truncation) -> Truncation {
    Truncation {
        epoch: Epoch(t.epoch),
        after: Lsn(t.truncate_after),
    }
}

fn to_wire(t: &Truncation) -> wire::Truncation {
    wire::Truncation {
        epoch: t.epoch.0,
        truncate_after: t.after.0,
    }
}

impl SimWriter {
    pub fn new(epoch: Epoch, lal: u64, membership: Membership) -> SimWriter {
        let recovery = PgRecovery::new(epoch, membership.clone(), false);
        SimWriter {
            epoch,
            membership,
            stale: false,
            phase: Phase::Sealing,
            lal,
            recovery,
            asked_at: [None; NODES],
            tail: Lsn::ZERO,
            start: Lsn::ZERO,
            truncations: Vec::new(),
            ledger: None,
            base: HashMap::new(),
            records: Vec::new(),
            pending_flushes: Vec::new(),
            sent: [Lsn::ZERO; NODES],
            sent_at: [0; NODES],
            opening_since: None,
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Sealing | Phase::Opening | Phase::Active)
    }

    /// Requests due at step `now`: (segment, message). During recovery, a request unanswered
    /// for `TIMEOUT_STEPS` counts as failed (`events` gets what that made happen).
    pub fn tick(
        &mut self,
        now: u64,
        variant: Variant,
        out: &mut Vec<(usize, Msg)>,
        events: &mut Vec<Event>,
    ) {
        if self.phase == Phase::Opening {
            let since = *self.opening_since.get_or_insert(now);
            if now > since + SETTLE_STEPS {
                // The kept chain never reached 4 segments (its holder is gone): give up.
                self.phase = Phase::Dead;
                return;
            }
        }
        if matches!(self.phase, Phase::Sealing | Phase::Opening) {
            let waiting: Vec<NodeId> = self.recovery.waiting().iter().copied().collect();
            for node in waiting {
                let i = index_of(node);
                let asked = *self.asked_at[i].get_or_insert(now);
                if now >= asked + TIMEOUT_STEPS {
                    let failed = Refused::new(Refusal::Other, format!("node {i}: timed out"));
                    match self.phase {
                        Phase::Sealing => self.recovery.on_seal(node, Err(failed)),
                        _ => self.recovery.on_open(node, Err(failed)),
                    }
                    self.advance(variant, events);
                }
            }
        }
        let tail = self.tail;
        let holders = self.recovery.holders();
        for i in self.membership.nodes().into_iter().map(index_of) {
            let due = now >= self.sent_at[i] + RESEND_STEPS || self.sent_at[i] == 0;
            let waiting = self.recovery.waiting().contains(&node_id(i));
            match self.phase {
                Phase::Sealing if due && waiting => {
                    out.push((
                        i,
                        Msg::Seal {
                            epoch: self.epoch,
                            membership: self.membership.clone(),
                            learn: self.recovery.learn().iter().map(truncation).collect(),
                        },
                    ));
                    self.sent_at[i] = now;
                }
                // Opening, then until 4 segments hold the kept chain, ask again (OpenSegment is
                // idempotent): they gap-fill it from the holder meanwhile.
                Phase::Opening if due && !holders.contains(&node_id(i)) => {
                    out.push((
                        i,
                        Msg::Open {
                            epoch: self.epoch,
                            membership: self.membership.clone(),
                            tail,
                            history: self.truncations[..self.truncations.len() - 1].to_vec(),
                        },
                    ));
                    self.sent_at[i] = now;
                }
                Phase::Active => self.tick_segment(i, now, due, out),
                _ => {}
            }
        }
    }

    fn tick_segment(&mut self, i: usize, now: u64, due: bool, out: &mut Vec<(usize, Msg)>) {
        let acked = self.acked(i);
        if due {
            // No answer for a while: what was sent may be lost; send again from the ack.
            self.sent[i] = acked;
        }
        let from = self.sent[i].max(acked);
        let batch: Vec<Rec> = self
            .records
            .iter()
            .filter(|r| r.lsn > from)
            .take(BATCH_MAX)
            .cloned()
            .collect();
        if batch.is_empty() && !due {
            return;
        }
        if let Some(last) = batch.last() {
            self.sent[i] = last.lsn;
        }
        // An empty Append is a heartbeat: it carries the truncations.
        out.push((
            i,
            Msg::Append {
                epoch: self.epoch,
                membership: self.membership.clone(),
                records: batch,
                truncations: self.truncations.clone(),
            },
        ));
        self.sent_at[i] = now;
    }

    fn acked(&self, i: usize) -> Lsn {
        self.ledger
            .as_ref()
            .and_then(|l| l.pg(PG))
            .map_or(Lsn::ZERO, |c| c.scl(node_id(i)))
    }

    /// Handles an answer from segment `i`.
    pub fn on_msg(&mut self, i: usize, msg: Msg, variant: Variant, events: &mut Vec<Event>) {
        let node = node_id(i);
        match (self.phase, msg) {
            (Phase::Sealing, Msg::Fenced { .. }) => {
                self.recovery.on_seal(
                    node,
                    Err(Refused::new(Refusal::Fenced, format!("node {i}: fenced"))),
                );
                self.advance(variant, events);
            }
            (Phase::Opening, Msg::Fenced { .. }) => {
                self.recovery.on_open(
                    node,
                    Err(Refused::new(Refusal::Fenced, format!("node {i}: fenced"))),
                );
                self.advance(variant, events);
            }
            (Phase::Active, Msg::Fenced { epoch }) if epoch > self.epoch => {
                self.phase = Phase::Fenced;
                self.pending_flushes.clear();
                events.push(Event::Fenced);
            }
            (Phase::Sealing, Msg::StaleMembership) => {
                self.recovery.on_seal(
                    node,
                    Err(Refused::new(
                        Refusal::StaleMembership,
                        format!("node {i}: stale membership"),
                    )),
                );
                self.advance(variant, events);
            }
            (Phase::Opening, Msg::StaleMembership) => {
                self.recovery.on_open(
                    node,
                    Err(Refused::new(
                        Refusal::StaleMembership,
                        format!("node {i}: stale membership"),
                    )),
                );
                self.advance(variant, events);
            }
            // A newer membership is in force: an open writer follows the metadata's.
            (Phase::Active, Msg::StaleMembership) => self.stale = true,
            (
                Phase::Sealing,
                Msg::SealAck {
                    epoch,
                    scl,
                    max_lsn,
                    truncations,
                },
            ) => {
                let answer = SealAnswer {
                    epoch,
                    scl,
                    max_lsn,
                    truncations: truncations.iter().map(to_wire).collect(),
                };
                self.recovery.on_seal(node, Ok(answer));
                self.advance(variant, events);
            }
            (Phase::Opening, Msg::OpenAck { scl }) => {
                self.recovery.on_open(node, Ok(scl));
                self.advance(variant, events);
            }
            (Phase::Active, Msg::AppendAck { scl }) => {
                if let Some(ledger) = &mut self.ledger {
                    if self.membership.contains(node) {
                        ledger.handle_ack(PG, node, scl);
                    }
                }
                self.complete_flushes(variant, events);
            }
            _ => {}
        }
    }

    /// Acts on what the recovery decides after an answer (or a timeout).
    fn advance(&mut self, variant: Variant, events: &mut Vec<Event>) {
        let failed = |this: &mut SimWriter, error: RecoveryError, events: &mut Vec<Event>| {
            if error == RecoveryError::Fenced {
                this.phase = Phase::Fenced;
                events.push(Event::Fenced);
            } else {
                // The mount fails; a new writer mounts again (reading the metadata again).
                this.phase = Phase::Dead;
            }
        };
        if self.phase == Phase::Sealing {
            match self.recovery.decide_seal() {
                SealDecision::Wait => {}
                SealDecision::AskAgain { nodes, .. } => {
                    for node in nodes {
                        self.asked_at[index_of(node)] = None;
                        self.sent_at[index_of(node)] = 0;
                    }
                }
                SealDecision::Fail(error) => failed(self, error, events),
                SealDecision::Keep(kept) => {
                    self.tail = kept.tail;
                    self.start = new_start(kept.max_lsn_seen, self.lal)
                        .expect("simulated LSNs stay far below LSN_MAX");
                    self.truncations = self.recovery.truncations().iter().map(truncation).collect();
                    self.phase = Phase::Opening;
                    self.asked_at = [None; NODES];
                    self.sent_at = [0; NODES];
                    events.push(Event::Sealed {
                        tail: kept.tail,
                        holder: index_of(kept.holder),
                    });
                }
            }
        }
        if self.phase != Phase::Opening {
            return;
        }
        match self.recovery.decide_open() {
            OpenDecision::Wait => {}
            OpenDecision::Fail(error) => failed(self, error, events),
            OpenDecision::Settle if self.recovery.settled() => {
                let mut ledger = Ledger::new(self.start, self.lal);
                let opened = self.recovery.opened().clone();
                let mut scls = [Lsn::ZERO; NODES];
                for (node, scl) in &opened {
                    scls[index_of(*node)] = *scl;
                }
                ledger.add_pg(PG, self.tail, counted(&self.membership, variant), opened);
                self.ledger = Some(ledger);
                self.sent = scls;
                self.sent_at = [0; NODES];
                self.phase = Phase::Active;
                events.push(Event::Opened);
            }
            OpenDecision::Settle => {}
        }
    }

    /// Follows `newer`, the metadata's membership, when it is newer than this writer's: the
    /// ledger counts quorums by it, new nodes are sent what the writer holds from their ack on.
    pub fn follow(&mut self, newer: &Membership, variant: Variant, events: &mut Vec<Event>) {
        if newer.epoch <= self.membership.epoch {
            return;
        }
        self.stale = false;
        self.membership = newer.clone();
        if let Some(ledger) = &mut self.ledger {
            ledger.set_membership(PG, counted(newer, variant));
            for n in newer.nodes() {
                let i = index_of(n);
                self.sent[i] = ledger.pg(PG).map_or(Lsn::ZERO, |c| c.scl(n));
                self.sent_at[i] = 0;
            }
        }
        self.complete_flushes(variant, events);
    }

    /// Writes `value` over `page`; None while the writer cannot write (not open, or held back
    /// by LAL).
    pub fn write(&mut self, page: u64, value: u64) -> Option<Rec> {
        let ledger = self
            .ledger
            .as_mut()
            .filter(|_| self.phase == Phase::Active)?;
        let (lsn, backlink) = ledger.allocate(PG).ok()?;
        ledger.mark_cpl(lsn);
        let rec = Rec {
            lsn,
            backlink,
            epoch: self.epoch,
            page,
            value,
        };
        self.records.push(rec.clone());
        Some(rec)
    }

    /// Starts a flush of everything written so far.
    pub fn flush(&mut self, variant: Variant, events: &mut Vec<Event>) {
        let Some(ledger) = self.ledger.as_ref().filter(|_| self.phase == Phase::Active) else {
            return;
        };
        self.pending_flushes.push(ledger.last_allocated());
        self.complete_flushes(variant, events);
    }

    fn complete_flushes(&mut self, variant: Variant, events: &mut Vec<Event>) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let scls: Vec<Lsn> = self
            .membership
            .nodes()
            .into_iter()
            .map(|n| ledger.pg(PG).map_or(Lsn::ZERO, |c| c.scl(n)))
            .collect();
        let vdl = ledger.vdl();
        self.pending_flushes.retain(|target| {
            let done = match variant {
                // The deliberate bug: three acknowledgements make a flush return.
                Variant::FlushOnThreeAcks => {
                    *target <= vdl || scls.iter().filter(|s| **s >= *target).count() >= 3
                }
                _ => *target <= vdl,
            };
            if done {
                events.push(Event::FlushReturned { target: *target });
            }
            !done
        });
    }

    /// The value of `page` in this writer's history as of `lsn`.
    pub fn value_at(&self, page: u64, lsn: Lsn) -> u64 {
        self.records
            .iter()
            .rev()
            .find(|r| r.page == page && r.lsn <= lsn)
            .map(|r| r.value)
            .unwrap_or_else(|| self.base.get(&page).copied().unwrap_or(0))
    }

    /// LSNs of this writer's own records (for checks against later recoveries).
    pub fn own(&self, up_to: Lsn) -> HashSet<(Lsn, Epoch)> {
        self.records
            .iter()
            .filter(|r| r.lsn <= up_to)
            .map(|r| (r.lsn, r.epoch))
            .collect()
    }
}
