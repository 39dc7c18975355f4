//! `sixfold mount`: opens a volume as its single writer (`Volume::open`: epoch bump, recovery)
//! and serves it as `MOUNTPOINT/volume` through FUSE, in the foreground, until it is unmounted
//! or receives SIGTERM/SIGINT; then the volume is flushed and closed.
//!
//! Errors name what went wrong: the cluster file (path and parse error), the mount point (in use,
//! not empty, stale), the nodes (from `Volume::open`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sixfold_blockdev::{ClusterConfig, OpenOptions, Volume};
use sixfold_fuse::MountOptions;

use crate::signals::Signals;
use crate::size::{human, parse_volume_size};

/// How long the runtime may take to wind down its last tasks after the unmount.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
#[command(
    about = "Open a volume as its writer and serve it as MOUNTPOINT/volume through FUSE",
    long_about = "Open a volume as its single writer and serve it as MOUNTPOINT/volume through \
                  FUSE. The volume is created on first mount with --size. Runs in the foreground \
                  until MOUNTPOINT is unmounted (`fusermount3 -u MOUNTPOINT`) or SIGTERM/SIGINT \
                  arrives; then it flushes and closes the volume. Any later mount from any host \
                  holding the cluster file fences this writer out (epoch)."
)]
pub struct MountArgs {
    /// Cluster file (TOML, one [[node]] table with `addr` and `az` per storage node).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// Name of the volume (A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "NAME", default_value = "default")]
    volume: String,
    /// Size of the volume when it is created (ignored when it exists): bytes or 64G, 10GiB, 1T;
    /// a multiple of 4096, at most 64T.
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_volume_size)]
    size: u64,
    /// MiB of clean pages the writer's page cache may hold.
    #[arg(long, value_name = "N", default_value_t = 256)]
    cache_mb: u64,
    /// AZ of this host: reads prefer segments in the same AZ.
    #[arg(long, value_name = "NAME")]
    az: Option<String>,
    /// Let other users than the one mounting use the mount (FUSE allow_other).
    #[arg(long)]
    allow_other: bool,
    /// Let the kernel cache the volume file's pages (default: direct I/O, no double caching).
    #[arg(long, hide = true)]
    kernel_cache: bool,
    /// Mount for reading only: the volume as its segments hold it, without becoming its writer
    /// (no epoch bump: a running writer is not fenced). Needs only 3 of each PG's 6 segments
    /// reachable, where a writer needs 4; writes fail with EROFS.
    #[arg(long)]
    read_only: bool,
    /// How long to wait for enough nodes to answer (they may still be starting), saying how
    /// many answer, before giving up.
    #[arg(long, value_name = "DURATION", default_value = crate::wait::WAIT_DEFAULT, value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Empty directory to mount on; the volume appears as MOUNTPOINT/volume.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
}

/// `println!` that cannot panic: the mount's output often goes to a log file, and a full disk
/// under that log must not turn a clean unmount (every write flushed) into a crash.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn run(args: MountArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    let cluster = ClusterConfig::load(&args.cluster).context("load the cluster file")?;
    let security = tls.security(Some(&args.cluster), sixfold_transport::Role::Writer)?;
    // Check the mount point before touching the cluster: opening the volume fences any other
    // writer, which should not happen for a mount that cannot succeed.
    let mountpoint = sixfold_fuse::mount_point::check_mount_point(&args.mountpoint)
        .context("check the mount point")?;
    // One async worker: the writer's tasks are short (stage, encode, send, count acks) and a
    // quorum round wakes many of them; on one thread they hand off without cross-thread wake-ups.
    // Measured with scripts/profile-sqlite-cpu.sh: about 10% more SQLite commits/s and 8% less
    // CPU per commit than a worker per core, and the same bulk write throughput.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("sixfold-mount")
        .build()
        .context("start the tokio runtime")?;
    let signals = Signals::install(&runtime)?;

    let options = OpenOptions {
        cluster: cluster.clone(),
        volume: args.volume.clone(),
        create_size_bytes: args.size,
        cache_bytes: args.cache_mb.saturating_mul(1 << 20),
        az: args.az.clone(),
        read_only: args.read_only,
        security,
    };
    say!(
        "sixfold mount: opening volume {} on {} nodes ({})",
        args.volume,
        cluster.nodes.len(),
        args.cluster.display()
    );
    let volume: Arc<Volume> = runtime
        .block_on(async {
            tokio::select! {
                opened = crate::wait::retry(
                    "mount",
                    args.wait,
                    sixfold_blockdev::VolumeError::is_unreachable,
                    || Volume::open(options.clone()),
                ) => opened.map_err(anyhow::Error::from),
                () = interrupted() => Err(anyhow::anyhow!("interrupted by a signal")),
            }
        })
        .with_context(|| format!("open volume {}", args.volume))?;
    let stats = volume.stats();
    say!(
        "sixfold mount: volume {} open {} ({}, {} bytes, {}, {} PGs allocated); \
         recovered in {} ms; serving {}",
        args.volume,
        if args.read_only {
            "read-only"
        } else {
            "as its writer"
        },
        human(stats.size_bytes),
        stats.size_bytes,
        stats.epoch,
        stats.pgs,
        stats.open_duration.as_millis(),
        mountpoint.join(sixfold_fuse::VOLUME_FILE_NAME).display()
    );
    if stats.size_bytes != args.size {
        say!(
            "sixfold mount: the volume already existed; --size {} was not applied (use `sixfold grow`)",
            human(args.size)
        );
    }

    let mount_options = MountOptions {
        volume_name: args.volume.clone(),
        allow_other: args.allow_other,
        direct_io: !args.kernel_cache,
        read_only: args.read_only,
        ..MountOptions::default()
    };
    let served = sixfold_fuse::mount(
        volume,
        runtime.handle().clone(),
        &mountpoint,
        mount_options,
        signals.recv(),
    );
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    served.with_context(|| format!("serve volume {} at {}", args.volume, mountpoint.display()))?;
    say!(
        "sixfold mount: unmounted {}; volume {} flushed and closed",
        mountpoint.display(),
        args.volume
    );
    Ok(())
}

/// A second set of handlers for the opening phase (the first one is handed to the FUSE mount).
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
