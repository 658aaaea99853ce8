//! `/etc/hastmon.conf` to a typed `Config` (docs/overview.md §5), in hastmon's grammar
//! on hast.conf's lexical and block syntax (`hast_conf::lexer` and
//! `hast_conf::syntax`):
//!
//! ```text
//! control unix:///var/run/hastmonctl      # host options: global or in a
//! listen 0.0.0.0                          # top-level `on NODE { }`
//! hastd_control unix:///run/hastctl       # lease + status in-process
//! metrics_listen 127.0.0.1:9118           # Prometheus endpoint (off)
//! heartbeat_interval 1                    # resource options: global
//! key { secret "at least 16 bytes" }      # defaults, overridden per resource
//! resource www {
//!     exec /usr/libexec/hast/hastmon-hastd
//!     on nodea { remote nodeb nodew; priority 0 }
//!     on nodeb { remote nodea nodew; priority 1 }
//!     on nodew { remote nodea nodeb }
//! }
//! ```
//!
//! `parse` works on text; besides `secret_file` (read while parsing, so its
//! errors name its line) it touches nothing. `load` reads the file with a
//! size limit and defaults the node name to the host name. Errors are one
//! line `file:line: message` with a sysexits(3) status (`exit_code`).
//!
//! Which node of a resource is primary, secondary or watchdog is decided at
//! run time by roles; the config only lists the 2 or 3 hosts, how to reach
//! them and their takeover priority.

mod error;
mod level;
mod parser;
mod resolve;
mod value;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::auth::Key;
pub use error::{ConfigError, ErrorKind};
pub use hast_conf::Addr;
pub use level::Level;

/// Every keyword of hastmon.conf, sections (`on`, `resource`, `key`)
/// included: the parser's own table. hastmon.conf(5) documents each one,
/// which tests/install.rs checks against this list.
pub fn keywords() -> impl Iterator<Item = &'static str> {
    parser::WORDS.iter().map(|&(word, _)| word)
}

/// Default port of `listen` and `remote` addresses: hastmon's own (hastd has 8457, its FreeBSD default, and the
/// two run side by side on a data node).
pub const MON_PORT: u16 = 8459;
/// Larger files are refused before they are read (hast.conf's limit).
pub const FILE_SIZE_MAX: u64 = hast_conf::FILE_SIZE_MAX;
pub const RESOURCES_MAX: usize = hast_conf::RESOURCES_MAX;
/// Top-level `on NODE` sections.
pub const NODE_SECTIONS_MAX: usize = hast_conf::NODE_SECTIONS_MAX;
/// `on` sections of a resource: two data nodes and a watchdog host.
pub const RESOURCE_NODES_MAX: usize = 3;
/// Addresses after one `remote`: the other hosts of the resource.
pub const REMOTES_MAX: usize = RESOURCE_NODES_MAX - 1;
/// Longest duration option, so that deadlines computed from it (`Instant +
/// Duration`) can never overflow.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// The `secret` of `contrib/hastmon/hastmon.conf.example`: anyone who read
/// the example could join, so a copied example is refused until changed.
pub const PLACEHOLDER_SECRET: &str = "change-me-to-a-random-string-of-32+-chars";

/// Largest `secret_file` read (the key file is shared with hastd).
pub use hast_conf::secret::SECRET_FILE_SIZE_MAX;

/// Values used when no section sets an option.
pub mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::{Addr, MON_PORT};

    pub const CONTROL_PATH: &str = "/var/run/hastmonctl";
    pub const PIDFILE: &str = "/var/run/hastmon.pid";
    pub const STATE_DIR: &str = "/var/lib/hastmon";
    /// hastd's default control socket (hast.conf `control`).
    pub const HASTD_CONTROL: &str = "/run/hastctl";
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
    pub const COMPLAINT_COUNT: u32 = 2;
    pub const COMPLAINT_INTERVAL: Duration = Duration::from_secs(10);
    pub const TIMEOUT: Duration = Duration::from_secs(2);
    pub const ATTEMPTS: u32 = 3;
    pub const LEASE: Duration = Duration::from_secs(2);
    pub const PRIORITY: u32 = 0;

    /// `unix:///var/run/hastmonctl`
    pub fn control() -> Addr {
        Addr::Unix(PathBuf::from(CONTROL_PATH))
    }

    /// `tcp://0.0.0.0:8459`
    pub fn listen() -> Addr {
        Addr::Tcp {
            host: "0.0.0.0".to_owned(),
            port: MON_PORT,
        }
    }
}

/// The configuration as one node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Control socket (`hastmonctl`); always `Addr::Unix`.
    pub control: Addr,
    /// Where peers reach this node; always `Addr::Tcp`.
    pub listen: Addr,
    pub pidfile: PathBuf,
    /// Where hastmon persists its state across restarts.
    pub state_dir: PathBuf,
    /// hastd's control socket: lease renewals and status checks of the
    /// resources go there in-process (the resource of the same name);
    /// `None` (`hastd_control none`): the `exec` script does them.
    pub hastd_control: Option<PathBuf>,
    /// The Prometheus endpoint (`metrics_listen`, `Addr::Tcp`); `None`
    /// (the default, or `metrics_listen none`): off.
    pub metrics_listen: Option<Addr>,
    /// The node name the sections were chosen by.
    pub node: String,
    /// Every resource of the file, in file order, including those without
    /// a section for this node.
    pub resources: Vec<Resource>,
}

impl Config {
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    /// The script run with `start|stop|status|role|connect|disconnect|complain`.
    pub exec: PathBuf,
    pub timing: Timing,
    pub key: Key,
    /// The 2 or 3 hosts of the resource, in file order.
    pub nodes: Vec<NodeSection>,
    /// Line of `resource NAME {`.
    pub line: u32,
}

impl Resource {
    /// The section of `node` (FreeBSD's matching: full or short host name,
    /// any ASCII case), or `None` if this node takes no part in the
    /// resource. At most one matches the node given to `parse`.
    pub fn local(&self, node: &str) -> Option<&NodeSection> {
        self.nodes
            .iter()
            .find(|n| hast_conf::syntax::value::node_matches(&n.name, node))
    }
}

/// `on NODE { remote ...; priority N }` of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    pub name: String,
    /// Addresses of the other hosts of the resource, as this host reaches
    /// them; never empty, always `Addr::Tcp` with a non-zero port.
    pub remote: Vec<Addr>,
    /// Lower takes over first.
    pub priority: u32,
    /// Line of `on NODE {`.
    pub line: u32,
    /// Line of its `remote` statement (the warning about a host that does
    /// not resolve names it).
    pub remote_line: u32,
}

/// The timing options of a resource. Every duration is in
/// (0, `DURATION_MAX`], counts are at least 1, and `lease` is at least
/// twice `heartbeat_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_interval: Duration,
    /// Complaints from the watchdog within `complaint_interval` before a
    /// secondary takes over.
    pub complaint_count: u32,
    pub complaint_interval: Duration,
    /// Bound of one exchange with a peer, connecting included.
    pub timeout: Duration,
    /// Failed status checks of the running resource before the primary
    /// gives it up.
    pub attempts: u32,
    /// How long a primary may act without renewing its lease.
    pub lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            complaint_count: defaults::COMPLAINT_COUNT,
            complaint_interval: defaults::COMPLAINT_INTERVAL,
            timeout: defaults::TIMEOUT,
            attempts: defaults::ATTEMPTS,
            lease: defaults::LEASE,
        }
    }
}

/// Parses hastmon.conf text for node `node`. `file` names the file in
/// messages.
pub fn parse(text: &str, file: &Path, node: &str) -> Result<Config, ConfigError> {
    hast_conf::syntax::check_size(text, file)?;
    let raw = parser::parse(text, file)?;
    resolve::resolve(raw, file, node)
}

/// Reads and parses `file`; `node` defaults to the host name.
pub fn load(file: &Path, node: Option<&str>) -> Result<Config, ConfigError> {
    let text = hast_conf::syntax::read_limited(file)?;
    match node {
        Some(node) => parse(&text, file, node),
        None => parse(&text, file, &hast_conf::hostname()),
    }
}
