//! The replication frame: a fixed 32-byte header, an optional digest of the
//! logical data, then the payload. This module owns the header layout, the
//! per-kind rules a header must satisfy, and the data encodings (hole, lz4)
//! with their checksums.
//!
//! ```text
//!  0  magic u32 = 0x4841_5354      16  offset u64
//!  4  version u8 = 1               24  length u32       (logical bytes; errno for REPLY)
//!  5  kind u8                      28  payload_len u32  (bytes after header + digest)
//!  6  flags u8                     32  digest           (0, 4, 4 or 32 bytes per checksum)
//!  7  checksum u8                      payload          (payload_len bytes)
//!  8  seq u64
//! ```
//!
//! All little-endian. [`FrameHeader::decode`] enforces every per-kind limit on
//! `length` and `payload_len` before the caller reads (and so allocates) the
//! body: a peer can never make us allocate more than [`PAYLOAD_MAX`] for one
//! frame, and never more than the frame's own `length` when decompressing.
//! Fields a kind does not use must be zero, so every header that decodes
//! re-encodes to the same 32 bytes and nothing on the wire is silently ignored.
//!
//! Per-kind rules (`-` = must be zero; checksum `none` = must be none):
//!
//! | kind        | flags allowed        | offset      | length          | payload_len                        | checksum |
//! |-------------|----------------------|-------------|-----------------|------------------------------------|----------|
//! | HELLO       | -                    | -           | -               | 1..=HELLO_MAX                      | crc32c   |
//! | HELLO_REPLY | -                    | -           | -               | 1..=HELLO_MAX                      | crc32c   |
//! | MAP         | LAST                 | map offset  | -               | ≤ MAP_CHUNK_MAX, end ≤ MAP_MAX     | crc32c   |
//! | WRITE       | FUA ZERO LZ4 SYNC PUNCH | any, no overflow | 1..=DATA_MAX | ZERO: 0; LZ4: 5..=lz4_payload_max(length); else = length | any (ZERO: none) |
//! | ZERO        | FUA SYNC PUNCH       | any, no overflow | ≥ 1        | 0                                  | none     |
//! | FLUSH       | SYNC                 | -           | -               | 0                                  | none     |
//! | READ        | SYNC                 | any, no overflow | 1..=DATA_MAX | 0                                  | none     |
//! | KEEPALIVE   | -                    | -           | -               | 0                                  | none     |
//! | SYNC_DONE   | -                    | -           | -               | 16                                 | crc32c   |
//! | REPLY       | LZ4 SYNC             | request's   | errno           | errno≠0: 0; LZ4: 5..=PAYLOAD_MAX; else ≤ DATA_MAX | any (no payload: none) |
//! | RECEIVED    | -                    | -           | -               | 0                                  | none     |
//! | GOODBYE     | -                    | -           | -               | ≤ GOODBYE_MAX                      | crc32c   |
//! | CHALLENGE   | -                    | -           | -               | = auth::CHALLENGE_LEN              | crc32c   |
//! | AUTH        | -                    | -           | -               | 1..=auth::AUTH_MAX                 | crc32c   |
//! | AUTH_REPLY  | -                    | -           | -               | 1..=auth::AUTH_REPLY_MAX           | crc32c   |
//!
//! WRITE: ZERO and LZ4 exclude each other; PUNCH only with ZERO. A REPLY has
//! no field for its logical length (`length` is the errno), so a READ reply is
//! never hole-encoded; with LZ4 its size prefix is bounded by [`DATA_MAX`] and
//! the requester checks it against what it asked for.
//!
//! An LZ4 payload is a 4-byte little-endian uncompressed size followed by one
//! lz4 block (lz4_flex's "size prepended" layout).

use crate::auth;
use crate::checksum::ChecksumKind;
use crate::error::ReplError;
pub use crate::kind::{flags, Kind};

pub const HEADER_LEN: usize = 32;
/// "HAST" read as a big-endian word; on the wire (LE) the bytes are `TSAH`.
pub const MAGIC: u32 = 0x4841_5354;
pub const VERSION: u8 = 1;
/// Largest logical length of one WRITE/READ/REPLY (32 MiB).
pub const DATA_MAX: u32 = 32 << 20;
/// Bytes of the uncompressed-size prefix of an LZ4 payload.
pub const LZ4_PREFIX_LEN: u32 = 4;
/// Largest payload of any frame: DATA_MAX under lz4's worst-case expansion.
pub const PAYLOAD_MAX: u32 = lz4_payload_max(DATA_MAX);
/// Largest activemap chunk in one MAP frame.
pub const MAP_CHUNK_MAX: u32 = 1 << 20;
/// Largest activemap (same limit as the on-disk map in hast-meta).
pub const MAP_MAX: u64 = 32 << 20;
/// Largest HELLO / HELLO_REPLY payload.
pub const HELLO_MAX: u32 = 4096;
/// Largest GOODBYE reason.
pub const GOODBYE_MAX: u32 = 1024;
/// SYNC_DONE payload: localcnt u64, remotecnt u64.
pub const SYNC_DONE_LEN: u32 = 16;

/// Largest LZ4 payload (size prefix included) for `len` logical bytes: the
/// LZ4 block format's worst case `n + n/255 + 16` (LZ4_COMPRESSBOUND).
pub const fn lz4_payload_max(len: u32) -> u32 {
    LZ4_PREFIX_LEN + len + len / 255 + 16
}

/// What the sender may do to shrink data (config `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Always send the data as it is.
    None,
    /// An all-zero WRITE goes as a WRITE with the ZERO flag and no payload.
    Hole,
    /// Hole, and otherwise lz4 when that actually shrinks the data.
    Lz4,
}

/// A decoded (and therefore validated) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: Kind,
    pub flags: u8,
    pub checksum: ChecksumKind,
    pub seq: u64,
    pub offset: u64,
    pub length: u32,
    pub payload_len: u32,
}

impl FrameHeader {
    /// Parses and validates a header; see the module table for the rules.
    pub fn decode(raw: &[u8; HEADER_LEN]) -> Result<FrameHeader, ReplError> {
        let magic = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if magic != MAGIC {
            return Err(ReplError::BadMagic(magic));
        }
        if raw[4] != VERSION {
            return Err(ReplError::BadVersion(raw[4]));
        }
        let kind = Kind::from_code(raw[5]).ok_or(ReplError::UnknownKind(raw[5]))?;
        let flags = raw[6];
        if flags & !flags::ALL != 0 {
            return Err(ReplError::UnknownFlags(flags));
        }
        let checksum = ChecksumKind::from_code(raw[7]).ok_or(ReplError::UnknownChecksum(raw[7]))?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at =
            |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let h = FrameHeader {
            kind,
            flags,
            checksum,
            seq: u64_at(8),
            offset: u64_at(16),
            length: u32_at(24),
            payload_len: u32_at(28),
        };
        h.validate()?;
        Ok(h)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        raw[4] = VERSION;
        raw[5] = self.kind.code();
        raw[6] = self.flags;
        raw[7] = self.checksum.code();
        raw[8..16].copy_from_slice(&self.seq.to_le_bytes());
        raw[16..24].copy_from_slice(&self.offset.to_le_bytes());
        raw[24..28].copy_from_slice(&self.length.to_le_bytes());
        raw[28..32].copy_from_slice(&self.payload_len.to_le_bytes());
        raw
    }

    /// Bytes of digest after the header.
    pub fn digest_len(&self) -> usize {
        self.checksum.digest_len()
    }

    /// Bytes after the header: digest plus payload (at most 32 + PAYLOAD_MAX
    /// for a header that validated).
    pub fn body_len(&self) -> usize {
        self.digest_len() + self.payload_len as usize
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The per-kind rules of the module table. `decode` runs it; `decode_data`
    /// runs it again so a hand-built header cannot bypass the limits.
    pub fn validate(&self) -> Result<(), ReplError> {
        use flags::*;
        let kind = self.kind;
        if self.flags & !ALL != 0 {
            return Err(ReplError::UnknownFlags(self.flags));
        }
        let extra = self.flags & !kind.allowed_flags();
        if extra != 0 {
            return Err(ReplError::FlagsNotAllowed { kind, flags: extra });
        }
        let payload = |ok: bool, expected: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ReplError::PayloadLen {
                    kind,
                    payload_len: self.payload_len,
                    expected,
                })
            }
        };
        let checksum = |want: Option<ChecksumKind>, why: &'static str| match want {
            Some(c) if c != self.checksum => Err(ReplError::ChecksumNotAllowed {
                kind,
                checksum: self.checksum,
                why,
            }),
            _ => Ok(()),
        };
        const NO_DATA: &str = " (frame carries no data)";
        const MESSAGE: &str = " (messages always carry crc32c)";
        match kind {
            Kind::Write => {
                self.range(DATA_MAX)?;
                if self.has(ZERO) {
                    if self.has(LZ4) {
                        return Err(ReplError::FlagsNotAllowed {
                            kind,
                            flags: ZERO | LZ4,
                        });
                    }
                    payload(self.payload_len == 0, "0 with ZERO")?;
                    checksum(Some(ChecksumKind::None), NO_DATA)?;
                } else {
                    if self.has(PUNCH) {
                        return Err(ReplError::FlagsNotAllowed { kind, flags: PUNCH });
                    }
                    if self.has(LZ4) {
                        payload(
                            self.payload_len > LZ4_PREFIX_LEN
                                && self.payload_len <= lz4_payload_max(self.length),
                            "5..=lz4 bound of length with LZ4",
                        )?;
                    } else {
                        payload(self.payload_len == self.length, "= length")?;
                    }
                }
            }
            Kind::Zero => {
                self.range(u32::MAX)?;
                payload(self.payload_len == 0, "0")?;
                checksum(Some(ChecksumKind::None), NO_DATA)?;
            }
            Kind::Read => {
                self.range(DATA_MAX)?;
                payload(self.payload_len == 0, "0")?;
                checksum(Some(ChecksumKind::None), NO_DATA)?;
            }
            Kind::Flush | Kind::Keepalive | Kind::Received => {
                self.zero_field("offset", self.offset)?;
                self.zero_field("length", u64::from(self.length))?;
                payload(self.payload_len == 0, "0")?;
                checksum(Some(ChecksumKind::None), NO_DATA)?;
            }
            Kind::Reply => {
                // `offset` echoes the request's (for messages); any value.
                if self.payload_len == 0 {
                    if self.has(LZ4) {
                        return Err(ReplError::FlagsNotAllowed { kind, flags: LZ4 });
                    }
                    checksum(Some(ChecksumKind::None), NO_DATA)?;
                } else {
                    // `length` is the errno; data only comes with success.
                    self.zero_field("errno with data", u64::from(self.length))?;
                    if self.has(LZ4) {
                        payload(
                            self.payload_len > LZ4_PREFIX_LEN && self.payload_len <= PAYLOAD_MAX,
                            "5..=PAYLOAD_MAX with LZ4",
                        )?;
                    } else if self.payload_len > DATA_MAX {
                        return Err(ReplError::TooLong {
                            kind,
                            length: u64::from(self.payload_len),
                            max: u64::from(DATA_MAX),
                        });
                    }
                }
            }
            Kind::Map => {
                self.zero_field("length", u64::from(self.length))?;
                payload(self.payload_len <= MAP_CHUNK_MAX, "at most MAP_CHUNK_MAX")?;
                let end = self.offset.saturating_add(u64::from(self.payload_len));
                if end > MAP_MAX {
                    return Err(ReplError::TooLong {
                        kind,
                        length: end,
                        max: MAP_MAX,
                    });
                }
                checksum(Some(ChecksumKind::Crc32c), MESSAGE)?;
            }
            Kind::Hello
            | Kind::HelloReply
            | Kind::SyncDone
            | Kind::Goodbye
            | Kind::Challenge
            | Kind::Auth
            | Kind::AuthReply => {
                self.zero_field("offset", self.offset)?;
                self.zero_field("length", u64::from(self.length))?;
                let n = self.payload_len as usize;
                match kind {
                    Kind::SyncDone => payload(self.payload_len == SYNC_DONE_LEN, "16")?,
                    Kind::Goodbye => payload(self.payload_len <= GOODBYE_MAX, "at most 1024")?,
                    Kind::Challenge => payload(n == auth::CHALLENGE_LEN, "36")?,
                    Kind::Auth => payload((1..=auth::AUTH_MAX).contains(&n), "1..=AUTH_MAX")?,
                    Kind::AuthReply => payload(
                        (1..=auth::AUTH_REPLY_MAX).contains(&n),
                        "1..=AUTH_REPLY_MAX",
                    )?,
                    _ => payload(
                        self.payload_len >= 1 && self.payload_len <= HELLO_MAX,
                        "1..=4096",
                    )?,
                }
                checksum(Some(ChecksumKind::Crc32c), MESSAGE)?;
            }
        }
        Ok(())
    }

    fn zero_field(&self, field: &'static str, value: u64) -> Result<(), ReplError> {
        if value == 0 {
            Ok(())
        } else {
            Err(ReplError::NonZeroField {
                kind: self.kind,
                field,
                value,
            })
        }
    }

    /// A request range: 1..=max bytes that do not run past u64.
    fn range(&self, max: u32) -> Result<(), ReplError> {
        if self.length == 0 {
            return Err(ReplError::Empty { kind: self.kind });
        }
        if self.length > max {
            return Err(ReplError::TooLong {
                kind: self.kind,
                length: u64::from(self.length),
                max: u64::from(max),
            });
        }
        if self.offset.checked_add(u64::from(self.length)).is_none() {
            return Err(ReplError::RangeOverflow {
                kind: self.kind,
                offset: self.offset,
                length: u64::from(self.length),
            });
        }
        Ok(())
    }
}

/// The logical data of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// `n` bytes of zeroes (ZERO frames, WRITE with the ZERO flag).
    Zero(u32),
    Bytes(Vec<u8>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Zero(n) => *n as usize,
            Data::Bytes(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a WRITE or a READ reply carrying `data` (1..=DATA_MAX bytes).
/// Applies hole detection / lz4 per `compression` and computes the digest of
/// `data` with `checksum`. The encoder owns the ZERO, LZ4 and PUNCH bits: the
/// caller's ZERO/LZ4 are ignored, and its PUNCH is kept only when the data
/// went as a hole (PUNCH = "you may deallocate this zero range").
#[allow(clippy::too_many_arguments)] // mirrors the header fields one to one
pub fn encode_data_frame(
    kind: Kind,
    flags: u8,
    seq: u64,
    offset: u64,
    data: &[u8],
    compression: Compression,
    checksum: ChecksumKind,
    out: &mut Vec<u8>,
) {
    if encode_data_head(kind, flags, seq, offset, data, compression, checksum, out) {
        out.extend_from_slice(data);
    }
}

/// [`encode_data_frame`] without copying a verbatim payload: appends the
/// frame to `out` except its payload when that is `data` itself, and says
/// so. `true`: the frame is `out` followed by `data` (the caller sends both,
/// e.g. in one vectored write); `false`: `out` holds the whole frame (a
/// hole, an lz4 payload, or no data).
#[allow(clippy::too_many_arguments)] // mirrors the header fields one to one
#[must_use = "when true, the frame's payload still has to follow"]
pub fn encode_data_head(
    kind: Kind,
    flags: u8,
    seq: u64,
    offset: u64,
    data: &[u8],
    compression: Compression,
    checksum: ChecksumKind,
    out: &mut Vec<u8>,
) -> bool {
    debug_assert!(
        matches!(kind, Kind::Write | Kind::Reply),
        "{kind} is no data frame"
    );
    debug_assert!(data.len() <= DATA_MAX as usize);
    let base = flags & !(flags::ZERO | flags::LZ4 | flags::PUNCH);
    // A data length past u32 is a caller bug (DATA_MAX); saturate rather than wrap.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut h = FrameHeader {
        kind,
        flags: base,
        checksum,
        seq,
        offset,
        // A REPLY's `length` is its errno: 0 with data.
        length: if kind == Kind::Reply { 0 } else { len },
        payload_len: len,
    };
    if data.is_empty() {
        // Nothing to protect; a frame without payload carries no digest.
        h.checksum = ChecksumKind::None;
    }
    if compression != Compression::None && kind == Kind::Write && !data.is_empty() && is_zero(data)
    {
        h.flags |= flags::ZERO | (flags & flags::PUNCH);
        h.checksum = ChecksumKind::None;
        h.payload_len = 0;
        out.extend_from_slice(&h.encode());
        return false;
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(h.checksum.compute(data).as_bytes());
    let body = out.len();
    if compression == Compression::Lz4 && !data.is_empty() {
        let prefix = LZ4_PREFIX_LEN as usize;
        out.extend_from_slice(&len.to_le_bytes());
        out.resize(
            body + prefix + lz4_flex::block::get_maximum_output_size(data.len()),
            0,
        );
        match lz4_flex::block::compress_into(data, &mut out[body + prefix..]) {
            // Only worth it when it shrinks: otherwise the receiver pays a
            // decompression for nothing.
            Ok(c) if prefix + c < data.len() => {
                out.truncate(body + prefix + c);
                h.flags |= flags::LZ4;
                h.payload_len = (prefix + c) as u32;
                out[start..start + HEADER_LEN].copy_from_slice(&h.encode());
                return false;
            }
            _ => out.truncate(body),
        }
    }
    out[start..start + HEADER_LEN].copy_from_slice(&h.encode());
    !data.is_empty()
}

/// Encodes a frame without data: FLUSH, KEEPALIVE, ZERO (range in
/// offset/length), READ request, RECEIVED, REPLY with errno in `length`.
pub fn encode_control_frame(
    kind: Kind,
    flags: u8,
    seq: u64,
    offset: u64,
    length: u32,
    out: &mut Vec<u8>,
) {
    let h = FrameHeader {
        kind,
        flags,
        checksum: ChecksumKind::None,
        seq,
        offset,
        length,
        payload_len: 0,
    };
    debug_assert!(h.validate().is_ok(), "{:?}", h.validate());
    out.extend_from_slice(&h.encode());
}

/// Encodes HELLO/HELLO_REPLY/MAP/SYNC_DONE/GOODBYE with a raw payload,
/// checksummed with crc32c always: these are small and rare, and a corrupt
/// hello or map would steer a resync the wrong way.
pub fn encode_message_frame(
    kind: Kind,
    flags: u8,
    seq: u64,
    offset: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let h = FrameHeader {
        kind,
        flags,
        checksum: ChecksumKind::Crc32c,
        seq,
        offset,
        length: 0,
        // Oversized payloads are caller bugs; the peer's decode rejects them.
        payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
    };
    debug_assert!(h.validate().is_ok(), "{:?}", h.validate());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(ChecksumKind::Crc32c.compute(payload).as_bytes());
    out.extend_from_slice(payload);
}

/// Verifies a message frame's (crc32c) digest: a HELLO, MAP or AUTH whose
/// bytes changed on the way is refused, never acted on.
pub fn verify_message(h: &FrameHeader, digest: &[u8], payload: &[u8]) -> Result<(), ReplError> {
    h.validate()?;
    if digest.len() != h.digest_len() || payload.len() != h.payload_len as usize {
        return Err(ReplError::BodyLen {
            kind: h.kind,
            seq: h.seq,
            got: digest.len() + payload.len(),
            expected: h.body_len(),
        });
    }
    if h.checksum.compute(payload).as_bytes() != digest {
        return Err(ReplError::ChecksumMismatch {
            checksum: h.checksum,
            kind: h.kind,
            seq: h.seq,
            offset: h.offset,
        });
    }
    Ok(())
}

/// Verifies the digest and decompresses: the logical data of any frame
/// (`Data::Zero(length)` for ZERO frames and WRITEs with the ZERO flag,
/// `Data::Bytes` otherwise, empty for control frames). `digest` and `payload`
/// are the [`FrameHeader::body_len`] bytes after the header, split at
/// [`FrameHeader::digest_len`]. The lz4 size prefix is checked against the
/// frame's `length` (WRITE) or [`DATA_MAX`] (REPLY) before the output is
/// allocated.
pub fn decode_data(h: &FrameHeader, digest: &[u8], payload: Vec<u8>) -> Result<Data, ReplError> {
    h.validate()?;
    let body_len = digest.len() + payload.len();
    if digest.len() != h.digest_len() || payload.len() != h.payload_len as usize {
        return Err(ReplError::BodyLen {
            kind: h.kind,
            seq: h.seq,
            got: body_len,
            expected: h.body_len(),
        });
    }
    if h.kind == Kind::Zero || (h.kind == Kind::Write && h.has(flags::ZERO)) {
        return Ok(Data::Zero(h.length));
    }
    let data = if h.has(flags::LZ4) {
        decompress(h, &payload)?
    } else {
        payload
    };
    if h.checksum.compute(&data).as_bytes() != digest {
        return Err(ReplError::ChecksumMismatch {
            checksum: h.checksum,
            kind: h.kind,
            seq: h.seq,
            offset: h.offset,
        });
    }
    Ok(Data::Bytes(data))
}

fn decompress(h: &FrameHeader, payload: &[u8]) -> Result<Vec<u8>, ReplError> {
    let corrupt = |reason: String| ReplError::Lz4Corrupt {
        kind: h.kind,
        seq: h.seq,
        reason,
    };
    let (prefix, block) = payload
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("no size prefix".into()))?;
    let claimed = u32::from_le_bytes(*prefix);
    // The claim is checked before anything is allocated from it.
    let ok = match h.kind {
        Kind::Write => claimed == h.length,
        _ => (1..=DATA_MAX).contains(&claimed),
    };
    if !ok {
        return Err(ReplError::Lz4Size {
            kind: h.kind,
            seq: h.seq,
            claimed: u64::from(claimed),
            expected: if h.kind == Kind::Write {
                "the frame length"
            } else {
                "1..=DATA_MAX"
            },
        });
    }
    let mut out = vec![0u8; claimed as usize];
    let n =
        lz4_flex::block::decompress_into(block, &mut out).map_err(|e| corrupt(e.to_string()))?;
    if n != out.len() {
        return Err(corrupt(format!(
            "decompressed to {n} bytes, prefix says {claimed}"
        )));
    }
    Ok(out)
}

/// True when every byte is zero. Works in 64-byte blocks so the inner OR
/// vectorizes, with an early exit per block for data that is not a hole.
fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        if b.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

/// SYNC_DONE payload: the counters the secondary stores once the resync finished.
pub fn encode_sync_done(localcnt: u64, remotecnt: u64) -> [u8; SYNC_DONE_LEN as usize] {
    let mut p = [0u8; SYNC_DONE_LEN as usize];
    p[..8].copy_from_slice(&localcnt.to_le_bytes());
    p[8..].copy_from_slice(&remotecnt.to_le_bytes());
    p
}

/// Inverse of [`encode_sync_done`]: `(localcnt, remotecnt)`.
pub fn decode_sync_done(payload: &[u8]) -> Result<(u64, u64), ReplError> {
    let p: &[u8; 16] = payload
        .try_into()
        .map_err(|_| ReplError::SyncDoneLen(payload.len()))?;
    let (a, b) = p.split_at(8);
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        u64::from_le_bytes(w)
    };
    Ok((word(a), word(b)))
}

#[cfg(test)]
mod tests;
