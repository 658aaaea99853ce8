//! `hastctl`, the control utility, as in FreeBSD's HASTCTL(8): `create` and
//! `dump` work on the local components directly (no daemon needed); `role`,
//! `status` and `list` ask hastd over the control socket, and so does our
//! `lease` (with `role -E`, the fencing hooks `hastmon` drives), `attach`
//! (a repaired local component, `on_io_error`), `outdate` (a copy the
//! primary wrote without), `freeze`/`thaw`/`query` (freezefs(2): a group's writes held for a coherent copy) and `snapshot`
//! (a group's point-in-time images, `snapshot.rs`). This crate only
//! parses arguments, calls `hast-meta` or `hast-api`, and renders; every
//! failure is one line on stderr and a sysexits(3) status.

mod events;
mod render;
mod snapshot;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use hast_api::{Request, Response, Role};

/// sysexits(3) codes.
mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 64;
    pub const NOINPUT: i32 = 66;
    pub const CANTCREAT: i32 = 73;
    pub const SOFTWARE: i32 = 70;
    pub const IOERR: i32 = 74;
    pub const TEMPFAIL: i32 = 75;
    pub const PROTOCOL: i32 = 76;
}

const DEFAULT_EXTENTSIZE: u32 = 2 << 20;
/// 2048 extents of 2 MiB: a random writer over up to 4 GiB pays no
/// synchronous activemap write in steady state (DRBD's default activity
/// log covers about 4.8 GiB). The price: up to 4 GiB resynced after a
/// crash of the primary. FreeBSD's 64 (128 MiB) made a random writer over
/// 4 GiB 40 % slower at QD1 (bench/workingset.sh, README "Performance").
const DEFAULT_KEEPDIRTY: u32 = 2048;

#[derive(Parser, Debug)]
#[command(
    name = "hastctl",
    version,
    about = "Highly Available Storage control utility"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Print debugging information (repeatable).
    #[arg(short = 'd', action = clap::ArgAction::Count, global = true)]
    debug: u8,
    /// Configuration file.
    #[arg(
        short = 'c',
        value_name = "config",
        default_value = "/etc/hast.conf",
        global = true
    )]
    config: PathBuf,
    /// Node name used to pick `on <node>` sections (default: the host name).
    #[arg(long, value_name = "NAME", global = true, env = "HAST_NODE")]
    node: Option<String>,
}

/// The command line as clap sees it (shell completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Initialize the local component of the given resources.
    #[command(
        override_usage = "hastctl create [-d] [-c config] [--force] [-e extentsize] [-k keepdirty] [-m mediasize] name ..."
    )]
    Create {
        /// Overwrite valid metadata (its resuid, counters and epoch: the
        /// copy's history is lost), as drbdadm create-md asks before doing.
        #[arg(long)]
        force: bool,
        /// Extent size (k, M, G suffixes), a power of two >= 4k. Default 2M.
        #[arg(short = 'e', value_name = "extentsize")]
        extentsize: Option<String>,
        /// Number of most recently used extents kept dirty. Default 2048 (4 GiB of 2M extents).
        #[arg(short = 'k', value_name = "keepdirty")]
        keepdirty: Option<u32>,
        /// Size of the provider to use (k, M, G, T suffixes). Default: all of it.
        #[arg(short = 'm', value_name = "mediasize")]
        mediasize: Option<String>,
        #[arg(required = true, value_name = "name")]
        names: Vec<String>,
    },
    /// Change the role of the given resources.
    #[command(
        override_usage = "hastctl role [-d] [-c config] [-E epoch] [--force] <init | primary | secondary> all | name ..."
    )]
    Role {
        /// Promote even while a primary peer is connected (a split-brain
        /// on purpose; refused with exit 77 otherwise, unless -E is given),
        /// or a copy marked outdated (see outdate; the mark is cleared).
        #[arg(long)]
        force: bool,
        /// Fencing token: promotion is refused (exit 77) below the stored
        /// epoch, which is raised to it otherwise. Without it a promotion
        /// raises the stored epoch by one.
        #[arg(short = 'E', long = "epoch", value_name = "epoch")]
        epoch: Option<u64>,
        #[arg(value_parser = parse_role, value_name = "init | primary | secondary")]
        role: Role,
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Give primary resources a lease: unless renewed within the given
    /// milliseconds, hastd demotes them to secondary itself; `-t 0`
    /// cancels the lease (the resource stays primary, without a deadline).
    #[command(override_usage = "hastctl lease [-d] [-c config] -t milliseconds all | name ...")]
    Lease {
        /// Lease length in milliseconds (1 to 86400000), from now: hastd ends it at
        /// min(its receipt + ms, hastctl's start + ms). 0 cancels the lease.
        #[arg(
            short = 't',
            value_name = "milliseconds",
            required = true,
            value_parser = clap::value_parser!(u64).range(0..=hast_api::LEASE_MS_MAX)
        )]
        ms: u64,
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Use a repaired local component again (`on_io_error`): a detached
    /// one is first resynced from the secondary; errors are cleared.
    #[command(override_usage = "hastctl attach [-d] [-c config] all | name ...")]
    Attach {
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Mark the copies of secondary (or init) resources outdated: the
    /// primary writes without them. hastd then refuses to promote them
    /// (exit 77) without --force until a resync from the primary
    /// completes, which clears the mark; hastmon runs this when its
    /// watchdog holds the node outdated. Refused while connected to the primary.
    #[command(override_usage = "hastctl outdate [-d] [-c config] all | name ...")]
    Outdate {
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Freeze primary resources as one group: new writes, trims and
    /// write-zeroes are held (never failed) until the thaw; returns once
    /// every acknowledged write is durable on both copies.
    #[command(override_usage = "hastctl freeze [-d] [-c config] [-t timeout] all | name ...")]
    Freeze {
        /// Seconds until the group thaws by itself: > 0 that many, 0 the
        /// shortest `freeze_timeout` of the group (default 60), < 0 none.
        #[arg(
            short = 't',
            value_name = "timeout",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        timeout: i64,
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Thaw frozen resources (with every resource frozen in the same
    /// group); fails if one was already thawed by anything else since its
    /// freeze (exit 65), or is not frozen (exit 64).
    #[command(override_usage = "hastctl thaw [-d] [-c config] all | name ...")]
    Thaw {
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// A coherent point-in-time image of primary resources: the group is
    /// frozen only while the images begin, then copied in the background
    /// (copy-before-write) to DIR/<name>.img, sparse raw; a bar on a
    /// terminal; removed if interrupted.
    #[command(
        override_usage = "hastctl snapshot [-d] [-c config] [-t timeout] [--json] -o dir all | name ..."
    )]
    Snapshot {
        /// Seconds the freeze may take at most before it thaws by itself:
        /// > 0 that many, 0 the shortest `freeze_timeout` of the group, < 0 none.
        #[arg(
            short = 't',
            value_name = "timeout",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        timeout: i64,
        /// Directory on this node for the images (must exist; no image may
        /// exist in it yet).
        #[arg(short = 'o', value_name = "dir", required = true)]
        dir: PathBuf,
        /// Progress and result as JSON Lines on stdout.
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "all | name")]
        names: Vec<String>,
    },
    /// Whether resources are frozen: exit 0 if all are, 1 if one is not;
    /// prints the state, the group, since when and the time left.
    #[command(override_usage = "hastctl query [-d] [-c config] name ...")]
    Query {
        #[arg(required = true, value_name = "name")]
        names: Vec<String>,
    },
    /// Verbose status of the resources.
    #[command(override_usage = "hastctl list [-d] [-c config] [--json] [all | name ...]")]
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "all | name")]
        names: Vec<String>,
    },
    /// Terse status of the resources.
    #[command(override_usage = "hastctl status [-d] [-c config] [--json] [all | name ...]")]
    Status {
        /// Print JSON for scripts: the fields of the text (name, status,
        /// role, local, remote); `list --json` has everything.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "all | name")]
        names: Vec<String>,
    },
    /// Dump the metadata stored on the local components.
    #[command(override_usage = "hastctl dump [-d] [-c config] [--json] [all | name ...]")]
    Dump {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "all | name")]
        names: Vec<String>,
    },
    /// The node's HA event journal: events not handled yet, failed or
    /// aborted (all of them with --all); `retry` handles some again.
    #[command(
        override_usage = "hastctl events [-d] [-c config] [--all] [--json] [--follow]\n       hastctl events retry [-d] [-c config] [-k kind] [seq ...]\n       hastctl events clear [-d] [-c config] [-k kind] [seq ...]",
        subcommand_negates_reqs = true
    )]
    Events {
        /// Also the events already handled (done).
        #[arg(long)]
        all: bool,
        /// Print JSON for scripts (JSON Lines with --follow).
        #[arg(long)]
        json: bool,
        /// Then print every change as it is recorded, until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(subcommand)]
        action: Option<EventsCmd>,
    },
}

#[derive(Subcommand, Debug)]
enum EventsCmd {
    /// Handle failed and aborted events again (all of them, those of one
    /// kind, or the given sequence numbers), like `ha_star -C`.
    #[command(override_usage = "hastctl events retry [-d] [-c config] [-k kind] [seq ...]")]
    Retry {
        /// Only events of this kind (role, connect, disconnect, syncstart,
        /// syncdone, syncintr, split-brain, io-error, detach, attach,
        /// promote, demote, fence, freeze, thaw).
        #[arg(short = 'k', value_name = "kind", value_parser = parse_kind)]
        kind: Option<hast_events::Kind>,
        #[arg(value_name = "seq")]
        seqs: Vec<u64>,
    },
    /// Dismiss failed and aborted events (all of them, those of one kind,
    /// or the given sequence numbers): they become done, not handled again.
    #[command(override_usage = "hastctl events clear [-d] [-c config] [-k kind] [seq ...]")]
    Clear {
        /// Only events of this kind.
        #[arg(short = 'k', value_name = "kind", value_parser = parse_kind)]
        kind: Option<hast_events::Kind>,
        #[arg(value_name = "seq")]
        seqs: Vec<u64>,
    },
}

fn parse_kind(s: &str) -> Result<hast_events::Kind, String> {
    s.parse()
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "init" => Ok(Role::Init),
        "primary" => Ok(Role::Primary),
        "secondary" => Ok(Role::Secondary),
        _ => Err(format!("invalid role \"{s}\" (init, primary or secondary)")),
    }
}

/// A failure: one line for stderr and the exit status.
struct Fail(i32, String);

type Res<T = ()> = Result<T, Fail>;

/// Entry point of the `hastctl` binary; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return exit::OK;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return exit::USAGE;
            }
            eprintln!("hastctl: {} (see hastctl --help)", usage_line(&e));
            return exit::USAGE;
        }
    };
    match run(&cli.common, cli.cmd) {
        Ok(()) => exit::OK,
        Err(Fail(code, msg)) => {
            eprintln!("hastctl: {msg}");
            code
        }
    }
}

/// clap's error as one line. Its first line may end in a colon with the
/// missing arguments on the lines after it ("the following required
/// arguments were not provided:"): those are the point, so they are kept.
fn usage_line(e: &clap::Error) -> String {
    let msg = e.to_string();
    let mut lines = msg.lines();
    let first = lines
        .next()
        .unwrap_or("bad arguments")
        .trim_start_matches("error: ")
        .to_string();
    if !first.ends_with(':') {
        return first;
    }
    let items: Vec<&str> = lines
        .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
        .map(str::trim)
        .collect();
    format!("{} {}", first, items.join(", "))
}

fn run(common: &Common, cmd: Cmd) -> Res {
    match cmd {
        Cmd::Create {
            force,
            extentsize,
            keepdirty,
            mediasize,
            names,
        } => create(common, force, extentsize, keepdirty, mediasize, &names),
        Cmd::Dump { json, names } => dump(common, json, &names),
        Cmd::Role {
            epoch,
            force,
            role,
            names,
        } => set_role(common, role, epoch, force, &names),
        Cmd::Lease { ms, names } => lease(common, ms, &names),
        Cmd::Attach { names } => attach(common, &names),
        Cmd::Outdate { names } => outdate(common, &names),
        Cmd::Freeze { timeout, names } => freeze(common, timeout, &names),
        Cmd::Thaw { names } => thaw(common, &names),
        Cmd::Query { names } => query(common, &names),
        Cmd::Snapshot {
            timeout,
            dir,
            json,
            names,
        } => {
            let cfg = load(common)?;
            select(&cfg, &names)?;
            let timeout = freeze_timeout(timeout)?;
            snapshot::run(&control_path(&cfg)?, &names, timeout, &dir, json)
        }
        Cmd::Status { json, names } => status(common, json, &names, false),
        Cmd::List { json, names } => status(common, json, &names, true),
        Cmd::Events {
            all,
            json,
            follow,
            action: None,
        } => events::list(&socket(common)?, all, json, follow),
        Cmd::Events {
            all,
            json,
            follow,
            action: Some(action),
        } => {
            let (clear, kind, seqs) = match action {
                EventsCmd::Retry { kind, seqs } => (false, kind, seqs),
                EventsCmd::Clear { kind, seqs } => (true, kind, seqs),
            };
            // Global options may sit between `events` and `retry`, so clap
            // cannot refuse these by itself.
            if all || json || follow {
                return Err(Fail(
                    exit::USAGE,
                    "events retry and clear take -k kind and sequence numbers, not --all, --json or --follow"
                        .into(),
                ));
            }
            events::retry_or_clear(&socket(common)?, clear, kind, seqs)
        }
    }
}

/// The control socket of the configuration's hastd.
fn socket(common: &Common) -> Res<PathBuf> {
    let cfg = load(common)?;
    let path = control_path(&cfg)?;
    if common.debug > 0 {
        eprintln!("hastctl: asking hastd at {}", path.display());
    }
    Ok(path)
}

fn load(common: &Common) -> Res<hast_conf::Config> {
    if common.debug > 0 {
        eprintln!("hastctl: reading {}", common.config.display());
    }
    hast_conf::load(&common.config, common.node.as_deref())
        .map_err(|e| Fail(e.exit_code(), e.to_string()))
}

/// The configured resources named on the command line (`all` or none = every one).
fn select<'a>(cfg: &'a hast_conf::Config, names: &[String]) -> Res<Vec<&'a hast_conf::Resource>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(cfg.resources.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            // 66 as in hastmonctl and hastcctl: the name is well formed,
            // what it names is missing (64 stays for a malformed command line).
            cfg.resource(n).ok_or_else(|| {
                Fail(
                    exit::NOINPUT,
                    format!("unknown resource \"{n}\" (not in {})", cfg.file.display()),
                )
            })
        })
        .collect()
}

fn meta_fail(e: hast_meta::MetaError) -> Fail {
    Fail(e.exit_code(), e.to_string())
}

fn create(
    common: &Common,
    force: bool,
    extentsize: Option<String>,
    keepdirty: Option<u32>,
    mediasize: Option<String>,
    names: &[String],
) -> Res {
    let extentsize = match extentsize {
        None => DEFAULT_EXTENTSIZE,
        Some(s) => hast_conf::parse_size(&s)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Fail(exit::USAGE, format!("invalid extent size \"{s}\"")))?,
    };
    let keepdirty = keepdirty.unwrap_or(DEFAULT_KEEPDIRTY);
    let mediasize = match mediasize {
        None => None,
        Some(s) => Some(
            hast_conf::parse_size(&s)
                .ok_or_else(|| Fail(exit::USAGE, format!("invalid media size \"{s}\"")))?,
        ),
    };
    if names.iter().any(|n| n == "all") {
        return Err(Fail(
            exit::USAGE,
            "create takes resource names, not \"all\"".into(),
        ));
    }
    let cfg = load(common)?;
    for r in select(&cfg, names)? {
        let _lock = lock_provider(&r.local)?;
        if !force {
            refuse_valid_metadata(&r.name, &r.local)?;
        }
        let h = hast_meta::Store::create(&r.local, &r.name, mediasize, extentsize, keepdirty)
            .map_err(meta_fail)?;
        if common.debug > 0 {
            eprintln!(
                "hastctl: {}: created, datasize {} extentsize {} keepdirty {}",
                r.name, h.datasize, h.extentsize, h.keepdirty
            );
        }
    }
    Ok(())
}

/// `create` without `--force` keeps valid metadata: re-initializing drops
/// the resuid, counters and epoch (a copy's history, on which the resync
/// direction and the fencing rules stand). Like drbdadm create-md, which asks
/// first; there is no one to ask here, so it refuses. Unreadable or invalid
/// metadata (a new provider, zeros) is created without a word.
fn refuse_valid_metadata(name: &str, path: &Path) -> Res {
    let Ok(store) = hast_meta::Store::open(path) else {
        return Ok(());
    };
    let Ok(picked) = store.read_header() else {
        return Ok(());
    };
    let h = &picked.header;
    Err(Fail(
        exit::CANTCREAT,
        format!(
            "{name}: {} already holds valid metadata (resource {}, epoch {}, localcnt {}, remotecnt {}): \
             not overwritten; hastctl create --force {name} re-initializes it",
            path.display(),
            h.name,
            h.epoch,
            h.localcnt,
            h.remotecnt
        ),
    ))
}

/// Takes the lock hastd holds on components it has open, so `create` cannot
/// overwrite the metadata of an active resource.
fn lock_provider(path: &Path) -> Res<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                exit::NOINPUT
            } else {
                exit::IOERR
            };
            Fail(code, format!("cannot open {}: {e}", path.display()))
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Fail(
            exit::TEMPFAIL,
            format!(
                "{} is in use by hastd (set the resource's role to init first)",
                path.display()
            ),
        ));
    }
    Ok(f)
}

fn dump(common: &Common, json: bool, names: &[String]) -> Res {
    let cfg = load(common)?;
    let mut out = String::new();
    let mut objects = Vec::new();
    for r in select(&cfg, names)? {
        let store = hast_meta::Store::open(&r.local).map_err(meta_fail)?;
        let picked = store.read_header().map_err(meta_fail)?;
        if json {
            objects.push(render::dump_json(&r.name, &picked));
        } else {
            out.push_str(&render::dump(&r.name, &picked));
        }
    }
    if json {
        out = to_json(&serde_json::json!({ "resources": objects }))?;
    }
    print!("{out}");
    Ok(())
}

fn to_json(v: &serde_json::Value) -> Res<String> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Fail(exit::SOFTWARE, e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn control_path(cfg: &hast_conf::Config) -> Res<PathBuf> {
    match &cfg.control {
        hast_conf::Addr::Unix(p) => Ok(p.clone()),
        other => Err(Fail(
            hast_conf::ConfigError::EX_CONFIG,
            format!("control address {other} is not a uds:// path"),
        )),
    }
}

fn call(common: &Common, cfg: &hast_conf::Config, req: Request) -> Res<Response> {
    let path = control_path(cfg)?;
    if common.debug > 0 {
        eprintln!("hastctl: asking hastd at {}", path.display());
    }
    match hast_api::call(&path, req) {
        Ok(Response::Error(e)) => Err(Fail(e.kind.exit_code(), e.message)),
        Ok(r) => Ok(r),
        Err(e) => Err(Fail(e.exit_code(), e.to_string())),
    }
}

fn set_role(common: &Common, role: Role, epoch: Option<u64>, force: bool, names: &[String]) -> Res {
    let cfg = load(common)?;
    // Check names locally first so a typo changes nothing anywhere.
    select(&cfg, names)?;
    let ask = |names: &[String]| -> Res<Vec<hast_api::RoleOutcome>> {
        match call(
            common,
            &cfg,
            Request::Role {
                role,
                names: names.to_vec(),
                epoch,
                force,
            },
        )? {
            Response::Role(outcomes) => Ok(outcomes),
            _ => Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into())),
        }
    };
    let mut outcomes = ask(names)?;
    // A peer that looks primary may be demoting right now (the switchover:
    // `role secondary` there, then at once `role primary` here, before this
    // node saw the link go): ask again for a while before refusing.
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(hast_api::PEER_IS_PRIMARY_PATIENCE_MS);
    loop {
        let waiting: Vec<String> = outcomes
            .iter()
            .filter(
                |o| matches!(&o.result, Err(e) if e.message.contains(hast_api::PEER_IS_PRIMARY)),
            )
            .map(|o| o.name.clone())
            .collect();
        if waiting.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let again = ask(&waiting)?;
        for o in again {
            if let Some(slot) = outcomes.iter_mut().find(|x| x.name == o.name) {
                *slot = o;
            }
        }
    }
    let failures = outcomes.into_iter().filter_map(|o| match o.result {
        Err(e) => Some((o.name, e)),
        Ok(_) => {
            if common.debug > 0 {
                let epoch = o.epoch.map_or_else(|| "unknown".into(), |e| e.to_string());
                eprintln!("hastctl: {}: role {role}, epoch {epoch}", o.name);
            }
            None
        }
    });
    report(failures)
}

fn lease(common: &Common, ms: u64, names: &[String]) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let Response::Lease(outcomes) = call(
        common,
        &cfg,
        Request::Lease {
            ms,
            names: names.to_vec(),
            // Counted from now, not from when hastd reads the request: one
            // that waits in the socket (hastd frozen) cannot extend the lease.
            not_after: Some(hast_sys::mono_now_ns().saturating_add(ms.saturating_mul(1_000_000))),
        },
    )?
    else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    let failures = outcomes.into_iter().filter_map(|o| match o.result {
        Err(e) => Some((o.name, e)),
        Ok(granted) => {
            if common.debug > 0 && ms == 0 {
                eprintln!("hastctl: {}: lease cancelled", o.name);
            } else if common.debug > 0 {
                eprintln!("hastctl: {}: lease {granted} ms", o.name);
            }
            None
        }
    });
    report(failures)
}

fn attach(common: &Common, names: &[String]) -> Res {
    let req = Request::Attach {
        names: names.to_vec(),
    };
    per_resource(common, names, req, |r| match r {
        Response::Attach(o) => Some(o),
        _ => None,
    })
}

fn outdate(common: &Common, names: &[String]) -> Res {
    let req = Request::Outdate {
        names: names.to_vec(),
    };
    per_resource(common, names, req, |r| match r {
        Response::Outdate(o) => Some(o),
        _ => None,
    })
}

/// Sends `req` for `names` and reports its per-resource outcomes (the
/// answer `outcomes` picks out of hastd's response).
fn per_resource(
    common: &Common,
    names: &[String],
    req: Request,
    outcomes: fn(Response) -> Option<Vec<hast_api::ResourceOutcome>>,
) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let Some(outcomes) = outcomes(call(common, &cfg, req)?) else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    say_outcomes(outcomes)
}

/// What `attach` or `outdate` did, one line per resource on stderr; the
/// failures decide the exit status.
fn say_outcomes(outcomes: Vec<hast_api::ResourceOutcome>) -> Res {
    let failures = outcomes.into_iter().filter_map(|o| match o.result {
        Err(e) => Some((o.name, e)),
        Ok(msg) => {
            eprintln!("hastctl: {}: {msg}", o.name);
            None
        }
    });
    report(failures)
}

/// `-t timeout` of `freeze` and `snapshot`.
fn freeze_timeout(t: i64) -> Res<hast_api::FreezeTimeout> {
    Ok(match t {
        t if t < 0 => hast_api::FreezeTimeout::Never,
        0 => hast_api::FreezeTimeout::Configured,
        t if t.unsigned_abs() > hast_api::FREEZE_TIMEOUT_MAX_SECS => {
            return Err(Fail(
                exit::USAGE,
                format!(
                    "freeze timeout of {t} s: at most {} s",
                    hast_api::FREEZE_TIMEOUT_MAX_SECS
                ),
            ))
        }
        t => hast_api::FreezeTimeout::Seconds(t.unsigned_abs()),
    })
}

fn freeze(common: &Common, timeout: i64, names: &[String]) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let timeout = freeze_timeout(timeout)?;
    let Response::Frozen(done) = call(
        common,
        &cfg,
        Request::Freeze {
            names: names.to_vec(),
            timeout,
        },
    )?
    else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    if common.debug > 0 {
        let t = done
            .timeout_ms
            .map_or_else(|| "no timeout".into(), |ms| format!("thaws in {ms} ms"));
        eprintln!(
            "hastctl: frozen: {} (generation {}, {t}, took {} ms)",
            done.names.join(" "),
            done.generation,
            done.took_ms
        );
    }
    Ok(())
}

fn thaw(common: &Common, names: &[String]) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let Response::Thaw(outcomes) = call(
        common,
        &cfg,
        Request::Thaw {
            names: names.to_vec(),
        },
    )?
    else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    let failures = outcomes.into_iter().filter_map(|o| match o.result {
        Err(e) => Some((o.name, e)),
        Ok(msg) => {
            if common.debug > 0 {
                eprintln!("hastctl: {}: {msg}", o.name);
            }
            None
        }
    });
    report(failures)
}

/// `query`: one line per resource on stdout; exit 0 if every one is
/// frozen, 1 otherwise (freezefs(2)'s query).
fn query(common: &Common, names: &[String]) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let Response::Status(list) = call(
        common,
        &cfg,
        Request::Status {
            names: names.to_vec(),
        },
    )?
    else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    print!("{}", render::query(&list));
    if list.iter().all(|r| r.frozen) {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// Prints one line per resource that failed and exits with the status of
/// the first failure.
fn report(failures: impl Iterator<Item = (String, hast_api::ApiError)>) -> Res {
    let mut first = None;
    for (name, e) in failures {
        eprintln!("hastctl: {name}: {}", e.message);
        first.get_or_insert(e.kind.exit_code());
    }
    match first {
        // Each failure was already printed on its own line.
        Some(code) => std::process::exit(code),
        None => Ok(()),
    }
}

fn status(common: &Common, json: bool, names: &[String], verbose: bool) -> Res {
    let cfg = load(common)?;
    select(&cfg, names)?;
    let Response::Status(list) = call(
        common,
        &cfg,
        Request::Status {
            names: names.to_vec(),
        },
    )?
    else {
        return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into()));
    };
    let text = if json && verbose {
        to_json(&serde_json::json!({ "resources": list }))?
    } else if json {
        to_json(&render::status_json(&list))?
    } else if verbose {
        render::list(&list)
    } else {
        render::status(&list)
    };
    print!("{text}");
    Ok(())
}
