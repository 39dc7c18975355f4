//! `sixfold status`: per PG its segments, each segment's SCL and the PGCL; the volume's VCL and
//! VDL (as the writer last reported them to the nodes), bytes used; which nodes are unreachable.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::wire::{NodeStatusRequest, NodeStatusResponse};
use sixfold_proto::{Lsn, NodeId, COPIES, PG_BYTES, WRITE_QUORUM};

use crate::clients::{ask_all, Clients};
use crate::error::VolumeError;
use crate::meta;

const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub addr: String,
    pub az: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub hot_log_bytes: u64,
    /// Bytes written to the node's hot log since it started.
    pub hot_log_written_bytes: u64,
    pub page_store_bytes: u64,
    /// Why the node refuses appends (a full disk, a failed hot log), if it does.
    pub log_error: Option<String>,
    /// Damaged data the node found, and pages it repaired from peers, since it started.
    pub corrupt_found: u64,
    pub corrupt_repaired: u64,
    /// Milliseconds the node held writer appends because its hot log was over its limit.
    pub appends_held_ms: u64,
    pub segments: usize,
    /// Where the node archives (None: backup off), and what it uploaded since it started.
    pub backup_store: Option<String>,
    pub archived_objects: u64,
    pub archived_bytes: u64,
    /// Encryption at rest (None: off, or the node did not answer).
    pub encryption: Option<EncryptionReport>,
}

/// A node's encryption at rest: its KEK, its current data keys, and how far its re-seal pass is
/// (after `sixfold key rotate`).
#[derive(Debug, Clone, Serialize)]
pub struct EncryptionReport {
    pub kek: String,
    /// "scope: generation N" per current data key ("node" for the node's own files).
    pub keys: Vec<String>,
    pub pages_resealed: u64,
    pub slots_swept: u64,
    pub slots_total: u64,
    pub stores_left: u64,
    pub log_files_left: u64,
    pub checkpoint_left: bool,
    pub meta_left: u64,
    /// Nothing on the node is left under an older key.
    pub resealed: bool,
}

impl EncryptionReport {
    pub fn from_wire(status: &sixfold_proto::wire::EncryptionStatus) -> EncryptionReport {
        EncryptionReport {
            kek: status.kek.clone(),
            keys: status
                .keys
                .iter()
                .map(|k| {
                    let scope = if k.scope.is_empty() { "node" } else { &k.scope };
                    format!("{scope}: generation {}", k.generation)
                })
                .collect(),
            pages_resealed: status.pages_resealed,
            slots_swept: status.slots_swept,
            slots_total: status.slots_total,
            stores_left: status.stores_left,
            log_files_left: status.log_files_left,
            checkpoint_left: status.checkpoint_left,
            meta_left: status.meta_left,
            resealed: status.stores_left == 0
                && status.log_files_left == 0
                && status.meta_left == 0
                && !status.checkpoint_left,
        }
    }

    /// One line for a person.
    fn line(&self) -> String {
        let state = if self.resealed {
            "nothing under older keys".to_string()
        } else {
            let percent = (self.slots_swept.saturating_mul(100))
                .checked_div(self.slots_total)
                .unwrap_or(100);
            format!(
                "RE-SEALING: page stores {percent}% swept ({} left), {} page(s) re-sealed, {} \
                 hot-log file(s) under older keys{}",
                self.stores_left,
                self.pages_resealed,
                self.log_files_left,
                match (self.checkpoint_left, self.meta_left) {
                    (false, 0) => String::new(),
                    (true, 0) => ", checkpoint".to_string(),
                    (false, n) => format!(", metadata of {n} volume(s)"),
                    (true, n) => format!(", checkpoint, metadata of {n} volume(s)"),
                }
            )
        };
        format!(
            "encrypted ({}; {}): {state}",
            self.kek,
            self.keys.join(", ")
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub node: String,
    pub az: String,
    pub reachable: bool,
    pub scl: Option<u64>,
    pub max_lsn: Option<u64>,
    pub bytes: Option<u64>,
}

/// Is a PG's data safe: how many of its six (stable) members answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PgState {
    /// All six members answer.
    Healthy,
    /// Five: one copy short (a repair brings it back).
    Degraded,
    /// Four: one more loss stalls writes.
    AtRisk,
    /// Fewer than four: writes (fsync) wait until members come back.
    Unavailable,
}

impl PgState {
    fn of(answering: usize) -> PgState {
        match answering {
            n if n >= COPIES => PgState::Healthy,
            n if n + 1 == COPIES => PgState::Degraded,
            n if n >= WRITE_QUORUM => PgState::AtRisk,
            _ => PgState::Unavailable,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PgState::Healthy => "healthy",
            PgState::Degraded => "degraded",
            PgState::AtRisk => "at risk",
            PgState::Unavailable => "unavailable",
        }
    }
}

/// How many PGs are in each state.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PgStates {
    pub healthy: usize,
    pub degraded: usize,
    pub at_risk: usize,
    pub unavailable: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgReport {
    pub pg: u32,
    /// Is its data safe, and how many of its six stable members answer.
    pub state: PgState,
    pub answering: usize,
    /// The highest LSN a write quorum of the PG's membership holds, from the SCLs of the
    /// segments that answered (unreachable ones count as 0).
    pub pgcl: u64,
    /// The PG's membership epoch, and the replacements under way ("from -> to").
    pub membership_epoch: u64,
    pub changes: Vec<String>,
    /// Each replacement's copy so far, as its new node reports it.
    pub repairs: Vec<RepairProgress>,
    /// Why the PG cannot be repaired, as its repair driver found (None: it can, or needs not).
    pub repair_blocked: Option<String>,
    pub segments: Vec<SegmentReport>,
    /// Backup: the node archiving the PG now, how far its archive reaches (a volume LSN),
    /// and the lag behind the writer's VDL, in LSNs and in milliseconds (how long ago the
    /// writer reached the oldest consistency point not yet archived). None: backup off or no
    /// archiver reachable.
    pub archiver: Option<String>,
    pub archived_lsn: Option<u64>,
    pub backup_lag_lsns: Option<u64>,
    pub backup_lag_ms: Option<u64>,
    pub archive_error: Option<String>,
}

/// A replacement's new segment copying its PG from the PG's other segments.
#[derive(Debug, Clone, Serialize)]
pub struct RepairProgress {
    /// "from -> to" (node ids).
    pub change: String,
    /// Whether the new node answered (the rest is known only then).
    pub reporting: bool,
    pub copied_bytes: u64,
    /// 0.0 to 1.0: the page scan's position while it hydrates, then the log tail's.
    pub done: f64,
    /// Bytes per second since it began copying.
    pub rate: u64,
    /// Seconds left at the pace so far (None: not started).
    pub left_s: Option<f64>,
}

impl RepairProgress {
    fn of(change: String, status: Option<&sixfold_proto::wire::SegmentStatus>) -> RepairProgress {
        let Some(s) = status else {
            return RepairProgress {
                change,
                reporting: false,
                copied_bytes: 0,
                done: 0.0,
                rate: 0,
                left_s: None,
            };
        };
        let done = f64::from(s.catch_up_done_ppm.min(1_000_000)) / 1e6;
        let seconds = s.catch_up_ms as f64 / 1000.0;
        RepairProgress {
            change,
            reporting: true,
            copied_bytes: s.catch_up_bytes,
            done,
            rate: if seconds > 0.0 {
                (s.catch_up_bytes as f64 / seconds) as u64
            } else {
                0
            },
            left_s: (done > 0.0).then(|| seconds * (1.0 - done) / done),
        }
    }

    fn render(&self) -> String {
        if !self.reporting {
            return format!("{}: the new node does not answer", self.change);
        }
        if self.copied_bytes == 0 {
            return format!("{}: starting", self.change);
        }
        let left = match self.left_s {
            Some(s) if self.done < 1.0 => format!(", about {s:.0} s left"),
            _ => ", finishing".to_string(),
        };
        format!(
            "{}: {} copied ({:.0}%), {}/s{left}",
            self.change,
            human_bytes(self.copied_bytes),
            self.done * 100.0,
            human_bytes(self.rate)
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub volume: String,
    /// One line: is the volume's data safe.
    pub verdict: String,
    /// PGs per state.
    pub pg_states: PgStates,
    pub exists: bool,
    pub metadata_error: Option<String>,
    /// The metadata error only says that too few metadata nodes answered (they may be starting).
    #[serde(skip)]
    pub metadata_unreachable: bool,
    pub size_bytes: u64,
    pub epoch: u64,
    pub metadata_version: u64,
    /// Highest VCL / VDL the writer reported to any node (None: no writer reported yet).
    pub vcl: Option<u64>,
    pub vdl: Option<u64>,
    /// Bytes of PGs allocated (10 GiB each) and bytes of records held, summed over segments.
    pub allocated_bytes: u64,
    pub stored_bytes: u64,
    pub pgs: Vec<PgReport>,
    pub nodes: Vec<NodeReport>,
    pub unreachable: Vec<String>,
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn opt(value: Option<u64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The one line that says whether the volume's data is safe.
fn verdict(
    exists: bool,
    metadata_error: Option<&str>,
    states: &PgStates,
    pgs: &[PgReport],
) -> String {
    if let Some(error) = metadata_error {
        return format!("UNKNOWN: the volume's metadata cannot be read ({error})");
    }
    if !exists {
        return "the volume does not exist yet".into();
    }
    let repairing = pgs.iter().filter(|p| !p.changes.is_empty()).count();
    let blocked = pgs.iter().filter(|p| p.repair_blocked.is_some()).count();
    let repairs = match (repairing, blocked) {
        (0, 0) => String::new(),
        (r, 0) => format!("; {r} PG(s) being repaired"),
        (0, b) => format!("; {b} PG(s) CANNOT BE REPAIRED (see below)"),
        (r, b) => format!("; {r} PG(s) being repaired, {b} CANNOT BE REPAIRED (see below)"),
    };
    if states.unavailable > 0 {
        format!(
            "UNAVAILABLE: {} PG(s) have fewer than 4 of 6 segments answering: writes and fsync \
             wait until they come back{repairs}",
            states.unavailable
        )
    } else if states.at_risk > 0 {
        format!(
            "AT RISK: {} PG(s) have 4 of 6 segments answering: one more loss stalls writes{repairs}",
            states.at_risk
        )
    } else if states.degraded > 0 {
        format!(
            "DEGRADED: {} PG(s) have 5 of 6 segments answering; every write is still on a \
             quorum{repairs}",
            states.degraded
        )
    } else {
        format!(
            "SAFE: all {} PG(s) have 6 of 6 segments answering{repairs}",
            states.healthy
        )
    }
}

/// PGs shown in detail by default; `--all` shows every one.
const PG_DETAIL_MAX: usize = 20;

impl StatusReport {
    /// Human-readable rendering: the verdict, PG counts per state, repairs under way, then the
    /// detail of the PGs that are not healthy (of every PG with `all`), and the nodes.
    pub fn render_text(&self, all: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "volume {}: {}", self.volume, self.verdict);
        let states = &self.pg_states;
        let _ = writeln!(
            out,
            "  PGs: {} healthy, {} degraded, {} at risk, {} unavailable",
            states.healthy, states.degraded, states.at_risk, states.unavailable
        );
        for pg in self.pgs.iter().filter(|p| !p.changes.is_empty()) {
            let progress: Vec<String> = pg.repairs.iter().map(RepairProgress::render).collect();
            let _ = writeln!(
                out,
                "  repair: PG {} (membership epoch {}): {}",
                pg.pg,
                pg.membership_epoch,
                progress.join("; ")
            );
        }
        for pg in self.pgs.iter().filter(|p| p.repair_blocked.is_some()) {
            let _ = writeln!(
                out,
                "  CANNOT REPAIR PG {}: {}",
                pg.pg,
                pg.repair_blocked.as_deref().unwrap_or("?")
            );
        }
        if let Some(error) = &self.metadata_error {
            let _ = writeln!(out, "  metadata: UNAVAILABLE: {error}");
        } else if !self.exists {
            let _ = writeln!(out, "  does not exist (created on first mount)");
        } else {
            let _ = writeln!(
                out,
                "  size {} ({} bytes), epoch {}, metadata version {}",
                human_bytes(self.size_bytes),
                self.size_bytes,
                self.epoch,
                self.metadata_version
            );
            let _ = writeln!(
                out,
                "  VCL {}  VDL {}  (as last reported by the writer)",
                opt(self.vcl),
                opt(self.vdl)
            );
            let _ = writeln!(
                out,
                "  {} PG(s) allocated ({}), {} of records held across all segments",
                self.pgs.len(),
                human_bytes(self.allocated_bytes),
                human_bytes(self.stored_bytes)
            );
        }
        let shown: Vec<&PgReport> = self
            .pgs
            .iter()
            .filter(|p| {
                all || p.state != PgState::Healthy
                    || !p.changes.is_empty()
                    || p.archive_error.is_some()
            })
            .collect();
        let hidden = shown
            .len()
            .saturating_sub(if all { usize::MAX } else { PG_DETAIL_MAX });
        for pg in shown
            .iter()
            .take(if all { usize::MAX } else { PG_DETAIL_MAX })
        {
            let _ = writeln!(
                out,
                "  PG {}  {} ({} of 6 answer)  PGCL {}  membership epoch {}",
                pg.pg,
                pg.state.name(),
                pg.answering,
                pg.pgcl,
                pg.membership_epoch
            );
            if let Some(archived) = pg.archived_lsn {
                let _ = writeln!(
                    out,
                    "    backup: archived through LSN {archived} by {}, lag {} LSNs / {} ms{}",
                    pg.archiver.as_deref().unwrap_or("?"),
                    opt(pg.backup_lag_lsns),
                    opt(pg.backup_lag_ms),
                    pg.archive_error
                        .as_deref()
                        .map(|e| format!("  ARCHIVING FAILS: {e}"))
                        .unwrap_or_default()
                );
            }
            for segment in &pg.segments {
                let state = if segment.reachable {
                    ""
                } else {
                    "  UNREACHABLE"
                };
                let _ = writeln!(
                    out,
                    "    {:<22} az {:<4} SCL {:<12} max LSN {:<12} {}{state}",
                    segment.node,
                    segment.az,
                    opt(segment.scl),
                    opt(segment.max_lsn),
                    segment.bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                );
            }
        }
        if hidden > 0 {
            let _ = writeln!(
                out,
                "  ... and {hidden} more PG(s) not healthy (--all shows every PG)"
            );
        }
        let _ = writeln!(out, "nodes");
        for node in &self.nodes {
            if node.reachable {
                let _ = writeln!(
                    out,
                    "  {:<22} az {:<4} up    {} segment(s), hot log {}, page stores {}",
                    node.addr,
                    node.az,
                    node.segments,
                    human_bytes(node.hot_log_bytes),
                    human_bytes(node.page_store_bytes)
                );
                if let Some(store) = &node.backup_store {
                    let _ = writeln!(
                        out,
                        "  {:<22} backup to {store}: {} object(s), {} uploaded since start",
                        "",
                        node.archived_objects,
                        human_bytes(node.archived_bytes)
                    );
                }
                match &node.encryption {
                    Some(encryption) => {
                        let _ = writeln!(out, "  {:<22} {}", "", encryption.line());
                    }
                    None => {
                        let _ = writeln!(out, "  {:<22} NOT ENCRYPTED at rest", "");
                    }
                }
                if node.corrupt_found > 0 {
                    let _ = writeln!(
                        out,
                        "  {:<22} corrupt data found {}, pages repaired from peers {}",
                        "", node.corrupt_found, node.corrupt_repaired
                    );
                }
                if node.appends_held_ms > 0 {
                    let _ = writeln!(
                        out,
                        "  {:<22} writer appends held {} ms so far (hot log over its limit)",
                        "", node.appends_held_ms
                    );
                }
                if let Some(error) = &node.log_error {
                    let _ = writeln!(out, "  {:<22} REFUSING APPENDS: {error}", "");
                }
            } else {
                let _ = writeln!(
                    out,
                    "  {:<22} az {:<4} UNREACHABLE: {}",
                    node.addr,
                    node.az,
                    node.error.as_deref().unwrap_or("?")
                );
            }
        }
        if !self.unreachable.is_empty() {
            let _ = writeln!(out, "unreachable: {}", self.unreachable.join(", "));
        }
        out
    }
}

/// A per-PG metric: name, help, the value (None: not known, no sample).
type PgMetric = (&'static str, &'static str, fn(&PgReport) -> Option<u64>);
/// A per-node metric: name, help, the value.
type NodeMetric = (&'static str, &'static str, fn(&NodeReport) -> u64);

impl StatusReport {
    /// The report as metrics, in the Prometheus text exposition format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let volume = &self.volume;
        let mut metric = |name: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        metric(
            "sixfold_volume_vdl",
            "The writer's volume durable LSN, as last reported to the nodes.",
            self.vdl
                .map(|v| vec![(format!("volume=\"{volume}\""), v)])
                .unwrap_or_default(),
        );
        let states = [
            ("healthy", self.pg_states.healthy),
            ("degraded", self.pg_states.degraded),
            ("at_risk", self.pg_states.at_risk),
            ("unavailable", self.pg_states.unavailable),
        ];
        metric(
            "sixfold_volume_pgs",
            "PGs per state: healthy (6 of 6 segments answer), degraded (5), at_risk (4), \
             unavailable (under 4).",
            states
                .iter()
                .map(|(state, count)| {
                    (
                        format!("volume=\"{volume}\",state=\"{state}\""),
                        *count as u64,
                    )
                })
                .collect(),
        );
        let per_pg: [PgMetric; 6] = [
            (
                "sixfold_pg_segments_answering",
                "Of a PG's six stable segments, how many answer.",
                |pg| Some(pg.answering as u64),
            ),
            (
                "sixfold_pg_repairs",
                "Replacements under way in the PG (repair, drain, rebalance).",
                |pg| Some(pg.changes.len() as u64),
            ),
            (
                "sixfold_pg_pgcl",
                "A PG's complete LSN: the highest LSN a write quorum of its segments holds.",
                |pg| Some(pg.pgcl),
            ),
            (
                "sixfold_backup_archived_lsn",
                "Every record of the PG at or below this volume LSN is archived.",
                |pg| pg.archived_lsn,
            ),
            (
                "sixfold_backup_lag_lsns",
                "LSNs between the writer's VDL and what the PG's archive holds.",
                |pg| pg.backup_lag_lsns,
            ),
            (
                "sixfold_backup_lag_milliseconds",
                "How long ago the writer reached the PG's oldest consistency point not yet archived.",
                |pg| pg.backup_lag_ms,
            ),
        ];
        for (name, help, value) in per_pg {
            let samples = self
                .pgs
                .iter()
                .filter_map(|pg| {
                    value(pg).map(|v| (format!("volume=\"{volume}\",pg=\"{}\"", pg.pg), v))
                })
                .collect();
            metric(name, help, samples);
        }
        let per_node: [NodeMetric; 4] = [
            ("sixfold_node_up", "1 when the node answered.", |n| {
                u64::from(n.reachable)
            }),
            (
                "sixfold_node_hot_log_bytes",
                "Bytes of hot log on the node.",
                |n| n.hot_log_bytes,
            ),
            (
                "sixfold_node_hot_log_written_bytes",
                "Bytes the node wrote to its hot log since it started.",
                |n| n.hot_log_written_bytes,
            ),
            (
                "sixfold_node_archived_bytes",
                "Bytes the node uploaded to the backup store since it started.",
                |n| n.archived_bytes,
            ),
        ];
        for (name, help, value) in per_node {
            let samples = self
                .nodes
                .iter()
                .map(|n| (format!("node=\"{}\",az=\"{}\"", n.addr, n.az), value(n)))
                .collect();
            metric(name, help, samples);
        }
        out
    }
}

/// Asks every node of the cluster and the volume's metadata quorum.
pub async fn collect(
    cluster: &ClusterConfig,
    security: &sixfold_transport::Security,
    volume: &str,
) -> Result<StatusReport, VolumeError> {
    crate::volume::validate_volume_name(volume)?;
    let clients = Arc::new(Clients::new(security.clone()));
    // Every node: those of the cluster file, and those the node list adds (and its view of
    // their AZs and states).
    let list = crate::nodes::read(&clients, cluster)
        .await
        .ok()
        .and_then(|read| read.list);
    let mut cluster_nodes: Vec<sixfold_proto::cluster::NodeEntry> = cluster.nodes.clone();
    if let Some(list) = &list {
        for node in list.voters() {
            if !cluster_nodes.iter().any(|n| n.addr == node.addr) {
                cluster_nodes.push(sixfold_proto::cluster::NodeEntry {
                    addr: node.addr.clone(),
                    az: node.az.clone(),
                });
            }
        }
    }
    let az_of = |addr: &str| {
        cluster_nodes
            .iter()
            .find(|n| n.addr == addr)
            .map_or("?", |n| n.az.as_str())
            .to_owned()
    };
    let addrs: Vec<String> = cluster_nodes.iter().map(|n| n.addr.clone()).collect();
    let answers: HashMap<String, Result<NodeStatusResponse, String>> =
        ask_all(&clients, &addrs, STATUS_TIMEOUT, |mut client| async move {
            client.node_status(NodeStatusRequest {}).await
        })
        .await
        .into_iter()
        .map(|answer| (answer.addr, answer.result))
        .collect();
    let (meta, metadata_error, metadata_unreachable) =
        match meta::read(&clients, cluster, volume).await {
            Ok(meta) => (meta, None, false),
            Err(error) => (None, Some(error.to_string()), error.is_unreachable()),
        };
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    let mut vcl = None;
    let mut vdl = None;
    for node in &cluster_nodes {
        match answers.get(&node.addr) {
            Some(Ok(status)) => {
                for state in status.volumes.iter().filter(|v| v.volume == volume) {
                    vcl = vcl.max(Some(state.writer_vcl));
                    vdl = vdl.max(Some(state.writer_vdl));
                }
                nodes.push(NodeReport {
                    addr: node.addr.clone(),
                    az: node.az.clone(),
                    reachable: true,
                    error: None,
                    hot_log_bytes: status.hot_log_bytes,
                    hot_log_written_bytes: status.hot_log_written_bytes,
                    page_store_bytes: status.page_store_bytes,
                    log_error: (!status.log_error.is_empty()).then(|| status.log_error.clone()),
                    corrupt_found: status.corrupt_found,
                    corrupt_repaired: status.corrupt_repaired,
                    appends_held_ms: status.appends_held_ms,
                    segments: status.segments.len(),
                    backup_store: (!status.backup_store.is_empty())
                        .then(|| status.backup_store.clone()),
                    archived_objects: status.archived_objects,
                    archived_bytes: status.archived_bytes,
                    encryption: status.encryption.as_ref().map(EncryptionReport::from_wire),
                });
            }
            other => {
                let error = match other {
                    Some(Err(error)) => error.clone(),
                    _ => "no answer".into(),
                };
                unreachable.push(node.addr.clone());
                nodes.push(NodeReport {
                    addr: node.addr.clone(),
                    az: node.az.clone(),
                    reachable: false,
                    error: Some(error),
                    hot_log_bytes: 0,
                    hot_log_written_bytes: 0,
                    page_store_bytes: 0,
                    log_error: None,
                    corrupt_found: 0,
                    corrupt_repaired: 0,
                    appends_held_ms: 0,
                    segments: 0,
                    backup_store: None,
                    archived_objects: 0,
                    archived_bytes: 0,
                    encryption: None,
                });
            }
        }
    }
    // Each answering node's address by its id: a membership names nodes by id, the placement
    // by address, and the two lists need not be in the same order.
    let addr_of: HashMap<NodeId, String> = answers
        .iter()
        .filter_map(|(addr, answer)| {
            let status = answer.as_ref().ok()?;
            (status.node_id != 0).then(|| (NodeId(status.node_id), addr.clone()))
        })
        .collect();
    let mut pgs = Vec::new();
    let mut stored_bytes = 0;
    if let Some(meta) = &meta {
        for placement in &meta.pgs {
            let mut segments = Vec::new();
            let mut scls: Vec<Lsn> = Vec::new();
            let mut archiver = None;
            let mut archived_lsn = None;
            let mut backup_lag_ms = None;
            let mut archive_error = None;
            let mut repair_blocked = None;
            let mut statuses = Vec::new();
            for addr in &placement.nodes {
                let found = match answers.get(addr) {
                    Some(Ok(status)) => Some(status.segments.iter().find(|s| {
                        s.segment
                            .as_ref()
                            .is_some_and(|r| r.volume == volume && r.pg == placement.pg)
                    })),
                    _ => None,
                };
                let segment = found.flatten();
                statuses.push(segment);
                if let Some(segment) = segment.filter(|s| s.archiver) {
                    archiver = Some(addr.clone());
                    archived_lsn = archived_lsn.max(Some(segment.archived_lsn));
                    backup_lag_ms = Some(segment.archive_lag_ms);
                    if !segment.archive_error.is_empty() {
                        archive_error = Some(segment.archive_error.clone());
                    }
                }
                scls.push(segment.map_or(Lsn::ZERO, |s| Lsn(s.scl)));
                if let Some(segment) = segment {
                    stored_bytes += segment.bytes;
                    if !segment.repair_blocked.is_empty() {
                        repair_blocked = Some(segment.repair_blocked.clone());
                    }
                }
                segments.push(SegmentReport {
                    node: addr.clone(),
                    az: az_of(addr),
                    reachable: found.is_some(),
                    scl: segment.map(|s| s.scl).or(found.map(|_| 0)),
                    max_lsn: segment.map(|s| s.max_lsn).or(found.map(|_| 0)),
                    bytes: segment.map(|s| s.bytes).or(found.map(|_| 0)),
                });
            }
            // The PGCL under the PG's membership (its nodes in `placement.nodes`' order).
            let membership = placement
                .membership
                .as_ref()
                .and_then(|m| sixfold_proto::membership::Membership::from_wire(m).ok());
            // Where node `n` of the membership sits in the placement's list, by its address;
            // None for a node that did not answer (its segment counts as unreachable).
            let position_of = |_: &[NodeId], n: NodeId| {
                addr_of
                    .get(&n)
                    .and_then(|addr| placement.nodes.iter().position(|a| a == addr))
            };
            let pgcl = match &membership {
                Some(membership) => {
                    let nodes = membership.nodes();
                    membership.pgcl(|n| {
                        position_of(&nodes, n)
                            .and_then(|i| scls.get(i).copied())
                            .unwrap_or(Lsn::ZERO)
                    })
                }
                None => {
                    let mut sorted = scls.clone();
                    sorted.sort_unstable_by(|a, b| b.cmp(a));
                    sorted.get(3).copied().unwrap_or(Lsn::ZERO)
                }
            };
            // The stable members (before replacements under way) that answer.
            let stable: Vec<usize> = match &membership {
                Some(m) => {
                    let nodes = m.nodes();
                    m.members
                        .iter()
                        .filter_map(|member| position_of(&nodes, *member))
                        .collect()
                }
                None => (0..segments.len().min(COPIES)).collect(),
            };
            let answering = stable
                .iter()
                .filter(|i| {
                    segments
                        .get(**i)
                        .is_some_and(|s| s.reachable && s.scl.is_some())
                })
                .count();
            pgs.push(PgReport {
                pg: placement.pg,
                state: PgState::of(answering),
                answering,
                pgcl: pgcl.0,
                membership_epoch: membership.as_ref().map_or(0, |m| m.epoch.0),
                changes: membership
                    .iter()
                    .flat_map(|m| m.changes.iter())
                    .map(|c| format!("{} -> {}", c.from, c.to))
                    .collect(),
                repairs: membership
                    .iter()
                    .flat_map(|m| {
                        let nodes = m.nodes();
                        let statuses = &statuses;
                        let position_of = &position_of;
                        m.changes.iter().map(move |c| {
                            let status = position_of(&nodes, c.to)
                                .and_then(|i| statuses.get(i).copied().flatten());
                            RepairProgress::of(format!("{} -> {}", c.from, c.to), status)
                        })
                    })
                    .collect(),
                repair_blocked,
                segments,
                archiver,
                archived_lsn,
                backup_lag_lsns: archived_lsn.map(|a| vdl.unwrap_or(0).saturating_sub(a)),
                backup_lag_ms,
                archive_error,
            });
        }
    }
    let mut pg_states = PgStates::default();
    for pg in &pgs {
        match pg.state {
            PgState::Healthy => pg_states.healthy += 1,
            PgState::Degraded => pg_states.degraded += 1,
            PgState::AtRisk => pg_states.at_risk += 1,
            PgState::Unavailable => pg_states.unavailable += 1,
        }
    }
    let verdict = verdict(meta.is_some(), metadata_error.as_deref(), &pg_states, &pgs);
    Ok(StatusReport {
        volume: volume.to_owned(),
        verdict,
        pg_states,
        exists: meta.is_some(),
        metadata_error,
        metadata_unreachable,
        size_bytes: meta.as_ref().map(|m| m.size_bytes).unwrap_or(0),
        epoch: meta.as_ref().map(|m| m.epoch).unwrap_or(0),
        metadata_version: meta.as_ref().map(|m| m.version).unwrap_or(0),
        vcl,
        vdl,
        allocated_bytes: pgs.len() as u64 * PG_BYTES,
        stored_bytes,
        pgs,
        nodes,
        unreachable,
    })
}
