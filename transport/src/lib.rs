//! Connections between sixfold processes, built in one place.
//!
//! - [`Security`]: mutual TLS 1.3 with the process's certificate, or plaintext when the operator
//!   said `--insecure`.
//! - [`channel`]: the one way any process (writer, node, CLI) makes a channel to a node.
//! - [`incoming`]: the node's accepted connections, each with the [`Peer`] it came from: gRPC
//!   ones for tonic, append ones ([`frames`]) for the node's append server.
//! - [`connect_append`]: a writer's append connection to a node ([`frames`]).
//! - [`Authorized`]: the access check of every request by certificate [`Role`].
//! - [`ca`]: the cluster's CA (`sixfold ca init`, `sixfold ca issue`).
//! - The transport limits every side uses ([`MESSAGE_BYTES_MAX`] and the HTTP/2 windows).

pub mod access;
pub mod ca;
mod client;
mod error;
pub mod frames;
mod role;
mod security;
mod server;
mod stream;

pub use access::{Authorized, Policy};
pub use client::{channel, connect_append, ChannelOptions, ClientIo, KeepAlive};
pub use error::TransportError;
pub use role::Role;
pub use security::{Security, TlsFiles};
pub use server::{
    incoming, AppendIncoming, Incoming, Peer, ServerIo, CONNECTIONS_MAX,
    CONNECTIONS_PER_ADDRESS_MAX, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    STREAMS_PER_CONNECTION_MAX,
};

/// Largest gRPC message either side accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// HTTP/2 flow-control windows (limits, not allocations): a whole batch or a run of pages goes
/// out without waiting for window updates.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// A gRPC status as one line (`Code: message: cause: cause`), with the causes tonic keeps only
/// in its source chain: a failed connection's reason (an unknown CA, a certificate the node
/// refused, no route) would otherwise show as a bare "transport error".
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
