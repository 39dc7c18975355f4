//! The writer's shared state: one mutex over the ledger, the page cache and the PG queues, held
//! only for short, non-blocking sections (never across an await), plus a watch channel that
//! publishes progress (VDL, fencing) to waiting flushes and writers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::wire::{Membership as WireMembership, Record, Truncation, VolumeMeta};
use sixfold_proto::{Epoch, Lsn, NodeId, PgId};
use tokio::sync::{watch, Notify};

use crate::cache::PageCache;
use crate::clients::Clients;
use crate::ledger::Ledger;
use crate::open::PgNodes;

/// Records a PG queue keeps for slow segments beyond those not yet durable. Past this, durable
/// records are released even if a live segment has not received them (it gap-fills from peers).
pub const RETAINED_DURABLE_RECORDS_MAX: usize = 4096;
/// Back-off after a failed request to a segment, doubling up to the max.
pub const SEGMENT_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const SEGMENT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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

    /// Releases records at or below `pgcl` that every live segment has been sent (or all durable
    /// ones beyond the retention bound).
    pub fn release(&mut self, pgcl: Lsn) {
        while let Some(front) = self.records.front() {
            let lsn = Lsn(front.record.lsn);
            if lsn > pgcl {
                break;
            }
            let everyone_has_it = self.segments.iter().all(|s| !s.up || s.sent >= lsn);
            if !everyone_has_it && self.records.len() <= RETAINED_DURABLE_RECORDS_MAX {
                break;
            }
            self.records.pop_front();
        }
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
}

/// Now, in Unix microseconds (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl State {
    /// Asks every sender to send, without lingering, all records up to `lsn`.
    pub fn push(&mut self, lsn: Lsn) {
        if lsn <= self.push_to {
            return;
        }
        self.push_to = lsn;
        for queue in self.pgs.values() {
            let unsent = |link: &SegmentLink| {
                queue
                    .records
                    .back()
                    .is_some_and(|q| Lsn(q.record.lsn) > link.sent)
            };
            for link in queue.segments.iter().filter(|l| unsent(l)) {
                link.wake.notify_one();
            }
        }
    }
}

pub struct Shared {
    pub volume: String,
    /// The cluster file: where to start asking for the node list.
    pub cluster: ClusterConfig,
    pub clients: Arc<Clients>,
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
