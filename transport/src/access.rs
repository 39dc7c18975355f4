//! The access check of every request: which certificate roles may call which method.
//!
//! The server's service is wrapped in [`Authorized`], which looks up the request's method in a
//! [`Policy`] (kept with the service that knows its methods) and the caller's role in the
//! connection's [`Peer`]. It fails closed: a method the policy does not name is refused to
//! everyone, and so is a TLS caller whose certificate carries no role. On a plaintext
//! (`--insecure`) connection there is no role to check and every method is allowed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::codegen::Service;

use crate::{Peer, Role};

/// The roles that may call a method, by its gRPC path (`/sixfold.StorageNode/Append`); `None`
/// for a method the policy does not know (refused to everyone).
pub type Policy = fn(&str) -> Option<&'static [Role]>;

/// Decides one request: `Ok` to serve it, or the status that refuses it and says why.
pub fn check(policy: Policy, peer: Option<&Peer>, path: &str) -> Result<(), tonic::Status> {
    let Some(peer) = peer else {
        return Err(tonic::Status::unauthenticated(
            "no connection information: refusing an unidentified caller",
        ));
    };
    if !peer.tls {
        return Ok(());
    }
    let method = path.rsplit('/').next().unwrap_or(path);
    let Some(allowed) = policy(path) else {
        return Err(tonic::Status::permission_denied(format!(
            "unknown method {path}: refused to every certificate"
        )));
    };
    role_allows(peer, allowed, &format!("call {method}"))
}

/// Refuses `peer` unless the connection is plaintext (nothing to check) or its certificate's
/// role is one of `allowed`; `what` says what it tried ("call Append", "seal a segment"). The
/// one place a role is compared, for the method policy and for the service's field rules.
pub fn role_allows(peer: &Peer, allowed: &[Role], what: &str) -> Result<(), tonic::Status> {
    if !peer.tls {
        return Ok(());
    }
    match peer.role {
        Some(role) if allowed.contains(&role) => Ok(()),
        Some(role) => Err(tonic::Status::permission_denied(format!(
            "a certificate of role {role} may not {what} (it needs {})",
            names(allowed)
        ))),
        None => Err(tonic::Status::unauthenticated(format!(
            "the client certificate carries no sixfold role, so it may not {what} (it needs {})",
            names(allowed)
        ))),
    }
}

fn names(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    format!("role {}", names.join(" or "))
}

/// A gRPC service behind the access check.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    policy: Policy,
}

impl<S> Authorized<S> {
    pub fn new(inner: S, policy: Policy) -> Self {
        Authorized { inner, policy }
    }
}

type Responding<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Responding<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<Peer>();
        match check(self.policy, peer, request.uri().path()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => {
                tracing::warn!(
                    peer = ?peer.and_then(|p| p.addr),
                    "refused a request: {}",
                    status.message()
                );
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(path: &str) -> Option<&'static [Role]> {
        match path {
            "/s/Append" => Some(&[Role::Writer]),
            "/s/Status" => Some(&[Role::Node, Role::Writer, Role::Admin]),
            _ => None,
        }
    }

    fn peer(tls: bool, role: Option<Role>) -> Peer {
        Peer {
            addr: None,
            tls,
            role,
        }
    }

    #[test]
    fn roles_are_checked_and_unknown_methods_refused() {
        let writer = peer(true, Some(Role::Writer));
        let admin = peer(true, Some(Role::Admin));
        assert!(check(policy, Some(&writer), "/s/Append").is_ok());
        let refused = check(policy, Some(&admin), "/s/Append").expect_err("admin may not append");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("role admin may not call Append"));
        assert!(check(policy, Some(&admin), "/s/Status").is_ok());
        let unknown = check(policy, Some(&writer), "/s/Other").expect_err("unknown");
        assert!(unknown.message().contains("unknown method"));
        let roleless = check(policy, Some(&peer(true, None)), "/s/Status").expect_err("no role");
        assert_eq!(roleless.code(), tonic::Code::Unauthenticated);
        assert!(check(policy, None, "/s/Status").is_err());
        // Plaintext: the operator chose --insecure; nothing to check.
        assert!(check(policy, Some(&peer(false, None)), "/s/Other").is_ok());
    }
}
