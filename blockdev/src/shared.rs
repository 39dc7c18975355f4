//! The writer's shared state: one mutex over the ledger, the page cache and the PG queues, held
//! only for short, non-blocking sections (never across an await), plus a watch channel that
//! publishes progress (VDL, fencing) to waiting flushes and writers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::{Membership as WireMembership, Record, Truncation, VolumeMeta};
use sixfold_proto::{Epoch, Lsn, NodeId, PgId, WRITE_QUORUM};
use tokio::sync::{watch, Notify};

use crate::cache::PageCache;
use crate::clients::Clients;
use crate::hedge::ReadRouting;
use crate::ledger::Ledger;
use crate::open::PgNodes;

/// Durable records the writer keeps, across all of a volume's PG queues (beyond those not yet
/// durable, which it always keeps), for segments that have not acknowledged them: slow ones, and
/// ones that are down (a node cut off for a few seconds gets them from the writer the moment it
/// answers again, instead of filling its gap from peers, some of which may be the next ones cut
/// off). Each PG may keep its share ([`retained_per_pg`]); past it, durable records are released
/// anyway (the segment gap-fills from peers). Records are at most a page (4 KiB) of data: about
/// 32 MiB per volume, whatever its number of PGs (with a node lost for good, a per-PG bound kept
/// 32 MiB for every PG on it until the repair).
pub const RETAINED_DURABLE_RECORDS_MAX: usize = 8192;

/// A PG's share of [`RETAINED_DURABLE_RECORDS_MAX`] when the volume has `pgs` PGs.
pub fn retained_per_pg(pgs: usize) -> usize {
    RETAINED_DURABLE_RECORDS_MAX / pgs.max(1)
}
/// Back-off after a failed request to a segment, doubling up to the max: a segment that comes
/// back is tried again within [`SEGMENT_BACKOFF_MAX`] plus a connection timeout.
pub const SEGMENT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const SEGMENT_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// What flushes and allocation-limited writers wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub vdl: Lsn,
    pub fenced: bool,
    pub closed: bool,
}

/// What a node folds by: the PG's PGCL (nothing at or below it is ever truncated), the fold
/// limit (the lowest SCL of the PG's segments, capped by the VDL) and the writer's VDL (how far
/// a node under pressure may fold past a lagging peer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub pgcl: Lsn,
    pub fold_limit: Lsn,
    pub vdl: Lsn,
}

impl Hints {
    /// True when `now` would let the node fold further than these: the PGCL or the fold limit
    /// rose, or the VDL rose while it was still below the PGCL (past that, a higher VDL changes
    /// nothing for this PG, and a heartbeat per second for every quiet PG would be waste).
    pub fn stale(&self, now: &Hints) -> bool {
        now.pgcl > self.pgcl
            || now.fold_limit > self.fold_limit
            || (now.vdl > self.vdl && self.vdl < now.pgcl)
    }
}

/// The writer's link to one segment of a PG.
#[derive(Debug)]
pub struct SegmentLink {
    /// The node holding the segment.
    pub node: NodeId,
    pub addr: String,
    pub az: String,
    /// Highest LSN handed to a request for this segment. Reset to the acknowledged SCL after an
    /// error so that unacknowledged records are sent again.
    pub sent: Lsn,
    /// Highest LSN of a batch the node answered. Above its SCL: the node holds those records
    /// above a gap it is filling from its peers (the sender then asks for its SCL often).
    pub answered: Lsn,
    /// False after a failed request, until the next success.
    pub up: bool,
    /// Do not send before this instant (back-off after errors).
    pub retry_at: Option<Instant>,
    pub backoff: Duration,
    /// Smoothed latency of successful requests, for read routing.
    pub latency_us: u64,
    pub last_error: Option<String>,
    /// When the last batch or heartbeat was sent.
    pub probed_at: Option<Instant>,
    /// The hints last sent to the segment's node. It folds up to them, so once a PG goes quiet
    /// a heartbeat must bring the final values, or the PG's last records stay in its hot log
    /// (and pin every log file after them) forever.
    pub hinted: Hints,
    /// Wakes this segment's sender (notify_one keeps a permit, so no wake-up is lost).
    pub wake: Arc<Notify>,
}

impl SegmentLink {
    pub fn new(node: NodeId, addr: String, az: String) -> SegmentLink {
        SegmentLink {
            node,
            addr,
            az,
            sent: Lsn::ZERO,
            answered: Lsn::ZERO,
            up: true,
            retry_at: None,
            backoff: SEGMENT_BACKOFF_MIN,
            latency_us: 0,
            last_error: None,
            probed_at: None,
            hinted: Hints::default(),
            wake: Arc::new(Notify::new()),
        }
    }
}

/// A record waiting in a PG queue, and when the writer made it (for the sender's linger).
#[derive(Debug)]
pub struct Queued {
    pub record: Arc<Record>,
    pub at: Instant,
}

/// A PG's outgoing records and a link to each node of its membership.
#[derive(Debug)]
pub struct PgQueue {
    /// Records not yet released, in LSN order.
    pub records: VecDeque<Queued>,
    /// One link per node of the membership, in its order.
    pub segments: Vec<SegmentLink>,
    /// Every truncation of the PG (recovery's, see `open`), sent with every Append so that a
    /// segment that missed one applies it first. Empty for a PG this writer created.
    pub truncations: Vec<Truncation>,
    /// The membership the links follow, as sent with every Append (nodes refuse an older one).
    pub membership: WireMembership,
    /// A membership refresh is under way (a node said this one is stale).
    pub refreshing: bool,
}

impl PgQueue {
    pub fn new(
        nodes: &PgNodes,
        list: &NodeList,
        scls: &BTreeMap<NodeId, Lsn>,
        truncations: Vec<Truncation>,
    ) -> PgQueue {
        let mut queue = PgQueue {
            records: VecDeque::new(),
            segments: Vec::new(),
            truncations,
            membership: nodes.membership.to_wire(),
            refreshing: false,
        };
        queue.follow(nodes, list, scls);
        queue
    }

    /// Makes the links follow `nodes`: keeps the links of nodes that stay (their state too),
    /// adds one for each new node, drops those of nodes that left (their senders stop). Returns
    /// the new nodes.
    pub fn follow(
        &mut self,
        nodes: &PgNodes,
        list: &NodeList,
        scls: &BTreeMap<NodeId, Lsn>,
    ) -> Vec<NodeId> {
        let mut old: Vec<SegmentLink> = std::mem::take(&mut self.segments);
        let mut added = Vec::new();
        for (node, addr) in nodes.list() {
            match old.iter().position(|l| l.node == node) {
                Some(position) => {
                    let mut link = old.swap_remove(position);
                    link.addr = addr;
                    self.segments.push(link);
                }
                None => {
                    let az = list.get(node).map_or("?", |n| n.az.as_str()).to_owned();
                    let mut link = SegmentLink::new(node, addr, az);
                    link.sent = scls.get(&node).copied().unwrap_or(Lsn::ZERO);
                    self.segments.push(link);
                    added.push(node);
                }
            }
        }
        // Senders of dropped links find no link on their next pass and stop.
        for link in old {
            link.wake.notify_one();
        }
        self.membership = nodes.membership.to_wire();
        added
    }

    pub fn link(&self, node: NodeId) -> Option<&SegmentLink> {
        self.segments.iter().find(|l| l.node == node)
    }

    pub fn link_mut(&mut self, node: NodeId) -> Option<&mut SegmentLink> {
        self.segments.iter_mut().find(|l| l.node == node)
    }

    /// Releases records at or below `pgcl` that every segment has acknowledged (`acked` gives a
    /// node's SCL), down ones included; beyond `keep` durable records (the PG's share of
    /// [`RETAINED_DURABLE_RECORDS_MAX`]), the oldest go anyway. Sent is not enough: a batch sent into a connection that went silent
    /// is lost with it, and the segment needs those records again when it answers. Records above
    /// the PGCL are never released (nor counted in the bound).
    pub fn release(&mut self, pgcl: Lsn, acked: impl Fn(NodeId) -> Lsn, keep: usize) {
        let mut durable = self.records.partition_point(|q| Lsn(q.record.lsn) <= pgcl);
        while durable > 0 {
            let Some(front) = self.records.front() else {
                break;
            };
            let lsn = Lsn(front.record.lsn);
            let everyone_has_it = self.segments.iter().all(|s| acked(s.node) >= lsn);
            if !everyone_has_it && durable <= keep {
                break;
            }
            self.records.pop_front();
            durable -= 1;
        }
    }

    /// True when a record of this PG at or below `target` is not durable yet (above `pgcl`):
    /// a flush to `target` waits on this PG.
    pub fn holds_back(&self, pgcl: Lsn, target: Lsn) -> bool {
        let first_not_durable = self.records.partition_point(|q| Lsn(q.record.lsn) <= pgcl);
        self.records
            .get(first_not_durable)
            .is_some_and(|q| Lsn(q.record.lsn) <= target)
    }

    pub fn peers_of(&self, node: NodeId) -> Vec<String> {
        self.segments
            .iter()
            .filter(|l| l.node != node)
            .map(|l| l.addr.clone())
            .collect()
    }
}

pub struct State {
    pub ledger: Ledger,
    pub cache: PageCache,
    pub size_bytes: u64,
    pub pgs: HashMap<PgId, PgQueue>,
    pub fenced: bool,
    pub closed: bool,
    /// Opened for reading only ([`crate::OpenOptions::read_only`]): each PG's recovered tail is
    /// its read point, though fewer than 4 segments may hold it.
    pub read_only: bool,
    /// Records at or below this LSN are sent at once (a flush or a back-pressured writer waits
    /// for them); later ones may linger briefly to travel in fewer, larger batches.
    pub push_to: Lsn,
    /// When VDL last moved (Unix microseconds): sent with it to every segment, whose archiver
    /// keeps it as the time of that consistency point (point-in-time restore maps times to LSNs
    /// with these).
    pub vdl_time_us: u64,
    /// When reads hedge and which nodes they ask last ([`crate::hedge`]).
    pub read_routing: ReadRouting,
}

/// Now, in Unix microseconds (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl State {
    /// Releases, in every PG queue, what [`PgQueue::release`] lets go with the PG's current
    /// share of the retention bound (a new PG shrinks every share).
    pub fn trim_retained(&mut self) {
        let keep = retained_per_pg(self.pgs.len());
        for (pg, queue) in self.pgs.iter_mut() {
            if let Some(chain) = self.ledger.pg(*pg) {
                queue.release(chain.pgcl, |node| chain.scl(node), keep);
            }
        }
    }

    /// Asks every sender to send, without lingering, all records up to `lsn`. A PG that the
    /// flush waits on (records up to `lsn` not durable) with fewer than [`WRITE_QUORUM`]
    /// segments up cannot make them durable: its down segments are tried again at once,
    /// whatever their back-off.
    pub fn push(&mut self, lsn: Lsn) {
        if lsn <= self.push_to {
            return;
        }
        self.push_to = lsn;
        for (pg, queue) in self.pgs.iter_mut() {
            let pgcl = self.ledger.pg(*pg).map_or(Lsn::ZERO, |chain| chain.pgcl);
            let last = queue.records.back().map(|q| Lsn(q.record.lsn));
            let short = queue.segments.iter().filter(|l| l.up).count() < WRITE_QUORUM
                && queue.holds_back(pgcl, lsn);
            for link in &mut queue.segments {
                let unsent = last.is_some_and(|last| last > link.sent);
                if short && !link.up {
                    link.retry_at = None;
                }
                if unsent {
                    link.wake.notify_one();
                }
            }
        }
    }
}

pub struct Shared {
    pub volume: String,
    /// The cluster file: where to start asking for the node list.
    pub cluster: ClusterConfig,
    pub clients: Arc<Clients>,
    /// The append connections, one per node ([`crate::append_conn`]).
    pub appends: crate::append_conn::AppendConns,
    pub epoch: Epoch,
    pub az: Option<String>,
    pub state: Mutex<State>,
    pub progress: watch::Sender<Progress>,
    /// The newest metadata this writer wrote; held across the metadata quorum write so that
    /// metadata changes (new PG, growth) are serialized.
    pub meta: tokio::sync::Mutex<VolumeMeta>,
    /// How long opening took: metadata, epoch bump, and the recovery of every PG.
    pub open_duration: Duration,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving what we can rather than cascade.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the state's VDL and flags to waiters.
    pub fn publish(&self, state: &State) {
        let progress = Progress {
            vdl: state.ledger.vdl(),
            fenced: state.fenced,
            closed: state.closed,
        };
        self.progress.send_if_modified(|current| {
            if *current != progress {
                *current = progress;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    fn hints(pgcl: u64, fold_limit: u64, vdl: u64) -> Hints {
        Hints {
            pgcl: Lsn(pgcl),
            fold_limit: Lsn(fold_limit),
            vdl: Lsn(vdl),
        }
    }

    /// A quiet PG with a peer down: the fold limit is stuck at the peer's SCL, but the PGCL and
    /// the VDL rose after the last batch was sent, so its nodes must hear them (they fold past
    /// the lagging peer with them once their hot log is full).
    #[test]
    fn hints_are_stale_when_anything_a_node_folds_by_rose() {
        let sent = hints(90, 40, 90);
        assert!(sent.stale(&hints(100, 40, 90)), "PGCL rose");
        assert!(sent.stale(&hints(90, 50, 90)), "fold limit rose");
        assert!(
            hints(100, 40, 90).stale(&hints(100, 40, 100)),
            "VDL caught up with the PGCL"
        );
        assert!(!sent.stale(&sent));
        // Past this PG's PGCL, a rising VDL (other PGs writing) is no reason for a heartbeat.
        assert!(!hints(100, 100, 100).stale(&hints(100, 100, 500)));
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;
    use sixfold_proto::record::seal;
    use sixfold_proto::PageId;

    fn queue(records: u64) -> PgQueue {
        let mut queue = PgQueue {
            records: VecDeque::new(),
            segments: (0..6)
                .map(|i| SegmentLink::new(NodeId(i), format!("node-{i}:1"), "a".into()))
                .collect(),
            truncations: Vec::new(),
            membership: WireMembership::default(),
            refreshing: false,
        };
        for lsn in 1..=records {
            let record = seal(Lsn(lsn), Lsn(lsn - 1), Epoch(1), PageId(lsn), Vec::new());
            queue.records.push_back(Queued {
                record: Arc::new(record),
                at: Instant::now(),
            });
        }
        queue
    }

    /// A segment that is down (cut off, not yet answering) keeps the records it has not
    /// acknowledged queued, though the others made them durable and it was "sent" them (into a
    /// connection that went silent): it gets them from the writer when it answers again.
    #[test]
    fn records_stay_until_every_segment_acknowledged_them() {
        let mut queue = queue(10);
        for link in &mut queue.segments {
            link.sent = Lsn(10);
        }
        queue.segments[0].up = false;
        let acked = |node: NodeId| if node == NodeId(0) { Lsn(4) } else { Lsn(10) };
        queue.release(Lsn(10), acked, retained_per_pg(1));
        let first = queue.records.front().map(|q| q.record.lsn);
        assert_eq!(first, Some(5), "records 5-10 wait for the down segment");
        queue.release(Lsn(10), |_| Lsn(10), retained_per_pg(1));
        assert!(
            queue.records.is_empty(),
            "acknowledged everywhere: released"
        );
    }

    /// Past the retention bound, durable records go even if a segment never acknowledges them
    /// (it fills its gap from its peers), but never records beyond the PGCL, and those do not
    /// count in the bound (a slow segment keeps what it has in flight).
    #[test]
    fn retention_is_bounded_and_never_releases_beyond_the_pgcl() {
        let total = RETAINED_DURABLE_RECORDS_MAX as u64 + 100;
        let acked = |node: NodeId| {
            if node == NodeId(0) {
                Lsn(0)
            } else {
                Lsn(total)
            }
        };
        let mut queue = queue(total);
        queue.release(Lsn(total), acked, retained_per_pg(1));
        assert_eq!(queue.records.len(), RETAINED_DURABLE_RECORDS_MAX);
        // The bound is the volume's: with 4 PGs, each keeps a quarter.
        let mut queue = self::queue(total);
        queue.release(Lsn(total), acked, retained_per_pg(4));
        assert_eq!(queue.records.len(), RETAINED_DURABLE_RECORDS_MAX / 4);
        let mut queue = self::queue(total);
        queue.release(Lsn(total - 200), acked, retained_per_pg(1));
        assert_eq!(
            queue.records.len() as u64,
            total,
            "durable ones under the bound stay"
        );
        let mut queue = self::queue(100);
        queue.release(Lsn(60), |_| Lsn(100), retained_per_pg(1));
        assert_eq!(queue.records.front().map(|q| q.record.lsn), Some(61));
    }

    /// A flush waits on a PG only while a record of it at or below the flush's target is not
    /// durable (the catch-up heartbeats and the retry at once go only to such PGs).
    #[test]
    fn a_pg_holds_a_flush_back_only_with_records_not_durable_below_its_target() {
        let queue = queue(10);
        assert!(queue.holds_back(Lsn(4), Lsn(5)));
        assert!(
            !queue.holds_back(Lsn(5), Lsn(5)),
            "durable up to the target"
        );
        assert!(!queue.holds_back(Lsn(10), Lsn(20)), "all durable");
        assert!(
            !self::queue(0).holds_back(Lsn(0), Lsn(20)),
            "nothing queued"
        );
    }
}
