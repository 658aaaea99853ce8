//! `hastcctl`: the connector's control tool (blocking client of
//! [`crate::control`]) and its output, as text columns like `hastctl` or as
//! JSON. `src/bin/hastcctl.rs` only calls [`main`].
//!
//! ```text
//! hastcctl [-c SOCKET] ls [--json] | status [RES] [--json] | connect RES
//!        | disconnect RES | tron | troff
//! ```
//!
//! Exit statuses are sysexits(3): 64 usage, 66 unknown resource, 69 hastcd
//! not reachable, 77 permission denied, 78 configuration.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hast_api::{decode_body, decode_len, encode, HEADER_LEN};

use crate::control::{check_resource, Command, ListEntry, Request, Response};
use crate::status::EndpointStatus;

pub const DEFAULT_SOCKET: &str = crate::conf::defaults::CONTROL_SOCKET;
/// How long hastcctl waits for hastcd (its answers are snapshots).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "hastcctl [-c SOCKET] ls [--json]
       hastcctl [-c SOCKET] status [RES] [--json]
       hastcctl [-c SOCKET] connect RES | disconnect RES | tron | troff";

#[derive(Parser, Debug)]
#[command(
    name = "hastcctl",
    version,
    about = "control the hast connector (hastcd)",
    override_usage = USAGE
)]
struct Args {
    /// hastcd's control socket.
    #[arg(short = 'c', value_name = "SOCKET", env = "HASTCD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// hastcctl's command line as clap sees it (shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the endpoints: resource, state, primary, epoch, local URIs.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Every counter of one endpoint or of all.
    Status {
        resource: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Connect a resource (discovered or configured) now.
    Connect { resource: String },
    /// Drop a resource's endpoint; its clients' pending requests fail.
    Disconnect { resource: String },
    /// Trace on.
    Tron,
    /// Trace off.
    Troff,
}

/// Why a call failed: the exit status and the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub code: i32,
    pub message: String,
}

/// Sends one command to the hastcd on `socket` and returns its answer
/// (an error answer becomes `Err` with hastcd's code).
pub fn call(socket: &Path, command: Command) -> Result<Response, CallError> {
    let fail = |code, message| CallError { code, message };
    let mut s = UnixStream::connect(socket).map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::PermissionDenied => exit::NOPERM,
            _ => exit::UNAVAILABLE,
        };
        fail(
            code,
            format!(
                "cannot connect to hastcd at {}: {e}{}",
                socket.display(),
                if code == exit::NOPERM {
                    " (hastcctl needs root)"
                } else {
                    " (is hastcd running?)"
                }
            ),
        )
    })?;
    let io = |e: std::io::Error| {
        fail(
            exit::IOERR,
            format!("control connection to {} failed: {e}", socket.display()),
        )
    };
    s.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    let frame = encode(&Request::new(command)).map_err(|e| fail(exit::SOFTWARE, e.to_string()))?;
    // hastcd answers a refused peer before reading its request and closes:
    // the write may then break, but the refusal is already waiting in our
    // receive queue, and it names the real cause.
    let broken = match s.write_all(&frame) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Some(e),
        Err(e) => return Err(io(e)),
        Ok(()) => None,
    };
    let mut prefix = [0u8; HEADER_LEN];
    s.read_exact(&mut prefix)
        .map_err(|e| io(broken.unwrap_or(e)))?;
    let len = decode_len(prefix).map_err(|e| fail(exit::PROTOCOL, e.to_string()))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(io)?;
    match decode_body(&body).map_err(|e| fail(exit::PROTOCOL, e.to_string()))? {
        Response::Error { code, message } => Err(fail(code, message)),
        r => Ok(r),
    }
}

/// sysexits(3) codes hast-sys does not name.
mod exit {
    pub use hast_sys::exit::*;
    /// EX_PROTOCOL: the answer is not what the protocol says.
    pub const PROTOCOL: i32 = 76;
}

/// `hastcctl`'s whole run: the exit status.
pub fn main() -> i32 {
    main_with(std::env::args_os())
}

pub fn main_with<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => return hast_sys::usage_error("hastcctl", USAGE, &e),
    };
    let named = match &args.cmd {
        Cmd::Status {
            resource: Some(r), ..
        }
        | Cmd::Connect { resource: r }
        | Cmd::Disconnect { resource: r } => Some(r),
        _ => None,
    };
    if let Some(r) = named {
        if let Err(why) = check_resource(r) {
            eprintln!("hastcctl: {why}");
            return exit::USAGE;
        }
    }
    let (command, json) = match args.cmd {
        Cmd::Ls { json } => (Command::List, json),
        Cmd::Status { resource, json } => (Command::Status { resource }, json),
        Cmd::Connect { resource } => (Command::Connect { resource }, false),
        Cmd::Disconnect { resource } => (Command::Disconnect { resource }, false),
        Cmd::Tron => (Command::Trace { on: true }, false),
        Cmd::Troff => (Command::Trace { on: false }, false),
    };
    let out = match call(&args.socket, command) {
        Ok(Response::Ok) => String::new(),
        Ok(Response::List { endpoints }) if json => to_json(&endpoints),
        Ok(Response::List { endpoints }) => render_list(&endpoints),
        Ok(Response::Status { endpoints }) if json => to_json(&endpoints),
        Ok(Response::Status { endpoints }) => render_status(&endpoints),
        // `call` turns error answers into `Err`; handled alike all the same.
        Ok(Response::Error { code, message }) | Err(CallError { code, message }) => {
            eprintln!("hastcctl: {message}");
            return code;
        }
    };
    print!("{out}");
    exit::OK
}
fn to_json<T: serde::Serialize>(v: &T) -> String {
    // A Vec of plain structs always serializes.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "[]".into());
    s.push('\n');
    s
}

/// `hastcctl ls`: one row per endpoint, columns as wide as their widest cell.
pub fn render_list(list: &[ListEntry]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|e| {
            [
                e.resource.clone(),
                e.state.as_str().to_string(),
                e.primary.clone().unwrap_or_else(|| "-".into()),
                e.epoch.to_string(),
                if e.uris.is_empty() {
                    "-".into()
                } else {
                    e.uris.join(" ")
                },
            ]
        })
        .collect();
    let head = ["Name", "State", "Primary", "Epoch", "URI"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

/// `hastcctl status`: every field of each endpoint, `hastctl list` style.
pub fn render_status(list: &[EndpointStatus]) -> String {
    let mut s = String::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    for e in list {
        let _ = writeln!(s, "{}:", e.resource);
        let _ = writeln!(s, "  state: {}", e.state.as_str());
        for u in &e.uris {
            let _ = writeln!(s, "  uri: {u}");
        }
        let _ = writeln!(s, "  primary: {}", opt(&e.primary));
        let _ = writeln!(s, "  nbd: {}", opt(&e.nbd));
        let _ = writeln!(s, "  epoch: {} (highest seen {})", e.epoch, e.epoch_seen);
        let _ = writeln!(s, "  size: {}", e.size);
        let _ = writeln!(s, "  clients: {}", e.clients);
        let _ = writeln!(s, "  failovers: {}", e.failovers);
        let _ = writeln!(s, "  pending: {}", e.pending);
        let _ = writeln!(s, "  held: {}", e.held);
        let _ = writeln!(s, "  replayed: {}", e.replayed);
        let _ = writeln!(s, "  failed: {}", e.failed);
        match e.last_pause_ms {
            Some(ms) => {
                let _ = writeln!(s, "  last pause: {ms} ms");
            }
            None => {
                let _ = writeln!(s, "  last pause: -");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::EndpointState;

    #[test]
    fn list_columns_line_up() {
        let rows = [
            ListEntry {
                resource: "db".into(),
                uris: vec!["nbd+unix:///db?socket=/run/hast/hastcd/db.nbd".into()],
                state: EndpointState::Connected,
                primary: Some("10.0.0.1:8459".into()),
                epoch: 7,
            },
            ListEntry {
                resource: "scratch-volume".into(),
                uris: vec![],
                state: EndpointState::FailingOver,
                primary: None,
                epoch: 12,
            },
        ];
        let out = render_list(&rows);
        let want = "\
Name            State         Primary        Epoch  URI
db              connected     10.0.0.1:8459      7  nbd+unix:///db?socket=/run/hast/hastcd/db.nbd
scratch-volume  failing-over  -                 12  -
";
        assert_eq!(out, want);
        assert_eq!(render_list(&[]), "Name  State  Primary  Epoch  URI\n");
    }

    #[test]
    fn usage_errors() {
        for a in [
            &["hastcctl"][..],
            &["hastcctl", "frobnicate"],
            &["hastcctl", "connect"],
            &["hastcctl", "connect", "a", "b"],
            &["hastcctl", "connect", "../etc"],
            &["hastcctl", "status", "all"],
            &["hastcctl", "ls", "--yaml"],
        ] {
            assert_eq!(main_with(a), exit::USAGE, "{a:?}");
        }
        assert_eq!(main_with(["hastcctl", "--help"]), exit::OK);
    }

    #[test]
    fn no_daemon_is_69() {
        let e = call(Path::new("/nonexistent/hastcd.sock"), Command::List).unwrap_err();
        assert_eq!(e.code, exit::UNAVAILABLE);
        assert!(
            e.message
                .starts_with("cannot connect to hastcd at /nonexistent/hastcd.sock: "),
            "{e}"
        );
    }
}
