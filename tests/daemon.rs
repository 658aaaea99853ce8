//! hastd as a daemon: pidfile and single instance, control socket mode,
//! SIGHUP reload (add, remove, bad config kept out), sd_notify messages,
//! backgrounding without -F (start-up errors on the terminal, the log file
//! where there is no syslog), and SIGTERM exiting 0.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use hast_testkit::{bins, nbd_list, run, wait_for, Node, Proc, ResourceSpec, MIB};

const WAIT: Duration = Duration::from_secs(20);

fn node(tag: &str) -> Node {
    Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .start()
}

#[test]
fn pidfile_control_socket_and_single_instance() {
    let mut n = node("daemon-pid");
    let pid = n.daemon_pid().expect("running");
    let written = std::fs::read_to_string(&n.layout().pidfile).unwrap();
    assert_eq!(
        written.trim(),
        pid.to_string(),
        "pidfile holds the daemon's pid"
    );
    let mode = std::fs::metadata(&n.layout().control)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket must be root-only");

    // A second hastd on the same config refuses to start: EX_TEMPFAIL, one line.
    let out = run(&mut n.hastd_command(), WAIT);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already running"), "{err}");
    assert!(n.daemon_running(), "the first hastd keeps running");

    let st = n.stop();
    assert_eq!(st.code(), Some(0), "SIGTERM exits 0");
    assert!(
        !n.layout().pidfile.exists(),
        "pidfile removed on clean exit"
    );
    assert!(
        !n.layout().control.exists(),
        "control socket removed on clean exit"
    );
}

#[test]
fn sighup_reload_adds_removes_and_refuses_bad_config() {
    let mut n = node("daemon-reload");
    n.promote("r0");
    let l = n.layout().clone();
    let base = std::fs::read_to_string(&l.config_path).unwrap();

    // Add r1: its file and metadata first, then the config, then SIGHUP.
    let r1 = l.dir.join("r1.img");
    std::fs::File::create(&r1)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let with_r1 = format!(
        "{base}\nresource r1 {{\n\ton {} {{\n\t\tlocal {}\n\t\tremote none\n\t}}\n}}\n",
        l.node_name,
        r1.display()
    );
    std::fs::write(&l.config_path, &with_r1).unwrap();
    n.hastctl_ok(&["create", "r1"]);
    n.signal(libc::SIGHUP);
    let st = wait_for(WAIT, || {
        let out = n.hastctl(&["status", "--json", "r1"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .unwrap_or_else(|| panic!("r1 did not appear after SIGHUP:\n{}", n.log()));
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        v["resources"][0]["role"], "init",
        "added resources start in init"
    );
    n.hastctl_ok(&["role", "primary", "r1"]);
    let exports = nbd_list(&l.nbd_addr(), WAIT).unwrap();
    assert!(
        exports.contains(&"r0".to_string()) && exports.contains(&"r1".to_string()),
        "{exports:?}"
    );

    // A broken config is refused as a whole: hastd keeps running on the old one.
    std::fs::write(&l.config_path, format!("{with_r1}\nbogus_keyword 1\n")).unwrap();
    n.signal(libc::SIGHUP);
    let logged = wait_for(WAIT, || n.log().contains("bogus_keyword").then_some(()));
    assert!(logged.is_some(), "reload error not logged:\n{}", n.log());
    assert!(
        n.log().contains("hast.conf:"),
        "error names file:line:\n{}",
        n.log()
    );
    assert!(n.daemon_running());
    // hastctl reads the same file and refuses it too, naming file:line.
    let out = n.hastctl(&["status", "r1"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    std::fs::write(&l.config_path, &with_r1).unwrap();
    let st = n.hastctl_ok(&["status", "r1"]);
    assert!(
        st.contains("primary"),
        "r1 untouched by the refused reload: {st}"
    );

    // Remove r0: it stops (export gone), r1 stays primary.
    let only_r1 = format!(
        "{}\nresource r1 {{\n\ton {} {{\n\t\tlocal {}\n\t\tremote none\n\t}}\n}}\n",
        base.split("resource r0").next().unwrap(),
        l.node_name,
        r1.display()
    );
    std::fs::write(&l.config_path, &only_r1).unwrap();
    n.signal(libc::SIGHUP);
    let gone = wait_for(WAIT, || {
        let e = nbd_list(&l.nbd_addr(), WAIT).ok()?;
        (!e.contains(&"r0".to_string())).then_some(e)
    })
    .unwrap_or_else(|| panic!("r0 still exported after removal:\n{}", n.log()));
    assert_eq!(gone, vec!["r1".to_string()]);
    let out = n.hastctl(&["status", "r0"]);
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    // The removed resource was closed cleanly: its metadata says init.
    // The export goes first, the metadata is written after the drain.
    let closed = wait_for(WAIT, || {
        let store = hast_meta::Store::open(&l.local("r0")).ok()?;
        let h = store.read_header().ok()?.header;
        (h.prevrole == hast_meta::Role::Init).then_some(())
    });
    assert!(
        closed.is_some(),
        "removed resource not closed cleanly:\n{}",
        n.log()
    );
    assert_eq!(n.stop().code(), Some(0));
}

/// A `remote` host name that does not resolve is a warning naming
/// hast.conf's file and the resource's line, at the start and at a reload;
/// hastd runs on (DNS may come up later). A name that resolves is quiet.
#[test]
fn unresolvable_remote_is_a_warning_naming_file_line() {
    // RFC 6761: `.invalid` never resolves.
    const MISSING: &str = "tcp://no-such-host.invalid:8457";
    let mut n = Node::builder(bins!())
        .tag("daemon-resolve")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .resource(ResourceSpec::new("r1", 64 * MIB))
        .config(|l| {
            l.default_config()
                .replacen("remote none", "remote tcp://localhost:8457", 1)
                .replacen("remote none", &format!("remote {MISSING}"), 1)
        })
        .start();
    let l = n.layout().clone();
    let text = std::fs::read_to_string(&l.config_path).unwrap();
    let line_of = |text: &str, res: &str| {
        1 + text
            .lines()
            .position(|x| x.starts_with(&format!("resource {res} ")))
            .expect("resource line")
    };
    let warning = |res: &str, line: usize, addr: &str| {
        format!(
            "{}:{line}: resource \"{res}\": remote {addr} does not resolve (",
            l.config_path.display()
        )
    };
    let want = warning("r1", line_of(&text, "r1"), MISSING);
    let seen = wait_for(WAIT, || n.log().contains(&want).then_some(()));
    assert!(seen.is_some(), "no `{want}` in:\n{}", n.log());
    // One lookup after the other: r0's (localhost) was done before r1's.
    assert!(
        !n.log().contains("resource \"r0\": remote"),
        "localhost resolves:\n{}",
        n.log()
    );
    assert!(n.daemon_running());
    // A reload that names another missing host for r0 says so too.
    const ALSO: &str = "tcp://also-missing.invalid:8457";
    let changed = text.replacen("remote tcp://localhost:8457", &format!("remote {ALSO}"), 1);
    std::fs::write(&l.config_path, &changed).unwrap();
    n.signal(libc::SIGHUP);
    let want = warning("r0", line_of(&changed, "r0"), ALSO);
    let seen = wait_for(WAIT, || n.log().contains(&want).then_some(()));
    assert!(seen.is_some(), "no `{want}` after SIGHUP in:\n{}", n.log());
    // The resource works meanwhile: primary, degraded.
    n.hastctl_ok(&["role", "primary", "r0"]);
    assert_eq!(n.stop().code(), Some(0));
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).to_string(),
        Err(e) => panic!("no sd_notify message: {e}"),
    }
}

#[test]
fn sd_notify_ready_reloading_stopping() {
    let n = Node::builder(bins!())
        .tag("daemon-notify")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .build();
    let path = n.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut cmd = n.hastd_command();
    cmd.env("NOTIFY_SOCKET", &path);
    let mut p = Proc::spawn(&mut cmd, "hastd", Some(&n.dir().join("notify-hastd.log"))).unwrap();
    assert!(recv(&sock).contains("READY=1"));
    p.signal(libc::SIGHUP);
    assert!(recv(&sock).contains("RELOADING=1"));
    assert!(recv(&sock).contains("READY=1"));
    p.signal(libc::SIGTERM);
    assert!(recv(&sock).contains("STOPPING=1"));
    let st = p.wait_timeout(WAIT).expect("hastd exits after SIGTERM");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn backgrounds_without_foreground_flag() {
    let n = Node::builder(bins!())
        .tag("daemon-bg")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .build();
    let l = n.layout();
    let out = run(
        Command::new(&n.bins().hastd)
            .arg("-c")
            .arg(&l.config_path)
            .arg("--node")
            .arg(&l.node_name),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let pid: i32 = wait_for(WAIT, || {
        std::fs::read_to_string(&l.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .expect("daemon wrote its pidfile");
    let ready = wait_for(WAIT, || {
        std::os::unix::net::UnixStream::connect(&l.control).ok()
    });
    // Stop it by the pid it recorded, whatever happened above.
    let stop = || {
        // SAFETY: signalling the pid our daemon wrote.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // SAFETY: signal 0 only checks the process exists.
        wait_for(WAIT, || (unsafe { libc::kill(pid, 0) } != 0).then_some(()))
    };
    assert!(ready.is_some(), "background hastd never answered");
    assert!(
        n.hastctl(&["status"]).status.success(),
        "background hastd answers hastctl"
    );
    assert!(stop().is_some(), "background hastd did not stop on SIGTERM");
}

/// hastd without `-F` reports what stops it on the terminal before it
/// detaches (issue 16: a port in use was only in the log, and the caller
/// waited for a daemon that had died). Seen failing before the fix: exit 0,
/// nothing on stderr.
#[test]
fn background_start_failure_is_said_on_the_terminal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let n = Node::builder(bins!())
        .tag("daemon-bg-fail")
        .nbd_port(port)
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .build();
    let l = n.layout();
    let out = run(
        Command::new(&n.bins().hastd)
            .arg("-c")
            .arg(&l.config_path)
            .arg("--node")
            .arg(&l.node_name),
        WAIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(73), "EX_CANTCREAT: {out:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("hastd: ") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert!(!l.control.exists(), "no control socket left");
    assert!(!l.pidfile.exists(), "no pidfile left");
}

/// Without `-F` and without a syslog daemon the log goes to
/// `<state_dir>/hastd.log` (said on the terminal), the start-up lines
/// included, and a stop names its signal.
#[test]
fn background_logs_to_state_dir_without_syslog() {
    if std::path::Path::new("/dev/log").exists()
        && !hast_testkit::env::skip("/dev/log exists: this host logs to syslog")
    {
        return;
    }
    let n = Node::builder(bins!())
        .tag("daemon-bg-log")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .build();
    let l = n.layout();
    let out = run(
        Command::new(&n.bins().hastd)
            .arg("-c")
            .arg(&l.config_path)
            .arg("--node")
            .arg(&l.node_name),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let log = l.state_dir.join("hastd.log");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&log.display().to_string()), "{err}");
    // Exit 0 means ready: the control socket answers at once.
    assert!(n.hastctl(&["status"]).status.success());
    let pid: i32 = std::fs::read_to_string(&l.pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the pid our daemon wrote.
    unsafe { libc::kill(pid, libc::SIGINT) };
    // SAFETY: signal 0 only checks the process exists.
    let gone = wait_for(WAIT, || (unsafe { libc::kill(pid, 0) } != 0).then_some(()));
    assert!(gone.is_some(), "hastd did not stop on SIGINT");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hastd started"), "{text}");
    assert!(text.contains("nbd=127.0.0.1:"), "plain fields: {text}");
    assert!(!text.contains("Some("), "plain fields: {text}");
    assert!(text.contains("stopping on SIGINT"), "{text}");
}
