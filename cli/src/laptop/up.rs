//! `sixfold up DIR`: six local nodes, the volume mounted through FUSE, ext4 on it at DIR.
//!
//! Steps, each skipped when already done (so `up` after a partial failure, or after `down`,
//! picks up where things are): check the machine; create the state directory and the cluster
//! file; start the nodes that are not running and wait until each accepts connections; start
//! `sixfold mount` unless it is serving, and wait for `STATE/fuse/volume`; format ext4 when the
//! volume has no ext4 signature (first use); loop-mount it at DIR.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sixfold_fuse::mount_point::{is_stale_fuse_mount, mount_entry, resolve};

use super::process::{log_tail, running_from_pid_file, spawn_detached};
use super::state::{StateDir, NODES_MAX, VOLUME_NAME};
use super::{preflight, system};
use crate::laptop::certs::LaptopTls;
use crate::size::{human, parse_volume_size};

/// How long a node may take to accept connections after it started.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `sixfold mount` may take to open (and recover) the volume and mount it.
const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// `noinit_itable`: ext4 would otherwise zero every inode table in the background after the
/// first mount (mkfs left them to it); a new volume already reads as zeros, so that would only
/// write gigabytes of zeros to six nodes.
const LOOP_MOUNT_OPTIONS: &str = "loop,noinit_itable";

/// The nodes' `--repair-bandwidth` on a laptop: on 2 cores, SQLite keeps about 90% of its
/// commit rate during a repair at this bound, a quarter at the nodes' default.
const LAPTOP_REPAIR_BANDWIDTH: &str = "32MiB";

#[derive(Debug, Args)]
#[command(
    about = "Laptop default: six local nodes, the volume mounted, ext4 on it at DIR",
    long_about = "Start the embedded default: six `sixfold node` processes on 127.0.0.1 in AZs \
                  a, a, b, b, c, c, the volume `default` mounted through FUSE, formatted as ext4 \
                  on first use and loop-mounted at DIR (created if missing). Everything it keeps \
                  (cluster file, node data, logs, pid files, the FUSE mount point) is in a state \
                  directory, by default .<name of DIR>.sixfold next to DIR. Needs root, \
                  /dev/fuse and loop devices. `sixfold down DIR` stops it; `up` again brings the \
                  same data back."
)]
pub struct UpArgs {
    /// Directory where the ext4 file system on the volume is mounted.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// State directory (default: .<name of DIR>.sixfold next to DIR; never inside DIR).
    #[arg(long, value_name = "STATE_DIR")]
    state: Option<PathBuf>,
    /// Size of the volume when it is created: bytes or 64G, 10GiB, 1T; at most 64T.
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_volume_size)]
    size: u64,
    /// Number of storage nodes (spread over AZs a, b, c) when the state directory is new.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u16).range(6..=NODES_MAX as i64))]
    nodes: u16,
    /// Create the cluster without continuous backup (default: the nodes archive to
    /// STATE/backup; snapshots and restores need it). Applies to a new state directory only.
    #[arg(long)]
    no_backup: bool,
    /// Create the cluster without encryption at rest: the nodes then write volume data, pages
    /// and metadata to their disks and to the backup in the clear, readable by anyone who can
    /// read those files. Default: a key-encryption key is made at STATE/kek (0600) and every
    /// node seals what it writes with AES-256-GCM. Applies to a new state directory only.
    #[arg(long)]
    no_encryption: bool,
    /// MiB of clean pages the mount's page cache may hold (`sixfold mount --cache-mb`).
    #[arg(long, value_name = "N", default_value_t = 256)]
    cache_mb: u64,
}

pub fn run(args: UpArgs, log_level: &str, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    preflight::check_up()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create the mount directory {}", args.dir.display()))?;
    let dir = resolve(&args.dir).with_context(|| format!("resolve {}", args.dir.display()))?;
    if let Some(entry) = mount_entry(&dir).context("read the mount table")? {
        anyhow::bail!(
            "{} is already mounted ({} from {}); if it is a previous `sixfold up`, run `sixfold down {}` first",
            dir.display(),
            entry.fs_type,
            entry.source,
            dir.display()
        );
    }
    let state = StateDir::for_mount_dir(&dir, args.state.as_deref())?;
    println!("sixfold up: state directory {}", state.root.display());
    let new_state = !state.cluster_file().exists();
    state.create_layout()?;
    // The key before the cluster file: a state directory with a cluster file is not new, so an
    // `up` cut short in between must not leave it without its key.
    let kek_file = state.root.join("kek");
    if new_state && !args.no_encryption && !kek_file.exists() {
        crate::keyargs::write_new_key(&kek_file)?;
    }
    let cluster = state.load_or_create_cluster(usize::from(args.nodes), !args.no_backup)?;
    if kek_file.exists() {
        println!(
            "  encryption at rest: on, key-encryption key {} (keep a copy: the data cannot be \
             read without it)",
            kek_file.display()
        );
    } else {
        println!(
            "  WARNING: encryption at rest is off (no {}): the nodes write data in the clear; \
             a new state directory made without --no-encryption has it",
            kek_file.display()
        );
    }
    if let Some(backup) = &cluster.backup {
        println!("  backup: the nodes archive to {}", backup.store);
    }
    let exe = std::env::current_exe().context("find the sixfold executable")?;
    let running = (1..=cluster.nodes.len()).any(|number| {
        let marker = state.node_data(number).to_string_lossy().into_owned();
        running_from_pid_file(&state.node_pid(number), &marker).is_some()
    });
    let laptop_tls = LaptopTls::prepare(&state, tls, cluster.nodes.len(), running)?;

    // Nodes.
    let mut started: Vec<(usize, Child)> = Vec::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let number = index + 1;
        let data = state.node_data(number);
        let marker = data.to_string_lossy().into_owned();
        if let Some(pid) = running_from_pid_file(&state.node_pid(number), &marker) {
            println!(
                "  node n{number} {} (az {}) already running, pid {pid}",
                node.addr, node.az
            );
            continue;
        }
        let mut node_args: Vec<OsString> = vec![
            "--log-level".into(),
            log_level.into(),
            "node".into(),
            "--listen".into(),
            node.addr.clone().into(),
            "--az".into(),
            node.az.clone().into(),
            "--data".into(),
            data.into_os_string(),
            // Every node shares the laptop's few cores with the mount and the application: a
            // repair at full speed would take most of them (`scripts/bench-repair.sh`).
            "--repair-bandwidth".into(),
            LAPTOP_REPAIR_BANDWIDTH.into(),
        ];
        node_args.extend(laptop_tls.args(&format!("node-{number}")));
        if kek_file.exists() {
            node_args.extend(["--key-file".into(), kek_file.clone().into_os_string()]);
        }
        if let Some(backup) = &cluster.backup {
            node_args.extend(["--backup".into(), backup.store.clone().into()]);
            if let Some(endpoint) = &backup.endpoint {
                node_args.extend(["--backup-endpoint".into(), endpoint.clone().into()]);
            }
            if let Some(retention) = &backup.retention {
                node_args.extend(["--retention".into(), retention.clone().into()]);
            }
        }
        let child = spawn_detached(
            &exe,
            &node_args,
            &state.node_log(number),
            &state.node_pid(number),
        )
        .with_context(|| format!("start node n{number}"))?;
        println!(
            "  node n{number} {} (az {}) started, pid {}",
            node.addr,
            node.az,
            child.id()
        );
        started.push((number, child));
    }
    for (index, node) in cluster.nodes.iter().enumerate() {
        let number = index + 1;
        let child = started
            .iter_mut()
            .find(|(n, _)| *n == number)
            .map(|(_, child)| child);
        wait_for_node(&node.addr, child, &state.node_log(number))
            .with_context(|| format!("wait for node n{number} ({})", node.addr))?;
    }
    println!("  all {} nodes answer", cluster.nodes.len());

    // The FUSE mount.
    let fuse_dir = state.fuse_dir();
    let fuse_marker = fuse_dir.to_string_lossy().into_owned();
    let mount_running = running_from_pid_file(&state.mount_pid(), &fuse_marker);
    let fuse_mounted = mount_entry(&fuse_dir)
        .context("read the mount table")?
        .is_some();
    match (mount_running, fuse_mounted) {
        (Some(pid), true) => println!("  volume already mounted at {}, pid {pid}", fuse_dir.display()),
        (Some(pid), false) => anyhow::bail!(
            "`sixfold mount` (pid {pid}) is running but {} is not mounted; run `sixfold down {}` and try again",
            fuse_dir.display(),
            dir.display()
        ),
        (None, mounted) => {
            if mounted || is_stale_fuse_mount(&fuse_dir) {
                // Its daemon died: clear the dead mount so that a new one can take its place.
                tracing::warn!("{} is a stale FUSE mount; unmounting it", fuse_dir.display());
                system::run_tool("umount", &["-l".as_ref(), fuse_dir.as_os_str()])
                    .context("clear the stale FUSE mount")?;
            }
            start_mount(&state, &exe, log_level, &args, &laptop_tls)?;
        }
    }

    // ext4 on first use, then the loop mount.
    let volume_file = state.volume_file();
    if !system::has_ext4_magic(&volume_file)? {
        println!("  formatting the volume as ext4 (first use)");
        system::run_tool(
            "mkfs.ext4",
            &[
                "-F".as_ref(),
                "-q".as_ref(),
                "-E".as_ref(),
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard".as_ref(),
                volume_file.as_os_str(),
            ],
        )
        .context("format the volume as ext4")?;
    }
    system::run_tool(
        "mount",
        &[
            "-o".as_ref(),
            LOOP_MOUNT_OPTIONS.as_ref(),
            volume_file.as_os_str(),
            dir.as_os_str(),
        ],
    )
    .with_context(|| format!("loop-mount {} at {}", volume_file.display(), dir.display()))?;
    let device = mount_entry(&dir)
        .ok()
        .flatten()
        .map(|entry| entry.source)
        .unwrap_or_else(|| "a loop device".to_owned());
    println!(
        "sixfold up: {} is ext4 on {device}, over volume {VOLUME_NAME} ({}) on {} nodes",
        dir.display(),
        human(
            std::fs::metadata(&volume_file)
                .map(|m| m.len())
                .unwrap_or(0)
        ),
        cluster.nodes.len()
    );
    println!(
        "  status: sixfold status --state {}{}",
        state.root.display(),
        if laptop_tls.is_insecure() {
            " --insecure"
        } else {
            ""
        }
    );
    println!("  stop:   sixfold down {}", dir.display());
    Ok(())
}

/// Waits until `addr` accepts TCP connections; fails early when the child exited.
fn wait_for_node(addr: &str, mut child: Option<&mut Child>, log: &Path) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .collect();
    let deadline = Instant::now() + NODE_READY_TIMEOUT;
    loop {
        if addrs
            .iter()
            .any(|a| TcpStream::connect_timeout(a, CONNECT_TIMEOUT).is_ok())
        {
            return Ok(());
        }
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("the node exited ({status}); {}", log_tail(log));
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no answer after {} s; {}",
                NODE_READY_TIMEOUT.as_secs(),
                log_tail(log)
            );
        }
        sleep(POLL_INTERVAL);
    }
}

/// Starts `sixfold mount` on STATE/fuse and waits until the volume file appears.
fn start_mount(
    state: &StateDir,
    exe: &Path,
    log_level: &str,
    args: &UpArgs,
    tls: &LaptopTls,
) -> anyhow::Result<()> {
    let fuse_dir = state.fuse_dir();
    let mut mount_args: Vec<OsString> = vec![
        "--log-level".into(),
        log_level.into(),
        "mount".into(),
        "--cluster".into(),
        state.cluster_file().into_os_string(),
        "--volume".into(),
        VOLUME_NAME.into(),
        "--size".into(),
        args.size.to_string().into(),
        "--cache-mb".into(),
        args.cache_mb.to_string().into(),
        // The nodes of AZ a share this machine with the mount like any: reads prefer them
        // first (then the fastest), as a writer in AZ a would.
        "--az".into(),
        "a".into(),
        fuse_dir.clone().into_os_string(),
    ];
    mount_args.extend(tls.args("writer"));
    let mut child = spawn_detached(exe, &mount_args, &state.mount_log(), &state.mount_pid())
        .context("start `sixfold mount`")?;
    println!(
        "  sixfold mount started, pid {} (log {})",
        child.id(),
        state.mount_log().display()
    );
    let volume_file = state.volume_file();
    let deadline = Instant::now() + MOUNT_READY_TIMEOUT;
    loop {
        if std::fs::metadata(&volume_file).is_ok_and(|m| m.len() > 0) {
            println!(
                "  volume {VOLUME_NAME} mounted at {}",
                volume_file.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "`sixfold mount` exited ({status}) before the volume appeared; {}",
                log_tail(&state.mount_log())
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the volume did not appear at {} within {} s; {}",
                volume_file.display(),
                MOUNT_READY_TIMEOUT.as_secs(),
                log_tail(&state.mount_log())
            );
        }
        sleep(POLL_INTERVAL);
    }
}
