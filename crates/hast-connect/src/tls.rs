//! NBD TLS towards the servers (`nbd_tls = on`): the rustls client
//! configuration hastcd's connections use. The servers' certificates are
//! pinned (`nbd_tls_pin`) with the verifier hastd's own links use
//! (`hast_tls::Pinned`): TLS 1.3 only, the handshake signature checked with
//! the pinned certificate's key, no resumption, no SNI (hastd ignores it).

use crate::conf::Config;
use crate::upstream::Tls;

/// The client configuration `conf` asks for; `None` when `nbd_tls` is off.
/// Reads `nbd_tls_cert` and `nbd_tls_key` when set; an error is one line
/// naming the file.
pub fn client_config(conf: &Config) -> Result<Option<Tls>, String> {
    let Some(t) = &conf.nbd_tls else {
        return Ok(None);
    };
    let presented = match (t.load_client_pem()?, &t.client) {
        (Some(pem), Some(paths)) => Some(
            hast_tls::Presented::from_pem(&pem.cert, &pem.key).map_err(|e| {
                format!(
                    "nbd_tls_cert {} / nbd_tls_key {}: {e}",
                    paths.cert.display(),
                    paths.key.display()
                )
            })?,
        ),
        _ => None,
    };
    let config = hast_tls::client_config(&t.pins, presented.as_ref())
        .map_err(|e| format!("nbd_tls: {e}"))?;
    Ok(Some(Tls { config }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A self-signed P-256 certificate and key (0600): the test kit's.
    fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = hast_testkit::pair::make_cert(dir, name);
        (c.cert, c.key)
    }

    fn conf(dir: &Path, tls: &str) -> Config {
        let path = dir.join("hastcd.conf");
        let text =
            format!("[Global]\ndbus = none\n{tls}[Controllers]\ncontroller = host=127.0.0.1\n");
        std::fs::write(&path, text).unwrap();
        crate::conf::load(&path).unwrap()
    }

    #[test]
    fn off_on_and_bad_client_certificates() {
        let dir = std::env::temp_dir().join(format!("hastcd-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = make_cert(&dir, "c");
        let (_, other_key) = make_cert(&dir, "o");
        let pin = format!("nbd_tls_pin = sha256:{}\n", "ab".repeat(32));

        assert!(client_config(&conf(&dir, "")).unwrap().is_none());
        let tls = client_config(&conf(&dir, &format!("nbd_tls = on\n{pin}")))
            .unwrap()
            .expect("on");
        assert!(!tls.config.enable_sni);
        let with = |k: &Path| {
            conf(
                &dir,
                &format!(
                    "nbd_tls = on\n{pin}nbd_tls_cert = {}\nnbd_tls_key = {}\n",
                    crt.display(),
                    k.display()
                ),
            )
        };
        let tls = client_config(&with(&key)).unwrap().expect("on");
        assert!(tls.config.client_auth_cert_resolver.has_certs());
        // A key that is not the certificate's: one line naming both files.
        let e = client_config(&with(&other_key)).unwrap_err();
        assert!(e.contains("does not go with"), "{e}");
        assert!(e.contains(&other_key.display().to_string()), "{e}");
        assert!(!e.contains('\n'));
        // A key others can read is refused, naming it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let e = client_config(&with(&key)).unwrap_err();
        assert!(e.contains(&key.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
