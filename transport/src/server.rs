//! The server side: accepted connections, after their TLS handshake, with who is on the other
//! end ([`Peer`]) for the access check of every request ([`crate::access`]).
//!
//! A connection is gRPC (HTTP/2, for tonic: [`Incoming`]) or an append connection
//! ([`crate::frames`], for the node's append server: [`AppendIncoming`]): by ALPN after a TLS
//! handshake, by its first byte when plaintext.
//!
//! Handshakes run in their own tasks, bounded by [`HANDSHAKE_TIMEOUT`], so that a client that
//! connects and says nothing holds no one else up. A refused handshake is logged with the peer's
//! address and rustls's reason (no certificate, unknown CA, expired...).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::stream::Connection;
use crate::{Role, Security};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// Handshakes under way at once, and from one address. A connection beyond either bound is
/// closed at once (never waited for: the listener keeps accepting), so that silent connections
/// cost a bounded number of tasks and one address cannot starve the others.
const HANDSHAKES_MAX: usize = 1024;
const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;
/// Connections open at once, and from one address; one beyond either bound is closed at once.
/// With [`STREAMS_PER_CONNECTION_MAX`] and the HTTP/2 windows this bounds the requests a node
/// decodes at once, and the memory they take. (A cluster's own processes use one connection
/// per pair of processes, and a few per node for its background tasks.)
pub const CONNECTIONS_MAX: usize = 4096;
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = 512;
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);
/// Requests (HTTP/2 streams) open at once on one connection: above what the largest volume
/// needs on one writer-node connection (an append stream per PG, 6,554 PGs, with its reads and
/// heartbeats) and a restore of it (a RestoreSegment stream per PG, up to 8,192 waiting); what
/// they buffer is bounded by the connection's HTTP/2 window, not by this count.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 16_384;
/// How often a node pings a connection that is quiet, and how long it waits for the answer
/// before it closes the connection: a client that went silent (its machine or its network
/// gone, no RST) holds nothing for long.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Things under way (handshakes, connections), in all and per client address, each bounded.
#[derive(Clone)]
struct Limiter {
    counts: Arc<Mutex<Counts>>,
    total_max: usize,
    per_address_max: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One place in a [`Limiter`], given back when dropped.
pub(crate) struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Limiter {
    fn new(total_max: usize, per_address_max: usize) -> Limiter {
        Limiter {
            counts: Arc::default(),
            total_max,
            per_address_max,
        }
    }

    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut state = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = state.per_address.get(&ip).copied().unwrap_or(0);
        if state.total >= self.total_max || from_ip >= self.per_address_max {
            return None;
        }
        state.total += 1;
        state.per_address.insert(ip, from_ip + 1);
        Some(Slot {
            counts: self.counts.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_address.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_address.remove(&self.ip);
            }
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// Whether the connection is TLS (the client proved a certificate of the cluster's CA).
    pub tls: bool,
    /// The role of the client's certificate; `None` on a plaintext (`--insecure`) connection.
    pub role: Option<Role>,
}

/// An accepted connection: plaintext or TLS, with who is on the other end.
pub type ServerIo = Connection<TlsStream<TcpStream>, Peer>;

impl Connected for ServerIo {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.info().clone()
    }
}

/// The connections a listener accepts, handshaken: give it to tonic's `serve_with_incoming`.
/// Dropping it stops accepting.
pub struct Incoming {
    accepted: mpsc::Receiver<io::Result<ServerIo>>,
    task: JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Incoming {
    type Item = io::Result<ServerIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted.poll_recv(cx)
    }
}

/// The append connections a listener accepts ([`crate::frames`]), handshaken and with who is
/// on the other end; their preface is still to be read. Dropping it closes each one as it comes.
pub type AppendIncoming = mpsc::Receiver<ServerIo>;

/// Where an accepted connection goes.
#[derive(Clone)]
struct Routes {
    grpc: mpsc::Sender<io::Result<ServerIo>>,
    append: mpsc::Sender<ServerIo>,
}

impl Routes {
    /// Hands `io` to its server; false once the gRPC side stopped accepting.
    async fn route(&self, io: ServerIo, append: bool) -> bool {
        if append {
            // A node that serves no appends (its receiver dropped) just closes the connection.
            let _ = self.append.send(io).await;
            true
        } else {
            self.grpc.send(Ok(io)).await.is_ok()
        }
    }
}

/// Accepts connections on `listener`, secured as `security` says.
pub fn incoming(listener: TcpListener, security: Security) -> (Incoming, AppendIncoming) {
    let (grpc, accepted) = mpsc::channel(ACCEPTED_QUEUE);
    let (append, appends) = mpsc::channel(ACCEPTED_QUEUE);
    let task = tokio::spawn(accept_loop(listener, security, Routes { grpc, append }));
    (Incoming { accepted, task }, appends)
}

async fn accept_loop(listener: TcpListener, security: Security, routes: Routes) {
    let handshakes = Limiter::new(HANDSHAKES_MAX, HANDSHAKES_PER_ADDRESS_MAX);
    let connections = Limiter::new(CONNECTIONS_MAX, CONNECTIONS_PER_ADDRESS_MAX);
    let mut refused_logged = None;
    let acceptor = match &security {
        Security::Tls(tls) => Some(TlsAcceptor::from(tls.server.clone())),
        Security::Insecure => None,
    };
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(connection) = connections.take(addr.ip()) else {
            // Logged at most once a minute: a flood must not flood the log too.
            if refused_logged.is_none_or(|at: std::time::Instant| at.elapsed() >= REFUSED_LOG_EVERY)
            {
                warn!(peer = %addr, "too many connections open (at most {CONNECTIONS_MAX}, \
                      {CONNECTIONS_PER_ADDRESS_MAX} from one address): connection closed");
                refused_logged = Some(std::time::Instant::now());
            }
            continue;
        };
        let Some(slot) = handshakes.take(addr.ip()) else {
            debug!(peer = %addr, "too many handshakes under way: connection closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let route = routes.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let opened = match acceptor {
                Some(acceptor) => handshake(acceptor, stream, addr).await,
                None => sniff(stream, addr).await,
            };
            if let Some((io, append)) = opened {
                route.route(io.holding(connection), append).await;
            }
        });
        if routes.grpc.is_closed() {
            return;
        }
    }
}

/// A plaintext connection, and whether it is an append connection (its first byte is the
/// append preface's; HTTP/2's is `P`). Waits for that byte at most [`HANDSHAKE_TIMEOUT`].
async fn sniff(stream: TcpStream, addr: SocketAddr) -> Option<(ServerIo, bool)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) => return None, // closed before a byte
        Ok(Err(error)) => {
            debug!(peer = %addr, "connection failed before its first byte: {error}");
            return None;
        }
        Err(_) => {
            debug!(peer = %addr, "connection sent nothing within {HANDSHAKE_TIMEOUT:?}");
            return None;
        }
    }
    let peer = Peer {
        addr: Some(addr),
        tls: false,
        role: None,
    };
    let append = first[0] == crate::frames::APPEND_PREFACE[0];
    Some((ServerIo::plain(stream, peer), append))
}

/// A TLS connection after its handshake, and whether its client asked for the append protocol.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<(ServerIo, bool)> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Err(_) => {
            debug!(peer = %addr, "TLS handshake timed out");
            return None;
        }
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            // Connected and went away without a word (a port probe): nothing was refused.
            debug!(peer = %addr, "connection closed before its TLS handshake");
            return None;
        }
        Ok(Err(error)) => {
            warn!(peer = %addr, "refused a connection: TLS handshake failed: {error}");
            return None;
        }
        Ok(Ok(stream)) => stream,
    };
    let append = stream.get_ref().1.alpn_protocol() == Some(crate::frames::APPEND_ALPN);
    let role = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(Role::of_certificate);
    // A certificate signed by the CA but without a role may call nothing; the access check
    // refuses each of its requests with a reason.
    let peer = Peer {
        addr: Some(addr),
        tls: true,
        role,
    };
    Some((ServerIo::tls(stream, peer), append))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places are refused beyond the total and beyond one address's share, and come back when
    /// their holder (a connection, a handshake) is dropped.
    #[test]
    fn a_limiter_bounds_the_total_and_each_address() {
        let limiter = Limiter::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limiter.take(a).expect("a place");
        let second = limiter.take(a).expect("a place");
        assert!(limiter.take(a).is_none(), "one address holds at most 2");
        let third = limiter.take(b).expect("another address");
        assert!(limiter.take(b).is_none(), "3 in all");
        drop(first);
        assert!(limiter.take(a).is_some(), "a dropped place comes back");
        drop((second, third));
        let counts = limiter.counts.lock().expect("lock");
        assert_eq!(counts.total, 0);
        assert!(counts.per_address.is_empty());
    }
}
