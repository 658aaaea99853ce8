//! The replication listener (`listen`): accepts primaries' connections and
//! runs the handshake up to the HELLO, in the order that lets a stranger
//! learn and change nothing:
//!
//! 1. the peer's address must be the `remote` of some resource, else the
//!    socket is closed at once, nothing sent;
//! 2. on a `tls://` listener, the TLS 1.3 handshake: the primary must
//!    present a certificate pinned by some `tls://` resource (and prove
//!    its key), else the socket is closed;
//! 3. CHALLENGE, and the primary's AUTH naming a resource: that resource
//!    must exist, accept this address, be reached the way its `remote`
//!    says (TLS for `tls://`, plain TCP otherwise), over TLS the peer's
//!    certificate must be one that *this* resource pins, and the MAC must
//!    match its `secret_file` — any failure gets the same bare refusal (the
//!    reason goes to the log only, so resource names cannot be probed);
//! 4. AUTH_REPLY with this node's proof, then the HELLO, which must name the
//!    authenticated resource and node and pass its checksum.
//!
//! Only then is the connection handed to the resource's task, which may
//! replace a live session with it. At most [`HANDSHAKES_MAX`] handshakes run
//! at once and each is bounded by [`HANDSHAKE_TIMEOUT`] as a whole; every
//! refused socket is dropped (closed) when its task ends.

use std::sync::Arc;
use std::time::Duration;

use hast_repl::{Hello, HelloStatus, Kind};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::auth;
use super::secondary::refuse;
use super::tls::{self, SharedIdentity, TlsInfo};
use crate::control::Resources;
use crate::link::stream::{self, ConnRead, ConnWrite};
use crate::resource::{peer_allowed, Command, PeerConn, ResourceHandle};

/// The whole handshake, from accept to the HELLO handed over.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more are closed at once.
const HANDSHAKES_MAX: usize = 64;

/// `identity` is this node's certificate, used when `addr` is `tls://`.
pub async fn listen(
    addr: &hast_conf::Addr,
    resources: Resources,
    node: String,
    identity: SharedIdentity,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let Some((host, port)) = addr.host_port() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "listen must be a tcp:// or tls:// address",
        ));
    };
    let with_tls = addr.is_tls();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = TcpListener::bind((host, port)).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("replication accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many replication handshakes; dropping");
                continue;
            };
            let _ = hast_sys::tcp::tune_bulk(&stream);
            let resources = resources.clone();
            let node = node.clone();
            let identity = with_tls.then(|| tls::current(&identity));
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake(stream, peer, &resources, &node, identity),
                )
                .await;
                match shaken {
                    Err(_) => tracing::warn!(%peer, "replication handshake timed out; closed"),
                    Ok(Err(why)) => tracing::warn!(%peer, "replication connection refused: {why}"),
                    Ok(Ok((handle, conn))) => {
                        let _ = handle.tx.send(Command::Peer(Box::new(conn))).await;
                    }
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

/// Steps 1–4 of the module docs. `Err` is the reason for the log; the peer
/// has been told nothing more than "refused". `identity` is `Some` on a
/// `tls://` listener (`Some(None)`: no certificate loaded).
async fn handshake(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    resources: &Resources,
    node: &str,
    identity: Option<Option<Arc<tls::Identity>>>,
) -> Result<(ResourceHandle, PeerConn), String> {
    let handles: Vec<ResourceHandle> = resources.read().await.clone();
    let mut known = false;
    for h in &handles {
        if peer_allowed(&h.config, &peer).await {
            known = true;
            break;
        }
    }
    if !known {
        return Err(format!(
            "{} is no resource's remote; closed without an answer",
            peer.ip()
        ));
    }
    let (mut rd, mut wr, tls_info) = match identity {
        None => {
            let (rd, wr) = stream::split_tcp(stream);
            (rd, wr, None)
        }
        Some(id) => {
            let (rd, wr, info) = tls_accept(stream, id, &handles).await?;
            (rd, wr, Some(info))
        }
    };
    let (ch, claim) = auth::challenge(&mut rd, &mut wr, HANDSHAKE_TIMEOUT).await?;
    let handle = handles.into_iter().find(|h| h.name == claim.resource);
    let Some(handle) = handle else {
        auth::refuse(&mut wr, HANDSHAKE_TIMEOUT).await;
        return Err(format!(
            "no resource \"{}\" configured here",
            claim.resource
        ));
    };
    if !peer_allowed(&handle.config, &peer).await {
        auth::refuse(&mut wr, HANDSHAKE_TIMEOUT).await;
        return Err(format!(
            "resource {} accepts only its remote {}",
            handle.name,
            handle
                .config
                .remote
                .as_ref()
                .map_or("none".to_string(), |a| a.to_string())
        ));
    }
    if let Err(why) = transport_ok(&handle.config, tls_info.as_ref()) {
        auth::refuse(&mut wr, HANDSHAKE_TIMEOUT).await;
        return Err(format!("resource {}: {why}", handle.name));
    }
    auth::finish(
        &mut wr,
        &ch,
        &claim,
        handle.config.secret.as_ref(),
        node,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| format!("resource {}: {e}", handle.name))?;
    // Authenticated (or both sides without a secret): from here the peer is
    // the resource's primary, and refusals may say why.
    let payload = auth::expect(&mut rd, Kind::Hello, HANDSHAKE_TIMEOUT).await?;
    let hello = match Hello::decode(&payload) {
        Ok(h) => h,
        Err(e) => {
            refuse(&mut wr, HelloStatus::VersionMismatch, &e.to_string()).await;
            return Err(format!("bad hello: {e}"));
        }
    };
    if hello.resource != claim.resource || hello.node != claim.node {
        let msg = format!(
            "hello for {}/{} after authenticating as {}/{}",
            hello.resource, hello.node, claim.resource, claim.node
        );
        refuse(&mut wr, HelloStatus::PeerRefused, &msg).await;
        return Err(msg);
    }
    let conn = PeerConn {
        hello,
        rd,
        wr,
        peer: peer.to_string(),
        tls: tls_info,
    };
    Ok((handle, conn))
}

/// The TLS handshake of a `tls://` listener. The client certificate must
/// be pinned by some `tls://` resource here; which resource it is for is
/// known only after the AUTH frame, when [`transport_ok`] checks it
/// against that resource's pins.
async fn tls_accept(
    stream: TcpStream,
    identity: Option<Arc<tls::Identity>>,
    handles: &[ResourceHandle],
) -> Result<(ConnRead, ConnWrite, TlsInfo), String> {
    let identity = identity.ok_or("tls:// listener without tls_cert and tls_key loaded; closed")?;
    let mut pins: Vec<hast_conf::Fingerprint> = Vec::new();
    for h in handles {
        if h.config.remote.as_ref().is_some_and(|a| a.is_tls()) {
            pins.extend(&h.config.tls_peer_fingerprints);
        }
    }
    let config = tls::server_config(&identity, &pins)?;
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}; closed"))?;
    let tls = tokio_rustls::TlsStream::Server(tls);
    let info = tls::stream_info(&tls).ok_or("TLS handshake left no client certificate")?;
    let (rd, wr) = stream::split_tls(tls);
    Ok((rd, wr, info))
}

/// A resource is replicated only the way its `remote` says: over TLS with
/// a certificate it pins for `tls://`, in plain TCP otherwise (so a plain
/// listener cannot be used to get around a resource's TLS, nor another
/// resource's pinned certificate to reach this one).
fn transport_ok(cfg: &hast_conf::Resource, tls: Option<&TlsInfo>) -> Result<(), String> {
    let wants_tls = cfg.remote.as_ref().is_some_and(|a| a.is_tls());
    match (wants_tls, tls) {
        (false, None) => Ok(()),
        (true, None) => Err("its remote is tls:// but the connection is plain TCP".into()),
        (false, Some(_)) => Err("its remote is not tls:// but the connection is TLS".into()),
        (true, Some(t)) if cfg.tls_peer_fingerprints.contains(&t.peer) => Ok(()),
        (true, Some(t)) => Err(format!(
            "the primary's certificate {} is not one of this resource's tls_peer_fingerprint",
            t.peer
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(remote: &str, pins: &[hast_conf::Fingerprint]) -> hast_conf::Resource {
        let pins: Vec<String> = pins.iter().map(|p| p.hex()).collect();
        let pin_line = if pins.is_empty() {
            String::new()
        } else {
            format!("tls_peer_fingerprint \"{}\"\n", pins.join(" "))
        };
        let text = format!(
            "tls_cert /c\ntls_key /k\n{pin_line}resource r {{ on a {{ local /d\n remote {remote} }} }}\n"
        );
        let c = hast_conf::parse(&text, std::path::Path::new("hast.conf"), "a").unwrap();
        c.resources[0].clone()
    }

    fn tls(peer: hast_conf::Fingerprint) -> TlsInfo {
        TlsInfo {
            version: "TLSv1.3".into(),
            suite: "TLS13_AES_256_GCM_SHA384".into(),
            peer,
        }
    }

    /// The listener's TLS handshake accepts a certificate any `tls://`
    /// resource pins; the AUTH then names one resource, and only its own
    /// pins (and its remote's scheme) decide.
    #[test]
    fn a_resource_is_reached_only_as_its_remote_says() {
        let (mine, other, rotated) = (
            hast_conf::Fingerprint([1; 32]),
            hast_conf::Fingerprint([2; 32]),
            hast_conf::Fingerprint([3; 32]),
        );
        let plain = resource("tcp://10.0.0.2", &[]);
        let pinned = resource("tls://10.0.0.2", &[mine, rotated]);
        let cases: [(&hast_conf::Resource, Option<TlsInfo>, Result<(), &str>); 6] = [
            (&plain, None, Ok(())),
            (&plain, Some(tls(mine)), Err("not tls://")),
            (&pinned, None, Err("plain TCP")),
            (&pinned, Some(tls(mine)), Ok(())),
            (&pinned, Some(tls(rotated)), Ok(())),
            (
                &pinned,
                Some(tls(other)),
                Err("is not one of this resource's"),
            ),
        ];
        for (cfg, info, want) in cases {
            let got = transport_ok(cfg, info.as_ref());
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{info:?}"),
                Err(msg) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(msg), "{info:?}: {e}");
                }
            }
        }
    }
}
