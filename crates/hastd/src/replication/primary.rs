//! The primary's connector: connects to the secondary, performs the
//! handshake (hello, decision, activemap merge), installs the link in the
//! data path, runs the resync, and reconnects with backoff whenever the link
//! dies, for as long as the resource is primary.

use hast_events::Kind as Event;
use std::sync::Arc;
use std::time::Duration;

use hast_conf::Addr;
use hast_core::handshake::{hello_of, SyncDone};
use hast_meta::Role;
use hast_repl::{Decision, Hello, HelloReply, HelloStatus, Kind, MapAssembler};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use super::auth;
use super::resync::{self, Direction};
use super::tls::{self, SharedIdentity, TlsInfo};
use crate::datapath::{DataPath, PeerState};
use crate::link::stream::{self, ConnRead};
use crate::link::wire::{read_frame, write_all};
use crate::link::Link;

/// Waits between connection attempts: first, then doubling up to the max.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Bound on connecting and on every handshake step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the connector dials: the resource's `remote` and `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub remote: Option<Addr>,
    pub source: Option<Addr>,
}

impl Endpoints {
    pub fn of(cfg: &hast_conf::Resource) -> Endpoints {
        Endpoints {
            remote: cfg.remote.clone(),
            source: cfg.source.clone(),
        }
    }
}

/// Resolves when `endpoints` differ from `now` (never if the sender is
/// gone: the resource task outlives its connector).
async fn moved(endpoints: &mut watch::Receiver<Endpoints>, now: &Endpoints) {
    if endpoints.wait_for(|e| e != now).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs until the data path is withdrawn (demotion, stop).
/// `secret` follows the resource's `secret_file` across reloads, `pins` its
/// `tls_peer_fingerprint` and `identity` the node's `tls_cert`/`tls_key`;
/// each connection attempt uses what is current then. `endpoints` follows
/// `remote` and `source`: a change drops the link (as FreeBSD's hastd does
/// on reload) and the next attempt dials the new remote at once.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    dp: Arc<DataPath>,
    mut cfg: hast_conf::Resource,
    mut endpoints: watch::Receiver<Endpoints>,
    node: String,
    secret: watch::Receiver<Option<hast_conf::Secret>>,
    pins: watch::Receiver<Vec<hast_conf::Fingerprint>>,
    identity: SharedIdentity,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut last_error = String::new();
    while !dp.is_withdrawn() {
        if dp.is_detached() {
            // The local component is detached and the link is gone: a
            // handshake would take this copy's stale metadata and map for
            // current (and could copy it over the peer). Stay apart until
            // the resource is demoted (see `datapath/detach.rs`).
            let why = "local component detached and the secondary lost: not reconnecting; demote the resource (the next primary resyncs this copy)";
            if last_error != why {
                tracing::warn!(resource = %cfg.name, "{why}");
                last_error = why.to_string();
            }
            dp.set_peer_state(PeerState::Failed(why.to_string()));
            tokio::select! {
                _ = tokio::time::sleep(BACKOFF_MAX) => {}
                _ = dp.withdrawn() => break,
            }
            continue;
        }
        let now = endpoints.borrow_and_update().clone();
        cfg.remote.clone_from(&now.remote);
        cfg.source.clone_from(&now.source);
        if cfg.remote.is_none() {
            // `remote none` by a reload: nothing to dial until one is set.
            dp.set_peer_state(PeerState::None);
            tokio::select! {
                _ = moved(&mut endpoints, &now) => {}
                _ = dp.withdrawn() => break,
            }
            continue;
        }
        let keys = secret.borrow().clone();
        let link_tls = LinkTls {
            pins: pins.borrow().clone(),
            identity: tls::current(&identity),
        };
        match connect(&dp, &cfg, &node, keys.as_ref(), &link_tls).await {
            Ok((link, tasks, decision, peer, tls_info, handshake)) => {
                backoff = BACKOFF_FIRST;
                last_error.clear();
                dp.set_peer_state(PeerState::Connected);
                match &tls_info {
                    Some(t) => {
                        tracing::info!(resource = %cfg.name, peer = %link.peer, ?decision, tls = %t, "connected to secondary")
                    }
                    None => {
                        tracing::info!(resource = %cfg.name, peer = %link.peer, ?decision, "connected to secondary")
                    }
                }
                dp.emit(
                    Event::Connect,
                    &[&link.peer],
                    &[("PEER", link.peer.clone())],
                );
                dp.set_peer_tls(tls_info.map(|t| t.to_string()));
                let (ping, timeout) = link_timing(&cfg);
                let runner = tokio::spawn(link.clone().run(tasks, ping, timeout));
                dp.set_link(Some(link.clone()));
                drop(handshake);
                let direction =
                    if decision.direction() == Some(hast_repl::Direction::SecondaryToPrimary) {
                        Direction::FromPeer
                    } else {
                        Direction::ToPeer
                    };
                // A demotion closes the data path first: its final barrier
                // still flushes the peer through this link, and only then is
                // the link failed (by the resource task). So on withdrawal
                // just stop copying and let the link live until then.
                let follow = {
                    let (mut endpoints, link, name) =
                        (endpoints.clone(), link.clone(), cfg.name.clone());
                    let now = now.clone();
                    tokio::spawn(async move {
                        moved(&mut endpoints, &now).await;
                        tracing::info!(resource = %name, "remote changed by reload: reconnecting");
                        link.fail("remote changed by reload");
                    })
                };
                let synced = resync::run(dp.clone(), link.clone(), direction).await;
                match synced {
                    Ok(bytes) => match finish_sync(&dp, &link, &peer).await {
                        Ok(()) if bytes > 0 => dp.emit(
                            Event::SyncDone,
                            &[],
                            &[("PEER", link.peer.clone()), ("BYTES", bytes.to_string())],
                        ),
                        Ok(()) => {}
                        Err(e) => link.fail(&e),
                    },
                    Err(_) if dp.is_withdrawn() => {}
                    Err(e) => link.fail(&e),
                }
                link.dead().await;
                follow.abort();
                dp.set_link(None);
                runner.abort();
                dp.set_sync_from_peer(false);
                dp.set_peer_tls(None);
                dp.set_peer_state(PeerState::Disconnected(None));
                if !dp.is_withdrawn() {
                    let why = link.reason();
                    tracing::warn!(resource = %cfg.name, "secondary disconnected: {why}");
                    dp.emit(
                        Event::Disconnect,
                        &[&why],
                        &[("PEER", link.peer.clone()), ("REASON", why.clone())],
                    );
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(resource = %cfg.name, "cannot connect to secondary: {text}");
                    if let PeerState::SplitBrain(why) = &e {
                        let peer = cfg
                            .remote
                            .as_ref()
                            .map_or_else(String::new, |r| r.to_string());
                        dp.emit(
                            Event::SplitBrain,
                            &[&peer],
                            &[("PEER", peer.clone()), ("REASON", why.clone())],
                        );
                    }
                    last_error = text;
                }
                dp.set_peer_state(e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = dp.withdrawn() => break,
            // A new remote is tried at once.
            _ = moved(&mut endpoints, &now) => {
                backoff = BACKOFF_FIRST;
                last_error.clear();
                continue;
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The resource's `ping_timeout` and `timeout` (`heartbeat`), both at
/// least a second.
pub fn link_timing(cfg: &hast_conf::Resource) -> (Duration, Duration) {
    let timeout = Duration::from_secs(u64::from(cfg.timeout_secs.max(1)));
    let ping = Duration::from_secs(u64::from(cfg.ping_timeout_secs.max(1))).min(timeout);
    (ping, timeout)
}

/// Records the counters of a completed sync on both copies.
async fn finish_sync(dp: &DataPath, link: &Link, peer: &Hello) -> Result<(), String> {
    let own = dp.header().await;
    let done = SyncDone::of(&own, peer);
    let (s_local, s_remote) = done.secondary;
    link.sync_done(s_local, s_remote)
        .await
        .map_err(|e| format!("sync done not acknowledged: {e}"))?;
    dp.update_header(|h| done.apply_primary(h))
        .await
        .map_err(|e| e.to_string())?;
    dp.set_sync_from_peer(false);
    tracing::info!(resource = %dp.name(), localcnt = done.primary.0, remotecnt = done.primary.1, "resync complete, copies in sync");
    Ok(())
}

type Connected = (
    Arc<Link>,
    crate::link::LinkTasks<tokio::io::BufReader<ConnRead>>,
    Decision,
    Hello,
    Option<TlsInfo>,
    // The handshake ends when this drops, once the link is installed.
    crate::datapath::Handshake,
);

/// What a `tls://` remote needs for one connection attempt.
struct LinkTls {
    pins: Vec<hast_conf::Fingerprint>,
    identity: Option<Arc<tls::Identity>>,
}

async fn dial(remote: &Addr, source: Option<&Addr>) -> Result<TcpStream, String> {
    let Some((host, port)) = remote.host_port() else {
        return Err(format!("remote {remote} is not a tcp address"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {remote}: {e}"))?
        .collect();
    let target = addrs
        .first()
        .ok_or_else(|| format!("{remote} resolves to nothing"))?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some((host, port)) = source.and_then(|a| a.host_port()) {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = h
            .parse()
            .map_err(|_| format!("source {h} is not an IP address"))?;
        socket
            .bind(std::net::SocketAddr::new(ip, port))
            .map_err(|e| format!("cannot bind source {h}: {e}"))?;
    }
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(*target))
        .await
        .map_err(|_| format!("connecting to {remote} timed out"))?
        .map_err(|e| format!("{remote}: {e}"))?;
    let _ = hast_sys::tcp::tune_bulk(&stream);
    Ok(stream)
}

async fn connect(
    dp: &Arc<DataPath>,
    cfg: &hast_conf::Resource,
    node: &str,
    secret: Option<&hast_conf::Secret>,
    link_tls: &LinkTls,
) -> Result<Connected, PeerState> {
    let remote = cfg
        .remote
        .as_ref()
        .ok_or_else(|| "no remote configured".to_string())?;
    let stream = dial(remote, cfg.source.as_ref()).await?;
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| remote.to_string());
    let (mut rd, mut wr, tls_info) = if remote.is_tls() {
        let (rd, wr, info) = tls_connect(stream, remote, link_tls)
            .await
            .map_err(|e| format!("{peer}: {e}"))?;
        (rd, wr, Some(info))
    } else {
        let (rd, wr) = stream::split_tcp(stream);
        (rd, wr, None)
    };
    let names = hello_of(&dp.header().await, node, Role::Primary);
    // Nothing about this copy goes out before the secondary proved it holds
    // the secret: a fake secondary must not learn the hello, nor be able to
    // acknowledge a single write.
    auth::initiate(
        &mut rd,
        &mut wr,
        &names.resource,
        &names.node,
        secret,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| format!("{peer}: {e}"))?;
    // From here until the link is installed (or this attempt fails) no
    // write goes alone, and the counters the HELLO carries are read under
    // the lock a degraded write's bump takes: the decision the secondary
    // makes from them covers every write that will be on this copy alone.
    let (own, handshake) = dp.begin_handshake().await;
    let hello = hello_of(&own, node, Role::Primary);
    let mut out = Vec::new();
    hast_repl::encode_message_frame(Kind::Hello, 0, 0, 0, &hello.encode(), &mut out);
    write_all(&mut wr, &out, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let frame = read_frame(&mut rd, HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| format!("{peer}: {e}"))?;
    if frame.header.kind != Kind::HelloReply {
        return Err(PeerState::Failed(format!(
            "{peer}: expected a hello reply, got {:?}",
            frame.header.kind
        )));
    }
    let reply = HelloReply::decode(&frame.payload).map_err(|e| format!("{peer}: {e}"))?;
    let theirs = reply.hello.clone();
    let decision = match hast_repl::verify_reply(&hello, &reply) {
        Ok(d) => d,
        Err(HelloStatus::SplitBrain) if reply.message.starts_with("split-brain") => {
            return Err(PeerState::SplitBrain(reply.message.clone()))
        }
        Err(HelloStatus::SplitBrain) => {
            return Err(PeerState::SplitBrain(format!(
                "split-brain: {}",
                reply.message
            )))
        }
        // The secondary's message already names the refusal ("stale epoch 3 < 5: ...").
        Err(status) if reply.message.starts_with(&status.to_string()) => {
            return Err(PeerState::Refused(reply.message.clone()))
        }
        Err(status) if !reply.message.is_empty() => {
            return Err(PeerState::Refused(format!("{status}: {}", reply.message)))
        }
        Err(status) => return Err(PeerState::Refused(format!("{peer}: {status}"))),
    };
    let theirs =
        theirs.ok_or_else(|| format!("{peer}: hello reply without the secondary's state"))?;
    let mut assembler =
        MapAssembler::new(own.map_size as usize).map_err(|e| format!("{peer}: {e}"))?;
    let peer_map = loop {
        let f = read_frame(&mut rd, HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| format!("{peer}: {e}"))?;
        if f.header.kind != Kind::Map {
            return Err(PeerState::Failed(format!(
                "{peer}: expected the activemap, got {:?}",
                f.header.kind
            )));
        }
        let last = f.header.has(hast_repl::flags::LAST);
        if let Some(map) = assembler
            .add(f.header.offset, &f.payload, last)
            .map_err(|e| format!("{peer}: {e}"))?
        {
            break map;
        }
    };
    {
        let mut map = dp.map_lock();
        if decision.is_full() {
            map.set_all_needsync();
        } else {
            map.merge_needsync(&peer_map);
            map.dirty_to_needsync();
        }
    }
    if decision.direction() == Some(hast_repl::Direction::SecondaryToPrimary) {
        dp.set_sync_from_peer(true);
    }
    dp.persist_map().await.map_err(|e| e.to_string())?;
    let compression = match cfg.compression {
        hast_conf::Compression::None => hast_repl::Compression::None,
        hast_conf::Compression::Hole => hast_repl::Compression::Hole,
        hast_conf::Compression::Lz4 => hast_repl::Compression::Lz4,
    };
    let checksum = match cfg.checksum {
        hast_conf::Checksum::None => hast_repl::ChecksumKind::None,
        hast_conf::Checksum::Crc32 => hast_repl::ChecksumKind::Crc32,
        hast_conf::Checksum::Crc32c => hast_repl::ChecksumKind::Crc32c,
        hast_conf::Checksum::Sha256 => hast_repl::ChecksumKind::Sha256,
    };
    // Buffered: replies are 32-byte frames, many per segment at high depth.
    let rd = tokio::io::BufReader::with_capacity(stream::READ_BUFFER_BYTES, rd);
    let (link, tasks) = Link::new(peer, rd, wr, compression, checksum, 1);
    Ok((link, tasks, decision, theirs, tls_info, handshake))
}

/// The TLS handshake of a `tls://` remote, bounded like every handshake
/// step: the secondary must present a pinned certificate (and prove its
/// key), and sees ours. The HMAC exchange of a `secret_file` follows inside.
async fn tls_connect(
    stream: TcpStream,
    remote: &Addr,
    link_tls: &LinkTls,
) -> Result<(ConnRead, stream::ConnWrite, TlsInfo), String> {
    let identity = link_tls
        .identity
        .as_ref()
        .ok_or_else(|| format!("{remote} needs tls_cert and tls_key, which are not loaded"))?;
    let config = tls::client_config(identity, &link_tls.pins)?;
    let (host, _) = remote.host_port().unwrap_or_default();
    // The name is not checked (the verifier pins the certificate); rustls
    // only needs one to start the handshake.
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{remote}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let tls = tokio_rustls::TlsStream::Client(tls);
    let info = tls::stream_info(&tls).ok_or("TLS handshake left no peer certificate")?;
    let (rd, wr) = stream::split_tls(tls);
    Ok((rd, wr, info))
}
