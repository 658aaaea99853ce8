//! The three safety mechanisms hastd gives automatic failover (docs/overview.md §5, hastmon):
//!
//! - **epoch** (fencing token): `hastctl role -E` refuses a promotion below the
//!   stored epoch (exit 77), raises it otherwise, a manual promotion bumps it; it is
//!   durable (dump, restart); a secondary adopts its primary's epoch and refuses a
//!   primary of an older one (StaleEpoch in status and log);
//! - **lease**: `hastctl lease -t ms` on a primary; renewals keep it primary; when
//!   it runs out hastd demotes the resource to secondary itself, a connected client's
//!   next write gets ESHUTDOWN, and the next primary can connect and resync it;
//! - **fence_peer**: when the link to the peer is lost under a writer, writes are
//!   held (no acknowledgement, `localcnt` unchanged) until the command succeeds for
//!   that degradation generation; if it never does, the lease demotes the node
//!   without its unacknowledged writes counting as a split-brain: the next primary
//!   (higher epoch) resyncs it and the copies end identical, with every write the
//!   client saw acknowledged on the new primary.
//! - **outdate**: `hastctl outdate` marks a lone secondary's copy outdated
//!   durably; its promotion is refused until the primary's resync clears the
//!   mark, or `--force` serves it as it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_testkit::pair::{qemu_io, versioned_check, VersionedWriter, RES};
use hast_testkit::{
    bins, python_command, require_python_nbd, require_tools, timeout_s, wait_for, Pair, Proc, Side,
    TempDir, MIB, PYTHON,
};

const EX_USAGE: i32 = 64;
const EX_NOPERM: i32 = 77;
/// ESHUTDOWN on Linux, as an NBD client sees it.
const ESHUTDOWN: i64 = 108;
/// The versioned writer's region: 16 MiB at 16 MiB.
const FIRST_LBA: u64 = 16 * MIB / 4096;
const BLOCKS: u64 = 16 * MIB / 4096;

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// `hastctl ARGS` on `side` must fail with `code` and one line on stderr; returns it.
#[track_caller]
fn fails(pair: &Pair, side: Side, args: &[&str], code: i32) -> String {
    let out = pair.node(side).hastctl(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "hastctl {args:?} on {side}: expected exit {code}, got {}; stderr: {err}",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "hastctl {args:?}: stderr must be one line:\n{err}"
    );
    err
}

fn epoch(pair: &Pair, side: Side) -> Option<u64> {
    pair.status_json(side)["epoch"].as_u64()
}

fn dump_u64(pair: &Pair, side: Side, key: &str) -> u64 {
    let d = pair.node(side).dump(RES);
    d.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dump of {side} has no number {key}: {d:?}"))
}

#[track_caller]
fn log_has(pair: &Pair, side: Side, needle: &str) {
    let log = pair.node(side).log();
    assert!(
        log.contains(needle),
        "{side}'s log lacks {needle:?}:\n{}",
        pair.describe()
    );
}

/// Wait (bounded) until `side`'s log contains `needle`.
fn wait_log(pair: &Pair, side: Side, needle: &str, bound: Duration) {
    if wait_for(bound, || {
        pair.node(side)
            .log()
            .contains(needle)
            .then_some(())
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
    })
    .is_none()
    {
        panic!(
            "{side}'s log did not show {needle:?} within {bound:?}\n{}",
            pair.describe()
        );
    }
}

fn promote_with_epoch(pair: &mut Pair, side: Side, epoch: u64) {
    pair.node(side)
        .hastctl_ok(&["role", "-E", &epoch.to_string(), "primary", RES]);
    pair.node(side).wait_export(RES);
}

// ---------------------------------------------------------------------------
// epoch

#[test]
fn epoch_rules_persist_and_refuse_older_primaries() {
    let mut pair = Pair::builder(bins!())
        .tag("fence-epoch")
        .file_size(128 * MIB)
        .proxy()
        .start();
    let (a, b) = (Side::A, Side::B);
    pair.make_secondary(b);
    promote_with_epoch(&mut pair, a, 5);
    pair.wait_complete(timeout_s(60));
    assert_eq!(epoch(&pair, a), Some(5));
    assert_eq!(
        epoch(&pair, b),
        Some(5),
        "the secondary adopts the primary's epoch"
    );
    log_has(&pair, b, "epoch adopted from the primary");
    log_has(&pair, a, "role changed resource=r0 role=primary epoch=5");

    // A lower epoch is refused and changes nothing; equal is a no-op; higher raises.
    let err = fails(&pair, a, &["role", "-E", "4", "primary", RES], EX_NOPERM);
    assert!(err.contains("stale epoch 4 < current 5"), "{err}");
    pair.node(a)
        .hastctl_ok(&["role", "-E", "5", "primary", RES]);
    let out = pair
        .node(a)
        .hastctl(&["-d", "role", "-E", "7", "primary", RES]);
    assert!(out.status.success(), "role -E 7: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("r0: role primary, epoch 7"), "{err}");
    // Already primary: no bump without -E.
    pair.node(a).hastctl_ok(&["role", "primary", RES]);
    let st = pair.status_json(a);
    assert_eq!(
        (st["role"].as_str(), st["epoch"].as_u64()),
        (Some("primary"), Some(7)),
        "{st}"
    );
    assert_eq!(
        dump_u64(&pair, a, "epoch"),
        7,
        "the raised epoch is on disk"
    );
    pair.node(a).wait_export(RES);
    log_has(&pair, a, "role changed resource=r0 role=primary epoch=7");

    // A reconnection carries the new epoch to the secondary.
    pair.proxy().cut();
    pair.wait_status(a, timeout_s(15), "degraded", |s| s.status == "degraded");
    pair.proxy().heal();
    pair.wait_complete(timeout_s(60));
    assert_eq!(epoch(&pair, b), Some(7));

    // The secondary learns of a later epoch: the primary of epoch 7 is refused.
    pair.node(b)
        .hastctl_ok(&["role", "-E", "20", "secondary", RES]);
    assert_eq!(epoch(&pair, b), Some(20));
    let st = pair.wait_status(a, timeout_s(20), "refused: stale epoch", |s| {
        s.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("stale epoch 7 < 20"))
    });
    say(&format!("A after B raised its epoch: {}", st.brief()));
    wait_log(&pair, b, "stale epoch 7 < 20", timeout_s(10));
    let st = pair.status(b);
    assert_eq!(
        st.peer.as_deref(),
        Some("refused: stale epoch"),
        "{}",
        st.brief()
    );

    // Durable: B restarted still refuses A.
    pair.restart(b);
    assert_eq!(dump_u64(&pair, b, "epoch"), 20);
    assert_eq!(
        epoch(&pair, b),
        Some(20),
        "status reads the epoch of an init component"
    );
    pair.make_secondary(b);
    wait_log(&pair, b, "stale epoch 7 < 20", timeout_s(10));
    assert_ne!(pair.status(b).status, "complete");

    // A catches up with -E: accepted again.
    pair.node(a)
        .hastctl_ok(&["role", "-E", "20", "primary", RES]);
    pair.wait_complete(timeout_s(60));

    // A manual promotion bumps: B becomes primary in epoch 21, A adopts it.
    pair.make_secondary(a);
    pair.make_primary(b);
    pair.wait_complete(timeout_s(60));
    assert_eq!((epoch(&pair, a), epoch(&pair, b)), (Some(21), Some(21)));
    log_has(&pair, b, "role changed resource=r0 role=primary epoch=21");
    log_has(&pair, a, "role changed resource=r0 role=secondary epoch=20");

    // -E with init persists on the closed component: then B (21) is refused by A.
    pair.node(a).hastctl_ok(&["role", "-E", "30", "init", RES]);
    assert_eq!(dump_u64(&pair, a, "epoch"), 30);
    assert_eq!(epoch(&pair, a), Some(30));
    // A lower -E never lowers it.
    pair.node(a)
        .hastctl_ok(&["role", "-E", "3", "secondary", RES]);
    assert_eq!(epoch(&pair, a), Some(30));
    pair.wait_status(b, timeout_s(20), "refused: stale epoch", |s| {
        s.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("stale epoch 21 < 30"))
    });
}

// ---------------------------------------------------------------------------
// lease

/// Connects, writes block 0 (must succeed), then waits for the file `argv[2]`
/// and writes block 1; prints the outcome of each.
const LEASE_CLIENT: &str = r#"
import os, sys, time
import nbd
uri, go = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"\x11" * 4096, 0)
print("first ok", flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        print("no go file", flush=True)
        sys.exit(1)
    time.sleep(0.05)
try:
    h.pwrite(b"\x22" * 4096, 4096)
    print("second ok", flush=True)
except nbd.Error as e:
    print("second errno %s" % e.errnum, flush=True)
"#;

/// `hastctl lease -t ms r0` on `side` every `every` until stopped.
struct Renewer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Renewer {
    fn start(pair: &Pair, side: Side, ms: u64, every: Duration) -> Renewer {
        let mut cmd = pair
            .node(side)
            .hastctl_command(&["lease", "-t", &ms.to_string(), RES]);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let out = hast_testkit::run(&mut cmd, timeout_s(10));
                assert!(
                    out.status.success(),
                    "lease renewal failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(every);
            }
        });
        Renewer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop renewing; returns when no renewal is running any more.
    fn stop(mut self) -> Instant {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("lease renewer panicked");
        }
        Instant::now()
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_line(path: &Path, prefix: &str, bound: Duration) -> String {
    wait_for(bound, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned);
        if line.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        line
    })
    .unwrap_or_else(|| {
        panic!(
            "no {prefix:?} from the client within {bound:?}:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

#[test]
fn lease_demotes_an_unrenewed_primary() {
    if !require_python_nbd() {
        return;
    }
    let mut pair = Pair::builder(bins!())
        .tag("fence-lease")
        .file_size(128 * MIB)
        .start();
    let (a, b) = (Side::A, Side::B);
    pair.setup(a, timeout_s(60));

    // Only a primary holds a lease; bad lengths are usage errors.
    let err = fails(&pair, b, &["lease", "-t", "1000", RES], EX_NOPERM);
    assert!(err.contains("not primary"), "{err}");
    fails(&pair, a, &["lease", RES], EX_USAGE);
    // `-t 0` cancels a lease (hastctl_cli.rs tests it); with none it changes nothing.
    pair.node(a).hastctl_ok(&["lease", "-t", "0", RES]);
    fails(&pair, a, &["lease", "-t", "soon", RES], EX_USAGE);
    assert!(pair.status_json(a)["lease_ms"].is_null(), "no lease yet");

    // A role change clears the lease.
    pair.node(a).hastctl_ok(&["lease", "-t", "600000", RES]);
    let left = pair.status_json(a)["lease_ms"].as_u64().unwrap_or(0);
    assert!((590_000..=600_000).contains(&left), "lease_ms {left}");
    pair.make_secondary(a);
    pair.make_primary(a);
    assert!(
        pair.status_json(a)["lease_ms"].is_null(),
        "a role change clears the lease"
    );
    pair.wait_complete(timeout_s(60));

    // Renewals keep it primary, and a client writes under the lease.
    let renew = Renewer::start(&pair, a, 1500, Duration::from_millis(300));
    let dir = pair.node(a).dir().to_path_buf();
    let out = dir.join("lease-client.out");
    let go = dir.join("lease-client.go");
    let mut client = Proc::spawn(
        Command::new(PYTHON)
            .args(["-B", "-c", LEASE_CLIENT])
            .arg(pair.uri(a))
            .arg(&go),
        "lease-client",
        Some(&out),
    )
    .expect("start the python client");
    wait_line(&out, "first ok", timeout_s(30));
    std::thread::sleep(Duration::from_secs(3));
    let st = pair.status_json(a);
    assert_eq!(st["role"], "primary", "renewed lease: {st}");
    let left = st["lease_ms"].as_u64().unwrap_or(0);
    assert!((1..=1500).contains(&left), "lease_ms {left}: {st}");

    // No more renewals: demoted to secondary within the lease (plus slack).
    let stopped = renew.stop();
    pair.wait_status(a, timeout_s(10), "secondary", |s| s.role == "secondary");
    let took = stopped.elapsed();
    say(&format!("A demoted {took:?} after the last renewal"));
    assert!(
        took >= Duration::from_millis(1000),
        "demoted too early: {took:?}"
    );
    log_has(&pair, a, "lease expired");
    log_has(&pair, a, "role changed resource=r0 role=secondary epoch=2");

    // The client connected before: its next write gets ESHUTDOWN.
    std::fs::write(&go, b"go").expect("write go file");
    let line = wait_line(&out, "second", timeout_s(30));
    assert_eq!(
        line,
        format!("second errno {ESHUTDOWN}"),
        "after the lease expired"
    );
    client.wait_timeout(timeout_s(30)).expect("client exits");

    // The next primary connects to the demoted node and the pair is whole again.
    pair.make_primary(b);
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(20));
}

// ---------------------------------------------------------------------------
// fence_peer

/// A `fence_peer` command that logs its environment and fails until `fence.ok`
/// exists next to it.
fn fence_script(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let script = dir.join("fence.sh");
    let log = dir.join("fence.log");
    let ok = dir.join("fence.ok");
    let text = format!(
        "#!/bin/sh\n\
         echo \"seq=$HAST_FENCE_SEQ epoch=$HAST_EPOCH resource=$HAST_RESOURCE node=$HAST_NODE peer=$HAST_PEER\" >> {log}\n\
         if [ -e {ok} ]; then echo 'peer fenced'; exit 0; fi\n\
         echo 'cannot reach the fencing device' >&2\n\
         exit 1\n",
        log = log.display(),
        ok = ok.display()
    );
    std::fs::write(&script, text).expect("write fence script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod fence script");
    (script, log, ok)
}

fn fenced_pair(tag: &str, script: &Path) -> Pair {
    Pair::builder(bins!())
        .tag(tag)
        .file_size(128 * MIB)
        .proxy()
        .option(&format!("fence_peer \"{}\"", script.display()))
        .start()
}

fn fence_field(pair: &Pair, side: Side) -> (u64, u64, bool) {
    let st = pair.status_json(side);
    let f = &st["fence"];
    (
        f["generation"].as_u64().unwrap_or(u64::MAX),
        f["fenced"].as_u64().unwrap_or(u64::MAX),
        f["pending"].as_bool().unwrap_or(false),
    )
}

fn fence_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn fence_peer_holds_degraded_writes_until_it_succeeds() {
    if !(require_python_nbd() && require_tools(&["qemu-io"])) {
        return;
    }
    let tmp = TempDir::new("fence-hold");
    let (script, flog, ok) = fence_script(&tmp);
    let mut pair = fenced_pair("fence-hold", &script);
    let (a, b) = (Side::A, Side::B);
    pair.make_secondary(b);
    promote_with_epoch(&mut pair, a, 5);
    pair.wait_complete(timeout_s(60));
    assert_eq!(fence_field(&pair, a), (0, 0, false));
    let localcnt0 = pair.status(a).localcnt.expect("localcnt");

    let uri = pair.uri(a);
    let mut w = VersionedWriter::start(&uri, FIRST_LBA, BLOCKS, tmp.path(), "w", 1 << 40, 7);
    w.wait_acked(300, timeout_s(60));
    assert!(!flog.exists(), "the fence ran while the peer was connected");

    // The link goes: writes are held, nothing is acknowledged, localcnt stays.
    pair.proxy().cut();
    std::thread::sleep(Duration::from_secs(1));
    let n1 = w.acked();
    std::thread::sleep(Duration::from_millis(2500));
    let n2 = w.acked();
    assert!(w.is_running(), "the writer ended:\n{}", w.output());
    assert_eq!(
        n1, n2,
        "writes were acknowledged without the peer and before the fence"
    );
    assert_eq!(fence_field(&pair, a), (1, 0, true));
    let st = pair.status(a);
    assert_eq!(st.role, "primary");
    assert_eq!(
        st.localcnt,
        Some(localcnt0),
        "localcnt moved before the fence"
    );
    let tried = fence_log(&flog);
    assert!(
        tried.contains("seq=1 epoch=5 resource=r0 node=nodea peer=tcp://127.0.0.1:"),
        "fence environment:\n{tried}"
    );
    assert!(tried.lines().count() >= 2, "the fence is retried:\n{tried}");
    log_has(&pair, a, "fence_peer failed");
    log_has(&pair, a, "cannot reach the fencing device");
    say(&format!(
        "held at {n2} acknowledged writes; fence tried {} times",
        tried.lines().count()
    ));

    // The fence succeeds: the held writes complete, degraded, localcnt +1.
    std::fs::write(&ok, b"ok").expect("write fence.ok");
    w.wait_acked(n2 + 200, timeout_s(30));
    assert_eq!(fence_field(&pair, a), (1, 1, false));
    let st = pair.status(a);
    assert_eq!(
        (st.status.as_str(), st.localcnt),
        ("degraded", Some(localcnt0 + 1))
    );
    log_has(&pair, a, "fence_peer succeeded");

    // The link comes back: replicated again, no fence needed.
    pair.proxy().heal();
    pair.wait_complete(timeout_s(90));
    let runs = fence_log(&flog).lines().count();
    w.wait_acked(w.acked() + 200, timeout_s(30));
    let summary = w.stop();
    say(&format!("writer: {summary}"));
    assert_eq!(
        fence_log(&flog).lines().count(),
        runs,
        "fenced while connected"
    );
    pair.wait_complete(timeout_s(60));
    versioned_check(&uri, &[tmp.join("w.log")]);
    pair.assert_identical(timeout_s(20));

    // A second loss is a new generation, fenced again before the first write.
    pair.proxy().cut();
    pair.wait_status(a, timeout_s(15), "degraded", |s| s.status == "degraded");
    qemu_io(&uri, &["write -P 0x5a 64M 1M".to_string()]);
    assert_eq!(fence_field(&pair, a), (2, 2, false));
    assert!(
        fence_log(&flog).contains("seq=2 epoch=5"),
        "{}",
        fence_log(&flog)
    );
}

#[test]
fn unfenced_primary_demoted_by_lease_is_resynced_by_the_next_primary() {
    if !(require_python_nbd() && require_tools(&["qemu-io"])) {
        return;
    }
    let tmp = TempDir::new("fence-never");
    let (script, flog, _never) = fence_script(&tmp);
    let mut pair = fenced_pair("fence-never", &script);
    let (a, b) = (Side::A, Side::B);
    pair.make_secondary(b);
    promote_with_epoch(&mut pair, a, 5);
    pair.wait_complete(timeout_s(60));
    let uri = pair.uri(a);
    qemu_io(&uri, &["write -P 0x33 100M 4M".to_string()]);
    pair.wait_complete(timeout_s(30));
    let localcnt0 = dump_u64(&pair, a, "localcnt");

    // A holds a lease; a writer runs; then the link goes and renewals stop.
    let renew = Renewer::start(&pair, a, 2000, Duration::from_millis(300));
    let log = tmp.join("w.log");
    let out = tmp.join("w.out");
    let mut writer = Proc::spawn(
        &mut python_command(
            "versioned_writer.py",
            &[
                "--uri",
                &uri,
                "--first-lba",
                &FIRST_LBA.to_string(),
                "--blocks",
                &BLOCKS.to_string(),
                "--log",
                log.to_str().expect("utf-8 path"),
                "--seq-base",
                &(1u64 << 40).to_string(),
                "--seed",
                "11",
                "--duration",
                "300",
                "--ack-is-durable",
            ],
        ),
        "versioned_writer",
        Some(&out),
    )
    .expect("start versioned_writer.py");
    let acked = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().filter(|l| l.starts_with("D ")).count())
            .unwrap_or(0)
    };
    wait_for(timeout_s(60), || {
        (acked() >= 300).then_some(()).or_else(|| {
            std::thread::sleep(Duration::from_millis(50));
            None
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "the writer did not get going:\n{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        )
    });
    pair.proxy().cut();
    let stopped = renew.stop();

    // The lease runs out with the writes held: demoted to secondary, writes fail
    // with ESHUTDOWN, localcnt never moved.
    let st = pair.wait_status(a, timeout_s(15), "secondary", |s| s.role == "secondary");
    say(&format!(
        "A demoted {:?} after the last renewal: {}",
        stopped.elapsed(),
        st.brief()
    ));
    let end = writer
        .wait_timeout(timeout_s(60))
        .unwrap_or_else(|| panic!("the writer kept running after the demotion"));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        end.code(),
        Some(2),
        "the writer must see a server error:\n{text}"
    );
    assert!(
        text.contains("server error: write") && text.contains("ESHUTDOWN"),
        "held writes must fail with ESHUTDOWN:\n{text}"
    );
    log_has(&pair, a, "lease expired");
    log_has(&pair, a, "role changed resource=r0 role=secondary epoch=5");
    assert_eq!(
        dump_u64(&pair, a, "localcnt"),
        localcnt0,
        "localcnt moved without a fence"
    );
    let tried = fence_log(&flog);
    assert!(tried.contains("seq=1 epoch=5"), "{tried}");
    assert!(!pair.node(a).log().contains("fence_peer succeeded"));

    // B becomes primary in a later epoch and connects to A: no split-brain, A's
    // unacknowledged writes are overwritten by the resync.
    promote_with_epoch(&mut pair, b, 6);
    pair.wait_complete(timeout_s(90));
    assert_eq!((epoch(&pair, a), epoch(&pair, b)), (Some(6), Some(6)));
    pair.assert_identical(timeout_s(20));
    log_has(&pair, b, "connected to secondary");
    assert!(!pair.node(b).log().contains("split-brain"));
    // Every write the client saw acknowledged is on the new primary.
    let check = versioned_check(&pair.uri(b), &[log]);
    say(&format!("check on B: {check}"));
}

// ---------------------------------------------------------------------------
// outdate

/// `hastctl outdate` (what hastmon runs when its watchdog holds the node
/// outdated): refused on the primary and on a secondary connected to it;
/// on a lone secondary the copy is outdated durably (status, list, dump,
/// across a kill -9), its promotion refused (77) even with `-E`, until the
/// primary's resync clears the mark; `--force` promotes and clears it too.
#[test]
fn an_outdated_copy_is_not_promoted_until_resynced() {
    let mut pair = Pair::builder(bins!())
        .tag("fence-outdate")
        .file_size(64 * MIB)
        .start();
    let (a, b) = (Side::A, Side::B);
    pair.setup(a, timeout_s(60));
    let err = fails(&pair, b, &["outdate", RES], 75);
    assert!(err.contains("connected to its primary"), "{err}");
    let err = fails(&pair, a, &["outdate", RES], EX_NOPERM);
    assert!(err.contains("primary here"), "{err}");
    let outdated = |pair: &Pair, side: Side| pair.status_json(side)["outdated"].as_bool();
    let lone = |pair: &Pair| {
        pair.wait_status(b, timeout_s(20), "disconnected", |s| {
            s.peer.as_deref() != Some("connected")
        })
    };
    assert_eq!(outdated(&pair, b), Some(false));

    // The primary dies; B, alone, is told it is outdated.
    pair.kill9(a);
    lone(&pair);
    pair.node(b).hastctl_ok(&["outdate", RES]);
    assert_eq!(outdated(&pair, b), Some(true));
    assert_eq!(pair.status(b).status, "outdated");
    let text = pair.node(b).hastctl_ok(&["status", RES]);
    assert!(text.contains("outdated"), "{text}");
    let text = pair.node(b).hastctl_ok(&["list", RES]);
    assert!(text.contains("outdated: yes"), "{text}");
    let err = fails(&pair, b, &["role", "primary", RES], EX_NOPERM);
    assert!(err.contains("outdated"), "{err}");
    let err = fails(&pair, b, &["role", "-E", "40", "primary", RES], EX_NOPERM);
    assert!(err.contains("outdated"), "{err}");
    assert_eq!(
        pair.status(b).role,
        "secondary",
        "a refusal changes nothing"
    );

    // Durable: kill -9 and restart, the resource comes back in init,
    // still outdated (and `outdate` again in init is fine).
    pair.kill9(b);
    pair.start_daemon(b);
    assert_eq!(pair.status(b).role, "init");
    assert_eq!(outdated(&pair, b), Some(true));
    assert_eq!(
        pair.node(b).dump(RES).get("flags").map(String::as_str),
        Some("outdated")
    );
    pair.node(b).hastctl_ok(&["outdate", RES]);
    fails(&pair, b, &["role", "primary", RES], EX_NOPERM);
    pair.make_secondary(b);
    assert_eq!(outdated(&pair, b), Some(true));

    // The primary comes back: its resync makes B current, the mark goes.
    pair.start_daemon(a);
    pair.make_primary(a);
    pair.wait_complete(timeout_s(60));
    assert_eq!(outdated(&pair, b), Some(false), "{}", pair.describe());
    assert_eq!(
        pair.node(b).dump(RES).get("flags").map(String::as_str),
        Some("none")
    );

    // `--force` is the operator's word: promoted, mark cleared, logged.
    pair.kill9(a);
    lone(&pair);
    pair.node(b).hastctl_ok(&["outdate", RES]);
    pair.node(b)
        .hastctl_ok(&["role", "--force", "primary", RES]);
    pair.node(b).wait_export(RES);
    assert_eq!(outdated(&pair, b), Some(false));
    log_has(&pair, b, "promoted with --force although outdated");
}
