//! Transmission replies, sans-IO: simple replies and structured reply chunks
//! (OFFSET_DATA, OFFSET_HOLE, NONE, BLOCK_STATUS, ERROR). Encoders produce a
//! fixed-size [`Head`] on the stack; bulk data (read payloads, status
//! descriptors, error text) travels beside it, so the shell can write head
//! and data with one vectored write and no copy. Client-side decoders are
//! here too, for tests, fuzzing and a future NBD client.

use crate::handshake::arr;
use crate::proto::*;

/// Largest fixed part of any reply this server sends (OFFSET_HOLE).
pub const HEAD_MAX: usize = CHUNK_HEADER_LEN + 12;

/// The fixed-size front of one reply message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; HEAD_MAX],
    len: u8,
}

impl Head {
    fn new(parts: &[&[u8]]) -> Head {
        let mut h = Head {
            bytes: [0; HEAD_MAX],
            len: 0,
        };
        for p in parts {
            let at = h.len as usize;
            // Callers pass at most HEAD_MAX bytes in total (fixed layouts).
            let n = p.len().min(HEAD_MAX - at);
            h.bytes[at..at + n].copy_from_slice(&p[..n]);
            h.len += n as u8;
        }
        h
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Head({:02x?})", self.as_bytes())
    }
}

/// A simple reply; `errno` `None` means success. For a successful READ the
/// data follows the head.
pub fn simple(cookie: u64, errno: Option<Errno>) -> Head {
    let code = errno.map_or(0, Errno::code);
    Head::new(&[
        &SIMPLE_REPLY_MAGIC.to_be_bytes(),
        &code.to_be_bytes(),
        &cookie.to_be_bytes(),
    ])
}

fn chunk(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    ChunkHeader {
        flags,
        kind,
        cookie,
        len,
    }
    .encode()
}

fn done_flag(done: bool) -> u16 {
    if done {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// `NBD_REPLY_TYPE_OFFSET_DATA` head; `data_len` bytes of data follow.
/// `data_len` is bounded by the negotiated payload maximum (≤ 1 GiB), so the
/// chunk length cannot overflow.
pub fn offset_data(cookie: u64, offset: u64, data_len: u32, done: bool) -> Head {
    let len = data_len.saturating_add(8);
    Head::new(&[
        &chunk(done_flag(done), REPLY_TYPE_OFFSET_DATA, cookie, len),
        &offset.to_be_bytes(),
    ])
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`: `hole_len` (nonzero) bytes read as zero.
pub fn offset_hole(cookie: u64, offset: u64, hole_len: u32, done: bool) -> Head {
    Head::new(&[
        &chunk(done_flag(done), REPLY_TYPE_OFFSET_HOLE, cookie, 12),
        &offset.to_be_bytes(),
        &hole_len.to_be_bytes(),
    ])
}

/// `NBD_REPLY_TYPE_NONE` with DONE: success without payload.
pub fn none(cookie: u64) -> Head {
    Head::new(&[&chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)])
}

/// `NBD_REPLY_TYPE_ERROR` with DONE. Returns the head and the message to
/// send after it (clipped to the 4096-byte string limit).
pub fn error(cookie: u64, errno: Errno, message: &str) -> (Head, &str) {
    let msg = clip_str(message);
    let len = 6 + msg.len() as u32;
    let head = Head::new(&[
        &chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, len),
        &errno.code().to_be_bytes(),
        &(msg.len() as u16).to_be_bytes(),
    ]);
    (head, msg)
}

/// `NBD_REPLY_TYPE_BLOCK_STATUS` head; `descriptors` (from
/// [`encode_extents`], a multiple of 8 bytes) follow.
pub fn block_status(cookie: u64, context_id: u32, descriptors_len: u32, done: bool) -> Head {
    let len = descriptors_len.saturating_add(4);
    Head::new(&[
        &chunk(done_flag(done), REPLY_TYPE_BLOCK_STATUS, cookie, len),
        &context_id.to_be_bytes(),
    ])
}

fn clip_str(s: &str) -> &str {
    if s.len() <= STRING_LEN_MAX {
        return s;
    }
    let mut end = STRING_LEN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Turn a backend's extent list into `BLOCK_STATUS` descriptors that obey
/// proto.md whatever the backend returned: zero-length extents dropped,
/// neighbours with equal flags merged, the total clipped to the request
/// (never past it, so never past the export), one descriptor with REQ_ONE,
/// at most 2^20 descriptors, and at least one (status 0 = "allocated, not
/// known zero", always a safe answer).
pub fn encode_extents(extents: &[BlockExtent], req_len: u32, req_one: bool) -> Vec<u8> {
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(extents.len().min(64));
    let mut total: u32 = 0;
    for e in extents.iter().filter(|e| e.len > 0) {
        if total >= req_len {
            break;
        }
        let len = e.len.min(req_len - total);
        let flags = e.flags();
        let full = req_one || out.len() >= BLOCK_STATUS_EXTENTS_MAX;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += len,
            Some(_) if full => break,
            _ => out.push((len, flags)),
        }
        total += len;
    }
    if out.is_empty() {
        out.push((req_len, 0));
    }
    let mut bytes = Vec::with_capacity(out.len() * 8);
    for (len, flags) in out {
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
    }
    bytes
}

// ------------------------------------------------------ client decoding

/// A decoded simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    /// `None` if the magic is not the simple-reply magic.
    pub fn parse(raw: &[u8; SIMPLE_REPLY_LEN]) -> Option<SimpleReply> {
        if u32::from_be_bytes(arr(&raw[0..4])) != SIMPLE_REPLY_MAGIC {
            return None;
        }
        Some(SimpleReply {
            error: u32::from_be_bytes(arr(&raw[4..8])),
            cookie: u64::from_be_bytes(arr(&raw[8..16])),
        })
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    /// Payload length following the header.
    pub len: u32,
}

impl ChunkHeader {
    /// `None` if the magic is not the structured-reply magic.
    pub fn parse(raw: &[u8; CHUNK_HEADER_LEN]) -> Option<ChunkHeader> {
        if u32::from_be_bytes(arr(&raw[0..4])) != STRUCTURED_REPLY_MAGIC {
            return None;
        }
        Some(ChunkHeader {
            flags: u16::from_be_bytes(arr(&raw[4..6])),
            kind: u16::from_be_bytes(arr(&raw[6..8])),
            cookie: u64::from_be_bytes(arr(&raw[8..16])),
            len: u32::from_be_bytes(arr(&raw[16..20])),
        })
    }

    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..20].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// Decode an ERROR chunk payload: (errno, message).
pub fn parse_error_payload(p: &[u8]) -> Option<(u32, String)> {
    if p.len() < 6 {
        return None;
    }
    let errno = u32::from_be_bytes(arr(&p[0..4]));
    let n = u16::from_be_bytes(arr(&p[4..6])) as usize;
    let msg = p.get(6..6 + n)?;
    Some((errno, String::from_utf8_lossy(msg).into_owned()))
}

/// Decode a BLOCK_STATUS chunk payload: (context id, [(length, flags)]).
pub fn parse_block_status_payload(p: &[u8]) -> Option<(u32, Vec<(u32, u32)>)> {
    if p.len() < 12 || (p.len() - 4) % 8 != 0 {
        return None;
    }
    let id = u32::from_be_bytes(arr(&p[0..4]));
    let d = p[4..]
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes(arr(&c[0..4])),
                u32::from_be_bytes(arr(&c[4..8])),
            )
        })
        .collect();
    Some((id, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(h: &Head) -> ChunkHeader {
        ChunkHeader::parse(&arr(&h.as_bytes()[..CHUNK_HEADER_LEN])).expect("chunk magic")
    }

    #[test]
    fn simple_reply_layout() {
        let h = simple(0xabcdef, None);
        assert_eq!(h.as_bytes().len(), SIMPLE_REPLY_LEN);
        assert_eq!(&h.as_bytes()[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(
            SimpleReply::parse(&arr(h.as_bytes())),
            Some(SimpleReply {
                error: 0,
                cookie: 0xabcdef
            })
        );
        let h = simple(1, Some(Errno::NoSpc));
        assert_eq!(SimpleReply::parse(&arr(h.as_bytes())).unwrap().error, 28);
        assert_eq!(SimpleReply::parse(&[0; 16]), None);
    }

    #[test]
    fn chunk_layouts() {
        let h = offset_data(7, 4096, 512, true);
        assert_eq!(h.as_bytes().len(), 28);
        assert_eq!(
            ch(&h),
            ChunkHeader {
                flags: REPLY_FLAG_DONE,
                kind: REPLY_TYPE_OFFSET_DATA,
                cookie: 7,
                len: 520
            }
        );
        assert_eq!(&h.as_bytes()[20..28], &4096u64.to_be_bytes());

        let h = offset_hole(7, 0, 9, false);
        assert_eq!(h.as_bytes().len(), 32);
        let c = ch(&h);
        assert_eq!(
            (c.kind, c.len, c.done()),
            (REPLY_TYPE_OFFSET_HOLE, 12, false)
        );

        let h = none(9);
        assert_eq!(h.as_bytes().len(), 20);
        let c = ch(&h);
        assert_eq!((c.kind, c.len, c.done()), (REPLY_TYPE_NONE, 0, true));

        let h = block_status(3, META_BASE_ALLOCATION_ID, 16, true);
        assert_eq!(h.as_bytes().len(), 24);
        assert_eq!((ch(&h).kind, ch(&h).len), (REPLY_TYPE_BLOCK_STATUS, 20));
    }

    #[test]
    fn error_chunk_round_trip() {
        let (h, msg) = error(5, Errno::Inval, "bad thing");
        let c = ch(&h);
        assert_eq!((c.kind, c.done(), c.len), (REPLY_TYPE_ERROR, true, 6 + 9));
        let mut payload = h.as_bytes()[20..].to_vec();
        payload.extend_from_slice(msg.as_bytes());
        assert_eq!(
            parse_error_payload(&payload),
            Some((22, "bad thing".into()))
        );

        let long = "ü".repeat(5000);
        let (h, msg) = error(5, Errno::Io, &long);
        assert!(msg.len() <= STRING_LEN_MAX);
        assert_eq!(ch(&h).len as usize, 6 + msg.len());
    }

    fn ext(len: u32, hole: bool, zero: bool) -> BlockExtent {
        BlockExtent { len, hole, zero }
    }

    fn descs(b: &[u8]) -> Vec<(u32, u32)> {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(b);
        parse_block_status_payload(&p).unwrap().1
    }

    /// (backend extents, request length, REQ_ONE, expected descriptors)
    type ExtentCase = (Vec<BlockExtent>, u32, bool, Vec<(u32, u32)>);

    #[test]
    fn extents_table() {
        let data = ext(4096, false, false);
        let hole = ext(4096, true, true);
        #[rustfmt::skip]
        let cases: Vec<ExtentCase> = vec![
            (vec![], 8192, false, vec![(8192, 0)]),
            (vec![ext(0, true, true)], 8192, false, vec![(8192, 0)]),
            (vec![data, hole], 8192, false, vec![(4096, 0), (4096, 3)]),
            (vec![data, hole], 8192, true, vec![(4096, 0)]),
            (vec![data, data, hole], 16384, true, vec![(8192, 0)]),
            (vec![data, data, hole], 16384, false, vec![(8192, 0), (4096, 3)]),
            (vec![data, hole, data], 6000, false, vec![(4096, 0), (1904, 3)]),
            (vec![ext(1 << 20, true, false)], 512, true, vec![(512, 1)]),
            (vec![data, ext(0, false, false), hole], 8192, false, vec![(4096, 0), (4096, 3)]),
            (vec![ext(u32::MAX, false, true), data], u32::MAX, false, vec![(u32::MAX, 2)]),
        ];
        for (i, (extents, len, one, want)) in cases.into_iter().enumerate() {
            assert_eq!(descs(&encode_extents(&extents, len, one)), want, "case {i}");
        }
    }

    #[test]
    fn extents_are_capped() {
        let alternating: Vec<BlockExtent> = (0..(BLOCK_STATUS_EXTENTS_MAX + 10))
            .map(|i| ext(1, i % 2 == 0, false))
            .collect();
        let d = descs(&encode_extents(&alternating, u32::MAX, false));
        assert_eq!(d.len(), BLOCK_STATUS_EXTENTS_MAX);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn extents_obey_the_rules(
                lens in proptest::collection::vec((0u32..10_000, any::<bool>(), any::<bool>()), 0..40),
                req_len in 1u32..50_000,
                req_one in any::<bool>(),
            ) {
                let extents: Vec<BlockExtent> =
                    lens.into_iter().map(|(l, h, z)| ext(l, h, z)).collect();
                let d = descs(&encode_extents(&extents, req_len, req_one));
                prop_assert!(!d.is_empty());
                prop_assert!(d.iter().all(|x| x.0 > 0 && x.1 & !3 == 0));
                let total: u64 = d.iter().map(|x| u64::from(x.0)).sum();
                prop_assert!(total <= u64::from(req_len));
                if req_one {
                    prop_assert_eq!(d.len(), 1);
                }
                prop_assert!(d.windows(2).all(|w| w[0].1 != w[1].1));
            }

            #[test]
            fn chunk_header_round_trip(b in proptest::array::uniform20(any::<u8>())) {
                if let Some(h) = ChunkHeader::parse(&b) {
                    prop_assert_eq!(h.encode(), b);
                }
            }
        }
    }
}
