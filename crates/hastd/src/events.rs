//! hastd's side of the event journal (docs/overview.md §7, after ha_star).
//!
//! [`Events`] is the handle every part of hastd emits through. Emitting
//! never blocks the caller (the data path, a role change, the replication
//! session): the event goes on a bounded queue to the recorder task, which
//! appends it durably to `<state_dir>/events.journal` (`hast_events`) and
//! only then wakes the handler.
//!
//! The handler is one task per node, and the node's only one: it holds
//! `<state_dir>/handler.lock` for hastd's life, so a second hastd on the
//! same state directory exits at once. It takes pending events in sequence
//! order (so in order per resource; events recorded while a hook runs are
//! handled in the same run), records each `running`, runs the resource's
//! `exec` hook as FreeBSD does (`<exec> <event> <resource> [args]`, plus
//! `HAST_*` variables) under `exec_timeout`, and records `done`, `failed`
//! (non-zero exit, or it could not start) or `aborted` (timed out: its
//! whole process group killed). A hook never holds anything the data path
//! or the control socket waits for: the journal's lock is taken only
//! around each record, never across a hook run.
//!
//! Followers (`hastctl events --follow`) get every recorded change from a
//! bounded broadcast; one that falls behind is told how much it missed and
//! dropped, never waited for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hast_events::{Entry, HandlerLock, Journal, JournalError, Kind, State};
use tokio::sync::{broadcast, mpsc, Notify};

use crate::hook;

/// Events waiting for the recorder. Events are state changes, not requests
/// (the data path reports a failing disk once per episode), so this is
/// never near full unless the state directory hangs; then new events are
/// dropped with an error in the log rather than blocking I/O.
const QUEUE_DEPTH: usize = 4096;
/// Changes a follower may be behind before it is dropped.
const FOLLOW_DEPTH: usize = 1024;
/// Bytes of a hook's stdout and of its stderr kept for the log.
const HOOK_OUTPUT_MAX: usize = 4096;
/// Hook output lines logged per run.
const HOOK_LINES_MAX: usize = 20;
/// Pause after the journal refused a write before the handler tries again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);
/// Longest argument or detail value recorded (a long error text is cut).
const VALUE_MAX: usize = 512;
/// The note of an event handled by a resource with no `exec` hook.
const NO_HOOK: &str = "no exec hook";

/// One event on its way to the journal.
struct Emitted {
    resource: String,
    kind: Kind,
    args: Vec<String>,
    details: Vec<(String, String)>,
    time_ms: u64,
    /// Recorded already in this state (`emit_unhandled`), not handled.
    unhandled: Option<(State, String)>,
}

/// What the recorder is sent: an event, or a request to say when every
/// event sent before it is on disk.
enum Msg {
    Event(Emitted),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where hastd's parts send their events. Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    tx: Option<mpsc::Sender<Msg>>,
}

impl Events {
    /// Records that `kind` happened to `resource`: `args` follow
    /// `<event> <resource>` on the hook's command line, `details` become
    /// `HAST_<NAME>` in its environment.
    pub fn emit(&self, resource: &str, kind: Kind, args: &[&str], details: &[(&str, String)]) {
        self.send(resource, kind, args, details, None);
    }

    /// Records an event that could not be handled when it happened (a
    /// `detach` with no healthy secondary): it goes into the journal
    /// already `state` (`Aborted`) with `note`, is not handed to the hook,
    /// and waits for `hastctl events retry`.
    pub fn emit_unhandled(
        &self,
        resource: &str,
        kind: Kind,
        args: &[&str],
        details: &[(&str, String)],
        state: State,
        note: &str,
    ) {
        self.send(resource, kind, args, details, Some((state, note.into())));
    }

    fn send(
        &self,
        resource: &str,
        kind: Kind,
        args: &[&str],
        details: &[(&str, String)],
        unhandled: Option<(State, String)>,
    ) {
        // An unhandled detach did not happen: its retry must recover the
        // resource first (`needs_recovery`), and its hook is told so.
        let mut details = details.to_vec();
        if unhandled.is_some() && kind == Kind::Detach {
            details.push(("DETACHED", "no".into()));
        }
        let details = &details[..];
        tracing::info!(resource, event = %kind, args = %args.join(" "), "event");
        let Some(tx) = &self.tx else { return };
        let e = Emitted {
            resource: resource.into(),
            kind,
            args: args.iter().map(|a| cut(a)).collect(),
            details: details
                .iter()
                .map(|(k, v)| ((*k).to_string(), cut(v)))
                .collect(),
            time_ms: hast_events::now_ms(),
            unhandled,
        };
        if tx.try_send(Msg::Event(e)).is_err() {
            tracing::error!(resource, event = %kind, "event journal queue full or closed: event not recorded");
        }
    }

    /// Waits until every event emitted before this call is in the journal
    /// (hastd's last step before it exits: the events of the shutdown
    /// itself, such as a demotion, are handled at the next start).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(VALUE_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The hooks to run: each resource's `exec` and the node's `exec_timeout`.
/// Replaced at reload; a running hook keeps the settings it started with.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub exec: HashMap<String, PathBuf>,
    pub timeout: Duration,
}

impl Hooks {
    pub fn from_config(c: &hast_conf::Config) -> Hooks {
        Hooks {
            exec: c
                .resources
                .iter()
                .filter_map(|r| r.exec.clone().map(|e| (r.name.clone(), e)))
                .collect(),
            timeout: Duration::from_secs(u64::from(c.exec_timeout_secs)),
        }
    }
}

/// What `retry` of an event needs from the resource before its hook runs:
/// an aborted `detach` asks the resource to recover (attach a repaired
/// disk, or detach now that a secondary is there). `Ok(what was done)`.
pub type Recover = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// The [`Recover`] of hastd: what `hastctl attach` does for the resource
/// (`ResourceHandle::attach`): a repaired component is checked and used
/// again, a detached one resynced from the peer first.
pub fn recover_with(resources: crate::control::Resources) -> Recover {
    Arc::new(move |name: String| {
        let resources = resources.clone();
        Box::pin(async move {
            let r = resources
                .read()
                .await
                .iter()
                .find(|r| r.name == name)
                .cloned();
            match r {
                None => Err(format!("resource \"{name}\" is not configured any more")),
                Some(r) => r.attach().await.map_err(|e| e.message),
            }
        })
    })
}

/// The journal, its handler and its followers.
pub struct Service {
    journal: Arc<Mutex<Journal>>,
    wake: Notify,
    feed: broadcast::Sender<Entry>,
    hooks: RwLock<Hooks>,
    recover: RwLock<Option<Recover>>,
    node: String,
    _lock: HandlerLock,
}

/// Why the journal could not be started: hastd exits with this line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state_dir {}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] hast_events::LockError),
    #[error("event journal: {0}")]
    Journal(#[from] JournalError),
}

impl Service {
    /// Takes the node's handler lock in `state_dir`, opens and replays the
    /// journal, and starts the recorder and the handler.
    pub fn start(
        state_dir: &Path,
        node: &str,
        hooks: Hooks,
    ) -> Result<(Events, Arc<Service>), StartError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StartError::Dir {
                dir: state_dir.into(),
                source,
            })?;
        let lock = HandlerLock::acquire(state_dir)?;
        let opened = Journal::open(state_dir, hast_events::Bounds::default())?;
        for w in &opened.warnings {
            tracing::warn!(journal = %opened.journal.path().display(), "{w}");
        }
        for seq in &opened.aborted {
            tracing::warn!(
                seq,
                "event was being handled when hastd stopped: aborted (hastctl events retry {seq})"
            );
        }
        let (feed, _) = broadcast::channel(FOLLOW_DEPTH);
        let svc = Arc::new(Service {
            journal: Arc::new(Mutex::new(opened.journal)),
            wake: Notify::new(),
            feed,
            hooks: RwLock::new(hooks),
            recover: RwLock::new(None),
            node: node.into(),
            _lock: lock,
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(record(svc.clone(), rx));
        tokio::spawn(handle_all(svc.clone()));
        Ok((Events { tx: Some(tx) }, svc))
    }

    pub fn set_hooks(&self, hooks: Hooks) {
        *self.hooks.write().unwrap_or_else(|p| p.into_inner()) = hooks;
    }

    pub fn set_recover(&self, r: Recover) {
        *self.recover.write().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// Runs `f` on the journal off the runtime's threads (it may fsync).
    async fn with_journal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> T + Send + 'static,
    ) -> T {
        let j = self.journal.clone();
        let run = move || f(&mut j.lock().unwrap_or_else(|p| p.into_inner()));
        match tokio::task::spawn_blocking(run).await {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The list and a subscription taken at the same instant, so a follower
    /// misses nothing between the two.
    pub async fn follow(&self, all: bool) -> (Vec<Entry>, broadcast::Receiver<Entry>) {
        let feed = self.feed.clone();
        self.with_journal(move |j| {
            let rx = feed.subscribe();
            let now = j
                .entries()
                .filter(|e| all || e.state.open())
                .cloned()
                .collect();
            (now, rx)
        })
        .await
    }

    /// `hastctl events retry`: failed and aborted events become pending
    /// and the handler runs them again.
    pub async fn retry(
        &self,
        kind: Option<Kind>,
        seqs: Vec<u64>,
    ) -> Result<Vec<u64>, JournalError> {
        let feed = self.feed.clone();
        let done = self
            .with_journal(move |j| {
                let done = j.retry(kind, &seqs)?;
                for s in &done {
                    if let Some(e) = j.get(*s) {
                        let _ = feed.send(e.clone());
                    }
                }
                Ok::<_, JournalError>(done)
            })
            .await?;
        self.wake.notify_one();
        Ok(done)
    }

    /// `hastctl events clear`: failed and aborted events dismissed.
    pub async fn clear(
        &self,
        kind: Option<Kind>,
        seqs: Vec<u64>,
    ) -> Result<Vec<u64>, JournalError> {
        let feed = self.feed.clone();
        self.with_journal(move |j| {
            let done = j.clear(kind, &seqs, "cleared by the operator")?;
            for s in &done {
                if let Some(e) = j.get(*s) {
                    let _ = feed.send(e.clone());
                }
            }
            Ok(done)
        })
        .await
    }

    /// Records `seq`'s new state and tells the followers.
    async fn set_state(&self, seq: u64, state: State, note: String) -> Result<Entry, JournalError> {
        let feed = self.feed.clone();
        self.with_journal(move |j| {
            let e = j.set_state(seq, state, &note)?;
            let _ = feed.send(e.clone());
            Ok(e)
        })
        .await
    }
}

/// The recorder: appends each emitted event durably, then wakes the handler.
async fn record(svc: Arc<Service>, mut rx: mpsc::Receiver<Msg>) {
    while let Some(msg) = rx.recv().await {
        let e = match msg {
            Msg::Event(e) => e,
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let feed = svc.feed.clone();
        let resource = e.resource.clone();
        let kind = e.kind;
        let r = svc
            .with_journal(move |j| {
                let mut entry = j.append(&e.resource, e.kind, e.args, e.details, e.time_ms)?;
                if let Some((state, note)) = e.unhandled {
                    entry = j.set_state(entry.event.seq, state, &note)?;
                }
                let _ = feed.send(entry.clone());
                Ok::<_, JournalError>(entry)
            })
            .await;
        match r {
            Ok(entry) => {
                tracing::debug!(seq = entry.event.seq, resource, event = %kind, "event recorded");
                svc.wake.notify_one();
            }
            Err(err) => tracing::error!(resource, event = %kind, "event not recorded: {err}"),
        }
    }
}

/// The handler: one pending event at a time, in sequence order, forever.
async fn handle_all(svc: Arc<Service>) {
    loop {
        // Registered before looking, so a wake between the look and the
        // wait is not lost.
        let woken = svc.wake.notified();
        let next = svc.with_journal(|j| j.next_pending().cloned()).await;
        let Some(entry) = next else {
            woken.await;
            continue;
        };
        let seq = entry.event.seq;
        if let Err(e) = svc.set_state(seq, State::Running, String::new()).await {
            tracing::error!(
                seq,
                "event journal: {e}; retrying in {}s",
                JOURNAL_RETRY.as_secs()
            );
            tokio::time::sleep(JOURNAL_RETRY).await;
            continue;
        }
        let (state, note) = handle(&svc, &entry).await;
        match &state {
            // Without a hook there is nothing to report beyond the event's
            // own line: keep the log to one line per event.
            State::Done if note == NO_HOOK => {
                tracing::debug!(seq, resource = %entry.event.resource, event = %entry.event.kind, "event handled: {note}")
            }
            State::Done => {
                tracing::info!(seq, resource = %entry.event.resource, event = %entry.event.kind, "event handled: {note}")
            }
            _ => {
                tracing::warn!(seq, resource = %entry.event.resource, event = %entry.event.kind, %state, "event not handled: {note} (hastctl events retry {seq})")
            }
        }
        // A journal that refuses the outcome leaves the event `running`: the
        // next start records it aborted, so it is never silently lost.
        while let Err(e) = svc.set_state(seq, state, note.clone()).await {
            tracing::error!(
                seq,
                "event journal: {e}; retrying in {}s",
                JOURNAL_RETRY.as_secs()
            );
            tokio::time::sleep(JOURNAL_RETRY).await;
        }
    }
}

/// Handles one event: its resource's recovery if it asks for one, then the
/// hook. Returns the state to record and how it ended.
async fn handle(svc: &Service, entry: &Entry) -> (State, String) {
    let ev = &entry.event;
    let mut done = Vec::new();
    if needs_recovery(entry) {
        let recover = svc
            .recover
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(recover) = recover else {
            return (
                State::Aborted,
                "hastd cannot recover the resource yet".into(),
            );
        };
        match recover(ev.resource.clone()).await {
            Ok(what) => done.push(what),
            Err(why) => return (State::Aborted, why),
        }
    }
    let hooks = svc.hooks.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(program) = hooks.exec.get(&ev.resource) else {
        done.push(NO_HOOK.into());
        return (State::Done, done.join("; "));
    };
    let mut args = vec![ev.kind.name().to_string(), ev.resource.clone()];
    args.extend(ev.args.iter().cloned());
    let env = hook_env(&svc.node, entry);
    let run = hook::run_program(program, &args, &env, hooks.timeout, HOOK_OUTPUT_MAX).await;
    for line in run.lines(HOOK_LINES_MAX) {
        tracing::info!(seq = ev.seq, resource = %ev.resource, "exec: {line}");
    }
    let (state, what) = match &run.ended {
        hook::Ended::Exited(0) => (State::Done, "exit status 0".to_string()),
        hook::Ended::Exited(c) => (State::Failed, format!("exit status {c}")),
        hook::Ended::Signaled(s) => (State::Failed, format!("killed by signal {s}")),
        hook::Ended::TimedOut => (
            State::Aborted,
            format!(
                "still running after exec_timeout {}s: process group killed",
                hooks.timeout.as_secs()
            ),
        ),
        hook::Ended::Failed(e) => (
            State::Failed,
            format!("cannot run {}: {e}", program.display()),
        ),
    };
    done.push(format!("{}: {what}", program.display()));
    (state, done.join("; "))
}

/// An aborted `detach` (no healthy secondary when the disk failed) that is
/// retried must first recover the resource; a `detach` that happened only
/// runs its hook.
fn needs_recovery(entry: &Entry) -> bool {
    entry.event.kind == Kind::Detach
        && entry
            .event
            .details
            .iter()
            .any(|(k, v)| k == "DETACHED" && v == "no")
}

/// The hook's environment: the event's identity, then its details.
fn hook_env(node: &str, entry: &Entry) -> Vec<(String, String)> {
    let ev = &entry.event;
    let mut env = vec![
        ("HAST_EVENT".to_string(), ev.kind.name().to_string()),
        ("HAST_RESOURCE".into(), ev.resource.clone()),
        ("HAST_SEQ".into(), ev.seq.to_string()),
        ("HAST_TIME".into(), hast_events::rfc3339(ev.time_ms)),
        ("HAST_NODE".into(), node.to_string()),
        ("HAST_ATTEMPT".into(), entry.attempts.to_string()),
    ];
    env.extend(
        ev.details
            .iter()
            .map(|(k, v)| (format!("HAST_{k}"), v.clone())),
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(VALUE_MAX);
        let c = cut(&long);
        assert!(c.len() <= VALUE_MAX && c.chars().all(|ch| ch == 'é'));
        assert_eq!(cut("short"), "short");
    }
}
