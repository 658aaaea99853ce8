//! [`LowWater`]: the read half of a TCP connection that is woken for a
//! large payload only once the payload has arrived.
//!
//! A 1 MiB WRITE (or replication frame) trickles in over loopback or a LAN
//! in pieces of 64–200 KiB. Read as it comes, it costs about five `recv`s
//! and four `epoll_wait` wake-ups per MiB, each a trip through the runtime.
//! While a large read is asked for, this wrapper sets `SO_RCVLOWAT` to what
//! is left of it (at most [`LOWAT_MAX`]): the kernel then signals the socket
//! readable only once that much is queued, and one `recv` takes it all.
//! Small reads put it back at 1, and so do the refills of the buffered
//! reader above it (`buffered` bytes, however large: they ask for more than
//! a short frame may ever send), so a request smaller than what is asked is
//! never held.
//!
//! `SO_RCVLOWAT` never blocks a non-blocking `recv` (it returns what is
//! there) and never asks for more than the caller's buffer, which is at
//! most what the peer still has to send of this payload, so the threshold
//! is always reached unless the peer stalls, which the caller's payload
//! deadline covers. Linux grows the receive buffer to fit the threshold.

use std::io;
use std::os::unix::io::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// A read at least this large waits for its bytes to arrive together
/// (smaller ones gain less than the `setsockopt`s cost).
pub const LOWAT_MIN: usize = 256 << 10;
/// The largest threshold set: a larger read is taken in pieces of this.
pub const LOWAT_MAX: usize = 1 << 20;

/// The read half `inner` of the TCP socket `fd` (which `inner` owns and
/// keeps open as long as this lives).
pub struct LowWater<R> {
    inner: R,
    fd: RawFd,
    /// The capacity of the buffered reader over this one: its refills ask
    /// for exactly this and must never wait for it to arrive.
    buffered: usize,
    /// The threshold last set (1: the kernel's default).
    set: usize,
}

impl<R> LowWater<R> {
    /// `buffered`: the capacity of the `BufReader` that will read from this
    /// (0 if none). Only reads larger than it (which such a reader passes
    /// straight through: payloads) wait to be whole.
    pub fn new(inner: R, fd: RawFd, buffered: usize) -> LowWater<R> {
        LowWater {
            inner,
            fd,
            buffered,
            set: 1,
        }
    }

    /// The threshold to set for a read of `want` bytes.
    fn threshold(&self, want: usize) -> usize {
        if want >= LOWAT_MIN && want > self.buffered {
            want.min(LOWAT_MAX)
        } else {
            1
        }
    }

    fn set_lowat(&mut self, bytes: usize) {
        let value = i32::try_from(bytes).unwrap_or(i32::MAX);
        // SAFETY: an int option passed by pointer with its size; the kernel
        // only reads it during the call. A failure (not TCP, an old kernel)
        // leaves the default, which is only slower.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        // Remember the value only once set, so a failed call is not
        // mistaken for a threshold in force.
        self.set = if rc == 0 { bytes } else { 1 };
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LowWater<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = self.threshold(buf.remaining());
        if want != self.set {
            self.set_lowat(want);
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn thresholds() {
        // (buffered reader's capacity, read, threshold)
        let cases = [
            (64 << 10, 0, 1),
            (64 << 10, 28, 1),
            (64 << 10, 64 << 10, 1),
            (64 << 10, LOWAT_MIN - 1, 1),
            (64 << 10, LOWAT_MIN, LOWAT_MIN),
            (64 << 10, 1 << 20, 1 << 20),
            (64 << 10, 32 << 20, LOWAT_MAX),
            // A refill of a 256 KiB buffer is never held; a larger read is.
            (256 << 10, 256 << 10, 1),
            (256 << 10, (256 << 10) + 1, (256 << 10) + 1),
            (0, LOWAT_MIN, LOWAT_MIN),
        ];
        for (buffered, want, t) in cases {
            let l = LowWater::new((), -1, buffered);
            assert_eq!(l.threshold(want), t, "{buffered} {want}");
        }
    }

    /// A 1 MiB payload sent in pieces with pauses arrives whole in one
    /// read; a small read right after (a header) is not held back by the
    /// threshold the large one set; a payload of exactly what is asked
    /// completes even though nothing follows it.
    #[tokio::test]
    async fn a_large_read_wakes_once_whole_and_small_reads_are_not_held() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let chunk = vec![7u8; 128 << 10];
            for _ in 0..8 {
                c.write_all(&chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.write_all(b"header!!").await.unwrap();
            c.write_all(&vec![9u8; 300 << 10]).await.unwrap();
            // Keep the connection open: nothing more is sent.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(c);
        });
        let (s, _) = l.accept().await.unwrap();
        let fd = s.as_raw_fd();
        let (rd, _wr) = s.into_split();
        let mut rd = LowWater::new(rd, fd, 0);
        let mut big = vec![0u8; 1 << 20];
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut big))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1 << 20, "the whole payload in one read");
        let mut head = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut head))
            .await
            .expect("a small read after a large one is not held")
            .unwrap();
        assert_eq!(&head, b"header!!");
        let mut rest = vec![0u8; 300 << 10];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut rest))
            .await
            .expect("a payload of exactly what is asked completes")
            .unwrap();
        assert!(rest.iter().all(|&b| b == 9));
        sender.abort();
    }
}
