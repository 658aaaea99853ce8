//! Grammar of hast.conf: statements and `on`/`resource` sections into a raw
//! tree of typed values with their line numbers. Values are parsed here, so
//! a bad value is reported on its own line even inside a section for another
//! node; choosing this node's sections and applying inheritance is left to
//! `resolve`. Statements and sections are read by `syntax::Reader`, the
//! grammar hast.conf shares with hastmon.conf; this module owns hast.conf's
//! keywords and where each is allowed.

use std::path::{Path, PathBuf};

use crate::addr::{Addr, DISCOVERY_PORT, NBD_PORT, REPLICATION_PORT};
use crate::error::{ConfigError, ErrorKind};
use crate::level::Level;
use crate::nbd_tls::{parse_fingerprint, NbdTlsMode};
use crate::syntax::value::{abs_path, bad, check_resource_name, whole_number, NumberError};
use crate::syntax::{set, At, Reader, SyntaxError};
use crate::tls::Fingerprint;
use crate::value::{parse_size, Checksum, Compression, OnIoError, Replication};
use crate::{DEPTH_MAX, LISTEN_MAX, NODE_SECTIONS_MAX, RESOURCES_MAX};

/// Options of the daemon as a whole (global and top-level node sections).
#[derive(Debug, Default)]
pub(crate) struct NodeOpts {
    pub(crate) control: Option<At<Addr>>,
    pub(crate) pidfile: Option<At<PathBuf>>,
    pub(crate) listen: Vec<At<Addr>>,
    pub(crate) nbd_listen: Option<At<Option<Addr>>>,
    pub(crate) nbd_socket_dir: Option<At<Option<PathBuf>>>,
    pub(crate) state_dir: Option<At<PathBuf>>,
    pub(crate) exec_timeout: Option<At<u32>>,
    pub(crate) metrics_listen: Option<At<Option<Addr>>>,
    pub(crate) discovery_listen: Option<At<Option<Addr>>>,
    pub(crate) nbd_max_buffer: Option<At<u64>>,
    pub(crate) nbd_idle_timeout: Option<At<u32>>,
    pub(crate) nbd_tls: Option<At<NbdTlsMode>>,
    pub(crate) nbd_tls_cert: Option<At<PathBuf>>,
    pub(crate) nbd_tls_key: Option<At<PathBuf>>,
    /// `none` is `Some(At { value: None })`: it overrides a global one.
    pub(crate) nbd_tls_client_fingerprint: Option<At<Option<[u8; 32]>>>,
    /// This node's certificate and key for `tls://` links (PEM paths).
    pub(crate) tls_cert: Option<At<PathBuf>>,
    pub(crate) tls_key: Option<At<PathBuf>>,
}

/// Options of a resource (global, resource and resource-node sections).
#[derive(Debug, Default)]
pub(crate) struct ResOpts {
    pub(crate) replication: Option<At<Replication>>,
    pub(crate) checksum: Option<At<Checksum>>,
    pub(crate) compression: Option<At<Compression>>,
    pub(crate) timeout: Option<At<u32>>,
    pub(crate) ping_timeout: Option<At<u32>>,
    pub(crate) exec: Option<At<PathBuf>>,
    /// `fence_peer none` is `Some(At { value: None })`: it overrides a default.
    pub(crate) fence_peer: Option<At<Option<String>>>,
    pub(crate) metaflush: Option<At<bool>>,
    pub(crate) freeze_timeout: Option<At<u32>>,
    pub(crate) on_io_error: Option<At<OnIoError>>,
    pub(crate) resync_rate: Option<At<u64>>,
    /// `secret_file none` is `Some(At { value: None })`: it overrides a default.
    pub(crate) secret_file: Option<At<Option<PathBuf>>>,
    pub(crate) nbd_socket_owner: Option<At<String>>,
    pub(crate) nbd_socket_group: Option<At<String>>,
    pub(crate) nbd_socket_mode: Option<At<u32>>,
    pub(crate) name: Option<At<String>>,
    pub(crate) local: Option<At<PathBuf>>,
    pub(crate) remote: Option<At<Option<Addr>>>,
    pub(crate) source: Option<At<Addr>>,
    pub(crate) tls_peer_fingerprint: Option<At<Vec<Fingerprint>>>,
}

#[derive(Debug)]
pub(crate) struct RawNode {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: NodeOpts,
}

#[derive(Debug)]
pub(crate) struct RawResNode {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: ResOpts,
}

#[derive(Debug)]
pub(crate) struct RawResource {
    pub(crate) name: String,
    pub(crate) line: u32,
    pub(crate) opts: ResOpts,
    pub(crate) nodes: Vec<RawResNode>,
}

#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub(crate) node_opts: NodeOpts,
    pub(crate) res_opts: ResOpts,
    pub(crate) nodes: Vec<RawNode>,
    pub(crate) resources: Vec<RawResource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Control,
    Pidfile,
    Listen,
    NbdListen,
    NbdSocketDir,
    StateDir,
    ExecTimeout,
    MetricsListen,
    DiscoveryListen,
    NbdMaxBuffer,
    NbdIdleTimeout,
    NbdTls,
    NbdTlsCertFile,
    NbdTlsKeyFile,
    NbdTlsClientFingerprint,
    Replication,
    Checksum,
    Compression,
    Timeout,
    PingTimeout,
    Exec,
    FencePeer,
    Metaflush,
    FreezeTimeout,
    OnIoError,
    ResyncRate,
    SecretFile,
    NbdSocketOwner,
    NbdSocketGroup,
    NbdSocketMode,
    Name,
    Local,
    Remote,
    Source,
    TlsCert,
    TlsKeyPath,
    TlsPeerFingerprint,
}

/// Every statement keyword of hast.conf with its key: the one list the
/// parser reads, and [`crate::KEYWORDS`] (the manual page is checked
/// against it, tests/install.rs) is made from.
pub(crate) const KEYS: &[(&str, Key)] = &[
    ("control", Key::Control),
    ("pidfile", Key::Pidfile),
    ("listen", Key::Listen),
    ("nbd_listen", Key::NbdListen),
    ("nbd_socket_dir", Key::NbdSocketDir),
    ("state_dir", Key::StateDir),
    ("exec_timeout", Key::ExecTimeout),
    ("metrics_listen", Key::MetricsListen),
    ("discovery_listen", Key::DiscoveryListen),
    ("nbd_max_buffer", Key::NbdMaxBuffer),
    ("nbd_idle_timeout", Key::NbdIdleTimeout),
    ("nbd_tls", Key::NbdTls),
    ("nbd_tls_cert", Key::NbdTlsCertFile),
    ("nbd_tls_key", Key::NbdTlsKeyFile),
    ("nbd_tls_client_fingerprint", Key::NbdTlsClientFingerprint),
    ("replication", Key::Replication),
    ("checksum", Key::Checksum),
    ("compression", Key::Compression),
    ("timeout", Key::Timeout),
    ("ping_timeout", Key::PingTimeout),
    ("exec", Key::Exec),
    ("fence_peer", Key::FencePeer),
    ("metaflush", Key::Metaflush),
    ("freeze_timeout", Key::FreezeTimeout),
    ("on_io_error", Key::OnIoError),
    ("resync_rate", Key::ResyncRate),
    ("secret_file", Key::SecretFile),
    ("nbd_socket_owner", Key::NbdSocketOwner),
    ("nbd_socket_group", Key::NbdSocketGroup),
    ("nbd_socket_mode", Key::NbdSocketMode),
    ("name", Key::Name),
    ("local", Key::Local),
    ("remote", Key::Remote),
    ("source", Key::Source),
    ("tls_cert", Key::TlsCert),
    ("tls_key", Key::TlsKeyPath),
    ("tls_peer_fingerprint", Key::TlsPeerFingerprint),
];

impl Key {
    fn from_keyword(word: &str) -> Option<Key> {
        KEYS.iter().find(|(w, _)| *w == word).map(|&(_, k)| k)
    }
}

/// The option sets a statement may write to, by section kind. The level
/// rules of the grammar live in `apply`: a key whose set is absent here is
/// "not allowed" in this section.
enum Target<'a> {
    Global(&'a mut NodeOpts, &'a mut ResOpts),
    Node(&'a mut NodeOpts),
    Resource(&'a mut ResOpts),
    ResourceNode(&'a mut ResOpts),
}

impl Target<'_> {
    fn level(&self) -> Level {
        match self {
            Target::Global(..) => Level::Global,
            Target::Node(_) => Level::Node,
            Target::Resource(_) => Level::Resource,
            Target::ResourceNode(_) => Level::ResourceNode,
        }
    }
}

/// Why the name `all` is refused for a resource or export.
const ALL_RESERVED: &str = "\"all\" is reserved by hastctl";

pub(crate) struct Parser<'a> {
    r: Reader<'a, ErrorKind>,
    /// Sections open around the next statement.
    depth: usize,
}

pub(crate) fn parse(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let mut p = Parser {
        r: Reader::new(text, file, is_keyword),
        depth: 0,
    };
    p.top()
}

impl Parser<'_> {
    /// Counts a section just opened on `line` against `DEPTH_MAX`.
    fn enter(&mut self, line: u32) -> Result<(), ConfigError> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(self.r.err(line, ErrorKind::TooDeep { max: DEPTH_MAX }));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn top(&mut self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::default();
        while let Some((word, line)) = self.r.next_keyword(None)? {
            match word.as_str() {
                "on" => {
                    let name = self.r.node_section(
                        line,
                        &raw.nodes,
                        |n| (&n.name, n.line),
                        "node sections",
                        NODE_SECTIONS_MAX,
                    )?;
                    self.enter(line)?;
                    let mut opts = NodeOpts::default();
                    self.body(line, &format!("on {name}"), &mut Target::Node(&mut opts))?;
                    raw.nodes.push(RawNode { name, line, opts });
                }
                "resource" => {
                    let res = self.resource(line, &raw.resources)?;
                    raw.resources.push(res);
                }
                _ => {
                    let mut target = Target::Global(&mut raw.node_opts, &mut raw.res_opts);
                    self.statement(&word, line, &mut target)?;
                }
            }
        }
        Ok(raw)
    }

    fn resource(&mut self, line: u32, seen: &[RawResource]) -> Result<RawResource, ConfigError> {
        let name = self.r.resource_section(
            line,
            seen,
            |r| (&r.name, r.line),
            RESOURCES_MAX,
            ALL_RESERVED,
        )?;
        self.enter(line)?;
        let section = format!("resource {name}");
        let mut res = RawResource {
            name,
            line,
            opts: ResOpts::default(),
            nodes: Vec::new(),
        };
        while let Some((word, kw_line)) = self.r.next_keyword(Some((&section, line)))? {
            if word != "on" {
                self.statement(&word, kw_line, &mut Target::Resource(&mut res.opts))?;
                continue;
            }
            let node = self.r.node_section(
                kw_line,
                &res.nodes,
                |n| (&n.name, n.line),
                "node sections in one resource",
                NODE_SECTIONS_MAX,
            )?;
            self.enter(kw_line)?;
            let mut opts = ResOpts::default();
            let label = format!("on {node}");
            self.body(kw_line, &label, &mut Target::ResourceNode(&mut opts))?;
            res.nodes.push(RawResNode {
                name: node,
                line: kw_line,
                opts,
            });
        }
        self.leave();
        Ok(res)
    }

    /// Statements of a section without subsections, up to its `}`.
    fn body(&mut self, line: u32, section: &str, target: &mut Target) -> Result<(), ConfigError> {
        while let Some((word, kw_line)) = self.r.next_keyword(Some((section, line)))? {
            self.statement(&word, kw_line, target)?;
        }
        self.leave();
        Ok(())
    }

    fn statement(&mut self, word: &str, line: u32, target: &mut Target) -> Result<(), ConfigError> {
        if word == "on" || word == "resource" {
            return Err(self.r.err(
                line,
                ErrorKind::WrongLevel {
                    key: word.to_owned(),
                    level: target.level(),
                },
            ));
        }
        let Some(key) = Key::from_keyword(word) else {
            return Err(self
                .r
                .err(line, SyntaxError::UnknownKeyword(word.to_owned())));
        };
        let value = self.r.value(word)?;
        apply(key, word, &value, line, target).map_err(|k| self.r.err(line, k))
    }
}

fn is_keyword(word: &str) -> bool {
    word == "on" || word == "resource" || Key::from_keyword(word).is_some()
}

fn addr(key: &str, value: &str, default_port: Option<u16>) -> Result<Addr, ErrorKind> {
    Addr::parse(value, default_port).map_err(|e| bad(key, value, e.to_string()))
}

fn tcp_addr(key: &str, value: &str, default_port: Option<u16>) -> Result<Addr, ErrorKind> {
    let a = addr(key, value, default_port)?;
    if a.is_unix() || a.is_tls() {
        return Err(bad(key, value, "must be a TCP address"));
    }
    Ok(a)
}

fn keyword<T: std::str::FromStr<Err = crate::value::ParseKeywordError>>(
    key: &str,
    value: &str,
) -> Result<T, ErrorKind> {
    value.parse().map_err(|e: crate::value::ParseKeywordError| {
        bad(key, value, format!("expected {}", e.expected))
    })
}

fn seconds(key: &str, value: &str, min: u32) -> Result<u32, ErrorKind> {
    whole_number(value, min).map_err(|e| match e {
        NumberError::Invalid if min == 0 => bad(key, value, "expected a whole number of seconds"),
        NumberError::Invalid => bad(
            key,
            value,
            "expected a whole number of seconds greater than 0",
        ),
        NumberError::TooLarge => bad(key, value, "too large"),
    })
}

/// Parses `value` for `key` and stores it in the option set of this section,
/// or says that the key does not belong here.
fn apply(
    key: Key,
    word: &str,
    value: &str,
    line: u32,
    target: &mut Target,
) -> Result<(), ErrorKind> {
    let level = target.level();
    let wrong = || ErrorKind::WrongLevel {
        key: word.to_owned(),
        level,
    };
    let is_node_key = matches!(
        key,
        Key::Control
            | Key::Pidfile
            | Key::Listen
            | Key::NbdListen
            | Key::NbdSocketDir
            | Key::StateDir
            | Key::ExecTimeout
            | Key::MetricsListen
            | Key::DiscoveryListen
            | Key::NbdMaxBuffer
            | Key::NbdIdleTimeout
            | Key::NbdTls
            | Key::NbdTlsCertFile
            | Key::NbdTlsKeyFile
            | Key::NbdTlsClientFingerprint
            | Key::TlsCert
            | Key::TlsKeyPath
    );
    if is_node_key {
        let opts = match target {
            Target::Global(n, _) | Target::Node(n) => n,
            Target::Resource(_) | Target::ResourceNode(_) => return Err(wrong()),
        };
        return apply_node(key, word, value, line, opts);
    }
    let opts = match target {
        Target::Global(_, r) => {
            if matches!(key, Key::Name | Key::Local | Key::Remote | Key::Source) {
                return Err(wrong());
            }
            r
        }
        Target::Resource(r) | Target::ResourceNode(r) => r,
        Target::Node(_) => return Err(wrong()),
    };
    apply_res(key, word, value, line, opts)
}

/// Smallest `nbd_max_buffer`: one maximal NBD request (32 MiB).
const NBD_MAX_BUFFER_MIN: u64 = 32 << 20;

fn apply_node(key: Key, w: &str, v: &str, line: u32, o: &mut NodeOpts) -> Result<(), ErrorKind> {
    match key {
        Key::Control => {
            let a = addr(w, v, None)?;
            if !a.is_unix() {
                // The control socket is root-only through its file mode.
                return Err(bad(w, v, "must be a Unix socket (uds:///path)"));
            }
            set(&mut o.control, a, w, line)
        }
        Key::Pidfile => set(&mut o.pidfile, abs_path(w, v)?, w, line),
        Key::Listen => {
            let a = addr(w, v, Some(REPLICATION_PORT))?;
            if let Some(first) = o.listen.iter().find(|l| l.value == a) {
                return Err(bad(w, v, format!("already listed at line {}", first.line)));
            }
            if o.listen.len() >= LISTEN_MAX {
                return Err(SyntaxError::TooMany {
                    what: "listen addresses",
                    max: LISTEN_MAX,
                }
                .into());
            }
            o.listen.push(At { value: a, line });
            Ok(())
        }
        Key::NbdListen => {
            let a = match v {
                "none" => None,
                _ => Some(tcp_addr(w, v, Some(NBD_PORT))?),
            };
            set(&mut o.nbd_listen, a, w, line)
        }
        Key::NbdSocketDir => {
            let d = match v {
                "none" => None,
                _ => Some(abs_path(w, v)?),
            };
            set(&mut o.nbd_socket_dir, d, w, line)
        }
        Key::StateDir => set(&mut o.state_dir, abs_path(w, v)?, w, line),
        Key::ExecTimeout => set(&mut o.exec_timeout, seconds(w, v, 1)?, w, line),
        // Read by hastd at start and reload, like secret_file.
        Key::TlsCert => set(&mut o.tls_cert, abs_path(w, v)?, w, line),
        Key::TlsKeyPath => set(&mut o.tls_key, abs_path(w, v)?, w, line),
        Key::MetricsListen => {
            let a = match v {
                "none" => None,
                _ => Some(tcp_addr(w, v, None)?),
            };
            set(&mut o.metrics_listen, a, w, line)
        }
        Key::DiscoveryListen => {
            let a = match v {
                "none" => None,
                _ => Some(tcp_addr(w, v, Some(DISCOVERY_PORT))?),
            };
            set(&mut o.discovery_listen, a, w, line)
        }
        Key::NbdMaxBuffer => {
            // Below one maximal request the budget would only ever hold one
            // request at a time: almost surely a missing suffix.
            match parse_size(v) {
                Some(n) if n >= NBD_MAX_BUFFER_MIN => set(&mut o.nbd_max_buffer, n, w, line),
                Some(_) => Err(bad(w, v, "must be at least 32M")),
                None => Err(bad(
                    w,
                    v,
                    "expected a size in bytes, with an optional k, M, G or T suffix",
                )),
            }
        }
        Key::NbdIdleTimeout => set(&mut o.nbd_idle_timeout, seconds(w, v, 0)?, w, line),
        // The PEM files are read by hastd at start and reload, not here.
        Key::NbdTls => set(
            &mut o.nbd_tls,
            v.parse().map_err(|e| bad::<ErrorKind>(w, v, e))?,
            w,
            line,
        ),
        Key::NbdTlsCertFile => set(&mut o.nbd_tls_cert, abs_path(w, v)?, w, line),
        Key::NbdTlsKeyFile => set(&mut o.nbd_tls_key, abs_path(w, v)?, w, line),
        Key::NbdTlsClientFingerprint => {
            let fp = match v {
                "none" => None,
                _ => Some(parse_fingerprint(v).map_err(|e| bad::<ErrorKind>(w, v, e))?),
            };
            set(&mut o.nbd_tls_client_fingerprint, fp, w, line)
        }
        _ => Err(ErrorKind::WrongLevel {
            key: w.to_owned(),
            level: Level::Node,
        }),
    }
}

fn apply_res(key: Key, w: &str, v: &str, line: u32, o: &mut ResOpts) -> Result<(), ErrorKind> {
    match key {
        Key::Replication => set(&mut o.replication, keyword(w, v)?, w, line),
        Key::Checksum => set(&mut o.checksum, keyword(w, v)?, w, line),
        Key::Compression => set(&mut o.compression, keyword(w, v)?, w, line),
        Key::OnIoError => set(&mut o.on_io_error, keyword(w, v)?, w, line),
        Key::Timeout => set(&mut o.timeout, seconds(w, v, 1)?, w, line),
        Key::PingTimeout => set(&mut o.ping_timeout, seconds(w, v, 1)?, w, line),
        Key::FreezeTimeout => set(&mut o.freeze_timeout, seconds(w, v, 0)?, w, line),
        Key::Exec => set(&mut o.exec, abs_path(w, v)?, w, line),
        Key::FencePeer => {
            // A shell command line, run with `/bin/sh -c`; quote it to keep
            // its spaces. `none` turns off a default set in a wider section.
            let cmd = match v {
                "none" => None,
                _ if v.trim().is_empty() => {
                    return Err(bad(w, v, "expected a shell command or none"))
                }
                _ => Some(v.to_owned()),
            };
            set(&mut o.fence_peer, cmd, w, line)
        }
        Key::SecretFile => {
            // Read (and its mode checked) by hastd at start and reload, not
            // here: parsing stays pure, and hastctl never needs the key.
            let path = match v {
                "none" => None,
                _ => Some(abs_path(w, v)?),
            };
            set(&mut o.secret_file, path, w, line)
        }
        Key::NbdSocketOwner | Key::NbdSocketGroup => {
            // A name (looked up by hastd, which reports a missing one with
            // this line) or a numeric id.
            let ok = !v.is_empty()
                && v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(bad(w, v, "expected a user or group name, or a numeric id"));
            }
            let slot = if key == Key::NbdSocketOwner {
                &mut o.nbd_socket_owner
            } else {
                &mut o.nbd_socket_group
            };
            set(slot, v.to_owned(), w, line)
        }
        Key::NbdSocketMode => {
            let digits = v.strip_prefix('0').filter(|d| !d.is_empty()).unwrap_or(v);
            let mode = u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o777 && digits.len() <= 3)
                .ok_or_else(|| bad::<ErrorKind>(w, v, "expected an octal mode such as 0660"))?;
            set(&mut o.nbd_socket_mode, mode, w, line)
        }
        Key::Metaflush => {
            let on = match v {
                "on" => true,
                "off" => false,
                _ => return Err(bad(w, v, "expected on or off")),
            };
            set(&mut o.metaflush, on, w, line)
        }
        Key::ResyncRate => {
            let Some(rate) = parse_size(v) else {
                return Err(bad(
                    w,
                    v,
                    "expected bytes per second, with an optional k, M, G or T suffix",
                ));
            };
            set(&mut o.resync_rate, rate, w, line)
        }
        Key::Name => {
            if let Err(reason) = check_resource_name(v, ALL_RESERVED) {
                return Err(bad(w, v, reason));
            }
            set(&mut o.name, v.to_owned(), w, line)
        }
        Key::Local => set(&mut o.local, abs_path(w, v)?, w, line),
        Key::Remote => {
            let a = match v {
                "none" => None,
                _ => {
                    let a = addr(w, v, Some(REPLICATION_PORT))?;
                    if a.port() == Some(0) {
                        return Err(bad(w, v, "port 0 cannot be connected to"));
                    }
                    Some(a)
                }
            };
            set(&mut o.remote, a, w, line)
        }
        Key::Source => set(&mut o.source, tcp_addr(w, v, Some(0))?, w, line),
        Key::TlsPeerFingerprint => {
            let list =
                crate::tls::parse_list(v).map_err(|e| bad::<ErrorKind>(w, v, e.to_string()))?;
            set(&mut o.tls_peer_fingerprint, list, w, line)
        }
        _ => Err(ErrorKind::WrongLevel {
            key: w.to_owned(),
            level: Level::Resource,
        }),
    }
}
