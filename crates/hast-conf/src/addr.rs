//! Addresses as written in hast.conf: `tcp://host:port`, `tcp4://`, `tcp6://`,
//! `uds:///path`, or a bare `host`, `host:port`, `[v6]:port`, IPv4 or IPv6
//! literal (TCP with the option's default port). They print back in URI form.
//! `tls://host:port` is TCP carrying TLS (the replication link's `listen`
//! and `remote` only; the parser refuses it elsewhere).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// Default port of the replication protocol (`listen`, `remote`, `source`).
pub const REPLICATION_PORT: u16 = 8457;
/// Default NBD port (`nbd_listen`), as assigned by IANA.
pub const NBD_PORT: u16 = 10809;
/// Default port of hastd's discovery listener (`discovery_listen`), next
/// to the replication port so one firewall rule range covers both.
pub const DISCOVERY_PORT: u16 = 8459;
/// `sun_path` holds 108 bytes on Linux, one of them the terminating NUL.
pub const UNIX_PATH_MAX: usize = 107;
const HOST_LEN_MAX: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// `host` is a DNS name, an IPv4 literal or an IPv6 literal without brackets.
    Tcp { host: String, port: u16 },
    /// An absolute path.
    Unix(PathBuf),
    /// `tls://`: TCP to or from `host`, TLS 1.3 over it.
    Tls { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddrError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, AddrError> {
    Err(AddrError(msg.into()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Any,
    V4,
    V6,
}

impl Addr {
    /// Parses an address; `default_port` is used when a TCP address names
    /// no port (`None`: a port is required).
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Addr, AddrError> {
        if let Some(path) = s.strip_prefix("uds://") {
            return unix(path);
        }
        if s.starts_with('/') {
            return unix(s);
        }
        let mut tls = false;
        let (family, hostport) = match s.split_once("://") {
            Some(("tcp", rest)) => (Family::Any, rest),
            Some(("tls", rest)) => {
                tls = true;
                (Family::Any, rest)
            }
            Some(("tcp4", rest)) => (Family::V4, rest),
            Some(("tcp6", rest)) => (Family::V6, rest),
            Some((scheme, _)) => {
                return err(format!(
                    "unsupported scheme \"{scheme}\" (use tcp, tcp4, tcp6, tls or uds)"
                ))
            }
            None => (Family::Any, s),
        };
        let (host, port) = split_host_port(hostport)?;
        check_host(host, family)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => match default_port {
                Some(p) => p,
                None => return err("a port is required"),
            },
        };
        let host = host.to_owned();
        Ok(if tls {
            Addr::Tls { host, port }
        } else {
            Addr::Tcp { host, port }
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Addr::Tls { .. })
    }

    /// Host and port of a TCP address, TLS or not (`None` for a Unix socket).
    pub fn host_port(&self) -> Option<(&str, u16)> {
        match self {
            Addr::Tcp { host, port } | Addr::Tls { host, port } => Some((host, *port)),
            Addr::Unix(_) => None,
        }
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Addr::Unix(_))
    }

    /// The TCP port, `None` for a Unix socket.
    pub fn port(&self) -> Option<u16> {
        match self {
            Addr::Tcp { port, .. } | Addr::Tls { port, .. } => Some(*port),
            Addr::Unix(_) => None,
        }
    }
}

/// Parses with the replication port as default.
impl FromStr for Addr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Addr::parse(s, Some(REPLICATION_PORT))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Addr::Tls { host, port } if host.contains(':') => write!(f, "tls://[{host}]:{port}"),
            Addr::Tls { host, port } => write!(f, "tls://{host}:{port}"),
            Addr::Unix(path) => write!(f, "uds://{}", path.display()),
        }
    }
}

fn unix(path: &str) -> Result<Addr, AddrError> {
    if !path.starts_with('/') {
        return err("a Unix socket path must be absolute (uds:///path)");
    }
    if path.len() > UNIX_PATH_MAX {
        return err(format!(
            "Unix socket path longer than {UNIX_PATH_MAX} bytes"
        ));
    }
    Ok(Addr::Unix(PathBuf::from(path)))
}

fn split_host_port(s: &str) -> Result<(&str, Option<&str>), AddrError> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return err("missing \"]\" after IPv6 address");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return err(format!("\"{host}\" is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => err(format!("unexpected \"{after}\" after \"]\"")),
            },
        };
    }
    if s.bytes().filter(|&b| b == b':').count() > 1 {
        // Several colons and no brackets: only a whole IPv6 literal makes sense.
        if s.parse::<Ipv6Addr>().is_err() {
            return err("an IPv6 address with a port must be written [address]:port");
        }
        return Ok((s, None));
    }
    match s.split_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

fn check_host(host: &str, family: Family) -> Result<(), AddrError> {
    if host.is_empty() {
        return err("missing host");
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        if family == Family::V4 {
            return err("tcp4 with an IPv6 address");
        }
        return Ok(());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        if family == Family::V6 {
            return err("tcp6 with an IPv4 address");
        }
        return Ok(());
    }
    let valid_name = host.len() <= HOST_LEN_MAX
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return err(format!("\"{host}\" is not a host name or IP address"));
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<u16, AddrError> {
    if p.is_empty() {
        return err("missing port after \":\"");
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return err(format!("port \"{p}\" is not a number"));
    }
    match p.parse::<u16>() {
        Ok(port) => Ok(port),
        Err(_) => err(format!("port {p} is out of range (0-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Addr {
        Addr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn accepted() {
        let cases: &[(&str, Addr, &str)] = &[
            (
                "tcp://10.0.0.1:7771",
                tcp("10.0.0.1", 7771),
                "tcp://10.0.0.1:7771",
            ),
            (
                "tcp4://10.0.0.2",
                tcp("10.0.0.2", 8457),
                "tcp://10.0.0.2:8457",
            ),
            ("tcp6://[::1]:99", tcp("::1", 99), "tcp://[::1]:99"),
            (
                "tcp6://[2001:db8::1]",
                tcp("2001:db8::1", 8457),
                "tcp://[2001:db8::1]:8457",
            ),
            (
                "tcp://nodeb.example.com",
                tcp("nodeb.example.com", 8457),
                "tcp://nodeb.example.com:8457",
            ),
            ("nodeb", tcp("nodeb", 8457), "tcp://nodeb:8457"),
            ("nodeb:1", tcp("nodeb", 1), "tcp://nodeb:1"),
            (
                "192.168.1.1",
                tcp("192.168.1.1", 8457),
                "tcp://192.168.1.1:8457",
            ),
            ("0.0.0.0:0", tcp("0.0.0.0", 0), "tcp://0.0.0.0:0"),
            ("[::]:65535", tcp("::", 65535), "tcp://[::]:65535"),
            ("fe80::1", tcp("fe80::1", 8457), "tcp://[fe80::1]:8457"),
            (
                "uds:///run/hastctl",
                Addr::Unix("/run/hastctl".into()),
                "uds:///run/hastctl",
            ),
            (
                "/run/x.sock",
                Addr::Unix("/run/x.sock".into()),
                "uds:///run/x.sock",
            ),
        ];
        for (s, want, shown) in cases {
            let got: Addr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&got, want, "{s}");
            assert_eq!(got.to_string(), *shown, "{s}");
            // What Display prints parses back to the same address.
            assert_eq!(shown.parse::<Addr>().as_ref(), Ok(want), "{shown}");
        }
        assert_eq!(Addr::parse("h", Some(NBD_PORT)), Ok(tcp("h", 10809)));
    }

    #[test]
    fn tls_addresses_parse_and_print_back() {
        let tls = |host: &str, port| Addr::Tls {
            host: host.into(),
            port,
        };
        let cases: &[(&str, Addr, &str)] = &[
            (
                "tls://10.0.0.1:7771",
                tls("10.0.0.1", 7771),
                "tls://10.0.0.1:7771",
            ),
            ("tls://nodeb", tls("nodeb", 8457), "tls://nodeb:8457"),
            ("tls://[::1]:9", tls("::1", 9), "tls://[::1]:9"),
            (
                "tls://fe80::1",
                tls("fe80::1", 8457),
                "tls://[fe80::1]:8457",
            ),
        ];
        for (s, want, shown) in cases {
            let got: Addr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(&got, want, "{s}");
            assert!(got.is_tls() && !got.is_unix(), "{s}");
            assert_eq!(got.to_string(), *shown, "{s}");
            assert_eq!(shown.parse::<Addr>().as_ref(), Ok(want), "{shown}");
        }
        assert_eq!(tls("h", 1).host_port(), Some(("h", 1)));
        assert_eq!(tcp("h", 2).host_port(), Some(("h", 2)));
        assert!(!tcp("h", 2).is_tls());
    }

    #[test]
    fn rejected() {
        let cases: &[(&str, &str)] = &[
            ("", "missing host"),
            ("tcp://", "missing host"),
            (":80", "missing host"),
            ("h:", "missing port"),
            ("h:65536", "out of range"),
            ("h:99999999999", "out of range"),
            ("h:-1", "not a number"),
            ("h:+1", "not a number"),
            ("h:http", "not a number"),
            ("udp://h:1", "unsupported scheme"),
            ("tls://", "missing host"),
            ("tls://h:x", "not a number"),
            ("tls4://h:1", "unsupported scheme"),
            ("uds://relative", "absolute"),
            ("tcp4://[::1]:1", "tcp4 with an IPv6"),
            ("tcp6://10.0.0.1", "tcp6 with an IPv4"),
            ("[::1", "missing \"]\""),
            ("[nothost]:1", "not an IPv6"),
            ("[::1]x", "unexpected"),
            ("2001:db8::1:80:", "[address]:port"),
            ("a..b", "not a host name"),
            ("a b", "not a host name"),
            ("-h/x", "not a host name"),
        ];
        for (s, msg) in cases {
            let e = s.parse::<Addr>().unwrap_err().to_string();
            assert!(e.contains(msg), "{s:?}: {e}");
        }
        let long = format!("uds:///{}", "x".repeat(UNIX_PATH_MAX));
        assert!(long.parse::<Addr>().is_err());
        assert!(Addr::parse("h", None).is_err());
    }
}
