//! A PG's recovery as a plain state machine: answers in, decisions out, no I/O and no clock.
//! `open.rs` drives it over gRPC (one round of requests at a time, a timeout, or no answer
//! within a short grace once a write quorum answered, counting as a failed answer); the simulation (`sim/src/writer.rs`) drives the same code with messages that
//! are lost, late, duplicated or never answered.
//!
//! The sequence (the module docs of `open.rs` say why each step is needed):
//! 1. **Seal.** Every member is asked to adopt the new epoch and answer its SCL, highest LSN
//!    and truncation history ([`PgRecovery::on_seal`]). Once every asked member answered, was
//!    refused, or timed out, [`PgRecovery::decide_seal`] says what next:
//!    - a member holding a newer epoch: this writer is fenced (a newer writer won the
//!      metadata; nothing this one does can be durable any more);
//!    - sealed by less than a write quorum of the membership (a read quorum for a reader): the
//!      recovery fails, as "membership changed" when a member refused the membership as stale
//!      (the mount reads the metadata again), else as "quorum lost";
//!    - answers with an older truncation history than the newest shown: ask them again,
//!      handing them that history to adopt first (at most [`MAX_ASK_AGAIN`] rounds);
//!    - otherwise keep the chain tail of the complete answers ([`super::chain_tail`]), provided
//!      they are a read quorum of every configuration.
//! 2. **Open** (a writer only). Every member is sent `OpenSegment(epoch, tail, history)`
//!    ([`PgRecovery::on_open`]); with a write quorum opened, recovery **settles**: it waits
//!    until a write quorum of members that applied this recovery's truncation hold the chain
//!    up to the tail ([`PgRecovery::on_state`], [`PgRecovery::settled`]). How long to wait is
//!    the driver's business (it has the clock).
//!
//! Invariants the machine keeps: a segment counts as sealed once it answered a seal in this
//! epoch, even if a later re-ask of it fails (it adopted the epoch durably); an answer counts
//! towards the chain tail only if it holds the newest history; an opened segment counts as
//! holding the chain only up to the tail, and only after it applied this recovery's truncation.

use std::collections::{BTreeMap, BTreeSet};

use sixfold_proto::membership::Membership;
use sixfold_proto::wire::Truncation;
use sixfold_proto::{Epoch, Lsn, NodeId, READ_QUORUM, WRITE_QUORUM};
use thiserror::Error;

use super::{chain_tail, ChainTail};
use crate::refusal::Refusal;

/// Rounds of asking answers with an older history again before recovery does without them.
pub const MAX_ASK_AGAIN: u32 = 3;

/// A segment's answer to a seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealAnswer {
    /// The epoch the segment holds after the seal (above ours: a newer writer sealed it).
    pub epoch: Epoch,
    pub scl: Lsn,
    pub max_lsn: Lsn,
    pub truncations: Vec<Truncation>,
}

/// Why a segment did not answer: how the node refused (the writer's one classification,
/// [`crate::refusal::Refusal`]; `Other` for link errors and timeouts) and the text naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub why: Refusal,
    pub detail: String,
}

impl Refused {
    pub fn new(why: Refusal, detail: impl Into<String>) -> Refused {
        Refused {
            why,
            detail: detail.into(),
        }
    }
}

/// Why a recovery failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RecoveryError {
    #[error("fenced by a newer writer")]
    Fenced,
    #[error("the PG's membership changed: {0}")]
    MembershipChanged(String),
    #[error("{reachable} segments {what}, needs {needed}: {detail}")]
    QuorumLost {
        reachable: usize,
        needed: usize,
        what: &'static str,
        detail: String,
    },
}

/// What sealing decided to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The chain tail: records above it from older epochs are dropped.
    pub tail: Lsn,
    /// The earlier truncations to hand `OpenSegment` (and every Append with this recovery's
    /// own): empty when every member answered with the same history.
    pub history: Vec<Truncation>,
    /// A complete answer whose chain reaches the tail (the others gap-fill from it).
    pub holder: NodeId,
    /// The highest LSN any answer held: new LSNs start above it plus LAL.
    pub max_lsn_seen: Lsn,
    /// The complete answers' SCLs, at most the tail: the read point's servers for a reader.
    pub complete: BTreeMap<NodeId, Lsn>,
}

/// What to do after sealing answers are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealDecision {
    /// Answers are still outstanding.
    Wait,
    /// Seal these members again, handing them `learn` to adopt first.
    AskAgain {
        nodes: Vec<NodeId>,
        learn: Vec<Truncation>,
    },
    /// Keep this chain; a writer opens the segments next.
    Keep(Kept),
    Fail(RecoveryError),
}

/// What to do after opening answers are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenDecision {
    Wait,
    /// Opened at a write quorum; wait for the kept chain to reach one ([`PgRecovery::settled`]).
    Settle,
    Fail(RecoveryError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Sealing,
    Opening,
    Settling,
    Failed,
}

/// One PG's recovery by one writer (or reader) in one epoch.
#[derive(Clone, Debug)]
pub struct PgRecovery {
    epoch: Epoch,
    membership: Membership,
    read_only: bool,
    phase: Phase,
    /// Members asked in the current round that have not answered yet.
    waiting: BTreeSet<NodeId>,
    /// Members that answered a seal: they hold the epoch.
    sealed_by: BTreeSet<NodeId>,
    /// The latest seal answer of each member that counts (re-asked ones are dropped until
    /// they answer again).
    answers: BTreeMap<NodeId, SealAnswer>,
    refusals: BTreeMap<NodeId, Refused>,
    asked_again: u32,
    /// The highest LSN any answer ever showed (a re-asked one that then failed included).
    max_lsn_seen: Lsn,
    learn: Vec<Truncation>,
    kept: Option<Kept>,
    /// Opened members and their SCL (at most the tail) once they applied this truncation.
    opened: BTreeMap<NodeId, Lsn>,
}

impl PgRecovery {
    /// A recovery of a PG with `membership` (the volume metadata's) in `epoch`. A reader seals
    /// nothing (it must not fence the writer): it asks in epoch 0 and needs a read quorum.
    pub fn new(epoch: Epoch, membership: Membership, read_only: bool) -> PgRecovery {
        let waiting = membership.nodes().into_iter().collect();
        PgRecovery {
            epoch,
            membership,
            read_only,
            phase: Phase::Sealing,
            waiting,
            sealed_by: BTreeSet::new(),
            answers: BTreeMap::new(),
            refusals: BTreeMap::new(),
            asked_again: 0,
            max_lsn_seen: Lsn::ZERO,
            learn: Vec::new(),
            kept: None,
            opened: BTreeMap::new(),
        }
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The epoch a seal request carries: 0 for a reader.
    pub fn seal_epoch(&self) -> Epoch {
        if self.read_only {
            Epoch(0)
        } else {
            self.epoch
        }
    }

    /// What a seal request hands over to adopt first.
    pub fn learn(&self) -> &[Truncation] {
        &self.learn
    }

    /// Members asked in the current round that have not answered.
    pub fn waiting(&self) -> &BTreeSet<NodeId> {
        &self.waiting
    }

    /// What sealing kept, once it did.
    pub fn kept(&self) -> Option<&Kept> {
        self.kept.as_ref()
    }

    /// A member's answer to a seal. Answers from non-members, or not asked for, are ignored.
    pub fn on_seal(&mut self, node: NodeId, answer: Result<SealAnswer, Refused>) {
        if self.phase != Phase::Sealing || !self.waiting.remove(&node) {
            return;
        }
        match answer {
            Ok(answer) => {
                self.max_lsn_seen = self.max_lsn_seen.max(answer.max_lsn);
                self.sealed_by.insert(node);
                self.refusals.remove(&node);
                self.answers.insert(node, answer);
            }
            Err(refusal) => {
                self.refusals.insert(node, refusal);
            }
        }
    }

    fn failures(&self) -> String {
        let texts: Vec<&str> = self.refusals.values().map(|r| r.detail.as_str()).collect();
        texts.join("; ")
    }

    /// Whether some member refused for `why`.
    fn refused(&self, why: Refusal) -> bool {
        self.refusals.values().any(|r| r.why == why)
    }

    fn fail(&mut self, error: RecoveryError) -> SealDecision {
        self.phase = Phase::Failed;
        SealDecision::Fail(error)
    }

    /// The sealing decision (see the module docs). Call it after every answer; it waits until
    /// the round is complete.
    pub fn decide_seal(&mut self) -> SealDecision {
        if self.phase != Phase::Sealing {
            return match (&self.kept, self.phase) {
                (Some(kept), Phase::Opening | Phase::Settling) => SealDecision::Keep(kept.clone()),
                _ => SealDecision::Wait,
            };
        }
        let newer = self.answers.values().any(|a| a.epoch > self.epoch);
        let refused = self.refused(Refusal::Fenced);
        if !self.read_only && (newer || refused) {
            return self.fail(RecoveryError::Fenced);
        }
        if !self.waiting.is_empty() {
            return SealDecision::Wait;
        }
        let sealed_by = &self.sealed_by;
        let sealed = if self.read_only {
            self.membership.is_read_quorum(|n| sealed_by.contains(&n))
        } else {
            // The old writer can no longer gather a write quorum, and every record it did
            // gather one for is held by one of these answers (4 + 4 > 6 in every
            // configuration).
            self.membership.is_write_quorum(|n| sealed_by.contains(&n))
        };
        if !sealed {
            if self.refused(Refusal::StaleMembership) {
                return self.fail(RecoveryError::MembershipChanged(self.failures()));
            }
            let (needed, what) = if self.read_only {
                (READ_QUORUM, "answered reading the PG's state")
            } else {
                (WRITE_QUORUM, "sealed in the new epoch")
            };
            return self.fail(RecoveryError::QuorumLost {
                reachable: self.sealed_by.len(),
                needed,
                what,
                detail: self.failures(),
            });
        }
        let nodes: Vec<NodeId> = self.answers.keys().copied().collect();
        let states: Vec<(Lsn, Vec<Truncation>)> = self
            .answers
            .values()
            .map(|a| (a.scl, a.truncations.clone()))
            .collect();
        let ChainTail {
            tail,
            mut history,
            incomplete,
        } = chain_tail(&states);
        if !incomplete.is_empty() && self.asked_again < MAX_ASK_AGAIN {
            self.asked_again += 1;
            self.learn = history;
            let again: Vec<NodeId> = incomplete.iter().map(|p| nodes[*p]).collect();
            for node in &again {
                self.answers.remove(node);
                self.waiting.insert(*node);
            }
            return SealDecision::AskAgain {
                nodes: again,
                learn: self.learn.clone(),
            };
        }
        let complete: BTreeMap<NodeId, Lsn> = nodes
            .iter()
            .enumerate()
            .filter(|(position, _)| !incomplete.contains(position))
            .map(|(position, node)| (*node, states[position].0.min(tail)))
            .collect();
        if !self
            .membership
            .is_read_quorum(|n| complete.contains_key(&n))
        {
            return self.fail(RecoveryError::QuorumLost {
                reachable: complete.len(),
                needed: READ_QUORUM,
                what: "sealed that applied every earlier truncation (3 in every configuration)",
                detail: self.failures(),
            });
        }
        if !self.read_only
            && self.answers.len() == self.membership.nodes().len()
            && incomplete.is_empty()
        {
            // Every segment applied every earlier truncation: none can still hold what those
            // dropped, so this recovery's own truncation is the whole history from now on
            // (lists would otherwise grow by one entry per mount and travel with every Append).
            history.clear();
        }
        let holder = complete
            .iter()
            .find(|(_, scl)| **scl == tail)
            .map(|(node, _)| *node)
            .unwrap_or_else(|| *complete.keys().next().unwrap_or(&NodeId(0)));
        let max_lsn_seen = self.max_lsn_seen.max(tail);
        let kept = Kept {
            tail,
            history,
            holder,
            max_lsn_seen,
            complete,
        };
        self.kept = Some(kept.clone());
        if !self.read_only {
            // Opening's refusals are its own (a seal's "stale" must not name an open failure).
            self.refusals.clear();
            self.phase = Phase::Opening;
            self.waiting = self.membership.nodes().into_iter().collect();
        }
        SealDecision::Keep(kept)
    }

    /// Every truncation of the PG, this recovery's last, in ascending epoch order: what every
    /// Append of the writer carries. Empty before sealing kept a tail.
    pub fn truncations(&self) -> Vec<Truncation> {
        let Some(kept) = &self.kept else {
            return Vec::new();
        };
        let mut list: Vec<Truncation> = kept
            .history
            .iter()
            .filter(|t| t.epoch < self.epoch.0)
            .cloned()
            .collect();
        list.push(Truncation {
            epoch: self.epoch.0,
            truncate_after: kept.tail.0,
        });
        list
    }

    /// A member's answer to `OpenSegment`: its SCL once it applied this recovery's truncation.
    pub fn on_open(&mut self, node: NodeId, answer: Result<Lsn, Refused>) {
        if !matches!(self.phase, Phase::Opening | Phase::Settling)
            || !self.membership.contains(node)
        {
            return;
        }
        self.waiting.remove(&node);
        match answer {
            Ok(scl) => {
                let tail = self.kept.as_ref().map_or(Lsn::ZERO, |k| k.tail);
                let held = self.opened.entry(node).or_default();
                *held = (*held).max(scl.min(tail));
            }
            Err(refusal) => {
                self.refusals.insert(node, refusal);
            }
        }
    }

    /// A member's state while settling: counts only if it applied this recovery's truncation
    /// (a segment that did not may be complete to the tail on another history).
    pub fn on_state(&mut self, node: NodeId, scl: Lsn, truncations: &[Truncation]) {
        let Some(kept) = &self.kept else {
            return;
        };
        let own = truncations
            .iter()
            .any(|t| t.epoch == self.epoch.0 && t.truncate_after == kept.tail.0);
        if self.phase == Phase::Settling && own {
            self.on_open(node, Ok(scl));
        }
    }

    /// The opening decision, once every member answered `OpenSegment` or failed.
    pub fn decide_open(&mut self) -> OpenDecision {
        match self.phase {
            Phase::Settling => return OpenDecision::Settle,
            Phase::Opening => {}
            _ => return OpenDecision::Wait,
        }
        if self.refused(Refusal::Fenced) {
            self.phase = Phase::Failed;
            return OpenDecision::Fail(RecoveryError::Fenced);
        }
        if !self.waiting.is_empty() {
            return OpenDecision::Wait;
        }
        let opened = &self.opened;
        if !self.membership.is_write_quorum(|n| opened.contains_key(&n)) {
            self.phase = Phase::Failed;
            if self.refused(Refusal::StaleMembership) {
                return OpenDecision::Fail(RecoveryError::MembershipChanged(self.failures()));
            }
            return OpenDecision::Fail(RecoveryError::QuorumLost {
                reachable: self.opened.len(),
                needed: WRITE_QUORUM,
                what: "opened in the new epoch",
                detail: self.failures(),
            });
        }
        self.phase = Phase::Settling;
        OpenDecision::Settle
    }

    /// Members known to hold the kept chain up to the tail, with this recovery's truncation.
    pub fn holders(&self) -> BTreeSet<NodeId> {
        let tail = self.kept.as_ref().map_or(Lsn::ZERO, |k| k.tail);
        self.opened
            .iter()
            .filter(|(_, scl)| **scl >= tail)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Settled: a write quorum holds the kept chain, so this writer's VDL may start above it (a
    /// flush right after the mount counts on it).
    pub fn settled(&self) -> bool {
        let holders = self.holders();
        self.phase == Phase::Settling && self.membership.is_write_quorum(|n| holders.contains(&n))
    }

    /// Every opened member's SCL, at most the tail: where the writer's ledger starts.
    pub fn opened(&self) -> &BTreeMap<NodeId, Lsn> {
        &self.opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: [NodeId; 6] = [
        NodeId(1),
        NodeId(2),
        NodeId(3),
        NodeId(4),
        NodeId(5),
        NodeId(6),
    ];
    const G: NodeId = NodeId(7);

    fn t(epoch: u64, after: u64) -> Truncation {
        Truncation {
            epoch,
            truncate_after: after,
        }
    }

    fn answer(scl: u64, truncations: Vec<Truncation>) -> Result<SealAnswer, Refused> {
        Ok(SealAnswer {
            epoch: Epoch(5),
            scl: Lsn(scl),
            max_lsn: Lsn(scl + 3),
            truncations,
        })
    }

    fn recovery() -> PgRecovery {
        PgRecovery::new(
            Epoch(5),
            Membership::new(MEMBERS.to_vec()).expect("six"),
            false,
        )
    }

    fn down(node: NodeId) -> Result<SealAnswer, Refused> {
        Err(Refused::new(Refusal::Other, format!("{node}: timed out")))
    }

    #[test]
    fn keeps_the_highest_scl_once_the_round_is_in_and_a_write_quorum_sealed() {
        let mut r = recovery();
        for (node, scl) in MEMBERS.iter().zip([10, 14, 12, 9]) {
            r.on_seal(*node, answer(scl, vec![t(4, 2)]));
        }
        assert_eq!(r.decide_seal(), SealDecision::Wait, "two still out");
        r.on_seal(MEMBERS[4], down(MEMBERS[4]));
        r.on_seal(MEMBERS[5], down(MEMBERS[5]));
        let SealDecision::Keep(kept) = r.decide_seal() else {
            panic!("4 of 6 sealed");
        };
        assert_eq!((kept.tail, kept.holder), (Lsn(14), MEMBERS[1]));
        assert_eq!(kept.max_lsn_seen, Lsn(17));
        // Not every member answered: the earlier truncation stays in the history.
        assert_eq!(kept.history, vec![t(4, 2)]);
        assert_eq!(r.truncations(), vec![t(4, 2), t(5, 14)]);
    }

    #[test]
    fn a_newer_epoch_fences_at_once_and_three_sealed_are_not_enough() {
        let mut r = recovery();
        r.on_seal(MEMBERS[0], Err(Refused::new(Refusal::Fenced, "fenced")));
        assert_eq!(r.decide_seal(), SealDecision::Fail(RecoveryError::Fenced));

        let mut r = recovery();
        for node in &MEMBERS[..3] {
            r.on_seal(*node, answer(10, vec![]));
        }
        r.on_seal(
            MEMBERS[3],
            Err(Refused::new(Refusal::StaleMembership, "stale")),
        );
        r.on_seal(MEMBERS[4], down(MEMBERS[4]));
        r.on_seal(MEMBERS[5], down(MEMBERS[5]));
        assert!(matches!(
            r.decide_seal(),
            SealDecision::Fail(RecoveryError::MembershipChanged(_))
        ));

        let mut r = recovery();
        for node in &MEMBERS[..3] {
            r.on_seal(*node, answer(10, vec![]));
        }
        for node in &MEMBERS[3..] {
            r.on_seal(*node, down(*node));
        }
        assert!(matches!(
            r.decide_seal(),
            SealDecision::Fail(RecoveryError::QuorumLost { needed: 4, .. })
        ));
    }

    /// A segment away during the epoch-4 recovery (SCL 27 on epoch-2 records the recovery
    /// dropped above 20) is asked again with the newest history, and counts only then.
    #[test]
    fn an_answer_with_an_older_history_is_asked_again_with_the_newest() {
        let mut r = recovery();
        r.on_seal(MEMBERS[0], answer(27, vec![t(2, 5)]));
        for node in &MEMBERS[1..] {
            r.on_seal(*node, answer(20, vec![t(2, 5), t(4, 20)]));
        }
        let SealDecision::AskAgain { nodes, learn } = r.decide_seal() else {
            panic!("one answer is stale");
        };
        assert_eq!((nodes, learn), (vec![MEMBERS[0]], vec![t(2, 5), t(4, 20)]));
        assert_eq!(r.decide_seal(), SealDecision::Wait);
        r.on_seal(MEMBERS[0], answer(20, vec![t(2, 5), t(4, 20)]));
        let SealDecision::Keep(kept) = r.decide_seal() else {
            panic!("all complete");
        };
        assert_eq!(kept.tail, Lsn(20));
        // All six hold the same history: this recovery's truncation alone is enough now.
        assert!(kept.history.is_empty());
        assert_eq!(
            kept.max_lsn_seen,
            Lsn(30),
            "the stale answer's LSNs count too"
        );
    }

    /// During ABCDEF -> ABCDEG, sealing counts a write quorum of the membership, 4 of every
    /// configuration (as a write does): 4 of ABCDEF with only 3 of ABCDEG is not enough.
    #[test]
    fn a_membership_change_needs_a_write_quorum_of_every_configuration() {
        let abcdef = Membership::new(MEMBERS.to_vec()).expect("six");
        let change = abcdef.begin(MEMBERS[5], G).expect("F -> G");
        let mut r = PgRecovery::new(Epoch(5), change, false);
        // A, B, C and F sealed: 4 of ABCDEF, 3 of ABCDEG.
        for node in [MEMBERS[0], MEMBERS[1], MEMBERS[2], MEMBERS[5]] {
            r.on_seal(node, answer(10, vec![]));
        }
        for node in [MEMBERS[3], MEMBERS[4], G] {
            r.on_seal(node, down(node));
        }
        assert!(matches!(
            r.decide_seal(),
            SealDecision::Fail(RecoveryError::QuorumLost { .. })
        ));
    }

    #[test]
    fn settling_counts_only_segments_that_applied_this_truncation() {
        let mut r = recovery();
        for node in MEMBERS {
            r.on_seal(
                node,
                answer(if node == MEMBERS[0] { 30 } else { 20 }, vec![]),
            );
        }
        assert!(matches!(r.decide_seal(), SealDecision::Keep(_)));
        assert_eq!(r.decide_open(), OpenDecision::Wait);
        r.on_open(MEMBERS[0], Ok(Lsn(30)));
        for node in &MEMBERS[1..4] {
            r.on_open(*node, Ok(Lsn(20)));
        }
        r.on_open(MEMBERS[4], Err(Refused::new(Refusal::Other, "down")));
        r.on_open(MEMBERS[5], Err(Refused::new(Refusal::Other, "down")));
        assert_eq!(r.decide_open(), OpenDecision::Settle);
        assert!(!r.settled(), "only the holder has the chain to 30");
        // Complete to 30, but on another history: does not count.
        r.on_state(MEMBERS[1], Lsn(30), &[t(3, 30)]);
        r.on_state(MEMBERS[2], Lsn(30), &[t(5, 30)]);
        r.on_state(MEMBERS[3], Lsn(31), &[t(5, 30)]);
        assert!(!r.settled());
        r.on_state(MEMBERS[4], Lsn(30), &[t(5, 30)]);
        assert!(r.settled());
        assert_eq!(
            r.opened().get(&MEMBERS[3]),
            Some(&Lsn(30)),
            "at most the tail"
        );
    }
}
