//! Child processes owned by a test, and commands run under a time bound.
//!
//! A [`Proc`] keeps its `Child` until it has reaped it, so its PID cannot be reused
//! by another process while we may still signal it: every kill here is by that PID,
//! never by name. Dropping a running [`Proc`] stops it (SIGTERM, then SIGKILL after a
//! bound). [`run`] never waits forever: past its timeout the command is SIGKILLed and
//! the test fails with the command line in the message.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often bounded waits poll.
const POLL_INTERVAL_MS: u64 = 10;
/// Default grace between SIGTERM and SIGKILL when a [`Proc`] is dropped.
const DROP_GRACE_MS: u64 = 10_000;

/// A child process owned by a test.
pub struct Proc {
    child: Child,
    name: String,
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawn `cmd`. With `log`, stdout and stderr are appended to that file; without,
    /// they are inherited. stdin is always /dev/null.
    pub fn spawn(cmd: &mut Command, name: &str, log: Option<&Path>) -> std::io::Result<Proc> {
        cmd.stdin(Stdio::null());
        if let Some(path) = log {
            let f = File::options().create(true).append(true).open(path)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        let child = cmd.spawn()?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log: log.map(Path::to_path_buf),
            status: None,
        })
    }

    /// The process id (stable until the process is reaped by this `Proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file, if the output goes to one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Exit status if the process has exited (reaps it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Send `sig` to the process by PID, if it has not been reaped yet.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_wait().is_some() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with a PID we spawned and have not reaped (so it cannot
        // have been reused); no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Wait at most `bound` for the process to exit.
    pub fn wait_timeout(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether
    /// the process went down on SIGTERM alone.
    pub fn stop(&mut self, grace: Duration) -> (ExitStatus, bool) {
        if let Some(st) = self.try_wait() {
            return (st, true);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return (st, true);
        }
        (self.kill9(), false)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        self.signal(libc::SIGKILL);
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(st) => st,
            None => panic!(
                "{} (pid {}) survived SIGKILL for 30 s",
                self.name,
                self.pid()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let (_, clean) = self.stop(Duration::from_millis(DROP_GRACE_MS));
            if !clean {
                eprintln!("{} (pid {}) ignored SIGTERM; killed", self.name, self.pid());
            }
        }
    }
}

/// Describe a command for messages: program and arguments.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion with stdin closed and output captured; SIGKILL it and
/// panic if it runs longer than `bound`. Panics if it cannot be started.
pub fn run(cmd: &mut Command, bound: Duration) -> Output {
    let what = describe(cmd);
    try_run(cmd, bound)
        .unwrap_or_else(|| panic!("`{what}` did not finish within {bound:?}; killed"))
}

/// [`run`], but a command that outlives `bound` is SIGKILLed and gives `None`
/// (for queries of daemons that may be paused on purpose).
pub fn try_run(cmd: &mut Command, bound: Duration) -> Option<Output> {
    let what = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("waiting for `{what}`: {e}"),
        }
        if Instant::now() >= deadline {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
            // Do not join the readers: a grandchild may still hold the pipes.
            return None;
        }
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    };
    let stdout = out_reader.map(join_reader).unwrap_or_default();
    let stderr = err_reader.map(join_reader).unwrap_or_default();
    Some(Output {
        status,
        stdout,
        stderr,
    })
}

/// [`run`], and panic with its output unless it exits 0. Returns stdout as text.
pub fn run_ok(cmd: &mut Command, bound: Duration) -> String {
    let what = describe(cmd);
    let out = run(cmd, bound);
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(h: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// Poll `cond` every few milliseconds until it returns `Some`, for at most `bound`.
pub fn wait_for<T>(bound: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5));
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
