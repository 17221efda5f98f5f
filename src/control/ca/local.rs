//! A CA held on the node itself (`LOCAL_CA_DIR`, or an ephemeral one for `FAKE_CA`): mints
//! workload certificates without any CA server.
//!
//! Directory layout: `root-cert.pem` (the CA certificate, or the root when an intermediate is
//! used), `ca-key.pem` (EC P-256 or RSA key, PKCS#8, PKCS#1 or SEC1), and optionally
//! `cert-chain.pem` (the signing intermediate first, then any further intermediates). Two nodes
//! pointed at copies of the same directory trust each other.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{unavailable, Issuer};
use crate::identity::Identity;
use crate::tls::{parse_pem_certs, FetchFuture, WorkloadCert};

/// Why a local CA cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    /// A file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA material is not usable.
    #[error("CA material in {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A signing CA held in memory.
pub struct LocalCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// Certificates between the leaf and the root (signing intermediate first).
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    ttl: Duration,
}

impl LocalCa {
    /// Loads the CA from a `LOCAL_CA_DIR`-style directory.
    pub fn load(dir: &Path, ttl: Duration) -> Result<Self, LocalCaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| LocalCaError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let invalid = |name: &str, reason: String| LocalCaError::Invalid {
            path: dir.join(name).display().to_string(),
            reason,
        };
        let root_pem = read("root-cert.pem")?;
        let key_pem = read("ca-key.pem")?;
        let signing_key =
            KeyPair::from_pem(&key_pem).map_err(|e| invalid("ca-key.pem", e.to_string()))?;
        let roots = parse_pem_certs(root_pem.as_bytes())
            .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
        let intermediates = if dir.join("cert-chain.pem").exists() {
            let chain_pem = read("cert-chain.pem")?;
            parse_pem_certs(chain_pem.as_bytes())
                .map_err(|e| invalid("cert-chain.pem", e.to_string()))?
        } else {
            Vec::new()
        };
        let signing_cert = intermediates.first().unwrap_or(&roots[0]);
        let issuer = rcgen::Issuer::from_ca_cert_der(signing_cert, signing_key)
            .map_err(|e| invalid("root-cert.pem", e.to_string()))?;
        Ok(LocalCa {
            issuer,
            intermediates,
            roots,
            ttl,
        })
    }

    /// A fresh self-signed CA that lives only in this process (`FAKE_CA`): one node only.
    pub fn ephemeral(trust_domain: &str, ttl: Duration) -> Result<Self, LocalCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(trust_domain);
        let der = params.self_signed(&key)?.der().clone();
        let issuer = rcgen::Issuer::new(params, key);
        Ok(LocalCa {
            issuer,
            intermediates: Vec::new(),
            roots: vec![der],
            ttl,
        })
    }

    /// The trust roots leaves from this CA chain to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Mints a certificate for `identity`: EC P-256 key, one URI SAN, serverAuth+clientAuth.
    pub fn mint(&self, identity: &Identity) -> Result<WorkloadCert, LocalCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| LocalCaError::Sign(e))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after =
            now + time::Duration::try_from(self.ttl).unwrap_or(time::Duration::hours(24));
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCert::new(identity.clone(), chain, key, self.roots.clone()).map_err(|e| {
            LocalCaError::Invalid {
                path: "<minted>".into(),
                reason: e.to_string(),
            }
        })
    }
}

/// Parameters of a CA certificate for `trust_domain` (also used by tests and the lab).
pub fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, trust_domain);
    dn.push(rcgen::DnType::CommonName, format!("ztun CA {trust_domain}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

impl Issuer for Arc<LocalCa> {
    fn issue(&self, identity: &Identity) -> FetchFuture {
        let result = self
            .mint(identity)
            .map(Arc::new)
            .map_err(|e| unavailable(identity, e));
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_certs_from_the_same_ca_carry_the_identity() {
        let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
        let id: Identity = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        let cert = ca.mint(&id).unwrap();
        assert_eq!(cert.identity(), &id);
        assert_eq!(cert.roots().len(), 1);
        let life = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert!(life >= Duration::from_secs(3600), "{life:?}");
    }
}
