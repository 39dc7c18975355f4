//! A PG's membership: which nodes hold its segments, and what counts as a quorum while one of
//! them is being replaced. Pure: no I/O, no clock. The writer, the nodes, the repair driver and
//! the simulation all call this one module.
//!
//! A PG normally has one *configuration*: six members, two per AZ. Replacing member F by G
//! (SIGMOD 2018, section 4.1) never takes a consensus round; it is two steps, each a new
//! membership epoch:
//!
//! ```text
//! epoch m     ABCDEF                      stable
//! epoch m+1   ABCDEF AND ABCDEG           replacement F -> G begun: G hydrates from its peers
//! epoch m+2   ABCDEG                      completed (G caught up), or
//! epoch m+2   ABCDEF                      rolled back (F came back before G was ready)
//! ```
//!
//! A second replacement begun while one is under way nests: E -> H on top of F -> G gives the
//! four configurations ABCDEF, ABCDEG, ABCDHF and ABCDHG (the paper's "(ABCDEF AND ABCDEG) AND
//! (ABCDFH AND ABCDGH)"). A membership holds its six stable `members` and the replacements under
//! way (`changes`, at most [`CHANGES_MAX`]); its configurations are every way of applying a
//! subset of the replacements to the members.
//!
//! **Quorums.** A record is durable (counts towards the PGCL) once [`WRITE_QUORUM`] members of
//! EVERY configuration hold it. A recovering writer (or a repair driver deciding that G caught
//! up) needs [`READ_QUORUM`] answers in EVERY configuration.
//!
//! The paper lets reads accept 3 of ABCDEF OR 3 of ABCDEG. That is not enough for recovery here:
//! a record made durable before the replacement began sits on 4 of ABCDEF, possibly A, B, C and
//! F, and the 3 answers D, E, G of ABCDEG would all miss it (G is still empty). Asking for 3 of
//! every configuration costs no availability in the cases that matter: with F lost and G
//! hydrating, any 3 of A..E are 3 of both. (Page reads need no quorum at all: they go to one
//! segment whose SCL covers the read point.)
//!
//! **Why no acknowledged write is lost across a change** (the invariant the steps keep): at
//! every epoch there is a configuration on 4 members of which every durable record lies.
//! - Begin keeps every old configuration, so the old one still qualifies, and from now on a
//!   record is durable only on 4 of every configuration.
//! - Roll back drops the configurations that contain G; the ones left include every
//!   configuration that existed before the replacement began.
//! - Complete drops the configurations that contain F. It is allowed only when G's SCL reaches
//!   the chain tail a recovery would have kept at some moment after the begin step was
//!   established (the highest SCL among answers forming a read quorum of every configuration,
//!   on the newest truncation history): every record durable before that step lies at or below
//!   that tail, so G holds it, and a durable record on 4 of ABCDEF is on 4 of ABCDEG (F's copy
//!   replaced by G's); records acknowledged after the step were on 4 of ABCDEG anyway. (The
//!   repair driver fixes that target once, so G need not chase a tail a busy writer moves.)
//!
//! A writer that still uses membership epoch m after m+1 was sealed at a write quorum of m's
//! configurations can no longer gather a write quorum of any of them: nodes refuse a request
//! carrying an older membership epoch than theirs, gossip included.
//!
//! **Rival steps.** Two drivers (a partition, a flapping node) may each send a different step
//! from the same established membership m, and split m's nodes so that neither reaches a
//! write quorum (three hold one, three the other; or three and two with one node silent), and
//! each refuses the other's as a conflict. Nodes on either refuse writers on m, so the PG
//! stalled for good (found by the simulation). Rivals of one epoch are therefore ordered
//! ([`Membership::outranks`]), and a segment may give up the one it holds, X, for one that
//! outranks it, but only when its driver proves that X can never be established
//! ([`Membership::decide_supersede`]): some configuration of m has 3 nodes holding memberships
//! of X's epoch that outrank X.
//!
//! Within an epoch a segment moves only up that order (supersede), or onto a rival a driver
//! saw established (a catch-up). Why no established membership is ever given up: before the
//! first time any driver sees a membership X established, nobody has moved onto X by a
//! catch-up, so X's holders are nodes that took X as a step (or moved up onto it). Suppose a
//! holder of X is the first to give X up by supersede: its proof says 3 nodes of a
//! configuration held rivals that outrank X, none of which ever held X (no one had given X up
//! yet, and one moves down only onto an established membership, which X then was not), so
//! that configuration never had more than 3 holders of X: X was never established. And once X
//! is established no holder leaves it within the epoch (no proof of its death can exist, and
//! a catch-up moves only onto an established rival, of which an epoch has one). Drivers push
//! the highest rival they see, so the nodes of a split converge on one step.
//!
//! A split whose outranked side may still win by the vote of a node that does not answer (the
//! 3/2 split with the lost node F silent: F might hold the lower rival, which is then
//! established) cannot be decided this way. The steps above are Fast Paxos's fast round, and a
//! driver that sees such a split runs a classic round ([`crate::collision`]), which decides the
//! epoch with five answers of every configuration, F's vote or not. (Before that module the PG
//! stalled until F came back.) Drivers make rivals rare: only the ranked driver of a PG takes
//! new steps (an outranked node's occasional pass only follows, catches up and recovers), so
//! they need two drivers that each think they rank first (a partition).

use std::fmt;

use thiserror::Error;

use crate::geometry::{COPIES, READ_QUORUM, WRITE_QUORUM};
use crate::types::{Lsn, MembershipEpoch, NodeId};
use crate::wire;

/// Membership epochs stay below this (a step to 2^62 would take longer than any cluster lives;
/// a hostile epoch near 2^64 could otherwise wedge a segment, every later step refused).
pub const EPOCH_MAX: u64 = 1 << 62;

/// Most replacements under way at once in one PG. Two nested replacements give 4
/// configurations; a third loss in a PG that already lost two members leaves it below a write
/// quorum of its original six anyway.
pub const CHANGES_MAX: usize = 2;

// Configurations must overlap enough for a write quorum of each to stay reachable while the
// replaced members are lost: 6 - 2 replaced >= 4.
const _: () = assert!(COPIES - CHANGES_MAX >= WRITE_QUORUM);

/// One replacement under way: `from` (a stable member) gives its place to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Replacement {
    pub from: NodeId,
    pub to: NodeId,
    pub kind: ChangeKind,
}

/// Why a member is being replaced: it decides what happens when `from` answers again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `from` was lost (unreachable too long): if it comes back before `to` caught up, the
    /// replacement is rolled back.
    Repair,
    /// A planned move (drain, rebalance): `from` is healthy and stays until `to` caught up.
    Move,
}

/// A PG's member list in one membership epoch.
///
/// Invariants (checked by [`Membership::check`]):
/// - `members` are [`COPIES`] distinct nodes;
/// - at most [`CHANGES_MAX`] changes; each `from` is a member, named by one change only; each
///   `to` is not a member and is named by one change only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Bumped by every step; never decreases.
    pub epoch: MembershipEpoch,
    /// The stable configuration, in placement order (two per AZ).
    pub members: Vec<NodeId>,
    /// Replacements under way, oldest first.
    pub changes: Vec<Replacement>,
}

/// What one step from a membership to the next does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Begin(Replacement),
    Complete(Replacement),
    RollBack(Replacement),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Begin(r) => write!(f, "begin replacing {} by {}", r.from, r.to),
            Step::Complete(r) => write!(f, "complete replacing {} by {}", r.from, r.to),
            Step::RollBack(r) => write!(f, "roll back replacing {} by {}", r.from, r.to),
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("a PG has {COPIES} distinct members; this list has {count} ({distinct} distinct)")]
    Members { count: usize, distinct: usize },
    #[error("at most {CHANGES_MAX} replacements may be under way in one PG")]
    TooManyChanges,
    #[error("{node} is not a stable member of the PG")]
    NotAMember { node: NodeId },
    #[error("{node} already holds a segment of the PG (or is joining it)")]
    AlreadyAMember { node: NodeId },
    #[error("{node} is already being replaced")]
    AlreadyReplacing { node: NodeId },
    #[error("no replacement by {node} is under way")]
    NoSuchChange { node: NodeId },
    #[error("{found} is not the next step of {current}: a step goes from epoch N to N+1")]
    NotNext {
        current: MembershipEpoch,
        found: MembershipEpoch,
    },
    #[error("membership {found} is older than {current}, which this node already holds")]
    Stale {
        current: MembershipEpoch,
        found: MembershipEpoch,
    },
    #[error("{epoch} is already held with other members: another driver changed the PG")]
    Conflict { epoch: MembershipEpoch },
    #[error("the new membership is not one step (begin, complete or roll back) from the old")]
    NotAStep,
    #[error("the segment no longer holds the membership the change was to supersede")]
    NotSuperseded,
    #[error("a membership may only be superseded by a rival of its epoch that outranks it")]
    Outranked,
    #[error("{epoch} is out of range (1 to 2^62)")]
    EpochOutOfRange { epoch: MembershipEpoch },
    #[error(
        "the segment promised collision-recovery {} for {}: the request's round or epoch is \
         older", .promise.ballot, .promise.epoch
    )]
    Promised { promise: crate::collision::Promise },
    #[error("the segment holds no membership of its PG")]
    NoMembership,
    #[error("a collision-recovery round is numbered 1 to 2^62 and names its driver")]
    NotAClassicRound,
}

impl Membership {
    /// The first membership of a new PG (epoch 1).
    pub fn new(members: Vec<NodeId>) -> Result<Membership, MembershipError> {
        let membership = Membership {
            epoch: MembershipEpoch(1),
            members,
            changes: Vec::new(),
        };
        membership.check()?;
        Ok(membership)
    }

    /// Checks the invariants of the type (every membership from the network goes through here).
    pub fn check(&self) -> Result<(), MembershipError> {
        if self.epoch.0 == 0 || self.epoch.0 >= EPOCH_MAX {
            return Err(MembershipError::EpochOutOfRange { epoch: self.epoch });
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if self.members.len() != COPIES || sorted.len() != COPIES {
            return Err(MembershipError::Members {
                count: self.members.len(),
                distinct: sorted.len(),
            });
        }
        if self.changes.len() > CHANGES_MAX {
            return Err(MembershipError::TooManyChanges);
        }
        for (i, change) in self.changes.iter().enumerate() {
            if !self.members.contains(&change.from) {
                return Err(MembershipError::NotAMember { node: change.from });
            }
            if self.members.contains(&change.to) {
                return Err(MembershipError::AlreadyAMember { node: change.to });
            }
            for other in &self.changes[..i] {
                if other.from == change.from {
                    return Err(MembershipError::AlreadyReplacing { node: change.from });
                }
                if other.to == change.to {
                    return Err(MembershipError::AlreadyAMember { node: change.to });
                }
            }
        }
        Ok(())
    }

    /// True when no replacement is under way.
    pub fn is_stable(&self) -> bool {
        self.changes.is_empty()
    }

    /// Every node that holds (or is joining with) a segment of the PG: the members, then each
    /// replacement's new node. The writer sends every record to all of them.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes = self.members.clone();
        nodes.extend(self.changes.iter().map(|c| c.to));
        nodes
    }

    /// Whether `node` holds (or is joining with) a segment of the PG.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains(&node) || self.changes.iter().any(|c| c.to == node)
    }

    /// Every configuration: each subset of the changes applied to the members (2^changes).
    pub fn configs(&self) -> Vec<[NodeId; COPIES]> {
        let mut configs = Vec::with_capacity(1 << self.changes.len());
        for subset in 0u32..(1 << self.changes.len()) {
            let mut config = [NodeId(0); COPIES];
            for (slot, member) in config.iter_mut().zip(&self.members) {
                *slot = *member;
            }
            for (bit, change) in self.changes.iter().enumerate() {
                if subset & (1 << bit) != 0 {
                    for slot in config.iter_mut().filter(|n| **n == change.from) {
                        *slot = change.to;
                    }
                }
            }
            configs.push(config);
        }
        configs
    }

    /// Whether the nodes for which `holds` is true make a write quorum: [`WRITE_QUORUM`] of
    /// every configuration.
    pub fn is_write_quorum(&self, holds: impl Fn(NodeId) -> bool) -> bool {
        self.configs()
            .iter()
            .all(|config| config.iter().filter(|n| holds(**n)).count() >= WRITE_QUORUM)
    }

    /// Whether the nodes for which `answered` is true make a read quorum: [`READ_QUORUM`] of
    /// every configuration (see the module docs for why not of any one).
    pub fn is_read_quorum(&self, answered: impl Fn(NodeId) -> bool) -> bool {
        self.configs()
            .iter()
            .all(|config| config.iter().filter(|n| answered(**n)).count() >= READ_QUORUM)
    }

    /// The PG complete LSN: the highest LSN that a write quorum holds, given each node's
    /// acknowledged SCL. In every configuration it is the [`WRITE_QUORUM`]-th highest SCL of its
    /// members; the PGCL is the lowest of those.
    pub fn pgcl(&self, scl: impl Fn(NodeId) -> Lsn) -> Lsn {
        self.configs()
            .iter()
            .map(|config| {
                let mut scls = config.map(&scl);
                scls.sort_unstable_by(|a, b| b.cmp(a));
                scls[WRITE_QUORUM - 1]
            })
            .min()
            .unwrap_or(Lsn::ZERO)
    }

    fn next_epoch(&self) -> MembershipEpoch {
        MembershipEpoch(self.epoch.0.saturating_add(1))
    }

    fn change_to(&self, to: NodeId) -> Result<Replacement, MembershipError> {
        self.changes
            .iter()
            .find(|c| c.to == to)
            .copied()
            .ok_or(MembershipError::NoSuchChange { node: to })
    }

    /// Begins replacing the lost stable member `from` by `to` (a node that holds no segment of
    /// the PG). Placement rules (same AZ, free space) are the caller's: this type knows no AZs.
    pub fn begin(&self, from: NodeId, to: NodeId) -> Result<Membership, MembershipError> {
        self.begin_change(from, to, ChangeKind::Repair)
    }

    /// Begins moving the healthy member `from`'s segment to `to` (drain, rebalance).
    pub fn begin_move(&self, from: NodeId, to: NodeId) -> Result<Membership, MembershipError> {
        self.begin_change(from, to, ChangeKind::Move)
    }

    fn begin_change(
        &self,
        from: NodeId,
        to: NodeId,
        kind: ChangeKind,
    ) -> Result<Membership, MembershipError> {
        if !self.members.contains(&from) {
            return Err(MembershipError::NotAMember { node: from });
        }
        if self.changes.iter().any(|c| c.from == from) {
            return Err(MembershipError::AlreadyReplacing { node: from });
        }
        if self.contains(to) {
            return Err(MembershipError::AlreadyAMember { node: to });
        }
        if self.changes.len() >= CHANGES_MAX {
            return Err(MembershipError::TooManyChanges);
        }
        let mut next = self.clone();
        next.epoch = self.next_epoch();
        next.changes.push(Replacement { from, to, kind });
        Ok(next)
    }

    /// Completes the replacement by `to`: it takes its `from`'s place among the members. The
    /// caller has checked that `to` caught up (module docs).
    pub fn complete(&self, to: NodeId) -> Result<Membership, MembershipError> {
        let change = self.change_to(to)?;
        let mut next = self.clone();
        next.epoch = self.next_epoch();
        next.changes.retain(|c| c.to != to);
        for member in next.members.iter_mut().filter(|m| **m == change.from) {
            *member = to;
        }
        Ok(next)
    }

    /// Abandons the replacement by `to`: `from` stays a member.
    pub fn roll_back(&self, to: NodeId) -> Result<Membership, MembershipError> {
        self.change_to(to)?;
        let mut next = self.clone();
        next.epoch = self.next_epoch();
        next.changes.retain(|c| c.to != to);
        Ok(next)
    }

    /// Which step leads from `self` to `next`, if `next` is exactly one step on.
    pub fn step_to(&self, next: &Membership) -> Result<Step, MembershipError> {
        next.check()?;
        if next.epoch != self.next_epoch() {
            return Err(MembershipError::NotNext {
                current: self.epoch,
                found: next.epoch,
            });
        }
        let mut candidates = Vec::new();
        if let Some(new) = next.changes.iter().find(|c| !self.changes.contains(c)) {
            candidates.push((
                self.begin_change(new.from, new.to, new.kind),
                Step::Begin(*new),
            ));
        }
        for change in &self.changes {
            candidates.push((self.complete(change.to), Step::Complete(*change)));
            candidates.push((self.roll_back(change.to), Step::RollBack(*change)));
        }
        candidates
            .into_iter()
            .find_map(|(made, step)| (made.as_ref() == Ok(next)).then_some(step))
            .ok_or(MembershipError::NotAStep)
    }

    /// What a node holding `current` (None: none yet) does with `proposed`, a step from `base`:
    /// adopt it (`Ok(true)`), or nothing because it already holds it (`Ok(false)`), or refuse.
    /// A node that missed steps (its epoch is below `base`'s) adopts `proposed` directly: the
    /// driver proposes only from a base that a write quorum holds, so the steps it missed were
    /// taken. So does a node holding a rival of `base` (a step another driver began that lost).
    pub fn decide_adopt(
        current: Option<&Membership>,
        base: &Membership,
        proposed: &Membership,
    ) -> Result<bool, MembershipError> {
        base.check()?;
        base.step_to(proposed)?;
        let Some(current) = current else {
            return Ok(true);
        };
        if current == proposed {
            return Ok(false);
        }
        if current.epoch >= proposed.epoch {
            if current.epoch == proposed.epoch {
                return Err(MembershipError::Conflict {
                    epoch: current.epoch,
                });
            }
            return Err(MembershipError::Stale {
                current: current.epoch,
                found: proposed.epoch,
            });
        }
        // Below the proposal: behind (it missed steps), or on a rival step of `base`'s epoch
        // that never reached a write quorum (a step is proposed only from a base a write quorum
        // holds, and two rival steps cannot both reach one): either way it follows.
        Ok(true)
    }
}

impl Membership {
    /// Whether `self` outranks `other`, a rival of its epoch: rivals are ordered by their
    /// members, then their replacements (a total order on distinct memberships). A segment may
    /// only move up this order within an epoch (module docs, "Rival steps").
    pub fn outranks(&self, other: &Membership) -> bool {
        self.rank_key() > other.rank_key()
    }

    fn rank_key(&self) -> Vec<u64> {
        let mut key: Vec<u64> = self.members.iter().map(|n| n.0).collect();
        for change in &self.changes {
            let kind = match change.kind {
                ChangeKind::Repair => 0,
                ChangeKind::Move => 1,
            };
            key.extend([change.from.0, change.to.0, kind]);
        }
        key
    }

    /// What a node holding `current` does with `proposed`, a step from `base` sent to replace
    /// `superseded`, a rival of `proposed`'s epoch its driver proved can never be established
    /// (module docs, "Rival steps"): adopt it if the node still holds exactly `superseded` and
    /// `proposed` outranks it (`Ok(false)`: holds `proposed` already).
    pub fn decide_supersede(
        current: Option<&Membership>,
        base: &Membership,
        proposed: &Membership,
        superseded: &Membership,
    ) -> Result<bool, MembershipError> {
        base.check()?;
        base.step_to(proposed)?;
        superseded.check()?;
        if current == Some(proposed) {
            return Ok(false);
        }
        if current != Some(superseded) {
            return Err(MembershipError::NotSuperseded);
        }
        if superseded.epoch != proposed.epoch || !proposed.outranks(superseded) {
            return Err(MembershipError::Outranked);
        }
        Ok(true)
    }

    /// The membership from its wire form, checked ([`Membership::check`]).
    pub fn from_wire(wire: &wire::Membership) -> Result<Membership, MembershipError> {
        if wire.members.len() > COPIES || wire.changes.len() > CHANGES_MAX {
            return Err(MembershipError::Members {
                count: wire.members.len(),
                distinct: wire.members.len(),
            });
        }
        let membership = Membership {
            epoch: MembershipEpoch(wire.epoch),
            members: wire.members.iter().map(|id| NodeId(*id)).collect(),
            changes: wire
                .changes
                .iter()
                .map(|c| Replacement {
                    from: NodeId(c.from),
                    to: NodeId(c.to),
                    kind: if c.planned {
                        ChangeKind::Move
                    } else {
                        ChangeKind::Repair
                    },
                })
                .collect(),
        };
        if membership.nodes().iter().any(|n| n.0 == 0) {
            return Err(MembershipError::NotAMember { node: NodeId(0) });
        }
        membership.check()?;
        Ok(membership)
    }

    pub fn to_wire(&self) -> wire::Membership {
        wire::Membership {
            epoch: self.epoch.0,
            members: self.members.iter().map(|n| n.0).collect(),
            changes: self
                .changes
                .iter()
                .map(|c| wire::Replacement {
                    from: c.from.0,
                    to: c.to.0,
                    planned: c.kind == ChangeKind::Move,
                })
                .collect(),
        }
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let configs = self.configs();
        write!(f, "{}: ", self.epoch)?;
        for (i, config) in configs.iter().enumerate() {
            if i > 0 {
                write!(f, " AND ")?;
            }
            let names: Vec<String> = config.iter().map(NodeId::to_string).collect();
            write!(f, "[{}]", names.join(" "))?;
        }
        for change in &self.changes {
            let what = match change.kind {
                ChangeKind::Repair => "repairing",
                ChangeKind::Move => "moving",
            };
            write!(f, "; {what} {} -> {}", change.from, change.to)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Nodes A..H of the paper's example.
    const A: NodeId = NodeId(0xa);
    const B: NodeId = NodeId(0xb);
    const C: NodeId = NodeId(0xc);
    const D: NodeId = NodeId(0xd);
    const E: NodeId = NodeId(0xe);
    const F: NodeId = NodeId(0xf);
    const G: NodeId = NodeId(0x10);
    const H: NodeId = NodeId(0x11);

    fn abcdef() -> Membership {
        Membership::new(vec![A, B, C, D, E, F]).expect("valid")
    }

    fn set(nodes: &[NodeId]) -> impl Fn(NodeId) -> bool + '_ {
        move |n| nodes.contains(&n)
    }

    #[test]
    fn a_new_pg_has_six_distinct_members() {
        assert!(Membership::new(vec![A, B, C, D, E]).is_err());
        assert!(Membership::new(vec![A, B, C, D, E, E]).is_err());
        let m = abcdef();
        assert_eq!(m.epoch, MembershipEpoch(1));
        assert_eq!(m.configs(), vec![[A, B, C, D, E, F]]);
        assert!(m.is_stable());
    }

    /// (membership, nodes that hold a record, is it durable, why)
    #[test]
    fn write_quorum_table() {
        let stable = abcdef();
        let replacing = stable.begin(F, G).expect("begin");
        let nested = replacing.begin(E, H).expect("nest");
        let cases: [(&Membership, &[NodeId], bool, &str); 9] = [
            (&stable, &[A, B, C, D], true, "4 of 6"),
            (&stable, &[A, B, C], false, "3 of 6"),
            (
                &replacing,
                &[A, B, C, F],
                false,
                "4 of ABCDEF but 3 of ABCDEG",
            ),
            (
                &replacing,
                &[A, B, C, G],
                false,
                "4 of ABCDEG but 3 of ABCDEF",
            ),
            (&replacing, &[A, B, C, D], true, "4 of both"),
            (
                &replacing,
                &[A, B, C, F, G],
                true,
                "4 of both, F and G each count once",
            ),
            (
                &nested,
                &[A, B, C, D],
                true,
                "ABCD is in every configuration",
            ),
            (&nested, &[A, B, C, E, F], false, "3 of ABCDHG"),
            (&nested, &[A, B, C, E, H, F, G], true, "4 of all four"),
        ];
        for (membership, holders, durable, why) in cases {
            assert_eq!(membership.is_write_quorum(set(holders)), durable, "{why}");
        }
    }

    #[test]
    fn read_quorum_needs_three_of_every_configuration() {
        let replacing = abcdef().begin(F, G).expect("begin");
        // D, E, G would miss a record durable before the change on A, B, C, F.
        assert!(!replacing.is_read_quorum(set(&[D, E, G])));
        assert!(replacing.is_read_quorum(set(&[A, B, C])));
        assert!(
            replacing.is_read_quorum(set(&[D, E, F, G])),
            "D E F and D E G"
        );
        assert!(!abcdef().is_read_quorum(set(&[A, B])));
    }

    #[test]
    fn pgcl_is_the_lowest_quorum_point_of_the_configurations() {
        let replacing = abcdef().begin(F, G).expect("begin");
        let scls = |scl: [u64; 7]| {
            move |n: NodeId| {
                let i = [A, B, C, D, E, F, G]
                    .iter()
                    .position(|m| *m == n)
                    .expect("node");
                Lsn(scl[i])
            }
        };
        // ABCDEF's 4th highest is 9 (F holds 9), ABCDEG's is 5 (G is still at 5).
        assert_eq!(replacing.pgcl(scls([9, 9, 9, 5, 5, 9, 5])), Lsn(5));
        assert_eq!(
            replacing.pgcl(scls([9, 9, 9, 9, 5, 0, 5])),
            Lsn(9),
            "F lost"
        );
        assert_eq!(abcdef().pgcl(scls([9, 8, 7, 6, 5, 4, 0])), Lsn(6));
    }

    /// The paper's example: F replaced by G, then E by H while the first is under way, then
    /// both completed.
    #[test]
    fn nested_replacements_give_the_papers_four_configurations() {
        let nested = abcdef()
            .begin(F, G)
            .and_then(|m| m.begin(E, H))
            .expect("nest");
        assert_eq!(nested.epoch, MembershipEpoch(3));
        let configs = nested.configs();
        assert_eq!(configs.len(), 4);
        for expected in [
            [A, B, C, D, E, F],
            [A, B, C, D, E, G],
            [A, B, C, D, H, F],
            [A, B, C, D, H, G],
        ] {
            assert!(configs.contains(&expected), "{expected:?}");
        }
        assert_eq!(nested.nodes(), vec![A, B, C, D, E, F, G, H]);
        let done = nested
            .complete(G)
            .and_then(|m| m.complete(H))
            .expect("complete");
        assert_eq!(done.members, vec![A, B, C, D, H, G]);
        assert!(done.is_stable());
        assert_eq!(done.epoch, MembershipEpoch(5));
    }

    #[test]
    fn a_rolled_back_replacement_keeps_the_old_member() {
        let back = abcdef()
            .begin(F, G)
            .and_then(|m| m.roll_back(G))
            .expect("roll back");
        assert_eq!(back.members, abcdef().members);
        assert_eq!(back.epoch, MembershipEpoch(3), "a roll back is a step too");
    }

    #[test]
    fn bad_steps_are_refused() {
        let m = abcdef();
        assert_eq!(m.begin(G, H), Err(MembershipError::NotAMember { node: G }));
        assert_eq!(
            m.begin(F, A),
            Err(MembershipError::AlreadyAMember { node: A })
        );
        let replacing = m.begin(F, G).expect("begin");
        assert_eq!(
            replacing.begin(F, H),
            Err(MembershipError::AlreadyReplacing { node: F })
        );
        assert_eq!(
            replacing.begin(E, G),
            Err(MembershipError::AlreadyAMember { node: G })
        );
        let full = replacing.begin(E, H).expect("second");
        assert_eq!(
            full.begin(D, NodeId(0x12)),
            Err(MembershipError::TooManyChanges)
        );
        assert_eq!(
            m.complete(G),
            Err(MembershipError::NoSuchChange { node: G })
        );
    }

    #[test]
    fn step_to_names_the_step_or_refuses() {
        let m = abcdef();
        let begun = m.begin(F, G).expect("begin");
        assert_eq!(
            m.step_to(&begun),
            Ok(Step::Begin(Replacement {
                from: F,
                to: G,
                kind: ChangeKind::Repair
            }))
        );
        let done = begun.complete(G).expect("complete");
        assert_eq!(
            begun.step_to(&done),
            Ok(Step::Complete(Replacement {
                from: F,
                to: G,
                kind: ChangeKind::Repair
            }))
        );
        assert!(matches!(
            m.step_to(&done),
            Err(MembershipError::NotNext { .. })
        ));
        let mut forged = begun.clone();
        forged.members[0] = H; // not a step: swaps a member silently
        assert_eq!(m.step_to(&forged), Err(MembershipError::NotAStep));
    }

    #[test]
    fn a_rival_is_superseded_only_by_one_that_outranks_it() {
        let base = abcdef();
        let g = base.begin(F, G).expect("begin");
        let h = base.begin(F, H).expect("a rival driver's step");
        let (low, high) = if h.outranks(&g) { (g, h) } else { (h, g) };
        assert!(!low.outranks(&high) && !low.outranks(&low));
        assert_eq!(
            Membership::decide_supersede(Some(&low), &base, &high, &low),
            Ok(true)
        );
        assert_eq!(
            Membership::decide_supersede(Some(&high), &base, &high, &low),
            Ok(false),
            "held already"
        );
        assert_eq!(
            Membership::decide_supersede(Some(&high), &base, &low, &high),
            Err(MembershipError::Outranked),
            "never down the order"
        );
        assert_eq!(
            Membership::decide_supersede(Some(&base), &base, &high, &low),
            Err(MembershipError::NotSuperseded),
            "the node no longer (or never) held what the proof was about"
        );
    }

    #[test]
    fn nodes_adopt_only_the_next_step() {
        let base = abcdef();
        let proposed = base.begin(F, G).expect("begin");
        let other = base.begin(F, H).expect("a rival driver's step");
        // A node at the base adopts; again: nothing to do.
        assert_eq!(
            Membership::decide_adopt(Some(&base), &base, &proposed),
            Ok(true)
        );
        assert_eq!(
            Membership::decide_adopt(Some(&proposed), &base, &proposed),
            Ok(false)
        );
        // The rival's step for the same epoch is refused once one is held.
        assert_eq!(
            Membership::decide_adopt(Some(&proposed), &base, &other),
            Err(MembershipError::Conflict {
                epoch: MembershipEpoch(2)
            })
        );
        // A stale proposal (built on an old base) is refused.
        let later = proposed.complete(G).expect("complete");
        assert!(matches!(
            Membership::decide_adopt(Some(&later), &base, &proposed),
            Err(MembershipError::Stale { .. })
        ));
        // A proposal that skips an epoch is refused.
        assert!(matches!(
            Membership::decide_adopt(Some(&base), &base, &later),
            Err(MembershipError::NotNext { .. })
        ));
        // A node on the rival's losing step follows the winner's next step.
        let next = proposed.complete(G).expect("complete");
        assert_eq!(
            Membership::decide_adopt(Some(&other), &proposed, &next),
            Ok(true)
        );
        // A node that missed steps, or holds nothing yet (the new member), adopts.
        let mut lagging = base.clone();
        lagging.epoch = MembershipEpoch(0);
        assert_eq!(
            Membership::decide_adopt(Some(&lagging), &base, &proposed),
            Ok(true)
        );
        assert_eq!(Membership::decide_adopt(None, &base, &proposed), Ok(true));
    }

    /// The safety argument of the module docs, exhaustively on small histories: walk random
    /// begin / complete / roll back steps (complete only when the new node holds every durable
    /// record), write records to random write quorums of the membership in force, and check
    /// after every step that a read quorum of every configuration always meets every durable
    /// record's holders. Seen failing with the paper's read rule (3 of ANY configuration) and
    /// with a completion that does not wait for the new node to catch up.
    #[test]
    fn every_read_quorum_meets_every_durable_record() {
        let pool: Vec<NodeId> = (1..=10).map(NodeId).collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..300 {
            let mut m = Membership::new(pool[..6].to_vec()).expect("valid");
            // Each durable record: the nodes that hold it.
            let mut durable: Vec<Vec<NodeId>> = Vec::new();
            for _ in 0..40 {
                match next(4) {
                    0 => {
                        let from = m.members[next(6)];
                        let to = pool[next(pool.len())];
                        if let Ok(n) = m.begin(from, to) {
                            m = n;
                        }
                    }
                    1 if !m.changes.is_empty() => {
                        let change = m.changes[next(m.changes.len())];
                        // Catch-up: the new node gets every durable record first.
                        for holders in &mut durable {
                            if !holders.contains(&change.to) {
                                holders.push(change.to);
                            }
                        }
                        m = m.complete(change.to).expect("complete");
                    }
                    2 if !m.changes.is_empty() => {
                        let change = m.changes[next(m.changes.len())];
                        m = m.roll_back(change.to).expect("roll back");
                    }
                    _ => {
                        // A record on a random write quorum (at least 4 of every config).
                        let nodes = m.nodes();
                        loop {
                            let holders: Vec<NodeId> =
                                nodes.iter().copied().filter(|_| next(3) > 0).collect();
                            if m.is_write_quorum(|n| holders.contains(&n)) {
                                durable.push(holders);
                                break;
                            }
                        }
                    }
                }
                m.check().expect("invariants");
                // Every minimal read quorum meets every durable record.
                let nodes = m.nodes();
                for mask in 0u32..(1 << nodes.len()) {
                    let answered: Vec<NodeId> = (0..nodes.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| nodes[i])
                        .collect();
                    if !m.is_read_quorum(|n| answered.contains(&n)) {
                        continue;
                    }
                    for holders in &durable {
                        assert!(
                            holders.iter().any(|h| answered.contains(h)),
                            "{m}: read quorum {answered:?} misses a record on {holders:?}"
                        );
                    }
                }
            }
        }
    }
}
