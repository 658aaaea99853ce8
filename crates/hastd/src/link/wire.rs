//! Reading and writing replication frames on a socket: the thin async shell
//! around `hast-repl`'s pure codec. Every length is checked by the codec
//! before a buffer is allocated for it.

use std::time::Duration;

use bytes::Bytes;
use hast_io::{OutFrame, Outbox};
use hast_repl::{FrameHeader, ReplError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::stream::ConnWrite;

/// One frame queued for a writer: `head` (header, digest and any payload it
/// carries itself) followed by `data`, a payload sent as it is from the
/// buffer the request came in (`hast_repl::encode_data_head`), never copied
/// into the frame.
pub struct Out {
    pub head: Vec<u8>,
    pub data: Option<Bytes>,
}

impl From<Vec<u8>> for Out {
    fn from(head: Vec<u8>) -> Out {
        Out { head, data: None }
    }
}

/// One received frame: header, digest, raw payload (not yet verified).
pub struct Frame {
    pub header: FrameHeader,
    pub digest: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("peer silent for {0} s (no frame, not even a keepalive)")]
    Timeout(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ReplError),
}

/// Reads one frame, failing if nothing at all arrives within `silence`
/// (while this side waits for it: the clock runs only inside this call),
/// nor any byte of a started frame within `silence`, nor the whole rest of
/// the frame within `whole`. Bytes arriving count as a live peer: a large
/// payload on a busy link may take longer than `silence` as a whole.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    silence: Duration,
    whole: Duration,
) -> Result<Frame, WireError> {
    let mut raw = [0u8; HEADER_LEN];
    match tokio::time::timeout(silence, rd.read_exact(&mut raw)).await {
        Err(_) => return Err(WireError::Timeout(silence.as_secs())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed)
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => {}
    }
    let header = FrameHeader::decode(&raw)?;
    let mut digest = vec![0u8; header.digest_len()];
    // Sized by the decoded (and so bounded) header; filled without zeroing first.
    let mut payload = Vec::with_capacity(header.payload_len as usize);
    // The rest of a frame follows its header at once; a stall here is a
    // dead peer just as silence is.
    let body = async {
        match tokio::time::timeout(silence, rd.read_exact(&mut digest)).await {
            Err(_) => return Err(WireError::Timeout(silence.as_secs())),
            Ok(r) => r?,
        };
        let mut rest = rd.take(u64::from(header.payload_len));
        while payload.len() < header.payload_len as usize {
            match tokio::time::timeout(silence, rest.read_buf(&mut payload)).await {
                Err(_) => return Err(WireError::Timeout(silence.as_secs())),
                Ok(Ok(0)) => return Err(WireError::Closed),
                Ok(r) => r?,
            };
        }
        Ok(())
    };
    match tokio::time::timeout(whole, body).await {
        Err(_) => return Err(WireError::Timeout(whole.as_secs())),
        Ok(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed)
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    if header.kind.is_message() {
        // A hello, map or auth frame is acted on as a whole: one whose bytes
        // changed on the way is refused, not half-believed.
        hast_repl::verify_message(&header, &digest, &payload)?;
    }
    Ok(Frame {
        header,
        digest,
        payload,
    })
}

/// Writes `bytes` (one or more encoded frames) within `timeout`.
pub async fn write_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), WireError> {
    match tokio::time::timeout(timeout, wr.write_all(bytes)).await {
        Err(_) => Err(WireError::Timeout(timeout.as_secs())),
        Ok(r) => Ok(r?),
    }
}

/// The sending half of a replication connection, shared by the tasks that
/// send on it (see `hast_io::Outbox`: `send` writes a frame that is alone
/// straight onto the socket, `queue` hands one with company to the writer
/// task, which batches; order is kept either way, which
/// RECEIVED-before-REPLY relies on).
pub type Tx = Outbox<ConnWrite, Out>;

impl OutFrame for Out {
    fn parts(&self) -> [&[u8]; 2] {
        [&self.head, self.data.as_deref().unwrap_or_default()]
    }
}

/// A KEEPALIVE frame whose `seq` announces the sender's `ping_timeout`
/// (`heartbeat::announce`; 0 is an older hastd's, or an echo).
pub fn keepalive_frame(seq: u64) -> Out {
    let mut out = Vec::new();
    hast_repl::encode_control_frame(hast_repl::Kind::Keepalive, 0, seq, 0, 0, &mut out);
    out.into()
}
