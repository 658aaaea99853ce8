//! The HA event journal end to end (docs/overview.md §7, docs/events.md), with a real
//! hastd and a real `exec` hook: a shell script that logs its arguments and
//! `HAST_*` variables, and fails (exit 3) or hangs (forking a grandchild
//! that would leave a mark) for the event kinds a test asks it to.
//!
//! Events are made by role changes (`role`, `promote`, `demote`), the
//! cheapest real events a single node has.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hast_testkit::{bins, run, tail, wait_for, Node, Proc, ResourceSpec, MIB};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// The hook: appends `seq event resource args role=.. epoch=..` to
/// hook.log; with a file `fail-<event>` it exits 3, with `hang-<event>` it
/// starts a grandchild that touches `survived` after 5 s and sleeps 60 s
/// (its pid in `hook.pid`).
fn write_hook(dir: &Path) -> PathBuf {
    let hook = dir.join("hook.sh");
    let d = dir.display();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n\
             echo \"$HAST_SEQ $* role=$HAST_ROLE epoch=$HAST_EPOCH event=$HAST_EVENT res=$HAST_RESOURCE\" >> {d}/hook.log\n\
             [ -e {d}/fail-$1 ] && exit 3\n\
             if [ -e {d}/hang-$1 ]; then\n\
             \x20 echo $$ > {d}/hook.pid\n\
             \x20 (sleep 5; touch {d}/survived) &\n\
             \x20 sleep 60\n\
             fi\n\
             exit 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    hook
}

/// A node whose resources all run the hook, with `exec_timeout` seconds.
fn node(tag: &str, resources: &[&str], exec_timeout: u32) -> Node {
    let mut b = Node::builder(bins!()).tag(tag);
    for r in resources {
        b = b.resource(ResourceSpec::new(r, 32 * MIB));
    }
    let b = b.config(move |l| {
        let hook = write_hook(&l.dir);
        format!(
            "exec {}\nexec_timeout {exec_timeout}\n{}",
            hook.display(),
            l.default_config()
        )
    });
    let mut n = b.build();
    n.start_daemon();
    n
}

fn events(n: &Node, all: bool) -> Vec<Value> {
    let mut args = vec!["events", "--json"];
    if all {
        args.push("--all");
    }
    let out: Value = serde_json::from_str(&n.hastctl_ok(&args)).expect("events --json is JSON");
    out["events"].as_array().expect("events array").clone()
}

fn find<'a>(list: &'a [Value], resource: &str, event: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|e| e["resource"] == resource && e["event"] == event)
        .collect()
}

/// Waits until every event is handled (none pending or running).
fn settle(n: &Node) -> Vec<Value> {
    let got = wait_for(WAIT, || {
        let all = events(n, true);
        all.iter()
            .all(|e| e["state"] != "pending" && e["state"] != "running")
            .then_some(all)
    });
    got.unwrap_or_else(|| panic!("events not settled: {:?}\n{}", events(n, true), n.log()))
}

fn hook_log(n: &Node) -> Vec<String> {
    std::fs::read_to_string(n.dir().join("hook.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().expect("seq")
}

#[test]
fn hooks_run_in_order_and_failures_wait_for_retry_by_kind_or_seq() {
    let mut n = node("events-order", &["r0", "r1"], 20);
    std::fs::write(n.dir().join("fail-promote"), "").unwrap();
    n.hastctl_ok(&["role", "primary", "r0", "r1"]);
    n.hastctl_ok(&["role", "secondary", "r0"]);
    let all = settle(&n);

    // FreeBSD's convention: <event> <resource> [args], details in HAST_*.
    let log = hook_log(&n);
    let r0_role = find(&all, "r0", "role");
    assert_eq!(r0_role.len(), 2, "{all:?}");
    let first = format!(
        "{} role r0 init primary role=primary epoch=1 event=role res=r0",
        seq(r0_role[0])
    );
    assert!(log.contains(&first), "{first:?} not in {log:?}");
    assert!(
        log.iter()
            .any(|l| l
                .ends_with("demote r0 hastctl role role=secondary epoch=1 event=demote res=r0")),
        "{log:?}"
    );
    // One handler, in sequence order: so in order per resource.
    let seqs: Vec<u64> = log
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{log:?}");
    assert_eq!(seqs.len(), all.len(), "every event ran its hook once");

    // The JSON shape, and what is listed by default.
    let e = &r0_role[0];
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "args", "attempts", "details", "event", "note", "resource", "seq", "state", "time",
            "updated"
        ],
    );
    assert_eq!(e["args"], serde_json::json!(["init", "primary"]));
    assert_eq!(e["details"]["ROLE"], "primary");
    assert_eq!(e["state"], "done");
    assert_eq!(e["attempts"], 1);
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    let open = events(&n, false);
    assert_eq!(open.len(), 2, "only the two failed promotes: {open:?}");
    for p in &open {
        assert_eq!(p["event"], "promote");
        assert_eq!(p["state"], "failed");
        assert!(p["note"].as_str().unwrap().contains("exit status 3"), "{p}");
    }
    let text = n.hastctl_ok(&["events"]);
    assert!(text.starts_with("   SEQ  TIME"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    // Retry by seq: exactly that one runs again.
    std::fs::remove_file(n.dir().join("fail-promote")).unwrap();
    let r1_promote = seq(find(&open, "r1", "promote")[0]);
    let r0_promote = seq(find(&open, "r0", "promote")[0]);
    let out = n.hastctl_ok(&["events", "retry", &r1_promote.to_string()]);
    assert_eq!(out.trim(), format!("retrying {r1_promote}"));
    let all = settle(&n);
    let p1 = find(&all, "r1", "promote")[0];
    assert_eq!(
        (p1["state"].as_str(), p1["attempts"].as_u64()),
        (Some("done"), Some(2))
    );
    assert_eq!(find(&all, "r0", "promote")[0]["state"], "failed");

    // Retrying a done event, an unknown one, or a bad kind: refused, nothing changes.
    for (args, code, says) in [
        (
            vec!["events", "retry", &*r1_promote.to_string()],
            64,
            "only failed or aborted",
        ),
        (vec!["events", "retry", "999999"], 64, "no event 999999"),
        (
            vec!["events", "retry", "-k", "bogus"],
            64,
            "unknown event kind",
        ),
        (
            vec!["events", "retry", "-k", "role"],
            66,
            "no failed or aborted role event",
        ),
    ] {
        let o = n.hastctl(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // Retry by kind: the other promote.
    let out = n.hastctl_ok(&["events", "retry", "-k", "promote"]);
    assert_eq!(out.trim(), format!("retrying {r0_promote}"));
    settle(&n);
    assert!(events(&n, false).is_empty(), "{:?}", events(&n, true));

    // Clear: a failed event dismissed by the operator is done, not re-run.
    std::fs::write(n.dir().join("fail-demote"), "").unwrap();
    n.hastctl_ok(&["role", "secondary", "r1"]);
    let all = settle(&n);
    let demote = seq(find(&all, "r1", "demote")[0]);
    let runs = hook_log(&n).len();
    let out = n.hastctl_ok(&["events", "clear", "-k", "demote"]);
    assert_eq!(out.trim(), format!("cleared {demote}"));
    let all = settle(&n);
    let e = all.iter().find(|e| seq(e) == demote).unwrap();
    assert_eq!(
        (e["state"].as_str(), e["note"].as_str()),
        (Some("done"), Some("cleared by the operator"))
    );
    assert!(events(&n, false).is_empty());
    assert_eq!(
        hook_log(&n).len(),
        runs,
        "a cleared event is not handled again"
    );
    assert!(n.stop().success());
}

#[test]
fn a_hanging_hook_is_killed_with_its_group_and_blocks_nothing() {
    let mut n = node("events-hang", &["r0"], 3);
    std::fs::write(n.dir().join("hang-promote"), "").unwrap();
    n.promote("r0");
    let running = wait_for(WAIT, || {
        find(&events(&n, false), "r0", "promote")
            .first()
            .filter(|e| e["state"] == "running")
            .map(|e| seq(e))
    })
    .expect("the promote hook runs");
    // While it hangs, the control socket answers and the export takes writes.
    n.hastctl_ok(&["status", "r0"]);
    let w = run(
        Command::new("qemu-io")
            .args(["-f", "raw", &n.uri("r0")])
            .args(["-c", "write -P 0x5a 0 1M", "-c", "flush"]),
        WAIT,
    );
    assert!(w.status.success(), "write while the hook hangs: {w:?}");
    let st = find(&events(&n, false), "r0", "promote")[0]["state"].clone();
    assert_eq!(
        st, "running",
        "the write was served while the hook still ran"
    );

    let all = settle(&n);
    let e = all.iter().find(|e| seq(e) == running).unwrap();
    assert_eq!(e["state"], "aborted", "{e}");
    let note = e["note"].as_str().unwrap();
    assert!(
        note.contains("exec_timeout 3s") && note.contains("process group killed"),
        "{note}"
    );
    // The grandchild would have touched `survived` 5 s after the start (the
    // kill came at 3 s; now it is at least 7 s).
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !n.dir().join("survived").exists(),
        "a process of the hook's group outlived the kill"
    );
    assert!(n.stop().success());
}

#[test]
fn kill9_while_a_hook_runs_leaves_it_aborted_and_retryable() {
    let mut n = node("events-kill9", &["r0"], 120);
    std::fs::write(n.dir().join("hang-promote"), "").unwrap();
    n.promote("r0");
    let s = wait_for(WAIT, || {
        find(&events(&n, false), "r0", "promote")
            .first()
            .filter(|e| e["state"] == "running")
            .map(|e| seq(e))
    })
    .expect("the promote hook runs");
    n.kill9();
    // The hook is not hastd's child any more: end its group (by its pid).
    let hook_pid: i32 = wait_for(WAIT, || {
        std::fs::read_to_string(n.dir().join("hook.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .expect("hook.pid");
    // SAFETY: kill(2) of the process group the hook leads (hastd made it a
    // group leader); it is still running (sleep 60), so the id is its own.
    unsafe { libc::kill(-hook_pid, libc::SIGKILL) };
    std::fs::remove_file(n.dir().join("hang-promote")).unwrap();

    n.start_daemon();
    let e = find(&events(&n, false), "r0", "promote")[0].clone();
    assert_eq!(seq(&e), s);
    assert_eq!(e["state"], "aborted", "{e}");
    assert_eq!(e["note"], "hastd stopped while its hook ran");
    assert!(
        n.log().contains(&format!("hastctl events retry {s}")),
        "{}",
        tail(n.log_path(), 20)
    );
    // Not re-run by itself: the hook ran once so far.
    let runs = |n: &Node| {
        hook_log(n)
            .iter()
            .filter(|l| l.contains(" promote r0 "))
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(runs(&n), 1);
    n.hastctl_ok(&["events", "retry", &s.to_string()]);
    let all = settle(&n);
    let e = all.iter().find(|e| seq(e) == s).unwrap();
    assert_eq!(
        (e["state"].as_str(), e["attempts"].as_u64()),
        (Some("done"), Some(2))
    );
    assert_eq!(runs(&n), 2);
    assert!(n.stop().success());
}

#[test]
fn one_handler_per_state_dir() {
    let mut n = node("events-lock", &["r0"], 5);
    // Another hastd (own control socket and pidfile) on the same state_dir.
    let conf = std::fs::read_to_string(&n.layout().config_path).unwrap();
    let d = n.dir().to_path_buf();
    let other = conf
        .replace(
            &n.layout().control.display().to_string(),
            &d.join("ctl2.sock").display().to_string(),
        )
        .replace(
            &n.layout().pidfile.display().to_string(),
            &d.join("hastd2.pid").display().to_string(),
        );
    let other_path = d.join("other.conf");
    std::fs::write(&other_path, other).unwrap();
    let (hastd, node_name) = (n.bins().hastd.clone(), n.layout().node_name.clone());
    let second = |path: &Path| {
        let mut c = Command::new(&hastd);
        c.args(["-F", "-c"]).arg(path).args(["--node", &node_name]);
        c
    };
    let out = run(&mut second(&other_path), WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    let pid = n.daemon_pid().unwrap();
    assert!(
        err.contains(&format!("another event handler (pid {pid}) holds"))
            && err.contains("handler.lock"),
        "{err}"
    );
    assert!(n.daemon_running());
    assert!(n.stop().success());

    // Two started at once: exactly one runs, the other says why and exits.
    let log = d.join("race.log");
    let config = n.layout().config_path.clone();
    let mut a = Proc::spawn(&mut second(&config), "hastd-a", Some(&log)).unwrap();
    let mut b = Proc::spawn(&mut second(&other_path), "hastd-b", Some(&log)).unwrap();
    let loser = wait_for(WAIT, || match (a.try_wait(), b.try_wait()) {
        (Some(st), None) | (None, Some(st)) => Some(st),
        (Some(x), Some(y)) => panic!("both exited: {x} {y}\n{}", tail(&log, 20)),
        (None, None) => None,
    })
    .expect("one of the two exits");
    assert_eq!(loser.code(), Some(75), "{}", tail(&log, 20));
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.is_running() != b.is_running(), "exactly one handler runs");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("another event handler"));
    for p in [&mut a, &mut b] {
        if p.is_running() {
            p.signal(libc::SIGTERM);
            p.wait_timeout(WAIT).expect("the survivor stops on SIGTERM");
        }
    }
}

#[test]
fn a_torn_journal_tail_is_skipped_with_a_warning() {
    let mut n = node("events-torn", &["r0"], 5);
    n.hastctl_ok(&["role", "primary", "r0"]);
    n.hastctl_ok(&["role", "secondary", "r0"]);
    let before = settle(&n);
    // Killed, so the last record is the last event's outcome (a SIGTERM
    // would journal the stop's own role change after it).
    n.kill9();
    let journal = n.layout().state_dir.join("events.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    // The last record loses its end, as a crash in the middle of a write.
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&journal, &bytes).unwrap();
    n.start_daemon();
    let after = events(&n, true);
    assert!(
        n.log().contains(&journal.display().to_string()),
        "no warning naming the journal:\n{}",
        tail(n.log_path(), 20)
    );
    // Every event is still there; only the last state change was torn.
    let seqs = |l: &[Value]| l.iter().map(seq).collect::<Vec<_>>();
    assert_eq!(seqs(&after), seqs(&before));
    // And the journal takes new events after the cut.
    n.hastctl_ok(&["role", "primary", "r0"]);
    let last = settle(&n);
    assert!(seq(last.last().unwrap()) > seq(before.last().unwrap()));
    assert!(n.stop().success());
}

#[test]
fn follow_streams_changes_as_they_happen() {
    let mut n = node("events-follow", &["r0"], 5);
    let mut cmd = n.hastctl_command(&["events", "--follow", "--json"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    n.hastctl_ok(&["role", "primary", "r0"]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !seen
        .iter()
        .any(|v: &Value| v["event"] == "promote" && v["state"] == "done")
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(serde_json::from_str(&l).expect("one JSON object per line")),
            Err(_) => panic!("no done promote in {seen:?}"),
        }
    }
    let states: Vec<(String, String)> = seen
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap().into(),
                v["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("role", "pending"),
        ("role", "running"),
        ("role", "done"),
        ("promote", "pending"),
    ] {
        assert!(
            states.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {states:?}"
        );
    }
    // SAFETY: kill(2) of our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(n.stop().success());
}

/// The replication events of a pair, each in the journal of the node that
/// saw it: the initial full sync, a secondary gone and back (disconnect,
/// connect, a resync of what it missed), then both copies written while
/// apart (split-brain on both nodes, nothing synced).
#[test]
fn replication_events_are_journalled_on_each_node() {
    use hast_testkit::pair::qemu_io;
    use hast_testkit::{Pair, Side};
    let kinds = |pair: &Pair, side: Side| -> Vec<String> {
        let out = pair.node(side).hastctl_ok(&["events", "--all", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("events JSON");
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    };
    let has_in_order = |got: &[String], want: &[&str]| {
        let mut it = got.iter();
        want.iter().all(|w| it.any(|g| g == w))
    };
    let mut pair = Pair::builder(bins!())
        .tag("events-repl")
        .file_size(64 * MIB)
        .start();
    pair.setup(Side::A, WAIT);
    pair.stop(Side::B);
    qemu_io(&pair.uri(Side::A), &["write -P 0x21 0 1M".to_string()]);
    pair.start_daemon(Side::B);
    pair.make_secondary(Side::B);
    pair.wait_complete(WAIT);
    let want_a = [
        "role",
        "promote",
        "connect",
        "syncstart",
        "syncdone",
        "disconnect",
        "connect",
        "syncstart",
        "syncdone",
    ];
    let a = wait_for(WAIT, || {
        let a = kinds(&pair, Side::A);
        has_in_order(&a, &want_a).then_some(a)
    });
    assert!(
        a.is_some(),
        "A: {:?}, want {want_a:?} in order",
        kinds(&pair, Side::A)
    );
    // B's journal is its own: restarted, it became secondary and met A again.
    let b = kinds(&pair, Side::B);
    assert!(has_in_order(&b, &["role", "connect"]), "B: {b:?}");
    assert!(
        !b.iter().any(|k| k == "syncstart"),
        "only the primary resyncs: {b:?}"
    );

    // Split-brain: A written alone, then B promoted and written alone.
    pair.stop(Side::B);
    qemu_io(&pair.uri(Side::A), &["write -P 0x22 0 1M".to_string()]);
    pair.stop(Side::A);
    pair.start_daemon(Side::B);
    pair.make_primary(Side::B);
    qemu_io(&pair.uri(Side::B), &["write -P 0x23 0 1M".to_string()]);
    pair.start_daemon(Side::A);
    pair.make_secondary(Side::A);
    for side in [Side::A, Side::B] {
        let seen = wait_for(WAIT, || {
            kinds(&pair, side)
                .iter()
                .any(|k| k == "split-brain")
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "{side:?}: no split-brain in {:?}",
            kinds(&pair, side)
        );
    }
    // A stopping hastd's own events (its demotion) were journalled before
    // it exited, and handled after its restart.
    let a = kinds(&pair, Side::A);
    let stop = ["disconnect", "role", "demote", "role", "split-brain"];
    assert!(has_in_order(&a, &stop), "A: {a:?}, want {stop:?} in order");
}

/// A follower that never reads (a stranger to the journal's pace: a
/// stuck script, a client that connected and went to sleep): the burst of
/// changes fills its socket, hastd's writes to it time out and it is
/// dropped, while every other control request is answered at once.
#[test]
fn a_follower_that_never_reads_is_dropped_and_blocks_nothing() {
    use std::io::{Read, Write};
    let names: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut n = node("events-stuck", &refs, 5);
    for r in &refs {
        n.promote(r);
    }
    let mut stuck = std::os::unix::net::UnixStream::connect(n.dir().join("ctl.sock"))
        .expect("connect to the control socket");
    let req = hast_api::encode(&hast_api::Envelope::new(hast_api::Request::Events {
        all: true,
        follow: true,
    }))
    .expect("encode");
    stuck.write_all(&req).expect("send the request");
    // From now on nothing is read from `stuck` until hastd gave up on it.
    for round in 0..40 {
        let t = std::time::Instant::now();
        n.hastctl_ok(&["freeze", "-t", "30", "all"]);
        n.hastctl_ok(&["thaw", "all"]);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "round {round}: freeze and thaw took {:?} beside a follower that never reads",
            t.elapsed()
        );
    }
    let changes = settle(&n).len();
    // hastd's write to the follower blocks on the full socket and times
    // out after 10 s; until then nothing may drain it.
    std::thread::sleep(Duration::from_secs(13));
    stuck
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let deadline = std::time::Instant::now() + WAIT;
    let mut buf = vec![0u8; 1 << 16];
    let mut queued = 0usize;
    loop {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => queued += k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hastd still serves a follower that never read ({queued} bytes were queued)"
        );
    }
    eprintln!(
        "a follower that never read was dropped with {queued} bytes queued; {changes} events settled"
    );
    assert!(queued > 0, "the follower got its first chunk");
    n.hastctl_ok(&["status"]);
    assert!(n.stop().success());
}
