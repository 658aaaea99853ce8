//! Live reconfiguration by SIGHUP between two hastd processes (README "SIGHUP
//! reloads", `daemon::reload` → `Command::Reconfigure` → `DataPath::reconfigure`).
//!
//! - a resync throttled by `resync_rate 4M` speeds up when the primary alone is
//!   told (SIGHUP by PID) that the rate is now `64M`: the rate measured from the
//!   primary's `resynced_bytes` rises at least fourfold, the resync completes and
//!   the copies are identical;
//! - `replication fullsync` becomes `async` by SIGHUP while the nodes are
//!   connected: `list --json` and `list` report `async` from the same daemon
//!   processes (PIDs unchanged), a write is acknowledged while the secondary is
//!   SIGSTOPped (a fullsync write would wait for it until `timeout`), the link
//!   survives, the write reaches the secondary and the copies end identical.

use std::time::{Duration, Instant};

use hast_testkit::pair::qemu_io;
use hast_testkit::{bins, require_python_nbd, require_tools, timeout_s, Pair, Side, MIB};

/// Extent size hastd uses by default.
const EXTENT: u64 = 2 * MIB;

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Rewrite both nodes' config files with `from` replaced by `to` (the pair's
/// text must contain `from` exactly once), without signalling anyone.
fn rewrite_configs(pair: &Pair, from: &str, to: &str) {
    let text = pair.config_text();
    assert_eq!(
        text.matches(from).count(),
        1,
        "the pair config should name `{from}` once:\n{text}"
    );
    let new = text.replace(from, to);
    for side in [Side::A, Side::B] {
        std::fs::write(&pair.node(side).layout().config_path, &new).expect("rewrite config");
    }
}

/// How many times `side`'s resource logged that it took a new configuration.
fn reloads(pair: &Pair, side: Side) -> usize {
    pair.node(side)
        .log()
        .matches("configuration reloaded")
        .count()
}

/// Wait (bounded) until `side`'s log shows one more "configuration reloaded" line
/// than `before` (the resource task handled `Reconfigure`).
fn wait_reloaded(pair: &Pair, side: Side, before: usize) {
    let got = hast_testkit::wait_for(timeout_s(10), || {
        if reloads(pair, side) > before {
            Some(())
        } else {
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    });
    assert!(
        got.is_some(),
        "{side} did not log \"configuration reloaded\" after SIGHUP:\n{}",
        pair.describe()
    );
}

/// Bytes per second the primary's resync copies over about `window`: from
/// `resynced_bytes` (cumulative, so a resync that ends inside the window still
/// counts what it copied). Returns (rate, bytes, elapsed, resync still running).
fn measure_rate(pair: &Pair, side: Side, window: Duration) -> (f64, u64, Duration, bool) {
    let first = pair.status(side);
    let t0 = Instant::now();
    let mut last = first.clone();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(200));
        last = pair.status(side);
        if last.sync.is_none() {
            break;
        }
    }
    let elapsed = t0.elapsed();
    let bytes = last.resynced_bytes.saturating_sub(first.resynced_bytes);
    (
        bytes as f64 / elapsed.as_secs_f64(),
        bytes,
        elapsed,
        last.sync.is_some(),
    )
}

/// One `len`-byte write of `byte` at `offset` of `uri` with libnbd, with no FLUSH
/// before the disconnect (qemu-io flushes on close, and a flush waits for the peer
/// in every mode); returns how long the write took to be acknowledged.
fn unflushed_write(uri: &str, offset: u64, len: usize, byte: u8) -> Duration {
    const SCRIPT: &str = "import sys, time, nbd\n\
h = nbd.NBD()\n\
h.connect_uri(sys.argv[1])\n\
buf = bytes([int(sys.argv[4])]) * int(sys.argv[3])\n\
t = time.monotonic()\n\
h.pwrite(buf, int(sys.argv[2]))\n\
print(time.monotonic() - t)\n\
h.shutdown()\n";
    let out = hast_testkit::run(
        std::process::Command::new(hast_testkit::PYTHON)
            .args(["-c", SCRIPT, uri])
            .arg(offset.to_string())
            .arg(len.to_string())
            .arg(byte.to_string()),
        timeout_s(60),
    );
    let text = hast_testkit::output_text(&out);
    assert!(
        out.status.success(),
        "libnbd write to {uri} failed:\n{text}"
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("no duration from the libnbd write ({e}):\n{text}"));
    Duration::from_secs_f64(secs)
}

#[test]
fn sighup_raises_resync_rate_of_a_running_resync() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    const SLOW: f64 = 4.0 * MIB as f64;
    // 96 extents: at 4 MiB/s the resync would take 48 s, far beyond the test's
    // windows; at 64 MiB/s about 3 s.
    const DIRTY_EXTENTS: u64 = 96;
    let mut pair = Pair::builder(bins!())
        .tag("reload-rate")
        .file_size(512 * MIB)
        .create_args(&["-k", "4"])
        // hastd does not count holes against the rate: the first full sync of the
        // sparse images is quick even under this limit.
        .option("resync_rate 4M")
        .start();
    pair.setup(Side::A, timeout_s(60));

    // B away while A gets a large dirty set (a distinct pattern per extent).
    pair.kill9(Side::B);
    let cmds: Vec<String> = (0..DIRTY_EXTENTS)
        .map(|e| format!("write -P 0x{:02x} {} 2M", 1 + (e * 7) % 250, e * EXTENT))
        .collect();
    qemu_io(&pair.uri(Side::A), &cmds);
    pair.start_daemon(Side::B);
    pair.make_secondary(Side::B);
    pair.wait_status(Side::A, timeout_s(20), "resync running", |s| {
        s.sync.is_some()
    });
    // Past the first burst (the extents in flight before the throttle's average
    // has anything to hold back).
    std::thread::sleep(Duration::from_secs(1));
    let (slow, slow_bytes, slow_t, running) = measure_rate(&pair, Side::A, Duration::from_secs(2));
    say(&format!(
        "under resync_rate 4M: {slow_bytes} bytes in {slow_t:?} = {:.1} MiB/s",
        slow / MIB as f64
    ));
    assert!(
        running,
        "the resync ended under a 4M limit:\n{}",
        pair.describe()
    );
    assert!(
        slow <= 3.0 * SLOW,
        "the resync ran at {:.1} MiB/s, not held near 4 MiB/s:\n{}",
        slow / MIB as f64,
        pair.describe()
    );

    // Only A's hastd is told; its PID is the one that must stay.
    let pid_a = pair.node(Side::A).daemon_pid();
    let before = reloads(&pair, Side::A);
    rewrite_configs(&pair, "resync_rate 4M", "resync_rate 64M");
    pair.node_mut(Side::A).signal(libc::SIGHUP);
    wait_reloaded(&pair, Side::A, before);
    let (fast, fast_bytes, fast_t, _) = measure_rate(&pair, Side::A, Duration::from_secs(2));
    say(&format!(
        "after SIGHUP with resync_rate 64M: {fast_bytes} bytes in {fast_t:?} = {:.1} MiB/s ({:.1}x)",
        fast / MIB as f64,
        fast / slow.max(1.0)
    ));
    // The floor keeps a near-zero first window from making "4x" meaningless; a
    // reload that changes nothing stays near 4 MiB/s and fails both.
    assert!(
        fast >= 4.0 * slow && fast >= 4.0 * SLOW,
        "after the reload the resync ran at {:.1} MiB/s (before: {:.1} MiB/s):\n{}",
        fast / MIB as f64,
        slow / MIB as f64,
        pair.describe()
    );
    assert_eq!(
        pair.node(Side::A).daemon_pid(),
        pid_a,
        "A's hastd was restarted"
    );

    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(30));
    let st = pair.status(Side::A);
    assert!(
        st.resynced_bytes >= DIRTY_EXTENTS * EXTENT,
        "A resynced {} bytes, less than the {} dirtied:\n{}",
        st.resynced_bytes,
        DIRTY_EXTENTS * EXTENT,
        pair.describe()
    );
}

#[test]
fn sighup_switches_replication_from_fullsync_to_async_while_connected() {
    if !(require_python_nbd() && require_tools(&["qemu-io"])) {
        return;
    }
    // A fullsync write to a silent secondary waits this long before the link is
    // declared dead; an async write does not wait at all.
    const TIMEOUT_S: u32 = 5;
    let mut pair = Pair::builder(bins!())
        .tag("reload-mode")
        .file_size(256 * MIB)
        .replication("fullsync")
        .timeout(TIMEOUT_S)
        .start();
    pair.setup(Side::A, timeout_s(60));
    let uri = pair.uri(Side::A);
    qemu_io(&uri, &["write -P 0x5a 0 4M".to_string()]);
    for side in [Side::A, Side::B] {
        let mode = pair.status_json(side)["replication"].clone();
        assert_eq!(mode, "fullsync", "{side} before the reload");
    }

    let pids = [Side::A, Side::B].map(|s| pair.node(s).daemon_pid());
    let before = [Side::A, Side::B].map(|s| reloads(&pair, s));
    rewrite_configs(&pair, "replication fullsync", "replication async");
    for side in [Side::A, Side::B] {
        pair.node_mut(side).signal(libc::SIGHUP);
    }
    for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
        wait_reloaded(&pair, side, before[i]);
        let st = pair.status(side);
        assert_eq!(
            st.json["replication"], "async",
            "{side} status after the reload: {}",
            st.json
        );
        let list = pair
            .node(side)
            .hastctl_ok(&["list", hast_testkit::pair::RES]);
        assert!(
            list.lines().any(|l| l.trim() == "replication: async"),
            "`hastctl list` on {side} after the reload:\n{list}"
        );
        assert_eq!(
            pair.node(side).daemon_pid(),
            pids[i],
            "{side}'s hastd was restarted"
        );
        assert_eq!(
            st.peer.as_deref(),
            Some("connected"),
            "{side} lost its peer on reload:\n{}",
            pair.describe()
        );
    }
    let resynced_before = pair.status(Side::A).resynced_bytes;

    // The secondary frozen: an async write is acknowledged from A's disk alone.
    pair.node_mut(Side::B).signal(libc::SIGSTOP);
    let written = std::panic::catch_unwind(|| unflushed_write(&uri, 8 * MIB, 256 * 1024, 0xa5));
    pair.node_mut(Side::B).signal(libc::SIGCONT);
    let took = written.unwrap_or_else(|p| std::panic::resume_unwind(p));
    say(&format!(
        "async write with the secondary stopped took {took:?}"
    ));
    assert!(
        took < Duration::from_secs(u64::from(TIMEOUT_S)) / 2,
        "a write with the secondary stopped took {took:?}: A still waits for B \
         as in fullsync:\n{}",
        pair.describe()
    );

    // The link survived the pause: no resync, the write reached B.
    pair.wait_complete(timeout_s(30));
    pair.assert_identical(timeout_s(30));
    let st = pair.status(Side::A);
    assert_eq!(
        st.resynced_bytes,
        resynced_before,
        "the link was lost (a resync ran):\n{}",
        pair.describe()
    );
    qemu_io(&uri, &["write -P 0x3c 16M 4M".to_string()]);
    pair.wait_complete(timeout_s(30));
    pair.assert_identical(timeout_s(30));
}

/// Replace `from` (there once) by `to` in both nodes' config files as they
/// are now, without signalling anyone.
fn swap_in_files(pair: &Pair, from: &str, to: &str) {
    let path = &pair.node(Side::A).layout().config_path;
    let text = std::fs::read_to_string(path).expect("read config");
    assert_eq!(text.matches(from).count(), 1, "`{from}` once in:\n{text}");
    let new = text.replace(from, to);
    for side in [Side::A, Side::B] {
        std::fs::write(&pair.node(side).layout().config_path, &new).expect("rewrite config");
    }
}

/// Issue 16: a SIGHUP changing `remote` was logged as "configuration
/// reloaded" but the running link kept its old peer until the role was
/// cycled. As FreeBSD's hastd does, a changed `remote` (or `source`) drops
/// the link and the next connection follows the new configuration, on
/// either role: a primary told of a dead remote goes degraded and, told
/// the right one again, resyncs to complete; a secondary told to accept
/// its primary only from 127.0.0.2 drops the session and refuses the
/// primary's reconnection, and accepts it again when told back. Seen
/// failing without the fix: both sides stayed `complete` on the old link.
#[test]
fn sighup_applies_a_changed_remote_on_both_roles() {
    let mut pair = Pair::builder(bins!())
        .tag("reload-remote")
        .file_size(64 * MIB)
        .start();
    pair.setup(Side::A, timeout_s(60));
    let (a_repl, b_repl) = (
        pair.node(Side::A).layout().repl_port,
        pair.node(Side::B).layout().repl_port,
    );
    let dead = hast_testkit::free_port();
    let pids = [Side::A, Side::B].map(|s| pair.node(s).daemon_pid());

    // The primary: its remote moved to a port nobody listens on.
    let b_addr = format!("remote tcp://127.0.0.1:{b_repl}\n");
    let dead_addr = format!("remote tcp://127.0.0.1:{dead}\n");
    swap_in_files(&pair, &b_addr, &dead_addr);
    pair.node_mut(Side::A).signal(libc::SIGHUP);
    pair.wait_status(Side::A, timeout_s(10), "disconnected", |s| {
        s.peer.as_deref() != Some("connected")
    });
    assert!(
        pair.node(Side::A).log().contains("remote changed"),
        "the reason is logged:\n{}",
        pair.describe()
    );
    swap_in_files(&pair, &dead_addr, &b_addr);
    pair.node_mut(Side::A).signal(libc::SIGHUP);
    pair.wait_status(Side::A, timeout_s(20), "complete again", |s| {
        s.is_complete()
    });

    // The secondary: it accepts its primary only from another address.
    let a_addr = format!("remote tcp://127.0.0.1:{a_repl}\n");
    let elsewhere = format!("remote tcp://127.0.0.2:{a_repl}\n");
    swap_in_files(&pair, &a_addr, &elsewhere);
    pair.node_mut(Side::B).signal(libc::SIGHUP);
    pair.wait_status(Side::A, timeout_s(10), "disconnected", |s| {
        s.peer.as_deref() != Some("connected")
    });
    // And stays so: the reconnection comes from 127.0.0.1.
    std::thread::sleep(Duration::from_secs(2));
    let st = pair.status(Side::A);
    assert_ne!(st.peer.as_deref(), Some("connected"), "{}", st.brief());
    swap_in_files(&pair, &elsewhere, &a_addr);
    pair.node_mut(Side::B).signal(libc::SIGHUP);
    pair.wait_status(Side::A, timeout_s(20), "complete again", |s| {
        s.is_complete()
    });
    assert_eq!(
        [Side::A, Side::B].map(|s| pair.node(s).daemon_pid()),
        pids,
        "the same daemons throughout"
    );
}
