//! The cluster's certificate authority: `sixfold ca init` and `sixfold ca issue`.
//!
//! A CA directory holds `ca.pem` (the CA certificate, given to every process as `--ca`) and
//! `ca.key` (its private key, needed only to issue). `issue` writes `NAME.pem` and `NAME.key`
//! for one process, with one role ([`crate::Role`]). Every file is written mode 0600.
//!
//! Keys are ECDSA P-256. The CA's subject names the first bytes of its key identifier, so that
//! the issuer of a new certificate is derived from the CA key alone (no X.509 parser needed to
//! issue) and two clusters' CAs never share a name.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::error::TransportError;
use crate::Role;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a CA made by `init` is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before they are made, for clocks a little apart.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The files of one issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less the clock skew allowance) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::from_secs(u64::from(days) * 24 * 3600),
        }
    }
}

/// Makes a new CA in `dir` (created if missing). Refuses to replace an existing one: every
/// certificate it issued would stop working.
pub fn init(dir: &Path) -> Result<PathBuf, TransportError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        return Err(TransportError::CaExists { dir: dir.into() });
    }
    std::fs::create_dir_all(dir).map_err(|source| TransportError::Write {
        path: dir.into(),
        source,
    })?;
    let key = KeyPair::generate().map_err(ca_error)?;
    let params = ca_params(&key)?;
    let cert = params.self_signed(&key).map_err(ca_error)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    Ok(cert_path)
}

/// Issues a certificate of `role` named `name`, signed by the CA in `ca_dir`, and writes it to
/// `out_dir` as `NAME.pem` and `NAME.key`.
pub fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    validity: Validity,
    out_dir: &Path,
) -> Result<Issued, TransportError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
        || name == "ca"
    {
        return Err(TransportError::BadName { name: name.into() });
    }
    let key_path = ca_dir.join(CA_KEY_FILE);
    let key_pem = std::fs::read_to_string(&key_path).map_err(|source| TransportError::Read {
        path: key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| TransportError::Pem {
        path: key_path,
        detail: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(&ca_key)?, ca_key);

    let mut params = CertificateParams::new(vec![role.subject_name()]).map_err(ca_error)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    subject.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = subject;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = KeyPair::generate().map_err(ca_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(ca_error)?;

    std::fs::create_dir_all(out_dir).map_err(|source| TransportError::Write {
        path: out_dir.into(),
        source,
    })?;
    let issued = Issued {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    if issued.cert.exists() || issued.key.exists() {
        return Err(TransportError::Exists {
            path: issued.cert.clone(),
        });
    }
    write_private(&issued.key, key.serialize_pem().as_bytes())?;
    write_private(&issued.cert, cert.pem().as_bytes())?;
    Ok(issued)
}

/// The CA certificate's parameters, derived from its key alone (see the module docs).
fn ca_params(key: &KeyPair) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ca_error)?;
    let id: String = params
        .key_identifier(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("sixfold cluster CA {id}"));
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

fn ca_error(error: rcgen::Error) -> TransportError {
    TransportError::Ca {
        detail: error.to_string(),
    }
}

/// Writes a file readable by its owner only (replacing any file of that name).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // An existing file keeps its mode through open: set it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|source| TransportError::Write {
        path: path.into(),
        source,
    })
}
