//! The control socket between `hastmonctl` and `hastmon`: the same
//! length-prefixed JSON frames as hastd's (`hast_api::frame`), one request
//! and one response per connection, root-only socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use hast_api::{decode_body, decode_len, encode, HEADER_LEN};
use serde::{Deserialize, Serialize};

use crate::msg::{Role, RunState};
use crate::policy::WitnessState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum CtlRequest {
    /// `hastmonctl role <role> all|name...` (empty `names` = all).
    Role { role: Role, names: Vec<String> },
    /// `hastmonctl status [name...]`.
    Status { names: Vec<String> },
    /// `hastmonctl outdate`: hastd's `fence_peer` hook on the primary asks
    /// to tell the watchdog that the peer is outdated before it writes alone.
    Outdate {
        resource: String,
        epoch: u64,
        seq: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStatus {
    pub address: String,
    pub node: Option<String>,
    pub role: Option<Role>,
    pub connected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub role: Role,
    pub state: RunState,
    pub epoch: u64,
    /// The process doing the work: hastmon itself, and the exec script
    /// running now, if any.
    pub worker: String,
    pub remotes: Vec<RemoteStatus>,
    /// Failed status checks in a row (of `attempts`).
    pub attempts: u32,
    pub attempts_max: u32,
    /// Complaints received within `complaint_interval` (secondary), or
    /// rounds without a running primary (watchdog).
    pub complaints: u32,
    pub heartbeat_ms: u64,
    pub lease_ms: Option<u64>,
    /// The primary this node last renewed a lease for (secondary).
    pub primary: Option<String>,
    /// The durable state, on the watchdog.
    pub witness: Option<WitnessState>,
    pub last_refusal: Option<String>,
    /// The watchdog holds this node's copy outdated (as of its last status
    /// request): it cannot take over until the primary has resynced it.
    #[serde(default)]
    pub outdated: bool,
    /// A takeover request is waiting for the watchdog's answer.
    #[serde(default)]
    pub takeover_pending: bool,
    /// The storage's role and epoch at the last check (`storage: primary,
    /// epoch 7`), when known.
    #[serde(default)]
    pub storage: Option<StorageStatus>,
}

/// What the last status check found in the storage (hastd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub role: Role,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum CtlResponse {
    Ok,
    Status {
        resources: Vec<ResourceStatus>,
    },
    /// `code` is the sysexits(3) status hastmonctl exits with.
    Error {
        code: i32,
        message: String,
    },
}

/// How long `hastmonctl` waits (a role change waits for the exec script).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request to the hastmon on `socket` (blocking).
pub fn call(socket: &Path, req: &CtlRequest) -> Result<CtlResponse, (i32, String)> {
    let unavailable = |e: std::io::Error| {
        // A socket this user may not open (0600, root's) is no sign that
        // hastmon is down: say so, 77.
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return (
                hast_sys::exit::NOPERM,
                format!(
                    "cannot connect to hastmon at {}: {e} (hastmonctl needs root)",
                    socket.display()
                ),
            );
        }
        (
            hast_sys::exit::UNAVAILABLE,
            format!(
                "cannot connect to hastmon at {}: {e} (is hastmon running?)",
                socket.display()
            ),
        )
    };
    let io = |e: std::io::Error| {
        (
            hast_sys::exit::IOERR,
            format!("control connection to {} failed: {e}", socket.display()),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(unavailable)?;
    s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let frame = encode(req).map_err(|e| (hast_sys::exit::SOFTWARE, e.to_string()))?;
    s.write_all(&frame).map_err(io)?;
    let mut prefix = [0u8; HEADER_LEN];
    s.read_exact(&mut prefix).map_err(io)?;
    let len = decode_len(prefix).map_err(|e| (76, e.to_string()))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(io)?;
    decode_body(&body).map_err(|e| (76, e.to_string()))
}

/// Reads one request from a control connection (async, bounded by the frame limit).
pub async fn read_request(s: &mut tokio::net::UnixStream) -> Result<CtlRequest, String> {
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; HEADER_LEN];
    s.read_exact(&mut prefix).await.map_err(|e| e.to_string())?;
    let len = decode_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    decode_body(&body).map_err(|e| e.to_string())
}

pub async fn write_response(
    s: &mut tokio::net::UnixStream,
    resp: &CtlResponse,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let frame = encode(resp).map_err(|e| std::io::Error::other(e.to_string()))?;
    s.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = CtlRequest::Outdate {
            resource: "r0".into(),
            epoch: 3,
            seq: 1,
        };
        let f = encode(&req).unwrap();
        let back: CtlRequest = decode_body(&f[HEADER_LEN..]).unwrap();
        assert_eq!(back, req);
        assert!(decode_body::<CtlRequest>(b"{\"request\":\"format_disk\"}").is_err());
    }
}
