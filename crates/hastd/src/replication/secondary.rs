//! The secondary's side: answers the primary's hello, sends its activemap,
//! then applies the replicated stream through its own data path.
//!
//! Order: each WRITE/ZERO takes its place in the range lock as it is read
//! off the socket, so overlapping writes apply in the primary's order while
//! disjoint ones run concurrently. A FLUSH waits for every earlier request
//! to finish before it flushes, so "durable" covers exactly what the primary
//! sent before it.
//!
//! Liveness (`heartbeat`): the writer task sends this side's own KEEPALIVE
//! whenever it has been idle for `ping_timeout / 3` — from the writer, not
//! the read loop, so it never waits behind the disk or a SYNC_DONE — and
//! the read loop declares the primary dead after the silence limit without
//! any frame while it waits to read. A KEEPALIVE of an older primary
//! (`seq` 0) is still echoed, which is all such a primary listens for.

use hast_events::Kind as Event;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hast_core::handshake::hello_of;
use hast_core::secondary::{self as rules, Adopt, Order};
use hast_meta::Role;
use hast_repl::{flags, Data, Hello, HelloReply, HelloStatus, Kind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::primary::link_timing;
use crate::datapath::{Change, DataPath, DpError, PeerState};
use crate::link::heartbeat;
use crate::link::stream::ConnWrite;
use crate::link::wire::{keepalive_frame, read_frame, write_all, Frame, Out, Tx};

/// Replies queued for the writer.
const REPLY_QUEUE_DEPTH: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers a hello that must be refused, without touching any resource.
pub async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, status: HelloStatus, message: &str) {
    let reply = HelloReply {
        status,
        message: message.chars().take(1000).collect(),
        hello: None,
        decision: None,
    };
    let mut out = Vec::new();
    hast_repl::encode_message_frame(Kind::HelloReply, 0, 0, 0, &reply.encode(), &mut out);
    let _ = write_all(wr, &out, HANDSHAKE_TIMEOUT).await;
    let _ = wr.shutdown().await;
}

/// Serves one primary connection until it ends. Returns why it ended.
/// `tls` is what the connection's TLS negotiated, for status.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different thing
pub async fn serve<R>(
    dp: Arc<DataPath>,
    cfg: hast_conf::Resource,
    node: String,
    hello: Hello,
    rd: R,
    mut wr: ConnWrite,
    peer: String,
    tls: Option<String>,
) -> String
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let own_header = dp.header().await;
    let own = hello_of(&own_header, &node, Role::Secondary);
    let decision = rules::accept(&hello, &own);
    let refusal = match decision {
        Ok(_) => None,
        Err(HelloStatus::SplitBrain) => Some((
            HelloStatus::SplitBrain,
            format!(
                "split-brain: both copies changed while apart (primary localcnt {} remotecnt {}, \
                 secondary localcnt {} remotecnt {}); no data moved. Recover by running \
                 'hastctl role init; hastctl create; hastctl role secondary' on the node whose \
                 changes are to be discarded",
                hello.localcnt, hello.remotecnt, own.localcnt, own.remotecnt
            ),
        )),
        Err(HelloStatus::ResuidMismatch) => Some((
            HelloStatus::ResuidMismatch,
            format!(
                "resource unique id mismatch ({:x} vs {:x}): not the same resource",
                hello.resuid, own.resuid
            ),
        )),
        Err(HelloStatus::SizeMismatch) => Some((
            HelloStatus::SizeMismatch,
            format!(
                "size mismatch: primary {} bytes / extent {}, secondary {} / {}",
                hello.datasize, hello.extentsize, own.datasize, own.extentsize
            ),
        )),
        Err(HelloStatus::StaleEpoch) => Some((
            HelloStatus::StaleEpoch,
            format!(
                "stale epoch {} < {}: primary {} was superseded by a later primary; \
                 refusing its replication",
                hello.epoch, own.epoch, hello.node
            ),
        )),
        Err(status) => Some((status, format!("connection refused: {status}"))),
    };
    if let Some((status, message)) = refusal {
        tracing::error!(resource = %cfg.name, %peer, "{message}");
        if status == HelloStatus::SplitBrain {
            dp.emit(Event::SplitBrain, &[&peer], &[("PEER", peer.clone())]);
        }
        dp.set_peer_state(match status {
            HelloStatus::SplitBrain => PeerState::SplitBrain("split-brain".into()),
            HelloStatus::StaleEpoch => PeerState::Refused("refused: stale epoch".into()),
            _ => PeerState::Refused("refused".into()),
        });
        refuse(&mut wr, status, &message).await;
        return message;
    }
    let Ok(decision) = decision else {
        return "refused".into();
    };
    // Fencing: from now on this copy refuses every primary of an older
    // epoch, even after a restart, so the epoch is durable before the Ok.
    if rules::must_adopt_epoch(&hello, &own) {
        match dp
            .update_header(|h| h.epoch = h.epoch.max(hello.epoch))
            .await
        {
            Ok(h) => {
                tracing::info!(resource = %cfg.name, %peer, epoch = h.epoch, "epoch adopted from the primary")
            }
            Err(e) => {
                let message = format!("cannot record epoch {}: {e}", hello.epoch);
                tracing::error!(resource = %cfg.name, %peer, "{message}");
                refuse(&mut wr, HelloStatus::PeerRefused, &message).await;
                return message;
            }
        }
    }
    // Become the target: adopt the primary's identity on a first sync and
    // mark this copy inconsistent until the primary says the sync finished.
    // Deferred to the primary's first frame after the handshake: the primary
    // sends nothing before the extents to copy are durable in its activemap,
    // so this copy never claims the resource's identity while no durable
    // record of what it lacks exists anywhere.
    let adopt = Adopt::of(decision, &hello, &own);
    let reply = HelloReply {
        status: HelloStatus::Ok,
        message: String::new(),
        hello: Some(own),
        decision: Some(decision),
    };
    let mut out = Vec::new();
    hast_repl::encode_message_frame(Kind::HelloReply, 0, 0, 0, &reply.encode(), &mut out);
    let map = dp.map_lock().map_bytes().to_vec();
    for (offset, chunk, last) in hast_repl::map_chunks(&map, hast_repl::MAP_CHUNK_MAX as usize) {
        let f = if last { flags::LAST } else { 0 };
        hast_repl::encode_message_frame(Kind::Map, f, 0, offset, chunk, &mut out);
    }
    if let Err(e) = write_all(&mut wr, &out, HANDSHAKE_TIMEOUT).await {
        return e.to_string();
    }
    dp.set_peer_state(PeerState::Connected);
    match &tls {
        Some(t) => {
            tracing::info!(resource = %cfg.name, %peer, ?decision, tls = %t, "primary connected")
        }
        None => tracing::info!(resource = %cfg.name, %peer, ?decision, "primary connected"),
    }
    dp.emit(Event::Connect, &[&peer], &[("PEER", peer.clone())]);
    dp.set_peer_tls(tls);
    let (ping, timeout) = link_timing(&cfg);
    let session = Arc::new(Session {
        dp,
        inflight: Mutex::new(Order::default()),
        drained: Notify::new(),
    });
    let tx = Arc::new(Tx::new(wr, REPLY_QUEUE_DEPTH));
    // Announced at once, after the activemap: the primary judges this side
    // by `timeout` until it knows it heartbeats.
    let seq = heartbeat::announce(ping);
    let _ = tx.send(keepalive_frame(seq)).await;
    let writer = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let make = move || keepalive_frame(seq);
            let idle = (
                heartbeat::interval(ping),
                &make as &(dyn Fn() -> Out + Sync),
            );
            tx.run(Some(timeout), Some(idle)).await
        })
    };
    // Also when this task is aborted (a new primary connection replaces this
    // one): the writer task must not keep the socket open.
    let _teardown = Teardown {
        tx: tx.clone(),
        writer: writer.abort_handle(),
    };
    // Buffered: a header is 32 bytes, and at high queue depth many arrive
    // in one segment; large payloads bypass the buffer.
    let mut rd = tokio::io::BufReader::with_capacity(crate::link::stream::READ_BUFFER_BYTES, rd);
    let why = session
        .clone()
        .read_loop(&mut rd, &tx, ping, timeout, adopt)
        .await;
    // Let the replies of requests being applied go out (bounded by the
    // write timeout), then stop.
    let _ = tokio::time::timeout(timeout, async {
        session.earlier_done(u64::MAX).await;
        tx.finish();
        let _ = writer.await;
    })
    .await;
    tx.close();
    session.dp.set_peer_tls(None);
    session.dp.set_peer_state(PeerState::Disconnected(None));
    session.dp.emit(
        Event::Disconnect,
        &[&why],
        &[("PEER", peer.clone()), ("REASON", why.clone())],
    );
    why
}

/// Closes the outbox and stops its writer task when the session ends, however
/// it ends; the socket closes once the last request task lets go of it.
struct Teardown {
    tx: Arc<Tx>,
    writer: tokio::task::AbortHandle,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.tx.close();
        self.writer.abort();
    }
}

struct Session {
    dp: Arc<DataPath>,
    /// Sequence numbers of requests being applied.
    inflight: Mutex<Order>,
    drained: Notify,
}

fn errno_of(e: &DpError) -> u32 {
    match e {
        DpError::Shutdown => 108,
        DpError::Unsupported => 95,
        DpError::Io(e) => io_errno(e),
    }
}

/// The errno sent back for a failed local call; EIO when it has none.
fn io_errno(e: &std::io::Error) -> u32 {
    e.raw_os_error().map_or(5, |c| c as u32)
}

/// A payload-free REPLY to request `seq`: `errno` 0 is success.
fn reply_frame(seq: u64, errno: u32) -> Out {
    let mut out = Vec::new();
    hast_repl::encode_control_frame(Kind::Reply, 0, seq, 0, errno, &mut out);
    out.into()
}

impl Session {
    fn inflight(&self) -> std::sync::MutexGuard<'_, Order> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done(&self, seq: u64) {
        self.inflight().done(seq);
        self.drained.notify_waiters();
    }

    /// Sends a reply: at once from this task when no other request is being
    /// applied (queue depth one), else through the writer task, which
    /// batches the replies ready together into one write.
    async fn reply(&self, tx: &Tx, out: Out) -> Result<(), hast_io::Closed> {
        let alone = self.inflight().is_empty();
        if alone {
            tx.send(out).await
        } else {
            tx.queue(out).await
        }
    }

    /// Waits until no request numbered below `seq` is still being applied.
    async fn earlier_done(&self, seq: u64) {
        loop {
            let n = self.drained.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.inflight().earlier_pending(seq) {
                return;
            }
            n.await;
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        self: Arc<Self>,
        rd: &mut R,
        tx: &Arc<Tx>,
        ping: Duration,
        timeout: Duration,
        adopt: Adopt,
    ) -> String {
        let mut adopt = Some(adopt);
        // What the primary announced in its KEEPALIVE; `None` (an older
        // hastd, idle keepalives every timeout/4) keeps the `timeout` rule.
        let mut peer_ping = None;
        loop {
            // The clock runs only while this loop waits to read: a frame
            // whose handling waits (SYNC_DONE's barrier, a full reply queue)
            // is this side's own backpressure, not the primary's silence.
            let silence = heartbeat::silence_limit(ping, peer_ping, timeout);
            let frame = tokio::select! {
                f = read_frame(rd, silence, timeout) => f,
                _ = self.dp.withdrawn() => return "resource closing".into(),
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return e.to_string(),
            };
            if frame.header.kind == Kind::Keepalive {
                if let Some(p) = heartbeat::announced(frame.header.seq) {
                    // A heartbeating primary needs no echo: this side's
                    // writer sends its own.
                    peer_ping = Some(p);
                    continue;
                }
            }
            if let Some(a) = adopt.take() {
                let r = self.dp.update_header(|h| a.apply(h)).await;
                if let Err(e) = r {
                    return format!("cannot record the sync in the metadata: {e}");
                }
            }
            if let Err(e) = self.clone().handle(frame, tx).await {
                return e;
            }
        }
    }

    async fn handle(self: Arc<Self>, frame: Frame, tx: &Arc<Tx>) -> Result<(), String> {
        let h = frame.header;
        match h.kind {
            Kind::Write | Kind::Zero => {
                let change = if h.kind == Kind::Write {
                    match hast_repl::decode_data(&h, &frame.digest, frame.payload)
                        .map_err(|e| e.to_string())?
                    {
                        Data::Bytes(b) => Change::Write(b.into()),
                        Data::Zero(n) => Change::Zero {
                            len: u64::from(n),
                            punch: h.has(flags::PUNCH),
                            fast_only: false,
                            trim: false,
                        },
                    }
                } else {
                    Change::Zero {
                        len: u64::from(h.length),
                        punch: h.has(flags::PUNCH),
                        fast_only: false,
                        trim: h.has(flags::PUNCH),
                    }
                };
                if h.offset.saturating_add(u64::from(h.length)) > self.dp.datasize() {
                    return Err(format!("replicated write beyond the end at {}", h.offset));
                }
                // Place in line now, in stream order.
                let ticket = self.dp.ranges().register(h.offset, u64::from(h.length));
                self.inflight().begin(h.seq);
                // memsync: the primary asks for an early RECEIVED per write;
                // a write copied into the page cache at once needs none, its
                // REPLY follows straight away (one frame and one wake-up of
                // the primary instead of two).
                let in_memory = match &change {
                    Change::Write(b) => {
                        self.dp
                            .applies_in_memory(h.offset, b.len(), h.has(flags::FUA))
                    }
                    Change::Zero { .. } => false,
                };
                if rules::early_received(h.has(flags::RECEIVED), in_memory) {
                    let mut out = Vec::new();
                    hast_repl::encode_control_frame(Kind::Received, 0, h.seq, 0, 0, &mut out);
                    // This request is in `inflight`; any other is company.
                    let sent = if self.inflight().len() == 1 {
                        tx.send(out.into()).await
                    } else {
                        tx.queue(out.into()).await
                    };
                    sent.map_err(|_| "reply queue closed".to_string())?;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let r = self
                        .dp
                        .modify(h.offset, h.has(flags::FUA), change, Some(ticket))
                        .await;
                    let out = reply_frame(h.seq, r.as_ref().err().map_or(0, errno_of));
                    self.done(h.seq);
                    let _ = self.reply(&tx, out).await;
                });
            }
            Kind::Flush => {
                self.inflight().begin(h.seq);
                let tx = tx.clone();
                tokio::spawn(async move {
                    self.earlier_done(h.seq).await;
                    let r = self.dp.barrier().await;
                    let out = reply_frame(h.seq, r.err().map_or(0, |e| io_errno(&e)));
                    self.done(h.seq);
                    let _ = self.reply(&tx, out).await;
                });
            }
            Kind::Read => {
                if h.offset.saturating_add(u64::from(h.length)) > self.dp.datasize() {
                    return Err(format!("read beyond the end at {}", h.offset));
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let out = match self.dp.read_unlocked(h.offset, h.length as usize).await {
                        Ok(data) => {
                            let data = bytes::Bytes::from(data);
                            let mut head = Vec::new();
                            let verbatim = hast_repl::encode_data_head(
                                Kind::Reply,
                                0,
                                h.seq,
                                h.offset,
                                &data,
                                hast_repl::Compression::Hole,
                                hast_repl::ChecksumKind::Crc32c,
                                &mut head,
                            );
                            Out {
                                head,
                                data: verbatim.then_some(data),
                            }
                        }
                        Err(e) => reply_frame(h.seq, io_errno(&e)),
                    };
                    let _ = self.reply(&tx, out).await;
                });
            }
            Kind::Keepalive => {
                // An older primary (no announcement) waits for the echo.
                tx.send(keepalive_frame(0))
                    .await
                    .map_err(|_| "reply queue closed".to_string())?;
            }
            Kind::SyncDone => {
                let (localcnt, remotecnt) =
                    hast_repl::decode_sync_done(&frame.payload).map_err(|e| e.to_string())?;
                self.earlier_done(h.seq).await;
                self.dp.barrier().await.map_err(|e| e.to_string())?;
                self.dp
                    .update_header(|hd| rules::sync_done(hd, localcnt, remotecnt))
                    .await
                    .map_err(|e| e.to_string())?;
                // Whatever this copy had dirty from its own time as primary was
                // merged into the primary's resync and is now copied.
                {
                    let mut map = self.dp.map_lock();
                    let stale: Vec<u64> = map.needsync_extents().collect();
                    for e in stale {
                        map.synced(e);
                    }
                }
                tracing::info!(resource = %self.dp.name(), localcnt, remotecnt, "resync complete, copies in sync");
                tx.send(reply_frame(h.seq, 0))
                    .await
                    .map_err(|_| "reply queue closed".to_string())?;
            }
            Kind::Goodbye => {
                return Err(format!(
                    "primary closed: {}",
                    String::from_utf8_lossy(&frame.payload)
                ))
            }
            other => return Err(format!("unexpected {other:?} frame from the primary")),
        }
        Ok(())
    }
}
