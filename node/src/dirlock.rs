//! One process per data directory: an exclusive `flock` on `DIR/lock`, taken before anything
//! in the directory is read and held for the life of the process (the kernel drops it when the
//! process exits, however it exits). Two nodes on one directory would interleave their hot logs
//! and, with encryption at rest, seal under the same data key with the same nonces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::NodeError;

/// Held while the node runs; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

pub fn lock(data_dir: &Path) -> Result<DirLock, NodeError> {
    let path = data_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(NodeError::io("open the lock file", &path))?;
    // SAFETY: flock(2) on a file descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        let source = if error.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another sixfold node is running on this data directory",
            )
        } else {
            error
        };
        return Err(NodeError::io("lock the data directory", data_dir)(source));
    }
    Ok(DirLock(file))
}
