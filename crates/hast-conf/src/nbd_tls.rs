//! NBD over TLS options (`nbd_tls`, `nbd_tls_cert`, `nbd_tls_key`,
//! `nbd_tls_client_fingerprint`): their values and reading the PEM files
//! (how a node's options combine is `resolve.rs`'s). Parsing stays pure; the files are read only by
//! [`crate::Config::load_nbd_tls`], which hastd calls at start and reload
//! (so hastctl never reads a private key). What the PEM holds is checked by
//! hastd when it builds its TLS configuration.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use crate::error::PemFileError;

/// `nbd_tls`: whether NBD clients must, may or cannot use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdTlsMode {
    Off,
    /// Plaintext clients are served too (NBD SELECTIVETLS).
    Optional,
    /// Only clients that started TLS reach an export (NBD FORCEDTLS).
    Required,
}

impl NbdTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NbdTlsMode::Off => "off",
            NbdTlsMode::Optional => "optional",
            NbdTlsMode::Required => "required",
        }
    }
}

impl std::str::FromStr for NbdTlsMode {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(NbdTlsMode::Off),
            "optional" => Ok(NbdTlsMode::Optional),
            "required" => Ok(NbdTlsMode::Required),
            _ => Err("expected off, optional or required"),
        }
    }
}

/// A SHA-256 certificate fingerprint: 64 hex digits, colons anywhere
/// between them optional (`openssl x509 -fingerprint -sha256` prints
/// `AB:CD:...`), either case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], &'static str> {
    const WHY: &str = "expected a SHA-256 fingerprint: 64 hex digits, colons allowed";
    let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
    if digits.len() != 64 {
        return Err(WHY);
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hex = |b: u8| (b as char).to_digit(16).ok_or(WHY);
        out[i] = u8::try_from(hex(pair[0])? * 16 + hex(pair[1])?).map_err(|_| WHY)?;
    }
    Ok(out)
}

/// `AB:CD:...` as `openssl x509 -fingerprint -sha256` shows it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node's NBD TLS settings; present only when TLS is not off.
#[derive(Debug, Clone, PartialEq)]
pub struct NbdTls {
    /// `Optional` or `Required`, never `Off`.
    pub mode: NbdTlsMode,
    /// `nbd_tls_cert` (PEM: the server certificate, then its chain) and
    /// the line that set it.
    pub cert: (PathBuf, u32),
    /// `nbd_tls_key` (PEM private key) and its line.
    pub key: (PathBuf, u32),
    /// `nbd_tls_client_fingerprint`: when set, clients must present a
    /// certificate with this SHA-256 fingerprint; when unset, none is asked.
    pub client_fingerprint: Option<[u8; 32]>,
    /// The files' bytes, filled by [`crate::Config::load_nbd_tls`].
    pub pem: Option<NbdTlsPem>,
}

/// The contents of `nbd_tls_cert` and `nbd_tls_key`.
#[derive(Clone, PartialEq)]
pub struct NbdTlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for NbdTlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NbdTlsPem(cert: {} bytes, key: <redacted>)",
            self.cert.len()
        )
    }
}

/// Certificate chains and keys are a few KiB; anything this large is not one.
pub const PEM_FILE_SIZE_MAX: u64 = 1 << 20;

/// Reads one PEM file; `private`: refuse it when others may read it (its
/// group may: `ssl-cert`-style groups are common).
pub fn read_pem(path: &Path, private: bool) -> Result<Vec<u8>, PemFileError> {
    let meta = std::fs::metadata(path).map_err(PemFileError::Io)?;
    if !meta.is_file() {
        return Err(PemFileError::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o777;
    if private && mode & 0o007 != 0 {
        return Err(PemFileError::Exposed(mode));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(PemFileError::Io)?
        .take(PEM_FILE_SIZE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(PemFileError::Io)?;
    if bytes.len() as u64 > PEM_FILE_SIZE_MAX {
        return Err(PemFileError::TooLarge(PEM_FILE_SIZE_MAX));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let hex = "ab".repeat(32);
        let want = [0xab; 32];
        assert_eq!(parse_fingerprint(&hex), Ok(want));
        assert_eq!(parse_fingerprint(&hex.to_uppercase()), Ok(want));
        let colons = format_fingerprint(&want);
        assert_eq!(colons.len(), 95);
        assert_eq!(parse_fingerprint(&colons), Ok(want));
        for bad in [
            "",
            "ab",
            &"ab".repeat(31),
            &"ab".repeat(33),
            &format!("{}zz", "ab".repeat(31)),
            &format!("{}+1", "ab".repeat(31)),
            &format!("{}é", "a".repeat(62)),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?}");
        }
    }

    fn conf(text: &str) -> Result<Option<NbdTls>, String> {
        crate::parse(text, Path::new("hast.conf"), "a")
            .map(|c| c.nbd_tls)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn options_combine() {
        let pair = "nbd_tls_cert /c.pem\nnbd_tls_key /k.pem\n";
        let fp = "AB:".repeat(31) + "AB";
        // Nothing set, or explicitly off: no TLS.
        assert_eq!(conf(""), Ok(None));
        assert_eq!(conf("nbd_tls off\n"), Ok(None));
        assert_eq!(conf(&format!("{pair}nbd_tls off\n")), Ok(None));
        // The pair alone means required.
        let t = conf(pair).unwrap().unwrap();
        assert_eq!(t.mode, NbdTlsMode::Required);
        assert_eq!(t.cert, (PathBuf::from("/c.pem"), 1));
        assert_eq!(t.key, (PathBuf::from("/k.pem"), 2));
        assert_eq!(t.client_fingerprint, None);
        let t = conf(&format!(
            "{pair}nbd_tls optional\nnbd_tls_client_fingerprint {fp}\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(t.mode, NbdTlsMode::Optional);
        assert_eq!(t.client_fingerprint, Some([0xab; 32]));
        // The node section wins; `none` unsets a global fingerprint.
        let t = conf(&format!(
            "{pair}nbd_tls_client_fingerprint {fp}\non a {{ nbd_tls_client_fingerprint none\n nbd_tls optional }}\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!((t.mode, t.client_fingerprint), (NbdTlsMode::Optional, None));
        // Errors name the line.
        for (text, want) in [
            (
                "nbd_tls_cert /c.pem\n",
                "hast.conf:1: nbd_tls_cert needs nbd_tls_key",
            ),
            (
                "\nnbd_tls_key /k.pem\n",
                "hast.conf:2: nbd_tls_key needs nbd_tls_cert",
            ),
            (
                "nbd_tls required\n",
                "hast.conf:1: nbd_tls optional or required needs",
            ),
            (
                "nbd_tls optional\n",
                "hast.conf:1: nbd_tls optional or required needs",
            ),
            (
                &format!("nbd_tls_client_fingerprint {fp}\n"),
                "hast.conf:1: nbd_tls_client_fingerprint needs",
            ),
            ("nbd_tls maybe\n", "hast.conf:1:"),
            ("nbd_tls_cert c.pem\n", "hast.conf:1:"),
            ("nbd_tls_client_fingerprint abcd\n", "hast.conf:1:"),
            ("resource r { nbd_tls required }\n", "hast.conf:1:"),
        ] {
            let e = conf(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let e = conf("nbd_tls_client_fingerprint abcd\n").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn loading_names_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("hast-conf-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, b"CERT").unwrap();
        std::fs::write(&key, b"KEY").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "nbd_tls_cert {}\nnbd_tls_key {}\n",
            cert.display(),
            key.display()
        );
        let mut c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
        assert_eq!(c.nbd_tls.as_ref().unwrap().pem, None, "parse reads no file");
        c.load_nbd_tls().unwrap();
        let pem = c.nbd_tls.as_ref().unwrap().pem.clone().unwrap();
        assert_eq!(
            (pem.cert.as_slice(), pem.key.as_slice()),
            (&b"CERT"[..], &b"KEY"[..])
        );
        assert!(!format!("{pem:?}").contains("KEY"), "the key is not logged");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let mut c = crate::parse(&text, Path::new("hast.conf"), "a").unwrap();
        let e = c.load_nbd_tls().unwrap_err();
        assert_eq!(e.exit_code(), 78);
        assert!(
            e.to_string().starts_with("hast.conf:2: nbd_tls_key \""),
            "{e}"
        );
        std::fs::remove_file(&cert).unwrap();
        let e = c.load_nbd_tls().unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(
            e.to_string().starts_with("hast.conf:1: nbd_tls_cert \""),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pem_files() {
        let dir = std::env::temp_dir().join(format!("hast-conf-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_pem(&key, true).is_ok());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_pem(&key, true).unwrap_err();
        assert!(matches!(e, PemFileError::Exposed(0o644)), "{e}");
        assert_eq!(e.exit_code(), 78);
        // A certificate is public.
        assert!(read_pem(&key, false).is_ok());
        let e = read_pem(&dir.join("missing.pem"), false).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(matches!(read_pem(&dir, false), Err(PemFileError::NotAFile)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
