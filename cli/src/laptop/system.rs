//! The machine `up` runs on: external tools (looked up in PATH and the sbin directories, which a
//! non-login root shell may lack), loop devices, and the ext4 signature.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// Directories searched after PATH.
const SBIN_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/bin"];
/// Where ext4 (and ext2/3) keep their magic number: superblock at 1024, `s_magic` at +56.
const EXT4_MAGIC_OFFSET: u64 = 1080;
const EXT4_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();

/// The full path of program `name`, if installed.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs tool `name` and returns its stdout; an error carries the command line, the exit status
/// and what the tool wrote to stderr.
pub fn run_tool(name: &str, args: &[&OsStr]) -> anyhow::Result<String> {
    let program = find_program(name)
        .with_context(|| format!("`{name}` is not installed (run scripts/setup.sh)"))?;
    let command_line = std::iter::once(name.to_owned())
        .chain(args.iter().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run `{command_line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!(
            "`{command_line}` failed ({}): {}",
            output.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the calling process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For a mount source such as `/dev/loop3`, the file backing that loop device.
pub fn loop_backing_file(source: &str) -> Option<PathBuf> {
    let name = Path::new(source).file_name()?.to_str()?;
    if !name.starts_with("loop") {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(format!("/sys/block/{name}/loop/backing_file"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let text = text.trim().trim_end_matches(" (deleted)");
    (!text.is_empty()).then(|| PathBuf::from(text))
}

/// Whether `file` holds an ext2/3/4 superblock signature.
pub fn has_ext4_magic(file: &Path) -> anyhow::Result<bool> {
    let handle = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut magic = [0u8; 2];
    handle
        .read_exact_at(&mut magic, EXT4_MAGIC_OFFSET)
        .with_context(|| format!("read the superblock of {}", file.display()))?;
    Ok(magic == EXT4_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-sixfold").is_none());
    }

    #[test]
    fn detects_the_ext4_magic() {
        let path = std::env::temp_dir().join(format!("sixfold-magic-{}", std::process::id()));
        let mut image = vec![0u8; 4096];
        std::fs::write(&path, &image).expect("write image");
        assert!(!has_ext4_magic(&path).expect("read"));
        image[1080] = 0x53;
        image[1081] = 0xEF;
        std::fs::write(&path, &image).expect("write image");
        assert!(has_ext4_magic(&path).expect("read"));
        std::fs::remove_file(&path).expect("clean up");
    }

    #[test]
    fn only_loop_devices_have_backing_files() {
        assert_eq!(loop_backing_file("/dev/sda1"), None);
        assert_eq!(loop_backing_file("sixfold:default"), None);
    }
}
