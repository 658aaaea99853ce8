//! The metadata writer of a data path: the activemap's group commit (every
//! writer waiting for its bit to be durable shares one write, made by one
//! task), the idle barrier that lets clean extents be cleared when clients
//! never flush, writing the whole map at close, and the crash-atomic header
//! updates (`update_header`, and `record_degraded`'s `localcnt` bump before
//! the first degraded write is acknowledged). Kept apart from the request
//! path because it owns the on-disk metadata: the request path only waits
//! for generations it publishes.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hast_meta::Header;

use super::periods::Verdict;
use super::{DataPath, DpError};

/// How often idle clean-up of the activemap runs when writes happened.
const IDLE_BARRIER_INTERVAL: Duration = Duration::from_secs(10);

/// What the metadata writer published: the activemap generation made
/// durable last, and how many of its writes failed (a waiter leaves on
/// either).
#[derive(Clone, Copy, Default)]
pub(super) struct FlushState {
    gen: u64,
    failures: u64,
}

impl DataPath {
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

    /// Every writer waiting for an activemap write leaves with an error
    /// (the component was detached: that write will not happen).
    pub(super) fn release_map_waiters(&self) {
        self.flushed.send_modify(|s| s.failures += 1);
    }

    /// Marks the extents of the range dirty and, with `wait`, waits until
    /// that is durable (`wait` is false only under a planted mutation).
    /// A sequential writer's next extent is marked ahead (`dirty_ahead`),
    /// flushed without anyone waiting for it. On failure the range is still
    /// in flight in the activemap: the caller's `write_done` releases it.
    pub(super) async fn mark_dirty(
        &self,
        offset: u64,
        len: u64,
        wait: bool,
    ) -> Result<(), DpError> {
        if self.detach.is_detached() {
            // Not touched while detached: the write goes through the peer.
            return Err(DpError::Io(io::Error::from_raw_os_error(libc::EIO)));
        }
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
        if !wait {
            self.meta_kick.notify_one();
            return Ok(());
        }
        self.wait_flushed(gen, failures).await
    }

    /// A write of `period` is about to go to this copy alone: the first of
    /// its degraded period bumps `localcnt` durably (the peer will miss it,
    /// so the counters must say this copy is newer before anything is
    /// acknowledged). `Ok(false)`: a handshake began since the write started
    /// or is under way, and the write may not go alone
    /// (`hast_core::write::DegradedPeriods`). The bump and a handshake's
    /// reading of the counters both hold the header lock.
    pub(super) async fn record_degraded(&self, period: u64) -> Result<bool, DpError> {
        if self.periods.verdict(period) == Verdict::Recorded {
            return Ok(true);
        }
        if self.detach.is_detached() {
            return Err(DpError::Io(io::Error::from_raw_os_error(libc::EIO)));
        }
        let mut h = self.header.lock().await;
        match self.periods.verdict(period) {
            Verdict::Superseded => return Ok(false),
            Verdict::Recorded => return Ok(true),
            Verdict::Record => {}
        }
        self.write_header_locked(&mut h, |n| n.localcnt += 1)
            .await?;
        self.periods.recorded(period);
        tracing::warn!(resource = %self.name, localcnt = h.localcnt, "peer absent: writing degraded");
        Ok(true)
    }

    /// A handshake begins (primary): a new degraded period, and no write
    /// goes alone until the guard drops (the link is installed, or the
    /// attempt failed). Returns the header its HELLO is built from, read
    /// under the same lock as a degraded write's bump.
    pub async fn begin_handshake(self: &Arc<Self>) -> (Header, Handshake) {
        let h = self.header.lock().await;
        self.periods.begin_handshake();
        (h.clone(), Handshake { dp: self.clone() })
    }

    /// Resolves when no write that began before the current handshake still
    /// goes alone: the resync may send SYNC_DONE.
    pub async fn older_writes_done(&self) {
        self.periods.older_drained().await
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
            .map_err(|e| {
                let e = io::Error::other(e.to_string());
                self.local_error("metadata", &e);
                e
            })?;
        *current = next;
        Ok(())
    }

    pub async fn header(&self) -> Header {
        self.header.lock().await.clone()
    }

    pub(super) async fn write_whole_map(&self) -> io::Result<()> {
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

    /// Owns every activemap write: batches the changes of all writers waiting
    /// on it into one durable write (group commit), publishes the generation
    /// made durable, and runs the idle barrier that lets clean extents be
    /// cleared when clients never flush.
    pub(super) async fn metadata_writer(self: Arc<Self>) {
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
            // Nothing is written to a detached component.
            while !self.detach.is_detached() {
                let job = self.map().begin_flush();
                let Some(job) = job else { break };
                if !self.write_map_job(job).await {
                    break;
                }
            }
        }
    }

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
                self.local_error("metadata", &io::Error::other(e));
                self.map().flush_failed(job);
                self.flushed.send_modify(|s| s.failures += 1);
                false
            }
        }
    }
}

/// A handshake under way; it ends when this drops.
pub struct Handshake {
    dp: Arc<DataPath>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.dp.periods.end_handshake();
    }
}
