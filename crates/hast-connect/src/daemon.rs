//! `hastcd`: reads hastcd.conf, finds the resources (automatic mode: every
//! resource the controllers report, minus `exclude`; plus the manual
//! `connection` entries), serves one local endpoint per resource, and
//! offers the operator's surfaces (control socket, D-Bus). SIGHUP reloads
//! the configuration without dropping a connected endpoint; SIGTERM and
//! SIGINT stop (pending requests fail with EIO, sockets are removed).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use hast_nbd::{Exports, Limits, OpenError};
use hast_sys::daemon::{notify, Notify, Signal, Signals};
use hast_sys::exit;
use hast_sys::logging::Switch;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinHandle;

use crate::cli::HastcdArgs;
use crate::conf::{self, Config, Controller};
use crate::endpoint::{Client, Endpoint, Found, Poller, Settings, Single};
use crate::follow::Sighting;
use crate::status::{Control, EndpointStatus, Failover};
use crate::upstream::Tls;

/// Local client connections at once, per listener.
const CLIENTS_MAX: usize = 64;

/// hastcd's entry point; returns the exit status.
pub fn main() -> i32 {
    let args = match HastcdArgs::from_env() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Some(path) = &args.idl {
        return match std::fs::write(path, crate::dbus::introspection_xml()) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("hastcd: cannot write {}: {e}", path.display());
                exit::CANTCREAT
            }
        };
    }
    let conf = match conf::load(&args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hastcd: {e}");
            // 66 for a file that cannot be read, 78 for a bad one.
            return e.exit_code();
        }
    };
    let polling = match Polling::of(&conf) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hastcd: {}: {e}", args.file.display());
            return exit::CONFIG;
        }
    };
    let tls = match crate::tls::client_config(&conf) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hastcd: {}: {e}", args.file.display());
            return exit::CONFIG;
        }
    };
    let switch = hast_sys::logging::init_switchable(c"hastcd", args.tron, args.syslog);
    // One worker thread unless TOKIO_WORKER_THREADS says otherwise: the
    // forwarding path is a chain of small hand-offs between tasks, cheapest
    // when they stay on one thread (measured: 1 MiB writes 1.4x faster
    // through one worker than through two on the 2-core bench machine, 4 KiB
    // requests alike), and the client and the server need the other cores.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().thread_name("hastcd").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hastcd: cannot start the runtime: {e}");
            return exit::OSERR;
        }
    };
    runtime.block_on(run(args.file, conf, polling, tls, switch))
}

/// Who to ask about which resource, and how: shared by every endpoint's
/// poller and replaced by a reload.
#[derive(Clone)]
struct Polling {
    controllers: Vec<Controller>,
    manual: BTreeMap<String, Vec<Controller>>,
    secret: Option<hast_conf::Secret>,
    timeout: Duration,
}

impl Polling {
    fn of(conf: &Config) -> Result<Polling, String> {
        Ok(Polling {
            controllers: conf.controllers.clone(),
            manual: conf
                .connections
                .iter()
                .map(|c| (c.resource.clone(), c.controllers.clone()))
                .collect(),
            secret: conf.load_secret()?,
            timeout: conf.discovery_timeout,
        })
    }
}

/// Every controller of a list asked at once; `(controller, answer)`. Stops
/// waiting for the others once an answer is `enough`.
async fn ask_all(
    controllers: &[Controller],
    secret: Option<&hast_conf::Secret>,
    timeout: Duration,
    enough: impl Fn(&[hast_repl::discover::Entry]) -> bool,
) -> Vec<(Controller, Vec<hast_repl::discover::Entry>)> {
    let mut set = tokio::task::JoinSet::new();
    for c in controllers {
        let (c, secret) = (c.clone(), secret.cloned());
        set.spawn(async move {
            let r = crate::discover::query(&c.host, c.port, secret.as_ref(), timeout).await;
            (c, r)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((c, Ok(entries))) => {
                let done = enough(&entries);
                out.push((c, entries));
                if done {
                    // The JoinSet aborts the queries still running.
                    break;
                }
            }
            Ok((c, Err(e))) => tracing::debug!("discovery at {c}: {e}"),
            Err(_) => {}
        }
    }
    out
}

/// An endpoint's poller: discovery at the resource's controllers.
struct Discovery(Arc<RwLock<Polling>>);

impl Poller for Discovery {
    fn poll<'a>(
        &'a self,
        resource: &'a str,
        newer_than: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Vec<Found>> + Send + 'a>> {
        let p = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move {
            let controllers = p.manual.get(resource).unwrap_or(&p.controllers);
            // Enough once a controller says primary above `newer_than`.
            let enough = |entries: &[hast_repl::discover::Entry]| {
                newer_than.is_some_and(|e| {
                    entries.iter().any(|x| {
                        x.name == resource && x.role == hast_meta::Role::Primary && x.epoch > e
                    })
                })
            };
            let answers = ask_all(controllers, p.secret.as_ref(), p.timeout, enough).await;
            answers
                .into_iter()
                .filter_map(|(c, entries)| {
                    let e = entries.into_iter().find(|e| e.name == resource)?;
                    Some(Found {
                        sighting: Sighting {
                            node: c.to_string(),
                            role: e.role,
                            epoch: e.epoch,
                        },
                        export: e.export,
                        nbd: e.nbd,
                        nbd_tls: e.nbd_tls,
                        size: e.size,
                    })
                })
                .collect()
        })
    }
}

fn settings_of(conf: &Config) -> Settings {
    Settings {
        ctrl_loss_tmo: conf.ctrl_loss_tmo,
        poll_interval: conf.poll_interval,
        reconnect_interval: conf.reconnect_interval,
        request_timeout: conf.request_timeout,
        connect_timeout: conf.discovery_timeout,
    }
}

/// One connected resource and what serves it.
struct Entry {
    ep: Arc<Endpoint>,
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

struct Daemon {
    conf: Mutex<Config>,
    polling: Arc<RwLock<Polling>>,
    tls: Option<Tls>,
    endpoints: Mutex<BTreeMap<String, Entry>>,
    /// Resources discovery reported or the configuration names.
    known: Mutex<BTreeSet<String>>,
    /// Resources `hastcctl disconnect` dropped: automatic mode leaves them.
    disconnected: Mutex<BTreeSet<String>>,
    failovers: broadcast::Sender<Failover>,
    switch: Switch,
    limits: Limits,
    /// The loopback TCP endpoint's port, once bound.
    tcp_port: Mutex<Option<(String, u16)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Daemon {
    /// Start serving `name`; `Err` says why not.
    fn add(&self, name: &str) -> Result<(), String> {
        let mut endpoints = lock(&self.endpoints);
        if endpoints.contains_key(name) {
            return Err(format!("{name} is connected already"));
        }
        let conf = lock(&self.conf).clone();
        let ep = Endpoint::new(
            name,
            Arc::new(Discovery(self.polling.clone())),
            settings_of(&conf),
            self.tls.clone(),
            self.failovers.clone(),
        );
        let mut uris = Vec::new();
        let mut tasks = Vec::new();
        let socket = conf.socket_path(name);
        if let Some(path) = &socket {
            let listener =
                bind_unix(path, &conf).map_err(|e| format!("{}: {e}", path.display()))?;
            uris.push(format!("nbd+unix:///{name}?socket={}", path.display()));
            tasks.push(tokio::spawn(serve_unix(
                listener,
                ep.clone(),
                self.limits.clone(),
            )));
        }
        if let Some((host, port)) = lock(&self.tcp_port).clone() {
            uris.push(format!("nbd://{host}:{port}/{name}"));
        }
        ep.set_uris(uris);
        tasks.push(tokio::spawn(ep.clone().run()));
        tracing::info!(resource = %name, "endpoint created; looking for its primary");
        endpoints.insert(name.to_string(), Entry { ep, tasks, socket });
        Ok(())
    }

    fn remove(&self, name: &str) -> bool {
        let Some(e) = lock(&self.endpoints).remove(name) else {
            return false;
        };
        e.ep.withdraw();
        // The driver's task ends by itself (failing what is pending); the
        // listener stops now.
        if let Some(t) = e.tasks.first().filter(|_| e.socket.is_some()) {
            t.abort();
        }
        if let Some(p) = &e.socket {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(resource = %name, "endpoint removed");
        true
    }

    /// Automatic mode: connect what the controllers report.
    async fn catalog(self: Arc<Self>) {
        loop {
            let (p, interval) = {
                let p = self
                    .polling
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                (p, lock(&self.conf).poll_interval)
            };
            if !p.controllers.is_empty() {
                let answers =
                    ask_all(&p.controllers, p.secret.as_ref(), p.timeout, |_| false).await;
                let names: BTreeSet<String> = answers
                    .into_iter()
                    .flat_map(|(_, entries)| entries.into_iter().map(|e| e.name))
                    .collect();
                lock(&self.known).extend(names.iter().cloned());
                let excludes = lock(&self.conf).excludes.clone();
                for name in names {
                    let skip = excludes.contains(&name)
                        || lock(&self.disconnected).contains(&name)
                        || lock(&self.endpoints).contains_key(&name);
                    if !skip {
                        if let Err(e) = self.add(&name) {
                            tracing::error!(resource = %name, "cannot serve: {e}");
                        }
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// SIGHUP: new timing and controllers for everything, new manual
    /// entries connected; nothing connected is dropped.
    fn reload(self: &Arc<Self>, path: &Path) {
        let new = match conf::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload failed, the running configuration stays: {e}");
                return;
            }
        };
        let polling = match Polling::of(&new) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("reload failed, the running configuration stays: {e}");
                return;
            }
        };
        let old = std::mem::replace(&mut *lock(&self.conf), new.clone());
        for (what, changed) in [
            ("socket_dir", old.socket_dir != new.socket_dir),
            ("tcp_listen", old.tcp_listen != new.tcp_listen),
            ("control_socket", old.control_socket != new.control_socket),
            ("dbus", old.dbus != new.dbus),
            ("nbd_tls", old.nbd_tls != new.nbd_tls),
        ] {
            if changed {
                tracing::warn!("{what} changed: takes effect when hastcd restarts");
            }
        }
        *self.polling.write().unwrap_or_else(|e| e.into_inner()) = polling;
        let settings = settings_of(&new);
        for e in lock(&self.endpoints).values() {
            e.ep.set_settings(settings.clone());
        }
        for c in &new.connections {
            lock(&self.known).insert(c.resource.clone());
            if !lock(&self.endpoints).contains_key(&c.resource) {
                if let Err(e) = self.add(&c.resource) {
                    tracing::error!(resource = %c.resource, "cannot serve: {e}");
                }
            }
        }
        for name in lock(&self.endpoints).keys() {
            let manual = new.connections.iter().any(|c| &c.resource == name);
            if new.excludes.contains(name) || (!manual && !new.automatic()) {
                tracing::warn!(resource = %name, "no longer configured; still connected (hastcctl disconnect {name} drops it)");
            }
        }
        tracing::info!("configuration reloaded from {}", path.display());
    }
}

impl Control for Daemon {
    fn status(&self) -> Vec<EndpointStatus> {
        lock(&self.endpoints)
            .values()
            .map(|e| e.ep.status())
            .collect()
    }

    fn connect(&self, resource: &str) -> Result<(), String> {
        if !lock(&self.known).contains(resource) {
            return Err("neither reported by a controller nor configured".to_string());
        }
        lock(&self.disconnected).remove(resource);
        self.add(resource)
    }

    fn disconnect(&self, resource: &str) -> Result<(), String> {
        lock(&self.disconnected).insert(resource.to_string());
        if self.remove(resource) {
            Ok(())
        } else {
            Err("not connected".to_string())
        }
    }

    fn trace(&self, on: bool) {
        self.switch.set(on);
        tracing::info!("trace {}", if on { "on" } else { "off" });
    }
}

/// Binds a resource's Unix endpoint with the configured owner, group and
/// mode. A socket left by an earlier hastcd is replaced; anything else at
/// the path is an error.
fn bind_unix(path: &Path, conf: &Config) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    // Created private (umask 0177), so nobody can connect in the moment
    // before the mode and owner below are set.
    // SAFETY: umask has no preconditions; hastcd creates no other files
    // from other threads meanwhile that the mask could surprise.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(conf.socket_mode))?;
    let (uid, gid) = (conf.socket_owner.id(), conf.socket_group.id());
    std::os::unix::fs::chown(path, uid, gid)?;
    Ok(listener)
}

async fn serve_unix(listener: UnixListener, ep: Arc<Endpoint>, limits: Limits) {
    let exports = Arc::new(Single(ep));
    let slots = Arc::new(Semaphore::new(CLIENTS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many local clients; closing a new one");
            continue;
        };
        let (exports, limits) = (exports.clone(), limits.clone());
        tokio::spawn(async move {
            // Owned halves: no lock between the reader and the writer.
            let (rd, wr) = stream.into_split();
            if let Err(e) = hast_nbd::serve_split(exports, rd, wr, "unix".into(), limits).await {
                tracing::debug!("local client: {e}");
            }
            drop(permit);
        });
    }
}

/// The loopback TCP endpoint's exports: every connected resource by name.
struct Table(Arc<Daemon>);

impl Exports for Table {
    type Export = Client;

    fn list(&self) -> Vec<(String, Option<String>)> {
        lock(&self.0.endpoints)
            .keys()
            .map(|n| (n.clone(), None))
            .collect()
    }

    fn open(&self, name: &str) -> Result<Arc<Client>, OpenError> {
        let endpoints = lock(&self.0.endpoints);
        let ep = if name.is_empty() && endpoints.len() == 1 {
            endpoints.values().next()
        } else {
            endpoints.get(name)
        };
        match ep {
            Some(e) => e.ep.open(),
            None => Err(OpenError::unknown(format!("no endpoint {name:?} here"))),
        }
    }
}

async fn serve_tcp(listener: TcpListener, daemon: Arc<Daemon>) {
    let exports = Arc::new(Table(daemon.clone()));
    let slots = Arc::new(Semaphore::new(CLIENTS_MAX));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many local clients; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (exports, limits) = (exports.clone(), daemon.limits.clone());
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            if let Err(e) = hast_nbd::serve_split(exports, rd, wr, peer.to_string(), limits).await {
                tracing::debug!(%peer, "local client: {e}");
            }
            drop(permit);
        });
    }
}

async fn run(
    path: PathBuf,
    conf: Config,
    polling: Polling,
    tls: Option<Tls>,
    switch: Switch,
) -> i32 {
    let daemon = Arc::new(Daemon {
        conf: Mutex::new(conf.clone()),
        polling: Arc::new(RwLock::new(polling)),
        tls,
        endpoints: Mutex::new(BTreeMap::new()),
        known: Mutex::new(
            conf.connections
                .iter()
                .map(|c| c.resource.clone())
                .collect(),
        ),
        disconnected: Mutex::new(BTreeSet::new()),
        failovers: broadcast::channel(64).0,
        switch,
        limits: Limits::default(),
        tcp_port: Mutex::new(None),
    });
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if let Some(addr) = conf.tcp_listen {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                let port = l.local_addr().map(|a| a.port()).unwrap_or(addr.port());
                let host = match addr.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                };
                *lock(&daemon.tcp_port) = Some((host, port));
                tasks.push(tokio::spawn(serve_tcp(l, daemon.clone())));
            }
            Err(e) => {
                eprintln!("hastcd: cannot listen on tcp_listen {addr}: {e}");
                return exit::OSERR;
            }
        }
    }
    let control = match crate::control::serve(&conf.control_socket, daemon.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "hastcd: cannot serve the control socket {}: {e}",
                conf.control_socket.display()
            );
            return exit::CANTCREAT;
        }
    };
    let dbus = match crate::dbus::offer(conf.dbus, daemon.clone()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("hastcd: {e}");
            return exit::UNAVAILABLE;
        }
    };
    if let Some(dbus) = dbus {
        let mut rx = daemon.failovers.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(f) => {
                        if let Err(e) = dbus.failover(&f).await {
                            tracing::warn!("D-Bus Failover signal: {e}");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }));
    }
    for c in &conf.connections {
        if let Err(e) = daemon.add(&c.resource) {
            eprintln!("hastcd: {}: cannot serve: {e}", c.resource);
            return exit::CANTCREAT;
        }
    }
    tasks.push(tokio::spawn(daemon.clone().catalog()));
    tracing::info!(
        "hastcd ready: {} controllers, {} manual connections",
        conf.controllers.len(),
        conf.connections.len()
    );
    notify(Notify::Ready);
    let signal = loop {
        match signals.next().await {
            Signal::Reload => {
                notify(Notify::Reloading);
                daemon.reload(&path);
                notify(Notify::Ready);
            }
            Signal::Stop(name) => break name,
        }
    };
    notify(Notify::Stopping);
    tracing::info!("stopping on {signal}");
    for t in &tasks {
        t.abort();
    }
    let names: Vec<String> = lock(&daemon.endpoints).keys().cloned().collect();
    for n in names {
        daemon.remove(&n);
    }
    control.close();
    // Let the drivers fail what was pending before the runtime goes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    exit::OK
}
