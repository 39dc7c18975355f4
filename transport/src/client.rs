//! The client side: the one way every process (writer, node, CLI) builds a channel to a node.
//!
//! A channel connects on first use and again after a failure; each connection is TCP with
//! `TCP_NODELAY`, then (unless insecure) a TLS 1.3 handshake that checks the node's certificate
//! carries the `node` role and presents this process's certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use crate::error::TransportError;
use crate::stream::Connection;
use crate::{Role, Security, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};

/// How a channel behaves.
#[derive(Clone, Copy, Debug)]
pub struct ChannelOptions {
    /// How long connecting (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// A bound on every call, if the caller does not bound calls itself.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 pings to find a peer that went silent (see [`KeepAlive`]).
    pub keep_alive: Option<KeepAlive>,
}

/// HTTP/2 keep-alive: once `interval` passes with nothing read from the connection while a call
/// is open on it, a PING goes out; no answer within `timeout` closes the connection and fails
/// every call on it. A peer whose network went silent (packets dropped, no RST) is found within
/// `interval + timeout`, where TCP alone would retransmit for minutes. A busy peer answers PINGs
/// from its connection task, whatever its disk is doing, so a slow fsync is no silence.
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A lazily connected channel to the node at `addr` (host:port).
pub fn channel(
    addr: &str,
    security: &Security,
    options: ChannelOptions,
) -> Result<Channel, TransportError> {
    let bad = |detail: String| TransportError::BadAddress {
        addr: addr.to_string(),
        detail,
    };
    if addr.contains("://") || addr.contains('/') {
        return Err(bad("expected host:port".into()));
    }
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(options.connect_timeout)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("no port".into()));
    }
    if let Some(timeout) = options.request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if let Some(keep_alive) = options.keep_alive {
        endpoint = endpoint
            .http2_keep_alive_interval(keep_alive.interval)
            .keep_alive_timeout(keep_alive.timeout);
    }
    let connector = Connector {
        tls: match security {
            Security::Tls(tls) => Some(TlsConnector::from(tls.client.clone())),
            Security::Insecure => None,
        },
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

#[derive(Clone)]
struct Connector {
    tls: Option<TlsConnector>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<ClientIo>>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host:port"))?
                .as_str()
                .to_string();
            let stream = TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let io = match tls {
                None => ClientIo::plain(stream, ()),
                Some(tls) => {
                    let stream = tls.connect(Role::Node.server_name(), stream).await?;
                    ClientIo::tls(stream, ())
                }
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// A connection to a node: plaintext or TLS.
pub type ClientIo = Connection<TlsStream<TcpStream>, ()>;

/// Opens an append connection ([`crate::frames`]) to the node at `addr` (host:port): TCP with
/// `TCP_NODELAY`, the TLS handshake asking for [`crate::frames::APPEND_ALPN`] (unless insecure),
/// then the preface. All of it within `timeout`.
pub async fn connect_append(
    addr: &str,
    security: &Security,
    timeout: Duration,
) -> io::Result<ClientIo> {
    use tokio::io::AsyncWriteExt as _;
    let connect = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut io = match security {
            Security::Insecure => ClientIo::plain(stream, ()),
            Security::Tls(tls) => {
                let connector = TlsConnector::from(tls.client_append.clone());
                ClientIo::tls(
                    connector.connect(Role::Node.server_name(), stream).await?,
                    (),
                )
            }
        };
        io.write_all(crate::frames::APPEND_PREFACE).await?;
        Ok(io)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no append connection within {timeout:?}"),
        )),
    }
}
