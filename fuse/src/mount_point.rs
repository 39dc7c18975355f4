//! Mount points: checking one before mounting, and reading the mount table
//! (`/proc/self/mountinfo`), which the CLI also uses (`sixfold up/down/grow`).
//!
//! A usable mount point is an existing, empty directory that is not itself a mount. A stale FUSE
//! mount (its daemon died) answers `ENOTCONN` to every access; it is reported as such, with the
//! command that clears it.

use std::io;
use std::path::{Path, PathBuf};

use crate::FuseError;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type, e.g. `ext4` or `fuse.sixfold`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/loop0` or `sixfold:default`.
    pub source: String,
}

/// Source of a sixfold mount in the mount table (`sixfold:<volume>`; commas and spaces, which
/// would break the mount options, become `_`).
pub fn source_name(volume: &str) -> String {
    let volume: String = volume
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("{SOURCE_PREFIX}{volume}")
}

const SOURCE_PREFIX: &str = "sixfold:";

impl MountEntry {
    /// Whether this is a `sixfold mount` (type `fuse` when root mounted it directly, or
    /// `fuse.sixfold` through fusermount3, with source `sixfold:<volume>`).
    pub fn is_sixfold(&self) -> bool {
        (self.fs_type == "fuse" || self.fs_type == "fuse.sixfold")
            && self.source.starts_with(SOURCE_PREFIX)
    }
}

/// Checks that `path` can be mounted on and returns its canonical form.
pub fn check_mount_point(path: &Path) -> Result<PathBuf, FuseError> {
    let problem = |problem: String| FuseError::MountPoint {
        path: path.to_owned(),
        problem,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(problem(format!(
                "is a stale FUSE mount whose daemon is gone; clear it with `fusermount3 -u {}` \
                 (or `umount -l {}`)",
                path.display(),
                path.display()
            )))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(problem(
                "does not exist (create an empty directory first)".into(),
            ))
        }
        Err(error) => return Err(problem(format!("cannot be inspected: {error}"))),
    };
    if !metadata.is_dir() {
        return Err(problem("is not a directory".into()));
    }
    let canonical = path
        .canonicalize()
        .map_err(|error| problem(format!("cannot be resolved: {error}")))?;
    match mount_entry(&canonical) {
        Ok(Some(entry)) => {
            return Err(problem(format!(
                "is already in use: {} ({}) is mounted there",
                entry.source, entry.fs_type
            )))
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(
            "cannot read the mount table to check {}: {error}",
            canonical.display()
        ),
    }
    let mut entries = std::fs::read_dir(&canonical)
        .map_err(|error| problem(format!("cannot be listed: {error}")))?;
    if entries.next().is_some() {
        return Err(problem(
            "is not empty (a mount would hide its contents)".into(),
        ));
    }
    Ok(canonical)
}

/// Whether `path` is currently a stale FUSE mount (its daemon died: `ENOTCONN`).
pub fn is_stale_fuse_mount(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(error) if error.raw_os_error() == Some(libc::ENOTCONN))
}

/// The mount table entry mounted exactly at `path` (the last one when mounts are stacked).
/// `path` should be absolute and canonical; a stale mount's last component is not resolved.
pub fn mount_entry(path: &Path) -> io::Result<Option<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&table)
        .into_iter()
        .rfind(|entry| entry.mount_point == path))
}

/// Resolves `path` like `canonicalize`, but also when its last component is a stale mount or does
/// not exist (then the parent is resolved and the name appended).
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(canonical) => Ok(canonical),
        Err(error) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(error);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(parent.canonicalize()?.join(name))
        }
    }
}

/// Parses `/proc/self/mountinfo` (see proc(5)); lines that do not parse are skipped.
pub fn parse_mountinfo(table: &str) -> Vec<MountEntry> {
    table.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount_point options [optional fields...] - fs_type source super
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let fs_type = after.next()?;
    let source = after.next()?;
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: unescape(fs_type),
        source: unescape(source),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
        let table = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                     40 22 0:50 / /tmp/s/fuse rw,nosuid,nodev - fuse.sixfold sixfold:default rw,user_id=0\n\
                     garbage\n";
        let entries = parse_mountinfo(table);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(entries[0].fs_type, "ext3");
        assert_eq!(entries[1].fs_type, "fuse.sixfold");
        assert_eq!(entries[1].source, "sixfold:default");
        assert!(entries[1].is_sixfold());
        assert!(!entries[0].is_sixfold());
        assert_eq!(source_name("a,b c"), "sixfold:a_b_c");
    }

    #[test]
    fn unescapes_only_octal() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\b"), "a\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
    }

    #[test]
    fn root_is_a_mount_point_in_use() {
        let error = check_mount_point(Path::new("/")).expect_err("/ is a mount");
        assert!(error.to_string().contains("already in use"), "{error}");
    }

    #[test]
    fn missing_and_non_empty_directories_are_refused() {
        let missing = check_mount_point(Path::new("/nonexistent/sixfold")).expect_err("missing");
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let dir = std::env::temp_dir().join(format!("sixfold-fuse-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("inside")).expect("create test dir");
        let full = check_mount_point(&dir).expect_err("not empty");
        assert!(full.to_string().contains("not empty"), "{full}");
        std::fs::remove_dir(dir.join("inside")).expect("clean up");
        assert!(check_mount_point(&dir).is_ok());
        std::fs::remove_dir(&dir).expect("clean up");
    }
}
