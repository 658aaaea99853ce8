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
    /// The socket is there but this user may not connect (mode 0600,
    /// root's): not "is hastd running?", which sent users looking for a
    /// daemon that was running all along.
    #[error("cannot connect to hastd at {path}: {source} (hastctl needs root)")]
    Denied {
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
            ClientError::Denied { .. } => 77,
            ClientError::Io { .. } => 74,
            ClientError::Protocol(_) | ClientError::Version(_) => 76,
        }
    }
}

/// Sends `req` to the hastd listening on `socket` and returns its answer.
pub fn call(socket: &Path, req: Request) -> Result<Response, ClientError> {
    let mut s = Session::open(socket, req, Some(CALL_TIMEOUT))?;
    match s.recv()? {
        Some(r) => Ok(r),
        None => Err(s.io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// One request whose answer may be several frames (`events`, `events
/// --follow`): read them with [`Session::recv`].
pub struct Session {
    stream: UnixStream,
    path: String,
}

impl Session {
    /// Connects and sends `req`; `read_timeout` bounds each wait for a
    /// frame (`None`: wait as long as hastd keeps the connection, for a
    /// follower).
    pub fn open(
        socket: &Path,
        req: Request,
        read_timeout: Option<Duration>,
    ) -> Result<Session, ClientError> {
        let path = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|source| {
            let path = path.clone();
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ClientError::Denied { path, source }
            } else {
                ClientError::Unavailable { path, source }
            }
        })?;
        let mut s = Session { stream, path };
        s.stream
            .set_read_timeout(read_timeout)
            .map_err(|e| s.io(e))?;
        s.stream
            .set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| s.io(e))?;
        let frame = encode(&Envelope::new(req))?;
        s.stream.write_all(&frame).map_err(|e| s.io(e))?;
        Ok(s)
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The next answer frame; `None` when hastd closed the connection
    /// between frames.
    pub fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        let mut prefix = [0u8; HEADER_LEN];
        match self.stream.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(self.io(e)),
        }
        let mut body = vec![0u8; decode_len(prefix)?];
        self.stream.read_exact(&mut body).map_err(|e| self.io(e))?;
        let answer: Envelope<Response> = decode_body(&body)?;
        if answer.version != crate::PROTOCOL_VERSION {
            return Err(ClientError::Version(answer.version));
        }
        Ok(Some(answer.body))
    }
}
