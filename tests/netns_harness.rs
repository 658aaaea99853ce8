//! The network-namespace harness (`hast_testkit::cluster`) tested with real traffic:
//! hosts reach each other over the bridge; `cut`, `cut_oneway`, `isolate`, `heal`
//! and `heal_all` drop exactly the traffic they name (new and established TCP
//! connections, UDP one way); processes run inside their namespace under their own
//! PID and can be frozen, continued and killed; dropping a `Net` — also from a
//! panicking test — leaves no namespace and no process behind; `cleanup_stale`
//! removes only what dead runs of the harness left.
//!
//! The traffic comes from a small python probe (`PROBE` below, python3 only: CI
//! installs iproute2, iptables and python3, not netcat): per host one server that
//! echoes TCP lines and logs every UDP datagram, and short-lived clients. Needs
//! root; outside CI it skips loudly without.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hast_testkit::cluster::{self, Net, NsProc};
use hast_testkit::{run, timeout_s, wait_for, TempDir, PYTHON};

/// The port every probe server listens on (TCP and UDP), on its host's address.
const PORT: u16 = 7000;
/// Seconds a TCP probe waits for its connection and echo: the time in which a
/// dropped SYN or line counts as "does not get through".
const NEGATIVE_PROBE_S: &str = "1.0";
/// How long a datagram that should not arrive is waited for.
const UDP_QUIET: Duration = Duration::from_millis(1000);

const PROBE: &str = r#"
import os, socket, sys, threading, time

def serve(addr, port):
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port)); t.listen(64)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, port))
    def echo(c):
        f = c.makefile("rwb", buffering=0)
        for line in f:
            f.write(line)
    def accept():
        while True:
            c, _ = t.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    print("ready", flush=True)
    while True:
        data, peer = u.recvfrom(2048)
        print("udp %s from %s" % (data.decode(), peer[0]), flush=True)

def tcp(addr, port, token, timeout):
    try:
        s = socket.create_connection((addr, port), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(token.encode() + b"\n")
        got = s.makefile("rb").readline()
    except OSError as e:
        print("tcp fail: %r" % e); sys.exit(1)
    sys.exit(0 if got == token.encode() + b"\n" else 1)

def udp(addr, port, token):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(token.encode(), (addr, port)); time.sleep(0.02)

def ping(addr, port, interval):
    s = socket.create_connection((addr, port), timeout=5)
    s.settimeout(120)
    f = s.makefile("rwb", buffering=0)
    i = 0
    while True:
        f.write(b"ping %d\n" % i)
        line = f.readline()
        if not line:
            print("closed", flush=True); sys.exit(1)
        print("pong %d" % i, flush=True)
        i += 1
        time.sleep(interval)

def tick(interval):
    i = 0
    while True:
        print("tick %d" % i, flush=True); i += 1; time.sleep(interval)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "serve": serve(args[0], int(args[1]))
elif mode == "tcp": tcp(args[0], int(args[1]), args[2], float(args[3]))
elif mode == "udp": udp(args[0], int(args[1]), args[2])
elif mode == "ping": ping(args[0], int(args[1]), float(args[2]))
elif mode == "tick": tick(float(args[0]))
elif mode == "pid": print(os.getpid(), flush=True)
"#;

static TOKEN: AtomicU64 = AtomicU64::new(0);

fn token(what: &str) -> String {
    format!("{what}-{}", TOKEN.fetch_add(1, Ordering::Relaxed))
}

/// A Net with a probe server on each host.
struct Lab {
    // Servers before the Net: they stop before their namespaces go.
    servers: Vec<(String, NsProc)>,
    net: Net,
    probe: PathBuf,
    dir: TempDir,
}

impl Lab {
    fn new(tag: &str, hosts: &[&str]) -> Option<Lab> {
        let net = Net::new(hosts)?;
        let dir = TempDir::new(tag);
        let probe = dir.join("probe.py");
        std::fs::write(&probe, PROBE).expect("write probe");
        let mut lab = Lab {
            servers: Vec::new(),
            net,
            probe,
            dir,
        };
        for h in hosts {
            let addr = lab.net.addr(h).to_string();
            let p = lab.spawn(
                h,
                &format!("server-{h}"),
                &["serve", &addr, &PORT.to_string()],
            );
            lab.servers.push((h.to_string(), p));
        }
        for (h, p) in &mut lab.servers {
            let log = p.log_path().to_path_buf();
            let up = wait_for(timeout_s(10), || {
                if !p.is_running() {
                    return Some(false);
                }
                read(&log).contains("ready").then_some(true)
            });
            assert_eq!(up, Some(true), "probe server on {h}:\n{}", p.tail(20));
        }
        Some(lab)
    }

    fn probe_cmd(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = self.net.command(host, PYTHON);
        cmd.arg("-B").arg(&self.probe).args(args);
        cmd
    }

    fn spawn(&self, host: &str, name: &str, args: &[&str]) -> NsProc {
        let log = self.dir.join(format!("{name}.log"));
        NsProc::spawn(&mut self.probe_cmd(host, args), name, &log)
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    /// A new TCP connection from `from` to `to`'s server echoes a line within `secs`.
    fn tcp(&self, from: &str, to: &str, secs: &str) -> bool {
        let addr = self.net.addr(to).to_string();
        let out = run(
            &mut self.probe_cmd(from, &["tcp", &addr, &PORT.to_string(), &token("t"), secs]),
            timeout_s(30),
        );
        out.status.success()
    }

    fn tcp_ok(&self, from: &str, to: &str) -> bool {
        self.tcp(from, to, "5.0")
    }

    fn tcp_blocked(&self, from: &str, to: &str) -> bool {
        !self.tcp(from, to, NEGATIVE_PROBE_S)
    }

    fn server_log(&self, host: &str) -> String {
        let (_, p) = self
            .servers
            .iter()
            .find(|(h, _)| h == host)
            .expect("server of host");
        read(p.log_path())
    }

    /// A datagram from `from` reaches `to`'s server within `wait`.
    fn udp_arrives(&self, from: &str, to: &str, wait: Duration) -> bool {
        let tok = token(&format!("u{from}{to}"));
        let addr = self.net.addr(to).to_string();
        let out = run(
            &mut self.probe_cmd(from, &["udp", &addr, &PORT.to_string(), &tok]),
            timeout_s(30),
        );
        assert!(
            out.status.success(),
            "sending a datagram {from} -> {to} failed (a DROP at the sender?): {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let needle = format!("udp {tok} from {}", self.net.addr(from));
        wait_for(wait, || self.server_log(to).contains(&needle).then_some(())).is_some()
    }

    fn assert_all_connected(&self, hosts: &[&str], when: &str) {
        for a in hosts {
            for b in hosts {
                if a != b {
                    assert!(self.tcp_ok(a, b), "{when}: {a} cannot reach {b}");
                }
            }
        }
    }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn count_lines(path: &Path, prefix: &str) -> usize {
    read(path).lines().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn cut_oneway_isolate_and_heal_drop_exactly_the_named_traffic() {
    let hosts = ["a", "b", "w", "c"];
    let Some(lab) = Lab::new("netns-faults", &hosts) else {
        return;
    };
    let net = &lab.net;
    eprintln!(
        "hosts {:?}, iptables {}",
        hosts.map(|h| (h, net.addr(h))),
        net.iptables().display()
    );
    lab.assert_all_connected(&hosts, "fresh net");

    net.cut("a", "b");
    assert!(lab.tcp_blocked("a", "b"), "cut(a,b): a still reaches b");
    assert!(lab.tcp_blocked("b", "a"), "cut(a,b): b still reaches a");
    for (x, y) in [
        ("a", "w"),
        ("w", "a"),
        ("b", "w"),
        ("w", "b"),
        ("c", "a"),
        ("c", "b"),
    ] {
        assert!(lab.tcp_ok(x, y), "cut(a,b) must not cut {x} -> {y}");
    }
    assert_eq!(
        net.faults(),
        [("a".to_string(), "b".to_string()), ("b".into(), "a".into())]
    );
    net.heal("a", "b");
    assert!(lab.tcp_ok("a", "b") && lab.tcp_ok("b", "a"), "heal(a,b)");
    assert!(net.faults().is_empty());

    net.cut_oneway("a", "b");
    assert!(
        !lab.udp_arrives("a", "b", UDP_QUIET),
        "cut_oneway(a,b): a datagram a -> b arrived"
    );
    assert!(
        lab.udp_arrives("b", "a", timeout_s(5)),
        "cut_oneway(a,b): a datagram b -> a was lost"
    );
    assert!(
        lab.udp_arrives("a", "w", timeout_s(5)),
        "cut_oneway(a,b) hit a -> w"
    );
    // A TCP handshake needs both directions: it fails either way.
    assert!(lab.tcp_blocked("a", "b") && lab.tcp_blocked("b", "a"));
    net.heal_all();
    assert!(
        lab.udp_arrives("a", "b", timeout_s(5)),
        "heal_all after cut_oneway"
    );

    net.isolate("w");
    for other in ["a", "b", "c"] {
        assert!(lab.tcp_blocked("w", other), "isolate(w): w reaches {other}");
        assert!(lab.tcp_blocked(other, "w"), "isolate(w): {other} reaches w");
    }
    assert!(
        !lab.udp_arrives("c", "w", UDP_QUIET),
        "isolate(w): UDP c -> w"
    );
    lab.assert_all_connected(&["a", "b", "c"], "isolate(w), among the others");
    // Overlapping faults: healing one pair keeps the rest of the isolation.
    net.heal("w", "a");
    assert!(lab.tcp_ok("w", "a") && lab.tcp_ok("a", "w"), "heal(w,a)");
    assert!(
        lab.tcp_blocked("w", "b"),
        "heal(w,a) must keep w cut from b"
    );

    net.heal_all();
    assert!(net.faults().is_empty());
    for h in hosts {
        let rules = net.fault_rules(h);
        assert!(
            !rules.contains("DROP"),
            "heal_all left rules on {h}:\n{rules}"
        );
    }
    lab.assert_all_connected(&hosts, "after heal_all");
}

#[test]
fn an_established_tcp_connection_stalls_during_a_cut_and_resumes_after_heal() {
    let Some(lab) = Lab::new("netns-estab", &["a", "c", "w"]) else {
        return;
    };
    // A fault in place before the connection exists: rules that only matched new
    // connections (conntrack state NEW) would now track it and let it through.
    lab.net.cut("w", "a");
    let addr = lab.net.addr("a").to_string();
    let mut pinger = lab.spawn("c", "pinger", &["ping", &addr, &PORT.to_string(), "0.05"]);
    let log = pinger.log_path().to_path_buf();
    let going = wait_for(timeout_s(10), || {
        (count_lines(&log, "pong") >= 5).then_some(())
    });
    assert!(
        going.is_some(),
        "no pongs before the cut:\n{}",
        pinger.tail(20)
    );

    lab.net.cut("c", "a");
    // One exchange may have been on its way when the rule went in.
    std::thread::sleep(Duration::from_millis(300));
    let frozen = count_lines(&log, "pong");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count_lines(&log, "pong"),
        frozen,
        "pongs kept coming over an established connection during the cut"
    );
    assert!(
        pinger.is_running(),
        "the connection broke instead of stalling:\n{}",
        pinger.tail(20)
    );

    lab.net.heal_all();
    let t0 = Instant::now();
    let resumed = wait_for(timeout_s(30), || {
        (count_lines(&log, "pong") > frozen + 3).then_some(())
    });
    assert!(
        resumed.is_some(),
        "the connection did not resume after heal:\n{}",
        pinger.tail(20)
    );
    assert!(
        pinger.is_running() && !read(&log).contains("closed"),
        "same connection expected (TCP retransmits, no reconnect)"
    );
    eprintln!(
        "established connection resumed {:?} after heal",
        t0.elapsed()
    );
}

#[test]
fn processes_run_in_their_namespace_under_their_own_pid_and_can_be_frozen() {
    let Some(lab) = Lab::new("netns-proc", &["a"]) else {
        return;
    };
    // `ip netns exec` execs: the child we spawned is the program itself.
    let mut p = lab.spawn("a", "pid", &["pid"]);
    let st = p.wait_timeout(timeout_s(10)).expect("pid probe exits");
    assert!(st.success(), "{}", p.tail(10));
    assert_eq!(read(p.log_path()).trim(), p.pid().to_string());

    let mut t = lab.spawn("a", "ticker", &["tick", "0.02"]);
    let log = t.log_path().to_path_buf();
    assert!(wait_for(timeout_s(10), || (count_lines(&log, "tick") > 3)
        .then_some(()))
    .is_some());
    // It lives in the host's namespace, not ours.
    use std::os::unix::fs::MetadataExt;
    let ns_ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).expect(p);
    let its = ns_ino(&format!("/proc/{}/ns/net", t.pid()));
    assert_eq!(its, ns_ino(&format!("/run/netns/{}", lab.net.ns_name("a"))));
    assert_ne!(its, ns_ino("/proc/self/ns/net"));

    t.stop();
    assert_eq!(t.state(), Some('T'));
    let n = count_lines(&log, "tick");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count_lines(&log, "tick"),
        n,
        "a stopped process kept ticking"
    );
    assert!(t.is_running() && t.is_stopped());
    t.cont();
    assert!(
        wait_for(timeout_s(10), || (count_lines(&log, "tick") > n + 3)
            .then_some(()))
        .is_some(),
        "no ticks after SIGCONT"
    );

    // A stopped process still ends on terminate (SIGTERM is followed by SIGCONT).
    t.stop();
    let (st, by_term) = t.terminate(timeout_s(10));
    assert!(by_term, "terminate needed SIGKILL for a stopped process");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGTERM)
    );
    assert!(!t.is_running());

    let mut k = lab.spawn("a", "victim", &["tick", "0.02"]);
    k.stop();
    let st = k.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    assert_eq!(k.state(), None);
}

fn present(names: &[String]) -> Vec<String> {
    let all = cluster::netns_list();
    names.iter().filter(|n| all.contains(n)).cloned().collect()
}

fn names_of(net: &Net) -> Vec<String> {
    let mut v: Vec<String> = net
        .host_names()
        .iter()
        .map(|h| net.ns_name(h).to_string())
        .collect();
    v.push(net.switch_ns().to_string());
    v
}

/// Reap `child` (bounded); its exit signal.
fn reap(child: &mut std::process::Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let st = wait_for(timeout_s(10), || child.try_wait().ok().flatten())?;
    st.signal()
}

#[test]
fn dropping_a_net_removes_everything_even_when_the_test_panics() {
    let Some(first) = Net::new(&["a", "b"]) else {
        return;
    };
    let second = Net::new(&["a", "b"]).expect("a second Net");
    let (n1, n2) = (names_of(&first), names_of(&second));
    assert!(n1.iter().all(|n| !n2.contains(n)), "{n1:?} vs {n2:?}");
    assert_ne!(first.addr("a"), second.addr("a"), "per-Net subnets");
    assert_eq!(present(&n1), n1);
    drop(first);
    assert!(
        present(&n1).is_empty(),
        "left after drop: {:?}",
        present(&n1)
    );
    assert_eq!(present(&n2), n2, "dropping one Net touched another");
    drop(second);
    assert!(present(&n2).is_empty());

    // A panicking test with a process it forgot to stop.
    let names = std::sync::Mutex::new(Vec::new());
    let child = std::sync::Mutex::new(None);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Net::new(&["a", "w"]).expect("Net");
        *names.lock().expect("names") = names_of(&net);
        let c = net
            .command("w", PYTHON)
            .args(["-c", "import time; time.sleep(600)"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        *child.lock().expect("child") = Some(KillOnDrop(c));
        panic!("deliberate panic with a Net alive");
    }));
    assert!(res.is_err());
    let names = names.into_inner().expect("names");
    assert_eq!(names.len(), 3);
    assert!(
        present(&names).is_empty(),
        "left after a panic: {:?}",
        present(&names)
    );
    let mut c = child.into_inner().expect("child").expect("spawned");
    assert_eq!(
        reap(&mut c.0),
        Some(libc::SIGKILL),
        "the forgotten process was not killed"
    );
}

#[test]
fn cleanup_stale_removes_only_namespaces_of_dead_harness_runs() {
    // Net::new checks root and tools (and skips loudly without them).
    let Some(live) = Net::new(&["a"]) else {
        return;
    };
    let mut gone = Command::new("true").spawn().expect("spawn true");
    gone.wait().expect("wait true");
    let dead_pid = gone.id();
    let stale = cluster::ns_name_for(dead_pid, 0, "a");
    let foreign = format!("h3foreign-{}-0-a", std::process::id());
    let ip = hast_testkit::which("ip").expect("ip");
    // Removed even if an assertion below fails.
    let _guards = [NsGuard(stale.clone()), NsGuard(foreign.clone())];
    for ns in [&stale, &foreign] {
        let out = run(Command::new(&ip).args(["netns", "add", ns]), timeout_s(20));
        assert!(out.status.success(), "ip netns add {ns}");
    }
    // A process left running inside the stale namespace.
    let mut orphan = KillOnDrop(
        Command::new(&ip)
            .args([
                "netns",
                "exec",
                &stale,
                PYTHON,
                "-c",
                "import time; time.sleep(600)",
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawn orphan"),
    );
    let inside = wait_for(timeout_s(10), || {
        let out = run(
            Command::new(&ip).args(["netns", "pids", &stale]),
            timeout_s(20),
        );
        (!out.stdout.is_empty()).then_some(())
    });
    assert!(inside.is_some());

    cluster::cleanup_stale();
    let all = cluster::netns_list();
    assert!(!all.contains(&stale), "stale namespace kept");
    assert!(
        all.contains(&foreign),
        "a namespace of another owner was removed"
    );
    for ns in names_of(&live) {
        assert!(all.contains(&ns), "live harness namespace {ns} removed");
    }
    assert_eq!(reap(&mut orphan.0), Some(libc::SIGKILL));
}

/// Deletes a namespace this test made by hand, if it still exists.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if cluster::netns_list().contains(&self.0) {
            if let Some(ip) = hast_testkit::which("ip") {
                let _ = run(
                    Command::new(ip).args(["netns", "del", &self.0]),
                    timeout_s(20),
                );
            }
        }
    }
}

/// A child killed by PID and reaped when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = reap(&mut self.0);
        }
    }
}

/// `ok` lines of a follow_writer history acknowledged by `uri`.
fn acks_from(history: &Path, uri: &str) -> usize {
    read(history)
        .lines()
        .filter(|l| l.starts_with("ok ") && l.split_whitespace().nth(2) == Some(uri))
        .count()
}

#[test]
fn follow_writer_leaves_a_partitioned_server_for_the_reachable_one() {
    if !(hast_testkit::require_python_nbd() && hast_testkit::require_tool("qemu-nbd")) {
        return;
    }
    let Some(net) = Net::new(&["a", "b", "c"]) else {
        return;
    };
    let dir = TempDir::new("netns-follow");
    let mut servers = Vec::new();
    let mut uris = Vec::new();
    for h in ["a", "b"] {
        let img = dir.join(format!("{h}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let addr = net.addr(h).to_string();
        let mut cmd = net.command(h, "qemu-nbd");
        cmd.args(["-f", "raw", "-t", "-b", &addr, "-p", "10809", "-x", "r0"])
            .arg(&img);
        let log = dir.join(format!("qemu-nbd-{h}.log"));
        servers.push(NsProc::spawn(&mut cmd, &format!("qemu-nbd-{h}"), &log).expect("qemu-nbd"));
        uris.push(format!("nbd://{addr}:10809/r0"));
    }
    // b is unreachable from the client: its SYNs vanish, so a sequential connect
    // would sit out the whole --connect-timeout on it.
    net.cut("c", "b");
    let history = dir.join("history");
    let stop = dir.join("stop");
    let args = [
        "--uri",
        &uris[1],
        "--uri",
        &uris[0],
        "--history",
        history.to_str().expect("utf8"),
        "--blocks",
        "4096",
        "--connect-timeout",
        "3",
        "--request-timeout",
        "1",
        "--reconnect-timeout",
        "30",
        "--duration",
        "120",
        "--stop-file",
        stop.to_str().expect("utf8"),
    ];
    let mut writer = NsProc::spawn(
        &mut net.in_ns(
            "c",
            &hast_testkit::python_command("follow_writer.py", &args),
        ),
        "follow_writer",
        &dir.join("writer.out"),
    )
    .expect("writer");
    let acks = |uri: &str, n: usize, writer: &mut NsProc| {
        let ok = wait_for(timeout_s(30), || {
            if !writer.is_running() {
                return Some(false);
            }
            (acks_from(&history, uri) >= n).then_some(true)
        });
        assert_eq!(ok, Some(true), "{n} acks from {uri}:\n{}", writer.tail(30));
    };
    acks(&uris[0], 200, &mut writer);

    // a is partitioned away with requests in flight; b becomes reachable.
    net.cut("c", "a");
    net.heal("c", "b");
    acks(&uris[1], 200, &mut writer);
    std::fs::write(&stop, b"").expect("stop");
    let st = writer.wait_timeout(timeout_s(30)).expect("writer stops");
    assert!(st.success(), "{}", writer.tail(30));
    let text = read(writer.log_path());
    let line = text.lines().find(|l| l.starts_with('{')).expect("summary");
    let s: serde_json::Value = serde_json::from_str(line).expect("json");
    eprintln!("writer: {s}");
    let first = s["first_ack_s"].as_f64().expect("first ack");
    assert!(
        first < 2.0,
        "first ack after {first} s: the connect to the partitioned server held up the others"
    );
    let o = &s["outages"][0];
    assert_eq!(o["from"], uris[0].as_str(), "{s}");
    assert_eq!(o["to"], uris[1].as_str(), "{s}");
    assert_eq!(o["reason"], "ETIMEDOUT", "{s}");
    let after = o["after_loss_s"].as_f64().expect("resolved");
    assert!(after < 2.5, "moving to the reachable server took {after} s");
    assert!(
        read(&history).contains(" ETIMEDOUT\n"),
        "abandoned writes are recorded"
    );
}

/// The hangable disk of the failover tests (`hast_testkit::faults::FuseDisk`):
/// a write into it waits while the disk hangs and completes after heal; a
/// writer stuck in it survives SIGKILL until the FUSE connection is aborted,
/// which frees it at once; the file behind it holds what was written.
#[test]
fn a_fuse_disk_hangs_heals_and_a_writer_stuck_in_it_can_be_freed() {
    use hast_testkit::faults::FuseDisk;
    if !(hast_testkit::require_root()
        && hast_testkit::require_fuse()
        && hast_testkit::require_tools(&["nbdkit", "nbdfuse", "fusermount3", "dd"]))
    {
        return;
    }
    let dir = TempDir::new("fusedisk");
    let file = dir.join("disk.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk image");
    let mut disk = FuseDisk::new(&file, dir.path());
    let target = disk.path();
    let dd = |seek: u32| {
        let mut cmd = Command::new("dd");
        cmd.args([
            "if=/dev/urandom",
            "bs=4096",
            "count=1",
            "conv=notrunc,fsync",
        ])
        .arg(format!("seek={seek}"))
        .arg(format!("of={}", target.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        cmd.spawn().expect("spawn dd")
    };
    let finished = |c: &mut std::process::Child, bound: Duration| {
        wait_for(bound, || {
            let st = c.try_wait().ok().flatten();
            if st.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            st
        })
    };
    // Hang, then heal: the write completes.
    disk.hang();
    let mut w = dd(1);
    assert!(
        finished(&mut w, Duration::from_secs(2)).is_none(),
        "a write went through a hung disk"
    );
    disk.heal();
    let st = finished(&mut w, timeout_s(20)).expect("the write did not complete after heal");
    assert!(st.success(), "dd after heal: {st}");
    let data = std::fs::read(&file).expect("read the file behind the disk");
    assert!(
        data[4096..8192].iter().any(|b| *b != 0),
        "the write is not in the file"
    );
    // Hang, SIGKILL the stuck writer, abort the connection: it dies.
    disk.hang();
    let mut w = dd(2);
    assert!(
        finished(&mut w, Duration::from_secs(2)).is_none(),
        "a write went through a hung disk"
    );
    let _ = w.kill();
    let killed = finished(&mut w, Duration::from_secs(2));
    println!(
        "writer stuck in the hung disk: SIGKILL alone {}",
        if killed.is_some() {
            "freed it"
        } else {
            "did not free it"
        }
    );
    disk.abort();
    assert!(
        killed.is_some() || finished(&mut w, timeout_s(10)).is_some(),
        "the writer stuck in the disk did not die after the FUSE connection was aborted"
    );
    disk.release();
}
