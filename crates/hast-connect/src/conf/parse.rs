//! The hastcd.conf grammar, line by line (pure: text in, [`Config`] out).
//!
//! ```text
//! # comment            ; comment too (whole lines)
//! [Global]
//! key = value          # an inline comment needs a blank before the '#'
//! [Controllers]
//! controller = host=H;port=P
//! ```
//!
//! `;` is a comment only at the start of a line: inside a value it separates
//! `key=value` pairs, as in stacd.conf. Scalar keys may appear once;
//! `controller`, `exclude`, `connection` and `nbd_tls_pin` repeat.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hast_conf::syntax::value::check_resource_name;
use hast_conf::UNIX_PATH_MAX;

use super::{
    defaults, Account, ClientCert, ConfError, Config, Connection, Controller, DbusBus, ErrorKind,
    Fingerprint, NbdTlsConf, CONNECTIONS_MAX, CONNECTION_CONTROLLERS_MAX, CONTROLLERS_MAX,
    DISCOVERY_PORT, EXCLUDES_MAX, FILE_SIZE_MAX, LINE_LEN_MAX, PINS_MAX,
};

/// `ctrl_loss_tmo` up to a week: longer is "never" (`-1`) in all but name.
const CTRL_LOSS_TMO_MAX_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest account name (useradd's limit).
const ACCOUNT_NAME_MAX: usize = 32;
/// Longest host name (RFC 1035).
const HOST_LEN_MAX: usize = 253;
/// Longest resource name, for the socket path check.
const RESOURCE_LEN_MAX: usize = hast_conf::syntax::value::NAME_LEN_MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Global,
    Controllers,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Global => "Global",
            Section::Controllers => "Controllers",
        }
    }
}

/// What the lines set, before defaults and cross-checks.
#[derive(Default)]
struct Raw {
    ctrl_loss_tmo: Option<Option<Duration>>,
    poll_interval: Option<Duration>,
    reconnect_interval: Option<Duration>,
    request_timeout: Option<Duration>,
    discovery_timeout: Option<Duration>,
    socket_dir: Option<Option<PathBuf>>,
    socket_owner: Option<Account>,
    socket_group: Option<Account>,
    socket_mode: Option<u32>,
    tcp_listen: Option<Option<SocketAddr>>,
    secret_file: Option<Option<PathBuf>>,
    control_socket: Option<PathBuf>,
    dbus: Option<DbusBus>,
    nbd_tls: Option<bool>,
    pins: Vec<Fingerprint>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    controllers: Vec<Controller>,
    excludes: Vec<String>,
    connections: Vec<Connection>,
    /// Scalar key -> the line that set it (duplicates, cross-check errors).
    lines: HashMap<&'static str, u32>,
    /// Line of the first of each repeated key (cross-check errors).
    first_pin: Option<u32>,
}

/// Parses the text of a hastcd.conf; `file` only names it in errors.
/// Account names are left for [`super::load`] to look up.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfError> {
    if text.len() as u64 > FILE_SIZE_MAX {
        return Err(ConfError::file(
            file,
            ErrorKind::TooLarge { max: FILE_SIZE_MAX },
        ));
    }
    let mut raw = Raw::default();
    let mut section: Option<Section> = None;
    let mut sections_seen: Vec<(Section, u32)> = Vec::new();
    for (i, line_text) in text.split('\n').enumerate() {
        // At most 1 MiB of text: the line number fits.
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let err = |kind| ConfError::at(file, line, kind);
        if line_text.len() > LINE_LEN_MAX {
            return Err(err(ErrorKind::LineTooLong { max: LINE_LEN_MAX }));
        }
        let l = line_text.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(inner) = l.strip_prefix('[') {
            let inner = strip_comment(inner).trim_end();
            let Some(name) = inner.strip_suffix(']') else {
                return Err(err(ErrorKind::Syntax(l.to_string())));
            };
            let s = match name.trim() {
                "Global" => Section::Global,
                "Controllers" => Section::Controllers,
                other => return Err(err(ErrorKind::UnknownSection(other.to_string()))),
            };
            if let Some((_, first)) = sections_seen.iter().find(|(x, _)| *x == s) {
                return Err(err(ErrorKind::DuplicateSection {
                    name: s.name(),
                    first_line: *first,
                }));
            }
            sections_seen.push((s, line));
            section = Some(s);
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(err(ErrorKind::Syntax(l.to_string())));
        };
        let key = key.trim();
        let value = strip_comment(value).trim();
        let Some(s) = section else {
            return Err(err(ErrorKind::NoSection {
                key: key.to_string(),
            }));
        };
        raw.line(s, key, value, line).map_err(err)?;
    }
    raw.finish(file)
}

/// Cuts an inline comment: a `#` at the start or after a blank.
fn strip_comment(v: &str) -> &str {
    let mut prev_blank = true;
    for (i, c) in v.char_indices() {
        if c == '#' && prev_blank {
            return &v[..i];
        }
        prev_blank = c.is_whitespace();
    }
    v
}

fn bad(key: &'static str, value: &str, why: impl Into<String>) -> ErrorKind {
    ErrorKind::BadValue {
        key,
        value: value.to_string(),
        why: why.into(),
    }
}

impl Raw {
    /// Records the line of scalar `key`, refusing a second one.
    fn once(&mut self, key: &'static str, line: u32) -> Result<(), ErrorKind> {
        if let Some(&first_line) = self.lines.get(key) {
            return Err(ErrorKind::DuplicateKey { key, first_line });
        }
        self.lines.insert(key, line);
        Ok(())
    }

    fn line(&mut self, s: Section, key: &str, v: &str, line: u32) -> Result<(), ErrorKind> {
        let key = Keyword::find(s, key).ok_or_else(|| ErrorKind::UnknownKey {
            key: key.to_string(),
            section: s.name(),
        })?;
        let k = key.name();
        if v.is_empty() {
            return Err(ErrorKind::Empty { key: k });
        }
        if !key.repeats() {
            self.once(k, line)?;
        }
        match key {
            Keyword::CtrlLossTmo => {
                self.ctrl_loss_tmo = Some(if v == "-1" {
                    None
                } else {
                    Some(seconds(k, v, 0, CTRL_LOSS_TMO_MAX_MS)?)
                })
            }
            Keyword::PollInterval => self.poll_interval = Some(seconds(k, v, 50, 3_600_000)?),
            Keyword::ReconnectInterval => {
                self.reconnect_interval = Some(seconds(k, v, 10, 60_000)?)
            }
            Keyword::RequestTimeout => self.request_timeout = Some(seconds(k, v, 100, 3_600_000)?),
            Keyword::DiscoveryTimeout => self.discovery_timeout = Some(seconds(k, v, 50, 60_000)?),
            Keyword::SocketDir => {
                self.socket_dir = Some(if v == "none" {
                    None
                } else {
                    let p = path(k, v)?;
                    // `<dir>/<longest resource>.nbd` must fit in sun_path.
                    if v.len() + 1 + RESOURCE_LEN_MAX + 4 > UNIX_PATH_MAX {
                        return Err(bad(
                            k,
                            v,
                            format!(
                                "too long: {v_len} bytes leave no room for \
                                 \"/<resource>.nbd\" in a Unix socket path \
                                 ({UNIX_PATH_MAX} bytes, resource names up to {RESOURCE_LEN_MAX})",
                                v_len = v.len()
                            ),
                        ));
                    }
                    Some(p)
                })
            }
            Keyword::SocketOwner => self.socket_owner = Some(account(k, v, line)?),
            Keyword::SocketGroup => self.socket_group = Some(account(k, v, line)?),
            Keyword::SocketMode => {
                let digits = v.strip_prefix('0').filter(|d| !d.is_empty()).unwrap_or(v);
                let mode = u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|m| *m <= 0o777 && digits.len() <= 3 && !digits.starts_with('+'))
                    .ok_or_else(|| bad(k, v, "expected an octal mode such as 0660"))?;
                if mode & 0o600 != 0o600 {
                    return Err(bad(k, v, "the owner needs read and write (0600 at least)"));
                }
                self.socket_mode = Some(mode);
            }
            Keyword::TcpListen => {
                self.tcp_listen = Some(if v == "none" || v == "off" {
                    None
                } else {
                    let a: SocketAddr = v.parse().map_err(|_| {
                        bad(
                            k,
                            v,
                            "expected IP:PORT such as 127.0.0.1:10809 or [::1]:10809",
                        )
                    })?;
                    // The endpoint has no authentication of its own: anyone
                    // who reaches it reads and writes the volume.
                    if !a.ip().is_loopback() {
                        return Err(bad(
                            k,
                            v,
                            "must be a loopback address (127.0.0.0/8 or ::1): \
                             the endpoint does not authenticate its clients",
                        ));
                    }
                    Some(a)
                })
            }
            Keyword::SecretFile => {
                self.secret_file = Some(if v == "none" { None } else { Some(path(k, v)?) })
            }
            Keyword::ControlSocket => {
                let p = path(k, v)?;
                if v.len() > UNIX_PATH_MAX {
                    return Err(bad(
                        k,
                        v,
                        format!("longer than a Unix socket path may be ({UNIX_PATH_MAX} bytes)"),
                    ));
                }
                self.control_socket = Some(p);
            }
            Keyword::Dbus => {
                self.dbus = Some(match v {
                    "system" => DbusBus::System,
                    "session" => DbusBus::Session,
                    "none" => DbusBus::None,
                    _ => return Err(bad(k, v, "expected system, session or none")),
                })
            }
            Keyword::NbdTls => {
                self.nbd_tls = Some(match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(k, v, "expected on or off")),
                })
            }
            Keyword::NbdTlsPin => {
                let list = hast_conf::tls::parse_list(v).map_err(|e| bad(k, v, e.to_string()))?;
                for f in list {
                    if self.pins.contains(&f) {
                        return Err(bad(k, v, format!("{f} is pinned twice")));
                    }
                    if self.pins.len() >= PINS_MAX {
                        return Err(bad(k, v, format!("at most {PINS_MAX} pins in all")));
                    }
                    self.pins.push(f);
                }
                self.first_pin.get_or_insert(line);
            }
            Keyword::NbdTlsCert => self.cert = Some(path(k, v)?),
            Keyword::NbdTlsKey => self.key = Some(path(k, v)?),
            Keyword::Controller => {
                if self.controllers.len() >= CONTROLLERS_MAX {
                    return Err(ErrorKind::TooMany {
                        what: k,
                        max: CONTROLLERS_MAX,
                    });
                }
                let c = controller_line(v)?;
                if self.controllers.contains(&c) {
                    return Err(bad(k, v, format!("{c} is listed twice")));
                }
                self.controllers.push(c);
            }
            Keyword::Exclude => {
                if self.excludes.len() >= EXCLUDES_MAX {
                    return Err(ErrorKind::TooMany {
                        what: k,
                        max: EXCLUDES_MAX,
                    });
                }
                let pairs = pairs(k, v, &["resource"])?;
                let r = resource(k, v, pairs[0])?;
                if self.excludes.contains(&r) {
                    return Err(bad(k, v, format!("resource {r:?} is excluded twice")));
                }
                if self.connections.iter().any(|c| c.resource == r) {
                    return Err(bad(
                        k,
                        v,
                        format!("resource {r:?} also has a connection line"),
                    ));
                }
                self.excludes.push(r);
            }
            Keyword::Connection => {
                if self.connections.len() >= CONNECTIONS_MAX {
                    return Err(ErrorKind::TooMany {
                        what: k,
                        max: CONNECTIONS_MAX,
                    });
                }
                let pairs = pairs(k, v, &["resource", "controller"])?;
                let r = resource(k, v, pairs[0])?;
                let list = pairs[1].ok_or_else(|| {
                    bad(
                        k,
                        v,
                        "expected controller=HOST[:PORT],... (the nodes to poll)",
                    )
                })?;
                let mut controllers: Vec<Controller> = Vec::new();
                for item in list.split(',').map(str::trim) {
                    let c = host_port(item).map_err(|why| bad(k, v, why))?;
                    if controllers.contains(&c) {
                        return Err(bad(k, v, format!("{c} is listed twice")));
                    }
                    if controllers.len() >= CONNECTION_CONTROLLERS_MAX {
                        return Err(bad(
                            k,
                            v,
                            format!("at most {CONNECTION_CONTROLLERS_MAX} controllers"),
                        ));
                    }
                    controllers.push(c);
                }
                if self.connections.iter().any(|c| c.resource == r) {
                    return Err(bad(
                        k,
                        v,
                        format!("resource {r:?} has two connection lines"),
                    ));
                }
                if self.excludes.contains(&r) {
                    return Err(bad(k, v, format!("resource {r:?} is also excluded")));
                }
                self.connections.push(Connection {
                    resource: r,
                    controllers,
                });
            }
        }
        Ok(())
    }

    /// Defaults and the checks that span lines.
    fn finish(self, file: &Path) -> Result<Config, ConfError> {
        let at = |key: &str| self.lines.get(key).copied().unwrap_or(1);
        let conflict =
            |line: u32, why: &str| ConfError::at(file, line, ErrorKind::Conflict(why.to_string()));
        let tls_on = self.nbd_tls.unwrap_or(false);
        let nbd_tls = if tls_on {
            if self.pins.is_empty() {
                return Err(conflict(
                    at("nbd_tls"),
                    "nbd_tls = on needs at least one nbd_tls_pin (the servers' certificate fingerprints)",
                ));
            }
            let client = match (self.cert, self.key) {
                (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(conflict(
                        at("nbd_tls_cert"),
                        "nbd_tls_cert needs nbd_tls_key",
                    ))
                }
                (None, Some(_)) => {
                    return Err(conflict(
                        at("nbd_tls_key"),
                        "nbd_tls_key needs nbd_tls_cert",
                    ))
                }
            };
            Some(NbdTlsConf {
                pins: self.pins,
                client,
            })
        } else {
            let stray = [
                ("nbd_tls_pin", self.first_pin),
                ("nbd_tls_cert", self.lines.get("nbd_tls_cert").copied()),
                ("nbd_tls_key", self.lines.get("nbd_tls_key").copied()),
            ];
            if let Some((key, Some(line))) = stray.into_iter().find(|(_, l)| l.is_some()) {
                return Err(conflict(
                    line,
                    &format!("{key} is set but nbd_tls is off (set nbd_tls = on)"),
                ));
            }
            None
        };
        let socket_dir = self
            .socket_dir
            .unwrap_or_else(|| Some(PathBuf::from(defaults::SOCKET_DIR)));
        let tcp_listen = self.tcp_listen.unwrap_or(None);
        if socket_dir.is_none() && tcp_listen.is_none() {
            return Err(conflict(
                at("socket_dir"),
                "socket_dir = none and no tcp_listen: the connector would serve nothing",
            ));
        }
        Ok(Config {
            ctrl_loss_tmo: self.ctrl_loss_tmo.unwrap_or(Some(defaults::CTRL_LOSS_TMO)),
            poll_interval: self.poll_interval.unwrap_or(defaults::POLL_INTERVAL),
            reconnect_interval: self
                .reconnect_interval
                .unwrap_or(defaults::RECONNECT_INTERVAL),
            request_timeout: self.request_timeout.unwrap_or(defaults::REQUEST_TIMEOUT),
            discovery_timeout: self
                .discovery_timeout
                .unwrap_or(defaults::DISCOVERY_TIMEOUT),
            socket_dir,
            socket_owner: self.socket_owner.unwrap_or(Account::Id(0)),
            socket_group: self.socket_group.unwrap_or(Account::Id(0)),
            socket_mode: self.socket_mode.unwrap_or(defaults::SOCKET_MODE),
            tcp_listen,
            secret_file: self.secret_file.unwrap_or(None),
            control_socket: self
                .control_socket
                .unwrap_or_else(|| PathBuf::from(defaults::CONTROL_SOCKET)),
            dbus: self.dbus.unwrap_or(DbusBus::System),
            nbd_tls,
            controllers: self.controllers,
            excludes: self.excludes,
            connections: self.connections,
        })
    }
}

/// The keys hastcd.conf knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyword {
    CtrlLossTmo,
    PollInterval,
    ReconnectInterval,
    RequestTimeout,
    DiscoveryTimeout,
    SocketDir,
    SocketOwner,
    SocketGroup,
    SocketMode,
    TcpListen,
    SecretFile,
    ControlSocket,
    Dbus,
    NbdTls,
    NbdTlsPin,
    NbdTlsCert,
    NbdTlsKey,
    Controller,
    Exclude,
    Connection,
}

impl Keyword {
    const GLOBAL: &'static [Keyword] = &[
        Keyword::CtrlLossTmo,
        Keyword::PollInterval,
        Keyword::ReconnectInterval,
        Keyword::RequestTimeout,
        Keyword::DiscoveryTimeout,
        Keyword::SocketDir,
        Keyword::SocketOwner,
        Keyword::SocketGroup,
        Keyword::SocketMode,
        Keyword::TcpListen,
        Keyword::SecretFile,
        Keyword::ControlSocket,
        Keyword::Dbus,
        Keyword::NbdTls,
        Keyword::NbdTlsPin,
        Keyword::NbdTlsCert,
        Keyword::NbdTlsKey,
    ];
    const CONTROLLERS: &'static [Keyword] =
        &[Keyword::Controller, Keyword::Exclude, Keyword::Connection];

    fn name(self) -> &'static str {
        match self {
            Keyword::CtrlLossTmo => "ctrl_loss_tmo",
            Keyword::PollInterval => "poll_interval",
            Keyword::ReconnectInterval => "reconnect_interval",
            Keyword::RequestTimeout => "request_timeout",
            Keyword::DiscoveryTimeout => "discovery_timeout",
            Keyword::SocketDir => "socket_dir",
            Keyword::SocketOwner => "socket_owner",
            Keyword::SocketGroup => "socket_group",
            Keyword::SocketMode => "socket_mode",
            Keyword::TcpListen => "tcp_listen",
            Keyword::SecretFile => "secret_file",
            Keyword::ControlSocket => "control_socket",
            Keyword::Dbus => "dbus",
            Keyword::NbdTls => "nbd_tls",
            Keyword::NbdTlsPin => "nbd_tls_pin",
            Keyword::NbdTlsCert => "nbd_tls_cert",
            Keyword::NbdTlsKey => "nbd_tls_key",
            Keyword::Controller => "controller",
            Keyword::Exclude => "exclude",
            Keyword::Connection => "connection",
        }
    }

    /// Lines that may repeat (the others are set once).
    fn repeats(self) -> bool {
        matches!(
            self,
            Keyword::Controller | Keyword::Exclude | Keyword::Connection | Keyword::NbdTlsPin
        )
    }

    /// The key named `key`, if `section` has it.
    fn find(s: Section, key: &str) -> Option<Keyword> {
        let keys = match s {
            Section::Global => Keyword::GLOBAL,
            Section::Controllers => Keyword::CONTROLLERS,
        };
        keys.iter().copied().find(|k| k.name() == key)
    }
}

/// Seconds with up to three decimals, within `min_ms..=max_ms`.
fn seconds(key: &'static str, v: &str, min_ms: u64, max_ms: u64) -> Result<Duration, ErrorKind> {
    let range = || {
        format!(
            "expected seconds from {} to {} (decimals allowed, e.g. 0.5)",
            min_ms as f64 / 1000.0,
            max_ms as f64 / 1000.0
        )
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (v.contains('.') && frac.is_empty()) {
        return Err(bad(key, v, range()));
    }
    if frac.len() > 3 {
        return Err(bad(key, v, "at most three decimals (milliseconds)"));
    }
    // Nine digits of seconds is past every maximum; longer would overflow.
    if int.len() > 9 {
        return Err(bad(key, v, range()));
    }
    let int: u64 = int.parse().map_err(|_| bad(key, v, range()))?;
    let frac_ms: u64 = format!("{frac:0<3}")
        .parse()
        .map_err(|_| bad(key, v, range()))?;
    let ms = int * 1000 + frac_ms;
    if !(min_ms..=max_ms).contains(&ms) {
        return Err(bad(key, v, range()));
    }
    Ok(Duration::from_millis(ms))
}

/// An absolute path with no control characters.
fn path(key: &'static str, v: &str) -> Result<PathBuf, ErrorKind> {
    if !v.starts_with('/') {
        return Err(bad(key, v, "expected an absolute path"));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(key, v, "control characters in a path"));
    }
    Ok(PathBuf::from(v))
}

/// A numeric id or a user/group name (looked up later).
fn account(key: &'static str, v: &str, line: u32) -> Result<Account, ErrorKind> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse()
            .map(Account::Id)
            .map_err(|_| bad(key, v, "id out of range"));
    }
    let ok = v.len() <= ACCOUNT_NAME_MAX
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(bad(
            key,
            v,
            format!("expected a name (up to {ACCOUNT_NAME_MAX} of A-Z a-z 0-9 . _ -) or a number"),
        ));
    }
    Ok(Account::Name {
        name: v.to_string(),
        line,
    })
}

/// `k1=v1;k2=v2` with keys from `allowed`, each at most once: the values
/// in `allowed`'s order.
fn pairs<'a>(
    key: &'static str,
    v: &'a str,
    allowed: &[&str],
) -> Result<Vec<Option<&'a str>>, ErrorKind> {
    let mut out: Vec<Option<&str>> = vec![None; allowed.len()];
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, val)) = part.split_once('=') else {
            return Err(bad(key, v, format!("expected NAME=VALUE, found {part:?}")));
        };
        let (k, val) = (k.trim(), val.trim());
        let Some(i) = allowed.iter().position(|a| *a == k) else {
            return Err(bad(
                key,
                v,
                format!("unknown {k:?} (expected {})", allowed.join(", ")),
            ));
        };
        if out[i].is_some() {
            return Err(bad(key, v, format!("{k} is given twice")));
        }
        if val.is_empty() {
            return Err(bad(key, v, format!("{k} has no value")));
        }
        out[i] = Some(val);
    }
    Ok(out)
}

fn resource(key: &'static str, v: &str, name: Option<&str>) -> Result<String, ErrorKind> {
    let name = name.ok_or_else(|| bad(key, v, "expected resource=NAME"))?;
    check_resource_name(name, "\"all\" is reserved")
        .map_err(|why| bad(key, v, format!("resource name {name:?}: {why}")))?;
    Ok(name.to_string())
}

/// `controller = host=H;port=P` (port optional).
fn controller_line(v: &str) -> Result<Controller, ErrorKind> {
    const K: &str = "controller";
    let p = pairs(K, v, &["host", "port"])?;
    let host = p[0].ok_or_else(|| bad(K, v, "expected host=ADDRESS[;port=PORT]"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = check_host(host).map_err(|why| bad(K, v, why))?;
    let port = match p[1] {
        Some(s) => port(s).map_err(|why| bad(K, v, why))?,
        None => DISCOVERY_PORT,
    };
    Ok(Controller { host, port })
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address.
fn host_port(item: &str) -> Result<Controller, String> {
    if item.is_empty() {
        return Err("an empty controller in the list".into());
    }
    if let Some(rest) = item.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{item:?}: no ']' after the IPv6 address"))?;
        let port = match tail {
            "" => DISCOVERY_PORT,
            t => port(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("{item:?}: expected ':PORT' after ']'"))?,
            )?,
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{h:?} is not an IPv6 address"));
        }
        return Ok(Controller {
            host: h.to_string(),
            port,
        });
    }
    // Two colons or more: a bare IPv6 address, port by default.
    if item.matches(':').count() >= 2 {
        return Ok(Controller {
            host: check_host(item)?,
            port: DISCOVERY_PORT,
        });
    }
    let (h, p) = match item.split_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (item, DISCOVERY_PORT),
    };
    Ok(Controller {
        host: check_host(h)?,
        port: p,
    })
}

/// An IP address or a host name.
fn check_host(h: &str) -> Result<String, String> {
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let ok = !h.is_empty()
        && h.len() <= HOST_LEN_MAX
        && !h.starts_with(['-', '.'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(h.to_string())
    } else {
        Err(format!("{h:?} is not an IP address or a host name"))
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("port {s:?}: expected 1 to 65535")),
    }
}
