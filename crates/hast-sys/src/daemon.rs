//! The life of a daemon process, the same for hastd and hastmon: lock the
//! pidfile, detach unless `-F`, start logging, record the pid, build the
//! runtime (`start`); then wait for signals, telling systemd about reloads
//! and the stop (`Signals`). Every failure is a sysexits(3) status.

use std::ffi::CStr;
use std::path::Path;

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

use crate::exit;
use crate::pidfile::{PidFile, PidFileError};

/// A started daemon: its locked pidfile and its runtime.
pub struct Daemon {
    pub pidfile: PidFile,
    pub runtime: tokio::runtime::Runtime,
}

/// Which runtime a daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// tokio's multi-thread scheduler, a worker per core.
    PerCore,
    /// Everything on the thread that called `block_on` (blocking calls still
    /// go to tokio's blocking pool), unless `TOKIO_WORKER_THREADS` is set in
    /// the environment: then a multi-thread scheduler with that many workers.
    One,
}

/// Start-up before any thread exists. `ident` names the program in messages
/// and syslog; errors before logging starts go to stderr.
pub fn start(
    ident: &'static CStr,
    pid_path: &Path,
    foreground: bool,
    debug: u8,
    threads: Threads,
) -> Result<Daemon, i32> {
    let name = ident.to_string_lossy();
    let mut pidfile = PidFile::acquire(&name, pid_path).map_err(|e| {
        eprintln!("{name}: {e}");
        match e {
            PidFileError::Running { .. } => exit::TEMPFAIL,
            PidFileError::Io { .. } => exit::CANTCREAT,
        }
    })?;
    if !foreground {
        // SAFETY: no threads exist yet (the runtime is built below), so
        // forking here is sound. nochdir=1 keeps relative paths valid;
        // noclose=0 detaches from the terminal.
        if unsafe { libc::daemon(1, 0) } != 0 {
            eprintln!(
                "{name}: cannot daemonize: {}",
                std::io::Error::last_os_error()
            );
            return Err(exit::OSERR);
        }
    }
    crate::logging::init(ident, debug, !foreground);
    if let Err(e) = pidfile.write_pid() {
        tracing::error!("cannot write pidfile {}: {e}", pid_path.display());
        return Err(exit::CANTCREAT);
    }
    let one = threads == Threads::One && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    let mut builder = if one {
        tokio::runtime::Builder::new_current_thread()
    } else {
        // Reads TOKIO_WORKER_THREADS itself.
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .thread_name(name.into_owned())
        .build()
        .map_err(|e| {
            tracing::error!("cannot start runtime: {e}");
            exit::OSERR
        })?;
    Ok(Daemon { pidfile, runtime })
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

pub struct Signals {
    hup: Stream,
    term: Stream,
    int: Stream,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub fn new() -> Result<Signals, i32> {
        match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(hup), Ok(term), Ok(int)) => Ok(Signals { hup, term, int }),
            _ => {
                tracing::error!("cannot install signal handlers");
                Err(exit::SOFTWARE)
            }
        }
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
        }
    }
}

/// Tells systemd (`Type=notify`) where the daemon is; a no-op elsewhere.
pub fn notify(state: Notify) {
    let s = match state {
        Notify::Ready => sd_notify::NotifyState::Ready,
        Notify::Reloading => sd_notify::NotifyState::Reloading,
        Notify::Stopping => sd_notify::NotifyState::Stopping,
    };
    let _ = sd_notify::notify(false, &[s]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    Ready,
    Reloading,
    Stopping,
}
