//! Authenticated, replay-protected request/reply between hastmon peers, as
//! bytes in and bytes out (no socket, no clock, no randomness: the caller
//! brings the nonces). `net` drives it over TCP.
//!
//! One connection carries one exchange:
//!
//! ```text
//! server -> client  CHALLENGE  "HMON" | u16 BE version (1) | ns (16 bytes)
//! client -> server  REQUEST    u32 BE L | nc (16) | mac (32) | body (L - 48)
//!                              mac = HMAC-SHA256(key, "hastmon-req\0" | ns | nc | body)
//! server -> client  REPLY      u32 BE L | mac (32) | body (L - 32)
//!                              mac = HMAC-SHA256(key, "hastmon-rep\0" | nc | ns | body)
//! ```
//!
//! The server's nonce `ns` is fresh for every connection, so a recorded
//! request is refused when replayed (its MAC covers an old `ns`); the
//! client's nonce `nc` is fresh for every request, so a recorded reply is
//! refused too. The two labels differ, so a request can never pass as a
//! reply. Everything before the body has a fixed length, so the MAC input is
//! unambiguous. `L` is at most `FRAME_LEN_MAX` and is checked before a
//! receiver allocates anything for the frame.
//!
//! Bodies are opaque here; what they mean is the caller's business.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAGIC: [u8; 4] = *b"HMON";
pub const VERSION: u16 = 1;
pub const NONCE_LEN: usize = 16;
pub const MAC_LEN: usize = 32;
/// Bytes of a CHALLENGE.
pub const CHALLENGE_LEN: usize = MAGIC.len() + 2 + NONCE_LEN;
/// Bytes of the length prefix of REQUEST and REPLY.
pub const PREFIX_LEN: usize = 4;
/// Largest `L` (the frame after its length prefix), for both directions.
pub const FRAME_LEN_MAX: usize = 64 << 10;
/// Fixed part of a REQUEST after the prefix: `nc` and the MAC.
pub const REQUEST_FIXED_LEN: usize = NONCE_LEN + MAC_LEN;
/// Fixed part of a REPLY after the prefix: the MAC.
pub const REPLY_FIXED_LEN: usize = MAC_LEN;
pub const REQUEST_BODY_MAX: usize = FRAME_LEN_MAX - REQUEST_FIXED_LEN;
pub const REPLY_BODY_MAX: usize = FRAME_LEN_MAX - REPLY_FIXED_LEN;

const REQUEST_LABEL: &[u8; 12] = b"hastmon-req\0";
const REPLY_LABEL: &[u8; 12] = b"hastmon-rep\0";

pub type Nonce = [u8; NONCE_LEN];

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of `key { secret }` or `key { secret_file }`, and the
/// file's optional next key (rotation: messages are sealed with the current
/// key; both are accepted). Its bytes never appear in `Debug` output, so a
/// logged `Config` does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    current: Vec<u8>,
    next: Option<Vec<u8>>,
}

impl Key {
    /// Shorter secrets are refused: 16 bytes is the least that leaves
    /// guessing out of reach even for a typed passphrase-like string.
    pub const LEN_MIN: usize = 16;

    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Key, AuthError> {
        let bytes = bytes.into();
        if bytes.len() < Self::LEN_MIN {
            return Err(AuthError::KeyTooShort {
                len: bytes.len(),
                min: Self::LEN_MIN,
            });
        }
        Ok(Key {
            current: bytes,
            next: None,
        })
    }

    /// This key, also accepting `next` (a key file's second line).
    pub fn with_next(self, next: impl Into<Vec<u8>>) -> Result<Key, AuthError> {
        let next = Key::new(next)?.current;
        Ok(Key {
            next: Some(next),
            ..self
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.current
    }

    /// The MAC of the key messages are sealed with.
    fn mac(&self) -> HmacSha256 {
        hmac_of(&self.current)
    }

    /// The MACs of every accepted key, the current one first.
    fn accepted(&self) -> impl Iterator<Item = HmacSha256> + '_ {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .map(|k| hmac_of(k))
    }
}

fn hmac_of(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length (long ones are hashed), so
    // `new_from_slice` cannot fail for HMAC-SHA256.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.next {
            None => write!(f, "Key(<{} bytes, redacted>)", self.current.len()),
            Some(_) => write!(f, "Key(<{} bytes + next, redacted>)", self.current.len()),
        }
    }
}

/// Why a frame was refused. Every variant is one line naming the problem,
/// never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("bad magic {0:02x?} (not a hastmon peer)")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u16),
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("truncated frame: {have} bytes, at least {need} needed")]
    Truncated { need: usize, have: usize },
    #[error("{extra} unexpected bytes after the frame")]
    Trailing { extra: usize },
    #[error("authentication failed (bad MAC: wrong key, tampered or replayed message)")]
    BadMac,
    #[error("key is {len} bytes; at least {min} are required")]
    KeyTooShort { len: usize, min: usize },
}

/// The server's opening message: protocol identity and its fresh nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: Nonce,
}

impl Challenge {
    pub fn encode(&self) -> [u8; CHALLENGE_LEN] {
        let mut out = [0u8; CHALLENGE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_be_bytes());
        out[6..].copy_from_slice(&self.nonce);
        out
    }

    /// Decodes exactly one CHALLENGE.
    pub fn decode(buf: &[u8]) -> Result<Challenge, AuthError> {
        let fixed = exact(buf, CHALLENGE_LEN)?;
        let (magic, rest) = fixed.split_at(4);
        let (version, nonce) = rest.split_at(2);
        if magic != MAGIC {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(AuthError::BadMagic(m));
        }
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != VERSION {
            return Err(AuthError::BadVersion(version));
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(Challenge { nonce: n })
    }
}

/// `buf` must be `len` bytes long.
fn exact(buf: &[u8], len: usize) -> Result<&[u8], AuthError> {
    match buf.len() {
        n if n < len => Err(AuthError::Truncated { need: len, have: n }),
        n if n > len => Err(AuthError::Trailing { extra: n - len }),
        _ => Ok(buf),
    }
}

/// Which frame a length prefix announces; the two have different fixed parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request,
    Reply,
}

impl FrameKind {
    fn fixed_len(self) -> usize {
        match self {
            FrameKind::Request => REQUEST_FIXED_LEN,
            FrameKind::Reply => REPLY_FIXED_LEN,
        }
    }
}

/// The length `L` announced by a prefix, checked against the limits before
/// the receiver allocates a buffer for the rest of the frame.
pub fn frame_len(prefix: [u8; PREFIX_LEN], kind: FrameKind) -> Result<usize, AuthError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > FRAME_LEN_MAX {
        return Err(AuthError::TooLarge {
            len,
            max: FRAME_LEN_MAX,
        });
    }
    if len < kind.fixed_len() {
        return Err(AuthError::Truncated {
            need: kind.fixed_len(),
            have: len,
        });
    }
    Ok(len)
}

/// The part of a whole frame after its prefix, checked against the prefix.
fn payload(frame: &[u8], kind: FrameKind) -> Result<&[u8], AuthError> {
    let Some((prefix, rest)) = frame.split_first_chunk::<PREFIX_LEN>() else {
        return Err(AuthError::Truncated {
            need: PREFIX_LEN + kind.fixed_len(),
            have: frame.len(),
        });
    };
    let len = frame_len(*prefix, kind)?;
    exact(rest, len).map_err(|e| match e {
        AuthError::Truncated { need, have } => AuthError::Truncated {
            need: need + PREFIX_LEN,
            have: have + PREFIX_LEN,
        },
        other => other,
    })
}

fn sealed(fixed: &[&[u8]], body: &[u8], max: usize) -> Result<Vec<u8>, AuthError> {
    if body.len() > max {
        return Err(AuthError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let fixed_len: usize = fixed.iter().map(|p| p.len()).sum();
    let len = fixed_len + body.len();
    // `len` <= FRAME_LEN_MAX, far below u32::MAX.
    let prefix = u32::try_from(len).map_err(|_| AuthError::TooLarge {
        len,
        max: FRAME_LEN_MAX,
    })?;
    let mut out = Vec::with_capacity(PREFIX_LEN + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    for part in fixed {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(body);
    Ok(out)
}

fn request_mac(mut mac: HmacSha256, ns: &Nonce, nc: &Nonce, body: &[u8]) -> HmacSha256 {
    mac.update(REQUEST_LABEL);
    mac.update(ns);
    mac.update(nc);
    mac.update(body);
    mac
}

fn reply_mac(mut mac: HmacSha256, nc: &Nonce, ns: &Nonce, body: &[u8]) -> HmacSha256 {
    mac.update(REPLY_LABEL);
    mac.update(nc);
    mac.update(ns);
    mac.update(body);
    mac
}

/// The client's REQUEST (with its length prefix) answering challenge `ns`.
pub fn seal_request(key: &Key, ns: &Nonce, nc: &Nonce, body: &[u8]) -> Result<Vec<u8>, AuthError> {
    let tag = request_mac(key.mac(), ns, nc, body).finalize().into_bytes();
    sealed(&[nc, &tag], body, REQUEST_BODY_MAX)
}

/// Checks a whole REQUEST (prefix included) against the challenge `ns` this
/// connection sent; returns the client's nonce and the body.
pub fn open_request<'f>(
    key: &Key,
    ns: &Nonce,
    frame: &'f [u8],
) -> Result<(Nonce, &'f [u8]), AuthError> {
    let rest = payload(frame, FrameKind::Request)?;
    let (nc, rest) = rest.split_at(NONCE_LEN);
    let (tag, body) = rest.split_at(MAC_LEN);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(nc);
    if !key
        .accepted()
        .any(|m| request_mac(m, ns, &nonce, body).verify_slice(tag).is_ok())
    {
        return Err(AuthError::BadMac);
    }
    Ok((nonce, body))
}

/// The server's REPLY (with its length prefix) to the request that carried `nc`.
pub fn seal_reply(key: &Key, nc: &Nonce, ns: &Nonce, body: &[u8]) -> Result<Vec<u8>, AuthError> {
    let tag = reply_mac(key.mac(), nc, ns, body).finalize().into_bytes();
    sealed(&[&tag], body, REPLY_BODY_MAX)
}

/// Checks a whole REPLY (prefix included) against the nonces of this
/// exchange; returns the body.
pub fn open_reply<'f>(
    key: &Key,
    nc: &Nonce,
    ns: &Nonce,
    frame: &'f [u8],
) -> Result<&'f [u8], AuthError> {
    let rest = payload(frame, FrameKind::Reply)?;
    let (tag, body) = rest.split_at(MAC_LEN);
    if !key
        .accepted()
        .any(|m| reply_mac(m, nc, ns, body).verify_slice(tag).is_ok())
    {
        return Err(AuthError::BadMac);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> Key {
        Key::new(vec![b; 32]).unwrap()
    }

    const NS: Nonce = [1; 16];
    const NC: Nonce = [2; 16];

    #[test]
    fn key_length_and_debug() {
        assert_eq!(
            Key::new(*b"0123456789abcde"),
            Err(AuthError::KeyTooShort { len: 15, min: 16 })
        );
        let k = Key::new(*b"0123456789abcdef").unwrap();
        assert_eq!(k.as_bytes(), b"0123456789abcdef");
        let shown = format!("{k:?}");
        assert_eq!(shown, "Key(<16 bytes, redacted>)");
        assert!(!shown.contains("0123"));
    }

    /// Rotation: a node that offers the next key and one that still offers
    /// the current one understand each other while both accept both.
    #[test]
    fn next_key_is_accepted_both_ways() {
        let (k1, k2, k3) = (vec![1u8; 32], vec![2u8; 32], vec![3u8; 32]);
        let old = Key::new(k1.clone()).unwrap().with_next(k2.clone()).unwrap();
        let new = Key::new(k2.clone()).unwrap().with_next(k1.clone()).unwrap();
        let req = seal_request(&new, &NS, &NC, b"q").unwrap();
        assert_eq!(open_request(&old, &NS, &req).unwrap().1, b"q");
        let rep = seal_reply(&old, &NC, &NS, b"r").unwrap();
        assert_eq!(open_reply(&new, &NC, &NS, &rep).unwrap(), b"r");
        let other = Key::new(k3).unwrap();
        assert_eq!(open_request(&other, &NS, &req), Err(AuthError::BadMac));
        let only_k1 = Key::new(k1).unwrap();
        assert_eq!(open_request(&only_k1, &NS, &req), Err(AuthError::BadMac));
        assert!(!format!("{old:?}").contains('\u{1}'));
    }

    #[test]
    fn challenge_round_trip_and_errors() {
        let c = Challenge { nonce: NS };
        let bytes = c.encode();
        assert_eq!(&bytes[..6], b"HMON\x00\x01");
        assert_eq!(Challenge::decode(&bytes), Ok(c));

        let mut bad_magic = bytes;
        bad_magic[0] = b'X';
        let mut bad_version = bytes;
        bad_version[5] = 2;
        let mut long = bytes.to_vec();
        long.push(0);
        let cases: Vec<(&[u8], AuthError)> = vec![
            (&[], AuthError::Truncated { need: 22, have: 0 }),
            (&bytes[..21], AuthError::Truncated { need: 22, have: 21 }),
            (&long, AuthError::Trailing { extra: 1 }),
            (&bad_magic, AuthError::BadMagic(*b"XMON")),
            (&bad_version, AuthError::BadVersion(2)),
        ];
        for (input, want) in cases {
            assert_eq!(Challenge::decode(input), Err(want.clone()), "{input:?}");
        }
    }

    #[test]
    fn request_and_reply_round_trip() {
        let k = key(7);
        for body in [&b""[..], b"{}", &[0xff; 300][..]] {
            let req = seal_request(&k, &NS, &NC, body).unwrap();
            assert_eq!(req.len(), PREFIX_LEN + REQUEST_FIXED_LEN + body.len());
            assert_eq!(open_request(&k, &NS, &req), Ok((NC, body)));
            let rep = seal_reply(&k, &NC, &NS, body).unwrap();
            assert_eq!(rep.len(), PREFIX_LEN + REPLY_FIXED_LEN + body.len());
            assert_eq!(open_reply(&k, &NC, &NS, &rep), Ok(body));
        }
    }

    #[test]
    fn refused_frames() {
        let k = key(7);
        let req = seal_request(&k, &NS, &NC, b"hello").unwrap();
        let rep = seal_reply(&k, &NC, &NS, b"hello").unwrap();
        let mut long_req = req.clone();
        long_req.push(0);
        let mut huge = req.clone();
        huge[..4].copy_from_slice(&(FRAME_LEN_MAX as u32 + 1).to_be_bytes());
        let mut short_l = req.clone();
        short_l[..4].copy_from_slice(&47u32.to_be_bytes());

        let req_cases: Vec<(&str, Key, Nonce, Vec<u8>, AuthError)> = vec![
            (
                "ok under another key",
                key(8),
                NS,
                req.clone(),
                AuthError::BadMac,
            ),
            (
                "replayed under a new challenge",
                k.clone(),
                [9; 16],
                req.clone(),
                AuthError::BadMac,
            ),
            (
                "a reply is not a request",
                k.clone(),
                NS,
                {
                    // Same body and nonces, reply label: length differs, so pad it
                    // into a well-formed request frame with the reply's MAC.
                    let mut f = (48u32 + 5).to_be_bytes().to_vec();
                    f.extend_from_slice(&NC);
                    f.extend_from_slice(&rep[4..36]);
                    f.extend_from_slice(b"hello");
                    f
                },
                AuthError::BadMac,
            ),
            (
                "empty",
                k.clone(),
                NS,
                vec![],
                AuthError::Truncated { need: 52, have: 0 },
            ),
            (
                "prefix only",
                k.clone(),
                NS,
                req[..4].to_vec(),
                AuthError::Truncated { need: 57, have: 4 },
            ),
            (
                "cut body",
                k.clone(),
                NS,
                req[..req.len() - 1].to_vec(),
                AuthError::Truncated { need: 57, have: 56 },
            ),
            (
                "trailing byte",
                k.clone(),
                NS,
                long_req,
                AuthError::Trailing { extra: 1 },
            ),
            (
                "L over the limit",
                k.clone(),
                NS,
                huge.clone(),
                AuthError::TooLarge {
                    len: FRAME_LEN_MAX + 1,
                    max: FRAME_LEN_MAX,
                },
            ),
            (
                "L below the fixed part",
                k.clone(),
                NS,
                short_l,
                AuthError::Truncated { need: 48, have: 47 },
            ),
        ];
        for (what, key, ns, frame, want) in req_cases {
            assert_eq!(open_request(&key, &ns, &frame), Err(want), "{what}");
        }

        // (what, key, nc, ns, frame, error)
        type ReplyCase = (&'static str, Key, Nonce, Nonce, Vec<u8>, AuthError);
        let reply_cases: Vec<ReplyCase> = vec![
            (
                "another key",
                key(8),
                NC,
                NS,
                rep.clone(),
                AuthError::BadMac,
            ),
            (
                "replayed to a new request",
                k.clone(),
                [9; 16],
                NS,
                rep.clone(),
                AuthError::BadMac,
            ),
            (
                "other connection's challenge",
                k.clone(),
                NC,
                [9; 16],
                rep.clone(),
                AuthError::BadMac,
            ),
            (
                "nonces swapped",
                k.clone(),
                NS,
                NC,
                rep.clone(),
                AuthError::BadMac,
            ),
            (
                "a request is not a reply",
                k.clone(),
                NC,
                NS,
                req.clone(),
                AuthError::BadMac,
            ),
            (
                "cut",
                k.clone(),
                NC,
                NS,
                rep[..30].to_vec(),
                AuthError::Truncated { need: 41, have: 30 },
            ),
            (
                "L over the limit",
                k.clone(),
                NC,
                NS,
                huge,
                AuthError::TooLarge {
                    len: FRAME_LEN_MAX + 1,
                    max: FRAME_LEN_MAX,
                },
            ),
        ];
        for (what, key, nc, ns, frame, want) in reply_cases {
            assert_eq!(open_reply(&key, &nc, &ns, &frame), Err(want), "{what}");
        }
    }

    #[test]
    fn size_limits() {
        let k = key(1);
        let max_req = vec![0u8; REQUEST_BODY_MAX];
        let f = seal_request(&k, &NS, &NC, &max_req).unwrap();
        assert_eq!(f.len(), PREFIX_LEN + FRAME_LEN_MAX);
        assert!(open_request(&k, &NS, &f).is_ok());
        assert_eq!(
            seal_request(&k, &NS, &NC, &[0u8; REQUEST_BODY_MAX + 1]),
            Err(AuthError::TooLarge {
                len: REQUEST_BODY_MAX + 1,
                max: REQUEST_BODY_MAX
            })
        );
        let f = seal_reply(&k, &NC, &NS, &vec![0u8; REPLY_BODY_MAX]).unwrap();
        assert!(open_reply(&k, &NC, &NS, &f).is_ok());
        assert!(seal_reply(&k, &NC, &NS, &vec![0u8; REPLY_BODY_MAX + 1]).is_err());

        // The prefix alone decides: a 4 GiB announcement is refused with
        // nothing else read or allocated.
        assert_eq!(
            frame_len([0xff; 4], FrameKind::Request),
            Err(AuthError::TooLarge {
                len: u32::MAX as usize,
                max: FRAME_LEN_MAX
            })
        );
        assert_eq!(
            frame_len((FRAME_LEN_MAX as u32).to_be_bytes(), FrameKind::Reply),
            Ok(FRAME_LEN_MAX)
        );
        assert_eq!(frame_len(32u32.to_be_bytes(), FrameKind::Reply), Ok(32));
        assert_eq!(
            frame_len(32u32.to_be_bytes(), FrameKind::Request),
            Err(AuthError::Truncated { need: 48, have: 32 })
        );
    }

    proptest! {
        #[test]
        fn any_bit_flip_in_a_request_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let k = key(3);
            let mut f = seal_request(&k, &NS, &NC, &body).unwrap();
            let i = bit.index(f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            prop_assert!(open_request(&k, &NS, &f).is_err());
        }

        #[test]
        fn any_bit_flip_in_a_reply_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let k = key(3);
            let mut f = seal_reply(&k, &NC, &NS, &body).unwrap();
            let i = bit.index(f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            prop_assert!(open_reply(&k, &NC, &NS, &f).is_err());
        }

        #[test]
        fn replay_under_another_nonce_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            other in any::<Nonce>(),
        ) {
            prop_assume!(other != NS && other != NC);
            let k = key(4);
            let req = seal_request(&k, &NS, &NC, &body).unwrap();
            prop_assert_eq!(open_request(&k, &other, &req), Err(AuthError::BadMac));
            let rep = seal_reply(&k, &NC, &NS, &body).unwrap();
            prop_assert_eq!(open_reply(&k, &other, &NS, &rep), Err(AuthError::BadMac));
            prop_assert_eq!(open_reply(&k, &NC, &other, &rep), Err(AuthError::BadMac));
        }

        #[test]
        fn wrong_key_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            a in proptest::collection::vec(any::<u8>(), 16..40),
            b in proptest::collection::vec(any::<u8>(), 16..40),
        ) {
            prop_assume!(a != b);
            let (ka, kb) = (Key::new(a).unwrap(), Key::new(b).unwrap());
            let req = seal_request(&ka, &NS, &NC, &body).unwrap();
            prop_assert_eq!(open_request(&kb, &NS, &req), Err(AuthError::BadMac));
            let rep = seal_reply(&ka, &NC, &NS, &body).unwrap();
            prop_assert_eq!(open_reply(&kb, &NC, &NS, &rep), Err(AuthError::BadMac));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let k = key(5);
            let _ = Challenge::decode(&data);
            let _ = open_request(&k, &NS, &data);
            let _ = open_reply(&k, &NC, &NS, &data);
        }
    }
}
