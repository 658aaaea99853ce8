//! What hastcd tells its operator: one [`EndpointStatus`] per connected
//! resource, served by the control socket (`hastcctl`) and on D-Bus
//! (`org.hast.connector`) alike, through the [`Control`] trait the daemon
//! implements.

use serde::{Deserialize, Serialize};

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Looking for a primary for the first time; requests are held.
    Connecting,
    /// Forwarding to a primary.
    Connected,
    /// The primary was lost: requests are held while a new one is found.
    FailingOver,
    /// `ctrl_loss_tmo` passed with no primary: requests fail with EIO until
    /// a primary is back.
    Lost,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Connecting => "connecting",
            EndpointState::Connected => "connected",
            EndpointState::FailingOver => "failing-over",
            EndpointState::Lost => "lost",
        }
    }
}

/// One connected resource, as `hastcctl status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The resource (and the local export's name).
    pub resource: String,
    /// Local URIs a client connects to: `nbd+unix:///NAME?socket=PATH`,
    /// `nbd://127.0.0.1:PORT/NAME`.
    pub uris: Vec<String>,
    pub state: EndpointState,
    /// The discovery address (`host:port`) of the node requests go to now.
    pub primary: Option<String>,
    /// The NBD address requests go to now.
    pub nbd: Option<String>,
    /// Epoch of the current primary (0 before the first).
    pub epoch: u64,
    /// Highest epoch seen in discovery: nothing goes to a lower one.
    pub epoch_seen: u64,
    /// Size in bytes (0 before the first connection).
    pub size: u64,
    /// Local client connections open now.
    pub clients: u64,
    /// Moves to another connection since hastcd started.
    pub failovers: u64,
    /// Requests not yet acknowledged (in flight or held) now.
    pub pending: u64,
    /// Requests that waited for a primary (held), in total.
    pub held: u64,
    /// Requests sent again to a new primary, in total.
    pub replayed: u64,
    /// Requests failed with EIO after `ctrl_loss_tmo`, in total.
    pub failed: u64,
    /// How long the last failover paused I/O (from the loss to the replay
    /// sent), in milliseconds.
    pub last_pause_ms: Option<u64>,
}

/// The operator's commands, as both the control socket and D-Bus offer them.
pub trait Control: Send + Sync + 'static {
    /// Every endpoint (connected or connecting), by resource name.
    fn status(&self) -> Vec<EndpointStatus>;
    /// Connect a resource (found by discovery or configured by hand) that
    /// is not connected now; `Err` says why not.
    fn connect(&self, resource: &str) -> Result<(), String>;
    /// Drop a resource's endpoint: its clients are disconnected, their
    /// pending requests fail with EIO.
    fn disconnect(&self, resource: &str) -> Result<(), String>;
    /// Trace on (`true`) or off.
    fn trace(&self, on: bool);
}

/// A failover, as the D-Bus signal `Failover` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub resource: String,
    /// Discovery address of the node left, if any.
    pub from: Option<String>,
    /// Discovery address of the new primary.
    pub to: String,
    pub epoch: u64,
    pub pause_ms: u64,
    pub replayed: u64,
}
