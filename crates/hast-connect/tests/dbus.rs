//! `org.hast.connector` on a private `dbus-daemon` started here (killed by
//! its PID at the end): every method called with `busctl`, the `Failover`
//! signal received by a zbus match rule, the name refused to a second
//! hastcd; and `contrib/dbus/org.hast.connector.conf` on a private bus
//! configured like the system bus: root owns and calls, `nobody` is denied.
//! Needs `dbus-daemon` (package dbus), `busctl` (systemd), setpriv and root;
//! a missing one fails the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hast_connect::dbus;
use hast_connect::status::{Control, EndpointState, EndpointStatus, Failover};

#[derive(Default)]
struct Fake {
    endpoints: Mutex<Vec<EndpointStatus>>,
    calls: Mutex<Vec<String>>,
}

fn endpoint(name: &str) -> EndpointStatus {
    EndpointStatus {
        resource: name.into(),
        uris: vec![format!("nbd://127.0.0.1:10809/{name}")],
        state: EndpointState::Connected,
        primary: Some("[::1]:8459".into()),
        nbd: Some("[::1]:10809".into()),
        epoch: 3,
        epoch_seen: 3,
        size: 4096,
        clients: 0,
        failovers: 1,
        pending: 0,
        held: 2,
        replayed: 2,
        failed: 0,
        last_pause_ms: None,
    }
}

impl Control for Fake {
    fn status(&self) -> Vec<EndpointStatus> {
        self.endpoints.lock().unwrap().clone()
    }
    fn connect(&self, r: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("connect {r}"));
        self.endpoints.lock().unwrap().push(endpoint(r));
        Ok(())
    }
    fn disconnect(&self, r: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("disconnect {r}"));
        self.endpoints.lock().unwrap().retain(|e| e.resource != r);
        Ok(())
    }
    fn trace(&self, on: bool) {
        self.calls.lock().unwrap().push(format!("trace {on}"));
    }
}

/// A private session bus; killed by PID when dropped.
struct Bus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Bus {
    /// A session bus: everything allowed to its one user.
    fn start() -> Bus {
        Bus::start_with("session", |dir| {
            vec![
                "--session".into(),
                format!("--address=unix:path={}", dir.join("bus").display()),
            ]
        })
    }

    /// `args(dir)` says which bus; `tag` names the temp dir.
    fn start_with(tag: &str, args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Bus {
        let dir = std::env::temp_dir().join(format!("hastcd-dbus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("dbus-daemon")
            .args(["--nofork", "--print-address=1", "--nosyslog"])
            .args(args(&dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon (Debian package dbus) is needed by this test");
        // The address is its first line: dbus-daemon prints it once
        // listening. A daemon that dies closes stdout, so this ends.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        Bus {
            child,
            address,
            dir,
        }
    }

    /// `busctl call` on the connector: (exit ok, stdout, stderr).
    fn call(&self, method: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args([
                "--json=short",
                "--timeout=5",
                "call",
                dbus::BUS_NAME,
                dbus::OBJECT_PATH,
            ])
            .args([dbus::INTERFACE, method])
            .args(args)
            .output()
            .expect("busctl (Debian package systemd) is needed by this test");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The one string a method returned, parsed as JSON.
    fn call_json(&self, method: &str, args: &[&str]) -> serde_json::Value {
        let (ok, out, err) = self.call(method, args);
        assert!(ok, "{method} {args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "s", "{out}");
        serde_json::from_str(v["data"][0].as_str().unwrap()).unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_signal_on_a_private_bus() {
    let bus = Arc::new(Bus::start());
    let fake = Arc::new(Fake::default());
    fake.endpoints.lock().unwrap().push(endpoint("db"));
    let handle = dbus::offer_at(&bus.address, fake.clone()).await.unwrap();

    let b = bus.clone();
    blocking(move || {
        let list = b.call_json("List", &[]);
        assert_eq!(
            list,
            serde_json::json!([{
                "resource": "db",
                "uris": ["nbd://127.0.0.1:10809/db"],
                "state": "connected",
                "primary": "[::1]:8459",
                "epoch": 3
            }])
        );
        let all = b.call_json("Status", &["s", ""]);
        assert_eq!(all, serde_json::to_value(vec![endpoint("db")]).unwrap());
        let one = b.call_json("Status", &["s", "db"]);
        assert_eq!(one, all);
        let (ok, _, err) = b.call("Status", &["s", "nope"]);
        assert!(
            !ok && err.contains("no endpoint for resource \"nope\""),
            "{err}"
        );
        let (ok, _, err) = b.call("Connect", &["s", "../x"]);
        assert!(!ok && err.contains("invalid resource name"), "{err}");
        for (m, args) in [
            ("Connect", &["s", "logs"][..]),
            ("Disconnect", &["s", "db"]),
            ("Tron", &[]),
            ("Troff", &[]),
        ] {
            let (ok, _, err) = b.call(m, args);
            assert!(ok, "{m}: {err}");
        }
        let (ok, _, err) = b.call("Disconnect", &["s", "db"]);
        assert!(!ok && err.contains("no endpoint"), "{err}");
        // The live object describes itself as --idl does.
        let out = Command::new("busctl")
            .arg(format!("--address={}", b.address))
            .args([
                "introspect",
                "--xml-interface",
                dbus::BUS_NAME,
                dbus::OBJECT_PATH,
            ])
            .output()
            .unwrap();
        let live = String::from_utf8_lossy(&out.stdout);
        let idl = dbus::introspection_xml();
        let iface = |x: &str| {
            let start = x.find("<interface name=\"org.hast.connector\">").unwrap();
            let end = start + x[start..].find("</interface>").unwrap();
            x[start..end].to_string()
        };
        assert_eq!(iface(&live), iface(&idl));
    })
    .await;
    assert_eq!(
        *fake.calls.lock().unwrap(),
        ["connect logs", "disconnect db", "trace true", "trace false"]
    );

    // The signal, as a subscriber sees it.
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(dbus::INTERFACE)
        .unwrap()
        .member("Failover")
        .unwrap()
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &client, None)
        .await
        .unwrap();
    let f = Failover {
        resource: "db".into(),
        from: Some("10.0.0.1:8459".into()),
        to: "10.0.0.2:8459".into(),
        epoch: 9,
        pause_ms: 2300,
        replayed: 17,
    };
    handle.failover(&f).await.unwrap();
    handle
        .failover(&Failover {
            from: None,
            ..f.clone()
        })
        .await
        .unwrap();
    for want_from in ["10.0.0.1:8459", ""] {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("no Failover signal within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(msg.header().path().unwrap().as_str(), dbus::OBJECT_PATH);
        let body: (String, String, String, u64, u64, u64) = msg.body().deserialize().unwrap();
        assert_eq!(
            body,
            (
                "db".into(),
                want_from.into(),
                "10.0.0.2:8459".into(),
                9,
                2300,
                17
            )
        );
    }

    // A second hastcd on the same bus does not get the name.
    let e = match dbus::offer_at(&bus.address, fake.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("two owners of org.hast.connector"),
    };
    assert!(e.contains("org.hast.connector"), "{e}");
    drop(handle);
}

/// The system bus's default policy (as Debian's system.conf: nobody owns
/// or calls anything unless a policy file allows it) plus ours.
const SYSTEM_LIKE_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=BUS</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>POLICY</include>
</busconfig>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_bus_policy_root_only() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test calls as root and as nobody: run it as root"
    );
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/dbus/org.hast.connector.conf")
        .canonicalize()
        .unwrap();
    let bus = Arc::new(Bus::start_with("system", |dir| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.join("system-like.conf");
        let text = SYSTEM_LIKE_CONF
            .replace("BUS", &dir.join("bus").display().to_string())
            .replace("POLICY", &policy.display().to_string());
        std::fs::write(&conf, text).unwrap();
        vec![format!("--config-file={}", conf.display())]
    }));
    let fake = Arc::new(Fake::default());
    // Root owns the name.
    let _handle = dbus::offer_at(&bus.address, fake.clone()).await.unwrap();
    let b = bus.clone();
    blocking(move || {
        let (ok, _, err) = b.call("Tron", &[]);
        assert!(ok, "root was refused: {err}");
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
            .arg(format!("--address={}", b.address))
            .args(["--timeout=5", "call", dbus::BUS_NAME, dbus::OBJECT_PATH])
            .args([dbus::INTERFACE, "Troff"])
            .output()
            .expect("setpriv (util-linux) is needed by this test");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody called Troff");
        assert!(
            err.contains("Access denied") || err.contains("AccessDenied"),
            "{err}"
        );
    })
    .await;
    assert_eq!(*fake.calls.lock().unwrap(), ["trace true"]);
}
