//! The FUSE layer: presents a [`Volume`] as one regular file, `MOUNTPOINT/volume`.
//!
//! This crate is a thin adapter (DESIGN.md, "Layers and crates"): it holds no volume logic. Each
//! FUSE request becomes one call on the writer ([`Volume::read`], [`Volume::write`],
//! [`Volume::flush`], [`Volume::grow`]) and its result becomes the reply:
//!
//! - [`fs`] implements fuser's `Filesystem`: a root directory holding the file `volume`, whose
//!   size is the volume's size. Every callback opens a tracing span and hands its work to a tokio
//!   runtime, so requests are served concurrently: an fsync waiting for its write quorum never
//!   holds up reads and writes from other threads.
//! - [`fallocate`] decides what each `fallocate` mode means (zeroing for a loop device's
//!   WRITE_ZEROES and DISCARD).
//! - [`errno`] is the one place where a [`sixfold_blockdev::VolumeError`] becomes an errno.
//! - [`mount_point`] checks a mount point before mounting and reads the mount table.
//!
//! # Concurrency
//!
//! This daemon serves requests concurrently: reads, writes and barriers run side by side on the
//! runtime, bounded by [`inflight::REQUESTS_IN_FLIGHT_MAX`]. The kernel adds one ordering of its
//! own: it holds the file's inode lock while an `fsync` is outstanding (`fuse_fsync`), so writes
//! to `volume` and further fsyncs issued meanwhile wait in the kernel until it returns; reads do
//! not wait. With ext4 on a loop device on top (`sixfold up`), application writes land in ext4's
//! page cache and do not wait either; only the loop device's own writes queue behind its flush,
//! as they would behind a disk's cache flush.
//!
//! # Durability contract at this edge
//!
//! `write` replies once [`Volume::write`] accepted the data: like a disk with a volatile cache,
//! the data is not yet durable. `fsync` replies OK only after [`Volume::flush`] returned `Ok`,
//! i.e. after VDL passed every write before it; an error is returned as `EIO`, never swallowed.
//! `close()` is not a barrier, as on every local file system: the kernel sends `flush` for every
//! close of every descriptor, including the copies a child process inherits and closes at exec,
//! and waiting for quorum there would hang a process that spawns another while a PG has lost its
//! write quorum (the spawned process may be the very node that would restore it). `flush` only
//! reports a fenced or closed writer. On unmount the session waits for requests still in flight,
//! then flushes and closes the volume.

pub mod attr;
pub mod errno;
pub mod fallocate;
pub mod fs;
pub mod inflight;
pub mod mount_point;
pub mod unmount;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sixfold_blockdev::Volume;
use thiserror::Error;
use tokio::runtime::Handle;

pub use fs::{VolumeFs, VOLUME_FILE_NAME};

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Name of the volume, shown in the mount table as the source `sixfold:<name>` (see
    /// [`mount_point::MountEntry::is_sixfold`]).
    pub volume_name: String,
    /// Let users other than the one mounting (and root) use the mount (`allow_other`).
    pub allow_other: bool,
    /// Open `volume` with `FOPEN_DIRECT_IO`: no kernel page cache between the caller and the
    /// writer's own page cache, every request reaches the writer as sent (up to `max_write`).
    pub direct_io: bool,
    /// Mount read-only (`ro`): the kernel refuses writes before they reach the volume.
    pub read_only: bool,
    /// Threads reading requests from /dev/fuse. The work itself runs on the tokio runtime, so one
    /// is enough for concurrency; more only spread the copying of large writes.
    pub session_threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            volume_name: String::new(),
            allow_other: false,
            direct_io: true,
            read_only: false,
            session_threads: 2,
        }
    }
}

/// Why mounting failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The mount point cannot be used (missing, not a directory, not empty, already a mount).
    #[error("mount point {path}: {problem}")]
    MountPoint { path: PathBuf, problem: String },
    /// `mount` blocks; calling it on a thread of the tokio runtime would deadlock.
    #[error("sixfold_fuse::mount must be called outside the tokio runtime (it blocks)")]
    InsideRuntime,
    /// The kernel or fusermount3 refused the mount.
    #[error("cannot mount FUSE at {path}: {source} (is /dev/fuse present, and are you root or is fusermount3 installed?)")]
    Mount { path: PathBuf, source: io::Error },
    /// The FUSE session ended with an error.
    #[error("FUSE session at {path} ended with an error: {source}")]
    Session { path: PathBuf, source: io::Error },
}

/// Mounts `volume` at `mountpoint` and serves it until it is unmounted (by `umount`,
/// `fusermount3 -u`, or `shutdown` completing), then flushes and closes the volume.
///
/// Blocks the calling thread, which must not belong to `runtime` (the requests run there).
/// When `shutdown` completes the filesystem is unmounted; while the mount is busy (a loop device
/// still uses `volume`) the volume keeps being served and the unmount is retried
/// ([`unmount`]).
pub fn mount(
    volume: Arc<Volume>,
    runtime: Handle,
    mountpoint: &Path,
    options: MountOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FuseError> {
    if Handle::try_current().is_ok() {
        return Err(FuseError::InsideRuntime);
    }
    let mountpoint = mount_point::check_mount_point(mountpoint)?;
    let filesystem = VolumeFs::new(volume.clone(), runtime.clone(), options.direct_io);
    let closed = filesystem.closed_flag();

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(mount_point::source_name(&options.volume_name)),
        fuser::MountOption::Subtype("sixfold".to_owned()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        if options.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    if options.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(options.session_threads.max(1));
    config.clone_fd = options.session_threads > 1;

    let session = match fuser::Session::new(filesystem, &mountpoint, &config) {
        Ok(session) => session,
        Err(source) => {
            close_after_failure(&volume, &runtime, &closed);
            return Err(FuseError::Mount {
                path: mountpoint,
                source,
            });
        }
    };
    tracing::info!(mountpoint = %mountpoint.display(), "FUSE mounted; serving {}", mountpoint.join(VOLUME_FILE_NAME).display());

    let watched = mountpoint.clone();
    runtime.spawn(async move {
        shutdown.await;
        tracing::info!(mountpoint = %watched.display(), "shutting down: unmounting");
        unmount::unmount_when_free(watched).await;
    });

    let result = session.run();
    // `run` calls `destroy` (flush + close) when the session ends; make sure of it whatever path
    // the session took to end.
    close_after_failure(&volume, &runtime, &closed);
    result.map_err(|source| FuseError::Session {
        path: mountpoint,
        source,
    })
}

/// Flushes and closes the volume unless the filesystem's `destroy` already did.
fn close_after_failure(
    volume: &Arc<Volume>,
    runtime: &Handle,
    closed: &Arc<std::sync::atomic::AtomicBool>,
) {
    if closed.swap(true, Ordering::SeqCst) {
        return;
    }
    if let Err(error) = runtime.block_on(volume.close()) {
        tracing::error!("failed to close the volume: {error}");
    }
}
