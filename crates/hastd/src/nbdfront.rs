//! Binds the NBD server of `hast-nbd` to the resources' data paths.
//!
//! The [`Registry`] maps export names to the data paths of the resources
//! that are primary right now; the NBD server asks it for `LIST`/`GO`, so a
//! secondary or init resource is simply absent. Listeners: one TCP address
//! for all exports (`nbd_listen`) and, per primary resource, a Unix socket
//! `<nbd_socket_dir>/<name>.nbd` that exists only while it is primary — the
//! counterpart of FreeBSD's `/dev/hast/<name>`.
//!
//! Memory and connections are bounded for the daemon as a whole: all
//! listeners share one payload budget (`nbd_max_buffer`); a client past the
//! connection cap is refused during the handshake at once, never left in
//! the backlog; with `nbd_idle_timeout`, idle connections are dropped.
//!
//! With `nbd_tls`, every listener offers STARTTLS (`crate::nbdtls`); the
//! TLS settings are read per accepted connection, so a reload with new
//! certificates applies to the next connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hast_nbd::{BlockExtent, Budget, Errno, Export, ExportInfo, Exports, Limits, OpenError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::datapath::{Change, DataPath, DpError, RequestOp, Runs, Zeroing};
use crate::nbdtls::NbdTls;

/// NBD connections served at once per listener; more are refused.
const NBD_CONNECTIONS_MAX: usize = 256;
/// Refusals in progress at once per listener; past that a client over the
/// cap is closed without a word (it still does not hang).
const NBD_REFUSALS_MAX: usize = 16;
/// A refusal (greeting, then an error to each option) ends by then.
const NBD_REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Refusals are logged at most this often (with a count), so a flood of
/// connections cannot flood the log.
const NBD_REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);
/// Largest READ/WRITE payload (the NBD default maximum block size).
const NBD_PAYLOAD_MAX: u32 = 32 << 20;

#[derive(Default)]
pub struct Registry {
    exports: RwLock<HashMap<String, Arc<DataPath>>>,
    stopping: AtomicBool,
    /// Cloned into every connection: they share its payload budget.
    limits: Limits,
    /// `None`: plaintext only. Read once per accepted connection.
    tls: RwLock<Option<Arc<NbdTls>>>,
}

impl Registry {
    /// A registry whose connections follow `nbd_max_buffer` and
    /// `nbd_idle_timeout`. A payload must arrive within the idle timeout
    /// if one is set (a stalled payload is idleness too), else within
    /// [`hast_nbd::PAYLOAD_TIMEOUT`].
    pub fn new(config: &hast_conf::Config) -> Registry {
        let idle = match config.nbd_idle_timeout_secs {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        let budget = usize::try_from(config.nbd_max_buffer).unwrap_or(usize::MAX);
        Registry {
            limits: Limits {
                payload_max: NBD_PAYLOAD_MAX,
                budget: Arc::new(Budget::new(budget)),
                idle_timeout: idle,
                payload_timeout: idle.unwrap_or(hast_nbd::PAYLOAD_TIMEOUT),
                ..Limits::default()
            },
            ..Registry::default()
        }
    }

    pub fn insert(&self, name: &str, dp: Arc<DataPath>) {
        self.exports
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), dp);
    }

    pub fn remove(&self, name: &str) {
        self.exports
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Applies to connections accepted from now on.
    pub fn set_tls(&self, tls: Option<Arc<NbdTls>>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    pub fn tls(&self) -> Option<Arc<NbdTls>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
    }
}

/// One open export: a connection's handle on a primary's data path.
pub struct NbdExport {
    dp: Arc<DataPath>,
}

impl Exports for Registry {
    type Export = NbdExport;

    fn list(&self) -> Vec<(String, Option<String>)> {
        if self.stopping.load(Relaxed) {
            return Vec::new();
        }
        let map = self.exports.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<_> = map
            .keys()
            .map(|k| (k.clone(), Some(format!("hast resource {k} (primary)"))))
            .collect();
        names.sort();
        names
    }

    fn open(&self, name: &str) -> Result<Arc<NbdExport>, OpenError> {
        if self.stopping.load(Relaxed) {
            return Err(OpenError::shutdown("hastd is shutting down"));
        }
        let map = self.exports.read().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some(dp) if !dp.is_withdrawn() => Ok(Arc::new(NbdExport::new(dp.clone()))),
            _ => Err(OpenError::unknown(format!(
                "no primary resource \"{name}\" on this node"
            ))),
        }
    }
}

impl NbdExport {
    fn new(dp: Arc<DataPath>) -> NbdExport {
        dp.connection_opened();
        NbdExport { dp }
    }

    /// The last word before a modification or flush is acknowledged: once
    /// the primary's lease passed, success turns into ESHUTDOWN (the demotion
    /// that follows would give the same), whatever the timer's delay.
    fn ack(&self, res: Result<(), DpError>) -> Result<(), Errno> {
        match res {
            Ok(()) if !self.dp.ack_allowed() => Err(Errno::Shutdown),
            other => other.map_err(errno),
        }
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        self.dp.connection_closed();
    }
}

fn errno(e: DpError) -> Errno {
    match e {
        DpError::Shutdown => Errno::Shutdown,
        DpError::Unsupported => Errno::NotSup,
        // Errors of the component are EIO to the client whatever the cause:
        // an EINVAL from the disk must not read as "your request was bad".
        DpError::Io(e) => match Errno::from(&e) {
            Errno::NoSpc => Errno::NoSpc,
            _ => Errno::Io,
        },
    }
}

impl Export for NbdExport {
    fn info(&self) -> ExportInfo {
        let mut info = ExportInfo::new(self.dp.datasize());
        // One shared descriptor and a resource-wide flush: a FLUSH on any
        // connection covers writes completed on all of them.
        info.can_multi_conn = true;
        info.can_trim = true;
        info.can_zero = true;
        info.can_fast_zero = true;
        info.can_cache = true;
        info.min_block = 1;
        info.preferred_block = 4096;
        info.max_block = NBD_PAYLOAD_MAX;
        info.description = Some(format!("hast resource {}", self.dp.name()));
        info
    }

    async fn read(&self, offset: u64, buf: Vec<u8>) -> Result<Vec<u8>, Errno> {
        self.read_new(offset, buf.len() as u32).await
    }

    async fn read_new(&self, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let t = Instant::now();
        let res = self.dp.read(offset, len as usize).await.map_err(errno);
        self.dp.observe(RequestOp::Read, t.elapsed());
        res
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), Errno> {
        let t = Instant::now();
        let res = self.ack(self.dp.write(offset, data.into(), fua).await);
        self.dp.observe(RequestOp::Write, t.elapsed());
        res
    }

    async fn flush(&self) -> Result<(), Errno> {
        let t = Instant::now();
        let res = self.ack(self.dp.flush().await);
        self.dp.observe(RequestOp::Flush, t.elapsed());
        res
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), Errno> {
        let t = Instant::now();
        let res = self.ack(
            self.dp
                .zero(offset, Change::trim(u64::from(len)), fua)
                .await,
        );
        self.dp.observe(RequestOp::Trim, t.elapsed());
        res
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), Errno> {
        let t = Instant::now();
        let res = self.ack(
            self.dp
                .zero(
                    offset,
                    Change::write_zeroes(
                        u64::from(len),
                        Zeroing {
                            punch: may_trim,
                            fast_only,
                        },
                    ),
                    fua,
                )
                .await,
        );
        self.dp.observe(RequestOp::Zero, t.elapsed());
        res
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), Errno> {
        self.dp.cache(offset, u64::from(len)).await.map_err(errno)
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<BlockExtent>, Errno> {
        let runs = self
            .dp
            .allocation(
                offset,
                u64::from(len),
                if req_one { Runs::First } else { Runs::All },
            )
            .await
            .map_err(errno)?;
        Ok(runs
            .into_iter()
            .filter(|&(l, _)| l > 0)
            .map(|(l, hole)| BlockExtent {
                // Runs never exceed the request length, which is a u32.
                len: u32::try_from(l).unwrap_or(u32::MAX),
                hole,
                zero: hole,
            })
            .collect())
    }

    async fn withdrawn(&self) {
        self.dp.withdrawn().await
    }
}

/// Listens on `addr` (tcp://host:port) for NBD clients of every export.
pub async fn listen_tcp(
    addr: &hast_conf::Addr,
    registry: Arc<Registry>,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let hast_conf::Addr::Tcp { host, port } = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "nbd_listen must be a tcp:// address",
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = TcpListener::bind((host, *port)).await?;
    let local = listener.local_addr()?;
    let shown = local.to_string();
    let listener = Arc::new(listener);
    let task = tokio::spawn(accept_loop(registry, shown, move || {
        let listener = listener.clone();
        async move {
            let (stream, peer) = listener.accept().await?;
            // Small requests and replies: latency matters more than
            // batching; large replies: a send buffer that keeps them warm.
            let _ = hast_sys::tcp::tune_bulk(&stream);
            Ok((stream, peer.to_string()))
        }
    }));
    Ok((local, task))
}

/// Who may connect to a resource's Unix socket: its owner, group and mode
/// (`nbd_socket_owner`, `nbd_socket_group`, `nbd_socket_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl SocketAccess {
    /// Looks up the resource's owner and group. Unset, the owner is root and
    /// the group `disk` (root where no such group exists), as for a block
    /// device node. `Err` names the option, its line and what is missing.
    pub fn of(cfg: &hast_conf::Resource) -> Result<SocketAccess, (u32, String)> {
        let uid = match &cfg.nbd_socket_owner {
            None => 0,
            Some((name, line)) => hast_sys::sock::uid_of(name)
                .map_err(|e| (*line, format!("nbd_socket_owner \"{name}\": {e}")))?,
        };
        let gid = match &cfg.nbd_socket_group {
            None => hast_sys::sock::gid_of(hast_conf::defaults::NBD_SOCKET_GROUP).unwrap_or(0),
            Some((name, line)) => hast_sys::sock::gid_of(name)
                .map_err(|e| (*line, format!("nbd_socket_group \"{name}\": {e}")))?,
        };
        Ok(SocketAccess {
            uid,
            gid,
            mode: cfg.nbd_socket_mode,
        })
    }
}

impl std::fmt::Display for SocketAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uid {} gid {} mode {:04o}",
            self.uid, self.gid, self.mode
        )
    }
}

/// Who can reach the TCP listener bound at `local`, for `hastctl list`.
pub fn tcp_reach(local: &std::net::SocketAddr) -> String {
    if local.ip().is_loopback() {
        "any local user (loopback TCP, no authentication)".into()
    } else {
        format!("anyone who can reach {local} (TCP, no authentication)")
    }
}

/// Listens on the per-resource Unix socket `path`, owned and moded as `access`.
pub fn listen_unix(
    path: &Path,
    registry: Arc<Registry>,
    access: SocketAccess,
) -> std::io::Result<JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let std_listener = hast_sys::sock::bind_shared(path, access.uid, access.gid, access.mode)?;
    std_listener.set_nonblocking(true)?;
    let listener = Arc::new(tokio::net::UnixListener::from_std(std_listener)?);
    let shown = path.display().to_string();
    let peer = shown.clone();
    Ok(tokio::spawn(accept_loop(registry, shown, move || {
        let listener = listener.clone();
        let peer = peer.clone();
        async move {
            let (stream, _) = listener.accept().await?;
            Ok((stream, peer))
        }
    })))
}

/// Accepts connections with `accept` and serves each in its own task (a
/// plaintext listener over owned read and write halves: no lock shared
/// between a connection's reader and writer), at most
/// [`NBD_CONNECTIONS_MAX`] at once. A client past the cap
/// is refused at once rather than left in the backlog, where it would wait
/// for a slot that idle connections may never free.
async fn accept_loop<S, F, Fut>(registry: Arc<Registry>, shown: String, mut accept: F)
where
    S: hast_nbd::IntoHalves,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, String)>>,
{
    let slots = Arc::new(Semaphore::new(NBD_CONNECTIONS_MAX));
    let refusals = Arc::new(Semaphore::new(NBD_REFUSALS_MAX));
    let log = RefusalLog::default();
    loop {
        let (stream, peer) = match accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("NBD accept on {shown} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log.refused(&shown, &peer);
            // Dropping the halves (no refusal slot free) closes at once.
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                let (rd, wr) = stream.into_halves();
                tokio::spawn(async move {
                    let message = format!(
                        "hastd: too many NBD connections (at most {NBD_CONNECTIONS_MAX}), try again later"
                    );
                    let said = hast_nbd::refuse(rd, wr, &message);
                    if let Ok(Err(e)) = tokio::time::timeout(NBD_REFUSAL_TIMEOUT, said).await {
                        tracing::debug!(%peer, "NBD refusal ended: {e}");
                    }
                    drop(refusal);
                });
            }
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let limits = registry.limits.clone();
            let served = match registry.tls() {
                None => {
                    let (rd, wr) = stream.into_halves();
                    hast_nbd::serve_split(registry, rd, wr, peer.clone(), limits).await
                }
                Some(tls) => hast_nbd::serve_tls(registry, stream, tls, peer.clone(), limits).await,
            };
            match served {
                // Worth a line at the default level: an operator looking
                // for why a client could not connect finds it here.
                Err(e @ (hast_nbd::NbdError::Tls(_) | hast_nbd::NbdError::TlsRequired)) => {
                    tracing::info!(%peer, "NBD connection refused: {e}");
                }
                Err(e) => tracing::debug!(%peer, "NBD connection ended: {e}"),
                Ok(()) => {}
            }
            drop(permit);
        });
    }
}

/// Logs refused connections: the first at once, then at most one line per
/// [`NBD_REFUSAL_LOG_EVERY`] with the count since the last line.
#[derive(Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn refused(&self, shown: &str, peer: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 += 1;
        let due = st.0.is_none_or(|t| t.elapsed() >= NBD_REFUSAL_LOG_EVERY);
        if due {
            tracing::warn!(
                %peer,
                refused = st.1,
                "NBD connection refused on {shown}: {NBD_CONNECTIONS_MAX} connections already open"
            );
            *st = (Some(Instant::now()), 0);
        }
    }
}
