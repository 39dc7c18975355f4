//! A connection that is plaintext (`--insecure`) or TLS, with what its owner knows of the other
//! end: one type and one set of I/O impls for both the client ([`crate::client`]) and the server
//! ([`crate::server`]) side.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP connection, plaintext or wrapped in a TLS stream `T`, carrying `info`.
pub struct Connection<T, I> {
    stream: Stream<T>,
    info: I,
    /// What the connection holds while it is open (its place among a server's connections).
    held: Option<crate::server::Slot>,
}

enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T, I> Connection<T, I> {
    pub(crate) fn plain(stream: TcpStream, info: I) -> Self {
        Connection {
            stream: Stream::Plain(stream),
            info,
            held: None,
        }
    }

    pub(crate) fn tls(stream: T, info: I) -> Self {
        Connection {
            stream: Stream::Tls(Box::new(stream)),
            info,
            held: None,
        }
    }

    /// The connection keeps `slot` until it is dropped.
    pub(crate) fn holding(mut self, slot: crate::server::Slot) -> Self {
        self.held = Some(slot);
        self
    }

    pub(crate) fn info(&self) -> &I {
        &self.info
    }
}

impl<T, I> Connection<T, I>
where
    T: AsyncRead + AsyncWrite + Unpin,
    I: Unpin,
{
    /// The stream to read or write, pinned (both kinds are `Unpin`).
    fn io(self: Pin<&mut Self>) -> Pin<&mut (dyn AsyncReadWrite + Unpin)> {
        match &mut self.get_mut().stream {
            Stream::Plain(stream) => Pin::new(stream),
            Stream::Tls(stream) => Pin::new(stream.as_mut()),
        }
    }
}

/// Both halves of a byte stream, as one object.
trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<S: AsyncRead + AsyncWrite> AsyncReadWrite for S {}

impl<T, I> AsyncRead for Connection<T, I>
where
    T: AsyncRead + AsyncWrite + Unpin,
    I: Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl<T, I> AsyncWrite for Connection<T, I>
where
    T: AsyncRead + AsyncWrite + Unpin,
    I: Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}
