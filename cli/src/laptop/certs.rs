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
    pub fn prepare(state: &StateDir, tls: &TlsArgs, nodes: usize) -> anyhow::Result<LaptopTls> {
        if tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some() {
            anyhow::bail!(
                "`sixfold up` makes its own CA and certificates in its state directory: \
                 drop --ca, --cert and --key (or SIXFOLD_CA, SIXFOLD_CERT, SIXFOLD_KEY)"
            );
        }
        if tls.insecure {
            println!(
                "  WARNING: --insecure: the nodes, the mount and the commands talk in plaintext \
                 without certificates; anyone who reaches a node's port can read or overwrite \
                 the volume"
            );
            return Ok(LaptopTls::Insecure);
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

    /// The flags that give the process with certificate `name` its identity.
    pub fn args(&self, name: &str) -> Vec<OsString> {
        match self {
            LaptopTls::Insecure => vec!["--insecure".into()],
            LaptopTls::Tls { state } => {
                let files = state_files(state, name);
                vec![
                    "--ca".into(),
                    files.ca.into_os_string(),
                    "--cert".into(),
                    files.cert.into_os_string(),
                    "--key".into(),
                    files.key.into_os_string(),
                ]
            }
        }
    }
}
