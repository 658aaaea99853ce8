//! Rotating the replication key without downtime (docs/security.md): each
//! node gets its own key file; the new key is added as line 2 on both, then
//! offered first on one node and later the other, then the old one dropped.
//! The link is cut after every step so that a new connection must
//! authenticate with the keys of that moment. The reloads themselves never
//! end the running session; a node whose key matches none of its peer's is
//! refused (and says so) until it has a right one again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hast_testkit::pair::qemu_io;
use hast_testkit::{bins, require_tools, timeout_s, Pair, Side, MIB};

const K1: &str = "rotation-key-one-0123456789abcdef";
const K2: &str = "rotation-key-two-fedcba9876543210";
const K3: &str = "rotation-key-unrelated-000000000";

fn key_file(pair: &Pair, side: Side) -> PathBuf {
    pair.node(side).layout().dir.join("own.key")
}

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
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write key");
    std::fs::rename(&tmp, path).expect("rename key file");
}

/// Sets `side`'s key file to `text` and reloads it; returns once the node
/// logged the reload.
fn rekey(pair: &mut Pair, side: Side, text: &str) {
    write_key(&key_file(pair, side), text);
    let before = pair
        .node(side)
        .log()
        .matches("configuration reloaded")
        .count();
    pair.node_mut(side).signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + timeout_s(10);
    while pair
        .node(side)
        .log()
        .matches("configuration reloaded")
        .count()
        == before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{side} did not reload:\n{}",
            pair.node(side).log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cuts the link and checks that the pair reconnects and is complete.
fn reconnects(pair: &Pair, step: &str) {
    pair.proxy().cut();
    pair.wait_status(Side::A, timeout_s(15), "degraded", |s| {
        s.status == "degraded"
    });
    pair.proxy().heal();
    let took = pair.wait_complete(timeout_s(30));
    eprintln!("{step}: reconnected and complete in {took:?}");
}

#[test]
fn the_key_rotates_without_downtime() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("rotate")
        .file_size(64 * MIB)
        .proxy()
        .start();
    pair.setup(Side::A, timeout_s(60));

    // Give each node its own key file (same key K1), as on two real hosts.
    for side in [Side::A, Side::B] {
        write_key(&key_file(&pair, side), K1);
        let path = pair.node(side).layout().config_path.clone();
        let text = std::fs::read_to_string(&path).expect("config");
        let own: String = text
            .lines()
            .map(|l| {
                if l.starts_with("secret_file ") {
                    format!("secret_file {}\n", key_file(&pair, side).display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_ne!(own, text, "the pair config has no secret_file line");
        std::fs::write(&path, own).expect("rewrite config");
    }
    rekey(&mut pair, Side::A, K1);
    rekey(&mut pair, Side::B, K1);
    reconnects(&pair, "own key files");

    // 1. The next key, accepted on both; the current one still offered.
    let marks = (
        pair.node(Side::A).log().len(),
        pair.node(Side::B).log().len(),
    );
    rekey(&mut pair, Side::A, &format!("{K1}\n{K2}\n"));
    rekey(&mut pair, Side::B, &format!("{K1}\n{K2}\n"));
    std::thread::sleep(Duration::from_millis(500));
    for (side, from) in [(Side::A, marks.0), (Side::B, marks.1)] {
        let log = pair.node(side).log();
        let since = log.get(from..).unwrap_or_default();
        assert!(
            !since.contains("disconnected"),
            "a reload ended the session on {side}:\n{since}"
        );
    }
    qemu_io(&pair.uri(Side::A), &["write -P 0x41 0 1M".to_string()]);
    reconnects(&pair, "K1 offered, K1+K2 accepted");

    // 2. A offers K2 first while B still offers K1; then B too.
    rekey(&mut pair, Side::A, &format!("{K2}\n{K1}\n"));
    reconnects(&pair, "A offers K2, B offers K1");
    rekey(&mut pair, Side::B, &format!("{K2}\n{K1}\n"));
    reconnects(&pair, "both offer K2");

    // 3. The old key dropped.
    rekey(&mut pair, Side::A, K2);
    rekey(&mut pair, Side::B, K2);
    reconnects(&pair, "K2 only");
    qemu_io(&pair.uri(Side::A), &["write -P 0x42 1M 1M".to_string()]);
    pair.wait_complete(timeout_s(30));

    // A key the peer does not know is refused, and the primary says why.
    rekey(&mut pair, Side::A, K3);
    pair.proxy().cut();
    pair.proxy().heal();
    let st = pair.wait_status(Side::A, timeout_s(20), "authentication refused", |s| {
        s.peer
            .as_deref()
            .is_some_and(|p| p.contains("refused the connection"))
    });
    eprintln!("wrong key: {}", st.brief());
    rekey(&mut pair, Side::A, K2);
    pair.wait_complete(timeout_s(30));
    pair.assert_identical(timeout_s(10));
}
