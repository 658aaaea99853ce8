//! The life of a daemon process, the same for hastd and hastmon: lock the
//! pidfile, fork into the background unless `-F`, start logging, record the
//! pid, build the runtime (`start`); once every listener is bound, detach
//! from the terminal (`Detach::ready`); then wait for signals, telling
//! systemd about reloads and the stop (`Signals`). Every failure is a
//! sysexits(3) status.
//!
//! Without `-F` the process that was started waits until the daemon is
//! ready, so a daemon that cannot start (a port in use, a bad `control`
//! path) says why on the terminal and the command exits with the daemon's
//! status, as a foreground start would: the background child keeps the
//! terminal's stderr until `ready`, and its exit status (or the ready byte
//! on a pipe) is what the parent exits with.

use std::ffi::CStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

use crate::exit;
use crate::pidfile::{PidFile, PidFileError};

/// A started daemon: its locked pidfile, its runtime and what detaches it.
pub struct Daemon {
    pub pidfile: PidFile,
    pub runtime: tokio::runtime::Runtime,
    pub detach: Detach,
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

/// The end of start-up of a background daemon: its stdio still on the
/// terminal and the parent waiting on `pipe`. Nothing to do in the
/// foreground.
pub struct Detach {
    /// The write end the parent reads; `None` in the foreground or once
    /// ready.
    pipe: Option<OwnedFd>,
    /// Where the log goes when there is no syslog daemon.
    fallback_log: PathBuf,
}

impl Detach {
    /// Start-up succeeded: logging moves to syslog (or, without a syslog
    /// daemon, to the fallback file), stdio to /dev/null, and the parent
    /// exits 0. A no-op in the foreground and after the first call.
    pub fn ready(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        crate::logging::detach(&self.fallback_log);
        // SAFETY: plain descriptor calls on descriptors we own; /dev/null
        // replaces 0, 1 and 2 so that nothing writes to the terminal.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..=2 {
                    libc::dup2(null, fd);
                }
                if null > 2 {
                    libc::close(null);
                }
            }
            libc::write(pipe.as_raw_fd(), b"R".as_ptr().cast(), 1);
        }
    }
}

/// Start-up before any thread exists. `ident` names the program in messages
/// and syslog; errors before `Detach::ready` go to stderr (the terminal),
/// as one line naming the cause. `fallback_log` is where a background
/// daemon logs when there is no syslog daemon (no `/dev/log`).
pub fn start(
    ident: &'static CStr,
    pid_path: &Path,
    foreground: bool,
    debug: u8,
    threads: Threads,
    fallback_log: &Path,
) -> Result<Daemon, i32> {
    let name = ident.to_string_lossy();
    let mut pidfile = PidFile::acquire(&name, pid_path).map_err(|e| {
        eprintln!("{name}: {e}");
        match e {
            PidFileError::Running { .. } => exit::TEMPFAIL,
            PidFileError::Io { .. } => exit::CANTCREAT,
        }
    })?;
    let pipe = if foreground {
        None
    } else {
        Some(background(&name)?)
    };
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
    Ok(Daemon {
        pidfile,
        runtime,
        detach: Detach {
            pipe,
            fallback_log: fallback_log.to_path_buf(),
        },
    })
}

/// Forks; the parent waits for the child's ready byte (exit 0) or its exit
/// (its status) and never returns. The child, in a session of its own,
/// returns the pipe's write end.
fn background(name: &str) -> Result<OwnedFd, i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "{name}: cannot daemonize: {}",
            std::io::Error::last_os_error()
        );
        return Err(exit::OSERR);
    }
    // SAFETY: both were just created and are owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no threads exist yet (the runtime is built after this), so
    // forking here is sound.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!(
                "{name}: cannot daemonize: {}",
                std::io::Error::last_os_error()
            );
            Err(exit::OSERR)
        }
        0 => {
            drop(rd);
            // SAFETY: the child is no process group leader, so setsid
            // succeeds: no controlling terminal, no SIGHUP when it closes.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        child => {
            drop(wr);
            let mut byte = [0u8; 1];
            let mut file = std::fs::File::from(rd);
            let ready = loop {
                match file.read(&mut byte) {
                    Ok(n) => break n == 1,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break false,
                }
            };
            if ready {
                std::process::exit(exit::OK);
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            let waited = unsafe { libc::waitpid(child, &mut status, 0) };
            let code = if waited == child && libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if waited == child && libc::WIFSIGNALED(status) {
                eprintln!(
                    "{name}: killed by signal {} during start-up",
                    libc::WTERMSIG(status)
                );
                exit::SOFTWARE
            } else {
                exit::OSERR
            };
            std::process::exit(code);
        }
    }
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or SIGINT (which one, for the log line).
    Stop(&'static str),
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
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
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
