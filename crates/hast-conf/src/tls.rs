//! TLS options of the replication link (`tls://` addresses): the pinned
//! peer certificate fingerprints (`tls_peer_fingerprint`) and their parser.
//! The certificate and key files (`tls_cert`, `tls_key`) are only named
//! here; hastd reads them at start and reload, so parsing stays pure.

use std::fmt;
use std::str::FromStr;

/// Fingerprints one `tls_peer_fingerprint` may list (two cover a rotation).
pub const FINGERPRINTS_MAX: usize = 8;

/// The SHA-256 digest of a certificate's DER encoding: what
/// `openssl x509 -noout -fingerprint -sha256` prints after the `=`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Lower-case hex, no separators.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `sha256:` and the hex digits, as status shows it.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint was refused (the message part of a config error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FingerprintError(String);

/// Accepts 64 hex digits, or 32 pairs of them separated by single colons
/// (openssl's form), in either case, optionally after `sha256:` (the form
/// `hastctl list` prints). Anything else is refused: a fingerprint that is
/// almost right is a typo, and a pin that silently matched nothing would
/// only show up as a link that never connects.
impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let bad = |why: &str| Err(FingerprintError(why.to_string()));
        let body = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &s[7..],
            _ => s,
        };
        let digits: String = if body.contains(':') {
            let groups: Vec<&str> = body.split(':').collect();
            if groups.len() != 32 || groups.iter().any(|g| g.len() != 2) {
                return bad("expected 32 colon-separated pairs of hex digits");
            }
            groups.concat()
        } else {
            body.to_string()
        };
        if digits.len() != 64 {
            return bad("expected a SHA-256 fingerprint: 64 hex digits, colons allowed");
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).unwrap_or("");
            match u8::from_str_radix(pair, 16) {
                Ok(b) if pair.bytes().all(|c| c.is_ascii_hexdigit()) => out[i] = b,
                _ => return bad(&format!("\"{pair}\" is not a pair of hex digits")),
            }
        }
        Ok(Fingerprint(out))
    }
}

/// A `tls_peer_fingerprint` value: one or more fingerprints separated by
/// commas or blanks (quote the value to use blanks), at most
/// [`FINGERPRINTS_MAX`], no duplicates.
pub fn parse_list(value: &str) -> Result<Vec<Fingerprint>, FingerprintError> {
    let mut out: Vec<Fingerprint> = Vec::new();
    for word in value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let f: Fingerprint = word.parse()?;
        if out.contains(&f) {
            return Err(FingerprintError(format!("{f} is listed twice")));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(FingerprintError("expected a SHA-256 fingerprint".into()));
    }
    if out.len() > FINGERPRINTS_MAX {
        return Err(FingerprintError(format!(
            "at most {FINGERPRINTS_MAX} fingerprints"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";

    fn colons(s: &str) -> String {
        s.as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn accepted_forms_are_one_fingerprint() {
        let want: Fingerprint = HEX.parse().unwrap();
        assert_eq!(want.0[0], 0x0f);
        assert_eq!(want.0[31], 0xff);
        for s in [
            HEX.to_string(),
            HEX.to_uppercase(),
            colons(HEX),
            colons(&HEX.to_uppercase()),
            format!("sha256:{HEX}"),
            format!("SHA256:{}", colons(HEX)),
            want.to_string(),
        ] {
            assert_eq!(s.parse::<Fingerprint>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), format!("sha256:{HEX}"));
    }

    #[test]
    fn refused_forms() {
        let cases = [
            (String::new(), "64 hex digits"),
            (HEX[..62].to_string(), "64 hex digits"),
            (format!("{HEX}00"), "64 hex digits"),
            (format!("{}g", &HEX[..63]), "not a pair of hex digits"),
            (format!("+{}", &HEX[..63]), "not a pair of hex digits"),
            (colons(&HEX[..62]), "32 colon-separated"),
            (format!("{}:", colons(HEX)), "32 colon-separated"),
            (colons(HEX).replacen(':', "::", 1), "32 colon-separated"),
            (
                format!("{}:{}", &HEX[..3], colons(&HEX[3..])),
                "32 colon-separated",
            ),
            (format!("sha1:{HEX}"), "32 colon-separated"),
            (format!("sha256:sha256:{HEX}"), "32 colon-separated"),
        ];
        for (s, msg) in cases {
            let e = s.parse::<Fingerprint>().unwrap_err().to_string();
            assert!(e.contains(msg), "{s:?}: {e}");
        }
    }

    #[test]
    fn lists() {
        let a: Fingerprint = HEX.parse().unwrap();
        let b = Fingerprint([7; 32]);
        assert_eq!(parse_list(HEX), Ok(vec![a]));
        assert_eq!(parse_list(&format!("{HEX},{}", b.hex())), Ok(vec![a, b]));
        assert_eq!(
            parse_list(&format!(" {}  {} ", colons(HEX), b)),
            Ok(vec![a, b])
        );
        for (s, msg) in [
            (String::new(), "expected"),
            (" , ".to_string(), "expected"),
            (format!("{HEX},{HEX}"), "twice"),
            (
                (0..9u8)
                    .map(|i| Fingerprint([i; 32]).hex())
                    .collect::<Vec<_>>()
                    .join(","),
                "at most 8",
            ),
            (format!("{HEX},zz"), "64 hex digits"),
        ] {
            let e = parse_list(&s).unwrap_err().to_string();
            assert!(e.contains(msg), "{s:?}: {e}");
        }
    }
}
