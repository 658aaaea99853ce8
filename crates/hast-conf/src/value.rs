//! The typed option values of hast.conf (replication mode, checksum,
//! compression, ...) and sizes with k/M/G/T suffixes. Each keyword enum
//! prints back as the word the config file uses. The rules for resource and
//! node names are shared with hastmon.conf in `syntax::value`.

use std::fmt;
use std::str::FromStr;

use crate::syntax::value::is_digits;

/// A word that is not one of an option's keywords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{value}\" is not one of: {expected}")]
pub struct ParseKeywordError {
    pub value: String,
    pub expected: &'static str,
}

/// Defines a keyword enum with Display (the canonical word) and FromStr
/// (the canonical word plus any aliases).
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $expected:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word used for this value in hast.conf.
            pub fn keyword(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.keyword())
            }
        }

        impl FromStr for $name {
            type Err = ParseKeywordError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $word $(| $alias)* => Ok($name::$variant), )+
                    _ => Err(ParseKeywordError {
                        value: s.to_owned(),
                        expected: $expected,
                    }),
                }
            }
        }
    };
}

keyword_enum! {
    /// When a write is acknowledged to the client (docs/overview.md §4.2).
    Replication, "fullsync, memsync, async" {
        /// Local write done and the secondary has written it.
        Fullsync = "fullsync",
        /// Local write done and the secondary has received it.
        Memsync = "memsync",
        /// Local write done.
        Async = "async",
    }
}

keyword_enum! {
    /// Checksum carried on the replication stream.
    Checksum, "none, crc32, crc32c, sha256" {
        None = "none",
        Crc32 = "crc32",
        Crc32c = "crc32c",
        Sha256 = "sha256",
    }
}

keyword_enum! {
    /// Compression of the replication stream. FreeBSD's `lzf` is read as
    /// `lz4` so FreeBSD configs keep working.
    Compression, "none, hole, lz4 (or lzf)" {
        None = "none",
        /// Send all-zero blocks as holes.
        Hole = "hole",
        Lz4 = "lz4" | "lzf",
    }
}

keyword_enum! {
    /// What the primary does when its local component fails.
    OnIoError, "detach, pass_on (or fail)" {
        /// Detach the local component and serve from the secondary (DRBD's
        /// `on-io-error detach`).
        Detach = "detach",
        /// Pass the error on to the client. `fail` is an older name for it.
        PassOn = "pass_on" | "fail",
    }
}

/// Parses a size such as `4096`, `16k`, `2M`, `1G` or `1T` (powers of 1024,
/// either case). Returns `None` on anything else, including overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        b't' | b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if !is_digits(digits) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("16k", Some(16 << 10)),
            ("16K", Some(16 << 10)),
            ("2M", Some(2 << 20)),
            ("2m", Some(2 << 20)),
            ("1G", Some(1 << 30)),
            ("1g", Some(1 << 30)),
            ("1T", Some(1 << 40)),
            ("1t", Some(1 << 40)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("16777216T", None),
            ("16777215T", Some(16_777_215 << 40)),
            ("", None),
            ("k", None),
            ("+1", None),
            ("-1", None),
            ("1.5M", None),
            ("1MB", None),
            ("1 M", None),
            ("1P", None),
            ("é", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s), *want, "{s:?}");
        }
    }

    #[test]
    fn keywords_round_trip() {
        for v in Replication::ALL {
            assert_eq!(v.to_string().parse::<Replication>(), Ok(*v));
        }
        for v in Checksum::ALL {
            assert_eq!(v.to_string().parse::<Checksum>(), Ok(*v));
        }
        for v in Compression::ALL {
            assert_eq!(v.to_string().parse::<Compression>(), Ok(*v));
        }
        for v in OnIoError::ALL {
            assert_eq!(v.to_string().parse::<OnIoError>(), Ok(*v));
        }
        assert_eq!("lzf".parse::<Compression>(), Ok(Compression::Lz4));
        assert_eq!("fail".parse::<OnIoError>(), Ok(OnIoError::PassOn));
        assert_eq!(OnIoError::PassOn.to_string(), "pass_on");
        assert_eq!(Compression::Lz4.to_string(), "lz4");
        assert_eq!(Checksum::Crc32c.to_string(), "crc32c");
        assert!("Fullsync".parse::<Replication>().is_err());
        assert_eq!(
            "sync".parse::<Replication>().unwrap_err().to_string(),
            "\"sync\" is not one of: fullsync, memsync, async"
        );
    }
}
