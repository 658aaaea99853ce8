//! NBD over TLS: builds the rustls server configuration from hast.conf's
//! `nbd_tls*` options (TLS 1.3 only, the `ring` provider) and answers
//! `NBD_OPT_STARTTLS` for `hast-nbd`'s shell through its `StartTls` trait.
//!
//! Client certificates: without `nbd_tls_client_fingerprint` none is asked
//! for (any client that completes TLS may use the exports, as with
//! qemu-nbd without an authz object). With it, a certificate is required
//! and [`PinnedClient`] accepts exactly the one whose DER has that SHA-256:
//! no CA, no expiry or name checks — pinning is the trust decision — but
//! the TLS 1.3 CertificateVerify signature is still checked, so only the
//! holder of the pinned certificate's private key gets through.

use std::sync::Arc;

use hast_conf::nbd_tls::{format_fingerprint, PemFileError};
use hast_conf::{nbd_tls_error, Config, ConfigError, NbdTlsMode};
use hast_nbd::TlsMode;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
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
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad(&tls.key, "nbd_tls_key", e.to_string()))?;
        let builder = match tls.client_fingerprint {
            None => builder.with_no_client_auth(),
            Some(fp) => {
                builder.with_client_cert_verifier(Arc::new(PinnedClient::new(fp, &provider)))
            }
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

/// Accepts exactly one client certificate, by its SHA-256 fingerprint.
#[derive(Debug)]
struct PinnedClient {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClient {
    fn new(fingerprint: [u8; 32], provider: &CryptoProvider) -> PinnedClient {
        PinnedClient {
            fingerprint,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA names: clients send their certificate whatever its issuer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        // A certificate and its fingerprint are public: no need for a
        // constant-time comparison.
        if got == self.fingerprint {
            return Ok(ClientCertVerified::assertion());
        }
        tracing::warn!(
            fingerprint = %format_fingerprint(&got),
            "NBD client certificate refused: not the nbd_tls_client_fingerprint"
        );
        // Sent to the client as an access_denied alert.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never called: only TLS 1.3 is offered. Checked all the same.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    /// The proof that the client holds the pinned certificate's key.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
