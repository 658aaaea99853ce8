//! The rules of `hastctl freeze / thaw / query` (docs/overview.md §6, after Tru64
//! freezefs(2)), with no I/O and no clock: the caller passes `now`. The
//! book says which resources a freeze may take (none already frozen or
//! being frozen), how long a group stays frozen, and what `thaw` answers
//! when a group is no longer frozen; the driver (`freeze/mod.rs`) holds and
//! releases the data paths' modifications as it decides.
//!
//! A group's life:
//!
//! ```text
//! begin ──► freezing ──commit──► frozen ──thaw(reason)──► thawed (reason, time kept per resource)
//!              │                                  ▲
//!              ├──abort (a step failed)───────────┼──► as before the freeze: nothing recorded
//!              └──thaw(reason) (timeout, command, peer lost, ...) : the freeze fails with it
//! ```
//!
//! | `thaw` of a resource that is                         | answer                         |
//! |------------------------------------------------------|--------------------------------|
//! | frozen or being frozen                               | its whole group thaws          |
//! | thawed by anything but `thaw` since its last freeze  | refused, `ThawedBy` (when, why) |
//! | never frozen, or thawed by `thaw`                    | refused, `NotFrozen`           |
//!
//! `ThawedBy` is freezefs(2)'s "if error on thaw, cannot rely on the
//! initial freeze": what a script did while it believed the group frozen
//! (a snapshot) may not be coherent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a freeze may take when it has no timeout of its own: draining
/// the writes in flight and the flush of both copies. A write held for
/// `fence_peer` (a fence that keeps failing) would otherwise keep `freeze`
/// waiting forever; the control client waits 120 s.
pub const FREEZING_MAX: Duration = Duration::from_secs(60);

/// The longest timeout `freeze -t` takes: one day.
pub const TIMEOUT_MAX_SECS: u64 = 86_400;

/// Why a group thawed: the `thaw` event's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `hastctl thaw`.
    Command,
    /// The freeze's timeout passed.
    Timeout,
    /// The replication link of a member died while frozen.
    PeerLost,
    /// hastd is stopping (SIGTERM).
    Stopping,
    /// A member stopped being primary (its lease expired).
    Demoted,
    /// `hastctl snapshot` began its images: the freeze did its work.
    Snapshot,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Command => "hastctl thaw",
            Reason::Timeout => "timeout",
            Reason::PeerLost => "peer lost",
            Reason::Stopping => "hastd stopping",
            Reason::Demoted => "demoted",
            Reason::Snapshot => "snapshot begun",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two clocks: `mono` for deadlines, `wall_ms` (Unix ms) for what is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

/// What `freeze -t` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// `-t N`, N > 0.
    Seconds(u64),
    /// `-t 0` or no `-t`: the members' `freeze_timeout`.
    Configured,
    /// `-t N`, N < 0: no timeout.
    Never,
}

/// The group's timeout. `Configured` takes the shortest `freeze_timeout` of
/// the members (the first that would thaw wins), where 0 in the
/// configuration means none.
pub fn timeout(asked: Asked, configured_secs: &[u32]) -> Option<Duration> {
    match asked {
        Asked::Seconds(n) => Some(Duration::from_secs(n.min(TIMEOUT_MAX_SECS))),
        Asked::Never => None,
        Asked::Configured => configured_secs
            .iter()
            .filter(|s| **s > 0)
            .min()
            .map(|s| Duration::from_secs(u64::from(*s))),
    }
}

/// How long draining and flushing may take before the freeze fails: its
/// timeout (the group thaws then anyway), at most [`FREEZING_MAX`].
pub fn freezing_bound(timeout: Option<Duration>) -> Duration {
    timeout.map_or(FREEZING_MAX, |t| t.min(FREEZING_MAX))
}

/// How a resource's last freeze ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thawed {
    pub generation: u64,
    pub reason: Reason,
    pub frozen_at_ms: u64,
    pub at_ms: u64,
    pub group: Vec<String>,
}

/// A group that is being frozen or is frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub generation: u64,
    pub members: Vec<String>,
    pub since: Now,
    pub timeout: Option<Duration>,
    /// Every member's writes in flight drained and both copies flushed.
    pub committed: bool,
}

impl Group {
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| self.since.mono + t)
    }

    /// Time left before the timeout thaws it, at `now`.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(now))
    }
}

/// Why a freeze was refused before anything was held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeRefusal {
    #[error("no resource to freeze")]
    Empty,
    #[error("{name} is already frozen (group {group}, since {since})", group = .group.join(" "), since = hast_events::rfc3339(*.since_ms))]
    AlreadyFrozen {
        name: String,
        group: Vec<String>,
        since_ms: u64,
    },
    #[error("{name} is being frozen by another freeze (group {group})", group = .group.join(" "))]
    BeingFrozen { name: String, group: Vec<String> },
}

/// Why `thaw` refused one resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThawRefusal {
    #[error("{name} is not frozen")]
    NeverFrozen { name: String },
    #[error("{name} is not frozen: thawed by hastctl thaw at {at}", at = hast_events::rfc3339(*.at_ms))]
    NotFrozen { name: String, at_ms: u64 },
    /// The group thawed by itself since its freeze: what ran while it was
    /// believed frozen may not be coherent.
    #[error(
        "{name} was already thawed at {at} ({ago}s ago) by {reason}, {held}s after its freeze: \
         what ran while it was believed frozen may not be coherent",
        at = hast_events::rfc3339(*.at_ms),
        ago = secs(*.ago_ms),
        held = secs(.at_ms.saturating_sub(*.frozen_at_ms))
    )]
    ThawedBy {
        name: String,
        reason: Reason,
        at_ms: u64,
        frozen_at_ms: u64,
        ago_ms: u64,
    },
}

/// Milliseconds as seconds with one decimal.
fn secs(ms: u64) -> String {
    format!("{}.{}", ms / 1000, ms % 1000 / 100)
}

/// Why a freeze being made could not be committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("thawed by {reason} before the freeze completed")]
pub struct ThawedWhileFreezing {
    pub reason: Reason,
}

/// What `status` and `query` show of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Never frozen since hastd started.
    Never,
    Frozen(Group),
    Thawed(Thawed),
}

/// Every group being frozen or frozen, and how each resource's last one
/// ended.
#[derive(Debug, Default)]
pub struct Book {
    groups: BTreeMap<u64, Group>,
    /// Resource → the generation of its group, while in one.
    member_of: BTreeMap<String, u64>,
    /// Resource → how its last committed freeze ended.
    last: BTreeMap<String, Thawed>,
    /// Generations aborted or thawed while freezing: their reason, until
    /// the freeze that made them asks ([`Book::commit`]).
    ended: BTreeMap<u64, Option<Reason>>,
    next: u64,
}

impl Book {
    /// Starts freezing `names` (duplicates ignored) as one group, or
    /// refuses if any is in a group already: then nothing changes.
    pub fn begin(
        &mut self,
        names: &[String],
        now: Now,
        timeout: Option<Duration>,
    ) -> Result<Group, FreezeRefusal> {
        let mut members: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            if !members.contains(n) {
                members.push(n.clone());
            }
        }
        if members.is_empty() {
            return Err(FreezeRefusal::Empty);
        }
        for n in &members {
            if let Some(g) = self.member_of.get(n).and_then(|g| self.groups.get(g)) {
                return Err(if g.committed {
                    FreezeRefusal::AlreadyFrozen {
                        name: n.clone(),
                        group: g.members.clone(),
                        since_ms: g.since.wall_ms,
                    }
                } else {
                    FreezeRefusal::BeingFrozen {
                        name: n.clone(),
                        group: g.members.clone(),
                    }
                });
            }
        }
        self.next += 1;
        let g = Group {
            generation: self.next,
            members,
            since: now,
            timeout,
            committed: false,
        };
        for n in &g.members {
            self.member_of.insert(n.clone(), g.generation);
        }
        self.groups.insert(g.generation, g.clone());
        Ok(g)
    }

    /// The group being frozen is: every member drained and flushed. Fails
    /// if it was thawed meanwhile (with that reason) or aborted.
    pub fn commit(&mut self, generation: u64) -> Result<Group, ThawedWhileFreezing> {
        match self.groups.get_mut(&generation) {
            Some(g) if !g.committed => {
                g.committed = true;
                Ok(g.clone())
            }
            Some(g) => Ok(g.clone()),
            None => Err(ThawedWhileFreezing {
                reason: self
                    .ended
                    .remove(&generation)
                    .flatten()
                    .unwrap_or(Reason::Command),
            }),
        }
    }

    /// A freeze that failed before its commit: the group goes as if it had
    /// never been (no thaw recorded). Returns it if it was still there.
    pub fn abort(&mut self, generation: u64) -> Option<Group> {
        self.ended.remove(&generation);
        let g = self.groups.remove(&generation)?;
        self.forget_members(&g);
        Some(g)
    }

    fn forget_members(&mut self, g: &Group) {
        for n in &g.members {
            if self.member_of.get(n) == Some(&g.generation) {
                self.member_of.remove(n);
            }
        }
    }

    /// Thaws a whole group. A committed group's members remember why and
    /// when; a group still freezing leaves its reason for [`Book::commit`].
    /// `None` if there is no such group (already thawed).
    pub fn thaw(&mut self, generation: u64, reason: Reason, now: Now) -> Option<Group> {
        let g = self.groups.remove(&generation)?;
        self.forget_members(&g);
        if g.committed {
            for n in &g.members {
                self.last.insert(
                    n.clone(),
                    Thawed {
                        generation,
                        reason,
                        frozen_at_ms: g.since.wall_ms,
                        at_ms: now.wall_ms,
                        group: g.members.clone(),
                    },
                );
            }
        } else {
            self.ended.insert(generation, Some(reason));
        }
        Some(g)
    }

    /// The group of this generation, while frozen or being frozen.
    pub fn group(&self, generation: u64) -> Option<&Group> {
        self.groups.get(&generation)
    }

    /// The group `name` is in, if any.
    pub fn group_of(&self, name: &str) -> Option<&Group> {
        self.member_of.get(name).and_then(|g| self.groups.get(g))
    }

    /// `hastctl thaw names`: the groups to thaw (each once, in the order
    /// first named) and one refusal per name that is in none. Changes
    /// nothing; the caller thaws each group with [`Reason::Command`].
    pub fn thaw_command(&self, names: &[String], now: Now) -> (Vec<u64>, Vec<ThawRefusal>) {
        let mut groups = Vec::new();
        let mut refused = Vec::new();
        for n in names {
            match self.member_of.get(n) {
                Some(g) => {
                    if !groups.contains(g) {
                        groups.push(*g);
                    }
                }
                None => refused.push(self.not_frozen(n, now)),
            }
        }
        (groups, refused)
    }

    fn not_frozen(&self, name: &str, now: Now) -> ThawRefusal {
        match self.last.get(name) {
            None => ThawRefusal::NeverFrozen {
                name: name.to_string(),
            },
            Some(t) if t.reason == Reason::Command => ThawRefusal::NotFrozen {
                name: name.to_string(),
                at_ms: t.at_ms,
            },
            Some(t) => ThawRefusal::ThawedBy {
                name: name.to_string(),
                reason: t.reason,
                at_ms: t.at_ms,
                frozen_at_ms: t.frozen_at_ms,
                ago_ms: now.wall_ms.saturating_sub(t.at_ms),
            },
        }
    }

    /// What `status` and `query` show of `name`.
    pub fn view(&self, name: &str) -> View {
        if let Some(g) = self.group_of(name) {
            return View::Frozen(g.clone());
        }
        match self.last.get(name) {
            Some(t) => View::Thawed(t.clone()),
            None => View::Never,
        }
    }

    /// Whether `name` may change identity (role, component) now: no while
    /// it is frozen or being frozen, with the reason.
    pub fn may_change(&self, name: &str) -> Result<(), String> {
        match self.group_of(name) {
            None => Ok(()),
            Some(g) => Err(format!(
                "{name} is {} (group {}, since {}): thaw it first",
                if g.committed {
                    "frozen"
                } else {
                    "being frozen"
                },
                g.members.join(" "),
                hast_events::rfc3339(g.since.wall_ms)
            )),
        }
    }
}

#[cfg(test)]
mod tests;
