//! A workload certificate with its prebuilt rustls configurations.

use std::sync::Arc;

use base64::Engine as _;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};

use super::crl::{Revocation, RevokedError, Side, Tracked};
use super::verify::{ClientVerifier, ServerVerifier, Verifier};
use crate::identity::Identity;

/// Why certificate material cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    /// The PEM holds no certificate or is malformed.
    #[error("invalid certificate PEM: {0}")]
    Pem(Arc<str>),
    /// The private key is missing, malformed or of an unsupported type.
    #[error("invalid private key: {0}")]
    Key(Arc<str>),
    /// A root certificate cannot be a trust anchor.
    #[error("invalid root certificate: {0}")]
    Root(Arc<str>),
    /// The leaf does not carry exactly the expected SPIFFE identity.
    #[error("leaf certificate identity mismatch: {0}")]
    Identity(Arc<str>),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(Arc<str>),
}

/// A certificate for one workload identity, ready to serve handshakes.
pub struct WorkloadCert {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    /// The roots and CRLs both configs verify peers with.
    verifier: Arc<Verifier>,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Builds from a leaf-first chain, its private key and the trust roots; peers are also
    /// checked against the CRLs of `revocation`. The leaf must carry exactly `identity` as its
    /// only URI SAN.
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        revocation: &Revocation,
    ) -> Result<Self, CertError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::Pem("empty chain".into()))?;
        let got = super::chain::identity_of(leaf)
            .map_err(|e| CertError::Identity(e.to_string().into()))?;
        if got != identity {
            return Err(CertError::Identity(
                format!("wanted {identity}, leaf has {got}").into(),
            ));
        }
        let (not_before, not_after) = validity(leaf)?;
        let anchors: Arc<[TrustAnchor<'static>]> = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::Root(format!("{e:?}").into()))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        if anchors.is_empty() {
            return Err(CertError::Root("no trust roots".into()));
        }
        let provider = super::crypto_provider();
        let verifier = Arc::new(Verifier {
            anchors,
            revocation: revocation.clone(),
            provider: provider.clone(),
        });
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(verifier.clone())))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        let mut client = client;
        client.alpn_protocols = vec![b"h2".to_vec()];
        client.enable_sni = false;
        client.resumption = rustls::client::Resumption::disabled();

        let client_verifier = ClientVerifier {
            verifier: verifier.clone(),
            trust_domain: identity.trust_domain().into(),
        };
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(Arc::new(client_verifier))
            .with_single_cert(chain.clone(), key)
            .map_err(config_err)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        Ok(WorkloadCert {
            identity,
            chain,
            roots,
            not_before,
            not_after,
            client: Arc::new(client),
            server: Arc::new(server),
            verifier,
        })
    }

    /// The roots peers are verified against (for tests of the CRL tracking).
    #[cfg(test)]
    pub(crate) fn verifier_anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.verifier.anchors.clone()
    }

    /// The generation of the CRLs in force: read before a handshake with this certificate,
    /// then passed to [`WorkloadCert::track_peer`].
    pub fn crl_generation(&self) -> u64 {
        self.verifier.revocation.generation()
    }

    /// Tracks an established connection made with this certificate, whose peer presented
    /// `peer_chain`, so that a CRL reload that revokes the peer signals it. `Ok(None)` when
    /// CRLs are not checked; an error when a reload since `seen` already revokes it.
    pub fn track_peer(
        &self,
        side: Side,
        peer_chain: Option<&[CertificateDer<'_>]>,
        seen: u64,
    ) -> Result<Option<Tracked>, RevokedError> {
        self.verifier.revocation.track(
            side,
            peer_chain.unwrap_or_default(),
            &self.verifier.anchors,
            seen,
        )
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Client configuration (presents this certificate; verifies the peer chain).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// Server configuration (presents this certificate; requires a same-trust-domain client).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew: half-way through the validity period.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// The leaf-first chain (public material only).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The trust roots.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

fn config_err(e: rustls::Error) -> CertError {
    CertError::Config(e.to_string().into())
}

fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Pem(e.to_string().into()))?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        to_system(cert.validity().not_before),
        to_system(cert.validity().not_after),
    ))
}

/// Every certificate in a PEM document, in order.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string().into()))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM document.
pub fn parse_pem_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| CertError::Key(e.to_string().into()))
}

/// PEM text of a DER certificate (64-column base64 lines).
pub fn pem_of(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
