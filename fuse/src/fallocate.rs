//! `fallocate` on `volume`: what each mode means for a volume, decided by one pure function.
//!
//! A loop device turns the block layer's WRITE_ZEROES and DISCARD into `fallocate` on its file
//! (`ZERO_RANGE`, or `PUNCH_HOLE | KEEP_SIZE`); both must read back as zeros afterwards. The
//! writer has no cheaper way to zero than writing zeros, so ranges up to
//! [`ZERO_RANGE_BYTES_MAX`] are zeroed with ordinary writes (durable at the next flush, like any
//! write); larger ones (`fstrim` over the whole volume) are refused with `EOPNOTSUPP`, which the
//! block layer answers by writing zero pages itself, or by reporting discard as unsupported.
//! Plain allocation inside the volume succeeds without doing anything: pages are allocated on
//! first write.

use fuser::Errno;

/// Largest range zeroed on request.
pub const ZERO_RANGE_BYTES_MAX: u64 = 16 << 20;

const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;

/// What to do for one `fallocate` request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Reply OK.
    Nothing,
    /// Write zeros over `[offset, offset + len)`, then reply OK.
    Zero { offset: u64, len: u64 },
    /// Reply with this error.
    Refuse(Errno),
}

/// Decides what `fallocate(mode, offset, len)` does on a volume of `size_bytes`.
pub fn plan(mode: i32, offset: u64, len: u64, size_bytes: u64) -> Action {
    let Some(end) = offset.checked_add(len) else {
        return Action::Refuse(Errno::EINVAL);
    };
    let keep_size = mode & KEEP_SIZE != 0;
    match mode & !KEEP_SIZE {
        0 if end <= size_bytes || keep_size => Action::Nothing,
        // Extending the file: the volume grows only through `setattr` (`sixfold grow`).
        0 => Action::Refuse(Errno::EOPNOTSUPP),
        PUNCH_HOLE | ZERO_RANGE => {
            if mode & !KEEP_SIZE == PUNCH_HOLE && !keep_size {
                return Action::Refuse(Errno::EINVAL); // punch-hole requires KEEP_SIZE
            }
            if end > size_bytes && !keep_size {
                return Action::Refuse(Errno::EOPNOTSUPP);
            }
            let end = end.min(size_bytes);
            if offset >= end {
                return Action::Nothing;
            }
            if end - offset > ZERO_RANGE_BYTES_MAX {
                return Action::Refuse(Errno::EOPNOTSUPP);
            }
            Action::Zero {
                offset,
                len: end - offset,
            }
        }
        _ => Action::Refuse(Errno::EOPNOTSUPP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 30;

    #[test]
    fn allocation_inside_the_volume_is_a_no_op() {
        assert_eq!(plan(0, 0, 4096, SIZE), Action::Nothing);
        assert_eq!(plan(KEEP_SIZE, SIZE - 1, 4096, SIZE), Action::Nothing);
        assert_eq!(
            plan(0, SIZE - 1, 4096, SIZE),
            Action::Refuse(Errno::EOPNOTSUPP)
        );
    }

    #[test]
    fn zeroing_is_clamped_to_the_volume_and_bounded() {
        assert_eq!(
            plan(PUNCH_HOLE | KEEP_SIZE, 4096, 8192, SIZE),
            Action::Zero {
                offset: 4096,
                len: 8192
            }
        );
        assert_eq!(
            plan(ZERO_RANGE | KEEP_SIZE, SIZE - 4096, 1 << 20, SIZE),
            Action::Zero {
                offset: SIZE - 4096,
                len: 4096
            }
        );
        assert_eq!(
            plan(ZERO_RANGE, SIZE - 4096, 8192, SIZE),
            Action::Refuse(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            plan(PUNCH_HOLE, 0, 4096, SIZE),
            Action::Refuse(Errno::EINVAL)
        );
        assert_eq!(
            plan(PUNCH_HOLE | KEEP_SIZE, 0, ZERO_RANGE_BYTES_MAX + 1, SIZE),
            Action::Refuse(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            plan(PUNCH_HOLE | KEEP_SIZE, SIZE, 4096, SIZE),
            Action::Nothing
        );
    }

    #[test]
    fn other_modes_and_overflow_are_refused() {
        assert_eq!(
            plan(libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096, SIZE),
            Action::Refuse(Errno::EOPNOTSUPP)
        );
        assert_eq!(plan(0, u64::MAX, 2, SIZE), Action::Refuse(Errno::EINVAL));
    }
}
