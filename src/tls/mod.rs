//! Mutual TLS for HBONE: per-identity certificates, the rustls configurations built from them,
//! and the SPIFFE-aware verifiers.
//!
//! A [`WorkloadCert`] is built once per certificate (issue or rotation) and prebuilds both the
//! client and the server configuration, so a connection only clones an `Arc`.
//!
//! The process's compliance policy (`COMPLIANCE_POLICY`) is set once at startup
//! ([`set_compliance_policy`]), before any configuration is built; every TLS configuration
//! ztun makes takes its key exchanges from [`crypto_provider`].
//!
//! Allowed imports: `identity`, `config`. Never `control/`, `dataplane/` or generated proto
//! code.

pub mod ca;
mod cert;
mod chain;
pub mod crl;
mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use cert::{parse_pem_certs, parse_pem_key, pem_of, CertError, WorkloadCert};
pub use chain::{peer_identity, IdentityError};
pub use crl::{Revocation, RevokedSignal, RevokedWait};

pub use crate::config::CompliancePolicy;
use crate::identity::Identity;

/// The only cipher suites HBONE negotiates: TLS 1.3 AES-GCM.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    provider_for(COMPLIANCE.get().copied().unwrap_or_default())
}

/// The provider under `policy`: TLS 1.3 AES-GCM suites; with [`CompliancePolicy::Pqc`] the
/// only key exchange is the post-quantum hybrid X25519MLKEM768.
fn provider_for(policy: CompliancePolicy) -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    if policy == CompliancePolicy::Pqc {
        p.kx_groups = vec![kx_group::X25519MLKEM768];
    }
    Arc::new(p)
}

/// The process's compliance policy, set at most once, at startup.
static COMPLIANCE: std::sync::OnceLock<CompliancePolicy> = std::sync::OnceLock::new();

/// Sets the compliance policy every later TLS configuration follows. Call once, at startup,
/// before any is built; returns false (and changes nothing) if it was already set.
pub fn set_compliance_policy(policy: CompliancePolicy) -> bool {
    COMPLIANCE.set(policy).is_ok()
}

/// Why a certificate for an identity is not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The issuer refused or failed.
    #[error("certificate for {identity} unavailable: {reason}")]
    Unavailable {
        /// Identity asked for.
        identity: Identity,
        /// What went wrong.
        reason: Arc<str>,
    },
}

/// Boxed future returned by [`CertSource::fetch`].
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Arc<WorkloadCert>, FetchError>> + Send>>;

/// A capability to obtain the current certificate of one identity. The data plane holds it;
/// the control side implements it (local CA, CA client).
pub trait CertSource: Send + Sync + 'static {
    /// The current certificate for `identity`, issuing it first if needed.
    fn fetch(&self, identity: &Identity) -> FetchFuture;
}

#[cfg(test)]
mod tests;
