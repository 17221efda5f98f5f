//! The control plane's TLS: the mesh CA in `--ca-dir` (created on first start), the serving
//! certificate it issues at every start, and the acceptor that feeds handshaken connections
//! to the gRPC server.
//!
//! Handshakes run in their own tasks with a timeout, so a slow or silent client never holds
//! up accepting others.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info};

use super::ads::PeerAddr;
use super::silence::Silence;
use super::Error;
use crate::tls::ca::ca_params;

/// The CA certificate file in the CA directory.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The CA key file in the CA directory.
pub const CA_KEY: &str = "ca-key.pem";
/// Optional intermediates (signing certificate first), as `LOCAL_CA_DIR` reads them.
const CERT_CHAIN: &str = "cert-chain.pem";
/// The name istiod's certificate carries; clients that dial by another name can set
/// `ALT_XDS_HOSTNAME` to it.
pub const ISTIOD_SAN: &str = "istiod.istio-system.svc";
/// Trust domain written into a CA created here.
const TRUST_DOMAIN: &str = "cluster.local";
/// Serving certificate lifetime (a new one is issued at every start).
const SERVING_CERT_DAYS: i64 = 365;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to pick them up.
const ACCEPT_BACKLOG: usize = 128;

/// The CA: the key and certificate that sign the serving certificate.
pub struct Ca {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// Intermediates between a leaf and the root (signing certificate first).
    chain: Vec<CertificateDer<'static>>,
}

impl Ca {
    /// Loads the CA from `dir`, creating a fresh self-signed one (EC P-256, `root-cert.pem` +
    /// `ca-key.pem`, the key readable by the owner only) when the directory holds neither
    /// file. A directory with only one of the two is an error: never overwrite a CA.
    pub fn load_or_create(dir: &Path) -> Result<Ca, Error> {
        let (root, key) = (dir.join(ROOT_CERT), dir.join(CA_KEY));
        if !root.exists() && !key.exists() {
            create(dir)?;
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Ca {
                path: p.display().to_string(),
                reason: source.to_string(),
            })
        };
        let invalid = |p: &Path, reason: String| Error::Ca {
            path: p.display().to_string(),
            reason,
        };
        let key_pair = KeyPair::from_pem(&read(&key)?).map_err(|e| invalid(&key, e.to_string()))?;
        let roots = crate::tls::parse_pem_certs(read(&root)?.as_bytes())
            .map_err(|e| invalid(&root, e.to_string()))?;
        let chain_path = dir.join(CERT_CHAIN);
        let chain = match chain_path.exists() {
            true => crate::tls::parse_pem_certs(read(&chain_path)?.as_bytes())
                .map_err(|e| invalid(&chain_path, e.to_string()))?,
            false => Vec::new(),
        };
        // Without an intermediate, the signing root is the bundle entry whose key is
        // `ca-key.pem` (during a root rotation the bundle holds both roots in any order).
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key_pair);
        let matches_key = |der: &&CertificateDer<'static>| {
            x509_parser::parse_x509_certificate(der)
                .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == spki.as_slice())
        };
        let signing = chain
            .first()
            .or_else(|| roots.iter().find(matches_key))
            .ok_or_else(|| {
                invalid(
                    &root,
                    "no certificate in the bundle matches ca-key.pem".into(),
                )
            })?;
        let issuer = rcgen::Issuer::from_ca_cert_der(signing, key_pair)
            .map_err(|e| invalid(&root, e.to_string()))?;
        Ok(Ca { issuer, chain })
    }

    /// Issues a serving certificate for `sans` (DNS names or IP addresses); returns the chain
    /// (leaf first) and the key.
    pub fn serving_cert(
        &self,
        sans: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ztun control plane");
        params.distinguished_name = dn;
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(san.as_str().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(SERVING_CERT_DAYS);
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }
}

fn create(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io_err = |p: &Path, e: io::Error| Error::Ca {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(TRUST_DOMAIN).self_signed(&key)?;
    let write = |name: &str, mode: u32, text: &str| {
        use std::io::Write;
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| io_err(&path, e))
    };
    write(CA_KEY, 0o600, &key.serialize_pem())?;
    write(ROOT_CERT, 0o644, &cert.pem())?;
    info!(dir = %dir.display(), "created a new mesh CA");
    Ok(())
}

/// A rustls server configuration for the control plane: ALPN `h2`, the given chain.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections on `listener`, handshakes each in its own task and yields the
/// finished TLS connections, each closed once nothing has arrived from its client for
/// `silence`. Runs until the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    silence: Duration,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and similar: back off briefly instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let inner = Silence::new(tls, silence);
                        let _ = tx.send(Ok(TlsConn { inner, peer })).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A handshaken client connection, closed once the client has been silent too long.
pub struct TlsConn {
    inner: Silence<TlsStream<TcpStream>>,
    peer: SocketAddr,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerAddr;

    fn connect_info(&self) -> PeerAddr {
        PeerAddr(self.peer)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mid-rotation the bundle lists A then B while `ca-key.pem` is B's: the serving
    /// certificate must be issued by B, whatever the order.
    #[test]
    fn signs_with_the_bundle_root_matching_the_key() {
        let base = tempfile::tempdir().unwrap();
        let a =
            crate::testkit::certs::write_named_ca_dir(&base.path().join("a"), "root-a").unwrap();
        let b =
            crate::testkit::certs::write_named_ca_dir(&base.path().join("b"), "root-b").unwrap();
        let dir = base.path().join("ca");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ROOT_CERT), format!("{}{}", a.cert_pem, b.cert_pem)).unwrap();
        std::fs::write(dir.join(CA_KEY), &b.key_pem).unwrap();
        let ca = Ca::load_or_create(&dir).unwrap();
        let (chain, _) = ca.serving_cert(&["localhost".to_string()]).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert!(
            leaf.issuer().to_string().contains("root-b"),
            "{}",
            leaf.issuer()
        );

        std::fs::write(
            dir.join(CA_KEY),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        )
        .unwrap();
        assert!(
            Ca::load_or_create(&dir).is_err(),
            "a key matching no root must be refused"
        );
    }
}
