//! The repair driver: every node drives the membership changes of some of the PGs it holds a
//! segment of, with or without a writer mounted. What to do is [`crate::repair_pass`]'s pure
//! decision (itself built on [`crate::repair_plan`]); this module gathers what it needs and
//! carries it out.
//!
//! **Who drives a PG.** The nodes of the PG's membership rank themselves by a hash of (volume,
//! PG, node id). A node drives the PG when no node ranked above it answered its pings within
//! [`PEER_ALIVE_FOR`]. So one node drives while all are up, and the next takes over when it
//! goes down. An outranked node still makes a pass once every [`FALLBACK_EVERY`] (staggered by
//! rank) that takes no new step (it follows, records, establishes and catches up): the node
//! that outranks it may hold a stale view of the PG (it lagged, or was replaced and no longer
//! drives it) and otherwise nobody would. (Found by the
//! simulation: after a heal, every member deferred to a stale one.)
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
//! epoch per PG: writers follow it, never a node's unestablished view. When rival steps split a
//! PG so that neither can win without a node that does not answer, the driver decides the
//! epoch by a collision-recovery round (`sixfold_proto::collision`: promises from five nodes of
//! every configuration, then an accept), safe against any number of drivers doing the same.
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

use sixfold_proto::collision::{Ballot, Promise, Vote};
use sixfold_proto::membership::Membership;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::{
    ChangeMembershipRequest, NodeStatusRequest, PromiseMembershipRequest, PutPgMembershipRequest,
    SegmentRef, SegmentStateRequest,
};
use sixfold_proto::{placement, Epoch, Lsn, MembershipEpoch, NodeId, WRITE_QUORUM};
use sixfold_transport::Security;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::index::{DrivenView, SegmentKey};
use crate::members::ChangeMode;
use crate::peer::{self, PeerClient};
use crate::repair_pass::{
    Action, Answer, PassInput, PgDriver, Recover, Send, SendKind, SendOutcome,
};
use crate::repair_plan::Plan;
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
/// An outranked node looks at a PG once every this many passes anyway (rank-staggered): the
/// node that outranks it may hold a stale view and never drive it. Such a pass only follows,
/// records, establishes and catches up (`PassInput::may_step`): a new step from it could be a
/// rival of the ranked driver's, and rival steps can split a PG (see "Rival steps" in
/// `sixfold_proto::membership`).
const FALLBACK_EVERY: u64 = 10;
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
    /// Bytes per second this node spends catching segments up (gap-fill, hydration): see
    /// [`crate::bandwidth`]. 0: unbounded.
    pub bandwidth: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            repair_after: REPAIR_AFTER_DEFAULT,
            concurrency: CONCURRENCY_DEFAULT,
            enabled: true,
            bandwidth: crate::bandwidth::REPAIR_BANDWIDTH_DEFAULT,
        }
    }
}

/// What the driver knows of each node: when it last answered (the moment its answer arrived),
/// and since when it is watched.
///
/// A node is alive if it answered within `PEER_ALIVE_FOR` of the start of the current pass, not
/// of the moment a decision is taken: a pass may wait for silent nodes (a frozen process or a
/// network cut answers nothing, not even a refusal, and each call waits out its timeout), and
/// before this rule every node that did answer looked dead to the decisions taken after such
/// waits, so that no replacement could be placed anywhere (found by the nested-failure test).
struct Liveness {
    started: Instant,
    /// When the current pass began.
    pass_started: Instant,
    answered: HashMap<NodeId, Instant>,
    /// Nodes this pass's ping asked: those of them that did not answer are not asked again in
    /// the same pass (each question to a silent node waits out its timeout, and a pass asks
    /// the nodes of every PG it drives, one PG after the other).
    pinged: std::collections::HashSet<NodeId>,
}

impl Liveness {
    fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let since = self.answered.get(&node).copied().unwrap_or(self.started);
        now.saturating_duration_since(since)
    }

    /// Silent to this pass's ping and to everything else for `PEER_ALIVE_FOR` before it: not
    /// worth another question this pass. (A node whose ping alone timed out, NodeStatus being
    /// the heavier call, is still asked its segments' state: that answer keeps it alive.)
    fn silent_this_pass(&self, node: NodeId) -> bool {
        let recent = self.pass_started.checked_sub(PEER_ALIVE_FOR);
        self.pinged.contains(&node)
            && self
                .answered
                .get(&node)
                .is_none_or(|at| recent.is_none_or(|recent| *at < recent))
    }

    fn alive(&self, node: NodeId) -> bool {
        self.answered
            .get(&node)
            .is_some_and(|at| self.pass_started.saturating_duration_since(*at) < PEER_ALIVE_FOR)
    }
}

struct Driver {
    store: Store,
    config: RepairConfig,
    /// How this node proves itself to its peers.
    security: Security,
    liveness: Liveness,
    clients: HashMap<String, PeerClient>,
    degraded_logged: HashMap<SegmentKey, Instant>,
    /// What this driver remembers of each PG it drives (catch-up targets, what it recorded).
    pgs: HashMap<SegmentKey, PgDriver>,
    /// Passes made so far.
    passes: u64,
}

/// Drives repairs forever (the caller aborts the task on shutdown).
pub async fn run(store: Store, config: RepairConfig, security: Security) {
    if !config.enabled {
        tracing::info!("repair driver off (--no-repair)");
        return;
    }
    let mut driver = Driver {
        store,
        config,
        security,
        liveness: Liveness {
            started: Instant::now(),
            pass_started: Instant::now(),
            answered: HashMap::new(),
            pinged: std::collections::HashSet::new(),
        },
        clients: HashMap::new(),
        degraded_logged: HashMap::new(),
        pgs: HashMap::new(),
        passes: 0,
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
        let client = peer::client(&self.security, addr, CONNECT_TIMEOUT, CALL_TIMEOUT).ok()?;
        self.clients.insert(addr.to_string(), client.clone());
        Some(client)
    }

    async fn pass(&mut self) {
        let Some(list) = self.store.node_list() else {
            return; // no cluster yet: nothing can be placed
        };
        self.liveness.pass_started = Instant::now();
        self.ping(&list).await;
        let own = self.store.node_id();
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
        let mut member_of = std::collections::HashSet::new();
        for (key, membership, base) in memberships {
            if membership.contains(own) {
                member_of.insert(key.clone());
            }
            if !membership.contains(own) {
                self.store.note_driven(&key, None);
                continue; // a segment this node no longer belongs to
            }
            let mine = rank(&key, own);
            let outranked = membership
                .nodes()
                .into_iter()
                .any(|n| n != own && rank(&key, n) > mine && self.liveness.alive(n));
            // An outranked node still looks now and then: the node that outranks it may be
            // stuck on a stale view of the PG (it lags, or was replaced), and would never drive.
            let fallback =
                outranked && (self.passes.wrapping_add(u64::from(mine))) % FALLBACK_EVERY == 0;
            if outranked && !fallback {
                self.store.note_driven(&key, None);
                continue;
            }
            under_way += membership.changes.len();
            driven.push((key, membership, base, fallback));
        }
        self.passes = self.passes.wrapping_add(1);
        // What a driver knows of a PG it no longer belongs to is of no use; it keeps what it
        // knows of the others while outranked (its occasional passes need what it recorded).
        self.pgs.retain(|key, _| member_of.contains(key));
        for (key, membership, base, fallback) in driven {
            let may_begin = under_way < self.config.concurrency;
            match self
                .drive(
                    &list,
                    &key,
                    &membership,
                    base.as_ref(),
                    may_begin,
                    &load,
                    fallback,
                )
                .await
            {
                Ok(began) => under_way += usize::from(began),
                Err(error) => debug!(segment = %key, "repair pass: {error}"),
            }
        }
    }

    /// NodeStatus to every voter of the node list: who is alive.
    async fn ping(&mut self, list: &NodeList) {
        self.liveness.pinged.clear();
        let mut calls = JoinSet::new();
        for node in list.voters() {
            if node.id == self.store.node_id() {
                continue;
            }
            let Some(mut client) = self.client(&node.addr) else {
                continue;
            };
            let id = node.id;
            self.liveness.pinged.insert(id);
            calls.spawn(async move {
                let answered = client.node_status(NodeStatusRequest {}).await;
                (id, answered.map(|r| r.into_inner().node_id))
            });
        }
        self.liveness
            .answered
            .insert(self.store.node_id(), Instant::now());
        while let Some(joined) = calls.join_next().await {
            if let Ok((id, Ok(reported))) = joined {
                // A process at the address that is another node (a replaced machine) is not it.
                if reported == id.0 {
                    self.liveness.answered.insert(id, Instant::now());
                }
            }
        }
    }

    /// One pass for one PG ([`crate::repair_pass`] decides); returns whether it began a
    /// replacement. `fallback`: an outranked node's occasional pass (not reported as driven).
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &mut self,
        list: &NodeList,
        key: &SegmentKey,
        membership: &Membership,
        base: Option<&Membership>,
        may_begin: bool,
        load: &HashMap<NodeId, u64>,
        fallback: bool,
    ) -> Result<bool, String> {
        // The nodes of the membership and of its base: a step counts by its base's nodes.
        let mut addrs: BTreeMap<NodeId, String> = membership
            .nodes()
            .into_iter()
            .chain(base.map(Membership::nodes).unwrap_or_default())
            .filter_map(|n| list.get(n).map(|r| (n, r.addr.clone())))
            .collect();
        let answers = self.states(key, &addrs).await;
        let now = Instant::now();
        if !fallback {
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
        }
        let placement_key = placement::pg_key(&key.volume, key.pg.0);
        let live: BTreeSet<NodeId> = list
            .voters()
            .map(|n| n.id)
            .filter(|n| self.liveness.alive(*n))
            .collect();
        let liveness = &self.liveness;
        let silent_for = |node: NodeId| liveness.silent_for(node, now);
        let load = |node: NodeId| load.get(&node).copied().unwrap_or(0);
        let input = PassInput {
            driver: self.store.node_id(),
            membership,
            base,
            answers: &answers,
            silent_for: &silent_for,
            list,
            repair_after: self.config.repair_after,
            key: &placement_key,
            live: &live,
            load: &load,
            may_begin,
            may_step: !fallback,
        };
        let pg = self.pgs.entry(key.clone()).or_default();
        let pass = pg.pass(&input);
        debug!(segment = %key, plan = ?pass.plan, action = ?pass.action, live = live.len(), "repair pass");
        if let Some(established) = &pass.record {
            // Recorded right after the step, or else (a driver that died in between, metadata
            // nodes that did not answer, a PG the writer had not recorded yet) now.
            self.record(list, key, established, &addrs).await;
        }
        if pass.plan.is_some() {
            if let Some(why) = &pass.degraded {
                let due = self
                    .degraded_logged
                    .get(key)
                    .is_none_or(|at| at.elapsed() >= DEGRADED_REPORT_EVERY);
                if due {
                    self.degraded_logged.insert(key.clone(), Instant::now());
                    warn!(segment = %key, "PG degraded and cannot be repaired: {why}");
                }
            }
            self.store.note_degraded(key, pass.degraded.clone());
        }
        let send = match pass.action {
            Action::CatchUpSelf {
                membership,
                base,
                ballot,
            } => {
                info!(segment = %key, membership = %membership, "catching up with an established membership its peers hold");
                self.store
                    .catch_up_membership(key.clone(), membership, base, ballot)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(false);
            }
            Action::Wait => return Ok(false),
            Action::Send(send) => send,
            Action::Recover(recover) => {
                info!(segment = %key, ballot = %recover.ballot, base = %recover.base, "rival steps split the PG: running a collision-recovery round");
                let votes = self.promises(key, &recover, &addrs).await;
                let pg = self.pgs.entry(key.clone()).or_default();
                let Some(send) = pg.promised(&recover, &votes) else {
                    // Writes wait meanwhile (the nodes on either rival refuse the writer's
                    // older membership): the operator must know, and why.
                    self.store.note_degraded(
                        key,
                        Some(format!(
                            "rival membership steps split the PG and only {} of its nodes \
                             promised a collision-recovery round (5 of every configuration are \
                             needed): writes wait until more of them answer",
                            votes.len()
                        )),
                    );
                    return Err(format!(
                        "collision-recovery {} for {} won {} promise(s), short of 5 of every \
                         configuration; trying a higher round next pass",
                        recover.ballot,
                        recover.base,
                        votes.len(),
                    ));
                };
                info!(segment = %key, ballot = %recover.ballot, chosen = %send.proposed, "collision-recovery round chose");
                send
            }
        };
        // A step goes to every node of the old and the new membership.
        for node in send.proposed.nodes() {
            if let Some(record) = list.get(node) {
                addrs.insert(node, record.addr.clone());
            }
        }
        let held = self.send(key, &send, &addrs).await;
        let outcome = self
            .pgs
            .entry(key.clone())
            .or_default()
            .sent(&send, &held, &answers);
        match outcome {
            SendOutcome::Record(established) => {
                if send.kind == SendKind::Step {
                    info!(segment = %key, step = ?pass.plan, membership = %established, "membership changed");
                }
                self.record(list, key, &established, &addrs).await;
                Ok(matches!(pass.plan, Some(Plan::Begin { .. })))
            }
            SendOutcome::Nothing => Ok(false),
            SendOutcome::ShortOfQuorum { held } => Err(format!(
                "step to {} reached {held} node(s), short of a write quorum of {}",
                send.proposed, send.base
            )),
        }
    }

    /// SegmentState of every node (no seal, no membership check): who answers, and how.
    async fn states(
        &mut self,
        key: &SegmentKey,
        addrs: &BTreeMap<NodeId, String>,
    ) -> BTreeMap<NodeId, Answer> {
        let mut calls = JoinSet::new();
        for (node, addr) in addrs {
            if self.liveness.silent_this_pass(*node) {
                continue;
            }
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
        while let Some(joined) = calls.join_next().await {
            let Ok((node, Ok(response))) = joined else {
                continue;
            };
            let state = response.into_inner();
            self.liveness.answered.insert(node, Instant::now());
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
                    ballot: Ballot::from_wire(state.membership_ballot.as_ref()),
                    promise: (state.promised_epoch != 0).then(|| Promise {
                        epoch: MembershipEpoch(state.promised_epoch),
                        ballot: Ballot::from_wire(state.promised.as_ref()),
                    }),
                },
            );
        }
        answers
    }

    /// PromiseMembership of collision-recovery round `recover` to the nodes of its base;
    /// returns the votes of those that promised.
    async fn promises(
        &mut self,
        key: &SegmentKey,
        recover: &Recover,
        addrs: &BTreeMap<NodeId, String>,
    ) -> BTreeMap<NodeId, Vote> {
        let mut calls = JoinSet::new();
        for node in recover.base.nodes() {
            let Some(addr) = addrs
                .get(&node)
                .filter(|_| !self.liveness.silent_this_pass(node))
            else {
                continue;
            };
            let Some(mut client) = self.client(addr) else {
                continue;
            };
            let request = PromiseMembershipRequest {
                segment: Some(segment_ref(key)),
                base: Some(recover.base.to_wire()),
                ballot: recover.ballot.to_wire(),
            };
            calls.spawn(async move { (node, client.promise_membership(request).await) });
        }
        let mut votes = BTreeMap::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((node, Ok(response))) => {
                    let response = response.into_inner();
                    // A vote that does not decode counts as none (the choice then ignores it;
                    // a node that holds garbage cannot hold an established membership).
                    let vote = response
                        .membership
                        .as_ref()
                        .and_then(|m| Membership::from_wire(m).ok())
                        .map(|m| (m, Ballot::from_wire(response.accepted.as_ref())));
                    votes.insert(node, vote);
                }
                Ok((node, Err(status))) => {
                    debug!(segment = %key, %node, "promise refused: {}", status.message())
                }
                Err(_) => {}
            }
        }
        votes
    }

    /// `send`'s ChangeMembership to its nodes; returns the nodes that hold its proposal
    /// afterwards, each with the round it holds it in (as the node answers).
    async fn send(
        &mut self,
        key: &SegmentKey,
        send: &Send,
        addrs: &BTreeMap<NodeId, String>,
    ) -> Vec<(NodeId, Ballot)> {
        let peers: Vec<String> = send
            .proposed
            .nodes()
            .iter()
            .filter_map(|n| addrs.get(n).cloned())
            .collect();
        let mut calls = JoinSet::new();
        for node in &send.to {
            let Some(addr) = addrs
                .get(node)
                .filter(|_| !self.liveness.silent_this_pass(*node))
            else {
                continue;
            };
            let Some(mut client) = self.client(addr) else {
                continue;
            };
            let mode = send.mode(*node);
            let request = ChangeMembershipRequest {
                segment: Some(segment_ref(key)),
                base: Some(send.base.to_wire()),
                proposed: Some(send.proposed.to_wire()),
                peers: peers.clone(),
                catch_up_to: send.catch_up_to.0,
                catch_up: matches!(mode, ChangeMode::CatchUp(_)),
                superseded: match &mode {
                    ChangeMode::Supersede(superseded) => Some(superseded.to_wire()),
                    ChangeMode::Step | ChangeMode::CatchUp(_) | ChangeMode::Accept(_) => None,
                },
                ballot: match mode {
                    ChangeMode::Accept(ballot) | ChangeMode::CatchUp(ballot) => ballot.to_wire(),
                    ChangeMode::Step | ChangeMode::Supersede(_) => None,
                },
            };
            let node = *node;
            calls.spawn(async move { (node, client.change_membership(request).await) });
        }
        let mut held = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((node, Ok(response))) => {
                    let response = response.into_inner();
                    if response.holds {
                        held.push((node, Ballot::from_wire(response.held_ballot.as_ref())));
                    }
                }
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
            self.pgs
                .entry(key.clone())
                .or_default()
                .recorded(membership.epoch);
        }
    }
}

fn segment_ref(key: &SegmentKey) -> SegmentRef {
    SegmentRef {
        volume: key.volume.clone(),
        pg: key.pg.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass that waited out a silent node's timeouts (twice 3 s) still counts the nodes that
    /// answered its ping as alive when it decides, and does not ask the silent one again.
    #[test]
    fn liveness_is_judged_from_the_start_of_the_pass() {
        let start = Instant::now();
        let (answering, silent) = (NodeId(1), NodeId(2));
        let mut liveness = Liveness {
            started: start,
            pass_started: start,
            answered: HashMap::new(),
            pinged: [answering, silent].into(),
        };
        liveness.answered.insert(answering, start);
        // The pass's decisions come after PEER_ALIVE_FOR; the answer still counts.
        assert!(liveness.alive(answering));
        assert!(!liveness.alive(silent));
        assert!(liveness.silent_this_pass(silent));
        assert!(!liveness.silent_this_pass(answering));
        assert!(!liveness.silent_this_pass(NodeId(3)), "not pinged: asked");
        // The next pass starts later: the answer still spares a question that may time out...
        liveness.pass_started = start + Duration::from_secs(4);
        assert!(!liveness.silent_this_pass(answering));
        // ...and much later it no longer counts.
        liveness.pass_started = start + 2 * PEER_ALIVE_FOR + Duration::from_secs(1);
        assert!(!liveness.alive(answering));
        assert!(liveness.silent_this_pass(answering));
        assert_eq!(
            liveness.silent_for(silent, start + Duration::from_secs(7)),
            Duration::from_secs(7),
            "never answered: silent since watched"
        );
    }
}
