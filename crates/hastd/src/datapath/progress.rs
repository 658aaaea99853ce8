//! Whether the local component makes progress: how long it has completed
//! nothing while I/O is pending. A disk that hangs (a dying drive, a stuck
//! controller, a FUSE server that stopped) leaves hastd itself responsive —
//! local I/O runs on the blocking pool — so only this says the primary can
//! no longer serve; `status` reports it (`local_stall_ms`) and hastmon stops
//! vouching for a primary stalled for a heartbeat (DRBD's `disk-timeout`).
//!
//! Two atomics, no lock: the number of local operations under way, and the
//! time of the last completion (or of the start, when idle before).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub struct Progress {
    base: Instant,
    pending: AtomicU64,
    /// Milliseconds since `base` of the last completion, or of the first
    /// start after an idle period.
    mark_ms: AtomicU64,
}

/// One local operation under way; its drop is its completion.
pub struct Pending<'a>(&'a Progress);

impl Progress {
    pub fn new() -> Progress {
        Progress {
            base: Instant::now(),
            pending: AtomicU64::new(0),
            mark_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn begin(&self) -> Pending<'_> {
        if self.pending.fetch_add(1, Relaxed) == 0 {
            // Idle until now: the stall is counted from this start.
            self.mark_ms.store(self.now_ms(), Relaxed);
        }
        Pending(self)
    }

    /// How long nothing has completed while something is pending; `None`
    /// when idle.
    pub fn stalled(&self) -> Option<Duration> {
        if self.pending.load(Relaxed) == 0 {
            return None;
        }
        let since = self.now_ms().saturating_sub(self.mark_ms.load(Relaxed));
        Some(Duration::from_millis(since))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.mark_ms.store(self.0.now_ms(), Relaxed);
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_is_counted_from_the_last_completion() {
        let p = Progress::new();
        assert_eq!(p.stalled(), None, "idle");
        std::thread::sleep(Duration::from_millis(30));
        let a = p.begin();
        assert!(
            p.stalled().unwrap() < Duration::from_millis(20),
            "counted from the start, not from idle"
        );
        let b = p.begin();
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            p.stalled().unwrap() >= Duration::from_millis(60),
            "nothing completed"
        );
        drop(a);
        assert!(
            p.stalled().unwrap() < Duration::from_millis(20),
            "a completion is progress"
        );
        drop(b);
        assert_eq!(p.stalled(), None);
    }
}
