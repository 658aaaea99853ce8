//! Data checksums on the replication stream (config `checksum`): which kinds
//! exist, their wire codes, and the digest each produces. TCP's own checksum
//! is too weak for block storage (16 bits, and it never sees NIC or memory
//! corruption), so the sender may add one computed over the logical data.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// Largest digest any kind produces (SHA-256).
pub const DIGEST_MAX: usize = 32;

/// The checksum a frame carries, chosen by the sender's `checksum` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumKind {
    None,
    Crc32,
    Crc32c,
    Sha256,
}

impl ChecksumKind {
    /// Every kind, in wire-code order (for tests and tables).
    pub const ALL: [ChecksumKind; 4] = [
        ChecksumKind::None,
        ChecksumKind::Crc32,
        ChecksumKind::Crc32c,
        ChecksumKind::Sha256,
    ];

    pub fn code(self) -> u8 {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Crc32 => 1,
            ChecksumKind::Crc32c => 2,
            ChecksumKind::Sha256 => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<ChecksumKind> {
        match code {
            0 => Some(ChecksumKind::None),
            1 => Some(ChecksumKind::Crc32),
            2 => Some(ChecksumKind::Crc32c),
            3 => Some(ChecksumKind::Sha256),
            _ => None,
        }
    }

    /// Bytes of digest that follow the frame header.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Crc32 | ChecksumKind::Crc32c => 4,
            ChecksumKind::Sha256 => 32,
        }
    }

    /// The digest of `data` (CRCs little-endian, SHA-256 as its bytes).
    pub fn compute(self, data: &[u8]) -> Digest {
        let mut d = Digest {
            len: self.digest_len() as u8,
            bytes: [0; DIGEST_MAX],
        };
        match self {
            ChecksumKind::None => {}
            ChecksumKind::Crc32 => {
                d.bytes[..4].copy_from_slice(&crc32fast::hash(data).to_le_bytes())
            }
            ChecksumKind::Crc32c => {
                d.bytes[..4].copy_from_slice(&crc32c::crc32c(data).to_le_bytes())
            }
            ChecksumKind::Sha256 => d.bytes.copy_from_slice(&Sha256::digest(data)),
        }
        d
    }
}

impl fmt::Display for ChecksumKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumKind::None => "none",
            ChecksumKind::Crc32 => "crc32",
            ChecksumKind::Crc32c => "crc32c",
            ChecksumKind::Sha256 => "sha256",
        })
    }
}

/// A digest on the stack: no allocation per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    len: u8,
    bytes: [u8; DIGEST_MAX],
}

impl Digest {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_lengths() {
        for k in ChecksumKind::ALL {
            assert_eq!(ChecksumKind::from_code(k.code()), Some(k));
            assert_eq!(k.compute(b"abc").as_bytes().len(), k.digest_len());
        }
        assert_eq!(ChecksumKind::from_code(4), None);
        assert_eq!(ChecksumKind::from_code(255), None);
    }

    /// Known-answer vectors, so a swapped algorithm cannot pass as a round trip.
    #[test]
    fn known_answers() {
        let cases: [(ChecksumKind, &[u8], &str); 4] = [
            (ChecksumKind::None, b"123456789", ""),
            // CRC-32/ISO-HDLC check value 0xcbf43926, little-endian.
            (ChecksumKind::Crc32, b"123456789", "2639f4cb"),
            // CRC-32C check value 0xe3069283, little-endian.
            (ChecksumKind::Crc32c, b"123456789", "839206e3"),
            (
                ChecksumKind::Sha256,
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (k, input, hex) in cases {
            let got: String = k
                .compute(input)
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, hex, "{k}");
        }
    }
}
