//! The primary's lease (`hastctl lease -t ms`): a deadline on the monotonic
//! clock after which this node must no longer acknowledge a modification.
//! The resource task demotes the resource when it passes; because that task
//! may run late, the NBD reply path also checks the deadline itself before
//! every WRITE/TRIM/WRITE_ZEROES/FLUSH success. The check is one atomic load
//! and, only while a lease is set, one read of the clock: no lock.
//!
//! The data path also acts on the deadline itself ([`Lease::passed`], the
//! data path's lease guard): a write held for `fence_peer` or for a peer
//! that does not answer must fail at the deadline, whatever the resource
//! task is awaiting then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Deadline value meaning "no lease".
const NONE: u64 = u64::MAX;

/// The instant deadlines are counted from (nanoseconds in a u64 cover 584
/// years of uptime).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn nanos_since_origin(t: Instant) -> u64 {
    let n = t.saturating_duration_since(origin()).as_nanos();
    u64::try_from(n).unwrap_or(NONE - 1).min(NONE - 1)
}

/// The deadline of a lease of `ms` received at `now` whose caller said it
/// must end by `not_after`: `Some(None)` no limit given, `Some(Some(t))` by
/// `t`, `None` a limit that had already passed when converted. `None` back
/// means refused: that limit passed (at or before `now`).
pub fn lease_deadline(
    now: Instant,
    ms: u64,
    not_after: Option<Option<Instant>>,
) -> Option<Instant> {
    let asked = now + Duration::from_millis(ms);
    match not_after {
        None => Some(asked),
        Some(None) => None,
        Some(Some(t)) if t <= now => None,
        Some(Some(t)) => Some(asked.min(t)),
    }
}

pub struct Lease {
    /// Nanoseconds since [`origin`], or [`NONE`].
    deadline: AtomicU64,
    /// Wakes [`Lease::passed`] when the deadline is replaced.
    changed: Notify,
}

impl Default for Lease {
    fn default() -> Self {
        // Fix the origin before any deadline is computed from it.
        origin();
        Lease {
            deadline: AtomicU64::new(NONE),
            changed: Notify::new(),
        }
    }
}

impl Lease {
    /// Sets (or replaces) the deadline.
    pub fn set(&self, deadline: Instant) {
        self.deadline
            .store(nanos_since_origin(deadline), Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Ends the lease without a demotion (`hastctl lease -t 0`): the
    /// primary stays primary with no deadline, as before its first lease.
    pub fn cancel(&self) {
        self.deadline.store(NONE, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Resolves once a lease is set and its deadline passed, following
    /// renewals (later or earlier) made meanwhile.
    pub async fn passed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline() {
                None => changed.await,
                Some(d) if Instant::now() >= d => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(d)) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }

    /// A lease is set and its deadline passed at `now`.
    pub fn expired_at(&self, now: Instant) -> bool {
        let d = self.deadline.load(Ordering::Acquire);
        d != NONE && nanos_since_origin(now) >= d
    }

    /// The hot-path check: a lease is set and its deadline passed.
    #[inline]
    pub fn expired(&self) -> bool {
        let d = self.deadline.load(Ordering::Acquire);
        d != NONE && nanos_since_origin(Instant::now()) >= d
    }

    /// Time left at `now` (zero once expired); `None` without a lease.
    pub fn remaining_at(&self, now: Instant) -> Option<Duration> {
        let d = self.deadline.load(Ordering::Acquire);
        (d != NONE).then(|| Duration::from_nanos(d.saturating_sub(nanos_since_origin(now))))
    }

    /// The deadline, for the task that acts on it.
    pub fn deadline(&self) -> Option<Instant> {
        let d = self.deadline.load(Ordering::Acquire);
        (d != NONE).then(|| origin() + Duration::from_nanos(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rules() {
        let l = Lease::default();
        let now = Instant::now();
        assert!(
            !l.expired_at(now + Duration::from_secs(3600)),
            "no lease never expires"
        );
        assert_eq!(l.remaining_at(now), None);
        assert_eq!(l.deadline(), None);

        l.set(now + Duration::from_millis(500));
        #[rustfmt::skip]
        let cases: &[(&str, Duration, bool, Duration)] = &[
            ("at grant", Duration::ZERO, false, Duration::from_millis(500)),
            ("just before", Duration::from_millis(499), false, Duration::from_millis(1)),
            ("at the deadline", Duration::from_millis(500), true, Duration::ZERO),
            ("after", Duration::from_secs(9), true, Duration::ZERO),
        ];
        for (name, at, expired, left) in cases {
            assert_eq!(l.expired_at(now + *at), *expired, "{name}");
            assert_eq!(l.remaining_at(now + *at), Some(*left), "{name}");
        }
        let d = l.deadline().unwrap();
        assert!(
            d.saturating_duration_since(now + Duration::from_millis(500))
                < Duration::from_micros(1)
        );

        // A renewal replaces the deadline, later or earlier.
        l.set(now + Duration::from_secs(10));
        assert!(!l.expired_at(now + Duration::from_secs(9)));
        l.set(now);
        assert!(l.expired());
    }

    /// min(now + ms, not_after); refused once not_after passed.
    #[test]
    fn lease_deadline_clamp() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        type Case = (&'static str, u64, Option<Option<Instant>>, Option<Instant>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("older caller: ms from receipt", 2000, None, Some(now + ms(2000))),
            ("not_after later: ms", 2000, Some(Some(now + ms(5000))), Some(now + ms(2000))),
            ("not_after sooner: it", 2000, Some(Some(now + ms(300))), Some(now + ms(300))),
            ("equal", 2000, Some(Some(now + ms(2000))), Some(now + ms(2000))),
            ("not_after at receipt: refused", 2000, Some(Some(now)), None),
            ("not_after before receipt: refused", 2000, Some(Some(now - ms(1))), None),
            ("already passed when converted: refused", 2000, Some(None), None),
        ];
        for (name, asked, not_after, want) in cases {
            assert_eq!(lease_deadline(now, *asked, *not_after), *want, "{name}");
        }
    }

    /// `passed` follows renewals: it waits without a lease, resolves at the
    /// deadline, not before, and an earlier deadline set meanwhile wakes it.
    #[tokio::test]
    async fn passed_follows_renewals() {
        let l = std::sync::Arc::new(Lease::default());
        let ms = Duration::from_millis;
        let waiting = |l: &std::sync::Arc<Lease>| {
            let l = l.clone();
            tokio::spawn(async move { l.passed().await })
        };
        let w = waiting(&l);
        tokio::time::sleep(ms(50)).await;
        assert!(!w.is_finished(), "no lease: never passes");
        let t0 = Instant::now();
        l.set(t0 + ms(150));
        tokio::time::sleep(ms(50)).await;
        l.set(Instant::now() + ms(200)); // renewed: later
        tokio::time::sleep(ms(150)).await;
        assert!(!w.is_finished(), "renewed: not yet");
        l.set(Instant::now() + ms(20)); // shortened
        tokio::time::timeout(ms(500), w).await.unwrap().unwrap();
        assert!(l.expired());
        assert!(t0.elapsed() >= ms(215), "not before the shortened deadline");
    }
}
