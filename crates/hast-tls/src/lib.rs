//! Certificate pinning for every TLS link hast makes: hastd's replication
//! link (both ends), hastd's NBD server when it pins its clients
//! (`nbd_tls_client_fingerprint`), and hastcd's connections to the servers
//! (`nbd_tls_pin`). One verifier, so the three cannot drift apart.
//!
//! Trust is pinning, not a CA: a certificate is accepted exactly when the
//! SHA-256 of its DER is one of the pins. Validity dates and names are not
//! looked at — the fingerprint is the whole identity, and a certificate is
//! retired by unpinning it — but the handshake's signature is still checked
//! with the certificate's key, so a copied certificate without its private
//! key gets nowhere. Which TLS versions a link offers is its configuration's
//! choice, not the verifier's (the NBD server also offers 1.2, which the
//! protocol requires of servers; the other links are 1.3 only).
//!
//! A crate of its own because hast-conf, where [`Fingerprint`] lives, is a
//! dependency-free parser that hastctl also links, and neither hastd nor
//! hast-connect should depend on the other.

use std::sync::Arc;

pub use hast_conf::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's DER: what `openssl x509 -noout
/// -fingerprint -sha256` prints, and what the configurations pin.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(der).into())
}

/// The crypto provider of every hast link: `ring` (no cmake, no aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the pinned certificates, as a server's verifier (on a
/// client) or a client's (on a server, which then requires one).
#[derive(Debug)]
pub struct Pinned {
    pins: Vec<Fingerprint>,
    algs: WebPkiSupportedAlgorithms,
    /// Logged (at warn, with the refused fingerprint as openssl prints it) when a certificate is
    /// refused; `None` leaves reporting to the caller's handshake error.
    refusal: Option<&'static str>,
}

impl Pinned {
    pub fn new(pins: &[Fingerprint], provider: &CryptoProvider) -> Pinned {
        Pinned {
            pins: pins.to_vec(),
            algs: provider.signature_verification_algorithms,
            refusal: None,
        }
    }

    /// Log `message` with the fingerprint of every refused certificate.
    pub fn log_refusals(mut self, message: &'static str) -> Pinned {
        self.refusal = Some(message);
        self
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = fingerprint(cert);
        // Certificates and fingerprints are public: no constant-time compare.
        if self.pins.contains(&got) {
            return Ok(());
        }
        if let Some(message) = self.refusal {
            // openssl's form (`AB:CD:…`), which the pin options accept as is.
            let fingerprint = hast_conf::nbd_tls::format_fingerprint(&got.0);
            tracing::warn!(%fingerprint, "{message}");
        }
        // Sent to the peer as a bad_certificate / access_denied alert.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    /// The proof that the peer holds the pinned certificate's key.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA names: clients send their certificate whatever its issuer.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A certificate chain and its key, as presented to a peer.
pub struct Presented {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Why PEM bytes are not a usable certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("certificate: bad PEM: {0}")]
    CertPem(String),
    #[error("certificate: no CERTIFICATE in it")]
    NoCert,
    #[error("key: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {0}")]
    Key(String),
    #[error("the key does not go with the certificate: {0}")]
    Mismatch(String),
}

impl Presented {
    /// From PEM bytes; checks that the key is the first certificate's.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Presented, PemError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| PemError::CertPem(e.to_string()))?;
        if certs.is_empty() {
            return Err(PemError::NoCert);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| PemError::Key(e.to_string()))?;
        rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider())
            .map_err(|e| PemError::Mismatch(e.to_string()))?;
        Ok(Presented { certs, key })
    }

    /// Of the end-entity certificate: what the peer must pin.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.certs[0])
    }
}

/// A TLS 1.3 client that accepts a server whose certificate is one of
/// `pins` and presents `presents` when given. No session resumption (a
/// resumed session would skip the certificate check) and no SNI: the
/// servers ignore it, and a host name in the clear tells an observer
/// nothing it needs.
pub fn client_config(
    pins: &[Fingerprint],
    presents: Option<&Presented>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let p = provider();
    let verifier = Arc::new(Pinned::new(pins, &p));
    let builder = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match presents {
        Some(id) => builder.with_client_auth_cert(id.certs.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    c.resumption = rustls::client::Resumption::disabled();
    c.enable_sni = false;
    Ok(Arc::new(c))
}

#[cfg(test)]
mod tests {
    //! The verifier's decisions and the PEM checks without a handshake
    //! (hastd's replication and NBD tests run full handshakes through it).

    use super::*;
    use std::path::Path;

    /// A self-signed P-256 certificate and key (the test kit's), as PEM.
    fn make(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>) {
        let c = hast_testkit::pair::make_cert(dir, name);
        (
            std::fs::read(c.cert).unwrap(),
            std::fs::read(c.key).unwrap(),
        )
    }

    #[test]
    fn pins_decide_and_pem_is_checked() {
        let dir = std::env::temp_dir().join(format!("hast-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a_crt, a_key) = make(&dir, "a");
        let (b_crt, b_key) = make(&dir, "b");
        let a = Presented::from_pem(&a_crt, &a_key).unwrap();
        let b = Presented::from_pem(&b_crt, &b_key).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());

        let p = provider();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let pinned = Pinned::new(&[b.fingerprint(), a.fingerprint()], &p);
        for id in [&a, &b] {
            pinned
                .verify_server_cert(&id.certs[0], &[], &name, &[], UnixTime::now())
                .unwrap();
            pinned
                .verify_client_cert(&id.certs[0], &[], UnixTime::now())
                .unwrap();
        }
        let only_a = Pinned::new(&[a.fingerprint()], &p);
        let e = only_a
            .verify_server_cert(&b.certs[0], &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(e.to_string().contains("invalid peer certificate"), "{e}");
        assert!(only_a
            .verify_client_cert(&b.certs[0], &[], UnixTime::now())
            .is_err());
        assert!(Pinned::new(&[], &p)
            .verify_client_cert(&a.certs[0], &[], UnixTime::now())
            .is_err());
        assert!(only_a.client_auth_mandatory());

        // PEM: a key that is not the certificate's, none, or no certificate.
        let e = Presented::from_pem(&a_crt, &b_key).err().unwrap();
        assert!(matches!(e, PemError::Mismatch(_)), "{e}");
        let e = Presented::from_pem(&a_crt, b"junk").err().unwrap();
        assert!(matches!(e, PemError::Key(_)), "{e}");
        let e = Presented::from_pem(b"", &a_key).err().unwrap();
        assert!(matches!(e, PemError::NoCert), "{e}");

        // The client: no SNI, a client certificate only when given.
        let c = client_config(&[a.fingerprint()], Some(&b)).unwrap();
        assert!(!c.enable_sni);
        assert!(c.client_auth_cert_resolver.has_certs());
        let c = client_config(&[a.fingerprint()], None).unwrap();
        assert!(!c.client_auth_cert_resolver.has_certs());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
