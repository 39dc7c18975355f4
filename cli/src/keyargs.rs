//! Where a node's key-encryption key comes from (encryption at rest, `sixfold_keys`): one of
//! `--key-file`, `SIXFOLD_KEY` (64 hex digits) or `--key-command`; none means data is written in
//! the clear.

use std::path::PathBuf;

use clap::Args;
use sixfold_keys::{KekSource, KEY_ENV};

#[derive(Debug, Args, Default, Clone)]
pub struct KeyArgs {
    /// Encrypt everything this node writes (hot log, pages, journals, checkpoint, metadata)
    /// with AES-256-GCM under data keys wrapped by the key-encryption key in FILE (64 hex
    /// digits, mode 0600; `sixfold key new FILE` makes one). The key itself may instead come from
    /// SIXFOLD_KEY (64 hex digits) or --key-command.
    #[arg(
        long,
        value_name = "FILE",
        env = "SIXFOLD_KEY_FILE",
        conflicts_with = "key_command"
    )]
    key_file: Option<PathBuf>,
    /// A command that holds the key-encryption key (the hook for a KMS): run as
    /// `sh -c CMD sixfold-key OP` with OP `id`, `wrap` or `unwrap`, hex on stdin and stdout.
    #[arg(long, value_name = "CMD", env = "SIXFOLD_KEY_COMMAND")]
    key_command: Option<String>,
    /// Changing the key-encryption key: the one --key-file (or --key-command) replaces. At
    /// start the node rewraps every data key still wrapped by it (the data itself is not
    /// rewritten), and opens with it the keys other nodes published under it beside archived
    /// objects. Keep giving it until every node has started with the new key and the backup's
    /// retention window has passed.
    #[arg(
        long,
        value_name = "FILE",
        env = "SIXFOLD_PREVIOUS_KEY_FILE",
        conflicts_with = "previous_key_command"
    )]
    previous_key_file: Option<PathBuf>,
    /// Like --previous-key-file, for a KEK held by a key command (a KMS).
    #[arg(long, value_name = "CMD", env = "SIXFOLD_PREVIOUS_KEY_COMMAND")]
    previous_key_command: Option<String>,
}

impl KeyArgs {
    /// The key-encryption key being replaced, if the operator is changing it.
    pub fn previous_source(&self) -> anyhow::Result<Option<KekSource>> {
        let previous = match (&self.previous_key_file, &self.previous_key_command) {
            (Some(path), _) => Some(KekSource::File(path.clone())),
            (None, Some(command)) => Some(KekSource::Command(command.clone())),
            (None, None) => None,
        };
        if previous.is_some() && self.source()?.is_none() {
            anyhow::bail!(
                "--previous-key-file/--previous-key-command name the key-encryption key being \
                 replaced: give the new one too (--key-file, SIXFOLD_KEY or --key-command)"
            );
        }
        Ok(previous)
    }

    /// The configured source, if any (`SIXFOLD_KEY` last: a file or command named explicitly wins).
    pub fn source(&self) -> anyhow::Result<Option<KekSource>> {
        if let Some(path) = &self.key_file {
            return Ok(Some(KekSource::File(path.clone())));
        }
        if let Some(command) = &self.key_command {
            return Ok(Some(KekSource::Command(command.clone())));
        }
        match std::env::var(KEY_ENV) {
            Ok(hex) if !hex.trim().is_empty() => Ok(Some(KekSource::Hex(hex))),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{KEY_ENV} is not 64 hex digits")
            }
        }
    }
}

/// `sixfold key new FILE`: makes a key-encryption key file; `sixfold key rotate`: new data keys.
#[derive(Debug, Args)]
#[command(
    about = "Make or manage key-encryption keys (encryption at rest)",
    long_about = "Make or manage key-encryption keys. `sixfold key new FILE` writes a new random \
                  256-bit key-encryption key as 64 hex digits to FILE, mode 0600, and refuses to \
                  overwrite one: losing it loses every volume sealed under it. Give it to each \
                  node with --key-file FILE (or its hex in SIXFOLD_KEY). `sixfold key rotate` \
                  gives every node new data keys: new data is sealed with them at once, and each \
                  node re-seals its pages, checkpoint and metadata in the background and lets \
                  its older hot-log files go once folded (archived objects keep their keys)."
)]
pub struct KeyCommandArgs {
    #[command(subcommand)]
    command: KeySub,
}

#[derive(Debug, clap::Subcommand)]
enum KeySub {
    /// Write a new key-encryption key to FILE (0600; never overwrites).
    New {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Give every node new data keys for new data; each node then re-seals what it holds under
    /// the older ones in the background (shown until done, and in `sixfold status`).
    Rotate(crate::keyrotate::RotateArgs),
}

pub fn run(args: KeyCommandArgs, tls: &crate::tls::TlsArgs) -> anyhow::Result<()> {
    match args.command {
        KeySub::New { file } => {
            write_new_key(&file)?;
            println!(
                "wrote a new key-encryption key to {} (mode 0600); keep a copy somewhere safe: \
                 data sealed under it cannot be read without it",
                file.display()
            );
            Ok(())
        }
        KeySub::Rotate(args) => crate::keyrotate::run(args, tls),
    }
}

/// Writes a fresh KEK to `file`, 0600, failing if the file exists.
pub fn write_new_key(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex = sixfold_keys::Kek::generate_hex()?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", file.display()))?;
    out.write_all(hex.as_bytes())?;
    out.write_all(b"\n")?;
    out.sync_all()?;
    Ok(())
}
