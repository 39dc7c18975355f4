//! Certificate roles: what the holder of a certificate may call.
//!
//! A certificate's role is written in it as the DNS subject alternative name
//! `ROLE.role.sixfold`, and a certificate issued by `sixfold ca issue` carries exactly one. The
//! same name serves both directions of a connection: a node's certificate must be valid for
//! `node.role.sixfold`, which is the server name every client checks, so that no writer or admin
//! certificate can pose as a node; and a node reads the role of a client's certificate by asking
//! which of the three names it is valid for. Reading the name through webpki's own name check
//! (rather than a parser of our own) keeps us to one X.509 reader, the one rustls trusts.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName};

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A storage node: may call the peer-only operations (gossip, hydration, page fetch, repair).
    Node,
    /// The process that mounts a volume: may open, seal, append and read.
    Writer,
    /// An operator's command: status, snapshot, restore, cluster and membership commands.
    Admin,
}

/// The domain under which roles are named in certificates.
const ROLE_DOMAIN: &str = "role.sixfold";

impl Role {
    pub const ALL: [Role; 3] = [Role::Node, Role::Writer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// The subject alternative name that carries this role (`node.role.sixfold`).
    pub fn subject_name(self) -> String {
        format!("{}.{ROLE_DOMAIN}", self.as_str())
    }

    /// The server name a client checks on a node's certificate.
    pub(crate) fn server_name(self) -> ServerName<'static> {
        ServerName::try_from(self.subject_name()).expect("the three role names are valid DNS names")
    }

    /// The role of an end-entity certificate, if it carries exactly one. A certificate valid
    /// for several role names (against `sixfold ca issue`'s rule, or through a wildcard such as
    /// `*.role.sixfold`, which webpki's name check honours) has none, and may call nothing.
    pub fn of_certificate(certificate: &CertificateDer<'_>) -> Option<Role> {
        let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
        let mut roles = Role::ALL.into_iter().filter(|role| {
            parsed
                .verify_is_valid_for_subject_name(&role.server_name())
                .is_ok()
        });
        match (roles.next(), roles.next()) {
            (Some(role), None) => Some(role),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert!(role.subject_name().ends_with(".role.sixfold"));
        }
        assert_eq!(Role::parse("root"), None);
    }

    fn certificate(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        rcgen::CertificateParams::new(names)
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .der()
            .clone()
    }

    #[test]
    fn a_certificate_has_a_role_only_when_it_names_exactly_one() {
        assert_eq!(
            Role::of_certificate(&certificate(&["writer.role.sixfold"])),
            Some(Role::Writer)
        );
        assert_eq!(
            Role::of_certificate(&certificate(&["node.role.sixfold", "admin.role.sixfold"])),
            None
        );
        assert_eq!(
            Role::of_certificate(&certificate(&["*.role.sixfold"])),
            None
        );
        assert_eq!(Role::of_certificate(&certificate(&["storage-1"])), None);
        assert_eq!(
            Role::of_certificate(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }
}
