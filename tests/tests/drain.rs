//! `sixfold node drain` under a write load: the node ends with no segment, the writer sees no
//! error, every PG keeps two segments per AZ; the drained node can then be stopped and the
//! data reads back. Draining the last spare of an AZ is refused and changes nothing.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{ensure, Context, Result};
use sixfold_tests::shadow::{write_fsynced, BackgroundLoad, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, run, sixfold_bin, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

/// Per PG of the status: its segments' node addresses.
fn placements(cluster: &Cluster) -> Result<Vec<Vec<String>>> {
    Ok(cluster
        .pgs("drained")?
        .iter()
        .map(|pg| pg.nodes())
        .collect())
}

#[test]
fn a_drained_node_ends_with_no_segment_while_the_writer_goes_on() -> Result<()> {
    require_fuse();
    let dir = test_dir("drain");
    let mut cluster = Cluster::start(&dir, 9)?;
    let mount = Mount::start(&cluster, "drained", "16G", &dir.join("mnt"))?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(21, VOLUME_BYTES, 128 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 16 << 20)?;

    let before = placements(&cluster)?;
    let drained_addr = before[0][0].clone();
    let drained = cluster.index_of(&drained_addr)?;
    let az_of: BTreeMap<String, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.addr.to_string(), n.az.clone()))
        .collect();

    let load = BackgroundLoad::start(&volume, shadow, 22, VOLUME_BYTES)?;

    let out = run(std::process::Command::new(sixfold_bin())
        .args([
            "node",
            "drain",
            &drained_addr,
            "--timeout",
            "120s",
            "--cluster",
        ])
        .arg(&cluster.cluster_file))
    .context("sixfold node drain")?;
    ensure!(out.contains("holds no segment any more"), "{out}");

    // Every PG: six segments, none on the drained node, two per AZ.
    let after = placements(&cluster)?;
    for (pg, nodes) in after.iter().enumerate() {
        ensure!(nodes.len() == 6, "PG {pg}: {nodes:?}");
        ensure!(
            !nodes.contains(&drained_addr),
            "PG {pg} still on the drained node: {nodes:?}"
        );
        let mut per_az: BTreeMap<&str, usize> = BTreeMap::new();
        for node in nodes {
            *per_az
                .entry(az_of.get(node).map_or("?", |a| a.as_str()))
                .or_default() += 1;
        }
        ensure!(
            per_az.values().all(|count| *count == 2) && per_az.len() == 3,
            "PG {pg}: two per AZ: {per_az:?}"
        );
    }

    // Draining another node of the drained node's AZ would leave it one active node: refused.
    let az = az_of[&drained_addr].clone();
    let other = cluster
        .nodes
        .iter()
        .find(|n| n.az == az && n.addr.to_string() != drained_addr)
        .map(|n| n.addr.to_string())
        .context("another node of the AZ")?;
    let refused = run(std::process::Command::new(sixfold_bin())
        .args(["node", "drain", &other, "--cluster"])
        .arg(&cluster.cluster_file));
    let message = format!("{:#}", refused.err().context("the drain must be refused")?);
    ensure!(message.contains("last but"), "{message}");

    // The drained node can go; the writer never saw an error.
    cluster.stop_node(drained);
    let (mut shadow, rounds) = load.stop()?;
    ensure!(rounds > 0, "the writer made progress during the drain");
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    shadow
        .verify(&volume, 64, 9)
        .context("every acknowledged write reads back")?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
