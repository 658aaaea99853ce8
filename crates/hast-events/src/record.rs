//! The journal's record codec: pure encode and decode, no I/O (the fuzz
//! target's entry is [`decode_records`]).
//!
//! A record is a 12-byte header and a payload:
//!
//! ```text
//! offset 0   magic "HEV1"
//! offset 4   payload length, u32 little-endian, at most MAX_PAYLOAD
//! offset 8   crc32c of the payload, u32 little-endian
//! offset 12  payload: the JSON of a [`Body`]
//! ```
//!
//! Decoding a buffer keeps every record whose frame validates (magic,
//! length within bounds, checksum) and whose payload parses; anything else
//! is skipped with a warning, and decoding resynchronises at the next magic
//! whose frame validates. The length is checked against [`MAX_PAYLOAD`]
//! before anything is allocated for it.
//!
//! A valid frame cannot hide inside another record's payload: its length
//! field has two zero bytes (it is at most 64 KiB), and JSON text never
//! holds a raw NUL (serde_json writes it `\u0000`). So resynchronising
//! never mistakes payload bytes for a record.

use serde::{Deserialize, Serialize};

use crate::{Entry, Event, State};

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"HEV1";
/// Magic, length, checksum.
pub const HEADER_LEN: usize = 12;
/// The largest payload a record may have; an append that would need more is
/// refused, and a header claiming more is damage.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Body {
    /// Written first in a compacted file: every seq below `next_seq` was
    /// used once, even if its event has been pruned since, so seqs are
    /// never reused.
    Meta { next_seq: u64 },
    /// A new event, pending.
    Event(Event),
    /// A new state of event `seq`.
    State {
        seq: u64,
        state: State,
        updated_ms: u64,
        attempts: u32,
        note: String,
    },
    /// Event `seq` was pruned (done, beyond the bounds). Recorded, not
    /// recomputed at replay: which done events a bound drops depends on
    /// the order things happened in, which replay does not see.
    Pruned { seq: u64 },
    /// A whole entry (event and state), as compaction writes it: one
    /// record per live entry keeps a compacted file at most one record
    /// longer than the entries it holds.
    Entry(Entry),
}

impl Body {
    /// The event seq this record is about (`None` for `Meta`).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Body::Meta { .. } => None,
            Body::Event(ev) => Some(ev.seq),
            Body::State { seq, .. } | Body::Pruned { seq } => Some(*seq),
            Body::Entry(e) => Some(e.event.seq),
        }
    }
}

/// A record that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("record payload of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("record payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// Appends the record of `body` to `out`; on error `out` is unchanged.
pub fn encode_into(body: &Body, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = serde_json::to_writer(&mut *out, body) {
        out.truncate(start);
        return Err(e.into());
    }
    let payload = &out[start + HEADER_LEN..];
    let len = payload.len();
    let Some(len32) = u32::try_from(len).ok().filter(|_| len <= MAX_PAYLOAD) else {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len });
    };
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&MAGIC);
    out[start + 4..start + 8].copy_from_slice(&len32.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The record of `body`.
pub fn encode(body: &Body) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(body, &mut out)?;
    Ok(out)
}

/// What a buffer held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The records whose frame validated and whose payload parsed, in order.
    pub records: Vec<Body>,
    /// One line per skipped stretch of bytes or record.
    pub warnings: Vec<String>,
    /// Records whose frame validated, including those whose payload did
    /// not parse (what the file holds, for the compaction rule).
    pub frames: usize,
    /// Where the last record whose frame validated ends: what follows is a
    /// torn or damaged tail, to be truncated away before appending.
    pub good_end: usize,
}

impl Decoded {
    /// Whether damaged bytes follow the last valid record.
    pub fn torn_tail(&self, buf_len: usize) -> bool {
        self.good_end < buf_len
    }
}

/// Why the bytes at an offset are not a record.
enum Bad {
    ShortHeader,
    Magic,
    Length(u32),
    ShortPayload(usize),
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::ShortHeader => f.write_str("short record header"),
            Bad::Magic => f.write_str("no record magic"),
            Bad::Length(n) => write!(f, "record length {n} over the limit of {MAX_PAYLOAD}"),
            Bad::ShortPayload(n) => write!(f, "record payload cut short ({n} bytes missing)"),
            Bad::Checksum => f.write_str("record checksum mismatch"),
        }
    }
}

/// The payload of the record at `buf[pos..]` and where the record ends, if
/// its frame validates.
fn frame_at(buf: &[u8], pos: usize) -> Result<(&[u8], usize), Bad> {
    let rest = buf.get(pos..).unwrap_or_default();
    let Some((header, after)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return Err(Bad::ShortHeader);
    };
    if header[0..4] != MAGIC {
        return Err(Bad::Magic);
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    // Checked before the length is used for anything.
    if len as usize > MAX_PAYLOAD {
        return Err(Bad::Length(len));
    }
    let len = len as usize;
    let Some(payload) = after.get(..len) else {
        return Err(Bad::ShortPayload(len - after.len()));
    };
    if crc32c::crc32c(payload) != crc {
        return Err(Bad::Checksum);
    }
    Ok((payload, pos + HEADER_LEN + len))
}

/// The offset of the next record at or after `from` whose frame validates.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(window) = buf.get(at..) {
        let i = window.windows(MAGIC.len()).position(|w| w == MAGIC)?;
        if frame_at(buf, at + i).is_ok() {
            return Some(at + i);
        }
        at += i + 1;
    }
    None
}

/// Decodes every record in `buf` (a whole journal file), skipping damage.
/// Never panics, whatever `buf` holds.
pub fn decode_records(buf: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut pos = 0;
    while pos < buf.len() {
        match frame_at(buf, pos) {
            Ok((payload, end)) => {
                d.frames += 1;
                match serde_json::from_slice::<Body>(payload) {
                    Ok(body) => d.records.push(body),
                    Err(e) => d.warnings.push(format!(
                        "offset {pos}: record of {} bytes skipped: unreadable payload: {e}",
                        payload.len()
                    )),
                }
                pos = end;
                d.good_end = end;
            }
            Err(bad) => match resync(buf, pos + 1) {
                Some(next) => {
                    d.warnings.push(format!(
                        "offset {pos}: {bad}: {} bytes skipped up to the next record",
                        next - pos
                    ));
                    pos = next;
                }
                None => {
                    d.warnings.push(format!(
                        "offset {pos}: {bad}: torn tail of {} bytes dropped",
                        buf.len() - pos
                    ));
                    break;
                }
            },
        }
    }
    d
}

#[cfg(test)]
mod tests;
