//! `sixfold`: the one binary of the project (DESIGN.md, "What a user does").
//!
//! This file owns the command line (clap) and the edge policy: logging goes to stderr
//! (`RUST_LOG`, else `--log-level`), what a command did goes to stdout, and every error reaches
//! the user once, as an `anyhow` chain of verb-phrase contexts (STYLE.md, convention 4), with a
//! non-zero exit status. Each subcommand lives in its own module:
//!
//! - [`node`]: `sixfold node`, a storage node.
//! - [`mount`]: `sixfold mount`, the writer behind a FUSE mount.
//! - [`status`]: `sixfold status`.
//! - [`grow`]: `sixfold grow`.
//! - [`laptop`]: `sixfold up` / `sixfold down`, the embedded six-node default.
//! - [`backup`]: `sixfold snapshot` and `sixfold restore`.
//! - [`cluster`]: `sixfold cluster nodes|add|remove`, the cluster's node list.
//! - [`tls`]: `--tls-ca/--tls-cert/--tls-key/--insecure` on every command, and `sixfold ca`.
//! - [`wait`]: `--wait`, for commands started before their nodes answer.

mod backup;
mod cluster;
mod drain;
mod grow;
mod keyargs;
mod keyrotate;
mod laptop;
mod mount;
mod node;
mod rebalance;
mod signals;
mod size;
mod status;
mod tls;
mod wait;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// sixfold: a volume replicated the way Amazon Aurora's storage is, six copies in three
/// availability zones, 4/6 write quorum; mount it and run an unmodified database on it.
#[derive(Debug, Parser)]
#[command(
    name = "sixfold",
    version,
    after_help = "Laptop: `sixfold up ./mnt` starts six local nodes, mounts the volume and \
                  loop-mounts it as ext4 at ./mnt; `sixfold down ./mnt` stops everything.\n\
                  Cluster: run `sixfold node` on each storage host, list them in a cluster file, \
                  and `sixfold mount` on the database host."
)]
struct Cli {
    /// Log level for stderr (error, warn, info, debug, trace); RUST_LOG, when set, wins.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    log_level: String,

    #[command(flatten)]
    tls: tls::TlsArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Each subcommand's help (about, long_about) is on its arguments struct.
enum Command {
    Node(Box<node::NodeArgs>),
    Mount(mount::MountArgs),
    Status(status::StatusArgs),
    Grow(grow::GrowArgs),
    Up(laptop::up::UpArgs),
    Down(laptop::down::DownArgs),
    Snapshot(backup::snapshot::SnapshotArgs),
    Restore(backup::restore::RestoreArgs),
    Cluster(cluster::ClusterArgs),
    Rebalance(rebalance::RebalanceArgs),
    Ca(tls::CaArgs),
    Key(keyargs::KeyCommandArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(&cli.log_level) {
        eprintln!("sixfold: {error:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Node(args) => node::run(*args, &cli.tls),
        Command::Mount(args) => mount::run(args, &cli.tls),
        Command::Status(args) => status::run(args, &cli.tls),
        Command::Grow(args) => grow::run(args),
        Command::Up(args) => laptop::up::run(args, &cli.log_level, &cli.tls),
        Command::Down(args) => laptop::down::run(args),
        Command::Snapshot(args) => backup::snapshot::run(args, &cli.tls),
        Command::Restore(args) => backup::restore::run(args, &cli.tls),
        Command::Cluster(args) => cluster::run(args, &cli.tls),
        Command::Rebalance(args) => rebalance::run(args, &cli.tls),
        Command::Ca(args) => tls::run(args),
        Command::Key(args) => keyargs::run(args, &cli.tls),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sixfold: error: {}", render_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error chain as `context: cause: cause`, leaving out a cause that the message before it
/// already ends with (errors that print their source in their own message).
fn render_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)
            .map_err(|error| anyhow::anyhow!("RUST_LOG does not parse: {error}"))?,
        // fuser warns when its own unmount-on-drop finds the mount already gone (after
        // `fusermount3 -u`, the normal way to stop); only its errors are worth a line.
        _ => EnvFilter::try_new(format!("{level},fuser::session=error"))
            .map_err(|error| anyhow::anyhow!("--log-level {level:?} does not parse: {error}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn renders_error_chains_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = anyhow::Error::new(io)
            .context("read x: gone")
            .context("load");
        assert_eq!(render_error(&error), "load: read x: gone");
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_subcommand() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&[
                "sixfold",
                "node",
                "--listen",
                "127.0.0.1:7001",
                "--az",
                "a",
                "--data",
                "/d"
            ]),
            Ok(Command::Node(_))
        ));
        assert!(matches!(
            parse(&[
                "sixfold",
                "mount",
                "--cluster",
                "c.toml",
                "--volume",
                "v",
                "--size",
                "10GiB",
                "/m"
            ]),
            Ok(Command::Mount(_))
        ));
        assert!(matches!(
            parse(&["sixfold", "status", "--state", "/s", "--json"]),
            Ok(Command::Status(_))
        ));
        assert!(matches!(
            parse(&["sixfold", "grow", "/m", "--size", "1T"]),
            Ok(Command::Grow(_))
        ));
        assert!(matches!(
            parse(&["sixfold", "up", "./mnt"]),
            Ok(Command::Up(_))
        ));
        assert!(matches!(
            parse(&["sixfold", "down", "./mnt", "--state", "/s"]),
            Ok(Command::Down(_))
        ));
        assert!(parse(&["sixfold", "mount", "--cluster", "c", "--size", "65T", "/m"]).is_err());
        assert!(parse(&["sixfold", "status", "--state", "/s", "--cluster", "c"]).is_err());
    }
}
