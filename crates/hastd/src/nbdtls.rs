//! NBD over TLS: builds the rustls server configuration from hast.conf's
//! `nbd_tls*` options (TLS 1.3 only, the `ring` provider) and answers
//! `NBD_OPT_STARTTLS` for `hast-nbd`'s shell through its `StartTls` trait.
//!
//! Client certificates: without `nbd_tls_client_fingerprint` none is asked
//! for (any client that completes TLS may use the exports, as with
//! qemu-nbd without an authz object). With it, a certificate is required
//! and `hast_tls::Pinned` accepts exactly the one whose DER has that SHA-256:
//! no CA, no expiry or name checks — pinning is the trust decision — but
//! the TLS 1.3 CertificateVerify signature is still checked, so only the
//! holder of the pinned certificate's private key gets through.

use std::sync::Arc;

use hast_conf::nbd_tls::PemFileError;
use hast_conf::{nbd_tls_error, Config, ConfigError, NbdTlsMode};
use hast_nbd::TlsMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a listener needs to offer STARTTLS.
pub struct NbdTls {
    mode: TlsMode,
    pinned: Option<[u8; 32]>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl NbdTls {
    /// From a configuration whose PEM files were read
    /// (`Config::load_nbd_tls`); `None` when TLS is off. A PEM without a
    /// certificate or key, or a key that is not the certificate's, is an
    /// error at its option's line (exit 78).
    pub fn from_config(config: &Config) -> Result<Option<Arc<NbdTls>>, ConfigError> {
        let Some(tls) = &config.nbd_tls else {
            return Ok(None);
        };
        let bad = |(path, line): &(std::path::PathBuf, u32), option, why: String| {
            nbd_tls_error(
                &config.file,
                *line,
                option,
                path,
                PemFileError::Invalid(why),
            )
        };
        let Some(pem) = &tls.pem else {
            return Err(bad(&tls.cert, "nbd_tls_cert", "not read".into()));
        };
        let certs = CertificateDer::pem_slice_iter(&pem.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&tls.cert, "nbd_tls_cert", format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                &tls.cert,
                "nbd_tls_cert",
                "no CERTIFICATE in the file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem.key)
            .map_err(|e| bad(&tls.key, "nbd_tls_key", format!("no private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // TLS 1.3 and 1.2: the NBD protocol requires 1.2 of servers, and
        // GnuTLS clients such as nbd-tester-client ask for it. (The
        // replication link, ours at both ends, is 1.3 only.)
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| bad(&tls.key, "nbd_tls_key", e.to_string()))?;
        let builder = match tls.client_fingerprint {
            None => builder.with_no_client_auth(),
            Some(fp) => builder.with_client_cert_verifier(Arc::new(
                hast_tls::Pinned::new(&[hast_tls::Fingerprint(fp)], &provider).log_refusals(
                    "NBD client certificate refused: not the nbd_tls_client_fingerprint",
                ),
            )),
        };
        // Checks that the key belongs to the first certificate.
        let server = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad(&tls.key, "nbd_tls_key", e.to_string()))?;
        Ok(Some(Arc::new(NbdTls {
            mode: match tls.mode {
                NbdTlsMode::Optional => TlsMode::Optional,
                _ => TlsMode::Required,
            },
            pinned: tls.client_fingerprint,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })))
    }

    /// For logs and `hastctl list`: `required`, `optional, client
    /// certificate pinned`, ...
    pub fn describe(&self) -> String {
        match self.pinned {
            None => self.mode.as_str().to_string(),
            Some(_) => format!("{}, client certificate pinned", self.mode.as_str()),
        }
    }

    pub fn required(&self) -> bool {
        self.mode == TlsMode::Required
    }
}

impl<S> hast_nbd::StartTls<S> for NbdTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = tokio_rustls::server::TlsStream<S>;

    fn mode(&self) -> TlsMode {
        self.mode
    }

    async fn accept(&self, plain: S) -> std::io::Result<Self::Stream> {
        self.acceptor.accept(plain).await
    }
}

#[cfg(test)]
mod tests {
    //! The server end to end in-process: a rustls client over a duplex
    //! stream against [`NbdTls`] built from hast.conf text, with
    //! certificates made by the `openssl` CLI.

    use super::*;
    use hast_conf::nbd_tls::format_fingerprint;
    use hast_nbd::StartTls;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use rustls::client::ResolvesClientCert;
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::ServerName;
    use rustls::pki_types::UnixTime;
    use rustls::sign::CertifiedKey;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// Self-signed P-256 certificate and key: `NAME-cert.pem`, `NAME-key.pem`.
    fn self_signed(dir: &Path, name: &str) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}-cert.pem"),
            ],
        );
    }

    fn der_cert(dir: &Path, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(format!("{name}-cert.pem"))).unwrap()
    }

    fn der_key(dir: &Path, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem"))).unwrap()
    }

    /// The test client trusts any server: only the server's checks are
    /// under test here.
    #[derive(Debug)]
    struct AnyServer(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }

    /// Presents a fixed certificate and key, matching or not (rustls's own
    /// builder refuses a key that is not the certificate's; an attacker's
    /// client would not).
    #[derive(Debug)]
    struct Present(Option<Arc<CertifiedKey>>);

    impl ResolvesClientCert for Present {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            self.0.clone()
        }
        fn has_certs(&self) -> bool {
            self.0.is_some()
        }
    }

    struct Fixture {
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The server from hast.conf text with `extra` node-level lines.
    fn server(f: &Fixture, extra: &str) -> Arc<NbdTls> {
        let text = format!(
            "nbd_tls_cert {}\nnbd_tls_key {}\n{extra}resource r {{ on n {{ local /dev/null\nremote none }} }}\n",
            f.dir.join("server-cert.pem").display(),
            f.dir.join("server-key.pem").display()
        );
        let mut c = hast_conf::parse(&text, Path::new("hast.conf"), "n").unwrap();
        c.load_nbd_tls().unwrap();
        NbdTls::from_config(&c).unwrap().expect("TLS on")
    }

    /// One handshake: `(cert, key)` names of what the client presents.
    /// `Ok` when both ends completed it.
    async fn handshake(
        f: &Fixture,
        version: &'static rustls::SupportedProtocolVersion,
        tls: &NbdTls,
        presents: Option<(&str, &str)>,
    ) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = presents.map(|(cert, key)| {
            let signer = provider
                .key_provider
                .load_private_key(der_key(&f.dir, key))
                .unwrap();
            Arc::new(CertifiedKey::new(vec![der_cert(&f.dir, cert)], signer))
        });
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(
                provider.signature_verification_algorithms,
            )))
            .with_client_cert_resolver(Arc::new(Present(key)));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (a, b) = tokio::io::duplex(1 << 16);
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(connector.connect(name, a), tls.accept(b));
        let mut s = s.map_err(|e| format!("server: {e}"))?;
        let mut c = c.map_err(|e| format!("client: {e}"))?;
        // TLS 1.3 client authentication ends after the client's Finished:
        // the server's verdict reaches the client with the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"ok")
            .await
            .map_err(|e| format!("server: {e}"))?;
        s.flush().await.map_err(|e| format!("server: {e}"))?;
        let mut two = [0u8; 2];
        c.read_exact(&mut two)
            .await
            .map_err(|e| format!("client: {e}"))?;
        Ok(())
    }

    #[tokio::test]
    async fn pinned_client_needs_the_certificate_and_its_key() {
        let dir = std::env::temp_dir().join(format!("hastd-nbdtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Fixture { dir };
        for name in ["server", "pinned", "other"] {
            self_signed(&f.dir, name);
        }
        let pinned = hast_tls::fingerprint(der_cert(&f.dir, "pinned").as_ref()).0;
        let fp = format_fingerprint(&pinned).to_lowercase();

        // Both versions the server offers, the pinning rules the same.
        for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
            // No pinning: no certificate needed, any accepted.
            let open = server(&f, "");
            assert_eq!(open.describe(), "required");
            handshake(&f, v, &open, None).await.unwrap();
            handshake(&f, v, &open, Some(("other", "other")))
                .await
                .unwrap();

            let tls = server(
                &f,
                &format!("nbd_tls optional\nnbd_tls_client_fingerprint {fp}\n"),
            );
            assert_eq!(tls.describe(), "optional, client certificate pinned");
            handshake(&f, v, &tls, Some(("pinned", "pinned")))
                .await
                .unwrap();
            for (presents, why) in [
                (None, "no certificate"),
                (Some(("other", "other")), "another certificate"),
                // The pinned certificate is public; without its key the
                // CertificateVerify signature fails.
                (
                    Some(("pinned", "other")),
                    "the pinned certificate with another key",
                ),
            ] {
                let e = handshake(&f, v, &tls, presents).await.unwrap_err();
                assert!(e.starts_with("server: "), "{why}: {e}");
            }
        }
    }

    #[test]
    fn pem_contents_are_checked_at_their_line() {
        let dir = std::env::temp_dir().join(format!("hastd-nbdtls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Fixture { dir };
        self_signed(&f.dir, "server");
        self_signed(&f.dir, "other");
        // Private, so that a certificate used as the key is refused for
        // its contents, not its mode.
        for entry in std::fs::read_dir(&f.dir).unwrap() {
            use std::os::unix::fs::PermissionsExt;
            let p = entry.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let build = |cert: &str, key: &str| {
            let text = format!(
                "\nnbd_tls_cert {}\nnbd_tls_key {}\n",
                f.dir.join(cert).display(),
                f.dir.join(key).display()
            );
            let mut c = hast_conf::parse(&text, Path::new("hast.conf"), "n").unwrap();
            c.load_nbd_tls().unwrap();
            NbdTls::from_config(&c)
                .map(|_| ())
                .map_err(|e| (e.exit_code(), e.to_string()))
        };
        assert_eq!(build("server-cert.pem", "server-key.pem"), Ok(()));
        for (cert, key, line, why) in [
            ("server-key.pem", "server-key.pem", 2, "no CERTIFICATE"),
            ("server-cert.pem", "server-cert.pem", 3, "no private key"),
            ("server-cert.pem", "other-key.pem", 3, ""),
        ] {
            let (code, msg) = build(cert, key).unwrap_err();
            assert_eq!(code, 78, "{msg}");
            assert!(
                msg.starts_with(&format!("hast.conf:{line}: nbd_tls_")),
                "{msg}"
            );
            assert!(msg.contains(why), "{msg}");
        }
    }
}
