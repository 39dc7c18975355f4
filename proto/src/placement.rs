//! Deterministic placement of a PG's six segments: two per AZ, by rendezvous hashing.
//!
//! For a key (volume name, PG), the AZs are ranked by hash(key, az) and the first `AZ_COUNT` with
//! at least `COPIES_PER_AZ` nodes are used; within each, the `COPIES_PER_AZ` nodes with the highest
//! hash(key, node) host segments. Adding a node moves only the segments it now wins, and a cluster
//! of 9 or 12 nodes spreads PGs over all of them. The result is recorded in the volume metadata at
//! allocation time, so later cluster changes never move an existing PG silently.

use std::collections::BTreeMap;

use crate::cluster::ClusterConfig;
use crate::geometry::{AZ_COUNT, COPIES, COPIES_PER_AZ};
use crate::nodes::{NodeList, NodeState};
use crate::types::NodeId;

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finalizer to spread the bits).
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The six node addresses hosting the segments of `key` (e.g. "volume/pg/3"), AZ by AZ.
/// `None` when the cluster has too few AZs or nodes (the cluster file check prevents that).
pub fn place(cluster: &ClusterConfig, key: &str) -> Option<Vec<String>> {
    let candidates: Vec<(&str, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.az.as_str(), n.addr.clone()))
        .collect();
    place_among(&candidates, key, |addr| addr.as_bytes().to_vec())
}

/// The six node ids hosting the segments of `key`, AZ by AZ, among the active nodes of the
/// cluster's node list. `None` when fewer than three AZs have two active nodes each.
pub fn place_ids(list: &NodeList, key: &str) -> Option<Vec<NodeId>> {
    let candidates: Vec<(&str, NodeId)> = list
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| (n.az.as_str(), n.id))
        .collect();
    place_among(&candidates, key, |id| id.0.to_le_bytes().to_vec())
}

/// Rendezvous placement of `key` among `(az, node)` candidates; `name` gives the bytes a
/// node is hashed by.
fn place_among<T: Clone + Ord>(
    candidates: &[(&str, T)],
    key: &str,
    name: impl Fn(&T) -> Vec<u8>,
) -> Option<Vec<T>> {
    let mut by_az: BTreeMap<&str, Vec<T>> = BTreeMap::new();
    for (az, node) in candidates {
        by_az.entry(az).or_default().push(node.clone());
    }
    let mut azs: Vec<(&str, Vec<T>)> = by_az
        .into_iter()
        .filter(|(_, nodes)| nodes.len() >= COPIES_PER_AZ)
        .collect();
    if azs.len() < AZ_COUNT {
        return None;
    }
    azs.sort_by_key(|(az, _)| std::cmp::Reverse(stable_hash(&[key.as_bytes(), az.as_bytes()])));
    azs.truncate(AZ_COUNT);
    azs.sort_by_key(|(az, _)| *az);
    let mut chosen = Vec::with_capacity(COPIES);
    for (_, mut nodes) in azs {
        nodes.sort();
        nodes.sort_by_key(|node| std::cmp::Reverse(stable_hash(&[key.as_bytes(), &name(node)])));
        chosen.extend(nodes.into_iter().take(COPIES_PER_AZ));
    }
    debug_assert_eq!(chosen.len(), COPIES);
    Some(chosen)
}

/// Where a replacement for `lost` goes in a PG whose nodes are `members` (the lost one
/// included): an active node of `lost`'s AZ that holds no segment of the PG, the one with the
/// fewest segments (`load`), ties broken by rendezvous hash of `key`. `None` when the AZ has no
/// such node: the PG stays degraded rather than put a third copy in another AZ.
pub fn replacement(
    list: &NodeList,
    members: &[NodeId],
    lost: NodeId,
    key: &str,
    load: impl Fn(NodeId) -> u64,
) -> Option<NodeId> {
    let az = list.get(lost)?.az.as_str();
    list.nodes
        .iter()
        .filter(|n| n.state == NodeState::Active && n.az == az && !members.contains(&n.id))
        .map(|n| n.id)
        .min_by_key(|id| {
            (
                load(*id),
                std::cmp::Reverse(stable_hash(&[key.as_bytes(), &id.0.to_le_bytes()])),
            )
        })
}

/// Placement key of a volume's PG.
pub fn pg_key(volume: &str, pg: u32) -> String {
    format!("{volume}/pg/{pg}")
}

/// Placement key of a volume's metadata record.
pub fn meta_key(volume: &str) -> String {
    format!("{volume}/meta")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeEntry;
    use std::collections::HashMap;

    fn cluster(per_az: usize) -> ClusterConfig {
        let mut nodes = Vec::new();
        for az in ["a", "b", "c"] {
            for i in 0..per_az {
                nodes.push(NodeEntry {
                    addr: format!("10.0.{az}.{i}:1"),
                    az: az.to_string(),
                });
            }
        }
        ClusterConfig {
            nodes,
            backup: None,
        }
    }

    #[test]
    fn two_per_az_and_deterministic() {
        let c = cluster(4);
        let placed = place(&c, "v/pg/0").expect("placed");
        assert_eq!(placed.len(), 6);
        for az in ["a", "b", "c"] {
            assert_eq!(placed.iter().filter(|n| c.az_of(n) == Some(az)).count(), 2);
        }
        assert_eq!(place(&c, "v/pg/0"), Some(placed));
    }

    fn list(per_az: u64) -> NodeList {
        let mut nodes = Vec::new();
        for (a, az) in ["a", "b", "c"].iter().enumerate() {
            for i in 0..per_az {
                nodes.push(crate::nodes::NodeRecord {
                    id: NodeId(100 * (a as u64 + 1) + i),
                    addr: format!("10.0.{a}.{i}:1"),
                    az: az.to_string(),
                    state: NodeState::Active,
                });
            }
        }
        NodeList { version: 1, nodes }
    }

    #[test]
    fn ids_are_placed_two_per_az_and_replaced_in_the_same_az() {
        let l = list(3);
        let placed = place_ids(&l, "v/pg/0").expect("placed");
        assert_eq!(placed.len(), 6);
        for az in ["a", "b", "c"] {
            let in_az = placed
                .iter()
                .filter(|n| l.get(**n).is_some_and(|r| r.az == az));
            assert_eq!(in_az.count(), 2);
        }
        let lost = placed[0];
        let spare = replacement(&l, &placed, lost, "v/pg/0", |_| 0).expect("AZ a has a spare");
        assert_eq!(
            l.get(spare).map(|r| r.az.as_str()),
            l.get(lost).map(|r| r.az.as_str())
        );
        assert!(!placed.contains(&spare));
        // Six nodes: no spare in any AZ, and never a third copy elsewhere.
        let six = list(2);
        let placed = place_ids(&six, "v/pg/0").expect("placed");
        assert_eq!(replacement(&six, &placed, placed[0], "v/pg/0", |_| 0), None);
        // The least loaded spare wins.
        let l = list(4);
        let placed = place_ids(&l, "k").expect("placed");
        let spares: Vec<NodeId> = l
            .nodes
            .iter()
            .filter(|n| n.az == l.get(placed[0]).expect("listed").az && !placed.contains(&n.id))
            .map(|n| n.id)
            .collect();
        assert_eq!(spares.len(), 2);
        let busy = spares[0];
        let chosen = replacement(&l, &placed, placed[0], "k", |id| u64::from(id == busy));
        assert_eq!(chosen, Some(spares[1]));
    }

    #[test]
    fn spreads_over_all_nodes() {
        let c = cluster(4);
        let mut counts: HashMap<String, usize> = HashMap::new();
        for pg in 0..600 {
            for node in place(&c, &pg_key("v", pg)).expect("placed") {
                *counts.entry(node).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 12);
        // Each node should hold about 600 * 6 / 12 = 300 segments.
        for (node, count) in counts {
            assert!((200..400).contains(&count), "{node} holds {count}");
        }
    }
}
