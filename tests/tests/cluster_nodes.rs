//! The cluster's node list lives on the nodes: stable node ids, `sixfold cluster nodes|add|remove`
//! on a running cluster (no restart of the writer or the nodes), refusals of bad changes, and
//! processes started in any order (a mount started before its nodes waits for them).

use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

/// One node of `sixfold cluster nodes --json`: (id, addr, az, state, answered).
type Listed = (String, String, String, String, bool);

/// `sixfold cluster nodes --json`: the version and the nodes.
fn nodes(cluster: &Cluster) -> Result<(u64, Vec<Listed>)> {
    let json: serde_json::Value =
        serde_json::from_str(&cluster.cluster_command(&["nodes", "--json"])?)?;
    let version = json["version"].as_u64().context("version")?;
    let list = json["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| {
            let text = |key: &str| n[key].as_str().unwrap_or_default().to_string();
            (
                text("id"),
                text("addr"),
                text("az"),
                text("state"),
                n["answered"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    Ok((version, list))
}

/// The error text of a `sixfold cluster` command that must fail.
fn refused(cluster: &Cluster, args: &[&str]) -> Result<String> {
    match cluster.cluster_command(args) {
        Ok(out) => anyhow::bail!("sixfold cluster {args:?} must fail, printed: {out}"),
        Err(error) => Ok(format!("{error:#}")),
    }
}

#[test]
fn the_node_list_lives_on_the_nodes_and_changes_while_everything_runs() -> Result<()> {
    require_fuse();
    let dir = test_dir("cluster_nodes");
    let mut cluster = Cluster::create(&dir, 6)?;
    let mnt = dir.join("mnt");

    // The mount starts first and waits for its nodes, saying how many answer.
    let mut mount = Mount::spawn(&cluster, "v", "1G", &mnt, &[])?;
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..6 {
        cluster.start_node(i)?;
    }
    mount
        .wait_ready()
        .context("a mount started before its nodes")?;
    let log = std::fs::read_to_string(&mount.log)?;
    ensure!(
        log.contains("waiting for nodes") && log.contains("the nodes answer"),
        "the mount says it waits for its nodes: {log}"
    );
    let volume = mount.open_volume()?;
    volume.write_all_at(&pattern(1, 1 << 20), 0)?;
    volume.sync_all()?;

    // First use: the list is made from the cluster file, with each node's own id.
    let (version, list) = nodes(&cluster)?;
    ensure!(version == 1 && list.len() == 6, "six nodes: {list:?}");
    ensure!(
        list.iter()
            .all(|(id, _, _, state, answered)| id.starts_with("n-")
                && state == "active"
                && *answered),
        "ids, active, answering: {list:?}"
    );
    let id_of = |list: &[Listed], addr: &str| {
        list.iter()
            .find(|n| n.1 == addr)
            .map(|n| n.0.clone())
            .context("listed")
    };
    let first = cluster.nodes[0].addr.to_string();
    let first_id = id_of(&list, &first)?;

    // A node keeps its id across a restart.
    cluster.stop_node(0);
    cluster.start_node(0)?;
    let (_, list) = nodes(&cluster)?;
    ensure!(id_of(&list, &first)? == first_id, "stable id");

    // A seventh node, not in the cluster file, joins the running cluster.
    let seventh = cluster.new_node("a")?;
    cluster.start_node(seventh)?;
    let addr = cluster.nodes[seventh].addr.to_string();
    let out = cluster.cluster_command(&["add", &addr, "--az", "a"])?;
    ensure!(out.contains("added"), "{out}");
    let (version, list) = nodes(&cluster)?;
    ensure!(
        version == 2 && list.len() == 7,
        "read from the nodes, not the file: {list:?}"
    );
    let seventh_id = id_of(&list, &addr)?;

    // Bad changes are refused with a clear error, and change nothing.
    let again = refused(&cluster, &["add", &addr])?;
    ensure!(again.contains("already in the cluster"), "{again}");
    let other_az = refused(&cluster, &["add", &addr, "--az", "b"])?;
    ensure!(other_az.contains("runs in AZ"), "{other_az}");
    let unknown = refused(&cluster, &["remove", "n-00000000deadbeef"])?;
    ensure!(unknown.contains("no node n-00000000deadbeef"), "{unknown}");
    let unreachable = refused(&cluster, &["add", "127.0.0.99:9", "--wait", "1s"])?;
    ensure!(unreachable.contains("127.0.0.99:9"), "{unreachable}");
    ensure!(nodes(&cluster)?.0 == 2, "nothing changed");

    // Removed for good: the id never comes back.
    let out = cluster.cluster_command(&["remove", &seventh_id])?;
    ensure!(out.contains("removed"), "{out}");
    let (version, list) = nodes(&cluster)?;
    ensure!(
        version == 3 && list.iter().any(|n| n.0 == seventh_id && n.3 == "removed"),
        "{list:?}"
    );
    let back = refused(&cluster, &["add", &addr])?;
    ensure!(back.contains("removed from the cluster for good"), "{back}");

    // The writer never noticed.
    volume.write_all_at(&pattern(2, 1 << 20), 1 << 20)?;
    volume.sync_all()?;
    let mut read = vec![0u8; 1 << 20];
    volume.read_exact_at(&mut read, 0)?;
    ensure!(
        read == pattern(1, 1 << 20),
        "data written before the changes"
    );
    drop(volume);
    mount.unmount()?;
    Ok(())
}
