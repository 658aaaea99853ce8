//! The replication key file (`secret_file`) on a real pair.
//!
//! Made as README.md says: its key block (`umask 077; head -c 32
//! /dev/urandom | base64 > /etc/hast/repl.key`, then the `secret_file` line
//! appended to hast.conf) is found by its first line and run by bash as
//! printed, only the two paths replaced by each node's own; the key copied
//! to the peer. The file is mode 0600, hastd takes the base64 text as it is,
//! both nodes report `auth: hmac-sha256` and a write replicates; a peer with
//! another key made the same way, or with none, is refused and gets nothing.
//!
//! Rotated without downtime (docs/security.md): each node gets its own key
//! file; the new key is added as line 2 on both, then offered first on one
//! node and later the other, then the old one dropped. The link is cut after
//! every step so that a new connection must authenticate with the keys of
//! that moment. The reloads themselves never end the running session; a node
//! whose key matches none of its peer's is refused (and says so) until it
//! has a right one again.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hast_testkit::pair::qemu_io;
use hast_testkit::{bins, readme, require_tools, run, timeout_s, Pair, Side, MIB};

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
    reload(pair, side);
}

/// SIGHUPs `side`; returns once it logged the reload.
fn reload(pair: &mut Pair, side: Side) {
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

/// The first line of README.md's key block.
const KEY_BLOCK: &str = "umask 077; head -c 32 /dev/urandom | base64 > /etc/hast/repl.key";

/// Runs `lines` of README.md's key block with bash, as printed but for the
/// key file and hast.conf of `side`.
fn run_key_block(pair: &Pair, side: Side, lines: &str) {
    let key = key_file_of(pair, side).display().to_string();
    let conf = pair.node(side).layout().config_path.display().to_string();
    let paths = [
        ("/etc/hast/repl.key", key.as_str()),
        ("/etc/hast.conf", &conf),
    ];
    // Only the paths these lines name (the test checks the block names both).
    let named: Vec<(&str, &str)> = paths
        .into_iter()
        .filter(|(p, _)| lines.contains(p))
        .collect();
    let script = readme::substitute(lines, &named);
    let out = run(
        Command::new("bash").args(["-euo", "pipefail", "-c", &script]),
        timeout_s(30),
    );
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "the README's key block failed on {side}:\n{script}\n{out:?}"
    );
}

/// `len` bytes of `side`'s data area at `offset`, from its image file.
fn area(pair: &Pair, side: Side, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(pair.image(side)).expect("open image");
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, pair.data_area(side).0 + offset)
        .expect("read image");
    buf
}

/// With the link cut and healed, A (primary) writes `pattern` at `offset`
/// and its peer ends up refused (A's `peer` says `says`), not connected; B
/// has none of it.
fn refused_and_untouched(pair: &Pair, step: &str, says: &str, offset: u64, pattern: u8) {
    pair.proxy().cut();
    pair.wait_status(Side::A, timeout_s(15), "degraded", |s| {
        s.status == "degraded"
    });
    pair.proxy().heal();
    qemu_io(
        &pair.uri(Side::A),
        &[format!("write -P {pattern} {offset} 1M"), "flush".into()],
    );
    let st = pair.wait_status(Side::A, timeout_s(20), says, |s| {
        s.peer.as_deref().is_some_and(|p| p.contains(says))
    });
    eprintln!("{step}: A's peer: {}", st.peer.as_deref().unwrap_or(""));
    // Give a session that should not exist the time to copy something.
    std::thread::sleep(Duration::from_secs(2));
    let st = pair.status(Side::A);
    assert_ne!(
        st.peer.as_deref(),
        Some("connected"),
        "{step}: {}",
        st.brief()
    );
    assert_eq!(st.status, "degraded", "{step}: {}", st.brief());
    assert!(
        area(pair, Side::B, offset, MIB as usize)
            .iter()
            .all(|&b| b != pattern),
        "{step}: B holds A's write\n{}",
        pair.describe()
    );
}

/// README.md's key block run as printed on each node of a real pair (see
/// the module's doc).
#[test]
fn the_readme_key_block_keys_a_pair() {
    if !require_tools(&["qemu-io", "base64", "head"]) {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("readme-key")
        .file_size(64 * MIB)
        .proxy()
        .no_secret()
        .build();
    let block = readme::sh_block(KEY_BLOCK);
    let (make, append) = block.split_once('\n').expect("two lines");
    assert!(
        make.contains("> /etc/hast/repl.key")
            && append.trim_end().lines().count() == 1
            && append.starts_with("echo 'secret_file /etc/hast/repl.key' >> /etc/hast.conf"),
        "the key block is the key, then the hast.conf line:\n{block}"
    );
    // A: the whole block. B: the key copied from A (mode kept, as the
    // block's comment says), then the block's hast.conf line.
    run_key_block(&pair, Side::A, &block);
    let (key_a, key_b) = (key_file_of(&pair, Side::A), key_file_of(&pair, Side::B));
    std::fs::copy(&key_a, &key_b).expect("copy the key to the peer");
    run_key_block(&pair, Side::B, append);
    for side in [Side::A, Side::B] {
        let key = key_file_of(&pair, side);
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{side}: {} is {mode:o}", key.display());
        let conf = std::fs::read_to_string(&pair.node(side).layout().config_path).unwrap();
        assert_eq!(
            conf.lines().last(),
            Some(format!("secret_file {}", key.display()).as_str()),
            "{side}: the block's line ends hast.conf"
        );
        assert_eq!(conf.matches("secret_file").count(), 1, "{side}:\n{conf}");
    }
    // The key as the block wrote it: one line, base64 of 32 bytes, which
    // hastd's parser takes as it is (the pair below authenticates with it).
    let text = std::fs::read_to_string(&key_a).unwrap();
    assert!(
        text.len() == 45
            && text.ends_with("=\n")
            && text[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "not base64 of 32 bytes: {text:?}"
    );
    let secret = hast_conf::Secret::read(&key_a).expect("hast-conf reads the key file");
    assert_eq!(secret.current(), text.trim_end().as_bytes());

    pair.start();
    pair.setup(Side::A, timeout_s(60));
    for side in [Side::A, Side::B] {
        let st = pair.status_json(side);
        assert_eq!(st["auth"], "hmac-sha256", "{side}: {st}");
        let list = pair.node(side).hastctl_ok(&["list", "r0"]);
        assert!(list.contains("auth: hmac-sha256"), "{side}: {list}");
    }
    qemu_io(
        &pair.uri(Side::A),
        &["write -P 0x5a 0 1M".into(), "flush".into()],
    );
    pair.wait_complete(timeout_s(30));
    assert!(
        area(&pair, Side::B, 0, MIB as usize)
            .iter()
            .all(|&b| b == 0x5a),
        "the write did not reach B"
    );

    // B with another key made the same way (the block's first line).
    run_key_block(&pair, Side::B, make);
    assert_ne!(std::fs::read(&key_b).unwrap(), text.as_bytes());
    reload(&mut pair, Side::B);
    refused_and_untouched(
        &pair,
        "another key on B",
        "the secondary refused the connection",
        MIB,
        0x61,
    );
    // B with no key at all (its hast.conf without the block's line).
    let conf_b = pair.node(Side::B).layout().config_path.clone();
    let keyed = std::fs::read_to_string(&conf_b).unwrap();
    let line = format!("secret_file {}\n", key_b.display());
    std::fs::write(&conf_b, keyed.replace(&line, "")).unwrap();
    reload(&mut pair, Side::B);
    refused_and_untouched(
        &pair,
        "no key on B",
        "the peer has no secret configured",
        2 * MIB,
        0x62,
    );
    // The same key again: connected, resynced, identical.
    std::fs::copy(&key_a, &key_b).unwrap();
    std::fs::write(&conf_b, keyed).unwrap();
    reload(&mut pair, Side::B);
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(20));
}

/// The key file the README's block writes on `side`.
fn key_file_of(pair: &Pair, side: Side) -> PathBuf {
    pair.node(side).layout().dir.join("repl.key")
}
