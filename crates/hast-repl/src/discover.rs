//! Discovery: who serves which resource, in what role and epoch, and where
//! its NBD export is — the read-only question the connector (`hastcd`) asks
//! every storage node it polls. Pure: the caller brings the nonces, the keys
//! and the sockets (hastd's `discovery` module, hast-connect's `discover`).
//!
//! ```text
//! S -> C  GREETING  magic "HASTdisc" | version u32 | ns (32)
//! C -> S  REQUEST   magic "HASTdisc" | version u32 | nc (32) | mac_c (32)
//!                   mac_c = HMAC-SHA256(k, "hast-discover C>S\0" | version | ns | nc)
//! S -> C  ANSWER    body_len u32 | body | mac_s (32)
//!                   mac_s = HMAC-SHA256(k', "hast-discover S>C\0" | version | ns | nc | body)
//!         body      count u16 | count x entry
//!         entry     name_len u8 + name | export_len u8 + export | role u8 | status u8
//!                   | nbd_tls u8 | epoch u64 | size u64 | nbd_count u8 + nbd_count x (len u16 + addr)
//! ```
//!
//! All integers little-endian. One request per connection.
//!
//! What is revealed to whom: a resource without a `secret_file` is listed to
//! anyone; a resource with one only when `mac_c` verifies with that
//! resource's current or next key. An unauthenticated client learns nothing
//! about a resource with a secret, not even that it exists. `k'` is the key
//! that verified `mac_c` (all-zero `mac_s` when none did); a client with a
//! secret accepts only an answer whose `mac_s` verifies with the key it
//! offered, so a fake server cannot steer it to a primary of its choosing. A
//! client without a secret sends an all-zero `mac_c` and accepts an answer
//! without a MAC: it sees the open resources only, and trusts the network.
//!
//! Both MACs cover both nonces and the version; the labels differ by
//! direction, so neither can be reflected as the other. The server's nonce is
//! fresh per connection (a recorded REQUEST is worthless), the client's too
//! (a recorded ANSWER cannot be replayed to it). The magic opens both
//! directions so that neither side mistakes a replication port (whose frames
//! open with `0x48415354` as a u32) for a discovery one.
//!
//! Every length is checked against its limit before anything is allocated;
//! malformed input is a [`ReplError`], never a panic.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use hast_meta::Role;

use crate::error::ReplError;
use crate::hello::RESOURCE_MAX;

pub use crate::auth::{Nonce, Tag, MAC_LEN, NONCE_LEN};

/// Opens the GREETING and the REQUEST.
pub const MAGIC: [u8; 8] = *b"HASTdisc";
/// The version this build speaks.
pub const VERSION: u32 = 1;
/// Bytes of a GREETING.
pub const GREETING_LEN: usize = MAGIC.len() + 4 + NONCE_LEN;
/// Bytes of a REQUEST.
pub const REQUEST_LEN: usize = MAGIC.len() + 4 + NONCE_LEN + MAC_LEN;
/// Bytes of the ANSWER's length prefix.
pub const ANSWER_PREFIX_LEN: usize = 4;
/// Largest ANSWER body: a megabyte holds [`ENTRIES_MAX`] entries with room
/// to spare at the sizes hastd produces (~150 bytes each).
pub const ANSWER_MAX: usize = 1 << 20;
/// Entries in one answer: hast.conf's own limit on resources.
pub const ENTRIES_MAX: usize = 1024;
/// A resource name or export name, as in the replication protocol.
pub const NAME_MAX: usize = RESOURCE_MAX;
/// NBD addresses per entry.
pub const NBD_ADDRS_MAX: usize = 4;
/// Bytes of one NBD address (`tcp://[v6 literal]:port` is under 60).
pub const NBD_ADDR_MAX: usize = 256;

const LABEL_C2S: &[u8; 18] = b"hast-discover C>S\0";
const LABEL_S2C: &[u8; 18] = b"hast-discover S>C\0";
/// The MAC a side without a key sends.
pub const NO_TAG: Tag = [0; MAC_LEN];

type HmacSha256 = Hmac<Sha256>;

/// A resource's state as discovery reports it (`hast_api::Status` on the
/// wire; hast-repl does not depend on hast-api).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Both copies in sync (or no peer configured).
    Complete,
    /// The peer is absent or behind.
    Degraded,
    /// The last handshake found both copies written alone.
    SplitBrain,
    /// The component is not open (role init).
    Inactive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Degraded => "degraded",
            Status::SplitBrain => "split-brain",
            Status::Inactive => "inactive",
        }
    }

    fn code(self) -> u8 {
        match self {
            Status::Complete => 0,
            Status::Degraded => 1,
            Status::SplitBrain => 2,
            Status::Inactive => 3,
        }
    }

    fn from_code(c: u8) -> Option<Status> {
        Some(match c {
            0 => Status::Complete,
            1 => Status::Degraded,
            2 => Status::SplitBrain,
            3 => Status::Inactive,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Init => 0,
        Role::Primary => 1,
        Role::Secondary => 2,
    }
}

fn role_from_code(c: u8) -> Option<Role> {
    Some(match c {
        0 => Role::Init,
        1 => Role::Primary,
        2 => Role::Secondary,
        _ => return None,
    })
}

/// One resource as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The resource name (1..=64 bytes).
    pub name: String,
    /// The NBD export name (hast.conf's `name`, the resource name by
    /// default; 1..=64 bytes): what a client asks the NBD server for.
    pub export: String,
    pub role: Role,
    /// The fencing epoch stored in the metadata (0 when unreadable).
    pub epoch: u64,
    pub status: Status,
    /// The export's size in bytes (0 while the component is not open).
    pub size: u64,
    /// Where this node serves the export while primary: `tcp://HOST:PORT`,
    /// at most [`NBD_ADDRS_MAX`] of at most [`NBD_ADDR_MAX`] bytes.
    pub nbd: Vec<String>,
    /// The NBD server requires TLS.
    pub nbd_tls: bool,
}

/// The server's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    pub version: u32,
    pub nonce: Nonce,
}

impl Greeting {
    pub fn new(nonce: Nonce) -> Greeting {
        Greeting {
            version: VERSION,
            nonce,
        }
    }

    pub fn encode(&self) -> [u8; GREETING_LEN] {
        let mut out = [0u8; GREETING_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..].copy_from_slice(&self.nonce);
        out
    }

    /// Decodes a GREETING of any version (the client refuses another one
    /// with an error naming both, see [`request`]).
    pub fn decode(buf: &[u8]) -> Result<Greeting, ReplError> {
        let mut r = Cursor::new(buf, "discovery greeting");
        r.magic()?;
        let version = u32::from_le_bytes(r.array()?);
        let nonce = r.array()?;
        r.finish()?;
        Ok(Greeting { version, nonce })
    }
}

/// The client's question and proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub version: u32,
    pub nonce: Nonce,
    pub tag: Tag,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..44].copy_from_slice(&self.nonce);
        out[44..].copy_from_slice(&self.tag);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Request, ReplError> {
        let mut r = Cursor::new(buf, "discovery request");
        r.magic()?;
        let version = u32::from_le_bytes(r.array()?);
        let nonce = r.array()?;
        let tag = r.array()?;
        r.finish()?;
        Ok(Request {
            version,
            nonce,
            tag,
        })
    }
}

/// What both MACs are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    pub version: u32,
    pub ns: Nonce,
    pub nc: Nonce,
}

impl Transcript {
    pub fn new(greeting: &Greeting, request: &Request) -> Transcript {
        Transcript {
            version: greeting.version,
            ns: greeting.nonce,
            nc: request.nonce,
        }
    }

    fn mac(&self, key: &[u8], label: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length (long ones are hashed).
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        m.update(label);
        m.update(&self.version.to_le_bytes());
        m.update(&self.ns);
        m.update(&self.nc);
        m
    }

    /// The client's proof with the key it offers (`None`: no secret).
    pub fn client_tag(&self, key: Option<&[u8]>) -> Tag {
        key.map_or(NO_TAG, |k| {
            self.mac(k, LABEL_C2S).finalize().into_bytes().into()
        })
    }

    /// Which of `keys` made the client's `tag` (constant-time compares).
    pub fn check_client<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        tag: &Tag,
    ) -> Option<&'k [u8]> {
        // An all-zero tag is "no secret", never a MAC to try.
        if *tag == NO_TAG {
            return None;
        }
        keys.into_iter()
            .find(|k| self.mac(k, LABEL_C2S).verify_slice(tag).is_ok())
    }

    /// The server's proof over the answer `body`.
    pub fn server_tag(&self, key: Option<&[u8]>, body: &[u8]) -> Tag {
        key.map_or(NO_TAG, |k| {
            let mut m = self.mac(k, LABEL_S2C);
            m.update(body);
            m.finalize().into_bytes().into()
        })
    }

    /// Whether `key` made the server's `tag` over `body` (constant time).
    pub fn check_server(&self, key: &[u8], body: &[u8], tag: &Tag) -> bool {
        let mut m = self.mac(key, LABEL_S2C);
        m.update(body);
        m.verify_slice(tag).is_ok()
    }
}

/// Why an exchange failed, for the side that saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("the peer speaks discovery version {theirs}, this build speaks {VERSION}")]
    Version { theirs: u32 },
    #[error("the server's answer is not authenticated by our key: it does not know our secret (different secret_file, or not a hast node)")]
    Unauthenticated,
    #[error(
        "the server's answer carries a MAC our key did not make (tampered, or a different secret)"
    )]
    BadTag,
    #[error(transparent)]
    Malformed(#[from] ReplError),
}

/// The client's REQUEST to `greeting` with its nonce and the key it offers.
pub fn request(
    greeting: &Greeting,
    nonce: Nonce,
    key: Option<&[u8]>,
) -> Result<Request, CheckError> {
    if greeting.version != VERSION {
        return Err(CheckError::Version {
            theirs: greeting.version,
        });
    }
    let mut r = Request {
        version: VERSION,
        nonce,
        tag: NO_TAG,
    };
    r.tag = Transcript::new(greeting, &r).client_tag(key);
    Ok(r)
}

/// A resource the server may list, with the keys that open it (`None`: no
/// secret, listed to anyone).
#[derive(Debug, Clone)]
pub struct Offer<'k> {
    pub entry: Entry,
    pub keys: Option<Vec<&'k [u8]>>,
}

/// The server's ANSWER to `request`: the entries of `offers` this client may
/// see (see the module docs), MACed with the key that verified the client.
/// Returns the wire bytes and how many entries were listed. A request of
/// another version gets no answer.
pub fn answer(
    greeting: &Greeting,
    request: &Request,
    offers: &[Offer<'_>],
) -> Result<(Vec<u8>, usize), CheckError> {
    if request.version != greeting.version {
        return Err(CheckError::Version {
            theirs: request.version,
        });
    }
    let t = Transcript::new(greeting, request);
    let mut key: Option<&[u8]> = None;
    let mut listed = Vec::with_capacity(offers.len().min(ENTRIES_MAX));
    for o in offers {
        match &o.keys {
            None => listed.push(&o.entry),
            Some(keys) => {
                if let Some(k) = t.check_client(keys.iter().copied(), &request.tag) {
                    // One tag is made with one key: every resource it opens
                    // shares that key, so `key` is the same each time.
                    key = Some(k);
                    listed.push(&o.entry);
                }
            }
        }
    }
    let body = encode_body(listed.iter().copied())?;
    let tag = t.server_tag(key, &body);
    Ok((encode_answer(&body, &tag), listed.len()))
}

/// The client's check of an ANSWER's `body` and `tag`, with the key it
/// offered in `request` (`None`: no secret).
pub fn check_answer(
    greeting: &Greeting,
    request: &Request,
    body: &[u8],
    tag: &Tag,
    key: Option<&[u8]>,
) -> Result<Vec<Entry>, CheckError> {
    if let Some(k) = key {
        if *tag == NO_TAG {
            return Err(CheckError::Unauthenticated);
        }
        if !Transcript::new(greeting, request).check_server(k, body, tag) {
            return Err(CheckError::BadTag);
        }
    }
    Ok(decode_body(body)?)
}

/// The ANSWER on the wire: length prefix, body, MAC.
pub fn encode_answer(body: &[u8], tag: &Tag) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANSWER_PREFIX_LEN + body.len() + MAC_LEN);
    // `encode_body` keeps a body under ANSWER_MAX, well inside u32.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(tag);
    out
}

/// The body length an ANSWER's prefix announces, checked against
/// [`ANSWER_MAX`] before the caller allocates for it.
pub fn decode_answer_len(prefix: [u8; ANSWER_PREFIX_LEN]) -> Result<usize, ReplError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > ANSWER_MAX {
        return Err(bad(
            "discovery answer",
            format!("body of {len} bytes exceeds {ANSWER_MAX}"),
        ));
    }
    Ok(len)
}

/// Encodes the entries of an ANSWER body; an entry beyond a limit is an
/// error (hast.conf keeps a real configuration inside them).
pub fn encode_body<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> Result<Vec<u8>, ReplError> {
    let what = "discovery answer";
    let mut out = vec![0u8, 0u8];
    let mut count = 0usize;
    for e in entries {
        count += 1;
        if count > ENTRIES_MAX {
            return Err(bad(what, format!("more than {ENTRIES_MAX} entries")));
        }
        for (field, s) in [("name", &e.name), ("export", &e.export)] {
            if s.is_empty() || s.len() > NAME_MAX {
                return Err(bad(
                    what,
                    format!("{field} of {} bytes (1..={NAME_MAX})", s.len()),
                ));
            }
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out.push(role_code(e.role));
        out.push(e.status.code());
        out.push(u8::from(e.nbd_tls));
        out.extend_from_slice(&e.epoch.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        if e.nbd.len() > NBD_ADDRS_MAX {
            return Err(bad(
                what,
                format!(
                    "{}: {} NBD addresses (at most {NBD_ADDRS_MAX})",
                    e.name,
                    e.nbd.len()
                ),
            ));
        }
        out.push(e.nbd.len() as u8);
        for a in &e.nbd {
            if a.is_empty() || a.len() > NBD_ADDR_MAX {
                return Err(bad(
                    what,
                    format!("NBD address of {} bytes (1..={NBD_ADDR_MAX})", a.len()),
                ));
            }
            out.extend_from_slice(&(a.len() as u16).to_le_bytes());
            out.extend_from_slice(a.as_bytes());
        }
        if out.len() > ANSWER_MAX {
            return Err(bad(what, format!("more than {ANSWER_MAX} bytes")));
        }
    }
    out[..2].copy_from_slice(&(count as u16).to_le_bytes());
    Ok(out)
}

/// Decodes an ANSWER body; strict (no trailing bytes, known codes only).
pub fn decode_body(body: &[u8]) -> Result<Vec<Entry>, ReplError> {
    let what = "discovery answer";
    if body.len() > ANSWER_MAX {
        return Err(bad(
            what,
            format!("body of {} bytes exceeds {ANSWER_MAX}", body.len()),
        ));
    }
    let mut r = Cursor::new(body, what);
    let count = usize::from(u16::from_le_bytes(r.array()?));
    if count > ENTRIES_MAX {
        return Err(bad(
            what,
            format!("{count} entries (at most {ENTRIES_MAX})"),
        ));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.byte()?);
        let name = r.string("name", len, NAME_MAX)?;
        let len = usize::from(r.byte()?);
        let export = r.string("export", len, NAME_MAX)?;
        let role = r.byte()?;
        let role = role_from_code(role).ok_or_else(|| bad(what, format!("unknown role {role}")))?;
        let status = r.byte()?;
        let status = Status::from_code(status)
            .ok_or_else(|| bad(what, format!("unknown status {status}")))?;
        let nbd_tls = match r.byte()? {
            0 => false,
            1 => true,
            b => return Err(bad(what, format!("nbd_tls of {b} (0 or 1)"))),
        };
        let epoch = u64::from_le_bytes(r.array()?);
        let size = u64::from_le_bytes(r.array()?);
        let n = usize::from(r.byte()?);
        if n > NBD_ADDRS_MAX {
            return Err(bad(
                what,
                format!("{n} NBD addresses (at most {NBD_ADDRS_MAX})"),
            ));
        }
        let mut nbd = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(u16::from_le_bytes(r.array()?));
            nbd.push(r.string("NBD address", len, NBD_ADDR_MAX)?);
        }
        out.push(Entry {
            name,
            export,
            role,
            epoch,
            status,
            size,
            nbd,
            nbd_tls,
        });
    }
    r.finish()?;
    Ok(out)
}

fn bad(what: &'static str, why: impl Into<String>) -> ReplError {
    ReplError::BadMessage {
        what,
        why: why.into(),
    }
}

/// A strict cursor: every read is bounded, trailing bytes are an error.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, what }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReplError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(bad(self.what, "truncated"));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn byte(&mut self) -> Result<u8, ReplError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn magic(&mut self) -> Result<(), ReplError> {
        let m: [u8; 8] = self.array()?;
        if m != MAGIC {
            return Err(bad(
                self.what,
                "bad magic: not a hastd discovery peer (a replication or NBD port?)",
            ));
        }
        Ok(())
    }

    /// A string of `len` bytes, 1..=`max`, checked before it is copied.
    fn string(&mut self, field: &str, len: usize, max: usize) -> Result<String, ReplError> {
        if len == 0 || len > max {
            return Err(bad(
                self.what,
                format!("{field} of {len} bytes (1..={max})"),
            ));
        }
        if self.buf.len() < len {
            return Err(bad(self.what, "truncated"));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(s.to_vec()).map_err(|_| bad(self.what, format!("{field} is not UTF-8")))
    }

    fn finish(&self) -> Result<(), ReplError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad(self.what, format!("{} trailing bytes", self.buf.len())))
        }
    }
}

#[cfg(test)]
mod tests;
