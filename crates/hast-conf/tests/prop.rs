//! Property tests: no input makes the parser panic, errors stay one line,
//! and a generated valid config parses back to the values written.

use std::collections::BTreeSet;
use std::path::Path;

use hast_conf::{parse, Addr, Checksum, Compression, OnIoError, Replication, Resource};
use proptest::prelude::*;

fn check_no_panic(text: &str) {
    if let Err(e) = parse(text, Path::new("p.conf"), "a") {
        let msg = e.to_string();
        assert!(msg.starts_with("p.conf"), "{msg}");
        // Values echoed in messages cannot hold newlines: the lexer splits there.
        assert!(!msg.contains('\n'), "{msg:?}");
        assert_eq!(e.exit_code(), 78);
    }
}

const WORDS: &[&str] = &[
    "on",
    "resource",
    "a",
    "b",
    "a.example.com",
    "{",
    "}",
    ";",
    "\n",
    "#",
    "\"",
    "\\",
    "none",
    "local",
    "remote",
    "source",
    "name",
    "listen",
    "control",
    "pidfile",
    "replication",
    "checksum",
    "compression",
    "timeout",
    "exec",
    "metaflush",
    "freeze_timeout",
    "on_io_error",
    "resync_rate",
    "nbd_listen",
    "nbd_socket_dir",
    "state_dir",
    "exec_timeout",
    "metrics_listen",
    "discovery_listen",
    "fullsync",
    "lzf",
    "crc32c",
    "off",
    "fail",
    "16k",
    "0",
    "/d",
    "/e",
    "tcp://h:1",
    "uds:///s",
    "[::1]:9",
    "tcp6://[::1",
    "../x",
    "\"/q w\"",
    "65536",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(WORDS), prop::bool::ANY), 0..80).prop_map(|ws| {
        let mut s = String::new();
        for (w, space) in ws {
            s.push_str(w);
            if space {
                s.push(' ');
            }
        }
        s
    })
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        ("[a-z][a-z0-9-]{0,8}(\\.[a-z0-9]{1,5}){0,2}", 1..=u16::MAX)
            .prop_map(|(host, port)| Addr::Tcp { host, port }),
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(ip, port)| Addr::Tcp {
            host: std::net::Ipv4Addr::from(ip).to_string(),
            port
        }),
        (any::<[u16; 8]>(), 1..=u16::MAX).prop_map(|(ip, port)| Addr::Tcp {
            host: std::net::Ipv6Addr::from(ip).to_string(),
            port
        }),
        "/[a-z0-9_.-]{1,30}".prop_map(|p| Addr::Unix(p.into())),
    ]
}

/// Every option of one resource, each set or not, and where it is written.
#[derive(Debug, Clone)]
struct Opts {
    replication: Option<Replication>,
    checksum: Option<Checksum>,
    compression: Option<Compression>,
    timeout: Option<u32>,
    exec: Option<String>,
    metaflush: Option<bool>,
    freeze_timeout: Option<u32>,
    on_io_error: Option<OnIoError>,
    resync_rate: Option<(u64, &'static str)>,
    export: bool,
    remote: Option<Addr>,
    source: Option<(String, u16)>,
    /// Per option: written in the resource-node section (else the resource one).
    in_node: [bool; 13],
    quoted: bool,
    semicolons: bool,
}

fn opts() -> impl Strategy<Value = Opts> {
    (
        (
            prop::option::of(prop::sample::select(Replication::ALL)),
            prop::option::of(prop::sample::select(Checksum::ALL)),
            prop::option::of(prop::sample::select(Compression::ALL)),
            prop::option::of(1..=u32::MAX),
            prop::option::of("/[a-zA-Z0-9_./ -]{0,30}"),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<u32>()),
            prop::option::of(prop::sample::select(OnIoError::ALL)),
        ),
        (
            prop::option::of(prop_oneof![
                any::<u64>().prop_map(|n| (n, "")),
                (0..(1u64 << 20)).prop_map(|n| (n, "k")),
                (0..(1u64 << 20)).prop_map(|n| (n, "M")),
                (0..(1u64 << 20)).prop_map(|n| (n, "g")),
                (0..(1u64 << 20)).prop_map(|n| (n, "T")),
            ]),
            any::<bool>(),
            prop::option::of(addr()),
            prop::option::of(("10\\.0\\.[0-9]\\.[0-9]", any::<u16>())),
            any::<[bool; 13]>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(|(a, b)| Opts {
            replication: a.0,
            checksum: a.1,
            compression: a.2,
            timeout: a.3,
            exec: a.4,
            metaflush: a.5,
            freeze_timeout: a.6,
            on_io_error: a.7,
            resync_rate: b.0,
            export: b.1,
            remote: b.2,
            source: b.3,
            in_node: b.4,
            quoted: b.5,
            semicolons: b.6,
        })
}

fn render(name: &str, o: &Opts, out: &mut String) {
    let q = |v: String| {
        if o.quoted || v.contains(' ') {
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            v
        }
    };
    let end = if o.semicolons { ";" } else { "\n" };
    let mut res = Vec::new();
    let mut node = Vec::new();
    let mut put = |i: usize, key: &str, v: Option<String>| {
        if let Some(v) = v {
            let line = format!("{key} {}{end}", q(v));
            if o.in_node[i] {
                node.push(line);
            } else {
                res.push(line);
            }
        }
    };
    put(0, "replication", o.replication.map(|v| v.to_string()));
    put(1, "checksum", o.checksum.map(|v| v.to_string()));
    put(2, "compression", o.compression.map(|v| v.to_string()));
    put(3, "timeout", o.timeout.map(|v| v.to_string()));
    put(4, "exec", o.exec.clone());
    put(
        5,
        "metaflush",
        o.metaflush.map(|v| if v { "on" } else { "off" }.into()),
    );
    put(6, "freeze_timeout", o.freeze_timeout.map(|v| v.to_string()));
    put(7, "on_io_error", o.on_io_error.map(|v| v.to_string()));
    put(
        8,
        "resync_rate",
        o.resync_rate.map(|(n, s)| format!("{n}{s}")),
    );
    put(9, "name", o.export.then(|| format!("{name}-export")));
    put(10, "local", Some(format!("/dev/{name}")));
    put(
        11,
        "remote",
        Some(o.remote.as_ref().map_or("none".into(), |a| a.to_string())),
    );
    put(
        12,
        "source",
        o.source.as_ref().map(|(h, p)| format!("tcp4://{h}:{p}")),
    );
    out.push_str(&format!("resource {name} {{\n"));
    for l in res {
        out.push_str(&l);
    }
    // A section for another node with its own valid values, to be ignored.
    out.push_str("on other.example.com {\nlocal /elsewhere\nremote none\ntimeout 9\n}\n");
    out.push_str("on a.example.com\n{\n");
    for l in node {
        out.push_str(&l);
    }
    out.push_str("}\n}\n");
}

fn expected(name: &str, o: &Opts, line: u32) -> Resource {
    Resource {
        name: name.into(),
        provider_name: if o.export {
            format!("{name}-export")
        } else {
            name.into()
        },
        local: format!("/dev/{name}").into(),
        remote: o.remote.clone(),
        source: o
            .source
            .clone()
            .map(|(host, port)| Addr::Tcp { host, port }),
        replication: o.replication.unwrap_or(Replication::Fullsync),
        checksum: o.checksum.unwrap_or(Checksum::None),
        compression: o.compression.unwrap_or(Compression::Hole),
        timeout_secs: o.timeout.unwrap_or(20),
        ping_timeout_secs: 3.min(o.timeout.unwrap_or(20)),
        exec: o.exec.clone().map(Into::into),
        fence_peer: None,
        secret_file: None,
        secret: None,
        nbd_socket_owner: None,
        nbd_socket_group: None,
        nbd_socket_mode: 0o660,
        tls_peer_fingerprints: Vec::new(),
        metaflush: o.metaflush.unwrap_or(true),
        freeze_timeout_secs: o.freeze_timeout.unwrap_or(60),
        on_io_error: o.on_io_error.unwrap_or(OnIoError::Detach),
        resync_rate: o.resync_rate.map_or(0, |(n, s)| {
            n << match s {
                "k" => 10,
                "M" => 20,
                "g" => 30,
                "T" => 40,
                _ => 0,
            }
        }),
        line,
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        check_no_panic(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup_never_panics(text in soup()) {
        check_no_panic(&text);
    }

    #[test]
    fn generated_config_round_trips(
        names in prop::collection::btree_set("r[a-z0-9_.-]{0,20}", 1..6),
        all in prop::collection::vec(opts(), 6),
    ) {
        let names: BTreeSet<String> = names;
        let mut text = String::from("# generated\n");
        let mut want = Vec::new();
        for (name, o) in names.iter().zip(&all) {
            let line = u32::try_from(text.lines().count()).unwrap() + 1;
            render(name, o, &mut text);
            want.push(expected(name, o, line));
        }
        let c = parse(&text, Path::new("p.conf"), "a")
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(c.resources, want, "{}", text);
    }
}
