//! `sixfold down DIR`: undoes `sixfold up DIR`, in order: unmount the ext4 at DIR (its loop
//! device is released with it), unmount the FUSE mount and wait for `sixfold mount` to exit (it
//! flushes the volume on unmount), then stop the nodes with SIGTERM (SIGKILL after a grace
//! period, with a warning) and remove the pid files. Idempotent: when nothing runs it says so
//! and succeeds. It never unmounts DIR unless DIR is a loop mount of this state's volume.

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sixfold_fuse::mount_point::{is_stale_fuse_mount, mount_entry, resolve};

use super::process::{self, read_pid, running_from_pid_file, Stopped};
use super::state::StateDir;
use super::system;

/// How long the FUSE unmount is retried while the mount is busy (a loop device is released
/// asynchronously after the ext4 unmount).
const FUSE_BUSY_RETRY: Duration = Duration::from_secs(20);
/// How long `sixfold mount` may take to exit after its unmount (the final flush).
const MOUNT_EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to exit after SIGTERM before it is killed.
const NODE_STOP_GRACE: Duration = Duration::from_secs(15);
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
#[command(
    about = "Undo `sixfold up DIR`: unmount everything and stop the nodes cleanly",
    long_about = "Undo `sixfold up DIR`: unmount the ext4 file system at DIR, unmount the \
                  volume (its writer flushes everything first) and stop the nodes. The state \
                  directory is kept, so `sixfold up DIR` brings the same data back. Running it \
                  when everything is already down is fine."
)]
pub struct DownArgs {
    /// Directory given to `sixfold up`.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// State directory, when `sixfold up` was given one.
    #[arg(long, value_name = "STATE_DIR")]
    state: Option<PathBuf>,
}

pub fn run(args: DownArgs) -> anyhow::Result<()> {
    let dir = resolve(&args.dir).with_context(|| format!("resolve {}", args.dir.display()))?;
    let state = StateDir::for_mount_dir(&dir, args.state.as_deref())?;
    let mut did = 0;
    did += unmount_dir(&dir, &state)?;
    if !state.exists() {
        if did == 0 {
            println!(
                "sixfold down: {} is already down (no state directory {})",
                dir.display(),
                state.root.display()
            );
        }
        return Ok(());
    }
    did += unmount_volume(&state)?;
    did += stop_nodes(&state);
    if did == 0 {
        println!(
            "sixfold down: {} is already down (nothing mounted, no node running)",
            dir.display()
        );
    } else {
        println!(
            "sixfold down: {} is down; data kept in {}",
            dir.display(),
            state.root.display()
        );
    }
    Ok(())
}

/// Unmounts DIR when it is the loop mount of this state's volume.
fn unmount_dir(dir: &Path, state: &StateDir) -> anyhow::Result<usize> {
    let Some(entry) = mount_entry(dir).context("read the mount table")? else {
        return Ok(0);
    };
    let ours = system::loop_backing_file(&entry.source)
        .is_some_and(|backing| backing == state.volume_file());
    if !ours {
        anyhow::bail!(
            "{} is mounted ({} from {}) but not from {}; not touching it (wrong --state?)",
            dir.display(),
            entry.fs_type,
            entry.source,
            state.volume_file().display()
        );
    }
    if let Err(error) = system::run_tool("umount", &[dir.as_os_str()]) {
        if format!("{error:#}").contains("busy") {
            anyhow::bail!(
                "{} is busy: a process still uses files there (see `fuser -vm {}`); stop it and run \
                 `sixfold down` again",
                dir.display(),
                dir.display()
            );
        }
        return Err(error.context(format!("unmount {}", dir.display())));
    }
    println!("  unmounted {} ({})", dir.display(), entry.source);
    Ok(1)
}

/// Unmounts STATE/fuse and waits for `sixfold mount` to exit.
fn unmount_volume(state: &StateDir) -> anyhow::Result<usize> {
    let fuse_dir = state.fuse_dir();
    let marker = fuse_dir.to_string_lossy().into_owned();
    let pid = running_from_pid_file(&state.mount_pid(), &marker);
    let mut did = 0;
    if is_stale_fuse_mount(&fuse_dir) {
        tracing::warn!(
            "{} is a stale FUSE mount (its writer died); clearing it",
            fuse_dir.display()
        );
        system::run_tool("umount", &["-l".as_ref(), fuse_dir.as_os_str()])
            .context("clear the stale FUSE mount")?;
        did += 1;
    } else if mount_entry(&fuse_dir)
        .context("read the mount table")?
        .is_some()
    {
        unmount_fuse(&fuse_dir)?;
        println!("  unmounted the volume at {}", fuse_dir.display());
        did += 1;
    }
    if let Some(pid) = pid {
        if !process::wait_exit(
            pid,
            &marker,
            if did > 0 {
                MOUNT_EXIT_TIMEOUT
            } else {
                Duration::ZERO
            },
        ) {
            // Still opening the volume, or stuck in its final flush.
            tracing::warn!("`sixfold mount` (pid {pid}) has not exited; sending SIGTERM");
            if process::stop(pid, &marker, MOUNT_EXIT_TIMEOUT) == Stopped::Killed {
                tracing::warn!(
                    "`sixfold mount` (pid {pid}) ignored SIGTERM and was killed; writes not covered \
                     by an fsync may be lost (as after a crash)"
                );
            }
        }
        println!("  sixfold mount (pid {pid}) exited");
        did += 1;
    }
    remove_pid_file(&state.mount_pid());
    Ok(did)
}

/// `fusermount3 -u` (or `umount` without it), retried while the mount is busy.
fn unmount_fuse(fuse_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + FUSE_BUSY_RETRY;
    loop {
        let result = if system::find_program("fusermount3").is_some() {
            system::run_tool("fusermount3", &["-u".as_ref(), fuse_dir.as_os_str()])
        } else {
            system::run_tool("umount", &[fuse_dir.as_os_str()])
        };
        match result {
            Ok(_) => return Ok(()),
            // `sixfold mount` unmounts by itself once it was signalled and the mount is free.
            Err(_) if mount_entry(fuse_dir).ok().flatten().is_none() => return Ok(()),
            Err(error) if format!("{error:#}").contains("busy") && Instant::now() < deadline => {
                sleep(RETRY_INTERVAL);
            }
            Err(error) => {
                return Err(error.context(format!(
                    "unmount the volume at {} (is a loop device still attached? see `losetup -a`)",
                    fuse_dir.display()
                )))
            }
        }
    }
}

/// SIGTERM to every running node, then waits; returns how many were running.
fn stop_nodes(state: &StateDir) -> usize {
    let running: Vec<(usize, u32, String)> = state
        .node_pid_files()
        .into_iter()
        .filter_map(|node| {
            let marker = state.node_data(node).to_string_lossy().into_owned();
            let pid = running_from_pid_file(&state.node_pid(node), &marker);
            if pid.is_none() {
                remove_pid_file(&state.node_pid(node));
            }
            pid.map(|pid| (node, pid, marker))
        })
        .collect();
    for (_, pid, _) in &running {
        process::send_signal(*pid, libc::SIGTERM);
    }
    for (node, pid, marker) in &running {
        if process::stop(*pid, marker, NODE_STOP_GRACE) == Stopped::Killed {
            tracing::warn!(
                "node n{node} (pid {pid}) did not exit within {} s of SIGTERM and was killed",
                NODE_STOP_GRACE.as_secs()
            );
        }
        println!("  stopped node n{node} (pid {pid})");
        remove_pid_file(&state.node_pid(*node));
    }
    running.len()
}

fn remove_pid_file(pid_file: &Path) {
    if read_pid(pid_file).is_some() || pid_file.exists() {
        if let Err(error) = std::fs::remove_file(pid_file) {
            tracing::warn!("cannot remove {}: {error}", pid_file.display());
        }
    }
}
