//! The writer's LSN ledger: allocation, per-PG chains, VCL, VDL and LAL. Plain state, no I/O.
//!
//! The driver (`volume.rs`) calls [`Ledger::allocate`] for every record it makes,
//! [`Ledger::mark_cpl`] at the end of every write request, and [`Ledger::handle_ack`] for every
//! acknowledgement a segment sends back (the segment's SCL after it hardened a batch).
//!
//! Invariants (checked by [`Ledger::check_invariants`]):
//! - `vdl <= vcl < next_lsn`; none of the three ever decreases.
//! - `next_lsn - 1 - vdl <= lal`: the writer never allocates more than LAL LSNs beyond VDL.
//! - every record at or below VCL is at write quorum in its PG (`lsn <= pgcl(pg)`), and every
//!   record above it is still in `pending`, in LSN order.
//! - a PG's PGCL is at least what its membership's quorum rule gives for the acknowledged SCLs
//!   ([`Membership::pgcl`]), and never decreases: after a membership change the rule may give
//!   less for a while (a new member starts at 0), but records counted durable under the old
//!   membership stay durable (see `sixfold_proto::membership`).
//! - VDL is a consistency point (the end of some write request) or the recovery start point.
//!
//! Consistency points: every write request ends at a CPL, so VDL tracks VCL at write-request
//! granularity; a flush waits for VDL to pass the last LSN allocated before it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sixfold_proto::membership::Membership;
use sixfold_proto::{Lsn, NodeId, PgId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LalExceeded {
    pub next_lsn: Lsn,
    pub vdl: Lsn,
}

/// Per-PG chain state.
#[derive(Debug, Clone)]
pub struct PgLedger {
    /// Last LSN allocated in this PG: the backlink of its next record. Never decreases.
    pub tail: Lsn,
    /// The PG's membership: which nodes hold its segments, what counts as a quorum.
    pub membership: Membership,
    /// SCL acknowledged by each node of the membership. Each never decreases.
    pub scls: BTreeMap<NodeId, Lsn>,
    /// The highest LSN a write quorum of the membership holds ([`Membership::pgcl`]). Never
    /// decreases.
    pub pgcl: Lsn,
}

impl PgLedger {
    /// The SCL `node` acknowledged (0 for a node that is not a member).
    pub fn scl(&self, node: NodeId) -> Lsn {
        self.scls.get(&node).copied().unwrap_or(Lsn::ZERO)
    }

    /// The lowest SCL among the membership's nodes.
    pub fn lowest_scl(&self) -> Lsn {
        self.membership
            .nodes()
            .iter()
            .map(|n| self.scl(*n))
            .min()
            .unwrap_or(Lsn::ZERO)
    }

    fn quorum_point(&self) -> Lsn {
        self.membership.pgcl(|n| self.scl(n))
    }
}

#[derive(Debug)]
pub struct Ledger {
    /// Next LSN to hand out. Never decreases.
    next_lsn: Lsn,
    /// Volume complete LSN: every record at or below it is at write quorum. Never decreases.
    vcl: Lsn,
    /// Volume durable LSN: the highest CPL at or below VCL. Never decreases.
    vdl: Lsn,
    /// LSN allocation limit: how far `next_lsn - 1` may run ahead of VDL.
    lal: u64,
    /// Allocated records not yet known to be at write quorum, in LSN order.
    pending: VecDeque<(Lsn, PgId)>,
    /// Consistency points above VDL, in LSN order.
    cpls: VecDeque<Lsn>,
    pgs: HashMap<PgId, PgLedger>,
}

impl Ledger {
    /// A ledger that starts allocating at `start.next()`; everything at or below `start` is
    /// treated as durable (the recovery point of the mount).
    pub fn new(start: Lsn, lal: u64) -> Ledger {
        assert!(lal > 0);
        Ledger {
            next_lsn: start.next(),
            vcl: start,
            vdl: start,
            lal,
            pending: VecDeque::new(),
            cpls: VecDeque::new(),
            pgs: HashMap::new(),
        }
    }

    /// Registers a PG whose chain ends at `tail`, with its membership and the SCLs its nodes
    /// are known to hold.
    pub fn add_pg(
        &mut self,
        pg: PgId,
        tail: Lsn,
        membership: Membership,
        scls: BTreeMap<NodeId, Lsn>,
    ) {
        let mut chain = PgLedger {
            tail,
            membership,
            scls,
            pgcl: Lsn::ZERO,
        };
        chain
            .scls
            .retain(|node, _| chain.membership.contains(*node));
        chain.pgcl = chain.quorum_point().min(tail);
        self.pgs.insert(pg, chain);
    }

    /// The PG moved to `membership` (a membership change step): nodes that left it no longer
    /// count, new ones start at SCL 0. The PGCL does not fall (module docs). Returns true when
    /// VDL advanced (a step that drops a lagging configuration can raise the PGCL).
    pub fn set_membership(&mut self, pg: PgId, membership: Membership) -> bool {
        let Some(chain) = self.pgs.get_mut(&pg) else {
            return false;
        };
        chain.membership = membership;
        chain
            .scls
            .retain(|node, _| chain.membership.contains(*node));
        chain.pgcl = chain.pgcl.max(chain.quorum_point().min(chain.tail));
        self.advance()
    }

    pub fn has_pg(&self, pg: PgId) -> bool {
        self.pgs.contains_key(&pg)
    }

    pub fn pg(&self, pg: PgId) -> Option<&PgLedger> {
        self.pgs.get(&pg)
    }

    pub fn vcl(&self) -> Lsn {
        self.vcl
    }

    pub fn vdl(&self) -> Lsn {
        self.vdl
    }

    pub fn lal(&self) -> u64 {
        self.lal
    }

    /// The last LSN allocated so far (or the start point).
    pub fn last_allocated(&self) -> Lsn {
        Lsn(self.next_lsn.0 - 1)
    }

    /// Whether `count` more LSNs can be allocated without passing LAL.
    pub fn can_allocate(&self, count: u64) -> bool {
        self.last_allocated().0 + count <= self.vdl.0 + self.lal
    }

    /// Allocates the next LSN for a record of `pg`; returns (lsn, backlink).
    pub fn allocate(&mut self, pg: PgId) -> Result<(Lsn, Lsn), LalExceeded> {
        if !self.can_allocate(1) {
            return Err(LalExceeded {
                next_lsn: self.next_lsn,
                vdl: self.vdl,
            });
        }
        let chain = self
            .pgs
            .get_mut(&pg)
            .expect("allocate: PG registered by add_pg first");
        let lsn = self.next_lsn;
        let backlink = chain.tail;
        chain.tail = lsn;
        self.next_lsn = lsn.next();
        self.pending.push_back((lsn, pg));
        Ok((lsn, backlink))
    }

    /// Marks the end of a write request as a consistency point.
    pub fn mark_cpl(&mut self, lsn: Lsn) {
        debug_assert!(lsn < self.next_lsn);
        if lsn <= self.vdl {
            return;
        }
        if let Some(last) = self.cpls.back() {
            debug_assert!(*last <= lsn);
            if *last == lsn {
                return;
            }
        }
        self.cpls.push_back(lsn);
        self.advance();
    }

    /// The segment on `node` acknowledged that it holds the PG's chain up to `scl`. Returns
    /// true when VDL advanced. Acknowledgements of nodes outside the membership are ignored.
    pub fn handle_ack(&mut self, pg: PgId, node: NodeId, scl: Lsn) -> bool {
        let Some(chain) = self.pgs.get_mut(&pg) else {
            return false;
        };
        if !chain.membership.contains(node) || scl <= chain.scl(node) {
            return false;
        }
        // A segment cannot hold more of the chain than was allocated.
        let scl = scl.min(chain.tail);
        chain.scls.insert(node, scl);
        chain.pgcl = chain.pgcl.max(chain.quorum_point());
        self.advance()
    }

    /// Moves VCL over every leading pending record now at quorum, and VDL to the highest CPL at or
    /// below VCL. Returns true when VDL moved.
    fn advance(&mut self) -> bool {
        while let Some((lsn, pg)) = self.pending.front() {
            let pgcl = self.pgs.get(pg).map(|c| c.pgcl).unwrap_or(Lsn::ZERO);
            if *lsn > pgcl {
                break;
            }
            self.pending.pop_front();
        }
        self.vcl = match self.pending.front() {
            Some((lsn, _)) => Lsn(lsn.0 - 1),
            None => self.last_allocated(),
        };
        let vdl_before = self.vdl;
        while let Some(cpl) = self.cpls.front() {
            if *cpl > self.vcl {
                break;
            }
            self.vdl = *cpl;
            self.cpls.pop_front();
        }
        self.vdl != vdl_before
    }

    /// Asserts every invariant in the module docs. Called by tests after every step.
    pub fn check_invariants(&self) {
        assert!(self.vdl <= self.vcl, "vdl {} > vcl {}", self.vdl, self.vcl);
        assert!(self.vcl < self.next_lsn);
        assert!(
            self.last_allocated().0 <= self.vdl.0 + self.lal,
            "LAL exceeded"
        );
        let mut previous = self.vcl;
        for (lsn, pg) in &self.pending {
            assert!(*lsn > previous, "pending out of order");
            previous = *lsn;
            assert!(self.pgs.contains_key(pg));
        }
        if let Some((front, pg)) = self.pending.front() {
            assert!(
                *front > self.pgs[pg].pgcl,
                "front of pending is already durable"
            );
        }
        for cpl in &self.cpls {
            assert!(*cpl > self.vdl);
        }
        for chain in self.pgs.values() {
            assert!(chain.pgcl >= chain.quorum_point().min(chain.tail));
            assert!(chain.pgcl <= chain.tail);
            assert!(chain.scls.keys().all(|n| chain.membership.contains(*n)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const PG0: PgId = PgId(0);
    const PG1: PgId = PgId(1);

    /// Nodes 1..=6: segment i of the tests is on node i + 1.
    fn membership() -> Membership {
        Membership::new((1..=6).map(NodeId).collect()).expect("valid")
    }

    fn n(segment: usize) -> NodeId {
        NodeId(segment as u64 + 1)
    }

    fn ledger() -> Ledger {
        let mut ledger = Ledger::new(Lsn::ZERO, 8);
        ledger.add_pg(PG0, Lsn::ZERO, membership(), BTreeMap::new());
        ledger.add_pg(PG1, Lsn::ZERO, membership(), BTreeMap::new());
        ledger
    }

    #[test]
    fn vdl_advances_on_fourth_ack_only() {
        let mut l = ledger();
        let (lsn, backlink) = l.allocate(PG0).expect("allocate");
        assert_eq!((lsn, backlink), (Lsn(1), Lsn(0)));
        l.mark_cpl(lsn);
        for segment in 0..3 {
            assert!(!l.handle_ack(PG0, n(segment), lsn));
            assert_eq!(l.vdl(), Lsn(0));
        }
        assert!(l.handle_ack(PG0, n(3), lsn));
        assert_eq!(l.vdl(), Lsn(1));
        l.check_invariants();
    }

    #[test]
    fn backlinks_chain_per_pg() {
        let mut l = ledger();
        assert_eq!(l.allocate(PG0).expect("a"), (Lsn(1), Lsn(0)));
        assert_eq!(l.allocate(PG1).expect("a"), (Lsn(2), Lsn(0)));
        assert_eq!(l.allocate(PG0).expect("a"), (Lsn(3), Lsn(1)));
    }

    #[test]
    fn vcl_waits_for_the_slowest_pg() {
        let mut l = ledger();
        let (a, _) = l.allocate(PG0).expect("a");
        let (b, _) = l.allocate(PG1).expect("a");
        l.mark_cpl(b);
        for s in 0..4 {
            l.handle_ack(PG1, n(s), b);
        }
        assert_eq!(l.vcl(), Lsn(0), "PG0's record 1 is not durable yet");
        for s in 0..4 {
            l.handle_ack(PG0, n(s), a);
        }
        assert_eq!((l.vcl(), l.vdl()), (b, b));
        l.check_invariants();
    }

    /// F (node 6) replaced by G (node 7): a record needs 4 of ABCDEF and 4 of ABCDEG; what was
    /// durable before the change stays durable though G starts at 0.
    #[test]
    fn a_membership_change_counts_both_configurations_and_never_lowers_the_pgcl() {
        let mut l = ledger();
        let (a, _) = l.allocate(PG0).expect("a");
        l.mark_cpl(a);
        for s in 0..4 {
            l.handle_ack(PG0, n(s), a);
        }
        assert_eq!(l.vdl(), a);
        let replacing = membership().begin(NodeId(6), NodeId(7)).expect("begin");
        l.set_membership(PG0, replacing.clone());
        assert_eq!(l.pg(PG0).map(|c| c.pgcl), Some(a), "durable stays durable");
        let (b, _) = l.allocate(PG0).expect("b");
        l.mark_cpl(b);
        for node in [1, 2, 3, 6] {
            l.handle_ack(PG0, NodeId(node), b);
        }
        assert_eq!(l.vdl(), a, "4 of ABCDEF, 3 of ABCDEG");
        l.handle_ack(PG0, NodeId(7), b);
        assert_eq!(l.vdl(), b, "G's acknowledgement makes 4 of both");
        l.set_membership(PG0, replacing.complete(NodeId(7)).expect("complete"));
        assert!(!l.handle_ack(PG0, NodeId(6), b), "F no longer counts");
        l.check_invariants();
    }

    #[test]
    fn lal_stops_allocation() {
        let mut l = ledger();
        for _ in 0..8 {
            l.allocate(PG0).expect("within LAL");
        }
        assert!(l.allocate(PG0).is_err());
        l.mark_cpl(Lsn(8));
        for s in 0..4 {
            l.handle_ack(PG0, n(s), Lsn(8));
        }
        assert!(l.allocate(PG0).is_ok());
        l.check_invariants();
    }

    /// Random allocations and acknowledgements against a reference: VDL is never above a record
    /// that has fewer than four acknowledgements.
    #[test]
    fn random_schedules_keep_invariants() {
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut l = Ledger::new(Lsn::ZERO, 32);
            let pgs = [PgId(0), PgId(1), PgId(2)];
            for pg in pgs {
                l.add_pg(pg, Lsn::ZERO, membership(), BTreeMap::new());
            }
            // Reference: per PG, list of lsns; per segment the highest contiguous prefix it holds.
            let mut records: HashMap<PgId, Vec<Lsn>> = HashMap::new();
            let mut held: HashMap<(PgId, usize), usize> = HashMap::new();
            for _ in 0..500 {
                if rng.random_bool(0.5) {
                    let pg = pgs[rng.random_range(0..pgs.len())];
                    if let Ok((lsn, _)) = l.allocate(pg) {
                        records.entry(pg).or_default().push(lsn);
                        if rng.random_bool(0.5) {
                            l.mark_cpl(lsn);
                        }
                    }
                } else {
                    let pg = pgs[rng.random_range(0..pgs.len())];
                    let segment = rng.random_range(0..6);
                    let list = records.entry(pg).or_default();
                    let count = held.entry((pg, segment)).or_default();
                    if *count < list.len() {
                        *count += rng.random_range(1..=list.len() - *count);
                        l.handle_ack(pg, n(segment), list[*count - 1]);
                    }
                }
                l.check_invariants();
                // Safety: every record at or below VDL is held by at least four segments.
                for (pg, list) in &records {
                    for (index, lsn) in list.iter().enumerate() {
                        if *lsn <= l.vdl() {
                            let holders = (0..6)
                                .filter(|s| held.get(&(*pg, *s)).copied().unwrap_or(0) > index)
                                .count();
                            assert!(
                                holders >= 4,
                                "seed {seed}: {lsn} below VDL with {holders} holders"
                            );
                        }
                    }
                }
            }
        }
    }
}
