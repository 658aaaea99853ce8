//! Peer fencing before degraded writes (`fence_peer`): the degradation
//! generations of one primary session and which of them were fenced
//! (`Fence`), and the fencer task that runs the command for them
//! (`DataPath::fencer`, through `crate::hook`). The data path (`mod.rs`)
//! holds writes on them (`hold_degraded`); the process never runs there.
//!
//! A *generation* is one period during which the primary writes without its
//! peer. It starts at the first write that finds no link after promotion or
//! after a link was installed, so: 1 for a primary promoted alone, +1 at each
//! loss of the link while writes come in. With `fence_peer` set, no write of
//! generation g is applied to the local component alone, and none is
//! acknowledged (nor bumps `localcnt`) without the peer, before the command
//! succeeded for g.
//!
//! Lock-free: the generation and the "a link was installed since" bit share
//! one atomic word, so concurrent writers discovering the same loss agree on
//! one new generation; a writer that sees the loss late can only start a
//! newer generation (one more fence), never reuse a fenced one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::DataPath;

/// Bit 0 of `period`: a link was installed since the generation last moved.
const LINKED: u64 = 1;

pub struct Fence {
    /// `generation << 1 | LINKED`.
    period: AtomicU64,
    /// Last generation the command succeeded for.
    fenced: AtomicU64,
    /// A fencer task is running.
    running: AtomicBool,
    /// Writes held until a fence succeeds or a link comes back.
    waiting: AtomicU64,
    /// The command; `None` when `fence_peer` is unset (writes are never held).
    command: Mutex<Option<Arc<str>>>,
    enabled: AtomicBool,
    /// Woken on a fence success, a new link, a fencer exit, a reconfiguration.
    pub changed: Notify,
}

/// Decrements the waiter count when a held write stops waiting.
pub struct Waiter<'a>(&'a Fence);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}

impl Fence {
    /// A new primary session: generation 0, and the first write without a
    /// peer starts generation 1 (as if a link had just been lost).
    pub fn new(command: Option<&str>) -> Fence {
        Fence {
            period: AtomicU64::new(LINKED),
            fenced: AtomicU64::new(0),
            running: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            enabled: AtomicBool::new(command.is_some()),
            command: Mutex::new(command.map(Arc::from)),
            changed: Notify::new(),
        }
    }

    /// `fence_peer` changed (SIGHUP); held writes re-check.
    pub fn set_command(&self, command: Option<&str>) {
        *self.command.lock().unwrap_or_else(|p| p.into_inner()) = command.map(Arc::from);
        self.enabled.store(command.is_some(), SeqCst);
        self.changed.notify_waiters();
    }

    pub fn command(&self) -> Option<Arc<str>> {
        self.command
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One atomic load: the hot path's whole cost when `fence_peer` is unset.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(SeqCst)
    }

    /// A replication link was installed: the next write that goes alone
    /// starts a new generation.
    pub fn linked(&self) {
        self.period.fetch_or(LINKED, SeqCst);
        self.changed.notify_waiters();
    }

    /// The generation a write that goes without the peer now belongs to,
    /// starting a new one if a link was installed since the last.
    pub fn degraded_generation(&self) -> u64 {
        let mut cur = self.period.load(SeqCst);
        loop {
            if cur & LINKED == 0 {
                return cur >> 1;
            }
            let next = ((cur >> 1) + 1) << 1;
            match self.period.compare_exchange(cur, next, SeqCst, SeqCst) {
                Ok(_) => return next >> 1,
                Err(seen) => cur = seen,
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.period.load(SeqCst) >> 1
    }

    pub fn fenced(&self) -> u64 {
        self.fenced.load(SeqCst)
    }

    /// A write of generation `g` may go alone / be acknowledged.
    pub fn allows(&self, g: u64) -> bool {
        !self.enabled() || self.fenced() >= g
    }

    /// The command succeeded for generation `g`.
    pub fn succeeded(&self, g: u64) {
        self.fenced.fetch_max(g, SeqCst);
        self.changed.notify_waiters();
    }

    pub fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, SeqCst);
        Waiter(self)
    }

    pub fn waiting(&self) -> u64 {
        self.waiting.load(SeqCst)
    }

    /// Claims the right to start the fencer; false if one runs.
    pub fn start_running(&self) -> bool {
        !self.running.swap(true, SeqCst)
    }

    /// The fencer ended; waiters re-check (and start a new one if needed).
    pub fn stop_running(&self) {
        self.running.store(false, SeqCst);
        self.changed.notify_waiters();
    }

    /// For `hastctl status`.
    pub fn status(&self) -> hast_api::FenceStatus {
        let (generation, fenced) = (self.generation(), self.fenced());
        hast_api::FenceStatus {
            generation,
            fenced,
            pending: fenced < generation && self.running.load(SeqCst),
        }
    }
}

/// Bound on one run of the `fence_peer` command; it is killed after this.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait between failed runs of the `fence_peer` command.
const FENCE_RETRY: Duration = Duration::from_secs(1);

/// Output of one `fence_peer` run kept for the log, per stream.
const FENCE_OUTPUT_MAX: usize = 4096;

/// Output lines of one `fence_peer` run written to the log.
const FENCE_LOG_LINES: usize = 20;

/// A command that keeps failing is logged on its first failure and then
/// once per this many attempts.
const FENCE_LOG_EVERY: u64 = 30;

impl DataPath {
    pub(super) fn start_fencer(self: &Arc<Self>) {
        if self.fence.start_running() {
            tokio::spawn(self.clone().fencer());
        }
    }

    /// Runs `fence_peer` for the current generation until it succeeds,
    /// retrying every [`FENCE_RETRY`], for as long as this is primary and
    /// degraded (no link, or writes still held from before the link came
    /// back). Never in the data path: held writes only wait for its result.
    async fn fencer(self: Arc<Self>) {
        let (node, peer) = self.fence_env.clone();
        let mut attempts: u64 = 0;
        let mut last_gen = 0;
        let mut last_output: Vec<String> = Vec::new();
        loop {
            let g = self.fence.generation();
            if self.gate.is_closed() || self.fence.fenced() >= g {
                break;
            }
            if self.link().is_some() && self.fence.waiting() == 0 {
                // Back on the replicated path and nobody waits for this one.
                break;
            }
            let Some(command) = self.fence.command() else {
                break;
            };
            if g != last_gen {
                (last_gen, attempts) = (g, 0);
            }
            attempts += 1;
            let epoch = self.header().await.epoch;
            let env = [
                ("HAST_RESOURCE", self.name.clone()),
                ("HAST_NODE", node.clone()),
                ("HAST_PEER", peer.clone()),
                ("HAST_EPOCH", epoch.to_string()),
                ("HAST_FENCE_SEQ", g.to_string()),
            ];
            if attempts == 1 {
                tracing::warn!(resource = %self.name, seq = g, epoch, "peer lost: fencing it before writing alone (fence_peer)");
            }
            let run = tokio::select! {
                r = crate::hook::run(&command, &env, FENCE_TIMEOUT, FENCE_OUTPUT_MAX) => r,
                // Dropping the run kills the command's process group.
                _ = self.gate.closed() => break,
            };
            let output = run.lines(FENCE_LOG_LINES);
            if output != last_output {
                for line in &output {
                    tracing::info!(resource = %self.name, seq = g, "fence_peer: {line}");
                }
                last_output = output;
            }
            if run.success() {
                self.fence.succeeded(g);
                tracing::info!(resource = %self.name, seq = g, epoch, attempts, "fence_peer succeeded: writing without the peer");
                let details = [("PEER", peer.clone()), ("ATTEMPTS", attempts.to_string())];
                self.emit(hast_events::Kind::Fence, &["fenced", &peer], &details);
                continue;
            }
            if attempts == 1 {
                let details = [("PEER", peer.clone()), ("REASON", run.ended.to_string())];
                self.emit(hast_events::Kind::Fence, &["failed", &peer], &details);
            }
            if attempts == 1 || attempts.is_multiple_of(FENCE_LOG_EVERY) {
                tracing::warn!(resource = %self.name, seq = g, epoch, attempts, "fence_peer failed ({}); writes held, retrying every {}s", run.ended, FENCE_RETRY.as_secs());
            }
            tokio::select! {
                _ = tokio::time::sleep(FENCE_RETRY) => {}
                _ = self.gate.closed() => break,
            }
        }
        self.fence.stop_running();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// A write goes without the peer: the generation it belongs to.
        Alone(u64),
        /// A link is installed.
        Link,
        /// The fence succeeded for this generation.
        Fenced(u64),
        /// (generation, fenced, may a write of the current generation go?)
        Expect(u64, u64, bool),
    }
    use Ev::*;

    #[test]
    fn generations() {
        #[rustfmt::skip]
        let cases: &[(&str, bool, &[Ev])] = &[
            ("promoted alone: first write starts 1", true,
             &[Expect(0, 0, false), Alone(1), Alone(1), Expect(1, 0, false), Fenced(1), Expect(1, 1, true), Alone(1)]),
            ("each loss of the link is a new generation", true,
             &[Alone(1), Fenced(1), Link, Expect(1, 1, true), Alone(2), Expect(2, 1, false), Alone(2), Fenced(2), Link, Link, Alone(3)]),
            ("a link that comes and goes without writes costs nothing", true,
             &[Link, Link, Alone(1), Link, Expect(1, 0, false), Alone(2)]),
            ("an old success never releases a newer generation", true,
             &[Alone(1), Link, Alone(2), Fenced(1), Expect(2, 1, false), Fenced(2), Expect(2, 2, true)]),
            ("without fence_peer nothing is held, generations still count", false,
             &[Expect(0, 0, true), Alone(1), Link, Alone(2), Expect(2, 0, true)]),
        ];
        for (name, enabled, evs) in cases {
            let f = Fence::new(enabled.then_some("true"));
            for (i, ev) in evs.iter().enumerate() {
                match *ev {
                    Alone(g) => assert_eq!(f.degraded_generation(), g, "{name}: step {i}"),
                    Link => f.linked(),
                    Fenced(g) => f.succeeded(g),
                    Expect(g, fenced, ok) => {
                        assert_eq!(
                            (f.generation(), f.fenced()),
                            (g, fenced),
                            "{name}: step {i}"
                        );
                        assert_eq!(f.allows(f.generation().max(1)), ok, "{name}: step {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn concurrent_writers_agree_on_one_new_generation() {
        let f = Arc::new(Fence::new(Some("true")));
        f.degraded_generation();
        f.linked();
        let seen: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| f.degraded_generation()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(seen.iter().all(|g| *g == 2), "{seen:?}");
    }

    #[test]
    fn status_and_reconfiguration() {
        let f = Fence::new(None);
        assert!(!f.enabled());
        f.set_command(Some("/bin/true"));
        assert!(f.enabled());
        assert_eq!(f.command().as_deref(), Some("/bin/true"));
        f.degraded_generation();
        assert!(f.start_running());
        assert!(!f.start_running(), "one fencer at a time");
        let st = f.status();
        assert_eq!((st.generation, st.fenced, st.pending), (1, 0, true));
        f.succeeded(1);
        f.stop_running();
        assert!(!f.status().pending);
        {
            let _w = f.waiter();
            assert_eq!(f.waiting(), 1);
        }
        assert_eq!(f.waiting(), 0);
    }
}
