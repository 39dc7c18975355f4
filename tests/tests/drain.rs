//! `sixfold node drain` under a write load: the node ends with no segment, the writer sees no
//! error, every PG keeps two segments per AZ; the drained node can then be stopped and the
//! data reads back. Draining the last spare of an AZ is refused and changes nothing.

use std::fs::File;

use anyhow::{ensure, Context, Result};
use sixfold_tests::shadow::{write_fsynced, BackgroundLoad, RandomWrites, Shadow};
use sixfold_tests::{require_fuse, run, test_dir, Cluster, Mount};

const VOLUME_BYTES: u64 = 16 << 30;

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

    let before = cluster.placements("drained")?;
    let drained_addr = before[0][0].clone();
    let drained = cluster.index_of(&drained_addr)?;
    let az_of = cluster.az_of();

    let load = BackgroundLoad::start(&volume, shadow, 22, VOLUME_BYTES)?;

    let out = run(sixfold_tests::sixfold_command()
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
    for pg in cluster.pgs("drained")? {
        ensure!(
            !pg.nodes().contains(&drained_addr),
            "PG {} still on the drained node: {:?}",
            pg.pg,
            pg.nodes()
        );
        ensure!(
            pg.two_per_az(&az_of),
            "PG {}: two per AZ: {:?}",
            pg.pg,
            pg.per_az(&az_of)
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
    let refused = run(sixfold_tests::sixfold_command()
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
