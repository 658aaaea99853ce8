//! One NBD client connection to a primary: connect, optionally STARTTLS,
//! `NBD_OPT_GO` for the resource, then the two halves of transmission for
//! the endpoint to drive. The handshake's decoding is `hast_nbd::client`
//! (sans I/O); this file owns only the socket, the deadline and the TLS
//! upgrade. No structured replies are negotiated: every answer is a simple
//! reply, and a READ's data has the length the endpoint asked for, so
//! nothing the server says sizes a buffer here.

use std::sync::Arc;
use std::time::Duration;

use hast_nbd::client::{self, Granted, Next, OpenFailure, Opening};
use hast_nbd::proto::{GREETING_LEN, OPTION_REPLY_HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The read half of an open connection.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of an open connection.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// TLS towards the servers (`nbd_tls = on`): a rustls client configuration
/// that pins the servers' certificates.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("bad NBD address {0:?} (want tcp://HOST:PORT)")]
    Address(String),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: handshake not finished within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {failure}")]
    Refused { addr: String, failure: OpenFailure },
    #[error("{addr}: TLS: {message}")]
    Tls { addr: String, message: String },
}

impl OpenError {
    /// The server refused with "TLS required" while hastcd has `nbd_tls = off`.
    pub fn tls_required(&self) -> bool {
        matches!(self, OpenError::Refused { failure, .. } if failure.tls_required())
    }
}

/// `tcp://HOST:PORT` (or `HOST:PORT`) → (host, port).
pub fn parse_addr(addr: &str) -> Option<(String, u16)> {
    let rest = addr.strip_prefix("tcp://").unwrap_or(addr);
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// Connect to `addr` and open `export`, all within `timeout`.
pub async fn open(
    addr: &str,
    export: &str,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<(Granted, Reader, Writer), OpenError> {
    let (host, port) = parse_addr(addr).ok_or_else(|| OpenError::Address(addr.to_string()))?;
    let opening = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| OpenError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        handshake(tcp, addr, &host, export, tls).await
    };
    tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| OpenError::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
}

async fn handshake(
    mut tcp: TcpStream,
    addr: &str,
    host: &str,
    export: &str,
    tls: Option<&Tls>,
) -> Result<(Granted, Reader, Writer), OpenError> {
    let io = |source| OpenError::Io {
        addr: addr.to_string(),
        source,
    };
    let refused = |failure| OpenError::Refused {
        addr: addr.to_string(),
        failure,
    };
    let mut greeting = [0u8; GREETING_LEN];
    tcp.read_exact(&mut greeting).await.map_err(io)?;
    let flags = client::parse_greeting(&greeting).map_err(refused)?;
    tcp.write_all(&client::client_flags(flags))
        .await
        .map_err(io)?;
    let Some(tls) = tls else {
        let granted = go(&mut tcp, export).await.map_err(|e| e.at(addr))?;
        let (rd, wr) = tcp.into_split();
        return Ok((granted, Box::new(rd), Box::new(wr)));
    };
    tcp.write_all(&client::starttls_option())
        .await
        .map_err(io)?;
    exchange(&mut tcp, Opening::starttls())
        .await
        .map_err(|e| e.at(addr))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| OpenError::Tls {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    let tls_error = |e: std::io::Error| OpenError::Tls {
        addr: addr.to_string(),
        message: match tls_hint(&e) {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        },
    };
    let mut stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .map_err(tls_error)?;
    // TLS 1.3: a server that refuses our client certificate says so after
    // its Finished, so the refusal surfaces at the first read here.
    let granted = go(&mut stream, export).await.map_err(|e| match e {
        Step::Io(e) if tls_hint(&e).is_some() => tls_error(e),
        e => e.at(addr),
    })?;
    let (rd, wr) = tokio::io::split(stream);
    Ok((granted, Box::new(rd), Box::new(wr)))
}

/// What the operator should change, for the TLS failures a configuration
/// causes (rustls's own words name no option).
fn tls_hint(e: &std::io::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError, Error};
    match e.get_ref()?.downcast_ref::<Error>()? {
        Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            Some("the server's certificate is not one of nbd_tls_pin")
        }
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            Some("the server requires a client certificate: set nbd_tls_cert and nbd_tls_key")
        }
        Error::AlertReceived(AlertDescription::AccessDenied | AlertDescription::BadCertificate) => {
            Some("the server refused our client certificate (nbd_tls_cert): it pins another")
        }
        _ => None,
    }
}

/// A handshake failure before the address is attached.
enum Step {
    Io(std::io::Error),
    Refused(OpenFailure),
}

impl Step {
    fn at(self, addr: &str) -> OpenError {
        match self {
            Step::Io(source) => OpenError::Io {
                addr: addr.to_string(),
                source,
            },
            Step::Refused(failure) => OpenError::Refused {
                addr: addr.to_string(),
                failure,
            },
        }
    }
}

async fn go<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, export: &str) -> Result<Granted, Step> {
    s.write_all(&client::go_option(export))
        .await
        .map_err(Step::Io)?;
    exchange(s, Opening::go()).await
}

/// Read option replies until the opening ends.
async fn exchange<S: AsyncRead + Unpin>(s: &mut S, mut opening: Opening) -> Result<Granted, Step> {
    loop {
        let mut raw = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut raw).await.map_err(Step::Io)?;
        let h = opening.header(&raw).map_err(Step::Refused)?;
        // `header` capped the length at OPTION_LEN_MAX (64 KiB).
        let mut payload = vec![0u8; h.len as usize];
        s.read_exact(&mut payload).await.map_err(Step::Io)?;
        if let Next::Open(granted) = opening.reply(&h, &payload).map_err(Step::Refused)? {
            return Ok(granted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("tcp://10.0.0.1:10809"),
            Some(("10.0.0.1".into(), 10809))
        );
        assert_eq!(parse_addr("[::1]:5"), Some(("::1".into(), 5)));
        assert_eq!(
            parse_addr("tcp://[fe80::1]:10809"),
            Some(("fe80::1".into(), 10809))
        );
        assert_eq!(parse_addr("tcp://:1"), None);
        assert_eq!(parse_addr("host"), None);
        assert_eq!(parse_addr("host:99999"), None);
    }
}
