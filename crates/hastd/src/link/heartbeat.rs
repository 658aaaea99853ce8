//! Heartbeats on the replication link, in DRBD's manner (ping-int /
//! ping-timeout): pure timing rules, used by both ends.
//!
//! - Each side sends a KEEPALIVE whenever its *sending* side has been idle
//!   for `ping_timeout / 3` (its writer task, never behind its disk), and one
//!   at once when the link starts. The KEEPALIVE's `seq` (a field the codec
//!   leaves free on that kind) announces the sender's `ping_timeout` in ms;
//!   an older hastd sends 0 there.
//! - A side waiting to read declares the peer dead when nothing at all was
//!   received for the silence limit: any frame resets the clock, and a side
//!   that is not reading (its own backpressure) is not counting.
//! - The silence limit is `ping_timeout`, but only once the peer announced
//!   that it heartbeats (the longer of both sides' values, so a peer with a
//!   longer setting is not timed out); a peer that never announced is an
//!   older hastd that sends KEEPALIVE only every `timeout / 4` (or only
//!   echoes ours): it keeps `timeout`.
//! - `timeout` stays the bound for a peer that answers keepalives but
//!   completes no request (a hung disk or daemon behind a live socket).

use std::time::{Duration, Instant};

/// The shortest keepalive interval, whatever `ping_timeout` says.
const INTERVAL_MIN: Duration = Duration::from_millis(100);
/// An announced `ping_timeout` above this is not believed (1 day).
const ANNOUNCE_MAX_MS: u64 = 86_400_000;

/// How long a side's sending side stays idle before it sends a KEEPALIVE.
pub fn interval(ping: Duration) -> Duration {
    (ping / 3).max(INTERVAL_MIN)
}

/// The `seq` of the KEEPALIVE this side sends: its `ping_timeout` in ms.
pub fn announce(ping: Duration) -> u64 {
    u64::try_from(ping.as_millis())
        .unwrap_or(ANNOUNCE_MAX_MS)
        .clamp(1, ANNOUNCE_MAX_MS)
}

/// The peer's `ping_timeout` from the `seq` of its KEEPALIVE; `None` from an
/// older hastd (0).
pub fn announced(seq: u64) -> Option<Duration> {
    (seq != 0).then(|| Duration::from_millis(seq.min(ANNOUNCE_MAX_MS)))
}

/// How long a side waiting to read lets the peer stay silent before it
/// declares it dead.
pub fn silence_limit(
    own_ping: Duration,
    peer_ping: Option<Duration>,
    timeout: Duration,
) -> Duration {
    match peer_ping {
        Some(p) => own_ping.max(p).min(timeout),
        None => timeout,
    }
}

/// A peer that answers keepalives but completes nothing: requests are
/// pending and none completed (nor was the first of them sent) for
/// `timeout` before `now`.
pub fn stalled(pending: bool, last_progress: Instant, now: Instant, timeout: Duration) -> bool {
    pending && now.saturating_duration_since(last_progress) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn silence_limit_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Duration, Option<Duration>, Duration, Duration)] = &[
            // name, own ping, announced, timeout, limit
            ("both default", S(3), Some(S(3)), S(20), S(3)),
            ("older peer: timeout", S(3), None, S(20), S(20)),
            ("peer slower: theirs", S(3), Some(S(8)), S(20), S(8)),
            ("peer faster: ours", S(5), Some(S(1)), S(20), S(5)),
            ("never above timeout", S(3), Some(S(60)), S(20), S(20)),
            ("short timeout", S(1), Some(S(1)), S(1), S(1)),
            ("sub-second announced", S(1), Some(MS(500)), S(20), S(1)),
        ];
        for (name, own, peer, timeout, want) in cases {
            assert_eq!(silence_limit(*own, *peer, *timeout), *want, "{name}");
        }
    }

    #[test]
    fn interval_and_announcement() {
        #[rustfmt::skip]
        let cases: &[(Duration, Duration, u64)] = &[
            // ping, interval, announced seq
            (S(3), S(1), 3000),
            (S(1), MS(333), 1000),
            (S(20), MS(6666), 20_000),
            (MS(150), INTERVAL_MIN, 150),
            (Duration::ZERO, INTERVAL_MIN, 1),
        ];
        for (ping, every, seq) in cases {
            assert_eq!(interval(*ping).as_millis(), every.as_millis(), "{ping:?}");
            assert_eq!(announce(*ping), *seq, "{ping:?}");
            assert_eq!(announced(*seq), Some(MS(*seq)), "{ping:?} round trip");
        }
        assert_eq!(announced(0), None, "older hastd");
        assert_eq!(announced(u64::MAX), Some(MS(ANNOUNCE_MAX_MS)));
        // The interval leaves three chances within the limit.
        assert!(interval(S(3)) * 3 <= S(3));
    }

    #[test]
    fn stalled_table() {
        let t0 = Instant::now();
        #[rustfmt::skip]
        let cases: &[(&str, bool, Duration, bool)] = &[
            // name, pending, since last progress, stalled (timeout 20 s)
            ("idle link never stalls", false, S(3600), false),
            ("recent progress", true, S(5), false),
            ("just before", true, MS(19_999), false),
            ("at timeout", true, S(20), true),
            ("long after", true, S(60), true),
        ];
        for (name, pending, since, want) in cases {
            assert_eq!(stalled(*pending, t0, t0 + *since, S(20)), *want, "{name}");
        }
    }
}
