//! `hastmon` and `hastmonctl` from the outside, on loopback without
//! namespaces: usage and config errors with their sysexits(3) statuses and
//! `file:line`, the daemon's pidfile and control socket, status output,
//! role changes, and refusals that change nothing (a promotion nobody can
//! grant, an outdate from a non-primary).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hast_testkit::{free_port, run, timeout_s, wait_for, Proc, TempDir};

const EX_USAGE: i32 = 64;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_TEMPFAIL: i32 = 75;
const EX_CONFIG: i32 = 78;

fn hastmon() -> &'static str {
    env!("CARGO_BIN_EXE_hastmon")
}
fn hastmonctl() -> &'static str {
    env!("CARGO_BIN_EXE_hastmonctl")
}

fn ctl(conf: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(hastmonctl());
    cmd.arg("-c").arg(conf).args(["--node", "nodea"]).args(args);
    run(&mut cmd, timeout_s(60))
}

/// `hastmonctl` with a config text written beside the test's own.
fn ctl_with(text: &str, dir: &Path, args: &[&str]) -> Output {
    let conf = dir.join("hastmonctl.conf");
    std::fs::write(&conf, text).unwrap();
    ctl(&conf, args)
}

#[track_caller]
fn assert_exit(out: &Output, code: i32, what: &str, stderr_has: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.lines().next().unwrap_or("").contains(stderr_has),
        "{what}: first stderr line should contain {stderr_has:?}:\n{err}"
    );
}

/// A config for nodea whose two remotes (nodeb, nodew) listen nowhere.
fn config(dir: &Path) -> PathBuf {
    let exec = dir.join("exec.sh");
    std::fs::write(
        &exec,
        "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/exec.log\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&exec, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let text = format!(
        "control {d}/mon.sock\npidfile {d}/mon.pid\nstate_dir {d}/state\nlisten tcp://127.0.0.1:{p1}\nhastd_control none\n\
         key {{ secret \"0123456789abcdef0123\" }}\n\
         resource r0 {{\n  exec {exec}\n  on nodea {{ remote tcp://127.0.0.1:{p2} tcp://127.0.0.1:{p3} }}\n  \
         on nodeb {{ remote tcp://127.0.0.1:{p1} }}\n  on nodew {{ remote tcp://127.0.0.1:{p1} }}\n}}\n",
        d = dir.display(),
        exec = exec.display()
    );
    let conf = dir.join("hastmon.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

fn start(conf: &Path, dir: &Path) -> Proc {
    let mut cmd = Command::new(hastmon());
    cmd.arg("-F").arg("-c").arg(conf).args(["--node", "nodea"]);
    let p =
        Proc::spawn(&mut cmd, "hastmon", Some(&dir.join("hastmon.log"))).expect("spawn hastmon");
    let sock = dir.join("mon.sock");
    assert!(
        wait_for(timeout_s(20), || sock.exists().then_some(())).is_some(),
        "hastmon did not start"
    );
    p
}

#[test]
fn usage_and_config_errors() {
    let dir = TempDir::new("hastmonctl-errors");
    let conf = config(dir.path());
    let out = ctl(&conf, &["role", "boss", "r0"]);
    assert_exit(&out, EX_USAGE, "unknown role", "unknown role");
    let out = ctl(&conf, &["frobnicate"]);
    assert_exit(&out, EX_USAGE, "unknown command", "hastmonctl:");
    let out = ctl(&dir.join("missing.conf"), &["status"]);
    assert_exit(&out, EX_NOINPUT, "missing config", "missing.conf");
    let bad = dir.join("bad.conf");
    std::fs::write(
        &bad,
        "key { secret \"0123456789abcdef0123\" }\nheartbeat_interval soon\n",
    )
    .unwrap();
    let out = ctl(&bad, &["status"]);
    assert_exit(
        &out,
        EX_CONFIG,
        "bad duration",
        &format!("{}:2:", bad.display()),
    );
    let mut cmd = Command::new(hastmon());
    cmd.arg("-F").arg("-c").arg(&bad);
    let out = run(&mut cmd, timeout_s(20));
    assert_exit(
        &out,
        EX_CONFIG,
        "hastmon with a bad config",
        &format!("{}:2:", bad.display()),
    );
    let mut cmd = Command::new(hastmon());
    cmd.arg("-x");
    assert_exit(
        &run(&mut cmd, timeout_s(20)),
        EX_USAGE,
        "hastmon -x",
        "hastmon:",
    );
    // No daemon.
    let out = ctl(&conf, &["status"]);
    assert_exit(&out, EX_UNAVAILABLE, "no daemon", "is hastmon running?");

    // Issue 16: a host named in no resource started and watched nothing.
    let mut cmd = Command::new(hastmon());
    cmd.arg("-F")
        .arg("-c")
        .arg(&conf)
        .args(["--node", "elsewhere"]);
    let out = run(&mut cmd, timeout_s(20));
    assert_exit(
        &out,
        EX_CONFIG,
        "hastmon on a host no resource names",
        "no resource has an \"on elsewhere\" section (nodes named: nodea, nodeb, nodew)",
    );
    // Issue 16: the example's placeholder secret was accepted.
    let example = std::fs::read_to_string(
        hast_testkit::env::repo_root().join("contrib/hastmon/hastmon.conf.example"),
    )
    .unwrap();
    let copied = dir.join("example.conf");
    std::fs::write(&copied, &example).unwrap();
    let line = 1 + example
        .lines()
        .position(|l| l.trim_start().starts_with("secret \""))
        .expect("the example sets a secret");
    let mut cmd = Command::new(hastmon());
    cmd.arg("-F")
        .arg("-c")
        .arg(&copied)
        .args(["--node", "nodea"]);
    assert_exit(
        &run(&mut cmd, timeout_s(20)),
        EX_CONFIG,
        "hastmon on the example as is",
        &format!(
            "{}:{line}: the secret is the example's placeholder",
            copied.display()
        ),
    );
}

#[test]
fn daemon_status_roles_and_refusals() {
    let dir = TempDir::new("hastmonctl-daemon");
    let conf = config(dir.path());
    let mut mon = start(&conf, dir.path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("mon.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "control socket mode");

    // A second instance on the same pidfile is refused.
    let mut cmd = Command::new(hastmon());
    cmd.arg("-F").arg("-c").arg(&conf).args(["--node", "nodea"]);
    assert_exit(
        &run(&mut cmd, timeout_s(20)),
        EX_TEMPFAIL,
        "second hastmon",
        "already running",
    );

    // Status, text and JSON.
    let out = ctl(&conf, &["status"]);
    assert!(out.status.success(), "status: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for field in [
        "r0:",
        "role: init",
        "worker: hastmon[",
        "remotes:",
        "disconnected",
        "state: stopped",
        "epoch: 0",
        "attempts: 0 of 3",
        "complaints: 0",
        "heartbeat: 1000 ms",
    ] {
        assert!(text.contains(field), "status lacks {field:?}:\n{text}");
    }
    let out = ctl(&conf, &["status", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v[0]["role"], "init");
    assert_eq!(v[0]["remotes"].as_array().map(Vec::len), Some(2));
    let out = ctl(&conf, &["status", "r9"]);
    assert_exit(&out, EX_NOINPUT, "unknown resource", "r9");

    // Secondary: the exec script is told.
    assert!(ctl(&conf, &["role", "secondary", "all"]).status.success());
    let log = dir.join("exec.log");
    assert!(
        wait_for(timeout_s(10), || std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("role secondary")))
        .is_some(),
        "exec script not run for role secondary"
    );

    // Nobody can grant a promotion (both remotes are down): refused, nothing changes.
    let out = ctl(&conf, &["role", "primary", "r0"]);
    assert_exit(
        &out,
        EX_TEMPFAIL,
        "promotion without a watchdog",
        "not promoted",
    );
    let out = ctl(&conf, &["status", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["role"], "secondary",
        "a refused promotion changes nothing"
    );
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("role primary"));

    // hastd's fence hook on a node that is not primary: refused.
    let out = ctl(&conf, &["outdate", "-e", "1", "-s", "1", "r0"]);
    assert_exit(
        &out,
        EX_TEMPFAIL,
        "outdate from a secondary",
        "not the primary",
    );

    // SIGHUP: new timing applies, a new resource appears (in init), the
    // running role stays; a bad file changes nothing.
    let text = std::fs::read_to_string(&conf).unwrap();
    let added = text.replace("resource r0 {", "heartbeat_interval 500ms\nresource r0 {")
        + &text[text.find("resource r0 {").unwrap()..].replace("resource r0", "resource r1");
    std::fs::write(&conf, &added).unwrap();
    mon.signal(libc::SIGHUP);
    let reloaded = wait_for(timeout_s(10), || {
        let v: serde_json::Value =
            serde_json::from_slice(&ctl(&conf, &["status", "--json"]).stdout).ok()?;
        (v.as_array()?.len() == 2 && v[0]["heartbeat_ms"] == 500).then_some(v)
    })
    .expect("SIGHUP applied the new configuration");
    assert_eq!(
        reloaded[0]["role"], "secondary",
        "r0 kept its role: {reloaded}"
    );
    assert_eq!(reloaded[1]["name"], "r1");
    assert_eq!(reloaded[1]["role"], "init");
    std::fs::write(&conf, "resource r0 {\n  bogus 1\n}\n").unwrap();
    mon.signal(libc::SIGHUP);
    let log = dir.join("hastmon.log");
    assert!(
        wait_for(timeout_s(10), || std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("reload failed")))
        .is_some(),
        "a bad configuration is reported"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ctl_with(&added, dir.path(), &["status", "--json"]).stdout)
            .unwrap();
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(2),
        "the running configuration stays: {v}"
    );
    std::fs::write(&conf, &added).unwrap();

    // Watchdog role, then SIGTERM: exit 0, socket gone.
    assert!(ctl(&conf, &["role", "watchdog", "r0"]).status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&ctl(&conf, &["status", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["role"], "watchdog");
    assert!(
        v[0]["witness"].is_object(),
        "the watchdog shows its state: {v}"
    );
    mon.signal(libc::SIGTERM);
    let st = mon
        .wait_timeout(Duration::from_secs(10))
        .expect("hastmon exits on SIGTERM");
    assert!(st.success(), "exit status {st}");
    assert!(!dir.join("mon.sock").exists(), "control socket removed");
}

/// As hastd for hast.conf: a `remote` host that does not resolve is a
/// warning naming hastmon.conf's file and the `remote` line, at the start
/// and at a reload; hastmon runs on (DNS may come up later, each exchange
/// looks the name up again). A name that resolves is quiet.
#[test]
fn unresolvable_remote_is_a_warning_naming_file_line() {
    // RFC 6761: `.invalid` never resolves.
    let dir = TempDir::new("hastmonctl-resolve");
    let conf = std::fs::canonicalize(config(dir.path())).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    let (p2, p3) = (free_port(), free_port());
    let missing = format!("tcp://no-such-host.invalid:{p3}");
    let nodea = |b: &str, w: &str| format!("  on nodea {{ remote {b} {w} }}");
    let old = text
        .lines()
        .find(|l| l.starts_with("  on nodea "))
        .expect("nodea's section");
    let text = text.replace(old, &nodea(&format!("tcp://localhost:{p2}"), &missing));
    std::fs::write(&conf, &text).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("  on nodea "))
        .unwrap();
    let warning = |addr: &str| {
        format!(
            "{}:{line}: resource \"r0\": remote {addr} does not resolve (",
            conf.display()
        )
    };
    let log = dir.join("hastmon.log");
    let logged = |what: &str| {
        wait_for(timeout_s(20), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains(what))
        })
        .unwrap_or_else(|| {
            panic!(
                "no `{what}` in:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
    };
    let mut mon = start(&conf, dir.path());
    let seen = logged(&warning(&missing));
    assert!(
        !seen.contains("remote tcp://localhost"),
        "localhost resolves:\n{seen}"
    );
    assert!(mon.is_running(), "hastmon runs on:\n{seen}");
    assert!(ctl(&conf, &["status"]).status.success());
    // A reload that names another missing host says so too.
    let also = format!("tcp://also-missing.invalid:{p2}");
    std::fs::write(&conf, text.replace(&format!("tcp://localhost:{p2}"), &also)).unwrap();
    mon.signal(libc::SIGHUP);
    logged(&warning(&also));
    assert!(mon.is_running());
    assert!(ctl(&conf, &["status"]).status.success());
    mon.signal(libc::SIGTERM);
    let st = mon
        .wait_timeout(Duration::from_secs(10))
        .expect("hastmon exits on SIGTERM");
    assert!(st.success(), "exit status {st}");
}
