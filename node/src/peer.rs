//! gRPC clients of other nodes (gossip, archiver, repair): one way to build them, with the
//! node's message and window limits. Connection happens on first use.

use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use tonic::transport::{Channel, Endpoint};

use crate::MESSAGE_BYTES_MAX;

pub type PeerClient = StorageNodeClient<Channel>;

/// A client of the node at `peer` (host:port, or a URI), each call bounded by `timeout`.
pub fn client(
    peer: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<PeerClient, String> {
    let uri = if peer.contains("://") {
        peer.to_string()
    } else {
        format!("http://{peer}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("bad peer address: {e}"))?;
    let channel = endpoint
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::CONNECTION_WINDOW_BYTES)
        .connect_lazy();
    Ok(StorageNodeClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}
