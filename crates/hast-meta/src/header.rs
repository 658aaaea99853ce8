//! The metadata header slot (format version 1): encoding, strict decoding, the
//! geometry rules that tie datasize, extent size, map and data offsets together
//! ([`Layout`]), and the choice between the two crash-atomic copies ([`pick_slot`]).
//!
//! Slot encoding (little-endian, unused bytes zero):
//!
//! ```text
//!   0  magic "HASTMETA"            8
//!   8  format version u32          4
//!  12  header length used u32      4   (= offset of the checksum)
//!  16  generation u64              8
//!  24  name length u16             2
//!  26  name                        n   (1..=64 bytes of [A-Za-z0-9._-])
//!      datasize u64, extentsize u32, keepdirty u32, data_offset u64, map_offset u64,
//!      map_size u64, resuid u64, localcnt u64, remotecnt u64, prevrole u8, epoch u64,
//!      flags u32 (FLAG_INCONSISTENT 1, FLAG_OUTDATED 2; others rejected)
//! used crc32c u32 of bytes [0, used)
//! ```
//!
//! Decoding is canonical: a slot that decodes re-encodes to the same 4096 bytes, so
//! nothing on disk is ever silently ignored.

use std::fmt;
use std::str::FromStr;

use crate::error::{HeaderError, MetaError};
use crate::{
    BLOCK_SIZE, DATASIZE_MIN, EXTENT_SIZE_MAX, EXTENT_SIZE_MIN, FORMAT_VERSION, KEEPDIRTY_MAX,
    MAGIC, MAP_OFFSET, MAP_SIZE_MAX, NAME_LEN_MAX, SLOT_SIZE,
};

/// Bytes before the name (magic .. name length).
const PREFIX_LEN: usize = 26;
/// Bytes of fixed fields after the name (datasize .. flags).
const SUFFIX_LEN: usize = 77;
const CRC_LEN: usize = 4;
const SLOT_LEN: usize = SLOT_SIZE as usize;

/// A node's role for a resource: the one type for it in hast. The header
/// records the role a node had when it was last written (`prevrole`), the
/// HELLO announces it (`hast-repl`), the control API carries it (`hast-api`,
/// serde: "init", "primary", "secondary"); each encodes it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Init,
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }

    fn code(self) -> u8 {
        match self {
            Role::Init => 0,
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }

    fn from_code(code: u8) -> Result<Role, HeaderError> {
        match code {
            0 => Ok(Role::Init),
            1 => Ok(Role::Primary),
            2 => Ok(Role::Secondary),
            other => Err(HeaderError::BadRole(other)),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Role, MetaError> {
        match s {
            "init" => Ok(Role::Init),
            "primary" => Ok(Role::Primary),
            "secondary" => Ok(Role::Secondary),
            other => Err(MetaError::UnknownRole(other.to_string())),
        }
    }
}

/// One decoded (and therefore validated) metadata header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    pub name: String,
    pub datasize: u64,
    pub extentsize: u32,
    pub keepdirty: u32,
    pub data_offset: u64,
    pub map_offset: u64,
    pub map_size: u64,
    pub resuid: u64,
    pub localcnt: u64,
    pub remotecnt: u64,
    pub prevrole: Role,
    pub epoch: u64,
    /// [`FLAG_INCONSISTENT`], [`FLAG_OUTDATED`]; unknown bits are rejected.
    pub flags: u32,
}

/// This copy is the target of a resync that has not finished: its data may be
/// a mix of old and new blocks, so it must not become primary, and the next
/// connection must resume the resync rather than call the copies in sync.
pub const FLAG_INCONSISTENT: u32 = 1;
/// This copy lacks writes a primary made without it (`hastctl outdate`,
/// DRBD's "Outdated"; hastmon sets it when its watchdog holds the node
/// outdated): it is whole but old, so it is not promoted without
/// `--force`, and the next completed resync (SYNC_DONE) clears it.
pub const FLAG_OUTDATED: u32 = 2;
/// Every flag this version knows.
pub const FLAGS_KNOWN: u32 = FLAG_INCONSISTENT | FLAG_OUTDATED;

impl Header {
    /// The 4096-byte slot image. Fields are written as they are; call
    /// [`Header::validate`] first if the header did not come from `decode` or
    /// [`Layout`] (the store does, so it never writes a header it could not read back).
    pub fn encode(&self) -> Box<[u8; SLOT_LEN]> {
        let mut slot = Box::new([0u8; SLOT_LEN]);
        // A name longer than the field is a caller bug (validate rejects it); cutting
        // it keeps encode infallible and inside the slot.
        let name = &self.name.as_bytes()[..self.name.len().min(NAME_LEN_MAX)];
        let mut w = Writer {
            buf: &mut slot[..],
            pos: 0,
        };
        w.bytes(MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32((PREFIX_LEN + name.len() + SUFFIX_LEN) as u32);
        w.u64(self.generation);
        w.u16(name.len() as u16);
        w.bytes(name);
        w.u64(self.datasize);
        w.u32(self.extentsize);
        w.u32(self.keepdirty);
        w.u64(self.data_offset);
        w.u64(self.map_offset);
        w.u64(self.map_size);
        w.u64(self.resuid);
        w.u64(self.localcnt);
        w.u64(self.remotecnt);
        w.u8(self.prevrole.code());
        w.u64(self.epoch);
        w.u32(self.flags);
        let used = w.pos;
        let crc = crc32c::crc32c(&slot[..used]);
        slot[used..used + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    /// Decode one slot. Magic, version, length and checksum are checked before any
    /// field is read; then every field is validated ([`Header::validate`]).
    /// Nothing is allocated from a header field except the name (at most 64 bytes).
    pub fn decode(slot: &[u8]) -> Result<Header, MetaError> {
        Ok(decode_slot(slot)?)
    }

    /// Number of extents covering `datasize` (the last one may be partial).
    pub fn extent_count(&self) -> u64 {
        extent_count(self.datasize, self.extentsize)
    }

    /// Check every field against the format's rules and the geometry they imply.
    pub fn validate(&self) -> Result<(), HeaderError> {
        name_rule(&self.name).map_err(HeaderError::BadName)?;
        if !extentsize_ok(u64::from(self.extentsize)) {
            return Err(HeaderError::BadExtentSize(self.extentsize));
        }
        if !keepdirty_ok(u64::from(self.keepdirty)) {
            return Err(HeaderError::BadKeepdirty(self.keepdirty));
        }
        if self.datasize == 0 || self.datasize % BLOCK_SIZE != 0 {
            return Err(HeaderError::BadDatasize(self.datasize));
        }
        if self.map_offset != MAP_OFFSET {
            return Err(HeaderError::BadMapOffset(self.map_offset));
        }
        let expected = map_size(self.datasize, self.extentsize);
        if self.map_size != expected {
            return Err(HeaderError::BadMapSize {
                found: self.map_size,
                expected,
            });
        }
        if self.map_size > MAP_SIZE_MAX {
            return Err(HeaderError::MapTooLarge(self.map_size));
        }
        let expected = MAP_OFFSET + self.map_size;
        if self.data_offset != expected {
            return Err(HeaderError::BadDataOffset {
                found: self.data_offset,
                expected,
            });
        }
        if self.data_offset.checked_add(self.datasize).is_none() {
            return Err(HeaderError::Overflow);
        }
        Ok(())
    }

    /// Bytes of the provider the metadata and data occupy.
    pub fn provider_size_needed(&self) -> u64 {
        self.data_offset.saturating_add(self.datasize)
    }
}

/// The name in the metadata must be the resource the configuration opens it for:
/// a mismatch means the wrong local component.
pub fn check_name(header: &Header, expected: &str) -> Result<(), MetaError> {
    if header.name == expected {
        Ok(())
    } else {
        Err(MetaError::NameMismatch {
            found: header.name.clone(),
            expected: expected.to_string(),
        })
    }
}

/// Validate a resource name for the header: 1..=64 bytes of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), MetaError> {
    name_rule(name).map_err(|reason| MetaError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn name_rule(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > NAME_LEN_MAX {
        return Err("longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

fn extentsize_ok(extentsize: u64) -> bool {
    extentsize.is_power_of_two() && (EXTENT_SIZE_MIN..=EXTENT_SIZE_MAX).contains(&extentsize)
}

fn keepdirty_ok(keepdirty: u64) -> bool {
    (1..=KEEPDIRTY_MAX).contains(&keepdirty)
}

/// Argument check shared by create and the activemap.
pub(crate) fn check_extentsize(extentsize: u64) -> Result<(), MetaError> {
    if extentsize_ok(extentsize) {
        Ok(())
    } else {
        Err(MetaError::BadExtentSize(extentsize))
    }
}

/// Argument check shared by create and the activemap.
pub(crate) fn check_keepdirty(keepdirty: u64) -> Result<(), MetaError> {
    if keepdirty_ok(keepdirty) {
        Ok(())
    } else {
        Err(MetaError::BadKeepdirty(keepdirty))
    }
}

/// Extents covering `datasize` bytes; 0 for a zero extent size (never valid, but no
/// division by zero on an unvalidated header).
pub fn extent_count(datasize: u64, extentsize: u32) -> u64 {
    if extentsize == 0 {
        0
    } else {
        datasize.div_ceil(u64::from(extentsize))
    }
}

/// Size of the activemap for a geometry: one bit per extent, rounded up to whole
/// 4096-byte pages so map writes are page-aligned.
pub fn map_size(datasize: u64, extentsize: u32) -> u64 {
    extent_count(datasize, extentsize)
        .div_ceil(8)
        .div_ceil(BLOCK_SIZE)
        * BLOCK_SIZE
}

/// Where everything goes on a provider of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub datasize: u64,
    pub extentsize: u32,
    pub extent_count: u64,
    pub map_offset: u64,
    pub map_size: u64,
    pub data_offset: u64,
}

impl Layout {
    /// The layout `hastctl create` writes for `mediasize` bytes of provider: the data
    /// area is what remains after the slots and the map, rounded down to 4096. The map
    /// size depends on the datasize it covers, so it is computed from the final
    /// datasize and the result is self-consistent (what [`Header::validate`] checks).
    pub fn for_create(mediasize: u64, extentsize: u32) -> Result<Layout, MetaError> {
        check_extentsize(u64::from(extentsize))?;
        let need = MAP_OFFSET + map_size(DATASIZE_MIN, extentsize) + DATASIZE_MIN;
        let too_small = || MetaError::TooSmall {
            path: None,
            mediasize,
            need,
        };
        if mediasize < need {
            return Err(too_small());
        }
        let avail = mediasize - MAP_OFFSET;
        // A map sized for all of `avail` is at least as large as the final one needs.
        let map_upper = map_size(avail, extentsize);
        let mut datasize = round_down(avail.checked_sub(map_upper).ok_or_else(too_small)?);
        let mut map = map_size(datasize, extentsize);
        // The map may have shrunk by a page; take the space back if the bigger
        // datasize still needs no bigger map.
        let wider = round_down(avail - map);
        if map_size(wider, extentsize) == map {
            datasize = wider;
        }
        map = map_size(datasize, extentsize);
        if datasize < DATASIZE_MIN {
            return Err(too_small());
        }
        if map > MAP_SIZE_MAX {
            return Err(MetaError::TooManyExtents {
                extentsize: u64::from(extentsize),
                datasize,
                extents: extent_count(datasize, extentsize),
                max: MAP_SIZE_MAX * 8,
            });
        }
        Ok(Layout {
            datasize,
            extentsize,
            extent_count: extent_count(datasize, extentsize),
            map_offset: MAP_OFFSET,
            map_size: map,
            data_offset: MAP_OFFSET + map,
        })
    }
}

fn round_down(n: u64) -> u64 {
    n / BLOCK_SIZE * BLOCK_SIZE
}

/// The header read from a component: the newest valid slot.
#[derive(Debug)]
pub struct Picked {
    pub header: Header,
    /// 0 = slot A, 1 = slot B.
    pub slot: usize,
    /// Why the other slot was not valid, for a warning in the log. `None` when both
    /// slots were valid (the other simply holds the previous generation).
    pub other_error: Option<MetaError>,
}

/// Choose between the two decoded slots: the valid one with the highest generation.
/// A header of generation g is only ever written to slot g % 2, so a valid slot
/// holding the other parity was not written by us and is rejected.
pub fn pick_slot(
    a: Result<Header, MetaError>,
    b: Result<Header, MetaError>,
) -> Result<Picked, MetaError> {
    let check = |slot: usize, r: Result<Header, MetaError>| {
        r.and_then(|h| {
            if h.generation % 2 == slot as u64 {
                Ok(h)
            } else {
                Err(MetaError::Header(HeaderError::WrongSlot {
                    generation: h.generation,
                }))
            }
        })
    };
    match (check(0, a), check(1, b)) {
        (Ok(a), Ok(b)) => {
            let (header, slot) = if a.generation > b.generation {
                (a, 0)
            } else {
                (b, 1)
            };
            Ok(Picked {
                header,
                slot,
                other_error: None,
            })
        }
        (Ok(header), Err(e)) => Ok(Picked {
            header,
            slot: 0,
            other_error: Some(MetaError::Slot {
                slot: 1,
                source: Box::new(e),
            }),
        }),
        (Err(e), Ok(header)) => Ok(Picked {
            header,
            slot: 1,
            other_error: Some(MetaError::Slot {
                slot: 0,
                source: Box::new(e),
            }),
        }),
        (Err(ea), Err(eb)) => Err(MetaError::NoValidMetadata {
            path: None,
            slot_a: Box::new(ea),
            slot_b: Box::new(eb),
        }),
    }
}

fn decode_slot(slot: &[u8]) -> Result<Header, HeaderError> {
    if slot.len() != SLOT_LEN {
        return Err(HeaderError::SlotSize(slot.len()));
    }
    let mut r = Reader { buf: slot, pos: 0 };
    if r.bytes(MAGIC.len()) != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = r.u32();
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let used_raw = r.u32();
    let used = used_raw as usize;
    if !(PREFIX_LEN + 1 + SUFFIX_LEN..=PREFIX_LEN + NAME_LEN_MAX + SUFFIX_LEN).contains(&used) {
        return Err(HeaderError::BadLength(used_raw));
    }
    let stored = u32::from_le_bytes(le_array(&slot[used..used + CRC_LEN]));
    let computed = crc32c::crc32c(&slot[..used]);
    if stored != computed {
        return Err(HeaderError::BadChecksum { stored, computed });
    }
    if slot[used + CRC_LEN..].iter().any(|&b| b != 0) {
        return Err(HeaderError::TrailingBytes);
    }
    // From here on the bytes are what we wrote (or a checksum collision); still
    // validate every field so a buggy writer cannot poison a reader.
    let generation = r.u64();
    let name_len = usize::from(r.u16());
    if PREFIX_LEN + name_len + SUFFIX_LEN != used {
        return Err(HeaderError::BadLength(used_raw));
    }
    let name = std::str::from_utf8(r.bytes(name_len))
        .map_err(|_| HeaderError::BadName("only A-Z a-z 0-9 . _ - are allowed"))?;
    name_rule(name).map_err(HeaderError::BadName)?;
    let name = name.to_string();
    let datasize = r.u64();
    let extentsize = r.u32();
    let keepdirty = r.u32();
    let data_offset = r.u64();
    let map_offset = r.u64();
    let map_size = r.u64();
    let resuid = r.u64();
    let localcnt = r.u64();
    let remotecnt = r.u64();
    let prevrole = Role::from_code(r.u8())?;
    let epoch = r.u64();
    let flags = r.u32();
    if flags & !FLAGS_KNOWN != 0 {
        return Err(HeaderError::UnknownFlags(flags));
    }
    let header = Header {
        flags,
        generation,
        name,
        datasize,
        extentsize,
        keepdirty,
        data_offset,
        map_offset,
        map_size,
        resuid,
        localcnt,
        remotecnt,
        prevrole,
        epoch,
    };
    header.validate()?;
    Ok(header)
}

/// Recompute the checksum of a slot at the length it claims, so fuzzing and tests can
/// reach the field checks behind the checksum. Does nothing if the length is out of
/// range.
#[doc(hidden)]
pub fn reseal(slot: &mut [u8]) {
    if slot.len() < 16 {
        return;
    }
    let used = u32::from_le_bytes(le_array(&slot[12..16])) as usize;
    if used >= 16 && used + CRC_LEN <= slot.len() {
        let crc = crc32c::crc32c(&slot[..used]);
        slot[used..used + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    }
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    a
}

/// Sequential little-endian reader over a slot whose length was checked to cover
/// every read (used <= 4092 and all reads stay below `used`).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(le_array(self.bytes(2)))
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(le_array(self.bytes(4)))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(le_array(self.bytes(8)))
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
