//! `hastd`, the storage daemon: one task per resource owning its role and
//! local component, the data path that serves NBD clients while primary,
//! and the control socket `hastctl` talks to.
//!
//! Code map: [`daemon`] (startup, signals, reload, shutdown), [`resource`]
//! (role state machine per resource), [`datapath`] (the I/O path: gate,
//! range lock, activemap, lease, peer fencing, local component),
//! [`nbdfront`] (binds the NBD server of `hast-nbd` to the data paths),
//! [`control`] (the control socket), [`discovery`] (the read-only
//! discovery listener the connector polls), [`metrics`] (the Prometheus
//! endpoint, `metrics_listen`), [`epoch`] (the fencing-token rules of
//! role changes), [`hook`] (bounded runs of the operator's shell hooks),
//! [`freeze`] (`hastctl freeze / thaw`: groups of primaries whose writes are
//! held, the timeout and thaw rules), [`snapshot`] (`hastctl snapshot`:
//! a group's point-in-time images, copied in the background).

mod control;
mod daemon;
mod datapath;
mod discovery;
mod epoch;
mod events;
mod freeze;
mod hook;
mod link;
mod metrics;
mod nbdfront;
mod nbdtls;
mod remotes;
mod replication;
mod resource;
mod snapshot;

use std::path::PathBuf;

use clap::Parser;

/// sysexits(3) codes used by the daemon.
pub use hast_sys::exit;

#[derive(Parser, Debug)]
#[command(
    name = "hastd",
    version,
    about = "Highly Available Storage daemon",
    override_usage = "hastd [-dFh] [-c config] [-P pidfile] [--node NAME]"
)]
pub struct Args {
    /// Print debugging information; repeat to raise the level.
    #[arg(short = 'd', action = clap::ArgAction::Count)]
    pub debug: u8,
    /// Stay in the foreground and log to stderr.
    #[arg(short = 'F')]
    pub foreground: bool,
    /// Configuration file.
    #[arg(short = 'c', value_name = "config", default_value = "/etc/hast.conf")]
    pub config: PathBuf,
    /// Pidfile (overrides the configuration's `pidfile`).
    #[arg(short = 'P', value_name = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// Node name used to pick `on <node>` sections (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

/// The command line as clap sees it (shell completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// Entry point of the `hastd` binary; returns the process exit status.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            return hast_sys::usage_error(
                "hastd",
                "hastd [-dFh] [-c config] [-P pidfile] [--node NAME]",
                &e,
            )
        }
    };
    daemon::main(args)
}
