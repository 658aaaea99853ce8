#![no_main]
//! Replication traffic from an arbitrary peer: frame headers, frame bodies
//! (digest, lz4), hellos and activemap chunks never panic and never allocate
//! past the frame's own limits; whatever decodes re-encodes to the same bytes;
//! and anything the encoder produces decodes back to the same data.

use hast_repl::{
    decode_data, encode_data_frame, ChecksumKind, Compression, Data, FrameHeader, Hello,
    HelloReply, Kind, MapAssembler, HEADER_LEN,
};

/// Map chunks driven per input.
const MAP_OPS_MAX: usize = 64;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A frame: header from the first 32 bytes, then its body.
    if let Some((raw, rest)) = data.split_first_chunk::<HEADER_LEN>() {
        if let Ok(h) = FrameHeader::decode(raw) {
            assert_eq!(&h.encode(), raw, "header decoding must be canonical");
            let body = &rest[..rest.len().min(h.body_len())];
            let (digest, payload) = body.split_at(body.len().min(h.digest_len()));
            if let Ok(d) = decode_data(&h, digest, payload.to_vec()) {
                match d {
                    Data::Zero(n) => assert_eq!(n, h.length),
                    Data::Bytes(b) if h.kind == Kind::Write => assert_eq!(b.len(), h.length as usize),
                    Data::Bytes(b) => assert!(b.len() <= hast_repl::DATA_MAX as usize),
                }
            }
        }
    }

    // Hellos.
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(h.encode(), data);
    }
    if let Ok(r) = HelloReply::decode(data) {
        assert_eq!(r.encode(), data);
    }

    // The encoder: the first byte picks the encoding, the rest is the data.
    if let Some((&ctl, payload)) = data.split_first() {
        if !payload.is_empty() {
            let kind = if ctl & 1 == 0 { Kind::Write } else { Kind::Reply };
            let compression = [Compression::None, Compression::Hole, Compression::Lz4]
                [usize::from(ctl >> 1 & 3) % 3];
            let checksum = ChecksumKind::ALL[usize::from(ctl >> 3 & 3)];
            let mut out = Vec::new();
            encode_data_frame(kind, 0, 1, 4096, payload, compression, checksum, &mut out);
            let (raw, body) = out.split_first_chunk::<HEADER_LEN>().expect("header");
            let h = FrameHeader::decode(raw).expect("encoded header decodes");
            assert_eq!(body.len(), h.body_len());
            let (digest, p) = body.split_at(h.digest_len());
            match decode_data(&h, digest, p.to_vec()).expect("encoded frame decodes") {
                Data::Zero(n) => {
                    assert_eq!(n as usize, payload.len());
                    assert!(payload.iter().all(|&b| b == 0));
                }
                Data::Bytes(b) => assert_eq!(b, payload),
            }
        }
    }

    // Activemap chunks: (offset u16, len u8, last) quadruples against a map
    // whose length is the first two bytes.
    if let Some((len, ops)) = data.split_first_chunk::<2>() {
        let map_len = usize::from(u16::from_le_bytes(*len)) % 4096;
        let mut asm = MapAssembler::new(map_len).expect("small map");
        let chunk = [0xA5u8; 256];
        for op in ops.chunks_exact(4).take(MAP_OPS_MAX) {
            let offset = u64::from(u16::from_le_bytes([op[0], op[1]]));
            let n = usize::from(op[2]);
            if let Ok(Some(m)) = asm.add(offset, &chunk[..n], op[3] & 1 != 0) {
                assert_eq!(m.len(), map_len);
            }
        }
    }
});
