//! The client side of the handshake, sans I/O: what a client sends to open
//! one export with `NBD_OPT_GO`, and the [`Opening`] that reads the server's
//! option replies until the export is granted or refused. The connector
//! (`hastcd`) drives it against a hastd it does not trust blindly: every
//! length is checked against [`OPTION_LEN_MAX`] before the caller reads the
//! payload, every field before it is used, and a reply that breaks the
//! protocol ends the opening with an error, never a panic.
//!
//! Transmission replies need no codec here: a client that negotiates no
//! structured replies gets simple replies only ([`crate::reply::SimpleReply`]),
//! and the length of a READ's data is the length the client asked for.

use crate::handshake::{encode_option, InfoRequest, OptionReplyHeader};
use crate::proto::*;

/// Why an export could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    /// The first 18 bytes are not an NBD newstyle greeting.
    #[error("not an NBD server (bad greeting)")]
    NotNbd,
    /// The server does not speak fixed newstyle, which `NBD_OPT_GO` needs.
    #[error("server does not offer fixed newstyle negotiation")]
    NotFixedNewstyle,
    /// A reply broke the protocol (wrong magic, option, length or field).
    #[error("protocol error from server: {0}")]
    Protocol(&'static str),
    /// The server refused the export: the reply type and its message.
    #[error("server refused the export: {}{}", refusal_name(*.reply_type), message_suffix(.message))]
    Refused { reply_type: u32, message: String },
    /// `NBD_REP_ACK` came without an `NBD_INFO_EXPORT` before it.
    #[error("server granted the export without its size")]
    NoExportInfo,
}

impl OpenFailure {
    /// The server wants TLS first (`NBD_REP_ERR_TLS_REQD`).
    pub fn tls_required(&self) -> bool {
        matches!(self, OpenFailure::Refused { reply_type, .. } if *reply_type == REP_ERR_TLS_REQD)
    }
}

fn refusal_name(reply_type: u32) -> &'static str {
    match reply_type {
        REP_ERR_UNSUP => "unsupported",
        REP_ERR_POLICY => "forbidden by policy",
        REP_ERR_INVALID => "invalid",
        REP_ERR_PLATFORM => "not on this platform",
        REP_ERR_TLS_REQD => "TLS required",
        REP_ERR_UNKNOWN => "unknown export",
        REP_ERR_SHUTDOWN => "server shutting down",
        REP_ERR_BLOCK_SIZE_REQD => "block size required",
        REP_ERR_TOO_BIG => "request too big",
        _ => "error",
    }
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The server's handshake flags from its 18-byte greeting.
pub fn parse_greeting(raw: &[u8; GREETING_LEN]) -> Result<u16, OpenFailure> {
    let magic = u64::from_be_bytes(raw[0..8].try_into().unwrap_or([0; 8]));
    let opt = u64::from_be_bytes(raw[8..16].try_into().unwrap_or([0; 8]));
    if magic != NBDMAGIC || opt != IHAVEOPT {
        return Err(OpenFailure::NotNbd);
    }
    let flags = u16::from_be_bytes([raw[16], raw[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(OpenFailure::NotFixedNewstyle);
    }
    Ok(flags)
}

/// The client flags to send after a greeting with `server_flags`.
pub fn client_flags(server_flags: u16) -> [u8; 4] {
    let mut f = FLAG_C_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        f |= FLAG_C_NO_ZEROES;
    }
    f.to_be_bytes()
}

/// `NBD_OPT_STARTTLS` with its empty payload.
pub fn starttls_option() -> Vec<u8> {
    encode_option(OPT_STARTTLS, &[])
}

/// `NBD_OPT_GO` for `export`, asking for its size and flags and its block
/// sizes.
pub fn go_option(export: &str) -> Vec<u8> {
    let req = InfoRequest {
        name: export.to_string(),
        requests: vec![INFO_EXPORT, INFO_BLOCK_SIZE],
    };
    encode_option(OPT_GO, &req.encode())
}

/// What the server granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub size: u64,
    /// Transmission flags (`TFLAG_*`).
    pub flags: u16,
    /// (minimum, preferred, maximum payload), if the server said.
    pub block_sizes: Option<(u32, u32, u32)>,
}

impl Granted {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The export as the connector offers it again: the same size, the same
    /// capabilities and block sizes as the server's.
    pub fn export_info(&self) -> ExportInfo {
        let mut i = ExportInfo::new(self.size);
        i.read_only = self.has(TFLAG_READ_ONLY);
        i.can_multi_conn = self.has(TFLAG_CAN_MULTI_CONN);
        i.rotational = self.has(TFLAG_ROTATIONAL);
        i.can_trim = self.has(TFLAG_SEND_TRIM);
        i.can_zero = self.has(TFLAG_SEND_WRITE_ZEROES);
        i.can_fast_zero = self.has(TFLAG_SEND_FAST_ZERO);
        i.can_cache = self.has(TFLAG_SEND_CACHE);
        if let Some((min, preferred, max)) = self.block_sizes {
            i.min_block = min;
            i.preferred_block = preferred;
            i.max_block = max;
        }
        i
    }
}

/// What to do after one option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read another option reply.
    More,
    /// The export is open; transmission begins.
    Open(Granted),
}

/// Reads the replies to one `NBD_OPT_GO` (or `NBD_OPT_STARTTLS`).
#[derive(Debug, Clone, Default)]
pub struct Opening {
    option: u32,
    export: Option<(u64, u16)>,
    block_sizes: Option<(u32, u32, u32)>,
    replies: u32,
}

/// Replies accepted for one option before the server is deemed hostile.
const REPLIES_MAX: u32 = 64;

impl Opening {
    /// Replies to `NBD_OPT_GO`.
    pub fn go() -> Opening {
        Opening {
            option: OPT_GO,
            ..Opening::default()
        }
    }

    /// Replies to `NBD_OPT_STARTTLS`: [`Next::Open`] means "start TLS now"
    /// (its `Granted` is meaningless).
    pub fn starttls() -> Opening {
        Opening {
            option: OPT_STARTTLS,
            ..Opening::default()
        }
    }

    /// Check one reply header; `Ok` carries the payload length the caller
    /// must read next (at most [`OPTION_LEN_MAX`]).
    pub fn header(
        &mut self,
        raw: &[u8; OPTION_REPLY_HEADER_LEN],
    ) -> Result<OptionReplyHeader, OpenFailure> {
        let h =
            OptionReplyHeader::parse(raw).ok_or(OpenFailure::Protocol("bad option reply magic"))?;
        if h.option != self.option {
            return Err(OpenFailure::Protocol("reply to an option not sent"));
        }
        if h.len > OPTION_LEN_MAX {
            return Err(OpenFailure::Protocol("option reply too long"));
        }
        self.replies += 1;
        if self.replies > REPLIES_MAX {
            return Err(OpenFailure::Protocol("too many option replies"));
        }
        Ok(h)
    }

    /// Feed the payload of the reply whose header [`Opening::header`] accepted.
    pub fn reply(&mut self, h: &OptionReplyHeader, payload: &[u8]) -> Result<Next, OpenFailure> {
        if payload.len() != h.len as usize {
            return Err(OpenFailure::Protocol(
                "payload length differs from its header",
            ));
        }
        if h.reply_type & REP_FLAG_ERROR != 0 {
            let message = String::from_utf8_lossy(&payload[..payload.len().min(STRING_LEN_MAX)]);
            return Err(OpenFailure::Refused {
                reply_type: h.reply_type,
                message: message.chars().filter(|c| !c.is_control()).collect(),
            });
        }
        match h.reply_type {
            REP_ACK if self.option == OPT_STARTTLS => Ok(Next::Open(Granted {
                size: 0,
                flags: 0,
                block_sizes: None,
            })),
            REP_ACK => {
                if !payload.is_empty() {
                    return Err(OpenFailure::Protocol("ACK with a payload"));
                }
                let (size, flags) = self.export.ok_or(OpenFailure::NoExportInfo)?;
                Ok(Next::Open(Granted {
                    size,
                    flags,
                    block_sizes: self.block_sizes,
                }))
            }
            REP_INFO if self.option == OPT_GO => {
                self.info(payload)?;
                Ok(Next::More)
            }
            _ => Err(OpenFailure::Protocol("unexpected option reply type")),
        }
    }

    fn info(&mut self, p: &[u8]) -> Result<(), OpenFailure> {
        if p.len() < 2 {
            return Err(OpenFailure::Protocol("info reply too short"));
        }
        let kind = u16::from_be_bytes([p[0], p[1]]);
        let be32 = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        match kind {
            INFO_EXPORT => {
                if p.len() != 12 {
                    return Err(OpenFailure::Protocol("NBD_INFO_EXPORT of the wrong length"));
                }
                let size = u64::from_be_bytes(p[2..10].try_into().unwrap_or([0; 8]));
                let flags = u16::from_be_bytes([p[10], p[11]]);
                if flags & TFLAG_HAS_FLAGS == 0 {
                    return Err(OpenFailure::Protocol(
                        "transmission flags without HAS_FLAGS",
                    ));
                }
                self.export = Some((size, flags));
            }
            INFO_BLOCK_SIZE => {
                if p.len() != 14 {
                    return Err(OpenFailure::Protocol(
                        "NBD_INFO_BLOCK_SIZE of the wrong length",
                    ));
                }
                let (min, preferred, max) = (be32(2), be32(6), be32(10));
                let pow2 = |v: u32| v.is_power_of_two();
                let max_ok = max == u32::MAX || (max >= min && max % min == 0);
                if !pow2(min) || min > 64 * 1024 || !pow2(preferred) || preferred < min || !max_ok {
                    return Err(OpenFailure::Protocol("NBD_INFO_BLOCK_SIZE out of range"));
                }
                self.block_sizes = Some((min, preferred, max));
            }
            // Name, description and kinds from later protocol versions:
            // proto.md says a client ignores what it did not ask for.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{
        greeting, info_block_size_payload, info_export_payload, push_option_reply,
    };
    use crate::proto::BlockSizes;

    fn feed(o: &mut Opening, bytes: &[u8]) -> Result<Next, OpenFailure> {
        let mut rest = bytes;
        loop {
            let raw: [u8; OPTION_REPLY_HEADER_LEN] =
                rest[..OPTION_REPLY_HEADER_LEN].try_into().unwrap();
            let h = o.header(&raw)?;
            let end = OPTION_REPLY_HEADER_LEN + h.len as usize;
            let next = o.reply(&h, &rest[OPTION_REPLY_HEADER_LEN..end])?;
            rest = &rest[end..];
            if let Next::Open(g) = next {
                assert!(rest.is_empty());
                return Ok(Next::Open(g));
            }
        }
    }

    #[test]
    fn the_servers_greeting_is_read_back() {
        let flags = parse_greeting(&greeting()).unwrap();
        assert_ne!(flags & FLAG_FIXED_NEWSTYLE, 0);
        assert_eq!(u32::from_be_bytes(client_flags(flags)), CLIENT_FLAGS_KNOWN);
        let mut bad = greeting();
        bad[3] ^= 1;
        assert_eq!(parse_greeting(&bad), Err(OpenFailure::NotNbd));
        let mut old = greeting();
        old[17] = 0;
        assert_eq!(parse_greeting(&old), Err(OpenFailure::NotFixedNewstyle));
    }

    #[test]
    fn a_granted_export_keeps_the_servers_size_flags_and_block_sizes() {
        let mut info = ExportInfo::new(1 << 30);
        info.can_trim = true;
        info.can_zero = true;
        info.min_block = 512;
        let flags = info.transmission_flags(false);
        let sizes = BlockSizes::new(&info, PAYLOAD_MAX);
        let mut out = Vec::new();
        push_option_reply(
            &mut out,
            OPT_GO,
            REP_INFO,
            &info_export_payload(info.size, flags),
        );
        push_option_reply(&mut out, OPT_GO, REP_INFO, &info_block_size_payload(&sizes));
        push_option_reply(&mut out, OPT_GO, REP_ACK, &[]);
        let Next::Open(g) = feed(&mut Opening::go(), &out).unwrap() else {
            panic!("not open")
        };
        assert_eq!((g.size, g.flags), (1 << 30, flags));
        let back = g.export_info();
        assert!(back.can_trim && back.can_zero && !back.read_only);
        assert_eq!(back.min_block, 512);
        assert_eq!(back.transmission_flags(false), flags);
    }

    #[test]
    fn refusals_and_lies_end_the_opening() {
        let mut out = Vec::new();
        push_option_reply(&mut out, OPT_GO, REP_ERR_UNKNOWN, b"no such export");
        let e = feed(&mut Opening::go(), &out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "server refused the export: unknown export: no such export"
        );
        let mut tls = Vec::new();
        push_option_reply(&mut tls, OPT_GO, REP_ERR_TLS_REQD, &[]);
        assert!(feed(&mut Opening::go(), &tls).unwrap_err().tls_required());
        // ACK before the size.
        let mut ack = Vec::new();
        push_option_reply(&mut ack, OPT_GO, REP_ACK, &[]);
        assert_eq!(
            feed(&mut Opening::go(), &ack),
            Err(OpenFailure::NoExportInfo)
        );
        // A reply to another option.
        let mut other = Vec::new();
        push_option_reply(&mut other, OPT_LIST, REP_ACK, &[]);
        assert!(matches!(
            feed(&mut Opening::go(), &other),
            Err(OpenFailure::Protocol(_))
        ));
        // A header announcing more than the cap is refused before reading.
        let h = OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_INFO,
            len: OPTION_LEN_MAX + 1,
        };
        assert!(Opening::go().header(&h.encode()).is_err());
        // A short export info.
        let mut short = Vec::new();
        push_option_reply(
            &mut short,
            OPT_GO,
            REP_INFO,
            &info_export_payload(1, 1)[..10],
        );
        assert!(matches!(
            feed(&mut Opening::go(), &short),
            Err(OpenFailure::Protocol(_))
        ));
        // Endless INFO replies.
        let mut o = Opening::go();
        let h = OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_INFO,
            len: 2,
        };
        let mut seen = 0;
        while o.header(&h.encode()).is_ok() {
            assert_eq!(o.reply(&h, &[0, 1]), Ok(Next::More));
            seen += 1;
        }
        assert_eq!(seen, REPLIES_MAX);
    }

    #[test]
    fn starttls_is_granted_by_an_ack() {
        let mut out = Vec::new();
        push_option_reply(&mut out, OPT_STARTTLS, REP_ACK, &[]);
        assert!(matches!(
            feed(&mut Opening::starttls(), &out),
            Ok(Next::Open(_))
        ));
    }
}
