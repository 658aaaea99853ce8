//! Startup, signals, reload and shutdown of the daemon.
//!
//! Nothing starts half-configured: the config is parsed and checked, the
//! pidfile locked and the control socket bound before any resource task
//! runs, and any failure there exits with a sysexits(3) code.

use std::sync::Arc;

use tokio::sync::{oneshot, RwLock};

use crate::control::{self, Resources};
use crate::nbdfront::{self, Registry};
use crate::nbdtls::NbdTls;
use crate::resource::{Command, Env, ResourceHandle};
use crate::{exit, Args};

type TlsIdentity = Arc<crate::replication::tls::Identity>;

/// How long a stopping hastd waits for the journal to take its last events.
const JOURNAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
use hast_sys::daemon::{notify, Daemon, Detach, Notify, Signal, Signals};

pub fn main(args: Args) -> i32 {
    // Absolute config path: a daemon must find it again on SIGHUP whatever
    // its working directory.
    let config_path = std::fs::canonicalize(&args.config).unwrap_or(args.config.clone());
    let (config, nbd_tls, tls_identity) = match load(&config_path, args.node.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hastd: {e}");
            return e.exit_code();
        }
    };
    keep_payload_buffers();
    let pid_path = args.pidfile.clone().unwrap_or(config.pidfile.clone());
    let Daemon {
        pidfile,
        runtime,
        detach,
    } = match hast_sys::daemon::start(
        c"hastd",
        &pid_path,
        args.foreground,
        args.debug,
        // Measured on two cores with both nodes and the client on one
        // machine: one thread answers a QD1 write ~8 us sooner and does
        // 1.8x the random 4 KiB writes at QD32 of two workers, whose
        // cross-thread wake-ups cost more than the work they share.
        // Disk waits stay on the blocking pool (see `datapath`).
        hast_sys::daemon::Threads::One,
        &config.state_dir.join("hastd.log"),
    ) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let code = runtime.block_on(run(
        config,
        nbd_tls,
        tls_identity,
        config_path,
        args.node.clone(),
        detach,
    ));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    pidfile.remove();
    code
}

/// What `load` gives: the configuration with every `secret_file` read, the
/// NBD TLS settings (`nbd_tls_cert`/`nbd_tls_key`) and this node's
/// replication TLS identity (`tls_cert`/`tls_key`).
type Loaded = (hast_conf::Config, Option<Arc<NbdTls>>, Option<TlsIdentity>);

/// Reads the configuration and every file it names: a key or certificate
/// file that is missing, malformed or readable by others, or a socket owner
/// that does not exist, stops hastd from starting (and a reload from
/// applying), with the file and line on the terminal.
fn load(path: &std::path::Path, node: Option<&str>) -> Result<Loaded, hast_conf::ConfigError> {
    let mut c = hast_conf::load(path, node)?;
    c.load_secrets()?;
    for r in &c.resources {
        // A missing socket owner or group is found now, not at promotion.
        if let Err((line, why)) = crate::nbdfront::SocketAccess::of(r) {
            return Err(hast_conf::ConfigError::at(
                &c.file,
                line,
                hast_conf::ErrorKind::Lookup(why),
            ));
        }
    }
    c.load_nbd_tls()?;
    let nbd_tls = NbdTls::from_config(&c)?;
    let identity = crate::replication::tls::load_identity(&c)?;
    Ok((c, nbd_tls, identity))
}

/// `off`, `required`, `optional, client certificate pinned`, ...
fn describe_tls(tls: &Option<Arc<NbdTls>>) -> String {
    tls.as_ref()
        .map_or_else(|| "off".to_string(), |t| t.describe())
}

/// Payload buffers (up to 32 MiB, typically 4 KiB to 1 MiB) are allocated
/// and freed once per request. glibc serves allocations above its mmap
/// threshold with a fresh mapping and gives trimmed heap tops back to the
/// kernel, so every large request paid a page fault and a kernel page clear
/// per 4 KiB (measured: a third of the primary's CPU on 1 MiB writes). Served
/// from the heap and kept there, freed buffers are reused as they are. What
/// is kept is bounded by the peak in flight (`INFLIGHT_BYTES_MAX` per NBD
/// connection, the replication queues).
fn keep_payload_buffers() {
    #[cfg(target_env = "gnu")]
    {
        // The largest threshold glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

async fn run(
    config: hast_conf::Config,
    nbd_tls: Option<Arc<NbdTls>>,
    tls_identity: Option<TlsIdentity>,
    config_path: std::path::PathBuf,
    node: Option<String>,
    mut detach: Detach,
) -> i32 {
    let control_path = match &config.control {
        hast_conf::Addr::Unix(p) => p.clone(),
        other => {
            tracing::error!("control address {other} is not a uds:// path");
            return hast_conf::ConfigError::EX_CONFIG;
        }
    };
    let listener = match control::bind(&control_path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot bind control socket {}: {e}", control_path.display());
            return exit::CANTCREAT;
        }
    };
    // The journal before any resource runs, so no event is ever emitted
    // into nothing; the handler lock makes this hastd the node's only one.
    let (events, event_service) = match crate::events::Service::start(
        &config.state_dir,
        &config.node,
        crate::events::Hooks::from_config(&config),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            let _ = std::fs::remove_file(&control_path);
            return match e {
                crate::events::StartError::Lock(hast_events::LockError::Held { .. }) => {
                    exit::TEMPFAIL
                }
                _ => exit::CANTCREAT,
            };
        }
    };
    let registry = Arc::new(Registry::new(&config));
    let tls_shown = describe_tls(&nbd_tls);
    registry.set_tls(nbd_tls);
    let nbd_tcp = match &config.nbd_listen {
        Some(addr) => match nbdfront::listen_tcp(addr, registry.clone()).await {
            Ok((local, task)) => Some((local, task)),
            Err(e) => {
                tracing::error!("cannot listen for NBD on {addr}: {e}");
                let _ = std::fs::remove_file(&control_path);
                return exit::CANTCREAT;
            }
        },
        None => None,
    };
    if let Some(dir) = &config.nbd_socket_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!("cannot create {}: {e}", dir.display());
            return exit::CANTCREAT;
        }
    }
    let env = Env {
        tls: Arc::new(std::sync::RwLock::new(tls_identity)),
        node: config.node.clone(),
        registry: registry.clone(),
        nbd_socket_dir: config.nbd_socket_dir.clone(),
        nbd_tcp: nbd_tcp.as_ref().map(|(a, _)| a.to_string()),
        events,
        state_dir: config.state_dir.clone(),
        freezer: Arc::default(),
    };
    let resources: Resources = Arc::new(RwLock::new(Vec::new()));
    for r in &config.resources {
        let (handle, _) = ResourceHandle::spawn(r.clone(), env.clone());
        resources.write().await.push(handle);
    }
    let mut repl_tasks = Vec::new();
    // Only nodes with a peer need to listen for one.
    if config.resources.iter().any(|r| r.remote.is_some()) {
        for addr in &config.listen {
            let listening = crate::replication::listener::listen(
                addr,
                resources.clone(),
                config.node.clone(),
                env.tls.clone(),
            );
            match listening.await {
                Ok((local, task)) => {
                    tracing::info!(listen = %local, "replication listener ready");
                    repl_tasks.push(task);
                }
                Err(e) => {
                    tracing::error!("cannot listen for replication on {addr}: {e}");
                    let _ = std::fs::remove_file(&control_path);
                    return exit::CANTCREAT;
                }
            }
        }
    }
    let discovery_task = match &config.discovery_listen {
        Some(addr) => {
            let sources = crate::discovery::Sources {
                resources: resources.clone(),
                registry: registry.clone(),
                nbd_tcp: env.nbd_tcp.clone(),
            };
            match crate::discovery::listen(addr, sources).await {
                Ok((local, task)) => {
                    tracing::info!(listen = %local, "discovery listener ready");
                    Some(task)
                }
                Err(e) => {
                    tracing::error!("cannot listen for discovery on {addr}: {e}");
                    let _ = std::fs::remove_file(&control_path);
                    return exit::CANTCREAT;
                }
            }
        }
        None => None,
    };
    let metrics_task = match &config.metrics_listen {
        Some(addr) => {
            match crate::metrics::listen(addr, resources.clone(), config.node.clone()).await {
                Ok((local, task)) => {
                    tracing::info!(listen = %local, "metrics listener ready");
                    Some(task)
                }
                Err(e) => {
                    tracing::error!("cannot listen for metrics on {addr}: {e}");
                    let _ = std::fs::remove_file(&control_path);
                    return exit::CANTCREAT;
                }
            }
        }
        None => None,
    };
    event_service.set_recover(crate::events::recover_with(resources.clone()));
    let control_task = tokio::spawn(control::serve(
        listener,
        resources.clone(),
        event_service.clone(),
        env.freezer.clone(),
    ));
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(code) => return code,
    };
    tracing::info!(
        node = %config.node,
        resources = config.resources.len(),
        control = %control_path.display(),
        nbd = %env.nbd_tcp.as_deref().unwrap_or("none"),
        nbd_tls = %tls_shown,
        "hastd started"
    );
    if let Some(id) = crate::replication::tls::current(&env.tls) {
        // What the peer must pin (tls_peer_fingerprint), for the operator.
        tracing::info!(fingerprint = %id.fingerprint, "TLS certificate loaded");
    }
    warn_exposed(&config);
    crate::remotes::warn_unresolvable(&config);
    // Every listener is bound: a background hastd leaves the terminal now,
    // and its parent exits 0.
    detach.ready();
    notify(Notify::Ready);
    let mut current = config;
    let signal = loop {
        if let Signal::Stop(name) = signals.next().await {
            break name;
        }
        notify(Notify::Reloading);
        match load(&config_path, node.as_deref()) {
            Ok((new, tls, identity)) => {
                // New certificates and modes apply to the next connection.
                let shown = describe_tls(&tls);
                registry.set_tls(tls);
                tracing::info!(nbd_tls = %shown, "NBD TLS settings applied to new connections");
                // The next replication TLS handshake uses the reloaded
                // certificate; live links keep theirs.
                let old = crate::replication::tls::current(&env.tls).map(|i| i.fingerprint);
                if let Some(id) = identity.as_ref().filter(|i| Some(i.fingerprint) != old) {
                    tracing::info!(fingerprint = %id.fingerprint, "TLS certificate reloaded");
                }
                *env.tls.write().unwrap_or_else(|p| p.into_inner()) = identity;
                reload(&current, &new, &resources, &env).await;
                event_service.set_hooks(crate::events::Hooks::from_config(&new));
                if new.state_dir != current.state_dir {
                    tracing::warn!(
                        "state_dir {} -> {}: the event journal moves at the next start",
                        current.state_dir.display(),
                        new.state_dir.display()
                    );
                }
                warn_exposed(&new);
                crate::remotes::warn_unresolvable(&new);
                current = new;
            }
            Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
        }
        notify(Notify::Ready);
    };
    tracing::info!("stopping on {signal}");
    notify(Notify::Stopping);
    control_task.abort();
    registry.set_stopping();
    let all = std::mem::take(&mut *resources.write().await);
    for r in all {
        stop(&r).await;
    }
    // The stop's own events (demotions) reach the journal before we exit.
    if tokio::time::timeout(JOURNAL_FLUSH_TIMEOUT, env.events.flush())
        .await
        .is_err()
    {
        tracing::error!("event journal did not take the last events in time");
    }
    if let Some((_, task)) = nbd_tcp {
        task.abort();
    }
    for t in repl_tasks
        .into_iter()
        .chain(discovery_task)
        .chain(metrics_task)
    {
        t.abort();
    }
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("stopped");
    exit::OK
}

async fn stop(r: &ResourceHandle) {
    let (tx, rx) = oneshot::channel();
    if r.tx.send(Command::Stop(tx)).await.is_ok() {
        let _ = rx.await;
    }
}

/// Applies a new configuration as FreeBSD's hastd does: new resources start
/// in init, removed ones stop, a changed `local` or `name` restarts the
/// resource (in init), other options apply live. A frozen resource keeps its
/// identity: its removal or restart is not applied (an error says so; a
/// reload after the thaw applies it), its other options are.
async fn reload(
    old: &hast_conf::Config,
    new: &hast_conf::Config,
    resources: &Resources,
    env: &Env,
) {
    for (what, a, b) in [
        ("control", old.control.to_string(), new.control.to_string()),
        (
            "nbd_listen",
            format!("{:?}", old.nbd_listen.as_ref().map(|a| a.to_string())),
            format!("{:?}", new.nbd_listen.as_ref().map(|a| a.to_string())),
        ),
        // Bound once, like the other listeners.
        (
            "discovery_listen",
            format!("{:?}", old.discovery_listen.as_ref().map(|a| a.to_string())),
            format!("{:?}", new.discovery_listen.as_ref().map(|a| a.to_string())),
        ),
        (
            "metrics_listen",
            format!("{:?}", old.metrics_listen.as_ref().map(|a| a.to_string())),
            format!("{:?}", new.metrics_listen.as_ref().map(|a| a.to_string())),
        ),
        (
            "nbd_socket_dir",
            format!("{:?}", old.nbd_socket_dir),
            format!("{:?}", new.nbd_socket_dir),
        ),
        (
            "nbd_max_buffer",
            old.nbd_max_buffer.to_string(),
            new.nbd_max_buffer.to_string(),
        ),
        (
            "nbd_idle_timeout",
            old.nbd_idle_timeout_secs.to_string(),
            new.nbd_idle_timeout_secs.to_string(),
        ),
        // Listeners are bound once; a switch to or from tls:// needs a
        // restart (tls_cert/tls_key changes apply at once).
        (
            "listen",
            format!(
                "{:?}",
                old.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>()
            ),
            format!(
                "{:?}",
                new.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>()
            ),
        ),
    ] {
        if a != b {
            tracing::warn!("change of {what} ({a} -> {b}) takes effect when hastd restarts");
        }
    }
    let mut list = resources.write().await;
    let mut next = Vec::with_capacity(new.resources.len());
    for cfg in &new.resources {
        match list.iter().position(|h| h.name == cfg.name) {
            None => {
                tracing::info!(resource = %cfg.name, "resource added");
                next.push(ResourceHandle::spawn(cfg.clone(), env.clone()).0);
            }
            Some(i) => {
                let mut h = list.swap_remove(i);
                let restart =
                    h.config.local != cfg.local || h.config.provider_name != cfg.provider_name;
                if restart && env.freezer.is_frozen(&cfg.name) {
                    tracing::error!(resource = %cfg.name, "frozen: the change of local or name is not applied; thaw it and reload again");
                    next.push(h);
                } else if restart {
                    tracing::info!(resource = %cfg.name, "local or name changed, restarting the resource");
                    stop(&h).await;
                    next.push(ResourceHandle::spawn(cfg.clone(), env.clone()).0);
                } else {
                    if h.config != *cfg {
                        let _ = h.tx.send(Command::Reconfigure(Box::new(cfg.clone()))).await;
                        h.config = cfg.clone();
                    }
                    next.push(h);
                }
            }
        }
    }
    for gone in list.drain(..) {
        if env.freezer.is_frozen(&gone.name) {
            tracing::error!(resource = %gone.name, "frozen: its removal is not applied; thaw it and reload again");
            next.push(gone);
            continue;
        }
        tracing::info!(resource = %gone.name, "resource removed");
        stop(&gone).await;
    }
    *list = next;
}

/// Settings that leave something open to others, said at start and reload.
fn warn_exposed(c: &hast_conf::Config) {
    if let Some(hast_conf::Addr::Tcp { host, .. }) = &c.nbd_listen {
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        let tls_required = c
            .nbd_tls
            .as_ref()
            .is_some_and(|t| t.mode == hast_conf::NbdTlsMode::Required);
        if !ip.is_ok_and(|ip| ip.is_loopback()) && !tls_required {
            tracing::warn!(
                "nbd_listen {host}: not a loopback address and NBD TLS is not required: \
                 anyone who can reach it can read and write every primary export \
                 (set nbd_tls_cert/nbd_tls_key, see docs/security.md)"
            );
        }
    }
    for r in c
        .resources
        .iter()
        .filter(|r| r.remote.is_some() && r.secret.is_none())
    {
        tracing::warn!(
            resource = %r.name,
            "no secret_file: replication connections are checked by source address only \
             (any local user on the peer's host can connect); see docs/security.md"
        );
    }
}
