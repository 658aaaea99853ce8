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
//! - while frozen (`hastctl freeze`, `crate::freeze`) no new modification
//!   passes admission: it waits, never fails, until the thaw (or a
//!   demotion); reads, flushes and block status pass; the freeze answers
//!   only after the modifications admitted before it finished (replicated
//!   too) and a barrier flushed both copies ([`DataPath::settle`]);
//! - overlapping writes are applied in arrival order;
//! - with `on_io_error detach`, a primary whose component failed detaches it
//!   only while the peer's copy is current; once detached the component is
//!   not touched, a write is acknowledged only after the peer's REPLY, and
//!   every extent written meanwhile is resynced peer→local at attach before
//!   this copy serves it (`detach.rs`, `replication::attach`).
//!
//! This file is the request path (`read`, `modify`, `flush`/`barrier`,
//! `close`) and the state it shares; the rest lives with what owns it:
//! `detach.rs` the `on_io_error` state and attach,
//! `meta.rs` the metadata writer (activemap group commit, header updates),
//! `fence.rs` the `fence_peer` generations and the fencer task, `stats.rs`
//! the counters, `inline.rs` which I/O the runtime thread does in the page
//! cache itself, `local.rs` positional I/O on the component, `gate.rs`,
//! `rangelock.rs` and `lease.rs` admission (the gate, and the freeze's
//! `Hold`), ordering and the lease,
//! `peer.rs` and `progress.rs` what `status` shows of the peer and the disk.

mod detach;
mod fence;
mod gate;
mod image;
mod inline;
mod lease;
pub mod local;
mod meta;
mod peer;
mod periods;
mod progress;
mod rangelock;
mod stats;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hast_conf::Replication;
use hast_core::barrier::{self, PeerCopy};
use hast_core::edge;
use hast_core::write::{Action, Event, Failure, Params, WriteOp};
use hast_meta::{ActiveMap, Header, Store};
use tokio::sync::{watch, Notify};

use crate::link::{InFlight, Link, RemoteError};
use detach::Detach;
pub use detach::{marker_path, remove_marker, AttachStart, LocalState};
pub use fence::Fence;
use gate::{Gate, Hold};
pub use hast_core::edge::Zeroing;
pub use image::{spawn_copier, Image};
use inline::{page_cache_writes, INLINE_SLOW};
pub use lease::{lease_deadline, Lease};
use local::LocalData;
pub use local::Runs;
use meta::FlushState;
pub use meta::Handshake;
pub use peer::PeerState;
use periods::{Alone, Periods};
pub use progress::Progress;
pub use rangelock::RangeGuard;
use rangelock::RangeLock;
pub use stats::RequestOp;
use stats::{op_of, Op};
use stats::{Counters, SyncCounters};

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

/// Which end of the replication this data path serves. Not `hast_meta::Role`:
/// a data path exists only while the component is open, as primary or
/// secondary, so `Init` is no value of it and no match on it needs an arm for
/// it; `resource.rs` maps the role to the side when it opens one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Serves clients; replicates to the peer when one is connected.
    Primary,
    /// Applies what the primary replicates; serves no clients.
    Secondary,
}

impl Side {
    /// The role's name, as `hastctl` and the hook see it.
    pub fn role_name(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Secondary => "secondary",
        }
    }
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

    /// NBD WRITE_ZEROES with its flags: `punch` (no NO_HOLE), `fast_only`
    /// (FAST_ZERO).
    pub fn write_zeroes(len: u64, how: Zeroing) -> Change {
        Change::Zero {
            len,
            punch: how.punch,
            fast_only: how.fast_only,
            trim: false,
        }
    }
}

pub struct DataPath {
    name: String,
    side: Side,
    store: Arc<Store>,
    datasize: u64,
    data_offset: u64,
    header: tokio::sync::Mutex<Header>,
    map: Mutex<ActiveMap>,
    meta_kick: Notify,
    flushed: watch::Sender<FlushState>,
    metaflush: AtomicBool,
    ranges: Arc<RangeLock>,
    gate: Arc<Gate>,
    /// The freeze's hold on modifications (primary only; `crate::freeze`).
    hold: Arc<Hold>,
    /// A peer is configured (`remote` is not `none`).
    peer_configured: bool,
    /// The live replication link (primary side), if connected.
    link: RwLock<Option<Arc<Link>>>,
    replication: AtomicU8,
    resync_rate: AtomicU64,
    /// Resync runs secondary → primary: reads of needsync extents go to the peer.
    sync_from_peer: AtomicBool,
    sync: SyncCounters,
    peer_state: Mutex<PeerState>,
    /// What the live link's TLS negotiated (`tls::TlsInfo` as text), `None`
    /// over plain TCP or while disconnected.
    peer_tls: Mutex<Option<String>>,
    /// Degraded periods: which write may go alone, which bumps `localcnt`.
    periods: Arc<Periods>,
    writes_since_barrier: AtomicU64,
    counters: Counters,
    /// The primary's lease; never set on a secondary.
    lease: Lease,
    /// Degradation generations and `fence_peer` (primary with a peer only).
    fence: Fence,
    /// This node's name and the peer's address, for the fence command.
    fence_env: (String, String),
    /// Time base of `inline_paused_until`.
    opened: Instant,
    /// Whether the local component completes what it is given.
    progress: Progress,
    /// Inline writes are paused until this many ms after `opened` (see
    /// [`INLINE_SLOW`]).
    inline_paused_until: AtomicU64,
    /// The component's writes can be page-cache copies at all (not on FUSE,
    /// see [`page_cache_writes`]); if not, no write is inline.
    inline_ok: bool,
    /// `on_io_error`: detached, failed or attached (`detach.rs`).
    detach: Detach,
    /// Where this resource's HA events go (the event journal).
    events: crate::events::Events,
    /// The point-in-time image under way (`hastctl snapshot`, `image.rs`)
    /// and whether there is one: the only thing a write looks at when
    /// there is none.
    image: Mutex<Option<Arc<Image>>>,
    image_on: AtomicBool,
}

impl DataPath {
    /// Opens the data path over a component whose header was read and
    /// checked by the caller.
    // Each argument is a different thing the path needs from its opener.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        name: &str,
        node: &str,
        side: Side,
        store: Arc<Store>,
        header: Header,
        cfg: &hast_conf::Resource,
        events: crate::events::Events,
        detached_marker: std::path::PathBuf,
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
            hold: Arc::new(Hold::default()),
            peer_configured,
            link: RwLock::new(None),
            replication: AtomicU8::new(mode_code(cfg.replication)),
            resync_rate: AtomicU64::new(cfg.resync_rate),
            sync_from_peer: AtomicBool::new(false),
            sync: SyncCounters::default(),
            peer_tls: Mutex::new(None),
            peer_state: Mutex::new(PeerState::initial(peer_configured)),
            periods: Arc::default(),
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
            detach: Detach::new(cfg.on_io_error, detached_marker),
            events,
            image: Mutex::new(None),
            image_on: AtomicBool::new(false),
        });
        tokio::spawn(dp.clone().metadata_writer());
        if side == Side::Primary {
            tokio::spawn(dp.clone().lease_guard());
        }
        Ok(dp)
    }

    /// Records an HA event of this resource (`crate::events`), with this
    /// node's role (`HAST_ROLE`) and, when the header is not being written
    /// right now, its epoch (`HAST_EPOCH`) among the details.
    pub fn emit(&self, kind: hast_events::Kind, args: &[&str], details: &[(&str, String)]) {
        let mut all = vec![("ROLE", self.side.role_name().to_string())];
        if let Ok(h) = self.header.try_lock() {
            all.push(("EPOCH", h.epoch.to_string()));
        }
        all.extend(details.iter().cloned());
        self.events.emit(&self.name, kind, args, &all);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, ActiveMap> {
        // A poisoned lock means a panic in pure activemap code: carrying on
        // with its state is still better than refusing every write.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resource's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which end of the replication this data path serves.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Size of the data the component holds, in bytes.
    pub fn datasize(&self) -> u64 {
        self.datasize
    }

    /// The primary's lease (never set on a secondary).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The `fence_peer` state `status` shows.
    pub fn fence_status(&self) -> hast_api::FenceStatus {
        self.fence.status()
    }

    /// How long nothing has completed on the local component while
    /// something is pending there; `None` when idle (`progress.rs`).
    pub fn local_stall(&self) -> Option<Duration> {
        self.progress.stalled()
    }

    /// Resync runs secondary → primary (`on`): reads of needsync extents go
    /// to the peer, whose copy of them is newer.
    pub fn set_sync_from_peer(&self, on: bool) {
        self.sync_from_peer.store(on, Relaxed);
    }

    /// Options that apply live on SIGHUP.
    pub fn reconfigure(&self, cfg: &hast_conf::Resource) {
        self.metaflush.store(cfg.metaflush, Relaxed);
        self.replication.store(mode_code(cfg.replication), Relaxed);
        self.resync_rate.store(cfg.resync_rate, Relaxed);
        self.detach.set_policy(cfg.on_io_error);
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

    /// Installs (or removes) the replication link. (The handshake before
    /// it began a new degraded period: see [`DataPath::begin_handshake`].)
    pub fn set_link(&self, link: Option<Arc<Link>>) {
        let installed = link.is_some();
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

    /// A client's read of `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        let len = len as u64;
        if self.side == Side::Primary && self.detach.is_detached() {
            // No local copy: the peer's, or nothing.
            if let Some(data) = self.read_peer_ordered(offset, len).await {
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len, Relaxed);
                return Ok(data);
            }
            return Err(DpError::Io(io::Error::from_raw_os_error(libc::EIO)));
        }
        // A stale primary (resync from the peer running) must not serve its
        // own old copy of an extent the peer has newer.
        if (self.sync_from_peer.load(Relaxed) || self.detach.attaching())
            && self.any_needsync(offset, len)
        {
            if let Some(data) = self.read_peer_ordered(offset, len).await {
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len, Relaxed);
                return Ok(data);
            }
            return Err(DpError::Io(io::Error::other(
                "extent not yet resynced and the peer is unreachable",
            )));
        }
        let mut buf = Vec::new();
        let res = match self.read_cached(offset, len as usize, &mut buf) {
            Ok(true) => Ok(buf),
            Ok(false) => {
                self.blocking(move |d| d.read_into(offset, len as usize, &mut buf).map(|()| buf))
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
                if self.side == Side::Primary {
                    self.local_error("read", &e);
                    // on_io_error detach: the peer serves from now on.
                    self.try_detach(true);
                }
                // The secondary has the same data: retry there.
                if let Some(data) = self.read_peer_ordered(offset, len).await {
                    tracing::warn!(resource = %self.name, offset, len, "read served by the peer");
                    return Ok(data);
                }
                Err(e.into())
            }
        }
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

    /// [`DataPath::read_peer`] after every earlier overlapping write has
    /// completed on the peer: a write holds its range until the peer's
    /// REPLY (also after a memsync/async answer), and the secondary does not
    /// order a READ after the WRITEs before it, so without this a read
    /// could miss an acknowledged write still on its way there.
    async fn read_peer_ordered(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        // No link, no answer: do not wait behind writes held for a fence.
        self.link()?;
        let _order = self.ranges.lock(offset, len).await;
        self.read_peer(offset, len).await
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
        // Held here while frozen, before the range lock and the activemap:
        // a held write has touched nothing yet.
        let held = self.hold.admit(&self.gate).await.ok_or(DpError::Shutdown)?;
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
            drop(held);
            drop(pass);
            return res;
        }
        if let Some(img) = self.image() {
            // Copy-before-write: what this changes goes into the snapshot
            // first, while the range is ours (`image.rs`).
            let inline =
                matches!(&change, Change::Write(d) if self.applies_in_memory(offset, d.len(), fua));
            self.preserve(&img, offset, len, inline).await;
        }
        // The primary: hast-core's `WriteOp` decides the order (fence,
        // activemap, send, apply, acknowledge per the mode, degrade on a
        // failure); this only performs its actions.
        // The period first, then the link: a write that finds no link
        // belongs to a period no later handshake has seen.
        let period = self.periods.current();
        let link = self.link();
        let params = Params {
            mode: self.replication(),
            peer_configured: self.peer_configured,
            link_up: link.is_some(),
            detach: self.detach.detaches(),
            detached: self.detach.is_detached(),
        };
        let (mut op, first) = WriteOp::start(params, fua);
        let mut d = Driving {
            offset,
            len,
            fua,
            op: op_of(&change),
            change: Some(change),
            link,
            remote: None,
            remote_err: None,
            err: None,
            applied: false,
            period,
            alone: None,
        };
        match self.drive(&mut op, first, &mut d).await {
            Action::Reply(r) => {
                // The client is answered now; the peer's completion is
                // recorded when it comes, still holding the range so that
                // overlapping writes stay ordered on both copies.
                let reply = d.answer(r);
                let mut act = op.step(Event::Answered);
                let dp = self.clone();
                tokio::spawn(async move {
                    loop {
                        match dp.drive(&mut op, act, &mut d).await {
                            Action::Complete { marked, .. } => {
                                dp.complete(&mut d, marked);
                                break;
                            }
                            // Answered once already: the machine ends it.
                            _ => act = op.step(Event::Answered),
                        }
                    }
                    drop(range);
                    // Only now is it replicated: a freeze waits for this.
                    drop(held);
                    drop(pass);
                });
                reply
            }
            Action::Complete { marked, reply } => {
                self.complete(&mut d, marked);
                reply.map_or(Ok(()), |r| d.answer(r))
            }
            // `drive` returns only the two above.
            _ => Err(DpError::Shutdown),
        }
    }

    /// Performs the machine's actions until it answers the client
    /// ([`Action::Reply`]) or ends ([`Action::Complete`]), which it returns.
    async fn drive(self: &Arc<Self>, op: &mut WriteOp, mut act: Action, d: &mut Driving) -> Action {
        loop {
            let ev = match act {
                Action::Reply(_) | Action::Complete { .. } => return act,
                Action::Hold { reroute } => match self.hold_degraded(reroute).await {
                    Ok(Some(l)) => {
                        d.link = Some(l);
                        d.period = self.periods.current();
                        Event::Rerouted
                    }
                    Ok(None) => {
                        // A write that may reroute begins again in the
                        // current period; one held after its link failed
                        // keeps its own.
                        if reroute {
                            d.period = self.periods.current();
                        }
                        Event::Fenced
                    }
                    Err(_) => Event::Shutdown,
                },
                Action::RecordDegraded => match self.record_degraded(d.period).await {
                    Ok(true) => {
                        d.alone = Some(self.periods.going_alone(d.period));
                        Event::Recorded(true)
                    }
                    Ok(false) => Event::Superseded,
                    Err(e) => {
                        // This copy alone would have it, and failed: no
                        // detach possible (marked failed, event aborted).
                        self.try_detach(false);
                        d.err = Some(e);
                        Event::Recorded(false)
                    }
                },
                Action::MarkDirty { wait } => match self.mark_dirty(d.offset, d.len, wait).await {
                    Ok(()) => Event::Marked(true),
                    Err(e) => {
                        d.err = Some(e);
                        Event::Marked(false)
                    }
                },
                Action::Send { fua, want_received } => {
                    d.remote = match (&d.link, &d.change) {
                        (Some(l), Some(c)) => send(l, d.offset, c, fua, want_received).await,
                        _ => None,
                    };
                    Event::Sent(d.remote.is_some())
                }
                Action::ApplyLocal => {
                    let res = match d.change.take() {
                        // Detached since the write began: not touched.
                        Some(_) if self.detach.is_detached() => {
                            Err(DpError::Io(io::Error::from_raw_os_error(libc::EIO)))
                        }
                        Some(c) => self.apply_local(d.offset, d.fua, c).await,
                        None => Err(DpError::Io(io::Error::other("write applied twice"))),
                    };
                    self.count(d.op, d.len, &res);
                    d.applied = true;
                    match res {
                        Ok(()) => Event::Applied(Ok(())),
                        Err(e) => {
                            d.err = Some(e);
                            Event::Applied(Err(Failure::Io))
                        }
                    }
                }
                Action::AwaitReceived => {
                    let r = match d.remote.as_mut() {
                        Some(remote) => remote.received().await,
                        None => Err(RemoteError::Down),
                    };
                    Event::Received(d.remote_ok(r))
                }
                // Already applied there (a write the secondary copies into
                // its page cache at once answers with the REPLY alone)?
                Action::PollReply => match d.remote.take().map(InFlight::try_done) {
                    Some(Err(remote)) => {
                        d.remote = Some(remote);
                        Event::Polled(None)
                    }
                    Some(Ok(r)) => Event::Polled(Some(d.remote_ok(r.map(|_| ())))),
                    None => Event::Polled(Some(d.remote_ok(Err(RemoteError::Down)))),
                },
                Action::AwaitReply => {
                    let r = match d.remote.take() {
                        Some(remote) => remote.done().await.map(|_| ()),
                        None => Err(RemoteError::Down),
                    };
                    Event::Replied(d.remote_ok(r))
                }
                Action::Track => {
                    self.track(d.offset, d.len);
                    Event::Tracked(self.detached_durable().await)
                }
                Action::Detach { possible } => {
                    // A fast zero the component cannot do is no I/O error.
                    let io = !matches!(d.err, Some(DpError::Unsupported));
                    let detached = io && self.try_detach(possible);
                    if detached {
                        d.err = None;
                    }
                    Event::Detached(detached)
                }
                Action::FailLink => {
                    // An error from the secondary's disk leaves its copy
                    // behind: drop the link so the next connection resyncs.
                    if let Some(l) = &d.link {
                        let e = d.remote_err.take().unwrap_or(RemoteError::Down);
                        l.fail(&format!("replication failed: {e}"));
                    }
                    Event::LinkFailed
                }
            };
            act = op.step(ev);
        }
    }

    /// The machine's [`Action::Complete`]: the activemap learns whether both
    /// copies have the range (if it was marked), and an applied write counts
    /// toward the next idle barrier.
    fn complete(&self, d: &mut Driving, marked: Option<bool>) {
        if let Some(in_sync) = marked {
            self.map().write_done(d.offset, d.len, in_sync);
        }
        if d.applied {
            self.writes_since_barrier.fetch_add(1, Relaxed);
        }
    }

    async fn apply_local(&self, offset: u64, fua: bool, change: Change) -> Result<(), DpError> {
        let what = match &change {
            Change::Write(_) => "write",
            Change::Zero { trim: true, .. } => "trim",
            Change::Zero { .. } => "zero",
        };
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
                self.local_error(what, &e);
                Err(e.into())
            }
        }
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
                } => d.zero(offset, len, Zeroing { punch, fast_only })?,
            }
            if fua {
                d.datasync()?;
            }
            Ok(())
        })
        .await
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
        if reroute {
            // A handshake under way decides whether there is a link to
            // take (hast_core::write::DegradedPeriods): wait for it.
            tokio::select! {
                _ = self.periods.handshake_over() => {}
                _ = self.gate.closed() => return Err(DpError::Shutdown),
            }
            if let Some(l) = self.link() {
                return Ok(Some(l));
            }
        }
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
        self.barrier_copies().await.map(|_| ())
    }

    /// [`DataPath::barrier`], saying whether the peer's copy was flushed.
    async fn barrier_copies(&self) -> io::Result<PeerCopy> {
        if self.side == Side::Primary && self.detach.is_detached() {
            // No local copy to sync and nothing cleared: the peer's flush.
            return match self.link() {
                Some(l) => l
                    .flush()
                    .await
                    .map(|_| PeerCopy::Flushed)
                    .map_err(|e| io::Error::other(e.to_string())),
                None => Err(io::Error::from_raw_os_error(libc::EIO)),
            };
        }
        let ticket = self.map().barrier_start();
        self.writes_since_barrier.store(0, Relaxed);
        let link = match self.side {
            Side::Primary => self.link(),
            Side::Secondary => None,
        };
        let remote = async {
            match &link {
                Some(l) if l.flush().await.is_ok() => PeerCopy::Flushed,
                Some(_) => PeerCopy::Behind,
                None if self.side == Side::Primary && self.peer_configured => PeerCopy::Behind,
                None => PeerCopy::NotOurs,
            }
        };
        let (local, peer) = tokio::join!(self.blocking(|d| d.datasync()), remote);
        if let Err(e) = local {
            if self.side == Side::Primary {
                self.local_error("flush", &e);
                // The peer flushed everything completed before: it serves
                // from now on (nothing is cleared: this copy may lack it).
                if peer == PeerCopy::Flushed && self.try_detach(true) {
                    return Ok(peer);
                }
            }
            return Err(e);
        }
        // Without the peer's flush nothing is cleared: the extents stay dirty
        // and the next connection copies them. No counter changes here: every
        // write the peer missed was already recorded degraded by itself, and a
        // clean demotion must not look like a degraded period.
        if barrier::may_clear(peer) {
            self.map().barrier_done(ticket);
            // Cleared bits go out lazily; nothing waits for them.
            self.meta_kick.notify_one();
        }
        Ok(peer)
    }

    /// The freeze's first step (`crate::freeze`): from now on new
    /// modifications wait at admission. Returns the live link, whose peer
    /// the freeze's flush must reach.
    pub fn hold_modifications(&self) -> Option<Arc<Link>> {
        self.hold.hold();
        self.link()
    }

    /// The thaw: held modifications go on (each then takes its place in
    /// the range lock as a new arrival).
    pub fn release_modifications(&self) {
        self.hold.release();
    }

    /// The freeze's second step: waits until every modification admitted
    /// before the hold has finished — on the peer too, a memsync or async
    /// write's tail included — then, with `flush`, flushes both copies.
    /// Returns whether the peer's copy was flushed. `Shutdown` if the data
    /// path closes meanwhile (a demotion).
    pub async fn settle(&self, flush: bool) -> Result<PeerCopy, DpError> {
        tokio::select! {
            _ = self.hold.drained() => {}
            _ = self.gate.closed() => return Err(DpError::Shutdown),
        }
        if !flush {
            return Ok(PeerCopy::NotOurs);
        }
        let res = self.barrier_copies().await;
        if let Err(e) = &res {
            self.counters.flush_errors.fetch_add(1, Relaxed);
            tracing::error!(resource = %self.name, "flush for a freeze failed: {e}");
        }
        Ok(res?)
    }

    /// Resync access: the caller holds the extent's range lock and its bit
    /// is already durable (needsync), so no gate and no activemap here.
    pub async fn read_unlocked(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.blocking(move |d| d.read_new(offset, len)).await
    }

    /// A resynced chunk: zeroes are punched, keeping the copy as sparse as
    /// its source (`edge::apply_resynced`).
    pub async fn write_unlocked(&self, offset: u64, data: Vec<u8>) -> io::Result<()> {
        if self.side == Side::Primary {
            self.image_overtaken(offset, data.len() as u64);
        }
        self.blocking(move |d| edge::apply_resynced(&d, offset, &data))
            .await
    }

    pub async fn allocation_unlocked(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.blocking(move |d| d.allocation(offset, len, Runs::All))
            .await
    }

    pub async fn cache(&self, offset: u64, len: u64) -> Result<(), DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        if self.side == Side::Primary && self.detach.is_detached() {
            // Only a hint; the detached component is not touched.
            return Ok(());
        }
        Ok(self.blocking(move |d| d.prefetch(offset, len)).await?)
    }

    /// This copy may be stale in the range (detached, or extents an attach
    /// or a resync from the peer has not copied yet): its holes say nothing.
    fn local_may_be_stale(&self, offset: u64, len: u64) -> bool {
        self.side == Side::Primary
            && (self.detach.is_detached()
                || ((self.sync_from_peer.load(Relaxed) || self.detach.attaching())
                    && self.any_needsync(offset, len)))
    }

    /// Allocation runs `(length, is_hole)` of the range (BLOCK_STATUS).
    pub async fn allocation(
        &self,
        offset: u64,
        len: u64,
        runs: Runs,
    ) -> Result<Vec<(u64, bool)>, DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        if self.local_may_be_stale(offset, len) {
            // All data: a client must read it (from the peer), never skip
            // a "hole" the peer has written.
            return Ok(vec![(len, false)]);
        }
        Ok(self
            .blocking(move |d| d.allocation(offset, len, runs))
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
    /// caller updates (role, counters) with [`DataPath::update_header`].
    pub async fn close(&self) -> Result<Header, DpError> {
        self.gate.close_and_drain().await;
        if self.detach.is_detached() {
            return self.close_detached().await;
        }
        let barrier = self.barrier().await;
        let map_res = self.write_whole_map().await;
        barrier?;
        map_res?;
        Ok(self.header.lock().await.clone())
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.map().dirty_bytes()
    }

    /// Requests sent to the peer and not answered yet; 0 without a link.
    pub fn replication_queue_depth(&self) -> u64 {
        self.link().map_or(0, |l| l.pending_count() as u64)
    }

    pub fn inflight(&self) -> u64 {
        self.gate.inflight()
    }
}

fn mode_code(m: Replication) -> u8 {
    match m {
        Replication::Fullsync => 0,
        Replication::Memsync => 1,
        Replication::Async => 2,
    }
}

/// What the driver of one modification on the primary keeps between the
/// machine's actions.
struct Driving {
    offset: u64,
    len: u64,
    /// The client's FUA, for this copy's write.
    fua: bool,
    op: Op,
    /// Until it is applied to this copy.
    change: Option<Change>,
    link: Option<Arc<Link>>,
    /// The change on its way to the peer.
    remote: Option<InFlight>,
    /// Why the peer failed it, for the log of the dropped link.
    remote_err: Option<RemoteError>,
    /// The error behind the machine's latest `Failure::Io` (the local
    /// write's, the activemap's or the counter's), returned as it was.
    err: Option<DpError>,
    /// It was applied to this copy: it counts toward the next idle barrier.
    applied: bool,
    /// The degraded period it (re)began in.
    period: u64,
    /// Counted while it goes to this copy alone.
    alone: Option<Alone>,
}

impl Driving {
    fn remote_ok(&mut self, r: Result<(), RemoteError>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                self.remote_err = Some(e);
                false
            }
        }
    }

    /// The client's answer for the machine's verdict.
    fn answer(&mut self, r: Result<(), Failure>) -> Result<(), DpError> {
        r.map_err(|f| match f {
            Failure::Shutdown => DpError::Shutdown,
            Failure::Io => self
                .err
                .take()
                .unwrap_or_else(|| DpError::Io(io::Error::other("write failed"))),
        })
    }
}

/// Sends the change to the peer; `None` if the link just died (the machine
/// then treats the write as degraded).
async fn send(
    link: &Link,
    offset: u64,
    change: &Change,
    fua: bool,
    want_received: bool,
) -> Option<InFlight> {
    let fua = if fua { hast_repl::flags::FUA } else { 0 };
    let r = match change {
        Change::Write(d) => link.write(offset, d, fua, want_received).await,
        Change::Zero { len, punch, .. } => {
            let punch = if *punch { hast_repl::flags::PUNCH } else { 0 };
            // Zero requests are bounded by the NBD payload limit (u32).
            let n = u32::try_from(*len).unwrap_or(u32::MAX);
            link.zero(offset, n, punch | fua, want_received).await
        }
    };
    r.ok()
}
