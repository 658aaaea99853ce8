//! The handshake phase, sans-IO: the fixed-newstyle greeting, client flags,
//! option framing, option payload codecs, option reply encoders, and the
//! [`Negotiation`] state machine that turns complete option frames into the
//! bytes to send back and an [`Outcome`]. Exports are looked up through the
//! synchronous [`Catalog`] trait so this module never touches a socket.
//!
//! Client-side encoders (options) and decoders (option replies) live here
//! too: tests and fuzz targets use them, and so can an NBD client.

use crate::error::NbdError;
use crate::proto::*;

// ------------------------------------------------------------- greeting

/// The 18 bytes the server sends first: NBDMAGIC, IHAVEOPT and the
/// handshake flags (fixed newstyle, no zeroes). Oldstyle is never spoken.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// The client's answer to the greeting, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// proto.md: the server MUST drop the connection on unknown client flags.
    /// A client without `C_FIXED_NEWSTYLE` is still served fixed newstyle
    /// (allowed, and harmless: it only changes what unknown options get).
    pub fn parse(raw: [u8; 4]) -> Result<ClientFlags, NbdError> {
        let bits = u32::from_be_bytes(raw);
        if bits & !CLIENT_FLAGS_KNOWN != 0 {
            return Err(NbdError::ClientFlags(bits));
        }
        Ok(ClientFlags {
            fixed_newstyle: bits & FLAG_C_FIXED_NEWSTYLE != 0,
            no_zeroes: bits & FLAG_C_NO_ZEROES != 0,
        })
    }

    pub fn encode(&self) -> [u8; 4] {
        let mut bits = 0;
        if self.fixed_newstyle {
            bits |= FLAG_C_FIXED_NEWSTYLE;
        }
        if self.no_zeroes {
            bits |= FLAG_C_NO_ZEROES;
        }
        bits.to_be_bytes()
    }
}

// ------------------------------------------------------- option framing

/// `IHAVEOPT`, option code, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Checks only the magic; the length limit is the negotiation's call.
    pub fn parse(raw: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, NbdError> {
        let magic = u64::from_be_bytes(arr(&raw[0..8]));
        if magic != IHAVEOPT {
            return Err(NbdError::OptionMagic(magic));
        }
        Ok(OptionHeader {
            option: u32::from_be_bytes(arr(&raw[8..12])),
            len: u32::from_be_bytes(arr(&raw[12..16])),
        })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// A whole option frame as a client sends it (header + payload).
/// Panics never; a payload over 4 GiB is not representable and is cut.
pub fn encode_option(option: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(OPTION_HEADER_LEN + len as usize);
    v.extend_from_slice(&OptionHeader { option, len }.encode());
    v.extend_from_slice(&payload[..len as usize]);
    v
}

/// Header of one server reply to an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub len: u32,
}

impl OptionReplyHeader {
    /// `None` when the magic is wrong.
    pub fn parse(raw: &[u8; OPTION_REPLY_HEADER_LEN]) -> Option<OptionReplyHeader> {
        if u64::from_be_bytes(arr(&raw[0..8])) != REPLY_MAGIC_OPTION {
            return None;
        }
        Some(OptionReplyHeader {
            option: u32::from_be_bytes(arr(&raw[8..12])),
            reply_type: u32::from_be_bytes(arr(&raw[12..16])),
            len: u32::from_be_bytes(arr(&raw[16..20])),
        })
    }

    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut b = [0u8; OPTION_REPLY_HEADER_LEN];
        b[0..8].copy_from_slice(&REPLY_MAGIC_OPTION.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        b[16..20].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Append one option reply (header + payload) to `out`.
pub fn push_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    // Payloads built here are bounded (≤ a few KiB), far below u32::MAX.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(
        &OptionReplyHeader {
            option,
            reply_type,
            len,
        }
        .encode(),
    );
    out.extend_from_slice(&payload[..len as usize]);
}

/// `NBD_REP_SERVER` payload: name length, name, then the description text.
pub fn rep_server_payload(name: &str, description: Option<&str>) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len() + description.map_or(0, str::len));
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    if let Some(d) = description {
        p.extend_from_slice(d.as_bytes());
    }
    p
}

/// `NBD_REP_INFO` payload for `NBD_INFO_EXPORT`.
pub fn info_export_payload(size: u64, transmission_flags: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    p[2..10].copy_from_slice(&size.to_be_bytes());
    p[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    p
}

/// `NBD_REP_INFO` payload for `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_text_payload(info_type: u16, text: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&info_type.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    p
}

/// `NBD_REP_INFO` payload for `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size_payload(sizes: &BlockSizes) -> [u8; 14] {
    let mut p = [0u8; 14];
    p[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    p[2..6].copy_from_slice(&sizes.min.to_be_bytes());
    p[6..10].copy_from_slice(&sizes.preferred.to_be_bytes());
    p[10..14].copy_from_slice(&sizes.max_payload.to_be_bytes());
    p
}

/// `NBD_REP_META_CONTEXT` payload: context id then name.
pub fn meta_context_payload(id: u32, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless the client negotiated `NO_ZEROES`.
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + 124);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        v.extend_from_slice(&[0u8; 124]);
    }
    v
}

// ------------------------------------------------------ option payloads

/// Why an option payload was refused with `NBD_REP_ERR_INVALID`; the text
/// goes to the client.
pub type Invalid = &'static str;

/// An NBD string: ≤ 4096 bytes of UTF-8 without NUL.
fn nbd_string(bytes: &[u8]) -> Result<String, Invalid> {
    if bytes.len() > STRING_LEN_MAX {
        return Err("string longer than 4096 bytes");
    }
    if bytes.contains(&0) {
        return Err("string contains NUL");
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| "string is not UTF-8")
}

/// A cursor over an option payload that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if n > self.buf.len() {
            return Err("lengths in the option exceed its payload");
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        Ok(u16::from_be_bytes(arr(self.take(2)?)))
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        Ok(u32::from_be_bytes(arr(self.take(4)?)))
    }
    fn string32(&mut self) -> Result<String, Invalid> {
        let n = self.u32()? as usize;
        nbd_string(self.take(n)?)
    }
    fn end(&self) -> Result<(), Invalid> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the option data")
        }
    }
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    /// Requested `NBD_INFO_*` items, in the client's order.
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Lengths must add up exactly (proto.md: name length ≤ payload − 6).
    pub fn parse(payload: &[u8]) -> Result<InfoRequest, Invalid> {
        let mut c = Cursor { buf: payload };
        let name = c.string32()?;
        let n = c.u16()? as usize;
        if c.buf.len() != n * 2 {
            return Err("information request count does not match the payload");
        }
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            requests.push(c.u16()?);
        }
        c.end()?;
        Ok(InfoRequest { name, requests })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(6 + self.name.len() + 2 * self.requests.len());
        v.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    fn wants(&self, info: u16) -> bool {
        self.requests.contains(&info)
    }
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaRequest {
    pub fn parse(payload: &[u8]) -> Result<MetaRequest, Invalid> {
        let mut c = Cursor { buf: payload };
        let name = c.string32()?;
        let n = c.u32()?;
        // Each query takes at least its 4-byte length, so a count larger
        // than that is a lie; checking first keeps the Vec bounded.
        if n as usize > c.buf.len() / 4 {
            return Err("query count does not match the payload");
        }
        let mut queries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            queries.push(c.string32()?);
        }
        c.end()?;
        Ok(MetaRequest { name, queries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q.as_bytes());
        }
        v
    }
}

// ---------------------------------------------------------- negotiation

/// What the negotiation needs to know about exports, answered synchronously
/// by the shell (which owns the real export table).
pub trait Catalog {
    /// Exports offered now: (name, description).
    fn list(&self) -> Vec<(String, Option<String>)>;
    /// Open `name` (INFO, GO, EXPORT_NAME, meta-context options). The shell
    /// keeps the last export opened; after [`Outcome::Transmission`] that is
    /// the chosen one.
    fn lookup(&mut self, name: &str) -> Result<ExportInfo, OpenError>;
}

/// What the handshake agreed, as the transmission phase needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Name the client asked for.
    pub export: String,
    /// Transmission flags sent to the client.
    pub flags: u16,
    pub structured_replies: bool,
    /// Id of `base:allocation` if selected for this export.
    pub meta_context: Option<u32>,
    pub block_sizes: BlockSizes,
}

/// Everything the shell needs to enter transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmission {
    pub negotiated: Negotiated,
    /// The export's description as it was when the client chose it.
    pub info: ExportInfo,
}

/// Whether and how the server offers TLS (proto.md "TLS support").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// NOTLS: `NBD_OPT_STARTTLS` is answered `NBD_REP_ERR_UNSUP`.
    #[default]
    Off,
    /// SELECTIVETLS with no TLS-only export: plaintext clients are served,
    /// and a client may upgrade with `NBD_OPT_STARTTLS`.
    Optional,
    /// FORCEDTLS: before TLS, every option but `STARTTLS` and `ABORT` gets
    /// `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` closes the connection.
    Required,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Optional => "optional",
            TlsMode::Required => "required",
        }
    }
}

/// The message sent with `NBD_REP_ERR_TLS_REQD`; clients print it.
pub const TLS_REQUIRED_MESSAGE: &str =
    "TLS required: this server accepts only NBD over TLS (STARTTLS)";

/// What to do after sending [`Step::reply`].
#[derive(Debug)]
pub enum Outcome {
    /// Read the next option.
    Continue,
    /// The `NBD_REP_ACK` to `NBD_OPT_STARTTLS` is in the reply: send it,
    /// run the TLS handshake as the server on the same socket, then call
    /// [`Negotiation::tls_started`] and read the next option over TLS. The
    /// client sends nothing between the ACK and its TLS ClientHello, so
    /// any byte already buffered after the option is a protocol violation.
    StartTls,
    /// Option haggling is over; serve requests.
    Transmission(Transmission),
    /// The client sent `NBD_OPT_ABORT`; close cleanly.
    Abort,
    /// Close because of this protocol violation.
    Reject(NbdError),
}

/// Bytes to send (possibly empty) and what follows.
#[derive(Debug)]
pub struct Step {
    pub reply: Vec<u8>,
    pub outcome: Outcome,
}

impl Step {
    fn boxed(reply: Vec<u8>, e: NbdError) -> Box<Step> {
        Box::new(Step::close(reply, e))
    }

    fn close(reply: Vec<u8>, e: NbdError) -> Step {
        Step {
            reply,
            outcome: Outcome::Reject(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitClientFlags,
    Options,
    /// STARTTLS acknowledged; waiting for the shell's TLS handshake.
    AwaitTls,
    Done,
}

/// The server side of fixed-newstyle option haggling.
///
/// Drive it as: send [`greeting`], feed the 4 client-flag bytes to
/// [`Negotiation::client_flags`], then per option feed the 16-byte header to
/// [`Negotiation::option_header`] (which checks the length before the shell
/// allocates) and the payload to [`Negotiation::option`].
#[derive(Debug)]
pub struct Negotiation {
    phase: Phase,
    flags: ClientFlags,
    structured: bool,
    /// Export for which `base:allocation` is selected (last SET wins).
    meta_export: Option<String>,
    options_seen: u32,
    payload_max: u32,
    tls_mode: TlsMode,
    /// The TLS handshake completed; options now arrive over TLS.
    tls: bool,
}

impl Negotiation {
    /// `payload_max` caps the READ/WRITE payload this connection advertises.
    /// No TLS: `NBD_OPT_STARTTLS` is unsupported.
    pub fn new(payload_max: u32) -> Negotiation {
        Negotiation::with_tls(payload_max, TlsMode::Off)
    }

    /// [`Negotiation::new`] with STARTTLS offered as `tls_mode` says.
    pub fn with_tls(payload_max: u32, tls_mode: TlsMode) -> Negotiation {
        Negotiation {
            phase: Phase::AwaitClientFlags,
            flags: ClientFlags::default(),
            structured: false,
            meta_export: None,
            options_seen: 0,
            payload_max,
            tls_mode,
            tls: false,
        }
    }

    /// Whether the TLS handshake has completed on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The shell completed the TLS handshake after [`Outcome::StartTls`].
    /// Option haggling starts over: what was negotiated in plaintext
    /// (structured replies, the meta context) is forgotten, since a
    /// man in the middle could have chosen it (proto.md, downgrade attacks).
    /// The option count is kept: it bounds the whole handshake.
    pub fn tls_started(&mut self) -> Result<(), NbdError> {
        if self.phase != Phase::AwaitTls {
            self.phase = Phase::Done;
            return Err(NbdError::Misuse("TLS started without STARTTLS"));
        }
        self.tls = true;
        self.structured = false;
        self.meta_export = None;
        self.phase = Phase::Options;
        Ok(())
    }

    /// The client flags; an error means close without a word.
    pub fn client_flags(&mut self, raw: [u8; 4]) -> Result<ClientFlags, NbdError> {
        if self.phase != Phase::AwaitClientFlags {
            self.phase = Phase::Done;
            return Err(NbdError::Misuse("client flags fed twice"));
        }
        match ClientFlags::parse(raw) {
            Ok(f) => {
                self.flags = f;
                self.phase = Phase::Options;
                Ok(f)
            }
            Err(e) => {
                self.phase = Phase::Done;
                Err(e)
            }
        }
    }

    /// Check an option header. `Ok` means: read `len` payload bytes and call
    /// [`Negotiation::option`]. `Err` is the final step (maybe with a reply).
    pub fn option_header(
        &mut self,
        raw: &[u8; OPTION_HEADER_LEN],
    ) -> Result<OptionHeader, Box<Step>> {
        if self.phase != Phase::Options {
            self.phase = Phase::Done;
            return Err(Step::boxed(
                Vec::new(),
                NbdError::Misuse("option outside haggling"),
            ));
        }
        let header = match OptionHeader::parse(raw) {
            Ok(h) => h,
            Err(e) => {
                self.phase = Phase::Done;
                return Err(Step::boxed(Vec::new(), e));
            }
        };
        self.options_seen += 1;
        if self.options_seen > OPTIONS_MAX {
            self.phase = Phase::Done;
            return Err(Step::boxed(
                Vec::new(),
                NbdError::TooManyOptions(OPTIONS_MAX),
            ));
        }
        if header.len > OPTION_LEN_MAX {
            self.phase = Phase::Done;
            let mut reply = Vec::new();
            // EXPORT_NAME has no error reply; the others are told why.
            if header.option != OPT_EXPORT_NAME {
                push_option_reply(
                    &mut reply,
                    header.option,
                    REP_ERR_TOO_BIG,
                    b"option payload too large",
                );
            }
            return Err(Step::boxed(
                reply,
                NbdError::OptionTooBig {
                    option: header.option,
                    len: header.len,
                    max: OPTION_LEN_MAX,
                },
            ));
        }
        Ok(header)
    }

    /// Handle one complete option.
    pub fn option(
        &mut self,
        header: OptionHeader,
        payload: &[u8],
        catalog: &mut impl Catalog,
    ) -> Step {
        if self.phase != Phase::Options {
            self.phase = Phase::Done;
            return Step::close(Vec::new(), NbdError::Misuse("option outside haggling"));
        }
        if payload.len() != header.len as usize {
            self.phase = Phase::Done;
            return Step::close(
                Vec::new(),
                NbdError::Misuse("payload length differs from header"),
            );
        }
        let mut out = Vec::new();
        let opt = header.option;
        let tls_missing = self.tls_mode == TlsMode::Required && !self.tls;
        let outcome = match opt {
            OPT_STARTTLS => self.starttls(payload, &mut out),
            // FORCEDTLS: EXPORT_NAME cannot carry an error, so the
            // connection is closed without a word.
            OPT_EXPORT_NAME if tls_missing => Outcome::Reject(NbdError::TlsRequired),
            OPT_ABORT => {
                // proto.md: reply ACK (payload, if any, is ignored).
                push_option_reply(&mut out, opt, REP_ACK, &[]);
                Outcome::Abort
            }
            _ if tls_missing => {
                push_option_reply(
                    &mut out,
                    opt,
                    REP_ERR_TLS_REQD,
                    TLS_REQUIRED_MESSAGE.as_bytes(),
                );
                Outcome::Continue
            }
            OPT_EXPORT_NAME => self.export_name(payload, catalog, &mut out),
            OPT_LIST => {
                if payload.is_empty() {
                    for (name, description) in catalog.list() {
                        let p = rep_server_payload(&name, description.as_deref());
                        push_option_reply(&mut out, opt, REP_SERVER, &p);
                    }
                    push_option_reply(&mut out, opt, REP_ACK, &[]);
                } else {
                    push_option_reply(&mut out, opt, REP_ERR_INVALID, b"LIST takes no data");
                }
                Outcome::Continue
            }
            OPT_STRUCTURED_REPLY => {
                if payload.is_empty() {
                    // A repeat is acknowledged again: harmless and friendlier
                    // than failing a client that retries.
                    self.structured = true;
                    push_option_reply(&mut out, opt, REP_ACK, &[]);
                } else {
                    push_option_reply(
                        &mut out,
                        opt,
                        REP_ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    );
                }
                Outcome::Continue
            }
            OPT_INFO | OPT_GO => self.info_go(opt, payload, catalog, &mut out),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(opt, payload, catalog, &mut out);
                Outcome::Continue
            }
            // EXTENDED_HEADERS is unsupported here (docs/overview.md §2): qemu falls back on
            // ERR_UNSUP.
            _ => {
                push_option_reply(&mut out, opt, REP_ERR_UNSUP, b"option not supported");
                Outcome::Continue
            }
        };
        match outcome {
            Outcome::Continue => {}
            Outcome::StartTls => self.phase = Phase::AwaitTls,
            _ => self.phase = Phase::Done,
        }
        Step {
            reply: out,
            outcome,
        }
    }

    fn starttls(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Outcome {
        let opt = OPT_STARTTLS;
        if self.tls_mode == TlsMode::Off {
            // NOTLS mode (proto.md).
            push_option_reply(
                out,
                opt,
                REP_ERR_UNSUP,
                b"TLS is not configured on this server",
            );
        } else if self.tls {
            push_option_reply(out, opt, REP_ERR_INVALID, b"TLS is already negotiated");
        } else if !payload.is_empty() {
            push_option_reply(out, opt, REP_ERR_INVALID, b"STARTTLS takes no data");
        } else {
            push_option_reply(out, opt, REP_ACK, &[]);
            return Outcome::StartTls;
        }
        Outcome::Continue
    }

    fn export_name(
        &mut self,
        payload: &[u8],
        catalog: &mut impl Catalog,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let refused = |name: String, message: String| {
            Outcome::Reject(NbdError::ExportRefused { name, message })
        };
        let name = match nbd_string(payload) {
            Ok(n) => n,
            Err(why) => return refused(String::from_utf8_lossy(payload).into(), why.into()),
        };
        match catalog.lookup(&name) {
            Ok(info) => {
                let t = self.transmission(name, info);
                out.extend_from_slice(&export_name_reply(
                    t.info.size,
                    t.negotiated.flags,
                    self.flags.no_zeroes,
                ));
                Outcome::Transmission(t)
            }
            Err(e) => refused(name, e.message),
        }
    }

    fn info_go(
        &mut self,
        opt: u32,
        payload: &[u8],
        catalog: &mut impl Catalog,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let req = match InfoRequest::parse(payload) {
            Ok(r) => r,
            Err(why) => {
                push_option_reply(out, opt, REP_ERR_INVALID, why.as_bytes());
                return Outcome::Continue;
            }
        };
        let info = match catalog.lookup(&req.name) {
            Ok(info) => info,
            Err(e) => {
                push_open_error(out, opt, &e);
                return Outcome::Continue;
            }
        };
        let t = self.transmission(req.name.clone(), info);
        push_option_reply(
            out,
            opt,
            REP_INFO,
            &info_export_payload(t.info.size, t.negotiated.flags),
        );
        if req.wants(INFO_NAME) {
            push_option_reply(out, opt, REP_INFO, &info_text_payload(INFO_NAME, &req.name));
        }
        if req.wants(INFO_DESCRIPTION) {
            if let Some(d) = &t.info.description {
                push_option_reply(out, opt, REP_INFO, &info_text_payload(INFO_DESCRIPTION, d));
            }
        }
        // Sent even unasked (allowed): clients that do not ask may still use it.
        push_option_reply(
            out,
            opt,
            REP_INFO,
            &info_block_size_payload(&t.negotiated.block_sizes),
        );
        push_option_reply(out, opt, REP_ACK, &[]);
        if opt == OPT_GO {
            Outcome::Transmission(t)
        } else {
            Outcome::Continue
        }
    }

    fn meta_context(
        &mut self,
        opt: u32,
        payload: &[u8],
        catalog: &mut impl Catalog,
        out: &mut Vec<u8>,
    ) {
        let set = opt == OPT_SET_META_CONTEXT;
        if set {
            // proto.md: SET replaces the selection even when it fails.
            self.meta_export = None;
            if !self.structured {
                push_option_reply(
                    out,
                    opt,
                    REP_ERR_INVALID,
                    b"negotiate structured replies first",
                );
                return;
            }
        }
        let req = match MetaRequest::parse(payload) {
            Ok(r) => r,
            Err(why) => {
                push_option_reply(out, opt, REP_ERR_INVALID, why.as_bytes());
                return;
            }
        };
        if let Err(e) = catalog.lookup(&req.name) {
            push_open_error(out, opt, &e);
            return;
        }
        // Only `base:allocation` exists; unknown namespaces and leaves are
        // ignored (proto.md MUST). LIST treats no query or `base:` as a
        // wildcard; SET ignores `base:`.
        let selected = req
            .queries
            .iter()
            .any(|q| q == META_BASE_ALLOCATION || (!set && q == "base:"))
            || (!set && req.queries.is_empty());
        if selected {
            let id = if set { META_BASE_ALLOCATION_ID } else { 0 };
            push_option_reply(
                out,
                opt,
                REP_META_CONTEXT,
                &meta_context_payload(id, META_BASE_ALLOCATION),
            );
            if set {
                self.meta_export = Some(req.name);
            }
        }
        push_option_reply(out, opt, REP_ACK, &[]);
    }

    fn transmission(&self, export: String, info: ExportInfo) -> Transmission {
        let meta_context = match &self.meta_export {
            Some(m) if *m == export => Some(META_BASE_ALLOCATION_ID),
            _ => None,
        };
        Transmission {
            negotiated: Negotiated {
                flags: info.transmission_flags(self.structured),
                structured_replies: self.structured,
                meta_context,
                block_sizes: BlockSizes::new(&info, self.payload_max),
                export,
            },
            info,
        }
    }
}

fn push_open_error(out: &mut Vec<u8>, opt: u32, e: &OpenError) {
    let rep = match e.kind {
        OpenErrorKind::Unknown => REP_ERR_UNKNOWN,
        OpenErrorKind::Shutdown => REP_ERR_SHUTDOWN,
    };
    push_option_reply(out, opt, rep, clip(e.message.as_bytes()));
}

/// Error messages are NBD strings too: keep them ≤ 4096 bytes.
fn clip(msg: &[u8]) -> &[u8] {
    let mut end = msg.len().min(STRING_LEN_MAX);
    // Do not cut a UTF-8 sequence in half.
    while end < msg.len() && end > 0 && (msg[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &msg[..end]
}

/// Copy a slice of known length into an array. Callers slice exactly N
/// bytes, so the fallback never triggers; it exists to avoid a panic path.
pub(crate) fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s[..n]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog with one export "disk" (and the default name "" unknown).
    struct TestCatalog {
        stopping: bool,
    }

    impl Catalog for TestCatalog {
        fn list(&self) -> Vec<(String, Option<String>)> {
            vec![
                ("disk".into(), Some("the disk".into())),
                ("other".into(), None),
            ]
        }
        fn lookup(&mut self, name: &str) -> Result<ExportInfo, OpenError> {
            if self.stopping {
                return Err(OpenError::shutdown("daemon stopping"));
            }
            match name {
                "disk" | "other" => {
                    let mut i = ExportInfo::new(1 << 20);
                    i.description = Some("the disk".into());
                    i.can_zero = true;
                    Ok(i)
                }
                _ => Err(OpenError::unknown(format!("no export {name:?} here"))),
            }
        }
    }

    fn cat() -> TestCatalog {
        TestCatalog { stopping: false }
    }

    fn ready(flags: u32) -> Negotiation {
        let mut n = Negotiation::new(PAYLOAD_MAX);
        n.client_flags(flags.to_be_bytes()).unwrap();
        n
    }

    fn feed(n: &mut Negotiation, opt: u32, payload: &[u8], c: &mut TestCatalog) -> Step {
        let frame = encode_option(opt, payload);
        let hdr = n.option_header(&arr(&frame[..16])).unwrap();
        n.option(hdr, &frame[16..], c)
    }

    /// Split a reply stream into (option, type, payload) triples.
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let h = OptionReplyHeader::parse(&arr(&b[..20])).expect("reply magic");
            let end = 20 + h.len as usize;
            v.push((h.option, h.reply_type, b[20..end].to_vec()));
            b = &b[end..];
        }
        v
    }

    fn types(step: &Step) -> Vec<u32> {
        replies(&step.reply).into_iter().map(|r| r.1).collect()
    }

    #[test]
    fn greeting_bytes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags_table() {
        let cases: [(u32, Option<ClientFlags>); 6] = [
            (0, Some(ClientFlags::default())),
            (
                1,
                Some(ClientFlags {
                    fixed_newstyle: true,
                    no_zeroes: false,
                }),
            ),
            (
                3,
                Some(ClientFlags {
                    fixed_newstyle: true,
                    no_zeroes: true,
                }),
            ),
            (4, None),
            (0x8000_0001, None),
            (u32::MAX, None),
        ];
        for (bits, want) in cases {
            let mut n = Negotiation::new(PAYLOAD_MAX);
            let got = n.client_flags(bits.to_be_bytes()).ok();
            assert_eq!(got, want, "flags {bits:#x}");
            if let Some(f) = want {
                assert_eq!(u32::from_be_bytes(f.encode()), bits);
            }
        }
    }

    #[test]
    fn option_header_checks() {
        let mut n = ready(3);
        let mut bad = OptionHeader { option: 3, len: 0 }.encode();
        bad[0] ^= 1;
        let step = n.option_header(&bad).unwrap_err();
        assert!(step.reply.is_empty());
        assert!(matches!(
            step.outcome,
            Outcome::Reject(NbdError::OptionMagic(_))
        ));

        let mut n = ready(3);
        let big = OptionHeader {
            option: OPT_GO,
            len: OPTION_LEN_MAX + 1,
        };
        let step = n.option_header(&big.encode()).unwrap_err();
        assert_eq!(types(&step), vec![REP_ERR_TOO_BIG]);
        assert!(matches!(
            step.outcome,
            Outcome::Reject(NbdError::OptionTooBig { .. })
        ));

        // EXPORT_NAME cannot be answered with an error: silent close.
        let mut n = ready(3);
        let big = OptionHeader {
            option: OPT_EXPORT_NAME,
            len: u32::MAX,
        };
        let step = n.option_header(&big.encode()).unwrap_err();
        assert!(step.reply.is_empty());

        // Exactly at the limit is fine.
        let mut n = ready(3);
        let ok = OptionHeader {
            option: OPT_GO,
            len: OPTION_LEN_MAX,
        };
        assert_eq!(n.option_header(&ok.encode()).unwrap(), ok);
    }

    #[test]
    fn options_before_flags_or_after_end_are_misuse() {
        let mut n = Negotiation::new(PAYLOAD_MAX);
        let step = n
            .option_header(&OptionHeader { option: 3, len: 0 }.encode())
            .unwrap_err();
        assert!(matches!(step.outcome, Outcome::Reject(NbdError::Misuse(_))));

        let mut n = ready(1);
        let step = feed(&mut n, OPT_ABORT, &[], &mut cat());
        assert!(matches!(step.outcome, Outcome::Abort));
        let step = n
            .option_header(&OptionHeader { option: 3, len: 0 }.encode())
            .unwrap_err();
        assert!(matches!(step.outcome, Outcome::Reject(NbdError::Misuse(_))));
    }

    #[test]
    fn too_many_options_close() {
        let mut n = ready(1);
        let mut c = cat();
        for _ in 0..OPTIONS_MAX {
            let step = feed(&mut n, OPT_LIST, &[], &mut c);
            assert!(matches!(step.outcome, Outcome::Continue));
        }
        let step = n
            .option_header(&OptionHeader { option: 3, len: 0 }.encode())
            .unwrap_err();
        assert!(matches!(
            step.outcome,
            Outcome::Reject(NbdError::TooManyOptions(_))
        ));
    }

    #[test]
    fn list_replies_servers_then_ack() {
        let mut n = ready(1);
        let step = feed(&mut n, OPT_LIST, &[], &mut cat());
        let r = replies(&step.reply);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1, REP_SERVER);
        assert_eq!(r[0].2, rep_server_payload("disk", Some("the disk")));
        assert_eq!(&r[0].2[4..8], b"disk");
        assert_eq!(r[1].2, rep_server_payload("other", None));
        assert_eq!(r[2].1, REP_ACK);
        assert!(r.iter().all(|x| x.0 == OPT_LIST));

        let step = feed(&mut n, OPT_LIST, b"x", &mut cat());
        assert_eq!(types(&step), vec![REP_ERR_INVALID]);
        assert!(matches!(step.outcome, Outcome::Continue));
    }

    #[test]
    fn unsupported_options_get_err_unsup() {
        for opt in [
            OPT_EXTENDED_HEADERS,
            OPT_STARTTLS,
            OPT_PEEK_EXPORT,
            0,
            12,
            0xdead_beef,
        ] {
            let mut n = ready(1);
            let step = feed(&mut n, opt, b"junk", &mut cat());
            let r = replies(&step.reply);
            assert_eq!(r.len(), 1, "option {opt}");
            assert_eq!((r[0].0, r[0].1), (opt, REP_ERR_UNSUP));
            assert!(!r[0].2.is_empty(), "carries a message");
            assert!(matches!(step.outcome, Outcome::Continue));
        }
    }

    #[test]
    fn structured_reply_option() {
        let mut n = ready(1);
        let step = feed(&mut n, OPT_STRUCTURED_REPLY, b"x", &mut cat());
        assert_eq!(types(&step), vec![REP_ERR_INVALID]);
        let step = feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut cat());
        assert_eq!(types(&step), vec![REP_ACK]);
        let step = feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut cat());
        assert_eq!(types(&step), vec![REP_ACK]);
    }

    #[test]
    fn abort_acks_and_closes() {
        let mut n = ready(1);
        let step = feed(&mut n, OPT_ABORT, b"ignored", &mut cat());
        assert_eq!(types(&step), vec![REP_ACK]);
        assert!(matches!(step.outcome, Outcome::Abort));
    }

    fn tls_ready(mode: TlsMode) -> Negotiation {
        let mut n = Negotiation::with_tls(PAYLOAD_MAX, mode);
        n.client_flags(3u32.to_be_bytes()).unwrap();
        n
    }

    /// What an outcome is, for tables.
    fn kind(o: &Outcome) -> &'static str {
        match o {
            Outcome::Continue => "continue",
            Outcome::StartTls => "starttls",
            Outcome::Transmission(_) => "transmission",
            Outcome::Abort => "abort",
            Outcome::Reject(NbdError::TlsRequired) => "reject-tls",
            Outcome::Reject(_) => "reject",
        }
    }

    /// (mode, TLS already started, option, payload) -> (reply types, outcome).
    type TlsCase = (TlsMode, bool, u32, Vec<u8>, Vec<u32>, &'static str);

    #[test]
    fn tls_option_table() {
        use TlsMode::*;
        let go = go_payload("disk", &[]);
        let (ack, reqd, inval, unsup, info) = (
            REP_ACK,
            REP_ERR_TLS_REQD,
            REP_ERR_INVALID,
            REP_ERR_UNSUP,
            REP_INFO,
        );
        #[rustfmt::skip]
        let cases: Vec<TlsCase> = vec![
            // NOTLS: STARTTLS unsupported, everything else as before.
            (Off, false, OPT_STARTTLS, vec![], vec![unsup], "continue"),
            (Off, false, OPT_GO, go.clone(), vec![info, info, ack], "transmission"),
            // FORCEDTLS before TLS: only STARTTLS and ABORT pass.
            (Required, false, OPT_STARTTLS, vec![], vec![ack], "starttls"),
            (Required, false, OPT_STARTTLS, vec![1], vec![inval], "continue"),
            (Required, false, OPT_ABORT, vec![], vec![ack], "abort"),
            (Required, false, OPT_GO, go.clone(), vec![reqd], "continue"),
            (Required, false, OPT_INFO, go.clone(), vec![reqd], "continue"),
            (Required, false, OPT_LIST, vec![], vec![reqd], "continue"),
            (Required, false, OPT_STRUCTURED_REPLY, vec![], vec![reqd], "continue"),
            (Required, false, OPT_SET_META_CONTEXT, vec![], vec![reqd], "continue"),
            (Required, false, OPT_EXTENDED_HEADERS, vec![], vec![reqd], "continue"),
            (Required, false, 0xdead, vec![], vec![reqd], "continue"),
            (Required, false, OPT_EXPORT_NAME, b"disk".to_vec(), vec![], "reject-tls"),
            // FORCEDTLS inside TLS: served; a second STARTTLS is invalid.
            (Required, true, OPT_STARTTLS, vec![], vec![inval], "continue"),
            (Required, true, OPT_GO, go.clone(), vec![info, info, ack], "transmission"),
            (Required, true, OPT_LIST, vec![], vec![REP_SERVER, REP_SERVER, ack], "continue"),
            (Required, true, OPT_EXPORT_NAME, b"disk".to_vec(), vec![], "transmission"),
            (Required, true, 0xdead, vec![], vec![unsup], "continue"),
            // SELECTIVETLS (every export either way): plaintext served.
            (Optional, false, OPT_STARTTLS, vec![], vec![ack], "starttls"),
            (Optional, false, OPT_GO, go.clone(), vec![info, info, ack], "transmission"),
            (Optional, false, OPT_EXPORT_NAME, b"disk".to_vec(), vec![], "transmission"),
            (Optional, true, OPT_STARTTLS, vec![], vec![inval], "continue"),
            (Optional, true, OPT_GO, go.clone(), vec![info, info, ack], "transmission"),
        ];
        for (i, (mode, started, opt, payload, want, outcome)) in cases.into_iter().enumerate() {
            let mut n = tls_ready(mode);
            let mut c = cat();
            if started {
                let step = feed(&mut n, OPT_STARTTLS, &[], &mut c);
                assert!(matches!(step.outcome, Outcome::StartTls), "case {i}");
                n.tls_started().unwrap();
                assert!(n.is_tls());
            }
            let step = feed(&mut n, opt, &payload, &mut c);
            assert_eq!(kind(&step.outcome), outcome, "case {i}");
            if opt == OPT_EXPORT_NAME {
                // Size and flags (NO_ZEROES), or nothing and a closed socket.
                let len = if outcome == "transmission" { 10 } else { 0 };
                assert_eq!(step.reply.len(), len, "case {i}");
                continue;
            }
            assert_eq!(types(&step), want, "case {i}");
            if want.contains(&REP_ERR_TLS_REQD) {
                let r = replies(&step.reply);
                assert_eq!(r[0].2, TLS_REQUIRED_MESSAGE.as_bytes(), "case {i}");
            }
        }
    }

    #[test]
    fn starttls_waits_for_the_shell_and_forgets_plaintext_state() {
        let mut c = cat();
        let mut n = tls_ready(TlsMode::Optional);
        // Negotiated in plaintext, where a man in the middle could choose.
        feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut c);
        feed(
            &mut n,
            OPT_SET_META_CONTEXT,
            &meta("disk", &[META_BASE_ALLOCATION]),
            &mut c,
        );
        let step = feed(&mut n, OPT_STARTTLS, &[], &mut c);
        assert_eq!(types(&step), vec![REP_ACK]);
        assert!(matches!(step.outcome, Outcome::StartTls));
        assert!(!n.is_tls());
        // No option until the shell says TLS is up.
        let hdr = OptionHeader {
            option: OPT_LIST,
            len: 0,
        };
        let step = n.option_header(&hdr.encode()).unwrap_err();
        assert!(matches!(step.outcome, Outcome::Reject(NbdError::Misuse(_))));

        let mut n = tls_ready(TlsMode::Optional);
        feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut c);
        feed(
            &mut n,
            OPT_SET_META_CONTEXT,
            &meta("disk", &[META_BASE_ALLOCATION]),
            &mut c,
        );
        feed(&mut n, OPT_STARTTLS, &[], &mut c);
        n.tls_started().unwrap();
        // A second tls_started is a shell bug.
        let mut twice = tls_ready(TlsMode::Required);
        assert!(matches!(twice.tls_started(), Err(NbdError::Misuse(_))));
        match feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut c).outcome {
            Outcome::Transmission(t) => {
                assert!(!t.negotiated.structured_replies);
                assert_eq!(t.negotiated.meta_context, None);
            }
            other => panic!("{other:?}"),
        }
    }

    fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        InfoRequest {
            name: name.into(),
            requests: infos.to_vec(),
        }
        .encode()
    }

    #[test]
    fn info_then_go() {
        let mut n = ready(1);
        let p = go_payload("disk", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]);
        let step = feed(&mut n, OPT_INFO, &p, &mut cat());
        assert!(matches!(step.outcome, Outcome::Continue));
        let r = replies(&step.reply);
        let flags = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO;
        assert_eq!(
            r[0],
            (
                OPT_INFO,
                REP_INFO,
                info_export_payload(1 << 20, flags).to_vec()
            )
        );
        assert_eq!(r[1].2, info_text_payload(INFO_NAME, "disk"));
        assert_eq!(r[2].2, info_text_payload(INFO_DESCRIPTION, "the disk"));
        assert_eq!(
            r[3].2,
            info_block_size_payload(&BlockSizes {
                min: 1,
                preferred: 4096,
                max_payload: PAYLOAD_MAX
            })
            .to_vec()
        );
        assert_eq!(r[4].1, REP_ACK);
        assert_eq!(r.len(), 5);

        let step = feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut cat());
        let r = replies(&step.reply);
        // INFO_EXPORT, BLOCK_SIZE (always), ACK.
        assert_eq!(
            r.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![REP_INFO, REP_INFO, REP_ACK]
        );
        match step.outcome {
            Outcome::Transmission(t) => {
                assert_eq!(t.negotiated.export, "disk");
                assert_eq!(t.negotiated.flags, flags);
                assert!(!t.negotiated.structured_replies);
                assert_eq!(t.negotiated.meta_context, None);
                assert_eq!(t.info.size, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_errors() {
        let mut c = cat();
        let mut n = ready(1);
        let step = feed(&mut n, OPT_GO, &go_payload("nope", &[]), &mut c);
        let r = replies(&step.reply);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, REP_ERR_UNKNOWN);
        assert_eq!(r[0].2, b"no export \"nope\" here");
        assert!(matches!(step.outcome, Outcome::Continue));

        let mut stopping = TestCatalog { stopping: true };
        let step = feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut stopping);
        assert_eq!(types(&step), vec![REP_ERR_SHUTDOWN]);

        // Malformed payloads: every one is ERR_INVALID and haggling goes on.
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![0, 0, 0],
            vec![0, 0, 0, 0, 0],
            {
                let mut p = go_payload("disk", &[1]);
                p.pop();
                p
            },
            {
                let mut p = go_payload("disk", &[1]);
                p.push(0);
                p
            },
            {
                // name length larger than the payload
                let mut p = go_payload("disk", &[]);
                p[3] = 200;
                p
            },
            {
                // info count says 2, one present
                let mut p = go_payload("disk", &[1]);
                let at = p.len() - 3;
                p[at] = 2;
                p
            },
            go_payload("di\0sk", &[]),
            {
                let mut p = go_payload("disk", &[]);
                p[4] = 0xff;
                p
            },
            go_payload(&"x".repeat(4097), &[]),
        ];
        for p in bad {
            let step = feed(&mut n, OPT_GO, &p, &mut c);
            assert_eq!(types(&step), vec![REP_ERR_INVALID], "payload {p:?}");
            assert!(matches!(step.outcome, Outcome::Continue));
        }
        // Still usable afterwards.
        let step = feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut c);
        assert!(matches!(step.outcome, Outcome::Transmission(_)));
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        for (flags, len) in [(1u32, 10 + 124), (3, 10)] {
            let mut n = ready(flags);
            let step = feed(&mut n, OPT_EXPORT_NAME, b"disk", &mut cat());
            assert_eq!(step.reply.len(), len);
            assert_eq!(&step.reply[..8], &(1u64 << 20).to_be_bytes());
            assert!(matches!(step.outcome, Outcome::Transmission(_)));
        }
        let mut n = ready(1);
        let step = feed(&mut n, OPT_EXPORT_NAME, b"nope", &mut cat());
        assert!(step.reply.is_empty());
        assert!(matches!(
            step.outcome,
            Outcome::Reject(NbdError::ExportRefused { .. })
        ));
        let mut n = ready(1);
        let step = feed(&mut n, OPT_EXPORT_NAME, &[0xff, 0xfe], &mut cat());
        assert!(step.reply.is_empty());
        assert!(matches!(step.outcome, Outcome::Reject(_)));
    }

    fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
        MetaRequest {
            name: name.into(),
            queries: queries.iter().map(|q| q.to_string()).collect(),
        }
        .encode()
    }

    /// (structured first, option, payload, expected reply types, selected)
    type MetaCase = (bool, u32, Vec<u8>, Vec<u32>, bool);

    #[test]
    fn meta_context_table() {
        // (structured, option, payload, expected reply types, selected)
        let ba = META_BASE_ALLOCATION;
        const SET: u32 = OPT_SET_META_CONTEXT;
        const LIST: u32 = OPT_LIST_META_CONTEXT;
        let (ctx, ack, inval, unknown) =
            (REP_META_CONTEXT, REP_ACK, REP_ERR_INVALID, REP_ERR_UNKNOWN);
        let trailing = {
            let mut p = meta("disk", &[ba]);
            p.push(0);
            p
        };
        let short = {
            let mut p = meta("disk", &[ba]);
            p[11] = 2;
            p
        };
        #[rustfmt::skip]
        let cases: Vec<MetaCase> = vec![
            (false, SET, meta("disk", &[ba]), vec![inval], false),
            (true, SET, meta("disk", &[ba]), vec![ctx, ack], true),
            (true, SET, meta("disk", &[ba, ba]), vec![ctx, ack], true),
            (true, SET, meta("disk", &[]), vec![ack], false),
            (true, SET, meta("disk", &["base:"]), vec![ack], false),
            (true, SET, meta("disk", &["qemu:dirty-bitmap:x", "base:nope"]), vec![ack], false),
            (true, SET, meta("disk", &["qemu:x", ba]), vec![ctx, ack], true),
            (true, SET, meta("nope", &[ba]), vec![unknown], false),
            (true, SET, vec![0, 0, 0, 4, b'd'], vec![inval], false),
            (true, SET, trailing, vec![inval], false),
            (true, SET, short, vec![inval], false),
            (false, LIST, meta("disk", &[]), vec![ctx, ack], false),
            (true, LIST, meta("disk", &["base:"]), vec![ctx, ack], false),
            (true, LIST, meta("disk", &[ba]), vec![ctx, ack], false),
            (true, LIST, meta("disk", &["qemu:"]), vec![ack], false),
            (true, LIST, meta("nope", &[]), vec![unknown], false),
            (true, LIST, vec![1, 2, 3], vec![inval], false),
        ];
        for (i, (structured, opt, payload, want, selected)) in cases.into_iter().enumerate() {
            let mut c = cat();
            let mut n = ready(1);
            if structured {
                feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut c);
            }
            let step = feed(&mut n, opt, &payload, &mut c);
            assert_eq!(types(&step), want, "case {i}");
            let r = replies(&step.reply);
            if want[0] == REP_META_CONTEXT {
                let id = if opt == OPT_SET_META_CONTEXT {
                    META_BASE_ALLOCATION_ID
                } else {
                    0
                };
                assert_eq!(r[0].2, meta_context_payload(id, ba), "case {i}");
            }
            let step = feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut c);
            match step.outcome {
                Outcome::Transmission(t) => {
                    assert_eq!(t.negotiated.meta_context.is_some(), selected, "case {i}");
                    assert_eq!(t.negotiated.structured_replies, structured);
                    assert_eq!(t.negotiated.flags & TFLAG_SEND_DF != 0, structured);
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn meta_context_follows_export_and_last_set() {
        let mut c = cat();
        let ba = META_BASE_ALLOCATION;
        // Selected for "other", then GO to "disk": no context.
        let mut n = ready(1);
        feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut c);
        feed(&mut n, OPT_SET_META_CONTEXT, &meta("other", &[ba]), &mut c);
        match feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut c).outcome {
            Outcome::Transmission(t) => assert_eq!(t.negotiated.meta_context, None),
            other => panic!("{other:?}"),
        }
        // A failing SET clears an earlier selection.
        let mut n = ready(1);
        feed(&mut n, OPT_STRUCTURED_REPLY, &[], &mut c);
        feed(&mut n, OPT_SET_META_CONTEXT, &meta("disk", &[ba]), &mut c);
        feed(&mut n, OPT_SET_META_CONTEXT, &[1], &mut c);
        match feed(&mut n, OPT_GO, &go_payload("disk", &[]), &mut c).outcome {
            Outcome::Transmission(t) => assert_eq!(t.negotiated.meta_context, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payload_codecs_round_trip() {
        let r = InfoRequest {
            name: "disk".into(),
            requests: vec![3, 1, 0xffff],
        };
        assert_eq!(InfoRequest::parse(&r.encode()), Ok(r));
        let m = MetaRequest {
            name: "".into(),
            queries: vec!["base:allocation".into(), "x-y:z".into()],
        };
        assert_eq!(MetaRequest::parse(&m.encode()), Ok(m));
        let h = OptionReplyHeader {
            option: 7,
            reply_type: REP_ERR_UNKNOWN,
            len: 9,
        };
        assert_eq!(OptionReplyHeader::parse(&h.encode()), Some(h));
        let h = OptionHeader { option: 9, len: 77 };
        assert_eq!(OptionHeader::parse(&h.encode()).unwrap(), h);
    }

    #[test]
    fn huge_query_count_is_invalid_without_allocating() {
        let mut p = meta("disk", &[]);
        let at = p.len() - 4;
        p[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(MetaRequest::parse(&p).is_err());
    }

    #[test]
    fn long_error_messages_are_clipped() {
        let msg = "é".repeat(3000); // 6000 bytes
        let clipped = clip(msg.as_bytes());
        assert!(clipped.len() <= STRING_LEN_MAX);
        assert!(std::str::from_utf8(clipped).is_ok());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_frames_never_panic(
                flags in any::<u32>(),
                mode in prop_oneof![Just(TlsMode::Off), Just(TlsMode::Optional), Just(TlsMode::Required)],
                frames in proptest::collection::vec(
                    (prop_oneof![0u32..13, any::<u32>()], proptest::collection::vec(any::<u8>(), 0..64)),
                    0..12),
            ) {
                let mut n = Negotiation::with_tls(PAYLOAD_MAX, mode);
                let mut c = cat();
                if n.client_flags(flags.to_be_bytes()).is_err() {
                    return Ok(());
                }
                for (opt, payload) in frames {
                    let frame = encode_option(opt, &payload);
                    let hdr = match n.option_header(&arr(&frame[..16])) {
                        Ok(h) => h,
                        Err(_) => break,
                    };
                    let step = n.option(hdr, &frame[16..], &mut c);
                    match step.outcome {
                        Outcome::Continue => {}
                        // As the shell does once the TLS handshake passed.
                        Outcome::StartTls => n.tls_started().unwrap(),
                        Outcome::Reject(NbdError::TlsRequired) => {
                            prop_assert!(mode == TlsMode::Required && !n.is_tls());
                            break;
                        }
                        Outcome::Transmission(_) => {
                            // Never without TLS when it is required.
                            prop_assert!(mode != TlsMode::Required || n.is_tls());
                            break;
                        }
                        _ => break,
                    }
                }
            }

            #[test]
            fn random_payloads_parse_or_err(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(r) = InfoRequest::parse(&bytes) {
                    prop_assert_eq!(r.encode(), bytes.clone());
                }
                if let Ok(m) = MetaRequest::parse(&bytes) {
                    prop_assert_eq!(m.encode(), bytes);
                }
            }
        }
    }
}
