//! `sixfold cluster add` + `sixfold rebalance`: after three nodes join a cluster of six, the
//! dry run plans moves and changes nothing; `--apply` spreads segments onto the new nodes,
//! within their AZs, under a write load that sees no error; every PG keeps two segments per AZ,
//! segments per node end within one of each other in every AZ, a second run plans nothing, and
//! every acknowledged write reads back.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{ensure, Context, Result};
use sixfold_tests::shadow::{write_fsynced, BackgroundLoad, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, run, test_dir, Cluster, Mount};

/// Four PGs.
const VOLUME_BYTES: u64 = 40 << 30;

fn rebalance(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run(sixfold_tests::sixfold_command()
        .arg("rebalance")
        .args(args)
        .arg("--cluster")
        .arg(&cluster.cluster_file))
}

#[test]
fn rebalance_spreads_segments_onto_added_nodes_while_the_writer_goes_on() -> Result<()> {
    require_fuse();
    let dir = test_dir("rebalance");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mount = Mount::start(&cluster, "spread", "40G", &dir.join("mnt"))?;
    let volume = File::options()
        .read(true)
        .write(true)
        .open(mount.volume_path())?;
    let mut shadow = Shadow::create(&dir.join("shadow"), VOLUME_BYTES)?;
    let mut writes = RandomWrites::new(31, VOLUME_BYTES, 128 << 10);
    write_fsynced(&volume, &mut shadow, &mut writes, 16 << 20)?;
    let before = cluster.placements("spread")?;
    ensure!(before.len() == 4, "four PGs: {before:?}");

    // Three nodes join, one per AZ.
    let mut added = Vec::new();
    for az in ["a", "b", "c"] {
        let i = cluster.new_node(az)?;
        cluster.start_node(i)?;
        let addr = cluster.nodes[i].addr.to_string();
        let out = cluster.cluster_command(&["add", &addr, "--az", az])?;
        ensure!(out.contains("added"), "{out}");
        added.push(addr);
    }

    let dry = rebalance(&cluster, &[])?;
    eprintln!("{dry}");
    ensure!(
        dry.contains("move(s) planned") && dry.contains("dry run") && !dry.contains(" 0 move(s)"),
        "{dry}"
    );
    ensure!(
        cluster.placements("spread")? == before,
        "a dry run changes nothing"
    );

    let load = BackgroundLoad::start(&volume, shadow, 32, VOLUME_BYTES)?;
    let out = rebalance(
        &cluster,
        &["--apply", "--concurrency", "2", "--timeout", "180s"],
    )
    .context("sixfold rebalance --apply")?;
    eprintln!("{out}");
    ensure!(out.contains("done:"), "{out}");

    let az_of = cluster.az_of();
    let after = cluster.pgs("spread")?;
    let mut per_node: BTreeMap<&str, usize> = az_of.keys().map(|a| (a.as_str(), 0)).collect();
    for pg in &after {
        ensure!(
            pg.two_per_az(&az_of),
            "PG {}: two per AZ: {:?}",
            pg.pg,
            pg.per_az(&az_of)
        );
        for segment in &pg.segments {
            *per_node.entry(segment.node.as_str()).or_default() += 1;
        }
    }
    for addr in &added {
        ensure!(
            per_node.get(addr.as_str()).copied().unwrap_or(0) > 0,
            "the new node {addr} got segments: {per_node:?}"
        );
    }
    for az in ["a", "b", "c"] {
        let counts: Vec<usize> = per_node
            .iter()
            .filter(|(addr, _)| az_of.get(**addr).map(String::as_str) == Some(az))
            .map(|(_, count)| *count)
            .collect();
        let (max, min) = (counts.iter().max(), counts.iter().min());
        ensure!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "AZ {az} evened out: {per_node:?}"
        );
    }
    let again = rebalance(&cluster, &[])?;
    ensure!(again.contains(" 0 move(s) planned"), "{again}");

    let (mut shadow, rounds) = load.stop()?;
    ensure!(rounds > 0, "the writer made progress during the moves");
    write_fsynced(&volume, &mut shadow, &mut writes, 2 << 20)?;
    shadow
        .verify(&volume, 64, 33)
        .context("every acknowledged write reads back")?;
    drop(volume);
    mount.unmount()?;
    Ok(())
}
