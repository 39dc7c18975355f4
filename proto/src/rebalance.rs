//! Which segments `sixfold rebalance` moves: a pure plan over the node list and the PGs'
//! memberships. After nodes were added, new PGs land on them (placement ranks every active
//! node), but existing PGs stay where they were; this evens the segments out.
//!
//! Rules, each with why:
//! - A move stays within an AZ (from a node to another node of the same AZ): a PG keeps two
//!   segments in each of its three AZs, so a move across AZs would break that.
//! - Only to an active node, never one holding a segment of the PG already (two segments of
//!   one PG on one node would count twice towards a quorum that one failure takes out).
//! - Only PGs with no replacement under way, and one move per PG and AZ: a move is a
//!   membership change (`Membership::begin_move`) that the repair driver completes once the new
//!   node caught up. A PG may get a move in each AZ; they are carried out one after the other
//!   (`sixfold rebalance --apply` waits for a PG's move to complete before its next).
//! - Moves go from the most loaded node of an AZ to the least loaded, while the two differ by
//!   more than one segment. Each move narrows that gap, so the plan ends, and it ends with
//!   every AZ within one segment of even or out of movable PGs.

use std::collections::{BTreeMap, BTreeSet};

use crate::membership::Membership;
use crate::nodes::{NodeList, NodeState};
use crate::types::NodeId;

/// One planned move: `pg`'s segment on `from` goes to `to` (same AZ).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The PG's placement key (volume/pg/N).
    pub pg: String,
    pub from: NodeId,
    pub to: NodeId,
}

/// Segments per active node, counting every node of each membership (a replacement's new
/// node holds a segment already).
pub fn load(list: &NodeList, pgs: &[(String, Membership)]) -> BTreeMap<NodeId, u64> {
    let mut load: BTreeMap<NodeId, u64> = list
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| (n.id, 0))
        .collect();
    for (_, membership) in pgs {
        for node in membership.nodes() {
            if let Some(count) = load.get_mut(&node) {
                *count += 1;
            }
        }
    }
    load
}

/// The moves that even out segments per node within each AZ (module docs for the rules).
pub fn plan(list: &NodeList, pgs: &[(String, Membership)]) -> Vec<Move> {
    let mut load = load(list, pgs);
    let mut nodes_of: BTreeMap<&str, Vec<NodeId>> = pgs
        .iter()
        .map(|(key, m)| (key.as_str(), m.nodes()))
        .collect();
    let mut moves = Vec::new();
    let mut azs: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for node in list.nodes.iter().filter(|n| n.state == NodeState::Active) {
        azs.entry(node.az.as_str()).or_default().push(node.id);
    }
    for nodes in azs.values() {
        let mut moved: BTreeSet<&str> = BTreeSet::new();
        while let Some((high, low, key)) = next_move(nodes, &load, pgs, &nodes_of, &moved) {
            moved.insert(key.as_str());
            if let Some(nodes) = nodes_of.get_mut(key.as_str()) {
                for node in nodes.iter_mut().filter(|n| **n == high) {
                    *node = low;
                }
            }
            *load.entry(high).or_default() -= 1;
            *load.entry(low).or_default() += 1;
            moves.push(Move {
                pg: key.clone(),
                from: high,
                to: low,
            });
        }
    }
    moves
}

/// The next move within one AZ's `nodes`: from the most loaded to the least loaded (ties by
/// id, so plans are deterministic), while they differ by more than one, of a PG on the first
/// and not on the second, with no change under way, not moved in this AZ yet. None: even, or
/// every PG of the loaded node is busy or on both.
fn next_move<'a>(
    nodes: &[NodeId],
    load: &BTreeMap<NodeId, u64>,
    pgs: &'a [(String, Membership)],
    nodes_of: &BTreeMap<&str, Vec<NodeId>>,
    moved: &BTreeSet<&str>,
) -> Option<(NodeId, NodeId, &'a String)> {
    let count = |n: &NodeId| load.get(n).copied().unwrap_or(0);
    let high = *nodes
        .iter()
        .max_by_key(|n| (count(n), std::cmp::Reverse(**n)))?;
    let low = *nodes.iter().min_by_key(|n| (count(n), **n))?;
    if count(&high) <= count(&low) + 1 {
        return None;
    }
    let on = |key: &str, node: NodeId| nodes_of.get(key).is_some_and(|n| n.contains(&node));
    pgs.iter()
        .find(|(key, m)| {
            m.is_stable() && !moved.contains(key.as_str()) && on(key, high) && !on(key, low)
        })
        .map(|(key, _)| (high, low, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::NodeRecord;

    /// `per_az` active nodes in each of AZs a, b, c: ids 1.. in AZ order.
    fn list(per_az: u64) -> NodeList {
        let nodes = (0..3 * per_az)
            .map(|i| NodeRecord {
                id: NodeId(i + 1),
                addr: format!("10.0.0.{}:1", i + 1),
                az: ["a", "b", "c"][(i / per_az) as usize].to_string(),
                state: NodeState::Active,
            })
            .collect();
        NodeList { version: 1, nodes }
    }

    /// `count` PGs all on the first two nodes of each AZ of a 3-per-AZ list (as a cluster of
    /// six places them before three nodes were added).
    fn pgs(count: u32) -> Vec<(String, Membership)> {
        (0..count)
            .map(|pg| {
                let m = Membership::new([1, 2, 4, 5, 7, 8].map(NodeId).to_vec()).expect("valid");
                (format!("v/pg/{pg}"), m)
            })
            .collect()
    }

    #[test]
    fn added_nodes_get_segments_within_their_az_until_even() {
        let (list, pgs) = (list(3), pgs(7));
        let moves = plan(&list, &pgs);
        let az = |n: NodeId| list.get(n).map(|r| r.az.clone());
        for m in &moves {
            assert_eq!(az(m.from), az(m.to), "{m:?} stays in its AZ");
        }
        // Apply and check: every AZ within one segment of even, no PG twice on a node.
        let mut after = pgs.clone();
        for m in &moves {
            let (_, membership) = after
                .iter_mut()
                .find(|(key, _)| *key == m.pg)
                .expect("the PG");
            for node in membership.members.iter_mut().filter(|n| **n == m.from) {
                *node = m.to;
            }
            membership.check().expect("still six distinct members");
        }
        let load = load(&list, &after);
        for ids in [[1, 2, 3], [4, 5, 6], [7, 8, 9]] {
            let counts: Vec<u64> = ids.iter().map(|i| load[&NodeId(*i)]).collect();
            let (max, min) = (counts.iter().max(), counts.iter().min());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
        }
        assert_eq!(
            moves.len(),
            12,
            "7+7+0 becomes 5+5+4 in each AZ: 4 moves per AZ"
        );
        for zone in ["a", "b", "c"] {
            let in_az: Vec<&str> = moves
                .iter()
                .filter(|m| az(m.from).as_deref() == Some(zone))
                .map(|m| m.pg.as_str())
                .collect();
            let distinct: BTreeSet<&str> = in_az.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                in_az.len(),
                "one move per PG and AZ: {moves:?}"
            );
        }
    }

    #[test]
    fn an_even_cluster_and_busy_pgs_plan_nothing() {
        let six: Vec<(String, Membership)> = (0..5)
            .map(|pg| {
                let m = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
                (format!("v/pg/{pg}"), m)
            })
            .collect();
        assert!(plan(&list(2), &six).is_empty(), "six nodes: all hold all");
        let busy: Vec<(String, Membership)> = pgs(4)
            .into_iter()
            .map(|(key, m)| {
                let m = m.begin(NodeId(1), NodeId(3)).expect("a repair under way");
                (key, m)
            })
            .collect();
        assert!(
            plan(&list(3), &busy).is_empty(),
            "PGs mid-change are left alone"
        );
    }

    #[test]
    fn draining_nodes_get_nothing() {
        let mut list = list(3);
        list.nodes[2].state = NodeState::Draining;
        let moves = plan(&list, &pgs(7));
        assert!(moves.iter().all(|m| m.to != NodeId(3)), "{moves:?}");
    }
}
