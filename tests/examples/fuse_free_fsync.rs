//! The kernel's share of a sixfold commit, with storage that costs nothing: a FUSE file system
//! presenting one file, `volume`, mounted with the limits and open flags sixfold's mount uses (from
//! `sixfold_fuse::fs`: direct I/O, 1 MiB `max_write`, 64 background requests, asynchronous direct
//! I/O; its default session threads), that keeps the file's bytes in a sparse local file through
//! the page cache and answers every fsync at once, without a device flush.
//!
//! ext4 on a loop device over this `volume` runs every layer a sixfold commit goes through
//! (SQLite, ext4, the loop device, FUSE's requests and replies) and nothing of sixfold's writer or
//! nodes. `scripts/bench-sqlite.sh` adds one quorum round of `quorum_floor` per flush to its commit
//! time: what a writer and nodes that cost nothing would reach on this machine.
//!
//! NOT durable by design: it is a measuring instrument, never a place for data.
//!
//! Usage: `fuse_free_fsync BACKING_FILE MOUNTPOINT SIZE_BYTES` (run as root). Serves until the
//! mount point is unmounted (`umount MOUNTPOINT`).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use sixfold_fuse::fs::{request_kernel_limits, volume_open_flags};
use sixfold_fuse::MountOptions;

const VOLUME_INODE: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

struct FreeFsync {
    backing: File,
    size_bytes: u64,
    started: SystemTime,
}

impl FreeFsync {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == INodeNo::ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            (FileType::RegularFile, 0o600, self.size_bytes, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for FreeFsync {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        request_kernel_limits(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "volume" {
            reply.entry(&TTL, &self.attr(VOLUME_INODE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT | VOLUME_INODE => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != VOLUME_INODE {
            return reply.error(Errno::EISDIR);
        }
        // As the mount opens it by default (direct I/O).
        reply.opened(
            FileHandle(0),
            volume_open_flags(MountOptions::default().direct_io),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The backing file is `size_bytes` long (sparse): every read inside the volume is whole.
        let len = u64::from(size).min(self.size_bytes.saturating_sub(offset)) as usize;
        let mut data = vec![0u8; len];
        match self.backing.read_exact_at(&mut data, offset) {
            Ok(()) => reply.data(&data),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset >= self.size_bytes {
            return reply.error(Errno::EFBIG);
        }
        let len = (data.len() as u64).min(self.size_bytes - offset) as usize;
        match self.backing.write_all_at(&data[..len], offset) {
            Ok(()) => reply.written(len as u32),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The point of this file system: a barrier that costs nothing.
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (VOLUME_INODE, FileType::RegularFile, "volume"),
        ];
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint, size] = &args[..] else {
        bail!("usage: fuse_free_fsync BACKING_FILE MOUNTPOINT SIZE_BYTES");
    };
    let size_bytes: u64 = size
        .parse()
        .context("SIZE_BYTES must be a number of bytes")?;
    let backing_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(backing)
        .with_context(|| format!("open {backing}"))?;
    backing_file
        .set_len(size_bytes)
        .with_context(|| format!("size {backing} to {size_bytes} bytes"))?;
    let filesystem = FreeFsync {
        backing: backing_file,
        size_bytes,
        started: SystemTime::now(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("free-fsync".to_owned()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::RW,
    ];
    let threads = MountOptions::default().session_threads.max(1);
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    let mountpoint = PathBuf::from(mountpoint);
    let session = fuser::Session::new(filesystem, &mountpoint, &config)
        .with_context(|| format!("mount FUSE at {}", mountpoint.display()))?;
    session
        .run()
        .with_context(|| format!("serve FUSE at {}", mountpoint.display()))
}
