//! A blocking client for `hastctl`: one request, one response.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{decode_body, decode_len, encode, Envelope, FrameError, Request, Response, HEADER_LEN};

/// How long `hastctl` waits for hastd; role changes drain I/O, so be generous.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// hastd is not running (no socket, or nobody listening).
    #[error("cannot connect to hastd at {path}: {source} (is hastd running?)")]
    Unavailable {
        path: String,
        source: std::io::Error,
    },
    #[error("control connection to {path} failed: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bad answer from hastd: {0}")]
    Protocol(#[from] FrameError),
    #[error("hastd speaks control protocol version {0}, hastctl speaks {ours}", ours = crate::PROTOCOL_VERSION)]
    Version(u32),
}

impl ClientError {
    /// sysexits(3) code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unavailable { .. } => 69,
            ClientError::Io { .. } => 74,
            ClientError::Protocol(_) | ClientError::Version(_) => 76,
        }
    }
}

/// Sends `req` to the hastd listening on `socket` and returns its answer.
pub fn call(socket: &Path, req: Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Unavailable {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream
        .write_all(&encode(&Envelope::new(req))?)
        .map_err(io)?;
    let mut prefix = [0u8; HEADER_LEN];
    stream.read_exact(&mut prefix).map_err(io)?;
    let mut body = vec![0u8; decode_len(prefix)?];
    stream.read_exact(&mut body).map_err(io)?;
    let answer: Envelope<Response> = decode_body(&body)?;
    if answer.version != crate::PROTOCOL_VERSION {
        return Err(ClientError::Version(answer.version));
    }
    Ok(answer.body)
}
