//! hastcd.conf tables: what each line means, and the one-line error each
//! bad line gets.

use super::*;

const HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";

fn p(text: &str) -> Result<Config, ConfError> {
    parse(text, Path::new("/etc/hast/hastcd.conf"))
}

fn ok(text: &str) -> Config {
    p(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(text: &str) -> String {
    match p(text) {
        Ok(c) => panic!("{text:?} parsed: {c:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert_eq!(e.exit_code(), 78, "{s}");
            s
        }
    }
}

#[test]
fn empty_file_is_all_defaults() {
    let c = ok("");
    assert_eq!(c.ctrl_loss_tmo, Some(Duration::from_secs(60)));
    assert_eq!(c.poll_interval, Duration::from_secs(2));
    assert_eq!(c.reconnect_interval, Duration::from_millis(250));
    assert_eq!(c.request_timeout, Duration::from_secs(5));
    assert_eq!(c.discovery_timeout, Duration::from_secs(2));
    assert_eq!(c.socket_dir, Some(PathBuf::from("/run/hast/hastcd")));
    assert_eq!(c.socket_owner, Account::Id(0));
    assert_eq!(c.socket_group, Account::Id(0));
    assert_eq!(c.socket_mode, 0o600);
    assert_eq!(c.tcp_listen, None);
    assert_eq!(c.secret_file, None);
    assert_eq!(c.control_socket, PathBuf::from("/run/hast/hastcd.sock"));
    assert_eq!(c.dbus, DbusBus::System);
    assert_eq!(c.nbd_tls, None);
    assert!(c.controllers.is_empty() && c.excludes.is_empty() && c.connections.is_empty());
    assert!(!c.automatic());
    assert_eq!(
        c.socket_path("db"),
        Some(PathBuf::from("/run/hast/hastcd/db.nbd"))
    );
    // Comments and blank lines only: the same.
    assert_eq!(ok("# c\n; c\n\n   \n[Global]\n[Controllers]\n"), c);
}

#[test]
fn global_values() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&str, Check)] = &[
        ("ctrl_loss_tmo = -1", |c| c.ctrl_loss_tmo.is_none()),
        ("ctrl_loss_tmo = 0", |c| {
            c.ctrl_loss_tmo == Some(Duration::ZERO)
        }),
        ("ctrl_loss_tmo = 2.5", |c| {
            c.ctrl_loss_tmo == Some(Duration::from_millis(2500))
        }),
        ("ctrl_loss_tmo = 604800", |c| {
            c.ctrl_loss_tmo == Some(Duration::from_secs(604800))
        }),
        ("poll_interval = 0.05", |c| {
            c.poll_interval == Duration::from_millis(50)
        }),
        ("poll_interval = 3600", |c| {
            c.poll_interval == Duration::from_secs(3600)
        }),
        ("poll_interval=0.5", |c| {
            c.poll_interval == Duration::from_millis(500)
        }),
        ("reconnect_interval = 0.01", |c| {
            c.reconnect_interval == Duration::from_millis(10)
        }),
        ("request_timeout = 30 # inline", |c| {
            c.request_timeout == Duration::from_secs(30)
        }),
        ("discovery_timeout = 0.125", |c| {
            c.discovery_timeout == Duration::from_millis(125)
        }),
        ("socket_dir = /run/x", |c| {
            c.socket_dir == Some(PathBuf::from("/run/x"))
        }),
        ("socket_dir = none\ntcp_listen = 127.0.0.1:10809", |c| {
            c.socket_dir.is_none() && c.tcp_listen == Some("127.0.0.1:10809".parse().unwrap())
        }),
        ("socket_owner = 1001", |c| {
            c.socket_owner == Account::Id(1001)
        }),
        ("socket_group = disk", |c| {
            c.socket_group
                == Account::Name {
                    name: "disk".into(),
                    line: 2,
                }
        }),
        ("socket_mode = 0660", |c| c.socket_mode == 0o660),
        ("socket_mode = 600", |c| c.socket_mode == 0o600),
        ("tcp_listen = [::1]:0", |c| {
            c.tcp_listen == Some("[::1]:0".parse().unwrap())
        }),
        ("tcp_listen = 127.0.0.2:10810", |c| {
            c.tcp_listen == Some("127.0.0.2:10810".parse().unwrap())
        }),
        ("tcp_listen = none", |c| c.tcp_listen.is_none()),
        ("secret_file = /etc/hast/hastcd.key", |c| {
            c.secret_file == Some(PathBuf::from("/etc/hast/hastcd.key"))
        }),
        ("secret_file = none", |c| c.secret_file.is_none()),
        ("control_socket = /tmp/c.sock", |c| {
            c.control_socket == Path::new("/tmp/c.sock")
        }),
        ("dbus = session", |c| c.dbus == DbusBus::Session),
        ("dbus = none", |c| c.dbus == DbusBus::None),
        ("nbd_tls = off", |c| c.nbd_tls.is_none()),
        ("  \tdbus\t=\tnone\t", |c| c.dbus == DbusBus::None),
        ("dbus = none\r", |c| c.dbus == DbusBus::None),
        ("secret_file = /k#not-a-comment", |c| {
            c.secret_file == Some(PathBuf::from("/k#not-a-comment"))
        }),
    ];
    for (line, check) in cases {
        let text = format!("[Global]\n{line}\n");
        let c = ok(&text);
        assert!(check(&c), "{line:?}: {c:?}");
    }
}

#[test]
fn nbd_tls() {
    let c = ok(&format!(
        "[Global]\nnbd_tls = on\nnbd_tls_pin = sha256:{HEX}\nnbd_tls_pin = {}\n\
         nbd_tls_cert = /etc/hast/c.pem\nnbd_tls_key = /etc/hast/k.pem\n",
        Fingerprint([7; 32]).hex()
    ));
    let t = c.nbd_tls.unwrap();
    assert_eq!(t.pins, vec![HEX.parse().unwrap(), Fingerprint([7; 32])]);
    assert_eq!(
        t.client,
        Some(ClientCert {
            cert: "/etc/hast/c.pem".into(),
            key: "/etc/hast/k.pem".into()
        })
    );
    let c = ok(&format!("[Global]\nnbd_tls_pin = {HEX}\nnbd_tls = on\n"));
    assert_eq!(c.nbd_tls.unwrap().client, None);
}

#[test]
fn controllers() {
    let c = ok("[Controllers]\n\
        controller = host=10.0.0.1;port=8459\n\
        controller = host=10.0.0.2\n\
        controller = host=::1;port=9000\n\
        controller = host=[fe80::2] ; port = 1\n\
        controller = port=7;host=node-b.example.com;\n\
        exclude = resource=scratch\n\
        exclude=resource=tmp.1\n\
        connection = resource=db;controller=10.0.0.3:8459,10.0.0.4:8459\n\
        connection = resource=logs;controller=[::1]:9,::2,node-c,10.0.0.5\n");
    let ctl = |h: &str, port| Controller {
        host: h.into(),
        port,
    };
    assert_eq!(
        c.controllers,
        vec![
            ctl("10.0.0.1", 8459),
            ctl("10.0.0.2", 8459),
            ctl("::1", 9000),
            ctl("fe80::2", 1),
            ctl("node-b.example.com", 7),
        ]
    );
    assert_eq!(c.excludes, vec!["scratch".to_string(), "tmp.1".into()]);
    assert_eq!(
        c.connections,
        vec![
            Connection {
                resource: "db".into(),
                controllers: vec![ctl("10.0.0.3", 8459), ctl("10.0.0.4", 8459)]
            },
            Connection {
                resource: "logs".into(),
                controllers: vec![
                    ctl("::1", 9),
                    ctl("::2", 8459),
                    ctl("node-c", 8459),
                    ctl("10.0.0.5", 8459)
                ]
            },
        ]
    );
    assert!(c.automatic());
    assert_eq!(c.controllers[2].to_string(), "[::1]:9000");
    assert_eq!(c.controllers[0].to_string(), "10.0.0.1:8459");
}

#[test]
fn errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        ("[Global]\nfoo = 1\n", ":2: unknown key \"foo\" in [Global]"),
        ("[Global]\ncontroller = host=a\n", ":2: unknown key \"controller\" in [Global]"),
        ("[Controllers]\npoll_interval = 1\n", ":2: unknown key \"poll_interval\" in [Controllers]"),
        ("[global]\n", ":1: unknown section \"global\""),
        ("[Nope]\n", ":1: unknown section"),
        ("[Global\n", ":1: expected \"[Section]\""),
        ("[Global]\njust words\n", ":2: expected \"[Section]\", \"key = value\""),
        ("dbus = none\n", ":1: \"dbus\" outside a section"),
        ("[Global]\n[Controllers]\n[Global]\n", ":3: section [Global] appears twice (first at line 1)"),
        ("[Global]\ndbus = none\n\ndbus = system\n", ":4: dbus is set twice (first at line 2)"),
        ("[Global]\ndbus =\n", ":2: dbus has no value"),
        ("[Global]\ndbus = # nothing\n", ":2: dbus has no value"),
        ("[Global]\ndbus = bus\n", ":2: dbus = \"bus\": expected system, session or none"),
        ("[Global]\nctrl_loss_tmo = -2\n", ":2: ctrl_loss_tmo = \"-2\": expected seconds"),
        ("[Global]\nctrl_loss_tmo = 604801\n", "expected seconds from 0 to 604800"),
        ("[Global]\npoll_interval = 0.04\n", ":2: poll_interval = \"0.04\": expected seconds from 0.05 to 3600"),
        ("[Global]\npoll_interval = 3600.001\n", "from 0.05 to 3600"),
        ("[Global]\npoll_interval = 1.0001\n", "at most three decimals"),
        ("[Global]\npoll_interval = 1.\n", "expected seconds"),
        ("[Global]\npoll_interval = .5\n", "expected seconds"),
        ("[Global]\npoll_interval = 1e3\n", "expected seconds"),
        ("[Global]\npoll_interval = +1\n", "expected seconds"),
        ("[Global]\npoll_interval = 99999999999999999999\n", "expected seconds"),
        ("[Global]\nreconnect_interval = 61\n", "from 0.01 to 60"),
        ("[Global]\nrequest_timeout = 0.05\n", "from 0.1 to 3600"),
        ("[Global]\ndiscovery_timeout = 0\n", "from 0.05 to 60"),
        ("[Global]\nsocket_dir = run/x\n", ":2: socket_dir = \"run/x\": expected an absolute path"),
        ("[Global]\nsocket_dir = /run/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", "no room for"),
        ("[Global]\nsocket_dir = none\n", ":2: socket_dir = none and no tcp_listen"),
        ("[Global]\nsocket_owner = ro ot\n", ":2: socket_owner = \"ro ot\": expected a name"),
        ("[Global]\nsocket_owner = -root\n", "expected a name"),
        ("[Global]\nsocket_group = 99999999999\n", "id out of range"),
        ("[Global]\nsocket_mode = 0999\n", "expected an octal mode"),
        ("[Global]\nsocket_mode = 01777\n", "expected an octal mode"),
        ("[Global]\nsocket_mode = 0400\n", "the owner needs read and write"),
        ("[Global]\nsocket_mode = rw\n", "expected an octal mode"),
        ("[Global]\ntcp_listen = 10.0.0.1:10809\n", "must be a loopback address"),
        ("[Global]\ntcp_listen = 0.0.0.0:10809\n", "must be a loopback address"),
        ("[Global]\ntcp_listen = localhost:10809\n", "expected IP:PORT"),
        ("[Global]\ntcp_listen = 127.0.0.1\n", "expected IP:PORT"),
        ("[Global]\nsecret_file = key\n", "expected an absolute path"),
        ("[Global]\ncontrol_socket = /run/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", "longer than a Unix socket path"),
        ("[Global]\nnbd_tls = yes\n", "expected on or off"),
        ("[Global]\nnbd_tls = on\n", ":2: nbd_tls = on needs at least one nbd_tls_pin"),
        ("[Global]\nnbd_tls_pin = abc\n", ":2: nbd_tls_pin = \"abc\": expected a SHA-256"),
        ("[Global]\n\nnbd_tls_pin = 0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff\n", ":3: nbd_tls_pin is set but nbd_tls is off"),
        ("[Global]\nnbd_tls_cert = /c\n", ":2: nbd_tls_cert is set but nbd_tls is off"),
        ("[Global]\nnbd_tls = on\nnbd_tls_pin = 0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff\nnbd_tls_cert = /c\n", ":4: nbd_tls_cert needs nbd_tls_key"),
        ("[Global]\nnbd_tls = on\nnbd_tls_pin = 0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff\nnbd_tls_pin = sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff\n", ":4: nbd_tls_pin = \"sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff\": sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff is pinned twice"),
        ("[Controllers]\ncontroller = 10.0.0.1\n", ":2: controller = \"10.0.0.1\": expected NAME=VALUE"),
        ("[Controllers]\ncontroller = port=1\n", "expected host=ADDRESS"),
        ("[Controllers]\ncontroller = host=a;host=b\n", "host is given twice"),
        ("[Controllers]\ncontroller = host=a;transport=tcp\n", "unknown \"transport\" (expected host, port)"),
        ("[Controllers]\ncontroller = host=a;port=0\n", "port \"0\": expected 1 to 65535"),
        ("[Controllers]\ncontroller = host=a;port=65536\n", "expected 1 to 65535"),
        ("[Controllers]\ncontroller = host=a;port=\n", "port has no value"),
        ("[Controllers]\ncontroller = host=-a\n", "is not an IP address or a host name"),
        ("[Controllers]\ncontroller = host=a/b\n", "is not an IP address or a host name"),
        ("[Controllers]\ncontroller = host=a\ncontroller = host=a;port=8459\n", ":3: controller = \"host=a;port=8459\": a:8459 is listed twice"),
        ("[Controllers]\nexclude = scratch\n", "expected NAME=VALUE"),
        ("[Controllers]\nexclude = resource=all\n", "\"all\" is reserved"),
        ("[Controllers]\nexclude = resource=../x\n", "use only A-Z a-z 0-9 . _ -"),
        ("[Controllers]\nexclude = resource=a\nexclude = resource=a\n", ":3: exclude = \"resource=a\": resource \"a\" is excluded twice"),
        ("[Controllers]\nconnection = resource=db\n", "expected controller=HOST"),
        ("[Controllers]\nconnection = controller=a\n", "expected resource=NAME"),
        ("[Controllers]\nconnection = resource=db;controller=a,,b\n", "an empty controller"),
        ("[Controllers]\nconnection = resource=db;controller=a:x\n", "port \"x\""),
        ("[Controllers]\nconnection = resource=db;controller=[::1\n", "no ']'"),
        ("[Controllers]\nconnection = resource=db;controller=[::1]9\n", "expected ':PORT'"),
        ("[Controllers]\nconnection = resource=db;controller=[a]:9\n", "is not an IPv6 address"),
        ("[Controllers]\nconnection = resource=db;controller=::g\n", "is not an IP address"),
        ("[Controllers]\nconnection = resource=db;controller=a,a:8459\n", "a:8459 is listed twice"),
        ("[Controllers]\nconnection = resource=db;controller=a\nconnection = resource=db;controller=b\n", ":3: connection = \"resource=db;controller=b\": resource \"db\" has two connection lines"),
        ("[Controllers]\nexclude = resource=db\nconnection = resource=db;controller=b\n", ":3: connection = \"resource=db;controller=b\": resource \"db\" is also excluded"),
        ("[Controllers]\nconnection = resource=db;controller=b\nexclude = resource=db\n", "also has a connection line"),
        ("[Global]\ndbus = \u{1b}[31m\n", "\\u{1b}[31m"),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.starts_with("/etc/hast/hastcd.conf:"), "{text:?}: {e}");
        assert!(e.contains(want), "{text:?}:\n got {e}\nwant {want}");
    }
}

#[test]
fn limits() {
    // A line too long, 1024 controllers and one more, 17 controllers on a connection.
    let long = format!("[Global]\nsecret_file = /{}\n", "x".repeat(LINE_LEN_MAX));
    assert!(err(&long).contains(":2: line longer than 4096 bytes"));
    let mut text = String::from("[Controllers]\n");
    for i in 0..CONTROLLERS_MAX {
        text.push_str(&format!(
            "controller = host=10.0.{}.{};port=1\n",
            i / 256,
            i % 256
        ));
    }
    assert_eq!(ok(&text).controllers.len(), CONTROLLERS_MAX);
    text.push_str("controller = host=10.9.9.9\n");
    assert!(err(&text).contains(":1026: more than 1024 controller lines"));
    let list: Vec<String> = (0..=CONNECTION_CONTROLLERS_MAX)
        .map(|i| format!("10.0.0.{i}"))
        .collect();
    let e = err(&format!(
        "[Controllers]\nconnection = resource=db;controller={}\n",
        list.join(",")
    ));
    assert!(e.contains("at most 16 controllers"), "{e}");
    let pins: Vec<String> = (0..=PINS_MAX as u8)
        .map(|i| Fingerprint([i; 32]).hex())
        .collect();
    let e = err(&format!(
        "[Global]\nnbd_tls = on\nnbd_tls_pin = {}\n",
        pins.join(",")
    ));
    assert!(e.contains("at most"), "{e}");
    let huge = "#".repeat(FILE_SIZE_MAX as usize + 1);
    let e = p(&huge).unwrap_err();
    assert!(e.to_string().ends_with("larger than 1048576 bytes"), "{e}");
    assert_eq!(e.line, None);
}

#[test]
fn load_reads_resolves_and_checks_the_file() {
    let dir = std::env::temp_dir().join(format!("hastcd-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("hastcd.conf");
    std::fs::write(&f, "[Global]\nsocket_owner = root\nsocket_group = 5\n").unwrap();
    let c = load(&f).unwrap();
    assert_eq!(c.socket_owner, Account::Id(0));
    assert_eq!(c.socket_group.id(), Some(5));
    std::fs::write(&f, "[Global]\n\nsocket_group = no-such-group-hastcd\n").unwrap();
    let e = load(&f).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: socket_group: no such group", f.display())),
        "{e}"
    );
    assert_eq!(e.exit_code(), 78);
    std::fs::write(&f, b"[Global]\n\xff\n").unwrap();
    assert!(load(&f)
        .unwrap_err()
        .to_string()
        .ends_with(":2: not UTF-8 text"));
    std::fs::write(&f, vec![b'#'; FILE_SIZE_MAX as usize + 1]).unwrap();
    assert!(load(&f).unwrap_err().to_string().contains("larger than"));
    let e = load(&dir.join("missing")).unwrap_err();
    assert_eq!(e.exit_code(), 66, "{e}");
    assert_eq!(load(&dir).unwrap_err().exit_code(), 78);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn secret_file_reads_like_hast_conf() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("hastcd-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("hastcd.key");
    std::fs::write(&key, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = ok(&format!("[Global]\nsecret_file = {}\n", key.display()));
    let s = c.load_secret().unwrap().unwrap();
    assert_eq!(s.current(), b"0123456789abcdef");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = c.load_secret().unwrap_err();
    assert!(e.contains("chmod 600"), "{e}");
    assert_eq!(ok("").load_secret().unwrap(), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The annotated example in contrib/ parses, and says what the defaults are.
#[test]
fn contrib_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/hastcd/hastcd.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.automatic());
    assert!(!c.connections.is_empty() && !c.excludes.is_empty());
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = p(&text) {
            proptest::prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn arbitrary_lines_in_sections_never_panic(
        lines in proptest::collection::vec("[a-z_]{1,20} ?= ?[ -~]{0,40}", 0..8)
    ) {
        for section in ["[Global]", "[Controllers]"] {
            let text = format!("{section}\n{}\n", lines.join("\n"));
            if let Err(e) = p(&text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
