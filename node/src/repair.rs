//! The repair driver: every node drives the membership changes of some of the PGs it holds a
//! segment of, with or without a writer mounted. What to do is [`crate::repair_plan`]'s pure
//! decision; this module gathers what it needs and carries it out.
//!
//! **Who drives a PG.** The nodes of the PG's membership rank themselves by a hash of (volume,
//! PG, node id). A node drives the PG when no node ranked above it answered its pings within
//! [`PEER_ALIVE_FOR`]. So one node drives while all are up, and the next takes over when it
//! goes down.
//!
//! **Why two drivers never race harmfully** (a partition, a flapping node can make two believe
//! they drive). Every step is a compare-and-set at the segments: a node adopts membership epoch
//! N+1 only as one step from the base N it is sent with, and refuses an N+1 with other members
//! than the one it holds ([`sixfold_proto::membership::Membership::decide_adopt`]). A step
//! counts only once a write quorum of its base holds it, and two rival steps from one base
//! cannot both reach a write quorum of it (two write quorums of a configuration meet). A driver
//! builds a step only on an established one ([`crate::repair_plan`], rule 1), so the loser of a
//! race only leaves a minority of nodes on a dead branch, which the winner's next step (or a
//! roll back) overrides. The volume metadata is updated after each established step, by
//! epoch per PG: writers follow it, never a node's unestablished view.
//!
//! **Each pass, per PG driven.** Ask every node of the membership its state (SCL, truncation
//! history, membership); catch this node up if a peer holds a newer established membership;
//! plan; carry out: push an unestablished step to the nodes that lag; or send a new step to
//! every node of the old and new membership, count a write quorum of the old, and record it in
//! the metadata (PutPgMembership to every node: those that hold the volume's metadata merge it,
//! and four of its six must). A replacement's new node is told the chain tail to reach
//! (`catch_up_to`) and fills it from its peers through gap-fill and hydration, bounded as they
//! are. At most [`RepairConfig::concurrency`] replacements this node drives are under way at
//! once.
//!
//! Crash consistency: nothing of its own. Steps are durable at the segments; a driver that dies
//! half-way leaves a step that the next driver establishes (rule 1) or overrides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sixfold_proto::membership::{ChangeKind, Membership};
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::{
    ChangeMembershipRequest, NodeStatusRequest, PutPgMembershipRequest, SegmentRef,
    SegmentStateRequest,
};
use sixfold_proto::{placement, Epoch, Lsn, MembershipEpoch, NodeId, WRITE_QUORUM};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::index::{DrivenView, SegmentKey};
use crate::peer::{self, PeerClient};
use crate::repair_plan::{self, MemberState, MemberView, PgView, Plan};
use crate::store::Store;

/// How often the driver looks at the PGs it drives.
pub const DRIVE_INTERVAL: Duration = Duration::from_millis(1000);
/// A peer counts as alive for this long after it last answered.
pub const PEER_ALIVE_FOR: Duration = Duration::from_secs(5);
/// Timeouts of one call to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Default of `--repair-after`.
pub const REPAIR_AFTER_DEFAULT: Duration = Duration::from_secs(300);
/// Default bound on the replacements one driver has under way at once.
pub const CONCURRENCY_DEFAULT: usize = 8;
/// How often a PG that stays degraded is logged again.
const DEGRADED_REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// A member unreachable this long is replaced.
    pub repair_after: Duration,
    /// Most replacements under way at once among the PGs this node drives.
    pub concurrency: usize,
    /// False: this node drives no repair (the others still do).
    pub enabled: bool,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            repair_after: REPAIR_AFTER_DEFAULT,
            concurrency: CONCURRENCY_DEFAULT,
            enabled: true,
        }
    }
}

/// What the driver knows of each node: when it last answered, and since when it is watched.
struct Liveness {
    started: Instant,
    answered: HashMap<NodeId, Instant>,
}

impl Liveness {
    fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let since = self.answered.get(&node).copied().unwrap_or(self.started);
        now.saturating_duration_since(since)
    }

    fn alive(&self, node: NodeId, now: Instant) -> bool {
        self.answered
            .get(&node)
            .is_some_and(|at| now.saturating_duration_since(*at) < PEER_ALIVE_FOR)
    }
}

struct Driver {
    store: Store,
    config: RepairConfig,
    liveness: Liveness,
    clients: HashMap<String, PeerClient>,
    degraded_logged: HashMap<SegmentKey, Instant>,
    /// Catch-up targets of the joining nodes of the PGs this node drives (rule 2 of
    /// [`crate::repair_plan`]), valid only while the membership epoch is the one this driver
    /// last saw or made itself (`seen`): a target fixed for a replacement that was rolled back
    /// and begun again by another driver meanwhile would be stale.
    targets: HashMap<SegmentKey, BTreeMap<NodeId, (Lsn, Epoch)>>,
    seen: HashMap<SegmentKey, MembershipEpoch>,
    /// The newest membership epoch of each PG this driver recorded in the volume metadata
    /// (at 4 of its 6 nodes); recording is retried every pass until it is.
    recorded: HashMap<SegmentKey, MembershipEpoch>,
}

/// Drives repairs forever (the caller aborts the task on shutdown).
pub async fn run(store: Store, config: RepairConfig) {
    if !config.enabled {
        tracing::info!("repair driver off (--no-repair)");
        return;
    }
    let mut driver = Driver {
        store,
        config,
        liveness: Liveness {
            started: Instant::now(),
            answered: HashMap::new(),
        },
        clients: HashMap::new(),
        degraded_logged: HashMap::new(),
        targets: HashMap::new(),
        seen: HashMap::new(),
        recorded: HashMap::new(),
    };
    let mut ticker = tokio::time::interval(DRIVE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        driver.pass().await;
    }
}

/// The rank of `node` for driving `key` (higher drives).
fn rank(key: &SegmentKey, node: NodeId) -> u32 {
    crc32c::crc32c(format!("{}/{}/{}", key.volume, key.pg.0, node.0).as_bytes())
}

impl Driver {
    fn client(&mut self, addr: &str) -> Option<PeerClient> {
        if let Some(client) = self.clients.get(addr) {
            return Some(client.clone());
        }
        let client = peer::client(addr, CONNECT_TIMEOUT, CALL_TIMEOUT).ok()?;
        self.clients.insert(addr.to_string(), client.clone());
        Some(client)
    }

    async fn pass(&mut self) {
        let Some(list) = self.store.node_list() else {
            return; // no cluster yet: nothing can be placed
        };
        self.ping(&list).await;
        let own = self.store.node_id();
        let now = Instant::now();
        let mut under_way = 0;
        let mut driven = Vec::new();
        let memberships = self.store.segment_memberships();
        // Segments per node, as this node's segments' memberships show them (placement
        // prefers the least loaded): counted once per pass.
        let mut load: HashMap<NodeId, u64> = HashMap::new();
        for (_, membership, _) in &memberships {
            for node in membership.nodes() {
                *load.entry(node).or_default() += 1;
            }
        }
        for (key, membership, base) in memberships {
            if !membership.contains(own) {
                self.store.note_driven(&key, None);
                continue; // a segment this node no longer belongs to
            }
            let mine = rank(&key, own);
            let outranked = membership
                .nodes()
                .into_iter()
                .any(|n| n != own && rank(&key, n) > mine && self.liveness.alive(n, now));
            if outranked {
                self.store.note_driven(&key, None);
                continue;
            }
            under_way += membership.changes.len();
            driven.push((key, membership, base));
        }
        // What a driver knows of a PG it stopped driving is stale by the time it drives it again.
        self.targets
            .retain(|key, _| driven.iter().any(|(k, _, _)| k == key));
        self.seen
            .retain(|key, _| driven.iter().any(|(k, _, _)| k == key));
        for (key, membership, base) in driven {
            let may_begin = under_way < self.config.concurrency;
            match self
                .drive(&list, &key, &membership, base.as_ref(), may_begin, &load)
                .await
            {
                Ok(began) => under_way += usize::from(began),
                Err(error) => debug!(segment = %key, "repair pass: {error}"),
            }
        }
    }

    /// NodeStatus to every voter of the node list: who is alive.
    async fn ping(&mut self, list: &NodeList) {
        let mut calls = JoinSet::new();
        for node in list.voters() {
            if node.id == self.store.node_id() {
                continue;
            }
            let Some(mut client) = self.client(&node.addr) else {
                continue;
            };
            let id = node.id;
            calls.spawn(async move {
                let answered = client.node_status(NodeStatusRequest {}).await;
                (id, answered.map(|r| r.into_inner().node_id))
            });
        }
        let now = Instant::now();
        self.liveness.answered.insert(self.store.node_id(), now);
        while let Some(joined) = calls.join_next().await {
            if let Ok((id, Ok(reported))) = joined {
                // A process at the address that is another node (a replaced machine) is not it.
                if reported == id.0 {
                    self.liveness.answered.insert(id, now);
                }
            }
        }
    }

    /// One step for one PG; returns whether it began a replacement.
    async fn drive(
        &mut self,
        list: &NodeList,
        key: &SegmentKey,
        membership: &Membership,
        base: Option<&Membership>,
        may_begin: bool,
        load: &HashMap<NodeId, u64>,
    ) -> Result<bool, String> {
        let addrs: BTreeMap<NodeId, String> = membership
            .nodes()
            .into_iter()
            .filter_map(|n| list.get(n).map(|r| (n, r.addr.clone())))
            .collect();
        let answers = self.states(key, &addrs).await;
        // Peers on an established membership newer than this node's (or an established rival
        // of its epoch, this node holding a step that lost): catch this node up first.
        if let Some((newer, newer_base)) = newest_established(&answers, membership) {
            info!(segment = %key, membership = %newer, "catching up with an established membership its peers hold");
            self.store
                .catch_up_membership(key.clone(), newer, newer_base)
                .await
                .map_err(|e| e.to_string())?;
            self.targets.remove(key);
            return Ok(false);
        }
        if self.seen.get(key) != Some(&membership.epoch) {
            self.targets.remove(key);
            self.seen.insert(key.clone(), membership.epoch);
        }
        let now = Instant::now();
        let members: Vec<MemberView> = membership
            .nodes()
            .into_iter()
            .map(|node| MemberView {
                node,
                silent_for: match answers.get(&node) {
                    Some(_) => Duration::ZERO,
                    None => self.liveness.silent_for(node, now),
                },
                state: answers.get(&node).map(|a| MemberState {
                    scl: a.scl,
                    history_epoch: a.history_epoch,
                    holds_current: a.membership.as_ref() == Some(membership),
                }),
            })
            .collect();
        self.store.note_driven(
            key,
            Some(DrivenView {
                answering: membership
                    .members
                    .iter()
                    .filter(|n| answers.contains_key(n))
                    .count(),
                changes: membership.changes.len(),
            }),
        );
        let placement_key = placement::pg_key(&key.volume, key.pg.0);
        let empty = BTreeMap::new();
        let live: BTreeSet<NodeId> = list
            .voters()
            .map(|n| n.id)
            .filter(|n| self.liveness.alive(*n, now))
            .collect();
        let view = PgView {
            membership,
            base,
            members: &members,
            list,
            repair_after: self.config.repair_after,
            key: &placement_key,
            targets: &empty,
            live: &live,
        };
        let now_tail = view.recovery_tail();
        let catch_up_to = now_tail.map_or(Lsn::ZERO, |(tail, _)| tail);
        // Fix each joining node's target once its step is established (again after a writer's
        // recovery changed the history).
        let established = base.is_none_or(|base| base.is_write_quorum(|n| holds(&members, n)));
        let targets = self.targets.entry(key.clone()).or_default();
        targets.retain(|node, _| membership.changes.iter().any(|c| c.to == *node));
        if let (true, Some((tail, history))) = (established, now_tail) {
            for change in &membership.changes {
                let fixed = targets.get(&change.to).is_some_and(|(_, h)| *h == history);
                if !fixed {
                    targets.insert(change.to, (tail, history));
                }
            }
        }
        let targets = targets.clone();
        let view = PgView {
            targets: &targets,
            ..view
        };
        let plan = repair_plan::plan(&view, |node| load.get(&node).copied().unwrap_or(0));
        if established && self.recorded.get(key) != Some(&membership.epoch) {
            // Recorded right after the step, or else (a driver that died in between, metadata
            // nodes that did not answer, a PG the writer had not recorded yet) now.
            self.record(list, key, membership, &addrs).await;
        }
        let proposed = match &plan {
            Plan::Wait => {
                // Nodes that lag (away during a step) are caught up; a new member catching up
                // needs its target and its peers (again after a restart of either side).
                let mut lagging: Vec<NodeId> = members
                    .iter()
                    .filter(|m| m.state.as_ref().is_some_and(|s| !s.holds_current))
                    .map(|m| m.node)
                    .collect();
                lagging.extend(membership.changes.iter().map(|c| c.to));
                if established && !lagging.is_empty() {
                    let base = base.unwrap_or(membership);
                    self.send(key, base, membership, &addrs, catch_up_to, &lagging, true)
                        .await;
                }
                return Ok(false);
            }
            Plan::Establish => {
                let lagging: Vec<NodeId> = members
                    .iter()
                    .filter(|m| m.state.as_ref().is_some_and(|s| !s.holds_current))
                    .map(|m| m.node)
                    .collect();
                if let Some(base) = base {
                    let held = self
                        .send(key, base, membership, &addrs, catch_up_to, &lagging, false)
                        .await;
                    if base.is_write_quorum(|n| held.contains(&n) || holds(&members, n)) {
                        self.record(list, key, membership, &addrs).await;
                    }
                }
                return Ok(false);
            }
            Plan::Degraded(why) => {
                let due = self
                    .degraded_logged
                    .get(key)
                    .is_none_or(|at| at.elapsed() >= DEGRADED_REPORT_EVERY);
                if due {
                    self.degraded_logged.insert(key.clone(), Instant::now());
                    warn!(segment = %key, "PG degraded and cannot be repaired: {why}");
                }
                self.store.note_degraded(key, Some(why.clone()));
                return Ok(false);
            }
            Plan::Begin { .. } if !may_begin => return Ok(false),
            Plan::Begin { from, to, kind } => {
                let step = match kind {
                    ChangeKind::Repair => membership.begin(*from, *to),
                    ChangeKind::Move => membership.begin_move(*from, *to),
                };
                step.map_err(|e| e.to_string())?
            }
            Plan::Complete { to } => membership.complete(*to).map_err(|e| e.to_string())?,
            Plan::RollBack { to, .. } => membership.roll_back(*to).map_err(|e| e.to_string())?,
        };
        self.store.note_degraded(key, None);
        // The new step goes to every node of the old and the new membership.
        let mut addrs = addrs;
        for node in proposed.nodes() {
            if let Some(record) = list.get(node) {
                addrs.insert(node, record.addr.clone());
            }
        }
        let targets: Vec<NodeId> = addrs.keys().copied().collect();
        let held = self
            .send(
                key,
                membership,
                &proposed,
                &addrs,
                catch_up_to,
                &targets,
                false,
            )
            .await;
        if !membership.is_write_quorum(|n| held.contains(&n)) {
            return Err(format!(
                "step to {proposed} reached {} node(s), short of a write quorum of {membership}",
                held.len()
            ));
        }
        info!(segment = %key, step = ?plan, membership = %proposed, "membership changed");
        // This driver's own step: the targets it fixed stay valid (a completion or roll back
        // removes its own; a nested begin keeps the other's).
        self.seen.insert(key.clone(), proposed.epoch);
        self.record(list, key, &proposed, &addrs).await;
        Ok(matches!(plan, Plan::Begin { .. }))
    }

    /// SegmentState of every node (no seal, no membership check): who answers, and how.
    async fn states(
        &mut self,
        key: &SegmentKey,
        addrs: &BTreeMap<NodeId, String>,
    ) -> BTreeMap<NodeId, Answer> {
        let mut calls = JoinSet::new();
        for (node, addr) in addrs {
            let Some(mut client) = self.client(addr) else {
                continue;
            };
            let request = SegmentStateRequest {
                segment: Some(segment_ref(key)),
                seal_epoch: 0,
                learn: Vec::new(),
                membership: None,
            };
            let node = *node;
            calls.spawn(async move { (node, client.segment_state(request).await) });
        }
        let mut answers = BTreeMap::new();
        let now = Instant::now();
        while let Some(joined) = calls.join_next().await {
            let Ok((node, Ok(response))) = joined else {
                continue;
            };
            let state = response.into_inner();
            self.liveness.answered.insert(node, now);
            let decode = |m: Option<&sixfold_proto::wire::Membership>| {
                m.and_then(|m| Membership::from_wire(m).ok())
            };
            answers.insert(
                node,
                Answer {
                    scl: Lsn(state.scl),
                    history_epoch: Epoch(
                        state.truncations.iter().map(|t| t.epoch).max().unwrap_or(0),
                    ),
                    membership: decode(state.membership.as_ref()),
                    membership_base: decode(state.membership_base.as_ref()),
                },
            );
        }
        answers
    }

    /// ChangeMembership(`base` -> `proposed`) to `targets` (`catch_up`: not a step, an
    /// established membership for nodes that lag); returns the nodes that hold `proposed`
    /// afterwards.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        key: &SegmentKey,
        base: &Membership,
        proposed: &Membership,
        addrs: &BTreeMap<NodeId, String>,
        catch_up_to: Lsn,
        targets: &[NodeId],
        catch_up: bool,
    ) -> Vec<NodeId> {
        let peers: Vec<String> = proposed
            .nodes()
            .iter()
            .filter_map(|n| addrs.get(n).cloned())
            .collect();
        let mut calls = JoinSet::new();
        for node in targets {
            let Some(addr) = addrs.get(node) else {
                continue;
            };
            let Some(mut client) = self.client(addr) else {
                continue;
            };
            let request = ChangeMembershipRequest {
                segment: Some(segment_ref(key)),
                base: Some(base.to_wire()),
                proposed: Some(proposed.to_wire()),
                peers: peers.clone(),
                catch_up_to: catch_up_to.0,
                catch_up,
            };
            let node = *node;
            calls.spawn(async move { (node, client.change_membership(request).await) });
        }
        let mut held = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((node, Ok(_))) => held.push(node),
                Ok((node, Err(status))) => {
                    debug!(segment = %key, %node, "membership step refused: {}", status.message())
                }
                Err(_) => {}
            }
        }
        held
    }

    /// Records `membership` in the volume metadata: every voter is asked, those that hold the
    /// volume's metadata merge it; four of them must.
    async fn record(
        &mut self,
        list: &NodeList,
        key: &SegmentKey,
        membership: &Membership,
        addrs: &BTreeMap<NodeId, String>,
    ) {
        let nodes: Vec<String> = membership
            .nodes()
            .iter()
            .filter_map(|n| addrs.get(n).cloned())
            .collect();
        let mut calls = JoinSet::new();
        for voter in list.voters() {
            let Some(mut client) = self.client(&voter.addr) else {
                continue;
            };
            let request = PutPgMembershipRequest {
                volume: key.volume.clone(),
                pg: key.pg.0,
                membership: Some(membership.to_wire()),
                nodes: nodes.clone(),
            };
            calls.spawn(async move { client.put_pg_membership(request).await });
        }
        let mut recorded = 0;
        while let Some(joined) = calls.join_next().await {
            if let Ok(Ok(response)) = joined {
                if response.into_inner().epoch >= membership.epoch.0 {
                    recorded += 1;
                }
            }
        }
        if recorded < WRITE_QUORUM {
            warn!(segment = %key, recorded, membership = %membership, "the metadata holds the PG's new membership on fewer than 4 nodes; trying again next pass");
        } else {
            self.recorded.insert(key.clone(), membership.epoch);
        }
    }
}

/// A node's SegmentState answer, as the driver uses it.
struct Answer {
    scl: Lsn,
    history_epoch: Epoch,
    membership: Option<Membership>,
    membership_base: Option<Membership>,
}

/// The newest established membership among the answers that is newer than `own`, or of its
/// epoch with other members (`own` is then a rival step that lost). A membership counts as
/// established when the answers holding it form a write quorum of its base (one with no base
/// came from a writer, which takes it from the metadata: established).
fn newest_established(
    answers: &BTreeMap<NodeId, Answer>,
    own: &Membership,
) -> Option<(Membership, Option<Membership>)> {
    answers
        .values()
        .filter_map(|a| a.membership.clone().map(|m| (m, a.membership_base.clone())))
        .filter(|(m, _)| m.epoch > own.epoch || (m.epoch == own.epoch && m != own))
        .filter(|(m, base)| {
            let holders = |n: NodeId| {
                answers
                    .get(&n)
                    .is_some_and(|a| a.membership.as_ref() == Some(m))
            };
            base.as_ref()
                .is_none_or(|base| base.is_write_quorum(holders))
        })
        .max_by_key(|(m, _)| m.epoch)
}

fn holds(members: &[MemberView], node: NodeId) -> bool {
    members
        .iter()
        .any(|m| m.node == node && m.state.as_ref().is_some_and(|s| s.holds_current))
}

fn segment_ref(key: &SegmentKey) -> SegmentRef {
    SegmentRef {
        volume: key.volume.clone(),
        pg: key.pg.0,
    }
}
