//! The state directory of `sixfold up`: its location and layout, and the cluster file.
//!
//! Default location: a sibling of DIR named `.<basename of DIR>.sixfold` (so it is never inside
//! the mount point and survives `down`). Layout:
//!
//! ```text
//! STATE/cluster.toml     nodes and AZs; ports chosen on the first `up`, reused after
//! STATE/nodes/nN/        data directory of node N (hot log, page store)
//! STATE/logs/            node-N.log, mount.log
//! STATE/pids/            node-N.pid, mount.pid
//! STATE/fuse/            FUSE mount point; the volume file is STATE/fuse/volume
//! STATE/backup/          the nodes' archive (continuous backup, snapshots), unless the
//!                        cluster was created with `--no-backup`
//! ```

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sixfold_proto::cluster::{BackupSection, ClusterConfig, NodeEntry};

pub const CLUSTER_FILE_NAME: &str = "cluster.toml";
/// The AZs of the embedded cluster; nodes are spread over them in blocks (a, a, b, b, c, c).
const AZS: [&str; 3] = ["a", "b", "c"];
/// Most nodes `up` will start on one machine.
pub const NODES_MAX: usize = 30;
/// Name of the volume `up` creates and mounts.
pub const VOLUME_NAME: &str = "default";

#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// The state directory for mount directory `dir` (absolute): `explicit`, or the default
    /// sibling. Refuses one inside `dir`.
    pub fn for_mount_dir(dir: &Path, explicit: Option<&Path>) -> anyhow::Result<StateDir> {
        let root = match explicit {
            Some(path) => sixfold_fuse::mount_point::resolve(path)
                .with_context(|| format!("resolve the state directory {}", path.display()))?,
            None => default_location(dir)?,
        };
        if root.starts_with(dir) {
            anyhow::bail!(
                "the state directory {} lies inside {}; it must not (the mount would hide it)",
                root.display(),
                dir.display()
            );
        }
        Ok(StateDir { root })
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    pub fn create_layout(&self) -> anyhow::Result<()> {
        for dir in [
            self.root.clone(),
            self.root.join("nodes"),
            self.root.join("logs"),
            self.root.join("pids"),
            self.fuse_dir(),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.root.join(CLUSTER_FILE_NAME)
    }
    pub fn node_data(&self, node: usize) -> PathBuf {
        self.root.join("nodes").join(format!("n{node}"))
    }
    pub fn node_log(&self, node: usize) -> PathBuf {
        self.root.join("logs").join(format!("node-{node}.log"))
    }
    pub fn node_pid(&self, node: usize) -> PathBuf {
        self.root.join("pids").join(format!("node-{node}.pid"))
    }
    pub fn mount_log(&self) -> PathBuf {
        self.root.join("logs").join("mount.log")
    }
    pub fn mount_pid(&self) -> PathBuf {
        self.root.join("pids").join("mount.pid")
    }
    pub fn fuse_dir(&self) -> PathBuf {
        self.root.join("fuse")
    }
    pub fn volume_file(&self) -> PathBuf {
        self.fuse_dir().join(sixfold_fuse::VOLUME_FILE_NAME)
    }

    /// The node pid files present (node numbers, ascending).
    pub fn node_pid_files(&self) -> Vec<usize> {
        let mut nodes: Vec<usize> = std::fs::read_dir(self.root.join("pids"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .filter_map(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("node-")?
                            .strip_suffix(".pid")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort_unstable();
        nodes
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.root.join("backup")
    }

    /// The cluster file: loaded when it exists (same ports and backup store as before), else
    /// created with `nodes` free ports on 127.0.0.1 and, with `backup`, the archive in
    /// STATE/backup.
    pub fn load_or_create_cluster(
        &self,
        nodes: usize,
        backup: bool,
    ) -> anyhow::Result<ClusterConfig> {
        let path = self.cluster_file();
        if path.exists() {
            let cluster = ClusterConfig::load(&path).context("load the cluster file")?;
            if cluster.nodes.len() != nodes {
                tracing::warn!(
                    "{} lists {} nodes; keeping them (--nodes {nodes} applies to a new state directory only)",
                    path.display(),
                    cluster.nodes.len()
                );
            }
            return Ok(cluster);
        }
        let ports = free_ports(nodes)?;
        let cluster = ClusterConfig {
            nodes: ports
                .iter()
                .enumerate()
                .map(|(index, port)| NodeEntry {
                    addr: format!("127.0.0.1:{port}"),
                    az: AZS[index * AZS.len() / nodes].to_owned(),
                })
                .collect(),
            backup: backup.then(|| BackupSection {
                store: self.backup_dir().to_string_lossy().into_owned(),
                endpoint: None,
                retention: None,
            }),
        };
        // Check it as `sixfold mount` will, before anything depends on it.
        ClusterConfig::parse(&cluster.to_toml(), &path).context("check the new cluster file")?;
        let temporary = path.with_extension("toml.tmp");
        std::fs::write(&temporary, cluster.to_toml())
            .with_context(|| format!("write {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("write {}", path.display()))?;
        Ok(cluster)
    }
}

fn default_location(dir: &Path) -> anyhow::Result<PathBuf> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        anyhow::bail!(
            "{} has no parent directory to hold the state directory; pass --state DIR",
            dir.display()
        );
    };
    Ok(parent.join(format!(".{}.sixfold", name.to_string_lossy())))
}

/// `count` distinct free TCP ports on 127.0.0.1 (all held open until every one is chosen).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("find free TCP ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect::<Result<Vec<_>, std::io::Error>>()
        .context("find free TCP ports on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dir_is_a_hidden_sibling() {
        let state = StateDir::for_mount_dir(Path::new("/tmp/x/mnt"), None).expect("default");
        assert_eq!(state.root, PathBuf::from("/tmp/x/.mnt.sixfold"));
        assert_eq!(
            state.volume_file(),
            PathBuf::from("/tmp/x/.mnt.sixfold/fuse/volume")
        );
        let inside = StateDir::for_mount_dir(Path::new("/tmp"), Some(Path::new("/tmp/state")));
        assert!(inside.is_err());
    }

    #[test]
    fn creates_a_cluster_in_three_azs_and_reuses_it() {
        let dir = std::env::temp_dir().join(format!("sixfold-state-test-{}", std::process::id()));
        let state = StateDir { root: dir.clone() };
        state.create_layout().expect("layout");
        let cluster = state.load_or_create_cluster(6, true).expect("create");
        let azs: Vec<&str> = cluster.nodes.iter().map(|n| n.az.as_str()).collect();
        assert_eq!(azs, ["a", "a", "b", "b", "c", "c"]);
        let again = state.load_or_create_cluster(6, true).expect("reuse");
        assert_eq!(again, cluster);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
