//! The simulated world: six nodes (two per AZ), writers, a network, a seeded fault schedule, and
//! the invariants checked after every step.
//!
//! Faults: messages dropped, duplicated, delayed and reordered; nodes crashed and restarted;
//! nodes and whole AZs cut off and healed; writers crashed (a new one recovers) and writers
//! taken over while still running (the old one must be fenced). At the end everything heals and
//! the newest writer must open and complete a flush (liveness).
//!
//! Invariants:
//! - I1 durability: when a writer's recovery seals, every page of the chain it keeps holds a value
//!   allowed by the flushes that returned before: the value at the latest returned flush, or a
//!   value written after it (unflushed writes may or may not survive, page by page).
//! - I2 reads: every segment the newest open writer may read from (its SCL at or above the
//!   writer's VDL) serves every page as of VDL exactly as the writer wrote it.
//! - I3 no resurrection: no segment holds, on its chain, a record of an epoch older than a
//!   truncation it applied and above that truncation's point.
//! - I4 fencing: a flush that returns for a writer covers only records that every newer writer's
//!   recovery kept, and at most one writer (one epoch) completes flushes after a newer one opened.
//! - I5 memberships: at most one membership is established per membership epoch, and the
//!   volume metadata records only established ones.
//! - I6 durability across membership changes: every flushed record lies on a write quorum of
//!   some configuration of the newest established membership.
//! - the real state machines' own invariants (`Segment::check_invariants`,
//!   `Ledger::check_invariants`).
//! - liveness: after the network heals and all but up to 2 nodes are back (1 when rival steps
//!   split the PG: it stays down for good), the newest writer
//!   opens and a flush returns.
//!
//! Found by this simulation and fixed in the real code: capping a sealed answer's SCL at a
//! truncation it missed (lost flushed records); a recovered chain held by one segment only,
//! counted durable at once (lost on the next recovery); half-made truncations of a recovery that
//! died spreading by gossip and stranding a later writer (histories are now authoritative for
//! older epochs, and a sealed segment adopts no history but its sealing writer's).

use std::collections::{HashMap, HashSet};

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sixfold_proto::membership::Membership;
use sixfold_proto::nodes::{NodeList, NodeRecord, NodeState};
use sixfold_proto::{Epoch, Lsn, MembershipEpoch, NodeId, WRITE_QUORUM};

use crate::driver::{Effect, SimDriver, STEP};
use crate::msg::{Addr, Msg, Rec};
use crate::node::SimNode;
use crate::writer::{first_membership, index_of, node_id, Event, Phase, SimWriter, NODES};
use crate::Variant;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub steps: u64,
    pub variant: Variant,
    pub pages: u64,
    pub lal: u64,
    /// A member silent this long is replaced (`--repair-after`).
    pub repair_after: Duration,
}

impl Config {
    pub fn new(seed: u64, variant: Variant) -> Config {
        Config {
            seed,
            steps: 1000,
            variant,
            pages: 6,
            lal: 24,
            repair_after: STEP * 200,
        }
    }
}

/// What a schedule did (for the summary line of a run of many).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub writers: usize,
    pub flushes: usize,
    pub node_crashes: usize,
    pub messages: usize,
    /// Membership epochs the volume metadata went through (steps recorded).
    pub membership_steps: u64,
    /// Promise requests of collision-recovery rounds the drivers sent.
    pub promises: u64,
    /// Whether rival steps split the PG when the network healed: one node then stayed down for
    /// good, and a collision-recovery round had to decide without it.
    pub split_at_heal: bool,
}

struct Envelope {
    from: Addr,
    to: Addr,
    at: u64,
    msg: Msg,
}

struct World {
    config: Config,
    rng: StdRng,
    now: u64,
    nodes: Vec<SimNode>,
    /// When each node that is down comes back (None: up, or lost until the end).
    down_until: Vec<Option<u64>>,
    drivers: Vec<SimDriver>,
    list: NodeList,
    /// The PG's membership as the volume metadata records it.
    meta: Membership,
    /// Every membership seen established (a write quorum of its base held it), by epoch (I5).
    established: HashMap<MembershipEpoch, Membership>,
    writers: Vec<SimWriter>,
    net: Vec<Envelope>,
    cut: HashSet<usize>,
    drops: bool,
    /// Allowed values of each page (I1): the value at the latest returned flush, and every value
    /// written since.
    allowed: HashMap<u64, HashSet<u64>>,
    /// Epoch of the writer whose flush set `allowed` last, and that flush (writer, target).
    allowed_epoch: Epoch,
    last_flush: Option<(usize, Lsn)>,
    /// Per writer that sealed: the (LSN, epoch) of every record its recovery kept.
    kept: HashMap<usize, HashSet<(Lsn, Epoch)>>,
    /// Every record a returned flush covered (I6).
    durable: HashSet<(Lsn, Epoch)>,
    next_value: u64,
    stats: Stats,
}

/// Runs one schedule; Err names the step and the broken invariant.
pub fn run(config: Config) -> Result<Stats, String> {
    let mut world = World {
        rng: StdRng::seed_from_u64(config.seed),
        config,
        now: 0,
        nodes: (0..NODES).map(|_| SimNode::new()).collect(),
        down_until: vec![None; NODES],
        drivers: (0..NODES).map(|i| SimDriver::new(i, 0)).collect(),
        list: NodeList {
            version: 1,
            nodes: (0..NODES)
                .map(|i| NodeRecord {
                    id: node_id(i),
                    addr: format!("node-{i}"),
                    az: ["a", "b", "c"][i / 3].to_string(),
                    state: NodeState::Active,
                })
                .collect(),
        },
        meta: first_membership(),
        established: HashMap::from([(MembershipEpoch(1), first_membership())]),
        writers: Vec::new(),
        net: Vec::new(),
        cut: HashSet::new(),
        drops: true,
        allowed: HashMap::new(),
        allowed_epoch: Epoch(0),
        last_flush: None,
        kept: HashMap::new(),
        durable: HashSet::new(),
        next_value: 1,
        stats: Stats::default(),
    };
    for page in 0..world.config.pages {
        world.allowed.insert(page, HashSet::from([0]));
    }
    world.start_writer();
    for _ in 0..world.config.steps {
        world.step(true)?;
    }
    world.heal_and_finish()?;
    Ok(world.stats)
}

impl World {
    fn fail(&self, what: String) -> String {
        format!("step {}: {what}", self.now)
    }

    fn start_writer(&mut self) {
        let epoch = Epoch(self.writers.len() as u64 + 1);
        self.writers
            .push(SimWriter::new(epoch, self.config.lal, self.meta.clone()));
        self.stats.writers += 1;
    }

    fn newest(&self) -> usize {
        self.writers.len() - 1
    }

    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        self.stats.messages += 1;
        if self.drops && self.rng.random_bool(0.05) {
            return;
        }
        let copies = if self.drops && self.rng.random_bool(0.03) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.rng.random_range(1..=8);
            self.net.push(Envelope {
                from,
                to,
                at,
                msg: msg.clone(),
            });
        }
    }

    fn reachable(&self, addr: Addr) -> bool {
        match addr {
            Addr::Node(i) | Addr::Driver(i) => self.nodes[i].up && !self.cut.contains(&i),
            Addr::Writer(w) => self.writers[w].is_live(),
        }
    }

    /// One step: a random event, then the writers' timers, then every check.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        // The network delivers a few messages per step (in random order among those due), and
        // more when many are due, so that it keeps up with what the writers, drivers and
        // gossip send.
        let backlog = self.net.iter().filter(|e| e.at <= self.now).count() / 4;
        for _ in 0..self.rng.random_range(0..=4) + backlog {
            self.deliver_one()?;
        }
        self.harden_some();
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..=399 => self.deliver_one()?,
            400..=549 => self.write(),
            550..=619 => self.flush()?,
            620..=709 => self.gossip(),
            710..=749 => self.drive(),
            750..=769 if faults => self.crash_node(),
            770..=774 if faults => self.restart_node(),
            775..=784 if faults => self.drain_or_activate(),
            810..=817 if faults => self.crash_writer(),
            818..=821 if faults => self.start_writer(),
            822..=841 if faults => self.cut_off(),
            842..=889 if faults => self.cut.clear(),
            _ => self.deliver_one()?,
        }
        self.restart_due();
        self.tick_writers()?;
        self.tick_drivers();
        // A mount that failed (gave up waiting) is mounted again: a new recovery.
        if !self.writers[self.newest()].is_live() {
            self.start_writer();
        }
        self.check()
    }

    fn deliver_one(&mut self) -> Result<(), String> {
        let due: Vec<usize> = (0..self.net.len())
            .filter(|i| self.net[*i].at <= self.now)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let pick = due[self.rng.random_range(0..due.len())];
        let envelope = self.net.swap_remove(pick);
        if !self.reachable(envelope.to) || !self.reachable(envelope.from) {
            return Ok(()); // lost: the receiver is down or cut off (or the sender was)
        }
        match envelope.to {
            Addr::Node(i) => {
                let variant = self.config.variant;
                let answer = match (envelope.from, envelope.msg) {
                    (Addr::Writer(w), msg @ Msg::Append { .. }) => {
                        self.nodes[i].admit_append(w, msg, variant)
                    }
                    (_, msg) => self.nodes[i].handle(msg, variant),
                };
                if let Some(answer) = answer {
                    self.send(envelope.to, envelope.from, answer);
                }
            }
            Addr::Driver(d) => {
                if let Addr::Node(i) = envelope.from {
                    self.drivers[d].on_msg(i, envelope.msg, self.now);
                }
            }
            Addr::Writer(w) => {
                let Addr::Node(i) = envelope.from else {
                    return Ok(());
                };
                let mut events = Vec::new();
                self.writers[w].on_msg(i, envelope.msg, self.config.variant, &mut events);
                self.on_events(w, events)?;
            }
        }
        Ok(())
    }

    /// Each up node hardens some of the batches it admitted, in a random order, and sends the
    /// answers its admission machine lets out.
    fn harden_some(&mut self) {
        let variant = self.config.variant;
        for i in 0..NODES {
            if !self.nodes[i].up {
                continue;
            }
            for _ in 0..self.rng.random_range(0..=self.nodes[i].hardening()) {
                let pick = self.rng.random_range(0..self.nodes[i].hardening());
                for (w, answer) in self.nodes[i].harden(pick, variant) {
                    self.send(Addr::Node(i), Addr::Writer(w), answer);
                }
            }
        }
    }

    fn write(&mut self) {
        let w = self.newest();
        let page = self.rng.random_range(0..self.config.pages);
        let value = self.next_value;
        if let Some(rec) = self.writers[w].write(page, value) {
            self.next_value += 1;
            self.allowed.entry(rec.page).or_default().insert(rec.value);
        }
        // An older writer that does not know it was fenced yet writes too, now and then.
        if self.writers.len() > 1 && self.rng.random_bool(0.3) {
            let old = self.rng.random_range(0..self.writers.len() - 1);
            let value = self.next_value;
            if let Some(rec) = self.writers[old].write(page, value) {
                self.next_value += 1;
                self.allowed.entry(rec.page).or_default().insert(rec.value);
            }
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        let w = if self.writers.len() > 1 && self.rng.random_bool(0.2) {
            self.rng.random_range(0..self.writers.len())
        } else {
            self.newest()
        };
        let mut events = Vec::new();
        self.writers[w].flush(self.config.variant, &mut events);
        self.on_events(w, events)
    }

    /// A segment asks a peer of its membership for what it misses.
    fn gossip(&mut self) {
        let i = self.rng.random_range(0..NODES);
        let Some(membership) = self.nodes[i].membership.clone() else {
            return;
        };
        let peers: Vec<usize> = membership
            .nodes()
            .into_iter()
            .map(index_of)
            .filter(|p| *p != i)
            .collect();
        if peers.is_empty() || !self.reachable(Addr::Node(i)) {
            return;
        }
        let peer = peers[self.rng.random_range(0..peers.len())];
        let after = self.nodes[i].segment.scl();
        self.send(
            Addr::Node(i),
            Addr::Node(peer),
            Msg::Fetch { after, membership },
        );
    }

    /// A repair driver on a node holding a segment starts a pass (several may run at once).
    /// While faults run, any node may drive (rival drivers, as a partition makes them); once
    /// healed, a node that no member of its membership outranks among those up (the real
    /// nodes' election by rank, `node/src/repair.rs`), and now and then an outranked one.
    fn drive(&mut self) {
        let i = self.rng.random_range(0..NODES);
        let mut may_step = true;
        if !self.drops {
            let rank = |n: usize| (node_id(n).0.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 32;
            let Some(membership) = &self.nodes[i].membership else {
                return;
            };
            let outranked = membership
                .nodes()
                .into_iter()
                .map(index_of)
                .any(|j| j != i && rank(j) > rank(i) && self.reachable(Addr::Node(j)));
            // An outranked node still looks now and then (`FALLBACK_EVERY` in the node), and
            // then only follows, establishes and catches up: no new step.
            if (outranked && !self.rng.random_bool(0.1)) || !membership.contains(node_id(i)) {
                return;
            }
            may_step = !outranked;
        }
        if self.reachable(Addr::Driver(i)) && self.nodes[i].membership.is_some() {
            let mut out = Vec::new();
            self.drivers[i].start(self.now, may_step, &mut out);
            self.apply_effects(i, out);
        }
    }

    fn tick_drivers(&mut self) {
        for i in 0..NODES {
            if !self.reachable(Addr::Driver(i)) || self.drivers[i].is_idle() {
                continue;
            }
            let own = self.nodes[i].membership.clone();
            let base = self.nodes[i].membership_base.clone();
            let mut out = Vec::new();
            self.drivers[i].tick(
                self.now,
                own.as_ref().map(|m| (m, base.as_ref())),
                &self.list,
                self.config.repair_after,
                &mut out,
            );
            self.apply_effects(i, out);
        }
    }

    fn apply_effects(&mut self, i: usize, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(to, msg) => {
                    if matches!(msg, Msg::Promise { .. }) {
                        self.stats.promises += 1;
                    }
                    self.send(Addr::Driver(i), Addr::Node(to), msg)
                }
                Effect::CatchUpSelf {
                    membership,
                    base,
                    ballot,
                } => self.nodes[i].catch_up(membership, base, ballot),
                // Recording reaches 4 of the metadata's 6 nodes, or not this time.
                Effect::Record(membership) => {
                    crate::trace(self.now, || format!("driver {i} records {membership}"));
                    if self.rng.random_bool(0.8) {
                        if membership.epoch > self.meta.epoch {
                            self.stats.membership_steps += 1;
                            self.meta = membership.clone();
                        }
                        self.drivers[i].recorded(&membership);
                    }
                }
            }
        }
    }

    /// A node crashes: back soon, back after long (its segment may have been replaced
    /// meanwhile: a returning F), or lost until the end. At most 3 of the 9 are down at once.
    fn crash_node(&mut self) {
        let up: Vec<usize> = (0..NODES).filter(|i| self.nodes[*i].up).collect();
        if up.len() > NODES - 3 {
            let i = up[self.rng.random_range(0..up.len())];
            self.nodes[i].crash();
            self.drivers[i] = SimDriver::new(i, self.now);
            let roll = self.rng.random_range(0..100);
            self.down_until[i] = match roll {
                0..50 => Some(self.now + self.rng.random_range(5..60)),
                50..85 => Some(self.now + self.rng.random_range(100..1000)),
                _ => None,
            };
            self.stats.node_crashes += 1;
        }
    }

    /// A node that is down comes back early (an operator restarts it).
    fn restart_node(&mut self) {
        let down: Vec<usize> = (0..NODES).filter(|i| !self.nodes[*i].up).collect();
        if !down.is_empty() {
            let i = down[self.rng.random_range(0..down.len())];
            self.bring_up(i);
        }
    }

    fn restart_due(&mut self) {
        for i in 0..NODES {
            if !self.nodes[i].up && self.down_until[i].is_some_and(|at| at <= self.now) {
                self.bring_up(i);
            }
        }
    }

    fn bring_up(&mut self, i: usize) {
        self.nodes[i].up = true;
        self.down_until[i] = None;
        self.drivers[i] = SimDriver::new(i, self.now);
    }

    /// An operator drains a node (its segments move off), or makes a draining one active
    /// again. The node list refuses to drain the last but two of an AZ.
    fn drain_or_activate(&mut self) {
        let i = self.rng.random_range(0..NODES);
        let id = node_id(i);
        let changed = match self.list.get(id).map(|n| n.state) {
            Some(NodeState::Active) => self.list.drain(id),
            _ => self.list.activate(id),
        };
        if let Ok(list) = changed {
            self.list = list;
        }
    }

    fn crash_writer(&mut self) {
        let w = self.newest();
        self.writers[w].phase = Phase::Dead;
        self.start_writer();
    }

    /// Cuts off one node, or a whole AZ (nodes 3k to 3k+2).
    fn cut_off(&mut self) {
        if self.rng.random_bool(0.5) {
            self.cut.insert(self.rng.random_range(0..NODES));
        } else {
            let az = self.rng.random_range(0..3);
            self.cut.extend(3 * az..3 * az + 3);
        }
    }

    fn tick_writers(&mut self) -> Result<(), String> {
        for w in 0..self.writers.len() {
            if !self.writers[w].is_live() {
                continue;
            }
            if self.writers[w].stale {
                // It reads the metadata again (and again, until it shows a newer membership).
                let mut events = Vec::new();
                let meta = self.meta.clone();
                self.writers[w].follow(&meta, self.config.variant, &mut events);
                self.on_events(w, events)?;
            }
            let (mut out, mut events) = (Vec::new(), Vec::new());
            self.writers[w].tick(self.now, self.config.variant, &mut out, &mut events);
            self.on_events(w, events)?;
            for (i, msg) in out {
                self.send(Addr::Writer(w), Addr::Node(i), msg);
            }
        }
        Ok(())
    }

    fn on_events(&mut self, w: usize, events: Vec<Event>) -> Result<(), String> {
        for event in events {
            match event {
                Event::Sealed { tail, holder } => self.on_sealed(w, tail, holder)?,
                Event::FlushReturned { target } => self.on_flush(w, target)?,
                Event::Opened | Event::Fenced => {}
            }
        }
        Ok(())
    }

    /// I1: the chain recovery keeps holds, page by page, a value the returned flushes allow.
    fn on_sealed(&mut self, w: usize, tail: Lsn, holder: usize) -> Result<(), String> {
        let node = &self.nodes[holder];
        let chain: Vec<Rec> = match node.chain() {
            Some(chain) => chain.into_iter().filter(|r| r.lsn <= tail).collect(),
            None => return Err(self.fail(format!("node {holder}'s chain has a hole"))),
        };
        if chain.first().map_or(Lsn::ZERO, |r| r.lsn) != tail && tail != Lsn::ZERO {
            // The holder moved on (a newer writer truncated it): that writer is fenced anyway.
            if self.writers.len() - 1 > w {
                return Ok(());
            }
            return Err(self.fail(format!(
                "liveness: writer {w} kept tail {tail} but node {holder} no longer holds it \
                 (stranded by a truncation it learned meanwhile)"
            )));
        }
        let mut base = HashMap::new();
        for rec in chain.iter().rev() {
            base.insert(rec.page, rec.value);
        }
        for page in 0..self.config.pages {
            let value = base.get(&page).copied().unwrap_or(0);
            let allowed = &self.allowed[&page];
            if !allowed.contains(&value) {
                return Err(self.fail(format!(
                    "I1: writer {w} (epoch {}) recovered page {page} = {value}, but the flushes \
                     that returned allow only {allowed:?} (tail {tail}, from node {holder}; last \
                     flush (writer, target) {:?}; values: {}); {}",
                    self.writers[w].epoch.0,
                    self.last_flush,
                    self.whence(allowed.iter().copied().chain([value])),
                    self.describe(w)
                )));
            }
        }
        self.kept
            .insert(w, chain.iter().map(|r| (r.lsn, r.epoch)).collect());
        self.writers[w].base = base;
        Ok(())
    }

    /// I4, and the new allowed values after a returned flush.
    fn on_flush(&mut self, w: usize, target: Lsn) -> Result<(), String> {
        self.stats.flushes += 1;
        let writer = &self.writers[w];
        let own = writer.own(target);
        self.durable.extend(own.iter().copied());
        for (newer, kept) in &self.kept {
            if *newer > w {
                if let Some(lost) = own.iter().find(|r| !kept.contains(r)) {
                    return Err(self.fail(format!(
                        "I4: a flush of writer {w} (epoch {}) returned covering LSN {} that writer \
                         {newer}'s recovery dropped",
                        writer.epoch.0, lost.0
                    )));
                }
            }
        }
        if writer.epoch >= self.allowed_epoch {
            // Each page now holds its value at the flush, or a later write: this writer's above
            // the flush point, or a newer writer's. (An older writer's later records lie above
            // this writer's recovery point in an older epoch: truncated everywhere they land.)
            self.allowed_epoch = writer.epoch;
            self.last_flush = Some((w, target));
            for page in 0..self.config.pages {
                let mut values = HashSet::from([writer.value_at(page, target)]);
                for (i, other) in self.writers.iter().enumerate() {
                    for r in other.records.iter().filter(|r| r.page == page) {
                        if i > w || (i == w && r.lsn > target) {
                            values.insert(r.value);
                        }
                    }
                }
                self.allowed.insert(page, values);
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            node.segment.check_invariants();
            // I3: nothing truncated on the chain.
            let scl = node.segment.scl();
            for t in node.segment.truncations() {
                for (lsn, rec) in &node.payloads {
                    if *lsn <= scl && rec.epoch < t.epoch && *lsn > t.after {
                        return Err(self.fail(format!(
                            "I3: node {i} holds on its chain LSN {lsn} of epoch {} above \
                             truncation ({}, {})",
                            rec.epoch.0, t.epoch.0, t.after.0
                        )));
                    }
                }
            }
        }
        self.check_memberships()?;
        self.check_durable()?;
        // I2: what the newest open writer may read: every member whose SCL (as the writer
        // knows it, and as the node has it) reaches the VDL.
        let w = self.newest();
        let writer = &self.writers[w];
        if writer.phase == Phase::Active {
            let ledger = writer.ledger.as_ref().expect("an open writer has a ledger");
            ledger.check_invariants();
            let vdl = ledger.vdl();
            for member in writer.membership.nodes() {
                let i = index_of(member);
                let node = &self.nodes[i];
                let scl = ledger
                    .pg(crate::writer::PG)
                    .map_or(Lsn::ZERO, |c| c.scl(member));
                if scl < vdl || node.segment.scl() < vdl || node.epoch > writer.epoch {
                    continue;
                }
                for page in 0..self.config.pages {
                    let served = node.page(page, vdl);
                    let expected = writer.value_at(page, vdl);
                    if served != expected {
                        return Err(self.fail(format!(
                            "I2: node {i} serves page {page} = {served} as of VDL {vdl}, writer {w} \
                             wrote {expected}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// I6: every record a returned flush covered lies on a write quorum of some configuration
    /// of the newest established membership (module docs of `sixfold_proto::membership`: the
    /// invariant that membership steps keep). Down nodes count: their hot logs are durable.
    fn check_durable(&self) -> Result<(), String> {
        let Some(membership) = self.established.values().max_by_key(|m| m.epoch) else {
            return Ok(());
        };
        for (lsn, epoch) in &self.durable {
            let holds = |n: &NodeId| {
                self.nodes[index_of(*n)]
                    .payloads
                    .get(lsn)
                    .is_some_and(|r| r.epoch == *epoch)
            };
            let on_quorum = membership
                .configs()
                .iter()
                .any(|config| config.iter().filter(|n| holds(n)).count() >= WRITE_QUORUM);
            if !on_quorum {
                let holders: Vec<String> = (0..NODES)
                    .map(node_id)
                    .filter(holds)
                    .map(|n| n.to_string())
                    .collect();
                return Err(self.fail(format!(
                    "I6: flushed LSN {lsn} (epoch {}) is on {} only, a write quorum of no \
                     configuration of {membership}",
                    epoch.0,
                    holders.join(" ")
                )));
            }
        }
        Ok(())
    }

    /// I5: at most one membership is established per membership epoch (a write quorum of its
    /// base holds it; a writer's, without a base, comes from the metadata), and the metadata
    /// records only established memberships.
    fn check_memberships(&mut self) -> Result<(), String> {
        let mut held: Vec<(&Membership, Option<&Membership>)> = Vec::new();
        for node in &self.nodes {
            if let Some(m) = &node.membership {
                let base = node.membership_base.as_ref();
                if !held.iter().any(|(h, b)| *h == m && *b == base) {
                    held.push((m, base));
                }
            }
        }
        let mut found = Vec::new();
        for (m, base) in held {
            // Established: a write quorum of its base holds it in one round (what the drivers
            // count, `sixfold_proto::collision`).
            let votes = |n: sixfold_proto::NodeId| {
                let node = &self.nodes[index_of(n)];
                node.membership.clone().map(|m| (m, node.ballot))
            };
            if base.is_some_and(|base| sixfold_proto::collision::is_established(base, m, votes)) {
                found.push(m.clone());
            }
        }
        for m in found {
            match self.established.get(&m.epoch) {
                Some(other) if *other != m => {
                    return Err(self.fail(format!(
                        "I5: two memberships established in {}: {other} and {m}",
                        m.epoch
                    )))
                }
                Some(_) => {}
                None => {
                    self.established.insert(m.epoch, m);
                }
            }
        }
        if self.established.get(&self.meta.epoch) != Some(&self.meta) {
            return Err(self.fail(format!(
                "I5: the metadata records {}, which was never established",
                self.meta
            )));
        }
        Ok(())
    }

    /// Who wrote each value: (value, writer, LSN).
    fn whence(&self, values: impl Iterator<Item = u64>) -> String {
        let mut out = Vec::new();
        for value in values {
            for (w, writer) in self.writers.iter().enumerate() {
                for r in writer.records.iter().filter(|r| r.value == value) {
                    out.push(format!("{value} by writer {w} at {}", r.lsn.0));
                }
            }
        }
        out.join(", ")
    }

    /// The state of writer `w` and every node, for failure messages.
    fn describe(&self, w: usize) -> String {
        let writer = &self.writers[w];
        let mut out = format!(
            "metadata {}; writer {w}: epoch {} membership {} tail {} truncations {:?}",
            self.meta, writer.epoch.0, writer.membership, writer.tail.0, writer.truncations
        );
        if let Some(ledger) = &writer.ledger {
            out += &format!(
                " vdl {} vcl {} last {} scls {:?}",
                ledger.vdl().0,
                ledger.vcl().0,
                ledger.last_allocated().0,
                ledger.pg(crate::writer::PG).map(|c| &c.scls)
            );
        }
        for (i, node) in self.nodes.iter().enumerate() {
            out += &format!(
                "; node {i}: up {} membership {} epoch {} scl {} max {} gap {} truncations {:?}",
                node.up,
                node.membership
                    .as_ref()
                    .map_or("none".to_string(), |m| m.to_string()),
                node.epoch.0,
                node.segment.scl().0,
                node.segment.max_lsn().0,
                node.segment.has_gap(),
                node.segment.truncations()
            );
        }
        out
    }

    /// Whether rival steps of one epoch split the PG's nodes. A node that is down may then be
    /// the one whose answer tells which step a write quorum took (see "Rival steps" in
    /// `sixfold_proto::membership`); a collision-recovery round (`sixfold_proto::collision`)
    /// decides without it, given five answers of every configuration: liveness is required
    /// with one node down for good.
    fn contested(&self) -> bool {
        let mut held: Vec<&Membership> = Vec::new();
        for m in self.nodes.iter().filter_map(|n| n.membership.as_ref()) {
            if !held.contains(&m) {
                held.push(m);
            }
        }
        held.iter()
            .any(|m| held.iter().any(|o| o.epoch == m.epoch && o != m))
    }

    /// Heals the network and brings back all but up to 2 nodes; then the newest writer must
    /// open and a flush must return.
    fn heal_and_finish(&mut self) -> Result<(), String> {
        self.drops = false;
        self.cut.clear();
        for i in 0..NODES {
            if !self.nodes[i].up {
                self.bring_up(i);
            }
        }
        // Writes must progress with up to 2 segments down: keep some down to the end. When rival
        // steps split the PG, one node stays down for good: it may be the one whose vote would
        // decide the fast round, and a collision-recovery round must decide without it.
        let holders: Vec<usize> = (0..NODES)
            .filter(|i| self.nodes[*i].membership.is_some())
            .collect();
        let mut lost = None;
        let keep_down: Vec<usize> = if self.contested() && !holders.is_empty() {
            self.stats.split_at_heal = true;
            let i = holders[self.rng.random_range(0..holders.len())];
            lost = Some(i);
            vec![i]
        } else {
            (0..self.rng.random_range(0..=2))
                .map(|_| self.rng.random_range(0..NODES))
                .collect()
        };
        for i in keep_down {
            self.nodes[i].crash();
        }
        if !self.writers[self.newest()].is_live() {
            self.start_writer();
        }
        let budget = self.now + 3000;
        let mut wrote = None;
        let flushes_before = self.stats.flushes;
        while self.now < budget {
            // The newest writer (a failed mount is retried by `step`).
            let w = self.newest();
            if self.writers[w].phase == Phase::Active && wrote.is_none() {
                let value = self.next_value;
                self.next_value += 1;
                wrote = self.writers[w].write(0, value);
                if let Some(rec) = &wrote {
                    self.allowed.entry(rec.page).or_default().insert(rec.value);
                    let mut events = Vec::new();
                    self.writers[w].flush(self.config.variant, &mut events);
                    self.on_events(w, events)?;
                }
            }
            if wrote.is_some() && self.stats.flushes > flushes_before {
                return Ok(());
            }
            self.step(false)?;
            // A split that arises later (a step from before the heal landing late) leaves at
            // most one node down: the one lost for good, if any, else one of those kept down.
            if self.contested() {
                let lost = *lost.get_or_insert_with(|| {
                    (0..NODES).find(|i| !self.nodes[*i].up).unwrap_or(NODES)
                });
                for i in (0..NODES).filter(|i| *i != lost) {
                    if !self.nodes[i].up {
                        self.bring_up(i);
                    }
                }
            }
        }
        let w = self.newest();
        Err(self.fail(format!(
            "liveness: after healing, writer {w} is {:?} and its flush has not returned; {}",
            self.writers[w].phase,
            self.describe(w)
        )))
    }
}
