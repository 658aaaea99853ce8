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

/// A role as named on the command line and in status output: the node's
/// role, `hast_meta::Role` (serde: "init", "primary", "secondary").
pub use hast_meta::Role;

/// What `hastctl` asks. An empty `names` means every configured resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// `hastctl role [-E epoch]`: `epoch` is the fencing token the caller
    /// (hastmon) assigns; absent, a promotion raises the stored one by 1.
    Role {
        role: Role,
        names: Vec<String>,
        #[serde(default)]
        epoch: Option<u64>,
        /// `role --force primary`: promote even a secondary attached to a
        /// primary peer (without `epoch` that is refused: two primaries).
        #[serde(default)]
        force: bool,
    },
    Status {
        names: Vec<String>,
    },
    /// `hastctl lease -t ms`: a primary demotes itself to secondary `ms`
    /// milliseconds from now unless a later lease replaces this one; `ms` 0
    /// cancels the lease (no deadline; an expired one is not revived).
    ///
    /// `not_after`: an absolute CLOCK_MONOTONIC deadline in nanoseconds
    /// (`hast_sys::mono_now_ns`; the caller is on the same host). The lease
    /// then ends at min(receipt + `ms`, `not_after`), and a request whose
    /// `not_after` already passed is refused like a renewal of an expired
    /// lease — so a renewal that sat in the socket while hastd was frozen
    /// never extends the lease past what its grantors promised. Absent
    /// (older callers): `ms` from receipt.
    Lease {
        ms: u64,
        names: Vec<String>,
        #[serde(default)]
        not_after: Option<u64>,
    },
    /// `hastctl events [--all] [--follow]`: the journal's entries (those
    /// not done, or all), as [`Response::Events`] chunks; with `follow`,
    /// then every change as [`Response::Event`] until the client leaves.
    Events {
        all: bool,
        #[serde(default)]
        follow: bool,
    },
    /// `hastctl events retry [-k kind] [seq ...]`: failed and aborted
    /// events (of `kind`, or exactly `seqs`) handled again.
    EventsRetry {
        kind: Option<hast_events::Kind>,
        seqs: Vec<u64>,
    },
    /// `hastctl events clear [-k kind] [seq ...]`: failed and aborted
    /// events dismissed by the operator (done, not handled again).
    EventsClear {
        kind: Option<hast_events::Kind>,
        seqs: Vec<u64>,
    },
    /// `hastctl attach`: a local component that failed (`on_io_error`)
    /// is checked and used again; one that was detached is resynced from
    /// the peer first (the answer comes when that copy has begun).
    Attach {
        names: Vec<String>,
    },
    /// `hastctl outdate`: the named copies (secondary or init on this node)
    /// are marked outdated, durably: the primary wrote without them. Not
    /// promoted without `--force` until a resync completes.
    Outdate {
        names: Vec<String>,
    },
    /// `hastctl freeze [-t timeout]`: the named resources (all primary on
    /// this node) frozen as one group, or none of them.
    Freeze {
        names: Vec<String>,
        timeout: FreezeTimeout,
    },
    /// `hastctl thaw`: each group a named resource is in thaws.
    Thaw {
        names: Vec<String>,
    },
    /// `hastctl snapshot [-t timeout] -o dir`: the named resources frozen
    /// as one group just long enough to begin a point-in-time image of
    /// each (`<dir>/<name>.img`), then copied in the background. Answered
    /// by [`Response::SnapshotStarted`], [`Response::SnapshotProgress`]
    /// frames and [`Response::SnapshotDone`] (or an `Error`); the snapshot
    /// is abandoned if the client leaves.
    Snapshot {
        names: Vec<String>,
        timeout: FreezeTimeout,
        /// An absolute path to an existing directory on the primary.
        dir: String,
    },
}

/// `freeze -t`: how long the group may stay frozen before it thaws by
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeTimeout {
    /// `-t N`, N > 0: N seconds (at most [`FREEZE_TIMEOUT_MAX_SECS`]).
    Seconds(u64),
    /// `-t 0` or none: the shortest `freeze_timeout` of the members.
    Configured,
    /// `-t N`, N < 0: no timeout.
    Never,
}

/// Longest timeout `hastctl freeze -t` may ask for: one day.
pub const FREEZE_TIMEOUT_MAX_SECS: u64 = 86_400;

/// How hastd's refusal of a hand-made promotion beside a connected primary
/// begins (after the resource's name): `hastctl` waits a little and asks
/// again, since the peer it saw may be demoting right now (the switchover
/// recipe: `role secondary` there, then at once `role primary` here).
pub const PEER_IS_PRIMARY: &str = "the peer is primary and connected";

/// How long `hastctl role primary` keeps asking while the peer it is
/// connected to still looks primary.
pub const PEER_IS_PRIMARY_PATIENCE_MS: u64 = 3000;

/// Longest lease `hastctl lease -t` may ask for: one day.
pub const LEASE_MS_MAX: u64 = 86_400_000;

/// Why a request failed; each kind maps to one sysexits(3) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Bad arguments (a bad value, bad version).
    Usage,
    /// The metadata on the local component is invalid or does not match.
    DataErr,
    /// The local component cannot be opened, or no resource has that name.
    NoInput,
    /// The resource cannot do this now (busy, frozen, shutting down).
    TempFail,
    /// Reading or writing the local component failed.
    IoErr,
    /// A bug or an unexpected state in hastd.
    Software,
    /// Refused by the fencing rules: a promotion with an epoch lower than
    /// the one stored, a lease for a resource that is not primary.
    NoPerm,
    /// An output file cannot be created (it exists, or the directory
    /// refuses it).
    CantCreat,
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
            ErrorKind::CantCreat => 73,
            ErrorKind::NoPerm => 77,
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
    /// Per-resource outcome of a lease request, in request order.
    Lease(Vec<LeaseOutcome>),
    /// Part of the answer to [`Request::Events`], in sequence order;
    /// `more`: another chunk follows (a frame holds at most
    /// [`EVENTS_PER_FRAME`] entries).
    Events {
        entries: Vec<hast_events::Entry>,
        more: bool,
    },
    /// A change of the journal, sent to a follower.
    Event(hast_events::Entry),
    /// The events `retry` made pending, in order.
    EventsRetried(Vec<u64>),
    /// The events `clear` dismissed, in order.
    EventsCleared(Vec<u64>),
    /// Per-resource outcome of an attach request, in request order.
    Attach(Vec<ResourceOutcome>),
    /// Per-resource outcome of an outdate request, in request order.
    Outdate(Vec<ResourceOutcome>),
    /// The group is frozen (a failed freeze is an `Error`: nothing frozen).
    Frozen(FreezeDone),
    /// Per-resource outcome of a thaw request, in request order.
    Thaw(Vec<ThawOutcome>),
    /// A snapshot's group was frozen and thawed, its images begun; the
    /// background copy goes on.
    SnapshotStarted(SnapshotReport),
    /// How far the background copy is (about every
    /// [`SNAPSHOT_PROGRESS_MS`]).
    SnapshotProgress(SnapshotReport),
    /// Every image is complete and durable under its final name.
    SnapshotDone(SnapshotReport),
    Error(ApiError),
}

/// How often a snapshot's progress is sent.
pub const SNAPSHOT_PROGRESS_MS: u64 = 250;

/// A snapshot so far: the freeze it took, then its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// The freeze's generation (its `freeze` and `thaw` events name it).
    pub generation: u64,
    /// From the hold of new writes to their release: what clients waited.
    pub frozen_ms: u64,
    /// From the request to the freeze (draining the writes in flight).
    pub freeze_ms: u64,
    /// From the thaw to now (to the end, once done).
    pub copy_ms: u64,
    pub images: Vec<ImageProgress>,
}

/// One resource's image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageProgress {
    pub name: String,
    /// Where it is written: `<dir>/<name>.img.partial` until done, then
    /// `<dir>/<name>.img`.
    pub path: String,
    /// The resource's size, which is the image's.
    pub size: u64,
    /// Bytes of the image settled (copied, or found to be a hole).
    pub done_bytes: u64,
    /// Bytes written to the image (the rest stays a hole).
    pub written_bytes: u64,
    /// Bytes copied ahead of the background copy because a client write
    /// was about to change them (copy-before-write).
    pub preserved_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeDone {
    /// Counts the freezes of this hastd; `thaw` and `status` name it.
    pub generation: u64,
    /// The group's members.
    pub names: Vec<String>,
    /// When it thaws by itself; `None`: only by `thaw` (or a stop, a lost
    /// peer, a demotion).
    pub timeout_ms: Option<u64>,
    /// From the request to the end of the flush.
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThawOutcome {
    pub name: String,
    /// What was thawed (`Ok`), or why not: not frozen (`Usage`), or
    /// thawed by something else since its freeze (`DataErr`).
    pub result: Result<String, ApiError>,
}

/// Where a resource stands with freezes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeState {
    /// Its writes in flight are draining, the flush has not answered.
    Freezing,
    /// New modifications are held; all acknowledged ones are durable on
    /// both copies.
    Frozen,
    /// Its last freeze ended (`thaw_reason`).
    Thawed,
}

/// A resource's current or last freeze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeStatus {
    pub state: FreezeState,
    pub generation: u64,
    /// The resources frozen together.
    pub group: Vec<String>,
    /// When the freeze began (RFC 3339 UTC).
    pub frozen_at: String,
    /// The freeze's timeout, while frozen; `None`: none.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Left before the timeout thaws it, while frozen.
    #[serde(default)]
    pub ms_left: Option<u64>,
    /// When and why it was thawed, once thawed.
    #[serde(default)]
    pub thawed_at: Option<String>,
    #[serde(default)]
    pub thaw_reason: Option<String>,
}

/// Journal entries per [`Response::Events`] frame: each entry's strings
/// are bounded by hastd, so a chunk stays far below `FRAME_MAX`.
pub const EVENTS_PER_FRAME: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleOutcome {
    pub name: String,
    pub result: Result<Role, ApiError>,
    /// The resource's epoch after the request, when known.
    #[serde(default)]
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseOutcome {
    pub name: String,
    /// The lease granted, in milliseconds from when hastd received it
    /// (shorter than asked when `not_after` came first).
    pub result: Result<u64, ApiError>,
}

/// The outcome of a per-resource message command (`attach`, `outdate`) for
/// one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceOutcome {
    pub name: String,
    /// What was done (`Ok`), or why nothing changed.
    pub result: Result<String, ApiError>,
}

/// Whether a resource's copies agree, as FreeBSD's `hastctl status` prints
/// it; the JSON carries the same strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Both copies are in sync (or no peer is configured).
    #[serde(rename = "complete")]
    Complete,
    /// The peer is absent or behind.
    #[serde(rename = "degraded")]
    Degraded,
    /// The last handshake found both copies written alone.
    #[serde(rename = "split-brain")]
    SplitBrain,
    /// The primary's local component failed and was detached: the peer
    /// serves every request (`on_io_error detach`); `hastctl attach`.
    #[serde(rename = "detached")]
    Detached,
    /// This copy is outdated (`hastctl outdate`, or hastmon's watchdog):
    /// the primary wrote without it, and until its resync completes it is
    /// not promoted without `--force`.
    #[serde(rename = "outdated")]
    Outdated,
    /// The component is not open (role init).
    #[serde(rename = "-")]
    Inactive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Degraded => "degraded",
            Status::SplitBrain => "split-brain",
            Status::Detached => "detached",
            Status::Outdated => "outdated",
            Status::Inactive => "-",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one resource, as `status` and `list` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub provider_name: String,
    pub role: Role,
    /// `complete`, `degraded`, `split-brain` or `-` (not active), as
    /// FreeBSD prints it.
    pub status: Status,
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
    /// NBD over TLS on those endpoints while exported: `required` or
    /// `optional`, plus `, client certificate pinned`; `None`: plaintext.
    #[serde(default)]
    pub nbd_tls: Option<String>,
    /// Who can reach each of `nbd`, in the same order.
    #[serde(default)]
    pub nbd_access: Vec<String>,
    /// State of the link to the peer (`connected`, `split-brain`, the last
    /// connection error), when a remote is configured and the component open.
    #[serde(default)]
    pub peer: Option<String>,
    /// The fencing token stored in the metadata (read from the component
    /// while init); `None` when it cannot be read.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Milliseconds left on the primary's lease (0: expired, demotion under
    /// way); `None` without a lease.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Degraded-write fencing of a primary with a peer configured (see
    /// `fence_peer`); `None` otherwise.
    #[serde(default)]
    pub fence: Option<FenceStatus>,
    /// What authenticates the replication link: `hmac-sha256` (a
    /// `secret_file`), `none` (source address only); `None` without a remote.
    #[serde(default)]
    pub auth: Option<String>,
    /// The live link's TLS (`TLSv1.3 <cipher suite> peer sha256:<hex>`),
    /// when connected over a `tls://` address; `None` otherwise.
    #[serde(default)]
    pub tls: Option<String>,
    /// Milliseconds the local component has completed nothing while I/O
    /// was pending (a hung disk); `None` when no I/O is pending or the
    /// component is not open.
    #[serde(default)]
    pub local_stall_ms: Option<u64>,
    /// The local component under `on_io_error`: `attached`, `failed`
    /// (errors happened and it could not be detached, or `pass_on`) or
    /// `detached`; `None` when not open.
    #[serde(default)]
    pub local_state: Option<String>,
    /// Local I/O errors since the component was last attached or opened.
    #[serde(default)]
    pub local_errors: u64,
    /// This copy lacks writes a primary made without it (`hastctl
    /// outdate`, or hastmon's watchdog): not promoted without `--force`
    /// until a resync from the primary completes.
    #[serde(default)]
    pub outdated: bool,
    /// New modifications are held by a freeze (`hastctl freeze`).
    #[serde(default)]
    pub frozen: bool,
    /// The current or last freeze; `None` if not frozen since hastd started.
    #[serde(default)]
    pub freeze: Option<FreezeStatus>,
}

/// Where a primary stands with `fence_peer`. Each time it loses its peer
/// while writes come in, a new degradation generation starts; no write of
/// that generation is applied alone or acknowledged before the fence
/// command succeeded for it (when `fence_peer` is set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceStatus {
    /// Current degradation generation (0: never degraded since promotion).
    pub generation: u64,
    /// Last generation the fence command succeeded for.
    pub fenced: u64,
    /// A fence for `generation` is being run or retried right now.
    pub pending: bool,
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
