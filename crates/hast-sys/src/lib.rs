//! What every hast daemon (`hastd`, `hastmon`) needs from the system, in
//! one place: start-up and signals (`daemon`), the locked pidfile, logging through `tracing` to stderr or
//! syslog(3), the root-only control socket, the sysexits(3) codes, and
//! CLOCK_MONOTONIC deadlines passed between processes (`clock`).

pub mod clock;
pub mod daemon;
pub mod logging;
pub mod pidfile;
pub mod sock;
pub mod tcp;

pub use clock::{mono_now_ns, mono_ns_to_instant};

/// sysexits(3) codes used by the daemons and their control tools.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 64;
    pub const DATAERR: i32 = 65;
    pub const NOINPUT: i32 = 66;
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const OSERR: i32 = 71;
    pub const CANTCREAT: i32 = 73;
    pub const IOERR: i32 = 74;
    pub const TEMPFAIL: i32 = 75;
    pub const NOPERM: i32 = 77;
    pub const CONFIG: i32 = 78;
}

/// `PROGRAM --completions SHELL` (bash, zsh, fish, elvish, powershell):
/// prints the shell's completion script for `command` and returns the exit
/// status; `None` for any other command line. The thin binaries in `src/bin`
/// call it before parsing, so the flag stays out of `--help` (which the
/// manual pages are checked against) and packagers get the scripts from the
/// built binaries (`make install`, the Debian package).
pub fn completions(command: impl FnOnce() -> clap::Command) -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "--completions" {
        return None;
    }
    let mut cmd = command();
    let name = cmd.get_name().to_string();
    let shell = args
        .next()
        .and_then(|s| s.to_str()?.parse::<clap_complete::Shell>().ok());
    match (shell, args.next()) {
        (Some(shell), None) => {
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            Some(exit::OK)
        }
        _ => {
            eprintln!("usage: {name} --completions bash|zsh|fish|elvish|powershell");
            Some(exit::USAGE)
        }
    }
}

/// What every hast command does with a command line clap refused: help or
/// the version is printed (exit 0); anything else is one line naming the
/// problem and the usage, exit 64 (`EX_USAGE`).
pub fn usage_error(program: &str, usage: &str, e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return exit::OK;
    }
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("bad arguments");
    eprintln!("{program}: {}", first.trim_start_matches("error: "));
    eprintln!("usage: {usage}");
    exit::USAGE
}
