//! The tokio shell around the sans-IO codec: one [`serve`] call per accepted
//! connection. It moves bytes for the [`Negotiation`], then runs the
//! transmission phase:
//!
//! ```text
//!  socket ──read──▶ reader loop ──validate──▶ spawned task per request ──▶ Export
//!                      │  (semaphores: requests and payload bytes in flight,   │
//!                      │   the connection's and the budget all share)          │
//!                      └──error frames──▶   outbox (hast-io)  ◀──reply frames──┘
//!                                             │
//!                      socket ◀──writev── sender itself, or the writer task
//! ```
//!
//! Requests are pipelined: the reader keeps reading while earlier requests
//! run; replies go out in completion order (cookies match them). The reply
//! to the only request in flight is written by the task that made it (no
//! hand-off on a queue-depth-one client's path); with company, replies are
//! queued to the writer task, which sends a batch in one vectored write. A
//! reply's head and data are never interleaved with another's.
//!
//! Nothing a client does holds resources forever: payload memory comes
//! from the shared [`Budget`]; a WRITE payload must arrive within
//! `Limits::payload_timeout`; with `Limits::idle_timeout` a connection with
//! nothing in flight that sends nothing is closed; and [`refuse`] turns a
//! client away during the handshake when the caller has no room for it.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use hast_io::{OutFrame, Outbox};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use crate::budget::Budget;
use crate::error::NbdError;
use crate::handshake::{
    greeting, push_option_reply, Catalog, Negotiated, Negotiation, OptionHeader, Outcome, TlsMode,
    Transmission,
};
use crate::proto::*;
use crate::reply::{self, Head};
use crate::request::{backend_errno, validate, Command, CommandType, Discard, Request};

/// One block device offered over NBD. Methods are called concurrently for
/// requests in flight; the server never calls them with ranges outside the
/// export or with a zero length.
pub trait Export: Send + Sync + 'static {
    /// Size and capabilities; read once when a client selects the export.
    fn info(&self) -> ExportInfo;
    /// `buf` has the request's length; fill it and hand it back.
    fn read(
        &self,
        offset: u64,
        buf: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, Errno>> + Send;
    /// What the server calls for a READ: `len` bytes in a buffer of the
    /// export's making. The default zeroes one for [`Export::read`]; an
    /// export that fills memory it did not zero (a `pread` into spare
    /// capacity) overrides it and saves a pass over every byte read.
    fn read_new(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<u8>, Errno>> + Send {
        self.read(offset, vec![0u8; len as usize])
    }
    /// `fua`: do not return before the data is on stable storage.
    fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> impl Future<Output = Result<(), Errno>> + Send;
    /// Everything already acknowledged must reach stable storage.
    fn flush(&self) -> impl Future<Output = Result<(), Errno>> + Send;
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), Errno>> + Send;
    /// `may_trim`: deallocating is acceptable. `fast_only`: answer
    /// `Errno::NotSup` at once unless zeroing is faster than writing.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), Errno>> + Send;
    fn cache(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), Errno>> + Send;
    /// `base:allocation` extents from `offset`; `req_one`: one is enough.
    /// The server clips and cleans the list (see `reply::encode_extents`).
    fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> impl Future<Output = Result<Vec<BlockExtent>, Errno>> + Send;
    /// Resolves when the export is withdrawn (the resource stopped being
    /// primary or the daemon is stopping).
    fn withdrawn(&self) -> impl Future<Output = ()> + Send;
}

/// The table of exports a listener offers.
pub trait Exports: Send + Sync + 'static {
    type Export: Export;
    /// Exports offered now: (name, description).
    fn list(&self) -> Vec<(String, Option<String>)>;
    /// Open an export by name (`""` is the default export, if any).
    fn open(&self, name: &str) -> Result<Arc<Self::Export>, OpenError>;
}

/// Limits of a connection. Clones share one payload [`Budget`]: give every
/// connection of a server clones of one `Limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests in flight per connection; the reader stops reading (TCP
    /// back-pressure) when this many are being served.
    pub inflight_max: usize,
    /// Time allowed from accept to the end of option haggling.
    pub handshake_timeout: Duration,
    /// Largest READ/WRITE payload advertised and accepted.
    pub payload_max: u32,
    /// Payload bytes held at once by all connections sharing it.
    pub budget: Arc<Budget>,
    /// A connection with no request in flight that receives nothing for
    /// this long is closed. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A WRITE's payload (and a refused request's, read to be discarded)
    /// must arrive within this time from its header, or the connection is
    /// closed: a payload stalled one byte short would otherwise hold its
    /// budget and its connection forever.
    pub payload_timeout: Duration,
}

/// Default of [`Limits::payload_timeout`].
pub const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            inflight_max: 128,
            handshake_timeout: Duration::from_secs(10),
            payload_max: PAYLOAD_MAX,
            budget: Arc::new(Budget::default()),
            idle_timeout: None,
            payload_timeout: PAYLOAD_TIMEOUT,
        }
    }
}

/// After the export is withdrawn, the client gets this long to see its
/// ESHUTDOWN errors and send DISC before the server closes.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(10);
/// Payload bytes (read buffers and write data) in flight per connection;
/// bounds memory to this, not `inflight_max × payload_max`. At least one
/// maximal request always fits.
pub const INFLIGHT_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Read buffer in front of the socket: many 28-byte headers per syscall.
const READ_BUFFER_LEN: usize = 64 * 1024;

/// Serve one accepted connection until the client disconnects, the export
/// is withdrawn (plus grace), or the client breaks the protocol. The caller
/// should have set `TCP_NODELAY` on TCP sockets (proto.md recommends it).
/// `peer` only labels log lines.
pub async fn serve<E, S>(
    exports: Arc<E>,
    stream: S,
    peer: String,
    limits: Limits,
) -> Result<(), NbdError>
where
    E: Exports,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve_split(exports, rd, wr, peer, limits).await
}

/// [`serve`] over a stream already split into owned halves, e.g.
/// `TcpStream::into_split()`: the halves then share no lock, which
/// `tokio::io::split` needs on every read and write.
pub async fn serve_split<E, R, W>(
    exports: Arc<E>,
    rd: R,
    mut wr: W,
    peer: String,
    limits: Limits,
) -> Result<(), NbdError>
where
    E: Exports,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rd = BufReader::with_capacity(READ_BUFFER_LEN, rd);
    let hs = tokio::time::timeout(
        limits.handshake_timeout,
        handshake(&*exports, &mut rd, &mut wr, limits.payload_max),
    )
    .await;
    let Some((export, t)) = handshake_result(hs, &peer, &limits)? else {
        return Ok(());
    };
    transmit(export, t, rd, wr, &peer, &limits, false).await
}

/// The TLS side of `NBD_OPT_STARTTLS`, supplied by the caller so that this
/// crate carries no TLS library (hastd implements it with rustls).
pub trait StartTls<S>: Send + Sync + 'static {
    /// The stream after the TLS handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Required or optional (never [`TlsMode::Off`]: use [`serve_split`]).
    fn mode(&self) -> TlsMode;
    /// Runs the server side of the TLS handshake on `plain`. The error
    /// (a refused certificate, a failed handshake) ends the connection and
    /// is logged.
    fn accept(&self, plain: S) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A stream that splits into owned halves sharing no lock (`TcpStream`,
/// `UnixStream`): a plaintext client of a TLS-capable listener is then
/// served exactly like one of a plaintext listener.
pub trait IntoHalves: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

/// Over TCP a large WRITE payload is read once it has all arrived
/// ([`hast_io::LowWater`]): one wake-up and one `recv` instead of one per
/// piece the network delivers.
impl IntoHalves for tokio::net::TcpStream {
    type Read = hast_io::LowWater<tokio::net::tcp::OwnedReadHalf>;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&self);
        let (rd, wr) = self.into_split();
        (hast_io::LowWater::new(rd, fd, READ_BUFFER_LEN), wr)
    }
}

impl IntoHalves for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// [`serve`] with `NBD_OPT_STARTTLS` offered as `tls.mode()` says: after
/// the ACK the TLS handshake runs on the same socket (within the handshake
/// timeout), option haggling starts over inside TLS, and transmission runs
/// over the TLS stream. A client that stays in plaintext (optional mode)
/// is served over the stream's owned halves, as by [`serve_split`].
pub async fn serve_tls<E, S, T>(
    exports: Arc<E>,
    stream: S,
    tls: Arc<T>,
    peer: String,
    limits: Limits,
) -> Result<(), NbdError>
where
    E: Exports,
    S: IntoHalves,
    T: StartTls<S>,
{
    let hs = tokio::time::timeout(
        limits.handshake_timeout,
        handshake_tls(&*exports, stream, &*tls, limits.payload_max),
    )
    .await;
    match handshake_result(hs, &peer, &limits)? {
        None => Ok(()),
        Some(Ready::Plain(export, t, rd, wr)) => {
            transmit(export, t, rd, wr, &peer, &limits, false).await
        }
        Some(Ready::Tls(export, t, rd, wr)) => {
            transmit(export, t, rd, wr, &peer, &limits, true).await
        }
    }
}

/// Logs how the handshake ended; `Ok(None)`: the client aborted.
fn handshake_result<T>(
    hs: Result<Result<Option<T>, NbdError>, tokio::time::error::Elapsed>,
    peer: &str,
    limits: &Limits,
) -> Result<Option<T>, NbdError> {
    match hs {
        Err(_) => {
            debug!(%peer, "nbd handshake timed out");
            Err(NbdError::HandshakeTimeout(limits.handshake_timeout))
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "nbd handshake failed");
            Err(e)
        }
        Ok(Ok(None)) => {
            debug!(%peer, "nbd client aborted the handshake");
            Ok(None)
        }
        Ok(Ok(Some(x))) => Ok(Some(x)),
    }
}

/// The transmission phase of one connection, with its log lines.
/// `tls`: replies always go through the writer task, never written by the
/// task that made them: a TLS stream takes bytes into its record buffer
/// and may keep them there until flushed, and the direct write (which
/// polls with a no-op waker) could leave a reply in that buffer with
/// nobody to flush it. The writer task awaits its flush.
async fn transmit<X, R, W>(
    export: Arc<X>,
    t: Transmission,
    rd: BufReader<R>,
    wr: W,
    peer: &str,
    limits: &Limits,
    tls: bool,
) -> Result<(), NbdError>
where
    X: Export,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let name = t.negotiated.export.clone();
    info!(
        %peer,
        export = %name,
        structured = t.negotiated.structured_replies,
        tls,
        "nbd connection open"
    );
    let conn = Connection {
        export,
        info: t.info,
        neg: t.negotiated,
        peer,
        limits,
        direct: !tls,
    };
    let (result, served) = conn.run(rd, wr).await;
    match &result {
        Ok(()) => info!(%peer, export = %name, requests = served, "nbd connection closed"),
        Err(e) => info!(
            %peer,
            export = %name,
            requests = served,
            error = %e,
            "nbd connection closed"
        ),
    }
    result
}

// ------------------------------------------------------------ handshake

/// The shell's side of [`Catalog`]: opens exports and keeps the last one so
/// the chosen export is at hand when transmission starts.
struct ShellCatalog<'a, E: Exports> {
    exports: &'a E,
    opened: Option<Arc<E::Export>>,
}

impl<E: Exports> Catalog for ShellCatalog<'_, E> {
    fn list(&self) -> Vec<(String, Option<String>)> {
        self.exports.list()
    }

    fn lookup(&mut self, name: &str) -> Result<ExportInfo, OpenError> {
        self.opened = None;
        let export = self.exports.open(name)?;
        let info = export.info();
        self.opened = Some(export);
        Ok(info)
    }
}

type Chosen<X> = (Arc<X>, Transmission);

/// How option haggling ended.
enum Haggled<X> {
    Chosen(Arc<X>, Transmission),
    Abort,
    /// STARTTLS acknowledged (the ACK is sent).
    StartTls,
}

/// The greeting and the client flags.
async fn greet<IO>(io: &mut IO, neg: &mut Negotiation) -> Result<(), NbdError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&greeting()).await?;
    io.flush().await?;
    let mut flags = [0u8; 4];
    io.read_exact(&mut flags).await?;
    neg.client_flags(flags)?;
    Ok(())
}

/// Reads options and sends the replies until haggling ends.
async fn haggle<E, IO>(
    neg: &mut Negotiation,
    catalog: &mut ShellCatalog<'_, E>,
    io: &mut IO,
) -> Result<Haggled<E::Export>, NbdError>
where
    E: Exports,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut payload = Vec::new();
    loop {
        let mut raw = [0u8; OPTION_HEADER_LEN];
        io.read_exact(&mut raw).await?;
        let step = match neg.option_header(&raw) {
            Ok(header) => {
                // The header check above bounded `len` to OPTION_LEN_MAX.
                payload.clear();
                payload.resize(header.len as usize, 0);
                io.read_exact(&mut payload).await?;
                neg.option(header, &payload, catalog)
            }
            Err(step) => *step,
        };
        if !step.reply.is_empty() {
            io.write_all(&step.reply).await?;
            io.flush().await?;
        }
        match step.outcome {
            Outcome::Continue => {}
            Outcome::Abort => return Ok(Haggled::Abort),
            Outcome::Reject(e) => return Err(e),
            Outcome::StartTls => return Ok(Haggled::StartTls),
            Outcome::Transmission(t) => {
                let export = catalog
                    .opened
                    .take()
                    .ok_or(NbdError::Misuse("transmission without an open export"))?;
                return Ok(Haggled::Chosen(export, t));
            }
        }
    }
}

async fn handshake<E, R, W>(
    exports: &E,
    rd: &mut R,
    wr: &mut W,
    payload_max: u32,
) -> Result<Option<Chosen<E::Export>>, NbdError>
where
    E: Exports,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut io = tokio::io::join(rd, wr);
    let mut neg = Negotiation::new(payload_max);
    greet(&mut io, &mut neg).await?;
    let mut catalog = ShellCatalog {
        exports,
        opened: None,
    };
    match haggle(&mut neg, &mut catalog, &mut io).await? {
        Haggled::Chosen(export, t) => Ok(Some((export, t))),
        Haggled::Abort => Ok(None),
        // A negotiation without TLS never asks for it.
        Haggled::StartTls => Err(NbdError::Misuse("STARTTLS without TLS")),
    }
}

/// Bytes read past the end of the handshake come first, then the stream.
type Rest<R> = tokio::io::Chain<std::io::Cursor<Vec<u8>>, R>;

/// A connection ready for transmission, in plaintext or over TLS.
enum Ready<X, S: IntoHalves, T> {
    Plain(Arc<X>, Transmission, BufReader<Rest<S::Read>>, S::Write),
    Tls(
        Arc<X>,
        Transmission,
        BufReader<Rest<tokio::io::ReadHalf<T>>>,
        tokio::io::WriteHalf<T>,
    ),
}

/// Small: the handshake reads options; transmission gets its own buffer.
const HANDSHAKE_BUFFER_LEN: usize = 4096;

async fn handshake_tls<E, S, T>(
    exports: &E,
    stream: S,
    tls: &T,
    payload_max: u32,
) -> Result<Option<Ready<E::Export, S, T::Stream>>, NbdError>
where
    E: Exports,
    S: IntoHalves,
    T: StartTls<S>,
{
    let mut io = BufReader::with_capacity(HANDSHAKE_BUFFER_LEN, stream);
    let mut neg = Negotiation::with_tls(payload_max, tls.mode());
    greet(&mut io, &mut neg).await?;
    let mut catalog = ShellCatalog {
        exports,
        opened: None,
    };
    match haggle(&mut neg, &mut catalog, &mut io).await? {
        Haggled::Abort => return Ok(None),
        Haggled::Chosen(export, t) => {
            let rest = io.buffer().to_vec();
            let (rd, wr) = io.into_inner().into_halves();
            let rd =
                BufReader::with_capacity(READ_BUFFER_LEN, std::io::Cursor::new(rest).chain(rd));
            return Ok(Some(Ready::Plain(export, t, rd, wr)));
        }
        Haggled::StartTls => {}
    }
    // The client waits for the ACK before its ClientHello; anything already
    // read would be lost under TLS.
    if !io.buffer().is_empty() {
        return Err(NbdError::Tls(
            "client sent data between STARTTLS and its TLS handshake".into(),
        ));
    }
    let stream = tls
        .accept(io.into_inner())
        .await
        .map_err(|e| NbdError::Tls(e.to_string()))?;
    neg.tls_started()?;
    let mut io = BufReader::with_capacity(HANDSHAKE_BUFFER_LEN, stream);
    match haggle(&mut neg, &mut catalog, &mut io).await? {
        Haggled::Abort => Ok(None),
        Haggled::Chosen(export, t) => {
            let rest = io.buffer().to_vec();
            // A TLS session cannot be split without a lock: its reads may
            // need to write (key updates) and its state is one.
            let (rd, wr) = tokio::io::split(io.into_inner());
            let rd =
                BufReader::with_capacity(READ_BUFFER_LEN, std::io::Cursor::new(rest).chain(rd));
            Ok(Some(Ready::Tls(export, t, rd, wr)))
        }
        // The negotiation answers a second STARTTLS with ERR_INVALID.
        Haggled::StartTls => Err(NbdError::Misuse("STARTTLS inside TLS")),
    }
}

// ------------------------------------------------------------- refusal

/// Options a refused client may send before it is cut off: real clients
/// give up after the error to their `GO` (after at most a few negotiation
/// options before it).
const REFUSE_OPTIONS_MAX: u32 = 16;

/// Turns a client away during the handshake, so that it reports why instead
/// of hanging: after the greeting, every option it sends is answered with
/// `NBD_REP_ERR_POLICY` carrying `message`, until it aborts, sends `EXPORT_NAME` (which has no error
/// reply: the connection is closed), breaks the framing, or sent
/// [`REFUSE_OPTIONS_MAX`] options. Reads nothing larger than an option
/// header at a time. The caller bounds the time it may take.
pub async fn refuse<R, W>(rd: R, mut wr: W, message: &str) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rd = BufReader::with_capacity(OPTION_HEADER_LEN * 4, rd);
    wr.write_all(&greeting()).await?;
    wr.flush().await?;
    let mut flags = [0u8; 4];
    rd.read_exact(&mut flags).await?;
    for _ in 0..REFUSE_OPTIONS_MAX {
        let mut raw = [0u8; OPTION_HEADER_LEN];
        rd.read_exact(&mut raw).await?;
        let header = OptionHeader::parse(&raw)?;
        if header.len > OPTION_LEN_MAX {
            return Err(NbdError::OptionTooBig {
                option: header.option,
                len: header.len,
                max: OPTION_LEN_MAX,
            });
        }
        let mut take = (&mut rd).take(u64::from(header.len));
        tokio::io::copy(&mut take, &mut tokio::io::sink()).await?;
        let mut out = Vec::new();
        match header.option {
            OPT_EXPORT_NAME => return Ok(()),
            OPT_ABORT => push_option_reply(&mut out, header.option, REP_ACK, &[]),
            // POLICY, not SHUTDOWN: the server is not going away, a
            // configured limit says no. Clients print it best: qemu "Denied
            // by server ... server reported: <message>", libnbd ≥ 1.16
            // "server policy prevents the operation: <message>" (1.14 shows
            // the message only with LIBNBD_DEBUG=1).
            opt => push_option_reply(&mut out, opt, REP_ERR_POLICY, message.as_bytes()),
        }
        wr.write_all(&out).await?;
        wr.flush().await?;
        if header.option == OPT_ABORT {
            return Ok(());
        }
    }
    Err(NbdError::TooManyOptions(REFUSE_OPTIONS_MAX))
}

// --------------------------------------------------------- transmission

/// What a reply frame carries after its head.
enum Body {
    Empty,
    Data(Vec<u8>),
    Text(&'static str),
}

impl Body {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Data(d) => d,
            Body::Text(t) => t.as_bytes(),
        }
    }
}

/// One whole reply, written whole by the outbox. Holding the permits until
/// the bytes are written bounds queued replies and their memory.
struct Frame {
    head: Head,
    body: Body,
    _permits: Permits,
}

impl OutFrame for Frame {
    fn parts(&self) -> [&[u8]; 2] {
        [self.head.as_bytes(), self.body.as_bytes()]
    }
}

type Replies<W> = Outbox<W, Frame>;

#[derive(Default)]
struct Permits {
    _request: Option<OwnedSemaphorePermit>,
    /// This connection's share of payload bytes.
    _bytes: Option<OwnedSemaphorePermit>,
    /// The same bytes in the budget shared by all connections.
    _budget: Option<OwnedSemaphorePermit>,
}

/// How replies are shaped on this connection.
#[derive(Debug, Clone, Copy)]
struct Mode {
    structured: bool,
    meta_context: u32,
}

impl Mode {
    fn error(self, cookie: u64, errno: Errno, message: &'static str, permits: Permits) -> Frame {
        if self.structured {
            // Structured errors carry a message for the human user.
            let (head, msg) = reply::error(cookie, errno, message);
            Frame {
                head,
                body: Body::Text(msg),
                _permits: permits,
            }
        } else {
            Frame {
                head: reply::simple(cookie, Some(errno)),
                body: Body::Empty,
                _permits: permits,
            }
        }
    }

    fn ok(self, cookie: u64, permits: Permits) -> Frame {
        // A simple reply is allowed for payload-free successes even with
        // structured replies, and is the shortest.
        Frame {
            head: reply::simple(cookie, None),
            body: Body::Empty,
            _permits: permits,
        }
    }
}

/// Why the reader stopped.
enum Stop {
    /// DISC, or EOF at a request boundary.
    Client,
    /// The grace period after withdrawal ran out.
    Grace,
    /// The writer is gone (socket failed).
    Writer,
    /// Nothing received and nothing in flight for `Limits::idle_timeout`.
    Idle,
    /// A payload did not arrive within `Limits::payload_timeout`.
    Deadline,
}

/// Runs reader-side futures while watching for withdrawal, the grace
/// deadline and writer failure. The future is polled by reference, so a
/// withdrawal never cancels a half-read request.
struct Watch<'a, F: Future<Output = ()>, W> {
    withdrawn: Pin<&'a mut F>,
    deadline: Option<Instant>,
    /// The replies' outbox; `None` once the reader is done, so that waiting
    /// for the writer does not count as "writer gone".
    replies: Option<&'a Replies<W>>,
}

impl<F: Future<Output = ()>, W: AsyncWrite + Unpin + Send> Watch<'_, F, W> {
    fn is_withdrawn(&self) -> bool {
        self.deadline.is_some()
    }

    async fn run<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        let mut fut = pin!(fut);
        loop {
            let deadline = self.deadline;
            // Checked before the request future so a client that keeps the
            // pipe full cannot starve withdrawal.
            tokio::select! {
                biased;
                _ = self.withdrawn.as_mut(), if deadline.is_none() => {
                    self.deadline = Some(Instant::now() + WITHDRAW_GRACE);
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => return Err(Stop::Grace),
                _ = closed_opt(self.replies) => return Err(Stop::Writer),
                out = &mut fut => return Ok(out),
            }
        }
    }

    /// [`run`](Self::run), and when `timer` fires first, `expired` says
    /// either when to look again (the future is kept, nothing half-read is
    /// lost) or why to stop. The timer is the connection's one `Sleep`,
    /// reset to a later deadline each time: that is an atomic update in
    /// tokio, no lock and no allocation per request.
    async fn run_timed<T>(
        &mut self,
        fut: impl Future<Output = T>,
        mut timer: Pin<&mut Sleep>,
        mut expired: impl FnMut() -> Result<Instant, Stop>,
    ) -> Result<T, Stop> {
        let mut fut = pin!(fut);
        loop {
            let deadline = self.deadline;
            tokio::select! {
                biased;
                _ = self.withdrawn.as_mut(), if deadline.is_none() => {
                    self.deadline = Some(Instant::now() + WITHDRAW_GRACE);
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => return Err(Stop::Grace),
                _ = closed_opt(self.replies) => return Err(Stop::Writer),
                out = &mut fut => return Ok(out),
                _ = timer.as_mut() => timer.as_mut().reset(expired()?),
            }
        }
    }
}

async fn closed_opt<W: AsyncWrite + Unpin + Send>(replies: Option<&Replies<W>>) {
    match replies {
        Some(r) => r.closed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Connection<'a, X: Export> {
    export: Arc<X>,
    info: ExportInfo,
    neg: Negotiated,
    peer: &'a str,
    limits: &'a Limits,
    /// Replies may be written by the task that made them (not over TLS).
    direct: bool,
}

impl<X: Export> Connection<'_, X> {
    /// The transmission phase; returns the result and the requests read.
    async fn run<R, W>(self, mut rd: BufReader<R>, wr: W) -> (Result<(), NbdError>, u64)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let inflight_max = self.limits.inflight_max.max(1);
        // Every queued reply holds a request permit: the queue never waits.
        let replies: Arc<Replies<W>> = Arc::new(Outbox::new(wr, inflight_max));
        let requests = Arc::new(Semaphore::new(inflight_max));
        let mut writer = tokio::spawn({
            let replies = Arc::clone(&replies);
            async move { replies.run(None, None).await }
        });
        let export = Arc::clone(&self.export);
        let withdrawn = pin!(export.withdrawn());
        let mut watch = Watch {
            withdrawn,
            deadline: None,
            replies: Some(&*replies),
        };
        let mut served = 0u64;
        let read = self
            .read_loop(&mut rd, &mut watch, &requests, &replies, &mut served)
            .await;
        let result = match read {
            Err(e) => Err(e),
            // DISC or EOF: in-flight requests finish and their replies are
            // written (each holds its request permit until then), unless
            // the grace period after withdrawal runs out.
            Ok(Stop::Client) => {
                watch.replies = None;
                let all = u32::try_from(inflight_max).unwrap_or(u32::MAX);
                let drained = async {
                    let _all = requests.acquire_many(all).await;
                    replies.finish();
                    (&mut writer).await
                };
                match watch.run(drained).await {
                    Ok(Ok(Ok(()))) | Err(_) => Ok(()),
                    Ok(Ok(Err(e))) => Err(NbdError::Io(e)),
                    Ok(Err(join)) => Err(NbdError::Io(io::Error::other(join))),
                }
            }
            // The writer stopped on its own: a socket error worth reporting.
            Ok(Stop::Writer) => match (&mut writer).await {
                Ok(Err(e)) => Err(NbdError::Io(e)),
                _ => Ok(()),
            },
            Ok(Stop::Grace) => Ok(()),
            Ok(Stop::Idle) => {
                info!(
                    peer = %self.peer,
                    idle = ?self.limits.idle_timeout.unwrap_or_default(),
                    "nbd connection idle, closing it"
                );
                Ok(())
            }
            Ok(Stop::Deadline) => Err(NbdError::PayloadTimeout(self.limits.payload_timeout)),
        };
        replies.close();
        writer.abort();
        (result, served)
    }

    async fn read_loop<R, F, W>(
        &self,
        rd: &mut BufReader<R>,
        watch: &mut Watch<'_, F, W>,
        requests: &Arc<Semaphore>,
        replies: &Arc<Replies<W>>,
        served: &mut u64,
    ) -> Result<Stop, NbdError>
    where
        R: AsyncRead + Unpin,
        F: Future<Output = ()>,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let bytes_max = INFLIGHT_BYTES_MAX.max(self.neg.block_sizes.max_payload as usize);
        let bytes = Arc::new(Semaphore::new(bytes_max));
        let mode = Mode {
            structured: self.neg.structured_replies,
            meta_context: self.neg.meta_context.unwrap_or(0),
        };
        let inflight_max = self.limits.inflight_max.max(1);
        let payload_timeout = self.limits.payload_timeout;
        // One timer for the idle and payload deadlines; registered with the
        // runtime only once first polled.
        let mut timer = pin!(tokio::time::sleep(payload_timeout));
        loop {
            let mut raw = [0u8; REQUEST_LEN];
            let header = match self.limits.idle_timeout {
                None => watch.run(read_header(rd, &mut raw)).await,
                Some(idle) => {
                    timer.as_mut().reset(Instant::now() + idle);
                    // Idle only if nothing is in flight either: a client
                    // waiting for a slow reply is not idle.
                    let in_flight = || requests.available_permits() < inflight_max;
                    let expired = || match in_flight() {
                        true => Ok(Instant::now() + idle),
                        false => Err(Stop::Idle),
                    };
                    watch
                        .run_timed(read_header(rd, &mut raw), timer.as_mut(), expired)
                        .await
                }
            };
            match header {
                Err(stop) => return Ok(stop),
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(Stop::Client),
                Ok(Err(e)) => return Err(e.into()),
            }
            let req = match Request::parse(&raw) {
                Ok(r) => r,
                Err(e) => {
                    debug!(peer = %self.peer, error = %e, "nbd request header out of sync");
                    return Err(e);
                }
            };
            *served += 1;
            let permit = match watch.run(Arc::clone(requests).acquire_owned()).await {
                Err(stop) => return Ok(stop),
                // The semaphore is never closed.
                Ok(p) => p.ok(),
            };
            let mut permits = Permits {
                _request: permit,
                ..Permits::default()
            };
            let verdict = if watch.is_withdrawn() && req.kind != CommandType::Disc {
                Err((Errno::Shutdown, "export withdrawn"))
            } else {
                validate(&req, &self.info, &self.neg).map_err(|r| (r.errno, r.reason))
            };
            let cmd = match verdict {
                Ok(Command::Disconnect) => return Ok(Stop::Client),
                Ok(cmd) => cmd,
                Err((errno, reason)) => {
                    debug!(
                        peer = %self.peer,
                        cookie = req.cookie,
                        command = ?req.kind,
                        flags = req.flags,
                        offset = req.offset,
                        len = req.len,
                        %errno,
                        reason,
                        "nbd request refused"
                    );
                    match req.discard() {
                        Discard::Nothing => {}
                        Discard::Bytes(n) => {
                            let mut sink = tokio::io::sink();
                            let mut take = (&mut *rd).take(u64::from(n));
                            timer.as_mut().reset(Instant::now() + payload_timeout);
                            let copy = tokio::io::copy_buf(&mut take, &mut sink);
                            match watch.run_timed(copy, timer.as_mut(), deadline).await {
                                Err(stop) => return Ok(stop),
                                Ok(Ok(got)) if got == u64::from(n) => {}
                                Ok(Ok(_)) => {
                                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
                                }
                                Ok(Err(e)) => return Err(e.into()),
                            }
                        }
                        Discard::Close(n) => return Err(NbdError::PayloadTooBig(n)),
                    }
                    let frame = mode.error(req.cookie, errno, reason, permits);
                    let sent = if self.direct {
                        replies.send(frame).await
                    } else {
                        replies.queue(frame).await
                    };
                    if sent.is_err() {
                        return Ok(Stop::Writer);
                    }
                    continue;
                }
            };

            // Payload memory is budgeted before it is allocated.
            let payload = match cmd {
                Command::Read { len, .. } | Command::Write { len, .. } => len as usize,
                _ => 0,
            };
            if payload > 0 {
                // This connection's share first: a connection waits on the
                // shared budget with at most one request at a time.
                let n = payload.min(bytes_max) as u32;
                match watch.run(Arc::clone(&bytes).acquire_many_owned(n)).await {
                    Err(stop) => return Ok(stop),
                    Ok(p) => permits._bytes = p.ok(),
                }
                match watch.run(self.limits.budget.acquire(payload as u32)).await {
                    Err(stop) => return Ok(stop),
                    Ok(p) => permits._budget = p,
                }
            }
            let data = if let Command::Write { len, .. } = cmd {
                timer.as_mut().reset(Instant::now() + payload_timeout);
                match watch
                    .run_timed(read_payload(rd, len), timer.as_mut(), deadline)
                    .await
                {
                    Err(stop) => return Ok(stop),
                    Ok(Ok(data)) => data,
                    Ok(Err(e)) => return Err(e.into()),
                }
            } else {
                Vec::new()
            };
            tokio::spawn(execute(
                Arc::clone(&self.export),
                cmd,
                req.cookie,
                mode,
                data,
                permits,
                ReplyTo {
                    replies: Arc::clone(replies),
                    requests: Arc::clone(requests),
                    inflight_max: self.limits.inflight_max.max(1),
                    direct: self.direct,
                },
            ));
        }
    }
}

/// `run_timed`'s verdict for a payload deadline: no second chance.
fn deadline() -> Result<Instant, Stop> {
    Err(Stop::Deadline)
}

/// Reads a WRITE payload of `len` (validated) bytes into a buffer of exactly
/// that size, filled straight from the socket without zeroing it first.
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: u32) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len as usize);
    // `take` keeps the read within this payload whatever the capacity.
    let mut rest = rd.take(u64::from(len));
    while data.len() < len as usize {
        if rest.read_buf(&mut data).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(data)
}

/// Read one request header. `Ok(false)`: clean EOF before its first byte.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    raw: &mut [u8; REQUEST_LEN],
) -> io::Result<bool> {
    let n = rd.read(raw).await?;
    if n == 0 {
        return Ok(false);
    }
    rd.read_exact(&mut raw[n..]).await?;
    Ok(true)
}

/// Run one validated command against the export and queue its reply.
async fn execute<X: Export, W: AsyncWrite + Unpin + Send>(
    export: Arc<X>,
    cmd: Command,
    cookie: u64,
    mode: Mode,
    data: Vec<u8>,
    permits: Permits,
    to: ReplyTo<W>,
) {
    let result: Result<Option<Frame>, Errno> = match cmd {
        Command::Read { offset, len } => match export.read_new(offset, len).await {
            Ok(buf) if buf.len() == len as usize => {
                let head = if mode.structured {
                    reply::offset_data(cookie, offset, len, true)
                } else {
                    reply::simple(cookie, None)
                };
                Ok(Some(Frame {
                    head,
                    body: Body::Data(buf),
                    _permits: Permits::default(),
                }))
            }
            // A wrong-sized buffer would desynchronise simple replies.
            Ok(_) => Err(Errno::Io),
            Err(e) => Err(e),
        },
        Command::Write { offset, fua, .. } => export.write(offset, data, fua).await.map(|_| None),
        Command::Flush => export.flush().await.map(|_| None),
        Command::Trim { offset, len, fua } => export.trim(offset, len, fua).await.map(|_| None),
        Command::WriteZeroes {
            offset,
            len,
            may_trim,
            fast_only,
            fua,
        } => export
            .write_zeroes(offset, len, may_trim, fast_only, fua)
            .await
            .map(|_| None),
        Command::Cache { offset, len } => export.cache(offset, len).await.map(|_| None),
        Command::BlockStatus {
            offset,
            len,
            req_one,
        } => export
            .block_status(offset, len, req_one)
            .await
            .map(|extents| {
                let body = reply::encode_extents(&extents, len, req_one);
                Some(Frame {
                    head: reply::block_status(cookie, mode.meta_context, body.len() as u32, true),
                    body: Body::Data(body),
                    _permits: Permits::default(),
                })
            }),
        Command::Disconnect => Ok(None),
    };
    let frame = match result {
        Ok(Some(mut f)) => {
            f._permits = permits;
            f
        }
        Ok(None) => mode.ok(cookie, permits),
        Err(e) => {
            let errno = backend_errno(&cmd, e);
            mode.error(cookie, errno, errno.message(), permits)
        }
    };
    // Closed only if the connection is closing; nothing to do.
    let _ = if to.alone() {
        to.replies.send(frame).await
    } else {
        to.replies.queue(frame).await
    };
}

/// Where a request's reply goes.
struct ReplyTo<W> {
    replies: Arc<Replies<W>>,
    requests: Arc<Semaphore>,
    inflight_max: usize,
    direct: bool,
}

impl<W> ReplyTo<W> {
    /// No other request is in flight (the caller still holds its own
    /// permit): the reply is written at once. With company, the writer task
    /// gathers the replies that are ready together into one write.
    fn alone(&self) -> bool {
        self.direct && self.requests.available_permits() + 1 >= self.inflight_max
    }
}
