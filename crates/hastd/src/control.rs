//! The control socket: reads framed `hast_api` requests from `hastctl` and
//! answers them by sending typed commands to the resource tasks, or, for
//! `events`, by asking the event journal's service; a `freeze` it drives
//! in steps through the node's [`Freezer`] and the resource tasks. It holds
//! no resource state of its own and is never in the data path.

use std::path::Path;
use std::sync::Arc;

use hast_api::{
    decode_body, decode_len, encode, ApiError, Envelope, ErrorKind, FreezeDone, FreezeTimeout,
    LeaseOutcome, Request, ResourceOutcome, Response, RoleOutcome, ThawOutcome, HEADER_LEN,
    LEASE_MS_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, RwLock};

use crate::events::Service as EventService;
use crate::freeze::policy::Asked;
use crate::freeze::{Freezer, Settle};
use crate::resource::{Command, ResourceHandle};

/// Control connections served at once; more wait in the listen backlog.
const CONTROL_CONNECTIONS_MAX: usize = 32;
/// A control client that sends nothing for this long is dropped.
const CONTROL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// A client that does not take an answer (or a follower its next change)
/// within this is dropped: nothing here waits on a client that never reads.
const CONTROL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The resources in configuration order, shared with the reload logic.
pub type Resources = Arc<RwLock<Vec<ResourceHandle>>>;

/// Binds the control socket with mode 0600 (root only), replacing a stale
/// socket file but refusing to steal one a live daemon still answers on.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    tokio_listener(hast_sys::sock::bind_control("hastd", path)?)
}

fn tokio_listener(l: std::os::unix::net::UnixListener) -> std::io::Result<UnixListener> {
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

pub async fn serve(
    listener: UnixListener,
    resources: Resources,
    events: Arc<EventService>,
    freezer: Arc<Freezer>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONTROL_CONNECTIONS_MAX));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let resources = resources.clone();
        let events = events.clone();
        let freezer = freezer.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, resources, events, freezer).await {
                tracing::debug!("control connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: UnixStream,
    resources: Resources,
    events: Arc<EventService>,
    freezer: Arc<Freezer>,
) -> std::io::Result<()> {
    loop {
        let mut prefix = [0u8; HEADER_LEN];
        match tokio::time::timeout(CONTROL_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let response = match decode_len(prefix) {
            Err(e) => {
                // The stream is out of step after a bad length: answer, close.
                let resp = error(ErrorKind::Usage, e.to_string());
                return send(&mut stream, &resp).await;
            }
            Ok(len) => {
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await?;
                match decode_body::<Envelope<Request>>(&body) {
                    Err(e) => error(ErrorKind::Usage, e.to_string()),
                    Ok(env) if env.version != hast_api::PROTOCOL_VERSION => error(
                        ErrorKind::Usage,
                        format!(
                            "control protocol version {} not supported (hastd speaks {})",
                            env.version,
                            hast_api::PROTOCOL_VERSION
                        ),
                    ),
                    Ok(env) => match env.body {
                        Request::Events { all, follow } => {
                            return list_events(&mut stream, &events, all, follow).await
                        }
                        Request::EventsRetry { kind, seqs } => {
                            match events.retry(kind, seqs).await {
                                Ok(done) => Response::EventsRetried(done),
                                Err(e) => error(retry_error_kind(&e), e.to_string()),
                            }
                        }
                        Request::EventsClear { kind, seqs } => {
                            match events.clear(kind, seqs).await {
                                Ok(done) => Response::EventsCleared(done),
                                Err(e) => error(retry_error_kind(&e), e.to_string()),
                            }
                        }
                        Request::Freeze { names, timeout } => {
                            freeze(&names, timeout, &resources, &freezer).await
                        }
                        Request::Thaw { names } => thaw(&names, &resources, &freezer).await,
                        Request::Snapshot {
                            names,
                            timeout,
                            dir,
                        } => {
                            let ask = crate::snapshot::Ask {
                                names,
                                timeout,
                                dir,
                            };
                            return crate::snapshot::serve(&mut stream, ask, &resources, &freezer)
                                .await;
                        }
                        body => handle(body, &resources).await,
                    },
                }
            }
        };
        send(&mut stream, &response).await?;
    }
}

/// Writes one answer, giving up on a client that does not read it.
pub(crate) async fn send<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    resp: &Response,
) -> std::io::Result<()> {
    match tokio::time::timeout(CONTROL_WRITE_TIMEOUT, stream.write_all(&frame(resp))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "control client does not read its answer",
        )),
    }
}

fn retry_error_kind(e: &hast_events::JournalError) -> ErrorKind {
    use hast_events::JournalError as J;
    match e {
        J::NoSuchEvent(_) | J::NotRetryable { .. } => ErrorKind::Usage,
        _ => ErrorKind::IoErr,
    }
}

/// `hastctl events`: the entries in chunks; with `follow`, then every
/// change until the client closes its end (or stops reading, or falls so
/// far behind that changes were lost: it is told so, then dropped).
async fn list_events(
    stream: &mut UnixStream,
    events: &EventService,
    all: bool,
    follow: bool,
) -> std::io::Result<()> {
    let (now, mut feed) = events.follow(all).await;
    let mut chunks = now.chunks(hast_api::EVENTS_PER_FRAME).peekable();
    if chunks.peek().is_none() {
        send(
            stream,
            &Response::Events {
                entries: Vec::new(),
                more: false,
            },
        )
        .await?;
    }
    while let Some(c) = chunks.next() {
        let more = chunks.peek().is_some();
        send(
            stream,
            &Response::Events {
                entries: c.to_vec(),
                more,
            },
        )
        .await?;
    }
    if !follow {
        return Ok(());
    }
    let (mut rd, mut wr) = stream.split();
    let mut byte = [0u8; 1];
    loop {
        let change = tokio::select! {
            // The client sends nothing more: any read result means it left.
            _ = rd.read(&mut byte) => return Ok(()),
            c = feed.recv() => c,
        };
        match change {
            Ok(entry) => send(&mut wr, &Response::Event(entry)).await?,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let resp = error(
                    ErrorKind::TempFail,
                    format!("fell {n} changes behind the event journal; run hastctl events again"),
                );
                return send(&mut wr, &resp).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn frame(resp: &Response) -> Vec<u8> {
    encode(&Envelope::new(resp.clone())).unwrap_or_else(|e| {
        let fallback = Response::Error(ApiError {
            kind: ErrorKind::Software,
            message: format!("cannot encode answer: {e}"),
        });
        // A bare error always encodes: it is a few short strings.
        encode(&Envelope::new(fallback)).unwrap_or_default()
    })
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error(ApiError { kind, message })
}

/// Resolves `names` (empty or `all` = every resource) against the config.
pub(crate) fn select(
    names: &[String],
    resources: &[ResourceHandle],
) -> Result<Vec<ResourceHandle>, ApiError> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(resources.to_vec());
    }
    names
        .iter()
        .map(|n| {
            resources
                .iter()
                .find(|r| &r.name == n)
                .cloned()
                // 66 as hastctl and hastmonctl: a well-formed name of
                // something this hastd does not have.
                .ok_or_else(|| ApiError {
                    kind: ErrorKind::NoInput,
                    message: format!("unknown resource \"{n}\""),
                })
        })
        .collect()
}

async fn handle(req: Request, resources: &Resources) -> Response {
    let all = resources.read().await.clone();
    match req {
        Request::Role {
            role,
            names,
            epoch,
            force,
        } => {
            let targets = match select(&names, &all) {
                Ok(t) => t,
                Err(e) => return Response::Error(e),
            };
            let mut out = Vec::with_capacity(targets.len());
            for r in targets {
                let (tx, rx) = oneshot::channel();
                let result = match r.tx.send(Command::Role(role, epoch, force, tx)).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(gone(&r.name))),
                    Err(_) => Err(gone(&r.name)),
                };
                let (result, epoch) = match result {
                    Ok((role, epoch)) => (Ok(role), epoch),
                    Err(e) => (Err(e), None),
                };
                out.push(RoleOutcome {
                    name: r.name.clone(),
                    result,
                    epoch,
                });
            }
            Response::Role(out)
        }
        Request::Lease {
            ms,
            names,
            not_after,
        } => {
            if ms > LEASE_MS_MAX {
                return error(
                    ErrorKind::Usage,
                    format!("lease of {ms} ms: expected 0 (cancel) to {LEASE_MS_MAX}"),
                );
            }
            let targets = match select(&names, &all) {
                Ok(t) => t,
                Err(e) => return Response::Error(e),
            };
            let mut out = Vec::with_capacity(targets.len());
            for r in targets {
                let (tx, rx) = oneshot::channel();
                let result = match r.tx.send(Command::Lease(ms, not_after, tx)).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(gone(&r.name))),
                    Err(_) => Err(gone(&r.name)),
                };
                out.push(LeaseOutcome {
                    name: r.name.clone(),
                    result,
                });
            }
            Response::Lease(out)
        }
        Request::Events { .. }
        | Request::EventsRetry { .. }
        | Request::EventsClear { .. }
        | Request::Freeze { .. }
        | Request::Thaw { .. }
        | Request::Snapshot { .. } => error(
            ErrorKind::Software,
            "events or freeze request routed to resources".into(),
        ),
        Request::Attach { names } => match each(&names, &all, Act::Attach).await {
            Ok(out) => Response::Attach(out),
            Err(e) => Response::Error(e),
        },
        Request::Outdate { names } => match each(&names, &all, Act::Outdate).await {
            Ok(out) => Response::Outdate(out),
            Err(e) => Response::Error(e),
        },
        Request::Status { names } => {
            let targets = match select(&names, &all) {
                Ok(t) => t,
                Err(e) => return Response::Error(e),
            };
            let mut out = Vec::with_capacity(targets.len());
            for r in targets {
                let (tx, rx) = oneshot::channel();
                if r.tx.send(Command::Status(tx)).await.is_err() {
                    return Response::Error(gone(&r.name));
                }
                match rx.await {
                    Ok(st) => out.push(st),
                    Err(_) => return Response::Error(gone(&r.name)),
                }
            }
            Response::Status(out)
        }
    }
}

/// `hastctl freeze`: one group, all or nothing.
async fn freeze(
    names: &[String],
    timeout: FreezeTimeout,
    resources: &Resources,
    freezer: &Arc<Freezer>,
) -> Response {
    match freeze_group(names, timeout, resources, freezer, Settle::Flush).await {
        Ok(done) => Response::Frozen(done),
        Err(e) => Response::Error(e),
    }
}

/// Freezes `names` as one group (`freeze`, and the first step of
/// `snapshot`). The book takes the names first (none frozen or being
/// frozen), then each resource task holds its data path's modifications
/// if it is primary (so no role change runs between its check and the
/// hold), then all drain (and flush) at once; any failure releases every
/// member held so far.
pub(crate) async fn freeze_group(
    names: &[String],
    timeout: FreezeTimeout,
    resources: &Resources,
    freezer: &Arc<Freezer>,
    settle: Settle,
) -> Result<FreezeDone, ApiError> {
    let asked = match timeout {
        FreezeTimeout::Seconds(0) | FreezeTimeout::Configured => Asked::Configured,
        FreezeTimeout::Seconds(n) if n > hast_api::FREEZE_TIMEOUT_MAX_SECS => {
            return Err(ApiError {
                kind: ErrorKind::Usage,
                message: format!(
                    "freeze timeout of {n} s: at most {} s",
                    hast_api::FREEZE_TIMEOUT_MAX_SECS
                ),
            })
        }
        FreezeTimeout::Seconds(n) => Asked::Seconds(n),
        FreezeTimeout::Never => Asked::Never,
    };
    let all = resources.read().await.clone();
    let targets = select(names, &all)?;
    let conf: Vec<(String, u32)> = targets
        .iter()
        .map(|r| (r.name.clone(), r.config.freeze_timeout_secs))
        .collect();
    let ticket = freezer.begin(&conf, asked)?;
    for name in &ticket.names {
        let Some(r) = targets.iter().find(|r| &r.name == name) else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let held = match r.tx.send(Command::Freeze(ticket.generation, tx)).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(gone(&r.name))),
            Err(_) => Err(gone(&r.name)),
        };
        if let Err(mut e) = held {
            freezer.abort(ticket.generation);
            e.message = format!("{}; nothing frozen", e.message);
            tracing::warn!(group = %ticket.names.join(" "), "freeze refused: {}", e.message);
            return Err(e);
        }
    }
    freezer.complete(&ticket, settle).await.inspect_err(|e| {
        tracing::warn!(group = %ticket.names.join(" "), "freeze failed: {}", e.message);
    })
}

/// `hastctl thaw`: every group a named resource is in thaws; one answer per
/// resource.
async fn thaw(names: &[String], resources: &Resources, freezer: &Freezer) -> Response {
    let all = resources.read().await.clone();
    let targets = match select(names, &all) {
        Ok(t) => t,
        Err(e) => return Response::Error(e),
    };
    let list: Vec<String> = targets.iter().map(|r| r.name.clone()).collect();
    Response::Thaw(
        freezer
            .thaw_command(&list)
            .into_iter()
            .map(|(name, result)| ThawOutcome { name, result })
            .collect(),
    )
}

fn gone(name: &str) -> ApiError {
    ApiError {
        kind: ErrorKind::TempFail,
        message: format!("resource \"{name}\" is stopping"),
    }
}

/// A per-resource action answered by a message (`attach`, `outdate`).
#[derive(Clone, Copy)]
enum Act {
    Attach,
    Outdate,
}

/// `act` on each named resource in turn, in request order.
async fn each(
    names: &[String],
    all: &[ResourceHandle],
    act: Act,
) -> Result<Vec<ResourceOutcome>, ApiError> {
    let targets = select(names, all)?;
    let mut out = Vec::with_capacity(targets.len());
    for r in targets {
        let result = match act {
            Act::Attach => r.attach().await,
            Act::Outdate => r.outdate().await,
        };
        out.push(ResourceOutcome {
            name: r.name.clone(),
            result,
        });
    }
    Ok(out)
}
