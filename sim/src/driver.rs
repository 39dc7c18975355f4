//! A simulated repair driver, running on one node. Its decisions are the real driver's:
//! `sixfold_node::repair_pass::PgDriver` (itself built on `sixfold_node::repair_plan`), fed what
//! the PG's nodes answered. This module only does what `node/src/repair.rs` does around it:
//! ask every node its state, wait for the answers, carry the decision out, count who took it,
//! record established memberships in the volume metadata.
//!
//! Unlike the real node, any node holding a segment may start a pass at any moment, so two or
//! more drivers of one PG often run at once: the real ranking only makes that rare, and the
//! protocol must stay safe when it happens (a partition, a flapping node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sixfold_node::repair_pass::{Action, Answer, PassInput, PgDriver, Recover, Send, SendOutcome};
use sixfold_proto::collision::{Ballot, Vote};
use sixfold_proto::membership::Membership;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::{placement, NodeId};

use crate::msg::Msg;
use crate::writer::{node_id, NODES};

/// Steps a driver waits for the answers to its questions (the real one's call timeout).
const ANSWER_STEPS: u64 = 30;
/// A node counts as alive for this many steps after it last answered (`PEER_ALIVE_FOR`).
const ALIVE_STEPS: u64 = 120;
/// One step of simulated time, as the plan measures it.
pub const STEP: Duration = Duration::from_millis(1);

enum Phase {
    Idle,
    /// Asked every node its state at `since`.
    Asking {
        since: u64,
        answers: BTreeMap<NodeId, Answer>,
    },
    /// Asked the nodes of a collision-recovery round's base for their promise at `since`.
    Promising {
        since: u64,
        recover: Recover,
        answers: BTreeMap<NodeId, Answer>,
        votes: BTreeMap<NodeId, Vote>,
    },
    /// Sent `send` at `since`; `held`: the nodes that took it.
    Sending {
        since: u64,
        send: Send,
        answers: BTreeMap<NodeId, Answer>,
        held: BTreeMap<NodeId, Ballot>,
    },
}

/// What a driver wants of the world after a message or a tick.
#[derive(Debug)]
pub enum Effect {
    /// Send `msg` to node `i`.
    Send(usize, Msg),
    /// Adopt this established membership on the driver's own node.
    CatchUpSelf {
        membership: Membership,
        base: Option<Membership>,
        ballot: sixfold_proto::collision::Ballot,
    },
    /// Record this established membership in the volume metadata.
    Record(Membership),
}

pub struct SimDriver {
    /// The node it runs on.
    pub node: usize,
    pg: PgDriver,
    phase: Phase,
    started: u64,
    answered: HashMap<NodeId, u64>,
    /// This pass may take new steps (false: an outranked node's occasional pass).
    may_step: bool,
}

impl SimDriver {
    /// A driver starting (again) at step `now`: it remembers nothing.
    pub fn new(node: usize, now: u64) -> SimDriver {
        SimDriver {
            node,
            pg: PgDriver::default(),
            phase: Phase::Idle,
            started: now,
            answered: HashMap::new(),
            may_step: true,
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }

    /// Starts a pass: asks every node (the PG's answer with their state; the others only show
    /// they are alive, as the real driver's pings do).
    pub fn start(&mut self, now: u64, may_step: bool, out: &mut Vec<Effect>) {
        if !self.is_idle() {
            return;
        }
        self.may_step = may_step;
        self.phase = Phase::Asking {
            since: now,
            answers: BTreeMap::new(),
        };
        for i in 0..NODES {
            out.push(Effect::Send(i, Msg::Probe));
        }
    }

    /// An answer from node `i`.
    pub fn on_msg(&mut self, i: usize, msg: Msg, now: u64) {
        let node = node_id(i);
        match (&mut self.phase, msg) {
            (Phase::Asking { answers, .. }, Msg::ProbeReply { answer }) => {
                self.answered.insert(node, now);
                if let Some(answer) = answer {
                    answers.insert(node, answer);
                }
            }
            // Answers to an earlier send or round (late, duplicated) do not count.
            (
                Phase::Sending { send, held, .. },
                Msg::ChangeAck {
                    proposed,
                    held: Some(ballot),
                },
            ) if proposed == send.proposed => {
                held.insert(node, ballot);
            }
            (
                Phase::Promising { recover, votes, .. },
                Msg::PromiseReply {
                    ballot,
                    vote: Some(vote),
                },
            ) if ballot == recover.ballot => {
                votes.insert(node, vote);
            }
            _ => {}
        }
    }

    /// Moves the pass on once its answers had time to come; `membership`/`base`: the PG as the
    /// driver's own node holds it now (None: it holds no segment, and drives nothing).
    pub fn tick(
        &mut self,
        now: u64,
        own: Option<(&Membership, Option<&Membership>)>,
        list: &NodeList,
        repair_after: Duration,
        out: &mut Vec<Effect>,
    ) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => {}
            Phase::Asking { since, answers } if now < since + ANSWER_STEPS => {
                self.phase = Phase::Asking { since, answers };
            }
            Phase::Asking { answers, .. } => {
                let Some((membership, base)) = own else {
                    return;
                };
                if !membership.contains(node_id(self.node)) {
                    return; // a segment this node no longer belongs to
                }
                self.pass(now, membership, base, answers, list, repair_after, out);
            }
            Phase::Promising {
                since,
                recover,
                answers,
                votes,
            } if now < since + ANSWER_STEPS => {
                self.phase = Phase::Promising {
                    since,
                    recover,
                    answers,
                    votes,
                };
            }
            Phase::Promising {
                recover,
                answers,
                votes,
                ..
            } => {
                if let Some(send) = self.pg.promised(&recover, &votes) {
                    crate::trace(now, || {
                        format!(
                            "driver {}: {} chose {} ({} votes)",
                            self.node,
                            recover.ballot,
                            send.proposed,
                            votes.len()
                        )
                    });
                    self.send(now, send, answers, out);
                }
            }
            Phase::Sending {
                since,
                send,
                answers,
                held,
            } if now < since + ANSWER_STEPS => {
                self.phase = Phase::Sending {
                    since,
                    send,
                    answers,
                    held,
                };
            }
            Phase::Sending {
                send,
                answers,
                held,
                ..
            } => {
                let held: Vec<(NodeId, Ballot)> = held.into_iter().collect();
                if let SendOutcome::Record(established) = self.pg.sent(&send, &held, &answers) {
                    out.push(Effect::Record(established));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pass(
        &mut self,
        now: u64,
        membership: &Membership,
        base: Option<&Membership>,
        answers: BTreeMap<NodeId, Answer>,
        list: &NodeList,
        repair_after: Duration,
        out: &mut Vec<Effect>,
    ) {
        let own = node_id(self.node);
        self.answered.insert(own, now);
        let silent_for = |node: NodeId| {
            let since = self.answered.get(&node).copied().unwrap_or(self.started);
            STEP * u32::try_from(now.saturating_sub(since)).unwrap_or(u32::MAX)
        };
        let live: BTreeSet<NodeId> = (0..NODES)
            .map(node_id)
            .filter(|n| {
                self.answered
                    .get(n)
                    .is_some_and(|at| now.saturating_sub(*at) < ALIVE_STEPS)
            })
            .collect();
        // Segments per node, as far as this PG shows them (the simulated volume has one PG).
        let load = |node: NodeId| u64::from(membership.contains(node));
        let key = placement::pg_key("sim", 0);
        let input = PassInput {
            driver: own,
            membership,
            base,
            answers: &answers,
            silent_for: &silent_for,
            list,
            repair_after,
            key: &key,
            live: &live,
            load: &load,
            may_begin: true,
            may_step: self.may_step,
        };
        let pass = self.pg.pass(&input);
        crate::trace(now, || {
            format!(
                "driver {}: {} answers, plan {:?}, action {:?}",
                self.node,
                answers.len(),
                pass.plan,
                pass.action
            )
        });
        if let Some(established) = pass.record {
            out.push(Effect::Record(established));
        }
        match pass.action {
            Action::CatchUpSelf {
                membership,
                base,
                ballot,
            } => out.push(Effect::CatchUpSelf {
                membership,
                base,
                ballot,
            }),
            Action::Send(send) => self.send(now, send, answers, out),
            Action::Recover(recover) => {
                for node in recover.base.nodes() {
                    out.push(Effect::Send(
                        crate::writer::index_of(node),
                        Msg::Promise {
                            base: recover.base.clone(),
                            ballot: recover.ballot,
                        },
                    ));
                }
                self.phase = Phase::Promising {
                    since: now,
                    recover,
                    answers,
                    votes: BTreeMap::new(),
                };
            }
            Action::Wait => {}
        }
    }

    /// Sends `send`'s ChangeMembership to its nodes and waits for their answers.
    fn send(
        &mut self,
        now: u64,
        send: Send,
        answers: BTreeMap<NodeId, Answer>,
        out: &mut Vec<Effect>,
    ) {
        for node in &send.to {
            let i = crate::writer::index_of(*node);
            out.push(Effect::Send(
                i,
                Msg::Change {
                    base: send.base.clone(),
                    proposed: send.proposed.clone(),
                    mode: send.mode(*node),
                },
            ));
        }
        self.phase = Phase::Sending {
            since: now,
            send,
            answers,
            held: BTreeMap::new(),
        };
    }

    /// The metadata took `epoch` (the world decides whether a record reaches a quorum).
    pub fn recorded(&mut self, membership: &Membership) {
        self.pg.recorded(membership.epoch);
    }
}
