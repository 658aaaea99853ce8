//! Logging through `tracing`: one line per event, to stderr in the
//! foreground (systemd's journal picks it up) or to syslog(3) once
//! daemonized, as FreeBSD's hastd does.

use std::ffi::CString;
use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `-d` raises the level once per flag; `RUST_LOG` overrides it.
/// `ident` names the program in syslog (e.g. `c"hastd"`).
pub fn init(ident: &'static std::ffi::CStr, debug: u8, syslog: bool) {
    let level = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let res = if syslog {
        // SAFETY: the identity string is 'static; openlog keeps the pointer.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        builder
            .with_ansi(false)
            .without_time()
            .with_writer(Syslog)
            .try_init()
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
        let text: Vec<u8> = self
            .0
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
