//! A CA held on the node itself (`LOCAL_CA_DIR`, or an ephemeral one for `FAKE_CA`): mints
//! workload certificates without any CA server.
//!
//! Directory layout: `root-cert.pem` (the trust bundle: one or more root certificates, all of
//! which become trust anchors), `ca-key.pem` (the signing key: EC P-256 or RSA, PKCS#8, PKCS#1
//! or SEC1), and optionally `cert-chain.pem` (the signing intermediate first, then any further
//! intermediates up to a root). Without `cert-chain.pem` the signing certificate is the root in
//! the bundle whose public key is `ca-key.pem`'s, so a bundle `A+B` signs with whichever of A or
//! B the key belongs to (this is how a root rotation A → A+B → B is rolled out). Two nodes
//! pointed at copies of the same directory trust each other. `ztun control-plane --ca-dir`
//! reads the same layout.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{unavailable, Issuer};
use crate::identity::Identity;
use crate::tls::ca::{backdate, ca_params};
use crate::tls::{parse_pem_certs, FetchFuture, Revocation, WorkloadCert};

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
    /// The CRLs minted certificates check peers against.
    revocation: Revocation,
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
        let (signing_cert, file) = match intermediates.first() {
            Some(first) => (first, "cert-chain.pem"),
            None => (
                roots
                    .iter()
                    .find(|r| holds_public_key(r, &signing_key))
                    .ok_or_else(|| {
                        invalid(
                            "root-cert.pem",
                            "no certificate in the bundle matches ca-key.pem".into(),
                        )
                    })?,
                "root-cert.pem",
            ),
        };
        if !holds_public_key(signing_cert, &signing_key) {
            return Err(invalid(
                file,
                "the signing certificate does not match ca-key.pem".into(),
            ));
        }
        let issuer = rcgen::Issuer::from_ca_cert_der(signing_cert, signing_key)
            .map_err(|e| invalid(file, e.to_string()))?;
        Ok(LocalCa {
            issuer,
            intermediates,
            roots,
            ttl,
            revocation: Revocation::disabled(),
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
            revocation: Revocation::disabled(),
        })
    }

    /// The trust roots leaves from this CA chain to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Mints a certificate for `identity`: EC P-256 key, one URI SAN, serverAuth+clientAuth,
    /// valid from a minute ago for the configured TTL.
    pub fn mint(&self, identity: &Identity) -> Result<WorkloadCert, LocalCaError> {
        let now = SystemTime::now();
        let not_before = now - backdate(self.ttl);
        let not_after = now
            .checked_add(self.ttl)
            .unwrap_or(now + Duration::from_secs(24 * 3600));
        self.mint_valid(identity, not_before, not_after)
    }

    /// Certificates minted from now on check their peers against `revocation`'s CRLs.
    pub fn with_revocation(mut self, revocation: Revocation) -> Self {
        self.revocation = revocation;
        self
    }

    /// Like [`LocalCa::mint`], valid from `not_before` to `not_after` (second precision).
    pub fn mint_valid(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, LocalCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let chain = self.sign(&key, identity, not_before, not_after)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        WorkloadCert::new(
            identity.clone(),
            chain,
            key,
            self.roots.clone(),
            &self.revocation,
        )
        .map_err(|e| LocalCaError::Invalid {
            path: "<minted>".into(),
            reason: e.to_string(),
        })
    }

    /// Signs a workload certificate for `identity` over `public_key`: empty subject, one
    /// critical URI SAN, digitalSignature + keyEncipherment, serverAuth + clientAuth, a random
    /// serial. Returns the leaf followed by the intermediates (the roots are [`LocalCa::roots`]).
    pub fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, LocalCaError> {
        let mut params = CertificateParams::default();
        // An empty subject makes the SAN extension critical (RFC 5280 §4.2.1.6).
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
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(public_key, &self.issuer)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(chain)
    }

    /// Certificates between a leaf and the roots, signing intermediate first.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The lifetime of minted certificates.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Whether `cert` certifies the public key of `key`.
fn holds_public_key(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.der_bytes())
        .unwrap_or(false)
}

impl Issuer for LocalCa {
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
