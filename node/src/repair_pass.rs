//! One pass of a PG's repair driver, as a pure decision: from what the PG's nodes answered to
//! what to send them. [`crate::repair`] gathers the answers and carries the decision out; the
//! simulation drives this same code through crashes, partitions and rival drivers.
//!
//! A pass, in order (each rule with why):
//! 1. **Follow an established membership newer than this node's** (or an established rival of
//!    its epoch: this node holds a step that lost). Nothing else this pass: the view was built
//!    on a membership that is no longer in force.
//! 2. **Record the membership in the volume metadata** once it is established and this driver
//!    has not recorded it yet (a driver that died between a step and its record, metadata nodes
//!    that did not answer): writers follow the metadata, never a node's unestablished view.
//! 3. **Fix each joining node's catch-up target** once its step is established (again when a
//!    writer's recovery changes the truncation history): see [`crate::repair_plan`], rule 2.
//! 4. **Plan** ([`crate::repair_plan::plan`]) and turn the plan into one [`Send`]: push the
//!    established membership to nodes that lag; push an unestablished step to the nodes that
//!    lag; or send a new step to every node of the old and the new membership.
//!
//! After the send, [`PgDriver::sent`] says what counts: a new step only once a write quorum of
//! the membership it was built on holds it (two rival steps from one base cannot both get
//! there: two write quorums of a configuration meet).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sixfold_proto::collision::{self, Ballot, Promise};
use sixfold_proto::membership::{ChangeKind, Membership, MembershipError};
use sixfold_proto::nodes::NodeList;
use sixfold_proto::{Epoch, Lsn, MembershipEpoch, NodeId, COPIES, WRITE_QUORUM};

use crate::members::ChangeMode;
use crate::repair_plan::{self, MemberState, MemberView, PgView, Plan};

/// A node's answer to the driver's state question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub scl: Lsn,
    /// The epoch of its truncation history.
    pub history_epoch: Epoch,
    pub membership: Option<Membership>,
    /// The membership its own was a step from.
    pub membership_base: Option<Membership>,
    /// The collision-recovery round its membership was accepted in, and its promise.
    pub ballot: Ballot,
    pub promise: Option<Promise>,
}

impl Answer {
    /// Its membership and round (what [`collision::is_established`] counts).
    fn vote(&self) -> Option<(Membership, Ballot)> {
        self.membership.clone().map(|m| (m, self.ballot))
    }
}

/// What a pass sees: the PG as this node holds it, and the answers of its nodes.
#[derive(Clone, Copy)]
pub struct PassInput<'a> {
    /// The node this driver runs on (it names its collision-recovery rounds).
    pub driver: NodeId,
    pub membership: &'a Membership,
    pub base: Option<&'a Membership>,
    pub answers: &'a BTreeMap<NodeId, Answer>,
    /// How long each node that did not answer has been silent.
    pub silent_for: &'a (dyn Fn(NodeId) -> Duration + Sync),
    pub list: &'a NodeList,
    pub repair_after: Duration,
    /// The PG's placement key.
    pub key: &'a str,
    /// Nodes that answer now.
    pub live: &'a BTreeSet<NodeId>,
    /// Segments per node (placement prefers the least loaded).
    pub load: &'a (dyn Fn(NodeId) -> u64 + Sync),
    /// Whether a new replacement may begin (the driver's concurrency bound).
    pub may_begin: bool,
    /// Whether this pass may take new steps at all (begin, complete, roll back). False for an
    /// outranked node's occasional pass (`FALLBACK_EVERY` in the driver): it only follows,
    /// records, establishes and catches up, so that it never makes a rival of the ranked
    /// driver's steps.
    pub may_step: bool,
}

/// What a pass decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// This node adopts an established membership its peers hold (rule 1), in the round it
    /// was established in.
    CatchUpSelf {
        membership: Membership,
        base: Option<Membership>,
        ballot: Ballot,
    },
    /// A ChangeMembership to some nodes.
    Send(Send),
    /// A collision-recovery round: ask the nodes of its base for their promise, then
    /// [`PgDriver::promised`].
    Recover(Recover),
    /// Nothing to send.
    Wait,
}

/// A collision-recovery round this driver runs (`sixfold_proto::collision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recover {
    pub base: Membership,
    pub ballot: Ballot,
    /// The driver's own proposal, when no vote binds the round.
    pub own: Membership,
    pub catch_up_to: Lsn,
}

/// Which kind of send: what its answers mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// The established membership, to nodes that lag or join (`catch_up` on the wire), in the
    /// round it was established in.
    CatchUp(Ballot),
    /// An unestablished step, to the nodes of its base that lag.
    Establish,
    /// A new step (the plan's begin, complete or roll back).
    Step,
    /// A collision-recovery round's accept.
    Accept(Ballot),
}

/// ChangeMembership(`base` -> `proposed`) to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    pub kind: SendKind,
    pub base: Membership,
    pub proposed: Membership,
    pub to: Vec<NodeId>,
    /// Nodes of `to` that hold a rival of `proposed` this driver proved can never be
    /// established, which `proposed` outranks: they are asked to supersede it.
    pub over: BTreeMap<NodeId, Membership>,
    /// How far the PG's chain reaches as of now: joining nodes fill their gap up to here.
    pub catch_up_to: Lsn,
}

impl Send {
    /// How `node` is to take it.
    pub fn mode(&self, node: NodeId) -> ChangeMode {
        match (self.kind, self.over.get(&node)) {
            (SendKind::CatchUp(ballot), _) => ChangeMode::CatchUp(ballot),
            (SendKind::Accept(ballot), _) => ChangeMode::Accept(ballot),
            (_, Some(superseded)) => ChangeMode::Supersede(superseded.clone()),
            (SendKind::Step | SendKind::Establish, None) => ChangeMode::Step,
        }
    }
}

/// The pass's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Record `membership` (the current one, established) in the volume metadata first.
    pub record: Option<Membership>,
    pub action: Action,
    /// The plan behind the action (None: rule 1 came first).
    pub plan: Option<Plan>,
    /// Why the PG cannot be repaired further, if it cannot.
    pub degraded: Option<String>,
}

/// What a send's answers amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Record this established membership in the volume metadata.
    Record(Membership),
    /// Nothing new counts yet.
    Nothing,
    /// A new step short of a write quorum of its base: it does not count (yet).
    ShortOfQuorum { held: usize },
}

/// What the driver remembers of one PG between passes. Lost with the driver: all of it can be
/// measured again.
#[derive(Clone, Debug, Default)]
pub struct PgDriver {
    /// The catch-up target fixed for each joining node, valid while the membership epoch is
    /// `seen` (the one this driver last saw or made): a target fixed for a replacement that
    /// was rolled back and begun again by another driver meanwhile would be stale.
    targets: BTreeMap<NodeId, (Lsn, Epoch)>,
    seen: Option<MembershipEpoch>,
    /// The newest membership epoch recorded in the volume metadata by this driver.
    recorded: Option<MembershipEpoch>,
}

impl PgDriver {
    /// One pass.
    pub fn pass(&mut self, input: &PassInput<'_>) -> Pass {
        let membership = input.membership;
        // A base equal to the membership is no step (a catch-up stored that way): none.
        let input = &PassInput {
            base: input.base.filter(|b| *b != membership),
            ..*input
        };
        if let Some((newer, base, ballot)) = newest_established(input.answers, membership) {
            self.targets.clear();
            return Pass {
                record: None,
                action: Action::CatchUpSelf {
                    membership: newer,
                    base,
                    ballot,
                },
                plan: None,
                degraded: None,
            };
        }
        if self.seen != Some(membership.epoch) {
            self.targets.clear();
            self.seen = Some(membership.epoch);
        }
        let members = views(input, membership);
        // Any node of the base counts, a member of `membership` or not (the new node of a
        // replacement rolled back, the old one of a completed one).
        let votes = |node: NodeId| input.answers.get(&node).and_then(Answer::vote);
        // The round it was established in (a writer's, with no base: learned).
        let established_in = match input.base {
            None => Some(Ballot::LEARNED),
            Some(base) => collision::established_in(base, membership, votes),
        };
        let established = established_in.is_some();
        let empty = BTreeMap::new();
        let view = PgView {
            membership,
            base: input.base,
            members: &members,
            established,
            list: input.list,
            repair_after: input.repair_after,
            key: input.key,
            targets: &empty,
            live: input.live,
        };
        let now_tail = view.recovery_tail();
        let catch_up_to = now_tail.map_or(Lsn::ZERO, |(tail, _)| tail);
        // Another driver began a step from this node's membership: push it on (to this node
        // too) rather than plan a rival one. Its own driver may be gone.
        let next = input
            .answers
            .values()
            .filter(|a| a.membership_base.as_ref() == Some(membership))
            .filter_map(|a| a.membership.as_ref())
            .filter(|m| m.epoch > membership.epoch)
            .reduce(|top, m| if m.outranks(top) { m } else { top });
        if let Some(next) = next {
            return Pass {
                record: None,
                action: establish_or_recover(input, next, membership, catch_up_to),
                plan: Some(Plan::Establish),
                degraded: None,
            };
        }
        self.targets
            .retain(|node, _| membership.changes.iter().any(|c| c.to == *node));
        if let (true, Some((tail, history))) = (established, now_tail) {
            for change in &membership.changes {
                let fixed = self
                    .targets
                    .get(&change.to)
                    .is_some_and(|(_, h)| *h == history);
                if !fixed {
                    self.targets.insert(change.to, (tail, history));
                }
            }
        }
        let view = PgView {
            targets: &self.targets,
            ..view
        };
        let plan = repair_plan::plan(&view, input.load);
        let record =
            (established && self.recorded != Some(membership.epoch)).then(|| membership.clone());
        // Nodes of the membership or of its base that answered on another membership.
        let lagging: Vec<NodeId> = input
            .answers
            .iter()
            .filter(|(node, a)| {
                (membership.contains(**node) || input.base.is_some_and(|b| b.contains(**node)))
                    && a.membership.as_ref() != Some(membership)
            })
            .map(|(node, _)| *node)
            .collect();
        let send = |kind, base: &Membership, proposed: Membership, to: Vec<NodeId>| {
            Action::Send(Send {
                kind,
                base: base.clone(),
                proposed,
                to,
                over: BTreeMap::new(),
                catch_up_to,
            })
        };
        // Nodes that lag (away during a step) are caught up; a new member catching up needs
        // its target and its peers (again after a restart of either side). Whatever else the
        // plan says, short of a new step: a PG that cannot be repaired further still finishes
        // the replacement under way.
        let catch_up = || {
            let mut to = lagging.clone();
            to.extend(membership.changes.iter().map(|c| c.to));
            to.sort_unstable();
            to.dedup();
            if let (Some(ballot), false) = (established_in, to.is_empty()) {
                let base = input.base.unwrap_or(membership);
                send(SendKind::CatchUp(ballot), base, membership.clone(), to)
            } else {
                Action::Wait
            }
        };
        let mut degraded = None;
        let action = match &plan {
            Plan::Wait => catch_up(),
            Plan::Establish => match input.base {
                Some(base) => establish_or_recover(input, membership, base, catch_up_to),
                None => Action::Wait,
            },
            Plan::Degraded(why) => {
                degraded = Some(why.clone());
                catch_up()
            }
            Plan::Begin { .. } if !input.may_begin || !input.may_step => catch_up(),
            Plan::Complete { .. } | Plan::RollBack { .. } if !input.may_step => catch_up(),
            Plan::Begin { .. } | Plan::Complete { .. } | Plan::RollBack { .. } => {
                match step(membership, &plan) {
                    Ok(proposed) => {
                        let to = union(&[membership, &proposed]);
                        send(SendKind::Step, membership, proposed, to)
                    }
                    // The plan only proposes steps the membership allows; a refusal here is a
                    // bug of the plan, reported rather than acted on.
                    Err(e) => {
                        degraded = Some(format!("the planned step is not valid: {e}"));
                        Action::Wait
                    }
                }
            }
        };
        Pass {
            record,
            action,
            plan: Some(plan),
            degraded,
        }
    }

    /// What the nodes that took `send` (`held`: those that hold its proposal now, each with the
    /// round it holds it in, as it answered) amount to, given the answers of the pass
    /// (`answers`: the others are counted as they answered before the send).
    pub fn sent(
        &mut self,
        send: &Send,
        held: &[(NodeId, Ballot)],
        answers: &BTreeMap<NodeId, Answer>,
    ) -> SendOutcome {
        let votes = |node: NodeId| match held.iter().find(|(n, _)| *n == node) {
            Some((_, ballot)) => Some((send.proposed.clone(), *ballot)),
            None => answers.get(&node).and_then(Answer::vote),
        };
        let established = || collision::is_established(&send.base, &send.proposed, votes);
        match send.kind {
            SendKind::CatchUp(_) => SendOutcome::Nothing,
            SendKind::Establish | SendKind::Accept(_) => {
                if established() {
                    SendOutcome::Record(send.proposed.clone())
                } else {
                    SendOutcome::Nothing
                }
            }
            SendKind::Step => {
                if send
                    .base
                    .is_write_quorum(|n| held.iter().any(|(h, _)| *h == n))
                    && established()
                {
                    // This driver's own step: the targets it fixed stay valid (a completion
                    // or roll back removes its own; a nested begin keeps the other's).
                    self.seen = Some(send.proposed.epoch);
                    SendOutcome::Record(send.proposed.clone())
                } else {
                    SendOutcome::ShortOfQuorum { held: held.len() }
                }
            }
        }
    }

    /// The accept of collision-recovery round `recover`, once the nodes of its base that
    /// promised it answered with their `votes` (None: too few promised; the next pass runs a
    /// higher round).
    pub fn promised(
        &mut self,
        recover: &Recover,
        votes: &BTreeMap<NodeId, collision::Vote>,
    ) -> Option<Send> {
        let chosen = collision::choose(&recover.base, votes, &recover.own)?;
        let to = union(&[&recover.base, &chosen]);
        Some(Send {
            kind: SendKind::Accept(recover.ballot),
            base: recover.base.clone(),
            proposed: chosen,
            to,
            over: BTreeMap::new(),
            catch_up_to: recover.catch_up_to,
        })
    }

    /// `epoch` is recorded in the volume metadata (at a write quorum of its nodes).
    pub fn recorded(&mut self, epoch: MembershipEpoch) {
        self.recorded = Some(self.recorded.map_or(epoch, |r| r.max(epoch)));
    }
}

/// What the driver saw of each node of `membership` and of its base (a step counts by its
/// base's nodes, members of `membership` or not: the new node of a replacement rolled back,
/// the old one of a completed one).
fn views(input: &PassInput<'_>, membership: &Membership) -> Vec<MemberView> {
    let mut nodes = membership.nodes();
    if let Some(base) = input.base.filter(|b| *b != membership) {
        nodes.extend(base.nodes());
    }
    nodes.sort_unstable();
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node| {
            let answer = input.answers.get(&node);
            MemberView {
                node,
                silent_for: match answer {
                    Some(_) => Duration::ZERO,
                    None => (input.silent_for)(node),
                },
                state: answer.map(|a| MemberState {
                    scl: a.scl,
                    history_epoch: a.history_epoch,
                    holds_current: a.membership.as_ref() == Some(membership),
                }),
            }
        })
        .collect()
}

/// Pushes the unestablished step `own` from `base` ([`establish`]), or, when the fast round
/// cannot decide `own`'s epoch, runs a collision-recovery round (`sixfold_proto::collision`):
/// a node of the base promised a round for it (it takes no fast-round step any more), or rival
/// steps split the base's nodes and no supersede can move them (a split whose deciding node
/// is silent, perhaps for good). An outranked node's occasional pass runs rounds too: a round
/// proposes no new step (only one of the epoch's rivals), and the node ranked first may be
/// one that holds a rival without being in it, which never drives the PG. Two drivers'
/// rounds may preempt each other; passes are far apart next to a round's two trips.
fn establish_or_recover(
    input: &PassInput<'_>,
    own: &Membership,
    base: &Membership,
    catch_up_to: Lsn,
) -> Action {
    let send = establish(input.answers, own, base, catch_up_to);
    let epoch = own.epoch;
    let from_base = || {
        input
            .answers
            .iter()
            .filter(|(node, _)| base.contains(**node))
            .map(|(_, a)| a)
    };
    // A classic round that some segment accepted but that is not established (its accept
    // reached too few, those that missed it still hold the fast round's): finish it, unless a
    // later round was promised (then only a new round decides).
    let accepted = from_base()
        .filter_map(|a| Some((a.membership.as_ref()?, a.ballot)))
        .filter(|(m, ballot)| m.epoch == epoch && ballot.is_classic())
        .max_by_key(|(_, ballot)| *ballot);
    if let Some((value, ballot)) = accepted {
        let later = from_base().any(|a| {
            a.promise
                .is_some_and(|p| p.epoch == epoch && p.ballot > ballot)
        });
        if !later {
            let to: Vec<NodeId> = union(&[base, value])
                .into_iter()
                .filter(|n| {
                    input
                        .answers
                        .get(n)
                        .is_some_and(|a| a.membership.as_ref() != Some(value) || a.ballot != ballot)
                })
                .collect();
            return Action::Send(Send {
                kind: SendKind::Accept(ballot),
                base: base.clone(),
                proposed: value.clone(),
                to,
                over: BTreeMap::new(),
                catch_up_to,
            });
        }
    }
    let promised = from_base().any(|a| a.promise.is_some_and(|p| p.epoch == epoch));
    let mut values: Vec<&Membership> = from_base()
        .filter_map(|a| a.membership.as_ref())
        .filter(|m| m.epoch == epoch)
        .collect();
    values.sort_unstable_by_key(|m| m.to_string());
    values.dedup();
    let split = values.len() > 1 && send.over.is_empty();
    if !(promised || split) {
        return Action::Send(send);
    }
    let seen = input
        .answers
        .values()
        .flat_map(|a| [a.ballot].into_iter().chain(a.promise.map(|p| p.ballot)));
    Action::Recover(Recover {
        base: base.clone(),
        ballot: Ballot::next(seen, input.driver),
        own: send.proposed.clone(),
        catch_up_to,
    })
}

/// The push of an unestablished step: the highest step of its epoch from `base` that the
/// answers show (this node's, `own`, or a rival's; see "Rival steps" in
/// `sixfold_proto::membership`), to the nodes of `base` and of that step that are behind it,
/// and to those that hold a rival it outranks which can never be established (some
/// configuration of `base` has 3 answers holding rivals that outrank it): those supersede it.
/// This node's own step is superseded the same way when a rival outranks it.
pub fn establish(
    answers: &BTreeMap<NodeId, Answer>,
    own: &Membership,
    base: &Membership,
    catch_up_to: Lsn,
) -> Send {
    let epoch = own.epoch;
    let top = answers
        .values()
        .filter(|a| a.membership_base.as_ref() == Some(base))
        .filter_map(|a| a.membership.as_ref())
        .filter(|m| m.epoch == epoch)
        .fold(own, |top, m| if m.outranks(top) { m } else { top });
    let outranks = |node: &NodeId, rival: &Membership| {
        answers
            .get(node)
            .and_then(|a| a.membership.as_ref())
            .is_some_and(|m| m.epoch == epoch && m.outranks(rival))
    };
    let dead = |rival: &Membership| {
        base.configs().iter().any(|config| {
            config.iter().filter(|n| outranks(n, rival)).count() > COPIES - WRITE_QUORUM
        })
    };
    let mut to = Vec::new();
    let mut over = BTreeMap::new();
    for (node, answer) in answers {
        if !base.contains(*node) && !top.contains(*node) {
            continue;
        }
        match &answer.membership {
            Some(held) if held == top || held.epoch > epoch => {}
            Some(held) if held.epoch == epoch => {
                if top.outranks(held) && dead(held) {
                    to.push(*node);
                    over.insert(*node, held.clone());
                }
            }
            // Behind (or holds none yet: a joining node).
            _ => to.push(*node),
        }
    }
    Send {
        kind: SendKind::Establish,
        base: base.clone(),
        proposed: top.clone(),
        to,
        over,
        catch_up_to,
    }
}

/// The nodes of all of `memberships`, sorted, once each.
fn union(memberships: &[&Membership]) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = memberships.iter().flat_map(|m| m.nodes()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// The membership a begin, complete or roll back plan leads to.
fn step(membership: &Membership, plan: &Plan) -> Result<Membership, MembershipError> {
    match plan {
        Plan::Begin {
            from,
            to,
            kind: ChangeKind::Repair,
        } => membership.begin(*from, *to),
        Plan::Begin {
            from,
            to,
            kind: ChangeKind::Move,
        } => membership.begin_move(*from, *to),
        Plan::Complete { to } => membership.complete(*to),
        Plan::RollBack { to, .. } => membership.roll_back(*to),
        _ => Err(MembershipError::NotAStep),
    }
}

/// The newest established membership among the answers that is newer than `own`, or of its
/// epoch with other members (`own` is then a rival step that lost). A membership counts as
/// established when the answers holding it form a write quorum of its base in one round
/// ([`collision::is_established`]; one with no base came from a writer, which takes it from
/// the metadata: established).
pub fn newest_established(
    answers: &BTreeMap<NodeId, Answer>,
    own: &Membership,
) -> Option<(Membership, Option<Membership>, Ballot)> {
    answers
        .values()
        .filter_map(|a| a.membership.clone().map(|m| (m, a.membership_base.clone())))
        .filter(|(m, _)| m.epoch > own.epoch || (m.epoch == own.epoch && m != own))
        .filter_map(|(m, base)| {
            let votes = |n: NodeId| answers.get(&n).and_then(Answer::vote);
            let ballot = match &base {
                None => Ballot::LEARNED,
                Some(base) => collision::established_in(base, &m, votes)?,
            };
            Some((m, base, ballot))
        })
        .max_by_key(|(m, _, _)| m.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(membership: &Membership, base: &Membership, ballot: Ballot) -> Answer {
        Answer {
            scl: Lsn::ZERO,
            history_epoch: Epoch(1),
            membership: Some(membership.clone()),
            membership_base: Some(base.clone()),
            ballot,
            promise: None,
        }
    }

    /// A step counts by the round each node answers it holds it in after the send. Found by
    /// review: a node that took the same membership in a classic round between the pass's
    /// question and the send was counted in the fast round with three others, and the driver
    /// recorded a membership that no round had established (a later round could choose another).
    #[test]
    fn a_send_counts_each_node_in_the_round_it_answers() {
        let base = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
        let v = base.begin(NodeId(6), NodeId(7)).expect("step");
        let mut answers = BTreeMap::new();
        for n in 1..=3 {
            answers.insert(NodeId(n), answer(&v, &base, Ballot::FAST));
        }
        let send = Send {
            kind: SendKind::Establish,
            base: base.clone(),
            proposed: v.clone(),
            to: vec![NodeId(4), NodeId(5)],
            over: BTreeMap::new(),
            catch_up_to: Lsn::ZERO,
        };
        let round = Ballot {
            number: 2,
            driver: NodeId(5),
        };
        let mut driver = PgDriver::default();
        assert_eq!(
            driver.sent(&send, &[(NodeId(4), round)], &answers),
            SendOutcome::Nothing,
            "3 in the fast round and 1 in round 2: not established"
        );
        assert_eq!(
            driver.sent(&send, &[(NodeId(4), Ballot::FAST)], &answers),
            SendOutcome::Record(v.clone()),
            "4 in the fast round"
        );
        // A writer's (learned) membership counts with every round.
        answers.insert(NodeId(5), answer(&v, &base, Ballot::LEARNED));
        assert_eq!(
            driver.sent(&send, &[(NodeId(4), round)], &answers),
            SendOutcome::Record(v),
            "3 fast + 1 learned: 4 in the fast round"
        );
    }
}
