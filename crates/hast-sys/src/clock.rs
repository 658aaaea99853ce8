//! CLOCK_MONOTONIC as plain nanoseconds, the one clock two processes on the
//! same host can pass deadlines in (`Request::Lease`'s `not_after`): an
//! `Instant` is opaque and means nothing in another process.

use std::time::{Duration, Instant};

/// Now on CLOCK_MONOTONIC, in nanoseconds (the clock never goes back and
/// does not count a suspended host, like the kernel's own timers).
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // It cannot fail for CLOCK_MONOTONIC with a valid pointer.
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The `Instant` at which CLOCK_MONOTONIC reads `ns`, or `None` when that
/// moment has already passed. Converted through the time left (both clocks
/// read now), so it holds whatever `Instant`'s own origin is; the error is
/// the few nanoseconds between the two reads, and it errs early.
pub fn mono_ns_to_instant(ns: u64) -> Option<Instant> {
    let now = Instant::now();
    let left = ns.checked_sub(mono_now_ns()).filter(|&l| l > 0)?;
    now.checked_add(Duration::from_nanos(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_convertible() {
        let a = mono_now_ns();
        let b = mono_now_ns();
        assert!(b >= a && a > 0);
        assert_eq!(mono_ns_to_instant(a), None, "the past");
        assert_eq!(mono_ns_to_instant(0), None);
        // The target is read before `start`, so the conversion (which errs
        // early) can never land past 500 ms after `start`.
        let target = mono_now_ns() + 500_000_000;
        let start = Instant::now();
        let at = mono_ns_to_instant(target).expect("future");
        let d = at.duration_since(start);
        assert!(
            d <= Duration::from_millis(500) && d > Duration::from_millis(490),
            "{d:?}"
        );
        assert!(
            mono_ns_to_instant(u64::MAX).is_some(),
            "far future, no overflow"
        );
    }
}
