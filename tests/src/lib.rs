//! Harness for sixfold's end-to-end tests: real `sixfold node` processes on 127.0.0.x addresses,
//! real `sixfold mount` FUSE daemons, and helpers to kill, restart and inspect them.
//!
//! Every test gets a directory under `target/test-runs/<test name>/` (node data, the cluster file,
//! one log per process) that is kept after the run for inspection and wiped when the test starts
//! again (the test command also wipes earlier tests' directories: see [`test_dir`]). Processes
//! are killed when the harness values are dropped, so a failing test never leaves a mount or a
//! node behind.

pub mod backup;
pub mod mariadb;
pub mod netns;
pub mod probe;
pub mod shadow;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `sixfold` binary under test: `$SIXFOLD_BIN`, or `target/release/sixfold` next to the test
/// executable's `deps/` directory.
/// `sixfold` for a harness [`Cluster`]: its nodes serve plaintext (`--insecure`, through the
/// environment so that every subcommand takes it), as the tests that talk gRPC to them directly
/// do. TLS is covered by `sixfold up` (certificates by default) and by `tls_roles.rs`.
pub fn sixfold_command() -> Command {
    let mut command = Command::new(sixfold_bin());
    command.env("SIXFOLD_INSECURE", "1");
    command
}

pub fn sixfold_bin() -> PathBuf {
    if let Ok(path) = std::env::var("SIXFOLD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    profile_dir.join("sixfold")
}

/// A fresh directory for one test's files, kept after the run.
///
/// With `SIXFOLD_TEST_PRUNE` set (the test command sets it), starting a test also removes the
/// directories that earlier test processes left under `target/test-runs/`, so that a full run
/// holds one test binary's files at a time instead of every test's node data at once (a CI
/// machine's disk can be small).
pub fn test_dir(name: &str) -> PathBuf {
    static CREATED_HERE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    // SIXFOLD_TEST_RUNS puts the runs elsewhere (a benchmark puts node data on tmpfs to see
    // the nodes' cost without the disk's).
    let runs = std::env::var_os("SIXFOLD_TEST_RUNS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("test-runs"));
    let dir = runs.join(name);
    let mut created_here = CREATED_HERE.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("SIXFOLD_TEST_PRUNE").is_some() {
        let earlier = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir() && !created_here.contains(path));
        for path in earlier.collect::<Vec<_>>() {
            clear_dir(&path);
        }
    }
    clear_dir(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    created_here.push(dir.clone());
    dir
}

/// Unmounts whatever an earlier, failed run left mounted under `dir` (FUSE mounts, ext4 on loop
/// devices) and removes it.
fn clear_dir(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    for mountpoint in mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
    {
        unmount_lazily(Path::new(mountpoint));
    }
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(dir.join("mnt"))
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

/// `umount -l`: detaches whatever is mounted at `path` (an ext4 on a loop device whose FUSE
/// daemon was killed, say) and ignores "not mounted".
pub fn unmount_lazily(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}

/// Fails early, with the reason, when the machine cannot run FUSE tests.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests need FUSE (run scripts/setup.sh as root)"
    );
    let found = Command::new("sh")
        .args(["-c", "command -v fusermount3"])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "fusermount3 is missing: run scripts/setup.sh (installs Debian's fuse3)"
    );
    assert!(
        sixfold_bin().exists(),
        "{} is missing: build it with cargo build --release",
        sixfold_bin().display()
    );
}

/// A port on `ip` that nothing listens on and that this process has not handed out before.
/// Chosen below the kernel's ephemeral range (32768 and up), so that neither a later bind to
/// port 0 (the next call used to get the same port back: a node's listen and metrics
/// addresses collided) nor an outgoing connection's source port can take it meanwhile.
pub fn free_port(ip: &str) -> u16 {
    use rand::{Rng, SeedableRng};
    static HANDED_OUT: std::sync::Mutex<Vec<(String, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    loop {
        let port = rng.random_range(20_000..32_000);
        if handed_out.iter().any(|(i, p)| i == ip && *p == port) {
            continue;
        }
        if TcpListener::bind((ip, port)).is_ok() {
            handed_out.push((ip.to_string(), port));
            return port;
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// The last lines of a log file, for failure messages.
/// The last `lines` lines of a process's log, each cut to 4000 characters, after any panic
/// message the log holds (so that a report cut short by the test runner still shows why the
/// process died).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let short = |line: &&str| -> String { line.chars().take(4000).collect() };
    let mut out: Vec<String> = Vec::new();
    for (index, _) in all
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked"))
    {
        out.push("PANIC:".to_owned());
        out.extend(all[index..(index + 3).min(all.len())].iter().map(short));
    }
    out.extend(all[all.len().saturating_sub(lines)..].iter().map(short));
    out.join("\n")
}

pub struct Node {
    pub addr: SocketAddr,
    /// Where the node serves its Prometheus metrics (`--metrics-listen`).
    pub metrics: SocketAddr,
    pub az: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// The network namespace the node runs in ([`netns::Net`]), if not the test's own.
    pub netns: Option<String>,
    child: Option<Child>,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long the node's last start took to rebuild its state from disk (`recovery_ms` of its
    /// last "recovered node state" log line).
    pub fn last_recovery_ms(&self) -> Option<u64> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("recovered node state"))?;
        let value = line.split("recovery_ms=").nth(1)?;
        value.split_whitespace().next()?.parse().ok()
    }

    /// Resident memory of the node process, from /proc (None when it is not running).
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_status_bytes(self.child.as_ref()?.id(), "VmRSS:")
    }

    /// CPU time the node process has used (user + system), from /proc (None when it is not
    /// running).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th, in clock ticks.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(ticks as f64 / per_second)
    }
}

/// A cluster of real `sixfold node` processes, node i on 127.0.0.(10+i), AZs a,a,b,b,c,c,...
pub struct Cluster {
    pub dir: PathBuf,
    pub cluster_file: PathBuf,
    pub nodes: Vec<Node>,
    /// More `sixfold node` options for every node (`--backup DIR`, ...).
    pub node_options: Vec<String>,
    /// With mutual TLS: the directory of the CA and of the certificates (`node-I`, `writer`,
    /// `admin`); `None`: plaintext (`--insecure`).
    pub tls: Option<PathBuf>,
}

impl Cluster {
    pub fn start(dir: &Path, count: usize) -> Result<Cluster> {
        Cluster::start_with(dir, count, None, &[])
    }

    /// A cluster whose processes talk mutual TLS: a CA in DIR/tls, a certificate per node
    /// (`node-I`), one for the writer and one for the admin's commands.
    pub fn start_tls(dir: &Path, count: usize) -> Result<Cluster> {
        use sixfold_transport::{ca, Role};
        let mut cluster = Cluster::create_with(dir, count, None, &[])?;
        let tls = dir.join("tls");
        ca::init(&tls)?;
        let mut names: Vec<(String, Role)> = (0..count)
            .map(|i| (format!("node-{i}"), Role::Node))
            .collect();
        names.push(("writer".into(), Role::Writer));
        names.push(("admin".into(), Role::Admin));
        for (name, role) in names {
            ca::issue(&tls, role, &name, ca::Validity::days(1), &tls)?;
        }
        cluster.tls = Some(tls);
        for i in 0..count {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// `sixfold` as the holder of certificate `name` of a TLS cluster (`node-I`, `writer`,
    /// `admin`), or plaintext ([`sixfold_command`]).
    pub fn command(&self, name: &str) -> Command {
        match &self.tls {
            None => sixfold_command(),
            Some(tls) => {
                let mut command = Command::new(sixfold_bin());
                command
                    .env_remove("SIXFOLD_INSECURE")
                    .env("SIXFOLD_TLS_CA", tls.join("ca.pem"))
                    .env("SIXFOLD_TLS_CERT", tls.join(format!("{name}.pem")))
                    .env("SIXFOLD_TLS_KEY", tls.join(format!("{name}.key")));
                command
            }
        }
    }

    /// A cluster whose nodes all run with more `sixfold node` options.
    pub fn start_with_options(dir: &Path, count: usize, options: &[&str]) -> Result<Cluster> {
        Cluster::start_with(dir, count, None, options)
    }

    /// A cluster whose nodes archive to `store` (an S3 one at `endpoint`; the cluster file's
    /// `[backup]` table names both), with more node options.
    pub fn start_backed_up(
        dir: &Path,
        count: usize,
        store: &str,
        endpoint: Option<&str>,
        options: &[&str],
    ) -> Result<Cluster> {
        Cluster::start_with(dir, count, Some((store, endpoint)), options)
    }

    fn start_with(
        dir: &Path,
        count: usize,
        backup: Option<(&str, Option<&str>)>,
        options: &[&str],
    ) -> Result<Cluster> {
        let mut cluster = Cluster::create_with(dir, count, backup, options)?;
        for i in 0..count {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// A cluster of `net.count()` nodes, each in its own network namespace of `net` (so that
    /// the test can cut it off the network silently), AZs as [`Cluster::start`] gives them.
    pub fn start_in(dir: &Path, net: &netns::Net) -> Result<Cluster> {
        let mut cluster = Cluster::create_with(dir, net.count(), None, &[])?;
        let mut toml = String::new();
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            let ip = net.ip(i);
            node.addr = format!("{ip}:7000").parse()?;
            node.metrics = format!("{ip}:9000").parse()?;
            node.netns = Some(net.namespace(i));
            toml.push_str(&format!(
                "[[node]]\naddr = \"{}\"\naz = \"{}\"\n\n",
                node.addr, node.az
            ));
        }
        std::fs::write(&cluster.cluster_file, toml)?;
        for i in 0..net.count() {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// The cluster file and node directories of `count` nodes, none started yet
    /// ([`Cluster::start_node`] starts them, in any order).
    pub fn create(dir: &Path, count: usize) -> Result<Cluster> {
        Cluster::create_with(dir, count, None, &[])
    }

    fn create_with(
        dir: &Path,
        count: usize,
        backup: Option<(&str, Option<&str>)>,
        options: &[&str],
    ) -> Result<Cluster> {
        let azs = ["a", "b", "c"];
        let mut nodes = Vec::new();
        let mut toml = String::new();
        for i in 0..count {
            let ip = format!("127.0.0.{}", 10 + i);
            let addr: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse()?;
            let az = azs[(i * azs.len()) / count].to_string();
            toml.push_str(&format!("[[node]]\naddr = \"{addr}\"\naz = \"{az}\"\n\n"));
            let metrics: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse()?;
            nodes.push(Node {
                addr,
                metrics,
                az,
                data: dir.join(format!("node{i}")),
                log: dir.join(format!("node{i}.log")),
                netns: None,
                child: None,
            });
        }
        let mut node_options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        if let Some((store, endpoint)) = backup {
            toml.push_str(&format!("[backup]\nstore = \"{store}\"\n"));
            node_options.extend(["--backup".to_string(), store.to_string()]);
            if let Some(endpoint) = endpoint {
                toml.push_str(&format!("endpoint = \"{endpoint}\"\n"));
                node_options.extend(["--backup-endpoint".to_string(), endpoint.to_string()]);
            }
        }
        let cluster_file = dir.join("cluster.toml");
        std::fs::write(&cluster_file, toml)?;
        Ok(Cluster {
            dir: dir.to_owned(),
            cluster_file,
            nodes,
            node_options,
            tls: None,
        })
    }

    /// A new node in `az` that the cluster file does not list (for `sixfold cluster add`); not
    /// started. Returns its index.
    pub fn new_node(&mut self, az: &str) -> Result<usize> {
        let i = self.nodes.len();
        let ip = format!("127.0.0.{}", 10 + i);
        let addr: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse()?;
        let metrics: SocketAddr = format!("{ip}:{}", free_port(&ip)).parse()?;
        self.nodes.push(Node {
            addr,
            metrics,
            az: az.to_string(),
            data: self.dir.join(format!("node{i}")),
            log: self.dir.join(format!("node{i}.log")),
            netns: None,
            child: None,
        });
        Ok(i)
    }

    /// Each node's AZ, by address.
    pub fn az_of(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .map(|n| (n.addr.to_string(), n.az.clone()))
            .collect()
    }

    /// Per PG of `volume`'s status: its segments' node addresses.
    pub fn placements(&self, volume: &str) -> Result<Vec<Vec<String>>> {
        Ok(self.pgs(volume)?.iter().map(PgSeen::nodes).collect())
    }

    /// `sixfold cluster ARGS... --cluster FILE`: its stdout, or an error with its stderr.
    pub fn cluster_command(&self, args: &[&str]) -> Result<String> {
        run(self
            .command("admin")
            .arg("cluster")
            .args(args)
            .arg("--cluster")
            .arg(&self.cluster_file))
    }

    /// Starts (or restarts) node `i` on its address and data directory; waits until it listens.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let mut command = self.command(&format!("node-{i}"));
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {i} is already running");
        if let Some(ns) = &node.netns {
            // `ip netns exec` execs the program: the child is the node itself.
            let mut inside = Command::new("ip");
            inside
                .args(["netns", "exec", ns])
                .arg(command.get_program());
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => inside.env(key, value),
                    None => inside.env_remove(key),
                };
            }
            command = inside;
        }
        let log = File::options().create(true).append(true).open(&node.log)?;
        let child = command
            .args([
                "node",
                "--listen",
                &node.addr.to_string(),
                "--az",
                &node.az,
                "--data",
            ])
            .arg(&node.data)
            .arg("--metrics-listen")
            .arg(node.metrics.to_string())
            .args(&self.node_options)
            .env(
                "RUST_LOG",
                std::env::var("SIXFOLD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn sixfold node")?;
        node.child = Some(child);
        let addr = node.addr;
        let log = node.log.clone();
        // A node that exits (its address taken, a bad option) fails the start at once.
        let mut exited = None;
        let child = &mut node.child;
        wait_for(
            &format!("node {i} to listen on {addr}"),
            Duration::from_secs(60),
            || {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    exited = Some(status);
                    return true;
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            },
        )
        .and_then(|()| match exited {
            Some(status) => bail!("node {i} exited ({status}) instead of listening on {addr}"),
            None => Ok(()),
        })
        .with_context(|| format!("node log:\n{}", log_tail(&log, 20)))
    }

    /// Node `i`'s Prometheus metrics (GET /metrics on its `--metrics-listen` address).
    pub fn metrics(&self, i: usize) -> Result<String> {
        use std::io::{Read, Write};
        let mut stream =
            TcpStream::connect_timeout(&self.nodes[i].metrics, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.nodes[i].metrics
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!("node {i}'s metrics endpoint answered: {response}"),
        }
    }

    /// kill -9 node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes node `i` (SIGSTOP): it holds its sockets and state but does nothing, like a
    /// machine that stalls. [`Cluster::resume_node`] lets it go on.
    pub fn pause_node(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGSTOP);
            }
        }
    }

    pub fn resume_node(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
        }
    }

    /// SIGTERM node `i` and wait for it to exit.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `sixfold status` for a volume, as a person reads it.
    pub fn status_text(&self, volume: &str) -> Result<String> {
        run(self
            .command("admin")
            .args(["status", "--volume", volume, "--cluster"])
            .arg(&self.cluster_file))
    }

    /// `sixfold status --metrics` for a volume (Prometheus text).
    pub fn status_metrics(&self, volume: &str) -> Result<String> {
        run(self
            .command("admin")
            .args(["status", "--metrics", "--volume", volume, "--cluster"])
            .arg(&self.cluster_file))
    }

    /// The entry of the node at `addr` in `sixfold status --json` for a volume.
    pub fn node_report(&self, volume: &str, addr: &str) -> Result<serde_json::Value> {
        let status = self.status(volume)?;
        let node = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["addr"] == addr))
            .cloned();
        match node {
            Some(node) => Ok(node),
            None => bail!("node {addr} is not in the status: {status}"),
        }
    }

    /// Every PG of `sixfold status --json`, as the membership tests read it.
    pub fn pgs(&self, volume: &str) -> Result<Vec<PgSeen>> {
        let status = self.status(volume)?;
        status["pgs"]
            .as_array()
            .context("the status lists PGs")?
            .iter()
            .map(|pg| {
                let segments = pg["segments"]
                    .as_array()
                    .context("segments")?
                    .iter()
                    .map(|s| SegmentSeen {
                        node: s["node"].as_str().unwrap_or_default().to_string(),
                        reachable: s["reachable"].as_bool().unwrap_or(false),
                        scl: s["scl"].as_u64().unwrap_or(0),
                    })
                    .collect();
                Ok(PgSeen {
                    pg: pg["pg"].as_u64().unwrap_or(0) as u32,
                    segments,
                    pgcl: pg["pgcl"].as_u64().unwrap_or(0),
                    membership_epoch: pg["membership_epoch"].as_u64().unwrap_or(0),
                    changes: pg["changes"]
                        .as_array()
                        .map(|c| {
                            c.iter()
                                .map(|c| c.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// The index of the node at `addr`.
    pub fn index_of(&self, addr: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.addr.to_string() == addr)
            .with_context(|| format!("{addr} is a node of the cluster"))
    }

    /// `sixfold status --json` for a volume.
    pub fn status(&self, volume: &str) -> Result<serde_json::Value> {
        let output = self
            .command("admin")
            .args(["status", "--json", "--volume", volume, "--cluster"])
            .arg(&self.cluster_file)
            .output()?;
        if !output.status.success() {
            bail!(
                "sixfold status failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

/// A PG as `sixfold status --json` shows it.
#[derive(Clone, Debug)]
pub struct PgSeen {
    pub pg: u32,
    pub segments: Vec<SegmentSeen>,
    pub pgcl: u64,
    pub membership_epoch: u64,
    /// Replacements under way, "from -> to" (node ids).
    pub changes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SegmentSeen {
    pub node: String,
    pub reachable: bool,
    pub scl: u64,
}

impl PgSeen {
    /// The addresses of its segments' nodes.
    pub fn nodes(&self) -> Vec<String> {
        self.segments.iter().map(|s| s.node.clone()).collect()
    }

    /// Its segments' nodes per AZ (`az_of`: node address -> AZ; "?" for an unknown node).
    pub fn per_az(&self, az_of: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
        let mut per_az = BTreeMap::new();
        for node in self.nodes() {
            let az = az_of.get(&node).map_or("?", String::as_str).to_string();
            *per_az.entry(az).or_default() += 1;
        }
        per_az
    }

    /// Six segments, two in each of three AZs (the placement rule every move keeps).
    pub fn two_per_az(&self, az_of: &BTreeMap<String, String>) -> bool {
        let per_az = self.per_az(az_of);
        self.segments.len() == 6 && per_az.len() == 3 && per_az.values().all(|c| *c == 2)
    }

    /// Six segments, all answering and caught up to the PGCL, none on `gone`, no change under
    /// way.
    pub fn healed_without(&self, gone: &str) -> bool {
        self.segments.len() == 6
            && self.changes.is_empty()
            && self
                .segments
                .iter()
                .all(|s| s.node != gone && s.reachable && s.scl >= self.pgcl)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// A real `sixfold mount` FUSE daemon; the volume file is `mountpoint/volume`.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// CPU time (user + system, seconds) each thread of process `pid` has used, summed by thread
/// name (tokio names its workers after the runtime; the node's appender thread is
/// `sixfold-appender`, shown truncated to 15 bytes by the kernel). Empty once it exited.
pub fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "TID (NAME) STATE ...": the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        *by_name.entry(name).or_insert(0.0) += ticks as f64 / per_second;
    }
    by_name
}

/// p50, p99 and max of latency `samples` (sorted in place); None when there are none.
pub fn latency_summary(samples: &mut [Duration]) -> Option<(Duration, Duration, Duration)> {
    samples.sort();
    let last = samples.len().checked_sub(1)?;
    let at = |q: f64| samples[(last as f64 * q) as usize];
    Some((at(0.5), at(0.99), samples[last]))
}

/// A memory figure of process `pid` from /proc/PID/status (`field` is e.g. "VmRSS:", "VmHWM:"),
/// in bytes; None when the process or the field is not there.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Mount {
    /// Peak resident memory of the mount process so far (VmHWM), None once it exited.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        proc_status_bytes(self.child.as_ref()?.id(), "VmHWM:")
    }

    pub fn start(cluster: &Cluster, volume: &str, size: &str, mountpoint: &Path) -> Result<Mount> {
        Mount::start_with(cluster, volume, size, mountpoint, &[])
    }

    /// [`Mount::start`] with more `sixfold mount` options (`--read-only`, ...).
    pub fn start_with(
        cluster: &Cluster,
        volume: &str,
        size: &str,
        mountpoint: &Path,
        options: &[&str],
    ) -> Result<Mount> {
        let mut mount = Mount::spawn(cluster, volume, size, mountpoint, options)?;
        mount.wait_ready()?;
        Ok(mount)
    }

    /// Starts `sixfold mount` without waiting for the volume file ([`Mount::wait_ready`]).
    pub fn spawn(
        cluster: &Cluster,
        volume: &str,
        size: &str,
        mountpoint: &Path,
        options: &[&str],
    ) -> Result<Mount> {
        std::fs::create_dir_all(mountpoint)?;
        let log_path = cluster.dir.join(format!("mount-{volume}.log"));
        let log = File::options().create(true).append(true).open(&log_path)?;
        let child = cluster
            .command("writer")
            .args(["mount", "--volume", volume, "--size", size])
            // 64 MiB of page cache unless the test chose.
            .args(if options.contains(&"--cache-mb") {
                &[][..]
            } else {
                &["--cache-mb", "64"][..]
            })
            .args(options)
            .arg("--cluster")
            .arg(&cluster.cluster_file)
            .arg(mountpoint)
            .env(
                "RUST_LOG",
                std::env::var("SIXFOLD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn sixfold mount")?;
        Ok(Mount {
            mountpoint: mountpoint.to_owned(),
            log: log_path,
            child: Some(child),
        })
    }

    /// Waits (up to 60 s) until the volume file is served; fails if the mount exits first.
    pub fn wait_ready(&mut self) -> Result<()> {
        let volume_file = self.mountpoint.join("volume");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "sixfold mount exited with {status}:\n{}",
                        log_tail(&self.log, 30)
                    );
                }
            }
            if std::fs::metadata(&volume_file).is_ok_and(|m| m.len() > 0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                bail!("volume file did not appear:\n{}", log_tail(&self.log, 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn volume_path(&self) -> PathBuf {
        self.mountpoint.join("volume")
    }

    /// `MOUNTPOINT/volume`, opened for reading and writing.
    pub fn open_volume(&self) -> Result<File> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open(self.volume_path())?)
    }

    /// Clean unmount (`fusermount3 -u`); waits for the daemon to flush and exit.
    pub fn unmount(mut self) -> Result<()> {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .status()?;
        if !status.success() {
            bail!("fusermount3 -u {} failed", self.mountpoint.display());
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!(
                            "sixfold mount exited with {status}:\n{}",
                            log_tail(&self.log, 30)
                        );
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!(
                        "sixfold mount did not exit after unmount:\n{}",
                        log_tail(&self.log, 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// kill -9 of the FUSE daemon, then a lazy unmount of what it left.
    pub fn kill(mut self) {
        self.kill_inner();
    }

    fn kill_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.kill_inner();
    }
}

/// Runs a command to completion; fails with its output when it does not succeed.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// A `sixfold up` setup (six nodes, mount, ext4 on a loop device at `dir`), taken down on drop.
pub struct Up {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub size: String,
}

impl Up {
    pub fn start(dir: &Path, state: &Path, size: &str) -> Result<Up> {
        Up::start_with(dir, state, size, &[])
    }

    /// [`Up::start`] with more `sixfold up` options (`--no-encryption`, `--no-backup`...).
    pub fn start_with(dir: &Path, state: &Path, size: &str, options: &[&str]) -> Result<Up> {
        run(Command::new(sixfold_bin())
            .arg("up")
            .arg(dir)
            .arg("--state")
            .arg(state)
            .args(["--size", size])
            .args(options))?;
        Ok(Up {
            dir: dir.to_owned(),
            state: state.to_owned(),
            size: size.to_owned(),
        })
    }

    /// `sixfold down`, then `sixfold up` again on the same state.
    pub fn restart(&self) -> Result<()> {
        self.down()?;
        run(Command::new(sixfold_bin())
            .arg("up")
            .arg(&self.dir)
            .arg("--state")
            .arg(&self.state)
            .args(["--size", &self.size]))?;
        Ok(())
    }

    /// kill -9 of every node and then of the mount, as a power cut would stop them (the pid
    /// files of the state directory name them). Nodes first: whatever the mount had sent but
    /// not seen hardened dies with them, as it would with the machines.
    pub fn kill_everything(&self) -> Result<()> {
        let mut pid_files: Vec<PathBuf> = std::fs::read_dir(self.state.join("pids"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        pid_files.sort_by_key(|path| path.ends_with("mount.pid"));
        for path in pid_files {
            let pid: i32 = std::fs::read_to_string(&path)?.trim().parse()?;
            // SAFETY: kill(2) with a pid this setup started; a stale one fails with ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        Ok(())
    }

    pub fn down(&self) -> Result<()> {
        run(Command::new(sixfold_bin())
            .arg("down")
            .arg(&self.dir)
            .arg("--state")
            .arg(&self.state))?;
        Ok(())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Err(error) = self.down() {
            eprintln!("sixfold down failed while cleaning up: {error:#}");
        }
    }
}

/// `len` bytes that are distinct for each `seed` and each 8-byte word (xorshift), so that a page
/// served from the wrong place or the wrong time shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Removes a passed test's directory (node data can take gigabytes). A failed test never gets
/// here, so its logs and data stay for inspection.
/// Removes a passed test's directory, unless `SIXFOLD_KEEP_TEST_DIRS` is set (to read the logs
/// of a run that passed).
pub fn remove_test_dir(dir: &Path) {
    if std::env::var_os("SIXFOLD_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `script` through the `sqlite3` shell on `db` (stops at the first error); its output.
pub fn sqlite(db: &Path, script: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run sqlite3 (installed by scripts/setup.sh)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
