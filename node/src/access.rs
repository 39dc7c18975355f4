//! Which certificate roles may call which of the node's methods (the policy that
//! [`sixfold_transport::Authorized`] enforces before any request reaches [`crate::service`]).
//!
//! - `writer` (a mounted volume): open a segment, append, read pages, seal (SegmentState with a
//!   seal epoch: the only way an epoch advances), volume metadata, the node list to find its
//!   nodes (and to write version 1 on a cluster that has none yet, from the cluster file;
//!   changing the list is an admin's `sixfold cluster` command).
//! - `node` (a peer): gossip and hydration (FetchRecords, FetchPages, ReadPage), repair
//!   (SegmentState without sealing, ChangeMembership, PromiseMembership, PutPgMembership).
//! - `admin` (an operator's command): status, the node list, volume metadata (restore), the
//!   membership steps of `rebalance --apply`, RestoreSegment, RotateKeys.
//!
//! Some rules depend on a request's fields, not only on its method; the service checks those
//! with [`require`] (sealing is the writer's alone).

use sixfold_transport::{Peer, Role};
use tonic::{Request, Status};

const WRITER: &[Role] = &[Role::Writer];
const NODE: &[Role] = &[Role::Node];
const ADMIN: &[Role] = &[Role::Admin];
const WRITER_NODE: &[Role] = &[Role::Writer, Role::Node];
const WRITER_ADMIN: &[Role] = &[Role::Writer, Role::Admin];
const NODE_ADMIN: &[Role] = &[Role::Node, Role::Admin];
const ALL: &[Role] = &[Role::Writer, Role::Node, Role::Admin];

const SERVICE: &str = "/sixfold.v1.StorageNode/";

/// The roles that may call the method at `path`; `None` for a method this node does not know.
pub fn policy(path: &str) -> Option<&'static [Role]> {
    let method = path.strip_prefix(SERVICE)?;
    Some(match method {
        "Append" | "AppendStream" | "OpenSegment" => WRITER,
        "ReadPage" => WRITER_NODE,
        "FetchRecords" | "FetchPages" | "PromiseMembership" => NODE,
        "SegmentState" | "NodeStatus" => ALL,
        "PutVolumeMeta" | "GetVolumeMeta" | "GetNodeList" | "PutNodeList" => WRITER_ADMIN,
        "ChangeMembership" | "PutPgMembership" => NODE_ADMIN,
        "RestoreSegment" | "RotateKeys" => ADMIN,
        _ => return None,
    })
}

/// The caller's role; `None` on a plaintext (`--insecure`) connection, where nothing is checked.
pub fn role<T>(request: &Request<T>) -> Option<Role> {
    request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| peer.role)
}

/// Refuses the request unless its caller has one of `roles` (or the connection is plaintext).
pub fn require<T>(request: &Request<T>, roles: &[Role], what: &str) -> Result<(), Status> {
    match request.extensions().get::<Peer>() {
        // In-process calls (tests) carry no connection; over the network every request has one.
        None => Ok(()),
        Some(peer) => sixfold_transport::access::role_allows(peer, roles, what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_service_has_a_rule() {
        let proto = include_str!("../../proto/proto/sixfold.proto");
        let service = proto
            .split("service StorageNode")
            .nth(1)
            .expect("the proto defines the service");
        let mut methods = 0;
        for line in service.lines() {
            let Some(rest) = line.trim().strip_prefix("rpc ") else {
                continue;
            };
            let name = rest.split('(').next().unwrap_or_default().trim();
            assert!(
                policy(&format!("{SERVICE}{name}")).is_some(),
                "{name} has no access rule"
            );
            methods += 1;
        }
        assert!(methods >= 16, "found only {methods} methods");
        assert_eq!(policy("/sixfold.v1.StorageNode/Unknown"), None);
        assert_eq!(policy("/other.Service/Append"), None);
    }
}
