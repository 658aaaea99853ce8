//! What every hast daemon (`hastd`, `hastmon`) needs from the system, in
//! one place: start-up and signals (`daemon`), the locked pidfile, logging through `tracing` to stderr or
//! syslog(3), the root-only control socket, and the sysexits(3) codes.

pub mod daemon;
pub mod logging;
pub mod pidfile;
pub mod sock;

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, shared by
/// every process of the host, so one daemon can hand another an absolute
/// deadline (hastmon's lease renewals to hastd).
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

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
