//! hast-conf: `/etc/hast.conf` to a typed `Config` for one node (docs/overview.md §3).
//!
//! The FreeBSD hast.conf(5) grammar is accepted unchanged, plus our options
//! (`nbd_listen`, `freeze_timeout`, `on_io_error`, `resync_rate`, ...).
//! Parsing is pure: `parse` takes the text and the node name; only `load`
//! touches the file system and the host name. Every error is one line naming
//! the file and line, and maps to a sysexits(3) status via
//! `ConfigError::exit_code`.
//!
//! `lexer` turns text into tokens, `syntax` reads statements and sections
//! from them (both shared with hastmon.conf), `parser` builds hast.conf's raw
//! tree of typed values with line numbers, `resolve` picks this node's
//! sections and applies inheritance. `lookup` (the warning about a `remote`
//! whose host does not resolve) is shared with hastmon.conf as well.

mod addr;
mod error;
mod level;
/// Public so hastmon.conf (crate `hast-mon`) shares this tokenizer.
pub mod lexer;
pub mod lookup;
pub mod nbd_tls;
mod parser;
mod resolve;
pub mod secret;
/// Public so hastmon.conf (crate `hast-mon`) shares this grammar.
pub mod syntax;
pub mod tls;
mod value;

use std::path::{Path, PathBuf};

pub use addr::{Addr, AddrError, DISCOVERY_PORT, NBD_PORT, REPLICATION_PORT, UNIX_PATH_MAX};
pub use error::{ConfigError, ErrorKind};
pub use level::Level;
pub use nbd_tls::{NbdTls, NbdTlsMode, NbdTlsPem};
pub use secret::{Secret, SecretError};
pub use tls::Fingerprint;
pub use value::{parse_size, Checksum, Compression, OnIoError, ParseKeywordError, Replication};

/// Every keyword of hast.conf: the two section words, then each statement's
/// (the parser's own table). hast.conf(5) documents each one, which
/// tests/install.rs checks against this list.
pub fn keywords() -> impl Iterator<Item = &'static str> {
    ["on", "resource"]
        .into_iter()
        .chain(parser::KEYS.iter().map(|&(word, _)| word))
}

/// Larger files are refused before they are read.
pub const FILE_SIZE_MAX: u64 = 1 << 20;
/// Longest word or quoted string, in bytes.
pub const TOKEN_LEN_MAX: usize = 4096;
/// `resource { on NODE { } }` is as deep as the grammar goes.
pub const DEPTH_MAX: usize = 2;
pub const RESOURCES_MAX: usize = 1024;
/// `on NODE` sections at the top level, and in each resource.
pub const NODE_SECTIONS_MAX: usize = 64;
/// `listen` statements in one section.
pub const LISTEN_MAX: usize = 64;

/// Values used when no section sets an option.
pub mod defaults {
    use crate::addr::{Addr, REPLICATION_PORT};
    use crate::value::{Checksum, Compression, OnIoError, Replication};

    pub const CONTROL_PATH: &str = "/run/hastctl";
    pub const PIDFILE: &str = "/run/hastd.pid";
    pub const NBD_SOCKET_DIR: &str = "/run/hast";
    pub const STATE_DIR: &str = "/var/lib/hast";
    /// `exec_timeout`: seconds an event hook may run before its process
    /// group is killed and the event is `aborted`.
    pub const EXEC_TIMEOUT_SECS: u32 = 60;
    pub const REPLICATION: Replication = Replication::Fullsync;
    pub const CHECKSUM: Checksum = Checksum::None;
    pub const COMPRESSION: Compression = Compression::Hole;
    pub const TIMEOUT_SECS: u32 = 20;
    /// Silence after which a replication peer is declared dead (DRBD's
    /// ping-timeout); never more than `timeout`, so with `timeout` 1 or 2
    /// the default follows it down.
    pub const PING_TIMEOUT_SECS: u32 = 3;
    pub const METAFLUSH: bool = true;
    pub const FREEZE_TIMEOUT_SECS: u32 = 60;
    pub const ON_IO_ERROR: OnIoError = OnIoError::Detach;
    /// Bytes per second; 0 is unlimited.
    pub const RESYNC_RATE: u64 = 0;
    /// The export's Unix socket: owner root, group `disk`, 0660 — as
    /// private as `/dev/hast/NAME` or `/dev/drbdN`.
    pub const NBD_SOCKET_MODE: u32 = 0o660;
    pub const NBD_SOCKET_GROUP: &str = "disk";
    /// NBD payload bytes held at once by all connections (`nbd_max_buffer`).
    pub const NBD_MAX_BUFFER: u64 = 256 << 20;
    /// Seconds before an idle NBD connection is dropped; 0 is never.
    pub const NBD_IDLE_TIMEOUT_SECS: u32 = 0;

    /// `tcp://0.0.0.0:8457`
    pub fn listen() -> Addr {
        Addr::Tcp {
            host: "0.0.0.0".to_owned(),
            port: REPLICATION_PORT,
        }
    }
}

/// The configuration of one node: daemon options and its resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    /// The node name the sections were chosen by.
    pub node: String,
    /// Control socket; always `Addr::Unix`.
    pub control: Addr,
    pub pidfile: PathBuf,
    /// Replication listeners; never empty.
    pub listen: Vec<Addr>,
    /// `None`: no NBD over TCP.
    pub nbd_listen: Option<Addr>,
    /// `None`: no per-resource NBD Unix sockets.
    pub nbd_socket_dir: Option<PathBuf>,
    /// `state_dir`: the event journal and the handler lock live here.
    pub state_dir: PathBuf,
    /// `exec_timeout`: bound of one event hook run, seconds (> 0).
    pub exec_timeout_secs: u32,
    pub metrics_listen: Option<Addr>,
    /// `discovery_listen`: the read-only discovery listener (a TCP address,
    /// port [`DISCOVERY_PORT`] by default); `None`: no discovery.
    pub discovery_listen: Option<Addr>,
    /// `nbd_max_buffer`: bytes of NBD READ/WRITE payloads held at once.
    pub nbd_max_buffer: u64,
    /// `nbd_idle_timeout`: seconds; 0 is off.
    pub nbd_idle_timeout_secs: u32,
    /// NBD over TLS (`nbd_tls*`); `None` when off.
    pub nbd_tls: Option<NbdTls>,
    /// `tls_cert` and `tls_key` (absolute PEM paths) and the lines that set
    /// them; required when a `listen` or `remote` is `tls://`. hastd reads
    /// them at start and reload.
    pub tls_cert: Option<(PathBuf, u32)>,
    pub tls_key: Option<(PathBuf, u32)>,
    /// In file order.
    pub resources: Vec<Resource>,
}

impl Config {
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// Reads every resource's `secret_file` into its `secret`. An unreadable,
    /// malformed or group/other-accessible file is an error naming the file
    /// and the line of its `secret_file` statement; nothing is filled then.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        let mut keys = Vec::with_capacity(self.resources.len());
        for r in &self.resources {
            keys.push(match &r.secret_file {
                None => None,
                Some((path, line)) => Some(Secret::read(path).map_err(|e| {
                    ConfigError::at(
                        &self.file,
                        *line,
                        ErrorKind::SecretFile {
                            path: path.clone(),
                            error: e,
                        },
                    )
                })?),
            });
        }
        for (r, k) in self.resources.iter_mut().zip(keys) {
            r.secret = k;
        }
        Ok(())
    }

    /// Reads `nbd_tls_cert` and `nbd_tls_key` (PEM) into `nbd_tls.pem`. An
    /// unreadable file (exit 66), or a key readable by others (78), is an
    /// error naming the file and its statement's line; nothing is filled then.
    pub fn load_nbd_tls(&mut self) -> Result<(), ConfigError> {
        let Some(tls) = &mut self.nbd_tls else {
            return Ok(());
        };
        let read = |(path, line): &(PathBuf, u32), option, private| {
            nbd_tls::read_pem(path, private)
                .map_err(|e| nbd_tls_error(&self.file, *line, option, path, e))
        };
        let cert = read(&tls.cert, "nbd_tls_cert", false)?;
        let key = read(&tls.key, "nbd_tls_key", true)?;
        tls.pem = Some(NbdTlsPem { cert, key });
        Ok(())
    }

    /// `<nbd_socket_dir>/<resource name>.nbd`, if NBD Unix sockets are on.
    /// Its length was checked against `UNIX_PATH_MAX` when parsing.
    pub fn nbd_socket_path(&self, resource: &Resource) -> Option<PathBuf> {
        self.nbd_socket_dir
            .as_deref()
            .map(|dir| nbd_socket_path(dir, &resource.name))
    }
}

/// `FILE:LINE: nbd_tls_key "PATH": reason` (hastd uses it for PEM contents).
pub fn nbd_tls_error(
    file: &Path,
    line: u32,
    option: &'static str,
    path: &Path,
    error: error::PemFileError,
) -> ConfigError {
    ConfigError::at(
        file,
        line,
        ErrorKind::NbdTlsFile {
            option,
            path: path.to_path_buf(),
            error,
        },
    )
}

fn nbd_socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.nbd"))
}

/// One resource as this node sees it, all options resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The section name.
    pub name: String,
    /// The `name` option (default: the section name); the NBD export name.
    pub provider_name: String,
    pub local: PathBuf,
    /// `None`: `remote none`, a single-node resource.
    pub remote: Option<Addr>,
    /// Local address to connect to the remote from.
    pub source: Option<Addr>,
    pub replication: Replication,
    pub checksum: Checksum,
    pub compression: Compression,
    pub timeout_secs: u32,
    /// `ping_timeout`: seconds without any frame from the replication peer
    /// after which it is declared dead; each side sends a KEEPALIVE once its
    /// sending side has been idle a third of it. 1 ≤ it ≤ `timeout_secs`.
    pub ping_timeout_secs: u32,
    pub exec: Option<PathBuf>,
    /// `fence_peer`: shell command that fences the peer before the primary
    /// writes without it (`/bin/sh -c`); `None` when unset or `none`.
    pub fence_peer: Option<String>,
    pub metaflush: bool,
    pub freeze_timeout_secs: u32,
    pub on_io_error: OnIoError,
    /// Bytes per second; 0 is unlimited.
    pub resync_rate: u64,
    /// `secret_file` (absolute path) and the line that set it; `None` when
    /// unset or `none`: replication is then authenticated by address only.
    pub secret_file: Option<(PathBuf, u32)>,
    /// The keys in `secret_file`, filled by [`Config::load_secrets`] (hastd
    /// at start and reload); `parse` leaves it `None`, so parsing stays pure
    /// and `hastctl` never reads a key.
    pub secret: Option<Secret>,
    /// `nbd_socket_owner` (name or id, looked up by hastd) and its line;
    /// `None`: root.
    pub nbd_socket_owner: Option<(String, u32)>,
    /// `nbd_socket_group` and its line; `None`: `disk` where it exists, else root.
    pub nbd_socket_group: Option<(String, u32)>,
    /// `nbd_socket_mode`, default 0660: like a block device node.
    pub nbd_socket_mode: u32,
    /// `tls_peer_fingerprint`: the peer certificates a `tls://` link
    /// accepts (pinned, no CA); never empty when `remote` is `tls://`.
    pub tls_peer_fingerprints: Vec<Fingerprint>,
    /// Line of `resource NAME {`.
    pub line: u32,
}

/// Parses hast.conf text for node `node`. `file` is only used in messages.
pub fn parse(text: &str, file: &Path, node: &str) -> Result<Config, ConfigError> {
    syntax::check_size(text, file)?;
    let raw = parser::parse(text, file)?;
    resolve::resolve(raw, file, node)
}

/// Reads and parses `file`; `node` defaults to the host name.
pub fn load(file: &Path, node: Option<&str>) -> Result<Config, ConfigError> {
    let text = syntax::read_limited(file)?;
    match node {
        Some(node) => parse(&text, file, node),
        None => parse(&text, file, &hostname()),
    }
}

/// This host's name, or an empty string if it cannot be had (`parse` then
/// asks for `--node`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and
    // gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    // A name that fills the buffer may lack its NUL; take it all then.
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
