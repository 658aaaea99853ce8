//! hast.conf as operators write it: FreeBSD's examples, every inheritance
//! level, and one case per error with its exact line.

use std::path::{Path, PathBuf};

use hast_conf::{
    parse, Addr, Checksum, Compression, Config, ConfigError, OnIoError, Replication, Resource,
};

fn conf(text: &str, node: &str) -> Config {
    parse(text, Path::new("/etc/hast.conf"), node).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str, node: &str) -> ConfigError {
    match parse(text, Path::new("/etc/hast.conf"), node) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

fn tcp(host: &str, port: u16) -> Addr {
    Addr::Tcp {
        host: host.into(),
        port,
    }
}

/// A resource with every option at its default.
fn defaults(name: &str, local: &str, remote: Option<Addr>, line: u32) -> Resource {
    Resource {
        name: name.into(),
        provider_name: name.into(),
        local: local.into(),
        remote,
        source: None,
        replication: Replication::Fullsync,
        checksum: Checksum::None,
        compression: Compression::Hole,
        timeout_secs: 20,
        ping_timeout_secs: 3,
        exec: None,
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: true,
        freeze_timeout_secs: 60,
        on_io_error: OnIoError::Detach,
        resync_rate: 0,
        line,
    }
}

// hast.conf(5), EXAMPLES.
const FREEBSD_EXAMPLE: &str = "\
# global section
replication memsync

resource shared {
\tlocal /dev/da0
\ton hasta {
\t\tremote tcp4://10.0.0.2
\t}
\ton hastb {
\t\tremote tcp4://10.0.0.1
\t}
}
resource tank {
\ton hasta {
\t\tlocal /dev/mirror/tanka
\t\tsource tcp4://10.0.0.1
\t\tremote tcp4://10.0.0.2
\t}
\ton hastb {
\t\tlocal /dev/mirror/tankb
\t\tsource tcp4://10.0.0.2
\t\tremote tcp4://10.0.0.1
\t}
}
";

#[test]
fn freebsd_example_on_each_node() {
    for (node, me, peer, tank) in [
        ("hasta", "10.0.0.1", "10.0.0.2", "/dev/mirror/tanka"),
        ("hastb", "10.0.0.2", "10.0.0.1", "/dev/mirror/tankb"),
        (
            "hasta.example.org",
            "10.0.0.1",
            "10.0.0.2",
            "/dev/mirror/tanka",
        ),
    ] {
        let c = conf(FREEBSD_EXAMPLE, node);
        assert_eq!(c.node, node);
        assert_eq!(c.file, PathBuf::from("/etc/hast.conf"));
        let mut shared = defaults("shared", "/dev/da0", Some(tcp(peer, 8457)), 4);
        shared.replication = Replication::Memsync;
        let mut t = defaults("tank", tank, Some(tcp(peer, 8457)), 13);
        t.replication = Replication::Memsync;
        // FreeBSD binds the source with any port.
        t.source = Some(tcp(me, 0));
        assert_eq!(c.resources, vec![shared, t], "{node}");
        assert_eq!(c.resource("tank").map(|r| r.line), Some(13));
        assert!(c.resource("nope").is_none());
    }
}

#[test]
fn exec_timeout_is_node_level() {
    let text = "exec_timeout 5\non b { exec_timeout 9 }\nresource r { remote none\n on a { local /a } on b { local /b } }\n";
    assert_eq!(conf(text, "a").exec_timeout_secs, 5);
    assert_eq!(conf(text, "b").exec_timeout_secs, 9);
    let e = err("resource r { exec_timeout 5\n on a { local /a } }\n", "a");
    assert!(e.to_string().contains("exec_timeout"), "{e}");
}

#[test]
fn daemon_defaults() {
    let c = conf(FREEBSD_EXAMPLE, "hasta");
    assert_eq!(c.control, Addr::Unix("/run/hastctl".into()));
    assert_eq!(c.control.to_string(), "uds:///run/hastctl");
    assert_eq!(c.pidfile, PathBuf::from("/run/hastd.pid"));
    assert_eq!(c.listen, vec![tcp("0.0.0.0", 8457)]);
    // Opt-in: no TCP export unless asked for.
    assert_eq!(c.nbd_listen, None);
    assert_eq!(c.nbd_socket_dir, Some(PathBuf::from("/run/hast")));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/hast"));
    assert_eq!(c.exec_timeout_secs, 60);
    assert_eq!(c.metrics_listen, None);
    // Opt-in: no discovery listener unless asked for.
    assert_eq!(c.discovery_listen, None);
    let shared = &c.resources[0];
    assert_eq!(
        c.nbd_socket_path(shared),
        Some(PathBuf::from("/run/hast/shared.nbd"))
    );
}

// The setup of hastctl(8), EXAMPLES, on hosts named nodeA and nodeB.
const HASTCTL_EXAMPLE: &str = "\
resource shared {
\ton nodeA {
\t\tlocal /dev/ada1
\t\tremote nodeB
\t}
\ton nodeB {
\t\tlocal /dev/ada1
\t\tremote nodeA
\t}
}
";

#[test]
fn hastctl_example_on_each_node() {
    for (node, peer) in [
        ("nodeA", "nodeB"),
        ("nodeB", "nodeA"),
        ("nodeA.example.com", "nodeB"),
        ("nodeb", "nodeA"),
    ] {
        let c = conf(HASTCTL_EXAMPLE, node);
        assert_eq!(
            c.resources,
            vec![defaults("shared", "/dev/ada1", Some(tcp(peer, 8457)), 1)],
            "{node}"
        );
    }
}

const LAYERED: &str = r#"
control uds:///run/g.sock
pidfile /run/g.pid
listen tcp://0.0.0.0:7000
listen [::]:7000
nbd_listen 127.0.0.1
nbd_socket_dir /run/gnbd
state_dir /var/lib/g
metrics_listen 127.0.0.1:9100
replication async
checksum crc32
compression none
timeout 5
exec /usr/local/sbin/g-hook
metaflush off
freeze_timeout 0
on_io_error fail
resync_rate 10M

on a {
    control uds:///run/a.sock
    listen 10.0.0.1
    nbd_listen none
    metrics_listen none
}
on b {
    pidfile /run/b.pid
    state_dir /srv/b
    nbd_socket_dir none
    nbd_listen [::1]:1
}

resource inherit_all {
    on a { local /a0; remote b }
    on b { local /b0; remote a }
}

resource res_level {
    replication memsync
    checksum crc32c
    compression lzf
    timeout 30
    exec "/opt/hooks/res hook"
    metaflush on
    freeze_timeout 7
    on_io_error detach
    resync_rate 16k
    name export1
    local /dev/res
    remote tcp://peer:1
    source 10.0.0.9
    on a { }
    on b { }
}

resource node_level {
    replication async
    checksum sha256
    timeout 30
    name export2
    local /dev/nl
    on a {
        replication fullsync
        checksum none
        compression hole
        timeout 1
        exec /a-hook
        metaflush on
        freeze_timeout 120
        on_io_error detach
        resync_rate 1G
        name export-a
        local /dev/nl-a
        remote none
        source tcp://10.0.0.1:0
    }
    on b {
        remote a
    }
}
"#;

#[test]
fn discovery_listen() {
    let tail = "resource r {\n local /d\n remote none\n on a { }\n on b { }\n on c { }\n}\n";
    let at = |text: &str, node: &str| conf(&format!("{text}{tail}"), node).discovery_listen;
    assert_eq!(at("", "a"), None);
    // The conventional port when none is named.
    assert_eq!(
        at("discovery_listen 0.0.0.0\n", "a"),
        Some(tcp("0.0.0.0", 8459))
    );
    assert_eq!(hast_conf::DISCOVERY_PORT, 8459);
    assert_eq!(
        at("discovery_listen tcp://[::1]:9000\n", "a"),
        Some(tcp("::1", 9000))
    );
    // A node's own section overrides the global one, `none` turns it off.
    let layered = "discovery_listen tcp://0.0.0.0:8459\non a { discovery_listen none }\non b { discovery_listen 10.0.0.2:1 }\n";
    assert_eq!(at(layered, "a"), None);
    assert_eq!(at(layered, "b"), Some(tcp("10.0.0.2", 1)));
    assert_eq!(at(layered, "c"), Some(tcp("0.0.0.0", 8459)));
    // A listener belongs to the daemon, never to a resource.
    for (text, want) in [
        (
            "resource r {\n discovery_listen 127.0.0.1\n on a { local /d; remote none }\n}\n",
            "2: \"discovery_listen\" is not allowed in the resource section",
        ),
        (
            "resource r {\n on a { local /d; remote none\n discovery_listen 127.0.0.1 }\n}\n",
            "3: \"discovery_listen\" is not allowed in the resource-node section",
        ),
        (
            "discovery_listen uds:///run/d.sock\n",
            "1: invalid discovery_listen \"uds:///run/d.sock\": must be a TCP address",
        ),
        (
            "discovery_listen tls://127.0.0.1:1\n",
            "1: invalid discovery_listen \"tls://127.0.0.1:1\": must be a TCP address",
        ),
        (
            "discovery_listen 1.2.3.4\ndiscovery_listen 1.2.3.5\n",
            "2: \"discovery_listen\" is already set in this section at line 1",
        ),
    ] {
        let e = err(text, "a").to_string();
        assert_eq!(e, format!("/etc/hast.conf:{want}"), "{text}");
    }
}

#[test]
fn every_inheritance_level() {
    let a = conf(LAYERED, "a");
    assert_eq!(a.control, Addr::Unix("/run/a.sock".into()));
    assert_eq!(a.pidfile, PathBuf::from("/run/g.pid"));
    assert_eq!(a.listen, vec![tcp("10.0.0.1", 8457)]);
    assert_eq!(a.nbd_listen, None);
    assert_eq!(a.nbd_socket_dir, Some(PathBuf::from("/run/gnbd")));
    assert_eq!(a.state_dir, PathBuf::from("/var/lib/g"));
    assert_eq!(a.metrics_listen, None);

    let b = conf(LAYERED, "b");
    assert_eq!(b.control, Addr::Unix("/run/g.sock".into()));
    assert_eq!(b.pidfile, PathBuf::from("/run/b.pid"));
    assert_eq!(b.listen, vec![tcp("0.0.0.0", 7000), tcp("::", 7000)]);
    assert_eq!(b.nbd_listen, Some(tcp("::1", 1)));
    assert_eq!(b.nbd_socket_dir, None);
    assert_eq!(b.nbd_socket_path(&b.resources[0]), None);
    assert_eq!(b.state_dir, PathBuf::from("/srv/b"));
    assert_eq!(b.metrics_listen, Some(tcp("127.0.0.1", 9100)));

    // Global options only.
    let global = Resource {
        name: "inherit_all".into(),
        provider_name: "inherit_all".into(),
        local: "/a0".into(),
        remote: Some(tcp("b", 8457)),
        source: None,
        replication: Replication::Async,
        checksum: Checksum::Crc32,
        compression: Compression::None,
        timeout_secs: 5,
        ping_timeout_secs: 3,
        exec: Some("/usr/local/sbin/g-hook".into()),
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: false,
        freeze_timeout_secs: 0,
        on_io_error: OnIoError::PassOn,
        resync_rate: 10 << 20,
        line: 33,
    };
    assert_eq!(a.resources[0], global);

    // Resource options over global ones.
    let res = Resource {
        name: "res_level".into(),
        provider_name: "export1".into(),
        local: "/dev/res".into(),
        remote: Some(tcp("peer", 1)),
        source: Some(tcp("10.0.0.9", 0)),
        replication: Replication::Memsync,
        checksum: Checksum::Crc32c,
        compression: Compression::Lz4,
        timeout_secs: 30,
        ping_timeout_secs: 3,
        exec: Some("/opt/hooks/res hook".into()),
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: true,
        freeze_timeout_secs: 7,
        on_io_error: OnIoError::Detach,
        resync_rate: 16 << 10,
        line: 38,
    };
    assert_eq!(a.resources[1], res);
    assert_eq!(b.resources[1], res);

    // Resource-node options over resource ones, for a only.
    let node_a = Resource {
        name: "node_level".into(),
        provider_name: "export-a".into(),
        local: "/dev/nl-a".into(),
        remote: None,
        source: Some(tcp("10.0.0.1", 0)),
        replication: Replication::Fullsync,
        checksum: Checksum::None,
        compression: Compression::Hole,
        timeout_secs: 1,
        ping_timeout_secs: 1,
        exec: Some("/a-hook".into()),
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: true,
        freeze_timeout_secs: 120,
        on_io_error: OnIoError::Detach,
        resync_rate: 1 << 30,
        line: 56,
    };
    assert_eq!(a.resources[2], node_a);
    let node_b = Resource {
        name: "node_level".into(),
        provider_name: "export2".into(),
        local: "/dev/nl".into(),
        remote: Some(tcp("a", 8457)),
        source: None,
        replication: Replication::Async,
        checksum: Checksum::Sha256,
        compression: Compression::None,
        timeout_secs: 30,
        ping_timeout_secs: 3,
        exec: Some("/usr/local/sbin/g-hook".into()),
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: false,
        freeze_timeout_secs: 0,
        on_io_error: OnIoError::PassOn,
        resync_rate: 10 << 20,
        line: 56,
    };
    assert_eq!(b.resources[2], node_b);
}

#[test]
fn remote_none_single_node() {
    let c = conf(
        "resource solo {\n on here {\n  local /srv/solo.img\n  remote none\n }\n}\n",
        "here",
    );
    assert_eq!(
        c.resources,
        vec![defaults("solo", "/srv/solo.img", None, 1)]
    );
}

#[test]
fn syntax_variants() {
    let want = vec![defaults("r", "/d", Some(tcp("10.0.0.2", 8457)), 2)];
    let texts = [
        // FreeBSD's grammar ignores newlines: all on one line.
        "\nresource r { local /d on a { remote 10.0.0.2 } on b { remote 10.0.0.1 } }",
        // Braces on their own lines.
        "\nresource r\n{\n local /d\n on a\n {\n  remote 10.0.0.2\n }\n on b\n {\n  remote 10.0.0.1\n }\n}\n",
        // Semicolons, tight braces, CRLF, comments everywhere.
        "# x\r\nresource r{ # y\r\n local /d;\r\n on a{remote 10.0.0.2;}\r\n on b{remote 10.0.0.1;};\r\n}# z",
        // Quoted values and names.
        "\nresource \"r\" {\n local \"/d\"\n on \"a\" { remote \"tcp://10.0.0.2\" }\n on b { remote 10.0.0.1 }\n}",
    ];
    for text in texts {
        assert_eq!(conf(text, "a").resources, want, "{text:?}");
    }
    // An empty file is a node with no resources.
    let empty = conf("  # nothing\n\n", "a");
    assert!(empty.resources.is_empty());
    // A quoted path may hold what would otherwise be syntax.
    let c = conf(
        "resource r { on a { local \"/x {;#} \\\"q\\\\\" \n remote none } }",
        "a",
    );
    assert_eq!(c.resources[0].local, PathBuf::from("/x {;#} \"q\\"));
}

/// One case per error path: (config, node, exact message).
#[test]
fn errors() {
    let r = "\nresource r {\n on a { local /d; remote none }\n}\n"; // a valid tail
    let cases: Vec<(String, &str, String)> = vec![
        ("\n\nfoo bar\n".into(), "a", "3: unknown keyword \"foo\"".into()),
        ("\nresource r {\n on a {\n  local /d\n  remote none\n  frob 1\n }\n}\n".into(), "a",
            "6: unknown keyword \"frob\"".into()),
        ("local /d\n".into(), "a", "1: \"local\" is not allowed in the global section".into()),
        ("on a {\n replication async\n}\n".into(), "a",
            "2: \"replication\" is not allowed in the node section".into()),
        ("\nresource r {\n listen 1.2.3.4\n}\n".into(), "a",
            "3: \"listen\" is not allowed in the resource section".into()),
        ("resource r {\n on a {\n  pidfile /x\n }\n}\n".into(), "a",
            "3: \"pidfile\" is not allowed in the resource-node section".into()),
        ("resource r {\n resource s {\n }\n}\n".into(), "a",
            "2: \"resource\" is not allowed in the resource section".into()),
        ("on a {\n on b {\n }\n}\n".into(), "a", "2: \"on\" is not allowed in the node section".into()),
        ("resource r {\n on a {\n  on b { }\n }\n}\n".into(), "a",
            "3: \"on\" is not allowed in the resource-node section".into()),
        ("\nreplication sync\n".into(), "a",
            "2: invalid replication \"sync\": expected fullsync, memsync, async".into()),
        ("checksum md5\n".into(), "a",
            "1: invalid checksum \"md5\": expected none, crc32, crc32c, sha256".into()),
        ("compression zstd\n".into(), "a",
            "1: invalid compression \"zstd\": expected none, hole, lz4 (or lzf)".into()),
        ("on_io_error panic\n".into(), "a",
            "1: invalid on_io_error \"panic\": expected detach, pass_on (or fail)".into()),
        ("metaflush yes\n".into(), "a", "1: invalid metaflush \"yes\": expected on or off".into()),
        ("\ntimeout 0\n".into(), "a",
            "2: invalid timeout \"0\": expected a whole number of seconds greater than 0".into()),
        ("timeout -1\n".into(), "a",
            "1: invalid timeout \"-1\": expected a whole number of seconds greater than 0".into()),
        ("timeout 1.5\n".into(), "a",
            "1: invalid timeout \"1.5\": expected a whole number of seconds greater than 0".into()),
        ("timeout 99999999999\n".into(), "a", "1: invalid timeout \"99999999999\": too large".into()),
        ("exec_timeout 0\n".into(), "a",
            "1: invalid exec_timeout \"0\": expected a whole number of seconds greater than 0".into()),
        ("freeze_timeout x\n".into(), "a",
            "1: invalid freeze_timeout \"x\": expected a whole number of seconds".into()),
        ("resync_rate 1MB\n".into(), "a",
            "1: invalid resync_rate \"1MB\": expected bytes per second, with an optional k, M, G or T suffix".into()),
        ("listen tcp://h:65536\n".into(), "a",
            "1: invalid listen \"tcp://h:65536\": port 65536 is out of range (0-65535)".into()),
        ("listen h:x\n".into(), "a", "1: invalid listen \"h:x\": port \"x\" is not a number".into()),
        ("listen 1.2.3.4\nlisten 1.2.3.4:8457\n".into(), "a",
            "2: invalid listen \"1.2.3.4:8457\": already listed at line 1".into()),
        ("control tcp://127.0.0.1:1\n".into(), "a",
            "1: invalid control \"tcp://127.0.0.1:1\": must be a Unix socket (uds:///path)".into()),
        ("nbd_listen uds:///run/n.sock\n".into(), "a",
            "1: invalid nbd_listen \"uds:///run/n.sock\": must be a TCP address".into()),
        ("pidfile run/x.pid\n".into(), "a", "1: invalid pidfile \"run/x.pid\": must be an absolute path".into()),
        ("metrics_listen 127.0.0.1\n".into(), "a",
            "1: invalid metrics_listen \"127.0.0.1\": a port is required".into()),
        ("resource r {\n on a {\n  local /d\n  remote tcp://[::1:1\n }\n}\n".into(), "a",
            "4: invalid remote \"tcp://[::1:1\": missing \"]\" after IPv6 address".into()),
        ("resource r {\n on a {\n  local /d\n  remote h:0\n }\n}\n".into(), "a",
            "4: invalid remote \"h:0\": port 0 cannot be connected to".into()),
        ("resource r {\n on a {\n  local /d\n  remote none\n  source uds:///x\n }\n}\n".into(), "a",
            "5: invalid source \"uds:///x\": must be a TCP address".into()),
        ("resource r {\n name ../x\n}\n".into(), "a",
            "2: invalid name \"../x\": use only A-Z a-z 0-9 . _ -".into()),
        ("timeout 5\n\ntimeout 6\n".into(), "a", "3: \"timeout\" is already set in this section at line 1".into()),
        (format!("{r}resource r {{\n on a {{ local /e; remote none }}\n}}\n"), "a",
            "5: duplicate resource \"r\" (first defined at line 2)".into()),
        ("resource r {\n on a { local /d; remote none }\n on b { }\n on A { }\n}\n".into(), "a",
            "4: duplicate section \"on A\" (first at line 2)".into()),
        ("on a { }\non a { }\n".into(), "a", "2: duplicate section \"on a\" (first at line 1)".into()),
        ("resource r {\n on a {\n  remote none\n }\n on b { }\n}\n".into(), "a",
            "2: resource \"r\": \"local\" is not set for this node".into()),
        ("resource r {\n on b { local /d; remote none }\n on a {\n  local /d\n }\n}\n".into(), "a",
            "3: resource \"r\": \"remote\" is not set for this node (use \"remote none\" for a single-node resource)".into()),
        // A missing key is only an error for this node.
        ("resource r {\n on a { local /d; remote none }\n on b { }\n}\n\nresource s {\n on b { local /e; remote none }\n on c { }\n}\n".into(), "a.example.com",
            "6: no configuration for resource \"s\" on this node (acceptable node names: a.example.com, a)".into()),
        ("\n\nresource s {\n on b { local /e; remote none }\n}\n".into(), "a",
            "3: no configuration for resource \"s\" on this node (acceptable node names: a)".into()),
        ("resource s {\n on a { local /e; remote none }\n on a.example.com { }\n}\n".into(), "a.example.com",
            "3: sections \"on a\" (line 2) and \"on a.example.com\" both match this node".into()),
        ("on a { }\non a.x { }\n".into(), "a.x",
            "2: sections \"on a\" (line 1) and \"on a.x\" both match this node".into()),
        ("\nresource r {\n on a {\n  local /d\n  remote none\n }\n".into(), "a",
            "2: section \"resource r\" is not closed: missing \"}\" before the end of the file".into()),
        ("resource r {\n on a {\n  local /d\n  remote none\n".into(), "a",
            "2: section \"on a\" is not closed: missing \"}\" before the end of the file".into()),
        ("on a {\n".into(), "a", "1: section \"on a\" is not closed: missing \"}\" before the end of the file".into()),
        (format!("{r}}}\n"), "a", "5: unexpected \"}\": no section is open".into()),
        ("resource r\n local /d\n".into(), "a",
            "2: unexpected \"local\", expected \"{\" to open the section".into()),
        ("resource\n".into(), "a",
            "1: unexpected end of line, expected a resource name after \"resource\"".into()),
        ("resource r {\n on {\n".into(), "a",
            "2: unexpected \"{\", expected a node name after \"on\"".into()),
        ("resource ../x {\n}\n".into(), "a",
            "1: invalid resource name \"../x\": use only A-Z a-z 0-9 . _ -".into()),
        ("\nresource a/b {\n}\n".into(), "a",
            "2: invalid resource name \"a/b\": use only A-Z a-z 0-9 . _ -".into()),
        ("resource .x {\n}\n".into(), "a",
            "1: invalid resource name \".x\": must not start with '.' or '-'".into()),
        (format!("resource {} {{\n}}\n", "x".repeat(65)), "a",
            format!("1: invalid resource name \"{}\": must be 1 to 64 characters", "x".repeat(65))),
        ("on a/b { }\n".into(), "a", "1: invalid node name \"a/b\": use 1 to 255 of A-Z a-z 0-9 . _ -".into()),
        (format!("\nexec /{}\n", "x".repeat(5000)), "a", "2: token longer than 4096 bytes".into()),
        ("timeout\n".into(), "a", "1: missing value for \"timeout\"".into()),
        ("timeout }\n".into(), "a", "1: missing value for \"timeout\"".into()),
        ("\ntimeout 1 2\n".into(), "a",
            "2: unexpected \"2\" after the value of \"timeout\" (one value per statement)".into()),
        ("timeout 1 {\n".into(), "a",
            "1: unexpected \"{\" after the value of \"timeout\" (one value per statement)".into()),
        ("\"timeout\" 1\n".into(), "a", "1: unexpected \"timeout\", expected a keyword".into()),
        ("{\n".into(), "a", "1: unexpected \"{\", expected a keyword".into()),
        ("exec \"/x\n".into(), "a", "1: unterminated quoted string".into()),
        ("resource r {\n on a { local /d; remote none; name x }\n}\nresource s {\n on a { local /e; remote none; name x }\n}\n".into(), "a",
            "4: resource \"s\": export name \"x\" is already used by resource \"r\" (line 1)".into()),
        ("resource r {\n on a { local /d; remote none }\n}\nresource s {\n on a { local /d; remote none }\n}\n".into(), "a",
            "4: resource \"s\": local \"/d\" is already used by resource \"r\" (line 1)".into()),
        ("resource r {\n on a { local /nonexistent/x/../d; remote none }\n}\nresource s {\n on a { local /nonexistent/./d; remote none }\n}\n".into(), "a",
            "4: resource \"s\": local \"/nonexistent/./d\" (the same file as \"/nonexistent/x/../d\") is already used by resource \"r\" (line 1)".into()),
        (format!("nbd_socket_dir /{}\nresource r {{\n on a {{ local /d; remote none }}\n}}\n", "d".repeat(102)), "a",
            format!("2: resource \"r\": NBD socket path \"/{}/r.nbd\" is longer than 107 bytes", "d".repeat(102))),
    ];
    for (text, node, want) in &cases {
        let e = err(text, node);
        assert_eq!(e.to_string(), format!("/etc/hast.conf:{want}"), "{text:?}");
        assert_eq!(e.exit_code(), 78);
    }
}

#[test]
fn errors_without_a_line() {
    let big = "#".repeat(1 << 20) + "\n";
    let e = err(&big, "a");
    assert_eq!(
        e.to_string(),
        "/etc/hast.conf: file is too big (1048577 bytes; the limit is 1048576 bytes)"
    );
    assert_eq!(e.line, None);
    assert_eq!(e.exit_code(), ConfigError::EX_CONFIG);

    let e = err("", "");
    assert_eq!(
        e.to_string(),
        "/etc/hast.conf: the node name is empty (give one with --node NAME)"
    );
}

#[test]
fn resource_limit() {
    let mut text = String::new();
    for i in 0..1024 {
        text.push_str(&format!(
            "resource r{i} {{ on a {{ local /d{i}; remote none }} }}\n"
        ));
    }
    assert_eq!(conf(&text, "a").resources.len(), 1024);
    text.push_str("resource over { on a { local /o; remote none } }\n");
    assert_eq!(
        err(&text, "a").to_string(),
        "/etc/hast.conf:1025: too many resources (the limit is 1024)"
    );
}

#[test]
fn load_reads_file_and_reports_missing_one() {
    let dir = std::env::temp_dir().join(format!("hast-conf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hast.conf");
    std::fs::write(&file, HASTCTL_EXAMPLE).unwrap();
    let c = hast_conf::load(&file, Some("nodeB")).unwrap();
    assert_eq!(c.resources[0].remote, Some(tcp("nodeA", 8457)));
    assert_eq!(c.file, file);

    std::fs::write(&file, b"# ok\n\xff\n").unwrap();
    let e = hast_conf::load(&file, Some("a")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:2: file is not valid UTF-8", file.display())
    );
    assert_eq!(e.exit_code(), 78);

    std::fs::write(&file, vec![b'#'; (1 << 20) + 1]).unwrap();
    let e = hast_conf::load(&file, Some("a")).unwrap_err();
    assert_eq!(e.exit_code(), 78);
    assert!(e.to_string().contains("too big"), "{e}");

    let missing = dir.join("missing.conf");
    let e = hast_conf::load(&missing, Some("a")).unwrap_err();
    assert_eq!(e.exit_code(), ConfigError::EX_NOINPUT);
    assert_eq!(e.line, None);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostname_is_used_by_default() {
    let host = hast_conf::hostname();
    assert!(!host.is_empty());
    assert!(!host.contains('\0'));
}

/// `nbd_max_buffer` and `nbd_idle_timeout`: defaults, both levels, errors.
#[test]
fn nbd_limits() {
    let tail =
        "\nresource r {\n on a { local /d; remote none }\n on b { local /d; remote none }\n}\n";
    let c = conf(tail, "a");
    assert_eq!(c.nbd_max_buffer, 256 << 20);
    assert_eq!(c.nbd_idle_timeout_secs, 0);

    // (text before the resource, node, max_buffer, idle_timeout)
    let cases: &[(&str, &str, u64, u32)] = &[
        ("nbd_max_buffer 64M\n", "a", 64 << 20, 0),
        ("nbd_max_buffer 1g\nnbd_idle_timeout 30\n", "a", 1 << 30, 30),
        (
            "nbd_max_buffer 33554432\nnbd_idle_timeout 0\n",
            "a",
            32 << 20,
            0,
        ),
        // A node section overrides the global value, for its node only.
        (
            "nbd_idle_timeout 5\non a {\n nbd_idle_timeout 2\n nbd_max_buffer 128M\n}\n",
            "a",
            128 << 20,
            2,
        ),
        (
            "nbd_idle_timeout 5\non a {\n nbd_idle_timeout 2\n nbd_max_buffer 128M\n}\n",
            "b",
            256 << 20,
            5,
        ),
    ];
    for &(head, node, max, idle) in cases {
        let c = conf(&format!("{head}{tail}"), node);
        assert_eq!(c.nbd_max_buffer, max, "{head:?} on {node}");
        assert_eq!(c.nbd_idle_timeout_secs, idle, "{head:?} on {node}");
    }

    let errors: &[(&str, &str)] = &[
        ("nbd_max_buffer 16M\n", "1: invalid nbd_max_buffer \"16M\": must be at least 32M"),
        ("\nnbd_max_buffer 256MB\n",
            "2: invalid nbd_max_buffer \"256MB\": expected a size in bytes, with an optional k, M, G or T suffix"),
        ("nbd_max_buffer 99999999999T\n",
            "1: invalid nbd_max_buffer \"99999999999T\": expected a size in bytes, with an optional k, M, G or T suffix"),
        ("nbd_idle_timeout -1\n", "1: invalid nbd_idle_timeout \"-1\": expected a whole number of seconds"),
        ("nbd_idle_timeout 99999999999\n", "1: invalid nbd_idle_timeout \"99999999999\": too large"),
        ("nbd_idle_timeout 1\nnbd_idle_timeout 2\n",
            "2: \"nbd_idle_timeout\" is already set in this section at line 1"),
        ("resource x {\n nbd_max_buffer 64M\n}\n",
            "2: \"nbd_max_buffer\" is not allowed in the resource section"),
        ("resource x {\n on a {\n  nbd_idle_timeout 5\n }\n}\n",
            "3: \"nbd_idle_timeout\" is not allowed in the resource-node section"),
    ];
    for (head, want) in errors {
        let e = err(&format!("{head}{tail}"), "a");
        assert_eq!(e.to_string(), format!("/etc/hast.conf:{want}"), "{head:?}");
        assert_eq!(e.exit_code(), 78);
    }
}

/// One existing component reached through a symlink and through `..`: the
/// same file (device and inode), refused like the same path twice.
#[test]
fn same_local_file_through_a_symlink_or_dotdot() {
    let dir = std::env::temp_dir().join(format!("hast-conf-samefile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, b"").unwrap();
    std::os::unix::fs::symlink(&disk, dir.join("link")).unwrap();
    let d = dir.display();
    for other in [format!("{d}/link"), format!("{d}/sub/../disk.img")] {
        let text = format!(
            "resource r {{\n on a {{ local {d}/disk.img; remote none }}\n}}\n\
             resource s {{\n on a {{ local {other}; remote none }}\n}}\n"
        );
        let e = err(&text, "a").to_string();
        assert!(
            e.contains(&format!("local \"{other}\" (the same file as \"{d}/disk.img\") is already used by resource \"r\"")),
            "{e}"
        );
    }
    // Two different files are fine.
    std::fs::write(dir.join("other.img"), b"").unwrap();
    conf(
        &format!(
            "resource r {{\n on a {{ local {d}/disk.img; remote none }}\n}}\n\
             resource s {{\n on a {{ local {d}/other.img; remote none }}\n}}\n"
        ),
        "a",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
