//! Tables of hastmon.conf files: accepted ones with what they mean, and
//! refused ones with the exact line printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/hastmon.conf";

fn parse_as(text: &str, node: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new(FILE), node)
}

fn tcp(host: &str, port: u16) -> Addr {
    Addr::Tcp {
        host: host.to_owned(),
        port,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A file under the system's temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("hast-mon-conf-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const KEY16: &str = "0123456789abcdef";

/// HASTMON(8)'s setup: two data nodes and a watchdog host.
const THREE_HOSTS: &str = r#"
key { secret "0123456789abcdef" }
resource www {
	exec /usr/libexec/hast/hastmon-hastd
	on nodea {
		remote 10.0.0.2 10.0.0.3
		priority 0
	}
	on nodeb {
		remote 10.0.0.1 10.0.0.3
		priority 1
	}
	on nodew {
		remote 10.0.0.1 10.0.0.2
	}
}
"#;

type Check = fn(&Config);

#[test]
fn accepted() {
    let cases: &[(&str, &str, &str, Check)] = &[
        ("defaults", "key { secret \"0123456789abcdef\" }\nexec /x\nresource r {\n on nodea { remote b }\n on b { remote nodea }\n}\n", "nodea", |c| {
            assert_eq!(c.control, Addr::Unix("/var/run/hastmonctl".into()));
            assert_eq!(c.listen, tcp("0.0.0.0", 8459));
            assert_eq!(c.pidfile, PathBuf::from("/var/run/hastmon.pid"));
            assert_eq!(c.state_dir, PathBuf::from("/var/lib/hastmon"));
            assert_eq!(c.hastd_control, Some(PathBuf::from("/run/hastctl")));
            assert_eq!(c.node, "nodea");
            let r = &c.resources[0];
            assert_eq!((r.name.as_str(), r.line), ("r", 3));
            assert_eq!(r.exec, PathBuf::from("/x"));
            assert_eq!(r.key.as_bytes(), KEY16.as_bytes());
            assert_eq!(
                r.timing,
                Timing {
                    heartbeat_interval: secs(1),
                    complaint_count: 2,
                    complaint_interval: secs(10),
                    timeout: secs(2),
                    attempts: 3,
                    lease: secs(2),
                }
            );
            let local = r.local("nodea").unwrap();
            assert_eq!(
                local,
                &NodeSection {
                    name: "nodea".into(),
                    remote: vec![tcp("b", 8459)],
                    priority: 0,
                    line: 4,
                    remote_line: 4,
                }
            );
        }),
        ("HASTMON(8) three hosts, as the watchdog", THREE_HOSTS, "nodew", |c| {
            let r = c.resource("www").unwrap();
            let names: Vec<_> = r.nodes.iter().map(|n| (n.name.as_str(), n.priority)).collect();
            assert_eq!(names, [("nodea", 0), ("nodeb", 1), ("nodew", 0)]);
            let w = r.local("nodew").unwrap();
            assert_eq!(w.remote, [tcp("10.0.0.1", 8459), tcp("10.0.0.2", 8459)]);
            assert_eq!((w.line, w.remote_line), (13, 14));
            assert_eq!(r.local("nodeb").unwrap().priority, 1);
        }),
        ("three hosts, as a host in none of them", THREE_HOSTS, "other", |c| {
            assert!(c.resources[0].local("other").is_none());
        }),
        ("short host name matches, any case", THREE_HOSTS, "NodeB.example.com", |c| {
            assert_eq!(c.resources[0].local(&c.node).unwrap().name, "nodeb");
        }),
        ("timing: global defaults, resource overrides, units", "\
heartbeat_interval 500ms
complaint_count 5
complaint_interval 30s
timeout 3
attempts 1
lease 4
key { secret \"0123456789abcdef\" }
exec /x
resource a {
  on nodea { remote b }
  on b { remote nodea }
}
resource b {
  heartbeat_interval 2s; lease 4000ms; attempts 7
  exec /y
  on nodea { remote b }
  on b { remote nodea }
}
", "nodea", |c| {
            let a = &c.resources[0].timing;
            assert_eq!(
                *a,
                Timing {
                    heartbeat_interval: ms(500),
                    complaint_count: 5,
                    complaint_interval: secs(30),
                    timeout: secs(3),
                    attempts: 1,
                    lease: secs(4),
                }
            );
            let b = &c.resources[1];
            assert_eq!(b.exec, PathBuf::from("/y"));
            assert_eq!(
                (b.timing.heartbeat_interval, b.timing.lease, b.timing.attempts, b.timing.timeout),
                (secs(2), secs(4), 7, secs(3))
            );
        }),
        ("host options: a node section replaces the global ones", "\
control unix:///run/mon.sock
listen 0.0.0.0:9000
pidfile /run/g.pid
on nodea {
  listen 10.0.0.1
  state_dir /srv/mon
}
on nodeb { control uds:///run/b.sock }
", "nodea", |c| {
            assert_eq!(c.control, Addr::Unix("/run/mon.sock".into()));
            assert_eq!(c.listen, tcp("10.0.0.1", 8459));
            assert_eq!(c.pidfile, PathBuf::from("/run/g.pid"));
            assert_eq!(c.state_dir, PathBuf::from("/srv/mon"));
            assert!(c.resources.is_empty());
        }),
        ("host options of another node", "\
listen 0.0.0.0:9000
on nodea { listen 10.0.0.1 }
on nodeb { control unix:///run/b.sock }
", "nodeb", |c| {
            assert_eq!(c.control, Addr::Unix("/run/b.sock".into()));
            assert_eq!(c.listen, tcp("0.0.0.0", 9000));
        }),
        ("hastd_control: a path per node, or none", "\
hastd_control none
on nodea { hastd_control uds:///srv/a/hastd.sock }
", "nodea", |c| {
            assert_eq!(c.hastd_control, Some(PathBuf::from("/srv/a/hastd.sock")));
        }),
        ("hastd_control none: the exec script does everything", "\
hastd_control none
on nodea { listen 10.0.0.1 }
", "nodea", |c| {
            assert_eq!(c.hastd_control, None);
        }),
        ("metrics_listen: off by default", "\
on nodea { listen 10.0.0.1 }
", "nodea", |c| {
            assert_eq!(c.metrics_listen, None);
        }),
        ("metrics_listen: global, a node's own, or none", "\
metrics_listen 0.0.0.0:9118
on nodea { metrics_listen tcp://127.0.0.1:9200 }
on nodeb { metrics_listen none }
", "nodea", |c| {
            assert_eq!(c.metrics_listen, Some(tcp("127.0.0.1", 9200)));
        }),
        ("metrics_listen none in a node section turns the global one off", "\
metrics_listen [::1]:9118
on nodeb { metrics_listen none }
", "nodeb", |c| {
            assert_eq!(c.metrics_listen, None);
        }),
        ("metrics_listen inherited from the global section", "\
metrics_listen [::1]:9118
on nodeb { metrics_listen none }
", "nodea", |c| {
            assert_eq!(c.metrics_listen, Some(tcp("::1", 9118)));
        }),
        ("a resource's key replaces the global one", "\
key { secret \"global-key-0123456789\" }
exec /x
resource a {
  key {
    secret \"resource-key-0123456789\"
  }
  on nodea { remote b }
  on b { remote nodea }
}
resource b {
  on nodea { remote b }
  on b { remote nodea }
}
", "nodea", |c| {
            assert_eq!(c.resources[0].key.as_bytes(), b"resource-key-0123456789");
            assert_eq!(c.resources[1].key.as_bytes(), b"global-key-0123456789");
        }),
        ("FreeBSD layout: one line, braces on their own lines, comments, quotes", "\
# hastmon
resource \"r\"   # the resource
{
\texec \"/usr/local/libexec/r script\" key { secret \"0123456789abcdef\" } on nodea
\t{
\t\tremote tcp://[fe80::1]:99 \"nodew\" priority 4294967295
\t}
\ton b { remote nodea; }
\ton nodew { remote nodea }
};
", "nodea", |c| {
            let r = &c.resources[0];
            assert_eq!(r.exec, PathBuf::from("/usr/local/libexec/r script"));
            let a = r.local("nodea").unwrap();
            assert_eq!(a.remote, [tcp("fe80::1", 99), tcp("nodew", 8459)]);
            assert_eq!(a.priority, u32::MAX);
        }),
        ("no resources need no key", "# nothing yet\n", "nodea", |c| {
            assert!(c.resources.is_empty());
        }),
        ("lease of exactly twice the heartbeat", "\
key { secret \"0123456789abcdef\" }
exec /x
heartbeat_interval 250ms
lease 500ms
resource r {
  on nodea { remote b }
  on b { remote nodea }
}
", "nodea", |c| {
            assert_eq!(c.resources[0].timing.lease, ms(500));
        }),
        ("the longest duration", "\
key { secret \"0123456789abcdef\" }
exec /x
complaint_interval 86400
resource r {
  on nodea { remote b }
  on b { remote nodea }
}
", "nodea", |c| {
            assert_eq!(c.resources[0].timing.complaint_interval, DURATION_MAX);
        }),
    ];
    for (what, text, node, check) in cases {
        let config = parse_as(text, node).unwrap_or_else(|e| panic!("{what}: {e}"));
        check(&config);
    }
}

#[test]
fn refused() {
    let k = "key { secret \"0123456789abcdef\" }\n";
    let two = " on a { remote b }\n on b { remote a }\n";
    let with_key = |rest: &str| format!("{k}{rest}");
    let cases: Vec<(String, &str)> = vec![
        // Lexical and grammar errors.
        ("bogus 1".into(), "1: unknown keyword \"bogus\""),
        ("exec \"/x".into(), "1: unterminated quoted string"),
        ("\"quoted\" 1".into(), "1: unexpected \"quoted\", expected a keyword"),
        ("}".into(), "1: unexpected \"}\": no section is open"),
        ("resource r {\n exec /x\n".into(), "1: section \"resource r\" is not closed: missing \"}\" before the end of the file"),
        ("\n\nkey {\n secret \"0123456789abcdef\"\n".into(), "3: section \"key\" is not closed: missing \"}\" before the end of the file"),
        ("resource {".into(), "1: unexpected \"{\", expected a resource name after \"resource\""),
        ("resource r\n\n;".into(), "3: unexpected \";\", expected \"{\" to open the section"),
        ("key secret".into(), "1: unexpected \"secret\", expected \"{\" to open the section"),
        ("lease\n".into(), "1: missing value for \"lease\""),
        ("lease 2 3".into(), "1: unexpected \"3\" after the value of \"lease\" (one value per statement)"),
        // Values.
        ("lease 0".into(), "1: invalid lease \"0\": must be greater than 0"),
        ("\nheartbeat_interval 0ms".into(), "2: invalid heartbeat_interval \"0ms\": must be greater than 0"),
        ("heartbeat_interval 1.5s".into(), "1: invalid heartbeat_interval \"1.5s\": expected seconds, or a number with the suffix ms or s (500ms, 2s)"),
        ("timeout 86401".into(), "1: invalid timeout \"86401\": too large (the limit is 86400s)"),
        ("complaint_interval 99999999999999999999s".into(), "1: invalid complaint_interval \"99999999999999999999s\": too large (the limit is 86400s)"),
        ("complaint_count 0".into(), "1: invalid complaint_count \"0\": expected a whole number of at least 1"),
        ("attempts 4294967296".into(), "1: invalid attempts \"4294967296\": too large (the limit is 4294967295)"),
        ("control tcp://h:1".into(), "1: invalid control \"tcp://h:1\": must be a Unix socket (unix:///path)"),
        ("control unix://run/x".into(), "1: invalid control \"unix://run/x\": a Unix socket path must be absolute (uds:///path)"),
        ("listen unix:///x".into(), "1: invalid listen \"unix:///x\": must be a TCP address"),
        ("listen h:65536".into(), "1: invalid listen \"h:65536\": port 65536 is out of range (0-65535)"),
        ("pidfile run/x.pid".into(), "1: invalid pidfile \"run/x.pid\": must be an absolute path"),
        ("state_dir var".into(), "1: invalid state_dir \"var\": must be an absolute path"),
        ("hastd_control tcp://h:1".into(), "1: invalid hastd_control \"tcp://h:1\": must be a Unix socket (unix:///path)"),
        ("resource r {\n hastd_control none\n}".into(), "2: \"hastd_control\" is not allowed in the resource section"),
        ("metrics_listen 127.0.0.1".into(), "1: invalid metrics_listen \"127.0.0.1\": a port is required"),
        ("metrics_listen unix:///run/m.sock".into(), "1: invalid metrics_listen \"unix:///run/m.sock\": must be a TCP address"),
        ("metrics_listen tls://h:9118".into(), "1: invalid metrics_listen \"tls://h:9118\": must be a TCP address"),
        ("metrics_listen h:1\nmetrics_listen h:2".into(), "2: \"metrics_listen\" is already set in this section at line 1"),
        ("resource r {\n metrics_listen h:1\n}".into(), "2: \"metrics_listen\" is not allowed in the resource section"),
        ("exec relative".into(), "1: invalid exec \"relative\": must be an absolute path"),
        ("lease 2\nlease 3".into(), "2: \"lease\" is already set in this section at line 1"),
        ("listen 0.0.0.0\nlisten 10.0.0.1".into(), "2: \"listen\" is already set in this section at line 1"),
        // Options in the wrong section.
        ("remote nodeb".into(), "1: \"remote\" is not allowed in the global section"),
        ("priority 1".into(), "1: \"priority\" is not allowed in the global section"),
        ("secret \"0123456789abcdef\"".into(), "1: \"secret\" is not allowed in the global section"),
        ("resource r {\n control unix:///x\n}".into(), "2: \"control\" is not allowed in the resource section"),
        ("resource r {\n listen 10.0.0.1\n}".into(), "2: \"listen\" is not allowed in the resource section"),
        ("resource r {\n resource s {\n}".into(), "2: \"resource\" is not allowed in the resource section"),
        ("on nodea {\n exec /x\n}".into(), "2: \"exec\" is not allowed in the node section"),
        ("on nodea {\n on b {\n}".into(), "2: \"on\" is not allowed in the node section"),
        ("on nodea {\n key { secret \"0123456789abcdef\" }\n}".into(), "2: \"key\" is not allowed in the node section"),
        ("resource r {\n on a {\n  exec /x\n }\n}".into(), "3: \"exec\" is not allowed in the resource-node section"),
        ("resource r {\n on a {\n  listen 10.0.0.1\n }\n}".into(), "3: \"listen\" is not allowed in the resource-node section"),
        ("resource r {\n on a { key { } }\n}".into(), "2: \"key\" is not allowed in the resource-node section"),
        ("key {\n exec /x\n}".into(), "2: \"exec\" is not allowed in the key section"),
        ("key {\n passphrase x\n}".into(), "2: unknown keyword \"passphrase\""),
        // Keys.
        ("key { secret \"short\" }".into(), "1: the secret is 5 bytes; at least 16 are required"),
        ("key { secret \"\" }".into(), "1: the secret is 0 bytes; at least 16 are required"),
        ("key {\n}".into(), "1: the key section sets neither \"secret\" nor \"secret_file\""),
        ("key {\n secret \"0123456789abcdef\"\n secret_file /etc/k\n}".into(), "3: \"secret_file\" and \"secret\" (line 2) cannot both be set; keep one"),
        ("key {\n secret \"0123456789abcdef\"\n secret \"0123456789abcdef\"\n}".into(), "3: \"secret\" is already set in this section at line 2"),
        ("key { secret_file /nonexistent/hastmon.key }".into(), "1: secret_file \"/nonexistent/hastmon.key\": cannot be read: No such file or directory (os error 2)"),
        ("key { secret_file relative.key }".into(), "1: invalid secret_file \"relative.key\": must be an absolute path"),
        ("key { secret_file / }".into(), "1: secret_file \"/\": not a regular file"),
        (format!("{k}{k}"), "2: \"key\" is already set in this section at line 1"),
        (format!("resource r {{\n exec /x\n{k}{k}}}"), "4: \"key\" is already set in this section at line 3"),
        // Sections and names.
        ("resource all {\n}".into(), "1: invalid resource name \"all\": \"all\" is reserved by hastmonctl"),
        ("resource .hidden {\n}".into(), "1: invalid resource name \".hidden\": must not start with '.' or '-'"),
        ("resource a/b {\n}".into(), "1: invalid resource name \"a/b\": use only A-Z a-z 0-9 . _ -"),
        (with_key(&format!("exec /x\nresource r {{\n{two}}}\nresource r {{\n{two}}}")), "7: duplicate resource \"r\" (first defined at line 3)"),
        ("resource r {\n on a/b {\n }\n}".into(), "2: invalid node name \"a/b\": use 1 to 255 of A-Z a-z 0-9 . _ -"),
        ("on nodea {\n}\non NODEA {\n}".into(), "3: duplicate section \"on NODEA\" (first at line 1)"),
        ("resource r {\n on a { remote b }\n on A { remote b }\n}".into(), "3: duplicate section \"on A\" (first at line 2)"),
        ("resource r {\n on a { remote b }\n on b { remote a }\n on c { remote a }\n on d { remote a }\n}".into(), "5: too many \"on\" sections in one resource (the limit is 3)"),
        // Remote and priority.
        ("resource r {\n on a { remote b c d }\n}".into(), "2: too many remote addresses (the limit is 2)"),
        ("resource r {\n on a { remote b b }\n}".into(), "2: invalid remote \"b\": listed twice"),
        ("resource r {\n on a { remote b:0 }\n}".into(), "2: invalid remote \"b:0\": port 0 cannot be connected to"),
        ("resource r {\n on a { remote unix:///s }\n}".into(), "2: invalid remote \"unix:///s\": must be a TCP address"),
        ("resource r {\n on a {\n  remote\n }\n}".into(), "3: missing value for \"remote\""),
        ("resource r {\n on a { remote { } }\n}".into(), "2: missing value for \"remote\""),
        ("resource r {\n on a { remote b\n remote c }\n}".into(), "3: \"remote\" is already set in this section at line 2"),
        ("resource r {\n on a { priority -1 }\n}".into(), "2: invalid priority \"-1\": expected a whole number"),
        ("resource r {\n on a { priority 1 priority 2 }\n}".into(), "2: \"priority\" is already set in this section at line 2"),
        // Checks of a whole resource.
        (with_key("resource r {\n exec /x\n on a { remote b }\n}"), "2: resource \"r\" has 1 \"on\" section(s); it needs 2 or 3 (two data nodes and an optional watchdog host)"),
        (with_key("exec /x\nresource r {\n}"), "3: resource \"r\" has 0 \"on\" section(s); it needs 2 or 3 (two data nodes and an optional watchdog host)"),
        (with_key("exec /x\nresource r {\n on a { priority 1 }\n on b { remote a }\n}"), "4: resource \"r\": section \"on a\" sets no \"remote\" (the addresses of the other hosts)"),
        (with_key("exec /x\nresource r {\n on a {\n  remote b c\n }\n on b { remote a }\n}"), "5: resource \"r\": section \"on a\" lists 2 remote addresses, but the resource has only 1 other node(s)"),
        (with_key(&format!("resource r {{\n{two}}}")), "2: resource \"r\": \"exec\" is not set (set it in the resource or globally)"),
        (format!("exec /x\nresource r {{\n{two}}}"), "2: resource \"r\": no key configured (add key { secret \"...\" } to the resource or the global section)"),
        (with_key("exec /x\nresource r {\n on nodea { remote b }\n on nodea.example.com { remote b }\n}"), "5: sections \"on nodea\" (line 4) and \"on nodea.example.com\" both match this node"),
        ("on nodea {\n}\non nodea.example.com {\n}".into(), "3: sections \"on nodea\" (line 1) and \"on nodea.example.com\" both match this node"),
        // The lease against the heartbeat, blamed on the later setting.
        (with_key(&format!("exec /x\nheartbeat_interval 2\nresource r {{\n lease 3\n{two}}}")), "5: resource \"r\": lease 3s is shorter than twice heartbeat_interval 2s (a lease must outlive two missed heartbeats)"),
        (with_key(&format!("exec /x\nlease 3\nresource r {{\n heartbeat_interval 1600ms\n{two}}}")), "5: resource \"r\": lease 3s is shorter than twice heartbeat_interval 1600ms (a lease must outlive two missed heartbeats)"),
        (with_key(&format!("exec /x\nheartbeat_interval 1500ms\nresource r {{\n{two}}}")), "3: resource \"r\": lease 2s is shorter than twice heartbeat_interval 1500ms (a lease must outlive two missed heartbeats)"),
    ];
    assert!(cases.len() >= 30);
    for (text, want) in &cases {
        let err = parse_as(text, "nodea").expect_err(text);
        assert_eq!(err.to_string(), format!("{FILE}:{want}"), "{text}");
        assert!(!err.to_string().contains('\n'));
        let expected_code = if matches!(
            &err.kind,
            ErrorKind::SecretFile {
                error: hast_conf::SecretError::Io { .. },
                ..
            }
        ) {
            ConfigError::EX_NOINPUT
        } else {
            ConfigError::EX_CONFIG
        };
        assert_eq!(err.exit_code(), expected_code, "{text}");
    }
}

#[test]
fn whole_file_errors() {
    let err = parse_as(THREE_HOSTS, "").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{FILE}: the node name is empty (give one with --node NAME)")
    );
    let big = "#".repeat(FILE_SIZE_MAX as usize + 1);
    let err = parse_as(&big, "nodea").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{FILE}: file is too big (1048577 bytes; the limit is 1048576 bytes)")
    );
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn secret_file() {
    let good = TempFile::new(
        "good.key",
        b"  0123456789abcdefXYZ \nthe-next-key-for-rotation\n",
    );
    let text = format!(
        "key {{ secret_file {} }}\nexec /x\nresource r {{\n on nodea {{ remote b }}\n on b {{ remote nodea }}\n}}\n",
        good.0.display()
    );
    let c = parse_as(&text, "nodea").unwrap();
    assert_eq!(c.resources[0].key.as_bytes(), b"0123456789abcdefXYZ");

    let short = TempFile::new("short.key", b"short\n");
    let text = format!("\nkey {{\n secret_file {}\n}}\n", short.0.display());
    let err = parse_as(&text, "nodea").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{FILE}:3: secret_file \"{}\": a key is 5 bytes; at least 16 are required",
            short.0.display()
        )
    );
    assert_eq!(err.exit_code(), 78);

    let big = TempFile::new("big.key", &[b'k'; SECRET_FILE_SIZE_MAX as usize + 1]);
    let text = format!("key {{ secret_file {} }}", big.0.display());
    let err = parse_as(&text, "nodea").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{FILE}:1: secret_file \"{}\": larger than 4096 bytes",
            big.0.display()
        )
    );

    let missing = parse_as("key { secret_file /nonexistent/k }", "nodea").unwrap_err();
    assert_eq!(missing.exit_code(), ConfigError::EX_NOINPUT);

    // The same rule as hastd's secret_file: readable by others is refused.
    let exposed = TempFile::new("exposed.key", b"0123456789abcdef\n");
    std::fs::set_permissions(
        &exposed.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let text = format!("key {{ secret_file {} }}", exposed.0.display());
    let err = parse_as(&text, "nodea").unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn the_secret_never_shows() {
    let c = parse_as(THREE_HOSTS, "nodea").unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains(KEY16), "{shown}");
    assert!(shown.contains("redacted"));
}

#[test]
fn load_reads_with_limits() {
    let ok = TempFile::new("ok.conf", THREE_HOSTS.as_bytes());
    let c = load(&ok.0, Some("nodeb")).unwrap();
    assert_eq!(c.node, "nodeb");
    assert_eq!(c.resources[0].local("nodeb").unwrap().priority, 1);

    let missing = Path::new("/nonexistent/hastmon.conf");
    let err = load(missing, Some("nodea")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/hastmon.conf: cannot read: No such file or directory (os error 2)"
    );
    assert_eq!(err.exit_code(), ConfigError::EX_NOINPUT);

    // A sparse 2 MiB file is refused from its size, before it is read.
    let big = TempFile::new("big.conf", b"");
    std::fs::File::options()
        .write(true)
        .open(&big.0)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let err = load(&big.0, Some("nodea")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(": file is too big (2097152 bytes; the limit is 1048576 bytes)"),
        "{err}"
    );
    assert_eq!(err.exit_code(), ConfigError::EX_CONFIG);

    let latin1 = TempFile::new("latin1.conf", b"# ok\n# caf\xe9\n");
    let err = load(&latin1.0, Some("nodea")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:2: file is not valid UTF-8", latin1.0.display())
    );
}

/// The shipped example is refused as is (its placeholder secret, with its
/// line) and parses for each of its three hosts once the secret is set.
#[test]
fn shipped_example() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/hastmon/hastmon.conf.example");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains(PLACEHOLDER_SECRET))
        .unwrap();
    let err = load(&path, Some("nodea")).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:{line}: the secret is the example's placeholder",
            path.display()
        )),
        "{err}"
    );
    let set = TempFile::new(
        "example.conf",
        text.replace(PLACEHOLDER_SECRET, "a-real-secret-of-32-random-chars")
            .as_bytes(),
    );
    for node in ["nodea", "nodeb", "nodew"] {
        let c = load(&set.0, Some(node)).unwrap_or_else(|e| panic!("{node}: {e}"));
        let r = c.resource("shared").unwrap();
        assert_eq!(r.exec, PathBuf::from("/usr/libexec/hast/hastmon-hastd"));
        assert_eq!(r.nodes.len(), 3);
        assert_eq!(r.local(node).unwrap().remote.len(), 2);
        assert_eq!(r.timing, Timing::default());
    }
}
