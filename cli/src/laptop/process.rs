//! Detached child processes and their pid files.
//!
//! `up` starts nodes and the mount in their own session (`setsid`), with stdin closed and
//! stdout/stderr appended to a log file, so they outlive `up` and the terminal. A pid file names
//! each one. Because pids are reused, a pid is only trusted while `/proc/PID/cmdline` still
//! contains the process's marker argument (its data directory or mount point), and a zombie
//! counts as exited.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Context;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read from the end of a log to show when a process failed.
const LOG_TAIL_BYTES: u64 = 4096;

/// Starts `program args...` detached, logging to `log`, and writes its pid to `pid_file`.
pub fn spawn_detached(
    program: &Path,
    args: &[OsString],
    log: &Path,
    pid_file: &Path,
) -> anyhow::Result<Child> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open the log {}", log.display()))?;
    let stderr = log_file
        .try_clone()
        .with_context(|| format!("open the log {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it only fails
    // when the child already leads a process group, which a freshly forked child never does.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    std::fs::write(pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("write {}", pid_file.display()))?;
    Ok(child)
}

/// The pid in `pid_file`, if it holds one.
pub fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process whose command line contains `marker`.
pub fn is_running(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let ours = cmdline
        .split(|byte| *byte == 0)
        .any(|arg| arg == marker.as_bytes());
    ours && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_none_or(|state| state == 'Z' || state == 'X')
}

/// The running process named by `pid_file` (see [`is_running`]).
pub fn running_from_pid_file(pid_file: &Path, marker: &str) -> Option<u32> {
    read_pid(pid_file).filter(|pid| is_running(*pid, marker))
}

pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; a failure (ESRCH) means it already exited.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits up to `timeout` for the process to exit; true when it did.
pub fn wait_exit(pid: u32, marker: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_running(pid, marker) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL_INTERVAL);
    }
    true
}

/// How [`stop`] ended a process.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited after SIGTERM.
    Cleanly,
    /// It ignored SIGTERM for the whole grace period and was killed.
    Killed,
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(pid: u32, marker: &str, grace: Duration) -> Stopped {
    send_signal(pid, libc::SIGTERM);
    if wait_exit(pid, marker, grace) {
        return Stopped::Cleanly;
    }
    send_signal(pid, libc::SIGKILL);
    wait_exit(pid, marker, Duration::from_secs(5));
    Stopped::Killed
}

/// The last lines of a log file, for an error message.
pub fn log_tail(log: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(log) else {
        return format!("(no log at {})", log.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    format!(
        "last lines of {}:\n    {}",
        log.display(),
        tail.join("\n    ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_a_detached_process_by_marker() {
        let dir = std::env::temp_dir().join(format!("sixfold-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create dir");
        let marker = "30.5";
        let mut child = spawn_detached(
            Path::new("/bin/sleep"),
            &[OsString::from(marker)],
            &dir.join("log"),
            &dir.join("pid"),
        )
        .expect("spawn");
        let pid = read_pid(&dir.join("pid")).expect("pid file");
        assert_eq!(pid, child.id());
        assert!(is_running(pid, marker));
        assert!(!is_running(pid, "something-else"));
        // We are the parent here, so reap it in the background to let it disappear.
        let reaper = std::thread::spawn(move || child.wait());
        assert_eq!(stop(pid, marker, Duration::from_secs(5)), Stopped::Cleanly);
        let _ = reaper.join();
        assert!(!is_running(pid, marker));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
