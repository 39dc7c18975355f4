//! The one place where a [`VolumeError`] becomes an errno (STYLE.md, convention 4).
//!
//! Errors the caller made (a request past the end, a shrink) are `EINVAL`/`EFBIG`/`EPERM` and
//! logged at warn; errors of the volume itself (no write quorum, no readable segment, fenced by a
//! newer writer, metadata, closed) are `EIO` and logged at error, like a failing disk. A flush
//! that cannot reach write quorum therefore reaches the application as `EIO` from `fsync`, never
//! as success.

use fuser::Errno;
use sixfold_blockdev::VolumeError;

/// The FUSE operation an error came from (some errors map differently for writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Flush,
    Grow,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Flush => "flush",
            Operation::Grow => "grow",
        }
    }
}

/// Maps a volume error to the errno returned to the kernel, and logs it.
pub fn errno_for(operation: Operation, error: &VolumeError) -> Errno {
    let (errno, caller_error) = match error {
        // A write that runs past the end of the file is "file too large", as for a file at its
        // maximum size; a read past the end is an invalid argument.
        VolumeError::OutOfRange { .. } if operation == Operation::Write => (Errno::EFBIG, true),
        VolumeError::OutOfRange { .. } => (Errno::EINVAL, true),
        VolumeError::Shrink { .. } => (Errno::EINVAL, true),
        VolumeError::TooLarge { .. } => (Errno::EFBIG, true),
        VolumeError::Invalid(_) => (Errno::EINVAL, true),
        VolumeError::Fenced { .. } => (Errno::EIO, false),
        VolumeError::QuorumLost { .. } => (Errno::EIO, false),
        VolumeError::ReadUnavailable { .. } => (Errno::EIO, false),
        VolumeError::Meta { .. } => (Errno::EIO, false),
        VolumeError::Closed => (Errno::EIO, false),
        VolumeError::ReadOnly { .. } => (Errno::EROFS, true),
        // `VolumeError` is non-exhaustive: anything new is a failure of the volume.
        _ => (Errno::EIO, false),
    };
    let operation = operation.name();
    let code = errno.code();
    if caller_error {
        tracing::warn!(errno = code, "{operation} refused: {error}");
    } else {
        tracing::error!(errno = code, "{operation} failed: {error}");
    }
    errno
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_errors_are_not_eio() {
        let past_end = VolumeError::OutOfRange {
            volume: "v".into(),
            offset: 10,
            len: 10,
            size_bytes: 12,
        };
        assert_eq!(errno_for(Operation::Write, &past_end), Errno::EFBIG);
        assert_eq!(errno_for(Operation::Read, &past_end), Errno::EINVAL);
        let shrink = VolumeError::Shrink {
            volume: "v".into(),
            size_bytes: 2,
            requested: 1,
        };
        assert_eq!(errno_for(Operation::Grow, &shrink), Errno::EINVAL);
        assert_eq!(
            errno_for(Operation::Write, &VolumeError::Invalid("x".into())),
            Errno::EINVAL
        );
    }

    #[test]
    fn volume_failures_are_eio() {
        assert_eq!(
            errno_for(Operation::Flush, &VolumeError::Closed),
            Errno::EIO
        );
        let meta = VolumeError::Meta {
            volume: "v".into(),
            detail: "no quorum".into(),
        };
        assert_eq!(errno_for(Operation::Flush, &meta), Errno::EIO);
    }
}
