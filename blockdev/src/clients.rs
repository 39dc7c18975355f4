//! gRPC clients of the storage nodes: one lazily connected channel per node address, and
//! [`ask_all`], the one way the writer asks several nodes at once (metadata, recovery, status).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::refusal::{classify, Refusal};

/// Largest gRPC message either side accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// HTTP/2 flow-control windows (limits, not allocations): a whole batch or a run of pages goes
/// out without waiting for window updates.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
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
                    .initial_stream_window_size(STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
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

/// One node's answer in [`ask_all`]: the node's index in the list asked, its address, and the
/// response or why there is none ("timed out", a connection error, or the node's gRPC status).
pub struct Answer<T> {
    pub index: usize,
    pub addr: String,
    pub result: Result<T, String>,
    /// What a failed answer's gRPC status says the node refused (`Other` for link errors).
    pub refusal: Refusal,
}

/// Sends one request to every node of `addrs` in parallel, each bounded by `timeout`, and
/// returns their answers in completion order. `call` makes the request for one client.
pub async fn ask_all<T, F, Fut>(
    clients: &Arc<Clients>,
    addrs: &[String],
    timeout: Duration,
    call: F,
) -> Vec<Answer<T>>
where
    T: Send + 'static,
    F: Fn(NodeClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (index, addr) in addrs.iter().enumerate() {
        let request = clients.get(addr).map(&call);
        let addr = addr.clone();
        tasks.spawn(async move {
            let mut refusal = Refusal::Other;
            let result = match request {
                Err(error) => Err(error),
                Ok(request) => match tokio::time::timeout(timeout, request).await {
                    Err(_) => Err("timed out".to_string()),
                    Ok(Err(status)) => {
                        refusal = classify(&status);
                        Err(format!("{:?}: {}", status.code(), status.message()))
                    }
                    Ok(Ok(response)) => Ok(response.into_inner()),
                },
            };
            Answer {
                index,
                addr,
                result,
                refusal,
            }
        });
    }
    let mut answers = Vec::with_capacity(addrs.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers
}
