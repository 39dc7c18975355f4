//! The cluster's node list over the network: read it from a majority, change it by quorum, and
//! create it from the cluster file the first time (see [`sixfold_proto::nodes`] for the rules).
//!
//! Read: ask the seed addresses (the cluster file) and every node of the newest list learned,
//! until no new address turns up; trust the newest version once a majority of its voters
//! answered (with any version, or none).
//!
//! Write ([`change`]): version N+1 goes to every voter of the old and the new list; it counts once
//! a majority of each holds it. A node refuses version N+1 with other contents, so of two changes
//! racing from one list at most one succeeds; the other reads again and fails or retries.
//!
//! First use ([`current`] with no list anywhere): the cluster file's nodes, each with the id its
//! NodeStatus reports, become version 1 (every seed node must answer, and report the AZ the file
//! names). Two processes doing this at once write the same list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sixfold_proto::cluster::ClusterConfig;
use sixfold_proto::nodes::{NodeList, NodeListError, NodeRecord, NodeState};
use sixfold_proto::wire::{GetNodeListRequest, NodeStatusRequest, PutNodeListRequest};
use sixfold_proto::NodeId;
use thiserror::Error;

use crate::clients::{ask_all, ask_quorum, at_least, Answer, Clients};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of asking newly learned addresses before a read gives up looking further.
const READ_ROUNDS_MAX: usize = 8;

#[derive(Debug, Error)]
pub enum ClusterError {
    /// Too few nodes answered (they may still be starting: see [`crate::wait`]).
    #[error("only {answered} of {asked} nodes answered, {needed} needed: {detail}")]
    Unreachable {
        answered: usize,
        asked: usize,
        needed: usize,
        detail: String,
    },
    #[error(transparent)]
    List(#[from] NodeListError),
    #[error("{0}")]
    Refused(String),
}

impl ClusterError {
    /// Whether waiting for more nodes to start could help.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClusterError::Unreachable { .. })
    }
}

/// A read of the node list: the newest version (None: no node holds one), and who answered.
#[derive(Debug, Clone)]
pub struct ListRead {
    pub list: Option<NodeList>,
    /// Addresses that answered, and those that did not with why.
    pub answered: BTreeSet<String>,
    pub failed: BTreeMap<String, String>,
}

/// Reads the node list from `seed`'s addresses and every node it learns of, waiting for every
/// node's answer (or timeout): what `sixfold cluster nodes` shows.
pub async fn read(clients: &Arc<Clients>, seed: &ClusterConfig) -> Result<ListRead, ClusterError> {
    read_with(clients, seed, true, false).await
}

/// [`read`] that waits for a majority of those asked in each round and then only briefly for
/// the rest (see [`ask_quorum`]): a silent node costs no timeout. The majority of the newest
/// list's voters is still required; a quick read that misses it (stragglers dropped that the
/// count needed) is done again in full.
async fn read_quick(
    clients: &Arc<Clients>,
    seed: &ClusterConfig,
) -> Result<ListRead, ClusterError> {
    match read_with(clients, seed, true, true).await {
        Err(ClusterError::Unreachable { .. }) => read(clients, seed).await,
        other => other,
    }
}

/// The node list for finding a PG's nodes: the newest version any node answered with, even
/// when fewer than a majority answered (a read-only mount with 3 of 6 nodes up must find
/// them). Ids never change meaning, so an older list only risks an old address; changing the
/// list or placing new PGs uses [`current`], which needs a majority.
pub async fn for_lookup(
    clients: &Arc<Clients>,
    seed: &ClusterConfig,
) -> Result<NodeList, ClusterError> {
    match read_with(clients, seed, false, false).await?.list {
        Some(list) => Ok(list),
        None => current(clients, seed).await,
    }
}

async fn read_with(
    clients: &Arc<Clients>,
    seed: &ClusterConfig,
    need_majority: bool,
    quick: bool,
) -> Result<ListRead, ClusterError> {
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut to_ask: Vec<String> = seed.nodes.iter().map(|n| n.addr.clone()).collect();
    let mut newest: Option<NodeList> = None;
    let mut answered = BTreeSet::new();
    let mut failed = BTreeMap::new();
    for _ in 0..READ_ROUNDS_MAX {
        to_ask.retain(|addr| !asked.contains(addr));
        to_ask.sort();
        to_ask.dedup();
        if to_ask.is_empty() {
            break;
        }
        asked.extend(to_ask.iter().cloned());
        // Quick: a majority of those asked is what the list needs (it is written at a majority
        // of its voters); a silent node then costs no timeout.
        let enough = at_least(if quick {
            to_ask.len() / 2 + 1
        } else {
            usize::MAX
        });
        let answers = ask_quorum(
            clients,
            &to_ask,
            CALL_TIMEOUT,
            enough,
            |mut client| async move { client.get_node_list(GetNodeListRequest {}).await },
        )
        .await;
        for addr in &to_ask {
            if !answers.iter().any(|a| a.addr == *addr) {
                failed.insert(addr.clone(), "no answer while a majority answered".into());
            }
        }
        for Answer { addr, result, .. } in answers {
            match result.map_err(|e| e.to_string()).and_then(|response| {
                response
                    .list
                    .map(|l| NodeList::from_wire(&l).map_err(|e| e.to_string()))
                    .transpose()
            }) {
                Ok(list) => {
                    answered.insert(addr);
                    if let Some(list) = list {
                        if newest.as_ref().is_none_or(|n| list.version > n.version) {
                            newest = Some(list);
                        }
                    }
                }
                Err(error) => {
                    failed.insert(addr, error);
                }
            }
        }
        to_ask = newest
            .iter()
            .flat_map(|l| l.voters().map(|n| n.addr.clone()))
            .collect();
    }
    let unreachable = |failed: &BTreeMap<String, String>| {
        failed
            .iter()
            .map(|(addr, e)| format!("{addr}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match &newest {
        Some(list) => {
            let voters_answered = list.voters().filter(|n| answered.contains(&n.addr)).count();
            if need_majority && voters_answered < list.majority() {
                return Err(ClusterError::Unreachable {
                    answered: voters_answered,
                    asked: list.voters().count(),
                    needed: list.majority(),
                    detail: format!(
                        "reading node list version {}; unreachable: {}",
                        list.version,
                        unreachable(&failed)
                    ),
                });
            }
        }
        None if !failed.is_empty() && (need_majority || answered.is_empty()) => {
            // Nobody that answered holds a list: only all of the seed can say there is none.
            return Err(ClusterError::Unreachable {
                answered: answered.len(),
                asked: asked.len(),
                needed: asked.len(),
                detail: format!(
                    "no node holds a node list yet, and creating one from the cluster file needs \
                     every node listed; unreachable: {}",
                    unreachable(&failed)
                ),
            });
        }
        None => {}
    }
    Ok(ListRead {
        list: newest,
        answered,
        failed,
    })
}

/// The node list, created from the cluster file on first use.
pub async fn current(
    clients: &Arc<Clients>,
    seed: &ClusterConfig,
) -> Result<NodeList, ClusterError> {
    if let Some(list) = read_quick(clients, seed).await?.list {
        return Ok(list);
    }
    let first = from_seed(clients, seed).await?;
    write(clients, None, &first).await?;
    Ok(first)
}

/// Version 1 of the list: every node of the cluster file with the id it reports.
async fn from_seed(clients: &Arc<Clients>, seed: &ClusterConfig) -> Result<NodeList, ClusterError> {
    let addrs: Vec<String> = seed.nodes.iter().map(|n| n.addr.clone()).collect();
    let answers = ask_all(clients, &addrs, CALL_TIMEOUT, |mut client| async move {
        client.node_status(NodeStatusRequest {}).await
    })
    .await;
    let mut ids = BTreeMap::new();
    let mut failures = Vec::new();
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(status) if status.node_id == 0 => {
                failures.push(format!("{addr}: reports no node id (an older sixfold?)"))
            }
            Ok(status) => {
                let listed = seed.az_of(&addr).unwrap_or_default();
                if status.az != listed {
                    return Err(ClusterError::Refused(format!(
                        "{addr} says it is in AZ {:?}, the cluster file says {listed:?}",
                        status.az
                    )));
                }
                ids.insert(addr, NodeId(status.node_id));
            }
            Err(error) => failures.push(format!("{addr}: {error}")),
        }
    }
    if ids.len() < addrs.len() {
        return Err(ClusterError::Unreachable {
            answered: ids.len(),
            asked: addrs.len(),
            needed: addrs.len(),
            detail: format!(
                "creating the node list from the cluster file; {}",
                failures.join("; ")
            ),
        });
    }
    let mut nodes: Vec<NodeRecord> = seed
        .nodes
        .iter()
        .map(|n| NodeRecord {
            id: ids[&n.addr],
            addr: n.addr.clone(),
            az: n.az.clone(),
            state: NodeState::Active,
        })
        .collect();
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    let list = NodeList { version: 1, nodes };
    list.check()?;
    Ok(list)
}

/// Writes `new` (one step from `old`) to a majority of the voters of both.
pub async fn write(
    clients: &Arc<Clients>,
    old: Option<&NodeList>,
    new: &NodeList,
) -> Result<(), ClusterError> {
    let mut targets: BTreeSet<String> = new.voters().map(|n| n.addr.clone()).collect();
    if let Some(old) = old {
        targets.extend(old.voters().map(|n| n.addr.clone()));
    }
    let targets: Vec<String> = targets.into_iter().collect();
    let wire = new.to_wire();
    let answers = ask_all(clients, &targets, CALL_TIMEOUT, |mut client| {
        let request = PutNodeListRequest {
            list: Some(wire.clone()),
        };
        async move { client.put_node_list(request).await }
    })
    .await;
    let mut holding = BTreeSet::new();
    let mut failures = Vec::new();
    let mut conflict = None;
    for Answer { addr, result, .. } in answers {
        match result {
            Ok(response) if response.version == new.version => {
                holding.insert(addr);
            }
            Ok(response) => failures.push(format!(
                "{addr}: holds version {}, newer than {}",
                response.version, new.version
            )),
            Err(error) => {
                if error.contains("FailedPrecondition") {
                    conflict = Some(error.clone());
                }
                failures.push(format!("{addr}: {error}"));
            }
        }
    }
    let held_by = |list: &NodeList| list.voters().filter(|n| holding.contains(&n.addr)).count();
    for list in old.into_iter().chain([new]) {
        if held_by(list) < list.majority() {
            if let Some(conflict) = conflict {
                return Err(ClusterError::Refused(format!(
                    "another change of the cluster won version {}: {conflict}",
                    new.version
                )));
            }
            return Err(ClusterError::Unreachable {
                answered: held_by(list),
                asked: list.voters().count(),
                needed: list.majority(),
                detail: format!(
                    "writing node list version {}: {}",
                    new.version,
                    failures.join("; ")
                ),
            });
        }
    }
    Ok(())
}

/// Reads the list, applies `change` to it and writes the result.
pub async fn change(
    clients: &Arc<Clients>,
    seed: &ClusterConfig,
    change: impl FnOnce(&NodeList) -> Result<NodeList, ClusterError>,
) -> Result<NodeList, ClusterError> {
    let old = current(clients, seed).await?;
    let new = change(&old)?;
    write(clients, Some(&old), &new).await?;
    Ok(new)
}

/// What a node says of itself: its id and AZ (for `sixfold cluster add`).
pub async fn identify(
    clients: &Arc<Clients>,
    addr: &str,
) -> Result<(NodeId, String), ClusterError> {
    let answers = ask_all(
        clients,
        &[addr.to_string()],
        CALL_TIMEOUT,
        |mut client| async move { client.node_status(NodeStatusRequest {}).await },
    )
    .await;
    match answers.into_iter().next().map(|a| a.result) {
        Some(Ok(status)) if status.node_id != 0 => Ok((NodeId(status.node_id), status.az)),
        Some(Ok(_)) => Err(ClusterError::Refused(format!(
            "{addr} reports no node id (an older sixfold?)"
        ))),
        Some(Err(error)) => Err(ClusterError::Unreachable {
            answered: 0,
            asked: 1,
            needed: 1,
            detail: format!("{addr}: {error}"),
        }),
        None => Err(ClusterError::Unreachable {
            answered: 0,
            asked: 1,
            needed: 1,
            detail: format!("{addr}: no answer"),
        }),
    }
}
