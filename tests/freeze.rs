//! `hastctl freeze / thaw / query` (docs/overview.md §6, after freezefs(2)) against a
//! real hastd with real clients: a write sent while frozen is held (not on
//! disk, not answered) and completes without error after the thaw, while
//! reads and flushes go on; the timeout, a lost peer (kill -9 of the
//! secondary) and hastd stopping thaw the group, and `thaw` afterwards says
//! so (exit 65); double freeze (75) and double thaw (64); a role change
//! refused while frozen; a group with a resource that is not primary
//! freezes nothing; `query`'s exit codes and lines, `list --json`'s
//! fields, the `freeze`/`thaw` events with their reasons.
//!
//! The group's coherence: `tests/py/dependent_writer.py` writes record N to
//! r0 and, only once r0 acknowledged it, commit N to r1; a copy of both
//! components taken while the group is frozen never holds a commit without
//! its record, and copies taken one after the other without a freeze do
//! (so the checker is known to see what it looks for). README.md's freeze
//! block itself, run by bash as printed on resources `data` and `log` under
//! the same writer: `nbdcopy`'s images of both are coherent, and the block
//! ends with `query`'s 1 and no "thawed before we were done".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hast_testkit::coherence::{self, DependentWriter};
use hast_testkit::pair::{qemu_io, VersionedWriter};
use hast_testkit::{
    bins, require_python_nbd, require_tool, tail, timeout_s, wait_for, Node, Pair, Proc,
    ResourceSpec, Side, MIB,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A node with `resources` (`remote none`), hastd started, `primaries`
/// promoted.
fn node(tag: &str, resources: &[&str], primaries: &[&str]) -> Node {
    let mut b = Node::builder(bins!()).tag(tag);
    for r in resources {
        b = b.resource(ResourceSpec::new(r, 32 * MIB));
    }
    let mut n = b.start();
    for r in primaries {
        n.promote(r);
    }
    n
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `hastctl args` must exit with `want` and say `says` on stderr, one line.
fn refused(n: &Node, args: &[&str], want: i32, says: &str) -> String {
    let out = n.hastctl(args);
    let err = stderr(&out);
    assert_eq!(
        code(&out),
        want,
        "hastctl {args:?}: {err}\n{}",
        tail(n.log_path(), 30)
    );
    assert!(
        err.contains(says),
        "hastctl {args:?}: {err:?} lacks {says:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line per failure: {err:?}");
    err
}

fn status(n: &Node, res: &str) -> Value {
    let text = n.hastctl_ok(&["list", "--json", res]);
    let v: Value = serde_json::from_str(&text).expect("list --json is JSON");
    v["resources"][0].clone()
}

fn events(n: &Node) -> Vec<Value> {
    let out: Value = serde_json::from_str(&n.hastctl_ok(&["events", "--all", "--json"]))
        .expect("events --json is JSON");
    out["events"].as_array().expect("events array").clone()
}

/// The `(event, args)` of `res`'s freeze and thaw events, in order.
fn freeze_events(n: &Node, res: &str) -> Vec<(String, Vec<String>)> {
    events(n)
        .iter()
        .filter(|e| e["resource"] == res && (e["event"] == "freeze" || e["event"] == "thaw"))
        .map(|e| {
            let args = e["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (e["event"].as_str().unwrap_or("").to_string(), args)
        })
        .collect()
}

/// Waits until the journal has `want` freeze/thaw events of `res`.
fn wait_freeze_events(n: &Node, res: &str, want: &[(&str, &str)]) {
    let got = wait_for(WAIT, || {
        let got = freeze_events(n, res);
        (got.len() >= want.len()).then_some(got)
    })
    .unwrap_or_else(|| panic!("{res}: events {:?}, want {want:?}", freeze_events(n, res)));
    assert_eq!(got.len(), want.len(), "{res}: {got:?}");
    for ((event, args), (we, wa)) in got.iter().zip(want) {
        assert_eq!(event, we, "{res}: {got:?}");
        assert_eq!(
            args.first().map(String::as_str),
            Some(*wa),
            "{res}: {got:?}"
        );
    }
}

/// A qemu-io write of `pattern` to `[offset, +64k)` in the background.
struct HeldWrite {
    proc: Proc,
    out: PathBuf,
}

impl HeldWrite {
    fn start(uri: &str, dir: &Path, name: &str, pattern: u8, offset: u64) -> HeldWrite {
        let out = dir.join(format!("{name}.qemu-io"));
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw", uri, "-c"])
            .arg(format!("write -P {pattern} {offset} 64k"));
        let proc = Proc::spawn(&mut cmd, name, Some(&out)).expect("start qemu-io");
        HeldWrite { proc, out }
    }

    fn running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits for it; returns (success, its output).
    fn finish(mut self) -> (bool, String) {
        let st = self
            .proc
            .wait_timeout(timeout_s(60))
            .unwrap_or_else(|| panic!("qemu-io still waiting after 60 s"));
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let ok = st.success() && !text.contains("failed") && !text.contains("error");
        (ok, text)
    }
}

/// `len` bytes of `res`'s data area at `offset`, read from the component
/// file itself.
fn on_disk(n: &Node, res: &str, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let base: u64 = n.dump(res)["localoff"].parse().expect("localoff");
    let f = std::fs::File::open(n.layout().local(res)).expect("open component");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, base + offset)
        .expect("read component");
    buf
}

#[test]
fn held_writes_complete_after_thaw_while_reads_and_flushes_go_on() {
    if !require_tool("qemu-io") {
        return;
    }
    let n = node("freeze-held", &["r0", "r1"], &["r0", "r1"]);
    qemu_io(&n.uri("r0"), &["write -P 0xaa 0 64k".into()]);

    // Not frozen yet: query exits 1 and says so; status shows it.
    let out = n.hastctl(&["query", "r0"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(stdout(&out), "r0: not frozen\n");
    assert_eq!(status(&n, "r0")["frozen"], false);

    n.hastctl_ok(&["freeze", "-t", "-1", "r0", "r1"]);
    let out = n.hastctl(&["query", "r0", "r1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("r0: frozen, group r0 r1, since ") && text.contains(", no timeout\n"),
        "{text}"
    );
    assert!(text.contains("\nr1: frozen, group r0 r1, "), "{text}");
    let st = status(&n, "r1");
    assert_eq!(st["frozen"], true, "{st}");
    assert_eq!(st["freeze"]["state"], "frozen", "{st}");
    assert_eq!(
        st["freeze"]["group"],
        serde_json::json!(["r0", "r1"]),
        "{st}"
    );
    assert_eq!(st["freeze"]["ms_left"], Value::Null, "{st}");
    let list = n.hastctl_ok(&["list", "r0"]);
    assert!(
        list.contains("  frozen: yes, group r0 r1, since "),
        "{list}"
    );

    // A write is held: not answered, not on disk.
    let mut w = HeldWrite::start(&n.uri("r0"), n.dir(), "held", 0xbb, 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.running(), "the write was answered while frozen");
    assert!(
        on_disk(&n, "r0", 0, 65536).iter().all(|b| *b == 0xaa),
        "held write reached the disk"
    );
    // Reads and flushes go on, on both members.
    qemu_io(&n.uri("r0"), &["read -P 0xaa 0 64k".into(), "flush".into()]);
    qemu_io(&n.uri("r1"), &["read -P 0 0 64k".into(), "flush".into()]);

    // What would change its identity is refused at once.
    refused(
        &n,
        &["role", "secondary", "r0"],
        75,
        "r0 is frozen (group r0 r1",
    );
    refused(&n, &["create", "r1"], 75, "in use by hastd");
    refused(
        &n,
        &["freeze", "r1"],
        75,
        "r1 is already frozen (group r0 r1",
    );
    refused(&n, &["freeze", "r0", "r1"], 75, "already frozen");
    assert!(w.running());

    // `thaw r1` thaws the group; the held write completes without error.
    n.hastctl_ok(&["thaw", "r1"]);
    let (ok, text) = w.finish();
    assert!(ok, "held write failed after the thaw:\n{text}");
    qemu_io(&n.uri("r0"), &["read -P 0xbb 0 64k".into()]);
    assert!(on_disk(&n, "r0", 0, 65536).iter().all(|b| *b == 0xbb));

    // Thawed already, by the command: 64; query 1.
    refused(
        &n,
        &["thaw", "r0"],
        64,
        "r0 is not frozen: thawed by hastctl thaw at ",
    );
    let out = n.hastctl(&["query", "r0"]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).starts_with("r0: not frozen, thawed at ")
            && stdout(&out).contains(" by hastctl thaw (group r0 r1"),
        "{}",
        stdout(&out)
    );
    let st = status(&n, "r0");
    assert_eq!(st["frozen"], false, "{st}");
    assert_eq!(st["freeze"]["state"], "thawed", "{st}");
    assert_eq!(st["freeze"]["thaw_reason"], "hastctl thaw", "{st}");
    // Never frozen: 64 as well, and the role change goes through now.
    n.hastctl_ok(&["role", "secondary", "r1"]);
    for r in ["r0", "r1"] {
        wait_freeze_events(&n, r, &[("freeze", "none"), ("thaw", "hastctl thaw")]);
    }
}

#[test]
fn the_timeout_thaws_and_thaw_then_fails_saying_so() {
    if !require_tool("qemu-io") {
        return;
    }
    let n = node("freeze-timeout", &["r0"], &["r0"]);
    let started = Instant::now();
    n.hastctl_ok(&["freeze", "-t", "2", "r0"]);
    let out = n.hastctl(&["query", "r0"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains(" s left\n"), "{}", stdout(&out));
    let left = status(&n, "r0")["freeze"]["ms_left"]
        .as_u64()
        .expect("ms_left");
    assert!(left <= 2000, "{left}");
    let w = HeldWrite::start(&n.uri("r0"), n.dir(), "held", 0xcc, 4096);
    // Thawed by itself: the held write completes, query exits 1.
    let thawed = wait_for(WAIT, || {
        (code(&n.hastctl(&["query", "r0"])) == 1).then_some(())
    });
    assert!(thawed.is_some(), "still frozen after {WAIT:?}");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let (ok, text) = w.finish();
    assert!(ok, "{text}");
    let err = refused(&n, &["thaw", "r0"], 65, "r0 was already thawed at ");
    assert!(
        err.contains(" by timeout, 2.") && err.contains("may not be coherent"),
        "{err}"
    );
    // It stays so until the next freeze.
    refused(&n, &["thaw", "r0"], 65, "by timeout");
    wait_freeze_events(&n, "r0", &[("freeze", "2"), ("thaw", "timeout")]);
    let st = status(&n, "r0");
    assert_eq!(st["freeze"]["thaw_reason"], "timeout", "{st}");
    // `-t 0` takes freeze_timeout (60 s by default).
    n.hastctl_ok(&["freeze", "r0"]);
    let st = status(&n, "r0");
    assert_eq!(st["freeze"]["timeout_ms"], 60_000, "{st}");
    n.hastctl_ok(&["thaw", "r0"]);
}

#[test]
fn a_group_with_a_resource_not_primary_freezes_nothing() {
    if !require_tool("qemu-io") {
        return;
    }
    let n = node("freeze-atomic", &["r0", "r1", "r2"], &["r0"]);
    n.hastctl_ok(&["role", "secondary", "r2"]);
    refused(
        &n,
        &["freeze", "r0", "r1"],
        77,
        "r1 is init, not primary: only a primary is frozen; nothing frozen",
    );
    refused(
        &n,
        &["freeze", "r0", "r2"],
        77,
        "r2 is secondary, not primary",
    );
    refused(&n, &["freeze", "r0", "nosuch"], 66, "unknown resource");
    let out = n.hastctl(&["query", "r0"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert_eq!(status(&n, "r0")["frozen"], false);
    // Writes go through at once, and no event was recorded.
    qemu_io(&n.uri("r0"), &["write -P 0x11 0 64k".into()]);
    assert!(freeze_events(&n, "r0").is_empty());
    refused(&n, &["thaw", "r0"], 64, "r0 is not frozen");
    refused(&n, &["freeze", "-t", "100000", "r0"], 64, "at most 86400 s");
}

#[test]
fn a_lost_peer_thaws_and_held_writes_complete() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut p = Pair::builder(bins!())
        .tag("freeze-peer")
        .file_size(64 * MIB)
        .start();
    p.setup(Side::A, WAIT);
    let a = Side::A;
    p.node(a).hastctl_ok(&["freeze", "-t", "-1", "r0"]);
    let mut w = HeldWrite::start(&p.uri(a), p.node(a).dir(), "held", 0xdd, 0);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(w.running(), "answered while frozen");
    p.kill9(Side::B);
    let thawed = wait_for(WAIT, || {
        (code(&p.node(a).hastctl(&["query", "r0"])) == 1).then_some(())
    });
    assert!(thawed.is_some(), "still frozen after the peer died");
    let (ok, text) = w.finish();
    assert!(ok, "held write failed: {text}");
    refused(p.node(a), &["thaw", "r0"], 65, "by peer lost");
    wait_freeze_events(
        p.node(a),
        "r0",
        &[("freeze", "none"), ("thaw", "peer lost")],
    );
    qemu_io(&p.uri(a), &["read -P 0xdd 0 64k".into()]);
}

/// `async`: a write is answered before the secondary applied it; the
/// freeze still waits for its REPLY (and flushes the peer), so while frozen
/// both copies are the same byte for byte, under a writer with many writes
/// in flight. The secondary's disk is slow to write (nbdkit's delay filter
/// behind nbdfuse, 5 ms a write), so its copy lags the primary's by many
/// writes: a freeze that neither drained the tails nor flushed the peer
/// is caught (seen: "frozen, the copies differ" with both removed; either
/// one alone is enough, since the peer's FLUSH follows its writes).
#[test]
fn a_frozen_async_pair_has_identical_copies() {
    if !require_python_nbd() || !require_tool("nbdkit") || !require_tool("nbdfuse") {
        return;
    }
    let mut p = Pair::builder(bins!())
        .tag("freeze-async")
        .file_size(64 * MIB)
        .replication("async")
        .fuse_disk_filtered(Side::B, &["--filter=delay", "delay-write=5ms"])
        .build();
    p.start();
    p.setup(Side::A, WAIT);
    let a = Side::A;
    let dir = p.node(a).dir().to_path_buf();
    let mut w = VersionedWriter::start(&p.uri(a), 0, 4096, &dir, "vw", 0, 14);
    w.wait_acked(2000, WAIT);
    for round in 0..5 {
        let before = w.acked();
        p.node(a).hastctl_ok(&["freeze", "-t", "30", "r0"]);
        let same = p.data_identical();
        p.node(a).hastctl_ok(&["thaw", "r0"]);
        if let Err(e) = same {
            panic!("round {round}: frozen, the copies differ: {e}");
        }
        w.wait_acked(before + 500, WAIT);
    }
    w.stop();
    p.assert_identical(WAIT);
}

#[test]
fn hastd_stopping_thaws_and_answers_held_writes() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut n = node("freeze-stop", &["r0"], &["r0"]);
    n.hastctl_ok(&["freeze", "-t", "-1", "r0"]);
    let mut w = HeldWrite::start(&n.uri("r0"), n.dir(), "held", 0xee, 0);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(w.running(), "answered while frozen");
    let st = n.stop();
    assert!(st.success(), "hastd exited {st} with a frozen resource");
    // Documented: the stop thaws first, so the held write is written and
    // answered with success before the demotion's drain.
    let (ok, text) = w.finish();
    assert!(ok, "held write: {text}");
    n.start_daemon();
    n.promote("r0");
    qemu_io(&n.uri("r0"), &["read -P 0xee 0 64k".into()]);
    wait_freeze_events(&n, "r0", &[("freeze", "none"), ("thaw", "hastd stopping")]);
    refused(&n, &["thaw", "r0"], 64, "r0 is not frozen");
}

#[test]
fn the_lease_wins_over_a_freeze() {
    if !require_tool("qemu-io") {
        return;
    }
    let n = node("freeze-lease", &["r0"], &["r0"]);
    n.hastctl_ok(&["freeze", "-t", "-1", "r0"]);
    n.hastctl_ok(&["lease", "-t", "4000", "r0"]);
    let mut w = HeldWrite::start(&n.uri("r0"), n.dir(), "held", 0x77, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.running(), "answered while frozen");
    // At the lease's end the group thaws (`demoted`) and the resource is
    // demoted; the held write fails (ESHUTDOWN), never acknowledged.
    let (ok, text) = w.finish();
    assert!(!ok, "a write held past the lease was acknowledged: {text}");
    let demoted = wait_for(WAIT, || {
        (status(&n, "r0")["role"] == "secondary").then_some(())
    });
    assert!(demoted.is_some(), "not demoted: {}", status(&n, "r0"));
    refused(&n, &["thaw", "r0"], 65, "by demoted");
    wait_freeze_events(&n, "r0", &[("freeze", "none"), ("thaw", "demoted")]);
    assert!(on_disk(&n, "r0", 0, 65536).iter().all(|b| *b == 0));
}

#[test]
fn a_reload_keeps_a_frozen_resources_identity() {
    let mut n = node("freeze-reload", &["r0"], &["r0"]);
    n.hastctl_ok(&["freeze", "-t", "-1", "r0"]);
    let l = n.layout().clone();
    let base = std::fs::read_to_string(&l.config_path).unwrap();
    let old = l.local("r0").display().to_string();
    let moved = base.replace(&old, &l.dir.join("r0b.img").display().to_string());
    assert_ne!(moved, base);
    std::fs::write(&l.config_path, &moved).unwrap();
    n.signal(libc::SIGHUP);
    let kept = wait_for(WAIT, || {
        n.log()
            .contains("frozen: the change of local or name is not applied")
            .then_some(())
    });
    assert!(kept.is_some(), "no refusal logged:\n{}", n.log());
    assert_eq!(code(&n.hastctl(&["query", "r0"])), 0, "no longer frozen");
    assert_eq!(status(&n, "r0")["role"], "primary");
    // Thawed, the same reload applies.
    n.hastctl_ok(&["thaw", "r0"]);
    n.signal(libc::SIGHUP);
    let applied = wait_for(WAIT, || {
        n.log()
            .contains("local or name changed, restarting the resource")
            .then_some(())
    });
    assert!(
        applied.is_some(),
        "not applied after the thaw:\n{}",
        n.log()
    );
    let init = wait_for(WAIT, || (status(&n, "r0")["role"] == "init").then_some(()));
    assert!(init.is_some(), "{}", status(&n, "r0"));
}

/// Reads `count` slots of `res`'s data area from its component file.
fn slots(n: &Node, res: &str, count: usize) -> Vec<u64> {
    coherence::slots(&on_disk(n, res, 0, count * coherence::SLOT))
}

#[test]
fn a_group_freeze_gives_a_coherent_copy_of_dependent_writes() {
    if !require_python_nbd() {
        return;
    }
    const SLOTS: usize = 64;
    let n = node("freeze-coherent", &["r0", "r1"], &["r0", "r1"]);
    let writer = DependentWriter::start(n.dir(), &n.uri("r0"), &n.uri("r1"), SLOTS);
    let progress = |n: &Node| slots(n, "r1", SLOTS).into_iter().max().unwrap_or(0);
    assert!(
        wait_for(WAIT, || (progress(&n) > 1000).then_some(())).is_some(),
        "the writer does not progress: {}",
        writer.output()
    );

    // Without a freeze, r0 then r1 copied a little apart: commits newer
    // than their records (the checker sees what it looks for).
    let mut seen = 0;
    for _ in 0..20 {
        let records = slots(&n, "r0", SLOTS);
        std::thread::sleep(Duration::from_millis(50));
        let commits = slots(&n, "r1", SLOTS);
        seen += coherence::violations(&records, &commits).len();
        if seen > 0 {
            break;
        }
    }
    assert!(
        seen > 0,
        "copies taken apart never showed a commit without its record"
    );
    eprintln!(
        "unfrozen copies taken 50 ms apart: {seen} slots with a commit newer than its record"
    );

    // Frozen as a group: the same copies, taken apart, are coherent.
    for round in 0..5 {
        let before = progress(&n);
        n.hastctl_ok(&["freeze", "-t", "30", "r0", "r1"]);
        let records = slots(&n, "r0", SLOTS);
        std::thread::sleep(Duration::from_millis(200));
        let commits = slots(&n, "r1", SLOTS);
        let again = slots(&n, "r0", SLOTS);
        n.hastctl_ok(&["thaw", "r0", "r1"]);
        let bad = coherence::violations(&records, &commits);
        assert!(
            bad.is_empty(),
            "round {round}: commits without records (slot, record, commit): {bad:?}"
        );
        assert_eq!(again, records, "round {round}: r0 changed while frozen");
        assert!(
            wait_for(WAIT, || (progress(&n) > before + 100).then_some(())).is_some(),
            "round {round}: the writer does not go on after the thaw"
        );
    }
    eprintln!(
        "5 frozen copies coherent; the writer reached n={}",
        progress(&n)
    );
    writer.finish();
}

/// README.md's freeze block, found by its first line and run by bash as
/// printed (only `hastctl` given the test's binary and config, and the NBD
/// address its port), on resources named `data` and `log` that
/// `dependent_writer.py` writes to meanwhile (records to `data`, commits to
/// `log`): the copies `nbdcopy` makes while frozen are coherent, the
/// `thaw` succeeds (its "thawed before we were done" is not printed) and
/// the block ends with `query`'s status 1 on the thawed group.
#[test]
fn the_readme_freeze_block_copies_a_coherent_group() {
    if !require_python_nbd() || !require_tool("nbdcopy") {
        return;
    }
    const SLOTS: usize = 64;
    let n = node("freeze-readme", &["data", "log"], &["data", "log"]);
    let writer = DependentWriter::start(n.dir(), &n.uri("data"), &n.uri("log"), SLOTS);
    let progress = |n: &Node| slots(n, "log", SLOTS).into_iter().max().unwrap_or(0);
    assert!(
        wait_for(WAIT, || (progress(&n) > 1000).then_some(())).is_some(),
        "the writer does not progress: {}",
        writer.output()
    );
    let l = n.layout();
    let hastctl = format!(
        "'{}' -c '{}' --node '{}'",
        n.bins().hastctl.display(),
        l.config_path.display(),
        l.node_name
    );
    let addr = format!("127.0.0.1:{}", l.nbd_port);
    let block = hast_testkit::readme::substitute(
        &hast_testkit::readme::sh_block("hastctl freeze -t 30 data log"),
        &[("hastctl", &hastctl), ("127.0.0.1", &addr)],
    );
    let copies = n.dir().join("copies");
    std::fs::create_dir(&copies).expect("mkdir copies");
    let before = progress(&n);
    let out = hast_testkit::run(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block])
            .current_dir(&copies),
        timeout_s(60),
    );
    let (said, err) = (stdout(&out), stderr(&out));
    assert_eq!(
        code(&out),
        1,
        "the block ends with `query` on a thawed group:\n{block}\nstdout: {said}\nstderr: {err}"
    );
    assert!(
        !said.contains("thawed before we were done"),
        "the group thawed before the copy was done:\n{said}\n{}",
        tail(n.log_path(), 30)
    );
    assert!(
        said.contains("data: not frozen, thawed at ")
            && said.contains(" by hastctl thaw (group data log"),
        "query's line:\n{said}"
    );
    let size = n.datasize("data");
    let image = |name: &str| {
        let raw = std::fs::read(copies.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(raw.len() as u64, size, "{name}: the resource's size");
        coherence::slots(&raw[..SLOTS * coherence::SLOT])
    };
    let (records, commits) = (image("data.raw"), image("log.raw"));
    assert!(
        commits.iter().max().is_some_and(|&c| c >= before),
        "log.raw holds the writes made before the block: {commits:?}"
    );
    let bad = coherence::violations(&records, &commits);
    assert!(
        bad.is_empty(),
        "commits without records in the copies (slot, record, commit): {bad:?}"
    );
    // `-t 30` as printed, thawed by the block's `thaw`.
    wait_freeze_events(&n, "data", &[("freeze", "30"), ("thaw", "hastctl thaw")]);
    assert!(
        wait_for(WAIT, || (progress(&n) > before + 100).then_some(())).is_some(),
        "the writer does not go on after the thaw"
    );
    writer.finish();
}
