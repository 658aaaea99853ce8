//! One connected resource: the local export its clients use, and the driver
//! that keeps it attached to whichever node is primary.
//!
//! Every client request enters the [`Book`] and is forwarded on the current
//! session (one NBD connection to the primary); its answer is the answer of
//! the primary that got it. The driver ([`Endpoint::run`]) polls the
//! controllers through a [`Poller`], follows the primary the [`Follow`]
//! policy names, and on a lost session (closed, broken, or answering
//! ESHUTDOWN), or when a newer primary appears, attaches a new session and
//! lets the book replay what was not answered. Client requests wait
//! meanwhile; after `ctrl_loss_tmo` with no primary they fail with EIO, and
//! new ones fail at once until a primary is back.
//!
//! Three tasks per session: the reader (answers), the writer (requests,
//! batched into few syscalls), and the driver shared by all sessions. The
//! endpoint's state sits behind one mutex held for bookkeeping only, never
//! across an await.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hast_meta::Role;
use hast_nbd::client::Granted;
use hast_nbd::proto::*;
use hast_nbd::reply::SimpleReply;
use hast_nbd::{BlockExtent, CommandType, Errno, Export, ExportInfo, Exports, OpenError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::book::{Book, Dispatch, Kind, Seq, Session};
use crate::follow::{Choice, Follow, Sighting};
use crate::status::{EndpointState, EndpointStatus, Failover};
use crate::upstream::{self, Reader, Tls, Writer};

/// Refused connections in a row before the retries slow down: a new
/// primary may refuse for a moment while it opens its export.
const BACKOFF_AFTER: u32 = 8;
/// The slowest retry of a connection that keeps being refused.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The timing an endpoint follows; a reload replaces it for the next
/// decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// With no primary this long, pending requests fail with EIO; `None`:
    /// wait forever.
    pub ctrl_loss_tmo: Option<Duration>,
    /// Between discovery polls while connected.
    pub poll_interval: Duration,
    /// Between attempts while no primary is attached.
    pub reconnect_interval: Duration,
    /// A request out this long makes the driver look for a newer primary.
    pub request_timeout: Duration,
    /// Bound of one connection's opening (TCP, TLS, `NBD_OPT_GO`).
    pub connect_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            ctrl_loss_tmo: Some(Duration::from_secs(60)),
            poll_interval: Duration::from_secs(2),
            reconnect_interval: Duration::from_millis(250),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// One node's answer about the resource, as the poller found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub sighting: Sighting,
    /// The NBD export name on that node (hast.conf's `name`).
    pub export: String,
    /// NBD addresses (`tcp://HOST:PORT`) of the node.
    pub nbd: Vec<String>,
    /// The node requires NBD TLS.
    pub nbd_tls: bool,
    pub size: u64,
}

/// Asks the controllers about a resource (discovery in hastcd; a script in
/// tests).
pub trait Poller: Send + Sync + 'static {
    /// Every controller's answer (those that answered in time). With
    /// `newer_than: Some(e)` it may return as soon as one says it is primary
    /// at an epoch above `e`: a failover need not wait for a controller
    /// that is cut off, since no answer of it could outrank that one.
    fn poll<'a>(
        &'a self,
        resource: &'a str,
        newer_than: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Vec<Found>> + Send + 'a>>;
}

/// What a client's request carries to the primary.
#[derive(Debug, Clone)]
struct Req {
    kind: Kind,
    cmd: CommandType,
    flags: u16,
    offset: u64,
    len: u32,
    data: Option<Bytes>,
}

type Answer = Result<Option<Vec<u8>>, Errno>;

/// A request in the book: what to send, a READ's buffer, who waits.
struct Pending {
    req: Req,
    buf: Option<Vec<u8>>,
    done: oneshot::Sender<Answer>,
}

/// A request on its way to the writer.
struct Outgoing {
    head: [u8; REQUEST_LEN],
    data: Option<Bytes>,
}

fn outgoing(seq: Seq, req: &Req) -> Outgoing {
    let head = Request {
        flags: req.flags,
        kind: req.cmd,
        cookie: seq,
        offset: req.offset,
        len: req.len,
    }
    .encode();
    Outgoing {
        head,
        data: req.data.clone(),
    }
}

/// The session attached now.
struct Live {
    id: Session,
    tx: mpsc::UnboundedSender<Outgoing>,
    node: String,
    nbd: String,
    epoch: u64,
    tasks: [JoinHandle<()>; 2],
}

impl Live {
    fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a session ended, from its reader or writer.
struct Lost {
    session: Session,
    why: String,
}

struct Inner {
    book: Book<Pending>,
    state: EndpointState,
    live: Option<Live>,
    follow: Follow,
    /// Size, flags and block sizes of the first session: the local export
    /// keeps them, and a node that offers another size is not followed.
    info: Option<ExportInfo>,
    /// When the last session was lost (`ctrl_loss_tmo` counts from here).
    lost_since: Option<Instant>,
    /// When the oldest request unanswered at that loss went out: the
    /// start of the pause the clients saw.
    paused_since: Option<Instant>,
    /// The node left by the last loss (for the failover record).
    left: Option<String>,
    /// The epoch of the session lost last, while no new one is attached.
    lost_epoch: Option<u64>,
    next_session: Session,
    failovers: u64,
    failed: u64,
    last_pause: Option<Duration>,
    /// Last reason for not connecting, logged once per change.
    waiting: Option<String>,
}

/// One connected resource.
pub struct Endpoint {
    name: String,
    poller: Arc<dyn Poller>,
    settings: Mutex<Settings>,
    tls: Option<Tls>,
    inner: Mutex<Inner>,
    lost_tx: mpsc::UnboundedSender<Lost>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<Lost>>>,
    withdrawn: watch::Sender<bool>,
    failovers: broadcast::Sender<Failover>,
    uris: Mutex<Vec<String>>,
    clients: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug elsewhere; the state is still
    // the best there is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Endpoint {
    /// An endpoint for `name`, not yet attached: spawn [`Endpoint::run`].
    /// Failovers are announced on `failovers`.
    pub fn new(
        name: &str,
        poller: Arc<dyn Poller>,
        settings: Settings,
        tls: Option<Tls>,
        failovers: broadcast::Sender<Failover>,
    ) -> Arc<Endpoint> {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        Arc::new(Endpoint {
            name: name.to_string(),
            poller,
            settings: Mutex::new(settings),
            tls,
            inner: Mutex::new(Inner {
                book: Book::new(),
                state: EndpointState::Connecting,
                live: None,
                follow: Follow::default(),
                info: None,
                lost_since: None,
                paused_since: None,
                left: None,
                lost_epoch: None,
                next_session: 1,
                failovers: 0,
                failed: 0,
                last_pause: None,
                waiting: None,
            }),
            lost_tx,
            lost_rx: Mutex::new(Some(lost_rx)),
            withdrawn: watch::channel(false).0,
            failovers,
            uris: Mutex::new(Vec::new()),
            clients: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// New timing (a reload); used from the next decision on.
    pub fn set_settings(&self, s: Settings) {
        *lock(&self.settings) = s;
    }

    fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// The local URIs clients use (set by the listeners).
    pub fn set_uris(&self, uris: Vec<String>) {
        *lock(&self.uris) = uris;
    }

    /// Stop: clients are disconnected, pending requests fail with EIO, the
    /// session is closed, [`Endpoint::run`] returns.
    pub fn withdraw(&self) {
        self.withdrawn.send_replace(true);
    }

    /// A client opens the export: refused until the first primary told the
    /// size.
    pub fn open(self: &Arc<Self>) -> Result<Arc<Client>, OpenError> {
        let g = lock(&self.inner);
        if *self.withdrawn.borrow() {
            return Err(OpenError::shutdown(
                "the connector is disconnecting this resource",
            ));
        }
        let Some(info) = g.info.clone() else {
            return Err(OpenError::unknown(format!(
                "{}: no primary found yet (hastcctl status {})",
                self.name, self.name
            )));
        };
        self.clients.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Client {
            ep: self.clone(),
            info,
        }))
    }

    pub fn status(&self) -> EndpointStatus {
        let g = lock(&self.inner);
        let counts = g.book.counts();
        EndpointStatus {
            resource: self.name.clone(),
            uris: lock(&self.uris).clone(),
            state: g.state,
            primary: g.live.as_ref().map(|l| l.node.clone()),
            nbd: g.live.as_ref().map(|l| l.nbd.clone()),
            epoch: g.live.as_ref().map_or(0, |l| l.epoch),
            epoch_seen: g.follow.seen(),
            size: g.info.as_ref().map_or(0, |i| i.size),
            clients: self.clients.load(Ordering::Relaxed),
            failovers: g.failovers,
            pending: g.book.len() as u64,
            held: counts.held,
            replayed: counts.replayed,
            failed: g.failed,
            last_pause_ms: g.last_pause.map(|d| d.as_millis() as u64),
        }
    }

    // ------------------------------------------------------------ requests

    async fn submit(&self, req: Req, buf: Option<Vec<u8>>) -> Answer {
        let (done, answer) = oneshot::channel();
        {
            let mut g = lock(&self.inner);
            if g.state == EndpointState::Lost {
                return Err(Errno::Io);
            }
            let kind = req.kind;
            let (seq, dispatch) = g
                .book
                .admit(kind, Pending { req, buf, done }, Instant::now());
            if let Dispatch::Send(_) = dispatch {
                if let (Some(live), Some(p)) = (&g.live, g.book.get(seq)) {
                    // A closed channel means the session just died: the
                    // driver sees it lost and replays this request.
                    let _ = live.tx.send(outgoing(seq, &p.req));
                }
            }
        }
        answer.await.unwrap_or(Err(Errno::Io))
    }

    /// Send what the book releases to the attached session (a replay).
    fn dispatch(g: &mut Inner) {
        let Some(tx) = g.live.as_ref().map(|l| l.tx.clone()) else {
            return;
        };
        g.book.dispatch(Instant::now(), |seq, p| {
            let _ = tx.send(outgoing(seq, &p.req));
        });
    }

    // ------------------------------------------------------------ sessions

    async fn read_answers(self: Arc<Self>, session: Session, rd: Reader) {
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let why = loop {
            let mut raw = [0u8; SIMPLE_REPLY_LEN];
            if let Err(e) = rd.read_exact(&mut raw).await {
                break format!("connection lost: {e}");
            }
            let Some(reply) = SimpleReply::parse(&raw) else {
                break "protocol error: not a simple reply".to_string();
            };
            if reply.error == Errno::Shutdown.code() {
                break "the node answered ESHUTDOWN: it is no longer primary".to_string();
            }
            let into = {
                let mut g = lock(&self.inner);
                if g.book.sent_on(reply.cookie) != Some(session) {
                    break format!("answer to request {} that is not out on it", reply.cookie);
                }
                match g.book.get_mut(reply.cookie) {
                    Some(p) if p.req.cmd == CommandType::Read && reply.error == 0 => {
                        Some(p.buf.take().unwrap_or_else(|| vec![0; p.req.len as usize]))
                    }
                    _ => None,
                }
            };
            let data = match into {
                Some(mut buf) => {
                    if let Err(e) = rd.read_exact(&mut buf).await {
                        break format!("connection lost in a read's data: {e}");
                    }
                    Some(buf)
                }
                None => None,
            };
            let answer = match reply.error {
                0 => Ok(data),
                code => Err(Errno::from_code(code).unwrap_or(Errno::Io)),
            };
            let mut g = lock(&self.inner);
            if let Some(p) = g.book.answered(session, reply.cookie) {
                let _ = p.done.send(answer);
            }
            if g.book.replaying() {
                Endpoint::dispatch(&mut g);
            }
        };
        let _ = self.lost_tx.send(Lost { session, why });
    }

    async fn write_requests(
        self: Arc<Self>,
        session: Session,
        wr: Writer,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let mut wr = BufWriter::with_capacity(256 * 1024, wr);
        let why = 'session: loop {
            let Some(mut m) = rx.recv().await else {
                // The session was replaced: say goodbye quietly.
                let _ = wr.shutdown().await;
                return;
            };
            // Everything queued now goes out in as few writes as possible.
            loop {
                if let Err(e) = wr.write_all(&m.head).await {
                    break 'session format!("connection lost: {e}");
                }
                if let Some(data) = &m.data {
                    if let Err(e) = wr.write_all(data).await {
                        break 'session format!("connection lost: {e}");
                    }
                }
                match rx.try_recv() {
                    Ok(next) => m = next,
                    Err(_) => break,
                }
            }
            if let Err(e) = wr.flush().await {
                break format!("connection lost: {e}");
            }
        };
        let _ = self.lost_tx.send(Lost { session, why });
    }

    /// A session is gone: what it had out will be replayed.
    fn session_lost(&self, session: Session, why: &str) {
        let mut g = lock(&self.inner);
        if g.live.as_ref().map(|l| l.id) != Some(session) {
            return;
        }
        let Some(live) = g.live.take() else { return };
        // The client has waited since its oldest request went out, not
        // only since the loss was noticed (a hung primary is left late).
        let now = Instant::now();
        g.paused_since = Some(g.book.oldest_out().map_or(now, |t| t.min(now)));
        let out = g.book.lost(session);
        g.state = EndpointState::FailingOver;
        g.lost_since = Some(now);
        g.left = Some(live.node.clone());
        g.lost_epoch = Some(live.epoch);
        g.waiting = None;
        tracing::warn!(
            resource = %self.name,
            "lost {} (epoch {}): {why}; holding {out} requests out and {} in all",
            live.node,
            live.epoch,
            g.book.len()
        );
        live.close();
    }

    /// Attach a new session to `found` after its `NBD_OPT_GO` granted.
    fn attach(
        self: &Arc<Self>,
        found: &Found,
        nbd: &str,
        granted: Granted,
        rd: Reader,
        wr: Writer,
    ) {
        let mut g = lock(&self.inner);
        let info = granted.export_info();
        if let Some(known) = &g.info {
            if known.size != info.size || known.read_only != info.read_only {
                let why = format!(
                    "{} offers {} bytes{}, this endpoint has {} bytes{}: not followed",
                    found.sighting.node,
                    info.size,
                    if info.read_only { " read-only" } else { "" },
                    known.size,
                    if known.read_only { " read-only" } else { "" },
                );
                if g.waiting.as_deref() != Some(&why) {
                    tracing::error!(resource = %self.name, "{why}");
                    g.waiting = Some(why);
                }
                return;
            }
        } else {
            g.info = Some(info);
        }
        let id = g.next_session;
        g.next_session += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(self.clone().read_answers(id, rd));
        let writer = tokio::spawn(self.clone().write_requests(id, wr, rx));
        g.live = Some(Live {
            id,
            tx,
            node: found.sighting.node.clone(),
            nbd: nbd.to_string(),
            epoch: found.sighting.epoch,
            tasks: [reader, writer],
        });
        // Held requests of clients that left meanwhile need not be sent.
        g.book.forget_unsent(|p| p.done.is_closed());
        let replayed_before = g.book.counts().replayed;
        g.book.attach(id);
        Endpoint::dispatch(&mut g);
        let replayed = g.book.counts().replayed - replayed_before;
        let was = std::mem::replace(&mut g.state, EndpointState::Connected);
        g.waiting = None;
        g.lost_since = None;
        let pause = g.paused_since.take().map(|t| t.elapsed());
        let left = g.left.take();
        g.lost_epoch = None;
        match (was, pause) {
            (EndpointState::Connecting, _) | (_, None) => tracing::info!(
                resource = %self.name,
                "connected to {} (epoch {}, {nbd})",
                found.sighting.node,
                found.sighting.epoch
            ),
            (_, Some(pause)) => {
                g.failovers += 1;
                g.last_pause = Some(pause);
                tracing::warn!(
                    resource = %self.name,
                    "failed over to {} (epoch {}, {nbd}) after {:.3} s; {replayed} requests replayed",
                    found.sighting.node,
                    found.sighting.epoch,
                    pause.as_secs_f64()
                );
                let _ = self.failovers.send(Failover {
                    resource: self.name.clone(),
                    from: left,
                    to: found.sighting.node.clone(),
                    epoch: found.sighting.epoch,
                    pause_ms: pause.as_millis() as u64,
                    replayed,
                });
            }
        }
    }

    // -------------------------------------------------------------- driver

    /// Poll, choose, connect: one attempt to attach a primary. `found` is
    /// a poll already made, if any. `true`: a connection was tried and
    /// failed (the node named is primary but will not serve us).
    async fn attempt(self: &Arc<Self>, found: Option<Vec<Found>>) -> bool {
        let found = match found {
            Some(f) => f,
            None => {
                let lost = lock(&self.inner).lost_epoch;
                self.poller.poll(&self.name, lost).await
            }
        };
        let sightings: Vec<Sighting> = found.iter().map(|f| f.sighting.clone()).collect();
        let choice = {
            let mut g = lock(&self.inner);
            g.follow.observe(&sightings);
            g.follow.choose(&sightings, None)
        };
        let (why, failed) = match choice {
            Choice::Go(i) => match self.connect(&found[i]).await {
                Ok(()) => return false,
                Err(why) => (why, true),
            },
            Choice::Wait(why) => (
                format!("{why} ({} of the controllers answered)", found.len()),
                false,
            ),
        };
        let mut g = lock(&self.inner);
        if g.waiting.as_deref() != Some(&why) {
            if failed {
                tracing::warn!(resource = %self.name, "cannot connect to the primary: {why}");
            } else {
                tracing::info!(resource = %self.name, "waiting for a primary: {why}");
            }
            g.waiting = Some(why);
        }
        failed
    }

    async fn connect(self: &Arc<Self>, f: &Found) -> Result<(), String> {
        if f.nbd_tls && self.tls.is_none() {
            return Err(format!(
                "{} requires NBD TLS and nbd_tls is off here",
                f.sighting.node
            ));
        }
        let Some(nbd) = f.nbd.first() else {
            return Err(format!("{} has no NBD address", f.sighting.node));
        };
        let timeout = self.settings().connect_timeout;
        match upstream::open(nbd, &f.export, self.tls.as_ref(), timeout).await {
            Ok((granted, rd, wr)) => {
                self.attach(f, nbd, granted, rd, wr);
                let attached = lock(&self.inner).live.is_some();
                if attached {
                    Ok(())
                } else {
                    Err(format!("{} was not attached", f.sighting.node))
                }
            }
            Err(e) => Err(format!("{}: {e}", f.sighting.node)),
        }
    }

    /// With no primary for `ctrl_loss_tmo`: fail what waits.
    fn check_ctrl_loss(&self) {
        let Some(tmo) = self.settings().ctrl_loss_tmo else {
            return;
        };
        let mut g = lock(&self.inner);
        let expired = g.lost_since.is_some_and(|t| t.elapsed() >= tmo);
        if !expired || g.state == EndpointState::Lost || g.live.is_some() {
            return;
        }
        g.state = EndpointState::Lost;
        let failed = g.book.drain();
        g.failed += failed.len() as u64;
        tracing::error!(
            resource = %self.name,
            "no primary for {:?} (ctrl_loss_tmo): {} pending requests fail with EIO, and new ones until a primary is back",
            tmo,
            failed.len()
        );
        for p in failed {
            let _ = p.done.send(Err(Errno::Io));
        }
    }

    /// While connected: poll, and leave the current primary if a newer one
    /// is there, if it says it is no longer primary, or (`overdue`: a
    /// request is out longer than `request_timeout`) if it does not answer
    /// discovery at all. A primary that is only slow keeps its requests.
    async fn check(self: &Arc<Self>, overdue: bool) {
        // A newer primary settles it at once: no need to wait for a
        // controller that is cut off (often the very primary in use).
        let epoch = lock(&self.inner).live.as_ref().map(|l| l.epoch);
        let found = self.poller.poll(&self.name, epoch).await;
        let sightings: Vec<Sighting> = found.iter().map(|f| f.sighting.clone()).collect();
        let leave = {
            let mut g = lock(&self.inner);
            g.follow.observe(&sightings);
            let Some(live) = g.live.as_mut() else { return };
            let mine = sightings.iter().find(|s| s.node == live.node);
            // The node we use promoted again in place: same connection.
            if let Some(s) = mine.filter(|s| s.role == Role::Primary) {
                live.epoch = live.epoch.max(s.epoch);
            }
            let (epoch, node, id) = (live.epoch, live.node.clone(), live.id);
            let timeout = self.settings().request_timeout;
            if let Some(i) = g.follow.newer(&sightings, epoch, &node) {
                let s = &sightings[i];
                Some((
                    id,
                    format!("{} is primary at the newer epoch {}", s.node, s.epoch),
                ))
            } else if let Some(s) = mine.filter(|s| s.role != Role::Primary) {
                Some((id, format!("it says it is {} now", s.role.as_str())))
            } else if overdue && mine.is_none() {
                Some((
                    id,
                    format!(
                        "a request is out longer than {timeout:?} and it does not answer discovery"
                    ),
                ))
            } else {
                None
            }
        };
        if let Some((id, why)) = leave {
            self.session_lost(id, &why);
            self.attempt(Some(found)).await;
        }
    }

    /// The endpoint's life: attach, watch, fail over, until withdrawn.
    pub async fn run(self: Arc<Self>) {
        let Some(mut lost) = lock(&self.lost_rx).take() else {
            return;
        };
        let mut withdrawn = self.withdrawn.subscribe();
        // After a deadline check found no newer primary, the next one waits
        // a poll interval: the old primary may just be slow.
        let mut quiet_until = Instant::now();
        // Connections refused in a row: after a few, retry less often (a
        // misconfigured connector must not flood the server's log), up to
        // BACKOFF_MAX; a success or a wait for discovery resets it.
        let mut refused = 0u32;
        loop {
            if *withdrawn.borrow() {
                break;
            }
            let s = self.settings();
            let connected = lock(&self.inner).live.is_some();
            if !connected {
                refused = if self.attempt(None).await {
                    refused + 1
                } else {
                    0
                };
                self.check_ctrl_loss();
                if lock(&self.inner).live.is_some() {
                    continue;
                }
                let pause = match refused.checked_sub(BACKOFF_AFTER) {
                    None | Some(0) => s.reconnect_interval,
                    Some(n) => {
                        (s.reconnect_interval * 2u32.saturating_pow(n.min(16))).min(BACKOFF_MAX)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = withdrawn.changed() => {}
                    Some(l) = lost.recv() => self.session_lost(l.session, &l.why),
                }
                continue;
            }
            let oldest = lock(&self.inner).book.oldest_out();
            let deadline = oldest
                .map(|t| (t + s.request_timeout).max(quiet_until))
                .unwrap_or_else(|| Instant::now() + s.poll_interval * 2);
            tokio::select! {
                Some(l) = lost.recv() => self.session_lost(l.session, &l.why),
                _ = tokio::time::sleep(s.poll_interval) => self.check(false).await,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    tracing::debug!(resource = %self.name, "a request is out longer than {:?}: polling", s.request_timeout);
                    self.check(true).await;
                    quiet_until = Instant::now() + s.poll_interval;
                }
                _ = withdrawn.changed() => {}
            }
        }
        let mut g = lock(&self.inner);
        if let Some(live) = g.live.take() {
            live.close();
        }
        for p in g.book.drain() {
            let _ = p.done.send(Err(Errno::Io));
        }
    }
}

/// One local client's view of an endpoint (its `Export`); counts clients.
pub struct Client {
    ep: Arc<Endpoint>,
    info: ExportInfo,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.ep.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn fua(fua: bool) -> u16 {
    if fua {
        CMD_FLAG_FUA
    } else {
        0
    }
}

impl Export for Client {
    fn info(&self) -> ExportInfo {
        self.info.clone()
    }

    async fn read(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, Errno> {
        let len = buf.len() as u32;
        let req = Req {
            kind: Kind::Read,
            cmd: CommandType::Read,
            flags: 0,
            offset,
            len,
            data: None,
        };
        let data = self.ep.submit(req, Some(buf)).await?;
        data.ok_or(Errno::Io)
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua_: bool) -> Result<(), Errno> {
        let req = Req {
            kind: Kind::Write,
            cmd: CommandType::Write,
            flags: fua(fua_),
            offset,
            len: data.len() as u32,
            data: Some(Bytes::from(data)),
        };
        self.ep.submit(req, None).await.map(drop)
    }

    async fn flush(&self) -> Result<(), Errno> {
        let req = Req {
            kind: Kind::Flush,
            cmd: CommandType::Flush,
            flags: 0,
            offset: 0,
            len: 0,
            data: None,
        };
        self.ep.submit(req, None).await.map(drop)
    }

    async fn trim(&self, offset: u64, len: u32, fua_: bool) -> Result<(), Errno> {
        let req = Req {
            kind: Kind::Write,
            cmd: CommandType::Trim,
            flags: fua(fua_),
            offset,
            len,
            data: None,
        };
        self.ep.submit(req, None).await.map(drop)
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua_: bool,
    ) -> Result<(), Errno> {
        let mut flags = fua(fua_);
        if !may_trim {
            flags |= CMD_FLAG_NO_HOLE;
        }
        if fast_only {
            flags |= CMD_FLAG_FAST_ZERO;
        }
        let req = Req {
            kind: Kind::Write,
            cmd: CommandType::WriteZeroes,
            flags,
            offset,
            len,
            data: None,
        };
        self.ep.submit(req, None).await.map(drop)
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), Errno> {
        if !self.info.can_cache {
            return Ok(());
        }
        let req = Req {
            kind: Kind::Other,
            cmd: CommandType::Cache,
            flags: 0,
            offset,
            len,
            data: None,
        };
        self.ep.submit(req, None).await.map(drop)
    }

    /// Everything reads as allocated data: always true of `base:allocation`,
    /// and one round trip less than asking the primary.
    async fn block_status(
        &self,
        _offset: u64,
        len: u32,
        _req_one: bool,
    ) -> Result<Vec<BlockExtent>, Errno> {
        Ok(vec![BlockExtent {
            len,
            hole: false,
            zero: false,
        }])
    }

    async fn withdrawn(&self) {
        let mut rx = self.ep.withdrawn.subscribe();
        let _ = rx.wait_for(|w| *w).await;
    }
}

/// The exports of one endpoint's own Unix socket: its name, and the
/// default export `""`.
pub struct Single(pub Arc<Endpoint>);

impl Exports for Single {
    type Export = Client;

    fn list(&self) -> Vec<(String, Option<String>)> {
        vec![(self.0.name.clone(), None)]
    }

    fn open(&self, name: &str) -> Result<Arc<Client>, OpenError> {
        if !name.is_empty() && name != self.0.name {
            return Err(OpenError::unknown(format!(
                "this socket serves {}, not {name}",
                self.0.name
            )));
        }
        self.0.open()
    }
}
