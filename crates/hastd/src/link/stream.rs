//! The two halves of a replication connection, plain TCP or TLS.
//!
//! An enum rather than boxed trait objects: the plain TCP case stays the
//! tokio `OwnedReadHalf`/`OwnedWriteHalf` it always was, called directly,
//! so plaintext costs nothing more than before. TLS needs one state for both
//! directions, so its halves come from `tokio::io::split` (a lock around the
//! stream, uncontended on hastd's single-threaded runtime). Vectored writes
//! are forwarded on both (`is_write_vectored` too): the `Outbox` batches
//! frames into one `writev`, and TLS encrypts such a batch into as few
//! records as it fits. Over plain TCP the read half waits for a large
//! payload to be whole before it wakes ([`hast_io::LowWater`]): one `recv`
//! per 1 MiB frame on the secondary instead of one per piece.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hast_io::LowWater;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// The capacity of the `BufReader` each side reads the connection through
/// once the handshake is over: replies and headers are 32-byte frames,
/// many per segment at high depth; larger payloads bypass it.
pub const READ_BUFFER_BYTES: usize = 256 << 10;

pub enum ConnRead {
    Tcp(LowWater<OwnedReadHalf>),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

pub enum ConnWrite {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

pub fn split_tcp(s: TcpStream) -> (ConnRead, ConnWrite) {
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&s);
    let (rd, wr) = s.into_split();
    (
        ConnRead::Tcp(LowWater::new(rd, fd, READ_BUFFER_BYTES)),
        ConnWrite::Tcp(wr),
    )
}

pub fn split_tls(s: TlsStream<TcpStream>) -> (ConnRead, ConnWrite) {
    let (rd, wr) = tokio::io::split(s);
    (ConnRead::Tls(rd), ConnWrite::Tls(wr))
}

impl AsyncRead for ConnRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnRead::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ConnRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            ConnWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            ConnWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ConnWrite::Tcp(w) => w.is_write_vectored(),
            ConnWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            ConnWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            ConnWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWrite;

    /// The Outbox relies on vectored writes reaching the socket as one
    /// `writev` (the TLS half is checked in `tls::tests`).
    #[tokio::test]
    async fn the_tcp_half_forwards_vectored_writes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (_rd, wr) = split_tcp(a);
        assert!(wr.is_write_vectored());
    }
}
