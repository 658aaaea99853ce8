//! TLS for `tls://` replication addresses: this node's identity (`tls_cert`,
//! `tls_key`, read at start and reload), the rustls configurations of both
//! ends (the pinned-certificate verifier is `hast_tls::Pinned`, shared with
//! the NBD server and hastcd).
//!
//! Trust is pinning, not a CA: each end accepts exactly the certificates
//! whose SHA-256 fingerprints its configuration lists
//! (`tls_peer_fingerprint`), and still checks the handshake's TLS 1.3
//! signature with the certificate's key, so a stolen certificate without
//! its key is useless. Client certificates are required. Validity dates and
//! names are not looked at: the fingerprint is the whole identity, and a
//! certificate is retired by unpinning it. Only TLS 1.3 (the rustls build
//! has no TLS 1.2), no session resumption (a resumed session would skip the
//! certificate check the listener makes per resource), no tickets.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use hast_conf::{ConfigError, ErrorKind, Fingerprint};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};

/// PEM files larger than this are refused before they are read.
const PEM_SIZE_MAX: u64 = 1 << 20;

/// This node's certificate chain and key: the server certificate of its
/// `tls://` listeners and the client certificate of its primaries.
pub struct Identity {
    presented: hast_tls::Presented,
    /// Of the end-entity certificate, for the log (what the peer must pin).
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint)
    }
}

/// The identity as loaded at start or the last reload, shared by the
/// listeners and the primaries' connectors.
pub type SharedIdentity = Arc<std::sync::RwLock<Option<Arc<Identity>>>>;

pub fn current(shared: &SharedIdentity) -> Option<Arc<Identity>> {
    shared.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub use hast_tls::{fingerprint, provider};

/// Reads `tls_cert` and `tls_key` when both are set (hast-conf made sure
/// they are wherever a `tls://` address needs them). Errors are one line
/// naming the statement's line and the file: exit 66 when a file cannot be
/// read, 78 when it is malformed, the key is readable by group or others,
/// or the two do not belong together.
pub fn load_identity(c: &hast_conf::Config) -> Result<Option<Arc<Identity>>, ConfigError> {
    let (Some((cert_path, cert_line)), Some((key_path, key_line))) = (&c.tls_cert, &c.tls_key)
    else {
        return Ok(None);
    };
    let fail = |option: &'static str, path: &Path, line: u32, error: String, code: i32| {
        ConfigError::at(
            &c.file,
            line,
            ErrorKind::TlsFile {
                option,
                path: path.to_path_buf(),
                error,
                code,
            },
        )
    };
    let read = |option, path: &Path, line| {
        read_limited(path).map_err(|(e, code)| fail(option, path, line, e, code))
    };
    let cert_pem = read("tls_cert", cert_path, *cert_line)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            fail(
                "tls_cert",
                cert_path,
                *cert_line,
                format!("bad PEM: {e}"),
                ConfigError::EX_CONFIG,
            )
        })?;
    if certs.is_empty() {
        return Err(fail(
            "tls_cert",
            cert_path,
            *cert_line,
            "no CERTIFICATE in it".into(),
            ConfigError::EX_CONFIG,
        ));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(fail(
                "tls_key",
                key_path,
                *key_line,
                format!(
                    "mode {:03o} lets group or others read it; chmod 600",
                    mode & 0o777
                ),
                ConfigError::EX_CONFIG,
            ));
        }
    }
    let key_pem = read("tls_key", key_path, *key_line)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(
            "tls_key",
            key_path,
            *key_line,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
            ConfigError::EX_CONFIG,
        )
    })?;
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider()).map_err(
        |e| {
            fail(
                "tls_key",
                key_path,
                *key_line,
                format!("does not go with tls_cert {}: {e}", cert_path.display()),
                ConfigError::EX_CONFIG,
            )
        },
    )?;
    let fingerprint = fingerprint(&certs[0]);
    Ok(Some(Arc::new(Identity {
        presented: hast_tls::Presented { certs, key },
        fingerprint,
    })))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, (String, i32)> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| (e.to_string(), ConfigError::EX_NOINPUT))?;
    let mut out = Vec::new();
    f.take(PEM_SIZE_MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| (e.to_string(), ConfigError::EX_NOINPUT))?;
    if out.len() as u64 > PEM_SIZE_MAX {
        return Err((
            format!("larger than {PEM_SIZE_MAX} bytes"),
            ConfigError::EX_CONFIG,
        ));
    }
    Ok(out)
}

/// The primary's side: presents `id`, accepts a server whose certificate
/// is one of `pins`.
pub fn client_config(id: &Identity, pins: &[Fingerprint]) -> Result<Arc<ClientConfig>, String> {
    hast_tls::client_config(pins, Some(&id.presented)).map_err(|e| e.to_string())
}

/// The listener's side: presents `id`, requires a client certificate that
/// is one of `pins` (every `tls://` resource's; the listener then checks
/// the one of the resource the AUTH names).
pub fn server_config(id: &Identity, pins: &[Fingerprint]) -> Result<Arc<ServerConfig>, String> {
    let p = provider();
    let verifier = Arc::new(hast_tls::Pinned::new(pins, &p));
    let mut c = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.presented.certs.clone(), id.presented.key.clone_key())
        .map_err(|e| e.to_string())?;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

/// What a TLS link negotiated, for status and the log:
/// `TLSv1.3 TLS13_AES_256_GCM_SHA384 peer sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub suite: String,
    pub peer: Fingerprint,
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} peer {}", self.version, self.suite, self.peer)
    }
}

/// The negotiated parameters of an established connection (`None` before
/// the handshake finished, or without a peer certificate).
pub fn info(c: &rustls::CommonState) -> Option<TlsInfo> {
    let version = match c.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        v => format!("{v:?}"),
    };
    let suite = format!("{:?}", c.negotiated_cipher_suite()?.suite());
    let peer = fingerprint(c.peer_certificates()?.first()?);
    Some(TlsInfo {
        version,
        suite,
        peer,
    })
}

/// [`info`] of either end's stream.
pub fn stream_info(s: &tokio_rustls::TlsStream<tokio::net::TcpStream>) -> Option<TlsInfo> {
    match s {
        tokio_rustls::TlsStream::Client(c) => info(c.get_ref().1),
        tokio_rustls::TlsStream::Server(c) => info(c.get_ref().1),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// A self-signed P-256 certificate made with openssl (what the test kit
    /// and the docs use), in a temp dir: (cert path, key path).
    pub(crate) fn make_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let st = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (crt, key)
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hastd-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config_with(dir: &Path, cert: &Path, key: &Path) -> hast_conf::Config {
        let text = format!(
            "tls_cert {}\ntls_key {}\nresource r {{ on a {{ local {}/d\n remote 10.0.0.2 }} }}\n",
            cert.display(),
            key.display(),
            dir.display()
        );
        hast_conf::parse(&text, Path::new("hast.conf"), "a").unwrap()
    }

    fn identity(dir: &Path, name: &str) -> Arc<Identity> {
        let (c, k) = make_cert(dir, name);
        load_identity(&config_with(dir, &c, &k)).unwrap().unwrap()
    }

    /// A handshake over loopback; the outcome of both ends.
    async fn handshake(
        server: (&Identity, &[Fingerprint]),
        client: (&Identity, &[Fingerprint]),
    ) -> (std::io::Result<TlsInfo>, std::io::Result<TlsInfo>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(server.0, server.1).unwrap());
        let connector =
            tokio_rustls::TlsConnector::from(client_config(client.0, client.1).unwrap());
        let srv = async {
            let (s, _) = l.accept().await.unwrap();
            let mut t = acceptor.accept(s).await?;
            // One byte each way proves the keys agree.
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await?;
            t.write_all(&b).await?;
            t.flush().await?;
            Ok(info(t.get_ref().1).unwrap())
        };
        let cli = async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let t = connector.connect(name, s).await?;
            let t = tokio_rustls::TlsStream::Client(t);
            let i = stream_info(&t).unwrap();
            let (mut rd, mut wr) = crate::link::stream::split_tls(t);
            assert!(wr.is_write_vectored(), "vectored writes reach rustls");
            let bufs = [std::io::IoSlice::new(b"x")];
            let n = wr.write_vectored(&bufs).await?;
            assert_eq!(n, 1);
            wr.flush().await?;
            let mut b = [0u8; 1];
            rd.read_exact(&mut b).await?;
            assert_eq!(&b, b"x");
            Ok(i)
        };
        let bounded = std::time::Duration::from_secs(10);
        let (s, c) = tokio::time::timeout(bounded, async { tokio::join!(srv, cli) })
            .await
            .expect("handshake bounded");
        (s, c)
    }

    #[tokio::test]
    async fn pinned_certificates_connect_and_others_are_refused_by_either_end() {
        let dir = tmpdir("pins");
        let (a, b, x) = (
            identity(&dir, "a"),
            identity(&dir, "b"),
            identity(&dir, "x"),
        );
        // Both pinned: TLS 1.3, each end sees the other's fingerprint.
        let (s, c) = handshake((&b, &[a.fingerprint]), (&a, &[b.fingerprint])).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer, a.fingerprint);
        assert_eq!(c.peer, b.fingerprint);
        assert_eq!(s.version, "TLSv1.3");
        assert!(c.suite.starts_with("TLS13_"), "{c}");
        assert!(c.to_string().contains(&format!("peer {}", b.fingerprint)));
        // Two pins (a rotation): either certificate is accepted.
        let (s, c) = handshake(
            (&b, &[x.fingerprint, a.fingerprint]),
            (&a, &[b.fingerprint]),
        )
        .await;
        assert!(s.is_ok() && c.is_ok());
        // The client presents an unpinned certificate: the server refuses.
        let (s, c) = handshake((&b, &[a.fingerprint]), (&x, &[b.fingerprint])).await;
        let e = s.unwrap_err().to_string();
        assert!(e.contains("invalid peer certificate"), "{e}");
        assert!(c.is_err());
        // The server presents an unpinned certificate: the client refuses.
        let (s, c) = handshake((&x, &[a.fingerprint]), (&a, &[b.fingerprint])).await;
        let e = c.unwrap_err().to_string();
        assert!(e.contains("invalid peer certificate"), "{e}");
        assert!(s.is_err());
        // Nothing pinned accepts nobody.
        let (s, _) = handshake((&b, &[]), (&a, &[b.fingerprint])).await;
        assert!(s.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The build has TLS 1.2 (NBD needs it), this link does not: a client
    /// that speaks only 1.2 fails the handshake, whatever it would present.
    #[tokio::test]
    async fn tls12_is_refused_on_the_replication_link() {
        use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
        use rustls::pki_types::{CertificateDer, UnixTime};
        #[derive(Debug)]
        struct AcceptAny;
        impl rustls::client::danger::ServerCertVerifier for AcceptAny {
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
                _: &[u8],
                _: &CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                Ok(HandshakeSignatureValid::assertion())
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                Ok(HandshakeSignatureValid::assertion())
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms
                    .supported_schemes()
            }
        }
        let dir = tmpdir("tls12");
        let (a, b) = (identity(&dir, "a"), identity(&dir, "b"));
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(&b, &[a.fingerprint]).unwrap());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let srv = async {
            let (s, _) = l.accept().await.unwrap();
            acceptor.accept(s).await.map(|_| ())
        };
        let cli = async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            connector.connect(name, s).await.map(|_| ())
        };
        let bounded = std::time::Duration::from_secs(10);
        let (s, c) = tokio::time::timeout(bounded, async { tokio::join!(srv, cli) })
            .await
            .expect("handshake bounded");
        let e = s.unwrap_err().to_string();
        assert!(e.contains("Tls12NotOfferedOrEnabled"), "{e}");
        assert!(c.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The fingerprint hastd pins is the one openssl prints.
    #[test]
    fn fingerprint_is_openssls() {
        let dir = tmpdir("fp");
        let (crt, key) = make_cert(&dir, "n");
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&crt)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let theirs: Fingerprint = text.trim().split_once('=').unwrap().1.parse().unwrap();
        let id = load_identity(&config_with(&dir, &crt, &key))
            .unwrap()
            .unwrap();
        assert_eq!(id.fingerprint, theirs);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bad files: one line naming the statement's line and the file, 66
    /// for a missing one, 78 for a malformed or exposed one.
    #[test]
    fn identity_errors_name_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("errs");
        let (crt, key) = make_cert(&dir, "n");
        let (_, other_key) = make_cert(&dir, "m");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open_key = dir.join("open.key");
        std::fs::copy(&key, &open_key).unwrap();
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let missing = dir.join("missing.pem");
        let cases: [(&Path, &Path, u32, &str, i32); 5] = [
            (&missing, &key, 1, "tls_cert", 66),
            (&junk, &key, 1, "no CERTIFICATE", 78),
            (&crt, &junk, 2, "no usable private key", 78),
            (&crt, &open_key, 2, "chmod 600", 78),
            (&crt, &other_key, 2, "does not go with", 78),
        ];
        for (c, k, line, msg, code) in cases {
            let e = load_identity(&config_with(&dir, c, k)).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with(&format!("hast.conf:{line}: ")), "{text}");
            assert!(text.contains(msg), "{text}");
            let named = if line == 1 { c } else { k };
            assert!(text.contains(&named.display().to_string()), "{text}");
            assert_eq!(e.exit_code(), code, "{text}");
            assert!(!text.contains('\n'));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
