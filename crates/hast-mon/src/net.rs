//! The exchange of `auth` over sockets, with tokio: `exchange` is the
//! client (connect, one request, one reply, all within one timeout) and
//! `serve` the listener (one task per connection, at most
//! `CONNECTIONS_MAX` at a time and `CONNECTIONS_PER_PEER_MAX` from one IP
//! address, so that one host holding connections open cannot starve the
//! heartbeats and lease renewals of the others).
//!
//! One connection carries one exchange and is then closed. hastmon's
//! messages are small and rare (a few per heartbeat), and a fresh
//! connection each time keeps partitions simple: a cut link shows up as a
//! connect or exchange timeout on the next message, never as a half-open
//! connection that some later message would have to discover. The nonces
//! come from the thread-local CSPRNG of `rand`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hast_conf::Addr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::{self, AuthError, Challenge, FrameKind, Key, Nonce, CHALLENGE_LEN, PREFIX_LEN};

/// Connections `serve` handles at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 64;
/// Connections `serve` handles at once from one IP address; more are
/// closed at once.
pub const CONNECTIONS_PER_PEER_MAX: usize = 8;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the cause lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why an exchange failed; each names the peer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{addr}: no complete exchange within {} ms", .after.as_millis())]
    Timeout { addr: Addr, after: Duration },
    #[error("{addr}: cannot connect: {source}")]
    Connect { addr: Addr, source: io::Error },
    #[error("{addr}: {source}")]
    Io { addr: Addr, source: io::Error },
    #[error("{addr}: connection closed before the reply (refused by the peer, or wrong key)")]
    Closed { addr: Addr },
    #[error("{addr}: {source}")]
    Auth { addr: Addr, source: AuthError },
}

/// What went wrong on one connection, before the caller adds who the peer is.
#[derive(Debug)]
enum Fail {
    Io(io::Error),
    /// The peer closed the connection in the middle of a message.
    Closed,
    Auth(AuthError),
    Timeout,
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Fail::Closed
        } else {
            Fail::Io(e)
        }
    }
}

impl From<AuthError> for Fail {
    fn from(e: AuthError) -> Self {
        Fail::Auth(e)
    }
}

impl Fail {
    fn at(self, addr: &Addr, timeout: Duration) -> NetError {
        let addr = addr.clone();
        match self {
            Fail::Io(source) => NetError::Io { addr, source },
            Fail::Closed => NetError::Closed { addr },
            Fail::Auth(source) => NetError::Auth { addr, source },
            Fail::Timeout => NetError::Timeout {
                addr,
                after: timeout,
            },
        }
    }
}

fn fresh_nonce() -> Nonce {
    rand::random()
}

/// Sends `body` to the hastmon peer at `addr` and returns its reply body.
/// Connecting (name resolution included) and the whole exchange share the
/// one `timeout`.
pub async fn exchange(
    addr: &Addr,
    key: &Key,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, NetError> {
    if body.len() > auth::REQUEST_BODY_MAX {
        return Err(Fail::Auth(AuthError::TooLarge {
            len: body.len(),
            max: auth::REQUEST_BODY_MAX,
        })
        .at(addr, timeout));
    }
    let nc = fresh_nonce();
    let run = async {
        match addr {
            Addr::Tcp { host, port } => {
                let stream =
                    TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|source| NetError::Connect {
                            addr: addr.clone(),
                            source,
                        })?;
                // One small request and one small reply: do not let Nagle
                // hold the request back waiting for an ACK.
                stream.set_nodelay(true).map_err(|source| NetError::Io {
                    addr: addr.clone(),
                    source,
                })?;
                client(stream, key, body, nc)
                    .await
                    .map_err(|f| f.at(addr, timeout))
            }
            Addr::Unix(path) => {
                let stream =
                    UnixStream::connect(path)
                        .await
                        .map_err(|source| NetError::Connect {
                            addr: addr.clone(),
                            source,
                        })?;
                client(stream, key, body, nc)
                    .await
                    .map_err(|f| f.at(addr, timeout))
            }
            // hastmon.conf refuses tls:// (hastmon authenticates each
            // message itself); only hastd's replication link speaks TLS.
            Addr::Tls { .. } => Err(NetError::Connect {
                addr: addr.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "hastmon does not use tls:// addresses",
                ),
            }),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(Fail::Timeout.at(addr, timeout)),
    }
}

async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    key: &Key,
    body: &[u8],
    nc: Nonce,
) -> Result<Vec<u8>, Fail> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await?;
    let ns = Challenge::decode(&challenge)?.nonce;
    let request = auth::seal_request(key, &ns, &nc, body)?;
    stream.write_all(&request).await?;
    stream.flush().await?;
    let frame = read_frame(&mut stream, FrameKind::Reply).await?;
    Ok(auth::open_reply(key, &nc, &ns, &frame)?.to_vec())
}

/// Reads one length-prefixed frame, prefix included; the length is checked
/// before the buffer is allocated.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    kind: FrameKind,
) -> Result<Vec<u8>, Fail> {
    let mut prefix = [0u8; PREFIX_LEN];
    stream.read_exact(&mut prefix).await?;
    let len = auth::frame_len(prefix, kind)?;
    let mut frame = vec![0u8; PREFIX_LEN + len];
    frame[..PREFIX_LEN].copy_from_slice(&prefix);
    stream.read_exact(&mut frame[PREFIX_LEN..]).await?;
    Ok(frame)
}

/// The key every exchange uses, replaced as a whole when a reload changes
/// the key file; each connection or request takes the one current then.
pub type KeyCell = Arc<std::sync::RwLock<Arc<Key>>>;

pub fn key_cell(key: Key) -> KeyCell {
    Arc::new(std::sync::RwLock::new(Arc::new(key)))
}

/// The key current now.
pub fn current(cell: &KeyCell) -> Arc<Key> {
    Arc::clone(&cell.read().unwrap_or_else(|p| p.into_inner()))
}

/// Accepts hastmon peers on `listener` for ever (abort the task to stop;
/// connections in progress are aborted with it). Each connection gets a
/// challenge, and its request must arrive within `timeout`; the handler is
/// called with the peer's address and the authenticated request body, and
/// returns the reply body, or `None` to close the connection without a
/// reply. The handler's own run time is not bounded here: it is the
/// caller's to bound. Sending the reply is bounded by `timeout` again.
/// A request that fails authentication closes the connection and is logged
/// as a warning naming the peer; the handler never sees it.
pub async fn serve<H, Fut>(listener: TcpListener, key: KeyCell, timeout: Duration, handler: H)
where
    H: Fn(SocketAddr, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<Vec<u8>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let peers = Arc::new(PeerCounts::default());
    let mut tasks = JoinSet::new();
    loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                if e.is_panic() {
                    tracing::error!("hastmon: a connection task panicked: {e}");
                }
            }
        }
        // Taking the permit before accepting leaves extra peers in the
        // kernel's backlog instead of holding their sockets here.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            // The semaphore is never closed; nothing else to do if it were.
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("hastmon: accept failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let Some(slot) = PeerCounts::take(&peers, peer.ip()) else {
            tracing::debug!(
                "hastmon: {peer}: more than {CONNECTIONS_PER_PEER_MAX} connections from this address; closed"
            );
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("hastmon: {peer}: cannot set TCP_NODELAY: {e}");
        }
        // The key of this moment: a reload applies to the next connection.
        let key = current(&key);
        let handler = handler.clone();
        tasks.spawn(async move {
            let _held = (permit, slot);
            let result = serve_one(stream, peer, &key, fresh_nonce(), timeout, handler).await;
            log_outcome(peer, result);
        });
    }
}

/// Open connections per peer IP address.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted in `PeerCounts`, uncounted when dropped.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl PeerCounts {
    fn take(counts: &Arc<PeerCounts>, ip: IpAddr) -> Option<PeerSlot> {
        // The lock is never held across a panic point that could leave the
        // map inconsistent, so a poisoned lock's data is still good.
        let mut map = counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= CONNECTIONS_PER_PEER_MAX {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: Arc::clone(counts),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn log_outcome(peer: SocketAddr, result: Result<(), Fail>) {
    match result {
        Ok(()) => {}
        Err(Fail::Auth(e)) => tracing::warn!("hastmon: refused a message from {peer}: {e}"),
        Err(Fail::Timeout) => tracing::debug!("hastmon: {peer}: timed out"),
        Err(Fail::Closed) => tracing::debug!("hastmon: {peer}: closed the connection"),
        Err(Fail::Io(e)) => tracing::debug!("hastmon: {peer}: {e}"),
    }
}

/// The server side of one exchange on an accepted connection.
async fn serve_one<S, H, Fut>(
    mut stream: S,
    peer: SocketAddr,
    key: &Key,
    ns: Nonce,
    timeout: Duration,
    handler: H,
) -> Result<(), Fail>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(SocketAddr, Vec<u8>) -> Fut,
    Fut: Future<Output = Option<Vec<u8>>>,
{
    let read_request = async {
        stream.write_all(&Challenge { nonce: ns }.encode()).await?;
        stream.flush().await?;
        let frame = read_frame(&mut stream, FrameKind::Request).await?;
        let (nc, body) = auth::open_request(key, &ns, &frame)?;
        Ok::<_, Fail>((nc, body.to_vec()))
    };
    let (nc, body) = tokio::time::timeout(timeout, read_request)
        .await
        .map_err(|_| Fail::Timeout)??;
    let Some(reply) = handler(peer, body).await else {
        return Ok(());
    };
    let frame = auth::seal_reply(key, &nc, &ns, &reply)?;
    let send = async {
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        Ok::<_, Fail>(())
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| Fail::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn key(b: u8) -> Key {
        Key::new(vec![b; 20]).unwrap()
    }

    fn addr_of(l: &TcpListener) -> Addr {
        let a = l.local_addr().unwrap();
        Addr::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }

    /// A `serve` on loopback whose handler answers `"re:" + body` (or
    /// nothing for the body `"drop"`) and counts its calls.
    async fn echo_server(key: Key) -> (Addr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let task = tokio::spawn(serve(
            listener,
            key_cell(key),
            TIMEOUT,
            move |peer, body| {
                let counter = Arc::clone(&counter);
                async move {
                    assert!(peer.ip().is_loopback());
                    counter.fetch_add(1, Ordering::SeqCst);
                    if body == b"drop" {
                        return None;
                    }
                    let mut reply = b"re:".to_vec();
                    reply.extend_from_slice(&body);
                    Some(reply)
                }
            },
        ));
        (addr, calls, task)
    }

    #[tokio::test]
    async fn round_trip() {
        let (addr, calls, task) = echo_server(key(1)).await;
        for body in [&b"hello"[..], b"", &[7u8; auth::REQUEST_BODY_MAX][..]] {
            let reply = exchange(&addr, &key(1), body, TIMEOUT).await.unwrap();
            assert_eq!(&reply[..3], b"re:");
            assert_eq!(&reply[3..], body);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        task.abort();
    }

    /// A reload swaps the key in the cell: the next connection is checked
    /// with the new one (and its next key), without restarting the server.
    #[tokio::test]
    async fn a_reloaded_key_applies_to_the_next_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        let cell = key_cell(key(1));
        let task = tokio::spawn(serve(
            listener,
            cell.clone(),
            TIMEOUT,
            |_, body| async move { Some(body) },
        ));
        assert!(exchange(&addr, &key(1), b"a", TIMEOUT).await.is_ok());
        assert!(exchange(&addr, &key(2), b"b", TIMEOUT).await.is_err());
        // Rotation: the server offers the new key and still accepts the old
        // one; a client that has not switched yet (old key first, new one
        // next) and one that has are both served.
        *cell.write().unwrap() = Arc::new(key(2).with_next(key(1).as_bytes().to_vec()).unwrap());
        assert!(exchange(&addr, &key(2), b"c", TIMEOUT).await.is_ok());
        let not_yet = key(1).with_next(key(2).as_bytes().to_vec()).unwrap();
        let r = exchange(&addr, &not_yet, b"d", TIMEOUT).await;
        assert!(r.is_ok(), "{r:?}");
        // A client that never learned the new key cannot check the reply.
        assert!(exchange(&addr, &key(1), b"d", TIMEOUT).await.is_err());
        *cell.write().unwrap() = Arc::new(key(2));
        assert!(exchange(&addr, &key(1), b"e", TIMEOUT).await.is_err());
        task.abort();
    }

    #[tokio::test]
    async fn wrong_key_is_refused_before_the_handler() {
        let (addr, calls, task) = echo_server(key(1)).await;
        let err = exchange(&addr, &key(2), b"hello", TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::Closed { .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // The server goes on serving.
        assert!(exchange(&addr, &key(1), b"x", TIMEOUT).await.is_ok());
        task.abort();
    }

    /// A server with the wrong key, or one replaying an old reply: the
    /// client must refuse the reply.
    #[tokio::test]
    async fn client_refuses_unauthenticated_replies() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        let server = tokio::spawn(async move {
            let mut old_reply: Option<Vec<u8>> = None;
            for round in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let ns = [round; 16];
                s.write_all(&Challenge { nonce: ns }.encode())
                    .await
                    .unwrap();
                let frame = read_frame(&mut s, FrameKind::Request).await.unwrap();
                // This server does not check the request: it is the bad one.
                let nc: Nonce = frame[4..20].try_into().unwrap();
                let reply = match old_reply.take() {
                    None => auth::seal_reply(&key(9), &nc, &ns, b"forged").unwrap(),
                    Some(old) => old,
                };
                old_reply = Some(auth::seal_reply(&key(1), &nc, &ns, b"genuine").unwrap());
                s.write_all(&reply).await.unwrap();
            }
        });
        for _ in 0..2 {
            let err = exchange(&addr, &key(1), b"q", TIMEOUT).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    NetError::Auth {
                        source: AuthError::BadMac,
                        ..
                    }
                ),
                "{err}"
            );
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn handler_may_close_without_reply() {
        let (addr, calls, task) = echo_server(key(1)).await;
        let err = exchange(&addr, &key(1), b"drop", TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::Closed { .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        task.abort();
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_bound() {
        // Connections complete in the kernel backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        let bound = Duration::from_millis(300);
        let start = Instant::now();
        let err = exchange(&addr, &key(1), b"hello", bound).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, NetError::Timeout { .. }), "{err}");
        assert!(
            took >= bound && took < bound + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(err.to_string().contains("within 300 ms"), "{err}");
        drop(listener);
    }

    #[tokio::test]
    async fn refused_connection_and_oversize_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        drop(listener);
        let err = exchange(&addr, &key(1), b"x", TIMEOUT).await.unwrap_err();
        assert!(matches!(err, NetError::Connect { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("{addr}: cannot connect")));

        let big = vec![0u8; auth::REQUEST_BODY_MAX + 1];
        let err = exchange(&addr, &key(1), &big, TIMEOUT).await.unwrap_err();
        assert!(matches!(err, NetError::Auth { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_server_challenge() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = addr_of(&listener);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_9.6p1 Debian-5\r\n")
                .await
                .unwrap();
            // Hold the connection until the client gives up.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let err = exchange(&addr, &key(1), b"x", TIMEOUT).await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Auth {
                    source: AuthError::BadMagic(_),
                    ..
                }
            ),
            "{err}"
        );
        server.await.unwrap();
    }

    /// Bytes from the network, whatever they are, end in an error, never a
    /// panic, and never reach the handler.
    #[tokio::test]
    async fn garbage_requests_do_not_reach_the_handler() {
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 4],
            u32::MAX.to_be_bytes().to_vec(),
            0u32.to_be_bytes().to_vec(),
            47u32.to_be_bytes().to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ];
        let mut well_formed = 60u32.to_be_bytes().to_vec();
        well_formed.extend_from_slice(&[0u8; 60]);
        cases.push(well_formed);
        // Deterministic pseudo-random inputs (xorshift), some of them
        // announcing a length they do not deliver.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..200 {
            let mut buf = Vec::new();
            for _ in 0..(n % 90) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            cases.push(buf);
        }
        let calls = AtomicUsize::new(0);
        let handler = |_, _| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Some(Vec::new()) }
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for input in cases {
            let (mut ours, theirs) = tokio::io::duplex(1 << 17);
            ours.write_all(&input).await.unwrap();
            ours.shutdown().await.unwrap();
            let timeout = Duration::from_millis(50);
            let result = serve_one(theirs, peer, &key(1), [3; 16], timeout, handler).await;
            assert!(result.is_err(), "{input:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    /// One address holding connections open takes at most its share; the
    /// next connection from it is closed at once, others are still served.
    #[tokio::test]
    async fn connections_per_peer_are_limited() {
        let (addr, _calls, task) = echo_server(key(1)).await;
        let Addr::Tcp { port, .. } = addr.clone() else {
            unreachable!("echo_server listens on TCP")
        };
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let connect_from = |ip: [u8; 4]| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((ip, 0))).unwrap();
            socket.connect(target).await.unwrap()
        };
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS_PER_PEER_MAX {
            let mut s = connect_from([127, 0, 0, 2]).await;
            let mut challenge = [0u8; CHALLENGE_LEN];
            s.read_exact(&mut challenge).await.unwrap();
            held.push(s);
        }
        let mut refused = connect_from([127, 0, 0, 2]).await;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, refused.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "the connection over the limit must be closed unanswered"
        );
        // Another address is served meanwhile.
        assert!(exchange(&addr, &key(1), b"x", TIMEOUT).await.is_ok());
        // A slot freed is a slot usable again.
        drop(held.pop());
        let mut answered = None;
        // The server may not have seen the close yet: a few tries, 10 ms apart.
        for _ in 0..100 {
            let mut s = connect_from([127, 0, 0, 2]).await;
            let mut challenge = [0u8; CHALLENGE_LEN];
            if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT, s.read_exact(&mut challenge)).await {
                answered = Some(challenge);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let challenge = answered.expect("a freed slot is usable again");
        assert!(Challenge::decode(&challenge).is_ok());
        task.abort();
    }

    #[tokio::test]
    async fn over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("hast-mon-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mon.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
            serve_one(
                s,
                peer,
                &key(1),
                fresh_nonce(),
                TIMEOUT,
                |_, body| async move { Some(body) },
            )
            .await
        });
        let reply = exchange(&Addr::Unix(path.clone()), &key(1), b"ping", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(reply, b"ping");
        assert!(server.await.unwrap().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
