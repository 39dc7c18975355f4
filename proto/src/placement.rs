//! Deterministic placement of a PG's six segments: two per AZ, by rendezvous hashing.
//!
//! For a key (volume name, PG), the AZs are ranked by hash(key, az) and the first `AZ_COUNT` with
//! at least `COPIES_PER_AZ` nodes are used; within each, the `COPIES_PER_AZ` nodes with the highest
//! hash(key, node) host segments. Adding a node moves only the segments it now wins, and a cluster
//! of 9 or 12 nodes spreads PGs over all of them. The result is recorded in the volume metadata at
//! allocation time, so later cluster changes never move an existing PG silently.

use crate::cluster::ClusterConfig;
use crate::geometry::{AZ_COUNT, COPIES, COPIES_PER_AZ};

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
    let by_az = cluster.nodes_by_az();
    let mut azs: Vec<(&str, &Vec<&str>)> = by_az
        .iter()
        .filter(|(_, nodes)| nodes.len() >= COPIES_PER_AZ)
        .map(|(az, nodes)| (*az, nodes))
        .collect();
    if azs.len() < AZ_COUNT {
        return None;
    }
    azs.sort_by_key(|(az, _)| std::cmp::Reverse(stable_hash(&[key.as_bytes(), az.as_bytes()])));
    azs.truncate(AZ_COUNT);
    azs.sort_by_key(|(az, _)| *az);
    let mut chosen = Vec::with_capacity(COPIES);
    for (_, nodes) in azs {
        let mut ranked: Vec<&str> = nodes.clone();
        ranked
            .sort_by_key(|addr| std::cmp::Reverse(stable_hash(&[key.as_bytes(), addr.as_bytes()])));
        chosen.extend(ranked.into_iter().take(COPIES_PER_AZ).map(str::to_owned));
    }
    debug_assert_eq!(chosen.len(), COPIES);
    Some(chosen)
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
