//! hastcd's command line, as STACD(8) has it:
//! `hastcd [-h] [--version] [-f FILE] [-s] [--tron] [--idl FILE]`.
//! The daemon (`daemon.rs`) takes the parsed [`HastcdArgs`]; this file only
//! parses, so `src/bin/hastcd.rs` stays a call.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

pub const USAGE: &str = "hastcd [-h] [--version] [-f FILE] [-s] [--tron] [--idl FILE]";

/// The connector's arguments.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "hastcd",
    version,
    about = "hast connector: one stable local NBD endpoint per resource, following the primary",
    override_usage = USAGE
)]
pub struct HastcdArgs {
    /// Configuration file.
    #[arg(short = 'f', long = "conf-file", value_name = "FILE", default_value = crate::conf::DEFAULT_PATH)]
    pub file: PathBuf,
    /// Log to syslog instead of stderr.
    #[arg(short = 's', long = "syslog")]
    pub syslog: bool,
    /// Trace on from the start (as `hastcctl tron`).
    #[arg(long)]
    pub tron: bool,
    /// Write the D-Bus introspection XML of org.hast.connector to FILE and exit.
    #[arg(long, value_name = "FILE")]
    pub idl: Option<PathBuf>,
}

/// The command line as clap sees it (shell completions).
pub fn command() -> clap::Command {
    <HastcdArgs as clap::CommandFactory>::command()
}

impl HastcdArgs {
    /// Parses `args` (the program name first). `Err` is the exit status
    /// after help or the version was printed (0) or a usage error (64).
    pub fn parse_from_args<I, T>(args: I) -> Result<HastcdArgs, i32>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        HastcdArgs::try_parse_from(args).map_err(|e| hast_sys::usage_error("hastcd", USAGE, &e))
    }

    /// Parses the process's arguments.
    pub fn from_env() -> Result<HastcdArgs, i32> {
        HastcdArgs::parse_from_args(std::env::args_os())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<HastcdArgs, i32> {
        HastcdArgs::parse_from_args(std::iter::once("hastcd").chain(a.iter().copied()))
    }

    #[test]
    fn table() {
        let dflt = HastcdArgs {
            file: PathBuf::from("/etc/hast/hastcd.conf"),
            syslog: false,
            tron: false,
            idl: None,
        };
        let cases: &[(&[&str], Result<HastcdArgs, i32>)] = &[
            (&[], Ok(dflt.clone())),
            (
                &["-f", "/x.conf", "-s", "--tron"],
                Ok(HastcdArgs {
                    file: "/x.conf".into(),
                    syslog: true,
                    tron: true,
                    ..dflt.clone()
                }),
            ),
            (
                &["--conf-file=/y", "--syslog", "--idl", "/tmp/i.xml"],
                Ok(HastcdArgs {
                    file: "/y".into(),
                    syslog: true,
                    idl: Some("/tmp/i.xml".into()),
                    ..dflt.clone()
                }),
            ),
            (&["-h"], Err(0)),
            (&["--version"], Err(0)),
            (&["-x"], Err(64)),
            (&["-f"], Err(64)),
            (&["--idl"], Err(64)),
            (&["extra"], Err(64)),
        ];
        for (a, want) in cases {
            assert_eq!(&args(a), want, "{a:?}");
        }
    }
}
