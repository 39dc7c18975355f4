//! gRPC clients of other nodes (gossip, archiver, repair): one way to build them, through
//! [`sixfold_transport::channel`] with the node's own certificate, so that a peer must prove it
//! is a node of the cluster and sees this node as one. Connection happens on first use.

use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_transport::{ChannelOptions, Security, MESSAGE_BYTES_MAX};
use tonic::transport::Channel;

pub type PeerClient = StorageNodeClient<Channel>;

/// A client of the node at `peer` (host:port), each call bounded by `timeout`.
pub fn client(
    security: &Security,
    peer: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<PeerClient, String> {
    let options = ChannelOptions {
        connect_timeout,
        request_timeout: Some(timeout),
        keep_alive: None,
    };
    let channel = sixfold_transport::channel(peer, security, options).map_err(|e| e.to_string())?;
    Ok(StorageNodeClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}
