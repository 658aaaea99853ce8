//! The data path of a resource whose local component is open: every client
//! request goes gate → range lock → activemap → local component (and, with a
//! peer, replication) → reply. It knows nothing of NBD or of the control
//! plane: the NBD front end calls it, and role changes only open, drain and
//! close it.
//!
//! Safety rules it enforces (see ARCHITECTURE.md, "Invariants"):
//! - an extent's activemap bit is durable before the first data write to it
//!   is issued (`write_start` → wait for the metadata writer's generation);
//! - a bit is cleared only after a data barrier (fdatasync, and the peer's
//!   flush once replication exists) that started after the extent went idle;
//! - while the configured peer is absent, written extents stay dirty
//!   (needsync) and `localcnt` is bumped durably before the first such write
//!   is acknowledged;
//! - overlapping writes are applied in arrival order.

mod gate;
pub mod local;
mod rangelock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hast_meta::{ActiveMap, Header, Store};
use tokio::sync::{watch, Notify};

use gate::Gate;
use local::LocalData;
use rangelock::RangeLock;

/// How often idle clean-up of the activemap runs when writes happened.
const IDLE_BARRIER_INTERVAL: Duration = Duration::from_secs(10);

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
}

#[derive(Clone, Copy, Default)]
struct FlushState {
    gen: u64,
    failures: u64,
}

pub struct DataPath {
    pub name: String,
    store: Arc<Store>,
    pub datasize: u64,
    data_offset: u64,
    header: tokio::sync::Mutex<Header>,
    map: Mutex<ActiveMap>,
    meta_kick: Notify,
    flushed: watch::Sender<FlushState>,
    metaflush: AtomicBool,
    ranges: RangeLock,
    gate: Gate,
    /// A peer is configured (`remote` is not `none`).
    peer_configured: bool,
    /// The peer is connected and in sync (always false until replication).
    peer_connected: AtomicBool,
    /// `localcnt` was bumped for the current degraded period.
    degraded_recorded: AtomicBool,
    writes_since_barrier: AtomicU64,
    pub counters: Counters,
}

impl DataPath {
    /// Opens the data path over a component whose header was read and
    /// checked by the caller.
    pub fn open(
        name: &str,
        store: Arc<Store>,
        header: Header,
        metaflush: bool,
        peer_configured: bool,
    ) -> Result<Arc<DataPath>, hast_meta::MetaError> {
        let ondisk = store.read_map(&header)?;
        let map = ActiveMap::new(
            header.extentsize,
            header.datasize,
            header.keepdirty,
            &ondisk,
            peer_configured,
        )?;
        let dp = Arc::new(DataPath {
            name: name.to_string(),
            datasize: header.datasize,
            data_offset: header.data_offset,
            store,
            header: tokio::sync::Mutex::new(header),
            map: Mutex::new(map),
            meta_kick: Notify::new(),
            flushed: watch::Sender::new(FlushState::default()),
            metaflush: AtomicBool::new(metaflush),
            ranges: RangeLock::new(),
            gate: Gate::default(),
            peer_configured,
            peer_connected: AtomicBool::new(false),
            degraded_recorded: AtomicBool::new(false),
            writes_since_barrier: AtomicU64::new(0),
            counters: Counters::default(),
        });
        tokio::spawn(dp.clone().metadata_writer());
        Ok(dp)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, ActiveMap> {
        // A poisoned lock means a panic in pure activemap code: carrying on
        // with its state is still better than refusing every write.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_metaflush(&self, on: bool) {
        self.metaflush.store(on, Relaxed);
    }

    /// Runs blocking local I/O on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalData<'_>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let store = self.store.clone();
        let data_offset = self.data_offset;
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
        let res = self
            .blocking(move |d| d.read(offset, &mut buf).map(|()| buf))
            .await;
        match res {
            Ok(buf) => {
                self.counters.reads.fetch_add(1, Relaxed);
                self.counters.bytes_read.fetch_add(len, Relaxed);
                Ok(buf)
            }
            Err(e) => {
                self.counters.read_errors.fetch_add(1, Relaxed);
                tracing::error!(resource = %self.name, offset, len, "local read failed: {e}");
                Err(e.into())
            }
        }
    }

    pub async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), DpError> {
        let len = data.len() as u64;
        self.modify(offset, len, fua, Op::Write, move |d| d.write(offset, &data))
            .await
    }

    /// TRIM (`trim`) or WRITE_ZEROES: both leave the range reading as zeroes
    /// so that the two copies stay identical.
    pub async fn zero(
        &self,
        offset: u64,
        len: u64,
        may_punch: bool,
        fast_only: bool,
        fua: bool,
        trim: bool,
    ) -> Result<(), DpError> {
        let op = if trim { Op::Trim } else { Op::Zero };
        let res = self
            .modify(offset, len, fua, op, move |d| {
                d.zero(offset, len, may_punch, fast_only)
            })
            .await;
        match res {
            Err(DpError::Io(e)) if e.kind() == io::ErrorKind::Unsupported => {
                Err(DpError::Unsupported)
            }
            other => other,
        }
    }

    /// Every modification: ordered, recorded in the activemap first, applied,
    /// made durable when FUA asks for it.
    async fn modify(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        op: Op,
        apply: impl FnOnce(LocalData<'_>) -> io::Result<()> + Send + 'static,
    ) -> Result<(), DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        let _range = self.ranges.lock(offset, len).await;
        let in_sync = !self.peer_configured || self.peer_connected.load(Relaxed);
        if !in_sync {
            self.record_degraded().await?;
        }
        self.mark_dirty(offset, len).await?;
        let mut res = self.blocking(apply).await;
        if res.is_ok() && fua {
            res = self.blocking(|d| d.datasync()).await;
        }
        // The write may have reached the disk even when it failed: treat the
        // extent as out of sync so a resync covers it.
        self.map().write_done(offset, len, in_sync && res.is_ok());
        self.writes_since_barrier.fetch_add(1, Relaxed);
        let c = &self.counters;
        match (&res, op) {
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
            (Err(_), Op::Write | Op::Zero) => {
                c.write_errors.fetch_add(1, Relaxed);
            }
            (Err(_), Op::Trim) => {
                c.delete_errors.fetch_add(1, Relaxed);
            }
        }
        if let Err(e) = &res {
            if e.kind() != io::ErrorKind::Unsupported {
                tracing::error!(resource = %self.name, offset, len, ?op, "local write failed: {e}");
            }
        }
        res.map_err(DpError::from)
    }

    /// Marks the extents of the range dirty and waits until that is durable.
    async fn mark_dirty(&self, offset: u64, len: u64) -> Result<(), DpError> {
        let (need, failures) = {
            let failures = self.flushed.borrow().failures;
            (self.map().write_start(offset, len), failures)
        };
        let Some(gen) = need else { return Ok(()) };
        self.meta_kick.notify_one();
        let mut rx = self.flushed.subscribe();
        let state = rx
            .wait_for(|s| s.gen >= gen || s.failures != failures)
            .await
            .map(|s| *s)
            .unwrap_or_default();
        if state.gen >= gen {
            return Ok(());
        }
        self.map().write_done(offset, len, false);
        Err(DpError::Io(io::Error::other(
            "activemap update failed; write not issued",
        )))
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
        let mut next = h.clone();
        next.localcnt += 1;
        next.generation += 1;
        let store = self.store.clone();
        let written = next.clone();
        tokio::task::spawn_blocking(move || store.write_header(&written))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        *h = next;
        self.degraded_recorded.store(true, Relaxed);
        tracing::warn!(resource = %self.name, localcnt = h.localcnt, "peer absent: writing degraded");
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), DpError> {
        let _pass = self.gate.enter().ok_or(DpError::Shutdown)?;
        let res = self.barrier().await;
        self.counters.flushes.fetch_add(1, Relaxed);
        if let Err(e) = &res {
            self.counters.flush_errors.fetch_add(1, Relaxed);
            tracing::error!(resource = %self.name, "flush failed: {e}");
        }
        res.map_err(DpError::from)
    }

    /// Makes every completed write durable, then lets the activemap clear the
    /// extents that were idle before it started.
    async fn barrier(&self) -> io::Result<()> {
        let ticket = self.map().barrier_start();
        self.writes_since_barrier.store(0, Relaxed);
        self.blocking(|d| d.datasync()).await?;
        self.map().barrier_done(ticket);
        // Cleared bits go out lazily; nothing waits for them.
        self.meta_kick.notify_one();
        Ok(())
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
        let mut next = h.clone();
        f(&mut next);
        next.generation = h.generation + 1;
        let store = self.store.clone();
        let written = next.clone();
        tokio::task::spawn_blocking(move || store.write_header(&written))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        *h = next.clone();
        Ok(next)
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
