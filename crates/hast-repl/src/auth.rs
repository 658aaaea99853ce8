//! Mutual authentication of a replication connection, before the HELLO:
//! who may write to a secondary, and who may acknowledge a primary's writes.
//! Pure: the caller brings the nonces, the keys and the sockets.
//!
//! ```text
//! S -> P  CHALLENGE   version u32 | ns (32)
//! P -> S  AUTH        np (32) | mac_p (32) | resource_len u8 + resource | node_len u8 + node_p
//!                     mac_p = HMAC-SHA256(k, "hast-repl P>S\0" | T)
//! S -> P  AUTH_REPLY  status u8 (0 ok, 1 refused) | mac_s (32) | node_len u8 + node_s
//!                     mac_s = HMAC-SHA256(k, "hast-repl S>P\0" | T | node_len u8 + node_s)
//!         T = version u32 | ns | np | resource_len u8 + resource | node_len u8 + node_p
//! ```
//!
//! Both MACs cover both nonces, the resource, the protocol version and the
//! primary's node name; the secondary's also covers its own node name. The
//! labels differ per direction, so neither MAC can be reflected as the
//! other. The secondary's nonce is fresh per connection, so a recorded AUTH
//! is refused when replayed to it; the primary's nonce is fresh per
//! connection, so a recorded AUTH_REPLY cannot make a fake secondary pass.
//! Every field before a string has a fixed length and every string carries
//! its length, so the MAC input is unambiguous.
//!
//! Keys come from `secret_file` (`hast_conf::Secret`): the current key is
//! offered, the current and the next are accepted (rotation). A node without
//! a secret sends an all-zero MAC and checks none; a node with one accepts
//! only a MAC made with one of its keys — so a pair where one side has a
//! secret and the other not is refused, never silently unauthenticated.
//!
//! A refusal carries no reason: before authentication nothing about the
//! resources is revealed (the secondary logs the reason instead).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ReplError;
use crate::hello::{clip, NODE_MAX, PROTOCOL_VERSION, RESOURCE_MAX};

pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
pub type Nonce = [u8; NONCE_LEN];
pub type Tag = [u8; MAC_LEN];

/// Bytes of a CHALLENGE payload.
pub const CHALLENGE_LEN: usize = 4 + NONCE_LEN;
/// Largest AUTH payload.
pub const AUTH_MAX: usize = NONCE_LEN + MAC_LEN + 1 + RESOURCE_MAX + 1 + NODE_MAX;
/// Largest AUTH_REPLY payload.
pub const AUTH_REPLY_MAX: usize = 1 + MAC_LEN + 1 + NODE_MAX;

const LABEL_P2S: &[u8; 14] = b"hast-repl P>S\0";
const LABEL_S2P: &[u8; 14] = b"hast-repl S>P\0";
/// The MAC a node without a secret sends.
const NO_TAG: Tag = [0; MAC_LEN];

type HmacSha256 = Hmac<Sha256>;

/// The secondary's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub version: u32,
    pub nonce: Nonce,
}

impl Challenge {
    pub fn new(nonce: Nonce) -> Challenge {
        Challenge {
            version: PROTOCOL_VERSION,
            nonce,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Decodes a CHALLENGE of any version (the caller refuses a different
    /// one with a message naming both).
    pub fn decode(buf: &[u8]) -> Result<Challenge, ReplError> {
        if buf.len() != CHALLENGE_LEN {
            return Err(ReplError::BadMessage {
                what: "challenge",
                why: format!("{} bytes, expected {CHALLENGE_LEN}", buf.len()),
            });
        }
        let (v, n) = buf.split_at(4);
        Ok(Challenge {
            version: u32::from_le_bytes(v.try_into().expect("4 bytes")),
            nonce: n.try_into().expect("32 bytes"),
        })
    }
}

/// What both MACs are computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub version: u32,
    /// The secondary's nonce (CHALLENGE).
    pub ns: Nonce,
    /// The primary's nonce (AUTH).
    pub np: Nonce,
    pub resource: String,
    pub primary_node: String,
}

impl Transcript {
    fn mac(&self, key: &[u8], label: &[u8], secondary_node: Option<&str>) -> HmacSha256 {
        // HMAC takes keys of any length (long ones are hashed).
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        m.update(label);
        m.update(&self.version.to_le_bytes());
        m.update(&self.ns);
        m.update(&self.np);
        for s in [
            Some(self.resource.as_str()),
            Some(self.primary_node.as_str()),
            secondary_node,
        ]
        .into_iter()
        .flatten()
        {
            // Lengths were checked by the encoder/decoder (≤ 255).
            m.update(&[s.len() as u8]);
            m.update(s.as_bytes());
        }
        m
    }

    /// The primary's proof, with the key it offers (`None`: no secret).
    pub fn primary_tag(&self, key: Option<&[u8]>) -> Tag {
        key.map_or(NO_TAG, |k| {
            self.mac(k, LABEL_P2S, None).finalize().into_bytes().into()
        })
    }

    /// The secondary's proof.
    pub fn secondary_tag(&self, key: Option<&[u8]>, secondary_node: &str) -> Tag {
        key.map_or(NO_TAG, |k| {
            self.mac(k, LABEL_S2P, Some(secondary_node))
                .finalize()
                .into_bytes()
                .into()
        })
    }

    /// Which of `keys` made the primary's `tag` (compared in constant time).
    pub fn check_primary<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        tag: &Tag,
    ) -> Option<&'k [u8]> {
        keys.into_iter()
            .find(|k| self.mac(k, LABEL_P2S, None).verify_slice(tag).is_ok())
    }

    /// Which of `keys` made the secondary's `tag` (constant time).
    pub fn check_secondary<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        secondary_node: &str,
        tag: &Tag,
    ) -> Option<&'k [u8]> {
        keys.into_iter().find(|k| {
            self.mac(k, LABEL_S2P, Some(secondary_node))
                .verify_slice(tag)
                .is_ok()
        })
    }
}

/// The primary's claim and proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub nonce: Nonce,
    pub tag: Tag,
    /// 1..=64 bytes.
    pub resource: String,
    /// 1..=255 bytes.
    pub node: String,
}

impl Auth {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AUTH_MAX);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.tag);
        put_str(&mut out, &self.resource, RESOURCE_MAX);
        put_str(&mut out, &self.node, NODE_MAX);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Auth, ReplError> {
        let mut r = Cursor { buf, what: "auth" };
        let nonce = r.array()?;
        let tag = r.array()?;
        let resource = r.string("resource", RESOURCE_MAX)?;
        let node = r.string("node", NODE_MAX)?;
        r.finish()?;
        Ok(Auth {
            nonce,
            tag,
            resource,
            node,
        })
    }

    /// The transcript this AUTH answers `challenge` with.
    pub fn transcript(&self, challenge: &Challenge) -> Transcript {
        Transcript {
            version: challenge.version,
            ns: challenge.nonce,
            np: self.nonce,
            resource: self.resource.clone(),
            primary_node: self.node.clone(),
        }
    }
}

/// The secondary's verdict on an AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// Authenticated (or both sides without a secret): the secondary's node
    /// name and proof.
    Ok { node: String, tag: Tag },
    /// No reason given, by design (see the module docs).
    Refused,
}

impl AuthReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AUTH_REPLY_MAX);
        match self {
            AuthReply::Ok { node, tag } => {
                out.push(0);
                out.extend_from_slice(tag);
                put_str(&mut out, node, NODE_MAX);
            }
            AuthReply::Refused => {
                out.push(1);
                out.extend_from_slice(&NO_TAG);
                out.push(0);
            }
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<AuthReply, ReplError> {
        let mut r = Cursor {
            buf,
            what: "auth reply",
        };
        let [status] = r.array::<1>()?;
        let tag = r.array()?;
        match status {
            0 => {
                let node = r.string("node", NODE_MAX)?;
                r.finish()?;
                Ok(AuthReply::Ok { node, tag })
            }
            1 => {
                let [len] = r.array::<1>()?;
                r.finish()?;
                if tag != NO_TAG || len != 0 {
                    return Err(bad("auth reply", "a refusal carries no MAC and no name"));
                }
                Ok(AuthReply::Refused)
            }
            s => Err(bad("auth reply", format!("unknown status {s}"))),
        }
    }
}

/// Why the handshake failed, for the log of the side that saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer speaks protocol version {theirs}, this hastd speaks {PROTOCOL_VERSION}")]
    Version { theirs: u32 },
    #[error("authentication failed: the peer's MAC matches none of our keys (different secret_file, or not the peer)")]
    BadTag,
    #[error("the peer has no secret configured, but we have one (set the same secret_file on both nodes)")]
    PeerHasNoSecret,
    #[error("the secondary refused the connection (wrong or missing secret, unknown resource, or an address it does not accept; see its log)")]
    Refused,
}

/// The secondary's check of an AUTH: `keys` are the resource's accepted
/// keys (`None`: no secret configured). On success returns the reply to send,
/// made with the key that matched.
pub fn answer(
    challenge: &Challenge,
    auth: &Auth,
    keys: Option<&[&[u8]]>,
    own_node: &str,
) -> Result<AuthReply, AuthError> {
    let t = auth.transcript(challenge);
    let key = match keys {
        None => None,
        Some(keys) => Some(t.check_primary(keys.iter().copied(), &auth.tag).ok_or(
            if auth.tag == NO_TAG {
                AuthError::PeerHasNoSecret
            } else {
                AuthError::BadTag
            },
        )?),
    };
    Ok(AuthReply::Ok {
        node: clip(own_node, NODE_MAX).to_string(),
        tag: t.secondary_tag(key, clip(own_node, NODE_MAX)),
    })
}

/// The primary's check of an AUTH_REPLY to its `auth`, with the keys it
/// accepts (`None`: no secret). Returns the secondary's node name.
pub fn check_reply(
    challenge: &Challenge,
    auth: &Auth,
    reply: &AuthReply,
    keys: Option<&[&[u8]]>,
) -> Result<String, AuthError> {
    let AuthReply::Ok { node, tag } = reply else {
        return Err(AuthError::Refused);
    };
    if let Some(keys) = keys {
        let t = auth.transcript(challenge);
        if t.check_secondary(keys.iter().copied(), node, tag).is_none() {
            return Err(if *tag == NO_TAG {
                AuthError::PeerHasNoSecret
            } else {
                AuthError::BadTag
            });
        }
    }
    Ok(node.clone())
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let s = clip(s, max);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
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

impl Cursor<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReplError> {
        if self.buf.len() < N {
            return Err(bad(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(N);
        self.buf = rest;
        Ok(head.try_into().expect("N bytes"))
    }

    fn string(&mut self, field: &str, max: usize) -> Result<String, ReplError> {
        let [len] = self.array::<1>()?;
        let len = usize::from(len);
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
