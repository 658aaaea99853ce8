//! What a data path counts for `hastctl list` and `hastctl status`:
//! request and error counters and resync progress. Relaxed atomics, never a
//! lock, so counting costs the request path nothing it would wait on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use super::{Change, DataPath, DpError};

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

impl DataPath {
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
