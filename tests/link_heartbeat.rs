//! Failover that never waits on a hung daemon: the hastd side, with real
//! processes on loopback (a proxy on A's link to B).
//!
//! - **heartbeat**: the link is blackholed (sockets stay open, nothing moves,
//!   no RST) under a steady fullsync writer with `fence_peer`; with the default
//!   `ping_timeout` (3 s, `timeout` left at 20 s) the primary declares the
//!   peer dead, fences it and acknowledges writes again within 5 s of the cut
//!   (the longest gap between two acknowledgements is printed);
//! - **no false positive under load**: the secondary's disk is slow (its
//!   component behind nbdkit + nbdfuse, nbdkit stopped 1.7 s of every 2 s for
//!   8 s, so its writes take up to ~1.7 s and its replies come late) under a
//!   steady fullsync writer with `ping_timeout 1` and `timeout 20`: the primary
//!   stays `complete` with peer `connected` (status polled about every 100 ms),
//!   the link is never re-established, writes keep being acknowledged, and
//!   the copies are identical (longest gap between acknowledgements, polls
//!   and the slowest write are printed);
//! - **lease**: a primary with a lease whose `fence_peer` hangs (sleeps) and
//!   whose peer is silenced: writes issued after the cut fail with ESHUTDOWN as
//!   the NBD client sees it within the lease plus a small margin, and `hastctl
//!   status` says secondary by then — both while they wait for the fence
//!   (`ping_timeout 1`) and for the silent peer's REPLY (`ping_timeout 10`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hast_testkit::{
    bins, python_command, require_python_nbd, timeout_s, wait_for, Pair, Proc, Side,
};

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[link_heartbeat] {msg}");
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `tests/py/follow_writer.py` on one URI, history in `dir/name.hist`.
struct Writer {
    proc: Proc,
    history: PathBuf,
    stop_file: PathBuf,
}

impl Writer {
    fn start(uri: &str, dir: &Path, name: &str, inflight: u32, fua_one_in: u32) -> Writer {
        let history = dir.join(format!("{name}.hist"));
        let stop_file = dir.join(format!("{name}.stop"));
        let out = dir.join(format!("{name}.out"));
        let mut cmd = python_command(
            "follow_writer.py",
            &[
                "--uri",
                uri,
                "--history",
                history.to_str().expect("utf-8 path"),
                "--blocks",
                "4096",
                "--inflight",
                &inflight.to_string(),
                "--fua-one-in",
                &fua_one_in.to_string(),
                // Never abandon a request: the test wants its real answer.
                "--request-timeout",
                "120",
                "--reconnect-timeout",
                "120",
                "--duration",
                "300",
                "--stop-file",
                stop_file.to_str().expect("utf-8 path"),
            ],
        );
        let proc = Proc::spawn(&mut cmd, name, Some(&out)).expect("start follow_writer.py");
        Writer {
            proc,
            history,
            stop_file,
        }
    }

    /// `(kind, t, rest)` of every history line.
    fn events(&self) -> Vec<(String, f64, Vec<String>)> {
        std::fs::read_to_string(&self.history)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let kind = w.next()?.to_string();
                let t: f64 = w.next()?.parse().ok()?;
                Some((kind, t, w.map(str::to_string).collect()))
            })
            .collect()
    }

    fn acks(&self) -> Vec<f64> {
        self.events()
            .into_iter()
            .filter(|(k, _, _)| k == "ok")
            .map(|(_, t, _)| t)
            .collect()
    }

    fn stop(mut self) {
        let _ = std::fs::write(&self.stop_file, b"stop");
        if self.proc.wait_timeout(timeout_s(30)).is_none() {
            self.proc.kill9();
        }
    }
}

/// The longest time between two acknowledgements after `from`, counted from
/// `from` for the first one.
fn longest_gap(acks: &[f64], from: f64) -> f64 {
    let mut last = from;
    let mut gap: f64 = 0.0;
    for &t in acks.iter().filter(|&&t| t > from) {
        gap = gap.max(t - last);
        last = t;
    }
    gap
}

#[test]
fn blackholed_link_under_fullsync_writes_recovers_within_5s() {
    if !require_python_nbd() {
        return;
    }
    // `timeout` as FreeBSD's default: only the heartbeat can be this quick.
    let mut pair = Pair::builder(bins!())
        .tag("hb-blackhole")
        .timeout(20)
        .proxy()
        .option("fence_peer /bin/true")
        .start();
    pair.setup(Side::A, timeout_s(60));
    let dir = pair.node(Side::A).dir().to_path_buf();
    let writer = Writer::start(&pair.uri(Side::A), &dir, "steady", 8, 8);
    let got = wait_for(timeout_s(30), || (writer.acks().len() > 500).then_some(()));
    assert!(got.is_some(), "writer never got going");

    let t_cut = wall();
    let cut = Instant::now();
    pair.proxy().blackhole();
    let st = pair.wait_status(Side::A, timeout_s(15), "degraded", |s| {
        s.status == "degraded"
    });
    let noticed = cut.elapsed();
    say(&format!(
        "A degraded {noticed:?} after the blackhole: {}",
        st.brief()
    ));
    // Let the writer show that it goes on.
    std::thread::sleep(Duration::from_secs(3));
    let acks = writer.acks();
    let fails: Vec<_> = writer
        .events()
        .into_iter()
        .filter(|(k, _, _)| k == "fail" || k == "disconnect")
        .collect();
    writer.stop();
    let gap = longest_gap(&acks, t_cut);
    let after = acks.iter().filter(|&&t| t > t_cut + gap - 0.001).count();
    say(&format!(
        "longest gap between acknowledgements after the cut: {gap:.2} s \
         ({after} writes acknowledged after it)"
    ));
    assert!(fails.is_empty(), "writes failed: {fails:?}");
    assert!(after > 10, "writes did not resume: {after}");
    assert!(
        gap < 5.0,
        "writes stalled {gap:.2} s after the cut (want < 5 s)"
    );
    let log = pair.node(Side::A).log();
    assert!(
        log.contains("peer silent for 3 s"),
        "the primary did not time the silent peer out by ping_timeout:\n{log}"
    );
    // The secondary lets go of the silent primary by the same rule.
    let st = pair.wait_status(Side::B, timeout_s(10), "primary gone", |s| {
        s.peer.as_deref() != Some("connected")
    });
    say(&format!("B after {:?}: {}", cut.elapsed(), st.brief()));
    pair.proxy().heal();
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(30));
}

/// The secondary's disk stalls for longer than `ping_timeout` again and
/// again while its daemon and the link are alive: its keepalives (sent by
/// its writer task, never behind the disk) keep the primary from declaring
/// it dead; only `timeout` bounds a peer that completes no write.
#[test]
fn slow_secondary_disk_is_not_a_dead_peer() {
    if !require_python_nbd() {
        return;
    }
    /// How long the disk is slow, and each cycle: stalled, then running.
    const SLOW: Duration = Duration::from_secs(8);
    const STALL: Duration = Duration::from_millis(1700);
    const RUN: Duration = Duration::from_millis(300);
    let mut pair = Pair::builder(bins!())
        .tag("hb-slow")
        .file_size(64 << 20)
        .timeout(20)
        .option("ping_timeout 1")
        .fuse_disk(Side::B)
        .start();
    pair.setup(Side::A, timeout_s(120));
    let dir = pair.node(Side::A).dir().to_path_buf();
    let writer = Writer::start(&pair.uri(Side::A), &dir, "slow", 8, 8);
    let got = wait_for(timeout_s(30), || (writer.acks().len() > 200).then_some(()));
    assert!(got.is_some(), "writer never got going");

    let t_slow = wall();
    let slow = Instant::now();
    let mut polls = 0u32;
    let mut bad: Vec<String> = Vec::new();
    while slow.elapsed() < SLOW {
        let in_cycle = slow.elapsed().as_nanos() % (STALL + RUN).as_nanos();
        let stall = in_cycle < STALL.as_nanos();
        let disk = pair.disk_mut(Side::B);
        if stall && !disk.is_hung() {
            disk.hang();
        } else if !stall && disk.is_hung() {
            disk.heal();
        }
        let st = pair.status(Side::A);
        polls += 1;
        if st.status != "complete" || st.peer.as_deref() != Some("connected") {
            bad.push(format!(
                "{:.2} s: {}",
                slow.elapsed().as_secs_f64(),
                st.brief()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pair.disk_mut(Side::B).heal();
    let t_healed = wall();
    // Let the writer show that it goes on at full speed.
    std::thread::sleep(Duration::from_secs(2));
    let events = writer.events();
    writer.stop();

    let acks: Vec<f64> = events
        .iter()
        .filter(|(k, _, _)| k == "ok")
        .map(|(_, t, _)| *t)
        .collect();
    let gap = longest_gap(&acks, t_slow);
    let during = acks
        .iter()
        .filter(|&&t| t > t_slow && t <= t_healed)
        .count();
    let after = acks.iter().filter(|&&t| t > t_healed).count();
    // Write latency: invoke to ok of the same (lba, seq), for writes
    // acknowledged during the slow period.
    let mut sent = std::collections::HashMap::new();
    let mut worst: f64 = 0.0;
    for (kind, t, rest) in &events {
        let key = (rest.get(1).cloned(), rest.get(2).cloned());
        match kind.as_str() {
            "invoke" => {
                sent.insert(key, *t);
            }
            "ok" if *t > t_slow && *t <= t_healed => {
                if let Some(t0) = sent.get(&key) {
                    worst = worst.max(t - t0);
                }
            }
            _ => {}
        }
    }
    let fails: Vec<_> = events
        .iter()
        .filter(|(k, _, _)| k == "fail" || k == "disconnect")
        .collect();
    say(&format!(
        "slow disk for {SLOW:?} (stalled {STALL:?} of every {:?}), ping_timeout 1 s: \
         {polls} status polls of A, {} not complete/connected; {during} writes acknowledged \
         while slow (slowest {worst:.2} s), {after} in the 2 s after; longest gap between \
         acknowledgements {gap:.2} s",
        STALL + RUN,
        bad.len()
    ));
    assert!(fails.is_empty(), "writes failed: {fails:?}");
    assert!(
        bad.is_empty(),
        "the primary left complete/connected while the secondary's disk was slow:\n{}\n{}",
        bad.join("\n"),
        pair.describe()
    );
    // The slowness was real: replies came later than ping_timeout.
    assert!(
        gap > 1.2 && worst > 1.2,
        "the disk was not slow enough to test anything: gap {gap:.2} s, slowest write {worst:.2} s"
    );
    assert!(
        during > 3,
        "writes were not acknowledged while slow: {during}"
    );
    assert!(after > 10, "writes did not resume: {after}");
    let log_a = pair.node(Side::A).log();
    let log_b = pair.node(Side::B).log();
    assert_eq!(
        log_a.matches("connected to secondary").count(),
        1,
        "the link was re-established:\n{log_a}"
    );
    assert!(
        !log_a.contains("secondary disconnected") && !log_b.contains("primary disconnected"),
        "the link was dropped:\n--- A\n{log_a}\n--- B\n{log_b}"
    );
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(30));
}

/// Held writes fail at the lease's end. `ping` is the pair's `ping_timeout`:
/// 1 s, the link is declared dead before the lease ends and writes are held
/// for `fence_peer` (which hangs); 10 s, they are still waiting for the
/// silent peer's REPLY when the lease ends.
fn held_writes_fail_at_lease_end(ping: u32) {
    if !require_python_nbd() {
        return;
    }
    const LEASE_MS: u64 = 2000;
    let mut pair = Pair::builder(bins!())
        .tag(&format!("hb-lease-{ping}"))
        .timeout(20)
        .proxy()
        .option(&format!("ping_timeout {ping}"))
        .option("fence_peer \"sleep 60\"")
        .start();
    pair.setup(Side::A, timeout_s(60));
    let a = pair.node(Side::A);
    let dir = a.dir().to_path_buf();
    let renew = || a.hastctl_ok(&["lease", "-t", &LEASE_MS.to_string(), "r0"]);
    renew();
    let writer = Writer::start(&pair.uri(Side::A), &dir, "held", 8, 8);
    let got = wait_for(timeout_s(30), || {
        renew();
        std::thread::sleep(Duration::from_millis(200));
        (writer.acks().len() > 200).then_some(())
    });
    assert!(got.is_some(), "writer never got going");
    // The last renewal, then the cut: the lease ends within LEASE_MS of it.
    renew();
    let (t_renewed, renewed) = (wall(), Instant::now());
    pair.proxy().blackhole();
    let t_cut = wall();
    let lease_end = t_renewed + LEASE_MS as f64 / 1000.0;
    // `hastctl status` says secondary within the lease and a margin.
    let st = pair.wait_status(Side::A, timeout_s(15), "secondary", |s| {
        s.role == "secondary"
    });
    let demoted = renewed.elapsed();
    say(&format!(
        "ping_timeout {ping}: status secondary {:.2} s after the last renewal (lease {LEASE_MS} ms): {}",
        demoted.as_secs_f64(),
        st.brief()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let events = writer.events();
    writer.stop();
    // Every write not yet acknowledged when the cut began: those in flight
    // (the pipeline is usually full, so often nothing new is sent after the
    // cut) and those sent after it. One sent before may still be
    // acknowledged: its reply may have passed the proxy before the cut.
    let outcomes: std::collections::HashMap<(&str, &str), (&str, f64, &[String])> = events
        .iter()
        .filter(|(k, _, r)| (k == "ok" || k == "fail") && r.len() > 2)
        .map(|(k, t, r)| {
            (
                (r[1].as_str(), r[2].as_str()),
                (k.as_str(), *t, r.as_slice()),
            )
        })
        .collect();
    let mut pending = 0;
    let mut latest_fail: f64 = 0.0;
    for (kind, t, rest) in &events {
        if kind != "invoke" {
            continue;
        }
        let (lba, seq) = (rest[1].as_str(), rest[2].as_str());
        match outcomes.get(&(lba, seq)).copied() {
            Some(("ok", tf, _)) if tf <= t_cut => {}
            Some(("ok", _, _)) if *t <= t_cut => {}
            Some(("fail", tf, r)) => {
                assert_eq!(
                    r.get(3).map(String::as_str),
                    Some("ESHUTDOWN"),
                    "write {seq}: {r:?}"
                );
                pending += 1;
                latest_fail = latest_fail.max(tf);
            }
            other => panic!("write {seq}, pending at the cut, was not failed: {other:?}"),
        }
    }
    let late = latest_fail - lease_end;
    say(&format!(
        "ping_timeout {ping}: {pending} writes pending at or sent after the cut, all ESHUTDOWN; \
         the last failed {late:+.2} s from the lease's end"
    ));
    assert!(pending > 0, "no write was pending at the cut");
    assert!(
        late < 0.5,
        "held writes failed {late:.2} s after the lease ended"
    );
    assert!(
        demoted < Duration::from_millis(LEASE_MS + 1000),
        "demoted {demoted:?} after the last renewal"
    );
    let log = pair.node(Side::A).log();
    assert!(log.contains("lease expired"), "{log}");
    pair.proxy().heal();
}

#[test]
fn writes_held_for_a_hanging_fence_fail_at_lease_end() {
    held_writes_fail_at_lease_end(1);
}

#[test]
fn writes_waiting_for_a_silent_peer_fail_at_lease_end() {
    held_writes_fail_at_lease_end(10);
}

/// A lease request carrying `not_after` (CLOCK_MONOTONIC ns, what hastmon
/// sends in-process and `hastctl lease` sends as its own start + ms): one
/// whose `not_after` passed is refused (not renewed, exit 77 like an expired
/// lease), one whose `not_after` comes before receipt + ms ends then.
#[test]
fn lease_not_after_caps_a_late_renewal() {
    use hast_api::{ErrorKind, Request, Response};
    let node = hast_testkit::Node::primary(bins!(), "hb-not-after", 64 << 20);
    let socket = node.layout().control.clone();
    let lease = |ms: u64, not_after: Option<u64>| {
        let req = Request::Lease {
            ms,
            names: vec!["r0".into()],
            not_after,
        };
        match hast_api::call(&socket, req).expect("control call") {
            Response::Lease(mut out) => out.remove(0).result,
            other => panic!("unexpected answer {other:?}"),
        }
    };
    // Passed: refused, and no lease is set by it.
    let past = hast_sys::mono_now_ns() - 1;
    let err = lease(60_000, Some(past)).expect_err("a past not_after must be refused");
    assert_eq!(err.kind, ErrorKind::NoPerm, "{err:?}");
    let st = node.hastctl_ok(&["list", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("status json");
    let r = &v["resources"][0];
    assert_eq!(r["role"], "primary", "{st}");
    assert!(r["lease_ms"].is_null(), "refused renewal set a lease: {r}");
    // Near: the lease ends at not_after, not a minute later.
    let t0 = Instant::now();
    let granted = lease(60_000, Some(hast_sys::mono_now_ns() + 800_000_000)).expect("granted");
    assert!((700..=800).contains(&granted), "granted {granted} ms");
    let demoted = wait_for(timeout_s(10), || {
        let st = node.hastctl_ok(&["status", "r0"]);
        st.contains("secondary").then(|| t0.elapsed())
    })
    .expect("not demoted at not_after");
    say(&format!(
        "lease of 60000 ms with not_after +800 ms: granted {granted} ms, secondary after {demoted:?}"
    ));
    assert!(demoted < Duration::from_millis(1500), "{demoted:?}");
    // An old request (no not_after) keeps its meaning: ms from receipt —
    // refused here only because the resource is no longer primary.
    let err = lease(1000, None).expect_err("secondary holds no lease");
    assert_eq!(err.kind, ErrorKind::NoPerm);
}
