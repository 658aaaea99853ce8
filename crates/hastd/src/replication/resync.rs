//! The resync engine, run by the primary after a connection: copies every
//! needsync extent in the direction the handshake decided, several extents
//! in flight, within `resync_rate`, while clients keep using the resource.
//!
//! Safety: each extent is copied under the data path's range lock, so a
//! client write to the same extent is ordered before or after the copy on
//! both copies, never torn by it. An extent stops being needsync only after
//! its copy was acknowledged; its bit is cleared only after a barrier that
//! flushed both copies. The counters say "in sync" (SYNC_DONE) only after a
//! final barrier, so an interruption at any point leaves the bits and
//! counters that make the next connection resume.

use hast_events::Kind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_repl::flags;

use crate::datapath::DataPath;
use crate::link::Link;

/// Extents copied concurrently.
const RESYNC_INFLIGHT: usize = 4;
/// Largest piece of an extent sent in one frame.
const CHUNK_BYTES: u64 = 4 << 20;
/// Passes over the map before giving up on extents that keep failing.
const PASSES_MAX: usize = 64;
/// How often progress is made durable: a barrier (flush of both copies) lets
/// the activemap clear the extents copied so far, and the metadata writer
/// writes that out, so an interrupted resync resumes near where it stopped.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Which copy is the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToPeer,
    FromPeer,
}

/// Copies until no extent is needsync, then makes both copies durable.
/// Returns the bytes it set out to copy, or the error that stopped it (the
/// link died, the resource closed). A resync with something to copy is the
/// `syncstart` event, and its interruption `syncintr`.
pub async fn run(dp: Arc<DataPath>, link: Arc<Link>, direction: Direction) -> Result<u64, String> {
    let extentsize = u64::from(dp.map_lock().extentsize());
    let total = (dp.map_lock().needsync_count() * extentsize).min(dp.datasize());
    dp.sync_started(total);
    let towards = match direction {
        Direction::ToPeer => "to-secondary",
        Direction::FromPeer => "from-secondary",
    };
    if total > 0 {
        tracing::info!(resource = %dp.name(), bytes = total, ?direction, "resync started");
        let details = [
            ("PEER", link.peer.clone()),
            ("DIRECTION", towards.to_string()),
            ("BYTES", total.to_string()),
        ];
        dp.emit(Kind::SyncStart, &[towards, &total.to_string()], &details);
    }
    let result = copy_all(&dp, &link, direction, extentsize).await;
    dp.sync_ended();
    if let Err(why) = &result {
        if total > 0 {
            let details = [("PEER", link.peer.clone()), ("REASON", why.clone())];
            dp.emit(Kind::SyncIntr, &[why], &details);
        }
    }
    result.map(|()| total)
}

async fn copy_all(
    dp: &Arc<DataPath>,
    link: &Arc<Link>,
    direction: Direction,
    extentsize: u64,
) -> Result<(), String> {
    dp.persist_map().await.map_err(|e| e.to_string())?;
    let mut pace = Pace::new(Instant::now(), dp.sync_copied_bytes(), dp.resync_rate());
    let mut checkpoint = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(RESYNC_INFLIGHT));
    for _ in 0..PASSES_MAX {
        let mut cursor = 0;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if link.is_dead() || dp.is_withdrawn() {
                return Err(format!("resync interrupted: {}", link.reason()));
            }
            let next = dp.map_lock().next_needsync(cursor);
            let Some(extent) = next else { break };
            cursor = extent + 1;
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let (dp2, link2) = (dp.clone(), link.clone());
            tasks.spawn(async move {
                let r = copy_extent(&dp2, &link2, direction, extent, extentsize).await;
                drop(permit);
                r
            });
            // Drain finished copies as we go so errors surface early.
            while let Some(done) = tasks.try_join_next() {
                done.map_err(|e| e.to_string())??;
            }
            if checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                dp.barrier().await.map_err(|e| e.to_string())?;
                checkpoint = Instant::now();
            }
            // The rate is read live, and waits are sliced, so that a rate
            // changed by SIGHUP applies within a slice, not after a wait
            // computed under the old one.
            loop {
                let wait = pace.delay(Instant::now(), dp.sync_copied_bytes(), dp.resync_rate());
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait.min(PACE_SLICE)).await;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
        if dp.map_lock().needsync_count() > 0 {
            continue;
        }
        // A write that began before this link and goes alone marks its
        // extent needsync when it ends: the copies are in sync only once
        // none is left (hast_core::resync::may_finish).
        tokio::select! {
            _ = dp.older_writes_done() => {}
            _ = link.dead() => return Err(format!("resync interrupted: {}", link.reason())),
            _ = dp.withdrawn() => return Err("resync interrupted: resource closing".into()),
        }
        if dp.map_lock().needsync_count() > 0 {
            continue;
        }
        // Both copies durable before anyone is told they are in sync.
        dp.barrier().await.map_err(|e| e.to_string())?;
        if link.is_dead() {
            return Err(format!("resync interrupted: {}", link.reason()));
        }
        if dp.map_lock().needsync_count() == 0 {
            return Ok(());
        }
    }
    Err("resync did not converge".into())
}

/// Keeps the copy under `rate` bytes/s of data actually copied (holes cost
/// a small frame, not their size; 0 is unlimited). The average runs from
/// when the rate last changed, so a rate changed by SIGHUP applies from
/// then on: no catch-up burst after raising it, no stall paying back the
/// past after lowering it.
/// Longest single sleep of the pacing (see `copy_all`).
const PACE_SLICE: Duration = Duration::from_millis(100);

struct Pace {
    since: Instant,
    base: u64,
    rate: u64,
}

impl Pace {
    fn new(now: Instant, copied: u64, rate: u64) -> Pace {
        Pace {
            since: now,
            base: copied,
            rate,
        }
    }

    /// How long to wait before copying more, with `copied` bytes done so far.
    fn delay(&mut self, now: Instant, copied: u64, rate: u64) -> Duration {
        if rate != self.rate {
            *self = Pace::new(now, copied, rate);
        }
        if rate == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64(copied.saturating_sub(self.base) as f64 / rate as f64);
        due.saturating_sub(now.saturating_duration_since(self.since))
    }
}

async fn copy_extent(
    dp: &Arc<DataPath>,
    link: &Arc<Link>,
    direction: Direction,
    extent: u64,
    extentsize: u64,
) -> Result<(), String> {
    let start = extent * extentsize;
    let len = extentsize.min(dp.datasize().saturating_sub(start));
    let _range = dp.ranges().lock(start, len).await;
    // Checked again under the range: a concurrent pass may have copied it.
    if !dp.map_lock().is_needsync(extent) {
        return Ok(());
    }
    match direction {
        Direction::ToPeer => {
            let runs = dp
                .allocation_unlocked(start, len)
                .await
                .map_err(|e| e.to_string())?;
            let mut pending = Vec::new();
            let mut pos = start;
            for (run_len, hole) in runs {
                let end = pos + run_len;
                while pos < end {
                    let n = (end - pos).min(CHUNK_BYTES);
                    let f = if hole {
                        // Sparse regions cost one small frame, not their size.
                        link.zero(pos, n as u32, flags::SYNC | flags::PUNCH, false)
                            .await
                    } else {
                        let data = dp
                            .read_unlocked(pos, n as usize)
                            .await
                            .map_err(|e| e.to_string())?;
                        dp.sync_copied(n);
                        link.write(pos, &data.into(), flags::SYNC, false).await
                    };
                    pending.push(f.map_err(|e| e.to_string())?);
                    pos += n;
                }
            }
            for f in pending {
                f.done().await.map_err(|e| e.to_string())?;
            }
        }
        Direction::FromPeer => {
            let mut pos = start;
            while pos < start + len {
                let n = (start + len - pos).min(CHUNK_BYTES);
                let data = link
                    .read(pos, n as u32, flags::SYNC)
                    .await
                    .map_err(|e| e.to_string())?;
                if data.len() as u64 != n {
                    return Err(format!("peer returned {} of {n} bytes", data.len()));
                }
                dp.sync_copied(n);
                dp.write_unlocked(pos, data)
                    .await
                    .map_err(|e| e.to_string())?;
                pos += n;
            }
        }
    }
    dp.map_lock().synced(extent);
    dp.sync_extent_done(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Pace;
    use std::time::{Duration, Instant};

    #[test]
    fn pace_table() {
        const M: u64 = 1 << 20;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // (now ms, copied bytes, rate, expected wait ms) applied in order to one Pace.
        let steps = [
            (0, 0, 4 * M, 0),
            (500, 4 * M, 4 * M, 500), // 4 MiB at 4 MiB/s is due at 1 s
            (1000, 4 * M, 4 * M, 0),
            (1000, 4 * M, 64 * M, 0), // raised: a new window, no debt, no burst credit
            (1250, 20 * M, 64 * M, 0), // 16 MiB in 250 ms: exactly on time
            (1250, 36 * M, 64 * M, 250), // 32 MiB since the change is due at 1.5 s
            (1500, 36 * M, 2 * M, 0), // lowered: the past is not paid back
            (1500, 38 * M, 2 * M, 1000),
            (1500, 38 * M, 0, 0), // unlimited
        ];
        let mut pace = Pace::new(t0, 0, 4 * M);
        for (i, (now, copied, rate, want)) in steps.into_iter().enumerate() {
            let got = pace.delay(at(now), copied, rate);
            assert_eq!(got, Duration::from_millis(want), "step {i}");
        }
    }
}
