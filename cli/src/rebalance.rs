//! `sixfold rebalance`: evens out segments per node after nodes were added. It surveys every
//! PG's membership on the nodes, plans moves within each AZ ([`sixfold_proto::rebalance`]) and
//! prints them; with `--apply` it carries them out, at most `--concurrency` at once and one at a
//! time per PG, showing progress until every move is done.
//!
//! A move is a membership change: this command begins it (`Membership::begin_move`, sent to
//! the PG's nodes as a step from the membership they hold, counted once a write quorum of it
//! holds the step, then recorded in the volume metadata), and the PG's repair driver completes
//! it once the new node caught up, exactly as for a drain. Writers follow the metadata, so
//! applications see nothing. A PG that is changing already (a repair, a drain) is left alone.
//! Interrupting `--apply` leaves the moves begun to their drivers; running it again plans from
//! where the cluster is.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sixfold_blockdev::nodes::{self, ClusterError};
use sixfold_blockdev::Clients;
use sixfold_proto::membership::Membership;
use sixfold_proto::nodes::NodeList;
use sixfold_proto::rebalance::{self, Move};
use sixfold_proto::wire::{
    ChangeMembershipRequest, NodeStatusRequest, PutPgMembershipRequest, SegmentRef,
    SegmentStateRequest,
};
use sixfold_proto::{placement, NodeId, WRITE_QUORUM};

use crate::wait::{retry, WAIT_DEFAULT};

/// Time between two looks at the moves under way.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Timeout of one call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
#[command(about = "Even out segments per node after nodes were added (a dry run unless --apply)")]
pub struct RebalanceArgs {
    /// Carry the moves out (default: only print them).
    #[arg(long)]
    apply: bool,
    /// Most moves under way at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Give up waiting after this long (the moves begun go on).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Cluster file (TOML, one [[node]] table with `addr` and `az` per storage node).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// State directory of `sixfold up` (uses its cluster.toml).
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    state: Option<PathBuf>,
    /// How long to wait for enough nodes to answer (they may still be starting).
    #[arg(long, value_name = "DURATION", default_value = WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// A PG as its nodes answered.
struct PgView {
    segment: SegmentRef,
    /// The newest membership any of its nodes holds, and the one that was a step from.
    membership: Membership,
    base: Option<Membership>,
    /// Each answering node's membership.
    held: BTreeMap<NodeId, Option<Membership>>,
}

impl PgView {
    fn key(&self) -> String {
        placement::pg_key(&self.segment.volume, self.segment.pg)
    }

    /// The newest membership is in force: a write quorum of its base holds it (or it came
    /// from a writer), and no replacement is under way.
    fn settled(&self) -> bool {
        let holds = |n: NodeId| {
            self.held
                .get(&n)
                .is_some_and(|m| m.as_ref() == Some(&self.membership))
        };
        self.membership.is_stable() && self.base.as_ref().is_none_or(|b| b.is_write_quorum(holds))
    }
}

pub fn run(args: RebalanceArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let (seed, runtime, clients) =
        crate::cluster::connect(args.cluster.as_ref(), args.state.as_ref(), tls)?;
    runtime.block_on(async {
        let list = retry("rebalance", args.wait, ClusterError::is_unreachable, || {
            nodes::current(&clients, &seed)
        })
        .await
        .context("read the node list")?;
        let pgs = survey(&clients, &list).await?;
        let memberships: Vec<(String, Membership)> = pgs
            .iter()
            .map(|p| (p.key(), p.membership.clone()))
            .collect();
        let moves = rebalance::plan(&list, &memberships);
        print_plan(&list, &memberships, &moves);
        if moves.is_empty() || !args.apply {
            if !moves.is_empty() {
                println!("sixfold rebalance: a dry run; `--apply` carries these moves out");
            }
            return Ok(());
        }
        apply(&clients, &list, moves, &args).await
    })
}

/// Every PG some active or draining node holds a segment of, with its membership.
async fn survey(clients: &Arc<Clients>, list: &NodeList) -> anyhow::Result<Vec<PgView>> {
    let mut holders: BTreeMap<(String, u32), BTreeSet<NodeId>> = BTreeMap::new();
    for node in list.voters() {
        let Ok(client) = clients.get(&node.addr) else {
            continue;
        };
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            client.clone().node_status(NodeStatusRequest {}),
        )
        .await;
        let Ok(Ok(status)) = answer else {
            eprintln!(
                "sixfold rebalance: {} ({}) does not answer",
                node.id, node.addr
            );
            continue;
        };
        for segment in status.into_inner().segments.iter().filter(|s| s.member) {
            if let Some(r) = &segment.segment {
                holders
                    .entry((r.volume.clone(), r.pg))
                    .or_default()
                    .insert(node.id);
            }
        }
    }
    let mut pgs = Vec::new();
    for ((volume, pg), nodes) in holders {
        let segment = SegmentRef { volume, pg };
        if let Some(view) = look(clients, list, &segment, &nodes).await {
            pgs.push(view);
        }
    }
    Ok(pgs)
}

/// The PG's state on `nodes` (and on the nodes their memberships name).
async fn look(
    clients: &Arc<Clients>,
    list: &NodeList,
    segment: &SegmentRef,
    nodes: &BTreeSet<NodeId>,
) -> Option<PgView> {
    let mut asked: BTreeSet<NodeId> = BTreeSet::new();
    let mut held: BTreeMap<NodeId, Option<Membership>> = BTreeMap::new();
    let mut bases: Vec<(Membership, Option<Membership>)> = Vec::new();
    let mut queue: Vec<NodeId> = nodes.iter().copied().collect();
    while let Some(node) = queue.pop() {
        if !asked.insert(node) {
            continue;
        }
        let Some(record) = list.get(node) else {
            continue;
        };
        let Ok(client) = clients.get(&record.addr) else {
            continue;
        };
        let request = SegmentStateRequest {
            segment: Some(segment.clone()),
            seal_epoch: 0,
            learn: Vec::new(),
            membership: None,
        };
        let answer =
            tokio::time::timeout(CALL_TIMEOUT, client.clone().segment_state(request)).await;
        let Ok(Ok(state)) = answer else {
            continue;
        };
        let state = state.into_inner();
        let decode = |m: Option<&sixfold_proto::wire::Membership>| {
            m.and_then(|m| Membership::from_wire(m).ok())
        };
        let membership = decode(state.membership.as_ref());
        if let Some(m) = &membership {
            queue.extend(m.nodes());
            bases.push((m.clone(), decode(state.membership_base.as_ref())));
        }
        held.insert(node, membership);
    }
    let (membership, base) = bases.into_iter().max_by_key(|(m, _)| m.epoch)?;
    Some(PgView {
        segment: segment.clone(),
        membership,
        base,
        held,
    })
}

fn print_plan(list: &NodeList, pgs: &[(String, Membership)], moves: &[Move]) {
    let before = rebalance::load(list, pgs);
    let mut after = before.clone();
    for m in moves {
        *after.entry(m.from).or_default() -= 1;
        *after.entry(m.to).or_default() += 1;
    }
    println!(
        "sixfold rebalance: {} PG(s) on {} active node(s); {} move(s) planned",
        pgs.len(),
        before.len(),
        moves.len()
    );
    println!(
        "  {:<20} {:<4} {:>8} {:>8}",
        "NODE", "AZ", "BEFORE", "AFTER"
    );
    for node in list.nodes.iter().filter(|n| before.contains_key(&n.id)) {
        println!(
            "  {:<20} {:<4} {:>8} {:>8}",
            node.id.to_string(),
            node.az,
            before[&node.id],
            after.get(&node.id).copied().unwrap_or(0)
        );
    }
    for m in moves {
        println!("  move {}: {} -> {}", m.pg, m.from, m.to);
    }
}

/// Carries the moves out, `--concurrency` at once, one at a time per PG.
async fn apply(
    clients: &Arc<Clients>,
    list: &NodeList,
    moves: Vec<Move>,
    args: &RebalanceArgs,
) -> anyhow::Result<()> {
    let total = moves.len();
    let started = Instant::now();
    let mut pending: VecDeque<Move> = moves.into();
    let mut under_way: Vec<(Move, SegmentRef)> = Vec::new();
    let (mut done, mut skipped) = (0, 0);
    let mut last_line = String::new();
    while !pending.is_empty() || !under_way.is_empty() {
        // Moves under way: done once the PG is settled with the new node in the old one's place.
        let mut still = Vec::new();
        for (m, segment) in under_way {
            let nodes: BTreeSet<NodeId> = [m.from, m.to].into();
            match look(clients, list, &segment, &nodes).await {
                Some(view)
                    if view.settled()
                        && view.membership.contains(m.to)
                        && !view.membership.contains(m.from) =>
                {
                    done += 1;
                }
                Some(view) if view.settled() && view.membership.contains(m.from) => {
                    eprintln!(
                        "sixfold rebalance: the move of {} to {} was rolled back (the new node \
                         went silent); run rebalance again to plan anew",
                        m.pg, m.to
                    );
                    skipped += 1;
                }
                _ => still.push((m, segment)),
            }
        }
        under_way = still;
        // Begin more, never two for one PG.
        let mut deferred = VecDeque::new();
        while under_way.len() < args.concurrency as usize {
            let Some(m) = pending.pop_front() else {
                break;
            };
            if under_way.iter().any(|(u, _)| u.pg == m.pg) {
                deferred.push_back(m);
                continue;
            }
            match begin(clients, list, &m).await {
                Ok(segment) => under_way.push((m, segment)),
                Err(Begin::Later(why)) => {
                    tracing::debug!(pg = %m.pg, "move deferred: {why}");
                    deferred.push_back(m);
                }
                Err(Begin::Never(why)) => {
                    eprintln!("sixfold rebalance: {} not moved: {why}", m.pg);
                    skipped += 1;
                }
                // An earlier attempt's step fell short of a write quorum, and the PG's driver
                // pushed it on to the end.
                Err(Begin::Made) => done += 1,
            }
        }
        deferred.extend(pending);
        pending = deferred;
        let line = format!(
            "{done} of {total} move(s) done, {} under way, {} waiting",
            under_way.len(),
            pending.len()
        );
        if line != last_line {
            println!(
                "sixfold rebalance: {line} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            last_line = line;
        }
        if pending.is_empty() && under_way.is_empty() {
            break;
        }
        if started.elapsed() >= args.timeout {
            anyhow::bail!(
                "{done} of {total} move(s) done after {:?}; those begun go on",
                args.timeout
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    println!(
        "sixfold rebalance: done: {done} move(s) in {:.0} s{}",
        started.elapsed().as_secs_f64(),
        if skipped > 0 {
            format!(", {skipped} not made")
        } else {
            String::new()
        }
    );
    Ok(())
}

enum Begin {
    /// The PG is busy (changing, or its nodes do not all answer): try again later.
    Later(String),
    /// The plan no longer fits the PG.
    Never(String),
    /// The PG already holds the move's result.
    Made,
}

/// Begins `m`: a step from the membership the PG's nodes hold, at a write quorum of it, then
/// recorded in the volume metadata.
async fn begin(clients: &Arc<Clients>, list: &NodeList, m: &Move) -> Result<SegmentRef, Begin> {
    let (volume, pg) = parse_key(&m.pg).ok_or_else(|| Begin::Never("bad PG key".into()))?;
    let segment = SegmentRef { volume, pg };
    let nodes: BTreeSet<NodeId> = [m.from].into();
    let view = look(clients, list, &segment, &nodes)
        .await
        .ok_or_else(|| Begin::Later("its nodes do not answer".into()))?;
    if !view.settled() {
        return Err(Begin::Later("a membership change is under way".into()));
    }
    let current = &view.membership;
    if current.contains(m.to) && !current.contains(m.from) {
        return Err(Begin::Made);
    }
    if !current.contains(m.from) || current.contains(m.to) {
        return Err(Begin::Never(format!(
            "its membership changed meanwhile ({current})"
        )));
    }
    let proposed = current
        .begin_move(m.from, m.to)
        .map_err(|e| Begin::Never(e.to_string()))?;
    let addr = |n: NodeId| list.get(n).map(|r| r.addr.clone());
    let peers: Vec<String> = proposed.nodes().into_iter().filter_map(addr).collect();
    let mut targets = current.nodes();
    targets.extend(proposed.nodes());
    targets.sort_unstable();
    targets.dedup();
    // To every node at once: one slow node does not hold the others back.
    let mut calls = tokio::task::JoinSet::new();
    for node in targets {
        let Some(mut client) = addr(node).and_then(|a| clients.get(&a).ok()) else {
            continue;
        };
        let request = ChangeMembershipRequest {
            segment: Some(segment.clone()),
            base: Some(current.to_wire()),
            proposed: Some(proposed.to_wire()),
            peers: peers.clone(),
            catch_up_to: 0,
            catch_up: false,
            superseded: None,
            ballot: None,
        };
        calls.spawn(async move {
            let answer = tokio::time::timeout(CALL_TIMEOUT, client.change_membership(request));
            (node, matches!(answer.await, Ok(Ok(_))))
        });
    }
    let mut held = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok((node, true)) = joined {
            held.push(node);
        }
    }
    if !current.is_write_quorum(|n| held.contains(&n)) {
        // Not established: the PG's driver establishes it or steps over it.
        return Err(Begin::Later(format!(
            "the step reached {} node(s), short of a write quorum",
            held.len()
        )));
    }
    record(clients, list, &segment, &proposed, &peers).await;
    Ok(segment)
}

/// Records `membership` in the volume metadata (every voter is asked; the metadata nodes merge
/// it). Best effort: the PG's driver records it too.
async fn record(
    clients: &Arc<Clients>,
    list: &NodeList,
    segment: &SegmentRef,
    membership: &Membership,
    nodes: &[String],
) {
    let mut recorded = 0;
    for voter in list.voters() {
        let Ok(client) = clients.get(&voter.addr) else {
            continue;
        };
        let request = PutPgMembershipRequest {
            volume: segment.volume.clone(),
            pg: segment.pg,
            membership: Some(membership.to_wire()),
            nodes: nodes.to_vec(),
        };
        let answer =
            tokio::time::timeout(CALL_TIMEOUT, client.clone().put_pg_membership(request)).await;
        if let Ok(Ok(r)) = answer {
            if r.into_inner().epoch >= membership.epoch.0 {
                recorded += 1;
            }
        }
    }
    if recorded < WRITE_QUORUM {
        tracing::debug!(volume = %segment.volume, pg = segment.pg, recorded, "membership recorded on fewer than 4 metadata nodes; its driver records it");
    }
}

/// (volume, pg) of a placement key "volume/pg/N".
fn parse_key(key: &str) -> Option<(String, u32)> {
    let (volume, pg) = key.rsplit_once("/pg/")?;
    Some((volume.to_string(), pg.parse().ok()?))
}
