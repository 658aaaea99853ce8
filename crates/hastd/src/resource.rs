//! One task per resource: the owner of its role and of its local component.
//!
//! Role changes, status requests, reconfiguration and incoming primary
//! connections arrive as typed commands on a bounded channel and are handled
//! one at a time, so a role change never races another. The task never sits
//! in the data path: clients (primary) and the replication session
//! (secondary) reach the [`DataPath`] directly; a role change only closes
//! that data path, waits for it to drain, and opens the next one.
//!
//! Fencing (docs/overview.md §5): every role change records the epoch it decides
//! (`crate::epoch`) in the same header write as the role, before an export
//! is offered; a primary's lease (`hastctl lease`) is a deadline this task
//! sleeps on, demoting the resource to secondary when it passes. Every
//! change is logged as `role changed resource=<r> role=<role> epoch=<n>`, a
//! line test checkers parse.
//!
//! Freezes (`crate::freeze`): a primary holds its modifications for a group
//! freeze here, between other commands, so no role change races the check
//! that it is primary; while frozen a role change is refused, and a lease
//! demotion or a stop thaws the group first (the lease wins).

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hast_api::{ApiError, ErrorKind, MetaStatus, Queues, ResourceStatus, Stats, Status};
use hast_events::Kind;
use hast_meta::{MetaError, Role, Store};
use hast_repl::{Hello, HelloStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::datapath::{DataPath, LocalState, PeerState, Side};
use crate::freeze::policy::Reason;
use crate::link::stream::{ConnRead, ConnWrite};
use crate::nbdfront::Registry;
use crate::replication::tls::TlsInfo;
use crate::replication::{primary, secondary};

/// Commands queued per resource; control requests beyond this wait.
const COMMAND_QUEUE_DEPTH: usize = 16;

/// A primary that connected to our replication listener for this resource.
pub struct PeerConn {
    pub hello: Hello,
    pub rd: ConnRead,
    pub wr: ConnWrite,
    pub peer: String,
    /// What the connection's TLS negotiated; `None` over plain TCP.
    pub tls: Option<TlsInfo>,
}

/// The answer to a role request: the role and the epoch held after it
/// (`None` only for an init component whose metadata cannot be read).
pub type RoleReply = Result<(Role, Option<u64>), ApiError>;

pub enum Command {
    /// A role, and the epoch `hastctl role -E` gave.
    /// A role change: the role, `-E epoch`, `--force`.
    Role(Role, Option<u64>, bool, oneshot::Sender<RoleReply>),
    /// A lease of this many milliseconds for a primary (`hastctl lease -t`),
    /// ending no later than the CLOCK_MONOTONIC instant (ns) given.
    Lease(u64, Option<u64>, oneshot::Sender<Result<u64, ApiError>>),
    Status(oneshot::Sender<ResourceStatus>),
    /// The status plus what only the metrics endpoint shows (`crate::metrics`).
    Metrics(oneshot::Sender<crate::metrics::Sample>),
    /// `hastctl attach` / the retry of an aborted `detach` event: see
    /// [`ResourceHandle::attach`].
    Attach(oneshot::Sender<Result<String, ApiError>>),
    /// `hastctl outdate`: see [`ResourceTask::outdate`].
    Outdate(oneshot::Sender<Result<String, ApiError>>),
    /// Hold new modifications as a member of the freeze of this
    /// generation (`crate::freeze::Freezer::hold`); primary only.
    Freeze(u64, oneshot::Sender<Result<(), ApiError>>),
    /// Options changed that apply live (`local` and `name` changes restart
    /// the resource instead: see the daemon's reload).
    Reconfigure(Box<hast_conf::Resource>),
    Peer(Box<PeerConn>),
    /// Go to init and end the task (SIGTERM, or the resource left the config).
    Stop(oneshot::Sender<()>),
}

/// The control plane's handle on a resource task.
#[derive(Clone)]
pub struct ResourceHandle {
    pub name: String,
    pub config: hast_conf::Resource,
    pub tx: mpsc::Sender<Command>,
}

impl ResourceHandle {
    pub fn spawn(config: hast_conf::Resource, env: Env) -> (ResourceHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let task = ResourceTask {
            secret: watch::channel(config.secret.clone()).0,
            pins: watch::channel(config.tls_peer_fingerprints.clone()).0,
            endpoints: watch::channel(primary::Endpoints::of(&config)).0,
            config: config.clone(),
            env,
            state: State::Init,
            kept: None,
        };
        let join = tokio::spawn(task.run(rx));
        (
            ResourceHandle {
                name: config.name.clone(),
                config,
                tx,
            },
            join,
        )
    }
}

impl ResourceHandle {
    /// Brings a failed or detached local component back (`hastctl attach`,
    /// and what the event handler calls to retry an aborted `detach`
    /// event): checks that the component answers (header read and
    /// rewritten, data synced), then uses it again; a detached one first
    /// gets the extents written while detached resynced from the peer (the
    /// answer comes once that copy has begun; its end is the `attach`
    /// event). `Err`: nothing changed (the component still fails, no peer
    /// to copy from, not open). See `replication::attach::recover`.
    pub async fn attach(&self) -> Result<String, ApiError> {
        self.ask(Command::Attach).await
    }

    /// `hastctl outdate`: see [`ResourceTask::outdate`].
    pub async fn outdate(&self) -> Result<String, ApiError> {
        self.ask(Command::Outdate).await
    }

    /// Sends the command `make` builds and waits for its answer; a task
    /// that ends first (the resource stopping) answers `TempFail`.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            api_err(
                ErrorKind::TempFail,
                format!("resource \"{}\" is stopping", self.name),
            )
        };
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// What every resource task shares with the daemon.
#[derive(Clone)]
pub struct Env {
    pub node: String,
    pub registry: Arc<Registry>,
    pub nbd_socket_dir: Option<PathBuf>,
    pub nbd_tcp: Option<String>,
    /// This node's TLS certificate and key (`tls_cert`, `tls_key`), replaced
    /// on reload; read at each connection attempt.
    pub tls: crate::replication::tls::SharedIdentity,
    /// Where this node's HA events go (the event journal).
    pub events: crate::events::Events,
    /// `state_dir`: where a detached component's marker is kept
    /// (`datapath::detach::marker_path`).
    pub state_dir: PathBuf,
    /// The node's freezes (`hastctl freeze`).
    pub freezer: Arc<crate::freeze::Freezer>,
}

enum State {
    Init,
    Primary {
        dp: Arc<DataPath>,
        socket: Option<(PathBuf, JoinHandle<()>)>,
        connector: Option<JoinHandle<()>>,
    },
    Secondary {
        dp: Arc<DataPath>,
        /// The attached primary's session and the epoch of its hello.
        session: Option<(JoinHandle<String>, u64)>,
    },
}

impl State {
    fn role(&self) -> Role {
        match self {
            State::Init => Role::Init,
            State::Primary { .. } => Role::Primary,
            State::Secondary { .. } => Role::Secondary,
        }
    }

    fn dp(&self) -> Option<&Arc<DataPath>> {
        match self {
            State::Init => None,
            State::Primary { dp, .. } | State::Secondary { dp, .. } => Some(dp),
        }
    }
}

struct ResourceTask {
    config: hast_conf::Resource,
    /// `config.secret`, shared with the primary's connector so that a
    /// reloaded key file applies to its next connection attempt.
    secret: watch::Sender<Option<hast_conf::Secret>>,
    /// `config.tls_peer_fingerprints`, shared the same way (a certificate
    /// rotation pins the new fingerprint with a reload).
    pins: watch::Sender<Vec<hast_conf::Fingerprint>>,
    /// `config.remote` and `config.source`, followed by the primary's
    /// connector: a reload that changes them reconnects.
    endpoints: watch::Sender<primary::Endpoints>,
    env: Env,
    state: State,
    /// The component (and the lock on it) between closing one role and
    /// opening the next: NBD connections may still hold the old data path
    /// (closed, refusing everything), so reopening would find our own lock.
    kept: Option<Arc<Store>>,
}

fn api_err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

fn stale(e: crate::epoch::StaleEpoch) -> ApiError {
    api_err(ErrorKind::NoPerm, e.to_string())
}

fn io_err(e: impl std::fmt::Display) -> ApiError {
    api_err(ErrorKind::IoErr, e.to_string())
}

/// Resolves at `deadline`, never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn meta_err(e: &MetaError) -> ApiError {
    let kind = match e.exit_code() {
        64 => ErrorKind::Usage,
        65 => ErrorKind::DataErr,
        66 => ErrorKind::NoInput,
        75 => ErrorKind::TempFail,
        _ => ErrorKind::IoErr,
    };
    api_err(kind, e.to_string())
}

impl ResourceTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let lease = match &self.state {
                State::Primary { dp, .. } => dp.lease().deadline(),
                _ => None,
            };
            let cmd = tokio::select! {
                // The deadline first: a renewal queued behind an expiry must
                // not revive a lease the peer may already count as gone.
                biased;
                _ = sleep_until(lease) => {
                    self.lease_expired().await;
                    continue;
                }
                cmd = rx.recv() => cmd,
            };
            let Some(cmd) = cmd else { break };
            match cmd {
                Command::Role(role, epoch, force, reply) => {
                    let was = self.state.role();
                    let res = match self.env.freezer.may_change(&self.config.name) {
                        // The role stays (an epoch raised, a no-op): allowed.
                        Err(e) if role != was => Err(e),
                        _ => match self.two_primaries(role, epoch, force) {
                            Some(e) => Err(e),
                            None => match self.outdated_refusal(role, force).await {
                                Some(e) => Err(e),
                                None => self.set_role(role, epoch).await,
                            },
                        },
                    };
                    match &res {
                        Ok((role, epoch)) => self.log_role(was, *role, *epoch, "hastctl role"),
                        Err(e) => {
                            tracing::error!(resource = %self.config.name, role = %role, "role change failed: {}", e.message)
                        }
                    }
                    let _ = reply.send(res);
                }
                Command::Lease(ms, not_after, reply) => {
                    let _ = reply.send(self.lease(ms, not_after));
                }
                Command::Status(reply) => {
                    let _ = reply.send(self.status().await);
                }
                Command::Metrics(reply) => {
                    let _ = reply.send(self.metrics().await);
                }
                Command::Attach(reply) => {
                    let res = match self.state.dp() {
                        Some(dp) => crate::replication::attach::recover(dp)
                            .await
                            .map_err(|e| api_err(ErrorKind::TempFail, e)),
                        None => Err(api_err(
                            ErrorKind::TempFail,
                            "the resource is not open (role init)",
                        )),
                    };
                    match &res {
                        Ok(m) => tracing::info!(resource = %self.config.name, "attach: {m}"),
                        Err(e) => {
                            tracing::warn!(resource = %self.config.name, "attach refused: {}", e.message)
                        }
                    }
                    let _ = reply.send(res);
                }
                Command::Outdate(reply) => {
                    let res = self.outdate().await;
                    match &res {
                        Ok(m) => tracing::warn!(resource = %self.config.name, "outdate: {m}"),
                        Err(e) => {
                            tracing::warn!(resource = %self.config.name, "outdate refused: {}", e.message)
                        }
                    }
                    let _ = reply.send(res);
                }
                Command::Freeze(generation, reply) => {
                    let res = match &self.state {
                        State::Primary { dp, .. } if !dp.is_withdrawn() => {
                            self.env.freezer.hold(generation, dp)
                        }
                        State::Primary { .. } => Err(api_err(
                            ErrorKind::TempFail,
                            format!("{} is being demoted", self.config.name),
                        )),
                        other => Err(api_err(
                            ErrorKind::NoPerm,
                            format!(
                                "{} is {}, not primary: only a primary is frozen",
                                self.config.name,
                                other.role()
                            ),
                        )),
                    };
                    let _ = reply.send(res);
                }
                Command::Reconfigure(cfg) => {
                    if let Some(dp) = self.state.dp() {
                        dp.reconfigure(&cfg);
                    }
                    self.secret.send_replace(cfg.secret.clone());
                    self.pins.send_replace(cfg.tls_peer_fingerprints.clone());
                    let moved = primary::Endpoints::of(&cfg) != *self.endpoints.borrow();
                    self.config = *cfg;
                    tracing::info!(resource = %self.config.name, "configuration reloaded");
                    if moved {
                        self.follow_remote().await;
                    }
                }
                Command::Peer(conn) => self.peer(*conn).await,
                Command::Stop(reply) => {
                    // Held writes go on (and are answered) before the drain.
                    self.env
                        .freezer
                        .thaw_resource(&self.config.name, Reason::Stopping);
                    let was = self.state.role();
                    match self.set_role(Role::Init, None).await {
                        Ok((role, epoch)) if was != role => {
                            self.log_role(was, role, epoch, "hastd stopping")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(resource = %self.config.name, "stop failed: {}", e.message)
                        }
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
        // The daemon dropped us without a Stop: still leave the disk clean.
        self.env
            .freezer
            .thaw_resource(&self.config.name, Reason::Stopping);
        let _ = self.set_role(Role::Init, None).await;
    }

    /// The line a checker of "one primary per epoch" parses; keep its shape.
    /// A real change (`was` → `role`) is also the `role` event, and a
    /// `promote` or `demote` (args: the epoch; the reason) where it is one.
    fn log_role(&self, was: Role, role: Role, epoch: Option<u64>, why: &str) {
        match epoch {
            Some(epoch) => {
                tracing::info!(resource = %self.config.name, role = %role, epoch, "role changed")
            }
            None => tracing::info!(resource = %self.config.name, role = %role, "role changed"),
        }
        if was == role {
            return;
        }
        let epoch = epoch.map_or_else(String::new, |e| e.to_string());
        let (was, role_s) = (was.to_string(), role.to_string());
        let details = [
            ("ROLE", role_s.clone()),
            ("PREVROLE", was.clone()),
            ("EPOCH", epoch.clone()),
            ("REASON", why.to_string()),
        ];
        let events = &self.env.events;
        let name = &self.config.name;
        events.emit(name, Kind::Role, &[&was, &role_s], &details);
        if role == Role::Primary {
            events.emit(name, Kind::Promote, &[&epoch], &details);
        } else if was == Role::Primary.to_string() {
            events.emit(name, Kind::Demote, &[why], &details);
        }
    }

    /// A hand-made promotion (no `-E epoch`, no `--force`) of a secondary
    /// that a primary is attached to right now: both would accept writes,
    /// a split-brain made on purpose. Refused (77), as drbdadm primary
    /// refuses while the peer is primary. With `-E` the caller is hastmon,
    /// whose epoch fences the old primary (it may look attached while it is
    /// SIGSTOPped, its lease already over); `--force` is the operator's word.
    fn two_primaries(&self, role: Role, epoch: Option<u64>, force: bool) -> Option<ApiError> {
        let State::Secondary {
            dp,
            session: Some(_),
        } = &self.state
        else {
            return None;
        };
        if role != Role::Primary || epoch.is_some() || force || !dp.peer_state().is_connected() {
            return None;
        }
        Some(api_err(
            ErrorKind::NoPerm,
            format!(
                "{}: {}: a second primary makes a split-brain; \
                 demote it first, or hastctl role --force primary {}",
                self.config.name,
                hast_api::PEER_IS_PRIMARY,
                self.config.name
            ),
        ))
    }

    /// A promotion of an outdated copy without `--force`, even with `-E`:
    /// the primary wrote without it, so serving it would take back what
    /// clients were told is written (DRBD refuses to promote an Outdated
    /// disk likewise). hastmon's watchdog never grants such a node; this is
    /// the same rule kept by the copy itself, should the watchdog's record
    /// be lost. `--force` is the operator's word, and clears the mark.
    async fn outdated_refusal(&self, role: Role, force: bool) -> Option<ApiError> {
        if role != Role::Primary || force || self.state.role() == Role::Primary {
            return None;
        }
        let flags = self.header_flags().await?;
        if flags & hast_meta::FLAG_OUTDATED == 0 {
            return None;
        }
        Some(api_err(
            ErrorKind::NoPerm,
            format!(
                "{}: this copy is outdated (the primary wrote without it): a resync from the \
                 primary clears it; or hastctl role --force primary {} to serve it as it is",
                self.config.name, self.config.name
            ),
        ))
    }

    /// The header's flags of the open or closed component (`None` if it
    /// cannot be read).
    async fn header_flags(&self) -> Option<u32> {
        if let Some(dp) = self.state.dp() {
            return Some(dp.header().await.flags);
        }
        let local = self.config.local.clone();
        tokio::task::spawn_blocking(move || {
            Store::open(&local)
                .and_then(|s| s.read_header())
                .ok()
                .map(|p| p.header.flags)
        })
        .await
        .ok()
        .flatten()
    }

    /// `hastctl outdate` (hastmon runs it when its watchdog holds this node
    /// outdated): marks this copy outdated, durably. Refused on a primary
    /// (its copy is the current one) and on a secondary connected to its
    /// primary (the copy is being kept up to date; a mark set now would
    /// outlive the resync that makes it current, as DRBD refuses to outdate
    /// a connected disk).
    async fn outdate(&mut self) -> Result<String, ApiError> {
        const DONE: &str = "marked outdated: not promoted without --force until a resync from the primary completes";
        let name = &self.config.name;
        match &self.state {
            State::Primary { .. } => Err(api_err(
                ErrorKind::NoPerm,
                format!("{name} is primary here: its copy is the current one"),
            )),
            State::Secondary { dp, .. } if dp.peer_state().is_connected() => Err(api_err(
                ErrorKind::TempFail,
                format!("{name} is connected to its primary, which keeps this copy up to date"),
            )),
            State::Secondary { dp, .. } => {
                dp.update_header(|h| h.flags |= hast_meta::FLAG_OUTDATED)
                    .await
                    .map_err(io_err)?;
                Ok(DONE.into())
            }
            State::Init => {
                let local = self.config.local.clone();
                tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
                    let store = Store::open(&local).map_err(|e| meta_err(&e))?;
                    lock_component(store.file(), &local)?;
                    let res = (|| {
                        let mut header = store.read_header().map_err(|e| meta_err(&e))?.header;
                        if header.flags & hast_meta::FLAG_OUTDATED == 0 {
                            header.flags |= hast_meta::FLAG_OUTDATED;
                            header.generation += 1;
                            store.write_header(&header).map_err(|e| meta_err(&e))?;
                        }
                        Ok(())
                    })();
                    unlock_component(store.file());
                    res
                })
                .await
                .map_err(|e| api_err(ErrorKind::Software, e.to_string()))??;
                Ok(DONE.into())
            }
        }
    }

    /// `hastctl lease -t ms`: only a primary holds a lease; `ms` 0 cancels
    /// it (the primary then has no deadline, as before any lease); a renewal
    /// replaces the deadline, but an expired lease is never revived, and a
    /// renewal never reaches past its `not_after` (a CLOCK_MONOTONIC instant
    /// in ns: one that waited in the control socket while hastd was frozen
    /// grants only what is left of it, or nothing). Returns the ms granted.
    fn lease(&mut self, ms: u64, not_after: Option<u64>) -> Result<u64, ApiError> {
        let State::Primary { dp, .. } = &self.state else {
            return Err(api_err(
                ErrorKind::NoPerm,
                format!(
                    "{} is {}, not primary: only a primary holds a lease",
                    self.config.name,
                    self.state.role()
                ),
            ));
        };
        // Converted first, then `now`: the conversion errs early, never late.
        let limit = not_after.map(hast_sys::mono_ns_to_instant);
        let now = Instant::now();
        if dp.lease().expired_at(now) {
            return Err(api_err(
                ErrorKind::NoPerm,
                format!(
                    "the lease of {} expired; it is being demoted",
                    self.config.name
                ),
            ));
        }
        if ms == 0 {
            // A cancel is not a renewal: an expired lease stays expired
            // (checked above), a live one ends here and the primary stays.
            dp.lease().cancel();
            tracing::info!(resource = %self.config.name, "lease cancelled");
            return Ok(0);
        }
        let Some(deadline) = crate::datapath::lease_deadline(now, ms, limit) else {
            // Not renewed, as for an expired lease: the current deadline
            // (if any) stands and ends the primary in time.
            return Err(api_err(
                ErrorKind::NoPerm,
                format!(
                    "lease renewal for {} arrived after its not_after: not renewed",
                    self.config.name
                ),
            ));
        };
        dp.lease().set(deadline);
        let granted =
            u64::try_from(deadline.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(resource = %self.config.name, ms, granted, "lease renewed");
        Ok(granted)
    }

    /// The lease's deadline passed: stop being primary. Secondary (not
    /// init), so that the next primary can connect and resync this copy.
    async fn lease_expired(&mut self) {
        let overdue_ms = match &self.state {
            State::Primary { dp, .. } => dp.lease().deadline().map_or(0, |d| {
                Instant::now().saturating_duration_since(d).as_millis()
            }),
            _ => return,
        };
        tracing::warn!(resource = %self.config.name, overdue_ms, "lease expired: demoting to secondary");
        // The lease wins over a freeze: the group thaws first (its held
        // writes then fail, the lease having passed).
        self.env
            .freezer
            .thaw_resource(&self.config.name, Reason::Demoted);
        match self.set_role(Role::Secondary, None).await {
            Ok((role, epoch)) => self.log_role(Role::Primary, role, epoch, "lease expired"),
            Err(e) => tracing::error!(
                resource = %self.config.name,
                "demotion after the lease expired failed: {}",
                e.message
            ),
        }
    }

    /// Changes the role and the epoch by the rules of `crate::epoch`. A
    /// refused epoch changes nothing, not even the current role.
    async fn set_role(&mut self, role: Role, requested: Option<u64>) -> RoleReply {
        let now = self.state.role();
        if let Some(dp) = self.state.dp() {
            let current = dp.header().await.epoch;
            let epoch =
                crate::epoch::after_role_request(now, role, current, requested).map_err(stale)?;
            if role == now {
                if epoch != current {
                    // Only this task raises the epoch of a primary; on a
                    // secondary the session may adopt a higher one meanwhile.
                    dp.update_header(|h| h.epoch = h.epoch.max(epoch))
                        .await
                        .map_err(io_err)?;
                    tracing::info!(resource = %self.config.name, role = %role, epoch, "epoch raised");
                    self.drop_stale_primary(epoch).await;
                }
                let epoch = match self.state.dp() {
                    Some(dp) => Some(dp.header().await.epoch),
                    None => None,
                };
                return Ok((role, epoch));
            }
        } else if role == Role::Init {
            let epoch = self.closed_epoch(requested).await?;
            return Ok((role, epoch));
        }
        // Every change passes through a closed component, so the old role's
        // I/O has drained and its metadata is written before the new one starts.
        let closed = self
            .close(role, requested.filter(|_| role == Role::Init))
            .await?;
        let epoch = match role {
            Role::Init => closed.map(|h| h.epoch),
            Role::Secondary => {
                let dp = self.open(Role::Secondary, now, requested).await?;
                let epoch = dp.header().await.epoch;
                self.state = State::Secondary { dp, session: None };
                Some(epoch)
            }
            Role::Primary => Some(self.promote(now, requested).await?),
        };
        Ok((self.state.role(), epoch))
    }

    /// A secondary whose epoch was raised stops taking replication from a
    /// primary of an older epoch; that primary's next hello is refused.
    async fn drop_stale_primary(&mut self, epoch: u64) {
        let State::Secondary { dp, session } = &mut self.state else {
            return;
        };
        if session.as_ref().is_some_and(|(_, e)| *e < epoch) {
            if let Some((task, old)) = session.take() {
                task.abort();
                let _ = task.await;
                dp.set_peer_state(PeerState::Disconnected(Some(format!(
                    "primary of epoch {old} superseded"
                ))));
                tracing::warn!(resource = %self.config.name, epoch, "dropped the primary of epoch {old}: superseded");
            }
        }
    }

    /// The epoch of a component in init, raised to `requested` when given
    /// (under the same lock `hastctl create` takes). `None` if it cannot be
    /// read and nothing was asked.
    async fn closed_epoch(&mut self, requested: Option<u64>) -> Result<Option<u64>, ApiError> {
        let local = self.config.local.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<u64>, ApiError> {
            let store = match Store::open(&local) {
                Ok(s) => s,
                Err(_) if requested.is_none() => return Ok(None),
                Err(e) => return Err(meta_err(&e)),
            };
            let Some(e) = requested else {
                return Ok(store.read_header().ok().map(|p| p.header.epoch));
            };
            lock_component(store.file(), &local)?;
            let res = (|| {
                let mut header = store.read_header().map_err(|e| meta_err(&e))?.header;
                if e > header.epoch {
                    header.epoch = e;
                    header.generation += 1;
                    store.write_header(&header).map_err(|e| meta_err(&e))?;
                }
                Ok(Some(header.epoch))
            })();
            unlock_component(store.file());
            res
        })
        .await
        .map_err(|e| api_err(ErrorKind::Software, e.to_string()))?
    }

    /// Stops whatever runs on the component, drains, persists (the role it
    /// goes to and, for init, a raised epoch), closes. Returns the header
    /// written, `None` if nothing was open.
    async fn close(
        &mut self,
        next: Role,
        raise_epoch: Option<u64>,
    ) -> Result<Option<hast_meta::Header>, ApiError> {
        let dp = match std::mem::replace(&mut self.state, State::Init) {
            State::Init => return Ok(None),
            State::Primary {
                dp,
                socket,
                connector,
            } => {
                // Whatever closes a frozen primary thaws its group first
                // (the callers name a better reason before this).
                self.env
                    .freezer
                    .thaw_resource(&self.config.name, Reason::Demoted);
                // No new clients first, then the peer, then the drain.
                self.env.registry.remove(&self.config.provider_name);
                if let Some((path, task)) = socket {
                    task.abort();
                    let _ = std::fs::remove_file(&path);
                }
                // The drain and final barrier still use the link (the peer's
                // flush); only then is the link closed.
                let closed = dp.close().await;
                if let Some(link) = dp.link() {
                    link.fail("resource closing");
                }
                dp.set_link(None);
                if let Some(c) = connector {
                    c.abort();
                    let _ = c.await;
                }
                closed.map_err(|e| api_err(ErrorKind::IoErr, e.to_string()))?;
                dp
            }
            State::Secondary { dp, session } => {
                let closed = dp.close().await;
                if let Some((s, _)) = session {
                    s.abort();
                    let _ = s.await;
                }
                closed.map_err(|e| api_err(ErrorKind::IoErr, e.to_string()))?;
                dp
            }
        };
        let header = dp
            .update_header(|h| {
                h.prevrole = next;
                if let Some(e) = raise_epoch {
                    h.epoch = h.epoch.max(e);
                }
            })
            .await
            .map_err(|e| api_err(ErrorKind::IoErr, e.to_string()))?;
        if next == Role::Init {
            // Clients may hold the closed data path (and its descriptors) a
            // little longer; the component is free for `hastctl create` now.
            unlock_component(dp.store().file());
        } else {
            self.kept = Some(dp.store().clone());
        }
        Ok(Some(header))
    }

    /// Opens the local component, checks its metadata against the config,
    /// locks it against `hastctl create`, records the new role and the epoch
    /// the rules give for a request made in role `was` with `-E requested`
    /// (one crash-atomic header write), and opens a data path on it.
    async fn open(
        &mut self,
        role: Role,
        was: Role,
        requested: Option<u64>,
    ) -> Result<Arc<DataPath>, ApiError> {
        let local = self.config.local.clone();
        let name = self.config.name.clone();
        let kept = self.kept.take();
        // Left by a primary whose component was detached when hastd stopped
        // (datapath/detach.rs): this copy is stale where only the peer was
        // written, and its metadata does not say so.
        let marker = crate::datapath::marker_path(&self.env.state_dir, &name);
        let was_detached = marker.exists();
        let (store, header) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let store = match kept {
                Some(store) => store,
                None => {
                    let store = Store::open(&local).map_err(|e| meta_err(&e))?;
                    lock_component(store.file(), &local)?;
                    Arc::new(store)
                }
            };
            let picked = store.read_header().map_err(|e| meta_err(&e))?;
            if let Some(other) = &picked.other_error {
                tracing::warn!(resource = %name, "one metadata slot is invalid ({other}); using the other");
            }
            let mut header = picked.header;
            hast_meta::check_name(&header, &name).map_err(|e| meta_err(&e))?;
            // Checked against what is on disk now: a secondary session may
            // have adopted a higher epoch since the caller looked.
            header.epoch =
                crate::epoch::after_role_request(was, role, header.epoch, requested)
                    .map_err(stale)?;
            if was_detached {
                header.flags |= hast_meta::FLAG_INCONSISTENT;
                if role == Role::Primary {
                    return Err(api_err(
                        ErrorKind::TempFail,
                        format!(
                            "{} was detached after a local I/O error and hastd stopped before \
                             `hastctl attach`: its copy is stale; make it secondary so that the \
                             primary resyncs it in full",
                            local.display()
                        ),
                    ));
                }
            }
            if role == Role::Primary {
                if header.flags & hast_meta::FLAG_INCONSISTENT != 0 {
                    return Err(api_err(
                        ErrorKind::TempFail,
                        format!(
                            "{} is the target of an unfinished resync and may hold a mix of old \
                             and new data; let the resync finish (or recreate it with hastctl create)",
                            local.display()
                        ),
                    ));
                }
                if header.flags & hast_meta::FLAG_OUTDATED != 0 {
                    // Only a forced promotion gets here (`outdated_refusal`).
                    header.flags &= !hast_meta::FLAG_OUTDATED;
                    tracing::warn!(resource = %name, "promoted with --force although outdated: what the old primary wrote without this copy is not here");
                }
                if header.resuid == 0 {
                    // First promotion of this resource anywhere: name it. A
                    // secondary that has never synced adopts this id.
                    header.resuid = rand::random::<u64>().max(1);
                }
            }
            header.prevrole = role;
            header.generation += 1;
            store.write_header(&header).map_err(|e| meta_err(&e))?;
            Ok((store, header))
        })
        .await
        .map_err(|e| api_err(ErrorKind::Software, e.to_string()))??;
        let side = if role == Role::Primary {
            Side::Primary
        } else {
            Side::Secondary
        };
        let dp = DataPath::open(
            &self.config.name,
            &self.env.node,
            side,
            store,
            header,
            &self.config,
            self.env.events.clone(),
            marker.clone(),
        )
        .map_err(|e| meta_err(&e))?;
        if was_detached {
            // Every extent needsync, durably: the primary's handshake takes
            // the union of both maps, so the whole copy comes from it. Then
            // the marker's job is done (the header says inconsistent).
            dp.map_lock().set_all_needsync();
            dp.persist_map()
                .await
                .map_err(|e| api_err(ErrorKind::IoErr, e.to_string()))?;
            tokio::task::spawn_blocking(move || crate::datapath::remove_marker(&marker))
                .await
                .map_err(|e| api_err(ErrorKind::Software, e.to_string()))?
                .map_err(|e| api_err(ErrorKind::IoErr, e.to_string()))?;
            tracing::warn!(resource = %self.config.name, "this copy was detached when hastd stopped: marked inconsistent, every extent to be resynced from the primary");
        }
        Ok(dp)
    }

    /// Opens the component as primary and offers the export; returns the
    /// epoch it holds (made durable before the export appears).
    async fn promote(&mut self, was: Role, requested: Option<u64>) -> Result<u64, ApiError> {
        let dp = self.open(Role::Primary, was, requested).await?;
        let epoch = dp.header().await.epoch;
        let socket = match &self.env.nbd_socket_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.nbd", self.config.provider_name));
                let access = crate::nbdfront::SocketAccess::of(&self.config)
                    .map_err(|(_, why)| std::io::Error::other(why));
                match access.and_then(|access| {
                    crate::nbdfront::listen_unix(&path, self.env.registry.clone(), access)
                }) {
                    Ok(task) => Some((path, task)),
                    Err(e) => {
                        dp.close().await.ok();
                        return Err(api_err(
                            ErrorKind::IoErr,
                            format!("cannot listen on {}: {e}", path.display()),
                        ));
                    }
                }
            }
            None => None,
        };
        let connector = self.config.remote.is_some().then(|| {
            tokio::spawn(primary::run(
                dp.clone(),
                self.config.clone(),
                self.endpoints.subscribe(),
                self.env.node.clone(),
                self.secret.subscribe(),
                self.pins.subscribe(),
                self.env.tls.clone(),
            ))
        });
        self.env
            .registry
            .insert(&self.config.provider_name, dp.clone());
        self.state = State::Primary {
            dp,
            socket,
            connector,
        };
        Ok(epoch)
    }

    /// `remote` or `source` changed by a reload: as FreeBSD's hastd, drop
    /// the link so that the next connection follows the new configuration.
    /// A primary's connector reconnects to the new remote (one is started if
    /// the resource had none); a secondary drops its primary's session, and
    /// the primary's reconnection is checked against the new `remote`.
    async fn follow_remote(&mut self) {
        let endpoints = primary::Endpoints::of(&self.config);
        self.endpoints.send_replace(endpoints);
        match &mut self.state {
            State::Init => {}
            State::Primary { dp, connector, .. } => {
                if connector.is_none() && self.config.remote.is_some() {
                    *connector = Some(tokio::spawn(primary::run(
                        dp.clone(),
                        self.config.clone(),
                        self.endpoints.subscribe(),
                        self.env.node.clone(),
                        self.secret.subscribe(),
                        self.pins.subscribe(),
                        self.env.tls.clone(),
                    )));
                }
            }
            State::Secondary { dp, session } => {
                if let Some((task, _)) = session.take() {
                    let live = !task.is_finished();
                    task.abort();
                    let _ = task.await;
                    if live {
                        let why = "remote changed by reload";
                        tracing::info!(resource = %self.config.name, "{why}: dropping the primary's connection");
                        dp.set_peer_tls(None);
                        dp.set_peer_state(PeerState::Disconnected(Some(why.to_string())));
                        dp.emit(Kind::Disconnect, &[why], &[("REASON", why.to_string())]);
                    }
                }
            }
        }
    }

    /// A primary connected for this resource.
    async fn peer(&mut self, conn: PeerConn) {
        let PeerConn {
            hello,
            rd,
            mut wr,
            peer,
            tls,
        } = conn;
        let State::Secondary { dp, session } = &mut self.state else {
            let (status, why) = match self.state.role() {
                Role::Primary => (
                    HelloStatus::BothPrimary,
                    "this node is primary too: refusing (two primaries would diverge)",
                ),
                _ => (
                    HelloStatus::NotSecondary,
                    "this node is not secondary (role init)",
                ),
            };
            tracing::warn!(resource = %self.config.name, %peer, "{why}");
            secondary::refuse(&mut wr, status, why).await;
            return;
        };
        if dp.local_state() == LocalState::Detached {
            let why = "the secondary's local component failed and is detached: refused until \
                       `hastctl attach` on the secondary";
            tracing::warn!(resource = %self.config.name, %peer, "{why}");
            secondary::refuse(&mut wr, HelloStatus::PeerRefused, why).await;
            return;
        }
        if session.as_ref().is_some_and(|(old, _)| !old.is_finished()) {
            // A live session is replaced only by a connection that would be
            // accepted: one that fails the checks must not cost the primary
            // its link.
            let own = secondary_hello(dp, &self.env.node).await;
            if let Err(status) = hast_repl::accept(&hello, &own) {
                let why = format!("{status}: refused; the attached primary connection stays");
                tracing::warn!(resource = %self.config.name, %peer, "{why}");
                secondary::refuse(&mut wr, status, &why).await;
                return;
            }
        }
        if let Some((old, _)) = session.take() {
            // The primary reconnected before we noticed the old link die.
            old.abort();
            let _ = old.await;
            tracing::info!(resource = %self.config.name, %peer, "replacing the previous primary connection");
        }
        let (dp, cfg, node, name) = (
            dp.clone(),
            self.config.clone(),
            self.env.node.clone(),
            self.config.name.clone(),
        );
        let epoch = hello.epoch;
        let task = tokio::spawn(async move {
            let tls = tls.map(|t| t.to_string());
            let why = secondary::serve(dp, cfg, node, hello, rd, wr, peer.clone(), tls).await;
            tracing::warn!(resource = %name, %peer, "primary disconnected: {why}");
            why
        });
        *session = Some((task, epoch));
    }

    /// `status` (the one source of truth for role, state and counters) and
    /// the data path's request durations, peer queue and link state.
    async fn metrics(&self) -> crate::metrics::Sample {
        let status = self.status().await;
        let dp = self.state.dp();
        let peer_connected = match (&self.state, self.config.remote.is_some()) {
            (State::Primary { dp, .. }, true) => Some(dp.peer_connected()),
            (State::Secondary { dp, .. }, true) => Some(dp.peer_state().is_connected()),
            _ => None,
        };
        crate::metrics::Sample {
            status,
            durations: dp.map(|dp| dp.durations()).unwrap_or_default(),
            replication_queue_depth: dp.map_or(0, |dp| dp.replication_queue_depth()),
            peer_connected,
        }
    }

    async fn status(&self) -> ResourceStatus {
        let c = &self.config;
        let mut st = ResourceStatus {
            name: c.name.clone(),
            provider_name: c.provider_name.clone(),
            role: self.state.role(),
            status: Status::Inactive,
            local: c.local.display().to_string(),
            remote: c
                .remote
                .as_ref()
                .map_or_else(|| "none".to_string(), |a| a.to_string()),
            replication: c.replication.to_string(),
            checksum: c.checksum.to_string(),
            compression: c.compression.to_string(),
            meta: None,
            dirty_bytes: 0,
            stats: Stats::default(),
            queues: Queues::default(),
            sync: None,
            nbd: Vec::new(),
            nbd_tls: None,
            nbd_access: Vec::new(),
            peer: None,
            epoch: None,
            lease_ms: None,
            fence: None,
            auth: c
                .remote
                .is_some()
                .then(|| crate::replication::auth::mode(c.secret.as_ref()).to_string()),
            tls: None,
            local_stall_ms: None,
            local_state: None,
            local_errors: 0,
            frozen: false,
            freeze: None,
            outdated: false,
        };
        (st.frozen, st.freeze) = self.env.freezer.status(&c.name);
        let Some(dp) = self.state.dp() else {
            let local = c.local.clone();
            let header = tokio::task::spawn_blocking(move || {
                Store::open(&local)
                    .and_then(|s| s.read_header())
                    .ok()
                    .map(|p| p.header)
            })
            .await
            .ok()
            .flatten();
            st.epoch = header.as_ref().map(|h| h.epoch);
            st.outdated = header.is_some_and(|h| h.flags & hast_meta::FLAG_OUTDATED != 0);
            return st;
        };
        let header = dp.header().await;
        st.epoch = Some(header.epoch);
        if dp.side() == Side::Primary {
            st.lease_ms = dp
                .lease()
                .remaining_at(Instant::now())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if c.remote.is_some() {
                st.fence = Some(dp.fence_status());
            }
        }
        st.tls = dp.peer_tls();
        st.local_stall_ms = dp
            .local_stall()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let peer_state = dp.peer_state();
        let syncing = dp.syncing();
        let needsync = dp.map_lock().needsync_count();
        let inconsistent = header.flags & hast_meta::FLAG_INCONSISTENT != 0;
        st.outdated = header.flags & hast_meta::FLAG_OUTDATED != 0;
        let complete = match dp.side() {
            Side::Primary => dp.peer_connected() && !syncing && needsync == 0,
            Side::Secondary => peer_state.is_connected() && !inconsistent,
        };
        let local_state = dp.local_state();
        st.local_state = Some(local_state.as_str().to_string());
        st.local_errors = dp.local_errors();
        st.status = if local_state == LocalState::Detached {
            Status::Detached
        } else if local_state == LocalState::Failed || dp.local_errors() > 0 {
            // Local errors since the last attach: never `complete`.
            Status::Degraded
        } else if c.remote.is_none() || complete {
            Status::Complete
        } else if peer_state.is_split_brain() {
            Status::SplitBrain
        } else if st.outdated {
            Status::Outdated
        } else {
            Status::Degraded
        };
        if c.remote.is_some() {
            st.peer = Some(peer_state.to_string());
        }
        if syncing {
            st.sync = Some(dp.sync_progress());
        }
        st.stats = dp.stats();
        st.queues = Queues {
            inflight: dp.inflight(),
            connections: dp.connections(),
        };
        st.dirty_bytes = dp.dirty_bytes();
        if let State::Primary { socket, .. } = &self.state {
            // libnbd's URIs: `nbds` when only TLS will do.
            let tls = self.env.registry.tls();
            let s = if tls.as_ref().is_some_and(|t| t.required()) {
                "s"
            } else {
                ""
            };
            st.nbd_tls = tls.map(|t| t.describe());
            if let Some(addr) = &self.env.nbd_tcp {
                st.nbd.push(format!("nbd{s}://{addr}/{}", c.provider_name));
                let reach = addr.parse().map_or_else(
                    |_| "TCP, no authentication".into(),
                    |a| crate::nbdfront::tcp_reach(&a),
                );
                st.nbd_access.push(match &st.nbd_tls {
                    // Reachable still, but only through TLS (and the pinned
                    // client certificate, if any).
                    Some(t) => reach.replace("no authentication", &format!("TLS {t}")),
                    None => reach,
                });
            }
            if let Some((path, _)) = socket {
                st.nbd.push(format!(
                    "nbd{s}+unix:///{}?socket={}",
                    c.provider_name,
                    path.display()
                ));
                st.nbd_access
                    .push(match crate::nbdfront::SocketAccess::of(c) {
                        Ok(a) => format!("Unix socket, {a}"),
                        Err((_, why)) => why,
                    });
            }
        }
        st.meta = Some(MetaStatus {
            datasize: header.datasize,
            extentsize: header.extentsize,
            keepdirty: header.keepdirty,
            resuid: header.resuid,
            localcnt: header.localcnt,
            remotecnt: header.remotecnt,
            epoch: header.epoch,
            inconsistent,
        });
        st
    }
}

/// hastd holds an exclusive lock on every component it has open, so that
/// `hastctl create` (which takes the same lock) cannot overwrite metadata
/// under a running resource.
pub fn lock_component(file: &std::fs::File, path: &Path) -> Result<(), ApiError> {
    // SAFETY: flock on a descriptor owned by `file` for the call's duration.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(api_err(
            ErrorKind::TempFail,
            format!("{} is in use by another process: {e}", path.display()),
        ));
    }
    Ok(())
}

fn unlock_component(file: &std::fs::File) {
    // SAFETY: flock on a descriptor owned by `file` for the call's duration.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

async fn secondary_hello(dp: &DataPath, node: &str) -> hast_repl::Hello {
    hast_core::handshake::hello_of(&dp.header().await, node, Role::Secondary)
}

/// Used by the replication listener before handing a connection over: the
/// peer's IP must be one of the configured `remote`'s addresses. Resolved
/// asynchronously: a slow resolver must not stall the runtime's workers.
pub async fn peer_allowed(cfg: &hast_conf::Resource, peer: &std::net::SocketAddr) -> bool {
    let Some((host, port)) = cfg.remote.as_ref().and_then(|a| a.host_port()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip == peer.ip();
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.any(|a| a.ip() == peer.ip()),
        Err(_) => false,
    }
}
