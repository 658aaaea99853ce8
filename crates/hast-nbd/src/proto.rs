//! Wire constants and the small value types shared by the handshake, request
//! and reply codecs: magics, option/reply/info codes, flag bits, NBD error
//! values, the export description a backend hands to the protocol, and the
//! size limits. Numbers follow the NBD protocol document
//! (NetworkBlockDevice/nbd `doc/proto.md`); nothing here does I/O.

use std::fmt;

// ---------------------------------------------------------------- magics

/// `NBDMAGIC`, first word of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second word of the greeting and the magic of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply (fixed newstyle).
pub const REPLY_MAGIC_OPTION: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ------------------------------------------------------- handshake flags

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: may omit the 124 zero bytes after `EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: client wants no zero padding after `EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; anything else closes.
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---------------------------------------------------- transmission flags

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;
pub const TFLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

// ---------------------------------------------------------- option codes

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------- option reply types

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_FLAG_ERROR | 10;

// ------------------------------------------------------------ info types

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// --------------------------------------------------------- command types

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// --------------------------------------------------------- command flags

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Only meaningful with extended headers, which this server never negotiates.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ----------------------------------------------- structured reply values

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit 15 marks every error chunk.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

/// `base:allocation` status flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// The only metadata context this server offers.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// Context id handed out for `base:allocation` by `SET_META_CONTEXT`.
pub const META_BASE_ALLOCATION_ID: u32 = 1;

// ---------------------------------------------------------------- limits

/// Largest option payload read from a client; checked before allocating.
/// Every legitimate option fits easily (names and queries are ≤ 4 KiB).
pub const OPTION_LEN_MAX: u32 = 64 * 1024;
/// proto.md: strings (export names, queries, messages) MUST be ≤ 4096 bytes.
pub const STRING_LEN_MAX: usize = 4096;
/// Options accepted in one handshake before the connection is deemed a
/// denial of service and closed (a real client needs fewer than ten).
pub const OPTIONS_MAX: u32 = 256;
/// Default largest READ/WRITE payload (2^25, what proto.md asks servers to
/// accept without negotiation).
pub const PAYLOAD_MAX: u32 = 32 * 1024 * 1024;
/// Ceiling on any configured payload maximum, so a chunk length
/// (payload + 8) can never overflow its 32-bit field.
pub const PAYLOAD_HARD_MAX: u32 = 1 << 30;
/// A WRITE rejected before its payload was read must still have that payload
/// consumed to stay in sync; beyond this many bytes the server closes
/// instead of reading junk (proto.md allows a hard disconnect for payloads
/// large enough to be a denial of service).
pub const WRITE_DISCARD_MAX: u32 = 64 * 1024 * 1024;
/// Status descriptors in one `BLOCK_STATUS` chunk (proto.md: SHOULD NOT
/// exceed 2^20).
pub const BLOCK_STATUS_EXTENTS_MAX: usize = 1 << 20;

/// Length of the server greeting (NBDMAGIC, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of an option header sent by the client.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header sent by the server.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

// ----------------------------------------------------------------- Errno

/// An NBD error value (proto.md "Error values"); only these may go on the
/// wire, so the type is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `NBD_EPERM` (1): write to a read-only export.
    Perm,
    /// `NBD_EIO` (5).
    Io,
    /// `NBD_ENOMEM` (12).
    NoMem,
    /// `NBD_EINVAL` (22): malformed or out-of-range request.
    Inval,
    /// `NBD_ENOSPC` (28): write beyond the end of the export.
    NoSpc,
    /// `NBD_EOVERFLOW` (75).
    Overflow,
    /// `NBD_ENOTSUP` (95): fast zero not possible.
    NotSup,
    /// `NBD_ESHUTDOWN` (108): the export is going away.
    Shutdown,
}

impl Errno {
    /// The wire value.
    pub const fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// Decode a wire value; `None` for values proto.md does not define.
    pub const fn from_code(code: u32) -> Option<Errno> {
        Some(match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            22 => Errno::Inval,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            _ => return None,
        })
    }

    /// Map a host errno as proto.md recommends (EDQUOT/EFBIG → ENOSPC,
    /// EROFS → EPERM, anything unknown → EIO since it came from the storage).
    pub fn from_os(errno: i32) -> Errno {
        match errno {
            libc::EPERM | libc::EROFS | libc::EACCES => Errno::Perm,
            libc::ENOMEM => Errno::NoMem,
            libc::EINVAL => Errno::Inval,
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Errno::NoSpc,
            libc::EOVERFLOW => Errno::Overflow,
            libc::EOPNOTSUPP => Errno::NotSup,
            libc::ESHUTDOWN => Errno::Shutdown,
            _ => Errno::Io,
        }
    }

    /// A short human text, used as the message of structured error chunks.
    pub const fn message(self) -> &'static str {
        match self {
            Errno::Perm => "operation not permitted",
            Errno::Io => "input/output error",
            Errno::NoMem => "cannot allocate memory",
            Errno::Inval => "invalid argument",
            Errno::NoSpc => "no space left on device",
            Errno::Overflow => "value too large",
            Errno::NotSup => "operation not supported",
            Errno::Shutdown => "server is shutting down",
        }
    }
}

impl From<&std::io::Error> for Errno {
    fn from(e: &std::io::Error) -> Errno {
        match e.raw_os_error() {
            Some(code) => Errno::from_os(code),
            None => match e.kind() {
                std::io::ErrorKind::PermissionDenied => Errno::Perm,
                std::io::ErrorKind::OutOfMemory => Errno::NoMem,
                std::io::ErrorKind::InvalidInput => Errno::Inval,
                _ => Errno::Io,
            },
        }
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno::from(&e)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for Errno {}

// ------------------------------------------------------- export metadata

/// What a backend says about one export; the protocol derives the
/// transmission flags and block-size constraints from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    pub read_only: bool,
    /// Flush/FUA are visible across connections (shared cache or none).
    pub can_multi_conn: bool,
    pub rotational: bool,
    pub can_trim: bool,
    pub can_zero: bool,
    /// The backend may be able to zero quickly; it gets `fast_only` and
    /// answers `NotSup` when it cannot. `false` makes the server answer
    /// ENOTSUP to every fast-zero request without asking the backend.
    pub can_fast_zero: bool,
    pub can_cache: bool,
    /// Smallest addressable unit; a power of two ≤ 64 KiB (1 = unaligned ok).
    pub min_block: u32,
    /// Size at which I/O is efficient; a power of two ≥ max(min_block, 512).
    pub preferred_block: u32,
    /// Largest READ/WRITE payload the backend takes (0 = no own limit).
    pub max_block: u32,
    pub description: Option<String>,
}

impl ExportInfo {
    /// A read-write export of `size` bytes with flush/FUA only and default
    /// block sizes; callers switch on what their backend supports.
    pub fn new(size: u64) -> ExportInfo {
        ExportInfo {
            size,
            read_only: false,
            can_multi_conn: false,
            rotational: false,
            can_trim: false,
            can_zero: false,
            can_fast_zero: false,
            can_cache: false,
            min_block: 1,
            preferred_block: 4096,
            max_block: 0,
            description: None,
        }
    }

    /// Transmission flags to advertise. FLUSH and FUA are always offered
    /// because every hast export persists data; write-type commands are not
    /// advertised on a read-only export; DF only once structured replies
    /// are on (proto.md requires DF clear otherwise).
    pub fn transmission_flags(&self, structured_replies: bool) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.read_only {
            flags |= TFLAG_READ_ONLY;
        } else {
            if self.can_trim {
                flags |= TFLAG_SEND_TRIM;
            }
            if self.can_zero {
                // FAST_ZERO is advertised with WRITE_ZEROES: a fast failure
                // (ENOTSUP) is a valid answer and lets nbdcopy skip zeroing.
                flags |= TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
            }
        }
        if self.rotational {
            flags |= TFLAG_ROTATIONAL;
        }
        if structured_replies {
            flags |= TFLAG_SEND_DF;
        }
        if self.can_multi_conn {
            flags |= TFLAG_CAN_MULTI_CONN;
        }
        if self.can_cache {
            flags |= TFLAG_SEND_CACHE;
        }
        flags
    }
}

/// One extent answered by a backend to `block_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    /// Length in bytes (zero-length extents are dropped before encoding).
    pub len: u32,
    /// Not allocated in the backing storage.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

impl BlockExtent {
    /// The `base:allocation` status flags of this extent.
    pub fn flags(&self) -> u32 {
        (if self.hole { STATE_HOLE } else { 0 }) | (if self.zero { STATE_ZERO } else { 0 })
    }
}

/// Why an export cannot be opened; decides the option error sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenErrorKind {
    /// No such export here (or this node is not primary): `ERR_UNKNOWN`.
    Unknown,
    /// The daemon is stopping: `ERR_SHUTDOWN`.
    Shutdown,
}

/// An export could not be opened; `message` is shown to the client's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    pub kind: OpenErrorKind,
    pub message: String,
}

impl OpenError {
    pub fn unknown(message: impl Into<String>) -> OpenError {
        OpenError {
            kind: OpenErrorKind::Unknown,
            message: message.into(),
        }
    }

    pub fn shutdown(message: impl Into<String>) -> OpenError {
        OpenError {
            kind: OpenErrorKind::Shutdown,
            message: message.into(),
        }
    }
}

/// Block-size constraints as advertised in `NBD_INFO_BLOCK_SIZE` and
/// enforced on requests. Built from [`ExportInfo`] with values that break
/// proto.md's rules replaced, so the server never advertises nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub min: u32,
    pub preferred: u32,
    /// Largest READ/WRITE payload accepted.
    pub max_payload: u32,
}

impl BlockSizes {
    /// `payload_max` is the connection's own cap (memory bound); nothing
    /// above [`PAYLOAD_HARD_MAX`] is ever advertised.
    pub fn new(info: &ExportInfo, payload_max: u32) -> BlockSizes {
        let min = if info.min_block.is_power_of_two() && info.min_block <= 65536 {
            info.min_block
        } else {
            1
        };
        let floor = min.max(512);
        let preferred = if info.preferred_block.is_power_of_two() {
            info.preferred_block.clamp(floor, PAYLOAD_HARD_MAX)
        } else {
            4096u32.max(floor)
        };
        let backend_max = if info.max_block == 0 {
            u32::MAX
        } else {
            info.max_block
        };
        let max_payload = backend_max
            .min(payload_max)
            .min(PAYLOAD_HARD_MAX)
            .max(preferred);
        BlockSizes {
            min,
            preferred,
            max_payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_codes_round_trip() {
        for e in [
            Errno::Perm,
            Errno::Io,
            Errno::NoMem,
            Errno::Inval,
            Errno::NoSpc,
            Errno::Overflow,
            Errno::NotSup,
            Errno::Shutdown,
        ] {
            assert_eq!(Errno::from_code(e.code()), Some(e));
        }
        assert_eq!(
            [1, 5, 12, 22, 28, 75, 95, 108].map(|c| Errno::from_code(c).map(Errno::code)),
            [1, 5, 12, 22, 28, 75, 95, 108].map(Some)
        );
        assert_eq!(Errno::from_code(0), None);
        assert_eq!(Errno::from_code(2), None);
    }

    #[test]
    fn errno_from_os() {
        let cases = [
            (libc::EDQUOT, Errno::NoSpc),
            (libc::EFBIG, Errno::NoSpc),
            (libc::ENOSPC, Errno::NoSpc),
            (libc::EROFS, Errno::Perm),
            (libc::EIO, Errno::Io),
            (libc::ENXIO, Errno::Io),
            (libc::EOPNOTSUPP, Errno::NotSup),
        ];
        for (os, want) in cases {
            assert_eq!(Errno::from_os(os), want, "os errno {os}");
            assert_eq!(Errno::from(std::io::Error::from_raw_os_error(os)), want);
        }
    }

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn transmission_flags_table() {
        let mut info = ExportInfo::new(1 << 20);
        let base = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        assert_eq!(info.transmission_flags(false), base);
        assert_eq!(info.transmission_flags(true), base | TFLAG_SEND_DF);
        info.can_trim = true;
        info.can_zero = true;
        info.can_cache = true;
        info.can_multi_conn = true;
        info.rotational = true;
        assert_eq!(
            info.transmission_flags(false),
            base | TFLAG_SEND_TRIM
                | TFLAG_SEND_WRITE_ZEROES
                | TFLAG_SEND_FAST_ZERO
                | TFLAG_SEND_CACHE
                | TFLAG_CAN_MULTI_CONN
                | TFLAG_ROTATIONAL
        );
        info.read_only = true;
        assert_eq!(
            info.transmission_flags(false),
            base | TFLAG_READ_ONLY | TFLAG_SEND_CACHE | TFLAG_CAN_MULTI_CONN | TFLAG_ROTATIONAL
        );
    }

    #[test]
    fn block_sizes_are_sanitised() {
        let mut info = ExportInfo::new(1 << 30);
        assert_eq!(
            BlockSizes::new(&info, PAYLOAD_MAX),
            BlockSizes {
                min: 1,
                preferred: 4096,
                max_payload: PAYLOAD_MAX
            }
        );
        // Not powers of two, too large, max below preferred.
        info.min_block = 3;
        info.preferred_block = 100;
        info.max_block = 1000;
        assert_eq!(
            BlockSizes::new(&info, PAYLOAD_MAX),
            BlockSizes {
                min: 1,
                preferred: 4096,
                max_payload: 4096
            }
        );
        info.min_block = 1 << 17;
        assert_eq!(BlockSizes::new(&info, PAYLOAD_MAX).min, 1);
        info.min_block = 4096;
        info.preferred_block = 512;
        info.max_block = 1 << 20;
        assert_eq!(
            BlockSizes::new(&info, PAYLOAD_MAX),
            BlockSizes {
                min: 4096,
                preferred: 4096,
                max_payload: 1 << 20
            }
        );
        // The connection's cap wins over a larger backend limit.
        info.max_block = u32::MAX;
        assert_eq!(BlockSizes::new(&info, 1 << 16).max_payload, 1 << 16);
    }
}
