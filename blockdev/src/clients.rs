//! gRPC clients of the storage nodes: one lazily connected channel per node address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message either side accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// How long a connection attempt may take before the node counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub type NodeClient = StorageNodeClient<Channel>;

#[derive(Default)]
pub struct Clients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Clients {
    /// A client of the node at `addr` (host:port). Connection happens on first use.
    pub fn get(&self, addr: &str) -> Result<NodeClient, String> {
        let mut channels = self.channels.lock().expect("clients lock");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("bad node address {addr:?}: {e}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(10));
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(StorageNodeClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}
