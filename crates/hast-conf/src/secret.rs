//! The key file, one format for hastd's `secret_file` (replication
//! authentication) and hastmon's `key { secret_file }`:
//!
//! ```text
//! <current key>        line 1: offered on every new connection, accepted
//! <next key>           line 2, optional: accepted too (rotation, below)
//! ```
//!
//! Each key is the line's bytes with surrounding blanks trimmed, at least
//! [`KEY_LEN_MIN`] bytes. Nothing else may be in the file but empty lines
//! after the keys. The file must be a regular file that neither group nor
//! others can read or write (mode 0600 or 0400): a key any local user can read
//! authenticates nothing.
//!
//! Rotation without downtime: put the new key on line 2 on both nodes and
//! reload (both keys are accepted, the old one is still offered); then swap
//! the lines on both nodes and reload; then drop the old line.
//!
//! This module reads and checks the file; what a key is used for belongs to
//! `hast-repl::auth` and `hast-mon::auth`.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Larger files are refused before they are read.
pub const SECRET_FILE_SIZE_MAX: u64 = 4096;
/// Shortest key: 16 bytes leaves guessing out of reach even for a typed,
/// passphrase-like string.
pub const KEY_LEN_MIN: usize = 16;

/// The keys of a key file: `current` is offered, `current` and `next` are
/// accepted. Their bytes never appear in `Debug` output, so a logged
/// configuration does not leak them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    current: Vec<u8>,
    next: Option<Vec<u8>>,
}

impl Secret {
    /// A secret from its keys (each at least [`KEY_LEN_MIN`] bytes).
    pub fn new(current: Vec<u8>, next: Option<Vec<u8>>) -> Result<Secret, SecretError> {
        for k in std::iter::once(&current).chain(next.as_ref()) {
            if k.len() < KEY_LEN_MIN {
                return Err(SecretError::TooShort {
                    len: k.len(),
                    min: KEY_LEN_MIN,
                });
            }
        }
        Ok(Secret { current, next })
    }

    /// The key this node offers.
    pub fn current(&self) -> &[u8] {
        &self.current
    }

    /// Every key this node accepts, the current one first.
    pub fn accepted(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_slice()).chain(self.next.as_deref())
    }

    /// Parses the contents of a key file.
    pub fn parse(bytes: &[u8]) -> Result<Secret, SecretError> {
        let mut lines = bytes.split(|&b| b == b'\n').map(<[u8]>::trim_ascii);
        let current = lines.next().unwrap_or_default();
        if current.is_empty() {
            return Err(SecretError::Empty);
        }
        let next = lines.next().filter(|l| !l.is_empty());
        if let Some(n) = lines.position(|l| !l.is_empty()) {
            // Lines 1 and 2 were taken; `n` counts from line 3.
            return Err(SecretError::ExtraLine { line: n + 3 });
        }
        Secret::new(current.to_vec(), next.map(<[u8]>::to_vec))
    }

    /// Reads and checks a key file (type, size, mode, contents).
    pub fn read(path: &Path) -> Result<Secret, SecretError> {
        let io = |source| SecretError::Io { source };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(SecretError::NotAFile);
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed { mode });
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(SECRET_FILE_SIZE_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > SECRET_FILE_SIZE_MAX {
            return Err(SecretError::TooLarge {
                max: SECRET_FILE_SIZE_MAX,
            });
        }
        Secret::parse(&bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret(<{} key{}, redacted>)",
            1 + usize::from(self.next.is_some()),
            if self.next.is_some() { "s" } else { "" }
        )
    }
}

/// Why a key file was refused: one line, never the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The caller names the file (`secret_file "PATH": ...`).
    #[error("cannot be read: {source}")]
    Io { source: std::io::Error },
    #[error("not a regular file")]
    NotAFile,
    #[error("readable or writable by group or others (mode {mode:04o}); chmod 600 it")]
    Exposed { mode: u32 },
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("the first line (the current key) is empty")]
    Empty,
    #[error("a key is {len} bytes; at least {min} are required")]
    TooShort { len: usize, min: usize },
    #[error("line {line}: a key file holds at most two keys (current, next)")]
    ExtraLine { line: usize },
}

impl SecretError {
    /// sysexits(3): a file that is missing or unreadable is `EX_NOINPUT`,
    /// one that is there but wrong is a configuration error.
    pub fn exit_code(&self) -> i32 {
        match self {
            SecretError::Io { .. } => crate::syntax::EX_NOINPUT,
            _ => crate::syntax::EX_CONFIG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0123456789abcdef";
    const K2: &str = "fedcba9876543210-next";

    #[test]
    fn parse_table() {
        let ok: &[(&str, &str, Option<&str>)] = &[
            ("0123456789abcdef", K1, None),
            ("0123456789abcdef\n", K1, None),
            ("  0123456789abcdef \r\n\n\n", K1, None),
            ("0123456789abcdef\nfedcba9876543210-next\n", K1, Some(K2)),
            ("0123456789abcdef\n\n", K1, None),
            // README.md's recipe, `head -c 32 /dev/urandom | base64`: the
            // text is the key, as it is (padding included, not decoded).
            (
                "EB5T4bWGb0NJkJ1Kcl9Qlg4PI2/G1c091WPY2nwYwQ4=\n",
                "EB5T4bWGb0NJkJ1Kcl9Qlg4PI2/G1c091WPY2nwYwQ4=",
                None,
            ),
        ];
        for (text, cur, next) in ok {
            let s = Secret::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(s.current(), cur.as_bytes(), "{text:?}");
            let accepted: Vec<&[u8]> = s.accepted().collect();
            let mut want = vec![cur.as_bytes()];
            want.extend(next.map(str::as_bytes));
            assert_eq!(accepted, want, "{text:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("\n0123456789abcdef", "empty"),
            ("short", "at least 16"),
            ("0123456789abcdef\nshort", "at least 16"),
            (
                "0123456789abcdef\nfedcba9876543210-next\nthird-key-xxxxxxxx",
                "line 3",
            ),
            ("0123456789abcdef\n\n\nx", "line 4"),
        ];
        for (text, want) in bad {
            let e = Secret::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(K1), "{text:?}: the key leaked: {e}");
        }
    }

    #[test]
    fn debug_never_shows_a_key() {
        let s = Secret::parse(format!("{K1}\n{K2}").as_bytes()).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains(K1) && !d.contains(K2), "{d}");
        assert!(d.contains("2 keys"), "{d}");
    }

    #[test]
    fn read_checks_mode_type_and_size() {
        let dir = std::env::temp_dir().join(format!("hast-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, K1).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = Secret::read(&path);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("chmod 600"), "{e}");
                assert_eq!(e.exit_code(), crate::syntax::EX_CONFIG);
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, vec![b'k'; SECRET_FILE_SIZE_MAX as usize + 1]).unwrap();
        assert!(matches!(
            Secret::read(&path),
            Err(SecretError::TooLarge { .. })
        ));
        assert!(matches!(Secret::read(&dir), Err(SecretError::NotAFile)));
        let e = Secret::read(&dir.join("missing")).unwrap_err();
        assert_eq!(e.exit_code(), crate::syntax::EX_NOINPUT, "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
