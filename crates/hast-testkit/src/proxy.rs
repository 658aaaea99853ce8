//! A userspace TCP forwarder on loopback that a test can cut, blackhole and heal:
//! the "network" between two hastd nodes running on one machine.
//!
//! Each accepted connection gets its own upstream connection and two pump threads
//! (one per direction). The proxy has three modes:
//!
//! - **forward**: bytes flow both ways;
//! - **cut** ([`Proxy::cut`]): every open connection is shut down at once (both
//!   peers see the connection end), and new connections are accepted and closed
//!   immediately, before a byte is forwarded — a link that is down;
//! - **blackhole** ([`Proxy::blackhole`]): sockets stay open but nothing is read or
//!   forwarded any more, in either direction, and new connections are accepted and
//!   held without being connected upstream — a peer that went silent, which only a
//!   `timeout` can detect.
//!
//! [`Proxy::heal`] goes back to forwarding: paused connections resume (their bytes
//! were held, never dropped, so a stream is never corrupted) and connections held
//! during a blackhole are closed, so new ones are made. Dropping the proxy shuts
//! every socket down and joins its threads (bounded).
//!
//! The proxy binds 127.0.0.1, so the secondary still sees its peer's address as
//! 127.0.0.1 and accepts it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a pump or the accept loop sleeps/blocks before looking at the mode again.
const POLL: Duration = Duration::from_millis(20);
/// Bound on connecting upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on joining the threads when the proxy is dropped.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pump buffer.
const BUF_BYTES: usize = 256 * 1024;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow.
    Forward,
    /// Connections are closed and new ones refused.
    Cut,
    /// Sockets stay open, nothing moves.
    Blackhole,
}

struct Conn {
    id: u64,
    client: TcpStream,
    upstream: Option<TcpStream>,
}

struct Shared {
    mode: Mutex<Mode>,
    /// Signalled on every mode change, so paused pumps wake at once.
    changed: Condvar,
    conns: Mutex<Vec<Conn>>,
    stop: AtomicBool,
    next_id: AtomicU64,
    accepted: AtomicU64,
    /// Bytes forwarded client -> upstream and upstream -> client.
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks while the mode is blackhole (bounded by `POLL` per call); returns the mode.
    fn wait_not_blackhole(&self) -> Mode {
        let g = self.mode.lock().unwrap_or_else(|p| p.into_inner());
        if *g != Mode::Blackhole {
            return *g;
        }
        let (g, _) = self
            .changed
            .wait_timeout(g, POLL)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    fn remove(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.id != id);
    }
}

/// A TCP forwarder from `127.0.0.1:port()` to a target address.
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on a fresh loopback port and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        Proxy::with_listener(listener, target)
    }

    /// Listen on `127.0.0.1:port` (a port picked with [`crate::free_port`]).
    pub fn start_on(port: u16, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("proxy: bind 127.0.0.1:{port}: {e}"));
        Proxy::with_listener(listener, target)
    }

    fn with_listener(listener: TcpListener, target: SocketAddr) -> Proxy {
        let port = listener.local_addr().expect("proxy local_addr").port();
        listener
            .set_nonblocking(true)
            .expect("proxy: nonblocking listener");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Forward),
            changed: Condvar::new(),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("proxy-accept-{port}"))
            .spawn(move || accept_loop(listener, target, s))
            .expect("spawn proxy accept thread");
        Proxy {
            port,
            target,
            shared,
            accept: Some(accept),
        }
    }

    /// The port the proxy listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Connections accepted so far (in any mode).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Bytes forwarded (client -> target, target -> client) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.to_upstream.load(Ordering::Relaxed),
            self.shared.to_client.load(Ordering::Relaxed),
        )
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        self.shared.changed.notify_all();
    }

    /// Cut the link: shut every open connection down now and close new ones at once.
    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
        shutdown_all(&self.shared);
    }

    /// Silence the link: stop moving bytes but keep every socket open.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Forward again. Connections paused by a blackhole resume; connections that were
    /// accepted during it (never connected upstream) are closed.
    pub fn heal(&self) {
        {
            let conns = self.shared.conns.lock().unwrap_or_else(|p| p.into_inner());
            for c in conns.iter().filter(|c| c.upstream.is_none()) {
                let _ = c.client.shutdown(Shutdown::Both);
            }
        }
        self.set_mode(Mode::Forward);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        shutdown_all(&self.shared);
        if let Some(h) = self.accept.take() {
            join_bounded(h, "accept");
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for h in threads {
            join_bounded(h, "pump");
        }
    }
}

fn join_bounded(h: JoinHandle<()>, what: &str) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            eprintln!("proxy: {what} thread did not finish within {JOIN_TIMEOUT:?}; left behind");
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = h.join();
}

fn shutdown_all(shared: &Shared) {
    let conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
    for c in conns.iter() {
        abort_stream(&c.client);
        if let Some(u) = &c.upstream {
            abort_stream(u);
        }
    }
}

/// Shut a socket down so the peer sees the connection end at once: linger 0 (a
/// close then sends RST) and shutdown of both directions (wakes our own pumps).
fn abort_stream(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a properly sized
    // `linger` that lives across the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(lg).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                thread::sleep(POLL);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match shared.mode() {
            Mode::Cut => {
                abort_stream(&client);
                continue;
            }
            Mode::Blackhole => {
                // Held open, never connected upstream; closed at heal or drop.
                let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.push(Conn {
                    id,
                    client,
                    upstream: None,
                });
                continue;
            }
            Mode::Forward => {}
        }
        let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(u) => u,
            Err(_) => {
                abort_stream(&client);
                continue;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
            (Ok(c), Ok(u)) => (c, u),
            _ => {
                abort_stream(&client);
                abort_stream(&upstream);
                continue;
            }
        };
        let (c3, u3) = match (client.try_clone(), upstream.try_clone()) {
            (Ok(c), Ok(u)) => (c, u),
            _ => {
                abort_stream(&client);
                abort_stream(&upstream);
                continue;
            }
        };
        shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Conn {
                id,
                client,
                upstream: Some(upstream),
            });
        let (s1, s2) = (shared.clone(), shared.clone());
        let t1 = thread::spawn(move || pump(c2, u2, &s1, true, id));
        let t2 = thread::spawn(move || pump(u3, c3, &s2, false, id));
        let mut threads = shared.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|h| !h.is_finished());
        threads.push(t1);
        threads.push(t2);
    }
}

/// Copy `from` -> `to` while the mode allows; on EOF or error end both sockets.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, upward: bool, id: u64) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; BUF_BYTES];
    let counter = if upward {
        &shared.to_upstream
    } else {
        &shared.to_client
    };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match shared.wait_not_blackhole() {
            Mode::Blackhole => continue,
            Mode::Cut => break,
            Mode::Forward => {}
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // Bytes read before a blackhole began are held here until it ends, so the
        // stream stays intact if the link heals.
        loop {
            match shared.wait_not_blackhole() {
                Mode::Blackhole if !shared.stop.load(Ordering::Relaxed) => continue,
                Mode::Forward => break,
                _ => {
                    abort_stream(&from);
                    abort_stream(&to);
                    shared.remove(id);
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    abort_stream(&from);
    abort_stream(&to);
    shared.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            // Serve a few connections, echoing.
            for _ in 0..4 {
                let Ok((mut s, _)) = l.accept() else { return };
                thread::spawn(move || {
                    let mut b = [0u8; 1024];
                    loop {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&b[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, h)
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_cuts_blackholes_and_heals() {
        let (addr, _h) = echo_server();
        let p = Proxy::start(addr);
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut s, b"hello").unwrap(), b"hello");

        // Blackhole: nothing comes back within a second; heal: the held bytes arrive.
        p.blackhole();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.write_all(b"quiet").unwrap();
        let mut b = [0u8; 5];
        assert!(s.read_exact(&mut b).is_err(), "blackhole let bytes through");
        p.heal();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"quiet");

        // Cut: the open connection ends, new ones are closed at once.
        p.cut();
        let mut b = [0u8; 1];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "connection survived a cut: {r:?}"
        );
        let mut s2 = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(roundtrip(&mut s2, b"x").is_err(), "cut link forwarded");

        p.heal();
        let mut s3 = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut s3, b"again").unwrap(), b"again");
        assert!(p.bytes().0 >= 15);
    }
}
