//! Mutual TLS for HBONE: per-identity certificates, the rustls configurations built from them,
//! and the SPIFFE-aware verifiers.
//!
//! A [`WorkloadCert`] is built once per certificate (issue or rotation) and prebuilds both the
//! client and the server configuration, so a connection only clones an `Arc`.
//!
//! Allowed imports: `identity`. Never `control/`, `dataplane/` or generated proto code.

mod cert;
pub mod crl;
mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use cert::{parse_pem_certs, parse_pem_key, CertError, WorkloadCert};
pub use crl::{Revocation, RevokedSignal};
pub use verify::{peer_identity, IdentityError};

use crate::identity::Identity;

/// The only cipher suites HBONE negotiates: TLS 1.3 AES-GCM.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    let mut p = default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
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
