//! Split-brain: both copies written while apart (issue 3, docs/overview.md §4.3).
//!
//! A and B in sync; the link is cut; A (primary) is written, degraded, and stopped;
//! B is restarted, promoted and written too. When A comes back as secondary, the
//! counters say both sides changed: both report split-brain (status `split-brain`
//! on the primary, the peer field on the secondary), no data moves — both data
//! areas hash the same before and after — and B keeps serving. Then the documented
//! recovery on the node whose changes are discarded (A: `role init`, `create`,
//! `role secondary`) brings a full sync from B, after which A is identical to B.

use std::time::Duration;

use hast_testkit::pair::qemu_io;
use hast_testkit::{bins, require_tools, timeout_s, Pair, Side, MIB};

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Bytes `[off, off+len)` of `side`'s data area, from its image file.
fn read_area(pair: &Pair, side: Side, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let (base, _) = pair.data_area(side);
    let f = std::fs::File::open(pair.image(side)).expect("open image");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, base + off).expect("read image");
    buf
}

fn all(buf: &[u8], byte: u8) -> bool {
    buf.iter().all(|b| *b == byte)
}

#[test]
fn split_brain_is_refused_and_recovered_by_recreating_one_side() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("splitbrain")
        .file_size(256 * MIB)
        .proxy()
        .start();
    pair.setup(Side::A, timeout_s(60));
    let uri_a = pair.uri(Side::A);
    qemu_io(&uri_a, &["write -P 0x11 0 4M".to_string()]);
    pair.wait_complete(timeout_s(30));
    pair.assert_identical(timeout_s(10));

    // Apart: A is written while the link is cut, then stopped.
    pair.proxy().cut();
    pair.wait_status(Side::A, timeout_s(15), "degraded", |s| {
        s.status == "degraded"
    });
    qemu_io(&uri_a, &["write -P 0xaa 8M 2M".to_string()]);
    pair.stop(Side::A);

    // B restarted, promoted, written.
    pair.restart(Side::B);
    pair.make_primary(Side::B);
    let uri_b = pair.uri(Side::B);
    qemu_io(&uri_b, &["write -P 0xbb 20M 2M".to_string()]);
    let st_b = pair.status(Side::B);
    say(&format!("B alone: {}", st_b.brief()));
    pair.proxy().heal();

    let a0 = pair.data_digest(Side::A);
    let b0 = pair.data_digest(Side::B);
    assert!(all(
        &read_area(&pair, Side::A, 8 * MIB, 2 * MIB as usize),
        0xaa
    ));
    assert!(all(
        &read_area(&pair, Side::A, 20 * MIB, 2 * MIB as usize),
        0
    ));
    assert!(all(
        &read_area(&pair, Side::B, 8 * MIB, 2 * MIB as usize),
        0
    ));

    // A back as secondary: B (primary) connects to it and both see split-brain.
    pair.start_daemon(Side::A);
    pair.make_secondary(Side::A);
    let b = pair.wait_status(Side::B, timeout_s(20), "split-brain", |s| {
        s.status == "split-brain"
    });
    let a = pair.wait_status(Side::A, timeout_s(20), "peer says split-brain", |s| {
        s.peer
            .as_deref()
            .map(|p| p.starts_with("split-brain"))
            .unwrap_or(false)
    });
    say(&format!(
        "split-brain reported:\n  A: {}\n  B: {}",
        a.brief(),
        b.brief()
    ));
    assert!(
        a.sync.is_none() && b.sync.is_none(),
        "a resync runs in split-brain"
    );
    assert!(
        pair.node(Side::B).log().contains("split-brain"),
        "B's log does not mention the split-brain"
    );
    // Let a few reconnection attempts happen; still refused, nothing moved.
    std::thread::sleep(Duration::from_secs(4));
    let b = pair.status(Side::B);
    assert_eq!(b.status, "split-brain", "B: {}", b.brief());
    assert_eq!(
        b.resynced_bytes,
        0,
        "B copied data in split-brain: {}",
        b.brief()
    );
    assert_eq!(pair.status(Side::A).resynced_bytes, 0);
    assert_eq!(
        pair.data_digest(Side::A),
        a0,
        "A's copy changed in split-brain"
    );
    assert_eq!(
        pair.data_digest(Side::B),
        b0,
        "B's copy changed in split-brain"
    );
    // B still serves its clients.
    let out = qemu_io(&uri_b, &["read -P 0xbb 20M 2M".to_string()]);
    assert!(out.contains("read 2097152/2097152"), "{out}");

    // Recovery: discard A's changes.
    pair.make_init(Side::A);
    pair.node(Side::A).hastctl_ok(&["create", "--force", "r0"]);
    pair.make_secondary(Side::A);
    pair.wait_complete(timeout_s(90));
    pair.assert_identical(timeout_s(20));
    let a = pair.status(Side::A);
    let b = pair.status(Side::B);
    say(&format!(
        "after recovery:\n  A: {}\n  B: {}",
        a.brief(),
        b.brief()
    ));
    assert!(all(
        &read_area(&pair, Side::A, 20 * MIB, 2 * MIB as usize),
        0xbb
    ));
    assert!(all(
        &read_area(&pair, Side::A, 8 * MIB, 2 * MIB as usize),
        0
    ));
    assert!(all(&read_area(&pair, Side::A, 0, 4 * MIB as usize), 0x11));
    assert_eq!(
        pair.data_digest(Side::B),
        b0,
        "B's copy changed during recovery"
    );
    assert!(
        b.resynced_bytes >= pair.datasize(),
        "recovery was not a full sync: {}",
        b.brief()
    );
}

/// Making the split-brain by hand is refused: `hastctl role primary` on a
/// secondary whose primary is connected exits 77 naming the cause and
/// changes nothing (as drbdadm primary refuses with a primary peer); the
/// operator's `--force` does it.
#[test]
fn promotion_beside_a_connected_primary_needs_force() {
    let mut pair = Pair::builder(bins!())
        .tag("twoprimaries")
        .file_size(64 * MIB)
        .start();
    pair.setup(Side::A, timeout_s(60));
    pair.wait_complete(timeout_s(30));
    let b = pair.node(Side::B);
    let out = b.hastctl(&["role", "primary", "r0"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(77),
        "promotion beside a primary: {err}"
    );
    assert!(
        err.contains("peer is primary and connected") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        pair.status(Side::B).role,
        "secondary",
        "refused promotion changed B"
    );
    assert_eq!(
        pair.status(Side::A).status,
        "complete",
        "refused promotion disturbed A"
    );
    pair.node(Side::B)
        .hastctl_ok(&["role", "--force", "primary", "r0"]);
    assert_eq!(pair.status(Side::B).role, "primary");
}
