//! What a data path counts for `hastctl list`, `hastctl status` and the
//! metrics endpoint: request and error counters, request durations and
//! resync progress. Relaxed atomics, never a lock, so counting costs the
//! request path nothing it would wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Change, DataPath, DpError};
use hast_api::{Stats, SyncProgress};
use hast_metrics::{Histogram, HistogramSnapshot};

/// Counters published in `hastctl list`; relaxed atomics, never a lock.
#[derive(Default)]
pub(super) struct Counters {
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
    /// Durations of client requests, by [`RequestOp`] (its index).
    pub durations: [Histogram; RequestOp::ALL.len()],
}

/// The kinds of client request whose durations are measured (the `op`
/// label of `hast_request_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOp {
    Read,
    Write,
    Flush,
    Trim,
    Zero,
}

impl RequestOp {
    pub const ALL: [RequestOp; 5] = [
        RequestOp::Read,
        RequestOp::Write,
        RequestOp::Flush,
        RequestOp::Trim,
        RequestOp::Zero,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestOp::Read => "read",
            RequestOp::Write => "write",
            RequestOp::Flush => "flush",
            RequestOp::Trim => "trim",
            RequestOp::Zero => "zero",
        }
    }
}

/// Resync progress, published for `hastctl status`.
#[derive(Default)]
pub(super) struct SyncCounters {
    active: AtomicBool,
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    /// Data bytes actually transferred (holes excluded), for `resync_rate`.
    copied_bytes: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl SyncCounters {
    fn started(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DataPath {
    /// The counters as `hastctl list` shows them.
    pub fn stats(&self) -> Stats {
        let k = &self.counters;
        Stats {
            reads: k.reads.load(Relaxed),
            writes: k.writes.load(Relaxed),
            deletes: k.deletes.load(Relaxed),
            zeroes: k.zeroes.load(Relaxed),
            flushes: k.flushes.load(Relaxed),
            bytes_read: k.bytes_read.load(Relaxed),
            bytes_written: k.bytes_written.load(Relaxed),
            activemap_updates: k.activemap_updates.load(Relaxed),
            read_errors: k.read_errors.load(Relaxed),
            write_errors: k.write_errors.load(Relaxed),
            delete_errors: k.delete_errors.load(Relaxed),
            flush_errors: k.flush_errors.load(Relaxed),
            resynced_bytes: k.resynced_bytes.load(Relaxed),
        }
    }

    /// A client request of kind `op` took `took`, answer included.
    pub fn observe(&self, op: RequestOp, took: Duration) {
        self.counters.durations[op as usize].observe(took);
    }

    /// The request durations measured since the data path opened.
    pub fn durations(&self) -> Vec<(RequestOp, HistogramSnapshot)> {
        RequestOp::ALL
            .iter()
            .map(|&op| (op, self.counters.durations[op as usize].snapshot()))
            .collect()
    }

    /// Open NBD connections to this export.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Relaxed)
    }

    pub fn connection_opened(&self) {
        self.counters.connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.counters.connections.fetch_sub(1, Relaxed);
    }

    /// A resync of `total_bytes` starts: its progress counts from zero.
    pub fn sync_started(&self, total_bytes: u64) {
        let s = &self.sync;
        s.done_bytes.store(0, Relaxed);
        s.copied_bytes.store(0, Relaxed);
        s.total_bytes.store(total_bytes, Relaxed);
        *s.started() = Some(Instant::now());
        s.active.store(true, Relaxed);
    }

    pub fn sync_ended(&self) {
        self.sync.active.store(false, Relaxed);
    }

    pub fn syncing(&self) -> bool {
        self.sync.active.load(Relaxed)
    }

    /// `n` data bytes went over the link (holes excluded).
    pub fn sync_copied(&self, n: u64) {
        self.sync.copied_bytes.fetch_add(n, Relaxed);
    }

    /// Data bytes the running resync transferred, for its `resync_rate`.
    pub fn sync_copied_bytes(&self) -> u64 {
        self.sync.copied_bytes.load(Relaxed)
    }

    /// An extent of `len` bytes is in sync now.
    pub fn sync_extent_done(&self, len: u64) {
        self.sync.done_bytes.fetch_add(len, Relaxed);
        self.counters.resynced_bytes.fetch_add(len, Relaxed);
    }

    /// The resync's progress as `hastctl status` shows it.
    pub fn sync_progress(&self) -> SyncProgress {
        let s = &self.sync;
        let total = s.total_bytes.load(Relaxed);
        let done = s.done_bytes.load(Relaxed).min(total);
        let secs = s.started().map_or(0.0, |t| t.elapsed().as_secs_f64());
        let rate = if secs > 0.0 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        SyncProgress {
            done_bytes: done,
            total_bytes: total,
            rate_bytes_per_sec: rate,
            eta_secs: (rate > 0).then(|| (total - done) / rate),
        }
    }

    pub(super) fn count(&self, op: Op, len: u64, res: &Result<(), DpError>) {
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
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Write,
    Trim,
    Zero,
}

pub(super) fn op_of(change: &Change) -> Op {
    match change {
        Change::Write(_) => Op::Write,
        Change::Zero { trim: true, .. } => Op::Trim,
        Change::Zero { .. } => Op::Zero,
    }
}
