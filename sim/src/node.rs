//! A simulated storage node that may host a segment of the simulated PG. Its protocol logic is
//! the real node's: the segment is `sixfold_node::segment::Segment` (chain, SCL, admission,
//! dedup, truncation), memberships are checked and adopted by `sixfold_node::members` (the
//! rules the appender applies), and each message is handled the way `service.rs`/`appender.rs`
//! handle it, in the same order (learn truncations, then fence by epoch and membership, then
//! admit records).
//!
//! Durability model: handling a message is atomic and durable (the real appender fsyncs before it
//! answers), so a crash loses only what was never handled: messages in flight or delivered while
//! the node was down. A writer's Append is not handled on delivery: it is admitted by the real
//! append server's machine (`sixfold_node::admission`), hardened (handled) in a later step of
//! the world's choosing and in any order, and answered when the machine says so (once hardened,
//! in the order of its writer's batches). A crash loses what was admitted and not hardened;
//! none of it was answered.

use std::collections::HashMap;

use sixfold_node::admission::{Admission, Limits, Ticket};
use sixfold_node::index::SegmentKey;
use sixfold_node::members::{self, ChangeMode, HeldMembership};
use sixfold_node::repair_pass::Answer;
use sixfold_node::segment::{
    adopts_history, history_epoch, Location, RecordMeta, Segment, Truncation,
};
use sixfold_proto::collision::{Ballot, Promise};
use sixfold_proto::membership::Membership;
use sixfold_proto::{Epoch, Lsn, PageId, PgId};

use crate::msg::{Msg, Rec};
use crate::Variant;

/// Batches a node admitted and has not hardened, and answers waiting for their turn.
#[derive(Clone, Debug)]
pub struct Pipeline {
    admission: Admission<Option<Msg>>,
    hardening: Vec<(Ticket, Msg)>,
}

/// Small, so that schedules reach the bound (a batch beyond it is not read: lost, as far as
/// the writer can tell, and sent again).
const ADMISSION_LIMITS: Limits = Limits {
    batches: 8,
    bytes: usize::MAX,
};

impl Default for Pipeline {
    fn default() -> Pipeline {
        Pipeline {
            admission: Admission::new(ADMISSION_LIMITS),
            hardening: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimNode {
    pub up: bool,
    /// Newest volume epoch the node knows (it refuses older writers).
    pub epoch: Epoch,
    pub segment: Segment,
    /// Payloads of the records the segment holds (the real node keeps them in its hot log).
    pub payloads: HashMap<Lsn, Rec>,
    /// The PG's membership as this segment holds it, and the one it was a step from (None: a
    /// writer's).
    pub membership: Option<Membership>,
    pub membership_base: Option<Membership>,
    /// The collision-recovery round `membership` was accepted in, and the node's promise.
    pub ballot: Ballot,
    pub promise: Option<Promise>,
    pub pipeline: Pipeline,
}

fn key() -> SegmentKey {
    SegmentKey {
        volume: "sim".into(),
        pg: PgId(0),
    }
}

impl SimNode {
    pub fn new() -> SimNode {
        SimNode {
            up: true,
            ..SimNode::default()
        }
    }

    /// The node crashes: what it admitted and did not harden is gone (never answered).
    pub fn crash(&mut self) {
        self.up = false;
        self.pipeline = Pipeline::default();
    }

    /// Batches admitted and not hardened yet.
    pub fn hardening(&self) -> usize {
        self.pipeline.hardening.len()
    }

    /// A batch (an Append) from writer `w` arrives: admitted, to be hardened later
    /// ([`SimNode::harden`]), unless admission is full (then it is not read: lost). The answer
    /// to send at once, if any: none, but for [`Variant::AckBeforeHarden`].
    pub fn admit_append(&mut self, w: usize, msg: Msg, variant: Variant) -> Option<Msg> {
        if !self.pipeline.admission.wants_more() {
            return None;
        }
        let ticket = self.pipeline.admission.handle_batch(w as u64, 1);
        // The broken variant answers what hardening will answer, before hardening.
        let early = (variant == Variant::AckBeforeHarden)
            .then(|| self.clone().handle(msg.clone(), variant))
            .flatten();
        self.pipeline.hardening.push((ticket, msg));
        early
    }

    /// Hardens admitted batch `pick` (an index below [`SimNode::hardening`]): handled, durable
    /// from here. Returns the answers now due, each with the writer it goes to.
    pub fn harden(&mut self, pick: usize, variant: Variant) -> Vec<(usize, Msg)> {
        if pick >= self.pipeline.hardening.len() {
            return Vec::new();
        }
        let (ticket, msg) = self.pipeline.hardening.swap_remove(pick);
        let answer = self.handle(msg, variant);
        let answer = answer.filter(|_| variant != Variant::AckBeforeHarden);
        self.pipeline.admission.handle_done(ticket, answer);
        let mut due = Vec::new();
        while let Some((w, answer)) = self.pipeline.admission.poll_answer() {
            if let Some(answer) = answer {
                due.push((w as usize, answer));
            }
        }
        due
    }

    /// Handles one message from a writer or a peer; returns the answer, if any.
    pub fn handle(&mut self, msg: Msg, variant: Variant) -> Option<Msg> {
        match msg {
            Msg::Append {
                epoch,
                membership,
                records,
                truncations,
            } => {
                if variant != Variant::NoTruncationLearning {
                    self.learn(&truncations, Some(epoch));
                }
                if epoch < self.epoch {
                    return Some(Msg::Fenced { epoch: self.epoch });
                }
                if !self.writer_membership(&membership) {
                    return Some(Msg::StaleMembership);
                }
                self.epoch = epoch;
                self.admit(&records);
                Some(Msg::AppendAck {
                    scl: self.segment.scl(),
                })
            }
            Msg::Seal {
                epoch,
                membership,
                learn,
            } => {
                if epoch < self.epoch {
                    return Some(Msg::Fenced { epoch: self.epoch });
                }
                if !self.writer_membership(&membership) {
                    return Some(Msg::StaleMembership);
                }
                self.epoch = epoch;
                self.learn(&learn, Some(epoch));
                Some(Msg::SealAck {
                    epoch: self.epoch,
                    scl: self.segment.scl(),
                    max_lsn: self.segment.max_lsn(),
                    truncations: self.segment.truncations().to_vec(),
                })
            }
            Msg::Open {
                epoch,
                membership,
                tail,
                history,
            } => {
                if epoch < self.epoch {
                    return Some(Msg::Fenced { epoch: self.epoch });
                }
                if !self.writer_membership(&membership) {
                    return Some(Msg::StaleMembership);
                }
                let own = Truncation { epoch, after: tail };
                if variant == Variant::NoTruncationLearning {
                    self.truncate(own);
                } else {
                    let mut list: Vec<Truncation> =
                        history.into_iter().filter(|t| t.epoch < epoch).collect();
                    list.push(own);
                    self.learn(&list, Some(epoch));
                }
                self.epoch = epoch;
                Some(Msg::OpenAck {
                    scl: self.segment.scl(),
                })
            }
            Msg::Fetch { after, membership } => {
                if self.membership.is_none()
                    || members::check(&key(), self.membership.as_ref(), Some(&membership)).is_err()
                {
                    return None;
                }
                let records = self
                    .segment
                    .complete_records(after, u64::MAX)
                    .into_iter()
                    .filter_map(|(lsn, _)| self.payloads.get(&lsn).cloned())
                    .collect();
                Some(Msg::FetchReply {
                    records,
                    truncations: self.segment.truncations().to_vec(),
                })
            }
            Msg::FetchReply {
                records,
                truncations,
            } => {
                if variant != Variant::NoTruncationLearning {
                    self.learn(&truncations, None);
                }
                self.admit(&records);
                None
            }
            Msg::Probe => Some(Msg::ProbeReply {
                answer: self.membership.as_ref().map(|m| Answer {
                    scl: self.segment.scl(),
                    history_epoch: history_epoch(self.segment.truncations()),
                    membership: Some(m.clone()),
                    membership_base: self.membership_base.clone(),
                    ballot: self.ballot,
                    promise: self.promise,
                }),
            }),
            Msg::Change {
                base,
                proposed,
                mode,
            } => {
                // As the real node answers: a refusal is an error; anything else says whether
                // it holds the proposal now, and in which round.
                let taken =
                    match members::adopt_change(self.held().as_ref(), &base, &proposed, &mode) {
                        Ok(Some(held)) => {
                            self.set(held);
                            true
                        }
                        Ok(None) => true,
                        Err(_) => false,
                    };
                let held =
                    (taken && self.membership.as_ref() == Some(&proposed)).then_some(self.ballot);
                Some(Msg::ChangeAck { proposed, held })
            }
            Msg::Promise { base, ballot } => {
                let vote = match members::promise(self.held().as_ref(), &base, ballot) {
                    Ok((held, vote)) => {
                        self.set(held);
                        Some(vote)
                    }
                    Err(_) => None,
                };
                Some(Msg::PromiseReply { ballot, vote })
            }
            Msg::AppendAck { .. }
            | Msg::SealAck { .. }
            | Msg::OpenAck { .. }
            | Msg::Fenced { .. }
            | Msg::StaleMembership
            | Msg::ProbeReply { .. }
            | Msg::PromiseReply { .. }
            | Msg::ChangeAck { .. } => None,
        }
    }

    /// A recovering writer's SegmentState/OpenSegment membership: refused when stale, adopted
    /// when newer (it comes from the volume metadata). Returns whether the request is served.
    fn writer_membership(&mut self, membership: &Membership) -> bool {
        if members::check(&key(), self.membership.as_ref(), Some(membership)).is_err() {
            return false;
        }
        if members::adopt_from_writer(self.membership.as_ref(), membership) {
            self.set(HeldMembership::from_writer(membership.clone()));
        }
        true
    }

    /// The segment's membership state, as the real node keeps it.
    pub fn held(&self) -> Option<HeldMembership> {
        Some(HeldMembership {
            current: self.membership.clone()?,
            base: self.membership_base.clone(),
            accepted: self.ballot,
            promise: self.promise,
        })
    }

    fn set(&mut self, held: HeldMembership) {
        self.membership = Some(held.current);
        self.membership_base = held.base;
        self.ballot = held.accepted;
        // As the real index keeps it: a promise never decreases.
        self.promise = Promise::highest(self.promise, held.promise);
    }

    /// Adopts an established membership its driver saw on its peers (the driver's catch-up of
    /// its own node).
    pub fn catch_up(&mut self, membership: Membership, base: Option<Membership>, ballot: Ballot) {
        let base_or_self = base.clone().unwrap_or_else(|| membership.clone());
        if let Ok(Some(held)) = members::adopt_change(
            self.held().as_ref(),
            &base_or_self,
            &membership,
            &ChangeMode::CatchUp(ballot),
        ) {
            self.set(held);
        }
    }

    /// Adopts a newer recovery's truncation history (voiding what it does not list, applying
    /// what the segment missed) when the node's rule says so (`segment::adopts_history`).
    /// `authority`: the epoch of the writer handing the history over (None: a peer). Seals and
    /// opens set the node's epoch to the writer's first, so their writer is the authority.
    fn learn(&mut self, history: &[Truncation], authority: Option<Epoch>) {
        let own = self.segment.history_epoch();
        let list = history_epoch(history);
        if !adopts_history(own, self.epoch, list, false, authority) {
            return;
        }
        if self.segment.adopt(history).is_some() {
            self.epoch = self.epoch.max(history_epoch(history));
            let segment = &self.segment;
            self.payloads.retain(|lsn, _| segment.get(*lsn).is_some());
        }
    }

    fn truncate(&mut self, t: Truncation) {
        self.epoch = self.epoch.max(t.epoch);
        self.segment.truncate(t.epoch, t.after);
        let segment = &self.segment;
        self.payloads.retain(|lsn, _| segment.get(*lsn).is_some());
    }

    fn admit(&mut self, records: &[Rec]) {
        for r in records {
            let meta = RecordMeta {
                location: Location {
                    file: 0,
                    offset: r.lsn.0,
                    len: 1,
                    sealed: false,
                },
                page: PageId(r.page),
                backlink: r.backlink,
                epoch: r.epoch,
                full_page: true,
            };
            self.segment.insert(r.lsn, meta);
            if self.segment.get(r.lsn).is_some() {
                self.payloads.entry(r.lsn).or_insert_with(|| r.clone());
            }
        }
        // Records the chain stepped over (an older epoch's, at a fork) are gone from the segment.
        let segment = &self.segment;
        self.payloads.retain(|lsn, _| segment.get(*lsn).is_some());
    }

    /// The page as this node serves it as of `read_lsn` (every record is a whole page here).
    pub fn page(&self, page: u64, read_lsn: Lsn) -> u64 {
        let plan = self.segment.page_records(PageId(page), read_lsn);
        plan.records
            .last()
            .and_then(|(lsn, _)| self.payloads.get(lsn))
            .map_or(0, |r| r.value)
    }

    /// The chain from the SCL down to 0, newest first (None if a link is missing).
    pub fn chain(&self) -> Option<Vec<Rec>> {
        let mut out = Vec::new();
        let mut at = self.segment.scl();
        while at > Lsn::ZERO {
            let rec = self.payloads.get(&at)?;
            out.push(rec.clone());
            at = rec.backlink;
        }
        Some(out)
    }
}
