//! The cluster's node list: every storage node (its stable id, address, AZ and state), kept by
//! the nodes themselves and changed by quorum. Pure: the rules of the list and of its changes;
//! `sixfold_blockdev::nodes` reads and writes it over the network, each node stores its copy.
//!
//! The cluster file is only the seed a process starts from: it names some addresses to ask.
//! The list itself is versioned: a node keeps the highest version it was given and refuses a
//! put of the version it holds with other contents (two operators changing the cluster at once
//! cannot both win one version). A change writes version N+1 to every node of the old and the
//! new list and succeeds once a majority of the old list's voters AND of the new list's voters
//! hold it; a read asks the seed addresses and every node of the lists it learns, and trusts the
//! highest version once a majority of that version's voters answered. Any majority of the new
//! list meets every majority of the old one, so a reader never misses a change that succeeded
//! (changes add or remove one node at a time).
//!
//! States: `active` nodes may receive new segments; `draining` ones keep serving theirs while
//! `sixfold node drain` moves them away and receive none; `removed` ones are gone for good
//! (their entry stays, so that the id is never reused and a returning process is told so).
//! Voters are the nodes that are not removed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use thiserror::Error;

use crate::geometry::{AZ_COUNT, COPIES_PER_AZ};
use crate::types::NodeId;
use crate::wire;

/// Most nodes a list may name (removed ones included): bounds what a node stores and sends.
pub const NODES_MAX: usize = 4096;
/// Longest address or AZ name.
pub const NAME_BYTES_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    Draining,
    Removed,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// host:port of the node's gRPC service.
    pub addr: String,
    pub az: String,
    pub state: NodeState,
}

/// One version of the cluster's node list.
///
/// Invariants ([`NodeList::check`]): ids are distinct and never 0; addresses are distinct among
/// the nodes that are not removed; addresses and AZ names are non-empty and at most
/// [`NAME_BYTES_MAX`] bytes; at most [`NODES_MAX`] entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NodeList {
    /// Bumped by every change; a node never goes back to a lower one.
    pub version: u64,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NodeListError {
    #[error("node list: {0}")]
    Invalid(String),
    #[error("no node {0} in the cluster")]
    Unknown(String),
    #[error("{addr} is already in the cluster as {id}")]
    AddressTaken { addr: String, id: NodeId },
    #[error("{id} is already in the cluster (at {addr}, {state})")]
    AlreadyListed {
        id: NodeId,
        addr: String,
        state: NodeState,
    },
    #[error(
        "{id} was removed from the cluster for good; start a node with a fresh data directory"
    )]
    Removed { id: NodeId },
    #[error(
        "{id} is the last but {left} active node(s) of AZ {az}: a PG keeps {COPIES_PER_AZ} \
         segments in each of its AZs, so they would have nowhere to go (add a node to {az} first)"
    )]
    LastOfAz { id: NodeId, az: String, left: usize },
}

fn invalid(message: impl Into<String>) -> NodeListError {
    NodeListError::Invalid(message.into())
}

impl NodeList {
    /// Checks the invariants (every list from the network or a disk goes through here).
    pub fn check(&self) -> Result<(), NodeListError> {
        if self.nodes.len() > NODES_MAX {
            return Err(invalid(format!(
                "{} nodes, at most {NODES_MAX}",
                self.nodes.len()
            )));
        }
        let mut ids = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for node in &self.nodes {
            if node.id.0 == 0 {
                return Err(invalid("node id 0 is reserved"));
            }
            for (what, value) in [("address", &node.addr), ("AZ", &node.az)] {
                if value.trim().is_empty() || value.len() > NAME_BYTES_MAX {
                    return Err(invalid(format!(
                        "{}: {what} must be 1-{NAME_BYTES_MAX} bytes",
                        node.id
                    )));
                }
            }
            if !ids.insert(node.id) {
                return Err(invalid(format!("{} is listed twice", node.id)));
            }
            if node.state != NodeState::Removed && !addrs.insert(node.addr.as_str()) {
                return Err(invalid(format!("{} is listed twice", node.addr)));
            }
        }
        Ok(())
    }

    /// The nodes that are not removed: the list's voters.
    pub fn voters(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.iter().filter(|n| n.state != NodeState::Removed)
    }

    /// How many voters make a majority.
    pub fn majority(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    pub fn get(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The voter at `addr`.
    pub fn at(&self, addr: &str) -> Option<&NodeRecord> {
        self.voters().find(|n| n.addr == addr)
    }

    /// The node named by `name`: an id (`n-...` or its hex digits) or an address of a voter.
    pub fn find(&self, name: &str) -> Result<&NodeRecord, NodeListError> {
        if let Some(node) = self.at(name) {
            return Ok(node);
        }
        NodeId::parse(name)
            .and_then(|id| self.get(id))
            .ok_or_else(|| NodeListError::Unknown(name.to_string()))
    }

    /// Active node ids grouped by AZ (both sorted): where new segments may go.
    pub fn active_by_az(&self) -> BTreeMap<&str, Vec<NodeId>> {
        let mut by_az: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.state == NodeState::Active) {
            by_az.entry(node.az.as_str()).or_default().push(node.id);
        }
        for ids in by_az.values_mut() {
            ids.sort_unstable();
        }
        by_az
    }

    /// Whether new PGs can be placed: [`AZ_COUNT`] AZs with [`COPIES_PER_AZ`] active nodes.
    pub fn can_place(&self) -> bool {
        self.active_by_az()
            .values()
            .filter(|ids| ids.len() >= COPIES_PER_AZ)
            .count()
            >= AZ_COUNT
    }

    fn next(&self) -> NodeList {
        NodeList {
            version: self.version.saturating_add(1),
            nodes: self.nodes.clone(),
        }
    }

    /// Adds an active node (its id from its own NodeStatus).
    pub fn add(&self, id: NodeId, addr: &str, az: &str) -> Result<NodeList, NodeListError> {
        if let Some(node) = self.get(id) {
            if node.state == NodeState::Removed {
                return Err(NodeListError::Removed { id });
            }
            return Err(NodeListError::AlreadyListed {
                id,
                addr: node.addr.clone(),
                state: node.state,
            });
        }
        if let Some(node) = self.at(addr) {
            return Err(NodeListError::AddressTaken {
                addr: addr.to_string(),
                id: node.id,
            });
        }
        let mut next = self.next();
        next.nodes.push(NodeRecord {
            id,
            addr: addr.to_string(),
            az: az.to_string(),
            state: NodeState::Active,
        });
        next.check()?;
        Ok(next)
    }

    /// Marks a node draining: it gets no new segments, and its AZ must keep
    /// [`COPIES_PER_AZ`] active nodes for the segments to move to.
    pub fn drain(&self, id: NodeId) -> Result<NodeList, NodeListError> {
        self.change_state(id, NodeState::Draining)
    }

    /// Marks a node removed for good.
    pub fn remove(&self, id: NodeId) -> Result<NodeList, NodeListError> {
        self.change_state(id, NodeState::Removed)
    }

    /// Marks a draining node active again.
    pub fn activate(&self, id: NodeId) -> Result<NodeList, NodeListError> {
        self.change_state(id, NodeState::Active)
    }

    fn change_state(&self, id: NodeId, state: NodeState) -> Result<NodeList, NodeListError> {
        let node = self
            .get(id)
            .ok_or_else(|| NodeListError::Unknown(id.to_string()))?;
        if node.state == NodeState::Removed {
            return Err(NodeListError::Removed { id });
        }
        if node.state == NodeState::Active && state != NodeState::Active {
            let left = self
                .active_by_az()
                .get(node.az.as_str())
                .map_or(0, |ids| ids.len() - 1);
            // Draining needs somewhere to move to; a removal (the node is gone) may leave the
            // AZ short: its PGs then stay degraded, and status says why.
            if state == NodeState::Draining && left < COPIES_PER_AZ {
                return Err(NodeListError::LastOfAz {
                    id,
                    az: node.az.clone(),
                    left,
                });
            }
        }
        let mut next = self.next();
        for node in next.nodes.iter_mut().filter(|n| n.id == id) {
            node.state = state;
        }
        Ok(next)
    }

    /// The list from its wire form, checked.
    pub fn from_wire(list: &wire::NodeList) -> Result<NodeList, NodeListError> {
        if list.nodes.len() > NODES_MAX {
            return Err(invalid(format!(
                "{} nodes, at most {NODES_MAX}",
                list.nodes.len()
            )));
        }
        let nodes = list
            .nodes
            .iter()
            .map(|n| {
                let state = match wire::NodeState::try_from(n.state) {
                    Ok(wire::NodeState::Active) => NodeState::Active,
                    Ok(wire::NodeState::Draining) => NodeState::Draining,
                    Ok(wire::NodeState::Removed) => NodeState::Removed,
                    Err(_) => return Err(invalid(format!("unknown node state {}", n.state))),
                };
                Ok(NodeRecord {
                    id: NodeId(n.id),
                    addr: n.addr.clone(),
                    az: n.az.clone(),
                    state,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let list = NodeList {
            version: list.version,
            nodes,
        };
        list.check()?;
        Ok(list)
    }

    pub fn to_wire(&self) -> wire::NodeList {
        wire::NodeList {
            version: self.version,
            nodes: self
                .nodes
                .iter()
                .map(|n| wire::ClusterNode {
                    id: n.id.0,
                    addr: n.addr.clone(),
                    az: n.az.clone(),
                    state: match n.state {
                        NodeState::Active => wire::NodeState::Active,
                        NodeState::Draining => wire::NodeState::Draining,
                        NodeState::Removed => wire::NodeState::Removed,
                    } as i32,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn six() -> NodeList {
        let nodes = (1..=6u64)
            .map(|i| NodeRecord {
                id: NodeId(i),
                addr: format!("10.0.0.{i}:1"),
                az: ["a", "b", "c"][((i - 1) / 2) as usize].to_string(),
                state: NodeState::Active,
            })
            .collect();
        NodeList { version: 1, nodes }
    }

    #[test]
    fn add_checks_ids_and_addresses() {
        let list = six();
        assert!(list.can_place());
        let seven = list.add(NodeId(7), "10.0.0.7:1", "a").expect("add");
        assert_eq!((seven.version, seven.voters().count()), (2, 7));
        assert_eq!(seven.majority(), 4);
        assert!(matches!(
            seven.add(NodeId(7), "10.0.0.8:1", "a"),
            Err(NodeListError::AlreadyListed { .. })
        ));
        assert!(matches!(
            seven.add(NodeId(8), "10.0.0.7:1", "a"),
            Err(NodeListError::AddressTaken { .. })
        ));
        assert!(matches!(
            seven.add(NodeId(8), "", "a"),
            Err(NodeListError::Invalid(_))
        ));
        assert_eq!(
            seven.find("n-0000000000000007").map(|n| n.id),
            Ok(NodeId(7))
        );
        assert_eq!(seven.find("10.0.0.7:1").map(|n| n.id), Ok(NodeId(7)));
        assert!(seven.find("10.9.9.9:1").is_err());
    }

    #[test]
    fn draining_the_last_nodes_of_an_az_is_refused() {
        let list = six();
        assert_eq!(
            list.drain(NodeId(1)),
            Err(NodeListError::LastOfAz {
                id: NodeId(1),
                az: "a".into(),
                left: 1
            })
        );
        let seven = list.add(NodeId(7), "10.0.0.7:1", "a").expect("add");
        let drained = seven.drain(NodeId(1)).expect("a spare in AZ a");
        assert!(
            drained.drain(NodeId(2)).is_err(),
            "then 2 and 7 are the last"
        );
        assert!(!drained.active_by_az()["a"].contains(&NodeId(1)));
    }

    #[test]
    fn removed_ids_are_never_reused_and_free_their_address() {
        let list = six().remove(NodeId(6)).expect("remove");
        assert!(!list.can_place(), "AZ c has one active node left");
        assert_eq!(list.majority(), 3);
        assert_eq!(
            list.add(NodeId(6), "10.0.0.9:1", "c"),
            Err(NodeListError::Removed { id: NodeId(6) })
        );
        let back = list
            .add(NodeId(9), "10.0.0.6:1", "c")
            .expect("a new node at the old address");
        assert!(back.can_place());
        assert!(matches!(
            back.remove(NodeId(6)),
            Err(NodeListError::Removed { .. })
        ));
    }

    #[test]
    fn wire_round_trip_and_hostile_lists() {
        let list = six();
        assert_eq!(NodeList::from_wire(&list.to_wire()), Ok(list.clone()));
        let mut twice = list.to_wire();
        twice.nodes[1].id = twice.nodes[0].id;
        assert!(NodeList::from_wire(&twice).is_err());
        let mut bad_state = list.to_wire();
        bad_state.nodes[0].state = 99;
        assert!(NodeList::from_wire(&bad_state).is_err());
        let mut zero = list.to_wire();
        zero.nodes[0].id = 0;
        assert!(NodeList::from_wire(&zero).is_err());
    }
}
