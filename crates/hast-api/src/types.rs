//! Request and response types of the control protocol.

use serde::{Deserialize, Serialize};

/// Every message travels in an envelope carrying the protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(body: T) -> Self {
        Envelope {
            version: crate::PROTOCOL_VERSION,
            body,
        }
    }
}

/// A role as named on the command line and in status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleArg {
    Init,
    Primary,
    Secondary,
}

impl RoleArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Init => "init",
            RoleArg::Primary => "primary",
            RoleArg::Secondary => "secondary",
        }
    }
}

impl std::fmt::Display for RoleArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `hastctl` asks. An empty `names` means every configured resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Role { role: RoleArg, names: Vec<String> },
    Status { names: Vec<String> },
}

/// Why a request failed; each kind maps to one sysexits(3) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Bad arguments (unknown resource name, bad version).
    Usage,
    /// The metadata on the local component is invalid or does not match.
    DataErr,
    /// The local component cannot be opened.
    NoInput,
    /// The resource cannot do this now (busy, frozen, shutting down).
    TempFail,
    /// Reading or writing the local component failed.
    IoErr,
    /// A bug or an unexpected state in hastd.
    Software,
}

impl ErrorKind {
    /// The sysexits(3) code `hastctl` exits with.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage => 64,
            ErrorKind::DataErr => 65,
            ErrorKind::NoInput => 66,
            ErrorKind::Software => 70,
            ErrorKind::IoErr => 74,
            ErrorKind::TempFail => 75,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Per-resource outcome of a role change, in request order.
    Role(Vec<RoleOutcome>),
    Status(Vec<ResourceStatus>),
    Error(ApiError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleOutcome {
    pub name: String,
    pub result: Result<RoleArg, ApiError>,
}

/// A snapshot of one resource, as `status` and `list` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub provider_name: String,
    pub role: RoleArg,
    /// `complete`, `degraded` or `-` (not active), as FreeBSD prints it.
    pub status: String,
    pub local: String,
    /// Remote address, or `none`.
    pub remote: String,
    pub replication: String,
    pub checksum: String,
    pub compression: String,
    /// Metadata, when the component is open (role primary or secondary).
    pub meta: Option<MetaStatus>,
    pub dirty_bytes: u64,
    pub stats: Stats,
    pub queues: Queues,
    /// Resync progress, when a resync is running.
    pub sync: Option<SyncProgress>,
    /// NBD endpoints while exported.
    pub nbd: Vec<String>,
    /// State of the link to the peer (`connected`, `split-brain`, the last
    /// connection error), when a remote is configured and the component open.
    #[serde(default)]
    pub peer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaStatus {
    pub datasize: u64,
    pub extentsize: u32,
    pub keepdirty: u32,
    pub resuid: u64,
    pub localcnt: u64,
    pub remotecnt: u64,
    pub epoch: u64,
    /// This copy is the target of an unfinished resync.
    #[serde(default)]
    pub inconsistent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub zeroes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub activemap_updates: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub delete_errors: u64,
    pub flush_errors: u64,
    /// Bytes copied by resyncs since the resource was opened.
    #[serde(default)]
    pub resynced_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Queues {
    /// Requests being served right now.
    pub inflight: u64,
    /// Open NBD connections to this export.
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub rate_bytes_per_sec: u64,
    pub eta_secs: Option<u64>,
}
