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
//! - the real state machines' own invariants (`Segment::check_invariants`,
//!   `Ledger::check_invariants`).
//! - liveness: after the network heals and all but up to 2 nodes are back, the newest writer
//!   opens and a flush returns.
//!
//! Found by this simulation and fixed in the real code: capping a sealed answer's SCL at a
//! truncation it missed (lost flushed records); a recovered chain held by one segment only,
//! counted durable at once (lost on the next recovery); half-made truncations of a recovery that
//! died spreading by gossip and stranding a later writer (histories are now authoritative for
//! older epochs, and a sealed segment adopts no history but its sealing writer's).

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sixfold_proto::{Epoch, Lsn, COPIES};

use crate::msg::{Addr, Msg, Rec};
use crate::node::SimNode;
use crate::writer::{Event, Phase, SimWriter};
use crate::Variant;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub steps: u64,
    pub variant: Variant,
    pub pages: u64,
    pub lal: u64,
}

impl Config {
    pub fn new(seed: u64, variant: Variant) -> Config {
        Config {
            seed,
            steps: 1000,
            variant,
            pages: 6,
            lal: 24,
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
    next_value: u64,
    stats: Stats,
}

/// Runs one schedule; Err names the step and the broken invariant.
pub fn run(config: Config) -> Result<Stats, String> {
    let mut world = World {
        rng: StdRng::seed_from_u64(config.seed),
        config,
        now: 0,
        nodes: (0..COPIES).map(|_| SimNode::new()).collect(),
        writers: Vec::new(),
        net: Vec::new(),
        cut: HashSet::new(),
        drops: true,
        allowed: HashMap::new(),
        allowed_epoch: Epoch(0),
        last_flush: None,
        kept: HashMap::new(),
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
        self.writers.push(SimWriter::new(epoch, self.config.lal));
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
            Addr::Node(i) => self.nodes[i].up && !self.cut.contains(&i),
            Addr::Writer(w) => self.writers[w].is_live(),
        }
    }

    /// One step: a random event, then the writers' timers, then every check.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        // The network delivers a few messages per step (in random order among those due), so
        // that it keeps up with what the writers and gossip send.
        for _ in 0..self.rng.random_range(0..=4) {
            self.deliver_one()?;
        }
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..=399 => self.deliver_one()?,
            400..=549 => self.write(),
            550..=619 => self.flush()?,
            620..=749 => self.gossip(),
            750..=769 if faults => self.crash_node(),
            770..=809 if faults => self.restart_node(),
            810..=817 if faults => self.crash_writer(),
            818..=821 if faults => self.start_writer(),
            822..=841 if faults => self.cut_off(),
            842..=889 if faults => self.cut.clear(),
            _ => self.deliver_one()?,
        }
        self.tick_writers();
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
                if let Some(answer) = self.nodes[i].handle(envelope.msg, variant) {
                    self.send(envelope.to, envelope.from, answer);
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

    fn gossip(&mut self) {
        let i = self.rng.random_range(0..COPIES);
        let peer = (i + self.rng.random_range(1..COPIES)) % COPIES;
        if self.reachable(Addr::Node(i)) {
            let after = self.nodes[i].segment.scl();
            self.send(Addr::Node(i), Addr::Node(peer), Msg::Fetch { after });
        }
    }

    fn crash_node(&mut self) {
        let up: Vec<usize> = (0..COPIES).filter(|i| self.nodes[*i].up).collect();
        if up.len() > 3 {
            let i = up[self.rng.random_range(0..up.len())];
            self.nodes[i].up = false;
            self.stats.node_crashes += 1;
        }
    }

    fn restart_node(&mut self) {
        let down: Vec<usize> = (0..COPIES).filter(|i| !self.nodes[*i].up).collect();
        if !down.is_empty() {
            let i = down[self.rng.random_range(0..down.len())];
            self.nodes[i].up = true;
        }
    }

    fn crash_writer(&mut self) {
        let w = self.newest();
        self.writers[w].phase = Phase::Dead;
        self.start_writer();
    }

    /// Cuts off one node, or a whole AZ (nodes 2k and 2k+1).
    fn cut_off(&mut self) {
        if self.rng.random_bool(0.5) {
            self.cut.insert(self.rng.random_range(0..COPIES));
        } else {
            let az = self.rng.random_range(0..3);
            self.cut.insert(2 * az);
            self.cut.insert(2 * az + 1);
        }
    }

    fn tick_writers(&mut self) {
        for w in 0..self.writers.len() {
            if !self.writers[w].is_live() {
                continue;
            }
            let mut out = Vec::new();
            self.writers[w].tick(self.now, &mut out);
            for (i, msg) in out {
                self.send(Addr::Writer(w), Addr::Node(i), msg);
            }
        }
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

    fn check(&self) -> Result<(), String> {
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
        // I2: what the newest open writer may read.
        let w = self.newest();
        let writer = &self.writers[w];
        if writer.phase == Phase::Active {
            let ledger = writer.ledger.as_ref().expect("an open writer has a ledger");
            ledger.check_invariants();
            let vdl = ledger.vdl();
            let scls: Vec<Lsn> = (0..COPIES)
                .map(|i| {
                    ledger
                        .pg(crate::writer::PG)
                        .map_or(Lsn::ZERO, |c| c.scl(crate::writer::node_id(i)))
                })
                .collect();
            for (i, node) in self.nodes.iter().enumerate() {
                if scls[i] < vdl || node.segment.scl() < vdl || node.epoch > writer.epoch {
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
            "writer {w}: epoch {} tail {} truncations {:?}",
            writer.epoch.0, writer.tail.0, writer.truncations
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
                "; node {i}: up {} epoch {} scl {} max {} gap {} truncations {:?}",
                node.up,
                node.epoch.0,
                node.segment.scl().0,
                node.segment.max_lsn().0,
                node.segment.has_gap(),
                node.segment.truncations()
            );
        }
        out
    }

    /// Heals the network and brings back all but up to 2 nodes; then the newest writer must
    /// open and a flush must return.
    fn heal_and_finish(&mut self) -> Result<(), String> {
        self.drops = false;
        self.cut.clear();
        for node in &mut self.nodes {
            node.up = true;
        }
        // Writes must progress with up to 2 segments down: keep some down to the end.
        for _ in 0..self.rng.random_range(0..=2) {
            let i = self.rng.random_range(0..COPIES);
            self.nodes[i].up = false;
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
        }
        let w = self.newest();
        Err(self.fail(format!(
            "liveness: after healing, writer {w} is {:?} and its flush has not returned; {}",
            self.writers[w].phase,
            self.describe(w)
        )))
    }
}
