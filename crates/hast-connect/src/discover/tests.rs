//! The client against fake servers on loopback: a tampered or unMACed
//! answer is refused with the reason, a silent or closing server ends in a
//! typed error within the deadline, wildcard NBD hosts are replaced.

use std::time::{Duration, Instant};

use hast_repl::discover::{self, Entry, Greeting, Offer, Request, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const KEY: &[u8] = b"0123456789abcdef-current";
const OTHER: &[u8] = b"somebody-elses-key-000000";

fn secret(k: &[u8]) -> hast_conf::Secret {
    hast_conf::Secret::new(k.to_vec(), None).unwrap()
}

fn entry() -> Entry {
    Entry {
        name: "r0".into(),
        export: "r0".into(),
        role: hast_meta::Role::Primary,
        epoch: 3,
        status: Status::Complete,
        size: 1 << 20,
        nbd: vec!["tcp://0.0.0.0:10809".into(), "tcp://10.1.2.3:10809".into()],
        nbd_tls: true,
    }
}

/// How the fake server misbehaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Answers honestly, `r0` locked with `KEY`.
    Honest,
    /// Flips a bit of the answer body after MACing it.
    Tamper,
    /// Says nothing at all.
    Silent,
    /// Greets, then closes without answering.
    Close,
    /// Greets with another version.
    Version,
    /// Announces a body larger than the limit.
    Huge,
}

/// One fake server for one connection; returns its port.
async fn fake(how: Fake) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut g = Greeting::new([4; discover::NONCE_LEN]);
        match how {
            Fake::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Fake::Version => g.version = 99,
            _ => {}
        }
        s.write_all(&g.encode()).await.unwrap();
        let mut buf = [0u8; discover::REQUEST_LEN];
        if s.read_exact(&mut buf).await.is_err() {
            return;
        }
        let req = Request::decode(&buf).unwrap();
        match how {
            Fake::Close => return,
            Fake::Huge => {
                let len = (discover::ANSWER_MAX as u32 + 1).to_le_bytes();
                let _ = s.write_all(&len).await;
                return;
            }
            _ => {}
        }
        let offers = [Offer {
            entry: entry(),
            keys: Some(vec![KEY]),
        }];
        let (mut wire, _) = discover::answer(&g, &req, &offers).unwrap();
        if matches!(how, Fake::Tamper) {
            // The epoch's low byte: after prefix(4) count(2) name(3)
            // export(3) role status tls(3).
            wire[4 + 2 + 3 + 3 + 3] ^= 1;
        }
        let _ = s.write_all(&wire).await;
    });
    port
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn an_honest_node_with_our_key() {
    let port = fake(Fake::Honest).await;
    let got = query("127.0.0.1", port, Some(&secret(KEY)), T)
        .await
        .unwrap();
    let mut want = entry();
    // The wildcard is replaced by the host asked; a real address is kept.
    want.nbd[0] = "tcp://127.0.0.1:10809".into();
    assert_eq!(got, vec![want]);
}

#[tokio::test]
async fn without_a_key_the_locked_resource_is_unseen() {
    let port = fake(Fake::Honest).await;
    assert_eq!(query("127.0.0.1", port, None, T).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_node_without_our_key_is_not_trusted() {
    let port = fake(Fake::Honest).await;
    let e = query("127.0.0.1", port, Some(&secret(OTHER)), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DiscoverError::Unauthenticated {
                source: CheckError::Unauthenticated,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_tampered_answer_is_refused() {
    let port = fake(Fake::Tamper).await;
    let e = query("127.0.0.1", port, Some(&secret(KEY)), T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DiscoverError::Unauthenticated {
                source: CheckError::BadTag,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn failures_are_named() {
    let port = fake(Fake::Close).await;
    let e = query("127.0.0.1", port, None, T).await.unwrap_err();
    assert!(matches!(e, DiscoverError::Refused { .. }), "{e}");

    let port = fake(Fake::Version).await;
    let e = query("127.0.0.1", port, None, T).await.unwrap_err();
    assert!(
        matches!(e, DiscoverError::Version { theirs: 99, .. }),
        "{e}"
    );

    let port = fake(Fake::Huge).await;
    let e = query("127.0.0.1", port, None, T).await.unwrap_err();
    assert!(matches!(e, DiscoverError::BadAnswer { .. }), "{e}");

    // Nobody listens on a port just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = query("127.0.0.1", port, None, T).await.unwrap_err();
    assert!(matches!(e, DiscoverError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test]
async fn a_silent_node_times_out() {
    let port = fake(Fake::Silent).await;
    let start = Instant::now();
    let e = query("127.0.0.1", port, None, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, DiscoverError::Timeout { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn wildcards() {
    for (nbd, host, want) in [
        ("tcp://0.0.0.0:10809", "10.0.0.1", "tcp://10.0.0.1:10809"),
        ("tcp://[::]:10809", "node-a", "tcp://node-a:10809"),
        ("tcp://:1", "::1", "tcp://[::1]:1"),
        ("tcp://[::]:2", "[fe80::1]", "tcp://[fe80::1]:2"),
        ("tcp://10.0.0.2:10809", "10.0.0.1", "tcp://10.0.0.2:10809"),
        ("tcp://[::1]:3", "h", "tcp://[::1]:3"),
        ("tcp://name:4", "h", "tcp://name:4"),
        ("odd", "h", "odd"),
    ] {
        assert_eq!(unwildcard(nbd, host), want, "{nbd} {host}");
    }
}
