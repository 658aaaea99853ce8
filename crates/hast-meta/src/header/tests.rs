//! Tables of header slots, good and bad, and of layouts.

use proptest::prelude::*;

use super::*;
use crate::error::{EX_DATAERR, EX_IOERR, EX_NOINPUT, EX_SOFTWARE, EX_USAGE};

fn sample(name: &str, generation: u64) -> Header {
    let l = Layout::for_create(64 << 20, 2 << 20).unwrap();
    Header {
        generation,
        name: name.to_string(),
        datasize: l.datasize,
        extentsize: l.extentsize,
        keepdirty: 64,
        data_offset: l.data_offset,
        map_offset: l.map_offset,
        map_size: l.map_size,
        resuid: 0x1122_3344_5566_7788,
        localcnt: 3,
        remotecnt: 2,
        prevrole: Role::Primary,
        epoch: 9,
        flags: 0,
    }
}

/// Offsets of the fields after a 2-byte name ("r0").
mod off {
    pub const VERSION: usize = 8;
    pub const USED: usize = 12;
    pub const GENERATION: usize = 16;
    pub const NAME_LEN: usize = 24;
    pub const NAME: usize = 26;
    pub const DATASIZE: usize = 28;
    pub const EXTENTSIZE: usize = 36;
    pub const KEEPDIRTY: usize = 40;
    pub const DATA_OFFSET: usize = 44;
    pub const MAP_OFFSET: usize = 52;
    pub const MAP_SIZE: usize = 60;
    pub const PREVROLE: usize = 92;
    pub const FLAGS: usize = 101;
    pub const CRC: usize = 105;
}

fn put(slot: &mut [u8], at: usize, bytes: &[u8]) {
    slot[at..at + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn encode_decode_round_trip() {
    let long = "a".repeat(64);
    for name in ["r", "r0", "data-01.vol_x", long.as_str()] {
        for role in [Role::Init, Role::Primary, Role::Secondary] {
            let mut h = sample(name, 7);
            h.prevrole = role;
            let slot = h.encode();
            assert_eq!(Header::decode(&slot[..]).unwrap(), h, "{name} {role}");
        }
    }
}

#[test]
fn encoding_is_the_documented_layout() {
    let h = sample("r0", 5);
    let slot = h.encode();
    assert_eq!(&slot[..8], b"HASTMETA");
    assert_eq!(slot[off::VERSION..off::VERSION + 4], 1u32.to_le_bytes());
    assert_eq!(
        slot[off::USED..off::USED + 4],
        (off::CRC as u32).to_le_bytes()
    );
    assert_eq!(
        slot[off::GENERATION..off::GENERATION + 8],
        5u64.to_le_bytes()
    );
    assert_eq!(slot[off::NAME_LEN..off::NAME_LEN + 2], 2u16.to_le_bytes());
    assert_eq!(&slot[off::NAME..off::NAME + 2], b"r0");
    assert_eq!(
        slot[off::EXTENTSIZE..off::EXTENTSIZE + 4],
        (2u32 << 20).to_le_bytes()
    );
    assert_eq!(slot[off::PREVROLE], 1);
    let crc = crc32c::crc32c(&slot[..off::CRC]);
    assert_eq!(slot[off::CRC..off::CRC + 4], crc.to_le_bytes());
    assert!(slot[off::CRC + 4..].iter().all(|&b| b == 0));
}

/// Each case edits a good slot of header "r0"; `reseal` recomputes the checksum so
/// the check behind it is reached.
#[test]
fn decode_rejects_bad_slots() {
    type Edit = fn(&mut Vec<u8>);
    let cases: &[(&str, Edit, bool, HeaderError)] = &[
        (
            "short slot",
            |s| s.truncate(100),
            false,
            HeaderError::SlotSize(100),
        ),
        (
            "long slot",
            |s| s.push(0),
            false,
            HeaderError::SlotSize(4097),
        ),
        ("magic", |s| s[0] ^= 1, false, HeaderError::BadMagic),
        (
            "all zero (never written)",
            |s| s.fill(0),
            false,
            HeaderError::BadMagic,
        ),
        (
            "version 2",
            |s| put(s, off::VERSION, &2u32.to_le_bytes()),
            false,
            HeaderError::UnsupportedVersion(2),
        ),
        (
            "length 0",
            |s| put(s, off::USED, &0u32.to_le_bytes()),
            false,
            HeaderError::BadLength(0),
        ),
        (
            "length past slot",
            |s| put(s, off::USED, &5000u32.to_le_bytes()),
            false,
            HeaderError::BadLength(5000),
        ),
        (
            "length too long for a name",
            |s| put(s, off::USED, &168u32.to_le_bytes()),
            false,
            HeaderError::BadLength(168),
        ),
        (
            "flipped generation bit",
            |s| s[off::GENERATION] ^= 0x80,
            false,
            HeaderError::BadChecksum {
                stored: 0,
                computed: 0,
            },
        ),
        (
            "torn: second half zero",
            |s| s[52..].fill(0),
            false,
            HeaderError::BadChecksum {
                stored: 0,
                computed: 0,
            },
        ),
        (
            "flipped crc",
            |s| s[off::CRC] ^= 1,
            false,
            HeaderError::BadChecksum {
                stored: 0,
                computed: 0,
            },
        ),
        (
            "byte after crc",
            |s| s[4095] = 1,
            false,
            HeaderError::TrailingBytes,
        ),
        (
            "name length disagrees",
            |s| put(s, off::NAME_LEN, &3u16.to_le_bytes()),
            true,
            HeaderError::BadLength(105),
        ),
        (
            "name char",
            |s| s[off::NAME] = b'/',
            true,
            HeaderError::BadName("only A-Z a-z 0-9 . _ - are allowed"),
        ),
        (
            "name not utf-8",
            |s| s[off::NAME] = 0xff,
            true,
            HeaderError::BadName("only A-Z a-z 0-9 . _ - are allowed"),
        ),
        (
            "extent size 3000",
            |s| put(s, off::EXTENTSIZE, &3000u32.to_le_bytes()),
            true,
            HeaderError::BadExtentSize(3000),
        ),
        (
            "extent size 2 GiB",
            |s| put(s, off::EXTENTSIZE, &(1u32 << 31).to_le_bytes()),
            true,
            HeaderError::BadExtentSize(1 << 31),
        ),
        (
            "keepdirty 0",
            |s| put(s, off::KEEPDIRTY, &0u32.to_le_bytes()),
            true,
            HeaderError::BadKeepdirty(0),
        ),
        (
            "keepdirty 65537",
            |s| put(s, off::KEEPDIRTY, &65537u32.to_le_bytes()),
            true,
            HeaderError::BadKeepdirty(65537),
        ),
        (
            "datasize 0",
            |s| put(s, off::DATASIZE, &0u64.to_le_bytes()),
            true,
            HeaderError::BadDatasize(0),
        ),
        (
            "datasize unaligned",
            |s| put(s, off::DATASIZE, &4097u64.to_le_bytes()),
            true,
            HeaderError::BadDatasize(4097),
        ),
        (
            "map offset",
            |s| put(s, off::MAP_OFFSET, &4096u64.to_le_bytes()),
            true,
            HeaderError::BadMapOffset(4096),
        ),
        (
            "map size",
            |s| put(s, off::MAP_SIZE, &8192u64.to_le_bytes()),
            true,
            HeaderError::BadMapSize {
                found: 8192,
                expected: 4096,
            },
        ),
        (
            "data offset",
            |s| put(s, off::DATA_OFFSET, &0u64.to_le_bytes()),
            true,
            HeaderError::BadDataOffset {
                found: 0,
                expected: 12288,
            },
        ),
        (
            "prevrole 3",
            |s| s[off::PREVROLE] = 3,
            true,
            HeaderError::BadRole(3),
        ),
        (
            "flags",
            |s| put(s, off::FLAGS, &4u32.to_le_bytes()),
            true,
            HeaderError::UnknownFlags(4),
        ),
    ];
    for (what, edit, reseal_it, want) in cases {
        let mut slot = sample("r0", 1).encode().to_vec();
        edit(&mut slot);
        if *reseal_it {
            reseal(&mut slot);
        }
        let got = match Header::decode(&slot) {
            Err(MetaError::Header(e)) => e,
            other => panic!("{what}: {other:?}"),
        };
        match (want, &got) {
            (HeaderError::BadChecksum { .. }, HeaderError::BadChecksum { .. }) => {}
            _ => assert_eq!(&got, want, "{what}"),
        }
    }
}

#[test]
fn validate_limits_map_size() {
    let mut h = sample("r0", 1);
    h.extentsize = 4096;
    h.datasize = 2 << 40; // 2 TiB of 4 KiB extents: a 64 MiB map
    h.map_size = map_size(h.datasize, h.extentsize);
    h.data_offset = MAP_OFFSET + h.map_size;
    assert_eq!(h.validate(), Err(HeaderError::MapTooLarge(64 << 20)));
    // The encoded slot is rejected for the same reason, before anything is allocated.
    let err = Header::decode(&h.encode()[..]).unwrap_err();
    assert!(matches!(
        err,
        MetaError::Header(HeaderError::MapTooLarge(_))
    ));
}

#[test]
fn layout_for_create_table() {
    let mib = 1u64 << 20;
    let min = MAP_OFFSET + 4096 + mib;
    // (mediasize, extentsize, Ok((datasize, map_size)) or Err(exit code))
    type Case = (u64, u32, Result<(u64, u64), i32>);
    let cases: &[Case] = &[
        (min, 4096, Ok((mib, 4096))),
        (min - 1, 4096, Err(EX_DATAERR)),
        (65536, 2 << 20, Err(EX_DATAERR)),
        (0, 2 << 20, Err(EX_DATAERR)),
        (64 * mib, 3000, Err(EX_USAGE)),
        (64 * mib, 2048, Err(EX_USAGE)),
        (64 * mib, 1 << 31, Err(EX_USAGE)),
        (64 * mib, 2 << 20, Ok((64 * mib - 12288, 4096))),
        // 1 TiB at 2 MiB extents: 512Ki extents = 64 KiB of map.
        (1 << 40, 2 << 20, Ok(((1 << 40) - 8192 - 65536, 65536))),
        // 1 TiB at 4 KiB: exactly 2^28 extents would need 32 MiB; the map takes a bit
        // of the space, so slightly fewer.
        (1 << 40, 4096, Ok(((1 << 40) - 8192 - (32 << 20), 32 << 20))),
        // 2 TiB at 4 KiB: 64 MiB of map, over the limit.
        (2 << 40, 4096, Err(EX_USAGE)),
        (u64::MAX, 1 << 30, Err(EX_USAGE)),
    ];
    for &(mediasize, es, want) in cases {
        let got = Layout::for_create(mediasize, es);
        match (want, got) {
            (Ok((datasize, map)), Ok(l)) => {
                assert_eq!(
                    (l.datasize, l.map_size),
                    (datasize, map),
                    "{mediasize} {es}"
                );
                assert_eq!(l.data_offset, MAP_OFFSET + map);
                assert_eq!(l.extent_count, extent_count(datasize, es));
            }
            (Err(code), Err(e)) => assert_eq!(e.exit_code(), code, "{mediasize} {es}: {e}"),
            (want, got) => panic!("{mediasize} {es}: want {want:?}, got {got:?}"),
        }
    }
}

proptest! {
    /// Whatever the provider size, the layout is self-consistent (it validates as a
    /// header), fits the provider, and wastes less than a few pages.
    #[test]
    fn layout_is_consistent(mediasize in (MAP_OFFSET + 4096 + DATASIZE_MIN)..(1u64 << 44), shift in 12u32..=30) {
        let es = 1u32 << shift;
        match Layout::for_create(mediasize, es) {
            Ok(l) => {
                let h = Header { extentsize: es, datasize: l.datasize, map_size: l.map_size,
                    data_offset: l.data_offset, ..sample("r0", 1) };
                prop_assert_eq!(h.validate(), Ok(()));
                prop_assert!(l.data_offset + l.datasize <= mediasize);
                prop_assert!(mediasize - (l.data_offset + l.datasize) < 3 * BLOCK_SIZE);
            }
            Err(e) => prop_assert!(matches!(e, MetaError::TooManyExtents { .. }), "{}", e),
        }
    }

    /// Any header that validates survives encode/decode unchanged.
    #[test]
    fn round_trip_any_valid_header(generation: u64, resuid: u64, localcnt: u64, remotecnt: u64,
            epoch: u64, keepdirty in 1u32..=65536, role in 0u8..3, name in "[A-Za-z0-9._-]{1,64}") {
        let h = Header { generation, resuid, localcnt, remotecnt, epoch, keepdirty,
            prevrole: Role::from_code(role).unwrap(), name, ..sample("x", 0) };
        let slot = h.encode();
        prop_assert_eq!(Header::decode(&slot[..]).unwrap(), h);
    }
}

#[test]
fn pick_slot_table() {
    let ok = |g| Ok(sample("r0", g));
    let bad = || Err(MetaError::Header(HeaderError::BadMagic));
    let crc = || {
        Err(MetaError::Header(HeaderError::BadChecksum {
            stored: 1,
            computed: 2,
        }))
    };
    // (a, b, Ok((slot, generation, other error text)) or Err(message))
    type Case = (
        Result<Header, MetaError>,
        Result<Header, MetaError>,
        Result<(usize, u64, Option<&'static str>), &'static str>,
    );
    let cases: Vec<Case> = vec![
        (ok(4), ok(5), Ok((1, 5, None))),
        (ok(6), ok(5), Ok((0, 6, None))),
        (ok(0), ok(1), Ok((1, 1, None))),
        (bad(), ok(5), Ok((1, 5, Some("metadata slot A: bad magic")))),
        (ok(8), crc(), Ok((0, 8, Some("metadata slot B: bad checksum (stored 0x00000001, computed 0x00000002)")))),
        // A valid header in the wrong slot was not written by us.
        (ok(5), ok(4), Err("no valid metadata (slot A: generation 5 does not belong in this slot; slot B: generation 4 does not belong in this slot) — run hastctl create")),
        (ok(3), ok(2), Err("no valid metadata (slot A: generation 3 does not belong in this slot; slot B: generation 2 does not belong in this slot) — run hastctl create")),
        (bad(), crc(), Err("no valid metadata (slot A: bad magic; slot B: bad checksum (stored 0x00000001, computed 0x00000002)) — run hastctl create")),
    ];
    for (i, (a, b, want)) in cases.into_iter().enumerate() {
        match (pick_slot(a, b), want) {
            (Ok(p), Ok((slot, generation, other))) => {
                assert_eq!(
                    (p.slot, p.header.generation),
                    (slot, generation),
                    "case {i}"
                );
                assert_eq!(
                    p.other_error.map(|e| e.to_string()).as_deref(),
                    other,
                    "case {i}"
                );
            }
            (Err(e), Err(msg)) => {
                assert_eq!(e.to_string(), msg, "case {i}");
                assert_eq!(e.exit_code(), EX_DATAERR);
            }
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn role_text_round_trip() {
    for (role, text) in [
        (Role::Init, "init"),
        (Role::Primary, "primary"),
        (Role::Secondary, "secondary"),
    ] {
        assert_eq!(role.to_string(), text);
        assert_eq!(text.parse::<Role>().unwrap(), role);
    }
    let err = "master".parse::<Role>().unwrap_err();
    assert_eq!(err.exit_code(), EX_USAGE);
    assert_eq!(
        err.to_string(),
        "unknown role \"master\" (expected init, primary or secondary)"
    );
}

#[test]
fn check_name_table() {
    let h = sample("r0", 1);
    assert!(check_name(&h, "r0").is_ok());
    let err = check_name(&h, "r1").unwrap_err();
    assert_eq!(err.exit_code(), EX_DATAERR);
    assert_eq!(
        err.to_string(),
        "metadata belongs to resource \"r0\", but the configuration expects \"r1\" (wrong local component?)"
    );
    let long = "x".repeat(65);
    for (name, ok) in [
        ("r0", true),
        ("A.b_c-9", true),
        ("", false),
        ("a/b", false),
        ("a b", false),
        ("é", false),
        (long.as_str(), false),
    ] {
        assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn error_messages_and_exit_codes() {
    use std::path::PathBuf;
    let io = || std::io::Error::from_raw_os_error(libc::EIO);
    let cases: Vec<(MetaError, &str, i32)> = vec![
        (MetaError::BadExtentSize(3000), "extent size 3000 is not a power of two >= 4096 and <= 1 GiB", EX_USAGE),
        (MetaError::BadKeepdirty(0), "keepdirty 0 out of range (1..=65536)", EX_USAGE),
        (
            MetaError::TooSmall { path: Some(PathBuf::from("/x")), mediasize: 65536, need: 1060864 },
            "provider /x too small: 65536 bytes, need at least 1060864",
            EX_DATAERR,
        ),
        (
            MetaError::TooSmall { path: None, mediasize: 65536, need: 1060864 },
            "provider too small: 65536 bytes, need at least 1060864",
            EX_DATAERR,
        ),
        (
            MetaError::MediasizeTooLarge { path: PathBuf::from("/x"), requested: 10, available: 5 },
            "mediasize 10 is larger than provider /x (5 bytes)",
            EX_USAGE,
        ),
        (MetaError::NotFound { path: PathBuf::from("/nope") }, "provider /nope does not exist (create it first)", EX_NOINPUT),
        (
            MetaError::Io { path: PathBuf::from("/x"), what: "read activemap", source: io() },
            "/x: read activemap: Input/output error (os error 5)",
            EX_IOERR,
        ),
        (
            MetaError::NoValidMetadata {
                path: Some(PathBuf::from("/x")),
                slot_a: Box::new(HeaderError::BadMagic.into()),
                slot_b: Box::new(HeaderError::UnsupportedVersion(7).into()),
            },
            "no valid metadata on /x (slot A: bad magic; slot B: unsupported metadata format version 7 (this build reads version 1)) — run hastctl create",
            EX_DATAERR,
        ),
        (MetaError::Internal("x"), "internal error: x", EX_SOFTWARE),
    ];
    for (err, msg, code) in cases {
        assert_eq!(err.to_string(), msg);
        assert_eq!(err.exit_code(), code, "{msg}");
    }
}
