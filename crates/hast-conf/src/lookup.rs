//! Does a `remote` host name resolve? hastd (hast.conf) and hastmon
//! (hastmon.conf) each warn, when they start and at each reload, about a
//! `remote` whose host does not: one line naming the file and line, instead
//! of only failed connection attempts later. A warning, not a refusal: at
//! boot the name service may come up after the daemon, and both look the
//! name up again at every connection, so it works as soon as it resolves.
//!
//! The lookups use the system resolver, which blocks: [`warn_unresolvable`]
//! runs them on a thread of their own, one after the other, so that a slow
//! resolver holds up neither the start, nor a reload, nor the shutdown.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::Addr;

/// How long one lookup may take before it counts as not resolving (a dead
/// resolver otherwise takes its own timeouts times its attempts).
pub const LOOKUP_BOUND: Duration = Duration::from_secs(5);

/// A `remote` address and where the configuration names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The line the warning names.
    pub line: u32,
    pub resource: String,
    pub addr: Addr,
}

/// Why `addr`'s host does not resolve within `bound`; `None` when it does,
/// or when there is nothing to look up (an address literal, a Unix path).
pub fn lookup_failure(addr: &Addr, bound: Duration) -> Option<String> {
    let (host, port) = addr.host_port()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let name = (host.to_owned(), port);
    let (tx, rx) = mpsc::channel();
    // getaddrinfo cannot be cancelled: a lookup past `bound` is left to
    // finish on its own thread, and its answer dropped.
    let spawned = std::thread::Builder::new()
        .name("hast-lookup".into())
        .spawn(move || {
            let found = name.to_socket_addrs().map(|mut a| a.next().is_some());
            let _ = tx.send(found);
        });
    if let Err(e) = spawned {
        return Some(format!("cannot start the lookup: {e}"));
    }
    match rx.recv_timeout(bound) {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some("no address".to_owned()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} s", bound.as_secs())),
    }
}

/// The warning about one remote: `FILE:LINE: resource "R": remote ADDR does
/// not resolve (WHY); THEN`, where `then` says what the daemon does meanwhile.
pub fn warning(file: &std::path::Path, r: &Remote, why: &str, then: &str) -> String {
    format!(
        "{}:{}: resource \"{}\": remote {} does not resolve ({why}); {then}",
        file.display(),
        r.line,
        r.resource,
        r.addr
    )
}

/// Looks up each of `remotes` in order on a background thread and calls
/// `warn` with the [`warning`] of each that does not resolve, as soon as its
/// lookup failed. Returns at once.
pub fn warn_unresolvable(
    file: PathBuf,
    remotes: Vec<Remote>,
    then: &'static str,
    warn: impl Fn(&str) + Send + Sync + 'static,
) {
    if remotes.is_empty() {
        return;
    }
    let warn = std::sync::Arc::new(warn);
    let (w, f) = (warn.clone(), file.clone());
    let run = move || {
        for r in &remotes {
            if let Some(why) = lookup_failure(&r.addr, LOOKUP_BOUND) {
                w(&warning(&f, r, &why, then));
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("hast-lookups".into())
        .spawn(run)
    {
        warn(&format!(
            "{}: cannot check that the remotes resolve: {e}",
            file.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        Addr::parse(s, Some(8457)).unwrap()
    }

    #[test]
    fn what_resolves_and_what_does_not() {
        let bound = Duration::from_secs(10);
        for quiet in [
            "tcp://127.0.0.1:1",
            "tcp://[::1]:1",
            "tls://127.0.0.1:1",
            "tcp://localhost:1",
            "uds:///run/x.sock",
        ] {
            assert_eq!(lookup_failure(&addr(quiet), bound), None, "{quiet}");
        }
        // RFC 6761: `.invalid` never resolves.
        let why = lookup_failure(&addr("tcp://no-such-host.invalid:1"), bound);
        assert!(why.is_some_and(|w| !w.is_empty()));
    }

    #[test]
    fn the_warning_names_file_line_resource_and_address() {
        let r = Remote {
            line: 7,
            resource: "r0".into(),
            addr: addr("tcp://nohost.invalid:8457"),
        };
        assert_eq!(
            warning(std::path::Path::new("/etc/hast.conf"), &r, "why", "then"),
            "/etc/hast.conf:7: resource \"r0\": remote tcp://nohost.invalid:8457 does not resolve (why); then"
        );
    }

    #[test]
    fn warnings_come_from_the_background_one_per_unresolvable_remote() {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let remotes = [
            "tcp://a.invalid:1",
            "tcp://localhost:1",
            "tcp://b.invalid:1",
        ]
        .iter()
        .enumerate()
        .map(|(i, a)| Remote {
            line: i as u32 + 1,
            resource: format!("r{i}"),
            addr: addr(a),
        })
        .collect();
        warn_unresolvable(PathBuf::from("/f"), remotes, "then", move |w| {
            let _ = tx.lock().unwrap().send(w.to_owned());
        });
        let got: Vec<String> = rx.iter().collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0]
            .starts_with("/f:1: resource \"r0\": remote tcp://a.invalid:1 does not resolve ("));
        assert!(got[1].starts_with("/f:3: resource \"r2\""), "{got:?}");
        assert!(got.iter().all(|w| w.ends_with("); then")), "{got:?}");
    }
}
