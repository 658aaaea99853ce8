//! The data path of a resource whose local component is open: every request
//! goes gate → range lock → activemap → local component and, on a primary
//! with a connected peer, the replication link → reply. It knows nothing of
//! NBD or of the control plane: the NBD front end (primary) and the
//! replication session (secondary) call it, and role changes only open,
//! drain and close it.
//!
//! Safety rules it enforces (see ARCHITECTURE.md, "Invariants"):
//! - an extent's activemap bit is durable before the first data write to it
//!   is issued (`write_start` → wait for the metadata writer's generation);
//! - a bit is cleared only after a data barrier (fdatasync, and the peer's
//!   flush once replication exists) that started after the extent went idle;
//! - while the configured peer is absent, written extents stay dirty
//!   (needsync) and `localcnt` is bumped durably before the first such write
//!   is acknowledged;
//! - with `fence_peer`, no write goes to the local component alone, and none
//!   is acknowledged without the peer (nor bumps `localcnt`), before the
//!   fence command succeeded for its degradation generation (`fence.rs`);
//! - once the primary's lease passed, no modification or flush is
//!   acknowledged with success (`lease.rs`);
//! - overlapping writes are applied in arrival order.

mod fence;
mod gate;
mod lease;
pub mod local;
mod peer;
mod progress;
mod rangelock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hast_conf::Replication;
use hast_meta::{ActiveMap, Header, Store};
use tokio::sync::{watch, Notify};

use crate::link::{InFlight, Link, RemoteError};
pub use fence::Fence;
use gate::Gate;
pub use lease::{lease_deadline, Lease};
use local::LocalData;
pub use peer::PeerState;
pub use progress::Progress;
pub use rangelock::RangeGuard;
use rangelock::RangeLock;

/// Writes up to this size that cover whole pages and ask for no FUA are
/// copied into the page cache on the runtime thread itself: a buffered pwrite
/// of whole pages reads nothing from the device, and is cheaper than the
/// trip to the blocking pool and back (measured: 4 KiB QD1 write latency of a
/// fullsync pair 106 -> 78 us). It can still sleep in the kernel (dirty-page
/// throttling, reclaim), which stalls every task of the runtime as long: so
/// one that takes longer than [`INLINE_SLOW`] sends small writes to the
/// blocking pool for [`INLINE_PAUSE`]. Larger writes, partial pages, zeroing
/// and syncs always go to the blocking pool.
const INLINE_WRITE_MAX: usize = 64 << 10;
/// An inline write this slow slept in the kernel: dirty-page throttling
/// pauses last 10-200 ms. Shorter delays are mostly the thread losing its
/// core to another process, which the blocking pool would not avoid.
const INLINE_SLOW: Duration = Duration::from_millis(20);
/// How long small writes then stay on the blocking pool.
const INLINE_PAUSE: Duration = Duration::from_secs(1);
/// Reads up to this size are first tried from the page cache on the worker
/// (`read_cached`, which never waits for the device).
const INLINE_READ_MAX: usize = 256 << 10;
/// The page size the inline-write rule counts whole pages in.
const PAGE: u64 = 4096;

/// How often idle clean-up of the activemap runs when writes happened.
const IDLE_BARRIER_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on one run of the `fence_peer` command; it is killed after this.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait between failed runs of the `fence_peer` command.
const FENCE_RETRY: Duration = Duration::from_secs(1);
/// Output of one `fence_peer` run kept for the log, per stream.
const FENCE_OUTPUT_MAX: usize = 4096;
/// Output lines of one `fence_peer` run written to the log.
const FENCE_LOG_LINES: usize = 20;
/// A command that keeps failing is logged on its first failure and then
/// once per this many attempts.
const FENCE_LOG_EVERY: u64 = 30;

/// Why a request failed, independent of the transport that carried it.
#[derive(Debug, thiserror::Error)]
pub enum DpError {
    /// The resource is being demoted or hastd is stopping.
    #[error("resource is shutting down")]
    Shutdown,
    /// The local component (or its metadata) failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A fast zero was asked for and only a slow one is possible.
    #[error("operation not supported")]
    Unsupported,
}

/// Counters published in `hastctl list`; relaxed atomics, never a lock.
#[derive(Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub zeroes: AtomicU64,
    pub flushes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub activemap_updates: AtomicU64,
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub delete_errors: AtomicU64,
    pub flush_errors: AtomicU64,
    pub connections: AtomicU64,
    pub resynced_bytes: AtomicU64,
}

/// Which end of the replication this data path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Serves clients; replicates to the peer when one is connected.
    Primary,
    /// Applies what the primary replicates; serves no clients.
    Secondary,
}

/// Resync progress, published for `hastctl status`.
#[derive(Default)]
pub struct SyncCounters {
    pub active: AtomicBool,
    pub total_bytes: AtomicU64,
    pub done_bytes: AtomicU64,
    /// Data bytes actually transferred (holes excluded), for `resync_rate`.
    pub copied_bytes: AtomicU64,
    pub started: Mutex<Option<Instant>>,
}

/// What a modification does to the range.
pub enum Change {
    /// Shared, not copied, with the replication link's queue.
    Write(Bytes),
    /// Zeroes; `punch` allows deallocation, `fast_only` fails rather than
    /// writing zeroes slowly, `trim` counts it as a TRIM.
    Zero {
        len: u64,
        punch: bool,
        fast_only: bool,
        trim: bool,
    },
}

impl Change {
    /// NBD TRIM: the range may be deallocated, and reads as zeroes on both
    /// copies (so they stay identical).
    pub fn trim(len: u64) -> Change {
        Change::Zero {
            len,
            punch: true,
            fast_only: false,
            trim: true,
        }
    }

    /// NBD WRITE_ZEROES with its flags: `may_punch` (no NO_HOLE),
    /// `fast_only` (FAST_ZERO).
    pub fn write_zeroes(len: u64, may_punch: bool, fast_only: bool) -> Change {
        Change::Zero {
            len,
            punch: may_punch,
            fast_only,
            trim: false,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct FlushState {
    gen: u64,
    failures: u64,
}

pub struct DataPath {
    pub name: String,
    pub side: Side,
    store: Arc<Store>,
    pub datasize: u64,
    data_offset: u64,
    header: tokio::sync::Mutex<Header>,
    map: Mutex<ActiveMap>,
    meta_kick: Notify,
    flushed: watch::Sender<FlushState>,
    metaflush: AtomicBool,
    ranges: Arc<RangeLock>,
    gate: Arc<Gate>,
    /// A peer is configured (`remote` is not `none`).
    peer_configured: bool,
    /// The live replication link (primary side), if connected.
    link: RwLock<Option<Arc<Link>>>,
    replication: AtomicU8,
    resync_rate: AtomicU64,
    /// Resync runs secondary → primary: reads of needsync extents go to the peer.
    pub sync_from_peer: AtomicBool,
    pub sync: SyncCounters,
    peer_state: Mutex<PeerState>,
    /// What the live link's TLS negotiated (`tls::TlsInfo` as text), `None`
    /// over plain TCP or while disconnected.
    peer_tls: Mutex<Option<String>>,
    /// `localcnt` was bumped for the current degraded period.
    degraded_recorded: AtomicBool,
    writes_since_barrier: AtomicU64,
    pub counters: Counters,
    /// The primary's lease; never set on a secondary.
    pub lease: Lease,
    /// Degradation generations and `fence_peer` (primary with a peer only).
    pub fence: Fence,
    /// This node's name and the peer's address, for the fence command.
    fence_env: (String, String),
    /// Time base of `inline_paused_until`.
    opened: Instant,
    /// Whether the local component completes what it is given.
    pub progress: Progress,
    /// Inline writes are paused until this many ms after `opened` (see
    /// [`INLINE_SLOW`]).
    inline_paused_until: AtomicU64,
    /// The component's writes can be page-cache copies at all (not on FUSE,
    /// see [`page_cache_writes`]); if not, no write is inline.
    inline_ok: bool,
}

impl DataPath {
    /// Opens the data path over a component whose header was read and
    /// checked by the caller.
    pub fn open(
        name: &str,
        node: &str,
        side: Side,
        store: Arc<Store>,
        header: Header,
        cfg: &hast_conf::Resource,
    ) -> Result<Arc<DataPath>, hast_meta::MetaError> {
        let peer_configured = cfg.remote.is_some();
        let fences = side == Side::Primary && peer_configured;
        let ondisk = store.read_map(&header)?;
        let map = ActiveMap::new(
            header.extentsize,
            header.datasize,
            header.keepdirty,
            &ondisk,
            peer_configured,
        )?;
        let inline_ok = page_cache_writes(store.file());
        if !inline_ok {
            tracing::info!(resource = %name, "component on FUSE: every write goes to the blocking pool");
        }
        let dp = Arc::new(DataPath {
            name: name.to_string(),
            side,
            datasize: header.datasize,
            data_offset: header.data_offset,
            store,
            header: tokio::sync::Mutex::new(header),
            map: Mutex::new(map),
            meta_kick: Notify::new(),
            flushed: watch::Sender::new(FlushState::default()),
            metaflush: AtomicBool::new(cfg.metaflush),
            ranges: Arc::new(RangeLock::new()),
            gate: Arc::new(Gate::default()),
            peer_configured,
            link: RwLock::new(None),
            replication: AtomicU8::new(mode_code(cfg.replication)),
            resync_rate: AtomicU64::new(cfg.resync_rate),
            sync_from_peer: AtomicBool::new(false),
            sync: SyncCounters::default(),
            peer_tls: Mutex::new(None),
            peer_state: Mutex::new(PeerState::initial(peer_configured)),
            degraded_recorded: AtomicBool::new(false),
            writes_since_barrier: AtomicU64::new(0),
            counters: Counters::default(),
            lease: Lease::default(),
            fence: Fence::new(cfg.fence_peer.as_deref().filter(|_| fences)),
            fence_env: (
                node.to_string(),
                cfg.remote
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string),
            ),
            opened: Instant::now(),
            progress: Progress::new(),
            inline_paused_until: AtomicU64::new(0),
            inline_ok,
        });
        tokio::spawn(dp.clone().metadata_writer());
        if side == Side::Primary {
            tokio::spawn(dp.clone().lease_guard());
        }
        Ok(dp)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, ActiveMap> {
        // A poisoned lock means a panic in pure activemap code: carrying on
        // with its state is still better than refusing every write.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Options that apply live on SIGHUP.
    pub fn reconfigure(&self, cfg: &hast_conf::Resource) {
        self.metaflush.store(cfg.metaflush, Relaxed);
        self.replication.store(mode_code(cfg.replication), Relaxed);
        self.resync_rate.store(cfg.resync_rate, Relaxed);
        if self.side == Side::Primary && self.peer_configured {
            self.fence.set_command(cfg.fence_peer.as_deref());
        }
    }

    /// `resync_rate` in bytes per second, 0 = unlimited.
    pub fn resync_rate(&self) -> u64 {
        self.resync_rate.load(Relaxed)
    }

    pub fn replication(&self) -> Replication {
        match self.replication.load(Relaxed) {
            1 => Replication::Memsync,
            2 => Replication::Async,
            _ => Replication::Fullsync,
        }
    }

    pub fn link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|l| !l.is_dead())
            .cloned()
    }

    /// Installs (or removes) the replication link. A new link starts a new
    /// in-sync period: the next disconnection counts as a new degraded one.
    pub fn set_link(&self, link: Option<Arc<Link>>) {
        let installed = link.is_some();
        if installed {
            self.degraded_recorded.store(false, Relaxed);
        }
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = link;
        if installed {
            // After the store: a held write woken by this finds the link.
            self.fence.linked();
        }
    }

    pub fn set_peer_state(&self, s: PeerState) {
        *self.peer_state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn set_peer_tls(&self, tls: Option<String>) {
        *self.peer_tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    pub fn peer_tls(&self) -> Option<String> {
        self.peer_tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn peer_state(&self) -> PeerState {
        self.peer_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn peer_connected(&self) -> bool {
        self.link().is_some()
    }

    pub fn map_lock(&self) -> std::sync::MutexGuard<'_, ActiveMap> {
        self.map()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn ranges(&self) -> &Arc<RangeLock> {
        &self.ranges
    }

    /// Waits until every activemap bit set so far is durable.
    pub async fn persist_map(&self) -> Result<(), DpError> {
        let (need, failures) = {
            let failures = self.flushed.borrow().failures;
            (self.map().pending_gen(), failures)
        };
        let Some(gen) = need else { return Ok(()) };
        self.wait_flushed(gen, failures).await
    }

    async fn wait_flushed(&self, gen: u64, failures: u64) -> Result<(), DpError> {
        self.meta_kick.notify_one();
        let mut rx = self.flushed.subscribe();
        let state = rx
            .wait_for(|s| s.gen >= gen || s.failures != failures)
            .await
            .map(|s| *s)
            .unwrap_or_default();
        if state.gen >= gen {
            Ok(())
        } else {
            Err(DpError::Io(io::Error::other("activemap update failed")))
        }
    }

    /// Runs blocking local I/O on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalData<'_>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let store = self.store.clone();
        let data_offset = self.data_offset;
        let _pending = self.progress.begin();
        tokio::task::spawn_blocking(move || {
            f(LocalData {
                file: store.file(),
                data_offset,
            })
        })
        .await
        .map_err(|e| io::Error::other(format!("I/O worker failed: {e}")))?
    }

    pub async fn read(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        let len = buf.len() as u64;
        // A stale primary (resync from the peer running) must not serve its
        // own old copy of an extent the peer has newer.
        if self.sync_from_peer.load(Relaxed) && self.any_needsync(offset, len) {
            if let Some(data) = self.read_peer(offset, len).await {
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len, Relaxed);
                return Ok(data);
            }
            return Err(DpError::Io(io::Error::other(
                "extent not yet resynced and the peer is unreachable",
            )));
        }
        let res = match self.read_cached(offset, &mut buf) {
            Ok(true) => Ok(buf),
            Ok(false) => {
                self.blocking(move |d| d.read(offset, &mut buf).map(|()| buf))
                    .await
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(buf) => {
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len, Relaxed);
                Ok(buf)
            }
            Err(e) => {
                self.counters.read_errors.fetch_add(1, Relaxed);
                tracing::error!(resource = %self.name, offset, len, "local read failed: {e}");
                // The secondary has the same data: retry there.
                if let Some(data) = self.read_peer(offset, len).await {
                    tracing::warn!(resource = %self.name, offset, len, "read served by the peer");
                    return Ok(data);
                }
                Err(e.into())
            }
        }
    }

    /// Fills `buf` from the page cache without leaving the worker, if all of
    /// it is cached; `Ok(false)` sends the caller to the blocking pool.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if buf.len() > INLINE_READ_MAX {
            return Ok(false);
        }
        self.local().read_cached(offset, buf)
    }

    fn local(&self) -> LocalData<'_> {
        LocalData {
            file: self.store.file(),
            data_offset: self.data_offset,
        }
    }

    /// The range from the peer's copy, if connected and it answered in full.
    async fn read_peer(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let data = self.link()?.read(offset, len as u32, 0).await.ok()?;
        (data.len() as u64 == len).then_some(data)
    }

    fn any_needsync(&self, offset: u64, len: u64) -> bool {
        let m = self.map();
        let first = m.extent_of(offset);
        let last = m.extent_of(offset + len.max(1) - 1);
        (first..=last).any(|e| m.is_needsync(e))
    }

    pub async fn write(
        self: &Arc<Self>,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), DpError> {
        self.modify(offset, fua, Change::Write(data), None).await
    }

    /// TRIM or WRITE_ZEROES (`Change::trim`, `Change::write_zeroes`): both
    /// leave the range reading as zeroes so that the two copies stay
    /// identical.
    pub async fn zero(
        self: &Arc<Self>,
        offset: u64,
        how: Change,
        fua: bool,
    ) -> Result<(), DpError> {
        self.modify(offset, fua, how, None).await
    }

    /// Every modification: ordered, recorded in the activemap first, applied
    /// locally and sent to the peer at the same time, acknowledged when the
    /// replication mode allows. `ticket` is a place in line taken earlier
    /// (the secondary takes it in the primary's order).
    pub async fn modify(
        self: &Arc<Self>,
        offset: u64,
        fua: bool,
        change: Change,
        ticket: Option<RangeGuard>,
    ) -> Result<(), DpError> {
        let pass = self.gate.enter_owned().ok_or(DpError::Shutdown)?;
        if self.lease.expired() {
            // The demotion is on its way; nothing more is written here.
            return Err(DpError::Shutdown);
        }
        let len = match &change {
            Change::Write(d) => d.len() as u64,
            Change::Zero { len, .. } => *len,
        };
        let range = match ticket {
            Some(t) => t.acquire().await,
            None => self.ranges.lock(offset, len).await,
        };
        let mut link = match self.side {
            Side::Primary => self.link(),
            Side::Secondary => None,
        };
        if link.is_none() && self.side == Side::Primary && self.peer_configured {
            // Not issued anywhere yet: a link that comes back while the
            // fence is pending takes it.
            link = self.hold_degraded(true).await?;
            if link.is_none() {
                self.record_degraded().await?;
            }
        }
        if self.side == Side::Secondary {
            // The secondary keeps no activemap of what the primary sends: the
            // primary marked those extents dirty before sending and clears
            // them only after a flush of both copies, so its map (merged at
            // the next handshake) already covers anything this copy might
            // lack after a crash. Skipping it saves a synchronous metadata
            // write per replicated write.
            let op = op_of(&change);
            let res = self.apply_local(offset, fua, change).await;
            self.count(op, len, &res);
            drop(range);
            drop(pass);
            return res;
        }
        self.mark_dirty(offset, len).await?;
        let mode = self.replication();
        let op = op_of(&change);
        let remote = match &change {
            Change::Write(d) => {
                self.send(&link, offset, Payload::Data(d), 0, fua, mode)
                    .await
            }
            Change::Zero { punch, .. } => {
                let flags = if *punch { hast_repl::flags::PUNCH } else { 0 };
                // Zero requests are bounded by the NBD payload limit (u32).
                let n = u32::try_from(len).unwrap_or(u32::MAX);
                self.send(&link, offset, Payload::Zero(n), flags, fua, mode)
                    .await
            }
        };
        if remote.is_none() && link.is_some() && self.peer_configured {
            // The link died as the change was being sent: it goes to this
            // copy alone, so the fence comes first, as for any degraded write.
            let held = match self.hold_degraded(false).await {
                Ok(_) => self.record_degraded().await,
                Err(e) => Err(e),
            };
            if let Err(e) = held {
                self.map().write_done(offset, len, false);
                return Err(e);
            }
        }
        let res = self.apply_local(offset, fua, change).await;
        self.count(op, len, &res);
        let Some(mut remote) = remote else {
            // No peer now (or the send failed): only this copy has it, and
            // the degraded period was recorded above. (Only the primary gets
            // here: the secondary returned above.)
            let in_sync = !self.peer_configured;
            self.map().write_done(offset, len, in_sync && res.is_ok());
            self.writes_since_barrier.fetch_add(1, Relaxed);
            return res;
        };
        match mode {
            Replication::Fullsync => {
                let r = remote.done().await;
                self.finish_remote(offset, len, &res, r.map(|_| ()), &link)
                    .await?;
                res
            }
            Replication::Memsync | Replication::Async => {
                if mode == Replication::Memsync && remote.received().await.is_err() {
                    self.finish_remote(offset, len, &res, Err(RemoteError::Down), &link)
                        .await?;
                    return res;
                }
                // Already applied there (a write the secondary copies into
                // its page cache at once answers with the REPLY alone).
                let remote = match remote.try_done() {
                    Ok(r) => {
                        self.finish_remote(offset, len, &res, r.map(|_| ()), &link)
                            .await?;
                        return res;
                    }
                    Err(remote) => remote,
                };
                // The client is answered now; the peer's completion is
                // recorded when it comes, still holding the range so that
                // overlapping writes stay ordered on both copies.
                let dp = self.clone();
                let ok = res.is_ok();
                tokio::spawn(async move {
                    let r = remote.done().await;
                    let local: Result<(), DpError> = if ok {
                        Ok(())
                    } else {
                        Err(DpError::Io(io::Error::other("local write failed")))
                    };
                    let _ = dp
                        .finish_remote(offset, len, &local, r.map(|_| ()), &link)
                        .await;
                    drop(range);
                    drop(pass);
                });
                res
            }
        }
    }

    /// Sends the change to the peer when a link is up; `None` if there is no
    /// link or it just died (the caller then treats the write as degraded).
    async fn send(
        &self,
        link: &Option<Arc<Link>>,
        offset: u64,
        payload: Payload<'_>,
        flags: u8,
        fua: bool,
        mode: Replication,
    ) -> Option<InFlight> {
        let link = link.as_ref()?;
        let mut flags = flags;
        if fua && mode != Replication::Async {
            flags |= hast_repl::flags::FUA;
        }
        let memsync = mode == Replication::Memsync;
        let r = match payload {
            Payload::Data(d) => link.write(offset, d, flags, memsync).await,
            Payload::Zero(len) => link.zero(offset, len, flags, memsync).await,
        };
        r.ok()
    }

    async fn apply_local(&self, offset: u64, fua: bool, change: Change) -> Result<(), DpError> {
        let res = match change {
            Change::Write(data) if self.applies_in_memory(offset, data.len(), fua) => {
                let started = Instant::now();
                let pending = self.progress.begin();
                let res = self.local().write(offset, &data);
                drop(pending);
                if started.elapsed() > INLINE_SLOW {
                    self.pause_inline();
                }
                res
            }
            // The change and its FUA sync in one trip to the blocking pool.
            change => self.apply_blocking(offset, fua, change).await,
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Err(DpError::Unsupported),
            Err(e) => {
                tracing::error!(resource = %self.name, offset, "local write failed: {e}");
                Err(e.into())
            }
        }
    }

    /// This write would be copied into the page cache at once, on the
    /// runtime thread: small, whole pages, no FUA ([`inline_write`]), and
    /// small writes not paused after a slow one. Such a write is in memory as
    /// soon as it is applied, so a memsync secondary answers it with its
    /// REPLY alone, no RECEIVED before it.
    pub fn applies_in_memory(&self, offset: u64, len: usize, fua: bool) -> bool {
        let now = self.opened.elapsed().as_millis() as u64;
        self.inline_ok
            && inline_write(offset, len, fua)
            && now >= self.inline_paused_until.load(Relaxed)
    }

    fn pause_inline(&self) {
        let until = (self.opened.elapsed() + INLINE_PAUSE).as_millis() as u64;
        self.inline_paused_until.store(until, Relaxed);
        tracing::debug!(resource = %self.name, "slow page-cache write: small writes use the blocking pool for {INLINE_PAUSE:?}");
    }

    async fn apply_blocking(&self, offset: u64, fua: bool, change: Change) -> io::Result<()> {
        self.blocking(move |d| {
            match change {
                Change::Write(data) => d.write(offset, &data)?,
                Change::Zero {
                    len,
                    punch,
                    fast_only,
                    ..
                } => d.zero(offset, len, punch, fast_only)?,
            }
            if fua {
                d.datasync()?;
            }
            Ok(())
        })
        .await
    }

    /// Records the outcome of a replicated change. A change that did not
    /// reach the peer makes this copy the newer one: the fence (when set)
    /// succeeds and the counters say so durably before the client can be
    /// told the write succeeded; a demotion while the fence is pending fails
    /// it unacknowledged, its extents left needsync.
    async fn finish_remote(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        local: &Result<(), DpError>,
        remote: Result<(), RemoteError>,
        link: &Option<Arc<Link>>,
    ) -> Result<(), DpError> {
        let in_sync = remote.is_ok() && local.is_ok();
        let mut res = Ok(());
        if let Err(e) = remote {
            if let Some(l) = link {
                // An error from the secondary's disk leaves its copy behind:
                // drop the link so the next connection resyncs.
                l.fail(&format!("replication failed: {e}"));
            }
            res = match self.hold_degraded(false).await {
                Ok(_) => self.record_degraded().await,
                Err(e) => Err(e),
            };
        }
        self.map().write_done(offset, len, in_sync);
        self.writes_since_barrier.fetch_add(1, Relaxed);
        res
    }

    fn count(&self, op: Op, len: u64, res: &Result<(), DpError>) {
        let c = &self.counters;
        match (res, op) {
            (Ok(()), Op::Write) => {
                c.writes.fetch_add(1, Relaxed);
                c.bytes_written.fetch_add(len, Relaxed);
            }
            (Ok(()), Op::Trim) => {
                c.deletes.fetch_add(1, Relaxed);
            }
            (Ok(()), Op::Zero) => {
                c.zeroes.fetch_add(1, Relaxed);
            }
            (Err(DpError::Unsupported), _) => {}
            (Err(_), Op::Write | Op::Zero) => {
                c.write_errors.fetch_add(1, Relaxed);
            }
            (Err(_), Op::Trim) => {
                c.delete_errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// Marks the extents of the range dirty and waits until that is durable.
    /// A sequential writer's next extent is marked ahead (`dirty_ahead`),
    /// flushed without anyone waiting for it.
    async fn mark_dirty(&self, offset: u64, len: u64) -> Result<(), DpError> {
        let (need, ahead, failures) = {
            let failures = self.flushed.borrow().failures;
            let mut map = self.map();
            let need = map.write_start(offset, len);
            (need, map.dirty_ahead(offset, len), failures)
        };
        let Some(gen) = need else {
            if ahead.is_some() {
                self.meta_kick.notify_one();
            }
            return Ok(());
        };
        if let Err(e) = self.wait_flushed(gen, failures).await {
            self.map().write_done(offset, len, false);
            return Err(e);
        }
        Ok(())
    }

    /// First write of a degraded period: the peer will miss it, so the
    /// counters must say this copy is newer before anything is acknowledged.
    async fn record_degraded(&self) -> Result<(), DpError> {
        if self.degraded_recorded.load(Relaxed) {
            return Ok(());
        }
        let mut h = self.header.lock().await;
        if self.degraded_recorded.load(Relaxed) {
            return Ok(());
        }
        self.write_header_locked(&mut h, |n| n.localcnt += 1)
            .await?;
        self.degraded_recorded.store(true, Relaxed);
        tracing::warn!(resource = %self.name, localcnt = h.localcnt, "peer absent: writing degraded");
        Ok(())
    }

    /// The reply path's last check before a modification or flush is
    /// acknowledged with success: false once the lease passed (the timer
    /// that demotes may run late). One atomic load, a clock read only while
    /// a lease is set.
    #[inline]
    pub fn ack_allowed(&self) -> bool {
        !self.lease.expired()
    }

    /// A write is about to go to this copy without the peer (`reroute`: not
    /// issued anywhere yet) or to be acknowledged without it (already
    /// applied, its replication failed). With `fence_peer` set, holds it
    /// until the command succeeded for its degradation generation; a
    /// `reroute` write instead takes a link that comes back meanwhile
    /// (returned). A demotion ends the wait with `Shutdown`. Without
    /// `fence_peer`, or once fenced, returns at once (one atomic check).
    async fn hold_degraded(self: &Arc<Self>, reroute: bool) -> Result<Option<Arc<Link>>, DpError> {
        let mut g = self.fence.degraded_generation();
        if self.fence.allows(g) {
            return Ok(None);
        }
        let _waiter = self.fence.waiter();
        loop {
            let changed = self.fence.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if reroute {
                if let Some(l) = self.link() {
                    return Ok(Some(l));
                }
                // Still alone: the link may have come and gone meanwhile.
                g = self.fence.degraded_generation();
            }
            if self.fence.allows(g) {
                return Ok(None);
            }
            if self.gate.is_closed() {
                return Err(DpError::Shutdown);
            }
            self.start_fencer();
            tokio::select! {
                _ = changed => {}
                _ = self.gate.closed() => return Err(DpError::Shutdown),
            }
        }
    }

    /// Enforces the lease on the data path itself, at the deadline: closes
    /// the gate (no new request, and a write held for `fence_peer` fails
    /// with `Shutdown` at once) and fails the link, so a write waiting for a
    /// peer that does not answer fails too, unacknowledged, its extents left
    /// dirty. It must not wait for the resource task, which demotes only
    /// when it gets to it: it may be awaiting something else (a role change
    /// draining exactly these writes, a peer flush), and a held write would
    /// then outlive the lease by whatever that takes (the peer's timeout).
    async fn lease_guard(self: Arc<Self>) {
        tokio::select! {
            _ = self.lease.passed() => {}
            _ = self.gate.closed() => return,
        }
        tracing::warn!(resource = %self.name, "lease expired: refusing requests, failing held writes");
        self.gate.close();
        if let Some(link) = self.link() {
            link.fail("lease expired");
        }
    }

    fn start_fencer(self: &Arc<Self>) {
        if self.fence.start_running() {
            tokio::spawn(self.clone().fencer());
        }
    }

    /// Runs `fence_peer` for the current generation until it succeeds,
    /// retrying every [`FENCE_RETRY`], for as long as this is primary and
    /// degraded (no link, or writes still held from before the link came
    /// back). Never in the data path: held writes only wait for its result.
    async fn fencer(self: Arc<Self>) {
        let (node, peer) = self.fence_env.clone();
        let mut attempts: u64 = 0;
        let mut last_gen = 0;
        let mut last_output: Vec<String> = Vec::new();
        loop {
            let g = self.fence.generation();
            if self.gate.is_closed() || self.fence.fenced() >= g {
                break;
            }
            if self.link().is_some() && self.fence.waiting() == 0 {
                // Back on the replicated path and nobody waits for this one.
                break;
            }
            let Some(command) = self.fence.command() else {
                break;
            };
            if g != last_gen {
                (last_gen, attempts) = (g, 0);
            }
            attempts += 1;
            let epoch = self.header().await.epoch;
            let env = [
                ("HAST_RESOURCE", self.name.clone()),
                ("HAST_NODE", node.clone()),
                ("HAST_PEER", peer.clone()),
                ("HAST_EPOCH", epoch.to_string()),
                ("HAST_FENCE_SEQ", g.to_string()),
            ];
            if attempts == 1 {
                tracing::warn!(resource = %self.name, seq = g, epoch, "peer lost: fencing it before writing alone (fence_peer)");
            }
            let run = tokio::select! {
                r = crate::hook::run(&command, &env, FENCE_TIMEOUT, FENCE_OUTPUT_MAX) => r,
                // Dropping the run kills the command's process group.
                _ = self.gate.closed() => break,
            };
            let output = run.lines(FENCE_LOG_LINES);
            if output != last_output {
                for line in &output {
                    tracing::info!(resource = %self.name, seq = g, "fence_peer: {line}");
                }
                last_output = output;
            }
            if run.success() {
                self.fence.succeeded(g);
                tracing::info!(resource = %self.name, seq = g, epoch, attempts, "fence_peer succeeded: writing without the peer");
                continue;
            }
            if attempts == 1 || attempts.is_multiple_of(FENCE_LOG_EVERY) {
                tracing::warn!(resource = %self.name, seq = g, epoch, attempts, "fence_peer failed ({}); writes held, retrying every {}s", run.ended, FENCE_RETRY.as_secs());
            }
            tokio::select! {
                _ = tokio::time::sleep(FENCE_RETRY) => {}
                _ = self.gate.closed() => break,
            }
        }
        self.fence.stop_running();
    }

    pub async fn flush(&self) -> Result<(), DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        if self.lease.expired() {
            return Err(DpError::Shutdown);
        }
        let res = self.barrier().await;
        self.counters.flushes.fetch_add(1, Relaxed);
        if let Err(e) = &res {
            self.counters.flush_errors.fetch_add(1, Relaxed);
            tracing::error!(resource = %self.name, "flush failed: {e}");
        }
        res.map_err(DpError::from)
    }

    /// Makes every completed write durable on this copy and, when connected,
    /// on the peer; then lets the activemap clear the extents that were idle
    /// before it started. Without the peer's flush nothing is cleared (its
    /// copy of those extents may still be only in its page cache), but the
    /// local flush still succeeds: the resource runs degraded.
    pub async fn barrier(&self) -> io::Result<()> {
        let ticket = self.map().barrier_start();
        self.writes_since_barrier.store(0, Relaxed);
        let link = match self.side {
            Side::Primary => self.link(),
            Side::Secondary => None,
        };
        let remote = async {
            match &link {
                Some(l) => l.flush().await.is_ok(),
                None => !(self.side == Side::Primary && self.peer_configured),
            }
        };
        let (local, remote_ok) = tokio::join!(self.blocking(|d| d.datasync()), remote);
        local?;
        // Without the peer's flush nothing is cleared: the extents stay dirty
        // and the next connection copies them. No counter changes here: every
        // write the peer missed was already recorded degraded by itself, and a
        // clean demotion must not look like a degraded period.
        if remote_ok {
            self.map().barrier_done(ticket);
            // Cleared bits go out lazily; nothing waits for them.
            self.meta_kick.notify_one();
        }
        Ok(())
    }

    /// Resync access: the caller holds the extent's range lock and its bit
    /// is already durable (needsync), so no gate and no activemap here.
    pub async fn read_unlocked(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.blocking(move |d| {
            let mut buf = vec![0u8; len];
            d.read(offset, &mut buf).map(|()| buf)
        })
        .await
    }

    pub async fn write_unlocked(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        let all_zero = data.iter().all(|&b| b == 0);
        let len = data.len() as u64;
        if all_zero {
            // Keep the copy as sparse as its source.
            self.blocking(move |d| d.zero(offset, len, true, false))
                .await
        } else {
            self.blocking(move |d| d.write(offset, &data)).await
        }
    }

    pub async fn allocation_unlocked(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.blocking(move |d| d.allocation(offset, len, false))
            .await
    }

    pub async fn cache(&self, offset: u64, len: u64) -> Result<(), DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        Ok(self.blocking(move |d| d.prefetch(offset, len)).await?)
    }

    /// Allocation runs `(length, is_hole)` of the range (BLOCK_STATUS).
    pub async fn allocation(
        &self,
        offset: u64,
        len: u64,
        one: bool,
    ) -> Result<Vec<(u64, bool)>, DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        Ok(self
            .blocking(move |d| d.allocation(offset, len, one))
            .await?)
    }

    /// Resolves when the data path stops taking requests.
    pub async fn withdrawn(&self) {
        self.gate.closed().await
    }

    pub fn is_withdrawn(&self) -> bool {
        self.gate.is_closed()
    }

    /// Closes the data path: refuses new requests, waits for those in flight,
    /// makes data durable, writes the activemap out. Returns the header the
    /// caller updates (role, counters) with [`DataPath::write_header`].
    pub async fn close(&self) -> Result<Header, DpError> {
        self.gate.close_and_drain().await;
        let barrier = self.barrier().await;
        let map_res = self.write_whole_map().await;
        barrier?;
        map_res?;
        Ok(self.header.lock().await.clone())
    }

    async fn write_whole_map(&self) -> io::Result<()> {
        let bytes = self.map().map_bytes().to_vec();
        let header = self.header.lock().await.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let pages: Vec<(u64, Vec<u8>)> = bytes
                .chunks(4096)
                .enumerate()
                .map(|(i, c)| (i as u64 * 4096, c.to_vec()))
                .collect();
            store.write_map_pages(&header, &pages)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
        .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Writes a new header generation built from the current one by `f`.
    pub async fn update_header(&self, f: impl FnOnce(&mut Header)) -> Result<Header, DpError> {
        let mut h = self.header.lock().await;
        self.write_header_locked(&mut h, f).await?;
        Ok(h.clone())
    }

    /// Writes the next header generation (crash-atomic slot update) built
    /// by `f`, and only then makes it the current one in memory.
    async fn write_header_locked(
        &self,
        current: &mut Header,
        f: impl FnOnce(&mut Header),
    ) -> Result<(), DpError> {
        let mut next = current.clone();
        f(&mut next);
        next.generation = current.generation + 1;
        let store = self.store.clone();
        let written = next.clone();
        let _pending = self.progress.begin();
        tokio::task::spawn_blocking(move || store.write_header(&written))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        *current = next;
        Ok(())
    }

    pub async fn header(&self) -> Header {
        self.header.lock().await.clone()
    }

    pub fn dirty_bytes(&self) -> u64 {
        let m = self.map();
        m.dirty_count() * u64::from(m.extentsize())
    }

    pub fn inflight(&self) -> u64 {
        self.gate.inflight()
    }

    /// Owns every activemap write: batches the changes of all writers waiting
    /// on it into one durable write (group commit), publishes the generation
    /// made durable, and runs the idle barrier that lets clean extents be
    /// cleared when clients never flush.
    async fn metadata_writer(self: Arc<Self>) {
        let mut idle = tokio::time::interval(IDLE_BARRIER_INTERVAL);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.meta_kick.notified() => {}
                _ = idle.tick() => {
                    if self.writes_since_barrier.load(Relaxed) > 0 && !self.gate.is_closed() {
                        if let Err(e) = self.barrier().await {
                            tracing::warn!(resource = %self.name, "idle barrier failed: {e}");
                        }
                    }
                }
                _ = self.gate.closed() => {
                    // close() writes the whole map itself; leave once drained.
                    if self.gate.inflight() == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // One job at a time; writers that arrived during a job are
            // covered by the next one, so keep going until nothing changed.
            loop {
                let job = self.map().begin_flush();
                let Some(job) = job else { break };
                if !self.write_map_job(job).await {
                    break;
                }
            }
        }
    }
}

impl DataPath {
    /// Writes one activemap job; false if it failed (writers were told).
    async fn write_map_job(&self, job: hast_meta::FlushJob) -> bool {
        let header = self.header.lock().await.clone();
        let store = self.store.clone();
        let sync = self.metaflush.load(Relaxed);
        let gen = job.gen;
        // The job stays here so a failure can hand it back to the map (which
        // allows one outstanding job at a time); the worker gets a copy of the
        // few changed pages.
        let pages = job.pages.clone();
        let pending = self.progress.begin();
        let res = tokio::task::spawn_blocking(move || {
            if sync {
                store.write_map_pages(&header, &pages)
            } else {
                store.write_map_pages_nosync(&header, &pages)
            }
            .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("I/O worker failed: {e}")));
        drop(pending);
        match res {
            Ok(()) => {
                self.map().flush_done(gen);
                self.counters.activemap_updates.fetch_add(1, Relaxed);
                self.flushed.send_modify(|s| s.gen = gen);
                true
            }
            Err(e) => {
                tracing::error!(resource = %self.name, "activemap write failed: {e}");
                self.map().flush_failed(job);
                self.flushed.send_modify(|s| s.failures += 1);
                false
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write,
    Trim,
    Zero,
}

/// Whether a buffered write to `file` can be a mere page-cache copy. Not on
/// FUSE (without writeback caching, which nbdfuse and most servers leave
/// off): there every pwrite is a synchronous round trip to the userspace
/// server, so an inline write would hold a runtime thread for as long as
/// that server takes — with a slow or stalled server, long enough to starve
/// the tasks that send keepalives (seen: a secondary on nbdfuse whose nbdkit
/// stalled 1.7 s was declared dead by a primary with `ping_timeout 1`).
fn page_cache_writes(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    // SAFETY: statfs is plain integers, for which all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statfs buffer of the right type.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    // f_type is i64 on x86_64 glibc, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(st.f_type);
    r != 0 || f_type != FUSE_SUPER_MAGIC
}

/// A write the runtime thread may copy into the page cache itself (see
/// [`INLINE_WRITE_MAX`]): small, whole pages, no FUA.
fn inline_write(offset: u64, len: usize, fua: bool) -> bool {
    !fua && len <= INLINE_WRITE_MAX
        && offset.is_multiple_of(PAGE)
        && (len as u64).is_multiple_of(PAGE)
}

fn mode_code(m: Replication) -> u8 {
    match m {
        Replication::Fullsync => 0,
        Replication::Memsync => 1,
        Replication::Async => 2,
    }
}

fn op_of(change: &Change) -> Op {
    match change {
        Change::Write(_) => Op::Write,
        Change::Zero { trim: true, .. } => Op::Trim,
        Change::Zero { .. } => Op::Zero,
    }
}

enum Payload<'a> {
    Data(&'a Bytes),
    Zero(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which writes the worker copies into the page cache itself.
    #[test]
    fn inline_write_rule() {
        let cases: [(u64, usize, bool, bool); 9] = [
            // offset, len, fua, inline
            (0, 4096, false, true),
            (8192, 65536, false, true),
            (0, 4096, true, false), // FUA: a sync follows, blocking pool
            (0, 65536 + 4096, false, false), // larger than INLINE_WRITE_MAX
            (512, 4096, false, false), // partial first page: may read it
            (4096, 512, false, false), // partial page
            (4096, 6144, false, false), // partial last page
            (1 << 40, 4096, false, true),
            (0, 1 << 20, false, false),
        ];
        for (offset, len, fua, want) in cases {
            assert_eq!(inline_write(offset, len, fua), want, "{offset} {len} {fua}");
        }
    }
}
