//! The connector's side of discovery: one bounded exchange with a storage
//! node's `discovery_listen` (the wire and its rules are in
//! `hast_repl::discover`), returning the resources that node reports.
//!
//! With a secret the connector proves it holds the key and accepts only an
//! answer the node MACed with that key, so a fake node cannot steer it to a
//! primary of its choosing; without one it sees the resources that have no
//! `secret_file` and trusts the network.

use std::time::Duration;

use hast_repl::discover::{self, CheckError, Entry, Greeting};
use hast_repl::ReplError;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a node gave no usable answer; each names the node (`host:port`).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("discovery {addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("discovery {addr}: no answer within {} ms", timeout.as_millis())]
    Timeout { addr: String, timeout: Duration },
    #[error("discovery {addr}: closed without an answer (too many clients at once, or the request was refused)")]
    Refused { addr: String },
    #[error("discovery {addr}: {source}")]
    Unauthenticated {
        addr: String,
        #[source]
        source: CheckError,
    },
    #[error("discovery {addr}: bad answer: {source}")]
    BadAnswer {
        addr: String,
        #[source]
        source: ReplError,
    },
    #[error(
        "discovery {addr}: the node speaks discovery version {theirs}, this hastcd speaks {}",
        discover::VERSION
    )]
    Version { addr: String, theirs: u32 },
    #[error("discovery {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Asks `host:port` which resources it serves. `secret`: the key file the
/// connector shares with the nodes (`None`: only resources without a secret
/// are seen). `timeout` bounds the whole exchange, connect included. A
/// wildcard host in an entry's `nbd` addresses (the node listens on every
/// address) is replaced by `host`.
pub async fn query(
    host: &str,
    port: u16,
    secret: Option<&hast_conf::Secret>,
    timeout: Duration,
) -> Result<Vec<Entry>, DiscoverError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let mut entries = tokio::time::timeout(timeout, exchange(bare, port, &addr, secret))
        .await
        .map_err(|_| DiscoverError::Timeout {
            addr: addr.clone(),
            timeout,
        })??;
    for e in &mut entries {
        for a in &mut e.nbd {
            *a = unwildcard(a, bare);
        }
    }
    Ok(entries)
}

async fn exchange(
    host: &str,
    port: u16,
    addr: &str,
    secret: Option<&hast_conf::Secret>,
) -> Result<Vec<Entry>, DiscoverError> {
    let mut s =
        TcpStream::connect((host, port))
            .await
            .map_err(|source| DiscoverError::Connect {
                addr: addr.to_string(),
                source,
            })?;
    let _ = s.set_nodelay(true);
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof
            || source.kind() == std::io::ErrorKind::ConnectionReset
        {
            DiscoverError::Refused {
                addr: addr.to_string(),
            }
        } else {
            DiscoverError::Io {
                addr: addr.to_string(),
                source,
            }
        }
    };
    let bad = |source: ReplError| DiscoverError::BadAnswer {
        addr: addr.to_string(),
        source,
    };
    let mut buf = [0u8; discover::GREETING_LEN];
    s.read_exact(&mut buf).await.map_err(io)?;
    let greeting = Greeting::decode(&buf).map_err(bad)?;
    let key = secret.map(|k| k.current());
    let mut nonce = [0u8; discover::NONCE_LEN];
    // Fresh per connection, from the OS: a recorded answer must not pass.
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let request = discover::request(&greeting, nonce, key).map_err(|e| match e {
        CheckError::Version { theirs } => DiscoverError::Version {
            addr: addr.to_string(),
            theirs,
        },
        other => DiscoverError::Unauthenticated {
            addr: addr.to_string(),
            source: other,
        },
    })?;
    s.write_all(&request.encode()).await.map_err(io)?;
    let mut prefix = [0u8; discover::ANSWER_PREFIX_LEN];
    s.read_exact(&mut prefix).await.map_err(io)?;
    // Checked against ANSWER_MAX before anything is allocated.
    let len = discover::decode_answer_len(prefix).map_err(bad)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(io)?;
    let mut tag = [0u8; discover::MAC_LEN];
    s.read_exact(&mut tag).await.map_err(io)?;
    discover::check_answer(&greeting, &request, &body, &tag, key).map_err(|e| match e {
        CheckError::Malformed(source) => bad(source),
        CheckError::Version { theirs } => DiscoverError::Version {
            addr: addr.to_string(),
            theirs,
        },
        other => DiscoverError::Unauthenticated {
            addr: addr.to_string(),
            source: other,
        },
    })
}

/// `tcp://0.0.0.0:P`, `tcp://[::]:P` or `tcp://:P` becomes `tcp://HOST:P`
/// (HOST the address the connector reached the node at); anything else is
/// kept as the node wrote it.
pub fn unwildcard(nbd: &str, host: &str) -> String {
    let Some((h, port)) = nbd
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
    else {
        return nbd.to_string();
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let wildcard = h.is_empty()
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    if !wildcard {
        return nbd.to_string();
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
