//! The HA event journal (docs/overview.md §7, after ha_star): every event a node sees —
//! a role change, a link coming or going, a resync, a split-brain, a local
//! disk failing — is appended durably to a per-node journal *before* it is
//! handled, and its handling moves it through [`State`]s that are recorded
//! the same way. Nothing is lost at a restart or a kill -9: an event that
//! was `running` when the handler died is `aborted` afterwards (never re-run
//! behind the operator's back), and `retry` makes failed and aborted events
//! pending again, as `ha_star -C` resumes a class of events.
//!
//! This crate is the journal and its rules, with no knowledge of hastd:
//! [`journal`] owns the file (replay, torn tails, compaction, pruning),
//! [`record`] its record codec (pure, fuzzed: `fuzz/fuzz_targets/events_record.rs`)
//! and [`lock`] the one-handler-per-node lock. hastd's `events` module
//! feeds it and runs the `exec` hook.

pub mod journal;
pub mod lock;
pub mod record;

use serde::{Deserialize, Serialize};

pub use journal::{Bounds, Journal, JournalError, Opened};
pub use lock::{HandlerLock, LockError};

/// The kinds of event. The names are FreeBSD HAST's where it has them
/// (`role`, `connect`, `disconnect`, `syncstart`, `syncdone`, `syncintr`,
/// `split-brain`), the hook's first argument and `HAST_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The role changed: args `<old> <new>`.
    Role,
    /// The replication link came up: args `<peer address>`.
    Connect,
    /// The replication link went down: args `<reason>`.
    Disconnect,
    /// A resync started: args `<direction> <bytes>`.
    #[serde(rename = "syncstart")]
    SyncStart,
    /// A resync completed: the copies are in sync.
    #[serde(rename = "syncdone")]
    SyncDone,
    /// A resync was interrupted: args `<reason>`.
    #[serde(rename = "syncintr")]
    SyncIntr,
    /// Both copies changed independently: nothing is synced.
    SplitBrain,
    /// The local component failed a request: args `<op> <error>`.
    IoError,
    /// The local component was detached after an error.
    Detach,
    /// The local component was attached again.
    Attach,
    /// This node became primary: args `<epoch>`.
    Promote,
    /// This node stopped being primary: args `<reason>`.
    Demote,
    /// `fence_peer` ran for a lost peer: args `<result>`.
    Fence,
    /// A group of resources was frozen (issue: freeze/thaw).
    Freeze,
    /// A frozen group was thawed: args `<reason>`.
    Thaw,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 15] = [
        Kind::Role,
        Kind::Connect,
        Kind::Disconnect,
        Kind::SyncStart,
        Kind::SyncDone,
        Kind::SyncIntr,
        Kind::SplitBrain,
        Kind::IoError,
        Kind::Detach,
        Kind::Attach,
        Kind::Promote,
        Kind::Demote,
        Kind::Fence,
        Kind::Freeze,
        Kind::Thaw,
    ];

    /// The name the hook and `hastctl events -k` use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::SyncStart => "syncstart",
            Kind::SyncDone => "syncdone",
            Kind::SyncIntr => "syncintr",
            Kind::SplitBrain => "split-brain",
            Kind::IoError => "io-error",
            Kind::Detach => "detach",
            Kind::Attach => "attach",
            Kind::Promote => "promote",
            Kind::Demote => "demote",
            Kind::Fence => "fence",
            Kind::Freeze => "freeze",
            Kind::Thaw => "thaw",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown event kind {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// Where an event is in its handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded, not handled yet.
    Pending,
    /// Its hook is running.
    Running,
    /// Handled: the hook exited 0 (or no hook is configured).
    Done,
    /// The hook exited non-zero or could not start; kept until retried.
    Failed,
    /// The hook was killed at `exec_timeout`, or the handler died while it
    /// ran; kept until retried, never re-run by itself.
    Aborted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }

    /// Shown by `hastctl events` without `--all`: what still needs the
    /// handler or the operator.
    pub fn open(self) -> bool {
        !matches!(self, State::Done)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An event as it is recorded: what happened, to which resource, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and increasing per node, never reused (also across
    /// compactions and restarts).
    pub seq: u64,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub resource: String,
    pub kind: Kind,
    /// The hook's arguments after `<event> <resource>`.
    pub args: Vec<String>,
    /// Details for the hook's environment, names without the `HAST_`
    /// prefix (`ROLE`, `EPOCH`, `PEER`, …).
    pub details: Vec<(String, String)>,
}

/// An event with where its handling stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub event: Event,
    pub state: State,
    /// When the state last changed, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// How many times its hook was started.
    pub attempts: u32,
    /// How the last handling ended (`exit status 3`, `timed out after
    /// 60 s: process group killed`, `hastd stopped while it ran`); empty
    /// while pending.
    pub note: String,
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-05T07:01:02.345Z`), for `hastctl events` and `HAST_TIME`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_and_match_serde() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
        let e = "split_brain".parse::<Kind>().unwrap_err();
        assert!(
            e.contains("unknown event kind") && e.contains("split-brain"),
            "{e}"
        );
    }

    #[test]
    fn rfc3339_table() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_454_062_345, "2026-12-05T07:01:02.345Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(ms), want, "{ms}");
        }
    }
}
