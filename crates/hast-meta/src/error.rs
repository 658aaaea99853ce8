//! The crate's one public error enum, [`MetaError`], and the nested detail of why a
//! header slot was rejected, [`HeaderError`]. Every message is one line an operator
//! can act on; [`MetaError::exit_code`] maps each to sysexits(3).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// sysexits(3) codes used by this crate.
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOINPUT: i32 = 66;
pub const EX_SOFTWARE: i32 = 70;
pub const EX_IOERR: i32 = 74;

/// Why one header slot was rejected. Kept separate from [`MetaError`] so a slot's
/// reason can be reported without the slot name, and both slots' reasons can be
/// listed in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("slot is {0} bytes, expected 4096")]
    SlotSize(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported metadata format version {0} (this build reads version 1)")]
    UnsupportedVersion(u32),
    #[error("bad header length {0}")]
    BadLength(u32),
    #[error("bad checksum (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("nonzero bytes after the checksum")]
    TrailingBytes,
    #[error("unknown flags {0:#x}")]
    UnknownFlags(u32),
    #[error("bad resource name: {0}")]
    BadName(&'static str),
    #[error("bad previous role {0}")]
    BadRole(u8),
    #[error("bad extent size {0}")]
    BadExtentSize(u32),
    #[error("bad keepdirty {0}")]
    BadKeepdirty(u32),
    #[error("bad datasize {0} (must be > 0 and a multiple of 4096)")]
    BadDatasize(u64),
    #[error("bad map offset {0} (expected 8192)")]
    BadMapOffset(u64),
    #[error("bad map size {found} (expected {expected})")]
    BadMapSize { found: u64, expected: u64 },
    #[error("activemap of {0} bytes exceeds the limit of 32 MiB")]
    MapTooLarge(u64),
    #[error("bad data offset {found} (expected {expected})")]
    BadDataOffset { found: u64, expected: u64 },
    #[error("data area end overflows")]
    Overflow,
    #[error("generation {generation} does not belong in this slot")]
    WrongSlot { generation: u64 },
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A slot failed to decode (no slot name known yet: see [`MetaError::Slot`]).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// One slot's failure, named.
    #[error("metadata slot {}: {source}", slot_name(*.slot))]
    Slot { slot: usize, source: Box<MetaError> },
    #[error("no valid metadata{} (slot A: {slot_a}; slot B: {slot_b}) — run hastctl create", OnPath(.path.as_deref()))]
    NoValidMetadata {
        path: Option<PathBuf>,
        slot_a: Box<MetaError>,
        slot_b: Box<MetaError>,
    },
    #[error("provider{} too small: {mediasize} bytes, need at least {need}", OnPathBare(.path.as_deref()))]
    TooSmall {
        path: Option<PathBuf>,
        mediasize: u64,
        need: u64,
    },
    #[error("metadata on {path} describes {need} bytes but the provider has only {mediasize} (provider shrunk?)")]
    ProviderShrunk {
        path: PathBuf,
        mediasize: u64,
        need: u64,
    },
    #[error("mediasize {requested} is larger than provider {path} ({available} bytes)")]
    MediasizeTooLarge {
        path: PathBuf,
        requested: u64,
        available: u64,
    },
    #[error("extent size {0} is not a power of two >= 4096 and <= 1 GiB")]
    BadExtentSize(u64),
    #[error("extent size {extentsize} is too small for {datasize} bytes: {extents} extents, at most {max} (use a larger extent size)")]
    TooManyExtents {
        extentsize: u64,
        datasize: u64,
        extents: u64,
        max: u64,
    },
    #[error("keepdirty {0} out of range (1..=65536)")]
    BadKeepdirty(u64),
    #[error("invalid resource name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("metadata belongs to resource {found:?}, but the configuration expects {expected:?} (wrong local component?)")]
    NameMismatch { found: String, expected: String },
    #[error("unknown role {0:?} (expected init, primary or secondary)")]
    UnknownRole(String),
    #[error("activemap is {found} bytes, expected {expected}")]
    MapSize { found: u64, expected: u64 },
    #[error("provider {path} does not exist (create it first)")]
    NotFound { path: PathBuf },
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// A caller bug caught before it could touch the disk.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl MetaError {
    /// The sysexits(3) status a command failing with this error should exit with.
    pub fn exit_code(&self) -> i32 {
        match self {
            MetaError::Header(_)
            | MetaError::Slot { .. }
            | MetaError::NoValidMetadata { .. }
            | MetaError::TooSmall { .. }
            | MetaError::ProviderShrunk { .. }
            | MetaError::InvalidName { .. }
            | MetaError::NameMismatch { .. }
            | MetaError::MapSize { .. } => EX_DATAERR,
            MetaError::MediasizeTooLarge { .. }
            | MetaError::BadExtentSize(_)
            | MetaError::TooManyExtents { .. }
            | MetaError::BadKeepdirty(_)
            | MetaError::UnknownRole(_) => EX_USAGE,
            MetaError::NotFound { .. } => EX_NOINPUT,
            MetaError::Io { .. } => EX_IOERR,
            MetaError::Internal(_) => EX_SOFTWARE,
        }
    }

    pub(crate) fn io(path: &Path, what: &'static str, source: io::Error) -> MetaError {
        MetaError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

/// "A" for slot 0, "B" for slot 1: how operators and logs name the two header copies.
pub fn slot_name(slot: usize) -> char {
    if slot == 0 {
        'A'
    } else {
        'B'
    }
}

/// Renders " on /path" when a path is known (the pure core does not know it; the
/// store fills it in).
struct OnPath<'a>(Option<&'a Path>);

impl fmt::Display for OnPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " on {}", p.display()),
            None => Ok(()),
        }
    }
}

/// Renders " /path" when a path is known.
struct OnPathBare<'a>(Option<&'a Path>);

impl fmt::Display for OnPathBare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " {}", p.display()),
            None => Ok(()),
        }
    }
}
