//! hastcd end to end on one node: a real hastd (`remote none`,
//! `discovery_listen`, `nbd_listen`) and real hastcd/hastcctl processes on
//! loopback, driven with qemu-io, nbdinfo and libnbd's python binding.
//!
//! - data written through either local endpoint (Unix, TCP) reads back
//!   straight from hastd and the other way round; nbdinfo sees the same
//!   size and flags through hastcd as straight to hastd;
//! - NBD TLS towards a server that requires it: the right pin connects (and
//!   presents a client certificate to a server that pins clients), a wrong
//!   pin, a missing client certificate and `nbd_tls = off` never connect and
//!   the log says why;
//! - `--idl`, a bad and a missing configuration file;
//! - SIGHUP with new timing and an `exclude` keeps a busy endpoint;
//! - `hastcctl disconnect/connect/tron/troff/ls --json`;
//! - the Unix endpoint's owner and mode, and that `nobody` can open neither
//!   it nor the control socket;
//! - a demotion and re-promotion on the node: a client's write is held
//!   across it and completes, and status counts the failover.
//!
//! Every tool is required: a missing one fails the test (nothing skips).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hast_testkit::pair::{make_cert, qemu_io};
use hast_testkit::{
    bins, free_port, output_text, run, run_ok, tail, timeout_s, wait_for, which, Node, Proc,
    ResourceSpec, TempDir, MIB, PYTHON,
};
use serde_json::Value;

const SIZE: u64 = 64 * MIB;
const EX_NOPERM: i32 = 77;
const EX_CONFIG: i32 = 78;
const EX_NOINPUT: i32 = 66;

/// Fails (never skips) when a tool the file needs is not installed.
fn need(tools: &[&str]) {
    for t in tools {
        assert!(
            which(t).is_some(),
            "{t} is needed by this test and is not installed"
        );
    }
}

// ------------------------------------------------------------------ hastd

/// One hastd serving `r0` (primary), with a discovery listener.
struct Server {
    node: Node,
    disc_port: u16,
}

impl Server {
    /// `extra`: node-level hast.conf lines (NBD TLS). Without TLS the
    /// export is waited for (the testkit's probe speaks plaintext).
    fn start(tag: &str, extra: String) -> Server {
        let disc_port = free_port();
        let tls = !extra.is_empty();
        let mut node = Node::builder(bins!())
            .tag(tag)
            .resource(ResourceSpec::new("r0", SIZE))
            .config(move |l| {
                let c = l.default_config();
                let lines = format!("discovery_listen tcp://127.0.0.1:{disc_port}\n{extra}");
                // Node-level options go before the first resource section.
                match c.find("\nresource ") {
                    Some(at) => format!("{}{}{}", &c[..at + 1], lines, &c[at + 1..]),
                    None => format!("{c}{lines}"),
                }
            })
            .start();
        if tls {
            node.hastctl_ok(&["role", "primary", "r0"]);
        } else {
            node.promote("r0");
        }
        Server { node, disc_port }
    }

    fn uri(&self) -> String {
        self.node.uri("r0")
    }
}

// ----------------------------------------------------------------- hastcd

/// One hastcd, its configuration, control socket and endpoints in a
/// directory of its own (short tags: hastcd refuses a `socket_dir` that
/// leaves no room for a 64-byte resource name in a Unix socket path).
/// Dropping it stops the daemon by PID.
struct Hastcd {
    conf: PathBuf,
    ctl: PathBuf,
    sock_dir: PathBuf,
    tcp_port: u16,
    disc_port: u16,
    log: PathBuf,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Hastcd {
    /// Started against the discovery listener at `disc_port`, with
    /// `global` extra `[Global]` lines (short intervals are the default).
    fn start(tag: &str, disc_port: u16, global: &str) -> Hastcd {
        Hastcd::start_env(tag, disc_port, global, &[])
    }

    /// [`Hastcd::start`] with environment variables (a D-Bus address).
    fn start_env(tag: &str, disc_port: u16, global: &str, env: &[(&str, &str)]) -> Hastcd {
        let dir = TempDir::new(tag);
        let mut h = Hastcd {
            conf: dir.join("hastcd.conf"),
            ctl: dir.join("ctl.sock"),
            sock_dir: dir.join("s"),
            tcp_port: free_port(),
            disc_port,
            log: dir.join("hastcd.log"),
            proc: None,
            dir,
        };
        h.write_conf(0.2, global, "");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hastcd"));
        cmd.arg("-f").arg(&h.conf).envs(env.iter().copied());
        h.proc = Some(Proc::spawn(&mut cmd, "hastcd", Some(&h.log)).expect("spawn hastcd"));
        // Up when its control socket is; a hastcd that exits fails at once.
        let up = wait_for(timeout_s(10), || {
            if h.ctl.exists() {
                return Some(true);
            }
            (!h.proc().is_running()).then_some(false)
        });
        assert_eq!(up, Some(true), "hastcd did not start:\n{}", h.log());
        h
    }

    fn write_conf(&self, poll: f64, global: &str, controllers: &str) {
        let text = format!(
            "[Global]\n\
             poll_interval = {poll}\n\
             reconnect_interval = 0.05\n\
             request_timeout = 2\n\
             discovery_timeout = 1\n\
             socket_dir = {sock}\n\
             tcp_listen = 127.0.0.1:{tcp}\n\
             control_socket = {ctl}\n\
             {dbus}\
             {global}\n\
             [Controllers]\n\
             controller = host=127.0.0.1;port={disc}\n\
             {controllers}\n",
            sock = self.sock_dir.display(),
            tcp = self.tcp_port,
            ctl = self.ctl.display(),
            disc = self.disc_port,
            // `global` may say where D-Bus is; off otherwise.
            dbus = if global.contains("dbus =") {
                ""
            } else {
                "dbus = none\n"
            },
        );
        let tmp = self.conf.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write hastcd.conf");
        std::fs::rename(&tmp, &self.conf).expect("rename hastcd.conf");
    }

    fn socket(&self) -> PathBuf {
        self.sock_dir.join("r0.nbd")
    }

    fn unix_uri(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.socket().display())
    }

    fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/r0", self.tcp_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        run(
            Command::new(env!("CARGO_BIN_EXE_hastcctl"))
                .arg("-c")
                .arg(&self.ctl)
                .args(args),
            timeout_s(20),
        )
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "hastcctl {args:?}: {}\n{}",
            output_text(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json`'s entry of r0, if there is one.
    fn status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|e| e["resource"] == "r0")
            .cloned()
    }

    /// Waits until r0's state is `state`; returns its status.
    fn wait_state(&self, state: &str, bound: Duration) -> Value {
        let mut last = None;
        wait_for(bound, || {
            let s = self.status();
            let hit = s.as_ref().is_some_and(|s| s["state"] == state);
            last = s;
            hit.then(|| last.clone()).flatten()
        })
        .unwrap_or_else(|| {
            panic!(
                "r0 not {state} within {bound:?}; last status {last:?}\n{}",
                self.log()
            )
        })
    }

    /// Waits until the log contains `text`.
    fn wait_log(&self, text: &str, bound: Duration) {
        wait_for(bound, || self.log().contains(text).then_some(()))
            .unwrap_or_else(|| panic!("hastcd never logged {text:?}:\n{}", self.log()));
    }

    fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("hastcd started")
    }
}

impl Drop for Hastcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- hastcd log {} ---\n{}\n--- end ---",
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        if let Some(mut p) = self.proc.take() {
            p.stop(timeout_s(10));
        }
    }
}

/// A python/libnbd client in the background (its output in `log`).
fn python_client(dir: &Path, name: &str, script: &str) -> (Proc, PathBuf) {
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, script).expect("write client script");
    let log = dir.join(format!("{name}.log"));
    let p = Proc::spawn(Command::new(PYTHON).arg(&path), name, Some(&log)).expect("spawn python");
    (p, log)
}

fn wait_file(path: &Path, bound: Duration, what: &str) {
    wait_for(bound, || path.exists().then_some(()))
        .unwrap_or_else(|| panic!("{what}: {} did not appear in {bound:?}", path.display()));
}

/// nbdinfo --json's description of the one export at `uri`.
fn nbdinfo(uri: &str) -> Value {
    let out = run_ok(Command::new("nbdinfo").args(["--json", uri]), timeout_s(30));
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo {uri}: {e}: {out}"));
    v["exports"][0].clone()
}

// ------------------------------------------------------------------ tests

#[test]
fn data_and_flags_match_through_both_endpoints() {
    need(&["qemu-io", "nbdinfo"]);
    let srv = Server::start("cl-data", String::new());
    let hcd = Hastcd::start("cd1", srv.disc_port, "");
    hcd.wait_state("connected", timeout_s(20));

    for (i, ep) in [hcd.unix_uri(), hcd.tcp_uri()].iter().enumerate() {
        let (a, b) = (2 * i as u64 * MIB, (2 * i as u64 + 1) * MIB);
        // Through hastcd, read straight from hastd; and the other way.
        qemu_io(
            ep,
            &[format!("write -P 0x{:x} {a} 1M", 0xa1 + i), "flush".into()],
        );
        qemu_io(&srv.uri(), &[format!("read -P 0x{:x} {a} 1M", 0xa1 + i)]);
        qemu_io(
            &srv.uri(),
            &[format!("write -P 0x{:x} {b} 1M", 0xb1 + i), "flush".into()],
        );
        qemu_io(ep, &[format!("read -P 0x{:x} {b} 1M", 0xb1 + i)]);
        // FUA, zeroes and a trim go through too.
        qemu_io(
            ep,
            &[
                format!("write -f -P 0x{:x} {b} 64k", 0xc1 + i),
                format!("write -z {} 64k", b + 64 * 1024),
                format!("discard {} 64k", b + 128 * 1024),
            ],
        );
        qemu_io(
            &srv.uri(),
            &[
                format!("read -P 0x{:x} {b} 64k", 0xc1 + i),
                format!("read -P 0 {} 64k", b + 64 * 1024),
            ],
        );
    }

    let direct = nbdinfo(&srv.uri());
    for ep in [hcd.unix_uri(), hcd.tcp_uri()] {
        let via = nbdinfo(&ep);
        for key in [
            "export-size",
            "is_read_only",
            "can_trim",
            "can_zero",
            "can_fua",
            "can_flush",
            "can_multi_conn",
            "can_cache",
            "can_fast_zero",
            "can_df",
            "contexts",
            "block_size_minimum",
            "block_size_preferred",
            "block_size_maximum",
        ] {
            assert!(!direct[key].is_null(), "nbdinfo has no {key}: {direct}");
            assert_eq!(
                via[key], direct[key],
                "{key} through {ep}: {via} vs {direct}"
            );
        }
        assert_eq!(via["export-size"], srv.node.datasize("r0"));
    }
}

#[test]
fn nbd_tls_connects_only_with_the_right_pin() {
    need(&["openssl", "qemu-io"]);
    let certs = TempDir::new("cl-tls-certs");
    let (srv_c, cli_c, other_c) = (
        make_cert(certs.path(), "server"),
        make_cert(certs.path(), "client"),
        make_cert(certs.path(), "other"),
    );
    let (srv_crt, srv_key) = (&srv_c.cert, &srv_c.key);
    let (cli_crt, cli_key) = (&cli_c.cert, &cli_c.key);
    let (other_crt, other_key) = (&other_c.cert, &other_c.key);
    // The server requires TLS and pins hastcd's client certificate.
    let srv = Server::start(
        "cl-tls",
        format!(
            "nbd_tls required\nnbd_tls_cert {}\nnbd_tls_key {}\nnbd_tls_client_fingerprint {}\n",
            srv_crt.display(),
            srv_key.display(),
            cli_c.fingerprint
        ),
    );
    let client = format!(
        "nbd_tls_cert = {}\nnbd_tls_key = {}\n",
        cli_crt.display(),
        cli_key.display()
    );
    let good = Hastcd::start(
        "cd2",
        srv.disc_port,
        &format!(
            "nbd_tls = on\nnbd_tls_pin = {}\n{client}",
            srv_c.fingerprint
        ),
    );
    let wrong_pin = Hastcd::start(
        "cd3",
        srv.disc_port,
        &format!(
            "nbd_tls = on\nnbd_tls_pin = {}\n{client}",
            other_c.fingerprint
        ),
    );
    let no_client_cert = Hastcd::start(
        "cd4",
        srv.disc_port,
        &format!("nbd_tls = on\nnbd_tls_pin = {}\n", srv_c.fingerprint),
    );
    let wrong_client = Hastcd::start(
        "cd5",
        srv.disc_port,
        &format!(
            "nbd_tls = on\nnbd_tls_pin = {}\nnbd_tls_cert = {}\nnbd_tls_key = {}\n",
            srv_c.fingerprint,
            other_crt.display(),
            other_key.display()
        ),
    );
    let off = Hastcd::start("cd6", srv.disc_port, "");

    // The right pin: connected, and data goes through TLS to hastd.
    let st = good.wait_state("connected", timeout_s(20));
    assert_eq!(st["size"], srv.node.datasize("r0"), "{st}");
    qemu_io(
        &good.unix_uri(),
        &["write -P 0x7e 0 256k".into(), "flush".into()],
    );
    qemu_io(&good.tcp_uri(), &["read -P 0x7e 0 256k".into()]);
    assert!(srv.node.log().contains("tls=true"), "{}", srv.node.log());

    // The others say why and stay connecting.
    wrong_pin.wait_log(
        "invalid peer certificate: ApplicationVerificationFailure (the server's certificate is not one of nbd_tls_pin)",
        timeout_s(20),
    );
    off.wait_log("requires NBD TLS and nbd_tls is off here", timeout_s(20));
    // Without a client certificate the server refuses during the handshake
    // (after the client's Finished: the error shows at the first read).
    no_client_cert.wait_log(
        "the server requires a client certificate: set nbd_tls_cert and nbd_tls_key",
        timeout_s(20),
    );
    wrong_client.wait_log(
        "the server refused our client certificate (nbd_tls_cert)",
        timeout_s(20),
    );
    std::thread::sleep(Duration::from_millis(1500));
    for h in [&wrong_pin, &no_client_cert, &wrong_client, &off] {
        let st = h.status().expect("status");
        assert_eq!(st["state"], "connecting", "{st}\n{}", h.log());
        assert_eq!(st["nbd"], Value::Null, "{st}");
    }
    let log = srv.node.log();
    for why in [
        "NBD client certificate refused",
        "peer sent no certificates",
    ] {
        assert!(log.contains(why), "hastd did not log {why:?}:\n{log}");
    }
}

#[test]
fn idl_and_configuration_errors() {
    let dir = TempDir::new("cl-cli");
    let hastcd = env!("CARGO_BIN_EXE_hastcd");
    let idl = dir.join("org.hast.connector.xml");
    let out = run(Command::new(hastcd).arg("--idl").arg(&idl), timeout_s(20));
    assert!(out.status.success(), "{}", output_text(&out));
    // A real XML parser (python's), not busctl, must accept it and find
    // the interface, its Failover signal and a method.
    let check = r#"import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "node", root.tag
i = [e for e in root.iter("interface") if e.get("name") == "org.hast.connector"]
assert len(i) == 1, "no org.hast.connector interface"
signals = [e.get("name") for e in i[0].iter("signal")]
methods = [e.get("name") for e in i[0].iter("method")]
assert "Failover" in signals, signals
assert methods, "no methods"
print(" ".join(sorted(methods)), "|", " ".join(signals))
"#;
    let out = run_ok(
        Command::new(PYTHON).arg("-c").arg(check).arg(&idl),
        timeout_s(20),
    );
    assert!(out.contains("| ") && out.contains("Failover"), "{out}");

    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "[Global]\npoll_interval = 2\nfrobnicate = 1\n").unwrap();
    let out = run(Command::new(hastcd).arg("-f").arg(&bad), timeout_s(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{err}");
    assert!(
        err.contains(&format!("{}:3: ", bad.display())),
        "no FILE:LINE in {err:?}"
    );

    let missing = dir.join("missing.conf");
    let out = run(Command::new(hastcd).arg("-f").arg(&missing), timeout_s(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_NOINPUT), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

/// A libnbd client that writes and reads back 64 KiB blocks in the 4 MiB
/// from `base` for `secs` seconds and exits 1 at the first error (its
/// message in the log).
fn io_loop_script(uri: &str, ready: &Path, base: u64, secs: f64) -> String {
    format!(
        r#"import nbd, sys, time
h = nbd.NBD()
h.connect_uri({uri:?})
open({ready:?}, "w").close()
end = time.time() + {secs}
n = 0
try:
    while time.time() < end:
        off = {base} + (n % 64) * 65536
        data = bytes([n % 251 + 1]) * 65536
        h.pwrite(data, off)
        if h.pread(65536, off) != data:
            sys.exit("read back differs at %d" % off)
        n += 1
    h.flush()
except nbd.Error as e:
    sys.exit("nbd error after %d rounds: %s" % (n, e))
print("rounds", n, flush=True)
"#,
        ready = ready.display().to_string()
    )
}

#[test]
fn sighup_reload_keeps_a_busy_endpoint() {
    let srv = Server::start("cl-hup", String::new());
    let mut hcd = Hastcd::start("cd7", srv.disc_port, "");
    hcd.wait_state("connected", timeout_s(20));
    let ready = hcd.dir.join("ready");
    let (mut client, log) = python_client(
        hcd.dir.path(),
        "loop",
        &io_loop_script(&hcd.unix_uri(), &ready, 0, 3.0),
    );
    wait_file(&ready, timeout_s(20), "the client's connection");
    std::thread::sleep(Duration::from_millis(300));
    // New timing, and the resource itself excluded: a reload drops nothing.
    hcd.write_conf(0.5, "", "exclude = resource=r0");
    hcd.proc().signal(libc::SIGHUP);
    hcd.wait_log("configuration reloaded", timeout_s(10));
    let st = client
        .wait_timeout(timeout_s(30))
        .unwrap_or_else(|| panic!("the client loop did not end"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "client loop failed across SIGHUP: {text}");
    assert!(text.starts_with("rounds "), "{text}");
    let st = hcd.status().expect("status");
    assert_eq!(st["state"], "connected", "{st}");
    assert_eq!(st["failovers"], 0, "{st}");
    assert!(hcd.socket().exists());
    assert!(!hcd.log().contains("reload failed"), "{}", hcd.log());
}

#[test]
fn hastcctl_disconnect_connect_trace_and_ls() {
    need(&["nbdinfo"]);
    let srv = Server::start("cl-ctl", String::new());
    let hcd = Hastcd::start("cd8", srv.disc_port, "");
    hcd.wait_state("connected", timeout_s(20));

    // ls --json: an array of {resource, uris, state, primary, epoch}.
    let v: Value = serde_json::from_str(&hcd.ctl_ok(&["ls", "--json"])).expect("ls --json");
    let list = v.as_array().expect("ls --json is an array");
    assert_eq!(list.len(), 1, "{v}");
    let e = list[0].as_object().expect("an object");
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["epoch", "primary", "resource", "state", "uris"],
        "{v}"
    );
    assert_eq!(e["resource"], "r0");
    assert_eq!(e["state"], "connected");
    assert_eq!(e["primary"], format!("127.0.0.1:{}", srv.disc_port));
    assert!(e["epoch"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert_eq!(
        e["uris"],
        serde_json::json!([hcd.unix_uri(), hcd.tcp_uri()]),
        "{v}"
    );

    // A client holds a connection open across the disconnect.
    let ready = hcd.dir.join("ready");
    let (mut client, log) = python_client(
        hcd.dir.path(),
        "held",
        &io_loop_script(&hcd.unix_uri(), &ready, 0, 20.0),
    );
    wait_file(&ready, timeout_s(20), "the client's connection");
    hcd.ctl_ok(&["disconnect", "r0"]);
    wait_for(timeout_s(10), || (!hcd.socket().exists()).then_some(()))
        .unwrap_or_else(|| panic!("{} still there after disconnect", hcd.socket().display()));
    let st = client
        .wait_timeout(timeout_s(20))
        .expect("the client sees its endpoint go within 20 s");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!st.success(), "the client saw no error: {text}");
    assert!(text.contains("nbd error"), "{text}");
    let out = run(Command::new("nbdinfo").arg(hcd.tcp_uri()), timeout_s(20));
    assert!(
        !out.status.success(),
        "r0 still served on TCP: {}",
        output_text(&out)
    );
    assert_eq!(hcd.status(), None, "r0 still listed");
    // Automatic mode leaves it alone until asked.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!hcd.socket().exists());

    hcd.ctl_ok(&["connect", "r0"]);
    hcd.wait_state("connected", timeout_s(20));
    assert!(hcd.socket().exists());
    // Beyond the 4 MiB the loop wrote: never written.
    qemu_io(&hcd.unix_uri(), &["read -P 0 32M 64k".into()]);
    qemu_io(&hcd.tcp_uri(), &["read -P 0 32M 64k".into()]);

    hcd.ctl_ok(&["tron"]);
    hcd.wait_log("trace on", timeout_s(10));
    hcd.ctl_ok(&["troff"]);
    hcd.wait_log("trace off", timeout_s(10));
}

#[test]
fn local_endpoints_are_private() {
    need(&["setpriv", "nbdinfo"]);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (setpriv, chown)");
    let srv = Server::start("cl-priv", String::new());
    let dflt = Hastcd::start("cd9", srv.disc_port, "");
    // A group-shared endpoint, as an operator may configure one.
    let shared = Hastcd::start(
        "cd10",
        srv.disc_port,
        "socket_owner = root\nsocket_group = 65534\nsocket_mode = 0660\n",
    );
    for h in [&dflt, &shared] {
        h.wait_state("connected", timeout_s(20));
        // The test directories must not be what stops nobody.
        for d in [h.dir.path(), h.sock_dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            h.ctl.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let as_nobody = |prog: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", prog]);
        c
    };

    let m = std::fs::metadata(dflt.socket()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "default mode {:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (0, 0));
    let out = run(as_nobody("nbdinfo").arg(dflt.unix_uri()), timeout_s(20));
    assert!(
        !out.status.success(),
        "nobody opened the endpoint: {}",
        output_text(&out)
    );
    // Root still can.
    run_ok(Command::new("nbdinfo").arg(dflt.unix_uri()), timeout_s(20));

    let m = std::fs::metadata(shared.socket()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o660, "configured mode {:o}", m.mode());
    assert_eq!((m.uid(), m.gid()), (0, 65534));
    // nogroup is the socket's group: nobody may use that endpoint.
    let out = run(as_nobody("nbdinfo").arg(shared.unix_uri()), timeout_s(20));
    assert!(
        out.status.success(),
        "the group could not: {}",
        output_text(&out)
    );

    let m = std::fs::metadata(&dflt.ctl).unwrap();
    assert_eq!(m.mode() & 0o077, 0, "control socket mode {:o}", m.mode());
    let out = run(
        as_nobody(env!("CARGO_BIN_EXE_hastcctl"))
            .arg("-c")
            .arg(&dflt.ctl)
            .arg("ls"),
        timeout_s(20),
    );
    assert_eq!(out.status.code(), Some(EX_NOPERM), "{}", output_text(&out));
}

#[test]
fn demotion_holds_a_write_until_the_node_is_primary_again() {
    let srv = Server::start("cl-demote", String::new());
    let hcd = Hastcd::start("cd11", srv.disc_port, "");
    let before = hcd.wait_state("connected", timeout_s(20));
    let epoch0 = before["epoch"].as_u64().expect("epoch");

    let (ready, go) = (hcd.dir.join("ready"), hcd.dir.join("go"));
    let script = format!(
        r#"import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri({uri:?})
h.pwrite(b"\x11" * 65536, 0)
open({ready:?}, "w").close()
end = time.time() + 30
while not os.path.exists({go:?}):
    if time.time() > end:
        sys.exit("never told to go")
    time.sleep(0.01)
t = time.time()
try:
    h.pwrite(b"\x5a" * 65536, 1 << 20)
    h.flush()
except nbd.Error as e:
    sys.exit("write failed: %s" % e)
print("done in %.3f s" % (time.time() - t), flush=True)
"#,
        uri = hcd.unix_uri(),
        ready = ready.display().to_string(),
        go = go.display().to_string()
    );
    let (mut client, log) = python_client(hcd.dir.path(), "writer", &script);
    wait_file(&ready, timeout_s(20), "the writer's connection");
    // And one that keeps requests in flight through the demotion: hastd
    // answers those ESHUTDOWN or drops them; hastcd replays them.
    let busy_ready = hcd.dir.join("busy-ready");
    let (mut busy, busy_log) = python_client(
        hcd.dir.path(),
        "busy",
        &io_loop_script(&hcd.tcp_uri(), &busy_ready, 8 * MIB, 4.0),
    );
    wait_file(&busy_ready, timeout_s(20), "the busy client's connection");
    std::thread::sleep(Duration::from_millis(200));

    srv.node.hastctl_ok(&["role", "secondary", "r0"]);
    // hastcd sees the demotion at its next poll and holds what comes.
    let held = Instant::now();
    let st = hcd.wait_state("failing-over", timeout_s(10));
    assert_eq!(
        st["clients"],
        2,
        "a client is gone: {st}; busy client: {}",
        tail(&busy_log, 5)
    );
    std::fs::write(&go, "").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        client.is_running(),
        "the write did not wait for a primary: {}",
        tail(&log, 5)
    );
    let st = hcd.status().expect("status");
    assert!(st["pending"].as_u64().is_some_and(|n| n >= 1), "{st}");

    srv.node.hastctl_ok(&["role", "primary", "r0"]);
    let exit = client
        .wait_timeout(timeout_s(20))
        .expect("the held write completes once r0 is primary again");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "the client saw an error: {text}");
    assert!(text.starts_with("done in"), "{text}");
    let pause = held.elapsed();
    let exit = busy
        .wait_timeout(timeout_s(20))
        .expect("the busy client ends");
    let text = std::fs::read_to_string(&busy_log).unwrap_or_default();
    assert!(exit.success(), "the busy client saw an error: {text}");

    qemu_io(
        &srv.uri(),
        &["read -P 0x5a 1M 64k".into(), "read -P 0x11 0 64k".into()],
    );
    let st = hcd.wait_state("connected", timeout_s(10));
    assert!(st["failovers"].as_u64().is_some_and(|n| n >= 1), "{st}");
    let ms = st["last_pause_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no last_pause_ms: {st}"));
    assert!(
        ms <= pause.as_millis() as u64 + 1000,
        "pause {ms} ms, held {pause:?}"
    );
    assert!(
        st["epoch"].as_u64().is_some_and(|e| e > epoch0),
        "{st} (was {epoch0})"
    );
    assert_eq!(st["failed"], 0, "{st}");
}

/// hastcd offers `org.hast.connector` on a private session bus (a
/// `dbus-daemon` started here): `busctl` lists the endpoint through it, and
/// a real failover (the node demoted and promoted again at a higher epoch)
/// shows up as the `Failover` signal in `busctl monitor`.
#[test]
fn dbus_list_and_the_failover_signal() {
    need(&["dbus-daemon", "busctl"]);
    let srv = Server::start("cl-dbus", String::new());
    let bus_dir = TempDir::new("cd-bus");
    let sock = bus_dir.join("bus");
    let address = format!("unix:path={}", sock.display());
    let mut daemon = Command::new("dbus-daemon");
    daemon
        .args(["--session", "--nofork", "--nosyslog"])
        .arg(format!("--address={address}"));
    let _bus = Proc::spawn(&mut daemon, "dbus-daemon", Some(&bus_dir.join("bus.log")))
        .expect("dbus-daemon (Debian package dbus)");
    wait_file(&sock, timeout_s(10), "the private bus");
    let hcd = Hastcd::start_env(
        "cd12",
        srv.disc_port,
        "dbus = session",
        &[("DBUS_SESSION_BUS_ADDRESS", address.as_str())],
    );
    hcd.wait_state("connected", timeout_s(20));
    let busctl = |args: &[&str]| {
        run(
            Command::new("busctl")
                .arg(format!("--address={address}"))
                .args(args),
            timeout_s(20),
        )
    };
    let out = busctl(&[
        "call",
        "org.hast.connector",
        "/org/hast/connector",
        "org.hast.connector",
        "List",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("r0") && text.contains("connected"),
        "{}",
        output_text(&out)
    );

    let mon_log = bus_dir.join("monitor.json");
    let mut monitor = Command::new("busctl");
    monitor
        .arg(format!("--address={address}"))
        .args(["monitor", "--json=short"]);
    let _mon = Proc::spawn(&mut monitor, "busctl monitor", Some(&mon_log)).expect("busctl monitor");
    wait_for(timeout_s(10), || {
        std::fs::read_to_string(&mon_log)
            .unwrap_or_default()
            .contains("Monitoring bus message stream")
            .then_some(())
    })
    .expect("busctl monitor never started");

    let epoch0 = hcd.status().expect("status")["epoch"]
        .as_u64()
        .expect("epoch");
    srv.node.hastctl_ok(&["role", "secondary", "r0"]);
    hcd.wait_state("failing-over", timeout_s(10));
    srv.node.hastctl_ok(&["role", "primary", "r0"]);
    let st = hcd.wait_state("connected", timeout_s(20));
    assert!(st["epoch"].as_u64().is_some_and(|e| e > epoch0), "{st}");
    let signal = wait_for(timeout_s(10), || {
        std::fs::read_to_string(&mon_log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("\"member\":\"Failover\""))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "no Failover signal:\n{}",
            std::fs::read_to_string(&mon_log).unwrap_or_default()
        )
    });
    let v: Value = serde_json::from_str(&signal).expect("busctl's JSON");
    assert_eq!(v["interface"], "org.hast.connector", "{signal}");
    let data = &v["payload"]["data"];
    assert_eq!(data[0], "r0", "{signal}");
    assert_eq!(data[3].as_u64(), st["epoch"].as_u64(), "{signal}");
}
