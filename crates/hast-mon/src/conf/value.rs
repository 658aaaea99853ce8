//! Values of hastmon.conf options: durations, counts, addresses and the
//! secret file (paths and names follow hast.conf's rules in
//! `hast_conf::syntax::value`). Each parser takes the option's keyword for
//! its message and returns the `ErrorKind` to report on the option's line.

use std::time::Duration;

use hast_conf::syntax::value::{bad, is_digits, whole_number, NumberError};
use hast_conf::Addr;

use super::error::ErrorKind;
use super::{DURATION_MAX, MON_PORT};

/// `2` (seconds, hastmon's convention), `2s` or `500ms`; never zero, never
/// above `DURATION_MAX` (so `Instant + duration` cannot overflow anywhere).
pub(super) fn duration(key: &str, value: &str) -> Result<Duration, ErrorKind> {
    let (digits, unit_ms) = if let Some(d) = value.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = value.strip_suffix('s') {
        (d, 1000)
    } else {
        (value, 1000)
    };
    if !is_digits(digits) {
        return Err(bad(
            key,
            value,
            "expected seconds, or a number with the suffix ms or s (500ms, 2s)",
        ));
    }
    let too_large = || {
        bad(
            key,
            value,
            format!("too large (the limit is {})", show(DURATION_MAX)),
        )
    };
    let ms = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(too_large)?;
    if ms == 0 {
        return Err(bad(key, value, "must be greater than 0"));
    }
    let d = Duration::from_millis(ms);
    if d > DURATION_MAX {
        return Err(too_large());
    }
    Ok(d)
}

/// A duration as the operator would write it.
pub(super) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A whole number of at least `min`.
pub(super) fn number(key: &str, value: &str, min: u32) -> Result<u32, ErrorKind> {
    whole_number(value, min).map_err(|e| match e {
        NumberError::Invalid if min == 0 => bad(key, value, "expected a whole number"),
        NumberError::Invalid => bad(
            key,
            value,
            format!("expected a whole number of at least {min}"),
        ),
        NumberError::TooLarge => bad(key, value, format!("too large (the limit is {})", u32::MAX)),
    })
}

/// hastmon writes Unix sockets as `unix:///path`; hast.conf's `Addr` calls
/// the scheme `uds://`. Both are accepted.
fn addr(key: &str, value: &str) -> Result<Addr, ErrorKind> {
    let parsed = match value.strip_prefix("unix://") {
        Some(path) => Addr::parse(&format!("uds://{path}"), Some(MON_PORT)),
        None => Addr::parse(value, Some(MON_PORT)),
    };
    parsed.map_err(|e| bad(key, value, e.to_string()))
}

/// The control socket is root-only through its file mode, so a Unix socket.
pub(super) fn unix_addr(key: &str, value: &str) -> Result<Addr, ErrorKind> {
    let a = addr(key, value)?;
    if !a.is_unix() {
        return Err(bad(key, value, "must be a Unix socket (unix:///path)"));
    }
    Ok(a)
}

/// hastmon peers talk over TCP (`net::serve` listens on a TCP socket).
pub(super) fn tcp_addr(key: &str, value: &str) -> Result<Addr, ErrorKind> {
    let a = addr(key, value)?;
    if a.is_unix() || a.is_tls() {
        return Err(bad(key, value, "must be a TCP address"));
    }
    Ok(a)
}

/// `metrics_listen`: TCP, and the port must be written (hast.conf's rule:
/// no port is the endpoint's by convention).
pub(super) fn metrics_addr(key: &str, value: &str) -> Result<Addr, ErrorKind> {
    let a = match value.strip_prefix("unix://") {
        Some(_) => return Err(bad(key, value, "must be a TCP address")),
        None => Addr::parse(value, None),
    };
    let a = a.map_err(|e| -> ErrorKind { bad(key, value, e.to_string()) })?;
    if a.is_unix() || a.is_tls() {
        return Err(bad(key, value, "must be a TCP address"));
    }
    Ok(a)
}

pub(super) fn remote_addr(key: &str, value: &str) -> Result<Addr, ErrorKind> {
    let a = tcp_addr(key, value)?;
    if a.port() == Some(0) {
        return Err(bad(key, value, "port 0 cannot be connected to"));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("1", 1000),
            ("2s", 2000),
            ("500ms", 500),
            ("1ms", 1),
            ("86400", 86_400_000),
            ("86400000ms", 86_400_000),
            ("007", 7000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                duration("lease", text).ok(),
                Some(Duration::from_millis(*ms)),
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("0", "greater than 0"),
            ("0ms", "greater than 0"),
            ("0s", "greater than 0"),
            ("", "expected seconds"),
            ("s", "expected seconds"),
            ("ms", "expected seconds"),
            ("+1", "expected seconds"),
            ("-1", "expected seconds"),
            ("1.5s", "expected seconds"),
            ("1m", "expected seconds"),
            ("2 s", "expected seconds"),
            ("1sms", "expected seconds"),
            ("86401", "too large (the limit is 86400s)"),
            ("86400001ms", "too large"),
            ("18446744073709551615", "too large"),
            ("18446744073709551616", "too large"),
            ("99999999999999999999999ms", "too large"),
        ];
        for (text, msg) in bad {
            let e = duration("lease", text).unwrap_err().to_string();
            assert!(e.contains(msg), "{text:?}: {e}");
        }
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn numbers() {
        assert_eq!(number("attempts", "3", 1).ok(), Some(3));
        assert_eq!(number("priority", "0", 0).ok(), Some(0));
        assert_eq!(number("priority", "4294967295", 0).ok(), Some(u32::MAX));
        let bad: &[(&str, u32, &str)] = &[
            ("0", 1, "at least 1"),
            ("", 0, "whole number"),
            ("-1", 0, "whole number"),
            ("+1", 0, "whole number"),
            ("1k", 0, "whole number"),
            ("4294967296", 0, "too large"),
        ];
        for (text, min, msg) in bad {
            let e = number("n", text, *min).unwrap_err().to_string();
            assert!(e.contains(msg), "{text:?}: {e}");
        }
    }

    #[test]
    fn addresses() {
        let tcp = |h: &str, p| Addr::Tcp {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            tcp_addr("listen", "0.0.0.0").ok(),
            Some(tcp("0.0.0.0", 8459))
        );
        assert_eq!(
            remote_addr("remote", "tcp://nodeb:99").ok(),
            Some(tcp("nodeb", 99))
        );
        assert_eq!(
            unix_addr("control", "unix:///run/x").ok(),
            Some(Addr::Unix("/run/x".into()))
        );
        assert_eq!(
            unix_addr("control", "uds:///run/x").ok(),
            Some(Addr::Unix("/run/x".into()))
        );
        type AddrParser = fn(&str, &str) -> Result<Addr, ErrorKind>;
        let bad: &[(AddrParser, &str, &str)] = &[
            (unix_addr, "tcp://h", "must be a Unix socket"),
            (unix_addr, "unix://rel", "absolute"),
            (tcp_addr, "unix:///x", "must be a TCP address"),
            (remote_addr, "h:0", "port 0"),
            (remote_addr, "udp://h", "unsupported scheme"),
        ];
        for (f, text, msg) in bad {
            let e = f("k", text).unwrap_err().to_string();
            assert!(e.contains(msg), "{text:?}: {e}");
        }
    }
}
