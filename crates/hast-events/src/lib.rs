//! The HA event journal (SPEC §7, after ha_star): every event a node sees —
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
