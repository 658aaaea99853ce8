//! Header rules as a table, round trips over every kind × compression ×
//! checksum, corruption, and property tests of the decoder on hostile bytes.

use super::*;
use proptest::prelude::*;

use flags::*;
use ChecksumKind as C;

fn hdr(
    kind: Kind,
    flags: u8,
    checksum: ChecksumKind,
    offset: u64,
    length: u32,
    payload_len: u32,
) -> FrameHeader {
    FrameHeader {
        kind,
        flags,
        checksum,
        seq: 7,
        offset,
        length,
        payload_len,
    }
}

/// Splits one encoded frame into its parts, checking it is exactly one frame.
fn split(frame: &[u8]) -> (FrameHeader, Vec<u8>, Vec<u8>) {
    let raw: &[u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
    let h = FrameHeader::decode(raw).unwrap();
    let body = &frame[HEADER_LEN..];
    assert_eq!(body.len(), h.body_len(), "frame length");
    let (d, p) = body.split_at(h.digest_len());
    (h, d.to_vec(), p.to_vec())
}

fn decode_frame(frame: &[u8]) -> Result<(FrameHeader, Data), ReplError> {
    let (h, d, p) = split(frame);
    decode_data(&h, &d, p).map(|data| (h, data))
}

const MIB: u32 = 1 << 20;

/// Every per-kind header rule, one row each: `None` = valid, `Some(text)` =
/// rejected with a message containing `text`.
#[test]
fn header_rules_table() {
    use Kind::*;
    let lz4max = lz4_payload_max(4096);
    #[rustfmt::skip]
    let cases: Vec<(&str, FrameHeader, Option<&str>)> = vec![
        // WRITE
        ("write raw", hdr(Write, 0, C::Crc32c, 4096, 4096, 4096), None),
        ("write raw sha256 fua sync", hdr(Write, FUA | SYNC, C::Sha256, 0, 512, 512), None),
        ("write max", hdr(Write, 0, C::None, 0, DATA_MAX, DATA_MAX), None),
        ("write too long", hdr(Write, 0, C::None, 0, 40_000_000, 40_000_000), Some("WRITE of 40000000 bytes exceeds 33554432")),
        ("write empty", hdr(Write, 0, C::None, 0, 0, 0), Some("WRITE of 0 bytes")),
        ("write overflow", hdr(Write, 0, C::None, u64::MAX - 10, 512, 512), Some("overflows")),
        ("write ends at u64::MAX", hdr(Write, 0, C::None, u64::MAX - 512, 512, 512), None),
        ("write payload != length", hdr(Write, 0, C::None, 0, 512, 511), Some("expected = length")),
        ("write zero", hdr(Write, ZERO, C::None, 0, 4096, 0), None),
        ("write zero punch", hdr(Write, ZERO | PUNCH | FUA, C::None, 0, 4096, 0), None),
        ("write zero with payload", hdr(Write, ZERO, C::None, 0, 4096, 4096), Some("expected 0 with ZERO")),
        ("write zero with checksum", hdr(Write, ZERO, C::Crc32, 0, 4096, 0), Some("checksum crc32 not allowed on WRITE")),
        ("write zero+lz4", hdr(Write, ZERO | LZ4, C::None, 0, 4096, 0), Some("flags 0x06 not allowed on WRITE")),
        ("write punch without zero", hdr(Write, PUNCH, C::None, 0, 4096, 4096), Some("flags 0x10 not allowed")),
        ("write lz4", hdr(Write, LZ4, C::Crc32, 0, 4096, 100), None),
        ("write lz4 at bound", hdr(Write, LZ4, C::None, 0, 4096, lz4max), None),
        ("write lz4 past bound", hdr(Write, LZ4, C::None, 0, 4096, lz4max + 1), Some("lz4 bound")),
        ("write lz4 prefix only", hdr(Write, LZ4, C::None, 0, 4096, 4), Some("5..=")),
        ("write lz4 max", hdr(Write, LZ4, C::None, 0, DATA_MAX, PAYLOAD_MAX), None),
        ("write last flag", hdr(Write, LAST, C::None, 0, 512, 512), Some("flags 0x20 not allowed on WRITE")),
        // ZERO
        ("zero", hdr(Zero, PUNCH | FUA | SYNC, C::None, 1 << 40, u32::MAX, 0), None),
        ("zero empty", hdr(Zero, 0, C::None, 0, 0, 0), Some("ZERO of 0 bytes")),
        ("zero payload", hdr(Zero, 0, C::None, 0, 512, 1), Some("ZERO payload of 1 bytes")),
        ("zero checksum", hdr(Zero, 0, C::Crc32c, 0, 512, 0), Some("not allowed on ZERO")),
        ("zero lz4", hdr(Zero, LZ4, C::None, 0, 512, 0), Some("not allowed on ZERO")),
        ("zero overflow", hdr(Zero, 0, C::None, u64::MAX, 1, 0), Some("overflows")),
        // READ
        ("read", hdr(Read, SYNC, C::None, 8192, MIB, 0), None),
        ("read too long", hdr(Read, 0, C::None, 0, DATA_MAX + 1, 0), Some("READ of 33554433 bytes exceeds 33554432")),
        ("read empty", hdr(Read, 0, C::None, 0, 0, 0), Some("READ of 0 bytes")),
        ("read payload", hdr(Read, 0, C::None, 0, 512, 512), Some("READ payload")),
        ("read fua", hdr(Read, FUA, C::None, 0, 512, 0), Some("not allowed on READ")),
        // FLUSH / KEEPALIVE / RECEIVED
        ("flush", hdr(Flush, SYNC, C::None, 0, 0, 0), None),
        ("flush offset", hdr(Flush, 0, C::None, 1, 0, 0), Some("FLUSH with nonzero offset 1")),
        ("flush length", hdr(Flush, 0, C::None, 0, 1, 0), Some("FLUSH with nonzero length 1")),
        ("flush payload", hdr(Flush, 0, C::None, 0, 0, 1), Some("FLUSH payload")),
        ("keepalive", hdr(Keepalive, 0, C::None, 0, 0, 0), None),
        ("keepalive flags", hdr(Keepalive, SYNC, C::None, 0, 0, 0), Some("not allowed on KEEPALIVE")),
        ("keepalive checksum", hdr(Keepalive, 0, C::Sha256, 0, 0, 0), Some("sha256 not allowed on KEEPALIVE")),
        ("received", hdr(Received, 0, C::None, 0, 0, 0), None),
        ("received payload", hdr(Received, 0, C::None, 0, 0, 4), Some("RECEIVED payload")),
        // REPLY
        ("reply ok", hdr(Reply, 0, C::None, 0, 0, 0), None),
        ("reply errno", hdr(Reply, 0, C::None, 0, 5, 0), None),
        ("reply data", hdr(Reply, SYNC, C::Sha256, 0, 0, MIB), None),
        ("reply data max", hdr(Reply, 0, C::None, 0, 0, DATA_MAX), None),
        ("reply data too long", hdr(Reply, 0, C::None, 0, 0, DATA_MAX + 1), Some("REPLY of 33554433 bytes exceeds")),
        ("reply errno with data", hdr(Reply, 0, C::None, 0, 5, 512), Some("nonzero errno with data 5")),
        ("reply lz4", hdr(Reply, LZ4, C::Crc32, 0, 0, 200), None),
        ("reply lz4 max", hdr(Reply, LZ4, C::None, 0, 0, PAYLOAD_MAX), None),
        ("reply lz4 too long", hdr(Reply, LZ4, C::None, 0, 0, PAYLOAD_MAX + 1), Some("PAYLOAD_MAX")),
        ("reply lz4 no payload", hdr(Reply, LZ4, C::None, 0, 0, 0), Some("not allowed on REPLY")),
        ("reply zero flag", hdr(Reply, ZERO, C::None, 0, 0, 0), Some("flags 0x02 not allowed on REPLY")),
        ("reply checksum no data", hdr(Reply, 0, C::Crc32c, 0, 0, 0), Some("no data")),
        ("reply echoes offset", hdr(Reply, 0, C::None, u64::MAX, 0, 0), None),
        // MAP
        ("map", hdr(Map, 0, C::Crc32c, 0, 0, MIB), None),
        ("map last empty", hdr(Map, LAST, C::Crc32c, 4096, 0, 0), None),
        ("map chunk too big", hdr(Map, 0, C::Crc32c, 0, 0, MIB + 1), Some("MAP payload")),
        ("map past end", hdr(Map, 0, C::Crc32c, MAP_MAX - 10, 0, 11), Some("MAP of 33554433 bytes exceeds")),
        ("map at end", hdr(Map, LAST, C::Crc32c, MAP_MAX - 10, 0, 10), None),
        ("map huge offset", hdr(Map, 0, C::Crc32c, u64::MAX, 0, 1), Some("exceeds")),
        ("map length", hdr(Map, 0, C::Crc32c, 0, 3, 1), Some("nonzero length")),
        ("map crc32", hdr(Map, 0, C::Crc32, 0, 0, 1), Some("messages always carry crc32c")),
        ("map fua", hdr(Map, FUA, C::Crc32c, 0, 0, 1), Some("not allowed on MAP")),
        // HELLO / HELLO_REPLY / SYNC_DONE / GOODBYE
        ("hello", hdr(Hello, 0, C::Crc32c, 0, 0, 200), None),
        ("hello empty", hdr(Hello, 0, C::Crc32c, 0, 0, 0), Some("HELLO payload of 0 bytes")),
        ("hello too big", hdr(Hello, 0, C::Crc32c, 0, 0, HELLO_MAX + 1), Some("1..=4096")),
        ("hello no checksum", hdr(Hello, 0, C::None, 0, 0, 10), Some("crc32c")),
        ("hello offset", hdr(Hello, 0, C::Crc32c, 1, 0, 10), Some("nonzero offset")),
        ("hello last", hdr(Hello, LAST, C::Crc32c, 0, 0, 10), Some("not allowed on HELLO")),
        ("hello reply", hdr(HelloReply, 0, C::Crc32c, 0, 0, HELLO_MAX), None),
        ("sync done", hdr(SyncDone, 0, C::Crc32c, 0, 0, 16), None),
        ("sync done short", hdr(SyncDone, 0, C::Crc32c, 0, 0, 8), Some("expected 16")),
        ("goodbye empty", hdr(Goodbye, 0, C::Crc32c, 0, 0, 0), None),
        ("goodbye max", hdr(Goodbye, 0, C::Crc32c, 0, 0, GOODBYE_MAX), None),
        ("goodbye too long", hdr(Goodbye, 0, C::Crc32c, 0, 0, GOODBYE_MAX + 1), Some("at most 1024")),
        ("goodbye length", hdr(Goodbye, 0, C::Crc32c, 0, 9, 0), Some("nonzero length")),
    ];
    for (name, h, want) in cases {
        let got = FrameHeader::decode(&h.encode());
        match (want, got) {
            (None, Ok(back)) => assert_eq!(back, h, "{name}"),
            (None, Err(e)) => panic!("{name}: rejected: {e}"),
            (Some(text), Ok(_)) => panic!("{name}: accepted, wanted {text:?}"),
            (Some(text), Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(text), "{name}: {msg:?} lacks {text:?}");
            }
        }
    }
}

/// The fixed fields, checked before any per-kind rule.
#[test]
fn header_fixed_fields_table() {
    let good = hdr(Kind::Keepalive, 0, C::None, 0, 0, 0).encode();
    #[rustfmt::skip]
    let cases: [(&str, usize, u8, &str); 8] = [
        ("magic", 0, b'X', "bad frame magic 0x48415358"),
        ("version 0", 4, 0, "frame version 0 unsupported"),
        ("version 2", 4, 2, "frame version 2 unsupported"),
        ("kind 0", 5, 0, "frame kind 0 unknown"),
        ("kind 16", 5, 16, "frame kind 16 unknown"),
        ("kind 42", 5, 42, "frame kind 42 unknown"),
        ("flags 0x80", 6, 0x80, "frame flags 0x80 has unknown bits"),
        ("checksum 4", 7, 4, "checksum kind 4 unknown"),
    ];
    for (name, at, byte, text) in cases {
        let mut raw = good;
        raw[at] = byte;
        let e = FrameHeader::decode(&raw).expect_err(name);
        assert!(e.to_string().starts_with(text), "{name}: {e}");
    }
    assert_eq!(&good[..4], b"TSAH");
    assert!(FrameHeader::decode(&good).is_ok());
}

#[test]
fn kind_codes_round_trip() {
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(usize::from(k.code()), i + 1);
        assert_eq!(Kind::from_code(k.code()), Some(*k));
    }
    assert_eq!(Kind::from_code(0), None);
    assert_eq!(Kind::from_code(16), None);
    assert_eq!(Kind::from_code(255), None);
}

fn compressible(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"hast replication "[i % 17]).collect()
}

/// Deterministic incompressible bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

const COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Hole, Compression::Lz4];

/// Every compression × checksum on zeroes, compressible and random data, for
/// WRITE and REPLY: the logical data comes back, and the encoding chosen is
/// the one the config asks for.
#[test]
fn data_round_trips() {
    let sets: [(&str, Vec<u8>); 4] = [
        ("zeroes", vec![0u8; 64 * 1024]),
        ("compressible", compressible(64 * 1024 + 3)),
        ("random", noise(64 * 1024, 1)),
        ("one byte", vec![9u8]),
    ];
    for kind in [Kind::Write, Kind::Reply] {
        for compression in COMPRESSIONS {
            for checksum in ChecksumKind::ALL {
                for (name, data) in &sets {
                    let ctx = format!("{kind} {compression:?} {checksum} {name}");
                    let mut out = vec![0xAA]; // encoders append
                    let fl = if kind == Kind::Write {
                        FUA | PUNCH
                    } else {
                        SYNC
                    };
                    encode_data_frame(kind, fl, 17, 4096, data, compression, checksum, &mut out);
                    assert_eq!(out[0], 0xAA);
                    let (h, got) = decode_frame(&out[1..]).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!(h.seq, 17, "{ctx}");
                    assert_eq!(h.offset, 4096, "{ctx}");
                    let hole = kind == Kind::Write
                        && compression != Compression::None
                        && *name == "zeroes";
                    let lz4 = !hole
                        && compression == Compression::Lz4
                        && matches!(*name, "zeroes" | "compressible");
                    assert_eq!(h.has(ZERO), hole, "{ctx}");
                    // PUNCH survives only on a hole.
                    assert_eq!(h.has(PUNCH), hole, "{ctx}");
                    assert_eq!(h.has(FUA), kind == Kind::Write, "{ctx}");
                    assert_eq!(h.has(SYNC), kind == Kind::Reply, "{ctx}");
                    assert_eq!(h.has(LZ4), lz4, "{ctx}");
                    if hole {
                        assert_eq!(h.payload_len, 0, "{ctx}");
                        assert_eq!(h.checksum, C::None, "{ctx}");
                        assert_eq!(got, Data::Zero(data.len() as u32), "{ctx}");
                    } else {
                        if lz4 {
                            assert!(
                                (h.payload_len as usize) < data.len() / 4,
                                "{ctx}: {}",
                                h.payload_len
                            );
                        } else {
                            assert_eq!(h.payload_len as usize, data.len(), "{ctx}");
                        }
                        assert_eq!(h.checksum, checksum, "{ctx}");
                        assert_eq!(got, Data::Bytes(data.clone()), "{ctx}");
                    }
                }
            }
        }
    }
}

#[test]
fn control_frames_round_trip() {
    #[rustfmt::skip]
    let cases: [(Kind, u8, u64, u32); 8] = [
        (Kind::Flush, SYNC, 0, 0),
        (Kind::Keepalive, 0, 0, 0),
        (Kind::Zero, FUA | PUNCH, 1 << 30, 1 << 31),
        (Kind::Read, SYNC, 4096, DATA_MAX),
        (Kind::Received, 0, 0, 0),
        (Kind::Reply, 0, 0, 0),
        (Kind::Reply, 0, 0, 5), // EIO
        (Kind::Reply, SYNC, 0, 28), // ENOSPC
    ];
    for (kind, fl, offset, length) in cases {
        let mut out = Vec::new();
        encode_control_frame(kind, fl, 99, offset, length, &mut out);
        assert_eq!(out.len(), HEADER_LEN, "{kind}");
        let (h, data) = decode_frame(&out).unwrap();
        assert_eq!(
            (h.kind, h.flags, h.seq, h.offset, h.length),
            (kind, fl, 99, offset, length)
        );
        let want = if kind == Kind::Zero {
            Data::Zero(length)
        } else {
            Data::Bytes(Vec::new())
        };
        assert_eq!(data, want, "{kind}");
    }
}

#[test]
fn message_frames_round_trip() {
    let sync = encode_sync_done(5, 7);
    let cases: [(Kind, u8, u64, &[u8]); 6] = [
        (Kind::Hello, 0, 0, b"hello bytes"),
        (Kind::HelloReply, 0, 0, b"reply bytes"),
        (Kind::Map, 0, 0, &[0xFF; 300]),
        (Kind::Map, LAST, 300, &[]),
        (Kind::SyncDone, 0, 0, &sync),
        (Kind::Goodbye, 0, 0, b"shutting down"),
    ];
    for (kind, fl, offset, payload) in cases {
        let mut out = Vec::new();
        encode_message_frame(kind, fl, 3, offset, payload, &mut out);
        let (h, data) = decode_frame(&out).unwrap();
        assert_eq!(
            (h.kind, h.flags, h.offset, h.checksum),
            (kind, fl, offset, C::Crc32c)
        );
        assert_eq!(data, Data::Bytes(payload.to_vec()), "{kind}");
    }
    assert_eq!(decode_sync_done(&sync), Ok((5, 7)));
    assert_eq!(
        decode_sync_done(&sync[..15]),
        Err(ReplError::SyncDoneLen(15))
    );
}

#[test]
fn flipped_payload_byte_is_a_checksum_error() {
    for checksum in [C::Crc32, C::Crc32c, C::Sha256] {
        for (compression, data) in [
            (Compression::None, noise(4096, 3)),
            (Compression::Lz4, compressible(4096)),
        ] {
            let mut out = Vec::new();
            encode_data_frame(
                Kind::Write,
                0,
                17,
                4096,
                &data,
                compression,
                checksum,
                &mut out,
            );
            let (h, d, mut p) = split(&out);
            // The last literal byte: lz4 keeps the final bytes as literals,
            // so flipping it changes the data without breaking the block.
            let last = p.len() - 1;
            p[last] ^= 0x01;
            let e = decode_data(&h, &d, p).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("checksum mismatch ({checksum}) on WRITE seq 17 at offset 4096"),
                "{compression:?}"
            );
        }
    }
    // And a flipped digest byte.
    let mut out = Vec::new();
    encode_message_frame(Kind::Goodbye, 0, 1, 0, b"bye", &mut out);
    let (h, mut d, p) = split(&out);
    d[0] ^= 0x80;
    assert!(matches!(
        decode_data(&h, &d, p),
        Err(ReplError::ChecksumMismatch { .. })
    ));
}

fn lz4_frame(data: &[u8]) -> (FrameHeader, Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    encode_data_frame(
        Kind::Write,
        0,
        1,
        0,
        data,
        Compression::Lz4,
        C::None,
        &mut out,
    );
    let parts = split(&out);
    assert!(parts.0.has(LZ4));
    parts
}

#[test]
fn truncated_lz4_is_an_error() {
    let (mut h, d, p) = lz4_frame(&compressible(8192));
    for cut in [1usize, 2, 5, 10] {
        let short = p[..p.len() - cut].to_vec();
        h.payload_len = short.len() as u32;
        let e = decode_data(&h, &d, short).unwrap_err();
        assert!(matches!(e, ReplError::Lz4Corrupt { .. }), "cut {cut}: {e}");
    }
}

#[test]
fn lz4_size_claims_are_checked_before_allocating() {
    let (h, d, p) = lz4_frame(&compressible(8192));
    // A claim bigger than the frame length: rejected before the output buffer exists.
    for claim in [8193u32, u32::MAX, 0, 8191] {
        let mut bad = p.clone();
        bad[..4].copy_from_slice(&claim.to_le_bytes());
        let e = decode_data(&h, &d, bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("lz4 payload of WRITE seq 1 claims {claim} bytes, expected the frame length"),
        );
    }
    // REPLY: the claim is bounded by DATA_MAX.
    let mut out = Vec::new();
    encode_data_frame(
        Kind::Reply,
        0,
        2,
        0,
        &compressible(8192),
        Compression::Lz4,
        C::None,
        &mut out,
    );
    let (h, d, mut p) = split(&out);
    p[..4].copy_from_slice(&(DATA_MAX + 1).to_le_bytes());
    assert!(matches!(
        decode_data(&h, &d, p),
        Err(ReplError::Lz4Size { .. })
    ));
}

#[test]
fn body_length_must_match_header() {
    let mut out = Vec::new();
    encode_data_frame(
        Kind::Write,
        0,
        1,
        0,
        &[1, 2, 3],
        Compression::None,
        C::Crc32,
        &mut out,
    );
    let (h, d, p) = split(&out);
    assert!(matches!(
        decode_data(&h, &d[..3], p.clone()),
        Err(ReplError::BodyLen { .. })
    ));
    assert!(matches!(
        decode_data(&h, &d, p[..2].to_vec()),
        Err(ReplError::BodyLen { .. })
    ));
    // A hand-built header cannot bypass the limits.
    let bad = FrameHeader {
        length: DATA_MAX + 1,
        payload_len: 0,
        flags: ZERO,
        checksum: C::None,
        ..h
    };
    assert!(matches!(
        decode_data(&bad, &[], Vec::new()),
        Err(ReplError::TooLong { .. })
    ));
}

#[test]
fn constants() {
    assert_eq!(PAYLOAD_MAX, DATA_MAX + DATA_MAX / 255 + 16 + 4);
    assert_eq!(MAGIC.to_le_bytes(), *b"TSAH");
    // The largest body a peer can make us read.
    assert!(
        hdr(Kind::Write, LZ4, C::Sha256, 0, DATA_MAX, PAYLOAD_MAX).body_len()
            <= PAYLOAD_MAX as usize + 32
    );
}

#[test]
fn is_zero_edges() {
    for len in [0usize, 1, 63, 64, 65, 200] {
        assert!(is_zero(&vec![0u8; len]));
        for at in [0, len / 2, len.saturating_sub(1)] {
            if len > 0 {
                let mut v = vec![0u8; len];
                v[at] = 1;
                assert!(!is_zero(&v), "len {len} at {at}");
            }
        }
    }
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

/// Payloads for the encoders: random bytes, compressible bytes, holes.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..3000),
        prop::collection::vec(0u8..2, 1..3000),
        (1usize..3000).prop_map(|n| vec![0u8; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any 32 bytes: no panic, and a header that decodes re-encodes to the same bytes.
    #[test]
    fn random_header_bytes(raw in prop::array::uniform32(any::<u8>())) {
        if let Ok(h) = FrameHeader::decode(&raw) {
            prop_assert_eq!(h.encode(), raw);
            prop_assert!(h.body_len() <= PAYLOAD_MAX as usize + 32);
        }
    }

    /// Headers with valid fixed fields, to reach the per-kind rules.
    #[test]
    fn random_headers_reach_kind_rules(
        kind in arb_kind(), fl in any::<u8>(), ck in 0u8..4, seq in any::<u64>(),
        offset in prop_oneof![Just(0u64), any::<u64>(), 0u64..MAP_MAX],
        length in prop_oneof![Just(0u32), 0u32..4096, any::<u32>()],
        payload_len in prop_oneof![Just(0u32), 0u32..8192, any::<u32>()],
    ) {
        let h = FrameHeader { kind, flags: fl & ALL, checksum: C::from_code(ck).unwrap(), seq, offset, length, payload_len };
        if let Ok(back) = FrameHeader::decode(&h.encode()) {
            prop_assert_eq!(back, h);
            prop_assert!(h.payload_len <= PAYLOAD_MAX);
        }
    }

    /// A valid header with a random body: an error or data, never a panic.
    #[test]
    fn random_bodies_never_panic(kind in arb_kind(), lz4 in any::<bool>(), ck in 0u8..4, body in prop::collection::vec(any::<u8>(), 0..600)) {
        let checksum = C::from_code(ck).unwrap();
        let dl = checksum.digest_len().min(body.len());
        let (d, p) = body.split_at(dl);
        let fl = if lz4 { LZ4 } else { 0 };
        let h = FrameHeader { kind, flags: fl, checksum, seq: 1, offset: 0, length: 512, payload_len: p.len() as u32 };
        let _ = decode_data(&h, d, p.to_vec());
    }

    /// The head-only encoder plus the data it leaves out is the whole
    /// frame, and it leaves the data out exactly when the payload is the
    /// data verbatim (no hole, no lz4).
    #[test]
    fn head_plus_verbatim_data_is_the_frame(
        write in any::<bool>(), fl in any::<u8>(), seq in any::<u64>(),
        data in payloads(),
        comp in 0usize..3, ck in 0u8..4,
    ) {
        let kind = if write { Kind::Write } else { Kind::Reply };
        let fl = fl & kind.allowed_flags() & !LAST;
        let (compression, checksum) = (COMPRESSIONS[comp], C::from_code(ck).unwrap());
        let mut whole = Vec::new();
        encode_data_frame(kind, fl, seq, 512, &data, compression, checksum, &mut whole);
        let mut head = vec![7u8];
        let verbatim = encode_data_head(kind, fl, seq, 512, &data, compression, checksum, &mut head);
        prop_assert_eq!(head[0], 7);
        if verbatim {
            head.extend_from_slice(&data);
        }
        prop_assert_eq!(&head[1..], &whole[..]);
        let h = FrameHeader::decode(whole[..HEADER_LEN].try_into().unwrap()).unwrap();
        prop_assert_eq!(verbatim, !h.has(ZERO) && !h.has(LZ4));
    }

    /// Random data through every encoding comes back unchanged.
    #[test]
    fn random_frames_round_trip(
        write in any::<bool>(), fl in any::<u8>(), seq in any::<u64>(), offset in 0u64..(1 << 50),
        data in payloads(),
        comp in 0usize..3, ck in 0u8..4,
    ) {
        let kind = if write { Kind::Write } else { Kind::Reply };
        let fl = fl & kind.allowed_flags() & !LAST;
        let mut out = Vec::new();
        encode_data_frame(kind, fl, seq, offset, &data, COMPRESSIONS[comp], C::from_code(ck).unwrap(), &mut out);
        let (h, got) = decode_frame(&out).unwrap();
        prop_assert_eq!(h.seq, seq);
        prop_assert!(h.payload_len as usize <= data.len());
        match got {
            Data::Zero(n) => { prop_assert_eq!(n as usize, data.len()); prop_assert!(data.iter().all(|&b| b == 0)); }
            Data::Bytes(b) => prop_assert_eq!(b, data),
        }
    }
}
