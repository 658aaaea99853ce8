//! `hastcctl` from the outside: the built binary against a control server
//! started in this process with a fake `Control` — every command's text
//! and JSON output, exit statuses (66 unknown resource, 69 no daemon, 64
//! usage, 77 permission), `HASTCD_SOCKET`, and a non-root user refused
//! both by the socket's mode and, with the mode widened, by the server's
//! peer-credential check (run as `nobody` through setpriv; needs root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use hast_connect::control::{self, ControlHandle};
use hast_connect::status::{Control, EndpointState, EndpointStatus};
use hast_testkit::{run, timeout_s, TempDir};

const EX_USAGE: i32 = 64;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_NOPERM: i32 = 77;

#[derive(Default)]
struct Fake {
    endpoints: Mutex<Vec<EndpointStatus>>,
    calls: Mutex<Vec<String>>,
}

fn endpoint(name: &str, state: EndpointState, primary: Option<&str>, epoch: u64) -> EndpointStatus {
    EndpointStatus {
        resource: name.into(),
        uris: vec![
            format!("nbd+unix:///{name}?socket=/run/hast/hastcd/{name}.nbd"),
            format!("nbd://127.0.0.1:10809/{name}"),
        ],
        state,
        primary: primary.map(String::from),
        nbd: primary.map(|_| "10.0.0.2:10809".into()),
        epoch,
        epoch_seen: epoch,
        size: 1 << 30,
        clients: 2,
        failovers: 1,
        pending: 0,
        held: 12,
        replayed: 3,
        failed: 0,
        last_pause_ms: Some(2150),
    }
}

impl Control for Fake {
    fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.lock().unwrap().clone()
    }
    fn connect(&self, r: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("connect {r}"));
        if r == "ghost" {
            return Err("not found by discovery nor configured".into());
        }
        Ok(())
    }
    fn disconnect(&self, r: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("disconnect {r}"));
        Ok(())
    }
    fn trace(&self, on: bool) {
        self.calls.lock().unwrap().push(format!("trace {on}"));
    }
}

/// The control server on its own runtime, for as long as this lives.
struct Server {
    handle: Option<ControlHandle>,
    rt: tokio::runtime::Runtime,
    fake: Arc<Fake>,
}

impl Server {
    fn start(sock: &Path) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fake = Arc::new(Fake::default());
        fake.endpoints.lock().unwrap().extend([
            endpoint("db", EndpointState::Connected, Some("10.0.0.2:8459"), 7),
            endpoint("logs", EndpointState::FailingOver, None, 3),
        ]);
        let handle = rt
            .block_on(control::serve(sock, fake.clone()))
            .unwrap_or_else(|e| panic!("control server on {}: {e}", sock.display()));
        Server {
            handle: Some(handle),
            rt,
            fake,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.handle.take();
    }
}

fn hastcctl(sock: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hastcctl"));
    cmd.arg("-c")
        .arg(sock)
        .args(args)
        .env_remove("HASTCD_SOCKET");
    run(&mut cmd, timeout_s(30))
}

fn out(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_command() {
    let dir = TempDir::new("hastcctl");
    let sock = dir.join("hastcd.sock");
    let server = Server::start(&sock);

    let (code, stdout, stderr) = out(&hastcctl(&sock, &["ls"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "Name  State         Primary        Epoch  URI\n\
         db    connected     10.0.0.2:8459      7  nbd+unix:///db?socket=/run/hast/hastcd/db.nbd nbd://127.0.0.1:10809/db\n\
         logs  failing-over  -                  3  nbd+unix:///logs?socket=/run/hast/hastcd/logs.nbd nbd://127.0.0.1:10809/logs\n"
    );

    let (code, stdout, _) = out(&hastcctl(&sock, &["ls", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v[0],
        serde_json::json!({
            "resource": "db",
            "uris": ["nbd+unix:///db?socket=/run/hast/hastcd/db.nbd", "nbd://127.0.0.1:10809/db"],
            "state": "connected",
            "primary": "10.0.0.2:8459",
            "epoch": 7
        })
    );
    assert_eq!(v[1]["primary"], serde_json::Value::Null);
    assert_eq!(v[1]["state"], "failing-over");

    let (code, stdout, _) = out(&hastcctl(&sock, &["status"]));
    assert_eq!(code, 0);
    for want in [
        "db:\n  state: connected\n  uri: nbd+unix:///db?socket=/run/hast/hastcd/db.nbd\n",
        "  primary: 10.0.0.2:8459\n  nbd: 10.0.0.2:10809\n  epoch: 7 (highest seen 7)\n",
        "  held: 12\n  replayed: 3\n  failed: 0\n  last pause: 2150 ms\n",
        "logs:\n  state: failing-over\n",
        "  primary: -\n",
    ] {
        assert!(stdout.contains(want), "{want:?} not in\n{stdout}");
    }

    let (code, stdout, _) = out(&hastcctl(&sock, &["status", "db", "--json"]));
    assert_eq!(code, 0);
    let v: Vec<EndpointStatus> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v, vec![server.fake.status()[0].clone()]);

    let (code, _, stderr) = out(&hastcctl(&sock, &["status", "nope"]));
    assert_eq!(
        (code, stderr.as_str()),
        (EX_NOINPUT, "hastcctl: no endpoint for resource \"nope\"\n")
    );
    let (code, _, stderr) = out(&hastcctl(&sock, &["disconnect", "nope"]));
    assert_eq!(code, EX_NOINPUT, "{stderr}");
    let (code, _, stderr) = out(&hastcctl(&sock, &["connect", "ghost"]));
    assert_eq!(code, EX_NOINPUT, "{stderr}");
    assert_eq!(
        stderr,
        "hastcctl: connect ghost: not found by discovery nor configured\n"
    );

    for args in [
        &["connect", "new"][..],
        &["disconnect", "db"],
        &["tron"],
        &["troff"],
    ] {
        let (code, stdout, stderr) = out(&hastcctl(&sock, args));
        assert_eq!(
            (code, stdout.as_str(), stderr.as_str()),
            (0, "", ""),
            "{args:?}"
        );
    }
    assert_eq!(
        *server.fake.calls.lock().unwrap(),
        [
            "connect ghost",
            "connect new",
            "disconnect db",
            "trace true",
            "trace false"
        ]
    );

    // HASTCD_SOCKET instead of -c.
    let o = run(
        Command::new(env!("CARGO_BIN_EXE_hastcctl"))
            .arg("ls")
            .env("HASTCD_SOCKET", &sock),
        timeout_s(30),
    );
    assert_eq!(out(&o).0, 0, "{}", out(&o).2);
    drop(server);

    // hastcd gone: 69, naming the socket and the cause.
    let (code, _, stderr) = out(&hastcctl(&sock, &["ls"]));
    assert_eq!(code, EX_UNAVAILABLE);
    assert!(
        stderr.starts_with(&format!(
            "hastcctl: cannot connect to hastcd at {}: ",
            sock.display()
        )) && stderr.contains("(is hastcd running?)"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_are_64() {
    let sock = PathBuf::from("/nonexistent/hastcd.sock");
    for args in [
        &[][..],
        &["bogus"],
        &["connect"],
        &["connect", "../x"],
        &["status", "a", "b"],
        &["ls", "--yaml"],
    ] {
        let (code, _, stderr) = out(&hastcctl(&sock, args));
        assert_eq!(code, EX_USAGE, "{args:?}: {stderr}");
        assert!(stderr.starts_with("hastcctl: "), "{stderr}");
    }
    let (code, stdout, _) = out(&hastcctl(&sock, &["--version"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("hastcctl "), "{stdout}");
}

/// A user other than root: refused by the socket's mode (connect fails,
/// 77), and, with the mode widened by mistake, by hastcd's peer check (77).
#[test]
fn non_root_is_refused() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs hastcctl as nobody, which needs root: run it as root"
    );
    let dir = TempDir::new("hastcctl-nobody");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where nobody can run it.
    let bin = dir.join("hastcctl");
    std::fs::copy(env!("CARGO_BIN_EXE_hastcctl"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("hastcd.sock");
    let server = Server::start(&sock);
    let as_nobody = || {
        let o = run(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin)
                .arg("-c")
                .arg(&sock)
                .args(["disconnect", "db"]),
            timeout_s(30),
        );
        out(&o)
    };
    let (code, _, stderr) = as_nobody();
    assert_eq!(code, EX_NOPERM, "{stderr}");
    assert!(
        stderr.contains("Permission denied") && stderr.contains("hastcctl needs root"),
        "{stderr}"
    );

    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, stderr) = as_nobody();
    assert_eq!(code, EX_NOPERM, "{stderr}");
    assert_eq!(
        stderr,
        "hastcctl: permission denied: uid 65534 may not control hastcd (root only)\n"
    );
    assert!(
        server.fake.calls.lock().unwrap().is_empty(),
        "a refused peer reached Control"
    );
}
