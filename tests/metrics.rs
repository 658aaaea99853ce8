//! The Prometheus endpoint (`metrics_listen`, docs/overview.md §9) of hastd and hastmon
//! from the outside, over real TCP on loopback: values that follow real
//! NBD I/O and role changes, `promtool check metrics` on every scraped
//! text, a real `prometheus` server scraping a pair, a bind failure at
//! startup, and strangers on the port (an endless header, a crowd of idle
//! connections, garbage, other paths and methods).
//!
//! promtool and prometheus come from Debian's `prometheus` package (see
//! `.ci/run`); without them these tests fail in CI and say SKIPPED outside.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hast_testkit::pair::qemu_io;
use hast_testkit::{
    bins, free_port, require_tool, require_tools, run, tail, timeout_s, wait_for, Node, Pair, Proc,
    ResourceSpec, Side, TempDir, MIB,
};

const WAIT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request, the whole answer read until the server closes:
/// (status code, body). `None` if the port does not answer.
fn request(addr: SocketAddr, raw: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    s.write_all(raw).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((code, body))
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hast-test\r\nConnection: close\r\n\r\n"
        ).as_bytes(),
    )
}

/// `GET /metrics`, retried until the listener is up (it binds just after
/// the control socket the harness waits for).
fn scrape(addr: SocketAddr) -> String {
    let got = wait_for(WAIT, || get(addr, "/metrics"));
    match got {
        Some((200, body)) => body,
        other => panic!("scrape of {addr}: {other:?}"),
    }
}

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[track_caller]
fn expect(text: &str, series: &str, want: f64) {
    assert_eq!(value(text, series), Some(want), "{series} in:\n{text}");
}

/// `promtool check metrics` accepts the text, lint included (names, units,
/// `_total`, HELP).
#[track_caller]
fn promtool_check(text: &str, dir: &Path) {
    let file = dir.join("scraped.prom");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "promtool check metrics < \"$1\"", "sh"])
        .arg(&file);
    let out = run(&mut cmd, timeout_s(60));
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- text:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hastd_pair_metrics_follow_io_and_pass_promtool() {
    if !require_tools(&["qemu-io", "promtool"]) {
        return;
    }
    let mut p = Pair::builder(bins!()).tag("metrics").metrics().start();
    let (ma, mb) = (p.metrics_addr(Side::A), p.metrics_addr(Side::B));
    let init = scrape(ma);
    expect(
        &init,
        "hast_resource_role{resource=\"r0\",role=\"init\"}",
        1.0,
    );
    expect(
        &init,
        "hast_resource_state{resource=\"r0\",state=\"inactive\"}",
        1.0,
    );
    promtool_check(&init, p.node(Side::A).layout().dir.as_path());
    p.setup(Side::A, WAIT);

    let before = scrape(ma);
    expect(
        &before,
        "hast_resource_role{resource=\"r0\",role=\"primary\"}",
        1.0,
    );
    expect(
        &before,
        "hast_resource_role{resource=\"r0\",role=\"init\"}",
        0.0,
    );
    expect(
        &before,
        "hast_resource_state{resource=\"r0\",state=\"complete\"}",
        1.0,
    );
    expect(&before, "hast_peer_connected{resource=\"r0\"}", 1.0);
    expect(&before, "hast_frozen{resource=\"r0\"}", 0.0);
    expect(&before, "hast_detached{resource=\"r0\"}", 0.0);
    let epoch = p.status_json(Side::A)["epoch"].as_f64();
    assert_eq!(
        value(&before, "hast_resource_epoch{resource=\"r0\"}"),
        epoch
    );
    let written = |t: &str| value(t, "hast_written_bytes_total{resource=\"r0\"}").unwrap_or(-1.0);
    let writes = |t: &str| value(t, "hast_write_ops_total{resource=\"r0\"}").unwrap_or(-1.0);
    let timed = |t: &str| {
        value(
            t,
            "hast_request_duration_seconds_count{resource=\"r0\",op=\"write\"}",
        )
        .unwrap_or(-1.0)
    };

    // 1 MiB in 4 writes of 256 KiB, then a read of it and a flush.
    let cmds: Vec<String> = (0..4)
        .map(|i| format!("write -P 0x5a {} 256k", i * 256 * 1024))
        .chain(["read -P 0x5a 0 1M".to_string(), "flush".to_string()])
        .collect();
    qemu_io(&p.uri(Side::A), &cmds);
    let after = scrape(ma);
    assert_eq!(written(&after) - written(&before), MIB as f64, "{after}");
    assert_eq!(writes(&after) - writes(&before), 4.0, "{after}");
    assert_eq!(timed(&after) - timed(&before), 4.0, "{after}");
    let read = value(&after, "hast_read_bytes_total{resource=\"r0\"}").unwrap_or(0.0);
    assert!(read >= MIB as f64, "read bytes {read}:\n{after}");
    let flushes = value(&after, "hast_flush_ops_total{resource=\"r0\"}").unwrap_or(0.0);
    assert!(flushes >= 1.0, "{after}");
    let slow = value(
        &after,
        "hast_request_duration_seconds_bucket{resource=\"r0\",op=\"write\",le=\"10\"}",
    );
    assert_eq!(
        slow,
        Some(timed(&after)),
        "writes over 10 s on loopback?\n{after}"
    );
    expect(&after, "hast_replication_queue_depth{resource=\"r0\"}", 0.0);
    expect(&after, "hast_local_errors_total{resource=\"r0\"}", 0.0);
    promtool_check(&after, p.node(Side::A).layout().dir.as_path());

    let b = scrape(mb);
    expect(
        &b,
        "hast_resource_role{resource=\"r0\",role=\"secondary\"}",
        1.0,
    );
    expect(&b, "hast_peer_connected{resource=\"r0\"}", 1.0);
    promtool_check(&b, p.node(Side::B).layout().dir.as_path());

    // The secondary goes: the primary says so.
    p.stop(Side::B);
    let lost = wait_for(WAIT, || {
        let t = scrape(ma);
        (value(&t, "hast_peer_connected{resource=\"r0\"}") == Some(0.0)).then_some(t)
    })
    .unwrap_or_else(|| panic!("peer_connected stayed 1 after B stopped:\n{}", scrape(ma)));
    expect(
        &lost,
        "hast_resource_state{resource=\"r0\",state=\"degraded\"}",
        1.0,
    );
    // No warning left about an option that is now served.
    let log = std::fs::read_to_string(p.node(Side::A).log_path()).unwrap_or_default();
    assert!(!log.contains("not implemented"), "{log}");
    assert!(log.contains("metrics listener ready"), "{log}");
}

/// A single node with `metrics_listen` on `port`.
fn metrics_node(tag: &str, port: u16) -> Node {
    Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new("r0", 32 * MIB))
        .config(move |l| {
            format!(
                "metrics_listen tcp://127.0.0.1:{port}\n{}",
                l.default_config()
            )
        })
        .start()
}

#[test]
fn strangers_on_the_metrics_port_change_nothing() {
    let port = free_port();
    let mut n = metrics_node("metrics-adv", port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    scrape(addr);

    // Other paths, other methods, garbage.
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics/../etc HTTP/1.1\r\n\r\n", 404),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
            405,
        ),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"\0\0\0\0\0\0\0\0\n\n", 400),
    ];
    for (raw, want) in cases {
        let got = request(addr, raw).map(|(c, _)| c);
        assert_eq!(got, Some(*want), "{:?}", String::from_utf8_lossy(raw));
    }

    // A header that never ends: answered 431 and closed once past the
    // limit, long before the client stops sending.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let t0 = Instant::now();
    let mut sent = 0usize;
    let line = b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    while sent < 64 * MIB as usize && t0.elapsed() < WAIT {
        match s.write(line) {
            Ok(n) if n > 0 => sent += n,
            _ => break,
        }
    }
    assert!(
        sent < 4 * MIB as usize,
        "the server took {sent} bytes of one endless header"
    );
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );

    // A crowd of idle connections does not keep a scrape out, nor does a
    // half-sent request.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let t0 = Instant::now();
    let (code, body) = get(addr, "/metrics").expect("scrape among idle connections");
    assert_eq!(code, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "a scrape among 100 idle connections took {:?}",
        t0.elapsed()
    );
    assert!(body.contains("hast_resource_role{"), "{body}");
    drop(idle);
    drop(half);

    assert!(n.daemon_running(), "{}", tail(n.log_path(), 30));
    let body = scrape(addr);
    expect(
        &body,
        "hast_resource_role{resource=\"r0\",role=\"init\"}",
        1.0,
    );
    let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_metrics_port_in_use_stops_hastd_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let n = Node::builder(bins!())
        .tag("metrics-bind")
        .resource(ResourceSpec::new("r0", 32 * MIB))
        .config(move |l| {
            format!(
                "metrics_listen tcp://127.0.0.1:{port}\n{}",
                l.default_config()
            )
        })
        .build();
    let out = run(&mut n.hastd_command(), timeout_s(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(73), "EX_CANTCREAT expected:\n{err}");
    let line = format!("cannot listen for metrics on tcp://127.0.0.1:{port}");
    assert_eq!(
        err.lines().filter(|l| l.contains(&line)).count(),
        1,
        "one line saying {line:?}:\n{err}"
    );
    assert!(
        !n.layout().control.exists(),
        "control socket left behind:\n{err}"
    );
    drop(taken);
}

/// SIGHUP with another `metrics_listen`: logged as needing a restart, like
/// the other listeners; the running endpoint keeps serving.
#[test]
fn a_changed_metrics_listen_waits_for_a_restart() {
    let port = free_port();
    let mut n = metrics_node("metrics-reload", port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    scrape(addr);
    let other = free_port();
    let path = n.layout().config_path.clone();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("metrics_listen tcp://127.0.0.1:{port}"),
        &format!("metrics_listen tcp://127.0.0.1:{other}"),
    );
    std::fs::write(&path, text).unwrap();
    n.signal(libc::SIGHUP);
    let said = wait_for(WAIT, || {
        let log = std::fs::read_to_string(n.log_path()).ok()?;
        log.lines()
            .any(|l| l.contains("change of metrics_listen") && l.contains("when hastd restarts"))
            .then_some(())
    });
    assert!(said.is_some(), "{}", tail(n.log_path(), 30));
    scrape(addr);
    let moved = SocketAddr::from(([127, 0, 0, 1], other));
    assert!(
        get(moved, "/metrics").is_none(),
        "the new port serves before a restart"
    );
}

/// A real Prometheus scrapes both nodes of a pair: `up` becomes 1 and the
/// primary's role is queryable.
#[test]
fn prometheus_scrapes_a_pair() {
    if !require_tools(&["prometheus", "qemu-io"]) {
        return;
    }
    let mut p = Pair::builder(bins!()).tag("metrics-prom").metrics().start();
    p.setup(Side::A, WAIT);
    qemu_io(&p.uri(Side::A), &["write -P 0x11 0 64k".to_string()]);
    let dir = TempDir::new("metrics-prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: hastd\n    static_configs:\n      - targets: ['{}', '{}']\n",
            p.metrics_addr(Side::A),
            p.metrics_addr(Side::B)
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(hast_testkit::which("prometheus").expect("prometheus"));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .arg("--log.level=warn");
    let log = dir.path().join("prometheus.log");
    let mut prom = Proc::spawn(&mut cmd, "prometheus", Some(&log)).expect("spawn prometheus");
    let query = |q: &str| -> Option<String> {
        let (code, body) = get(web, &format!("/api/v1/query?query={q}"))?;
        (code == 200).then_some(body)
    };
    // Both targets up (two results, each "1").
    let up = wait_for(Duration::from_secs(60), || {
        let body = query("sum(up)")?;
        body.contains("\"2\"]").then_some(body)
    });
    assert!(
        up.is_some(),
        "prometheus did not see both targets up: {:?}\n{}",
        query("up"),
        tail(&log, 30)
    );
    let role = wait_for(WAIT, || {
        let body = query("hast_resource_role%7Brole%3D%22primary%22%7D%3D%3D1")?;
        body.contains("\"resource\":\"r0\"").then_some(body)
    });
    assert!(role.is_some(), "{:?}", query("hast_resource_role"));
    let written = wait_for(WAIT, || {
        let body = query("hast_written_bytes_total")?;
        body.contains("\"65536\"]").then_some(body)
    });
    assert!(written.is_some(), "{:?}", query("hast_written_bytes_total"));
    let (status, _) = prom.stop(Duration::from_secs(10));
    assert!(
        prom.try_wait().is_some(),
        "prometheus still running ({status})"
    );
}

/// hastmon's endpoint: a scrape that promtool accepts and that shows the
/// resource as `hastmonctl status` does.
#[test]
fn hastmon_metrics() {
    if !require_tool("promtool") {
        return;
    }
    let dir = TempDir::new("metrics-hastmon");
    let d = dir.path();
    let exec = d.join("exec.sh");
    std::fs::write(&exec, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&exec, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (listen, p2, p3, metrics) = (free_port(), free_port(), free_port(), free_port());
    let conf = d.join("hastmon.conf");
    std::fs::write(
        &conf,
        format!(
            "control {d}/mon.sock\npidfile {d}/mon.pid\nstate_dir {d}/state\n\
             listen tcp://127.0.0.1:{listen}\nhastd_control none\n\
             on nodea {{ metrics_listen 127.0.0.1:{metrics} }}\n\
             key {{ secret \"0123456789abcdef0123\" }}\n\
             resource r0 {{\n  exec {exec}\n  on nodea {{ remote tcp://127.0.0.1:{p2} tcp://127.0.0.1:{p3} }}\n  \
             on nodeb {{ remote tcp://127.0.0.1:{listen} }}\n  on nodew {{ remote tcp://127.0.0.1:{listen} }}\n}}\n",
            d = d.display(),
            exec = exec.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hastmon"));
    cmd.arg("-F").arg("-c").arg(&conf).args(["--node", "nodea"]);
    let log = d.join("hastmon.log");
    let mut mon = Proc::spawn(&mut cmd, "hastmon", Some(&log)).expect("spawn hastmon");
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    let text = scrape(addr);
    expect(
        &text,
        "hast_mon_resource_role{resource=\"r0\",node=\"nodea\",role=\"init\"}",
        1.0,
    );
    expect(
        &text,
        "hast_mon_resource_state{resource=\"r0\",state=\"stopped\"}",
        1.0,
    );
    expect(
        &text,
        &format!("hast_mon_remote_connected{{resource=\"r0\",remote=\"tcp://127.0.0.1:{p2}\"}}"),
        0.0,
    );
    promtool_check(&text, d);
    assert_eq!(get(addr, "/").map(|(c, _)| c), Some(404));
    assert!(mon.is_running(), "{}", tail(&log, 30));
    let (status, _) = mon.stop(Duration::from_secs(10));
    assert!(
        status.success(),
        "hastmon exited {status}:\n{}",
        tail(&log, 30)
    );
}
