//! A simulated writer: the mount's protocol logic with the network replaced by messages. Its
//! bookkeeping is the real writer's: `sixfold_blockdev::ledger::Ledger` (LSN allocation, chains,
//! PGCL/VCL/VDL, LAL) and `sixfold_blockdev::recovery` (the chain tail recovery keeps, where new
//! LSNs start). Recovery follows `blockdev/src/open.rs`: seal at 4 of 6, keep the chain tail
//! of the answers, open at 4 of 6 with the history of truncations, then write.

use std::collections::{HashMap, HashSet};

use sixfold_blockdev::ledger::Ledger;
use sixfold_blockdev::recovery::{chain_tail, new_start};
use sixfold_node::segment::Truncation;
use sixfold_proto::membership::Membership;
use sixfold_proto::wire;
use sixfold_proto::{Epoch, Lsn, NodeId, PgId, COPIES, READ_QUORUM, WRITE_QUORUM};

use crate::msg::{Msg, Rec};
use crate::Variant;

/// The simulated volume has one PG.
pub const PG: PgId = PgId(0);

/// The node id of simulated node `i` (ids are never 0).
pub fn node_id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

/// The PG's membership: nodes 0..6.
pub fn membership() -> Membership {
    Membership::new((0..COPIES).map(node_id).collect()).expect("six distinct nodes")
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
    /// Per segment: highest LSN sent, and when the request last went out.
    sent: [Lsn; COPIES],
    sent_at: [u64; COPIES],
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
    pub fn new(epoch: Epoch, lal: u64) -> SimWriter {
        SimWriter {
            epoch,
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
            sent: [Lsn::ZERO; COPIES],
            sent_at: [0; COPIES],
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
        for i in 0..COPIES {
            let due = now >= self.sent_at[i] + RESEND_STEPS || self.sent_at[i] == 0;
            match self.phase {
                Phase::Sealing if due && !self.seal_answers.contains_key(&i) => {
                    out.push((
                        i,
                        Msg::Seal {
                            epoch: self.epoch,
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
                if self.sealed_by.len() >= WRITE_QUORUM {
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
                let holding = self.open_scls.values().filter(|s| **s >= self.tail).count();
                if holding >= WRITE_QUORUM {
                    let mut scls = [Lsn::ZERO; COPIES];
                    for (i, scl) in &self.open_scls {
                        scls[*i] = *scl;
                    }
                    let mut ledger = Ledger::new(self.start, self.lal);
                    let acked = (0..COPIES).map(|i| (node_id(i), scls[i])).collect();
                    ledger.add_pg(PG, self.tail, membership(), acked);
                    self.ledger = Some(ledger);
                    self.sent = scls;
                    self.sent_at = [0; COPIES];
                    self.phase = Phase::Active;
                    events.push(Event::Opened);
                }
            }
            (Phase::Active, Msg::AppendAck { scl }) => {
                if let Some(ledger) = &mut self.ledger {
                    ledger.handle_ack(PG, node_id(i), scl);
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
        if states.len() - sealed.incomplete.len() < READ_QUORUM {
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
        self.truncations = if states.len() == COPIES && sealed.incomplete.is_empty() {
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
        self.sent_at = [0; COPIES];
        Some(holder)
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
        let scls: Vec<Lsn> = (0..COPIES)
            .map(|i| ledger.pg(PG).map_or(Lsn::ZERO, |c| c.scl(node_id(i))))
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
