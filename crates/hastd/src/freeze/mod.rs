//! Freeze and thaw (`hastctl freeze / thaw / query`, docs/overview.md §6): a group of
//! primary resources whose new modifications are held at admission
//! (`datapath::gate::Hold`) while reads, flushes and block status go on;
//! `freeze` answers only once every modification admitted before the hold
//! finished (replicated too) and a barrier flushed both copies.
//!
//! The rules (who may be frozen, timeouts, what `thaw` answers) are the
//! pure [`policy::Book`]; this is its driver: it holds and releases the
//! data paths, runs one watcher per group (the timeout, the death of a
//! replication link a member had when it was held — a member frozen while
//! its secondary was absent has none, and a link that comes up while
//! frozen is not watched), and records `freeze` and `thaw` events. The
//! control socket drives a freeze in steps — [`Freezer::begin`], each
//! resource task's [`Freezer::hold`] (so a role change never races it),
//! [`Freezer::complete`] — and the resource tasks thaw before a demotion or
//! a stop ([`Freezer::thaw_resource`]).
//!
//! A held write is never failed by the freeze: it waits until the thaw, and
//! whatever thaws the group (command, timeout, lost peer, stop) releases it
//! first. Only a demotion fails it (ESHUTDOWN, as every request after the
//! lease).

pub mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hast_api::{ApiError, ErrorKind, FreezeDone, FreezeState, FreezeStatus};
use hast_core::barrier::PeerCopy;
use hast_events::Kind;
use tokio::sync::watch;

use crate::datapath::DataPath;
use crate::link::Link;
use policy::{Asked, Book, Now, Reason, View};

/// What the driver keeps of a group beside the book: its members' data
/// paths and the links their freeze flushed, and the signal that ends the
/// watcher and a freeze still under way.
struct Live {
    members: Vec<Member>,
    thawed: watch::Sender<Option<Reason>>,
}

struct Member {
    dp: Arc<DataPath>,
    /// The replication link when the hold began: the freeze's flush must
    /// reach its peer, and its death thaws the group.
    link: Option<Arc<Link>>,
}

#[derive(Default)]
struct Inner {
    book: Book,
    live: BTreeMap<u64, Live>,
}

/// The node's freezes: one per hastd, shared by the control socket and the
/// resource tasks.
#[derive(Default)]
pub struct Freezer {
    inner: Mutex<Inner>,
}

/// What a freeze waits for before it is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `hastctl freeze`: the writes in flight finished and both copies
    /// flushed (freezefs(2): a hardware snapshot may follow).
    Flush,
    /// `hastctl snapshot`: only the writes in flight finished. Its image
    /// is read from the local copy, whose page cache already has them; a
    /// flush would only lengthen the freeze (on a busy volume, by the
    /// time to write back every dirty page).
    Drain,
}

/// A freeze under way, between [`Freezer::begin`] and
/// [`Freezer::complete`] (or [`Freezer::abort`]).
pub struct Ticket {
    pub generation: u64,
    pub names: Vec<String>,
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall_ms: hast_events::now_ms(),
    }
}

fn api_err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Freezer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic in the pure book: its state is
        // still the best there is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts freezing `names` (each with its `freeze_timeout`) as one
    /// group: refused at once, nothing held, if any is frozen or being
    /// frozen (`TempFail`, EBUSY-like).
    pub fn begin(&self, names: &[(String, u32)], asked: Asked) -> Result<Ticket, ApiError> {
        let configured: Vec<u32> = names.iter().map(|(_, s)| *s).collect();
        let list: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        let timeout = policy::timeout(asked, &configured);
        let mut inner = self.lock();
        let g = inner
            .book
            .begin(&list, now(), timeout)
            .map_err(|e| api_err(ErrorKind::TempFail, e.to_string()))?;
        inner.live.insert(
            g.generation,
            Live {
                members: Vec::new(),
                thawed: watch::channel(None).0,
            },
        );
        Ok(Ticket {
            generation: g.generation,
            names: g.members,
        })
    }

    /// Called by the resource task of a primary member: holds its new
    /// modifications as part of group `generation`. Fails (and holds
    /// nothing) if the group was thawed meanwhile.
    pub fn hold(&self, generation: u64, dp: &Arc<DataPath>) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let Some(live) = inner.live.get_mut(&generation) else {
            return Err(api_err(
                ErrorKind::TempFail,
                format!("{}: the freeze ended before it was held", dp.name()),
            ));
        };
        let link = dp.hold_modifications();
        live.members.push(Member {
            dp: dp.clone(),
            link,
        });
        Ok(())
    }

    /// A freeze that failed before its commit: every member held so far is
    /// released; nothing is recorded (no events: nothing was frozen).
    pub fn abort(&self, generation: u64) {
        let mut inner = self.lock();
        inner.book.abort(generation);
        if let Some(live) = inner.live.remove(&generation) {
            for m in &live.members {
                m.dp.release_modifications();
            }
            live.thawed.send_replace(Some(Reason::Command));
        }
    }

    /// The freeze's last step, once every member is held: waits until the
    /// modifications admitted before the holds finished and (with
    /// [`Settle::Flush`]) both copies of each member were flushed — bounded by the freeze's timeout (and
    /// [`policy::FREEZING_MAX`]) and ended by a thaw meanwhile — then
    /// commits the group, records a `freeze` event per member and starts
    /// the group's watcher. On any failure the group is released as if it
    /// had never been frozen.
    pub async fn complete(
        self: &Arc<Self>,
        ticket: &Ticket,
        settle: Settle,
    ) -> Result<FreezeDone, ApiError> {
        let generation = ticket.generation;
        let res = self.settle(generation, settle).await;
        if let Err(e) = res {
            self.abort(generation);
            return Err(e);
        }
        let mut inner = self.lock();
        let g = match inner.book.commit(generation) {
            Ok(g) => g,
            Err(e) => {
                drop(inner);
                self.abort(generation);
                return Err(api_err(
                    ErrorKind::TempFail,
                    format!("freeze of {}: {e}; nothing frozen", ticket.names.join(" ")),
                ));
            }
        };
        let Some(live) = inner.live.get(&generation) else {
            return Err(api_err(
                ErrorKind::Software,
                "freeze committed without its group",
            ));
        };
        let took = g.since.mono.elapsed();
        let timeout = g
            .timeout
            .map_or_else(|| "none".to_string(), |t| t.as_secs().to_string());
        let group = g.members.join(" ");
        for m in &live.members {
            m.dp.emit(
                Kind::Freeze,
                &[&timeout],
                &[
                    ("GROUP", group.clone()),
                    ("TIMEOUT", timeout.clone()),
                    ("GENERATION", generation.to_string()),
                ],
            );
            tracing::info!(resource = %m.dp.name(), generation, timeout = %timeout, took_ms = ms(took), "frozen");
        }
        let links: Vec<Arc<Link>> = live.members.iter().filter_map(|m| m.link.clone()).collect();
        let thawed = live.thawed.subscribe();
        drop(inner);
        tokio::spawn(self.clone().watch(generation, g.deadline(), links, thawed));
        Ok(FreezeDone {
            generation,
            names: g.members,
            timeout_ms: g.timeout.map(ms),
            took_ms: ms(took),
        })
    }

    /// Drains and flushes every member at once, within the bound, unless
    /// the group is thawed meanwhile.
    async fn settle(&self, generation: u64, how: Settle) -> Result<(), ApiError> {
        let (members, mut thawed, bound) = {
            let inner = self.lock();
            let Some(live) = inner.live.get(&generation) else {
                return Err(api_err(
                    ErrorKind::TempFail,
                    "the freeze ended before it was held",
                ));
            };
            let members: Vec<(Arc<DataPath>, Option<Arc<Link>>)> = live
                .members
                .iter()
                .map(|m| (m.dp.clone(), m.link.clone()))
                .collect();
            let timeout = inner.book.group(generation).and_then(|g| g.timeout);
            (
                members,
                live.thawed.subscribe(),
                policy::freezing_bound(timeout),
            )
        };
        let all = async {
            let mut out = Vec::with_capacity(members.len());
            // Every member's drain and flush run at once; each is bounded
            // by the link's timeouts or by the bound below.
            let mut set = tokio::task::JoinSet::new();
            for (i, (dp, _)) in members.iter().enumerate() {
                let dp = dp.clone();
                set.spawn(async move { (i, dp.settle(how == Settle::Flush).await) });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(x) => out.push(x),
                    Err(e) => return Err(api_err(ErrorKind::Software, e.to_string())),
                }
            }
            out.sort_by_key(|(i, _)| *i);
            Ok(out)
        };
        let settled = tokio::select! {
            r = tokio::time::timeout(bound, all) => match r {
                Ok(r) => r?,
                Err(_) => {
                    return Err(api_err(
                        ErrorKind::TempFail,
                        format!(
                            "the writes in flight did not finish within {} s; nothing frozen",
                            bound.as_secs()
                        ),
                    ))
                }
            },
            r = thawed.wait_for(Option::is_some) => {
                let why = r.ok().and_then(|r| *r).unwrap_or(Reason::Command);
                return Err(api_err(
                    ErrorKind::TempFail,
                    format!("thawed by {why} before the freeze completed; nothing frozen"),
                ));
            }
        };
        for (i, res) in settled {
            let (dp, link) = &members[i];
            match res {
                Err(crate::datapath::DpError::Shutdown) => {
                    return Err(api_err(
                        ErrorKind::TempFail,
                        format!("{}: demoted during the freeze; nothing frozen", dp.name()),
                    ))
                }
                Err(e) => {
                    return Err(api_err(
                        ErrorKind::IoErr,
                        format!("{}: flush failed: {e}; nothing frozen", dp.name()),
                    ))
                }
                Ok(_) if how == Settle::Drain => {}
                Ok(peer) => {
                    // The peer that was there when the hold began must
                    // have every acknowledged write durable, through the
                    // same link (a new one would be a resync, not a flush).
                    if let Some(l) = link {
                        let same = dp.link().is_some_and(|now| Arc::ptr_eq(&now, l));
                        if peer != PeerCopy::Flushed || !same {
                            return Err(api_err(
                                ErrorKind::TempFail,
                                format!(
                                    "{}: the secondary was lost during the freeze; nothing frozen",
                                    dp.name()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Thaws the group at its deadline, or when a member's replication
    /// link dies; ends when the group is thawed otherwise.
    async fn watch(
        self: Arc<Self>,
        generation: u64,
        deadline: Option<Instant>,
        links: Vec<Arc<Link>>,
        mut thawed: watch::Receiver<Option<Reason>>,
    ) {
        let lost = async {
            if links.is_empty() {
                return std::future::pending::<()>().await;
            }
            let mut set = tokio::task::JoinSet::new();
            for l in links {
                set.spawn(async move { l.dead().await });
            }
            let _ = set.join_next().await;
        };
        let reason = tokio::select! {
            _ = sleep_until(deadline) => Reason::Timeout,
            _ = lost => Reason::PeerLost,
            _ = thawed.wait_for(Option::is_some) => return,
        };
        self.thaw_group(generation, reason);
    }

    /// Thaws a whole group: its members' held modifications go on, each
    /// member records a `thaw` event with the reason. Returns the group,
    /// `None` if it was thawed already.
    pub fn thaw_group(&self, generation: u64, reason: Reason) -> Option<policy::Group> {
        let mut inner = self.lock();
        let g = inner.book.thaw(generation, reason, now())?;
        let Some(live) = inner.live.remove(&generation) else {
            return Some(g);
        };
        drop(inner);
        for m in &live.members {
            m.dp.release_modifications();
        }
        live.thawed.send_replace(Some(reason));
        if g.committed {
            let group = g.members.join(" ");
            let frozen_ms = ms(g.since.mono.elapsed());
            for m in &live.members {
                m.dp.emit(
                    Kind::Thaw,
                    &[reason.as_str()],
                    &[
                        ("REASON", reason.to_string()),
                        ("GROUP", group.clone()),
                        ("GENERATION", generation.to_string()),
                        ("FROZEN_MS", frozen_ms.to_string()),
                    ],
                );
                tracing::info!(resource = %m.dp.name(), generation, reason = %reason, frozen_ms, "thawed");
            }
        }
        Some(g)
    }

    /// The data paths of the group `generation` holds, while it is frozen.
    pub fn members(&self, generation: u64) -> Vec<Arc<DataPath>> {
        self.lock()
            .live
            .get(&generation)
            .map(|l| l.members.iter().map(|m| m.dp.clone()).collect())
            .unwrap_or_default()
    }

    /// How the group `generation` ended, once thawed: the reason, if it is
    /// still remembered.
    pub fn thaw_reason(&self, generation: u64, name: &str) -> Option<Reason> {
        match self.lock().book.view(name) {
            View::Thawed(t) if t.generation == generation => Some(t.reason),
            _ => None,
        }
    }

    /// Thaws the group `name` is in, if any (a demotion, hastd stopping).
    pub fn thaw_resource(&self, name: &str, reason: Reason) {
        let generation = self.lock().book.group_of(name).map(|g| g.generation);
        if let Some(generation) = generation {
            self.thaw_group(generation, reason);
        }
    }

    /// `hastctl thaw names`: each group any of them is in thaws (reason
    /// `hastctl thaw`); one answer per name, in order.
    pub fn thaw_command(&self, names: &[String]) -> Vec<(String, Result<String, ApiError>)> {
        let (groups, refused) = self.lock().book.thaw_command(names, now());
        let mut thawed: BTreeMap<String, String> = BTreeMap::new();
        for generation in groups {
            if let Some(g) = self.thaw_group(generation, Reason::Command) {
                let text = format!(
                    "thawed (group {}, {} ms after its freeze began)",
                    g.members.join(" "),
                    ms(g.since.mono.elapsed())
                );
                for m in g.members {
                    thawed.insert(m, text.clone());
                }
            }
        }
        let mut refusals: BTreeMap<String, ApiError> = BTreeMap::new();
        for r in refused {
            let kind = match r {
                policy::ThawRefusal::ThawedBy { .. } => ErrorKind::DataErr,
                _ => ErrorKind::Usage,
            };
            let name = match &r {
                policy::ThawRefusal::NeverFrozen { name }
                | policy::ThawRefusal::NotFrozen { name, .. }
                | policy::ThawRefusal::ThawedBy { name, .. } => name.clone(),
            };
            refusals.insert(name, api_err(kind, r.to_string()));
        }
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for n in names {
            if seen.contains(n) {
                continue;
            }
            seen.push(n.clone());
            let res = match (thawed.get(n), refusals.remove(n)) {
                (Some(t), _) => Ok(t.clone()),
                (None, Some(e)) => Err(e),
                // Thawed by something else between the two looks.
                (None, None) => Err(api_err(ErrorKind::Usage, format!("{n} is not frozen"))),
            };
            out.push((n.clone(), res));
        }
        out
    }

    /// Why `name` may not change role or component now, if frozen.
    pub fn may_change(&self, name: &str) -> Result<(), ApiError> {
        self.lock()
            .book
            .may_change(name)
            .map_err(|why| api_err(ErrorKind::TempFail, why))
    }

    /// Whether `name` is frozen or being frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.lock().book.group_of(name).is_some()
    }

    /// What `status` shows: `(frozen, details)`; no details if never
    /// frozen since hastd started.
    pub fn status(&self, name: &str) -> (bool, Option<FreezeStatus>) {
        let now = Instant::now();
        match self.lock().book.view(name) {
            View::Never => (false, None),
            View::Frozen(g) => (
                g.committed,
                Some(FreezeStatus {
                    state: if g.committed {
                        FreezeState::Frozen
                    } else {
                        FreezeState::Freezing
                    },
                    generation: g.generation,
                    group: g.members.clone(),
                    frozen_at: hast_events::rfc3339(g.since.wall_ms),
                    timeout_ms: g.timeout.map(ms),
                    ms_left: g.left(now).map(ms),
                    thawed_at: None,
                    thaw_reason: None,
                }),
            ),
            View::Thawed(t) => (
                false,
                Some(FreezeStatus {
                    state: FreezeState::Thawed,
                    generation: t.generation,
                    group: t.group,
                    frozen_at: hast_events::rfc3339(t.frozen_at_ms),
                    timeout_ms: None,
                    ms_left: None,
                    thawed_at: Some(hast_events::rfc3339(t.at_ms)),
                    thaw_reason: Some(t.reason.to_string()),
                }),
            ),
        }
    }
}

/// Resolves at `deadline`, never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
