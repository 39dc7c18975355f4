//! What a PG's repair driver does next: a pure decision over what it sees of the PG's nodes.
//! The driver ([`crate::repair`]) gathers the view, carries the decision out and looks again;
//! the simulation drives this same function.
//!
//! The order of the rules, each with why:
//! 1. **Establish before anything else.** A step counts once a write quorum of its base holds
//!    it (in one round: `sixfold_proto::collision`). Until then the driver only pushes it to the nodes that lag (a driver that died
//!    half-way, a node that was down): building a step on one that never reached a quorum could
//!    put the PG on a configuration that misses records a rival configuration acknowledged.
//! 2. **Finish what is under way.** For each replacement F -> G: complete it once G caught up
//!    (its SCL reaches the chain tail a recovery would have kept once the step was established:
//!    the highest SCL among answers on the newest truncation history that form a read quorum
//!    of every configuration; see `sixfold_proto::membership` for why that makes completion
//!    safe). The driver measures that target once per replacement (again if a writer's
//!    recovery changes the history) and keeps it: every record durable before the step is at
//!    or below it, and every record acknowledged after it is on 4 of G's configurations
//!    anyway, so G need not chase a tail that a busy writer keeps moving. Roll it back when G has
//!    been silent for `repair_after` (it cannot catch up), or when it repairs a lost F that
//!    answers again (F holds the data; G is not ready).
//! 3. **Begin a replacement** for one member that is silent for `repair_after` (a repair), or
//!    whose node is draining or removed (a move): a node of the same AZ that holds no segment of
//!    the PG, the least loaded ([`sixfold_proto::placement::replacement`]). With none, the PG
//!    stays degraded and the plan says why: it never puts a third copy in another AZ.
//!
//! One step per call: each is a new membership epoch, sealed at a write quorum before the next.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sixfold_proto::membership::{ChangeKind, Membership, CHANGES_MAX};
use sixfold_proto::nodes::{NodeList, NodeState};
use sixfold_proto::{placement, Epoch, Lsn, NodeId};

/// What the driver saw of one node of the PG's membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub node: NodeId,
    /// How long the node has not answered (zero: it answered this round).
    pub silent_for: Duration,
    /// Its answer this round, if it answered.
    pub state: Option<MemberState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub scl: Lsn,
    /// The epoch of its truncation history (the newest recovery it learned).
    pub history_epoch: Epoch,
    /// It holds exactly the driver's current membership.
    pub holds_current: bool,
}

/// Everything the plan depends on.
pub struct PgView<'a> {
    pub membership: &'a Membership,
    /// The membership `membership` was a step from (None: a writer's, from the metadata:
    /// established by definition).
    pub base: Option<&'a Membership>,
    /// The nodes of `membership` and of `base` (rule 1 counts a step by its base's nodes).
    pub members: &'a [MemberView],
    /// `membership` is established: no base, or a write quorum of the base holds it in one
    /// round (`sixfold_proto::collision::is_established`; the driver counts it, since the
    /// rounds are not in [`MemberState`]).
    pub established: bool,
    pub list: &'a NodeList,
    pub repair_after: Duration,
    /// The PG's placement key (ties between spare nodes are broken by hashing it).
    pub key: &'a str,
    /// The catch-up target the driver fixed for each joining node (see rule 2); a node
    /// without one is measured against the recovery tail of now.
    pub targets: &'a BTreeMap<NodeId, (Lsn, Epoch)>,
    /// Nodes that answer now: only those can take a member's place (a replacement rolled back
    /// because its node went silent is not begun again on that node).
    pub live: &'a BTreeSet<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The PG is healthy, or waits (a new member catching up).
    Wait,
    /// The current membership is not established yet: push it to the nodes that lag.
    Establish,
    /// Begin replacing `from` by `to`.
    Begin {
        from: NodeId,
        to: NodeId,
        kind: ChangeKind,
    },
    /// Complete the replacement by `to`.
    Complete { to: NodeId },
    /// Abandon the replacement by `to`.
    RollBack { to: NodeId, why: &'static str },
    /// A member needs replacing and nothing can take its place.
    Degraded(String),
}

impl PgView<'_> {
    fn member(&self, node: NodeId) -> Option<&MemberView> {
        self.members.iter().find(|m| m.node == node)
    }

    fn answering(&self, node: NodeId) -> Option<&MemberState> {
        self.member(node).and_then(|m| m.state.as_ref())
    }

    fn lost(&self, node: NodeId) -> bool {
        self.member(node)
            .is_none_or(|m| m.state.is_none() && m.silent_for >= self.repair_after)
    }

    fn leaving(&self, node: NodeId) -> bool {
        self.list
            .get(node)
            .is_none_or(|n| n.state != NodeState::Active)
    }

    /// The chain tail a recovery would keep now, if the answers make a read quorum of every
    /// configuration on the newest history (and that history's epoch).
    pub fn recovery_tail(&self) -> Option<(Lsn, Epoch)> {
        let newest = self
            .members
            .iter()
            .filter_map(|m| m.state.as_ref())
            .map(|s| s.history_epoch)
            .max()?;
        let complete = |node: NodeId| {
            self.answering(node)
                .is_some_and(|s| s.history_epoch == newest)
        };
        if !self.membership.is_read_quorum(complete) {
            return None;
        }
        let tail = self
            .members
            .iter()
            .filter_map(|m| m.state.as_ref())
            .filter(|s| s.history_epoch == newest)
            .map(|s| s.scl)
            .max()?;
        Some((tail, newest))
    }

    /// Whether `node` holds every record its catch-up target (or, without one, a recovery
    /// of now) needs.
    pub fn caught_up(&self, node: NodeId) -> bool {
        let Some(state) = self.answering(node) else {
            return false;
        };
        let target = match self.targets.get(&node) {
            Some(target) => Some(*target),
            None => self.recovery_tail(),
        };
        let Some((tail, newest)) = target else {
            return false;
        };
        state.history_epoch == newest && state.scl >= tail
    }
}

/// The driver's next step for one PG. `load` is how many segments a node holds (placement
/// prefers the least loaded).
pub fn plan(view: &PgView<'_>, load: impl Fn(NodeId) -> u64) -> Plan {
    let membership = view.membership;
    // 1. Establish.
    if view.base.is_some() && !view.established {
        return Plan::Establish;
    }
    // 2. Finish what is under way.
    for change in &membership.changes {
        if view.caught_up(change.to) {
            return Plan::Complete { to: change.to };
        }
        if view.lost(change.to) {
            return Plan::RollBack {
                to: change.to,
                why: "the new node is unreachable",
            };
        }
        if change.kind == ChangeKind::Repair
            && view.answering(change.from).is_some()
            && !view.leaving(change.from)
        {
            return Plan::RollBack {
                to: change.to,
                why: "the lost node answers again",
            };
        }
    }
    // 3. Begin one replacement: lost members first, then those leaving the cluster.
    if membership.changes.len() >= CHANGES_MAX {
        return Plan::Wait;
    }
    let replacing = |node: NodeId| membership.changes.iter().any(|c| c.from == node);
    let lost = membership
        .members
        .iter()
        .copied()
        .filter(|n| !replacing(*n) && view.lost(*n))
        .map(|n| (n, ChangeKind::Repair));
    let leaving = membership
        .members
        .iter()
        .copied()
        .filter(|n| !replacing(*n) && !view.lost(*n) && view.leaving(*n))
        .map(|n| (n, ChangeKind::Move));
    let mut degraded = Vec::new();
    for (from, kind) in lost.chain(leaving) {
        // Nodes that do not answer are no candidates: counted as holding a segment already.
        let mut excluded = membership.nodes();
        excluded.extend(
            view.list
                .nodes
                .iter()
                .map(|n| n.id)
                .filter(|n| !view.live.contains(n)),
        );
        match placement::replacement(view.list, &excluded, from, view.key, &load) {
            Some(to) => return Plan::Begin { from, to, kind },
            None => {
                let az = view.list.get(from).map_or("?", |n| n.az.as_str());
                degraded.push(format!(
                    "{from} needs replacing but AZ {az} has no active node without a segment \
                     of this PG (add a node to AZ {az})"
                ));
            }
        }
    }
    if degraded.is_empty() {
        Plan::Wait
    } else {
        Plan::Degraded(degraded.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixfold_proto::nodes::NodeRecord;

    /// Nodes 1..=9: 1-3 in AZ a, 4-6 in b, 7-9 in c; the PG on 1, 2, 4, 5, 7, 8.
    fn list() -> NodeList {
        let nodes = (1..=9u64)
            .map(|i| NodeRecord {
                id: NodeId(i),
                addr: format!("10.0.0.{i}:1"),
                az: ["a", "b", "c"][((i - 1) / 3) as usize].to_string(),
                state: NodeState::Active,
            })
            .collect();
        NodeList { version: 1, nodes }
    }

    fn membership() -> Membership {
        Membership::new([1, 2, 4, 5, 7, 8].map(NodeId).to_vec()).expect("valid")
    }

    const AFTER: Duration = Duration::from_secs(60);

    /// Every node of `m` answering with `scl`, except those in `silent` (silent for `secs`).
    fn members(m: &Membership, scl: u64, silent: &[(u64, u64)]) -> Vec<MemberView> {
        m.nodes()
            .into_iter()
            .map(
                |node| match silent.iter().find(|(n, _)| NodeId(*n) == node) {
                    Some((_, secs)) => MemberView {
                        node,
                        silent_for: Duration::from_secs(*secs),
                        state: None,
                    },
                    None => MemberView {
                        node,
                        silent_for: Duration::ZERO,
                        state: Some(MemberState {
                            scl: Lsn(scl),
                            history_epoch: Epoch(1),
                            holds_current: true,
                        }),
                    },
                },
            )
            .collect()
    }

    /// Established as the tests' views say (every holder in the fast round).
    fn counted(base: Option<&Membership>, view: &[MemberView]) -> bool {
        base.is_none_or(|base| {
            base.is_write_quorum(|n| {
                view.iter()
                    .any(|v| v.node == n && v.state.as_ref().is_some_and(|s| s.holds_current))
            })
        })
    }

    fn decide(
        m: &Membership,
        base: Option<&Membership>,
        view: &[MemberView],
        l: &NodeList,
    ) -> Plan {
        plan(
            &PgView {
                membership: m,
                base,
                members: view,
                established: counted(base, view),
                list: l,
                repair_after: AFTER,
                key: "v/pg/0",
                targets: &BTreeMap::new(),
                live: &(1..=9).map(NodeId).collect(),
            },
            |_| 0,
        )
    }

    #[test]
    fn a_healthy_pg_waits_and_a_briefly_silent_node_is_not_replaced() {
        let (l, m) = (list(), membership());
        assert_eq!(decide(&m, None, &members(&m, 9, &[]), &l), Plan::Wait);
        assert_eq!(
            decide(&m, None, &members(&m, 9, &[(1, 59)]), &l),
            Plan::Wait
        );
    }

    #[test]
    fn a_lost_node_is_replaced_in_its_own_az() {
        let (l, m) = (list(), membership());
        let plan = decide(&m, None, &members(&m, 9, &[(1, 60)]), &l);
        assert_eq!(
            plan,
            Plan::Begin {
                from: NodeId(1),
                to: NodeId(3),
                kind: ChangeKind::Repair
            },
            "node 3 is AZ a's spare"
        );
    }

    #[test]
    fn no_spare_in_the_az_means_degraded_never_a_third_copy_elsewhere() {
        let mut l = list();
        l.nodes.retain(|n| n.id != NodeId(3));
        let m = membership();
        match decide(&m, None, &members(&m, 9, &[(1, 600)]), &l) {
            Plan::Degraded(why) => assert!(why.contains("AZ a"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A spare that does not answer is no candidate: the PG stays degraded rather than begin a
    /// replacement that cannot finish (and roll it back, and begin it again...).
    #[test]
    fn a_silent_spare_is_not_chosen() {
        let (l, m) = (list(), membership());
        let view = members(&m, 9, &[(1, 600)]);
        let live: BTreeSet<NodeId> = [2, 4, 5, 7, 8, 6, 9].map(NodeId).into();
        let plan = plan(
            &PgView {
                membership: &m,
                base: None,
                members: &view,
                established: true,
                list: &l,
                repair_after: AFTER,
                key: "v/pg/0",
                targets: &BTreeMap::new(),
                live: &live,
            },
            |_| 0,
        );
        assert!(matches!(plan, Plan::Degraded(_)), "{plan:?}");
    }

    #[test]
    fn a_replacement_completes_once_the_new_node_caught_up() {
        let l = list();
        let base = membership();
        let m = base.begin(NodeId(1), NodeId(3)).expect("begin");
        let mut view = members(&m, 9, &[(1, 600)]);
        view.iter_mut()
            .find(|v| v.node == NodeId(3))
            .and_then(|v| v.state.as_mut())
            .expect("3 answers")
            .scl = Lsn(5);
        assert_eq!(
            decide(&m, Some(&base), &view, &l),
            Plan::Wait,
            "3 is at 5 of 9"
        );
        let view = members(&m, 9, &[(1, 600)]);
        assert_eq!(
            decide(&m, Some(&base), &view, &l),
            Plan::Complete { to: NodeId(3) }
        );
    }

    /// A busy writer keeps the tail moving: the fixed target lets the new node complete.
    #[test]
    fn the_catch_up_target_is_fixed_once() {
        let l = list();
        let base = membership();
        let m = base.begin(NodeId(1), NodeId(3)).expect("begin");
        let mut view = members(&m, 12, &[(1, 600)]);
        view.iter_mut()
            .find(|v| v.node == NodeId(3))
            .and_then(|v| v.state.as_mut())
            .expect("3 answers")
            .scl = Lsn(10);
        let decide_with = |targets: &BTreeMap<NodeId, (Lsn, Epoch)>| {
            plan(
                &PgView {
                    membership: &m,
                    base: Some(&base),
                    members: &view,
                    established: counted(Some(&base), &view),
                    list: &l,
                    repair_after: AFTER,
                    key: "k",
                    targets,
                    live: &(1..=9).map(NodeId).collect(),
                },
                |_| 0,
            )
        };
        assert_eq!(
            decide_with(&BTreeMap::new()),
            Plan::Wait,
            "the tail of now is 12"
        );
        let fixed = BTreeMap::from([(NodeId(3), (Lsn(9), Epoch(1)))]);
        assert_eq!(decide_with(&fixed), Plan::Complete { to: NodeId(3) });
        let other_history = BTreeMap::from([(NodeId(3), (Lsn(9), Epoch(2)))]);
        assert_eq!(
            decide_with(&other_history),
            Plan::Wait,
            "a recovery changed the history"
        );
    }

    #[test]
    fn a_lost_node_that_answers_again_rolls_its_repair_back_but_not_a_move() {
        let l = list();
        let base = membership();
        let repair = base.begin(NodeId(1), NodeId(3)).expect("begin");
        let mut view = members(&repair, 9, &[]);
        view.iter_mut()
            .find(|v| v.node == NodeId(3))
            .and_then(|v| v.state.as_mut())
            .expect("3 answers")
            .scl = Lsn(2);
        assert!(matches!(
            decide(&repair, Some(&base), &view, &l),
            Plan::RollBack { to: NodeId(3), .. }
        ));
        let moving = base.begin_move(NodeId(1), NodeId(3)).expect("move");
        assert_eq!(decide(&moving, Some(&base), &view, &l), Plan::Wait);
    }

    #[test]
    fn an_unestablished_step_is_pushed_before_anything_else() {
        let l = list();
        let base = membership();
        let m = base.begin(NodeId(1), NodeId(3)).expect("begin");
        let mut view = members(&m, 9, &[]);
        for v in view.iter_mut().filter(|v| [2, 4, 5].contains(&v.node.0)) {
            v.state.as_mut().expect("answers").holds_current = false;
        }
        assert_eq!(decide(&m, Some(&base), &view, &l), Plan::Establish);
    }

    #[test]
    fn a_draining_node_is_moved_and_a_silent_new_node_rolled_back() {
        let mut l = list();
        l.nodes[0].state = NodeState::Draining;
        let m = membership();
        assert_eq!(
            decide(&m, None, &members(&m, 9, &[]), &l),
            Plan::Begin {
                from: NodeId(1),
                to: NodeId(3),
                kind: ChangeKind::Move
            }
        );
        let moving = m.begin_move(NodeId(1), NodeId(3)).expect("move");
        let view = members(&moving, 9, &[(3, 60)]);
        assert!(matches!(
            decide(&moving, Some(&m), &view, &l),
            Plan::RollBack { to: NodeId(3), .. }
        ));
    }

    #[test]
    fn catch_up_needs_a_read_quorum_of_every_configuration() {
        let l = list();
        let base = membership();
        let m = base.begin(NodeId(1), NodeId(3)).expect("begin");
        // Only 2, 3 and 4 answer: not 3 of the old configuration (1 is lost), so nobody can
        // tell what the tail is.
        let view = members(&m, 9, &[(1, 600), (5, 600), (7, 600), (8, 600)]);
        assert!(!PgView {
            membership: &m,
            base: Some(&base),
            members: &view,
            established: counted(Some(&base), &view),
            list: &l,
            repair_after: AFTER,
            key: "k",
            targets: &BTreeMap::new(),
            live: &BTreeSet::new(),
        }
        .caught_up(NodeId(3)));
    }
}
