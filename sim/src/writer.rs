//! A simulated writer: the mount's protocol logic with the network replaced by messages. Its
//! bookkeeping is the real writer's: `sixfold_blockdev::ledger::Ledger` (LSN allocation, chains,
//! PGCL/VCL/VDL, LAL), `sixfold_blockdev::recovery` (the chain tail recovery keeps, where new
//! LSNs start) and the PG's `Membership` (what a write quorum and a read quorum are). Recovery
//! follows `blockdev/src/open.rs`: seal at a write quorum of the membership the volume metadata
//! shows, keep the chain tail of a read quorum of complete answers, open at a write quorum with
//! the history of truncations, then write. A node refusing the membership as stale makes a
//! recovering writer give up (the mount is tried again, reading the metadata again), and an
//! open writer follow the metadata's newer membership (`blockdev/src/membership.rs`).

use std::collections::{HashMap, HashSet};

use sixfold_blockdev::ledger::Ledger;
use sixfold_blockdev::recovery::{chain_tail, new_start};
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
    seal_answers: HashMap<usize, (Lsn, Lsn, Vec<Truncation>)>,
    /// Segments that sealed (answered at least once), and what to hand those asked again.
    sealed_by: HashSet<usize>,
    learn: Vec<Truncation>,
    open_scls: HashMap<usize, Lsn>,
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

fn to_wire(t: &Truncation) -> wire::Truncation {
    wire::Truncation {
        epoch: t.epoch.0,
        truncate_after: t.after.0,
    }
}

fn from_wire(t: &wire::Truncation) -> Truncation {
    Truncation {
        epoch: Epoch(t.epoch),
        after: Lsn(t.truncate_after),
    }
}

impl SimWriter {
    pub fn new(epoch: Epoch, lal: u64, membership: Membership) -> SimWriter {
        SimWriter {
            epoch,
            membership,
            stale: false,
            phase: Phase::Sealing,
            lal,
            seal_answers: HashMap::new(),
            sealed_by: HashSet::new(),
            learn: Vec::new(),
            open_scls: HashMap::new(),
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

    /// Requests due at step `now`: (segment, message).
    pub fn tick(&mut self, now: u64, out: &mut Vec<(usize, Msg)>) {
        if self.phase == Phase::Opening {
            let since = *self.opening_since.get_or_insert(now);
            if now > since + SETTLE_STEPS {
                // The kept chain never reached 4 segments (its holder is gone): give up.
                self.phase = Phase::Dead;
                return;
            }
        }
        for i in self.membership.nodes().into_iter().map(index_of) {
            let due = now >= self.sent_at[i] + RESEND_STEPS || self.sent_at[i] == 0;
            match self.phase {
                Phase::Sealing if due && !self.seal_answers.contains_key(&i) => {
                    out.push((
                        i,
                        Msg::Seal {
                            epoch: self.epoch,
                            membership: self.membership.clone(),
                            learn: self.learn.clone(),
                        },
                    ));
                    self.sent_at[i] = now;
                }
                // Until 4 segments hold the kept chain, ask again (OpenSegment is idempotent):
                // they gap-fill it from the holder meanwhile.
                Phase::Opening
                    if due && self.open_scls.get(&i).is_none_or(|scl| *scl < self.tail) =>
                {
                    out.push((
                        i,
                        Msg::Open {
                            epoch: self.epoch,
                            membership: self.membership.clone(),
                            tail: self.tail,
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
        match (self.phase, msg) {
            (Phase::Sealing | Phase::Opening | Phase::Active, Msg::Fenced { epoch })
                if epoch > self.epoch =>
            {
                self.phase = Phase::Fenced;
                self.pending_flushes.clear();
                events.push(Event::Fenced);
            }
            // A newer membership is in force: a recovery gives up (the mount is tried again
            // with the metadata's), an open writer follows the metadata's.
            (Phase::Sealing | Phase::Opening, Msg::StaleMembership) => {
                self.phase = Phase::Dead;
            }
            (Phase::Active, Msg::StaleMembership) => self.stale = true,
            (
                Phase::Sealing,
                Msg::SealAck {
                    scl,
                    max_lsn,
                    truncations,
                },
            ) => {
                self.seal_answers.insert(i, (scl, max_lsn, truncations));
                self.sealed_by.insert(i);
                let sealed_by = &self.sealed_by;
                if self
                    .membership
                    .is_write_quorum(|n| sealed_by.contains(&index_of(n)))
                {
                    if let Some(holder) = self.sealed(variant) {
                        events.push(Event::Sealed {
                            tail: self.tail,
                            holder,
                        });
                    }
                }
            }
            (Phase::Opening, Msg::OpenAck { scl }) => {
                self.open_scls.insert(i, scl.min(self.tail));
                let (open_scls, tail) = (&self.open_scls, self.tail);
                let holding = |n: NodeId| open_scls.get(&index_of(n)).is_some_and(|s| *s >= tail);
                if self.membership.is_write_quorum(holding) {
                    let mut scls = [Lsn::ZERO; NODES];
                    for (i, scl) in &self.open_scls {
                        scls[*i] = *scl;
                    }
                    let mut ledger = Ledger::new(self.start, self.lal);
                    let acked = self
                        .membership
                        .nodes()
                        .into_iter()
                        .map(|n| (n, scls[index_of(n)]))
                        .collect();
                    ledger.add_pg(PG, self.tail, counted(&self.membership, variant), acked);
                    self.ledger = Some(ledger);
                    self.sent = scls;
                    self.sent_at = [0; NODES];
                    self.phase = Phase::Active;
                    events.push(Event::Opened);
                }
            }
            (Phase::Active, Msg::AppendAck { scl }) => {
                if let Some(ledger) = &mut self.ledger {
                    if self.membership.contains(node_id(i)) {
                        ledger.handle_ack(PG, node_id(i), scl);
                    }
                }
                self.complete_flushes(variant, events);
            }
            _ => {}
        }
    }

    /// Sealing reached a write quorum: with 3 answers that know every truncation any answer
    /// shows, choose the tail, the history and the start; otherwise ask the others again with
    /// the history to apply. Returns the segment whose answer holds the chosen chain.
    fn sealed(&mut self, _variant: Variant) -> Option<usize> {
        let answers: Vec<(usize, (Lsn, Vec<wire::Truncation>))> = self
            .seal_answers
            .iter()
            .map(|(i, (scl, _, ts))| (*i, (*scl, ts.iter().map(to_wire).collect())))
            .collect();
        let states: Vec<(Lsn, Vec<wire::Truncation>)> =
            answers.iter().map(|(_, state)| state.clone()).collect();
        let sealed = chain_tail(&states);
        let complete: HashSet<usize> = answers
            .iter()
            .enumerate()
            .filter(|(position, _)| !sealed.incomplete.contains(position))
            .map(|(_, (i, _))| *i)
            .collect();
        if !self
            .membership
            .is_read_quorum(|n| complete.contains(&index_of(n)))
        {
            self.learn = sealed.history.iter().map(from_wire).collect();
            for position in &sealed.incomplete {
                let i = answers[*position].0;
                self.seal_answers.remove(&i);
                self.sent_at[i] = 0;
            }
            return None;
        }
        let tail = sealed.tail;
        let holder = answers
            .iter()
            .enumerate()
            .find(|(position, (_, (scl, _)))| !sealed.incomplete.contains(position) && *scl == tail)
            .map_or(0, |(_, (i, _))| *i);
        let max_seen = self
            .seal_answers
            .values()
            .map(|(_, max_lsn, _)| *max_lsn)
            .max()
            .unwrap_or(Lsn::ZERO)
            .max(tail);
        self.tail = tail;
        self.start = new_start(max_seen, self.lal);
        // All six hold every earlier truncation: this recovery's own is the whole history.
        self.truncations =
            if states.len() == self.membership.nodes().len() && sealed.incomplete.is_empty() {
                Vec::new()
            } else {
                sealed
                    .history
                    .iter()
                    .map(from_wire)
                    .filter(|t| t.epoch < self.epoch)
                    .collect()
            };
        self.truncations.push(Truncation {
            epoch: self.epoch,
            after: tail,
        });
        self.phase = Phase::Opening;
        self.sent_at = [0; NODES];
        Some(holder)
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
