//! Unmounting on request (SIGTERM in `sixfold mount`): `umount(2)` as root, `fusermount3 -u`
//! otherwise, retried while the mount is busy.
//!
//! A mount that is busy (a loop device or an open file still uses `volume`) cannot go away
//! without cutting off its user; the daemon then keeps serving and retries every
//! [`UNMOUNT_RETRY_INTERVAL`], so it unmounts, flushes and exits as soon as the last user lets go
//! (e.g. right after `umount` of the ext4 on top).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How often a busy mount is retried once shutdown was requested.
pub const UNMOUNT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Unmounts `mountpoint`, waiting while it is busy. Returns when it is unmounted, or after
/// logging an error that retrying cannot fix.
pub(crate) async fn unmount_when_free(mountpoint: PathBuf) {
    let mut reported_busy = false;
    loop {
        let target = mountpoint.clone();
        let result = tokio::task::spawn_blocking(move || unmount(&target))
            .await
            .unwrap_or_else(|join_error| Err(io::Error::other(join_error)));
        match result {
            Ok(()) => return,
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                if !reported_busy {
                    tracing::warn!(
                        mountpoint = %mountpoint.display(),
                        "cannot unmount yet: busy (a loop device or an open file still uses the \
                         volume); still serving, and unmounting as soon as nothing uses it"
                    );
                    reported_busy = true;
                }
                tokio::time::sleep(UNMOUNT_RETRY_INTERVAL).await;
            }
            // Already unmounted (by `fusermount3 -u` racing with us): the session ends anyway.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => return,
            Err(error) => {
                tracing::error!(
                    mountpoint = %mountpoint.display(),
                    "failed to unmount ({error}); still serving; unmount it with `fusermount3 -u {}`",
                    mountpoint.display()
                );
                return;
            }
        }
    }
}

/// One unmount attempt.
fn unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount(path.as_ptr()) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    // Not root: the setuid helper may unmount what this user mounted.
    let output = Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(format!(
        "fusermount3 -u: {}",
        stderr.trim()
    )))
}
