//! The replication listener (`listen`): accepts primaries' connections,
//! reads their hello, checks the resource and the peer address, and hands
//! the connection to that resource's task. It never touches resource state.

use std::sync::Arc;
use std::time::Duration;

use hast_repl::{Hello, HelloStatus, Kind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::secondary::refuse;
use super::wire::read_frame;
use crate::control::Resources;
use crate::resource::{peer_allowed, Command, PeerConn};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the backlog.
const HANDSHAKES_MAX: usize = 64;

pub async fn listen(
    addr: &hast_conf::Addr,
    resources: Resources,
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
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let frame = match read_frame(&mut rd, HELLO_TIMEOUT).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(%peer, "replication handshake failed: {e}");
                        return;
                    }
                };
                if frame.header.kind != Kind::Hello {
                    tracing::warn!(%peer, "replication connection did not start with hello");
                    return;
                }
                let hello = match Hello::decode(&frame.payload) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(%peer, "bad hello: {e}");
                        refuse(&mut wr, HelloStatus::VersionMismatch, &e.to_string()).await;
                        return;
                    }
                };
                let handle = resources
                    .read()
                    .await
                    .iter()
                    .find(|r| r.name == hello.resource)
                    .cloned();
                let Some(handle) = handle else {
                    let msg = format!("no resource \"{}\" configured here", hello.resource);
                    tracing::warn!(%peer, "{msg}");
                    refuse(&mut wr, HelloStatus::UnknownResource, &msg).await;
                    return;
                };
                if !peer_allowed(&handle.config, &peer).await {
                    let msg = format!(
                        "connection from {} refused: resource {} accepts only its remote {}",
                        peer.ip(),
                        handle.name,
                        handle
                            .config
                            .remote
                            .as_ref()
                            .map_or("none".to_string(), |a| a.to_string())
                    );
                    tracing::warn!("{msg}");
                    refuse(&mut wr, HelloStatus::PeerRefused, &msg).await;
                    return;
                }
                let conn = PeerConn {
                    hello,
                    rd,
                    wr,
                    peer: peer.to_string(),
                };
                let _ = handle.tx.send(Command::Peer(Box::new(conn))).await;
                drop(permit);
            });
        }
    });
    Ok((local, task))
}
