//! The server side: accepted connections, after their TLS handshake, with who is on the other
//! end ([`Peer`]) for the access check of every request ([`crate::access`]).
//!
//! Handshakes run in their own tasks, bounded by [`HANDSHAKE_TIMEOUT`], so that a client that
//! connects and says nothing holds no one else up. A refused handshake is logged with the peer's
//! address and rustls's reason (no certificate, unknown CA, expired...).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::{Role, Security};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// Handshakes under way at once; the listener waits for one to end beyond that, so that a flood
/// of silent connections costs a bounded number of tasks.
const HANDSHAKES_MAX: usize = 256;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// Whether the connection is TLS (the client proved a certificate of the cluster's CA).
    pub tls: bool,
    /// The role of the client's certificate; `None` on a plaintext (`--insecure`) connection.
    pub role: Option<Role>,
}

/// An accepted connection: plaintext or TLS.
pub enum ServerIo {
    Plain(TcpStream, Peer),
    Tls(Box<TlsStream<TcpStream>>, Peer),
}

impl Connected for ServerIo {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            ServerIo::Plain(_, peer) | ServerIo::Tls(_, peer) => peer.clone(),
        }
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

/// Accepts connections on `listener`, secured as `security` says.
pub fn incoming(listener: TcpListener, security: Security) -> Incoming {
    let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
    let task = tokio::spawn(accept_loop(listener, security, sender));
    Incoming { accepted, task }
}

async fn accept_loop(
    listener: TcpListener,
    security: Security,
    sender: mpsc::Sender<io::Result<ServerIo>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
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
        match &acceptor {
            None => {
                let peer = Peer {
                    addr: Some(addr),
                    tls: false,
                    role: None,
                };
                if sender
                    .send(Ok(ServerIo::Plain(stream, peer)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(acceptor) => {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(io) = handshake(acceptor, stream, addr).await {
                        let _ = sender.send(Ok(io)).await;
                    }
                });
            }
        }
        if sender.is_closed() {
            return;
        }
    }
}

async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, addr: SocketAddr) -> Option<ServerIo> {
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
    Some(ServerIo::Tls(Box::new(stream), peer))
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            ServerIo::Plain(stream, _) => {
                let $io = Pin::new(stream);
                $call
            }
            ServerIo::Tls(stream, _) => {
                let $io = Pin::new(stream.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(stream, _) => stream.is_write_vectored(),
            ServerIo::Tls(stream, _) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}
