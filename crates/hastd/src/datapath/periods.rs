//! Degraded periods on the primary's data path: the rules are
//! `hast_core::write::DegradedPeriods` (which write may go to this copy
//! alone, which must bump `localcnt` first); this file gives them to
//! concurrent writers and the replication connector.
//!
//! - A write reads the current period once, lock-free, before it looks for
//!   the link. Nothing else is on the fast path.
//! - The rules sit behind a lock taken only by writes without the link and
//!   by the connector at a handshake. A write about to bump `localcnt` and a
//!   handshake about to read the counters for its HELLO both hold the header
//!   lock, so the HELLO either carries the bump or the write is superseded
//!   (it waits for the handshake's outcome and takes the new link).
//! - A write that goes alone is counted under its period until it ends
//!   ([`Alone`] guard): the resync sends SYNC_DONE only once no write of an
//!   older period is still going alone (`hast_core::resync::may_finish`), or
//!   such a write would mark its extent needsync after the secondary was
//!   told it is in sync.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use hast_core::write::DegradedPeriods;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Periods {
    rules: Mutex<DegradedPeriods>,
    /// `rules.current()`, for the lock-free read at a write's start.
    current: AtomicU64,
    /// Writes going alone, by the period they began in.
    alone: Mutex<BTreeMap<u64, u64>>,
    /// A handshake ended, or a write going alone ended.
    changed: Notify,
}

/// What a write about to go alone must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A handshake began since it started, or is under way: wait for its
    /// outcome.
    Superseded,
    /// Bump `localcnt` durably first.
    Record,
    /// The period is recorded already.
    Recorded,
}

/// A write going to this copy alone, counted until it ends.
pub struct Alone {
    periods: Arc<Periods>,
    period: u64,
}

impl Drop for Alone {
    fn drop(&mut self) {
        let mut alone = self.periods.alone();
        if let Some(n) = alone.get_mut(&self.period) {
            *n -= 1;
            if *n == 0 {
                alone.remove(&self.period);
            }
        }
        drop(alone);
        self.periods.changed.notify_waiters();
    }
}

impl Periods {
    fn rules(&self) -> MutexGuard<'_, DegradedPeriods> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alone(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.alone.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The period a write starting now belongs to; read before the write
    /// looks for the link.
    pub fn current(&self) -> u64 {
        self.current.load(SeqCst)
    }

    /// A handshake begins: call with the header lock held, before the HELLO
    /// is built from the header. Until [`Periods::end_handshake`] no write
    /// goes alone.
    pub fn begin_handshake(&self) {
        let mut r = self.rules();
        r.begin_handshake();
        self.current.store(r.current(), SeqCst);
    }

    /// The handshake ended: the link is installed, or the attempt failed.
    pub fn end_handshake(&self) {
        self.rules().end_handshake();
        self.changed.notify_waiters();
    }

    fn handshaking(&self) -> bool {
        self.rules().handshaking()
    }

    /// Resolves when no handshake is under way.
    pub async fn handshake_over(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.handshaking() {
                return;
            }
            changed.await;
        }
    }

    /// Whether a write of `period` may go alone now, and if so whether it
    /// must bump `localcnt` first. `Record` and `Superseded` are only final
    /// under the header lock.
    pub fn verdict(&self, period: u64) -> Verdict {
        let r = self.rules();
        if !r.may_go_alone(period) {
            Verdict::Superseded
        } else if r.needs_record(period) {
            Verdict::Record
        } else {
            Verdict::Recorded
        }
    }

    /// With the header lock held: the bump for `period` is durable.
    pub fn recorded(&self, period: u64) {
        self.rules().recorded(period);
    }

    /// A write of `period` goes alone from now until the guard drops.
    pub fn going_alone(self: &Arc<Self>, period: u64) -> Alone {
        *self.alone().entry(period).or_insert(0) += 1;
        Alone {
            periods: self.clone(),
            period,
        }
    }

    /// Resolves when no write of a period older than the current one is
    /// still going alone: the resync may send SYNC_DONE.
    pub async fn older_drained(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let current = self.current();
            let older: u64 = self.alone().range(..current).map(|(_, n)| n).sum();
            if hast_core::resync::may_finish(0, older as usize) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_across_a_handshake_is_superseded_and_sync_done_waits() {
        let p = Arc::new(Periods::default());
        let first = p.current();
        assert_eq!(p.verdict(first), Verdict::Record);
        p.recorded(first);
        assert_eq!(p.verdict(first), Verdict::Recorded);
        // One write of the first period already goes alone.
        let alone = p.going_alone(first);
        let late = p.current();
        p.begin_handshake();
        assert_eq!(
            p.verdict(late),
            Verdict::Superseded,
            "began before the handshake"
        );
        assert_eq!(
            p.verdict(p.current()),
            Verdict::Superseded,
            "handshake under way"
        );
        let over = tokio::time::timeout(Duration::from_millis(20), p.handshake_over());
        assert!(over.await.is_err());
        p.end_handshake();
        p.handshake_over().await;
        assert_eq!(
            p.verdict(late),
            Verdict::Superseded,
            "still of the old period"
        );
        assert_eq!(
            p.verdict(p.current()),
            Verdict::Record,
            "a new period records"
        );
        let drained = tokio::time::timeout(Duration::from_millis(20), p.older_drained());
        assert!(
            drained.await.is_err(),
            "SYNC_DONE must wait for the older write"
        );
        drop(alone);
        p.older_drained().await;
        // A write of the current period going alone does not hold it up.
        let _now = p.going_alone(p.current());
        p.older_drained().await;
    }
}
