//! `hastcd.conf`: the connector's configuration (an INI file modelled on
//! nvme-stas's stacd.conf(5)) to a typed [`Config`].
//!
//! [`parse`] is pure (text in, `Config` or one error out); [`load`] reads the
//! file (size-checked before reading) and resolves `socket_owner` and
//! `socket_group` names to ids. Secret and certificate files are named here
//! and read only when the daemon asks ([`Config::load_secret`],
//! [`NbdTlsConf::load_client_pem`]), so a syntax check never touches a key.
//!
//! Every error is one line, `FILE:LINE: what is wrong` ([`ConfError`]), and
//! maps to a sysexits(3) status ([`ConfError::exit_code`]): 78 for a bad
//! file, 66 for one that cannot be read.

mod error;
mod parse;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfError, ErrorKind};
pub use hast_conf::Fingerprint;
pub use parse::parse;

/// Where hastcd looks for its configuration when `-f` is not given.
pub const DEFAULT_PATH: &str = "/etc/hast/hastcd.conf";
/// Larger files are refused before they are read.
pub const FILE_SIZE_MAX: u64 = 1 << 20;
/// Longest line, in bytes: a `connection =` with 16 IPv6 controllers fits.
pub const LINE_LEN_MAX: usize = 4096;
/// `controller =` lines; also the limit of `connection =` and `exclude =`
/// lines, each.
pub const CONTROLLERS_MAX: usize = 1024;
pub const CONNECTIONS_MAX: usize = 1024;
pub const EXCLUDES_MAX: usize = 1024;
/// Controllers one `connection =` may list.
pub const CONNECTION_CONTROLLERS_MAX: usize = 16;
/// Certificate fingerprints `nbd_tls_pin` lines may accept in all.
pub const PINS_MAX: usize = 16;
/// Discovery listens on the replication port unless a node says otherwise.
pub const DISCOVERY_PORT: u16 = 8459;

/// Values used when the file does not set a key.
pub mod defaults {
    use std::time::Duration;

    /// `ctrl_loss_tmo`: one minute without a primary before held requests
    /// fail, NVMe's default too.
    pub const CTRL_LOSS_TMO: Duration = Duration::from_secs(60);
    pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
    pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
    pub const SOCKET_DIR: &str = "/run/hast/hastcd";
    /// The endpoints are root's and 0600: as private as a block device
    /// node until the operator widens them.
    pub const SOCKET_MODE: u32 = 0o600;
    pub const CONTROL_SOCKET: &str = "/run/hast/hastcd.sock";
}

/// The connector's configuration, as `hastcd.conf` sets it (defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long held requests wait for a primary before they fail with
    /// EIO; `None` (`-1`) is forever.
    pub ctrl_loss_tmo: Option<Duration>,
    /// Between discovery polls while connected.
    pub poll_interval: Duration,
    /// Between attempts while failing over.
    pub reconnect_interval: Duration,
    /// A request unanswered this long makes hastcd look for a newer primary.
    pub request_timeout: Duration,
    /// Per discovery query.
    pub discovery_timeout: Duration,
    /// Unix endpoints are `<socket_dir>/<resource>.nbd`; `None` (`none`): off.
    pub socket_dir: Option<PathBuf>,
    /// Owner of the Unix endpoints: an id after [`load`].
    pub socket_owner: Account,
    pub socket_group: Account,
    /// Permission bits of the Unix endpoints (at most 0o777).
    pub socket_mode: u32,
    /// One loopback TCP endpoint for every resource (export name = resource).
    pub tcp_listen: Option<SocketAddr>,
    /// The discovery secret; `None`: discovery unauthenticated.
    pub secret_file: Option<PathBuf>,
    /// The root-only control socket (`hastcctl`).
    pub control_socket: PathBuf,
    /// Where `org.hast.connector` is offered.
    pub dbus: DbusBus,
    /// NBD STARTTLS to the servers; `None`: plaintext.
    pub nbd_tls: Option<NbdTlsConf>,
    /// Nodes whose discovery listener is polled (automatic mode when any).
    pub controllers: Vec<Controller>,
    /// Resources automatic mode does not connect.
    pub excludes: Vec<String>,
    /// Resources connected by hand, each polled at its own controllers.
    pub connections: Vec<Connection>,
}

/// A user or group as written: resolved to an id by [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    Id(u32),
    /// A name not looked up yet, with the line that set it (for errors).
    Name {
        name: String,
        line: u32,
    },
}

impl Account {
    /// The id, once resolved (always after [`load`]).
    pub fn id(&self) -> Option<u32> {
        match self {
            Account::Id(id) => Some(*id),
            Account::Name { .. } => None,
        }
    }
}

/// `dbus =`: which bus `org.hast.connector` is offered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbusBus {
    System,
    Session,
    None,
}

impl DbusBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DbusBus::System => "system",
            DbusBus::Session => "session",
            DbusBus::None => "none",
        }
    }
}

/// `nbd_tls = on` and its companions.
#[derive(Debug, Clone, PartialEq)]
pub struct NbdTlsConf {
    /// Server certificate fingerprints accepted (at least one): the servers'
    /// certificates are pinned, not checked against a CA.
    pub pins: Vec<Fingerprint>,
    /// A client certificate and key (PEM), for servers that pin clients.
    pub client: Option<ClientCert>,
}

/// `nbd_tls_cert` and `nbd_tls_key`: both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NbdTlsConf {
    /// Reads the client certificate and key, if configured (the key must
    /// not be readable by others).
    pub fn load_client_pem(&self) -> Result<Option<hast_conf::NbdTlsPem>, String> {
        let Some(c) = &self.client else {
            return Ok(None);
        };
        let read = |p: &Path, private: bool| {
            hast_conf::nbd_tls::read_pem(p, private).map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Some(hast_conf::NbdTlsPem {
            cert: read(&c.cert, false)?,
            key: read(&c.key, true)?,
        }))
    }
}

/// A node to poll: `host=H;port=P` or `H:P` / `[V6]:P` in a connection's list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Controller {
    /// An IP address (IPv6 without brackets) or a host name.
    pub host: String,
    pub port: u16,
}

/// `host:port`, with IPv6 in brackets: what status shows as `primary` and
/// what `tokio::net::lookup_host` accepts.
impl std::fmt::Display for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `connection = resource=R;controller=A,B`: a resource connected by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub resource: String,
    pub controllers: Vec<Controller>,
}

impl Config {
    /// Automatic mode: some `controller =` line is present.
    pub fn automatic(&self) -> bool {
        !self.controllers.is_empty()
    }

    /// The Unix endpoint of `resource`, if Unix endpoints are on.
    pub fn socket_path(&self, resource: &str) -> Option<PathBuf> {
        self.socket_dir
            .as_ref()
            .map(|d| d.join(format!("{resource}.nbd")))
    }

    /// Reads `secret_file` (same format and checks as hast.conf's), if set.
    pub fn load_secret(&self) -> Result<Option<hast_conf::Secret>, String> {
        match &self.secret_file {
            None => Ok(None),
            Some(p) => hast_conf::Secret::read(p)
                .map(Some)
                .map_err(|e| format!("secret_file {}: {e}", p.display())),
        }
    }

    /// Looks up `socket_owner` / `socket_group` names.
    fn resolve_accounts(&mut self, file: &Path) -> Result<(), ConfError> {
        for (acct, group) in [
            (&mut self.socket_owner, false),
            (&mut self.socket_group, true),
        ] {
            if let Account::Name { name, line } = acct {
                let found = if group {
                    hast_sys::sock::gid_of(name)
                } else {
                    hast_sys::sock::uid_of(name)
                };
                match found {
                    Ok(id) => *acct = Account::Id(id),
                    Err(e) => {
                        return Err(ConfError::at(
                            file,
                            *line,
                            ErrorKind::Account {
                                key: if group {
                                    "socket_group"
                                } else {
                                    "socket_owner"
                                },
                                why: e.to_string(),
                            },
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads, parses and resolves `path`.
pub fn load(path: &Path) -> Result<Config, ConfError> {
    let io = |e| ConfError::file(path, ErrorKind::Io(e));
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ConfError::file(path, ErrorKind::NotAFile));
    }
    if meta.len() > FILE_SIZE_MAX {
        return Err(ConfError::file(
            path,
            ErrorKind::TooLarge { max: FILE_SIZE_MAX },
        ));
    }
    let mut bytes = Vec::new();
    f.take(FILE_SIZE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > FILE_SIZE_MAX {
        return Err(ConfError::file(
            path,
            ErrorKind::TooLarge { max: FILE_SIZE_MAX },
        ));
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            return Err(ConfError::at(
                path,
                u32::try_from(line).unwrap_or(u32::MAX),
                ErrorKind::NotUtf8,
            ));
        }
    };
    let mut config = parse(text, path)?;
    config.resolve_accounts(path)?;
    Ok(config)
}
