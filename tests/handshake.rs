//! The replication handshake refuses what must never be replicated (docs/overview.md §4.3,
//! §10): a connection from an address that is not the configured `remote`, a
//! primary meeting a primary, two different resources (resuid mismatch) and
//! copies of different sizes. Each refusal moves no data and says why in
//! `hastctl status` on the primary — except a connection from an address
//! that is no resource's remote, which is closed without a word (issue 9:
//! nothing is revealed before authentication) and explained in the
//! secondary's log.

use std::time::Duration;

use hast_testkit::pair::qemu_io;
use hast_testkit::{bins, require_tools, timeout_s, Pair, Side, MIB};

/// How long a refused pair is watched for a copy that must not happen.
const QUIET: Duration = Duration::from_secs(3);

fn pair(tag: &str) -> Pair {
    Pair::builder(bins!()).tag(tag).file_size(128 * MIB).build()
}

/// Waits until A's peer field mentions `needle`, then checks that for a while
/// neither side copied anything and A stays degraded.
fn assert_refused(pair: &Pair, needle: &str) {
    let st = pair.wait_status(Side::A, timeout_s(20), needle, |s| {
        s.peer.as_deref().is_some_and(|p| p.contains(needle))
    });
    assert_ne!(st.status, "complete", "{}", st.brief());
    std::thread::sleep(QUIET);
    for side in [Side::A, Side::B] {
        let s = pair.status(side);
        assert_eq!(s.resynced_bytes, 0, "{side} copied data: {}", s.brief());
        assert_ne!(s.status, "complete", "{side}: {}", s.brief());
    }
}

#[test]
fn connection_from_an_unconfigured_address_is_refused() {
    let mut pair = pair("hs-addr");
    // B accepts only 127.0.0.2; A connects from 127.0.0.1.
    let l = pair.node(Side::B).layout().clone();
    let text = std::fs::read_to_string(&l.config_path).unwrap();
    let a_repl = pair.node(Side::A).layout().repl_port;
    let from = format!("remote tcp://127.0.0.1:{a_repl}");
    assert!(text.contains(&from), "{text}");
    std::fs::write(
        &l.config_path,
        text.replace(&from, &format!("remote tcp://127.0.0.2:{a_repl}")),
    )
    .unwrap();
    pair.start();
    pair.make_secondary(Side::B);
    pair.make_primary(Side::A);
    // B tells a stranger's address nothing, not even a challenge; the
    // reason is in B's log only.
    assert_refused(&pair, "no authentication challenge from the secondary");
    let log = pair.node(Side::B).log();
    assert!(
        log.contains("127.0.0.1 is no resource's remote; closed without an answer"),
        "B must log the refusal:\n{log}"
    );
}

#[test]
fn a_primary_meeting_a_primary_is_refused() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let mut pair = pair("hs-both");
    pair.start();
    pair.make_primary(Side::A);
    pair.make_primary(Side::B);
    // Both keep serving their own clients, degraded; neither copies.
    qemu_io(&pair.uri(Side::A), &["write -P 0xa1 0 1M".to_string()]);
    qemu_io(&pair.uri(Side::B), &["write -P 0xb1 0 1M".to_string()]);
    assert_refused(&pair, "two primaries");
    let b = pair.status(Side::B);
    assert!(
        b.peer
            .as_deref()
            .is_some_and(|p| p.contains("two primaries")),
        "B is refused by A too: {}",
        b.brief()
    );
}

#[test]
fn different_resources_are_refused() {
    let mut pair = pair("hs-resuid");
    pair.start();
    // B is promoted alone first: it names the resource itself.
    pair.make_primary(Side::B);
    pair.make_secondary(Side::B);
    pair.make_primary(Side::A);
    assert_refused(&pair, "unique id mismatch");
}

#[test]
fn components_of_different_sizes_are_refused() {
    let mut pair = pair("hs-size");
    // Recreate B's metadata on half of its provider.
    pair.node(Side::B)
        .hastctl_ok(&["create", "--force", "-m", "64M", "r0"]);
    pair.start();
    pair.make_secondary(Side::B);
    pair.make_primary(Side::A);
    assert_refused(&pair, "size mismatch");
}
