//! `sixfold grow`: grows a mounted volume online by growing its file, which FUSE turns into
//! `setattr(size)` and the writer into `Volume::grow`. Volumes never shrink.
//!
//! Accepts the FUSE mount point (or its `volume` file), or a directory mounted by `sixfold up`:
//! then the ext4 file system on it grows too (`losetup -c`, then `resize2fs` online).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use sixfold_fuse::mount_point::{mount_entry, resolve};

use crate::laptop::system;
use crate::size::{human, parse_volume_size};

#[derive(Debug, Args)]
#[command(
    about = "Grow a mounted volume online (volumes never shrink)",
    long_about = "Grow a mounted volume online. PATH is a `sixfold mount` mount point (or the \
                  `volume` file in it), or a directory mounted by `sixfold up`, whose ext4 file \
                  system is then grown as well (losetup -c, resize2fs). Volumes never shrink."
)]
pub struct GrowArgs {
    /// FUSE mount point, its `volume` file, or a directory mounted by `sixfold up`.
    #[arg(value_name = "MOUNTPOINT_OR_VOLUME_FILE")]
    path: PathBuf,
    /// New size: bytes or 64G, 10GiB, 1T; a multiple of 4096, at most 64T.
    #[arg(long, value_name = "SIZE", value_parser = parse_volume_size)]
    size: u64,
}

pub fn run(args: GrowArgs) -> anyhow::Result<()> {
    let path = resolve(&args.path).with_context(|| format!("resolve {}", args.path.display()))?;
    if let Some(target) = loop_mounted_volume(&path)? {
        return grow_up_directory(&path, &target, args.size);
    }
    let file = volume_file_of(&path)?;
    grow_file(&file, args.size)?;
    Ok(())
}

/// The `volume` file of a sixfold FUSE mount named by `path` (the mount point or the file).
fn volume_file_of(path: &Path) -> anyhow::Result<PathBuf> {
    let (mount_point, file) = if path.is_dir() {
        (path.to_owned(), path.join(sixfold_fuse::VOLUME_FILE_NAME))
    } else {
        let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
        (parent, path.to_owned())
    };
    let entry = mount_entry(&mount_point).context("read the mount table")?;
    match entry {
        Some(entry) if entry.is_sixfold() => Ok(file),
        _ => anyhow::bail!(
            "{} is not where `sixfold mount` serves a volume",
            mount_point.display()
        ),
    }
}

fn grow_file(file: &Path, size: u64) -> anyhow::Result<u64> {
    let handle = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .with_context(|| format!("open {}", file.display()))?;
    let current = handle
        .metadata()
        .with_context(|| format!("read the size of {}", file.display()))?
        .len();
    if size < current {
        anyhow::bail!(
            "refusing to shrink {} from {} to {}: volumes only grow",
            file.display(),
            human(current),
            human(size)
        );
    }
    if size == current {
        println!(
            "{} is already {} ({size} bytes)",
            file.display(),
            human(size)
        );
        return Ok(current);
    }
    handle
        .set_len(size)
        .with_context(|| format!("grow {} to {size} bytes", file.display()))?;
    println!(
        "grew {} from {} to {} ({size} bytes)",
        file.display(),
        human(current),
        human(size)
    );
    Ok(current)
}

/// When `path` is an ext4 mount on a loop device backed by a sixfold `volume` file, that file
/// and the loop device.
fn loop_mounted_volume(path: &Path) -> anyhow::Result<Option<(PathBuf, String)>> {
    let Some(entry) = mount_entry(path).context("read the mount table")? else {
        return Ok(None);
    };
    let Some(backing) = system::loop_backing_file(&entry.source) else {
        return Ok(None);
    };
    Ok(Some((backing, entry.source)))
}

fn grow_up_directory(path: &Path, target: &(PathBuf, String), size: u64) -> anyhow::Result<()> {
    let (backing, device) = target;
    let file = volume_file_of(backing).with_context(|| {
        format!(
            "{} is a loop mount of {}, not of a sixfold volume",
            path.display(),
            backing.display()
        )
    })?;
    grow_file(&file, size)?;
    system::run_tool("losetup", &["-c".as_ref(), device.as_ref()])
        .with_context(|| format!("tell {device} that its file grew"))?;
    system::run_tool("resize2fs", &[device.as_ref()]).with_context(|| {
        format!(
            "grow the file system on {device} (mounted at {}); the volume did grow, the file \
             system keeps its size until `resize2fs {device}` succeeds (online resize needs \
             CAP_SYS_RESOURCE)",
            path.display()
        )
    })?;
    println!(
        "grew the file system at {} to fill the volume",
        path.display()
    );
    Ok(())
}
