//! Keeps writes to overlapping ranges in arrival order.
//!
//! Two writes to overlapping bytes must land in the same order on the local
//! component and on the peer, or the copies diverge. A write registers its
//! range on arrival (under a short mutex) and proceeds once no earlier
//! registered write overlaps it; writes to disjoint ranges never wait for
//! each other, so the pipeline stays full. The in-flight list is bounded by
//! the number of requests in flight, so the linear scan is short.

use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub struct RangeLock {
    inner: Mutex<Inner>,
    released: Notify,
}

struct Inner {
    next_seq: u64,
    held: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    start: u64,
    end: u64,
}

/// Held while a write is being applied; dropping it lets overlapping later
/// writes go.
pub struct RangeGuard {
    lock: Arc<RangeLock>,
    seq: u64,
    /// The registered range, kept here so waiting needs no lookup.
    start: u64,
    end: u64,
}

impl RangeLock {
    pub fn new() -> Self {
        RangeLock {
            inner: Mutex::new(Inner {
                next_seq: 0,
                held: Vec::new(),
            }),
            released: Notify::new(),
        }
    }

    /// Registers `[start, start+len)` now and waits until every earlier
    /// overlapping write has released.
    pub async fn lock(self: &Arc<Self>, start: u64, len: u64) -> RangeGuard {
        self.register(start, len).acquire().await
    }

    /// Takes a place in line for `[start, start+len)` without waiting. The
    /// secondary registers each replicated write as it reads it off the
    /// socket, so writes apply in the primary's order even though each runs
    /// in its own task.
    pub fn register(self: &Arc<Self>, start: u64, len: u64) -> RangeGuard {
        let end = start.saturating_add(len.max(1));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.held.push(Entry { seq, start, end });
        RangeGuard {
            lock: self.clone(),
            seq,
            start,
            end,
        }
    }

    fn blocked(&self, seq: u64, start: u64, end: u64) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .held
            .iter()
            .any(|e| e.seq < seq && e.start < end && start < e.end)
    }

    /// Number of writes registered (waiting or applying).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .len()
    }
}

impl RangeGuard {
    /// Waits until no earlier overlapping registration is still held.
    pub async fn acquire(self) -> Self {
        let lock = self.lock.clone();
        let (start, end) = (self.start, self.end);
        loop {
            let notified = lock.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock.blocked(self.seq, start, end) {
                return self;
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut inner = self.lock.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = inner.held.iter().position(|e| e.seq == self.seq) {
            inner.held.swap_remove(i);
        }
        drop(inner);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn disjoint_ranges_do_not_wait() {
        let l = Arc::new(RangeLock::new());
        let a = l.lock(0, 4096).await;
        let b = tokio::time::timeout(Duration::from_secs(1), l.lock(4096, 4096))
            .await
            .expect("disjoint write must not wait");
        assert_eq!(l.len(), 2);
        drop((a, b));
        assert_eq!(l.len(), 0);
    }

    #[tokio::test]
    async fn overlapping_writes_keep_arrival_order() {
        let l = Arc::new(RangeLock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = l.lock(0, 8192).await;
        let mut tasks = Vec::new();
        for i in 1..=3u64 {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _g = l.lock(4096 * (i % 2), 4096).await;
                order.lock().unwrap().push(i);
            }));
            // Registration happens on the first poll: let each task register in turn.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "must wait for the first write"
        );
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // 1 and 3 overlap each other (offset 4096): 1 must precede 3.
        let order = order.lock().unwrap().clone();
        let pos = |x| order.iter().position(|&y| y == x).unwrap();
        assert!(pos(1) < pos(3), "{order:?}");
        assert_eq!(order.len(), 3);
    }
}
