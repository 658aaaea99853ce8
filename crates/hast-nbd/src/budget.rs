//! The payload budget shared by every connection of a server: READ reply
//! buffers (from allocation until the reply is on the socket) and WRITE
//! payloads (from the socket read until the request finished) hold permits
//! of it, one per byte. Memory for payloads is therefore bounded by the
//! budget for the whole daemon, not per connection: a client that sends
//! READs and never reads the replies fills its share and then stalls its
//! own reader (TCP back-pressure), not the daemon.
//!
//! Why two pools. A stalled client never gives its permits back, so enough
//! stalled clients with large requests can hold all of one pool for good.
//! Large requests (over [`SMALL_MAX`]) only ever draw from the main pool
//! (`total − reserve`); small ones take from the main pool when it has room
//! at once and otherwise wait on the reserve, which large requests never
//! touch. So 32 MiB READs nobody reads cannot starve a 4 KiB READ of
//! another client. (Small-request clients that do not read their replies
//! fill the kernel's socket buffer first and then, each within its
//! connection's own cap, the reserve; `nbd_idle_timeout` does not drop
//! them, because they have requests in flight.)
//!
//! Why a request may exceed the budget. A request larger than the main pool
//! takes all of it ([`Budget::permits`] caps the count): it then runs alone
//! among large requests, rather than waiting for permits that can never
//! exist. Its memory is the request's size, as without a budget.
//!
//! The fast path is one `try_acquire` (small) or one `acquire_many_owned`
//! (large) on a tokio semaphore: a compare-and-swap, no lock, no allocation.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests up to this size are "small": they may use the reserve.
pub const SMALL_MAX: u32 = 128 * 1024;
/// The reserve is this fraction (1/n) of the budget.
const RESERVE_DIVISOR: usize = 8;
/// The default budget (`nbd_max_buffer`).
pub const DEFAULT_BYTES: usize = 256 << 20;

/// Which pool a request draws from, and how many permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Main pool if it has room now, else wait on the reserve.
    Small(u32),
    /// Main pool, waiting if needed.
    Large(u32),
}

/// A payload budget; clone the `Arc` to share it between listeners.
pub struct Budget {
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    main_bytes: usize,
    reserve_bytes: usize,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("main_bytes", &self.main_bytes)
            .field("reserve_bytes", &self.reserve_bytes)
            .field("available", &self.available())
            .finish()
    }
}

impl Budget {
    /// A budget of `bytes` (clamped to what a semaphore can count; at least
    /// two bytes, so that both pools exist).
    pub fn new(bytes: usize) -> Budget {
        let bytes = bytes.clamp(2, Semaphore::MAX_PERMITS);
        let reserve_bytes = (bytes / RESERVE_DIVISOR).max(1);
        let main_bytes = bytes - reserve_bytes;
        Budget {
            main: Arc::new(Semaphore::new(main_bytes)),
            reserve: Arc::new(Semaphore::new(reserve_bytes)),
            main_bytes,
            reserve_bytes,
        }
    }

    /// Total bytes of the budget (both pools).
    pub fn total(&self) -> usize {
        self.main_bytes + self.reserve_bytes
    }

    /// Permits free in both pools now.
    pub fn available(&self) -> usize {
        self.main.available_permits() + self.reserve.available_permits()
    }

    /// Where a payload of `len` bytes draws from and how much (pure). A
    /// small request is never larger than the reserve it may wait on, a
    /// large one never larger than the main pool: every request can be
    /// granted once the others holding its pool are done.
    pub fn permits(&self, len: u32) -> Draw {
        let cap = |pool: usize| u32::try_from(pool).unwrap_or(u32::MAX).max(1);
        if len <= SMALL_MAX {
            Draw::Small(len.min(cap(self.reserve_bytes)))
        } else {
            Draw::Large(len.min(cap(self.main_bytes)))
        }
    }

    /// Waits until `len` payload bytes may be held; the permit gives them
    /// back when dropped. `len` 0 needs nothing.
    pub async fn acquire(&self, len: u32) -> Option<OwnedSemaphorePermit> {
        if len == 0 {
            return None;
        }
        // The semaphores are never closed, so `ok()` never drops an error.
        match self.permits(len) {
            Draw::Small(n) => match Arc::clone(&self.main).try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => Arc::clone(&self.reserve).acquire_many_owned(n).await.ok(),
            },
            Draw::Large(n) => Arc::clone(&self.main).acquire_many_owned(n).await.ok(),
        }
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(DEFAULT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: usize = 1 << 20;

    #[test]
    fn pools_and_draws() {
        // (budget, len, draw)
        let cases: &[(usize, u32, Draw)] = &[
            (64 * MIB, 4096, Draw::Small(4096)),
            (64 * MIB, SMALL_MAX, Draw::Small(SMALL_MAX)),
            (64 * MIB, SMALL_MAX + 1, Draw::Large(SMALL_MAX + 1)),
            (64 * MIB, 32 << 20, Draw::Large(32 << 20)),
            // Larger than the main pool (56 MiB): capped to it, runs alone.
            (64 * MIB, 60 << 20, Draw::Large(56 << 20)),
            // A tiny budget: both draws capped to their pool.
            (16, 4096, Draw::Small(2)),
            (16, 1 << 20, Draw::Large(14)),
            // Clamped up to two bytes: one per pool.
            (0, 1 << 20, Draw::Large(1)),
            (0, 1, Draw::Small(1)),
        ];
        for &(bytes, len, want) in cases {
            assert_eq!(Budget::new(bytes).permits(len), want, "{bytes} {len}");
        }
        let b = Budget::new(64 * MIB);
        assert_eq!((b.main_bytes, b.reserve_bytes), (56 * MIB, 8 * MIB));
        assert_eq!(b.total(), 64 * MIB);
        assert_eq!(Budget::default().total(), DEFAULT_BYTES);
    }

    #[tokio::test]
    async fn held_until_dropped() {
        let b = Budget::new(64 * MIB);
        let p = b.acquire(32 << 20).await.expect("permit");
        assert_eq!(b.available(), 32 * MIB);
        assert!(b.acquire(0).await.is_none());
        drop(p);
        assert_eq!(b.available(), 64 * MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn large_requests_wait_for_the_main_pool() {
        let b = Arc::new(Budget::new(64 * MIB));
        let first = b.acquire(32 << 20).await;
        // 24 MiB left in the main pool: a second 32 MiB READ waits.
        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire(32 << 20).await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("granted once the first is dropped")
            .expect("task"));
    }

    #[tokio::test(start_paused = true)]
    async fn small_requests_get_through_while_large_ones_hold_everything() {
        let b = Arc::new(Budget::new(64 * MIB));
        // Stalled clients hold the whole main pool, and one more waits.
        let held = b.acquire(56 << 20).await;
        let stuck = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire(32 << 20).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!stuck.is_finished());
        // A 4 KiB READ of another client still runs, from the reserve,
        // 2048 of them at once (8 MiB), and no more.
        let mut small = Vec::new();
        for _ in 0..2048 {
            let p = tokio::time::timeout(Duration::from_secs(1), b.acquire(4096))
                .await
                .expect("small request not starved");
            small.push(p);
        }
        assert_eq!(b.available(), 0);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), b.acquire(4096))
                .await
                .is_err(),
            "the reserve is bounded too"
        );
        drop(small);
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(1), stuck)
            .await
            .expect("the waiting large request is granted")
            .expect("task");
        assert!(got.is_some());
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_runs_alone() {
        let b = Budget::new(16 * MIB);
        let p = tokio::time::timeout(Duration::from_secs(1), b.acquire(32 << 20))
            .await
            .expect("no deadlock")
            .expect("permit");
        assert_eq!(b.available(), 2 * MIB, "only the reserve is left");
        drop(p);
        assert_eq!(b.available(), 16 * MIB);
    }
}
