//! Logging through `tracing`: one line per event, to stderr in the
//! foreground (systemd's journal picks it up) or, once a background daemon
//! is ready, to syslog(3) as FreeBSD's hastd does. Where no syslog daemon
//! listens (no `/dev/log`: a container, a minimal VM) syslog(3) would drop
//! every line, so the daemon appends to a file instead (`detach`; hastd's
//! `<state_dir>/hastd.log`, hastmon's `<state_dir>/hastmon.log`).

use std::ffi::CString;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where the lines of a background daemon go.
enum Sink {
    /// Start-up: warnings and errors to the terminal, as `ident: LEVEL
    /// message`; every line kept for the log proper (`detach`).
    Terminal(&'static std::ffi::CStr, Vec<Vec<u8>>),
    Syslog,
    File(std::fs::File),
    /// Neither syslog nor the file could be opened (said on the terminal
    /// before detaching).
    Nowhere,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// `-d` raises the level once per flag; `RUST_LOG` overrides it.
/// `ident` names the program in syslog (e.g. `c"hastd"`). `background`:
/// lines go to the terminal until `detach`, then to syslog or a file.
pub fn init(ident: &'static std::ffi::CStr, debug: u8, background: bool) {
    let level = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let res = if background {
        *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Sink::Terminal(ident, Vec::new()));
        builder.with_ansi(false).with_writer(Background).try_init()
    } else {
        use std::io::IsTerminal;
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init()
    };
    // Already initialised (tests): keep the existing subscriber.
    drop(res);
}

/// Whether a syslog daemon listens on `/dev/log` (datagram, as glibc's
/// syslog(3) tries first, or stream).
pub fn syslog_available() -> bool {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let path = std::path::Path::new("/dev/log");
    UnixDatagram::unbound().is_ok_and(|s| s.connect(path).is_ok())
        || UnixStream::connect(path).is_ok()
}

/// A background daemon's start-up is over: from now on lines go to syslog,
/// or to `fallback` (appended, created 0640) when no syslog daemon listens.
/// Said on the terminal while it is still there.
pub fn detach(fallback: &std::path::Path) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(Sink::Terminal(ident, kept)) = sink.take() else {
        return;
    };
    *sink = Some(open_sink(ident, fallback));
    // The start-up's lines, in the log they belong to.
    if let Some(s) = sink.as_mut() {
        for line in kept {
            s.put(&line);
        }
    }
}

fn open_sink(ident: &'static std::ffi::CStr, fallback: &std::path::Path) -> Sink {
    let name = ident.to_string_lossy();
    if syslog_available() {
        // SAFETY: the identity string is 'static; openlog keeps the pointer.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        return Sink::Syslog;
    }
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = fallback.parent() {
        // hastmon's state_dir may not exist before its first saved state.
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(fallback)
    {
        Ok(f) => {
            eprintln!(
                "{name}: no syslog daemon (/dev/log): logging to {}",
                fallback.display()
            );
            Sink::File(f)
        }
        Err(e) => {
            eprintln!(
                "{name}: no syslog daemon (/dev/log) and cannot open {}: {e}; nothing will be logged (run with -F to log to stderr)",
                fallback.display()
            );
            Sink::Nowhere
        }
    }
}

impl Sink {
    fn put(&mut self, line: &[u8]) {
        match self {
            Sink::Terminal(ident, kept) => {
                let bare = untimed(line);
                if bare.starts_with(b"WARN") || bare.starts_with(b"ERROR") {
                    let mut out = ident.to_bytes().to_vec();
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(bare);
                    out.push(b'\n');
                    let _ = std::io::stderr().write_all(&out);
                }
                kept.push(line.to_vec());
            }
            Sink::File(f) => {
                let _ = f.write_all(line);
            }
            Sink::Syslog => syslog_line(untimed(line)),
            Sink::Nowhere => {}
        }
    }
}

/// The writer of a background daemon: one line per event to the current
/// sink.
#[derive(Clone, Copy)]
struct Background;

struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for Background {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The line without its leading timestamp (syslog and the terminal's
/// one-line errors have their own context) and surrounding blanks.
fn untimed(line: &[u8]) -> &[u8] {
    let line = line.trim_ascii();
    if line.first().is_some_and(u8::is_ascii_digit) {
        if let Some(sp) = line.iter().position(|&b| b == b' ') {
            return line[sp..].trim_ascii_start();
        }
    }
    line
}

impl Drop for Line {
    fn drop(&mut self) {
        let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sink.as_mut() {
            s.put(&self.0);
        }
    }
}

fn syslog_line(line: &[u8]) {
    let text: Vec<u8> = line
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b'\n')
        .collect();
    let prio = if text.windows(5).any(|w| w == b"ERROR") {
        libc::LOG_ERR
    } else if text.windows(4).any(|w| w == b"WARN") {
        libc::LOG_WARNING
    } else {
        libc::LOG_INFO
    };
    if let Ok(msg) = CString::new(text) {
        // SAFETY: "%s" with one NUL-terminated argument.
        unsafe { libc::syslog(prio, c"%s".as_ptr(), msg.as_ptr()) };
    }
}

#[derive(Clone, Copy)]
struct Syslog;

struct SyslogLine(Vec<u8>);

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine(Vec::with_capacity(256))
    }
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        syslog_line(&self.0);
    }
}

/// Switches a daemon's log level at run time (`hastcctl tron` / `troff`).
pub struct Switch(
    Option<tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
);

impl Switch {
    /// Trace on (`debug` level) or off (`info`).
    pub fn set(&self, trace: bool) {
        if let Some(h) = &self.0 {
            let _ = h.modify(|f| *f = EnvFilter::new(if trace { "debug" } else { "info" }));
        }
    }
}

/// [`init`] for a daemon whose trace level can be switched while it runs:
/// `trace` starts it on.
pub fn init_switchable(ident: &'static std::ffi::CStr, trace: bool, syslog: bool) -> Switch {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new(if trace {
        "debug"
    } else {
        "info"
    }));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let syslog = syslog && {
        let there = syslog_available();
        if !there {
            eprintln!(
                "{}: no syslog daemon (/dev/log): logging to stderr",
                ident.to_string_lossy()
            );
        }
        there
    };
    let res = if syslog {
        // SAFETY: the identity string is 'static; openlog keeps the pointer.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(false).without_time().with_writer(Syslog))
            .try_init()
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt.with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    Switch(res.is_ok().then_some(handle))
}
