//! The endpoint against real NBD servers on loopback: two in-memory servers
//! (`hast_nbd::serve`) that share one disk, as a replicated pair does, and
//! a scripted poller that says who is primary at which epoch. The faults
//! are the ones a connector meets: the primary's connection cut with
//! requests out, a primary answering ESHUTDOWN, a primary that hangs while
//! a newer one exists, only a stale primary answering, and no primary for
//! longer than `ctrl_loss_tmo`.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hast_connect::endpoint::{Client, Endpoint, Found, Poller, Settings};
use hast_connect::follow::Sighting;
use hast_connect::status::EndpointState;
use hast_meta::Role;
use hast_nbd::{BlockExtent, Errno, Export, ExportInfo, Exports, Limits, OpenError};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

const SIZE: u64 = 1 << 20;
const NAME: &str = "r0";

/// How a node answers.
const SERVE: u8 = 0;
const SHUTDOWN: u8 = 1;
const HANG: u8 = 2;

/// One node's view of the shared disk. A write lands only if the node's
/// epoch is not below the highest primary epoch (`fence`): the replication
/// link's fencing, which keeps an old primary's late writes off the new one.
struct Mem {
    disk: Arc<Mutex<Vec<u8>>>,
    mode: Arc<AtomicU8>,
    epoch: Arc<AtomicU64>,
    fence: Arc<AtomicU64>,
}

impl Mem {
    async fn gate(&self) -> Result<(), Errno> {
        loop {
            match self.mode.load(Ordering::SeqCst) {
                SERVE => return Ok(()),
                SHUTDOWN => return Err(Errno::Shutdown),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

impl Export for Mem {
    fn info(&self) -> ExportInfo {
        let mut i = ExportInfo::new(SIZE);
        i.can_trim = true;
        i.can_zero = true;
        i.can_multi_conn = true;
        i
    }
    async fn read(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, Errno> {
        self.gate().await?;
        let d = self.disk.lock().unwrap();
        let o = offset as usize;
        let n = buf.len();
        buf.copy_from_slice(&d[o..o + n]);
        Ok(buf)
    }
    async fn write(&self, offset: u64, data: Vec<u8>, _fua: bool) -> Result<(), Errno> {
        self.gate().await?;
        if self.epoch.load(Ordering::SeqCst) < self.fence.load(Ordering::SeqCst) {
            return Err(Errno::Io);
        }
        let o = offset as usize;
        self.disk.lock().unwrap()[o..o + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> Result<(), Errno> {
        self.gate().await
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> Result<(), Errno> {
        self.write_zeroes(offset, len, true, false, false).await
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _t: bool,
        _f: bool,
        _u: bool,
    ) -> Result<(), Errno> {
        self.gate().await?;
        if self.epoch.load(Ordering::SeqCst) < self.fence.load(Ordering::SeqCst) {
            return Err(Errno::Io);
        }
        let o = offset as usize;
        self.disk.lock().unwrap()[o..o + len as usize].fill(0);
        Ok(())
    }
    async fn cache(&self, _offset: u64, _len: u32) -> Result<(), Errno> {
        Ok(())
    }
    async fn block_status(&self, _o: u64, len: u32, _one: bool) -> Result<Vec<BlockExtent>, Errno> {
        Ok(vec![BlockExtent {
            len,
            hole: false,
            zero: false,
        }])
    }
    async fn withdrawn(&self) {
        std::future::pending::<()>().await
    }
}

struct MemExports(Arc<Mem>);

impl Exports for MemExports {
    type Export = Mem;
    fn list(&self) -> Vec<(String, Option<String>)> {
        vec![(NAME.into(), None)]
    }
    fn open(&self, name: &str) -> Result<Arc<Mem>, OpenError> {
        if name != NAME {
            return Err(OpenError::unknown("no"));
        }
        let m = &self.0;
        Ok(Arc::new(Mem {
            disk: m.disk.clone(),
            mode: m.mode.clone(),
            epoch: m.epoch.clone(),
            fence: m.fence.clone(),
        }))
    }
}

/// One "node": an NBD server whose connections can all be cut at once.
struct Node {
    addr: String,
    mode: Arc<AtomicU8>,
    epoch: Arc<AtomicU64>,
    accept: JoinHandle<()>,
    /// Duplicates of the accepted sockets' descriptors, to shut them down.
    conns: Arc<Mutex<Vec<OwnedFd>>>,
}

impl Node {
    async fn start(disk: Arc<Mutex<Vec<u8>>>, fence: Arc<AtomicU64>) -> Node {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("tcp://{}", l.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(SERVE));
        let epoch = Arc::new(AtomicU64::new(0));
        let mem = Mem {
            disk,
            mode: mode.clone(),
            epoch: epoch.clone(),
            fence,
        };
        let exports = Arc::new(MemExports(Arc::new(mem)));
        let conns: Arc<Mutex<Vec<OwnedFd>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                c.lock()
                    .unwrap()
                    .push(s.as_fd().try_clone_to_owned().unwrap());
                let e = exports.clone();
                tokio::spawn(async move {
                    let _ = hast_nbd::serve(e, s, "test".into(), Limits::default()).await;
                });
            }
        });
        Node {
            addr,
            mode,
            epoch,
            accept,
            conns,
        }
    }

    /// Every connection shut down at once, as the kernel does when the
    /// node's hastd is killed.
    fn cut(&self) {
        for fd in self.conns.lock().unwrap().drain(..) {
            // SAFETY: `fd` is a descriptor this test owns (a duplicate).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// What the controllers say, set by the test.
struct Script(Mutex<Vec<Found>>, Arc<AtomicU64>);

impl Script {
    /// What the controllers answer from now on; the nodes' epochs and the
    /// disk's fence follow, as promotions make them.
    fn set(&self, nodes: &[(&Node, &str, Role, u64)]) {
        for (n, _, role, epoch) in nodes {
            n.epoch.store(*epoch, Ordering::SeqCst);
            if *role == Role::Primary {
                self.1.fetch_max(*epoch, Ordering::SeqCst);
            }
        }
        *self.0.lock().unwrap() = nodes
            .iter()
            .map(|(n, name, role, epoch)| Found {
                sighting: Sighting {
                    node: name.to_string(),
                    role: *role,
                    epoch: *epoch,
                },
                export: NAME.to_string(),
                nbd: vec![n.addr.clone()],
                nbd_tls: false,
                size: SIZE,
            })
            .collect();
    }
}

struct Poll(Arc<Script>);

impl Poller for Poll {
    fn poll<'a>(
        &'a self,
        _r: &'a str,
        _newer_than: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Vec<Found>> + Send + 'a>> {
        let v = self.0 .0.lock().unwrap().clone();
        Box::pin(async move { v })
    }
}

fn settings() -> Settings {
    Settings {
        ctrl_loss_tmo: Some(Duration::from_secs(2)),
        poll_interval: Duration::from_millis(100),
        reconnect_interval: Duration::from_millis(20),
        request_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(2),
    }
}

struct World {
    disk: Arc<Mutex<Vec<u8>>>,
    a: Node,
    b: Node,
    script: Arc<Script>,
    ep: Arc<Endpoint>,
    client: Arc<Client>,
    failovers: broadcast::Receiver<hast_connect::status::Failover>,
}

async fn world() -> World {
    let disk = Arc::new(Mutex::new(vec![0u8; SIZE as usize]));
    let fence = Arc::new(AtomicU64::new(0));
    let a = Node::start(disk.clone(), fence.clone()).await;
    let b = Node::start(disk.clone(), fence.clone()).await;
    let script = Arc::new(Script(Mutex::default(), fence));
    script.set(&[(&a, "a", Role::Primary, 1), (&b, "b", Role::Secondary, 1)]);
    let (tx, failovers) = broadcast::channel(16);
    let ep = Endpoint::new(NAME, Arc::new(Poll(script.clone())), settings(), None, tx);
    tokio::spawn(ep.clone().run());
    let client = wait(Duration::from_secs(5), || ep.open().ok())
        .await
        .expect("never connected");
    World {
        disk,
        a,
        b,
        script,
        ep,
        client,
        failovers,
    }
}

async fn wait<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn block(i: u64, v: u8) -> (u64, Vec<u8>) {
    (i * 4096, vec![v; 4096])
}

/// `n` writes in flight at once, each block i gets `v`.
async fn writes(client: &Arc<Client>, n: u64, v: u8) -> Vec<Result<(), Errno>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                let (o, d) = block(i, v);
                c.write(o, d, false).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_cut_primary_is_replaced_and_its_requests_replayed() {
    let mut w = world().await;
    assert!(writes(&w.client, 16, 1).await.iter().all(Result::is_ok));
    // The primary hangs with requests out, then dies; b takes over.
    w.a.mode.store(HANG, Ordering::SeqCst);
    let inflight = {
        let c = w.client.clone();
        tokio::spawn(async move { writes(&c, 32, 2).await })
    };
    let pending = wait(Duration::from_secs(2), || {
        (w.ep.status().pending >= 32).then_some(())
    })
    .await;
    assert!(
        pending.is_some(),
        "writes never went out: {:?}",
        w.ep.status()
    );
    w.a.cut();
    w.script.set(&[(&w.b, "b", Role::Primary, 2)]);
    let results = tokio::time::timeout(Duration::from_secs(10), inflight)
        .await
        .expect("writes hung")
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let d = w.disk.lock().unwrap().clone();
    assert!(d[..32 * 4096].iter().all(|&b| b == 2), "a write was lost");
    drop(d);
    let st = w.ep.status();
    assert_eq!(
        (st.state, st.primary.as_deref(), st.epoch, st.failovers),
        (EndpointState::Connected, Some("b"), 2, 1)
    );
    assert!(st.replayed >= 32, "{st:?}");
    let f = w.failovers.try_recv().expect("no failover signal");
    assert_eq!(
        (f.from.as_deref(), f.to.as_str(), f.epoch),
        (Some("a"), "b", 2)
    );
    // Reads come from the new primary.
    let r = w.client.read(0, vec![0; 4096]).await.unwrap();
    assert!(r.iter().all(|&b| b == 2));
}

#[tokio::test]
async fn eshutdown_is_a_failover_not_an_error() {
    let w = world().await;
    w.a.mode.store(SHUTDOWN, Ordering::SeqCst);
    let c = w.client.clone();
    let t = tokio::spawn(async move { writes(&c, 8, 3).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.script.set(&[
        (&w.a, "a", Role::Secondary, 1),
        (&w.b, "b", Role::Primary, 2),
    ]);
    let results = tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(w.ep.status().primary.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_hung_primary_is_left_for_a_newer_one_and_its_late_answers_ignored() {
    let w = world().await;
    w.a.mode.store(HANG, Ordering::SeqCst);
    let c = w.client.clone();
    let t = tokio::spawn(async move { writes(&c, 8, 4).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // a still says primary (cut off, lease not out yet); b is newer.
    w.script
        .set(&[(&w.a, "a", Role::Primary, 1), (&w.b, "b", Role::Primary, 2)]);
    let results = tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let st = w.ep.status();
    assert_eq!((st.primary.as_deref(), st.epoch), (Some("b"), 2), "{st:?}");
    // a wakes up and would answer: nothing of it reaches the client.
    w.a.mode.store(SERVE, Ordering::SeqCst);
    w.client.write(0, vec![9; 4096], false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = w.client.read(0, vec![0; 4096]).await.unwrap();
    assert!(
        r.iter().all(|&b| b == 9),
        "a late write of the old primary landed"
    );
}

#[tokio::test]
async fn a_stale_primary_is_never_followed_and_ctrl_loss_fails_then_recovers() {
    let w = world().await;
    // b becomes primary at epoch 2 and is followed.
    w.script.set(&[
        (&w.a, "a", Role::Secondary, 1),
        (&w.b, "b", Role::Primary, 2),
    ]);
    w.a.mode.store(SHUTDOWN, Ordering::SeqCst);
    w.client.write(0, vec![5; 4096], false).await.unwrap();
    assert_eq!(w.ep.status().primary.as_deref(), Some("b"));
    // b dies; only a answers, claiming primary at the older epoch 1.
    w.a.mode.store(SERVE, Ordering::SeqCst);
    w.b.cut();
    w.script.set(&[(&w.a, "a", Role::Primary, 1)]);
    let started = std::time::Instant::now();
    let r = w.client.write(4096, vec![6; 4096], false).await;
    assert_eq!(r, Err(Errno::Io), "held requests fail after ctrl_loss_tmo");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "failed after {waited:?}"
    );
    assert_eq!(
        w.disk.lock().unwrap()[4096],
        0,
        "a stale primary got a write"
    );
    assert_eq!(w.ep.status().state, EndpointState::Lost);
    // New requests fail fast while lost.
    let t = std::time::Instant::now();
    assert_eq!(w.client.flush().await, Err(Errno::Io));
    assert!(t.elapsed() < Duration::from_millis(100));
    // A primary at a newer epoch comes back: I/O works again.
    w.script.set(&[(&w.a, "a", Role::Primary, 3)]);
    let back = wait(Duration::from_secs(5), || {
        (w.ep.status().state == EndpointState::Connected).then_some(())
    })
    .await;
    assert!(back.is_some(), "{:?}", w.ep.status());
    w.client.write(4096, vec![7; 4096], false).await.unwrap();
    let r = w.client.read(4096, vec![0; 4096]).await.unwrap();
    assert!(r.iter().all(|&b| b == 7));
    assert_eq!(w.ep.status().failed, 1);
}

#[tokio::test]
async fn withdrawing_fails_pending_requests_and_refuses_new_clients() {
    let w = world().await;
    w.a.mode.store(HANG, Ordering::SeqCst);
    let c = w.client.clone();
    let t = tokio::spawn(async move { c.write(0, vec![1; 4096], false).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.ep.withdraw();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap(),
        Err(Errno::Io)
    );
    assert!(w.ep.open().is_err());
    drop(w.b);
}
