//! hastd's discovery listener (`discovery_listen`) against the connector's
//! client (`hast_connect::discover::query`), real hastd over loopback:
//!
//! - an open resource is listed to anyone with its live role, epoch, size,
//!   status and NBD address, and the answer follows `hastctl role` (the
//!   epoch grows on promotion);
//! - a resource with a `secret_file` is listed to a client holding its
//!   current or next key, and to nobody else: an unauthenticated client's
//!   answer holds not one byte about it, a wrong key is refused;
//! - a reload that gives the open resource a secret hides it at once;
//! - garbage, a byte-at-a-time sender, a silent client and 100 connections
//!   at once are closed within the 5 s deadline, and hastd keeps answering;
//! - `nbd_tls required` shows as `nbd_tls: true`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hast_connect::discover::{query, DiscoverError};
use hast_meta::Role;
use hast_repl::discover::{self as wire, CheckError, Entry, Greeting, Status};
use hast_testkit::{bins, free_port, timeout_s, wait_for, Node, ResourceSpec, MIB};

const K1: &str = "discovery-key-one-0123456789abcdef";
const K2: &str = "discovery-key-two-fedcba9876543210";
const K3: &str = "discovery-key-unrelated-0000000000";
/// Per query: far above a loopback exchange, far below the test's patience.
const Q: Duration = Duration::from_secs(5);

fn write_key(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .expect("key file");
    f.write_all(text.as_bytes()).expect("write key");
    std::fs::rename(&tmp, path).expect("rename key file");
}

fn secret(text: &str) -> hast_conf::Secret {
    hast_conf::Secret::parse(text.as_bytes()).expect("a valid key")
}

/// The config: `open` without a secret, `locked` with `locked.key` (and
/// `open` too with `open.key` when `open_locked`).
fn config(l: &hast_testkit::Layout, disc_port: u16, open_locked: bool) -> String {
    let res = |name: &str, key: Option<&str>| {
        format!(
            "\nresource {name} {{\n{key}    on {node} {{\n        local {local}\n        remote none\n    }}\n}}\n",
            key = key.map_or(String::new(), |k| format!(
                "    secret_file {}\n",
                l.dir.join(k).display()
            )),
            node = l.node_name,
            local = l.local(name).display(),
        )
    };
    // The harness's daemon options, our resources instead of its own.
    let c = l.default_config();
    let mut out = c[..c.find("\nresource ").unwrap_or(c.len())].to_string();
    out.push_str(&format!("discovery_listen tcp://127.0.0.1:{disc_port}\n"));
    out.push_str(&res("open", open_locked.then_some("open.key")));
    out.push_str(&res("locked", Some("locked.key")));
    out
}

struct Setup {
    node: Node,
    port: u16,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let port = free_port();
        let mut node = Node::builder(bins!())
            .tag(tag)
            .resource(ResourceSpec::new("open", 64 * MIB))
            .resource(ResourceSpec::new("locked", 32 * MIB))
            .config(move |l| config(l, port, false))
            .build();
        // The key files exist before hastd reads them.
        write_key(
            &node.layout().dir.join("locked.key"),
            &format!("{K1}\n{K2}\n"),
        );
        write_key(&node.layout().dir.join("open.key"), &format!("{K1}\n"));
        node.start_daemon();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Setup { node, port, rt }
    }

    fn query(&self, key: Option<&str>) -> Result<Vec<Entry>, DiscoverError> {
        let s = key.map(secret);
        self.rt
            .block_on(query("127.0.0.1", self.port, s.as_ref(), Q))
    }

    fn names(&self, key: Option<&str>) -> Vec<String> {
        let mut n: Vec<String> = self
            .query(key)
            .unwrap_or_else(|e| panic!("query with {key:?}: {e}"))
            .into_iter()
            .map(|e| e.name)
            .collect();
        n.sort();
        n
    }

    /// The entry of `name` once `pred` holds (answers are cached ~100 ms).
    fn wait_entry(&self, name: &str, what: &str, pred: impl Fn(&Entry) -> bool) -> Entry {
        let mut last = None;
        wait_for(timeout_s(10), || {
            let e = self
                .query(Some(K1))
                .unwrap_or_else(|e| panic!("query: {e}"))
                .into_iter()
                .find(|e| e.name == name);
            let ok = e.as_ref().is_some_and(&pred);
            last = e;
            ok.then(|| last.clone())
        })
        .flatten()
        .unwrap_or_else(|| panic!("{name}: {what} not seen; last entry {last:?}"))
    }
}

#[test]
fn entries_follow_the_live_state() {
    let mut s = Setup::new("disc-live");
    let nbd = vec![format!("tcp://127.0.0.1:{}", s.node.layout().nbd_port)];

    // Both in init: listed (a client must know who is not primary).
    let init = s.wait_entry("open", "init", |e| e.role == Role::Init);
    assert_eq!(init.status, Status::Inactive);
    assert_eq!(init.export, "open");
    assert_eq!(init.nbd, nbd);
    assert!(!init.nbd_tls);
    let epoch0 = init.epoch;

    let size = s.node.promote("open");
    let p = s.wait_entry("open", "primary", |e| e.role == Role::Primary);
    assert!(
        p.epoch > epoch0,
        "promotion raised the epoch: {epoch0} -> {}",
        p.epoch
    );
    assert_eq!(p.size, size, "the export's size");
    assert_eq!(p.size, s.node.datasize("open"));
    assert_eq!(p.status, Status::Complete, "remote none: complete");
    assert_eq!(p.nbd, nbd);
    eprintln!(
        "init epoch {epoch0}, primary epoch {} size {}",
        p.epoch, p.size
    );

    s.node.hastctl_ok(&["role", "secondary", "open"]);
    let sec = s.wait_entry("open", "secondary", |e| e.role == Role::Secondary);
    assert!(sec.epoch >= p.epoch, "an epoch never goes back");
    assert_eq!(sec.size, size);

    s.node.hastctl_ok(&["role", "init", "open"]);
    let back = s.wait_entry("open", "init again", |e| e.role == Role::Init);
    assert!(back.epoch >= sec.epoch);
    assert_eq!(back.status, Status::Inactive);

    // A second promotion raises it again.
    s.node.promote("open");
    let p2 = s.wait_entry("open", "primary again", |e| e.role == Role::Primary);
    assert!(p2.epoch > back.epoch, "{} -> {}", back.epoch, p2.epoch);

    // Read-only: discovery changed nothing hastctl sees.
    let before = s.node.dump("open");
    for _ in 0..20 {
        s.query(None).expect("query");
    }
    assert_eq!(s.node.dump("open"), before);
}

#[test]
fn a_resource_with_a_secret_is_shown_only_to_its_key_holders() {
    let mut s = Setup::new("disc-secret");
    s.node.promote("locked");
    assert_eq!(s.names(Some(K1)), ["locked", "open"], "the current key");
    // Rotation: a client already on the next key.
    assert_eq!(s.names(Some(K2)), ["locked", "open"], "the next key");
    assert_eq!(s.names(None), ["open"], "no key: the open resource only");
    let locked = s.wait_entry("locked", "primary", |e| e.role == Role::Primary);
    assert_eq!(locked.size, s.node.datasize("locked"));

    // A wrong key: the node cannot prove it knows it, so the client refuses
    // the answer (a fake node would look exactly like this).
    match s.query(Some(K3)) {
        Err(DiscoverError::Unauthenticated {
            source: CheckError::Unauthenticated,
            ..
        }) => {}
        other => panic!("wrong key: {other:?}"),
    }

    // The raw answer to an unauthenticated client: not a byte about it.
    for key in [None, Some(K3.as_bytes())] {
        let raw = raw_answer(s.port, key);
        assert!(
            !raw.windows(b"locked".len()).any(|w| w == b"locked"),
            "{key:?}: the answer names the locked resource"
        );
        let body = &raw[wire::ANSWER_PREFIX_LEN..raw.len() - wire::MAC_LEN];
        let entries = wire::decode_body(body).expect("well-formed");
        assert_eq!(entries.len(), 1);
        assert_eq!(
            &raw[raw.len() - wire::MAC_LEN..],
            &wire::NO_TAG,
            "no MAC: no key verified"
        );
    }

    // A reload that gives `open` a secret hides it from strangers at once.
    let port = s.port;
    std::fs::write(
        &s.node.layout().config_path,
        config(s.node.layout(), port, true),
    )
    .expect("rewrite config");
    s.node.signal(libc::SIGHUP);
    let hidden = wait_for(timeout_s(10), || s.names(None).is_empty().then_some(()));
    assert!(
        hidden.is_some(),
        "open still listed to strangers: {:?}",
        s.names(None)
    );
    assert_eq!(s.names(Some(K1)), ["locked", "open"]);
}

/// One exchange by hand; returns the ANSWER's bytes (prefix, body, MAC).
fn raw_answer(port: u16, key: Option<&[u8]>) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Q)).unwrap();
    let mut g = [0u8; wire::GREETING_LEN];
    c.read_exact(&mut g).expect("greeting");
    let g = Greeting::decode(&g).expect("greeting decodes");
    let req = wire::request(&g, [0x5a; wire::NONCE_LEN], key).expect("request");
    c.write_all(&req.encode()).expect("send request");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("answer");
    raw
}

/// Reads until the server closes; returns how long that took.
fn until_closed(mut c: TcpStream, bound: Duration) -> Duration {
    let start = Instant::now();
    c.set_read_timeout(Some(bound)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("not closed within {bound:?}: {e}"),
        }
    }
}

#[test]
fn abuse_is_bounded() {
    let mut s = Setup::new("disc-abuse");
    s.node.promote("open");
    let addr = ("127.0.0.1", s.port);

    // Garbage instead of a request: closed at once, no answer.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&[0xa5; wire::REQUEST_LEN]).unwrap();
    let t = until_closed(c, Duration::from_secs(10));
    assert!(t < Duration::from_secs(2), "garbage held {t:?}");

    // The replication protocol's frame magic spoken to it: same.
    let mut c = TcpStream::connect(addr).unwrap();
    let mut bytes = hast_repl::MAGIC.to_le_bytes().to_vec();
    bytes.resize(wire::REQUEST_LEN, 0);
    c.write_all(&bytes).unwrap();
    assert!(until_closed(c, Duration::from_secs(10)) < Duration::from_secs(2));

    // A client that never sends: closed by the 5 s deadline.
    let silent = TcpStream::connect(addr).unwrap();
    let t = until_closed(silent, Duration::from_secs(15));
    eprintln!("silent client closed after {t:?}");
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(8)).contains(&t),
        "silent client closed after {t:?}"
    );

    // Slowloris: one byte every 400 ms keeps nothing open past the deadline.
    let mut slow = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let mut greeting = [0u8; wire::GREETING_LEN];
    slow.set_read_timeout(Some(Q)).unwrap();
    slow.read_exact(&mut greeting).unwrap();
    let mut closed_at = None;
    for _ in 0..40 {
        if slow.write_all(&[0x48]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let t =
        closed_at.unwrap_or_else(|| until_closed(slow, Duration::from_secs(10)) + start.elapsed());
    eprintln!("slowloris closed after {t:?}");
    assert!(t < Duration::from_secs(10), "slowloris held {t:?}");

    // 100 silent connections at once: at most 64 are served, the rest closed
    // at once; all are gone after the deadline, and hastd answers again.
    let start = Instant::now();
    let conns: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| std::thread::spawn(move || until_closed(c, Duration::from_secs(15))))
        .collect();
    let mut times: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    times.sort();
    let early = times
        .iter()
        .filter(|t| **t < Duration::from_secs(2))
        .count();
    eprintln!(
        "100 silent connections: {early} closed at once, the last after {:?} (all within {:?})",
        times[99],
        start.elapsed()
    );
    assert!(early >= 100 - 64, "only {early} closed at once");
    assert!(times[99] < Duration::from_secs(8), "{:?}", times[99]);

    // 100 honest queries at once: each answered or refused, none hangs.
    let results: Vec<Result<Vec<Entry>, DiscoverError>> = s.rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|_| tokio::spawn(query("127.0.0.1", addr.1, None, Q)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(DiscoverError::Refused { .. })),
            "{r:?}"
        );
    }
    eprintln!("100 queries at once: {ok} answered, {} refused", 100 - ok);
    assert!(ok >= 1);

    // Still alive, still right, and the control socket still answers.
    assert!(s.node.daemon_running(), "hastd died");
    let e = s.wait_entry("open", "primary", |e| e.role == Role::Primary);
    assert_eq!(e.size, s.node.datasize("open"));
}

/// `nbd_tls required` shows as `nbd_tls: true`; `optional` does not (a
/// plaintext client is still served then).
#[test]
fn nbd_tls_required_is_reported() {
    if !hast_testkit::require_tools(&["openssl"]) {
        return;
    }
    for (mode, want) in [("required", true), ("optional", false)] {
        let port = free_port();
        let certs = hast_testkit::TempDir::new("disc-tls-certs");
        let d = certs.path().to_path_buf();
        hast_testkit::run_ok(
            std::process::Command::new("openssl").current_dir(&d).args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ]),
            timeout_s(60),
        );
        let tls = format!(
            "nbd_tls {mode}\nnbd_tls_cert {}\nnbd_tls_key {}\ndiscovery_listen tcp://127.0.0.1:{port}\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        );
        let node = Node::builder(bins!())
            .tag("disc-tls")
            .resource(ResourceSpec::new("r0", 32 * MIB))
            .config(move |l| {
                let c = l.default_config();
                // Daemon options go before the first resource section.
                let at = c.find("\nresource ").map_or(c.len(), |a| a + 1);
                format!("{}{}{}", &c[..at], tls, &c[at..])
            })
            .start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt
            .block_on(query("127.0.0.1", port, None, Q))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(got.len(), 1, "{mode}: {got:?}");
        assert_eq!(got[0].nbd_tls, want, "{mode}");
        assert_eq!(
            got[0].nbd,
            [format!("tcp://127.0.0.1:{}", node.layout().nbd_port)]
        );
    }
}
