//! A latency histogram for the data path: one relaxed atomic add for the
//! bucket and one for the sum per observation, no lock and no allocation,
//! so timing a request costs it nothing it could wait on. Buckets are kept
//! per bucket (not cumulative) and summed when a scrape reads them; a scrape
//! racing observations may see a sum and count a request apart, which
//! Prometheus' rate() does not notice.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in seconds: 100 µs (a page-cache read on loopback) to 10 s
/// (a request held by a stalled peer until its `timeout`).
pub const BOUNDS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BUCKETS: usize = 16;
/// [`BOUNDS_SECONDS`] in nanoseconds, what observations compare against.
const BOUNDS_NS: [u64; BUCKETS] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket; the last one is above every bound.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

/// What a scrape reads: cumulative counts per bound, as the format wants.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub cumulative: Vec<u64>,
    pub count: u64,
    /// Seconds.
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(BUCKETS);
        let mut total = 0u64;
        for b in &self.buckets[..BUCKETS] {
            total = total.saturating_add(b.load(Relaxed));
            cumulative.push(total);
        }
        let count = total.saturating_add(self.buckets[BUCKETS].load(Relaxed));
        HistogramSnapshot {
            bounds: BOUNDS_SECONDS,
            cumulative,
            count,
            sum: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        assert_eq!(BOUNDS_SECONDS.len(), BUCKETS);
        for (s, ns) in BOUNDS_SECONDS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observations_land_in_their_bucket() {
        // (duration, index of the first bound it is at or below; 16 = +Inf)
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_micros(100), 0),
            (Duration::from_nanos(100_001), 1),
            (Duration::from_millis(1), 3),
            (Duration::from_millis(7), 6),
            (Duration::from_secs(10), 15),
            (Duration::from_secs(11), 16),
            (Duration::MAX, 16),
        ];
        for (d, want) in cases {
            let h = Histogram::default();
            h.observe(d);
            let s = h.snapshot();
            assert_eq!(s.count, 1, "{d:?}");
            let first = s.cumulative.iter().position(|&n| n == 1).unwrap_or(BUCKETS);
            assert_eq!(first, want, "{d:?}");
        }
    }

    #[test]
    fn cumulative_sum_and_count() {
        let h = Histogram::default();
        for ms in [1, 1, 30, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[3], 2); // <= 1 ms
        assert_eq!(s.cumulative[8], 3); // <= 50 ms
        assert_eq!(s.cumulative[15], 3); // <= 10 s
        assert!((s.sum - 20.032).abs() < 1e-9, "{}", s.sum);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }
}
