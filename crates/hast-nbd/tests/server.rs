//! The server shell end to end: an in-memory export served over
//! `tokio::io::duplex` (or loopback TCP) and a small client built from the
//! crate's own encoders/decoders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hast_nbd::handshake::encode_option;
use hast_nbd::proto::*;
use hast_nbd::reply::{parse_block_status_payload, parse_error_payload, ChunkHeader, SimpleReply};
use hast_nbd::{
    serve, serve_split, serve_tls, BlockExtent, ClientFlags, CommandType, Errno, Export,
    ExportInfo, Exports, InfoRequest, Limits, MetaRequest, NbdError, OpenError, OptionReplyHeader,
    Request, StartTls, TlsMode, TLS_REQUIRED_MESSAGE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

// ------------------------------------------------------ in-memory export

/// Operations the export saw, for checking flags reach the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    },
    Cache,
}

struct MemExport {
    data: Mutex<Vec<u8>>,
    /// Trimmed/zeroed ranges are reported as holes by block_status.
    holes: Mutex<Vec<(u64, u64)>>,
    info: ExportInfo,
    ops: Mutex<Vec<Op>>,
    withdraw: watch::Sender<bool>,
    /// Reads at this offset wait for `gate` (out-of-order replies).
    gate_offset: Option<u64>,
    gate: Notify,
}

impl MemExport {
    fn new(size: usize, read_only: bool) -> MemExport {
        let mut info = ExportInfo::new(size as u64);
        info.read_only = read_only;
        info.can_trim = true;
        info.can_zero = true;
        info.can_fast_zero = true;
        info.can_cache = true;
        info.can_multi_conn = true;
        info.description = Some("memory".into());
        MemExport {
            data: Mutex::new(vec![0; size]),
            holes: Mutex::new(vec![(0, size as u64)]),
            info,
            ops: Mutex::new(Vec::new()),
            withdraw: watch::channel(false).0,
            gate_offset: None,
            gate: Notify::new(),
        }
    }

    fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    fn fill(&self, offset: u64, len: usize, byte: u8) {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + len].fill(byte);
    }

    fn mark(&self, offset: u64, len: u64, hole: bool) {
        let mut h = self.holes.lock().unwrap();
        // Keep it simple: holes are a list of disjoint ranges.
        let mut out = Vec::new();
        for &(s, e) in h.iter() {
            if e <= offset || s >= offset + len {
                out.push((s, e));
            } else {
                if s < offset {
                    out.push((s, offset));
                }
                if e > offset + len {
                    out.push((offset + len, e));
                }
            }
        }
        if hole {
            out.push((offset, offset + len));
        }
        out.sort();
        *h = out;
    }
}

impl Export for MemExport {
    fn info(&self) -> ExportInfo {
        self.info.clone()
    }

    async fn read(&self, offset: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, Errno> {
        if Some(offset) == self.gate_offset {
            self.gate.notified().await;
        }
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        let n = buf.len();
        buf.copy_from_slice(&d[o..o + n]);
        Ok(buf)
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), Errno> {
        let o = offset as usize;
        self.data.lock().unwrap()[o..o + data.len()].copy_from_slice(&data);
        self.mark(offset, data.len() as u64, false);
        self.ops.lock().unwrap().push(Op::Write {
            offset,
            len: data.len(),
            fua,
        });
        Ok(())
    }

    async fn flush(&self) -> Result<(), Errno> {
        self.ops.lock().unwrap().push(Op::Flush);
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), Errno> {
        self.fill(offset, len as usize, 0);
        self.mark(offset, u64::from(len), true);
        self.ops.lock().unwrap().push(Op::Trim { offset, len, fua });
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), Errno> {
        self.ops.lock().unwrap().push(Op::Zero {
            offset,
            len,
            may_trim,
            fast_only,
            fua,
        });
        if fast_only && !may_trim {
            // "Cannot do this fast": the backend decides.
            return Err(Errno::NotSup);
        }
        self.fill(offset, len as usize, 0);
        self.mark(offset, u64::from(len), may_trim);
        Ok(())
    }

    async fn cache(&self, _offset: u64, _len: u32) -> Result<(), Errno> {
        self.ops.lock().unwrap().push(Op::Cache);
        Ok(())
    }

    async fn block_status(
        &self,
        offset: u64,
        len: u32,
        _req_one: bool,
    ) -> Result<Vec<BlockExtent>, Errno> {
        let holes = self.holes.lock().unwrap().clone();
        let end = offset + u64::from(len);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (hole, next) = match holes.iter().find(|(s, e)| *s <= pos && pos < *e) {
                Some(&(_, e)) => (true, e.min(end)),
                None => (
                    false,
                    holes
                        .iter()
                        .map(|h| h.0)
                        .filter(|s| *s > pos)
                        .min()
                        .unwrap_or(end)
                        .min(end),
                ),
            };
            out.push(BlockExtent {
                len: (next - pos) as u32,
                hole,
                zero: hole,
            });
            pos = next;
        }
        Ok(out)
    }

    async fn withdrawn(&self) {
        let mut rx = self.withdraw.subscribe();
        let _ = rx.wait_for(|w| *w).await;
    }
}

struct MemExports {
    map: HashMap<String, Arc<MemExport>>,
}

impl Exports for MemExports {
    type Export = MemExport;

    fn list(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, e)| (k.clone(), e.info.description.clone()))
            .collect();
        v.sort();
        v
    }

    fn open(&self, name: &str) -> Result<Arc<MemExport>, OpenError> {
        self.map
            .get(name)
            .cloned()
            .ok_or_else(|| OpenError::unknown(format!("export {name:?} is not primary here")))
    }
}

const SIZE: usize = 1 << 20;

fn exports_with(disk: MemExport) -> (Arc<MemExports>, Arc<MemExport>) {
    let disk = Arc::new(disk);
    let mut map = HashMap::new();
    map.insert("disk".to_string(), Arc::clone(&disk));
    map.insert("ro".to_string(), Arc::new(MemExport::new(SIZE, true)));
    (Arc::new(MemExports { map }), disk)
}

fn exports() -> (Arc<MemExports>, Arc<MemExport>) {
    exports_with(MemExport::new(SIZE, false))
}

// ---------------------------------------------------------- test client

struct Client<S> {
    s: S,
    structured: bool,
    /// Lengths of reads in flight (simple replies carry no length).
    reads: HashMap<u64, u32>,
}

/// One reply, simple or a single structured chunk (this server always
/// answers with exactly one chunk, marked DONE).
#[derive(Debug)]
struct Reply {
    cookie: u64,
    error: u32,
    message: String,
    kind: Option<u16>,
    /// Read data, or raw chunk payload for other chunk types.
    data: Vec<u8>,
    offset: Option<u64>,
}

fn spawn_server<E: Exports>(
    exports: Arc<E>,
    limits: Limits,
) -> (
    Client<tokio::io::DuplexStream>,
    JoinHandle<Result<(), NbdError>>,
) {
    let (a, b) = tokio::io::duplex(8 << 20);
    let server = tokio::spawn(serve(exports, b, "test-peer".into(), limits));
    (
        Client {
            s: a,
            structured: false,
            reads: HashMap::new(),
        },
        server,
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn greet(&mut self, flags: ClientFlags) {
        let mut g = [0u8; 18];
        self.s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        self.s.write_all(&flags.encode()).await.unwrap();
    }

    async fn option(&mut self, opt: u32, payload: &[u8]) {
        self.s
            .write_all(&encode_option(opt, payload))
            .await
            .unwrap();
    }

    async fn option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        let h = OptionReplyHeader::parse(&h).expect("option reply magic");
        let mut p = vec![0u8; h.len as usize];
        self.s.read_exact(&mut p).await.unwrap();
        (h, p)
    }

    /// All replies up to and including the final one (ACK or error).
    async fn option_replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let (h, p) = self.option_reply().await;
            let last = h.reply_type == REP_ACK || h.reply_type & REP_FLAG_ERROR != 0;
            v.push((h.reply_type, p));
            if last {
                return v;
            }
        }
    }

    /// Fixed newstyle, structured replies + base:allocation if asked, GO.
    /// Returns (size, transmission flags).
    async fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16) {
        self.greet(ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true,
        })
        .await;
        self.haggle_go(name, structured, meta).await
    }

    /// [`Client::go`] after the greeting (e.g. inside TLS).
    async fn haggle_go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16) {
        // What qemu 10 does first.
        self.option(OPT_EXTENDED_HEADERS, &[]).await;
        assert_eq!(self.option_replies().await[0].0, REP_ERR_UNSUP);
        if structured {
            self.option(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(self.option_replies().await[0].0, REP_ACK);
            self.structured = true;
        }
        if meta {
            let m = MetaRequest {
                name: name.into(),
                queries: vec![META_BASE_ALLOCATION.into()],
            };
            self.option(OPT_SET_META_CONTEXT, &m.encode()).await;
            let r = self.option_replies().await;
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].0, REP_META_CONTEXT);
            assert_eq!(&r[0].1[4..], META_BASE_ALLOCATION.as_bytes());
        }
        let req = InfoRequest {
            name: name.into(),
            requests: vec![INFO_BLOCK_SIZE],
        };
        self.option(OPT_GO, &req.encode()).await;
        let r = self.option_replies().await;
        assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
        let export = r
            .iter()
            .find(|(t, p)| *t == REP_INFO && p[..2] == INFO_EXPORT.to_be_bytes())
            .expect("INFO_EXPORT");
        let size = u64::from_be_bytes(export.1[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
        assert!(r
            .iter()
            .any(|(t, p)| *t == REP_INFO && p[..2] == INFO_BLOCK_SIZE.to_be_bytes()));
        (size, flags)
    }

    async fn send(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        data: &[u8],
    ) {
        let r = Request {
            flags,
            kind: CommandType::from(kind),
            cookie,
            offset,
            len,
        };
        if kind == CMD_READ {
            self.reads.insert(cookie, len);
        }
        let mut frame = r.encode().to_vec();
        frame.extend_from_slice(data);
        self.s.write_all(&frame).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        let mut magic = [0u8; 4];
        self.s.read_exact(&mut magic).await.unwrap();
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => {
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&magic);
                self.s.read_exact(&mut h[4..]).await.unwrap();
                let r = SimpleReply::parse(&h).unwrap();
                let read_len = self.reads.remove(&r.cookie);
                assert!(
                    !(self.structured && read_len.is_some()),
                    "simple reply to a READ with structured replies"
                );
                let mut data = Vec::new();
                if let (Some(n), 0) = (read_len, r.error) {
                    data = vec![0u8; n as usize];
                    self.s.read_exact(&mut data).await.unwrap();
                }
                Reply {
                    cookie: r.cookie,
                    error: r.error,
                    message: String::new(),
                    kind: None,
                    data,
                    offset: None,
                }
            }
            STRUCTURED_REPLY_MAGIC => {
                assert!(self.structured, "structured reply not negotiated");
                let mut h = [0u8; 20];
                h[..4].copy_from_slice(&magic);
                self.s.read_exact(&mut h[4..]).await.unwrap();
                let c = ChunkHeader::parse(&h).unwrap();
                assert!(c.done(), "every reply is one DONE chunk");
                let mut p = vec![0u8; c.len as usize];
                self.s.read_exact(&mut p).await.unwrap();
                self.reads.remove(&c.cookie);
                let mut rep = Reply {
                    cookie: c.cookie,
                    error: 0,
                    message: String::new(),
                    kind: Some(c.kind),
                    data: Vec::new(),
                    offset: None,
                };
                match c.kind {
                    REPLY_TYPE_OFFSET_DATA => {
                        rep.offset = Some(u64::from_be_bytes(p[..8].try_into().unwrap()));
                        rep.data = p[8..].to_vec();
                    }
                    REPLY_TYPE_ERROR => {
                        let (e, m) = parse_error_payload(&p).unwrap();
                        rep.error = e;
                        rep.message = m;
                    }
                    _ => rep.data = p,
                }
                rep
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    async fn expect_eof(&mut self) {
        let mut b = [0u8; 1];
        let n = self.s.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 0, "expected the server to close");
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn structured_session_covers_every_command() {
    let (ex, disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    let (size, flags) = c.go("disk", true, true).await;
    assert_eq!(size, SIZE as u64);
    for f in [
        TFLAG_HAS_FLAGS,
        TFLAG_SEND_FLUSH,
        TFLAG_SEND_FUA,
        TFLAG_SEND_TRIM,
        TFLAG_SEND_WRITE_ZEROES,
        TFLAG_SEND_FAST_ZERO,
        TFLAG_SEND_DF,
        TFLAG_SEND_CACHE,
        TFLAG_CAN_MULTI_CONN,
    ] {
        assert!(flags & f != 0, "flag {f:#x} missing from {flags:#x}");
    }
    assert_eq!(flags & TFLAG_READ_ONLY, 0);

    // Write with FUA, read back.
    let data = pattern(1, 4096);
    c.send(CMD_WRITE, CMD_FLAG_FUA, 1, 8192, 4096, &data).await;
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error), (1, 0));
    c.send(CMD_READ, CMD_FLAG_DF, 2, 8192, 4096, &[]).await;
    let r = c.reply().await;
    assert_eq!(r.cookie, 2);
    assert_eq!(r.kind, Some(REPLY_TYPE_OFFSET_DATA));
    assert_eq!(r.offset, Some(8192));
    assert_eq!(r.data, data);

    // Flush.
    c.send(CMD_FLUSH, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.reply().await.error, 0);

    // Block status: data at [8192, 12288), holes around it.
    c.send(CMD_BLOCK_STATUS, 0, 4, 0, 16384, &[]).await;
    let r = c.reply().await;
    assert_eq!(r.kind, Some(REPLY_TYPE_BLOCK_STATUS));
    let (id, d) = parse_block_status_payload(&r.data).unwrap();
    assert_eq!(id, META_BASE_ALLOCATION_ID);
    assert_eq!(
        d,
        vec![
            (8192, STATE_HOLE | STATE_ZERO),
            (4096, 0),
            (4096, STATE_HOLE | STATE_ZERO)
        ]
    );
    c.send(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 5, 0, 16384, &[])
        .await;
    let (_, d) = parse_block_status_payload(&c.reply().await.data).unwrap();
    assert_eq!(d, vec![(8192, STATE_HOLE | STATE_ZERO)]);

    // Trim, then the range reads as zeroes and is a hole again.
    c.send(CMD_TRIM, CMD_FLAG_FUA, 6, 8192, 2048, &[]).await;
    assert_eq!(c.reply().await.error, 0);
    c.send(CMD_READ, 0, 7, 8192, 4096, &[]).await;
    let r = c.reply().await;
    assert_eq!(&r.data[..2048], &[0u8; 2048][..]);
    assert_eq!(&r.data[2048..], &data[2048..]);

    // Write zeroes, with NO_HOLE and with FAST_ZERO (backend says ENOTSUP
    // for fast + no-hole).
    c.send(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 8, 10240, 1024, &[])
        .await;
    assert_eq!(c.reply().await.error, 0);
    c.send(CMD_READ, 0, 9, 8192, 4096, &[]).await;
    let r = c.reply().await;
    assert_eq!(&r.data[2048..3072], &[0u8; 1024][..]);
    assert_eq!(&r.data[3072..], &data[3072..]);
    c.send(
        CMD_WRITE_ZEROES,
        CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
        10,
        0,
        4096,
        &[],
    )
    .await;
    let r = c.reply().await;
    assert_eq!(r.error, 95, "ENOTSUP");
    assert!(!r.message.is_empty());
    c.send(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 11, 0, 4096, &[])
        .await;
    assert_eq!(c.reply().await.error, 0);

    // Cache.
    c.send(CMD_CACHE, 0, 12, 0, 4096, &[]).await;
    assert_eq!(c.reply().await.error, 0);

    c.send(CMD_DISC, 0, 13, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();

    let ops = disk.ops();
    assert_eq!(
        ops,
        vec![
            Op::Write {
                offset: 8192,
                len: 4096,
                fua: true
            },
            Op::Flush,
            Op::Trim {
                offset: 8192,
                len: 2048,
                fua: true
            },
            Op::Zero {
                offset: 10240,
                len: 1024,
                may_trim: false,
                fast_only: false,
                fua: false
            },
            Op::Zero {
                offset: 0,
                len: 4096,
                may_trim: false,
                fast_only: true,
                fua: false
            },
            Op::Zero {
                offset: 0,
                len: 4096,
                may_trim: true,
                fast_only: true,
                fua: false
            },
            Op::Cache,
        ]
    );
}

#[tokio::test]
async fn pipelined_requests_and_out_of_order_replies() {
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.go("disk", true, false).await;

    // 64 writes before reading any reply.
    for i in 0..64u64 {
        let d = pattern(i as u8, 4096);
        c.send(CMD_WRITE, 0, 100 + i, i * 4096, 4096, &d).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let r = c.reply().await;
        assert_eq!(r.error, 0);
        assert!(seen.insert(r.cookie));
    }
    assert_eq!(seen, (100..164).collect());

    // 64 reads before reading any reply.
    for i in 0..64u64 {
        c.send(CMD_READ, 0, 1000 + i, i * 4096, 4096, &[]).await;
    }
    let mut got = HashMap::new();
    for _ in 0..64 {
        let r = c.reply().await;
        assert_eq!(r.error, 0);
        got.insert(r.cookie, (r.offset.unwrap(), r.data));
    }
    for i in 0..64u64 {
        let (off, data) = &got[&(1000 + i)];
        assert_eq!(*off, i * 4096);
        assert_eq!(*data, pattern(i as u8, 4096), "read {i}");
    }
    c.send(CMD_DISC, 0, 0, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_request_does_not_hold_back_later_replies() {
    let mut disk = MemExport::new(SIZE, false);
    disk.gate_offset = Some(65536);
    let (ex, disk) = exports_with(disk);
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.go("disk", false, false).await;
    c.send(CMD_READ, 0, 1, 65536, 512, &[]).await;
    c.send(CMD_READ, 0, 2, 0, 512, &[]).await;
    assert_eq!(c.reply().await.cookie, 2);
    disk.gate.notify_one();
    let r = c.reply().await;
    assert_eq!((r.cookie, r.data.len()), (1, 512));
    // DISC waits for nothing more; the connection closes.
    c.send(CMD_DISC, 0, 3, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn disc_waits_for_in_flight_replies() {
    let mut disk = MemExport::new(SIZE, false);
    disk.gate_offset = Some(0);
    let (ex, disk) = exports_with(disk);
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.go("disk", true, false).await;
    c.send(CMD_READ, 0, 1, 0, 512, &[]).await;
    c.send(CMD_DISC, 0, 2, 0, 0, &[]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    disk.gate.notify_one();
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error, r.data.len()), (1, 0, 512));
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_keeps_serving() {
    let (ex, _disk) = exports();
    let limits = Limits {
        payload_max: 65536,
        ..Limits::default()
    };
    let (mut c, server) = spawn_server(ex, limits);
    c.go("disk", true, false).await;
    let s = SIZE as u64;
    // (command, flags, offset, len, payload?, errno)
    let cases: Vec<(u16, u16, u64, u32, bool, u32)> = vec![
        (CMD_READ, 0, s - 512, 1024, false, 22),
        (CMD_READ, 0, u64::MAX - 10, 512, false, 22),
        (CMD_WRITE, 0, s - 512, 1024, true, 28),
        (CMD_WRITE, 0, s, 1, true, 28),
        (CMD_WRITE_ZEROES, 0, s, 512, false, 28),
        (CMD_TRIM, 0, s, 512, false, 22),
        (42, 0, 0, 512, false, 22),
        (CMD_RESIZE_EXPERIMENTAL, 0, 0, 0, false, 22),
        (CMD_WRITE, CMD_FLAG_REQ_ONE, 0, 512, true, 22),
        (CMD_READ, CMD_FLAG_NO_HOLE, 0, 512, false, 22),
        (CMD_READ, 1 << 9, 0, 512, false, 22),
        (CMD_BLOCK_STATUS, 0, 0, 512, false, 22), // no meta context
        (CMD_FLUSH, 0, 1, 0, false, 22),
        (CMD_READ, 0, 0, 0, false, 22),
        (CMD_READ, 0, 0, 65537, false, 75), // structured: EOVERFLOW
        (CMD_WRITE, 0, 0, 65537, true, 22), // payload read and dropped
    ];
    for (i, &(cmd, flags, offset, len, payload, errno)) in cases.iter().enumerate() {
        let data = if payload {
            vec![0xee; len as usize]
        } else {
            Vec::new()
        };
        c.send(cmd, flags, i as u64, offset, len, &data).await;
        let r = c.reply().await;
        assert_eq!((r.cookie, r.error), (i as u64, errno), "case {i}");
        assert_eq!(r.kind, Some(REPLY_TYPE_ERROR));
        assert!(!r.message.is_empty(), "case {i} has a message");
        // Still in sync: a good request works.
        c.send(CMD_READ, 0, 999, 0, 512, &[]).await;
        let r = c.reply().await;
        assert_eq!(
            (r.cookie, r.error, r.data.len()),
            (999, 0, 512),
            "after case {i}"
        );
    }
    // Nothing of the rejected writes reached the disk.
    c.send(CMD_READ, 0, 1000, s - 512, 512, &[]).await;
    assert_eq!(c.reply().await.data, vec![0u8; 512]);

    // A write too large to even discard closes the connection.
    c.send(CMD_WRITE, 0, 7, 0, WRITE_DISCARD_MAX + 1, &[]).await;
    c.expect_eof().await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::PayloadTooBig(_))
    ));
}

const CMD_RESIZE_EXPERIMENTAL: u16 = 8;

#[tokio::test]
async fn simple_replies_without_structured_negotiation() {
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    let (_, flags) = c.go("disk", false, false).await;
    assert_eq!(flags & TFLAG_SEND_DF, 0);
    let data = pattern(9, 1000);
    c.send(CMD_WRITE, 0, 1, 100, 1000, &data).await;
    let r = c.reply().await;
    assert_eq!((r.kind, r.error), (None, 0));
    c.send(CMD_READ, 0, 2, 100, 1000, &[]).await;
    let r = c.reply().await;
    assert_eq!((r.kind, r.error), (None, 0));
    assert_eq!(r.data, data);
    // Errors are simple replies without data.
    c.send(CMD_READ, 0, 3, SIZE as u64, 1000, &[]).await;
    let r = c.reply().await;
    assert_eq!((r.kind, r.error, r.data.len()), (None, 22, 0));
    c.send(CMD_READ, CMD_FLAG_DF, 4, 0, 1, &[]).await;
    assert_eq!(c.reply().await.error, 22);
    c.send(CMD_BLOCK_STATUS, 0, 5, 0, 1, &[]).await;
    assert_eq!(c.reply().await.error, 22);
    c.send(CMD_READ, 0, 6, 0, PAYLOAD_MAX + 1, &[]).await;
    assert_eq!(
        c.reply().await.error,
        22,
        "EOVERFLOW needs structured replies"
    );
    c.send(CMD_DISC, 0, 7, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn read_only_export_refuses_writes() {
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    let (_, flags) = c.go("ro", true, false).await;
    assert!(flags & TFLAG_READ_ONLY != 0);
    assert_eq!(flags & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES), 0);
    c.send(CMD_WRITE, 0, 1, 0, 512, &[1; 512]).await;
    assert_eq!(c.reply().await.error, 1);
    c.send(CMD_TRIM, 0, 2, 0, 512, &[]).await;
    assert_eq!(c.reply().await.error, 1);
    c.send(CMD_WRITE_ZEROES, 0, 3, 0, 512, &[]).await;
    assert_eq!(c.reply().await.error, 1);
    c.send(CMD_READ, 0, 4, 0, 512, &[]).await;
    assert_eq!(c.reply().await.data, vec![0; 512]);
    c.send(CMD_DISC, 0, 5, 0, 0, &[]).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_request_magic_closes_only_that_connection() {
    let (ex, _disk) = exports();
    let (mut c1, s1) = spawn_server(Arc::clone(&ex), Limits::default());
    let (mut c2, s2) = spawn_server(ex, Limits::default());
    c1.go("disk", true, false).await;
    c2.go("disk", true, false).await;
    c1.s.write_all(&[0x55; 28]).await.unwrap();
    c1.expect_eof().await;
    assert!(matches!(
        s1.await.unwrap(),
        Err(NbdError::RequestMagic(0x5555_5555))
    ));
    c2.send(CMD_READ, 0, 1, 0, 512, &[]).await;
    assert_eq!(c2.reply().await.error, 0);
    c2.send(CMD_DISC, 0, 2, 0, 0, &[]).await;
    s2.await.unwrap().unwrap();
}

#[tokio::test]
async fn withdrawn_export_answers_eshutdown_until_disc() {
    let (ex, disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.go("disk", true, false).await;
    c.send(CMD_READ, 0, 1, 0, 512, &[]).await;
    assert_eq!(c.reply().await.error, 0);
    disk.withdraw.send_replace(true);
    tokio::task::yield_now().await;
    c.send(CMD_WRITE, 0, 2, 0, 512, &[7; 512]).await;
    let r = c.reply().await;
    assert_eq!(r.error, 108, "ESHUTDOWN");
    c.send(CMD_READ, 0, 3, 0, 512, &[]).await;
    assert_eq!(c.reply().await.error, 108);
    // The write after withdrawal did not happen.
    assert!(!disk.ops().iter().any(|o| matches!(o, Op::Write { .. })));
    c.send(CMD_DISC, 0, 4, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn withdrawn_export_closes_after_grace() {
    let (ex, disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.go("disk", false, false).await;
    disk.withdraw.send_replace(true);
    let start = tokio::time::Instant::now();
    c.expect_eof().await;
    assert!(start.elapsed() >= Duration::from_secs(10));
    server.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn handshake_times_out() {
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    let mut g = [0u8; 18];
    c.s.read_exact(&mut g).await.unwrap();
    // Say nothing more.
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::HandshakeTimeout(_))
    ));
}

#[tokio::test]
async fn list_info_and_go() {
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.greet(ClientFlags {
        fixed_newstyle: true,
        no_zeroes: false,
    })
    .await;
    c.option(OPT_LIST, &[]).await;
    let r = c.option_replies().await;
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].0, REP_SERVER);
    assert_eq!(&r[0].1[4..8], b"disk");
    assert_eq!(&r[0].1[8..], b"memory");
    assert_eq!(&r[1].1[4..6], b"ro");
    assert_eq!(r[2].0, REP_ACK);

    let req = InfoRequest {
        name: "disk".into(),
        requests: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
    };
    c.option(OPT_INFO, &req.encode()).await;
    let r = c.option_replies().await;
    let infos: Vec<u16> = r
        .iter()
        .filter(|x| x.0 == REP_INFO)
        .map(|x| u16::from_be_bytes([x.1[0], x.1[1]]))
        .collect();
    assert_eq!(
        infos,
        vec![INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
    );
    assert_eq!(r.last().unwrap().0, REP_ACK);

    // Unknown and experimental options, then a GO to an unknown export.
    c.option(0x1234, b"whatever").await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_UNSUP);
    c.option(OPT_EXTENDED_HEADERS, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_UNSUP);
    c.option(OPT_STARTTLS, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_UNSUP);
    let bad = InfoRequest {
        name: "nope".into(),
        requests: vec![],
    };
    c.option(OPT_GO, &bad.encode()).await;
    let r = c.option_replies().await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert_eq!(
        String::from_utf8_lossy(&r[0].1),
        "export \"nope\" is not primary here"
    );

    // Still negotiating: GO to the real export works.
    c.option(OPT_GO, &req.encode()).await;
    assert_eq!(c.option_replies().await.last().unwrap().0, REP_ACK);
    c.send(CMD_READ, 0, 1, 0, 16, &[]).await;
    assert_eq!(c.reply().await.data, vec![0; 16]);
    c.send(CMD_DISC, 0, 2, 0, 0, &[]).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    for no_zeroes in [false, true] {
        let (ex, _disk) = exports();
        let (mut c, server) = spawn_server(ex, Limits::default());
        c.greet(ClientFlags {
            fixed_newstyle: true,
            no_zeroes,
        })
        .await;
        c.option(OPT_EXPORT_NAME, b"disk").await;
        let mut head = [0u8; 10];
        c.s.read_exact(&mut head).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(head[..8].try_into().unwrap()),
            SIZE as u64
        );
        if !no_zeroes {
            let mut zeroes = [1u8; 124];
            c.s.read_exact(&mut zeroes).await.unwrap();
            assert_eq!(zeroes, [0u8; 124]);
        }
        // The next bytes are the reply to this read: nothing else was sent.
        c.send(CMD_READ, 0, 77, 0, 8, &[]).await;
        let r = c.reply().await;
        assert_eq!((r.cookie, r.data), (77, vec![0; 8]));
        c.send(CMD_DISC, 0, 78, 0, 0, &[]).await;
        server.await.unwrap().unwrap();
    }

    // EXPORT_NAME to an unknown export: no reply possible, close.
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.greet(ClientFlags::default()).await;
    c.option(OPT_EXPORT_NAME, b"nope").await;
    c.expect_eof().await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::ExportRefused { .. })
    ));
}

#[tokio::test]
async fn abort_and_handshake_violations() {
    // ABORT: ACK, then close cleanly.
    let (ex, _disk) = exports();
    let (mut c, server) = spawn_server(Arc::clone(&ex), Limits::default());
    c.greet(ClientFlags::default()).await;
    c.option(OPT_ABORT, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ACK);
    c.expect_eof().await;
    server.await.unwrap().unwrap();

    // Unknown client flags: closed without a word.
    let (mut c, server) = spawn_server(Arc::clone(&ex), Limits::default());
    let mut g = [0u8; 18];
    c.s.read_exact(&mut g).await.unwrap();
    c.s.write_all(&4u32.to_be_bytes()).await.unwrap();
    c.expect_eof().await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::ClientFlags(4))
    ));

    // Oversized option: ERR_TOO_BIG then close, payload never read.
    let (mut c, server) = spawn_server(Arc::clone(&ex), Limits::default());
    c.greet(ClientFlags::default()).await;
    let mut h = encode_option(OPT_GO, &[]);
    h[12..16].copy_from_slice(&(OPTION_LEN_MAX + 1).to_be_bytes());
    c.s.write_all(&h).await.unwrap();
    let (rh, _) = c.option_reply().await;
    assert_eq!(rh.reply_type, REP_ERR_TOO_BIG);
    c.expect_eof().await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::OptionTooBig { .. })
    ));

    // Bad option magic: close.
    let (mut c, server) = spawn_server(ex, Limits::default());
    c.greet(ClientFlags::default()).await;
    c.s.write_all(&[0u8; 16]).await.unwrap();
    c.expect_eof().await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::OptionMagic(0))
    ));
}

#[tokio::test]
async fn large_transfers_over_loopback_tcp() {
    let (ex, _disk) = exports();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, peer) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let (rd, wr) = s.into_split();
        serve_split(ex, rd, wr, peer.to_string(), Limits::default()).await
    });
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client {
        s,
        structured: false,
        reads: HashMap::new(),
    };
    c.go("disk", true, true).await;
    let data = pattern(3, SIZE);
    // Four 256 KiB writes in flight, then one 1 MiB read.
    for i in 0..4u64 {
        let chunk = &data[(i as usize) * (SIZE / 4)..(i as usize + 1) * (SIZE / 4)];
        c.send(
            CMD_WRITE,
            CMD_FLAG_FUA,
            i,
            i * (SIZE as u64 / 4),
            (SIZE / 4) as u32,
            chunk,
        )
        .await;
    }
    for _ in 0..4 {
        assert_eq!(c.reply().await.error, 0);
    }
    c.send(CMD_READ, 0, 10, 0, SIZE as u32, &[]).await;
    let r = c.reply().await;
    assert_eq!(r.offset, Some(0));
    assert!(r.data == data, "1 MiB read back intact");
    c.send(CMD_BLOCK_STATUS, 0, 11, 0, SIZE as u32, &[]).await;
    let (_, d) = parse_block_status_payload(&c.reply().await.data).unwrap();
    assert_eq!(d, vec![(SIZE as u32, 0)]);
    c.send(CMD_DISC, 0, 12, 0, 0, &[]).await;
    c.expect_eof().await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn inflight_limit_applies_back_pressure() {
    let mut disk = MemExport::new(SIZE, false);
    disk.gate_offset = Some(0);
    let (ex, disk) = exports_with(disk);
    let limits = Limits {
        inflight_max: 2,
        ..Limits::default()
    };
    let (mut c, server) = spawn_server(ex, limits);
    c.go("disk", true, false).await;
    // Two gated reads fill the window; the third waits behind them.
    c.send(CMD_READ, 0, 1, 0, 512, &[]).await;
    c.send(CMD_READ, 0, 2, 0, 512, &[]).await;
    c.send(CMD_READ, 0, 3, 512, 512, &[]).await;
    let third = tokio::time::timeout(Duration::from_millis(50), c.reply()).await;
    assert!(third.is_err(), "no reply while the window is full");
    disk.gate.notify_one();
    disk.gate.notify_one();
    let mut cookies: Vec<u64> = Vec::new();
    for _ in 0..3 {
        cookies.push(c.reply().await.cookie);
    }
    cookies.sort();
    assert_eq!(cookies, vec![1, 2, 3]);
    c.send(CMD_DISC, 0, 4, 0, 0, &[]).await;
    server.await.unwrap().unwrap();
}

// ------------------------------------------------- bounds against abuse

/// [`spawn_server`] over a small pipe, so that unread replies back up into
/// the server as they do over TCP once the socket buffers are full.
fn spawn_narrow<E: Exports>(
    exports: Arc<E>,
    limits: Limits,
) -> (
    Client<tokio::io::DuplexStream>,
    JoinHandle<Result<(), NbdError>>,
) {
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = tokio::spawn(serve(exports, b, "narrow-peer".into(), limits));
    let client = Client {
        s: a,
        structured: false,
        reads: HashMap::new(),
    };
    (client, server)
}

#[tokio::test(start_paused = true)]
async fn connections_share_one_payload_budget() {
    let (ex, _disk) = exports();
    // 2 MiB: 1.75 MiB for requests over 128 KiB, 256 KiB kept for smaller.
    let limits = Limits {
        budget: Arc::new(hast_nbd::Budget::new(2 << 20)),
        ..Limits::default()
    };
    let (mut greedy, s1) = spawn_narrow(ex.clone(), limits.clone());
    let (mut other, s2) = spawn_narrow(ex.clone(), limits.clone());
    let (mut third, s3) = spawn_narrow(ex, limits);
    greedy.go("disk", false, false).await;
    other.go("disk", false, false).await;
    third.go("disk", false, false).await;
    // Four 512 KiB READs whose replies are not read: three hold 1.5 MiB,
    // the fourth waits for the rest of the large-request pool.
    for cookie in 1..=4 {
        greedy.send(CMD_READ, 0, cookie, 0, 512 << 10, &[]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The other connection's large READ waits for the same budget...
    other.send(CMD_READ, 0, 10, 0, 512 << 10, &[]).await;
    let big = tokio::time::timeout(Duration::from_secs(5), other.reply()).await;
    assert!(big.is_err(), "the budget is shared: no room for 512 KiB");
    // ...while a 4 KiB READ of a third connection still gets through, from
    // the reserve. (The timed-out reply read above consumed nothing: no
    // reply had come.)
    third.send(CMD_READ, 0, 11, 4096, 4096, &[]).await;
    let small = tokio::time::timeout(Duration::from_secs(5), third.reply())
        .await
        .expect("a small READ is not starved by large ones");
    assert_eq!((small.cookie, small.error, small.data.len()), (11, 0, 4096));
    // The greedy client reads its replies: the budget comes back.
    for _ in 1..=4 {
        assert_eq!(greedy.reply().await.error, 0);
    }
    let r = tokio::time::timeout(Duration::from_secs(5), other.reply())
        .await
        .expect("the large READ runs once the budget is back");
    assert_eq!((r.cookie, r.error, r.data.len()), (10, 0, 512 << 10));
    for (c, s) in [(&mut greedy, s1), (&mut other, s2), (&mut third, s3)] {
        c.send(CMD_DISC, 0, 99, 0, 0, &[]).await;
        s.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_write_payload_closes_the_connection() {
    let (ex, _disk) = exports();
    let limits = Limits {
        payload_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let (mut c, server) = spawn_server(ex, limits);
    c.go("disk", false, false).await;
    let start = tokio::time::Instant::now();
    c.send(CMD_WRITE, 0, 1, 0, 4096, &[7u8; 4095]).await;
    assert!(matches!(
        server.await.unwrap(),
        Err(NbdError::PayloadTimeout(d)) if d == Duration::from_secs(3)
    ));
    assert!(start.elapsed() >= Duration::from_secs(3));
    c.expect_eof().await;
}

#[tokio::test(start_paused = true)]
async fn idle_means_nothing_received_and_nothing_in_flight() {
    let mut disk = MemExport::new(SIZE, false);
    disk.gate_offset = Some(0);
    let (ex, disk) = exports_with(disk);
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(5)),
        ..Limits::default()
    };
    let (mut c, server) = spawn_server(ex, limits);
    c.go("disk", false, false).await;
    // A READ the export holds for 20 s: the client waits, it is not idle.
    c.send(CMD_READ, 0, 1, 0, 512, &[]).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!server.is_finished(), "closed with a request in flight");
    disk.gate.notify_one();
    assert_eq!(c.reply().await.error, 0);
    // Requests now and then keep it open too.
    for cookie in 2..5 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        c.send(CMD_FLUSH, 0, cookie, 0, 0, &[]).await;
        assert_eq!(c.reply().await.error, 0);
    }
    // Then silence: closed after 5 s, cleanly.
    let quiet = tokio::time::Instant::now();
    server.await.unwrap().unwrap();
    assert!(quiet.elapsed() >= Duration::from_secs(5));
    c.expect_eof().await;
}

#[tokio::test]
async fn refuse_answers_every_option_with_policy_and_the_reason() {
    let message = "too many connections";
    // GO and the options before it get the error; ABORT gets its ACK.
    let (a, b) = tokio::io::duplex(1 << 16);
    let (rd, wr) = tokio::io::split(b);
    let refusal = tokio::spawn(hast_nbd::refuse(rd, wr, message));
    let mut c = Client {
        s: a,
        structured: false,
        reads: HashMap::new(),
    };
    c.greet(ClientFlags {
        fixed_newstyle: true,
        no_zeroes: true,
    })
    .await;
    for opt in [OPT_STRUCTURED_REPLY, OPT_GO] {
        let payload = if opt == OPT_GO {
            InfoRequest {
                name: "disk".into(),
                requests: vec![],
            }
            .encode()
        } else {
            Vec::new()
        };
        c.option(opt, &payload).await;
        let (h, p) = c.option_reply().await;
        assert_eq!((h.option, h.reply_type), (opt, REP_ERR_POLICY));
        assert_eq!(p, message.as_bytes());
    }
    c.option(OPT_ABORT, &[]).await;
    let (h, _) = c.option_reply().await;
    assert_eq!(h.reply_type, REP_ACK);
    refusal.await.unwrap().unwrap();
    c.expect_eof().await;

    // EXPORT_NAME cannot carry an error: the connection is closed.
    let (a, b) = tokio::io::duplex(1 << 16);
    let (rd, wr) = tokio::io::split(b);
    let refusal = tokio::spawn(hast_nbd::refuse(rd, wr, message));
    let mut c = Client {
        s: a,
        structured: false,
        reads: HashMap::new(),
    };
    c.greet(ClientFlags::default()).await;
    c.option(OPT_EXPORT_NAME, b"disk").await;
    refusal.await.unwrap().unwrap();
    c.expect_eof().await;
}

// ------------------------------------------------------------- STARTTLS

/// The stand-in for TLS in these tests: after a 4-byte hello each way,
/// every byte is XORed with 0x5a, so anything that went over the plain
/// stream after STARTTLS, or a plain reply, would arrive as garbage.
struct Xor<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Xor<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut self.0).poll_read(cx, buf))?;
        for b in &mut buf.filled_mut()[before..] {
            *b ^= 0x5a;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Xor<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let x: Vec<u8> = buf.iter().map(|b| b ^ 0x5a).collect();
        std::pin::Pin::new(&mut self.0).poll_write(cx, &x)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct FakeTls {
    mode: TlsMode,
    /// Refuse every handshake (as a bad certificate would).
    refuse: bool,
}

impl StartTls<tokio::net::UnixStream> for FakeTls {
    type Stream = Xor<tokio::net::UnixStream>;
    fn mode(&self) -> TlsMode {
        self.mode
    }
    async fn accept(
        &self,
        mut plain: tokio::net::UnixStream,
    ) -> std::io::Result<Xor<tokio::net::UnixStream>> {
        let mut hello = [0u8; 4];
        plain.read_exact(&mut hello).await?;
        if &hello != b"HELO" || self.refuse {
            return Err(std::io::Error::other("handshake refused"));
        }
        plain.write_all(b"OLEH").await?;
        Ok(Xor(plain))
    }
}

fn spawn_tls(
    mode: TlsMode,
    refuse: bool,
) -> (
    Client<tokio::net::UnixStream>,
    Arc<MemExport>,
    JoinHandle<Result<(), NbdError>>,
) {
    let (ex, disk) = exports();
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let tls = Arc::new(FakeTls { mode, refuse });
    let server = tokio::spawn(serve_tls(ex, b, tls, "test-peer".into(), Limits::default()));
    let c = Client {
        s: a,
        structured: false,
        reads: HashMap::new(),
    };
    (c, disk, server)
}

impl Client<tokio::net::UnixStream> {
    /// STARTTLS, its ACK, the fake handshake: the client from then on.
    async fn starttls(mut self) -> Client<Xor<tokio::net::UnixStream>> {
        self.option(OPT_STARTTLS, &[]).await;
        let r = self.option_replies().await;
        assert_eq!(r, vec![(REP_ACK, vec![])]);
        self.s.write_all(b"HELO").await.unwrap();
        let mut hello = [0u8; 4];
        self.s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"OLEH");
        Client {
            s: Xor(self.s),
            structured: false,
            reads: HashMap::new(),
        }
    }
}

/// Writes through the connection, reads back, disconnects.
async fn write_read_disc<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, disk: &MemExport) {
    let data = pattern(9, 64 << 10);
    c.send(CMD_WRITE, 0, 1, 4096, data.len() as u32, &data)
        .await;
    assert_eq!(c.reply().await.error, 0);
    c.send(CMD_READ, 0, 2, 4096, data.len() as u32, &[]).await;
    let r = c.reply().await;
    assert_eq!((r.cookie, r.error), (2, 0));
    assert_eq!(r.data, data);
    assert_eq!(disk.data.lock().unwrap()[4096..4096 + data.len()], data[..]);
    c.send(CMD_DISC, 0, 3, 0, 0, &[]).await;
}

#[tokio::test]
async fn required_tls_refuses_plaintext_then_serves_inside_tls() {
    let (mut c, disk, server) = spawn_tls(TlsMode::Required, false);
    c.greet(ClientFlags {
        fixed_newstyle: true,
        no_zeroes: true,
    })
    .await;
    let go = InfoRequest {
        name: "disk".into(),
        requests: vec![],
    }
    .encode();
    for (opt, payload) in [
        (OPT_LIST, vec![]),
        (OPT_STRUCTURED_REPLY, vec![]),
        (OPT_INFO, go.clone()),
        (OPT_GO, go.clone()),
    ] {
        c.option(opt, &payload).await;
        let r = c.option_replies().await;
        assert_eq!(
            r,
            vec![(REP_ERR_TLS_REQD, TLS_REQUIRED_MESSAGE.into())],
            "option {opt}"
        );
    }
    c.option(OPT_STARTTLS, b"x").await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_INVALID);
    let mut c = c.starttls().await;
    c.option(OPT_STARTTLS, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ERR_INVALID);
    c.option(OPT_LIST, &[]).await;
    assert_eq!(c.option_replies().await.last().unwrap().0, REP_ACK);
    let (size, _) = c.haggle_go("disk", true, true).await;
    assert_eq!(size, SIZE as u64);
    write_read_disc(&mut c, &disk).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn export_name_before_required_tls_closes() {
    let (mut c, _disk, server) = spawn_tls(TlsMode::Required, false);
    c.greet(ClientFlags::default()).await;
    c.option(OPT_EXPORT_NAME, b"disk").await;
    c.expect_eof().await;
    assert!(matches!(server.await.unwrap(), Err(NbdError::TlsRequired)));

    // With TLS it is served (old clients that skip GO).
    let (c, disk, server) = spawn_tls(TlsMode::Required, false);
    let mut c = c;
    c.greet(ClientFlags {
        fixed_newstyle: true,
        no_zeroes: true,
    })
    .await;
    let mut c = c.starttls().await;
    c.option(OPT_EXPORT_NAME, b"disk").await;
    let mut head = [0u8; 10];
    c.s.read_exact(&mut head).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(head[..8].try_into().unwrap()),
        SIZE as u64
    );
    write_read_disc(&mut c, &disk).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn optional_tls_serves_plaintext_and_tls_clients() {
    let (mut c, disk, server) = spawn_tls(TlsMode::Optional, false);
    c.go("disk", true, false).await;
    write_read_disc(&mut c, &disk).await;
    server.await.unwrap().unwrap();

    let (mut c, disk, server) = spawn_tls(TlsMode::Optional, false);
    c.greet(ClientFlags {
        fixed_newstyle: true,
        no_zeroes: true,
    })
    .await;
    let mut c = c.starttls().await;
    c.haggle_go("disk", false, false).await;
    write_read_disc(&mut c, &disk).await;
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn failed_or_early_tls_handshakes_close() {
    // The TLS layer refuses (a certificate not accepted): closed, reported.
    let (mut c, _disk, server) = spawn_tls(TlsMode::Required, true);
    c.greet(ClientFlags::default()).await;
    c.option(OPT_STARTTLS, &[]).await;
    assert_eq!(c.option_replies().await[0].0, REP_ACK);
    c.s.write_all(b"HELO").await.unwrap();
    c.expect_eof().await;
    match server.await.unwrap() {
        Err(NbdError::Tls(m)) => assert!(m.contains("handshake refused"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Bytes sent with STARTTLS, before its ACK could be read: they would
    // be lost under TLS, so the connection ends.
    let (mut c, _disk, server) = spawn_tls(TlsMode::Optional, false);
    c.greet(ClientFlags::default()).await;
    let mut both = encode_option(OPT_STARTTLS, &[]);
    both.extend_from_slice(b"HELO");
    c.s.write_all(&both).await.unwrap();
    assert_eq!(c.option_replies().await[0].0, REP_ACK);
    c.expect_eof().await;
    assert!(matches!(server.await.unwrap(), Err(NbdError::Tls(_))));
}
