//! The certificates of `sixfold up`: on first use, a CA and one certificate per process in
//! STATE/tls (a `node-N` per node, `writer` for the mount, `admin` for `sixfold status --state`
//! and the other commands given the state's cluster file), all mode 0600. Mutual TLS is the
//! default; `--insecure` starts every process in plaintext instead, and says so.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use sixfold_transport::{ca, Role};

use crate::laptop::state::StateDir;
use crate::tls::{state_files, TlsArgs, STATE_TLS_DIR};

/// Present in the state directory while its processes run with `--insecure`.
const INSECURE_MARKER: &str = "insecure";

/// Laptop certificates are for one machine's processes: valid for ten years.
const LAPTOP_CERT_DAYS: u32 = 3650;

/// How the processes `up` starts secure their connections.
pub enum LaptopTls {
    Tls { state: PathBuf },
    Insecure,
}

impl LaptopTls {
    /// Makes what is missing of STATE/tls (the CA, a certificate per node, the writer's and the
    /// admin's), or chooses plaintext when the operator said `--insecure`.
    ///
    /// `running`: processes of an earlier `up` of this state still run; they keep the mode they
    /// were started in, so switching between TLS and `--insecure` needs a `sixfold down` first.
    pub fn prepare(
        state: &StateDir,
        tls: &TlsArgs,
        nodes: usize,
        running: bool,
    ) -> anyhow::Result<LaptopTls> {
        if tls.tls_ca.is_some() || tls.tls_cert.is_some() || tls.tls_key.is_some() {
            anyhow::bail!(
                "`sixfold up` makes its own CA and certificates in its state directory: \
                 drop --tls-ca, --tls-cert and --tls-key (or SIXFOLD_TLS_CA, SIXFOLD_TLS_CERT, SIXFOLD_TLS_KEY)"
            );
        }
        let marker = state.root.join(INSECURE_MARKER);
        let was_insecure = marker.exists();
        if running && was_insecure != tls.insecure {
            anyhow::bail!(
                "the processes of {} still run {}; run `sixfold down` first to switch",
                state.root.display(),
                if was_insecure {
                    "in plaintext (--insecure)"
                } else {
                    "with TLS (without --insecure)"
                }
            );
        }
        if tls.insecure {
            std::fs::write(
                &marker,
                b"started with --insecure: plaintext, no certificates\n",
            )
            .context("mark the state as insecure")?;
            println!(
                "  WARNING: --insecure: the nodes, the mount and the commands talk in plaintext \
                 without certificates; anyone who reaches a node's port can read or overwrite \
                 the volume"
            );
            return Ok(LaptopTls::Insecure);
        }
        if was_insecure {
            std::fs::remove_file(&marker).context("clear the insecure mark")?;
        }
        let dir = state.root.join(STATE_TLS_DIR);
        if !dir.join(ca::CA_CERT_FILE).exists() {
            ca::init(&dir).context("make the laptop cluster's CA")?;
            println!(
                "  made a CA and certificates in {} (mutual TLS)",
                dir.display()
            );
        }
        let mut wanted: Vec<(String, Role)> = (1..=nodes)
            .map(|n| (format!("node-{n}"), Role::Node))
            .collect();
        wanted.push(("writer".into(), Role::Writer));
        wanted.push(("admin".into(), Role::Admin));
        for (name, role) in wanted {
            if !dir.join(format!("{name}.pem")).exists() {
                ca::issue(
                    &dir,
                    role,
                    &name,
                    ca::Validity::days(LAPTOP_CERT_DAYS),
                    &dir,
                )
                .with_context(|| format!("issue the {role} certificate {name}"))?;
            }
        }
        Ok(LaptopTls::Tls {
            state: state.root.clone(),
        })
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, LaptopTls::Insecure)
    }

    /// The flags that give the process with certificate `name` its identity.
    pub fn args(&self, name: &str) -> Vec<OsString> {
        match self {
            LaptopTls::Insecure => vec!["--insecure".into()],
            LaptopTls::Tls { state } => {
                let files = state_files(state, name);
                vec![
                    "--tls-ca".into(),
                    files.ca.into_os_string(),
                    "--tls-cert".into(),
                    files.cert.into_os_string(),
                    "--tls-key".into(),
                    files.key.into_os_string(),
                ]
            }
        }
    }
}
