//! gRPC clients of the storage nodes: one lazily connected channel per node address, and
//! [`ask_all`] and [`ask_quorum`], the ways the writer asks several nodes at once (metadata,
//! recovery, status).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sixfold_proto::wire::storage_node_client::StorageNodeClient;
use sixfold_transport::{ChannelOptions, KeepAlive, Security};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::refusal::{classify, Refusal};

pub use sixfold_transport::{CONNECTION_WINDOW_BYTES, MESSAGE_BYTES_MAX, STREAM_WINDOW_BYTES};

/// How long a connection attempt may take before the node counts as unreachable. Short: a SYN
/// lost while a node was cut off is retransmitted only a second later, and a fresh attempt
/// (after the sender's back-off) finds a node that came back sooner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on connections with calls open: a node that went silent (a network cut, a
/// frozen machine) is found within 1 s, and its segments' calls fail so that their senders
/// reconnect (see `sixfold_transport::KeepAlive`).
pub const KEEP_ALIVE: KeepAlive = KeepAlive {
    interval: Duration::from_millis(300),
    timeout: Duration::from_millis(700),
};

pub type NodeClient = StorageNodeClient<Channel>;

/// The channels of one process to the nodes, secured as its [`Security`] says.
pub struct Clients {
    security: Security,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Clients {
    pub fn new(security: Security) -> Clients {
        Clients {
            security,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the node at `addr` (host:port). Connection happens on first use.
    pub fn get(&self, addr: &str) -> Result<NodeClient, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let options = ChannelOptions {
                    connect_timeout: CONNECT_TIMEOUT,
                    request_timeout: None,
                    keep_alive: Some(KEEP_ALIVE),
                };
                let channel = sixfold_transport::channel(addr, &self.security, options)
                    .map_err(|e| e.to_string())?;
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
    ask_quorum(clients, addrs, timeout, |_: &[bool]| false, call).await
}

/// `enough` for [`ask_quorum`]: at least `needed` successful answers.
pub fn at_least(needed: usize) -> impl Fn(&[bool]) -> bool {
    move |ok: &[bool]| ok.iter().filter(|ok| **ok).count() >= needed
}

/// How long [`ask_quorum`] waits for the other answers once it has its quorum: as long again as
/// the quorum took, at least this.
pub const STRAGGLER_GRACE_MIN: Duration = Duration::from_millis(5);

/// [`ask_all`] that does not wait for a slow node once the successful answers are `enough`
/// (given, per address of `addrs`, whether it answered with success): it waits for the others
/// only as long again as those took (at least [`STRAGGLER_GRACE_MIN`]), then returns without
/// them (their calls are dropped). The answers then omit some addresses: callers count those as
/// not answering, as a down node. For quorum protocols, whose decisions hold with any quorum of
/// answers: a node frozen or cut off silently then costs a round a few milliseconds, not a
/// timeout (a PG allocated while one was took 4 s).
pub async fn ask_quorum<T, F, Fut>(
    clients: &Arc<Clients>,
    addrs: &[String],
    timeout: Duration,
    enough: impl Fn(&[bool]) -> bool,
    call: F,
) -> Vec<Answer<T>>
where
    T: Send + 'static,
    F: Fn(NodeClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    let started = tokio::time::Instant::now();
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
                        Err(sixfold_transport::status_text(&status))
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
    let mut answers: Vec<Answer<T>> = Vec::with_capacity(addrs.len());
    let mut succeeded = vec![false; addrs.len()];
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let joined = match until {
            None => tasks.join_next().await,
            Some(until) => match tokio::time::timeout_at(until, tasks.join_next()).await {
                Ok(joined) => joined,
                Err(_) => break, // the stragglers' calls are dropped with `tasks`
            },
        };
        let Some(joined) = joined else { break };
        if let Ok(answer) = joined {
            if answer.result.is_ok() {
                if let Some(ok) = succeeded.get_mut(answer.index) {
                    *ok = true;
                }
            }
            answers.push(answer);
        }
        if until.is_none() && enough(&succeeded) {
            let took = started.elapsed();
            until = Some(started + took + took.max(STRAGGLER_GRACE_MIN));
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Asks five "nodes" whose answers take `delays_ms` (in the order asked; no node is
    /// reached: the call only sleeps) until `needed` succeeded; the addresses that answered.
    async fn ask(delays_ms: [u64; 5], needed: Option<usize>) -> (Vec<usize>, Duration) {
        let clients = Arc::new(Clients::new(Security::Insecure));
        let addrs: Vec<String> = (0..5).map(|i| format!("127.0.0.1:{}", 1 + i)).collect();
        let asked = Arc::new(AtomicUsize::new(0));
        let call = move |_client: NodeClient| {
            let delay = delays_ms[asked.fetch_add(1, Ordering::SeqCst) % 5];
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok(tonic::Response::new(()))
            }
        };
        let started = Instant::now();
        let answers = match needed {
            Some(needed) => {
                ask_quorum(
                    &clients,
                    &addrs,
                    Duration::from_secs(30),
                    at_least(needed),
                    call,
                )
                .await
            }
            None => ask_all(&clients, &addrs, Duration::from_secs(30), call).await,
        };
        let mut answered: Vec<usize> = answers.iter().map(|a| a.index).collect();
        answered.sort_unstable();
        (answered, started.elapsed())
    }

    /// Once the answers are enough, a straggler is waited for as long again as they took, not
    /// until its timeout: one that answers within that grace is kept, one that does not is
    /// dropped, and `ask_all` waits for everyone.
    #[tokio::test]
    async fn a_quorum_waits_for_stragglers_only_as_long_again_as_it_took() {
        let (answered, took) = ask([10, 20, 30, 200, 5_000], Some(4)).await;
        assert_eq!(answered, vec![0, 1, 2, 3], "the 5 s straggler is dropped");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let (answered, _) = ask([10, 20, 30, 200, 250], Some(4)).await;
        assert_eq!(
            answered,
            vec![0, 1, 2, 3, 4],
            "an answer within the grace is kept"
        );
        let (answered, took) = ask([10, 20, 30, 40, 600], None).await;
        assert_eq!(answered, vec![0, 1, 2, 3, 4]);
        assert!(
            took >= Duration::from_millis(600),
            "ask_all waits for all: {took:?}"
        );
    }
}
