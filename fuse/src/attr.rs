//! The two inodes of the file system and their attributes: the root directory and `volume`.
//!
//! `volume` is owned by the uid/gid that mounted, mode 0600 (it is a raw disk image); its size
//! is the volume's size at the moment of the request. Attributes are cached by the kernel for
//! [`ATTR_TTL`]: the size only changes through this mount (`setattr`), which replies with the new
//! attributes, so the cache never serves a stale size for long.

use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};

/// The root directory.
pub const ROOT_INODE: INodeNo = INodeNo::ROOT;
/// The file `volume`.
pub const VOLUME_INODE: INodeNo = INodeNo(2);
/// Name of the file presenting the volume.
pub const VOLUME_FILE_NAME: &str = "volume";
/// How long the kernel may cache attributes and directory entries.
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// Block size reported by `stat`: the volume's page size.
pub const BLOCK_BYTES: u32 = 4096;

const VOLUME_MODE: u16 = 0o600;
const ROOT_MODE: u16 = 0o755;

/// Who owns the files, and when they were mounted (all timestamps).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mounted_at: SystemTime,
}

impl Owner {
    /// The user and group of this process.
    pub fn current() -> Owner {
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Owner {
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    pub fn root_attr(&self) -> FileAttr {
        self.attr(ROOT_INODE, FileType::Directory, ROOT_MODE, 0, 2)
    }

    pub fn volume_attr(&self, size_bytes: u64) -> FileAttr {
        self.attr(
            VOLUME_INODE,
            FileType::RegularFile,
            VOLUME_MODE,
            size_bytes,
            1,
        )
    }

    fn attr(&self, ino: INodeNo, kind: FileType, perm: u16, size: u64, nlink: u32) -> FileAttr {
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_BYTES,
            flags: 0,
        }
    }
}
