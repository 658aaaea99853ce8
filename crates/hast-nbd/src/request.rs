//! Transmission requests, sans-IO: the 28-byte request header codec and
//! [`validate`], the single place that decides whether a request is served
//! or which NBD error it gets. The rules follow proto.md ("Request types",
//! "Error values", "Size constraints") and are listed in a table test.

use crate::error::NbdError;
use crate::handshake::{arr, Negotiated};
use crate::proto::*;

/// The command field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandType {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    /// Kept verbatim so the reply and the logs can name it.
    Unknown(u16),
}

impl CommandType {
    pub fn code(self) -> u16 {
        match self {
            CommandType::Read => CMD_READ,
            CommandType::Write => CMD_WRITE,
            CommandType::Disc => CMD_DISC,
            CommandType::Flush => CMD_FLUSH,
            CommandType::Trim => CMD_TRIM,
            CommandType::Cache => CMD_CACHE,
            CommandType::WriteZeroes => CMD_WRITE_ZEROES,
            CommandType::BlockStatus => CMD_BLOCK_STATUS,
            CommandType::Unknown(c) => c,
        }
    }
}

impl From<u16> for CommandType {
    fn from(c: u16) -> CommandType {
        match c {
            CMD_READ => CommandType::Read,
            CMD_WRITE => CommandType::Write,
            CMD_DISC => CommandType::Disc,
            CMD_FLUSH => CommandType::Flush,
            CMD_TRIM => CommandType::Trim,
            CMD_CACHE => CommandType::Cache,
            CMD_WRITE_ZEROES => CommandType::WriteZeroes,
            CMD_BLOCK_STATUS => CommandType::BlockStatus,
            other => CommandType::Unknown(other),
        }
    }
}

/// A request header as it came off the wire (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Raw command flags (unknown bits kept, so validation can refuse them).
    pub flags: u16,
    pub kind: CommandType,
    /// Opaque; echoed in every reply to this request.
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    /// Parse a header; a wrong magic means the stream is out of sync, so the
    /// caller closes the connection.
    pub fn parse(raw: &[u8; REQUEST_LEN]) -> Result<Request, NbdError> {
        let magic = u32::from_be_bytes(arr(&raw[0..4]));
        if magic != REQUEST_MAGIC {
            return Err(NbdError::RequestMagic(magic));
        }
        Ok(Request {
            flags: u16::from_be_bytes(arr(&raw[4..6])),
            kind: CommandType::from(u16::from_be_bytes(arr(&raw[6..8]))),
            cookie: u64::from_be_bytes(arr(&raw[8..16])),
            offset: u64::from_be_bytes(arr(&raw[16..24])),
            len: u32::from_be_bytes(arr(&raw[24..28])),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.code().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Payload bytes that follow this header on the wire. Without extended
    /// headers only WRITE carries one, whether or not it is valid.
    pub fn payload_len(&self) -> u32 {
        if self.kind == CommandType::Write {
            self.len
        } else {
            0
        }
    }

    /// What the reader must do with the payload of a request it rejects.
    pub fn discard(&self) -> Discard {
        match self.payload_len() {
            0 => Discard::Nothing,
            n if n <= WRITE_DISCARD_MAX => Discard::Bytes(n),
            n => Discard::Close(n),
        }
    }
}

/// Handling of the payload of a rejected request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    Nothing,
    /// Read and drop this many bytes, then send the error reply.
    Bytes(u32),
    /// Too large to be worth reading: close the connection.
    Close(u32),
}

/// A validated request, ready for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        /// The client did not ask for `NO_HOLE`: deallocating is fine.
        may_trim: bool,
        /// `FAST_ZERO`: fail with ENOTSUP rather than be slow.
        fast_only: bool,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    /// `NBD_CMD_DISC`: no reply; close after in-flight replies.
    Disconnect,
}

/// A request refused before reaching the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub errno: Errno,
    /// For the structured error chunk and the debug log.
    pub reason: &'static str,
}

fn reject(errno: Errno, reason: &'static str) -> Result<Command, Rejected> {
    Err(Rejected { errno, reason })
}

/// Decide a request. `info` is the export as described at negotiation.
pub fn validate(req: &Request, info: &ExportInfo, neg: &Negotiated) -> Result<Command, Rejected> {
    use CommandType as T;
    // DISC ends the session whatever its fields say: the client sends
    // nothing after it, so an error reply would only leave both sides waiting.
    if req.kind == T::Disc {
        return Ok(Command::Disconnect);
    }
    if let T::Unknown(_) = req.kind {
        return reject(Errno::Inval, "unknown command");
    }

    // Flags: FUA is valid on every command (it is always advertised); the
    // others only where proto.md documents them. PAYLOAD_LEN needs extended
    // headers, which are never negotiated.
    let mut allowed = CMD_FLAG_FUA;
    match req.kind {
        T::Read if neg.structured_replies => allowed |= CMD_FLAG_DF,
        T::WriteZeroes => allowed |= CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        T::BlockStatus => allowed |= CMD_FLAG_REQ_ONE,
        _ => {}
    }
    if req.flags & !allowed != 0 {
        return reject(Errno::Inval, "command flag not valid for this command");
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;

    let writes = matches!(req.kind, T::Write | T::Trim | T::WriteZeroes);
    if writes && info.read_only {
        return reject(Errno::Perm, "export is read-only");
    }
    match req.kind {
        T::Trim if !info.can_trim => return reject(Errno::Inval, "trim not supported"),
        T::WriteZeroes if !info.can_zero => {
            return reject(Errno::Inval, "write zeroes not supported")
        }
        T::Cache if !info.can_cache => return reject(Errno::Inval, "cache not supported"),
        T::BlockStatus if neg.meta_context.is_none() => {
            return reject(Errno::Inval, "no metadata context negotiated")
        }
        T::Flush => {
            if req.offset != 0 || req.len != 0 {
                return reject(Errno::Inval, "flush offset and length must be zero");
            }
            return Ok(Command::Flush);
        }
        _ => {}
    }

    // A zero length is "unspecified" in proto.md; refusing it is safe and
    // keeps every backend call non-empty.
    if req.len == 0 {
        return reject(Errno::Inval, "zero length");
    }
    let max = neg.block_sizes.max_payload;
    match req.kind {
        // proto.md permits EOVERFLOW for oversized reads only with
        // structured replies; EOVERFLOW is otherwise reserved.
        T::Read if req.len > max => {
            let errno = if neg.structured_replies {
                Errno::Overflow
            } else {
                Errno::Inval
            };
            return reject(errno, "read longer than the maximum payload");
        }
        T::Write if req.len > max => {
            return reject(Errno::Inval, "write longer than the maximum payload")
        }
        _ => {}
    }
    let end = match req.offset.checked_add(u64::from(req.len)) {
        Some(end) if end <= info.size => end,
        // proto.md: ENOSPC for writes beyond the end, EINVAL for the rest.
        _ => {
            return match req.kind {
                T::Write | T::WriteZeroes => reject(Errno::NoSpc, "beyond the end of the export"),
                _ => reject(Errno::Inval, "beyond the end of the export"),
            }
        }
    };
    let min = u64::from(neg.block_sizes.min);
    // The export's tail may be shorter than a block; a request ending exactly
    // at the end is aligned.
    let end_ok = end == info.size || u64::from(req.len) % min == 0;
    if req.offset % min != 0 || !end_ok {
        return reject(Errno::Inval, "not aligned to the minimum block size");
    }

    let (offset, len) = (req.offset, req.len);
    Ok(match req.kind {
        T::Read => Command::Read { offset, len },
        T::Write => Command::Write { offset, len, fua },
        T::Trim => Command::Trim { offset, len, fua },
        T::Cache => Command::Cache { offset, len },
        T::BlockStatus => Command::BlockStatus {
            offset,
            len,
            req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
        },
        T::WriteZeroes => {
            let fast_only = req.flags & CMD_FLAG_FAST_ZERO != 0;
            if fast_only && !info.can_fast_zero {
                // Fail fast, as proto.md asks, without touching the backend.
                return reject(Errno::NotSup, "fast zero not possible");
            }
            Command::WriteZeroes {
                offset,
                len,
                may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast_only,
                fua,
            }
        }
        // Handled above; listed so the match stays exhaustive.
        T::Disc => Command::Disconnect,
        T::Flush => Command::Flush,
        T::Unknown(_) => return reject(Errno::Inval, "unknown command"),
    })
}

/// Keep backend errors inside what proto.md lets a server say: ENOTSUP only
/// for fast zero, EOVERFLOW only for reads; anything else becomes EINVAL.
pub fn backend_errno(cmd: &Command, errno: Errno) -> Errno {
    match (errno, cmd) {
        (
            Errno::NotSup,
            Command::WriteZeroes {
                fast_only: true, ..
            },
        ) => Errno::NotSup,
        (Errno::NotSup, _) => Errno::Inval,
        (Errno::Overflow, Command::Read { .. }) => Errno::Overflow,
        (Errno::Overflow, _) => Errno::Inval,
        (e, _) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 20;

    fn info() -> ExportInfo {
        let mut i = ExportInfo::new(SIZE);
        i.can_trim = true;
        i.can_zero = true;
        i.can_fast_zero = true;
        i.can_cache = true;
        i
    }

    fn neg(structured: bool, meta: bool) -> Negotiated {
        let i = info();
        Negotiated {
            export: "disk".into(),
            flags: i.transmission_flags(structured),
            structured_replies: structured,
            meta_context: meta.then_some(META_BASE_ALLOCATION_ID),
            block_sizes: BlockSizes::new(&i, PAYLOAD_MAX),
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            kind: CommandType::from(kind),
            cookie: 0x1122_3344_5566_7788,
            offset,
            len,
        }
    }

    /// Expected result of a case: served, or refused with this errno.
    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Err(Errno),
    }
    use Want::Ok as OK;
    fn e(x: Errno) -> Want {
        Want::Err(x)
    }

    #[test]
    fn validation_table() {
        use Errno::*;
        let max = PAYLOAD_MAX;
        // (command, flags, offset, len, structured, meta, want)
        #[rustfmt::skip]
        let cases: Vec<(u16, u16, u64, u32, bool, bool, Want)> = vec![
            // Reads.
            (CMD_READ, 0, 0, 4096, false, false, OK),
            (CMD_READ, CMD_FLAG_FUA, 0, 4096, false, false, OK),
            (CMD_READ, 0, SIZE - 1, 1, false, false, OK),
            (CMD_READ, 0, SIZE, 1, false, false, e(Inval)),
            (CMD_READ, 0, SIZE - 1, 2, false, false, e(Inval)),
            (CMD_READ, 0, u64::MAX, 1, false, false, e(Inval)),
            (CMD_READ, 0, u64::MAX - 1, u32::MAX, false, false, e(Inval)),
            (CMD_READ, 0, 0, 0, false, false, e(Inval)),
            (CMD_READ, CMD_FLAG_DF, 0, 512, false, false, e(Inval)),
            (CMD_READ, CMD_FLAG_DF, 0, 512, true, false, OK),
            (CMD_READ, CMD_FLAG_REQ_ONE, 0, 512, true, false, e(Inval)),
            (CMD_READ, CMD_FLAG_NO_HOLE, 0, 512, true, false, e(Inval)),
            (CMD_READ, CMD_FLAG_FAST_ZERO, 0, 512, true, false, e(Inval)),
            (CMD_READ, CMD_FLAG_PAYLOAD_LEN, 0, 512, true, false, e(Inval)),
            (CMD_READ, 1 << 6, 0, 512, true, false, e(Inval)),
            (CMD_READ, 1 << 15, 0, 512, true, false, e(Inval)),
            (CMD_READ, 0, 0, max + 1, false, false, e(Inval)),
            (CMD_READ, 0, 0, max + 1, true, false, e(Overflow)),
            // Writes.
            (CMD_WRITE, 0, 0, 4096, false, false, OK),
            (CMD_WRITE, CMD_FLAG_FUA, 4096, 4096, true, true, OK),
            (CMD_WRITE, 0, SIZE - 4096, 4097, false, false, e(NoSpc)),
            (CMD_WRITE, 0, u64::MAX - 10, 100, false, false, e(NoSpc)),
            (CMD_WRITE, 0, 0, 0, false, false, e(Inval)),
            (CMD_WRITE, 0, 0, max + 1, true, false, e(Inval)),
            (CMD_WRITE, CMD_FLAG_DF, 0, 1, true, false, e(Inval)),
            (CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1, true, false, e(Inval)),
            (CMD_WRITE, CMD_FLAG_REQ_ONE, 0, 1, true, false, e(Inval)),
            // Flush.
            (CMD_FLUSH, 0, 0, 0, false, false, OK),
            (CMD_FLUSH, CMD_FLAG_FUA, 0, 0, false, false, OK),
            (CMD_FLUSH, 0, 1, 0, false, false, e(Inval)),
            (CMD_FLUSH, 0, 0, 1, false, false, e(Inval)),
            (CMD_FLUSH, CMD_FLAG_NO_HOLE, 0, 0, false, false, e(Inval)),
            // Trim.
            (CMD_TRIM, 0, 0, 65536, false, false, OK),
            (CMD_TRIM, CMD_FLAG_FUA, 0, 65536, false, false, OK),
            (CMD_TRIM, 0, SIZE, 1, false, false, e(Inval)),
            (CMD_TRIM, 0, 0, 0, false, false, e(Inval)),
            (CMD_TRIM, CMD_FLAG_NO_HOLE, 0, 1, false, false, e(Inval)),
            // Trim/zero/cache/status may exceed the payload max: no payload.
            (CMD_TRIM, 0, 0, (SIZE as u32), false, false, OK),
            // Write zeroes.
            (CMD_WRITE_ZEROES, 0, 0, 4096, false, false, OK),
            (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 0, 4096, false, false, OK),
            (CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 4096, false, false, OK),
            (CMD_WRITE_ZEROES, 0, SIZE, 1, false, false, e(NoSpc)),
            (CMD_WRITE_ZEROES, 0, 0, 0, false, false, e(Inval)),
            (CMD_WRITE_ZEROES, CMD_FLAG_DF, 0, 1, true, false, e(Inval)),
            (CMD_WRITE_ZEROES, CMD_FLAG_REQ_ONE, 0, 1, true, false, e(Inval)),
            // Cache.
            (CMD_CACHE, 0, 0, 4096, false, false, OK),
            (CMD_CACHE, 0, SIZE, 1, false, false, e(Inval)),
            (CMD_CACHE, CMD_FLAG_NO_HOLE, 0, 1, false, false, e(Inval)),
            // Block status.
            (CMD_BLOCK_STATUS, 0, 0, 4096, true, true, OK),
            (CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096, true, true, OK),
            (CMD_BLOCK_STATUS, 0, 0, u32::MAX, true, true, e(Inval)),
            (CMD_BLOCK_STATUS, 0, 0, 4096, true, false, e(Inval)),
            (CMD_BLOCK_STATUS, 0, 0, 4096, false, false, e(Inval)),
            (CMD_BLOCK_STATUS, 0, 0, 0, true, true, e(Inval)),
            (CMD_BLOCK_STATUS, CMD_FLAG_DF, 0, 1, true, true, e(Inval)),
            (CMD_BLOCK_STATUS, CMD_FLAG_FAST_ZERO, 0, 1, true, true, e(Inval)),
            // Unknown commands, including RESIZE (8, experimental).
            (8, 0, 0, 0, true, true, e(Inval)),
            (9, 0, 0, 512, true, true, e(Inval)),
            (0xffff, 0, 0, 512, true, true, e(Inval)),
            // DISC always disconnects.
            (CMD_DISC, 0, 0, 0, false, false, OK),
            (CMD_DISC, 0xffff, 7, 7, false, false, OK),
        ];
        for (i, (cmd, flags, offset, len, structured, meta, want)) in cases.into_iter().enumerate()
        {
            let r = req(cmd, flags, offset, len);
            let got = match validate(&r, &info(), &neg(structured, meta)) {
                Ok(_) => OK,
                Err(rej) => e(rej.errno),
            };
            assert_eq!(
                got, want,
                "case {i}: {r:?} structured={structured} meta={meta}"
            );
        }
    }

    #[test]
    fn export_capabilities_table() {
        use Errno::*;
        // (mutate info, command, flags, want)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(fn(&mut ExportInfo), u16, u16, Want)> = vec![
            (|i| i.read_only = true, CMD_WRITE, 0, e(Perm)),
            (|i| i.read_only = true, CMD_TRIM, 0, e(Perm)),
            (|i| i.read_only = true, CMD_WRITE_ZEROES, 0, e(Perm)),
            (|i| i.read_only = true, CMD_READ, 0, OK),
            (|i| i.read_only = true, CMD_FLUSH, 0, OK),
            (|i| i.read_only = true, CMD_CACHE, 0, OK),
            (|i| i.can_trim = false, CMD_TRIM, 0, e(Inval)),
            (|i| i.can_zero = false, CMD_WRITE_ZEROES, 0, e(Inval)),
            (|i| i.can_cache = false, CMD_CACHE, 0, e(Inval)),
            (
                |i| i.can_fast_zero = false,
                CMD_WRITE_ZEROES,
                CMD_FLAG_FAST_ZERO,
                e(NotSup),
            ),
            (|i| i.can_fast_zero = false, CMD_WRITE_ZEROES, 0, OK),
        ];
        for (i, (mutate, cmd, flags, want)) in cases.into_iter().enumerate() {
            let mut inf = info();
            mutate(&mut inf);
            let len = if cmd == CMD_FLUSH { 0 } else { 4096 };
            let got = match validate(&req(cmd, flags, 0, len), &inf, &neg(true, true)) {
                Ok(_) => OK,
                Err(rej) => e(rej.errno),
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn alignment_with_min_block() {
        let mut inf = info();
        inf.min_block = 512;
        inf.size = SIZE + 100; // unaligned tail
        let mut n = neg(true, true);
        n.block_sizes = BlockSizes::new(&inf, PAYLOAD_MAX);
        let cases = [
            (0u64, 512u32, true),
            (512, 1024, true),
            (1, 512, false),
            (0, 100, false),
            (SIZE, 100, true), // ends exactly at the unaligned end
            (SIZE, 50, false),
        ];
        for (offset, len, ok) in cases {
            let r = validate(&req(CMD_READ, 0, offset, len), &inf, &n);
            assert_eq!(r.is_ok(), ok, "offset {offset} len {len}: {r:?}");
        }
    }

    #[test]
    fn commands_carry_their_flags() {
        let n = neg(true, true);
        let i = info();
        assert_eq!(
            validate(
                &req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    512,
                    512
                ),
                &i,
                &n
            ),
            Ok(Command::WriteZeroes {
                offset: 512,
                len: 512,
                may_trim: false,
                fast_only: true,
                fua: false
            })
        );
        assert_eq!(
            validate(&req(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 0, 1), &i, &n),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 1,
                may_trim: true,
                fast_only: false,
                fua: true
            })
        );
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 9), &i, &n),
            Ok(Command::BlockStatus {
                offset: 0,
                len: 9,
                req_one: true
            })
        );
        assert_eq!(
            validate(&req(CMD_WRITE, CMD_FLAG_FUA, 0, 9), &i, &n),
            Ok(Command::Write {
                offset: 0,
                len: 9,
                fua: true
            })
        );
        assert_eq!(
            validate(&req(CMD_TRIM, 0, 0, 9), &i, &n),
            Ok(Command::Trim {
                offset: 0,
                len: 9,
                fua: false
            })
        );
    }

    #[test]
    fn header_codec() {
        let r = req(CMD_WRITE, CMD_FLAG_FUA, 0x0102_0304_0506_0708, 0x0a0b_0c0d);
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..6], &[0, 1]);
        assert_eq!(&b[6..8], &[0, 1]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(Request::parse(&b).unwrap(), r);
        let mut bad = b;
        bad[3] ^= 0xff;
        assert!(matches!(
            Request::parse(&bad),
            Err(NbdError::RequestMagic(_))
        ));
        assert!(Request::parse(&[0; REQUEST_LEN]).is_err());
    }

    #[test]
    fn discard_rules() {
        assert_eq!(req(CMD_READ, 0, 0, u32::MAX).discard(), Discard::Nothing);
        assert_eq!(req(CMD_WRITE, 0, 0, 0).discard(), Discard::Nothing);
        assert_eq!(req(CMD_WRITE, 0, 0, 10).discard(), Discard::Bytes(10));
        assert_eq!(
            req(CMD_WRITE, 0, 0, WRITE_DISCARD_MAX).discard(),
            Discard::Bytes(WRITE_DISCARD_MAX)
        );
        assert_eq!(
            req(CMD_WRITE, 0, 0, WRITE_DISCARD_MAX + 1).discard(),
            Discard::Close(WRITE_DISCARD_MAX + 1)
        );
    }

    #[test]
    fn backend_errnos_are_confined() {
        let zero_fast = Command::WriteZeroes {
            offset: 0,
            len: 1,
            may_trim: true,
            fast_only: true,
            fua: false,
        };
        let zero = Command::WriteZeroes {
            offset: 0,
            len: 1,
            may_trim: true,
            fast_only: false,
            fua: false,
        };
        let read = Command::Read { offset: 0, len: 1 };
        assert_eq!(backend_errno(&zero_fast, Errno::NotSup), Errno::NotSup);
        assert_eq!(backend_errno(&zero, Errno::NotSup), Errno::Inval);
        assert_eq!(backend_errno(&read, Errno::Overflow), Errno::Overflow);
        assert_eq!(
            backend_errno(&Command::Flush, Errno::Overflow),
            Errno::Inval
        );
        assert_eq!(backend_errno(&Command::Flush, Errno::Io), Errno::Io);
        assert_eq!(backend_errno(&read, Errno::Shutdown), Errno::Shutdown);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_encode_round_trip(bytes in proptest::array::uniform28(any::<u8>()), magic in any::<bool>()) {
                let mut b = bytes;
                if magic {
                    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                }
                if let Ok(r) = Request::parse(&b) {
                    prop_assert_eq!(r.encode(), b);
                    for (s, m) in [(false, false), (true, false), (true, true)] {
                        // Never panics; a served request stays inside the export.
                        if let Ok(
                            Command::Read { offset, len }
                            | Command::Write { offset, len, .. }
                            | Command::Trim { offset, len, .. }
                            | Command::Cache { offset, len }
                            | Command::WriteZeroes { offset, len, .. }
                            | Command::BlockStatus { offset, len, .. },
                        ) = validate(&r, &info(), &neg(s, m))
                        {
                            prop_assert!(len > 0);
                            prop_assert!(offset + u64::from(len) <= SIZE);
                        }
                    }
                } else {
                    prop_assert!(!magic);
                }
            }
        }
    }
}
