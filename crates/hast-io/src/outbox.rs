//! The sending half of a connection, shared by every task that answers or
//! sends on it.
//!
//! [`Outbox::send`] puts a frame onto the socket from the task that made it
//! whenever nothing waits before it: one non-blocking vectored write, no
//! hand-off to another task. That is for a frame that is alone (its caller
//! knows: no other request in flight on the connection): at queue depth one
//! the hand-off (queue, wake the writer task, let it run) would sit on
//! every request's path. [`Outbox::queue`] is for frames with company: they
//! join a FIFO queue that one writer task ([`Outbox::run`]) drains, many
//! frames per vectored write, one syscall for a batch of replies at high
//! queue depth. A sent frame joins the queue too when the socket is full or
//! something is queued before it. Either way frames leave whole, never
//! interleaved, in the order `send`/`queue` were called.
//!
//! Ordering rule: a sender writes directly only while holding the state lock
//! with the queue empty and the writer task idle, so nothing queued earlier
//! can be overtaken; the writer task marks itself busy before it takes
//! frames and idle only when it finds the queue empty (both under the lock).
//!
//! A writer that buffers (TLS: rustls takes the bytes, encrypts them, and
//! may hold records back when the socket is full) can accept a whole frame
//! yet not get it onto the socket without waiting. The sender cannot wait
//! (it has no waker registered), so it marks the outbox unflushed and the
//! writer task flushes: otherwise the frame would sit in the buffer until
//! the next write, and a reply the peer waits for might never leave.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// The writer task gathers up to this many queued frames into one write.
const BATCH_FRAMES: usize = 64;
/// ... and stops gathering at this many bytes.
const BATCH_BYTES: usize = 256 << 10;

/// A frame as bytes: two parts (a head and a body, either may be empty),
/// written back to back, read from the frame's own buffers.
pub trait OutFrame: Send + 'static {
    fn parts(&self) -> [&[u8]; 2];
}

fn frame_len<F: OutFrame>(f: &F) -> usize {
    let [a, b] = f.parts();
    a.len() + b.len()
}

/// The connection takes no more frames (it failed or was closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed")
    }
}

impl std::error::Error for Closed {}

pub struct Outbox<W, F> {
    /// The write half; `None` while the writer task has it out for an
    /// async write (it is then `writing`, so no sender looks), or once closed.
    sock: Mutex<Option<W>>,
    state: Mutex<State<F>>,
    /// Wakes the writer task: frames were queued, or `finish`/`close` was called.
    queued: Notify,
    /// Wakes senders waiting for room in the queue, and `closed` waiters.
    room: Notify,
    max_queue: usize,
}

struct State<F> {
    queue: VecDeque<F>,
    /// Bytes of the queue's first frame already written.
    front_sent: usize,
    /// The writer task holds frames taken from the queue and not yet written.
    writing: bool,
    closed: bool,
    /// The writer task stops once the queue is empty.
    finishing: bool,
    /// A direct write left bytes in the writer's own buffer (its flush did
    /// not complete): the writer task must flush.
    unflushed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Slices of `frames`' bytes, skipping the first `skip` bytes of the first.
fn slices<'a, F: OutFrame>(frames: impl Iterator<Item = &'a F>, skip: usize) -> Vec<IoSlice<'a>> {
    let mut skip = skip;
    let mut out = Vec::new();
    for f in frames {
        for p in f.parts() {
            let n = skip.min(p.len());
            skip -= n;
            if p.len() > n {
                out.push(IoSlice::new(&p[n..]));
            }
        }
    }
    out
}

impl<W, F> Outbox<W, F>
where
    W: AsyncWrite + Unpin + Send,
    F: OutFrame,
{
    /// `max_queue` bounds the frames waiting for the writer task; senders
    /// beyond it wait for room.
    pub fn new(sock: W, max_queue: usize) -> Outbox<W, F> {
        Outbox {
            sock: Mutex::new(Some(sock)),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                front_sent: 0,
                writing: false,
                closed: false,
                finishing: false,
                unflushed: false,
            }),
            queued: Notify::new(),
            room: Notify::new(),
            max_queue: max_queue.max(1),
        }
    }

    /// Sends `frame` after every frame sent before it, written by the
    /// calling task if nothing waits before it. `Err(Closed)` once the
    /// connection failed or was closed: the frame is dropped.
    pub async fn send(&self, frame: F) -> Result<(), Closed> {
        self.push(frame, true).await
    }

    /// Sends `frame` after every frame sent before it, always through the
    /// writer task, which batches what is queued.
    pub async fn queue(&self, frame: F) -> Result<(), Closed> {
        self.push(frame, false).await
    }

    async fn push(&self, frame: F, direct: bool) -> Result<(), Closed> {
        let mut frame = Some(frame);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if st.closed {
                    return Err(Closed);
                }
                let Some(f) = frame.take() else {
                    return Ok(());
                };
                if direct && !st.writing && st.queue.is_empty() {
                    let (done, flushed) = self.write_now(&f);
                    if done < frame_len(&f) {
                        // The rest (and any error) is the writer task's.
                        st.queue.push_back(f);
                        st.front_sent = done;
                        self.queued.notify_one();
                    } else if !flushed {
                        st.unflushed = true;
                        self.queued.notify_one();
                    }
                    return Ok(());
                }
                if st.queue.len() < self.max_queue {
                    st.queue.push_back(f);
                    self.queued.notify_one();
                    return Ok(());
                }
                frame = Some(f);
            }
            room.await;
        }
    }

    /// Writes what the socket takes of `f` without waiting: bytes written,
    /// and whether the writer's flush completed. Called with the state lock
    /// held and the writer task idle.
    fn write_now(&self, f: &F) -> (usize, bool) {
        let mut guard = lock(&self.sock);
        let Some(sock) = guard.as_mut() else {
            return (0, true);
        };
        // Never woken: a socket that is full leaves the frame to the writer
        // task, whose own poll registers its waker.
        let mut cx = Context::from_waker(Waker::noop());
        let total = frame_len(f);
        let mut done = 0;
        while done < total {
            let [head, body] = f.parts();
            let skip_body = done.saturating_sub(head.len());
            let bufs = [
                IoSlice::new(head.get(done..).unwrap_or_default()),
                IoSlice::new(&body[skip_body..]),
            ];
            match Pin::new(&mut *sock).poll_write_vectored(&mut cx, &bufs) {
                Poll::Ready(Ok(0)) | Poll::Pending => break,
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(_)) => break,
            }
        }
        let mut flushed = true;
        if done == total {
            // Ready at once on sockets; a buffering writer (TLS) may not get
            // everything out, and then the writer task finishes the flush.
            flushed = matches!(
                Pin::new(&mut *sock).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            );
        }
        (done, flushed)
    }

    /// The writer task: writes queued frames until the socket fails
    /// (`Err`, and the outbox is closed), or `finish` was called and the
    /// queue is empty, or the outbox was closed (`Ok`). A write that makes
    /// no progress for `timeout` (if given) is a dead peer. With `idle`,
    /// its function makes a frame (a keepalive) whenever the queue stayed
    /// empty that long.
    pub async fn run(
        &self,
        timeout: Option<Duration>,
        idle: Option<(Duration, &(dyn Fn() -> F + Sync))>,
    ) -> io::Result<()> {
        let mut batch: Vec<F> = Vec::with_capacity(BATCH_FRAMES);
        loop {
            let mut flush_only = false;
            let skip = {
                let mut st = lock(&self.state);
                let mut bytes = 0;
                while batch.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
                    let Some(f) = st.queue.pop_front() else { break };
                    bytes += frame_len(&f);
                    batch.push(f);
                }
                if batch.is_empty() && !st.closed {
                    flush_only = std::mem::take(&mut st.unflushed);
                }
                // Flushing counts as writing: no sender writes past it.
                st.writing = !batch.is_empty() || flush_only;
                if batch.is_empty() && st.closed {
                    return Ok(());
                }
                if batch.is_empty() && st.finishing {
                    break;
                }
                std::mem::take(&mut st.front_sent)
            };
            if flush_only {
                let taken = lock(&self.sock).take();
                let Some(mut sock) = taken else {
                    return Ok(());
                };
                let res = match timeout {
                    None => sock.flush().await,
                    Some(t) => match tokio::time::timeout(t, sock.flush()).await {
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("peer took nothing for {} s", t.as_secs()),
                        )),
                        Ok(r) => r,
                    },
                };
                *lock(&self.sock) = Some(sock);
                if let Err(e) = res {
                    self.close();
                    return Err(e);
                }
                continue;
            }
            if batch.is_empty() {
                match idle {
                    None => self.queued.notified().await,
                    Some((every, make)) => {
                        let woke = tokio::time::timeout(every, self.queued.notified()).await;
                        if woke.is_err() && self.send(make()).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            self.room.notify_waiters();
            let taken = lock(&self.sock).take();
            let Some(mut sock) = taken else {
                return Ok(());
            };
            let res = write_batch(&mut sock, &batch, skip, timeout).await;
            *lock(&self.sock) = Some(sock);
            // Dropped only now: a frame's drop may release what bounds the
            // replies in flight.
            batch.clear();
            if let Err(e) = res {
                self.close();
                return Err(e);
            }
        }
        // Finished: everything went out; the peer sees the end of the stream.
        let taken = lock(&self.sock).take();
        if let Some(mut sock) = taken {
            let res = sock.shutdown().await;
            *lock(&self.sock) = Some(sock);
            res?;
        }
        Ok(())
    }

    /// The writer task stops once what is queued went out, and shuts the
    /// write half down (the peer reads the end of the stream).
    pub fn finish(&self) {
        lock(&self.state).finishing = true;
        self.queued.notify_one();
    }

    /// Nothing more is sent: what is queued is dropped and waiting senders
    /// fail. Idempotent.
    pub fn close(&self) {
        let dropped = {
            let mut st = lock(&self.state);
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        drop(dropped);
        self.queued.notify_one();
        self.room.notify_waiters();
    }

    /// Resolves once the outbox is closed (a failed write closes it).
    pub async fn closed(&self) {
        loop {
            let n = self.room.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if lock(&self.state).closed {
                return;
            }
            n.await;
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin, F: OutFrame>(
    sock: &mut W,
    batch: &[F],
    skip: usize,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut bufs = slices(batch.iter(), skip);
    let mut rest = &mut bufs[..];
    while !rest.is_empty() {
        let write = sock.write_vectored(rest);
        let n = match timeout {
            None => write.await?,
            Some(t) => match tokio::time::timeout(t, write).await {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("peer took nothing for {} s", t.as_secs()),
                    ))
                }
                Ok(r) => r?,
            },
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    sock.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// A test frame: 4-byte number, 4-byte body length (head), then a body
    /// of that many copies of the number's low byte.
    struct Num {
        head: [u8; 8],
        body: Vec<u8>,
    }

    fn num(n: u32, len: usize) -> Num {
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&n.to_le_bytes());
        head[4..].copy_from_slice(&(len as u32).to_le_bytes());
        Num {
            head,
            body: vec![n as u8; len],
        }
    }

    impl OutFrame for Num {
        fn parts(&self) -> [&[u8]; 2] {
            [&self.head, &self.body]
        }
    }

    /// Reads frames until EOF; checks each is whole; returns their numbers.
    async fn read_all(mut rd: tokio::io::DuplexStream) -> Vec<u32> {
        let mut seen = Vec::new();
        loop {
            let mut head = [0u8; 8];
            match rd.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return seen,
                Err(e) => panic!("read: {e}"),
            }
            let n = u32::from_le_bytes(head[..4].try_into().unwrap());
            let len = u32::from_le_bytes(head[4..].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len];
            rd.read_exact(&mut body).await.unwrap();
            assert!(body.iter().all(|&b| b == n as u8), "frame {n} interleaved");
            seen.push(n);
        }
    }

    #[tokio::test]
    async fn frames_leave_whole_and_in_send_order_through_a_full_socket() {
        // A 100-byte pipe: most frames are written partly by the sender,
        // the rest by the writer task, while later sends queue behind them.
        let (wr, rd) = tokio::io::duplex(100);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 8));
        let writer = tokio::spawn({
            let ob = ob.clone();
            async move { ob.run(Some(Duration::from_secs(10)), None).await }
        });
        let reader = tokio::spawn(read_all(rd));
        for n in 0..2000u32 {
            let f = num(n, (n as usize * 37) % 700);
            if n % 3 == 0 {
                ob.queue(f).await.unwrap();
            } else {
                ob.send(f).await.unwrap();
            }
            if n % 97 == 0 {
                tokio::task::yield_now().await;
            }
        }
        ob.finish();
        writer.await.unwrap().unwrap();
        let seen = reader.await.unwrap();
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_never_interleave_and_each_keeps_its_order() {
        let (wr, rd) = tokio::io::duplex(1000);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 4));
        let writer = tokio::spawn({
            let ob = ob.clone();
            async move { ob.run(None, None).await }
        });
        let reader = tokio::spawn(read_all(rd));
        let senders: Vec<_> = (0..4u32)
            .map(|t| {
                let ob = ob.clone();
                tokio::spawn(async move {
                    for i in 0..500u32 {
                        // Sender t owns numbers congruent to t mod 4.
                        let f = num(i * 4 + t, (i as usize * 13) % 300);
                        if (i + t) % 2 == 0 {
                            ob.send(f).await.unwrap();
                        } else {
                            ob.queue(f).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        ob.finish();
        writer.await.unwrap().unwrap();
        let seen = reader.await.unwrap();
        assert_eq!(seen.len(), 2000);
        for t in 0..4 {
            let mine: Vec<u32> = seen.iter().copied().filter(|n| n % 4 == t).collect();
            assert_eq!(mine, (0..500).map(|i| i * 4 + t).collect::<Vec<_>>());
        }
    }

    /// A writer that buffers (as TLS does) takes a frame whole but cannot
    /// get it out while the pipe is full; the frame must still arrive
    /// without any later send to push it.
    #[tokio::test]
    async fn a_frame_held_in_a_buffering_writer_is_flushed_by_the_writer_task() {
        let (wr, rd) = tokio::io::duplex(64);
        let wr = tokio::io::BufWriter::with_capacity(4096, wr);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 8));
        let writer = tokio::spawn({
            let ob = ob.clone();
            async move { ob.run(Some(Duration::from_secs(10)), None).await }
        });
        // Alone and direct: the buffer takes all of it, the 64-byte pipe
        // only a part, and nobody sends after it.
        ob.send(num(1, 1000)).await.unwrap();
        let mut rd = rd;
        let mut got = vec![0u8; 1008];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut got))
            .await
            .expect("the frame stayed in the writer's buffer")
            .unwrap();
        assert_eq!(&got[..4], &1u32.to_le_bytes());
        assert!(got[8..].iter().all(|&b| b == 1));
        ob.finish();
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn close_fails_waiting_and_later_senders() {
        // Nobody reads: the pipe fills, the queue (1) fills, a sender waits.
        let (wr, _rd) = tokio::io::duplex(16);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 1));
        let writer = tokio::spawn({
            let ob = ob.clone();
            async move { ob.run(None, None).await }
        });
        // 1 is written in part and handed to the writer task, which takes
        // it from the queue and waits for the socket; 2 fills the queue.
        ob.send(num(1, 100)).await.unwrap();
        ob.send(num(2, 100)).await.unwrap();
        let waiting = tokio::spawn({
            let ob = ob.clone();
            async move { ob.send(num(3, 100)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the sender should wait for room");
        ob.close();
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        assert_eq!(ob.send(num(5, 1)).await, Err(Closed));
        ob.closed().await;
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_times_out_and_closes_the_outbox() {
        let (wr, _rd) = tokio::io::duplex(16);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 8));
        ob.send(num(1, 1000)).await.unwrap();
        let err = ob
            .run(Some(Duration::from_secs(5)), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(ob.send(num(2, 1)).await, Err(Closed));
    }

    #[tokio::test]
    async fn a_failed_socket_fails_the_writer_and_closes_the_outbox() {
        let (wr, rd) = tokio::io::duplex(16);
        drop(rd);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 8));
        // The direct write fails; the frame goes to the writer, which reports.
        ob.send(num(1, 10)).await.unwrap();
        assert!(ob.run(None, None).await.is_err());
        ob.closed().await;
        assert_eq!(ob.send(num(2, 1)).await, Err(Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_sends_the_idle_frame() {
        let (wr, rd) = tokio::io::duplex(1000);
        let ob: Arc<Outbox<_, Num>> = Arc::new(Outbox::new(wr, 8));
        let writer = tokio::spawn({
            let ob = ob.clone();
            async move {
                let keepalive: fn() -> Num = || num(7, 0);
                ob.run(None, Some((Duration::from_secs(1), &keepalive)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        ob.finish();
        writer.await.unwrap().unwrap();
        assert_eq!(read_all(rd).await, vec![7, 7, 7]);
    }

    proptest::proptest! {
        #[test]
        fn slices_are_the_bytes_after_skip(
            frames in proptest::collection::vec((0usize..20, 0usize..20), 0..6),
            skip in 0usize..60,
        ) {
            let frames: Vec<Num> = frames
                .iter()
                .enumerate()
                .map(|(i, &(h, b))| Num { head: [i as u8; 8], body: vec![0x80 | i as u8; b + h % 3] })
                .collect();
            let all: Vec<u8> = frames.iter().flat_map(|f| f.parts().concat()).collect();
            let skip = skip.min(frames.first().map_or(0, frame_len));
            let got: Vec<u8> = slices(frames.iter(), skip).iter().flat_map(|s| s.to_vec()).collect();
            proptest::prop_assert_eq!(&got[..], &all[skip..]);
            proptest::prop_assert!(slices(frames.iter(), skip).iter().all(|s| !s.is_empty()));
        }
    }
}
