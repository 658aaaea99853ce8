//! The crate's one error enum, [`ReplError`]. Every variant is one line an
//! operator can act on (the frame kind, sequence number, offset and the limit
//! that was crossed); a connection that produces any of them is closed, since
//! after a bad frame the stream position can no longer be trusted.

use crate::checksum::ChecksumKind;
use crate::kind::Kind;

/// Everything that can go wrong while decoding replication traffic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplError {
    // --- frame header -------------------------------------------------------
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("frame version {0} unsupported (this build speaks version 1)")]
    BadVersion(u8),
    #[error("frame kind {0} unknown")]
    UnknownKind(u8),
    #[error("frame flags {0:#04x} has unknown bits")]
    UnknownFlags(u8),
    #[error("flags {flags:#04x} not allowed on {kind}")]
    FlagsNotAllowed { kind: Kind, flags: u8 },
    #[error("checksum kind {0} unknown")]
    UnknownChecksum(u8),
    #[error("checksum {checksum} not allowed on {kind}{why}")]
    ChecksumNotAllowed {
        kind: Kind,
        checksum: ChecksumKind,
        why: &'static str,
    },
    #[error("{kind} of {length} bytes exceeds {max}")]
    TooLong { kind: Kind, length: u64, max: u64 },
    #[error("{kind} of 0 bytes")]
    Empty { kind: Kind },
    #[error("{kind} with nonzero {field} {value}")]
    NonZeroField {
        kind: Kind,
        field: &'static str,
        value: u64,
    },
    #[error("{kind} range of {length} bytes at offset {offset} overflows")]
    RangeOverflow {
        kind: Kind,
        offset: u64,
        length: u64,
    },
    #[error("{kind} payload of {payload_len} bytes, expected {expected}")]
    PayloadLen {
        kind: Kind,
        payload_len: u32,
        expected: &'static str,
    },

    // --- frame body ---------------------------------------------------------
    #[error("{kind} seq {seq}: body of {got} bytes, header says {expected}")]
    BodyLen {
        kind: Kind,
        seq: u64,
        got: usize,
        expected: usize,
    },
    #[error("checksum mismatch ({checksum}) on {kind} seq {seq} at offset {offset}")]
    ChecksumMismatch {
        checksum: ChecksumKind,
        kind: Kind,
        seq: u64,
        offset: u64,
    },
    #[error("lz4 payload of {kind} seq {seq} claims {claimed} bytes, expected {expected}")]
    Lz4Size {
        kind: Kind,
        seq: u64,
        claimed: u64,
        expected: &'static str,
    },
    #[error("lz4 payload of {kind} seq {seq} is corrupt: {reason}")]
    Lz4Corrupt {
        kind: Kind,
        seq: u64,
        reason: String,
    },
    #[error("SYNC_DONE payload of {0} bytes, expected 16")]
    SyncDoneLen(usize),

    // --- hello --------------------------------------------------------------
    #[error("{what} truncated: needs {need} more bytes at byte {at}")]
    Truncated {
        what: &'static str,
        at: usize,
        need: usize,
    },
    #[error("{what} has {extra} trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what} field {field} has unknown code {value}")]
    BadCode {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    #[error("{what} field {field} is {len} bytes, allowed {min}..={max}")]
    StringLen {
        what: &'static str,
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("{what} field {field} is not valid UTF-8")]
    Utf8 {
        what: &'static str,
        field: &'static str,
    },
    #[error("hello reply: {0}")]
    BadReply(String),
    #[error("{what}: {why}")]
    BadMessage { what: &'static str, why: String },

    // --- activemap transfer -------------------------------------------------
    #[error("activemap of {len} bytes exceeds {max}")]
    MapTooLarge { len: u64, max: u64 },
    #[error("activemap chunk at offset {offset}: expected offset {expected} (gap)")]
    MapGap { offset: u64, expected: u64 },
    #[error(
        "activemap chunk at offset {offset}: overlaps bytes already received (next is {expected})"
    )]
    MapOverlap { offset: u64, expected: u64 },
    #[error("activemap chunk of {len} bytes at offset {offset} runs past the map end {map_len}")]
    MapOutOfRange { offset: u64, len: u64, map_len: u64 },
    #[error("activemap LAST chunk after {received} of {map_len} bytes")]
    MapEarlyLast { received: u64, map_len: u64 },
    #[error("activemap complete ({map_len} bytes) but the final chunk lacks LAST")]
    MapMissingLast { map_len: u64 },
    #[error("activemap chunk after the transfer finished")]
    MapDone,
}
