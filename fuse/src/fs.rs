//! [`VolumeFs`]: fuser's `Filesystem` over a [`Volume`].
//!
//! The tree is fixed: the root directory holds one regular file, `volume` (see [`crate::attr`]).
//! Data requests (`read`, `write`), the barrier (`fsync`)
//! and growth (`setattr` with a larger size) are handed to the tokio runtime with
//! [`VolumeFs::spawn`], which replies from there, so a barrier waiting for write quorum never
//! holds up other requests. Directory and attribute requests answer inline: they never touch the
//! network.
//!
//! Invariants:
//! - A barrier replies OK only after [`Volume::flush`] returned `Ok`.
//! - `flush` (sent at every close of every descriptor) is not a barrier, as on local file
//!   systems; it only reports a fenced or closed writer. Durability comes from fsync.
//! - A write replies with the number of bytes [`Volume::write`] accepted; a write starting at or
//!   past the end of the volume gets `EFBIG`, one crossing the end is cut short at the end.
//! - The file never shrinks: `setattr` with a smaller size is refused with `EPERM` (an open with
//!   `O_TRUNC` is one, e.g. `dd` without `conv=notrunc`).
//! - Every reply is sent exactly once: a request whose future is dropped (shutdown) replies `EIO`
//!   through fuser's reply drop guard.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use sixfold_blockdev::{Volume, VolumeError};
use tokio::runtime::Handle;
use tracing::Instrument;

pub use crate::attr::VOLUME_FILE_NAME;
use crate::attr::{Owner, ATTR_TTL, BLOCK_BYTES, ROOT_INODE, VOLUME_INODE};
use crate::errno::{errno_for, Operation};
use crate::fallocate::{self, Action};
use crate::inflight::InFlight;

/// Largest request the kernel may send in one piece (`max_write`, and `max_pages` with it).
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// Readahead asked of the kernel (only used when `volume` is not opened with direct I/O).
pub const MAX_READAHEAD_BYTES: u32 = 1 << 20;
/// Background requests (readahead, async direct I/O) the kernel may keep in flight.
pub const MAX_BACKGROUND: u16 = 64;

/// Asks the kernel, at FUSE init, for the limits every sixfold mount uses: `max_write` and
/// readahead of 1 MiB (or the nearest the kernel allows), [`MAX_BACKGROUND`] background requests,
/// and asynchronous direct I/O when offered. Returns the kernel's capabilities. The benchmark
/// instrument `tests/examples/fuse_free_fsync.rs` calls it too, so that it measures the same
/// FUSE path.
pub fn request_kernel_limits(config: &mut KernelConfig) -> InitFlags {
    if let Err(nearest) = config.set_max_write(MAX_WRITE_BYTES) {
        let _ = config.set_max_write(nearest);
    }
    if let Err(nearest) = config.set_max_readahead(MAX_READAHEAD_BYTES) {
        let _ = config.set_max_readahead(nearest);
    }
    let _ = config.set_max_background(MAX_BACKGROUND);
    let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
    let capabilities = config.capabilities();
    if capabilities.contains(InitFlags::FUSE_ASYNC_DIO) {
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
    }
    capabilities
}

/// How `volume` is opened: with `direct_io`, requests bypass the kernel's page cache and
/// direct writes may run in parallel.
pub fn volume_open_flags(direct_io: bool) -> FopenFlags {
    if direct_io {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

/// The file system presenting one volume as `volume`.
pub struct VolumeFs {
    volume: Arc<Volume>,
    runtime: Handle,
    owner: Owner,
    direct_io: bool,
    in_flight: InFlight,
    /// Set once the volume was flushed and closed (by `destroy`, or by `mount` after a failure).
    closed: Arc<AtomicBool>,
}

impl VolumeFs {
    pub fn new(volume: Arc<Volume>, runtime: Handle, direct_io: bool) -> Self {
        VolumeFs {
            volume,
            runtime,
            owner: Owner::current(),
            direct_io,
            in_flight: InFlight::new(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
    }

    /// Runs `work` (which owns its reply) on the runtime, inside `span`.
    fn spawn(&self, span: tracing::Span, work: impl Future<Output = ()> + Send + 'static) {
        match self.in_flight.acquire(&self.runtime) {
            Some(permit) => {
                self.runtime.spawn(
                    async move {
                        work.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            None => {
                span.in_scope(|| tracing::warn!("refused: the file system is shutting down"));
                // Dropping `work` drops its reply, which answers EIO.
                drop(work);
            }
        }
    }

    /// Replies to a barrier once the volume is flushed (never OK before that).
    fn spawn_flush(&self, span: tracing::Span, reply: ReplyEmpty) {
        let volume = self.volume.clone();
        self.spawn(span, async move {
            match volume.flush().await {
                Ok(()) => reply.ok(),
                Err(error) => reply.error(errno_for(Operation::Flush, &error)),
            }
        });
    }

    fn volume_attr(&self) -> fuser::FileAttr {
        self.owner.volume_attr(self.volume.size_bytes())
    }
}

/// Zeros `[offset, offset + len)` with ordinary writes of at most `MAX_WRITE_BYTES`.
async fn write_zeros(volume: &Volume, offset: u64, len: u64) -> Result<(), VolumeError> {
    let zeros = vec![0u8; MAX_WRITE_BYTES as usize];
    let mut done = 0;
    while done < len {
        let piece = (len - done).min(u64::from(MAX_WRITE_BYTES));
        volume
            .write(offset + done, &zeros[..piece as usize])
            .await?;
        done += piece;
    }
    Ok(())
}

/// The tree is fixed (a root holding `volume`): every change to it is refused, and logged.
fn refuse_tree_change(req: &Request, what: &'static str, name: &OsStr) -> Errno {
    let _span = tracing::debug_span!("tree_change", req = req.unique().0, what, ?name).entered();
    tracing::warn!("refused to {what} ({name:?}): the mount holds only `volume`");
    Errno::EPERM
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let capabilities = request_kernel_limits(config);
        // fuser asks for FUSE_BIG_WRITES always and FUSE_MAX_PAGES when the kernel has it, with
        // max_pages derived from max_write.
        if !capabilities.contains(InitFlags::FUSE_MAX_PAGES) {
            tracing::warn!("the kernel lacks FUSE_MAX_PAGES: requests are cut into 128 KiB pieces");
        }
        tracing::info!(
            kernel_abi = %config.kernel_abi(),
            max_write_bytes = MAX_WRITE_BYTES,
            direct_io = self.direct_io,
            "FUSE session initialised"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let volume = self.volume.clone();
        let in_flight = self.in_flight.clone();
        self.runtime.block_on(async move {
            in_flight.drain().await;
            match volume.flush().await {
                Ok(()) => tracing::info!("unmounted: final flush done, every write is durable"),
                Err(error) => tracing::error!("unmounted: final flush failed: {error}"),
            }
            if let Err(error) = volume.close().await {
                tracing::error!("failed to close the volume: {error}");
            }
        });
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("lookup", req = req.unique().0, ?name).entered();
        if parent == ROOT_INODE && name == VOLUME_FILE_NAME {
            reply.entry(&ATTR_TTL, &self.volume_attr(), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::debug_span!("getattr", req = req.unique().0, %ino).entered();
        match ino {
            ROOT_INODE => reply.attr(&ATTR_TTL, &self.owner.root_attr()),
            VOLUME_INODE => reply.attr(&ATTR_TTL, &self.volume_attr()),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let span = tracing::debug_span!("setattr", req = req.unique().0, %ino, ?size);
        let _entered = span.clone().entered();
        let current = match ino {
            ROOT_INODE => self.owner.root_attr(),
            VOLUME_INODE => self.volume_attr(),
            _ => return reply.error(Errno::ENOENT),
        };
        let changes_mode = mode.is_some_and(|mode| (mode & 0o7777) as u16 != current.perm);
        let changes_owner =
            uid.is_some_and(|uid| uid != current.uid) || gid.is_some_and(|gid| gid != current.gid);
        if changes_mode || changes_owner {
            tracing::warn!("refused: the mode and owner of the volume's files are fixed");
            return reply.error(Errno::EPERM);
        }
        // Timestamps are accepted and ignored: they are not part of the volume.
        let Some(size) = size.filter(|size| *size != current.size) else {
            return reply.attr(&ATTR_TTL, &current);
        };
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        if size < current.size {
            tracing::warn!(
                "refused to shrink the volume from {} to {size} bytes (volumes only grow; an \
                 open with O_TRUNC, e.g. `dd` without conv=notrunc, asks for size 0)",
                current.size
            );
            return reply.error(Errno::EPERM);
        }
        let volume = self.volume.clone();
        let owner = self.owner;
        drop(_entered);
        self.spawn(span, async move {
            match volume.grow(size).await {
                Ok(()) => {
                    tracing::info!("grew the volume from {} to {size} bytes", current.size);
                    reply.attr(&ATTR_TTL, &owner.volume_attr(volume.size_bytes()));
                }
                Err(error) => reply.error(errno_for(Operation::Grow, &error)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span =
            tracing::debug_span!("open", req = req.unique().0, %ino, flags = flags.0).entered();
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        reply.opened(FileHandle(0), volume_open_flags(self.direct_io));
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let span = tracing::debug_span!("read", req = req.unique().0, offset, size);
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        let volume = self.volume.clone();
        self.spawn(span, async move {
            let size_bytes = volume.size_bytes();
            if offset >= size_bytes || size == 0 {
                return reply.data(&[]); // end of file
            }
            let len = u64::from(size).min(size_bytes - offset) as usize;
            match volume.read(offset, len).await {
                Ok(data) => reply.data(&data),
                Err(error) => reply.error(errno_for(Operation::Read, &error)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let span = tracing::debug_span!("write", req = req.unique().0, offset, len = data.len());
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        if data.is_empty() {
            return reply.written(0);
        }
        let size_bytes = self.volume.size_bytes();
        if offset >= size_bytes {
            span.in_scope(|| {
                tracing::warn!(
                    "refused: write at {offset} starts at or past the end of the volume \
                     ({size_bytes} bytes; grow it first)"
                )
            });
            return reply.error(Errno::EFBIG);
        }
        // `len` is at most `data.len()`, which the kernel bounds by `max_write` (a u32).
        let len = (data.len() as u64).min(size_bytes - offset) as usize;
        // Most writes need no waiting: answer them here, without a hand-off to the runtime.
        match self.volume.try_write_now(offset, &data[..len]) {
            Some(Ok(())) => return reply.written(len as u32),
            Some(Err(error)) => {
                return span.in_scope(|| reply.error(errno_for(Operation::Write, &error)));
            }
            None => {}
        }
        let volume = self.volume.clone();
        let data = data[..len].to_vec();
        self.spawn(span, async move {
            match volume.write(offset, &data).await {
                Ok(()) => reply.written(len as u32),
                Err(error) => reply.error(errno_for(Operation::Write, &error)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability barrier (fsync is), as on every local file system: the
        // kernel sends FLUSH for every close of every descriptor, including the ones a child
        // process inherits and closes at exec. Waiting for quorum here would hang a process that
        // spawns another while a PG has lost its write quorum — and the spawned process may be
        // the very node that would restore it. A fenced writer still reports its error here.
        let _span = tracing::debug_span!("flush", req = req.unique().0, %ino).entered();
        match self.volume.check_writable() {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(errno_for(Operation::Flush, &error)),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        // Not a barrier either (see `flush`); the kernel does not wait for this reply.
        let _span = tracing::debug_span!("release", req = req.unique().0, %ino, flush).entered();
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let span = tracing::debug_span!("fsync", req = req.unique().0, %ino, datasync);
        self.spawn_flush(span, reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("opendir", req = req.unique().0, %ino).entered();
        if ino != ROOT_INODE {
            return reply.error(Errno::ENOTDIR);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = tracing::debug_span!("readdir", req = req.unique().0, %ino, offset).entered();
        if ino != ROOT_INODE {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT_INODE, FileType::Directory, "."),
            (ROOT_INODE, FileType::Directory, ".."),
            (VOLUME_INODE, FileType::RegularFile, VOLUME_FILE_NAME),
        ];
        // An entry's offset is the offset of the entry after it.
        for (index, (entry_ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*entry_ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The directory never changes: nothing to make durable.
        let _span = tracing::debug_span!("fsyncdir", req = req.unique().0).entered();
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _span = tracing::debug_span!("statfs", req = req.unique().0).entered();
        let blocks = self.volume.size_bytes() / u64::from(BLOCK_BYTES);
        reply.statfs(blocks, 0, 0, 2, 0, BLOCK_BYTES, 255, BLOCK_BYTES);
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("access", req = req.unique().0, %ino).entered();
        // Permissions are checked by the kernel (`default_permissions`).
        reply.ok();
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        let _span = tracing::debug_span!("getxattr", req = req.unique().0, %ino, ?name).entered();
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = tracing::debug_span!("listxattr", req = req.unique().0, %ino).entered();
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let span = tracing::debug_span!("fallocate", req = req.unique().0, offset, length, mode);
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        match fallocate::plan(mode, offset, length, self.volume.size_bytes()) {
            Action::Nothing => reply.ok(),
            Action::Refuse(errno) => reply.error(errno),
            Action::Zero { offset, len } => {
                let volume = self.volume.clone();
                self.spawn(span, async move {
                    match write_zeros(&volume, offset, len).await {
                        Ok(()) => reply.ok(),
                        Err(error) => reply.error(errno_for(Operation::Write, &error)),
                    }
                });
            }
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _span = tracing::debug_span!("ioctl", req = req.unique().0, cmd).entered();
        // `volume` is a regular file: no ioctl applies (mkfs and losetup probe a few).
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(refuse_tree_change(req, "create a file", name));
    }

    fn mknod(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refuse_tree_change(req, "create a file", name));
    }

    fn mkdir(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(refuse_tree_change(req, "create a directory", name));
    }

    fn unlink(&self, req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(refuse_tree_change(req, "remove a file", name));
    }

    fn rmdir(&self, req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(refuse_tree_change(req, "remove a directory", name));
    }

    fn rename(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(refuse_tree_change(req, "rename", name));
    }
}
