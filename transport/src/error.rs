use std::path::PathBuf;

/// Why a connection could not be set up, or a certificate made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid PEM file: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "the certificate in {} carries no sixfold role (node.role.sixfold, writer.role.sixfold \
         or admin.role.sixfold): issue it with `sixfold ca issue --role ROLE NAME`",
        path.display()
    )]
    NoRole { path: PathBuf },
    #[error("the certificate in {} is not usable with the CA in {}: {detail}", cert.display(), ca.display())]
    OwnCertificate {
        cert: PathBuf,
        ca: PathBuf,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client certificate verifier: {0}")]
    Verifier(String),
    #[error("bad node address {addr:?}: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("a CA already exists in {}: issuing from a new one would orphan every certificate of the old", dir.display())]
    CaExists { dir: PathBuf },
    #[error("{} exists: issuing again would replace a certificate in use (remove it first)", path.display())]
    Exists { path: PathBuf },
    #[error("certificate name {name:?}: use letters, digits, '-', '_' and '.' (and not \"ca\")")]
    BadName { name: String },
    #[error("making a certificate: {detail}")]
    Ca { detail: String },
}
