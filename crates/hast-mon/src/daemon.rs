//! The `hastmon` daemon: the peer listener, the control socket, and one
//! task per resource that owns its [`Policy`] and carries out its actions —
//! exchanges with the remotes, status checks and lease renewals (in-process
//! over hastd's control socket with `hastd_control`, else by the `exec`
//! script), the `exec` script for role changes (one ordered queue, plus a
//! separate "latest value wins" runner for lease renewals so a slow start
//! never delays them), and persisting the watchdog state before replying.
//!
//! Every bound derives from the resource's timing: a status check must
//! answer within `check_deadline` (half a heartbeat in-process, a heartbeat
//! by script), a renewal within half a heartbeat and before the lease it
//! carries ends, and any other run of the script within
//! `lease + timeout × attempts`.
//!
//! The policy's clock is `Instant` (CLOCK_MONOTONIC) in milliseconds since
//! the daemon started; wall-clock jumps change nothing.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_conf::Addr;
use hast_sys::daemon::{notify, Daemon, Detach, Notify, Signal, Signals};
use hast_sys::exit;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::Key;
use crate::conf::{self, Config, Resource};
use crate::ctl::{self, CtlRequest, CtlResponse, RemoteStatus, ResourceStatus};
use crate::exec;
use crate::msg::{self, ReplyBody, Request, RequestBody, Role};
use crate::net;
use crate::policy::{Action, Exec, Ms, Params, Policy, DRIFT_PPM};
use crate::storage::Hastd;
use crate::store;

/// How often each resource's policy is ticked.
const TICK: Duration = Duration::from_millis(100);

/// Bound on one run of the exec script other than a check: a role change
/// drains I/O, `start` waits for the export.
fn exec_bound(r: &Resource) -> Duration {
    r.timing.lease + r.timing.timeout.saturating_mul(r.timing.attempts.min(1000))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub node: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub foreground: bool,
    pub debug: u8,
}

pub fn main(opts: Options) -> i32 {
    let config_path = std::fs::canonicalize(&opts.config).unwrap_or(opts.config.clone());
    let config = match conf::load(&config_path, opts.node.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hastmon: {e}");
            return e.exit_code();
        }
    };
    // As hastd refuses a resource without a section for this node: a
    // hastmon that takes part in nothing (a host name that matches no `on`
    // section) would run and watch nothing, silently.
    if !config
        .resources
        .iter()
        .any(|r| r.local(&config.node).is_some())
    {
        let names: Vec<String> = config
            .resources
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.name.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        eprintln!(
            "hastmon: {}: no resource has an \"on {}\" section (nodes named: {}); use --node NAME",
            config_path.display(),
            config.node,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return exit::CONFIG;
    }
    let pid_path = opts.pidfile.clone().unwrap_or(config.pidfile.clone());
    let Daemon {
        pidfile,
        runtime,
        detach,
    } = match hast_sys::daemon::start(
        c"hastmon",
        &pid_path,
        opts.foreground,
        opts.debug,
        hast_sys::daemon::Threads::PerCore,
        &config.state_dir.join("hastmon.log"),
    ) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let code = runtime.block_on(run(config, config_path, opts.node.clone(), detach));
    runtime.shutdown_timeout(Duration::from_secs(2));
    pidfile.remove();
    code
}

/// Resource name → its task. Replaced on SIGHUP, read by the listener and
/// the control socket (clone the sender and let go of the lock).
type Routes = Arc<std::sync::RwLock<HashMap<String, mpsc::Sender<Input>>>>;

fn route(routes: &Routes, name: &str) -> Option<mpsc::Sender<Input>> {
    routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
}

fn route_names(routes: &Routes) -> Vec<String> {
    let mut all: Vec<String> = routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    all.sort();
    all
}

/// The policy's timing for resource `r` on a node with section `local`;
/// `in_process`: checks go to hastd's control socket (cheap: four per
/// heartbeat, each answered within half a heartbeat), else to the script
/// (one per heartbeat, answered within it).
fn params_of(r: &Resource, priority: u32, in_process: bool) -> Params {
    let heartbeat = ms(r.timing.heartbeat_interval);
    let tick = ms(TICK);
    let (check_interval, check_deadline) = if in_process {
        ((heartbeat / 4).max(tick), (heartbeat / 2).max(tick))
    } else {
        (heartbeat, heartbeat)
    };
    Params {
        check_interval,
        check_deadline,
        probe_storage: in_process,
        heartbeat: ms(r.timing.heartbeat_interval),
        lease: ms(r.timing.lease),
        complaint_count: r.timing.complaint_count,
        complaint_interval: ms(r.timing.complaint_interval),
        attempts: r.timing.attempts,
        priority,
        drift_ppm: DRIFT_PPM,
        timeout: ms(r.timing.timeout),
    }
}

/// What every resource task shares.
#[derive(Clone)]
struct Shared {
    node: String,
    key: net::KeyCell,
    state_dir: PathBuf,
    hastd_control: Option<PathBuf>,
    t0: Instant,
}

/// Starts the task of resource `r`; `None` if this node has no section in it.
fn spawn_actor(r: &Resource, sh: &Shared) -> Result<Option<mpsc::Sender<Input>>, String> {
    let Some(local) = r.local(&sh.node) else {
        tracing::warn!(resource = %r.name, "no `on {}` section: resource ignored", sh.node);
        return Ok(None);
    };
    let witness = store::load(&sh.state_dir, &r.name)
        .map_err(|e| format!("resource {}: cannot load watchdog state: {e}", r.name))?;
    let now = ms(sh.t0.elapsed());
    let storage = sh.hastd_control.as_ref().map(|socket| Hastd {
        socket: socket.clone(),
        resource: r.name.clone(),
    });
    let policy = Policy::new(
        &sh.node,
        params_of(r, local.priority, storage.is_some()),
        local.remote.len(),
        witness,
        now,
    );
    let (tx, rx) = mpsc::channel(256);
    let actor = Actor {
        res: r.clone(),
        node: sh.node.clone(),
        remotes: local.remote.clone(),
        key: sh.key.clone(),
        state_dir: sh.state_dir.clone(),
        policy,
        t0: sh.t0,
        tx: tx.clone(),
        last_clear: None,
        exec_busy: 0,
        storage,
    };
    tokio::spawn(actor.run(rx));
    Ok(Some(tx))
}

async fn run(
    config: Config,
    config_path: PathBuf,
    node: Option<String>,
    mut detach: Detach,
) -> i32 {
    let control_path = match &config.control {
        Addr::Unix(p) => p.clone(),
        other => {
            tracing::error!("control address {other} is not a unix:// path");
            return exit::CONFIG;
        }
    };
    let keys: Vec<&Key> = config.resources.iter().map(|r| &r.key).collect();
    if keys.windows(2).any(|w| w[0].as_bytes() != w[1].as_bytes()) {
        tracing::error!("all resources must share one key: the listener authenticates before it knows the resource");
        return exit::CONFIG;
    }
    let Some(key) = keys.first().map(|k| (*k).clone()) else {
        tracing::error!("no resource configured");
        return exit::CONFIG;
    };
    let control = match hast_sys::sock::bind_control("hastmon", &control_path).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot bind control socket {}: {e}", control_path.display());
            return exit::CANTCREAT;
        }
    };
    let (host, port) = match &config.listen {
        Addr::Tcp { host, port } => (host.clone(), *port),
        other => {
            tracing::error!("listen address {other} must be tcp://");
            return exit::CONFIG;
        }
    };
    let listen_addr = config.listen.to_string();
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {listen_addr}: {e}");
            let _ = std::fs::remove_file(&control_path);
            return exit::CANTCREAT;
        }
    };
    let shared = Shared {
        node: config.node.clone(),
        key: net::key_cell(key.clone()),
        state_dir: config.state_dir.clone(),
        hastd_control: config.hastd_control.clone(),
        t0: Instant::now(),
    };
    let mut routes = HashMap::new();
    for r in &config.resources {
        match spawn_actor(r, &shared) {
            Ok(Some(tx)) => {
                routes.insert(r.name.clone(), tx);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{e}");
                return exit::IOERR;
            }
        }
    }
    let count = routes.len();
    let routes: Routes = Arc::new(std::sync::RwLock::new(routes));
    let timeout = config
        .resources
        .iter()
        .map(|r| r.timing.timeout)
        .max()
        .unwrap_or(Duration::from_secs(2));
    let peer_routes = routes.clone();
    let peer_task = tokio::spawn(net::serve(
        listener,
        shared.key.clone(),
        timeout,
        move |addr, body| {
            let routes = peer_routes.clone();
            async move { handle_peer(&routes, addr, body).await }
        },
    ));
    let ctl_task = tokio::spawn(serve_control(control, routes.clone()));
    let metrics_task = match &config.metrics_listen {
        Some(addr) => {
            let routes = routes.clone();
            let gather = move || {
                let routes = routes.clone();
                async move {
                    let req = CtlRequest::Status { names: Vec::new() };
                    match self::control(&routes, req).await {
                        CtlResponse::Status { resources } => Some(resources),
                        _ => None,
                    }
                }
            };
            match crate::metrics::listen(addr, config.node.clone(), gather).await {
                Ok((local, task)) => {
                    tracing::info!(listen = %local, "metrics listener ready");
                    Some(task)
                }
                Err(e) => {
                    tracing::error!("cannot listen for metrics on {addr}: {e}");
                    peer_task.abort();
                    ctl_task.abort();
                    let _ = std::fs::remove_file(&control_path);
                    return exit::CANTCREAT;
                }
            }
        }
        None => None,
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(code) => return code,
    };
    tracing::info!(node = %config.node, listen = %listen_addr, resources = count, "hastmon started");
    warn_unresolvable(&config, &config_path);
    // Every listener is bound: a background hastmon leaves the terminal
    // now, and its parent exits 0.
    detach.ready();
    notify(Notify::Ready);
    let mut current = config;
    let signal = loop {
        if let Signal::Stop(name) = signals.next().await {
            break name;
        }
        notify(Notify::Reloading);
        match conf::load(&config_path, node.as_deref()) {
            Ok(new) => {
                reload(&current, &new, &routes, &shared).await;
                warn_unresolvable(&new, &config_path);
                current = new;
            }
            Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
        }
        notify(Notify::Ready);
    };
    tracing::info!("stopping on {signal}");
    notify(Notify::Stopping);
    peer_task.abort();
    ctl_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&control_path);
    exit::OK
}

/// Warns (in the background) about each `remote` of this node's sections
/// whose host does not resolve, naming hastmon.conf's file and the
/// `remote` line, as hastd does for hast.conf (`hast_conf::lookup`): each
/// exchange connects anew, so the name is looked up again every time.
fn warn_unresolvable(c: &Config, file: &std::path::Path) {
    let remotes = c
        .resources
        .iter()
        .filter_map(|r| Some((r, r.local(&c.node)?)))
        .flat_map(|(r, section)| {
            section.remote.iter().map(|addr| hast_conf::lookup::Remote {
                line: section.remote_line,
                resource: r.name.clone(),
                addr: addr.clone(),
            })
        })
        .collect();
    hast_conf::lookup::warn_unresolvable(
        file.to_path_buf(),
        remotes,
        "hastmon looks it up again at each exchange",
        |w| tracing::warn!("{w}"),
    );
}

/// SIGHUP: resources added start in init (HASTMON(8): no role by itself),
/// removed ones stop, the others take their new timing, exec script, nodes
/// and remotes at once, keeping their role and state; a new key applies to
/// the next exchange. Host options take effect at the next start.
async fn reload(old: &Config, new: &Config, routes: &Routes, shared: &Shared) {
    for (what, a, b) in [
        ("control", old.control.to_string(), new.control.to_string()),
        ("listen", old.listen.to_string(), new.listen.to_string()),
        (
            "pidfile",
            old.pidfile.display().to_string(),
            new.pidfile.display().to_string(),
        ),
        (
            "state_dir",
            old.state_dir.display().to_string(),
            new.state_dir.display().to_string(),
        ),
        (
            "hastd_control",
            format!("{:?}", old.hastd_control),
            format!("{:?}", new.hastd_control),
        ),
        (
            "metrics_listen",
            format!("{:?}", old.metrics_listen.as_ref().map(|a| a.to_string())),
            format!("{:?}", new.metrics_listen.as_ref().map(|a| a.to_string())),
        ),
    ] {
        if a != b {
            tracing::warn!("change of {what} ({a} -> {b}) takes effect when hastmon restarts");
        }
    }
    // One key for all resources (the listener authenticates before it
    // knows the resource); a new one applies to the next exchange, so a
    // rotation (docs/security.md) needs no restart.
    let mut keys = new.resources.iter().map(|r| &r.key);
    if let Some(first) = keys.next() {
        if keys.any(|k| k != first) {
            tracing::error!("all resources must share one key; keeping the running key");
        } else if *first != *net::current(&shared.key) {
            *shared.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(first.clone());
            tracing::info!("key reloaded: it applies to the next exchange");
        }
    }
    let mut next = HashMap::new();
    let mut gone = std::mem::take(&mut *routes.write().unwrap_or_else(|p| p.into_inner()));
    for r in &new.resources {
        match gone.remove(&r.name) {
            Some(tx) => {
                if old.resource(&r.name) != Some(r) {
                    tracing::info!(resource = %r.name, "configuration changed");
                    let _ = tx.send(Input::Reconfigure(Box::new(r.clone()))).await;
                }
                next.insert(r.name.clone(), tx);
            }
            None => match spawn_actor(r, shared) {
                Ok(Some(tx)) => {
                    tracing::info!(resource = %r.name, "resource added");
                    next.insert(r.name.clone(), tx);
                }
                Ok(None) => {}
                Err(e) => tracing::error!("{e}"),
            },
        }
    }
    for (name, tx) in gone {
        tracing::info!(resource = %name, "resource removed");
        let _ = tx.send(Input::Stop).await;
    }
    *routes.write().unwrap_or_else(|p| p.into_inner()) = next;
}

fn ms(d: Duration) -> Ms {
    d.as_millis().min(u128::from(u64::MAX)) as Ms
}

async fn handle_peer(
    routes: &Routes,
    addr: std::net::SocketAddr,
    body: Vec<u8>,
) -> Option<Vec<u8>> {
    let req: Request = match msg::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %addr, "{e}");
            return None;
        }
    };
    let Some(tx) = route(routes, &req.resource) else {
        tracing::warn!(peer = %addr, resource = %req.resource, "request for an unknown resource");
        return None;
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send(Input::Request {
        req,
        reply: reply_tx,
    })
    .await
    .ok()?;
    let reply = reply_rx.await.ok()??;
    Some(msg::encode(&reply))
}

async fn serve_control(listener: tokio::net::UnixListener, routes: Routes) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let resp = match tokio::time::timeout(Duration::from_secs(5), ctl::read_request(&mut s))
                .await
            {
                Ok(Ok(req)) => control(&routes, req).await,
                Ok(Err(e)) => CtlResponse::Error {
                    code: exit::DATAERR,
                    message: e,
                },
                Err(_) => return,
            };
            let _ = ctl::write_response(&mut s, &resp).await;
        });
    }
}

/// Fans a control request out to the resources it names.
async fn control(routes: &Routes, req: CtlRequest) -> CtlResponse {
    let names: Vec<String> = match &req {
        CtlRequest::Role { names, .. } | CtlRequest::Status { names } => {
            if names.is_empty() || names.iter().any(|n| n == "all") {
                route_names(routes)
            } else {
                names.clone()
            }
        }
        CtlRequest::Outdate { resource, .. } => vec![resource.clone()],
    };
    let mut statuses = Vec::new();
    for name in &names {
        let Some(tx) = route(routes, name) else {
            return CtlResponse::Error {
                code: exit::NOINPUT,
                message: format!("resource {name} is not configured on this node"),
            };
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx
            .send(Input::Ctl {
                req: req.clone(),
                reply: reply_tx,
            })
            .await
            .is_err()
        {
            return CtlResponse::Error {
                code: exit::SOFTWARE,
                message: format!("resource {name}: its task is gone"),
            };
        }
        match reply_rx.await {
            Ok(CtlResponse::Status { resources }) => statuses.extend(resources),
            Ok(CtlResponse::Ok) => {}
            Ok(err @ CtlResponse::Error { .. }) => return err,
            Err(_) => {
                return CtlResponse::Error {
                    code: exit::SOFTWARE,
                    message: format!("resource {name}: no answer"),
                }
            }
        }
    }
    match req {
        CtlRequest::Status { .. } => CtlResponse::Status {
            resources: statuses,
        },
        _ => CtlResponse::Ok,
    }
}

enum Input {
    Tick,
    Request {
        req: Request,
        reply: oneshot::Sender<Option<ReplyBody>>,
    },
    Reply {
        to: usize,
        req: RequestBody,
        reply: Option<ReplyBody>,
        sent_at: Ms,
    },
    ExecDone {
        what: Exec,
        outcome: exec::Outcome,
        /// The storage's role and epoch, from an in-process check.
        storage: Option<(Role, u64)>,
    },
    Cleared {
        mark: (u64, u64),
    },
    Ctl {
        req: CtlRequest,
        reply: oneshot::Sender<CtlResponse>,
    },
    /// SIGHUP changed this resource's section.
    Reconfigure(Box<Resource>),
    /// SIGHUP removed the resource.
    Stop,
}

struct Actor {
    res: Resource,
    node: String,
    remotes: Vec<Addr>,
    key: net::KeyCell,
    state_dir: PathBuf,
    policy: Policy,
    t0: Instant,
    tx: mpsc::Sender<Input>,
    /// The last (epoch, seq) the watchdog accepted as "peer in sync".
    last_clear: Option<(u64, u64)>,
    /// Exec script runs queued or running.
    exec_busy: u32,
    /// hastd in-process (`hastd_control`), else the script does checks and
    /// renewals.
    storage: Option<Hastd>,
}

impl Actor {
    fn now(&self) -> Ms {
        ms(self.t0.elapsed())
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        tokio::spawn(exec_worker(self.res.exec.clone(), exec_rx, self.tx.clone()));
        let (lease_tx, lease_rx) = watch::channel(None);
        tokio::spawn(lease_worker(
            self.res.exec.clone(),
            self.storage.clone(),
            lease_rx,
            self.tx.clone(),
        ));
        let ticker = self.tx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(TICK);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                if ticker.send(Input::Tick).await.is_err() {
                    return;
                }
            }
        });
        while let Some(input) = rx.recv().await {
            let role_before = (self.policy.role(), self.policy.epoch());
            let actions = match input {
                Input::Tick => {
                    let now = self.now();
                    self.policy.tick(now)
                }
                Input::Request { req, reply } => {
                    let known = self.res.nodes.iter().any(|n| n.name == req.from);
                    if !known || req.from == self.node {
                        tracing::warn!(resource = %self.res.name, from = %req.from, "request from a node not in this resource");
                        let _ = reply.send(None);
                        continue;
                    }
                    let now = self.now();
                    let (answer, actions) = self.policy.on_request(&req.from, &req.body, now);
                    if actions.contains(&Action::Persist) {
                        self.persist();
                    }
                    let _ = reply.send(Some(answer));
                    actions
                }
                Input::Reply {
                    to,
                    req,
                    reply,
                    sent_at,
                } => {
                    let now = self.now();
                    if let Some(ReplyBody::Refused { reason, .. }) = &reply {
                        tracing::debug!(resource = %self.res.name, remote = %self.remotes[to], "refused: {reason}");
                    }
                    self.policy.on_reply(to, &req, reply.as_ref(), sent_at, now)
                }
                Input::ExecDone {
                    what,
                    outcome,
                    storage,
                } => {
                    // Runs of the script were counted when queued.
                    let scripted = match what {
                        Exec::Lease(_) => false,
                        Exec::Status => self.storage.is_none(),
                        _ => true,
                    };
                    if scripted {
                        self.exec_busy = self.exec_busy.saturating_sub(1);
                    }
                    if let Some(e) = &outcome.error {
                        // A check that fails on a node that is not primary
                        // only means it could not take over: not a warning.
                        if self.policy.role() == Role::Primary || !matches!(what, Exec::Status) {
                            tracing::warn!(resource = %self.res.name, "{}: {e}", what.args().join(" "));
                        } else {
                            tracing::debug!(resource = %self.res.name, "{}: {e}", what.args().join(" "));
                        }
                    }
                    if let Some((role, epoch)) = storage {
                        self.policy.observe_storage(role, epoch);
                    }
                    if what == Exec::Status && outcome.ok {
                        self.maybe_clear(&outcome.line);
                    }
                    let now = self.now();
                    self.policy.on_exec(what, outcome.ok, now)
                }
                Input::Cleared { mark } => {
                    self.last_clear = Some(mark);
                    Vec::new()
                }
                Input::Ctl { req, reply } => self.control(req, reply),
                Input::Reconfigure(r) => {
                    if let Some(local) = r.local(&self.node) {
                        self.remotes = local.remote.clone();
                        self.policy.reconfigure(
                            params_of(&r, local.priority, self.storage.is_some()),
                            self.remotes.len(),
                        );
                    }
                    self.res = *r;
                    Vec::new()
                }
                Input::Stop => {
                    if self.policy.role() == Role::Primary {
                        // Nobody would renew its lease any more: stop it
                        // cleanly instead of letting the storage fence itself.
                        tracing::warn!(resource = %self.res.name, "removed from the configuration while primary: stopping it");
                        let out = exec::run(
                            &self.res.exec,
                            &Exec::Stop.args(),
                            &self.exec_env(),
                            exec_bound(&self.res),
                        )
                        .await;
                        if let Some(e) = out.error {
                            tracing::warn!(resource = %self.res.name, "exec stop: {e}");
                        }
                    }
                    return;
                }
            };
            self.apply(actions, &exec_tx, &lease_tx);
            let role_after = (self.policy.role(), self.policy.epoch());
            if role_after.0 != role_before.0 {
                tracing::info!(
                    resource = %self.res.name,
                    role = role_after.0.as_str(),
                    epoch = role_after.1,
                    "hastmon role changed"
                );
            }
        }
    }

    fn persist(&self) {
        if let Err(e) = store::save(&self.state_dir, &self.res.name, self.policy.witness()) {
            // A grant we cannot make durable must not be given: stop here
            // (the reply is never sent), systemd restarts us.
            tracing::error!(resource = %self.res.name, "cannot persist the watchdog state, exiting: {e}");
            std::process::exit(exit::IOERR);
        }
    }

    fn apply(
        &mut self,
        actions: Vec<Action>,
        exec_tx: &mpsc::UnboundedSender<ExecJob>,
        lease_tx: &watch::Sender<Option<Renewal>>,
    ) {
        for a in actions {
            match a {
                Action::Send { to, req } => self.send(to, req),
                Action::Exec(Exec::Lease(until)) => {
                    let heartbeat = self.res.timing.heartbeat_interval;
                    let _ = lease_tx.send(Some(Renewal {
                        what: Exec::Lease(until),
                        until: self.t0 + Duration::from_millis(until),
                        deadline: heartbeat / 2,
                        env: self.exec_env(),
                    }));
                }
                Action::Exec(Exec::Status) => {
                    let deadline = Duration::from_millis(self.policy.params().check_deadline);
                    // A primary's disk that completes nothing for as long as
                    // a check may take is not vouched for; a takeover still
                    // needs the lease to run out after that (≈ 2 s more),
                    // so a disk has ~2.5 s to make progress again.
                    let stall_limit = deadline;
                    match self.storage.clone() {
                        Some(hastd) => {
                            let role = self.policy.role();
                            let tx = self.tx.clone();
                            tokio::spawn(async move {
                                let checked = hastd.check(role, deadline, stall_limit).await;
                                let (outcome, storage) = match checked {
                                    Ok(c) => (c.outcome, Some(c.storage)),
                                    Err(e) => (exec::Outcome::failed(e), None),
                                };
                                let _ = tx
                                    .send(Input::ExecDone {
                                        what: Exec::Status,
                                        outcome,
                                        storage,
                                    })
                                    .await;
                            });
                        }
                        None => {
                            self.exec_busy += 1;
                            let _ = exec_tx.send((Exec::Status, self.exec_env(), deadline));
                        }
                    }
                }
                Action::Exec(e) => {
                    self.exec_busy += 1;
                    let _ = exec_tx.send((e, self.exec_env(), exec_bound(&self.res)));
                }
                Action::Persist => self.persist(),
                Action::Log(m) => tracing::info!(resource = %self.res.name, "{m}"),
            }
        }
    }

    fn exec_env(&self) -> exec::Env {
        exec::Env {
            resource: self.res.name.clone(),
            node: self.node.clone(),
            role: self.policy.role().as_str(),
            epoch: self.policy.epoch(),
        }
    }

    fn send(&self, to: usize, body: RequestBody) {
        let Some(addr) = self.remotes.get(to).cloned() else {
            return;
        };
        let req = self.request(body.clone());
        let key = net::current(&self.key);
        let tx = self.tx.clone();
        let sent_at = self.now();
        let timeout = self.res.timing.timeout;
        tokio::spawn(async move {
            let reply = match net::exchange(&addr, &key, &msg::encode(&req), timeout).await {
                Ok(b) => msg::decode::<ReplyBody>(&b).ok(),
                Err(e) => {
                    tracing::debug!("{e}");
                    None
                }
            };
            let _ = tx
                .send(Input::Reply {
                    to,
                    req: body,
                    reply,
                    sent_at,
                })
                .await;
        });
    }

    /// The storage script reports `in-sync <epoch> <seq>` when the peer has
    /// caught up with degradation `seq` of `epoch`; tell the watchdog once.
    fn maybe_clear(&self, line: &str) {
        let mut w = line.split_whitespace();
        let (Some("in-sync"), Some(e), Some(s)) = (w.next(), w.next(), w.next()) else {
            return;
        };
        let (Ok(epoch), Ok(seq)) = (e.parse::<u64>(), s.parse::<u64>()) else {
            return;
        };
        if self.policy.role() != Role::Primary
            || epoch != self.policy.epoch()
            || self.last_clear == Some((epoch, seq))
        {
            return;
        }
        let Some(peer) = self.data_peer() else { return };
        let ask = self.ask_watchdog(RequestBody::Clear { epoch, peer, seq });
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if ask.await.is_ok() {
                let _ = tx.send(Input::Cleared { mark: (epoch, seq) }).await;
            }
        });
    }

    /// Our request `body` for this resource.
    fn request(&self, body: RequestBody) -> Request {
        Request {
            resource: self.res.name.clone(),
            from: self.node.clone(),
            body,
        }
    }

    /// Sends `body` to the watchdog (or, while it is not known, to every
    /// remote until one acknowledges); resolves to why none did.
    fn ask_watchdog(
        &self,
        body: RequestBody,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let targets = self.watchdog_targets();
        let req = self.request(body);
        let key = net::current(&self.key);
        let timeout = self.res.timing.timeout;
        async move { ask_any(&targets, &key, &req, timeout).await }
    }

    /// Remotes that may be the watchdog: the known one, else all.
    fn watchdog_targets(&self) -> Vec<Addr> {
        let peers = self.policy.peers();
        let known: Vec<Addr> = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.role == Some(Role::Watchdog))
            .filter_map(|(i, _)| self.remotes.get(i).cloned())
            .collect();
        if known.is_empty() {
            self.remotes.clone()
        } else {
            known
        }
    }

    /// The other data node: configured for the resource, not us, not the
    /// watchdog.
    fn data_peer(&self) -> Option<String> {
        let names: Vec<String> = self.res.nodes.iter().map(|n| n.name.clone()).collect();
        self.policy.data_peer(&names).map(str::to_owned)
    }

    /// Handles a control request; returns the policy's actions. The reply
    /// is sent here, or later by a task for requests that need the network.
    fn control(&mut self, req: CtlRequest, reply: oneshot::Sender<CtlResponse>) -> Vec<Action> {
        match req {
            CtlRequest::Role { role, .. } => {
                let now = self.now();
                let actions = self.policy.set_role(role, now);
                let _ = reply.send(CtlResponse::Ok);
                actions
            }
            CtlRequest::Status { .. } => {
                let _ = reply.send(CtlResponse::Status {
                    resources: vec![self.status()],
                });
                Vec::new()
            }
            CtlRequest::Outdate { epoch, seq, .. } => {
                let fail = |message: String| CtlResponse::Error {
                    code: exit::TEMPFAIL,
                    message,
                };
                if self.policy.role() != Role::Primary || epoch != self.policy.epoch() {
                    let _ = reply.send(fail(format!(
                        "not the primary of epoch {epoch} (role {}, epoch {})",
                        self.policy.role().as_str(),
                        self.policy.epoch()
                    )));
                    return Vec::new();
                }
                let Some(peer) = self.data_peer() else {
                    let _ = reply.send(fail("the watchdog is not known yet".into()));
                    return Vec::new();
                };
                let ask = self.ask_watchdog(RequestBody::Outdate { epoch, peer, seq });
                tokio::spawn(async move {
                    let resp = match ask.await {
                        Ok(()) => CtlResponse::Ok,
                        Err(why) => fail(why),
                    };
                    let _ = reply.send(resp);
                });
                Vec::new()
            }
        }
    }

    fn status(&self) -> ResourceStatus {
        let now = self.now();
        let p = &self.policy;
        let complaints = match p.role() {
            Role::Watchdog => p.complaint_rounds(),
            _ => p.complaints(now) as u32,
        };
        ResourceStatus {
            name: self.res.name.clone(),
            role: p.role(),
            state: p.state(),
            epoch: p.epoch(),
            worker: format!(
                "hastmon[{}]{}",
                std::process::id(),
                if self.exec_busy > 0 {
                    ", exec running"
                } else {
                    ""
                }
            ),
            remotes: self
                .remotes
                .iter()
                .zip(p.peers())
                .map(|(a, v)| RemoteStatus {
                    address: a.to_string(),
                    node: v.name.clone(),
                    role: v.role,
                    connected: v.connected,
                })
                .collect(),
            attempts: p.attempts(),
            attempts_max: self.res.timing.attempts,
            complaints,
            heartbeat_ms: ms(self.res.timing.heartbeat_interval),
            lease_ms: p.lease_left(now),
            primary: p.primary_name().map(str::to_owned),
            witness: (p.role() == Role::Watchdog).then(|| p.witness().clone()),
            last_refusal: p.last_refusal.clone(),
            outdated: p.outdated(),
            takeover_pending: p.takeover_pending(),
            storage: p
                .storage()
                .map(|(role, epoch)| ctl::StorageStatus { role, epoch }),
        }
    }
}

/// Sends `req` to each target until one acknowledges it.
async fn ask_any(
    targets: &[Addr],
    key: &Key,
    req: &Request,
    timeout: Duration,
) -> Result<(), String> {
    let mut why = Vec::new();
    for addr in targets {
        match net::exchange(addr, key, &msg::encode(req), timeout).await {
            Ok(b) => match msg::decode::<ReplyBody>(&b) {
                Ok(ReplyBody::Ack) => return Ok(()),
                Ok(ReplyBody::Refused { reason, .. }) => why.push(format!("{addr}: {reason}")),
                Ok(other) => why.push(format!("{addr}: unexpected answer {other:?}")),
                Err(e) => why.push(format!("{addr}: {e}")),
            },
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(format!(
        "the watchdog did not acknowledge: {}",
        why.join("; ")
    ))
}

/// A run of the exec script, with its bound.
type ExecJob = (Exec, exec::Env, Duration);

async fn exec_worker(
    script: PathBuf,
    mut rx: mpsc::UnboundedReceiver<ExecJob>,
    tx: mpsc::Sender<Input>,
) {
    while let Some((what, env, bound)) = rx.recv().await {
        let outcome = exec::run(&script, &what.args(), &env, bound).await;
        let done = Input::ExecDone {
            what,
            outcome,
            storage: None,
        };
        if tx.send(done).await.is_err() {
            return;
        }
    }
}

/// The newest lease renewal asked for.
#[derive(Clone)]
struct Renewal {
    what: Exec,
    /// When the lease must end, whenever the renewal is carried out.
    until: Instant,
    /// Bound on the renewal itself.
    deadline: Duration,
    env: exec::Env,
}

/// Renews the storage lease with the newest value; older renewals that
/// queued up meanwhile are skipped. The lease ends at the same instant
/// however late the renewal runs (in-process, hastd also gets it as an
/// absolute deadline). A failed renewal is reported: the primary stops
/// vouching for a storage that does not take its lease.
async fn lease_worker(
    script: PathBuf,
    storage: Option<Hastd>,
    mut rx: watch::Receiver<Option<Renewal>>,
    tx: mpsc::Sender<Input>,
) {
    while rx.changed().await.is_ok() {
        let Some(r) = rx.borrow_and_update().clone() else {
            continue;
        };
        let left = r.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            continue;
        }
        // Never wait for an answer past the lease it carries.
        let bound = r.deadline.min(left).max(Duration::from_millis(1));
        let outcome = match &storage {
            Some(hastd) => match hastd.renew(r.until, bound).await {
                Ok(()) => exec::Outcome::success(),
                Err(e) => exec::Outcome::failed(format!("lease renewal failed: {e}")),
            },
            None => {
                let left_ms = ms(left).max(1);
                let mut o = exec::run(&script, &Exec::Lease(left_ms).args(), &r.env, bound).await;
                if let Some(e) = o.error.take() {
                    o.error = Some(format!("lease renewal failed: {e}"));
                }
                o
            }
        };
        let done = Input::ExecDone {
            what: r.what,
            outcome,
            storage: None,
        };
        if tx.send(done).await.is_err() {
            return;
        }
    }
}
