//! Command lines of `hastmon` and `hastmonctl` (HASTMON(8) and
//! hastmonctl(8) flags), with sysexits(3) exit codes. The binaries in
//! `src/bin` only call [`hastmon_main`] and [`hastmonctl_main`].

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hast_conf::Addr;
use hast_sys::exit;

use crate::ctl::{self, CtlRequest, CtlResponse, ResourceStatus};
use crate::msg::Role;

const DEFAULT_CONFIG: &str = "/etc/hastmon.conf";

#[derive(Parser, Debug)]
#[command(
    name = "hastmon",
    version,
    about = "cluster monitoring daemon",
    override_usage = "hastmon [-dFh] [-c config] [-P pidfile] [--node NAME]"
)]
struct HastmonArgs {
    /// Print debugging information; repeat to raise the level.
    #[arg(short = 'd', action = clap::ArgAction::Count)]
    debug: u8,
    /// Stay in the foreground and log to stderr.
    #[arg(short = 'F')]
    foreground: bool,
    /// Configuration file.
    #[arg(short = 'c', value_name = "config", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Pidfile (overrides the configuration's `pidfile`).
    #[arg(short = 'P', value_name = "pidfile")]
    pidfile: Option<PathBuf>,
    /// Node name used to pick `on <node>` sections (default: the host name).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

/// hastmon's command line as clap sees it (shell completions).
pub fn hastmon_command() -> clap::Command {
    <HastmonArgs as clap::CommandFactory>::command()
}

/// hastmonctl's command line as clap sees it (shell completions).
pub fn hastmonctl_command() -> clap::Command {
    <CtlArgs as clap::CommandFactory>::command()
}

/// Parses arguments; `Err` is the exit code after printing usage or help.
fn parse<T: Parser>(program: &str, usage: &str) -> Result<T, i32> {
    T::try_parse().map_err(|e| hast_sys::usage_error(program, usage, &e))
}

pub fn hastmon_main() -> i32 {
    let args: HastmonArgs = match parse(
        "hastmon",
        "hastmon [-dFh] [-c config] [-P pidfile] [--node NAME]",
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    crate::daemon::main(crate::daemon::Options {
        config: args.config,
        node: args.node,
        pidfile: args.pidfile,
        foreground: args.foreground,
        debug: args.debug,
    })
}

const CTL_USAGE: &str =
    "hastmonctl [-d] [-c config] role <init|primary|secondary|watchdog> all | name ...
       hastmonctl [-d] [-c config] status [--json] [all | name ...]
       hastmonctl [-d] [-c config] outdate [-e epoch] [-s seq] [name]";

#[derive(Parser, Debug)]
#[command(name = "hastmonctl", version, about = "hastmon control utility", override_usage = CTL_USAGE)]
struct CtlArgs {
    /// Print debugging information.
    #[arg(short = 'd', action = clap::ArgAction::Count, global = true)]
    debug: u8,
    /// Configuration file (for the control socket's address).
    #[arg(short = 'c', value_name = "config", default_value = DEFAULT_CONFIG, global = true)]
    config: PathBuf,
    /// Node name used to pick `on <node>` sections (default: the host name).
    #[arg(long, value_name = "NAME", global = true, env = "HASTMON_NODE")]
    node: Option<String>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Change the role of the named resources (`all` for every one).
    Role {
        #[arg(value_parser = parse_role)]
        role: Role,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the state of the named resources (default all).
    Status {
        #[arg(long)]
        json: bool,
        names: Vec<String>,
    },
    /// Tell the watchdog that the peer is outdated (hastd's `fence_peer`
    /// hook). Defaults come from hastd's HAST_RESOURCE, HAST_EPOCH and
    /// HAST_FENCE_SEQ.
    Outdate {
        #[arg(short = 'e', env = "HAST_EPOCH")]
        epoch: u64,
        #[arg(short = 's', env = "HAST_FENCE_SEQ")]
        seq: u64,
        #[arg(env = "HAST_RESOURCE")]
        name: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "init" => Ok(Role::Init),
        "primary" => Ok(Role::Primary),
        "secondary" => Ok(Role::Secondary),
        "watchdog" => Ok(Role::Watchdog),
        _ => Err(format!("unknown role {s:?}")),
    }
}

pub fn hastmonctl_main() -> i32 {
    let args: CtlArgs = match parse("hastmonctl", CTL_USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let config = match crate::conf::load(&args.config, args.node.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hastmonctl: {e}");
            return e.exit_code();
        }
    };
    let Addr::Unix(socket) = &config.control else {
        eprintln!(
            "hastmonctl: control address {} is not a unix:// path",
            config.control
        );
        return exit::CONFIG;
    };
    let (req, json) = match args.cmd {
        CtlCmd::Role { role, names } => (CtlRequest::Role { role, names }, false),
        CtlCmd::Status { json, names } => (CtlRequest::Status { names }, json),
        CtlCmd::Outdate { epoch, seq, name } => (
            CtlRequest::Outdate {
                resource: name,
                epoch,
                seq,
            },
            false,
        ),
    };
    match ctl::call(socket, &req) {
        Err((code, msg)) => {
            eprintln!("hastmonctl: {msg}");
            code
        }
        Ok(CtlResponse::Error { code, message }) => {
            eprintln!("hastmonctl: {message}");
            code
        }
        Ok(CtlResponse::Ok) => match req {
            CtlRequest::Role {
                role: Role::Primary,
                names,
            } => await_promotion(socket, names),
            _ => exit::OK,
        },
        Ok(CtlResponse::Status { resources }) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&resources).unwrap_or_default()
                );
            } else {
                print!("{}", render(&resources));
            }
            exit::OK
        }
    }
}

/// How long `role primary` waits for the watchdog's answer.
const PROMOTION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// `role primary` asks the watchdog for an epoch: wait (bounded) until every
/// named resource is primary, or report why the watchdog refused.
fn await_promotion(socket: &std::path::Path, names: Vec<String>) -> i32 {
    let begun = std::time::Instant::now();
    loop {
        let st = match ctl::call(
            socket,
            &CtlRequest::Status {
                names: names.clone(),
            },
        ) {
            Ok(CtlResponse::Status { resources }) => resources,
            Ok(_) => return exit::SOFTWARE,
            Err((code, msg)) => {
                eprintln!("hastmonctl: {msg}");
                return code;
            }
        };
        if st.iter().all(|r| r.role == Role::Primary) {
            return exit::OK;
        }
        let answered = st
            .iter()
            .all(|r| r.role == Role::Primary || (!r.takeover_pending && r.last_refusal.is_some()));
        if answered || begun.elapsed() >= PROMOTION_WAIT {
            for r in st.iter().filter(|r| r.role != Role::Primary) {
                let why = r
                    .last_refusal
                    .as_deref()
                    .unwrap_or("no answer from the watchdog");
                eprintln!("hastmonctl: {}: not promoted: {why}", r.name);
            }
            return exit::TEMPFAIL;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `hastmonctl status` text, shaped like hastctl's.
pub fn render(resources: &[ResourceStatus]) -> String {
    let mut s = String::new();
    for r in resources {
        let _ = writeln!(s, "{}:", r.name);
        let _ = writeln!(s, "  role: {}", r.role.as_str());
        let _ = writeln!(s, "  worker: {}", r.worker);
        let _ = writeln!(s, "  remotes:");
        for m in &r.remotes {
            let who = match (&m.node, m.role) {
                (Some(n), Some(role)) => format!(" ({n}, {})", role.as_str()),
                (Some(n), None) => format!(" ({n})"),
                _ => String::new(),
            };
            let state = if m.connected {
                "connected"
            } else {
                "disconnected"
            };
            let _ = writeln!(s, "    {}{who}: {state}", m.address);
        }
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(s, "  state: {state}");
        let _ = writeln!(s, "  epoch: {}", r.epoch);
        if r.outdated {
            let _ = writeln!(
                s,
                "  outdated: yes (the watchdog's mark: no takeover until the primary has resynced this copy)"
            );
        }
        if let Some(st) = &r.storage {
            let _ = writeln!(s, "  storage: {}, epoch {}", st.role.as_str(), st.epoch);
        }
        let _ = writeln!(s, "  attempts: {} of {}", r.attempts, r.attempts_max);
        let _ = writeln!(s, "  complaints: {}", r.complaints);
        let _ = writeln!(s, "  heartbeat: {} ms", r.heartbeat_ms);
        if let Some(l) = r.lease_ms {
            let _ = writeln!(s, "  lease: {l} ms left");
        }
        if let Some(p) = &r.primary {
            let _ = writeln!(s, "  primary: {p}");
        }
        if let Some(w) = &r.witness {
            let holder = w.primary.as_deref().unwrap_or("none");
            let _ = writeln!(s, "  granted: epoch {} to {holder}", w.epoch);
            for (n, (e, q)) in &w.outdated {
                let _ = writeln!(s, "  outdated: {n} (epoch {e}, seq {q})");
            }
        }
        if let Some(why) = &r.last_refusal {
            let _ = writeln!(s, "  refused: {why}");
        }
    }
    s
}
