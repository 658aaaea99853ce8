//! Two hastd nodes mirroring one resource on loopback: the harness of the
//! replication, failover, split-brain and switchover tests.
//!
//! Both nodes are ordinary [`Node`]s (own directory, control socket, pidfile, NBD
//! port, replication port, image file) sharing one config text, as FreeBSD's
//! hast.conf does; each is started with `--node nodea` / `--node nodeb`. All ports
//! are picked first so the config can name the peers. Optionally a [`Proxy`] sits
//! on A's way to B (A's `remote` points at the proxy, which forwards to B's
//! `listen`), so a test can cut or silence the link; B reaches A directly. The
//! proxy binds 127.0.0.1, so B still sees the address its `remote` names.
//!
//! The resource is always `r0`. Roles are not persisted (as in FreeBSD): after a
//! daemon restart the resource is in `init` until a test sets a role again.
//! Dropping the pair stops both daemons by PID (see [`Node`]) and then the proxy.
//!
//! With [`PairBuilder::tls`] each node gets a self-signed certificate made
//! with openssl, both `listen` and `remote` addresses become `tls://`, and
//! each node's resource pins the other's fingerprint as openssl prints it.
//!
//! With [`PairBuilder::fuse_disk`] one side's component is its image file
//! served by nbdkit and mounted with nbdfuse ([`FuseDisk`]): that side's
//! `local` is the mount, so the test can stall its disk ([`Pair::disk_mut`],
//! [`FuseDisk::hang`] / [`FuseDisk::heal`]) while its daemon and link stay
//! alive. The image itself is still what [`Pair::image`] names (no cache in
//! between, so comparisons read what hastd wrote). On drop, also while
//! unwinding, the disk is healed, that side's daemon killed (by PID) and the
//! disk released before the nodes' directories are removed.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::net::free_port;
use std::process::Command;

use crate::env::timeout_s;
use crate::faults::FuseDisk;
use crate::node::{Bins, Layout, Node, ResourceSpec};
use crate::proc::{describe, run, tail, wait_for, Proc};
use crate::proxy::Proxy;
use crate::tools::{output_text, python, python_command};

/// The resource every pair mirrors.
pub const RES: &str = "r0";
/// Lines of each daemon log shown in harness failure messages.
const LOG_LINES: usize = 60;
/// Interval between status polls.
const POLL: Duration = Duration::from_millis(200);

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// `nodea`, primary at the start of most tests.
    A,
    /// `nodeb`.
    B,
}

impl Side {
    /// The other node.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The node name in the config (`nodea`, `nodeb`).
    pub fn node_name(self) -> &'static str {
        match self {
            Side::A => "nodea",
            Side::B => "nodeb",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::A => "A",
            Side::B => "B",
        })
    }
}

/// The fields of `hastctl list --json` the tests look at, for one resource.
#[derive(Clone, Debug)]
pub struct ResStatus {
    /// `init`, `primary`, `secondary`.
    pub role: String,
    /// `complete`, `degraded`, `split-brain`, `-`.
    pub status: String,
    /// `connected`, `disconnected`, the last connection error, or absent.
    pub peer: Option<String>,
    /// `(done_bytes, total_bytes)` while a resync runs.
    pub sync: Option<(u64, u64)>,
    /// Bytes copied by resyncs since the resource was opened on this node.
    pub resynced_bytes: u64,
    /// Bytes in dirty extents.
    pub dirty_bytes: u64,
    /// Writes served (client writes on a primary).
    pub writes: u64,
    /// `meta.localcnt`, `meta.remotecnt`, `meta.inconsistent` (when open).
    pub localcnt: Option<u64>,
    /// See `localcnt`.
    pub remotecnt: Option<u64>,
    /// See `localcnt`.
    pub inconsistent: Option<bool>,
    /// The whole JSON object.
    pub json: serde_json::Value,
}

impl ResStatus {
    pub fn from_json(v: serde_json::Value) -> ResStatus {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let n = |p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
        let sync = v.get("sync").filter(|x| !x.is_null()).map(|x| {
            (
                x.get("done_bytes").and_then(|d| d.as_u64()).unwrap_or(0),
                x.get("total_bytes").and_then(|d| d.as_u64()).unwrap_or(0),
            )
        });
        ResStatus {
            role: s("role").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            peer: s("peer"),
            sync,
            resynced_bytes: n("/stats/resynced_bytes").unwrap_or(0),
            dirty_bytes: n("/dirty_bytes").unwrap_or(0),
            writes: n("/stats/writes").unwrap_or(0),
            localcnt: n("/meta/localcnt"),
            remotecnt: n("/meta/remotecnt"),
            inconsistent: v.pointer("/meta/inconsistent").and_then(|x| x.as_bool()),
            json: v,
        }
    }

    /// Connected, in sync, no resync running.
    pub fn is_complete(&self) -> bool {
        self.status == "complete"
            && self.sync.is_none()
            && self
                .peer
                .as_deref()
                .map(|p| p == "connected")
                .unwrap_or(true)
    }

    /// One line for messages.
    pub fn brief(&self) -> String {
        format!(
            "role={} status={} peer={:?} sync={:?} resynced={} dirty={} cnt={:?}/{:?} inconsistent={:?}",
            self.role,
            self.status,
            self.peer,
            self.sync,
            self.resynced_bytes,
            self.dirty_bytes,
            self.localcnt,
            self.remotecnt,
            self.inconsistent
        )
    }
}

/// Describes a [`Pair`].
pub struct PairBuilder {
    bins: Bins,
    tag: String,
    file_size: u64,
    create_args: Vec<String>,
    replication: String,
    timeout_secs: u32,
    proxy: bool,
    options: Vec<String>,
    secret: bool,
    tls: bool,
    fuse_disk: Option<Side>,
    /// nbdkit filter arguments of the fuse disk (`--filter=delay`, …).
    fuse_filters: Vec<String>,
    metrics: bool,
}

impl PairBuilder {
    /// A Prometheus endpoint on each node: `metrics_listen` on a free
    /// loopback port in its `on` section ([`Pair::metrics_addr`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// `side`'s component behind nbdkit + nbdfuse (a [`FuseDisk`] over its
    /// image file), so that its disk can be stalled with [`Pair::disk_mut`].
    pub fn fuse_disk(mut self, side: Side) -> Self {
        self.fuse_disk = Some(side);
        self
    }

    /// As [`PairBuilder::fuse_disk`], with nbdkit `filters` (arguments
    /// such as `--filter=delay`, `delay-read=5ms`) between nbdfuse and the
    /// image: a disk that is slow on demand.
    pub fn fuse_disk_filtered(mut self, side: Side, filters: &[&str]) -> Self {
        self.fuse_disk = Some(side);
        self.fuse_filters = filters.iter().map(|f| f.to_string()).collect();
        self
    }

    /// The link over TLS: a certificate per node, `tls://` addresses, each
    /// node pinning the other's fingerprint (see [`tls_config`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// No `secret_file`: the link is checked by address only (by default
    /// both nodes share a key file, as a real deployment should).
    pub fn no_secret(mut self) -> Self {
        self.secret = false;
        self
    }

    /// A word in the temp dir names.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_string();
        self
    }

    /// Size of each sparse image file, metadata included (default 512 MiB).
    pub fn file_size(mut self, bytes: u64) -> Self {
        self.file_size = bytes;
        self
    }

    /// Extra `hastctl create` arguments on both nodes (e.g. `-k 8`).
    pub fn create_args(mut self, args: &[&str]) -> Self {
        self.create_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `replication` mode (default `fullsync`).
    pub fn replication(mut self, mode: &str) -> Self {
        self.replication = mode.to_string();
        self
    }

    /// `timeout` in seconds (default 3, so a silent peer is noticed fast).
    pub fn timeout(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Put a [`Proxy`] on A's link to B.
    pub fn proxy(mut self) -> Self {
        self.proxy = true;
        self
    }

    /// One more resource-level statement, e.g. `resync_rate 20M`.
    pub fn option(mut self, line: &str) -> Self {
        self.options.push(line.to_string());
        self
    }

    /// Make both nodes (directories, images, `hastctl create`) and the proxy, and
    /// write the shared config; no daemon runs yet.
    pub fn build(self) -> Pair {
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let (nbd_a, repl_a, nbd_b, repl_b) = (ports[0], ports[1], ports[2], ports[3]);
        let proxy = self
            .proxy
            .then(|| Proxy::start(SocketAddr::from(([127, 0, 0, 1], repl_b))));
        let a_remote = proxy.as_ref().map(Proxy::port).unwrap_or(repl_b);
        let make = |side: Side, nbd: u16, repl: u16| {
            let spec = ResourceSpec::new(RES, self.file_size).create_args(
                &self
                    .create_args
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            Node::builder(self.bins.clone())
                .tag(&format!("{}-{}", self.tag, side.node_name()))
                .node_name(side.node_name())
                .nbd_port(nbd)
                .repl_port(repl)
                .resource(spec)
                .build()
        };
        let a = make(Side::A, nbd_a, repl_a);
        let b = make(Side::B, nbd_b, repl_b);
        let secret = self.secret.then(|| {
            let path = a.layout().dir.join("repl.key");
            write_secret(&path);
            path
        });
        let text = pair_config(
            a.layout(),
            b.layout(),
            a_remote,
            &self.replication,
            self.timeout_secs,
            &self.options,
            secret.as_deref(),
        );
        let certs = self.tls.then(|| {
            [
                make_cert(&a.layout().dir, "nodea"),
                make_cert(&b.layout().dir, "nodeb"),
            ]
        });
        let text = match &certs {
            Some(c) => tls_config(&text, a.layout(), b.layout(), a_remote, c),
            None => text,
        };
        let disk = self.fuse_disk.map(|side| {
            let n = match side {
                Side::A => &a,
                Side::B => &b,
            };
            let filters: Vec<&str> = self.fuse_filters.iter().map(String::as_str).collect();
            let disk = FuseDisk::with_filters(&n.layout().local(RES), &n.layout().dir, &filters);
            (side, disk)
        });
        let text = fuse_config(&text, &a, &b, disk.as_ref());
        let metrics = self.metrics.then(|| [free_port(), free_port()]);
        let text = metrics_config(&text, &a, &b, metrics);
        for n in [&a, &b] {
            std::fs::write(&n.layout().config_path, &text).expect("write pair config");
        }
        let data_offset = |n: &Node| -> (u64, u64) {
            let d = n.dump(RES);
            let off = d
                .get("localoff")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no localoff in dump: {d:?}"));
            let size = d
                .get("datasize")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no datasize in dump: {d:?}"));
            (off, size)
        };
        let area_a = data_offset(&a);
        let area_b = data_offset(&b);
        assert_eq!(
            area_a.1, area_b.1,
            "the two components have different data sizes"
        );
        Pair {
            a,
            b,
            proxy,
            area: [area_a, area_b],
            config_text: text,
            a_remote,
            replication: self.replication,
            timeout_secs: self.timeout_secs,
            options: self.options,
            secret,
            certs,
            disk,
            metrics,
        }
    }

    /// [`build`](Self::build) and start both daemons (resources in `init`).
    pub fn start(self) -> Pair {
        let mut p = self.build();
        p.start();
        p
    }
}

/// Writes a fresh random key file, mode 0600, in the format README.md's
/// recipe makes (`umask 077; head -c 32 /dev/urandom | base64 > key`): the
/// base64 text of 32 random bytes and a newline, so every pair runs on the
/// documented format (the key is that text as it is, not decoded).
pub fn write_secret(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; 32] = rand::random();
    let text = base64(&key);
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    writeln!(f, "{text}").expect("write key file");
}

/// RFC 4648 base64 with padding, as coreutils' `base64` prints it (one
/// line: a key is far below its 76-column wrap).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A node's TLS certificate and key (PEM files) and its SHA-256
/// fingerprint as `openssl x509 -noout -fingerprint -sha256` prints it
/// (`AB:CD:...`), which is what the peer pins.
#[derive(Clone, Debug)]
pub struct NodeCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
}

/// Makes a self-signed P-256 certificate and key in `dir` (`NAME.crt`,
/// `NAME.key`, mode 0600) the way docs/security.md tells an operator to,
/// replacing any there.
pub fn make_cert(dir: &Path, name: &str) -> NodeCert {
    use std::os::unix::fs::PermissionsExt;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
    let mut req = Command::new("openssl");
    req.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
        .args(["-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let out = run(&mut req, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{} failed: {}",
        describe(&req),
        output_text(&out)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let mut fp = Command::new("openssl");
    fp.args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert);
    let out = run(&mut fp, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fingerprint = text
        .trim()
        .split_once('=')
        .map(|(_, f)| f.to_string())
        .unwrap_or_else(|| panic!("{}: no fingerprint in {text:?}", describe(&fp)));
    NodeCert {
        cert,
        key,
        fingerprint,
    }
}

/// [`pair_config`]'s text over TLS: both `listen` and `remote` addresses
/// `tls://`, each node's `on` section naming its certificate and key, and
/// each node's resource section pinning the other node's certificate.
pub fn tls_config(
    text: &str,
    a: &Layout,
    b: &Layout,
    a_remote_port: u16,
    certs: &[NodeCert; 2],
) -> String {
    let mut out = text.to_string();
    for (l, c) in [(a, &certs[0]), (b, &certs[1])] {
        let listen = format!("    listen tcp://127.0.0.1:{}\n", l.repl_port);
        assert!(out.contains(&listen), "no {listen:?} in the pair config");
        out = out.replace(
            &listen,
            &format!(
                "    listen tls://127.0.0.1:{}\n    tls_cert {}\n    tls_key {}\n",
                l.repl_port,
                c.cert.display(),
                c.key.display()
            ),
        );
    }
    // A's remote (B or the proxy in front of it) pins B's certificate, B's
    // remote (A) pins A's.
    for (port, pin) in [(a_remote_port, &certs[1]), (a.repl_port, &certs[0])] {
        let remote = format!("        remote tcp://127.0.0.1:{port}\n");
        assert!(out.contains(&remote), "no {remote:?} in the pair config");
        out = out.replace(
            &remote,
            &format!(
                "        remote tls://127.0.0.1:{port}\n        tls_peer_fingerprint {}\n",
                pin.fingerprint
            ),
        );
    }
    out
}

/// `text` with the `local` of the side that has a [`FuseDisk`] pointing at
/// its mount.
fn fuse_config(text: &str, a: &Node, b: &Node, disk: Option<&(Side, FuseDisk)>) -> String {
    let Some((side, disk)) = disk else {
        return text.to_string();
    };
    let n = match side {
        Side::A => a,
        Side::B => b,
    };
    let local = format!("local {}\n", n.layout().local(RES).display());
    assert!(text.contains(&local), "no {local:?} in the pair config");
    text.replace(&local, &format!("local {}\n", disk.path().display()))
}

/// `metrics_listen tcp://127.0.0.1:PORT` in each node's section, when
/// `ports` are given (A's, B's).
fn metrics_config(text: &str, a: &Node, b: &Node, ports: Option<[u16; 2]>) -> String {
    let Some(ports) = ports else {
        return text.to_string();
    };
    let mut text = text.to_string();
    for (n, port) in [a, b].into_iter().zip(ports) {
        let listen = format!("    listen tcp://127.0.0.1:{}\n", n.layout().repl_port);
        assert!(text.contains(&listen), "no {listen:?} in the pair config");
        text = text.replacen(
            &listen,
            &format!("{listen}    metrics_listen tcp://127.0.0.1:{port}\n"),
            1,
        );
    }
    text
}

/// The config both nodes share.
pub fn pair_config(
    a: &Layout,
    b: &Layout,
    a_remote_port: u16,
    replication: &str,
    timeout_secs: u32,
    options: &[String],
    secret: Option<&Path>,
) -> String {
    let node = |l: &Layout| {
        format!(
            "on {name} {{\n\
             \x20   control uds://{control}\n\
             \x20   pidfile {pidfile}\n\
             \x20   nbd_listen tcp://127.0.0.1:{nbd}\n\
             \x20   nbd_socket_dir {sockdir}\n\
             \x20   state_dir {state}\n\
             \x20   listen tcp://127.0.0.1:{repl}\n\
             }}\n",
            name = l.node_name,
            control = l.control.display(),
            pidfile = l.pidfile.display(),
            nbd = l.nbd_port,
            sockdir = l.nbd_socket_dir.display(),
            state = l.state_dir.display(),
            repl = l.repl_port,
        )
    };
    let mut c = String::from("# written by hast-testkit (pair)\n");
    if let Some(path) = secret {
        c.push_str(&format!("secret_file {}\n", path.display()));
    }
    c.push_str(&node(a));
    c.push_str(&node(b));
    c.push_str(&format!(
        "resource {RES} {{\n    timeout {timeout_secs}\n    replication {replication}\n"
    ));
    for o in options {
        c.push_str(&format!("    {o}\n"));
    }
    c.push_str(&format!(
        "    on {an} {{\n        local {al}\n        remote tcp://127.0.0.1:{a_remote_port}\n    }}\n\
         \x20   on {bn} {{\n        local {bl}\n        remote tcp://127.0.0.1:{br}\n    }}\n}}\n",
        an = a.node_name,
        al = a.local(RES).display(),
        bn = b.node_name,
        bl = b.local(RES).display(),
        br = a.repl_port,
    ));
    c
}

/// Two nodes mirroring `r0`.
pub struct Pair {
    a: Node,
    b: Node,
    proxy: Option<Proxy>,
    /// (data offset, data size) of A's and B's component.
    area: [(u64, u64); 2],
    config_text: String,
    a_remote: u16,
    replication: String,
    timeout_secs: u32,
    options: Vec<String>,
    /// The key file both nodes' `secret_file` names.
    secret: Option<PathBuf>,
    /// A's and B's certificates when the link is TLS.
    certs: Option<[NodeCert; 2]>,
    /// The side whose component is behind nbdkit + nbdfuse (released first
    /// on drop, see the module's doc).
    disk: Option<(Side, FuseDisk)>,
    /// A's and B's `metrics_listen` ports ([`PairBuilder::metrics`]).
    metrics: Option<[u16; 2]>,
}

impl Pair {
    /// Start describing a pair: 512 MiB images, `fullsync`, `timeout 3`, no proxy.
    pub fn builder(bins: Bins) -> PairBuilder {
        PairBuilder {
            bins,
            tag: "pair".into(),
            file_size: 512 * crate::MIB,
            create_args: Vec::new(),
            replication: "fullsync".into(),
            timeout_secs: 3,
            proxy: false,
            options: Vec::new(),
            metrics: false,
            secret: true,
            tls: false,
            fuse_disk: None,
            fuse_filters: Vec::new(),
        }
    }

    /// The [`FuseDisk`] under `side`'s component; panics unless the pair was
    /// built with [`PairBuilder::fuse_disk`] for that side.
    pub fn disk_mut(&mut self, side: Side) -> &mut FuseDisk {
        match self.disk.as_mut() {
            Some((s, d)) if *s == side => d,
            _ => panic!("{side}'s component is not a FuseDisk"),
        }
    }

    /// A's and B's certificates (`None` unless built with
    /// [`PairBuilder::tls`]).
    pub fn certs(&self) -> Option<&[NodeCert; 2]> {
        self.certs.as_ref()
    }

    /// Replaces `side`'s certificate and key with a fresh pair at the same
    /// paths, leaving the configs as they are: the other node still pins the
    /// old fingerprint. Takes effect when `side`'s hastd starts or reloads.
    pub fn new_cert(&mut self, side: Side) -> NodeCert {
        let dir = self.node(side).layout().dir.clone();
        let certs = self
            .certs
            .as_mut()
            .expect("this pair was built without tls");
        let c = make_cert(&dir, side.node_name());
        let i = match side {
            Side::A => 0,
            Side::B => 1,
        };
        certs[i] = c.clone();
        c
    }

    /// The node on `side`.
    pub fn node(&self, side: Side) -> &Node {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// The node on `side`, mutably (to stop, kill, restart it).
    pub fn node_mut(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The proxy on A's link to B; panics if the pair was built without one.
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("this pair was built without a proxy")
    }

    /// The shared config text.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// Replace the resource-level options (see [`PairBuilder::option`]), rewrite
    /// both config files and SIGHUP the running daemons so they reload it.
    pub fn reconfigure(&mut self, options: &[&str]) {
        self.options = options.iter().map(|s| s.to_string()).collect();
        self.config_text = pair_config(
            self.a.layout(),
            self.b.layout(),
            self.a_remote,
            &self.replication,
            self.timeout_secs,
            &self.options,
            self.secret.as_deref(),
        );
        if let Some(c) = &self.certs {
            self.config_text = tls_config(
                &self.config_text,
                self.a.layout(),
                self.b.layout(),
                self.a_remote,
                c,
            );
        }
        self.config_text = fuse_config(&self.config_text, &self.a, &self.b, self.disk.as_ref());
        self.config_text = metrics_config(&self.config_text, &self.a, &self.b, self.metrics);
        for side in [Side::A, Side::B] {
            let path = self.node(side).layout().config_path.clone();
            std::fs::write(&path, &self.config_text).expect("rewrite pair config");
            if self.node_mut(side).daemon_running() {
                self.node_mut(side).signal(libc::SIGHUP);
            }
        }
    }

    /// `side`'s `metrics_listen` address; panics unless built with
    /// [`PairBuilder::metrics`].
    pub fn metrics_addr(&self, side: Side) -> SocketAddr {
        let ports = self.metrics.expect("this pair was built without metrics");
        SocketAddr::from(([127, 0, 0, 1], ports[side as usize]))
    }

    /// `nbd://127.0.0.1:PORT/r0` of `side` (served only while it is primary).
    pub fn uri(&self, side: Side) -> String {
        self.node(side).uri(RES)
    }

    /// The image file of `side`.
    pub fn image(&self, side: Side) -> PathBuf {
        self.node(side).layout().local(RES)
    }

    /// `(data offset, data size)` of `side`'s component, from `hastctl dump`.
    pub fn data_area(&self, side: Side) -> (u64, u64) {
        self.area[side as usize]
    }

    /// Data size of the resource.
    pub fn datasize(&self) -> u64 {
        self.area[0].1
    }

    /// Start the daemons that are not running.
    pub fn start(&mut self) {
        for side in [Side::A, Side::B] {
            if !self.node_mut(side).daemon_running() {
                self.node_mut(side).start_daemon();
            }
        }
    }

    /// Start `side`'s daemon (it must not be running).
    pub fn start_daemon(&mut self, side: Side) {
        self.node_mut(side).start_daemon();
    }

    /// `hastctl role primary r0` on `side` and wait for its export; returns its size.
    pub fn make_primary(&mut self, side: Side) -> u64 {
        self.node_mut(side).promote(RES)
    }

    /// `hastctl role secondary r0` on `side`.
    pub fn make_secondary(&mut self, side: Side) {
        self.node(side).hastctl_ok(&["role", "secondary", RES]);
    }

    /// `hastctl role init r0` on `side`.
    pub fn make_init(&mut self, side: Side) {
        self.node(side).hastctl_ok(&["role", "init", RES]);
    }

    /// Secondary on the other side first, then primary on `primary`, then wait until
    /// both report complete (the initial full sync is done).
    pub fn setup(&mut self, primary: Side, bound: Duration) {
        self.make_secondary(primary.other());
        self.make_primary(primary);
        self.wait_complete(bound);
    }

    /// SIGKILL `side`'s daemon (by PID).
    pub fn kill9(&mut self, side: Side) {
        self.node_mut(side).kill9();
    }

    /// SIGTERM `side`'s daemon and wait; panics unless it exits 0.
    pub fn stop(&mut self, side: Side) {
        let st = self.node_mut(side).stop();
        assert!(
            st.success(),
            "hastd on {side} exited with {st}:\n{}",
            tail(self.node(side).log_path(), LOG_LINES)
        );
    }

    /// Start `side` again (stopping it first if it runs); its resource is in `init`.
    pub fn restart(&mut self, side: Side) {
        if self.node_mut(side).daemon_running() {
            self.stop(side);
        }
        self.node_mut(side).start_daemon();
    }

    /// `hastctl list --json r0` on `side`, the resource's object.
    pub fn status_json(&self, side: Side) -> serde_json::Value {
        let text = self.node(side).hastctl_ok(&["list", "--json", RES]);
        let mut v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("list --json on {side} is not JSON ({e}):\n{text}"));
        let list = v
            .get_mut("resources")
            .and_then(|r| r.as_array_mut())
            .unwrap_or_else(|| panic!("list --json on {side} has no resources:\n{text}"));
        let pos = list
            .iter()
            .position(|r| r.get("name").and_then(|n| n.as_str()) == Some(RES))
            .unwrap_or_else(|| panic!("list --json on {side} lacks {RES}:\n{text}"));
        list.swap_remove(pos)
    }

    /// The parsed status of `r0` on `side`.
    pub fn status(&self, side: Side) -> ResStatus {
        ResStatus::from_json(self.status_json(side))
    }

    /// Both statuses, one line each, and the tails of both logs: for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for side in [Side::A, Side::B] {
            let st = self.node(side).hastctl(&["list", "--json", RES]);
            let brief = if st.status.success() {
                serde_json::from_slice::<serde_json::Value>(&st.stdout)
                    .ok()
                    .and_then(|v| v.pointer("/resources/0").cloned())
                    .map(|v| ResStatus::from_json(v).brief())
                    .unwrap_or_else(|| String::from_utf8_lossy(&st.stdout).into_owned())
            } else {
                format!("status failed: {}", String::from_utf8_lossy(&st.stderr))
            };
            s.push_str(&format!("{side}: {brief}\n"));
        }
        for side in [Side::A, Side::B] {
            s.push_str(&format!(
                "--- log of {side} (last {LOG_LINES} lines)\n{}\n",
                tail(self.node(side).log_path(), LOG_LINES)
            ));
        }
        s
    }

    /// Poll `side`'s status until `pred` holds, for at most `bound`; panics with both
    /// statuses and logs otherwise. Returns the status that satisfied `pred`.
    pub fn wait_status(
        &self,
        side: Side,
        bound: Duration,
        what: &str,
        mut pred: impl FnMut(&ResStatus) -> bool,
    ) -> ResStatus {
        let mut last = None;
        let got = wait_for(bound, || {
            let st = self.status(side);
            let ok = pred(&st);
            last = Some(st.clone());
            if ok {
                Some(st)
            } else {
                std::thread::sleep(POLL);
                None
            }
        });
        got.unwrap_or_else(|| {
            panic!(
                "{side} did not reach \"{what}\" within {bound:?}; last: {}\n{}",
                last.map(|s| s.brief()).unwrap_or_default(),
                self.describe()
            )
        })
    }

    /// Wait until both sides report `complete`, peer connected and no resync running,
    /// twice in a row a poll apart (so a resync about to start is not missed).
    /// Returns how long it took.
    pub fn wait_complete(&self, bound: Duration) -> Duration {
        let t0 = Instant::now();
        let mut streak = 0;
        let got = wait_for(bound, || {
            let ok = self.status(Side::A).is_complete() && self.status(Side::B).is_complete();
            streak = if ok { streak + 1 } else { 0 };
            if streak >= 2 {
                Some(())
            } else {
                std::thread::sleep(POLL);
                None
            }
        });
        if got.is_none() {
            panic!(
                "the pair did not become complete within {bound:?}:\n{}",
                self.describe()
            );
        }
        t0.elapsed()
    }

    /// Compare the data areas of both components byte for byte.
    /// `Err` names the first differing offset (relative to the data area).
    pub fn data_identical(&self) -> Result<(), String> {
        compare_areas(
            &self.image(Side::A),
            self.data_area(Side::A),
            &self.image(Side::B),
            self.data_area(Side::B),
        )
    }

    /// Wait (bounded) until the data areas are identical; panics with the first
    /// difference, both statuses and logs otherwise. In `async` mode the secondary
    /// may still be applying the last writes, hence the wait.
    pub fn assert_identical(&self, bound: Duration) {
        let mut last = String::new();
        let ok = wait_for(bound, || match self.data_identical() {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(500));
                None
            }
        });
        if ok.is_none() {
            panic!(
                "the data areas of A and B differ: {last}\n{}",
                self.describe()
            );
        }
    }

    /// A digest of `side`'s data area (holes and zero blocks do not count, offsets
    /// do), to show that a copy did not change.
    pub fn data_digest(&self, side: Side) -> u64 {
        digest_area(&self.image(side), self.data_area(side))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // The mount is in the node's directory: unmounted (its daemon, which
        // holds it open, killed first) before the node removes that directory.
        if let Some((side, mut disk)) = self.disk.take() {
            disk.heal();
            if self.node_mut(side).daemon_running() {
                self.node_mut(side).kill9();
            }
            disk.release();
        }
    }
}

// ---------------------------------------------------------------------------
// Loads the pair tests drive: qemu-io commands, fio, the versioned-block writer.

/// `qemu-io -f raw URI -c CMD...`, asserting success; returns stdout.
pub fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", uri]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = run(&mut cmd, timeout_s(180));
    let text = output_text(&out);
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {cmds:?} on {uri} failed ({}):\n{text}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fio --ioengine=nbd` running in the background with JSON output to a file.
pub struct Fio {
    proc: Proc,
    json: PathBuf,
    what: String,
}

/// What a finished fio run reports.
#[derive(Clone, Debug)]
pub struct FioResult {
    /// fio's exit status was 0.
    pub success: bool,
    /// The job's `error` (0 = none).
    pub error: i64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Write completion latency, max, in seconds.
    pub max_write_latency_s: f64,
    /// Everything fio printed (for messages).
    pub text: String,
}

impl Fio {
    /// 4 KiB random writes at `iodepth` over `[offset, offset+size)` of `uri` for
    /// `runtime_s` seconds. Output goes to `dir/NAME.json` and `dir/NAME.out`.
    pub fn randwrite(
        uri: &str,
        offset: u64,
        size: u64,
        iodepth: u32,
        runtime_s: u64,
        dir: &Path,
        name: &str,
    ) -> Fio {
        let json = dir.join(format!("{name}.json"));
        let mut cmd = Command::new("fio");
        cmd.args([
            &format!("--name={name}"),
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--iodepth={iodepth}"),
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            "--time_based",
            &format!("--runtime={runtime_s}"),
            "--output-format=json",
        ])
        .arg(format!("--output={}", json.display()));
        let what = describe(&cmd);
        let proc = Proc::spawn(&mut cmd, "fio", Some(&dir.join(format!("{name}.out"))))
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        Fio { proc, json, what }
    }

    /// True while fio runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Wait (bounded) for fio to finish on its own and parse its report.
    pub fn wait(mut self, bound: Duration) -> FioResult {
        let st = self.proc.wait_timeout(bound).unwrap_or_else(|| {
            self.proc.kill9();
            panic!("`{}` did not finish within {bound:?}; killed", self.what)
        });
        let text = std::fs::read_to_string(&self.json).unwrap_or_default();
        let out = self
            .proc
            .log_path()
            .map(|p| tail(p, 40))
            .unwrap_or_default();
        // fio may print warnings before the JSON object.
        let v: Option<serde_json::Value> = text
            .find('{')
            .and_then(|i| serde_json::from_str(&text[i..]).ok());
        let job = v.as_ref().and_then(|v| v.pointer("/jobs/0"));
        let get = |p: &str| job.and_then(|j| j.pointer(p));
        FioResult {
            success: st.success(),
            error: get("/error").and_then(|x| x.as_i64()).unwrap_or(-1),
            write_bytes: get("/write/io_bytes").and_then(|x| x.as_u64()).unwrap_or(0),
            max_write_latency_s: get("/write/clat_ns/max")
                .and_then(|x| x.as_f64())
                .unwrap_or(0.0)
                / 1e9,
            text: format!("{text}\n--- fio output\n{out}"),
        }
    }

    /// Stop fio now (SIGTERM, then SIGKILL) without looking at its result.
    pub fn stop(mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

/// `tests/py/versioned_writer.py` in the background: versioned 4 KiB blocks, many in
/// flight, every acknowledged write logged as one that must survive
/// (`--ack-is-durable`), stopped through a stop file.
pub struct VersionedWriter {
    proc: Proc,
    /// The writer's log (`I`/`D` lines), input of the checker.
    pub log: PathBuf,
    out: PathBuf,
    stop_file: PathBuf,
}

impl VersionedWriter {
    /// Write blocks `[first_lba, first_lba + blocks)` of `uri`; `name` names the log
    /// files in `dir`; sequence numbers start above `seq_base`.
    pub fn start(
        uri: &str,
        first_lba: u64,
        blocks: u64,
        dir: &Path,
        name: &str,
        seq_base: u64,
        seed: u64,
    ) -> VersionedWriter {
        let log = dir.join(format!("{name}.log"));
        let out = dir.join(format!("{name}.out"));
        let stop_file = dir.join(format!("{name}.stop"));
        let _ = std::fs::remove_file(&stop_file);
        let mut cmd = python_command(
            "versioned_writer.py",
            &[
                "--uri",
                uri,
                "--first-lba",
                &first_lba.to_string(),
                "--blocks",
                &blocks.to_string(),
                "--log",
                log.to_str().expect("utf-8 path"),
                "--seq-base",
                &seq_base.to_string(),
                "--seed",
                &seed.to_string(),
                "--duration",
                "600",
                "--ack-is-durable",
                "--stop-file",
                stop_file.to_str().expect("utf-8 path"),
            ],
        );
        let proc = Proc::spawn(&mut cmd, "versioned_writer", Some(&out))
            .unwrap_or_else(|e| panic!("cannot start versioned_writer.py: {e}"));
        VersionedWriter {
            proc,
            log,
            out,
            stop_file,
        }
    }

    /// Writes logged as acknowledged (must survive) so far.
    pub fn acked(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().filter(|l| l.starts_with("D ")).count())
            .unwrap_or(0)
    }

    /// True while the writer runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The writer's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Wait (bounded) until at least `n` writes were acknowledged; panics if the
    /// writer ends or the bound passes first.
    pub fn wait_acked(&mut self, n: usize, bound: Duration) {
        let got = wait_for(bound, || {
            if !self.proc.is_running() {
                return Some(false);
            }
            (self.acked() >= n).then_some(true)
        });
        assert_eq!(
            got,
            Some(true),
            "versioned writer: {} of {n} writes acknowledged within {bound:?}; {}:\n{}",
            self.acked(),
            if self.proc.is_running() {
                "running"
            } else {
                "exited"
            },
            self.output()
        );
    }

    /// Ask the writer to stop (it lets what is in flight complete) and wait for it.
    /// Returns its JSON summary; panics if it failed or did not stop in time.
    pub fn stop(mut self) -> serde_json::Value {
        std::fs::write(&self.stop_file, b"stop").expect("write stop file");
        self.finish(timeout_s(90))
    }

    /// Wait (bounded) for a writer whose server went away; returns its summary.
    pub fn wait_lost(mut self, bound: Duration) -> serde_json::Value {
        let v = self.finish(bound);
        assert_eq!(
            v.get("end").and_then(|e| e.as_str()),
            Some("connection lost"),
            "the writer ended for another reason: {v}"
        );
        v
    }

    /// Wait (bounded) for a writer the server answered with an error
    /// (exit 2); returns its summary.
    pub fn wait_failed(mut self, bound: Duration) -> serde_json::Value {
        let (st, v) = self.end(bound);
        assert_eq!(st.code(), Some(2), "the writer did not fail: {st}: {v}");
        v
    }

    fn finish(&mut self, bound: Duration) -> serde_json::Value {
        let (st, v) = self.end(bound);
        assert!(
            st.success(),
            "versioned writer failed ({st}):\n{}",
            self.output()
        );
        v
    }

    fn end(&mut self, bound: Duration) -> (std::process::ExitStatus, serde_json::Value) {
        let st = self.proc.wait_timeout(bound).unwrap_or_else(|| {
            self.proc.kill9();
            panic!(
                "versioned writer did not finish within {bound:?}:\n{}",
                self.output()
            )
        });
        let out = self.output();
        let v = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| panic!("no summary from the versioned writer ({st}):\n{out}"));
        (st, v)
    }
}

/// `tests/py/versioned_check.py` against `uri` with every log in `logs`: each
/// logged-as-surviving write reads back (that version or a later submitted one),
/// nothing torn or misplaced. Panics with the violations; returns the summary line.
pub fn versioned_check(uri: &str, logs: &[PathBuf]) -> String {
    let mut args: Vec<String> = vec!["--uri".into(), uri.into()];
    for l in logs {
        args.push("--log".into());
        args.push(l.display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python("versioned_check.py", &refs, timeout_s(300));
    assert!(
        out.status.success(),
        "acknowledged writes did not read back from {uri}:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

const CHUNK: usize = 1 << 20;

/// Next offset >= `pos` that may hold data (SEEK_DATA), or `end` if none.
fn next_data(f: &File, pos: u64, end: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let Ok(p) = libc::off_t::try_from(pos) else {
        return end;
    };
    // SAFETY: lseek on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), p, libc::SEEK_DATA) };
    if r < 0 {
        // ENXIO: no data after pos. Anything else: fall back to reading everything.
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            end
        } else {
            pos
        };
    }
    (r as u64).min(end)
}

fn read_chunk(f: &File, path: &Path, off: u64, buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .unwrap_or_else(|e| panic!("read {} at {}: {e}", path.display(), off + done as u64));
        if n == 0 {
            // Past the end of the file reads as zeroes (the data area never is).
            buf[done..].fill(0);
            return;
        }
        done += n;
    }
}

/// Compare `[off, off + size)` of two files; skips ranges that are holes in both.
pub fn compare_areas(
    pa: &Path,
    (off_a, size_a): (u64, u64),
    pb: &Path,
    (off_b, size_b): (u64, u64),
) -> Result<(), String> {
    if size_a != size_b {
        return Err(format!("data sizes differ: {size_a} vs {size_b}"));
    }
    let fa = File::open(pa).map_err(|e| format!("open {}: {e}", pa.display()))?;
    let fb = File::open(pb).map_err(|e| format!("open {}: {e}", pb.display()))?;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size_a {
        let da = next_data(&fa, off_a + pos, off_a + size_a) - off_a;
        let db = next_data(&fb, off_b + pos, off_b + size_b) - off_b;
        // Both are holes before min(da, db): equal there. Align down to 4 KiB.
        let skip_to = da.min(db) & !4095;
        if skip_to > pos {
            pos = skip_to;
            continue;
        }
        let n = (size_a - pos).min(CHUNK as u64) as usize;
        read_chunk(&fa, pa, off_a + pos, &mut ba[..n]);
        read_chunk(&fb, pb, off_b + pos, &mut bb[..n]);
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let at = pos + i as u64;
            return Err(format!(
                "first difference at data offset {at} (extent of 2 MiB #{}, 4 KiB block #{}): \
                 A has {:#04x}, B has {:#04x}",
                at >> 21,
                at >> 12,
                ba[i],
                bb[i]
            ));
        }
        pos += n as u64;
    }
    Ok(())
}

/// A digest of `[off, off + size)` of a file: FNV-1a over (offset, bytes) of every
/// 1 MiB chunk that is not all zeroes.
pub fn digest_area(p: &Path, (off, size): (u64, u64)) -> u64 {
    let f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut buf = vec![0u8; CHUNK];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut pos = 0u64;
    while pos < size {
        let d = (next_data(&f, off + pos, off + size) - off) & !(CHUNK as u64 - 1);
        if d > pos {
            pos = d;
            continue;
        }
        let n = (size - pos).min(CHUNK as u64) as usize;
        read_chunk(&f, p, off + pos, &mut buf[..n]);
        if buf[..n].iter().any(|b| *b != 0) {
            feed(&pos.to_le_bytes());
            feed(&buf[..n]);
        }
        pos += n as u64;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_digest_see_a_one_byte_change() {
        let d = crate::tmp::TempDir::new("paircmp");
        let (pa, pb) = (d.join("a"), d.join("b"));
        for p in [&pa, &pb] {
            let f = File::create(p).unwrap();
            f.set_len(8 << 20).unwrap();
            f.write_at(&[7u8; 4096], 4096 * 300).unwrap();
        }
        let area = (8192, (8 << 20) - 8192);
        assert!(compare_areas(&pa, area, &pb, area).is_ok());
        assert_eq!(digest_area(&pa, area), digest_area(&pb, area));
        File::options()
            .write(true)
            .open(&pb)
            .unwrap()
            .write_at(&[1], (5 << 20) + 3)
            .unwrap();
        let e = compare_areas(&pa, area, &pb, area).unwrap_err();
        assert!(
            e.contains(&format!("offset {}", (5 << 20) + 3 - 8192)),
            "{e}"
        );
        assert_ne!(digest_area(&pa, area), digest_area(&pb, area));
    }

    #[test]
    fn base64_is_coreutils_base64() {
        // RFC 4648's test vectors.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain:?}");
        }
        assert_eq!(base64(&[0xff; 32]).len(), 44);
        assert!(base64(&[0xfb, 0xff]).contains('+') && base64(&[0xff, 0xff]).contains('/'));
    }
}
