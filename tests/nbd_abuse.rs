//! Clients that abuse hastd's NBD server, as found from outside (issue 9,
//! finding 6): READs whose replies are never read, a WRITE payload stalled
//! one byte short, and the connection cap filled with idle connections.
//! Each test starts its own one-node hastd (`remote none`) and speaks NBD
//! by hand over std `TcpStream`s (fixed newstyle, `NBD_OPT_GO`, simple
//! replies), next to real clients (qemu-io, nbdinfo) that must keep
//! working. Memory is hastd's VmRSS from `/proc/PID/status`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use hast_testkit::pair::qemu_io;
use hast_testkit::{
    bins, output_text, require_tool, run, timeout_s, wait_for, which, Node, ResourceSpec, MIB,
};

/// The resource file: room for a 256 MiB image plus metadata.
const FILE_SIZE: u64 = 320 * MIB;
/// The largest request hastd accepts.
const BIG: u32 = 32 << 20;
/// hastd's connection cap per listener.
const CONNECTIONS_MAX: usize = 256;
/// The bound on hastd's RSS while abused.
const RSS_MAX: u64 = 128 * MIB;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;

/// A one-resource primary with `extra` hast.conf lines (global section).
fn node(tag: &str, extra: &'static str) -> Node {
    let mut node = Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new("r0", FILE_SIZE))
        .config(move |l| format!("{}\n{extra}", l.default_config()))
        .start();
    node.promote("r0");
    node
}

fn rss(node: &Node) -> u64 {
    let pid = node.daemon_pid().expect("hastd runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Highest RSS seen while sampling every 50 ms for `span`.
fn rss_peak(node: &Node, span: Duration) -> u64 {
    let end = Instant::now() + span;
    let mut peak = rss(node);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss(node));
    }
    peak
}

/// A client by hand: fixed newstyle handshake and `NBD_OPT_GO` for `r0`,
/// with no structured replies. Every read on it times out after `bound`.
fn connect(port: u16, bound: Duration) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to hastd");
    s.set_read_timeout(Some(bound)).expect("read timeout");
    s.set_write_timeout(Some(bound)).expect("write timeout");
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).expect("greeting");
    assert_eq!(
        u64::from_be_bytes(greeting[0..8].try_into().unwrap()),
        NBDMAGIC
    );
    assert_eq!(
        u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
        IHAVEOPT
    );
    // C_FIXED_NEWSTYLE | C_NO_ZEROES
    let mut out = 3u32.to_be_bytes().to_vec();
    let name = b"r0";
    let mut go = (name.len() as u32).to_be_bytes().to_vec();
    go.extend_from_slice(name);
    go.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&(go.len() as u32).to_be_bytes());
    out.extend_from_slice(&go);
    s.write_all(&out).expect("send GO");
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).expect("option reply");
        assert_eq!(
            u64::from_be_bytes(head[0..8].try_into().unwrap()),
            REPLY_MAGIC
        );
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).expect("option reply payload");
        assert_eq!(
            kind & (1 << 31),
            0,
            "GO refused: {}",
            String::from_utf8_lossy(&payload)
        );
        if kind == REP_ACK {
            return s;
        }
    }
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r[6..8].copy_from_slice(&kind.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&len.to_be_bytes());
    r
}

/// Reads one simple reply; returns its error (0 = success) after reading
/// `data` bytes of payload if it succeeded.
fn simple_reply(s: &mut TcpStream, cookie: u64, data: usize) -> u32 {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).expect("simple reply");
    assert_eq!(
        u32::from_be_bytes(head[0..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    assert_eq!(u64::from_be_bytes(head[8..16].try_into().unwrap()), cookie);
    let error = u32::from_be_bytes(head[4..8].try_into().unwrap());
    if error == 0 && data > 0 {
        let mut buf = vec![0u8; data];
        s.read_exact(&mut buf).expect("read payload");
    }
    error
}

/// True once the server closed `s` (EOF or reset) within its read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A qemu-io 64 KiB write then read-back of a pattern: a legitimate client.
fn legit_io(node: &Node, pattern: u8) {
    let uri = node.uri("r0");
    let at = 128 * MIB;
    qemu_io(
        &uri,
        &[
            format!("write -P {pattern} {at} 64k"),
            format!("read -P {pattern} {at} 64k"),
        ],
    );
}

#[test]
fn replies_never_read_do_not_grow_memory() {
    if !require_tool("qemu-io") || !require_tool("nbdinfo") {
        return;
    }
    let node = node("abuse-reads", "nbd_max_buffer 64M\n");
    let port = node.layout().nbd_port;
    let before = rss(&node);

    // 16 connections, each 16 READs of 32 MiB (8 GiB asked for), none read.
    let mut abusers = Vec::new();
    for _ in 0..16 {
        let mut s = connect(port, timeout_s(10));
        let mut reqs = Vec::new();
        for i in 0..16u64 {
            reqs.extend_from_slice(&request(CMD_READ, i, i * u64::from(BIG) % (192 * MIB), BIG));
        }
        s.write_all(&reqs).expect("send READs");
        abusers.push(s);
    }
    let peak = rss_peak(&node, Duration::from_secs(3));
    eprintln!(
        "hastd RSS: {} MiB before, peak {} MiB with 16 stalled readers",
        before / MIB,
        peak / MIB
    );
    assert!(
        peak < RSS_MAX,
        "hastd RSS reached {} MiB with readers that never read (bound {} MiB)",
        peak / MIB,
        RSS_MAX / MIB
    );

    // Meanwhile a legitimate client is served.
    legit_io(&node, 0x5a);
    let info = run(Command::new("nbdinfo").arg(node.uri("r0")), timeout_s(30));
    assert!(
        info.status.success(),
        "nbdinfo failed:\n{}",
        output_text(&info)
    );
    let peak = peak.max(rss_peak(&node, Duration::from_millis(500)));
    assert!(peak < RSS_MAX, "hastd RSS reached {} MiB", peak / MIB);

    // The abusers go away; everything still works and stays bounded.
    drop(abusers);
    legit_io(&node, 0xa5);
    let after = rss_peak(&node, Duration::from_secs(2));
    eprintln!("hastd RSS: {} MiB after the abusers left", after / MIB);
    assert!(
        after < RSS_MAX,
        "hastd RSS {} MiB after the abusers left",
        after / MIB
    );
    // Their pending READs were served into closed sockets and let go.
    let log = node.log();
    assert!(log.contains("nbd connection closed"), "{log}");
}

#[test]
fn a_stalled_write_payload_closes_its_connection() {
    if !require_tool("qemu-io") {
        return;
    }
    let node = node("abuse-write", "nbd_max_buffer 64M\nnbd_idle_timeout 2\n");
    let port = node.layout().nbd_port;

    // A 32 MiB WRITE, its payload one byte short, then silence.
    let mut s = connect(port, timeout_s(20));
    // hastd's deadline starts when it has the header, after this.
    let sent = Instant::now();
    s.write_all(&request(CMD_WRITE, 1, 0, BIG))
        .expect("WRITE header");
    s.write_all(&vec![0x11u8; BIG as usize - 1])
        .expect("payload");
    assert!(
        closed_by_server(&mut s),
        "connection with a stalled payload still open after {:?}",
        sent.elapsed()
    );
    let took = sent.elapsed();
    eprintln!("stalled WRITE closed after {took:?} (deadline 2 s)");
    assert!(
        took >= Duration::from_millis(1900),
        "closed after {took:?}, before the deadline"
    );
    let log = node.log();
    assert!(
        log.contains("request payload not received within 2s"),
        "{log}"
    );
    assert!(rss(&node) < RSS_MAX, "hastd RSS {} MiB", rss(&node) / MIB);

    // Its 32 MiB went back to the budget: of the 56 MiB the budget lends to
    // large requests, 32 MiB held for good would leave too little for this
    // 32 MiB WRITE, and its reply would never come.
    let mut c = connect(port, timeout_s(20));
    c.write_all(&request(CMD_WRITE, 2, 0, BIG))
        .expect("WRITE header");
    c.write_all(&vec![0x22u8; BIG as usize]).expect("payload");
    assert_eq!(simple_reply(&mut c, 2, 0), 0, "WRITE failed");
    c.write_all(&request(CMD_READ, 3, 0, BIG)).expect("READ");
    assert_eq!(simple_reply(&mut c, 3, BIG as usize), 0, "READ failed");
    drop(c);
    legit_io(&node, 0x33);
}

/// Opens `n` connections that finish the handshake and then say nothing.
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect(port, timeout_s(20))).collect()
}

/// Real clients against a full server fail at once, saying why: nbdinfo
/// gets an error to its `NBD_OPT_GO` (libnbd 1.14 prints hastd's message
/// only in its debug output), qemu-io prints hastd's message. Returns how
/// long nbdinfo took.
fn assert_refused(node: &Node) -> Duration {
    let start = Instant::now();
    let out = run(
        Command::new("nbdinfo")
            .env("LIBNBD_DEBUG", "1")
            .arg(node.uri("r0")),
        timeout_s(30),
    );
    let took = start.elapsed();
    let text = output_text(&out);
    eprintln!("nbdinfo refused after {took:?}");
    assert!(
        !out.status.success(),
        "nbdinfo succeeded past the cap:\n{text}"
    );
    assert!(
        text.contains("server replied with error to opt_go request")
            && text.contains("too many NBD connections (at most 256)"),
        "unclear refusal:\n{text}"
    );
    assert!(took < Duration::from_secs(5), "refusal took {took:?}");
    if which("qemu-io").is_some() {
        let out = run(
            Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k", &node.uri("r0")]),
            timeout_s(30),
        );
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "qemu-io succeeded past the cap:\n{text}"
        );
        assert!(
            text.contains("Denied by server") && text.contains("too many NBD connections"),
            "unclear refusal:\n{text}"
        );
    }
    let log = node.log();
    assert!(
        log.contains("NBD connection refused") && log.contains("256 connections already open"),
        "{log}"
    );
    took
}

#[test]
fn past_the_connection_cap_a_client_is_refused_at_once() {
    if !require_tool("nbdinfo") {
        return;
    }
    let node = node("abuse-cap", "");
    let port = node.layout().nbd_port;
    let idle = idle_connections(port, CONNECTIONS_MAX);
    assert_refused(&node);
    // Without nbd_idle_timeout the idle ones stay; once one leaves, a new
    // client gets its slot.
    drop(idle);
    let ok = wait_for(timeout_s(15), || {
        let out = run(Command::new("nbdinfo").arg(node.uri("r0")), timeout_s(30));
        out.status.success().then_some(())
    });
    assert!(
        ok.is_some(),
        "no slot freed after the idle connections closed"
    );
}

#[test]
fn idle_connections_are_dropped_with_nbd_idle_timeout() {
    if !require_tool("nbdinfo") {
        return;
    }
    let node = node("abuse-idle", "nbd_idle_timeout 3\n");
    let port = node.layout().nbd_port;
    let mut idle = idle_connections(port, CONNECTIONS_MAX);
    assert_refused(&node);
    // The idle ones are closed by hastd, not by us, and a client gets in.
    let first = idle.first_mut().expect("one");
    assert!(
        closed_by_server(first),
        "idle connection not closed by hastd"
    );
    let ok = wait_for(timeout_s(15), || {
        let out = run(Command::new("nbdinfo").arg(node.uri("r0")), timeout_s(30));
        out.status.success().then_some(())
    });
    assert!(
        ok.is_some(),
        "no client got in after the idle timeout:\n{}",
        node.log()
    );
    let log = node.log();
    assert!(log.contains("nbd connection idle, closing it"), "{log}");
    drop(idle);
}
