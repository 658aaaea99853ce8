//! Reading and writing replication frames on a socket: the thin async shell
//! around `hast-repl`'s pure codec. Every length is checked by the codec
//! before a buffer is allocated for it.

use std::time::Duration;

use bytes::Bytes;
use hast_repl::{FrameHeader, ReplError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// One frame queued for a writer: `head` (header, digest and any payload it
/// carries itself) followed by `data`, a payload sent as it is from the
/// buffer the request came in (`hast_repl::encode_data_head`), never copied
/// into the frame.
pub struct Out {
    pub head: Vec<u8>,
    pub data: Option<Bytes>,
}

impl Out {
    fn len(&self) -> usize {
        self.head.len() + self.data.as_ref().map_or(0, Bytes::len)
    }
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
    #[error("peer silent for {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ReplError),
}

/// Reads one frame, failing if nothing at all arrives within `timeout`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    timeout: Duration,
) -> Result<Frame, WireError> {
    let mut raw = [0u8; HEADER_LEN];
    match tokio::time::timeout(timeout, rd.read_exact(&mut raw)).await {
        Err(_) => return Err(WireError::Timeout(timeout.as_secs())),
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
    // The rest of a frame follows its header at once; a long stall here is a
    // dead peer just as silence is.
    let body = async {
        rd.read_exact(&mut digest).await?;
        let mut rest = rd.take(u64::from(header.payload_len));
        while payload.len() < header.payload_len as usize {
            if rest.read_buf(&mut payload).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, body).await {
        Err(_) => return Err(WireError::Timeout(timeout.as_secs())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed)
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => {}
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

/// Small frames are coalesced into one socket write up to this many bytes;
/// a frame this large or larger goes out on its own, never copied again.
const BATCH_BYTES: usize = 256 << 10;

/// Writes `first` and whatever else is already queued: small frames are
/// gathered into one write (fewer syscalls at high queue depth, no added
/// latency at depth one), large ones are written straight from their buffers.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    wr: &mut W,
    first: Out,
    rx: &mut mpsc::Receiver<Out>,
    batch: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), WireError> {
    batch.clear();
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        if frame.len() >= BATCH_BYTES {
            // A small head joins the batch, a large one is written from its
            // own buffer, as is the payload.
            if frame.head.len() < BATCH_BYTES {
                batch.extend_from_slice(&frame.head);
                write_all(wr, batch, timeout).await?;
            } else {
                if !batch.is_empty() {
                    write_all(wr, batch, timeout).await?;
                }
                write_all(wr, &frame.head, timeout).await?;
            }
            batch.clear();
            if let Some(data) = &frame.data {
                write_all(wr, data, timeout).await?;
            }
        } else {
            batch.extend_from_slice(&frame.head);
            if let Some(data) = &frame.data {
                batch.extend_from_slice(data);
            }
        }
        if batch.len() < BATCH_BYTES {
            next = rx.try_recv().ok();
        }
    }
    if !batch.is_empty() {
        write_all(wr, batch, timeout).await?;
    }
    wr.flush().await?;
    Ok(())
}
