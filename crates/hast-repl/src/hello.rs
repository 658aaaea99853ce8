//! The HELLO (primary → secondary) and HELLO_REPLY (secondary → primary)
//! payloads: what each node tells the other about its copy of the resource on
//! every connection, and the secondary's verdict. Both are strict binary
//! encodings (little-endian, no trailing bytes, every code known), so a
//! corrupt or hostile hello is an error, never a misread counter that would
//! steer a resync the wrong way.
//!
//! ```text
//! Hello:      version u32, role u8, flags u8 (bit 0: inconsistent),
//!             resuid u64, localcnt u64, remotecnt u64, datasize u64,
//!             extentsize u32, epoch u64,
//!             resource_len u8 + resource (1..=64 bytes UTF-8),
//!             node_len u8 + node (1..=255 bytes UTF-8)
//! HelloReply: status u8, decision u8 (0 = none), message_len u16 + message
//!             (≤ 1024 bytes UTF-8), hello_len u16 (0 = none) + Hello
//! ```
//!
//! The hello's `version` is the first field and decoding does not reject an
//! unknown one: the secondary must still be able to answer VersionMismatch.

use std::fmt;

use hast_meta::Role;

use crate::decision::Decision;
use crate::error::ReplError;

/// Version of the hello exchange and of everything after it on the connection.
/// 2: authentication (CHALLENGE, AUTH, AUTH_REPLY) precedes the hello.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest resource name (as hast-meta's header).
pub const RESOURCE_MAX: usize = 64;
/// Longest node name (a host name).
pub const NODE_MAX: usize = 255;
/// Longest human-readable message in a reply.
pub const MESSAGE_MAX: usize = 1024;

const INCONSISTENT: u8 = 0x01;

/// The role byte of a HELLO. The role is the header's (`hast_meta::Role`,
/// one type for the concept); its encoding here is this protocol's own and
/// stays here, even where the values happen to match the header's.
fn role_code(role: Role) -> u8 {
    match role {
        Role::Init => 0,
        Role::Primary => 1,
        Role::Secondary => 2,
    }
}

fn role_of(code: u8) -> Option<Role> {
    match code {
        0 => Some(Role::Init),
        1 => Some(Role::Primary),
        2 => Some(Role::Secondary),
        _ => None,
    }
}

/// One node's view of its copy of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// 1..=64 bytes.
    pub resource: String,
    /// 1..=255 bytes.
    pub node: String,
    pub role: Role,
    pub resuid: u64,
    pub localcnt: u64,
    pub remotecnt: u64,
    pub datasize: u64,
    pub extentsize: u32,
    pub epoch: u64,
    /// This copy is the target of an unfinished resync: its data is a mix of
    /// old and new extents and must never be the source of a copy.
    pub inconsistent: bool,
}

/// Bytes of a Hello before the two strings.
const HELLO_FIXED: usize = 4 + 1 + 1 + 8 * 4 + 4 + 8;
/// Largest encoded Hello.
pub const HELLO_ENCODED_MAX: usize = HELLO_FIXED + 1 + RESOURCE_MAX + 1 + NODE_MAX;

impl Hello {
    /// The payload of a HELLO frame. Strings longer than their limit are a
    /// caller bug (the config parser limits them); they are cut at a char
    /// boundary so encode stays infallible, and the peer then sees the cut name.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_ENCODED_MAX);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(role_code(self.role));
        out.push(if self.inconsistent { INCONSISTENT } else { 0 });
        for v in [self.resuid, self.localcnt, self.remotecnt, self.datasize] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.extentsize.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        for (s, max) in [(&self.resource, RESOURCE_MAX), (&self.node, NODE_MAX)] {
            let s = clip(s, max);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Hello, ReplError> {
        let mut r = Reader::new(buf, "hello");
        let h = Hello::read(&mut r)?;
        r.finish()?;
        Ok(h)
    }

    fn read(r: &mut Reader<'_>) -> Result<Hello, ReplError> {
        let version = r.u32()?;
        let role_code = r.u8()?;
        let role = role_of(role_code).ok_or(r.bad_code("role", role_code))?;
        let fl = r.u8()?;
        if fl & !INCONSISTENT != 0 {
            return Err(r.bad_code("flags", fl));
        }
        let resuid = r.u64()?;
        let localcnt = r.u64()?;
        let remotecnt = r.u64()?;
        let datasize = r.u64()?;
        let extentsize = r.u32()?;
        let epoch = r.u64()?;
        let len = usize::from(r.u8()?);
        let resource = r.string("resource", len, 1, RESOURCE_MAX)?;
        let len = usize::from(r.u8()?);
        let node = r.string("node", len, 1, NODE_MAX)?;
        Ok(Hello {
            version,
            resource,
            node,
            role,
            resuid,
            localcnt,
            remotecnt,
            datasize,
            extentsize,
            epoch,
            inconsistent: fl & INCONSISTENT != 0,
        })
    }
}

/// The secondary's verdict on a HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloStatus {
    Ok,
    /// No such resource is configured on the secondary.
    UnknownResource,
    /// The resource is configured but in role init (not accepting replication).
    NotSecondary,
    /// The resource is primary on this node too.
    BothPrimary,
    ResuidMismatch,
    SizeMismatch,
    SplitBrain,
    /// Another primary connection is already attached.
    Busy,
    VersionMismatch,
    /// Refused for another reason given in the message (wrong peer address,
    /// authentication, an inconsistent copy as the source of a sync, ...).
    PeerRefused,
    /// The primary's epoch is lower than one this node has already seen.
    StaleEpoch,
}

impl HelloStatus {
    pub const ALL: [HelloStatus; 11] = [
        HelloStatus::Ok,
        HelloStatus::UnknownResource,
        HelloStatus::NotSecondary,
        HelloStatus::BothPrimary,
        HelloStatus::ResuidMismatch,
        HelloStatus::SizeMismatch,
        HelloStatus::SplitBrain,
        HelloStatus::Busy,
        HelloStatus::VersionMismatch,
        HelloStatus::PeerRefused,
        HelloStatus::StaleEpoch,
    ];

    pub fn code(self) -> u8 {
        match self {
            HelloStatus::Ok => 0,
            HelloStatus::UnknownResource => 1,
            HelloStatus::NotSecondary => 2,
            HelloStatus::BothPrimary => 3,
            HelloStatus::ResuidMismatch => 4,
            HelloStatus::SizeMismatch => 5,
            HelloStatus::SplitBrain => 6,
            HelloStatus::Busy => 7,
            HelloStatus::VersionMismatch => 8,
            HelloStatus::PeerRefused => 9,
            HelloStatus::StaleEpoch => 10,
        }
    }

    pub fn from_code(code: u8) -> Option<HelloStatus> {
        HelloStatus::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for HelloStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HelloStatus::Ok => "ok",
            HelloStatus::UnknownResource => "unknown resource",
            HelloStatus::NotSecondary => "resource is not secondary",
            HelloStatus::BothPrimary => "both nodes are primary",
            HelloStatus::ResuidMismatch => "resource unique id mismatch",
            HelloStatus::SizeMismatch => "datasize or extentsize mismatch",
            HelloStatus::SplitBrain => "split-brain",
            HelloStatus::Busy => "another primary is connected",
            HelloStatus::VersionMismatch => "protocol version mismatch",
            HelloStatus::PeerRefused => "refused",
            HelloStatus::StaleEpoch => "stale epoch",
        })
    }
}

/// The payload of a HELLO_REPLY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub status: HelloStatus,
    /// ≤ 1024 bytes, for the operator.
    pub message: String,
    /// The secondary's own hello, as it was when the primary's arrived (before
    /// adopting a resuid), so the primary can recompute the decision.
    pub hello: Option<Hello>,
    pub decision: Option<Decision>,
}

impl HelloReply {
    /// Encodes; a message over 1024 bytes is cut at a char boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + MESSAGE_MAX + HELLO_ENCODED_MAX);
        out.push(self.status.code());
        out.push(self.decision.map_or(0, Decision::code));
        let msg = clip(&self.message, MESSAGE_MAX);
        out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
        out.extend_from_slice(msg.as_bytes());
        match &self.hello {
            None => out.extend_from_slice(&0u16.to_le_bytes()),
            Some(h) => {
                let at = out.len();
                out.extend_from_slice(&[0, 0]);
                h.encode_into(&mut out);
                // ≤ HELLO_ENCODED_MAX (< 64 KiB) by construction.
                let n = (out.len() - at - 2) as u16;
                out[at..at + 2].copy_from_slice(&n.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<HelloReply, ReplError> {
        let mut r = Reader::new(buf, "hello reply");
        let code = r.u8()?;
        let status = HelloStatus::from_code(code).ok_or(r.bad_code("status", code))?;
        let code = r.u8()?;
        let decision = match code {
            0 => None,
            c => Some(Decision::from_code(c).ok_or(r.bad_code("decision", c))?),
        };
        let len = usize::from(r.u16()?);
        let message = r.string("message", len, 0, MESSAGE_MAX)?;
        let len = usize::from(r.u16()?);
        let hello = match len {
            0 => None,
            n => {
                let bytes = r.take(n)?;
                let mut inner = Reader::new(bytes, "hello reply's hello");
                let h = Hello::read(&mut inner)?;
                inner.finish()?;
                Some(h)
            }
        };
        r.finish()?;
        Ok(HelloReply {
            status,
            message,
            hello,
            decision,
        })
    }
}

/// `s` cut to at most `max` bytes at a char boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bounds-checked little-endian cursor; every read is an error past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReplError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(ReplError::Truncated {
                what: self.what,
                at: self.pos,
                need: n - rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReplError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ReplError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ReplError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ReplError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReplError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A string whose length was read already; the limit is checked before
    /// the bytes are taken (and so before anything is allocated).
    fn string(
        &mut self,
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    ) -> Result<String, ReplError> {
        if len < min || len > max {
            return Err(ReplError::StringLen {
                what: self.what,
                field,
                len,
                min,
                max,
            });
        }
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ReplError::Utf8 {
            what: self.what,
            field,
        })?;
        Ok(s.to_owned())
    }

    fn bad_code(&self, field: &'static str, value: u8) -> ReplError {
        ReplError::BadCode {
            what: self.what,
            field,
            value: u64::from(value),
        }
    }

    fn finish(&self) -> Result<(), ReplError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(ReplError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::HELLO_MAX;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            resource: "shared".into(),
            node: "hasta.example.net".into(),
            role: Role::Primary,
            resuid: 0x1234_5678_9abc_def0,
            localcnt: 3,
            remotecnt: 2,
            datasize: 1 << 30,
            extentsize: 2 << 20,
            epoch: 9,
            inconsistent: true,
        }
    }

    #[test]
    fn hello_round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(Hello::decode(&bytes), Ok(h.clone()));
        // Longest names still fit a HELLO frame.
        let long = Hello {
            resource: "r".repeat(RESOURCE_MAX),
            node: "n".repeat(NODE_MAX),
            role: Role::Secondary,
            inconsistent: false,
            ..h
        };
        let bytes = long.encode();
        assert_eq!(bytes.len(), HELLO_ENCODED_MAX);
        assert!(bytes.len() <= HELLO_MAX as usize);
        assert_eq!(Hello::decode(&bytes), Ok(long));
    }

    #[test]
    fn hello_encode_clips_overlong_names_at_char_boundary() {
        let h = Hello {
            resource: "é".repeat(40), // 80 bytes
            ..sample()
        };
        let back = Hello::decode(&h.encode()).unwrap();
        assert_eq!(back.resource, "é".repeat(32));
    }

    #[test]
    fn hello_rejections_table() {
        let good = sample().encode();
        let res_len_at = HELLO_FIXED;
        let node_len_at = HELLO_FIXED + 1 + "shared".len();
        let set = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            b
        };
        let mut trailing = good.clone();
        trailing.push(0);
        let mut bad_utf8 = good.clone();
        bad_utf8[res_len_at + 1] = 0xFF;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "hello truncated: needs 4 more bytes at byte 0"),
            ("cut in counters", good[..20].to_vec(), "hello truncated"),
            ("cut in node", good[..good.len() - 1].to_vec(), "needs 1 more bytes"),
            ("trailing", trailing, "hello has 1 trailing bytes"),
            ("role 3", set(4, 3), "hello field role has unknown code 3"),
            ("flags 2", set(5, 2), "hello field flags has unknown code 2"),
            ("empty resource", set(res_len_at, 0), "hello field resource is 0 bytes, allowed 1..=64"),
            ("long resource", set(res_len_at, 65), "resource is 65 bytes"),
            ("empty node", set(node_len_at, 0), "hello field node is 0 bytes"),
            ("resource not utf8", bad_utf8, "hello field resource is not valid UTF-8"),
        ];
        for (name, bytes, text) in cases {
            let e = Hello::decode(&bytes).expect_err(name);
            assert!(e.to_string().contains(text), "{name}: {e}");
        }
    }

    #[test]
    fn reply_round_trips() {
        let cases = [
            HelloReply {
                status: HelloStatus::Ok,
                message: String::new(),
                hello: Some(Hello {
                    role: Role::Secondary,
                    ..sample()
                }),
                decision: Some(Decision::SyncToSecondary),
            },
            HelloReply {
                status: HelloStatus::SplitBrain,
                message: "Split-brain condition!".into(),
                hello: Some(sample()),
                decision: Some(Decision::SplitBrain),
            },
            HelloReply {
                status: HelloStatus::UnknownResource,
                message: "x".repeat(MESSAGE_MAX),
                hello: None,
                decision: None,
            },
        ];
        for r in cases {
            let bytes = r.encode();
            assert!(bytes.len() <= HELLO_MAX as usize);
            assert_eq!(HelloReply::decode(&bytes), Ok(r));
        }
        for s in HelloStatus::ALL {
            assert_eq!(HelloStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(HelloStatus::from_code(11), None);
    }

    #[test]
    fn reply_rejections_table() {
        let good = HelloReply {
            status: HelloStatus::Ok,
            message: "hi".into(),
            hello: Some(sample()),
            decision: Some(Decision::Merge),
        }
        .encode();
        let set = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            b
        };
        let mut trailing = good.clone();
        trailing.push(7);
        let mut long_msg = vec![0u8, 0];
        long_msg.extend_from_slice(&1025u16.to_le_bytes());
        // The inner hello is one byte longer than its length says.
        let mut inner_short = good.clone();
        let at = 4 + 2;
        inner_short[at] -= 1;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "hello reply truncated"),
            ("status 11", set(0, 11), "hello reply field status has unknown code 11"),
            ("decision 200", set(1, 200), "hello reply field decision has unknown code 200"),
            ("message too long", long_msg, "message is 1025 bytes, allowed 0..=1024"),
            ("trailing", trailing, "hello reply has 1 trailing bytes"),
            ("inner cut", inner_short, "hello reply's hello truncated"),
            ("cut", good[..good.len() - 3].to_vec(), "hello reply truncated"),
        ];
        for (name, bytes, text) in cases {
            let e = HelloReply::decode(&bytes).expect_err(name);
            assert!(e.to_string().contains(text), "{name}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(h) = Hello::decode(&bytes) {
                prop_assert_eq!(h.encode(), bytes.clone());
            }
            if let Ok(r) = HelloReply::decode(&bytes) {
                prop_assert_eq!(r.encode(), bytes);
            }
        }

        #[test]
        fn mutated_hellos_never_panic(at in 0usize..120, v in any::<u8>(), cut in 0usize..120) {
            let mut b = sample().encode();
            let n = b.len();
            b[at % n] = v;
            b.truncate(n - cut.min(n));
            if let Ok(h) = Hello::decode(&b) {
                prop_assert_eq!(h.encode(), b);
            }
        }

        #[test]
        fn random_hellos_round_trip(
            resource in "[A-Za-z0-9._-]{1,64}", node in "\\PC{1,60}", role in 0u8..3,
            nums in prop::array::uniform6(any::<u64>()), extentsize in any::<u32>(),
            version in any::<u32>(), inconsistent in any::<bool>(),
        ) {
            prop_assume!(node.len() <= NODE_MAX);
            let h = Hello {
                version, resource, node, role: role_of(role).unwrap(),
                resuid: nums[0], localcnt: nums[1], remotecnt: nums[2], datasize: nums[3],
                extentsize, epoch: nums[4], inconsistent,
            };
            prop_assert_eq!(Hello::decode(&h.encode()), Ok(h));
        }
    }
}
