//! What `sixfold up` needs from the machine, checked before anything starts; everything missing
//! is reported at once, with how to get it.

use std::path::Path;

use super::system::{find_program, is_root};

/// Tools `up` and `down` run, and the package that provides them on Debian.
const TOOLS: [(&str, &str); 4] = [
    ("mount", "mount"),
    ("umount", "mount"),
    ("losetup", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
];

pub fn check_up() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push(
            "root: `sixfold up` mounts FUSE and a loop device, which needs root (run it with sudo)"
                .to_owned(),
        );
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push(
            "/dev/fuse: load the fuse module (`modprobe fuse`); in a container, pass the device \
             (e.g. `--device /dev/fuse --cap-add SYS_ADMIN`)"
                .to_owned(),
        );
    }
    if !Path::new("/dev/loop-control").exists() {
        missing.push(
            "loop devices (/dev/loop-control is missing): `modprobe loop`; in a container, run it \
             privileged"
                .to_owned(),
        );
    }
    for (tool, package) in TOOLS {
        if find_program(tool).is_none() {
            missing.push(format!("`{tool}`: install Debian's {package} package"));
        }
    }
    if find_program("fusermount3").is_none() {
        tracing::warn!(
            "fusermount3 is not installed (Debian's fuse3 package); as root sixfold mounts and \
             unmounts without it"
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "this machine cannot run `sixfold up`; missing:\n  - {}\n(scripts/setup.sh installs the packages)",
        missing.join("\n  - ")
    )
}
