//! How a process secures its connections: mutual TLS 1.3 with its certificate, or (only when an
//! operator said `--insecure`) plaintext.
//!
//! With TLS, both sides present a certificate signed by the cluster's CA: a server refuses a
//! client without one, with another CA's, or an expired one, during the handshake (rustls's
//! WebPKI verifier; the client sees the alert: `CertificateRequired`, `UnknownCA`,
//! `CertificateExpired`...); a client accepts only a server whose certificate carries the `node`
//! role. Only TLS 1.3 is offered and accepted, with ring as the crypto provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::TransportError;
use crate::Role;

/// The ALPN protocol of gRPC (HTTP/2).
const ALPN_H2: &[u8] = b"h2";

/// The files a process's TLS identity is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (`ca.pem`).
    pub ca: PathBuf,
    /// This process's certificate.
    pub cert: PathBuf,
    /// This process's private key.
    pub key: PathBuf,
}

/// A process's TLS identity, ready for both sides of a connection.
#[derive(Debug)]
pub struct Tls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    /// The client side of append connections (ALPN [`crate::frames::APPEND_ALPN`]).
    pub(crate) client_append: Arc<ClientConfig>,
    role: Role,
}

/// How connections are secured.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS 1.3 with certificate roles.
    Tls(Arc<Tls>),
    /// Plaintext, no authentication: anyone who reaches a port may call anything.
    Insecure,
}

impl Security {
    /// Loads the CA, certificate and key, and checks that the certificate carries a role and is
    /// valid under the CA now (so that a process with a wrong or expired certificate fails at
    /// start, saying so, rather than at its first connection).
    pub fn load(files: &TlsFiles) -> Result<Security, TransportError> {
        let ca = read_certificates(&files.ca)?;
        let chain = read_certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
        let role = Role::of_certificate(&chain[0]).ok_or_else(|| TransportError::NoRole {
            path: files.cert.clone(),
        })?;
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots.add(certificate)?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TransportError::Verifier(e.to_string()))?;
        client_verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| TransportError::OwnCertificate {
                cert: files.cert.clone(),
                ca: files.ca.clone(),
                detail: e.to_string(),
            })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), crate::frames::APPEND_ALPN.to_vec()];

        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TransportError::Verifier(e.to_string()))?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;
        let mut client_append = client.clone();
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        client_append.alpn_protocols = vec![crate::frames::APPEND_ALPN.to_vec()];

        Ok(Security::Tls(Arc::new(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            client_append: Arc::new(client_append),
            role,
        })))
    }

    /// The role of this process's certificate (`None` when insecure).
    pub fn role(&self) -> Option<Role> {
        match self {
            Security::Tls(tls) => Some(tls.role),
            Security::Insecure => None,
        }
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Security::Insecure)
    }

    /// A few words for a start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Security::Tls(tls) => format!("mutual TLS 1.3, certificate role {}", tls.role),
            Security::Insecure => {
                "PLAINTEXT (--insecure): no encryption in flight, no authentication".to_string()
            }
        }
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certificates.is_empty() {
        return Err(TransportError::NoCertificate { path: path.into() });
    }
    Ok(certificates)
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> TransportError {
    match error {
        rustls::pki_types::pem::Error::Io(source) => TransportError::Read {
            path: path.into(),
            source,
        },
        other => TransportError::Pem {
            path: path.into(),
            detail: other.to_string(),
        },
    }
}
