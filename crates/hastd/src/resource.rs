//! One task per resource: the owner of its role and of its local component.
//!
//! Role changes, status requests and reconfiguration arrive as typed
//! commands on a bounded channel and are handled one at a time, so a role
//! change never races another. The task never sits in the data path: once
//! primary, clients reach the [`DataPath`] directly through the NBD front
//! end, and a demotion only closes that data path and waits for it to drain.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hast_api::{ApiError, ErrorKind, MetaStatus, Queues, ResourceStatus, RoleArg, Stats};
use hast_meta::{Header, MetaError, Role, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::datapath::DataPath;
use crate::nbdfront::Registry;

/// Commands queued per resource; control requests beyond this wait.
const COMMAND_QUEUE_DEPTH: usize = 16;

pub enum Command {
    Role(RoleArg, oneshot::Sender<Result<RoleArg, ApiError>>),
    Status(oneshot::Sender<ResourceStatus>),
    /// Options changed that apply live (`local` and `name` changes restart
    /// the resource instead: see the daemon's reload).
    Reconfigure(Box<hast_conf::Resource>),
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
            config: config.clone(),
            env,
            role: RoleArg::Init,
            active: None,
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

/// What every resource task shares with the daemon.
#[derive(Clone)]
pub struct Env {
    pub registry: Arc<Registry>,
    pub nbd_socket_dir: Option<PathBuf>,
    pub nbd_tcp: Option<String>,
}

/// The open local component and what runs on it.
struct Active {
    store: Arc<Store>,
    /// Present while primary.
    primary: Option<Primary>,
    /// Header while secondary (the data path owns it while primary).
    header: Header,
}

struct Primary {
    dp: Arc<DataPath>,
    socket: Option<(PathBuf, JoinHandle<()>)>,
}

struct ResourceTask {
    config: hast_conf::Resource,
    env: Env,
    role: RoleArg,
    active: Option<Active>,
}

fn api_err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
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
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Role(role, reply) => {
                    let res = self.set_role(role).await;
                    match &res {
                        Ok(_) => {
                            tracing::info!(resource = %self.config.name, role = %role, "role changed")
                        }
                        Err(e) => {
                            tracing::error!(resource = %self.config.name, role = %role, "role change failed: {}", e.message)
                        }
                    }
                    let _ = reply.send(res);
                }
                Command::Status(reply) => {
                    let _ = reply.send(self.status().await);
                }
                Command::Reconfigure(cfg) => {
                    if let Some(Active {
                        primary: Some(p), ..
                    }) = &self.active
                    {
                        p.dp.set_metaflush(cfg.metaflush);
                    }
                    self.config = *cfg;
                    tracing::info!(resource = %self.config.name, "configuration reloaded");
                }
                Command::Stop(reply) => {
                    if let Err(e) = self.set_role(RoleArg::Init).await {
                        tracing::error!(resource = %self.config.name, "stop failed: {}", e.message);
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
        // The daemon dropped us without a Stop: still leave the disk clean.
        let _ = self.set_role(RoleArg::Init).await;
    }

    async fn set_role(&mut self, role: RoleArg) -> Result<RoleArg, ApiError> {
        if role == self.role {
            return Ok(role);
        }
        // Every transition passes through a closed component: demote first.
        if self.role == RoleArg::Primary {
            let next = if role == RoleArg::Init {
                Role::Init
            } else {
                Role::Secondary
            };
            self.demote(next).await?;
        }
        if let Some(active) = self.active.take() {
            match role {
                RoleArg::Init => close_component(&self.config.name, active).await,
                RoleArg::Primary => drop(active),
                RoleArg::Secondary => self.active = Some(active),
            }
        }
        self.role = if self.active.is_some() {
            RoleArg::Secondary
        } else {
            RoleArg::Init
        };
        match role {
            RoleArg::Init => {}
            RoleArg::Secondary => {
                if self.active.is_none() {
                    let (store, header) = self.open_component(Role::Secondary).await?;
                    self.active = Some(Active {
                        store,
                        primary: None,
                        header,
                    });
                }
                self.role = RoleArg::Secondary;
            }
            RoleArg::Primary => self.promote().await?,
        }
        Ok(self.role)
    }

    /// Opens the local component, checks its metadata against the config,
    /// locks it against `hastctl create`, and records the new role.
    async fn open_component(&self, role: Role) -> Result<(Arc<Store>, Header), ApiError> {
        let local = self.config.local.clone();
        let name = self.config.name.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let store = Store::open(&local).map_err(|e| meta_err(&e))?;
            lock_component(store.file(), &local)?;
            let picked = store.read_header().map_err(|e| meta_err(&e))?;
            if let Some(other) = &picked.other_error {
                tracing::warn!(resource = %name, "one metadata slot is invalid ({other}); using the other");
            }
            let mut header = picked.header;
            hast_meta::check_name(&header, &name).map_err(|e| meta_err(&e))?;
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
                if header.resuid == 0 {
                    // First promotion of this resource anywhere: name it. A
                    // secondary that has never synced adopts this id.
                    header.resuid = rand::random::<u64>().max(1);
                }
            }
            header.prevrole = role;
            header.generation += 1;
            store.write_header(&header).map_err(|e| meta_err(&e))?;
            Ok((Arc::new(store), header))
        })
        .await
        .map_err(|e| api_err(ErrorKind::Software, e.to_string()))??;
        Ok(opened)
    }

    async fn promote(&mut self) -> Result<(), ApiError> {
        let (store, header) = self.open_component(Role::Primary).await?;
        let dp = DataPath::open(
            &self.config.name,
            store.clone(),
            header.clone(),
            self.config.metaflush,
            self.config.remote.is_some(),
        )
        .map_err(|e| meta_err(&e))?;
        let socket = match &self.env.nbd_socket_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.nbd", self.config.provider_name));
                match crate::nbdfront::listen_unix(&path, self.env.registry.clone()) {
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
        self.env
            .registry
            .insert(&self.config.provider_name, dp.clone());
        self.active = Some(Active {
            store,
            primary: Some(Primary { dp, socket }),
            header,
        });
        self.role = RoleArg::Primary;
        Ok(())
    }

    /// Stops serving clients, drains and persists; the component stays open.
    async fn demote(&mut self, next: Role) -> Result<(), ApiError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(primary) = active.primary.take() else {
            return Ok(());
        };
        self.env.registry.remove(&self.config.provider_name);
        if let Some((path, task)) = primary.socket {
            task.abort();
            let _ = std::fs::remove_file(&path);
        }
        let result = primary.dp.close().await;
        let header = match result {
            Ok(_) => primary
                .dp
                .update_header(|h| h.prevrole = next)
                .await
                .map_err(|e| api_err(ErrorKind::IoErr, e.to_string())),
            Err(e) => Err(api_err(ErrorKind::IoErr, e.to_string())),
        };
        self.role = RoleArg::Secondary;
        match header {
            Ok(h) => {
                active.header = h;
                Ok(())
            }
            Err(e) => {
                // The component may be failing: close it rather than keep a
                // half-written state open.
                self.active = None;
                self.role = RoleArg::Init;
                Err(e)
            }
        }
    }

    async fn status(&self) -> ResourceStatus {
        let c = &self.config;
        let mut st = ResourceStatus {
            name: c.name.clone(),
            provider_name: c.provider_name.clone(),
            role: self.role,
            status: "-".into(),
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
        };
        let Some(active) = &self.active else {
            return st;
        };
        // No replication yet: a resource with a peer is degraded until it
        // has one; without a peer it is as complete as it can be.
        st.status = if c.remote.is_none() {
            "complete".into()
        } else {
            "degraded".into()
        };
        let header = match &active.primary {
            Some(p) => {
                let dp = &p.dp;
                let k = &dp.counters;
                st.stats = Stats {
                    reads: k.reads.load(Relaxed),
                    writes: k.writes.load(Relaxed),
                    deletes: k.deletes.load(Relaxed),
                    zeroes: k.zeroes.load(Relaxed),
                    flushes: k.flushes.load(Relaxed),
                    bytes_read: k.bytes_read.load(Relaxed),
                    bytes_written: k.bytes_written.load(Relaxed),
                    activemap_updates: k.activemap_updates.load(Relaxed),
                    read_errors: k.read_errors.load(Relaxed),
                    write_errors: k.write_errors.load(Relaxed),
                    delete_errors: k.delete_errors.load(Relaxed),
                    flush_errors: k.flush_errors.load(Relaxed),
                };
                st.queues = Queues {
                    inflight: dp.inflight(),
                    connections: k.connections.load(Relaxed),
                };
                st.dirty_bytes = dp.dirty_bytes();
                if let Some(addr) = &self.env.nbd_tcp {
                    st.nbd.push(format!("nbd://{addr}/{}", c.provider_name));
                }
                if let Some((path, _)) = &p.socket {
                    st.nbd.push(format!(
                        "nbd+unix:///{}?socket={}",
                        c.provider_name,
                        path.display()
                    ));
                }
                dp.header().await
            }
            None => active.header.clone(),
        };
        let _ = &active.store;
        st.meta = Some(MetaStatus {
            datasize: header.datasize,
            extentsize: header.extentsize,
            keepdirty: header.keepdirty,
            resuid: header.resuid,
            localcnt: header.localcnt,
            remotecnt: header.remotecnt,
            epoch: header.epoch,
        });
        st
    }
}

/// Records `prevrole init` and closes the component (which drops the lock).
async fn close_component(name: &str, active: Active) {
    let mut h = active.header.clone();
    if h.prevrole == Role::Init {
        return;
    }
    h.prevrole = Role::Init;
    h.generation += 1;
    let store = active.store.clone();
    let res = tokio::task::spawn_blocking(move || store.write_header(&h)).await;
    if let Ok(Err(e)) = res {
        tracing::error!(resource = %name, "cannot record role init: {e}");
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
