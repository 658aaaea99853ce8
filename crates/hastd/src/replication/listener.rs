//! The replication listener (`listen`): accepts primaries' connections and
//! runs the handshake up to the HELLO, in the order that lets a stranger
//! learn and change nothing:
//!
//! 1. the peer's address must be the `remote` of some resource, else the
//!    socket is closed at once, nothing sent;
//! 2. CHALLENGE, and the primary's AUTH naming a resource: that resource
//!    must exist, accept this address, and the MAC must match its
//!    `secret_file` — any failure gets the same bare refusal (the reason
//!    goes to the log only, so resource names cannot be probed);
//! 3. AUTH_REPLY with this node's proof, then the HELLO, which must name the
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
use crate::control::Resources;
use crate::resource::{peer_allowed, Command, PeerConn, ResourceHandle};

/// The whole handshake, from accept to the HELLO handed over.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more are closed at once.
const HANDSHAKES_MAX: usize = 64;

pub async fn listen(
    addr: &hast_conf::Addr,
    resources: Resources,
    node: String,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let hast_conf::Addr::Tcp { host, port } = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "listen must be a tcp:// address",
        ));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listener = TcpListener::bind((host, *port)).await?;
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
            let _ = stream.set_nodelay(true);
            let resources = resources.clone();
            let node = node.clone();
            tokio::spawn(async move {
                let shaken = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake(stream, peer, &resources, &node),
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

/// Steps 1–3 of the module docs. `Err` is the reason for the log; the peer
/// has been told nothing more than "refused".
async fn handshake(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    resources: &Resources,
    node: &str,
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
    let (mut rd, mut wr) = stream.into_split();
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
    };
    Ok((handle, conn))
}
