//! The control socket end to end, against a fake [`Control`]: every command
//! through `hast_connect::ctl::call` (the client hastcctl uses), the JSON
//! shapes, and the bounds (oversized request, a 17th client, a silent
//! client, a stale or live socket at the path).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hast_connect::control::{self, Command, Limits, ListEntry, Response};
use hast_connect::ctl;
use hast_connect::status::{Control, EndpointState, EndpointStatus};

/// A Control that records what it was asked.
#[derive(Default)]
struct Fake {
    endpoints: Mutex<Vec<EndpointStatus>>,
    calls: Mutex<Vec<String>>,
}

fn endpoint(name: &str, epoch: u64) -> EndpointStatus {
    EndpointStatus {
        resource: name.into(),
        uris: vec![format!(
            "nbd+unix:///{name}?socket=/run/hast/hastcd/{name}.nbd"
        )],
        state: EndpointState::Connected,
        primary: Some("10.0.0.1:8459".into()),
        nbd: Some("10.0.0.1:10809".into()),
        epoch,
        epoch_seen: epoch,
        size: 1 << 30,
        clients: 1,
        failovers: 2,
        pending: 3,
        held: 4,
        replayed: 5,
        failed: 0,
        last_pause_ms: Some(812),
    }
}

impl Control for Fake {
    fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.lock().unwrap().clone()
    }
    fn connect(&self, resource: &str) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("connect {resource}"));
        if resource == "slow" {
            // A daemon busy for a while: others must still be answered.
            std::thread::sleep(Duration::from_millis(1500));
        }
        if resource == "unknown" {
            return Err("not found by discovery nor configured".into());
        }
        self.endpoints.lock().unwrap().push(endpoint(resource, 1));
        Ok(())
    }
    fn disconnect(&self, resource: &str) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("disconnect {resource}"));
        self.endpoints
            .lock()
            .unwrap()
            .retain(|e| e.resource != resource);
        Ok(())
    }
    fn trace(&self, on: bool) {
        self.calls.lock().unwrap().push(format!("trace {on}"));
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hastcd-ctl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_round_trips() {
    let dir = tmpdir("rt");
    let sock = dir.join("hastcd.sock");
    let fake = Arc::new(Fake::default());
    fake.endpoints.lock().unwrap().push(endpoint("db", 7));
    let handle = control::serve(&sock, fake.clone()).await.unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let call = |c: Command| {
        let s = sock.clone();
        blocking(move || ctl::call(&s, c))
    };
    let r = call(Command::List).await.unwrap();
    assert_eq!(
        r,
        Response::List {
            endpoints: vec![ListEntry::from(&endpoint("db", 7))]
        }
    );
    let r = call(Command::Status { resource: None }).await.unwrap();
    assert_eq!(
        r,
        Response::Status {
            endpoints: vec![endpoint("db", 7)]
        }
    );
    let r = call(Command::Status {
        resource: Some("db".into()),
    })
    .await
    .unwrap();
    assert_eq!(
        r,
        Response::Status {
            endpoints: vec![endpoint("db", 7)]
        }
    );
    let e = call(Command::Status {
        resource: Some("nope".into()),
    })
    .await
    .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (66, "no endpoint for resource \"nope\"")
    );
    assert_eq!(
        call(Command::Connect {
            resource: "logs".into()
        })
        .await
        .unwrap(),
        Response::Ok
    );
    let e = call(Command::Connect {
        resource: "unknown".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(e.code, 66);
    assert!(e.message.contains("not found by discovery"), "{e}");
    assert_eq!(
        call(Command::Disconnect {
            resource: "db".into()
        })
        .await
        .unwrap(),
        Response::Ok
    );
    let e = call(Command::Disconnect {
        resource: "db".into(),
    })
    .await
    .unwrap_err();
    assert_eq!(e.code, 66, "{e}");
    assert_eq!(
        call(Command::Trace { on: true }).await.unwrap(),
        Response::Ok
    );
    assert_eq!(
        call(Command::Trace { on: false }).await.unwrap(),
        Response::Ok
    );
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            "connect logs",
            "connect unknown",
            "disconnect db",
            "trace true",
            "trace false"
        ]
    );
    drop(handle);
    assert!(!sock.exists(), "the socket outlived its server");
    let e = blocking({
        let s = sock.clone();
        move || ctl::call(&s, Command::List)
    })
    .await
    .unwrap_err();
    assert_eq!(e.code, 69, "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_shapes() {
    let ls = serde_json::to_value(ListEntry::from(&endpoint("db", 7))).unwrap();
    assert_eq!(
        ls,
        serde_json::json!({
            "resource": "db",
            "uris": ["nbd+unix:///db?socket=/run/hast/hastcd/db.nbd"],
            "state": "connected",
            "primary": "10.0.0.1:8459",
            "epoch": 7
        })
    );
    let st = serde_json::to_value(endpoint("db", 7)).unwrap();
    let keys: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "resource",
        "uris",
        "state",
        "primary",
        "nbd",
        "epoch",
        "epoch_seen",
        "size",
        "clients",
        "failovers",
        "pending",
        "held",
        "replayed",
        "failed",
        "last_pause_ms",
    ];
    let mut keys = keys;
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want);
    let err = serde_json::to_value(Response::Error {
        code: 66,
        message: "m".into(),
    })
    .unwrap();
    assert_eq!(
        err,
        serde_json::json!({"response": "error", "code": 66, "message": "m"})
    );
}

/// Sends raw bytes, returns the decoded answer (or None at EOF).
fn raw(sock: &Path, bytes: &[u8]) -> Option<Response> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    if out.len() < 4 {
        return None;
    }
    Some(serde_json::from_slice(&out[4..]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds() {
    let dir = tmpdir("bounds");
    let sock = dir.join("hastcd.sock");
    let fake = Arc::new(Fake::default());
    let limits = Limits {
        deadline: Duration::from_millis(400),
        ..Limits::default()
    };
    let _handle = control::serve_with(&sock, fake, limits).await.unwrap();

    // A request announced larger than 64 KiB: refused before any body.
    let big = u32::try_from(control::REQUEST_MAX + 1)
        .unwrap()
        .to_be_bytes();
    let s2 = sock.clone();
    let r = blocking(move || raw(&s2, &big)).await;
    match r {
        Some(Response::Error { code, message }) => {
            assert_eq!(code, 65);
            assert!(
                message.contains("65537 bytes exceeds the limit of 65536"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Exactly 64 KiB of garbage: read, refused as malformed.
    let mut frame = u32::try_from(control::REQUEST_MAX)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    frame.extend(std::iter::repeat_n(b' ', control::REQUEST_MAX));
    let s2 = sock.clone();
    match blocking(move || raw(&s2, &frame)).await {
        Some(Response::Error { code: 65, message }) => {
            assert!(message.contains("malformed"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    // A silent client is closed by the deadline.
    let s2 = sock.clone();
    let waited = blocking(move || {
        let mut s = UnixStream::connect(&s2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = Instant::now();
        let mut b = [0u8; 1];
        let n = s.read(&mut b).unwrap();
        assert_eq!(n, 0, "expected EOF");
        t.elapsed()
    })
    .await;
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );

    // 16 silent clients hold every slot: the 17th is told hastcd is busy.
    let s2 = sock.clone();
    blocking(move || {
        let held: Vec<UnixStream> = (0..control::CLIENTS_MAX)
            .map(|_| UnixStream::connect(&s2).unwrap())
            .collect();
        // Let the server accept them all before the 17th.
        std::thread::sleep(Duration::from_millis(100));
        match raw(&s2, &[]) {
            Some(Response::Error { code, message }) => {
                assert_eq!(code, 75);
                assert!(
                    message.contains("busy: 16 control connections"),
                    "{message}"
                );
            }
            other => panic!("17th client: {other:?}"),
        }
        drop(held);
    })
    .await;
    // Once they are gone (closed by us, or by the deadline), service resumes.
    let s2 = sock.clone();
    let ok = blocking(move || {
        let t = Instant::now();
        loop {
            match ctl::call(&s2, Command::List) {
                Ok(r) => return r,
                Err(e) if t.elapsed() < Duration::from_secs(3) && e.code == 75 => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(ok, Response::List { endpoints: vec![] });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_replaced_live_one_kept() {
    let dir = tmpdir("stale");
    let sock = dir.join("hastcd.sock");
    // A socket file nobody listens on: what a killed hastcd leaves.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let fake: Arc<dyn Control> = Arc::new(Fake::default());
    let first = control::serve(&sock, fake.clone()).await.unwrap();
    // A second hastcd on the same path: refused, the first keeps serving.
    let e = match control::serve(&sock, fake).await {
        Err(e) => e,
        Ok(_) => panic!("a live control socket was taken over"),
    };
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    assert!(e.to_string().contains("another hastcd"), "{e}");
    let s2 = sock.clone();
    let r = blocking(move || ctl::call(&s2, Command::List))
        .await
        .unwrap();
    assert_eq!(r, Response::List { endpoints: vec![] });
    drop(first);
    // A regular file or a symlink at the path is never removed.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for p in [&file, &link] {
        let e = match control::serve(p, Arc::new(Fake::default())).await {
            Err(e) => e,
            Ok(_) => panic!("{} was replaced", p.display()),
        };
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Control slow to answer one client does not hold up the others, even
/// on a single-threaded runtime.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_answer_does_not_block_others() {
    let dir = tmpdir("slow");
    let sock = dir.join("hastcd.sock");
    let _handle = control::serve(&sock, Arc::new(Fake::default()))
        .await
        .unwrap();
    let s2 = sock.clone();
    let slow = tokio::task::spawn_blocking(move || {
        ctl::call(
            &s2,
            Command::Connect {
                resource: "slow".into(),
            },
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let s2 = sock.clone();
    let r = blocking(move || ctl::call(&s2, Command::List))
        .await
        .unwrap();
    assert_eq!(r, Response::List { endpoints: vec![] });
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(slow.await.unwrap().unwrap(), Response::Ok);
    std::fs::remove_dir_all(&dir).unwrap();
}
