//! How a command secures its connections (`--tls-ca`, `--tls-cert`, `--tls-key` or `--insecure`, on every
//! command) and `sixfold ca`, which makes the cluster's CA and certificates.
//!
//! Secure is the default: a command that talks to the nodes needs a certificate signed by the
//! cluster's CA, or an explicit `--insecure` (which it logs as a warning). A command given no
//! certificate uses the one for its role in the `tls/` directory beside its cluster file, where
//! `sixfold up` puts them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use sixfold_transport::{ca, Role, Security, TlsFiles};

/// Where `sixfold up` keeps the CA and the certificates in its state directory.
pub const STATE_TLS_DIR: &str = "tls";

#[derive(Clone, Debug, Default, Args)]
pub struct TlsArgs {
    /// The cluster CA's certificate (PEM), made by `sixfold ca init`.
    #[arg(long, global = true, env = "SIXFOLD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), made by `sixfold ca issue`.
    #[arg(long, global = true, env = "SIXFOLD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, global = true, env = "SIXFOLD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext connections, no certificates. Gives up all protection in flight: anyone who
    /// reaches a node's port can read any volume, overwrite its metadata or fence its writer.
    #[arg(
        long,
        global = true,
        env = "SIXFOLD_INSECURE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure: bool,
}

impl TlsArgs {
    /// The security of a command acting as `role`. With no files named, the certificate for the
    /// role in the `tls/` directory next to `cluster_file` serves (where `sixfold up` puts them,
    /// beside its cluster.toml).
    pub fn security(&self, cluster_file: Option<&Path>, role: Role) -> anyhow::Result<Security> {
        let state = cluster_file.and_then(Path::parent);
        let named = [&self.tls_ca, &self.tls_cert, &self.tls_key]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if self.insecure {
            if named > 0 {
                anyhow::bail!("--insecure and --tls-ca/--tls-cert/--tls-key exclude each other");
            }
            tracing::warn!(
                "--insecure: plaintext connections without certificates; anyone who reaches a \
                 node's port can read any volume, overwrite its metadata or fence its writer"
            );
            return Ok(Security::Insecure);
        }
        let files = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if named > 0 => {
                anyhow::bail!(
                    "name all three of --tls-ca, --tls-cert and --tls-key (or none, to use those \
                     of `sixfold up` beside the cluster file)"
                )
            }
            _ => match state {
                Some(state) => {
                    let files = state_files(state, role.as_str());
                    if !files.cert.exists() {
                        anyhow::bail!(
                            "no certificate named, and {} holds no {} certificate: pass --tls-ca, \
                             --tls-cert and --tls-key (or --insecure for a cluster started with it)",
                            state.join(STATE_TLS_DIR).display(),
                            role
                        );
                    }
                    files
                }
                None => anyhow::bail!(
                    "no certificate: pass --tls-ca FILE --tls-cert FILE --tls-key FILE (or set SIXFOLD_TLS_CA, \
                     SIXFOLD_TLS_CERT, SIXFOLD_TLS_KEY) with a {role} certificate made by `sixfold ca \
                     issue --role {role}`, or --insecure for plaintext"
                ),
            },
        };
        let security = Security::load(&files).context("load the TLS certificate")?;
        if security.role() != Some(role) {
            anyhow::bail!(
                "{} is a certificate of role {}, and this command needs one of role {role} \
                 (issue one with `sixfold ca issue --role {role}`)",
                files.cert.display(),
                security.role().map(|r| r.as_str()).unwrap_or("none"),
            );
        }
        Ok(security)
    }
}

/// The files of the certificate `name` in an `up` state directory.
pub fn state_files(state: &Path, name: &str) -> TlsFiles {
    let dir = state.join(STATE_TLS_DIR);
    TlsFiles {
        ca: dir.join(ca::CA_CERT_FILE),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// `sixfold ca`: the cluster's certificate authority.
#[derive(Debug, Args)]
#[command(
    about = "Make the cluster's CA and its certificates (mutual TLS between every process)",
    long_about = "Make the cluster's certificate authority and the certificates every process \
                  presents. Each certificate carries one role: `node` (a storage node), `writer` \
                  (a `sixfold mount`) or `admin` (status, snapshot, restore, cluster and \
                  membership commands). Files are written mode 0600; keep ca.key off the nodes."
)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make a new CA in DIR (ca.pem, ca.key); refuses to replace one.
    Init {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a certificate of ROLE named NAME, written as NAME.pem and NAME.key.
    Issue {
        /// The CA directory (holds ca.pem and ca.key).
        #[arg(long = "dir", value_name = "DIR")]
        dir: PathBuf,
        /// node, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How many days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write NAME.pem and NAME.key (default: the CA directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(value_name = "NAME")]
        name: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: use node, writer or admin"))
}

pub fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.command {
        CaCommand::Init { dir } => {
            let cert = ca::init(&dir).context("make the CA")?;
            println!(
                "sixfold ca: made a CA in {} ({}); give {} to every process as --tls-ca, keep {} secret",
                dir.display(),
                cert.display(),
                ca::CA_CERT_FILE,
                ca::CA_KEY_FILE
            );
        }
        CaCommand::Issue {
            dir,
            role,
            days,
            out,
            name,
        } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let issued = ca::issue(&dir, role, &name, ca::Validity::days(days), &out)
                .with_context(|| format!("issue the {role} certificate {name}"))?;
            println!(
                "sixfold ca: issued a {role} certificate for {name}, valid {days} days: {} and {}",
                issued.cert.display(),
                issued.key.display()
            );
        }
    }
    Ok(())
}
