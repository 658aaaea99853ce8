//! The discovery listener (`discovery_listen`): answers the connector's one
//! question — which resources, in which role and epoch, of what size, served
//! where — with the exchange of `hast_repl::discover` (see its docs for the
//! wire and for what is revealed to whom).
//!
//! Unlike the replication listener it accepts any address: a client host is
//! nobody's `remote`. What keeps a stranger out is the exchange itself: a
//! resource with a `secret_file` is listed only to a client whose MAC
//! verifies with that resource's keys. It is read-only: the answer is built
//! from the resources' status snapshots (`Command::Status`, the same one
//! `hastctl status` reads), nothing is changed, and the resource tasks see at
//! most one status round per [`SNAPSHOT_TTL`] however many clients ask.
//!
//! Bounds: at most [`EXCHANGES_MAX`] exchanges at once (more are closed at
//! once), each bounded by [`EXCHANGE_TIMEOUT`] as a whole — a client that
//! never sends, or sends a byte at a time, is closed when it passes — and
//! one request per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_repl::discover::{self, Entry, Greeting, Offer, Request, Status};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::control::Resources;
use crate::nbdfront::Registry;
use crate::resource::Command;

/// One exchange, from accept to the last byte of the answer.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Exchanges in progress at once; more are closed at once.
pub const EXCHANGES_MAX: usize = 64;
/// A status answer is reused for this long: a flood of requests costs the
/// resource tasks at most one status round per period, while a connector
/// polling every second still sees a role change within a poll.
const SNAPSHOT_TTL: Duration = Duration::from_millis(100);
/// A resource task busy longer than this (a role change draining its
/// clients) is left out of that answer rather than reported stale.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the listener needs from the daemon.
#[derive(Clone)]
pub struct Sources {
    pub resources: Resources,
    /// Whether NBD TLS is required (it changes on reload).
    pub registry: Arc<Registry>,
    /// The bound `nbd_listen` address (`host:port`), if any.
    pub nbd_tcp: Option<String>,
}

/// One resource's entry and the keys that open it.
#[derive(Clone)]
struct Listed {
    entry: Entry,
    secret: Option<hast_conf::Secret>,
}

type Snapshot = Arc<Vec<Listed>>;

/// The last snapshot and when it was taken; the lock also makes concurrent
/// requests wait for one refresh instead of starting one each.
#[derive(Default)]
struct Cache(Mutex<Option<(Instant, Snapshot)>>);

pub async fn listen(
    addr: &hast_conf::Addr,
    sources: Sources,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let hast_conf::Addr::Tcp { host, port } = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "discovery_listen must be a tcp:// address",
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = TcpListener::bind((host, *port)).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(EXCHANGES_MAX));
    let cache = Arc::new(Cache::default());
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    tracing::warn!("discovery accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "too many discovery exchanges; closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sources = sources.clone();
            let cache = cache.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &sources, &cache))
                    .await
                {
                    Err(_) => tracing::debug!(%peer, "discovery exchange timed out; closed"),
                    Ok(Err(why)) => tracing::debug!(%peer, "discovery exchange failed: {why}"),
                    Ok(Ok(listed)) => tracing::debug!(%peer, listed, "discovery answered"),
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

fn nonce() -> discover::Nonce {
    let mut n = [0u8; discover::NONCE_LEN];
    // The OS's CSPRNG: a predictable nonce would let a recorded request be
    // replayed.
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// GREETING, REQUEST, ANSWER, close. Returns how many entries were listed.
async fn exchange(
    mut stream: TcpStream,
    sources: &Sources,
    cache: &Cache,
) -> Result<usize, String> {
    let greeting = Greeting::new(nonce());
    stream
        .write_all(&greeting.encode())
        .await
        .map_err(|e| format!("sending the greeting: {e}"))?;
    let mut buf = [0u8; discover::REQUEST_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    let request = Request::decode(&buf).map_err(|e| e.to_string())?;
    let snapshot = cache.get(sources).await;
    let offers: Vec<Offer<'_>> = snapshot
        .iter()
        .map(|l| Offer {
            entry: l.entry.clone(),
            keys: l.secret.as_ref().map(|s| s.accepted().collect()),
        })
        .collect();
    let (wire, listed) =
        discover::answer(&greeting, &request, &offers).map_err(|e| e.to_string())?;
    stream
        .write_all(&wire)
        .await
        .map_err(|e| format!("sending the answer: {e}"))?;
    let _ = stream.shutdown().await;
    Ok(listed)
}

impl Cache {
    async fn get(&self, sources: &Sources) -> Snapshot {
        let mut slot = self.0.lock().await;
        if let Some((at, snap)) = slot.as_ref() {
            if at.elapsed() < SNAPSHOT_TTL {
                return snap.clone();
            }
        }
        let snap = Arc::new(snapshot(sources).await);
        *slot = Some((Instant::now(), snap.clone()));
        snap
    }
}

/// Every resource's live state, through the same status command `hastctl
/// status` sends (read-only).
async fn snapshot(sources: &Sources) -> Vec<Listed> {
    let handles = sources.resources.read().await.clone();
    let nbd_tls = sources.registry.tls().is_some_and(|t| t.required());
    let nbd: Vec<String> = sources
        .nbd_tcp
        .iter()
        .map(|a| format!("tcp://{a}"))
        .collect();
    // Asked all at once, so one busy resource delays the answer by at most
    // STATUS_TIMEOUT, not once per resource.
    let asked: Vec<_> = handles
        .into_iter()
        .map(|h| {
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                let ask = async {
                    h.tx.send(Command::Status(tx)).await.ok()?;
                    rx.await.ok()
                };
                match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
                    Ok(Some(st)) => Some((st, h.config.secret.clone())),
                    _ => {
                        tracing::debug!(resource = %h.name, "no status in time; left out of the discovery answer");
                        None
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(asked.len());
    for task in asked {
        let Ok(Some((st, secret))) = task.await else {
            continue;
        };
        out.push(Listed {
            entry: Entry {
                name: st.name,
                export: st.provider_name,
                role: st.role,
                // 0 only for a component whose metadata cannot be read:
                // below every real epoch, so no client follows it.
                epoch: st.epoch.unwrap_or(0),
                status: status(st.status),
                size: st.meta.map_or(0, |m| m.datasize),
                nbd: nbd.clone(),
                nbd_tls,
            },
            secret,
        });
    }
    out
}

fn status(s: hast_api::Status) -> Status {
    match s {
        hast_api::Status::Complete => Status::Complete,
        hast_api::Status::Degraded | hast_api::Status::Detached | hast_api::Status::Outdated => {
            Status::Degraded
        }
        hast_api::Status::SplitBrain => Status::SplitBrain,
        hast_api::Status::Inactive => Status::Inactive,
    }
}
