//! The multiplexed replication connection: framing, sending, matching
//! replies, liveness. Both ends use it: the data path sends through a
//! [`Link`] and `replication/` sets connections up and serves the
//! secondary's end; nothing here knows of either.
//!
//! - `wire.rs` reads and writes frames (the async shell around
//!   `hast-repl`'s codec) and the shared sender `Tx`;
//! - `stream.rs` a connection's two halves, plain TCP or TLS;
//! - `heartbeat.rs` the keepalive and dead-peer timing rules (pure);
//! - this file the primary's side of a live connection, [`Link`].
//!
//! ## The primary's side
//!
//! Requests (WRITE, ZERO, FLUSH, READ) are numbered, registered as pending,
//! encoded and sent through the connection's shared sender (`wire::Tx`: the
//! only request pending goes straight onto the socket, requests with company
//! are queued to its writer task, which batches them); one reader task
//! matches REPLY and RECEIVED frames to them by sequence number. Nothing waits for one request
//! before sending the next: the pipeline is as deep as the client's. When the
//! connection fails every pending request fails at once with `Down`, which is
//! what turns a write into a degraded one (see the data path).
//!
//! Liveness (`heartbeat`): the writer task sends a KEEPALIVE whenever it has
//! been idle for `ping_timeout / 3`, the reader declares the secondary dead
//! after the silence limit without any frame, and a watchdog fails the link
//! when requests are pending and none completed for `timeout` (a secondary
//! that answers keepalives but whose disk or daemon hangs).

pub mod heartbeat;
pub mod stream;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hast_repl::{ChecksumKind, Compression, Data, Kind};
use tokio::io::AsyncRead;
use tokio::sync::{oneshot, Notify};

use stream::ConnWrite;
use wire::{keepalive_frame, read_frame, Out, Tx};

/// Encoded frames queued for the writer task; beyond this, senders wait.
const SEND_QUEUE_DEPTH: usize = 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    /// The connection is gone; the request may or may not have been applied.
    #[error("peer disconnected")]
    Down,
    /// The secondary answered with an error (errno).
    #[error("peer failed the request (errno {0})")]
    Errno(u32),
}

/// memsync: the frame asks the secondary for an early RECEIVED.
fn received_flag(flags: u8, want_received: bool) -> u8 {
    if want_received {
        flags | hast_repl::flags::RECEIVED
    } else {
        flags
    }
}

type DoneTx = oneshot::Sender<Result<Vec<u8>, RemoteError>>;

struct Waiter {
    received: Option<oneshot::Sender<()>>,
    done: DoneTx,
}

/// A request on its way: `received` resolves when the secondary has it in
/// memory (memsync), `done` when it was applied there.
pub struct InFlight {
    received: Option<oneshot::Receiver<()>>,
    done: oneshot::Receiver<Result<Vec<u8>, RemoteError>>,
}

impl InFlight {
    pub async fn received(&mut self) -> Result<(), RemoteError> {
        match self.received.take() {
            Some(rx) => rx.await.map_err(|_| RemoteError::Down),
            None => Ok(()),
        }
    }

    pub async fn done(self) -> Result<Vec<u8>, RemoteError> {
        self.done.await.unwrap_or(Err(RemoteError::Down))
    }

    /// The outcome if it is already known (the REPLY came with, or instead
    /// of, the RECEIVED); `Err(self)` while it is still on its way.
    pub fn try_done(mut self) -> Result<Result<Vec<u8>, RemoteError>, InFlight> {
        match self.done.try_recv() {
            Ok(r) => Ok(r),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Err(RemoteError::Down)),
            Err(oneshot::error::TryRecvError::Empty) => Err(self),
        }
    }
}

pub struct Link {
    pub peer: String,
    tx: Arc<Tx>,
    pending: Mutex<HashMap<u64, Waiter>>,
    seq: AtomicU64,
    dead: AtomicBool,
    died: Notify,
    reason: Mutex<String>,
    compression: Compression,
    checksum: ChecksumKind,
    /// The last completion (REPLY or RECEIVED), or when the first of the
    /// requests now pending was sent: what the stall watchdog measures.
    last_progress: Mutex<Instant>,
}

/// How often the stall watchdog looks at the pending requests.
const STALL_CHECK: Duration = Duration::from_millis(500);

pub struct LinkTasks<R> {
    pub rd: R,
}

impl Link {
    pub fn new<R>(
        peer: String,
        rd: R,
        wr: ConnWrite,
        compression: Compression,
        checksum: ChecksumKind,
        first_seq: u64,
    ) -> (Arc<Link>, LinkTasks<R>) {
        let link = Arc::new(Link {
            peer,
            tx: Arc::new(Tx::new(wr, SEND_QUEUE_DEPTH)),
            pending: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(first_seq),
            dead: AtomicBool::new(false),
            died: Notify::new(),
            reason: Mutex::new(String::new()),
            compression,
            checksum,
            last_progress: Mutex::new(Instant::now()),
        });
        (link, LinkTasks { rd })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn progress(&self) {
        *self.last_progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Requests sent and not yet answered (the metrics' replication queue
    /// depth).
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(SeqCst)
    }

    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the link dead and fails everything pending. Idempotent.
    pub fn fail(&self, why: &str) {
        if self.dead.swap(true, SeqCst) {
            return;
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        let waiters: Vec<Waiter> = self.pending().drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.done.send(Err(RemoteError::Down));
        }
        self.tx.close();
        self.died.notify_waiters();
    }

    /// Resolves once the link is dead.
    pub async fn dead(&self) {
        loop {
            let n = self.died.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_dead() {
                return;
            }
            n.await;
        }
    }

    async fn submit(
        &self,
        want_received: bool,
        encode: impl FnOnce(u64, &mut Vec<u8>) -> Option<Bytes>,
    ) -> Result<InFlight, RemoteError> {
        if self.is_dead() {
            return Err(RemoteError::Down);
        }
        let seq = self.seq.fetch_add(1, SeqCst);
        let (done_tx, done_rx) = oneshot::channel();
        let (rec_tx, rec_rx) = if want_received {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let alone = {
            let mut pending = self.pending();
            if pending.is_empty() {
                // The stall clock starts with the first pending request.
                self.progress();
            }
            pending.insert(
                seq,
                Waiter {
                    received: rec_tx,
                    done: done_tx,
                },
            );
            pending.len() == 1
        };
        // fail() drains after setting `dead`: re-check so a request registered
        // during a failure is not left waiting forever.
        if self.is_dead() {
            self.pending().remove(&seq);
            return Err(RemoteError::Down);
        }
        let mut head = Vec::new();
        let data = encode(seq, &mut head);
        // The only request in flight goes out from this task at once; with
        // company, the writer task batches frames into one write.
        let out = Out { head, data };
        let sent = if alone {
            self.tx.send(out).await
        } else {
            self.tx.queue(out).await
        };
        if sent.is_err() {
            self.pending().remove(&seq);
            return Err(RemoteError::Down);
        }
        Ok(InFlight {
            received: rec_rx,
            done: done_rx,
        })
    }

    /// Replicates a write; a payload sent as it is goes out from `data`'s
    /// own buffer (shared, not copied).
    pub async fn write(
        &self,
        offset: u64,
        data: &Bytes,
        flags: u8,
        want_received: bool,
    ) -> Result<InFlight, RemoteError> {
        let (compression, checksum) = (self.compression, self.checksum);
        let flags = received_flag(flags, want_received);
        self.submit(want_received, |seq, out| {
            hast_repl::encode_data_head(
                Kind::Write,
                flags,
                seq,
                offset,
                data,
                compression,
                checksum,
                out,
            )
            .then(|| data.clone())
        })
        .await
    }

    pub async fn zero(
        &self,
        offset: u64,
        len: u32,
        flags: u8,
        want_received: bool,
    ) -> Result<InFlight, RemoteError> {
        let flags = received_flag(flags, want_received);
        self.submit(want_received, |seq, out| {
            hast_repl::encode_control_frame(Kind::Zero, flags, seq, offset, len, out);
            None
        })
        .await
    }

    /// Makes every write the secondary completed before it durable there.
    pub async fn flush(&self) -> Result<(), RemoteError> {
        let f = self
            .submit(false, |seq, out| {
                hast_repl::encode_control_frame(Kind::Flush, 0, seq, 0, 0, out);
                None
            })
            .await?;
        f.done().await.map(|_| ())
    }

    /// Reads from the secondary's copy (stale primary, local read error, resync).
    pub async fn read(&self, offset: u64, len: u32, flags: u8) -> Result<Vec<u8>, RemoteError> {
        let f = self
            .submit(false, |seq, out| {
                hast_repl::encode_control_frame(Kind::Read, flags, seq, offset, len, out);
                None
            })
            .await?;
        f.done().await
    }

    /// Tells the secondary the resync finished and which counters to store.
    pub async fn sync_done(&self, localcnt: u64, remotecnt: u64) -> Result<(), RemoteError> {
        let mut payload = Vec::with_capacity(16);
        payload.extend_from_slice(&localcnt.to_le_bytes());
        payload.extend_from_slice(&remotecnt.to_le_bytes());
        let f = self
            .submit(false, |seq, out| {
                hast_repl::encode_message_frame(Kind::SyncDone, 0, seq, 0, &payload, out);
                None
            })
            .await?;
        f.done().await.map(|_| ())
    }

    fn complete(&self, seq: u64, result: Result<Vec<u8>, RemoteError>) {
        self.progress();
        if let Some(w) = self.pending().remove(&seq) {
            if let Some(r) = w.received {
                let _ = r.send(());
            }
            let _ = w.done.send(result);
        }
    }

    fn received(&self, seq: u64) {
        self.progress();
        if let Some(w) = self.pending().get_mut(&seq) {
            if let Some(r) = w.received.take() {
                let _ = r.send(());
            }
        }
    }

    /// Runs the reader, the writer and the stall watchdog until the link
    /// dies. `ping` is this side's `ping_timeout`, `timeout` the resource's.
    pub async fn run<R>(self: Arc<Self>, tasks: LinkTasks<R>, ping: Duration, timeout: Duration)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let LinkTasks { rd } = tasks;
        // Announced at once: until the secondary knows this side heartbeats
        // it must judge it by `timeout`, and under load the writer may not
        // be idle for a long while.
        let seq = heartbeat::announce(ping);
        if self.tx.send(keepalive_frame(seq)).await.is_err() {
            self.fail("connection closed");
        }
        let reader = tokio::spawn(self.clone().reader(rd, ping, timeout));
        let link = self.clone();
        let writer = tokio::spawn(async move {
            let make = move || keepalive_frame(seq);
            let idle = Some((
                heartbeat::interval(ping),
                &make as &(dyn Fn() -> Out + Sync),
            ));
            if let Err(e) = link.tx.run(Some(timeout), idle).await {
                link.fail(&e.to_string());
            }
        });
        let link = self.clone();
        let watchdog = tokio::spawn(async move {
            loop {
                tokio::time::sleep(STALL_CHECK).await;
                let pending = !link.pending().is_empty();
                let last = *link.last_progress.lock().unwrap_or_else(|p| p.into_inner());
                if heartbeat::stalled(pending, last, Instant::now(), timeout) {
                    link.fail(&format!(
                        "secondary alive but completed no request for {} s",
                        timeout.as_secs()
                    ));
                    return;
                }
            }
        });
        self.dead().await;
        // Dead means every pending request already failed: nothing queued
        // is worth sending any more, so every task stops at once.
        reader.abort();
        writer.abort();
        watchdog.abort();
    }

    async fn reader<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        mut rd: R,
        ping: Duration,
        timeout: Duration,
    ) {
        // What the secondary announced in its KEEPALIVE; `None` (an older
        // hastd, which only echoes ours) keeps the `timeout` rule.
        let mut peer_ping = None;
        loop {
            let silence = heartbeat::silence_limit(ping, peer_ping, timeout);
            let frame = match read_frame(&mut rd, silence, timeout).await {
                Ok(f) => f,
                Err(e) => {
                    self.fail(&e.to_string());
                    return;
                }
            };
            let h = frame.header;
            match h.kind {
                Kind::Reply => {
                    let result = if h.length != 0 {
                        Err(RemoteError::Errno(h.length))
                    } else if h.payload_len == 0 && h.flags & hast_repl::flags::ZERO == 0 {
                        Ok(Vec::new())
                    } else {
                        match hast_repl::decode_data(&h, &frame.digest, frame.payload) {
                            Ok(Data::Bytes(b)) => Ok(b),
                            Ok(Data::Zero(n)) => Ok(vec![0u8; n as usize]),
                            Err(e) => {
                                self.fail(&format!("bad reply from {}: {e}", self.peer));
                                return;
                            }
                        }
                    };
                    self.complete(h.seq, result);
                }
                Kind::Received => self.received(h.seq),
                Kind::Keepalive => {
                    if let Some(p) = heartbeat::announced(h.seq) {
                        peer_ping = Some(p);
                    }
                }
                Kind::Goodbye => {
                    let why = String::from_utf8_lossy(&frame.payload).to_string();
                    self.fail(&format!("peer closed: {why}"));
                    return;
                }
                other => {
                    self.fail(&format!("unexpected {other:?} frame from the secondary"));
                    return;
                }
            }
        }
    }
}
