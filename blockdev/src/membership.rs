//! The writer follows its PGs' membership changes.
//!
//! A node that holds a newer membership of a PG than the one an Append carries refuses it
//! ("stale membership"). The writer then reads the volume metadata again (a change's driver
//! records each step there once a write quorum of nodes holds it) until it shows a newer
//! membership, and follows it: the ledger counts quorums by the new membership (its PGCL never
//! falls: see [`crate::ledger`]), links to new nodes are made and their senders started, links
//! to nodes that left are dropped (their senders stop). Records the PG queue still holds go to
//! the new nodes; the rest they fill from their peers (gossip and hydration), as any segment
//! that was away does.
//!
//! Until the metadata shows the change the writer keeps sending with its old membership: the
//! nodes that refuse count as down, and flushes wait while too few accept (as with nodes down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sixfold_proto::nodes::NodeList;
use sixfold_proto::{MembershipEpoch, PgId};
use tracing::{info, warn};

use crate::open::PgNodes;
use crate::shared::Shared;
use crate::{meta, nodes, sender};

/// How often the metadata is read again while it does not show the newer membership yet (a
/// driver records a step right after a write quorum took it: usually the first read shows it).
const REFRESH_EVERY: Duration = Duration::from_millis(100);
/// How often a refresh that keeps waiting says so.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A node refused `pg`'s membership as stale: start (once) a refresh of it.
pub fn on_stale(shared: &Arc<Shared>, pg: PgId, addr: &str, message: &str) {
    let mut state = shared.lock();
    let Some(queue) = state.pgs.get_mut(&pg) else {
        return;
    };
    if queue.refreshing {
        return;
    }
    queue.refreshing = true;
    info!(volume = %shared.volume, %pg, node = addr, "the PG's membership changed: {message}");
    drop(state);
    tokio::spawn(refresh(shared.clone(), pg));
}

async fn refresh(shared: Arc<Shared>, pg: PgId) {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        {
            let state = shared.lock();
            if state.closed || state.fenced {
                return;
            }
        }
        match newer(&shared, pg).await {
            Ok(Some((nodes, list))) => {
                follow(&shared, pg, nodes, &list).await;
                return;
            }
            Ok(None) => {}
            Err(error) => {
                if reported.elapsed() >= REPORT_EVERY {
                    reported = Instant::now();
                    warn!(volume = %shared.volume, %pg, waited_s = started.elapsed().as_secs(), "cannot read the PG's new membership yet: {error}");
                }
            }
        }
        tokio::time::sleep(REFRESH_EVERY).await;
    }
}

/// The PG's membership from the metadata, if newer than the one the writer follows.
async fn newer(shared: &Arc<Shared>, pg: PgId) -> Result<Option<(PgNodes, NodeList)>, String> {
    let meta = meta::read(&shared.clients, &shared.cluster, &shared.volume)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the volume's metadata is gone")?;
    let placement = meta
        .pgs
        .iter()
        .find(|p| p.pg == pg.0)
        .ok_or("the PG is not in the metadata")?;
    let recorded = MembershipEpoch(placement.membership.as_ref().map_or(0, |m| m.epoch));
    let current = {
        let state = shared.lock();
        match state.pgs.get(&pg) {
            Some(queue) => MembershipEpoch(queue.membership.epoch),
            None => return Ok(None),
        }
    };
    if recorded <= current {
        return Ok(None);
    }
    let list = nodes::for_lookup(&shared.clients, &shared.cluster)
        .await
        .map_err(|e| e.to_string())?;
    let nodes = PgNodes::resolve(&shared.volume, placement, &list).map_err(|e| e.to_string())?;
    Ok(Some((nodes, list)))
}

/// Makes the ledger, the PG queue's links and the senders follow `nodes`.
pub async fn follow(shared: &Arc<Shared>, pg: PgId, nodes: PgNodes, list: &NodeList) {
    let added = {
        let mut state = shared.lock();
        let state = &mut *state;
        let Some(queue) = state.pgs.get_mut(&pg) else {
            return;
        };
        if nodes.membership.epoch <= MembershipEpoch(queue.membership.epoch) {
            queue.refreshing = false;
            return;
        }
        let vdl_moved = state.ledger.set_membership(pg, nodes.membership.clone());
        let scls = state
            .ledger
            .pg(pg)
            .map(|chain| chain.scls.clone())
            .unwrap_or_default();
        let added = queue.follow(&nodes, list, &scls);
        queue.refreshing = false;
        if vdl_moved {
            let vdl = state.ledger.vdl();
            state.cache.unpin(vdl);
            shared.publish(state);
        }
        added
    };
    {
        let mut meta = shared.meta.lock().await;
        if let Some(placement) = meta.pgs.iter_mut().find(|p| p.pg == pg.0) {
            placement.membership = Some(nodes.membership.to_wire());
            placement.nodes = nodes.addresses();
        }
    }
    sender::spawn_senders(shared, pg, &added);
    info!(volume = %shared.volume, %pg, membership = %nodes.membership, "following the PG's new membership");
}
