//! hastcd's control socket: the wire protocol `hastcctl` speaks and the
//! server that answers it from a [`Control`].
//!
//! Framing is hastd's and hastmon's (`hast_api::frame`: a 4-byte big-endian
//! length, then JSON), one request and one response per connection. The
//! request is `{"version":1,"request":"status","resource":"db"}`; the
//! response `{"response":"status","endpoints":[...]}` or
//! `{"response":"error","code":66,"message":"..."}` where `code` is the
//! sysexits(3) status hastcctl exits with.
//!
//! The socket is root's and 0600, and on top of that each peer's
//! credentials are checked (uid 0 or hastcd's own): a socket mode widened by
//! mistake still lets no other user drop a volume. Every connection has a
//! deadline, requests are at most [`REQUEST_MAX`] bytes (checked before the
//! body is allocated), and at most [`Limits::clients_max`] are served at
//! once; the next one gets a "busy" error and is closed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hast_api::{decode_body, decode_len, encode, HEADER_LEN};
use hast_sys::exit;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::status::{Control, EndpointState, EndpointStatus};

/// Version of this protocol; a request of another version gets an error
/// reply, never a misread command.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request body: commands are a name at most, 64 KiB is generous.
pub const REQUEST_MAX: usize = 64 << 10;
/// Clients served at once; `hastcctl` holds a connection for one request.
pub const CLIENTS_MAX: usize = 16;
/// A connection's whole life: reading the request, answering it.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// The server's bounds ([`serve_with`]; [`serve`] uses the constants).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub clients_max: usize,
    pub request_max: usize,
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            clients_max: CLIENTS_MAX,
            request_max: REQUEST_MAX,
            deadline: CONNECTION_DEADLINE,
        }
    }
}

/// A request on the wire: the protocol version and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }
}

/// What `hastcctl` asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// `hastcctl ls`.
    List,
    /// `hastcctl status [RES]` (`None`: every endpoint).
    Status {
        resource: Option<String>,
    },
    Connect {
        resource: String,
    },
    Disconnect {
        resource: String,
    },
    /// `tron` (`true`) / `troff`.
    Trace {
        on: bool,
    },
}

/// One row of `hastcctl ls --json` (and of D-Bus `List()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub resource: String,
    pub uris: Vec<String>,
    pub state: EndpointState,
    pub primary: Option<String>,
    pub epoch: u64,
}

impl From<&EndpointStatus> for ListEntry {
    fn from(s: &EndpointStatus) -> ListEntry {
        ListEntry {
            resource: s.resource.clone(),
            uris: s.uris.clone(),
            state: s.state,
            primary: s.primary.clone(),
            epoch: s.epoch,
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Ok,
    List {
        endpoints: Vec<ListEntry>,
    },
    Status {
        endpoints: Vec<EndpointStatus>,
    },
    /// `code` is the sysexits(3) status for hastcctl.
    Error {
        code: i32,
        message: String,
    },
}

impl Response {
    fn error(code: i32, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Decodes a request body (pure; the fuzz target's entry): a JSON
/// [`Request`] of this protocol's version with a valid resource name.
pub fn decode_request(body: &[u8]) -> Result<Command, Response> {
    let req: Request =
        decode_body(body).map_err(|e| Response::error(exit::DATAERR, e.to_string()))?;
    if req.version != PROTOCOL_VERSION {
        return Err(Response::error(
            exit::DATAERR,
            format!(
                "control protocol version {} is not spoken here (hastcd speaks {PROTOCOL_VERSION})",
                req.version
            ),
        ));
    }
    let name = match &req.command {
        Command::Status { resource: Some(r) }
        | Command::Connect { resource: r }
        | Command::Disconnect { resource: r } => Some(r),
        _ => None,
    };
    if let Some(r) = name {
        check_resource(r).map_err(|why| Response::error(exit::DATAERR, why))?;
    }
    Ok(req.command)
}

/// A resource name as hast.conf allows it; the message quotes it escaped.
pub fn check_resource(name: &str) -> Result<(), String> {
    hast_conf::syntax::value::check_resource_name(name, "\"all\" is not a resource name")
        .map_err(|why| format!("invalid resource name {name:?}: {why}"))
}

/// Answers one command from `control` (pure apart from the trait calls).
pub fn answer(control: &dyn Control, command: Command) -> Response {
    let unknown =
        |r: &str| Response::error(exit::NOINPUT, format!("no endpoint for resource {r:?}"));
    match command {
        Command::List => Response::List {
            endpoints: control.status().iter().map(ListEntry::from).collect(),
        },
        Command::Status { resource: None } => Response::Status {
            endpoints: control.status(),
        },
        Command::Status { resource: Some(r) } => {
            let endpoints: Vec<EndpointStatus> = control
                .status()
                .into_iter()
                .filter(|s| s.resource == r)
                .collect();
            if endpoints.is_empty() {
                return unknown(&r);
            }
            Response::Status { endpoints }
        }
        Command::Connect { resource } => match control.connect(&resource) {
            Ok(()) => Response::Ok,
            // The trait's errors carry no kind: the usual one is a resource
            // neither discovered nor configured.
            Err(why) => Response::error(exit::NOINPUT, format!("connect {resource}: {why}")),
        },
        Command::Disconnect { resource } => {
            if !control.status().iter().any(|s| s.resource == resource) {
                return unknown(&resource);
            }
            match control.disconnect(&resource) {
                Ok(()) => Response::Ok,
                Err(why) => Response::error(exit::NOINPUT, format!("disconnect {resource}: {why}")),
            }
        }
        Command::Trace { on } => {
            control.trace(on);
            Response::Ok
        }
    }
}

/// The running server: dropping it (or [`ControlHandle::close`]) stops it
/// and removes the socket.
pub struct ControlHandle {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting; connections being answered finish on their own
    /// (each within its deadline).
    pub fn close(self) {
        drop(self)
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` (0600; a stale socket of a dead
/// hastcd is replaced, a live one is an `AddrInUse` error) and serves it.
pub async fn serve(path: &Path, control: Arc<dyn Control>) -> io::Result<ControlHandle> {
    serve_with(path, control, Limits::default()).await
}

/// [`serve`] with other bounds (tests use short deadlines).
pub async fn serve_with(
    path: &Path,
    control: Arc<dyn Control>,
    limits: Limits,
) -> io::Result<ControlHandle> {
    // Only a socket is ever replaced: a control_socket pointed at a file or
    // a symlink by mistake must not cost that file.
    match std::fs::symlink_metadata(path) {
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        _ => {}
    }
    let std_listener = hast_sys::sock::bind_control("hastcd", path)?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let task = tokio::spawn(accept_loop(listener, control, limits, own_uid));
    Ok(ControlHandle {
        path: path.to_path_buf(),
        task,
    })
}

async fn accept_loop(
    listener: UnixListener,
    control: Arc<dyn Control>,
    limits: Limits,
    own_uid: u32,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.clients_max));
    loop {
        let mut s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: wait rather than spin.
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let busy = Response::error(
                exit::TEMPFAIL,
                format!(
                    "hastcd is busy: {} control connections open",
                    limits.clients_max
                ),
            );
            // A short, bounded reply off the accept loop, then close.
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), write_response(&mut s, &busy))
                        .await;
            });
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(
                limits.deadline,
                handle(&mut s, &control, limits.request_max, own_uid),
            )
            .await;
        });
    }
}

/// One connection: check the peer, read one request, answer it.
async fn handle(
    s: &mut UnixStream,
    control: &Arc<dyn Control>,
    request_max: usize,
    own_uid: u32,
) -> io::Result<()> {
    let uid = s.peer_cred()?.uid();
    if uid != 0 && uid != own_uid {
        tracing::warn!("control socket: refused a request from uid {uid}");
        let resp = Response::error(
            exit::NOPERM,
            format!("permission denied: uid {uid} may not control hastcd (root only)"),
        );
        return write_response(s, &resp).await;
    }
    let resp = match read_request(s, request_max).await? {
        Ok(cmd) => {
            tracing::debug!("control request {cmd:?}");
            // Off the runtime's threads: a Control that takes a lock or
            // waits must not stall the other connections; the deadline
            // around this abandons an answer that comes too late.
            let control = control.clone();
            tokio::task::spawn_blocking(move || answer(control.as_ref(), cmd))
                .await
                .unwrap_or_else(|e| {
                    Response::error(exit::SOFTWARE, format!("control request failed: {e}"))
                })
        }
        Err(resp) => resp,
    };
    write_response(s, &resp).await
}

/// Reads one frame: the length is checked against `request_max` before
/// the body is allocated. `Ok(Err(resp))`: a bad request to answer.
async fn read_request(
    s: &mut UnixStream,
    request_max: usize,
) -> io::Result<Result<Command, Response>> {
    let mut prefix = [0u8; HEADER_LEN];
    s.read_exact(&mut prefix).await?;
    let len = match decode_len(prefix) {
        Ok(l) if l <= request_max => l,
        Ok(l) => {
            return Ok(Err(Response::error(
                exit::DATAERR,
                format!("control request of {l} bytes exceeds the limit of {request_max} bytes"),
            )))
        }
        Err(e) => return Ok(Err(Response::error(exit::DATAERR, e.to_string()))),
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(decode_request(&body))
}

async fn write_response(s: &mut UnixStream, resp: &Response) -> io::Result<()> {
    let frame = encode(resp).map_err(|e| io::Error::other(e.to_string()))?;
    s.write_all(&frame).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shapes() {
        let cases = [
            (Command::List, r#"{"version":1,"request":"list"}"#),
            (
                Command::Status { resource: None },
                r#"{"version":1,"request":"status","resource":null}"#,
            ),
            (
                Command::Status {
                    resource: Some("db".into()),
                },
                r#"{"version":1,"request":"status","resource":"db"}"#,
            ),
            (
                Command::Connect {
                    resource: "db".into(),
                },
                r#"{"version":1,"request":"connect","resource":"db"}"#,
            ),
            (
                Command::Disconnect {
                    resource: "db".into(),
                },
                r#"{"version":1,"request":"disconnect","resource":"db"}"#,
            ),
            (
                Command::Trace { on: true },
                r#"{"version":1,"request":"trace","on":true}"#,
            ),
        ];
        for (cmd, json) in cases {
            assert_eq!(
                serde_json::to_string(&Request::new(cmd.clone())).unwrap(),
                json
            );
            assert_eq!(decode_request(json.as_bytes()), Ok(cmd));
        }
    }

    #[test]
    fn bad_requests_get_error_replies() {
        let cases: &[(&str, &str)] = &[
            ("", "malformed"),
            ("{", "malformed"),
            (r#"{"version":2,"request":"list"}"#, "version 2"),
            (r#"{"request":"list"}"#, "malformed"),
            (r#"{"version":1,"request":"format"}"#, "malformed"),
            (r#"{"version":1,"request":"connect"}"#, "malformed"),
            (
                r#"{"version":1,"request":"connect","resource":"../x"}"#,
                "invalid resource name",
            ),
            (
                r#"{"version":1,"request":"disconnect","resource":"all"}"#,
                "invalid resource name",
            ),
            (
                r#"{"version":1,"request":"status","resource":""}"#,
                "invalid resource name",
            ),
        ];
        for (body, want) in cases {
            match decode_request(body.as_bytes()) {
                Err(Response::Error { code, message }) => {
                    assert_eq!(code, exit::DATAERR, "{body}");
                    assert!(message.contains(want), "{body}: {message}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data: Vec<u8>) {
            let _ = decode_request(&data);
        }
    }
}
