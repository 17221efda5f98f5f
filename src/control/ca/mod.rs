//! Workload certificates: where they come from, and the per-identity cache the data plane
//! fetches through ([`crate::tls::CertSource`]).

pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::identity::Identity;
use crate::tls::{CertSource, FetchError, FetchFuture, WorkloadCert};

pub use local::{LocalCa, LocalCaError};

/// Something that issues a fresh certificate for an identity.
pub trait Issuer: Send + Sync + 'static {
    /// Issues a certificate for `identity`.
    fn issue(&self, identity: &Identity) -> FetchFuture;
}

/// Caches one certificate per identity and renews it once past its half-life.
pub struct CertCache<I> {
    issuer: I,
    // Lock held only to read or replace an entry; never across the issue call.
    certs: Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
}

impl<I: Issuer> CertCache<I> {
    /// An empty cache in front of `issuer`.
    pub fn new(issuer: I) -> Arc<Self> {
        Arc::new(CertCache {
            issuer,
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// Identities with a cached certificate, with their certificates.
    pub fn snapshot(&self) -> Vec<Arc<WorkloadCert>> {
        self.certs.lock().values().cloned().collect()
    }

    /// Drops the certificate of an identity no local workload uses any more.
    pub fn forget(&self, identity: &Identity) {
        self.certs.lock().remove(identity);
    }
}

impl<I: Issuer> CertSource for Arc<CertCache<I>> {
    fn fetch(&self, identity: &Identity) -> FetchFuture {
        let now = SystemTime::now();
        if let Some(c) = self.certs.lock().get(identity) {
            if c.refresh_at() > now {
                return Box::pin(std::future::ready(Ok(c.clone())));
            }
        }
        let this = self.clone();
        let identity = identity.clone();
        Box::pin(async move {
            match this.issuer.issue(&identity).await {
                Ok(cert) => {
                    this.certs.lock().insert(identity, cert.clone());
                    Ok(cert)
                }
                Err(e) => {
                    // A still-valid certificate keeps serving while renewal fails.
                    if let Some(c) = this.certs.lock().get(&identity) {
                        if c.not_after() > SystemTime::now() {
                            tracing::warn!(%identity, error = %e, "certificate renewal failed, serving the current one");
                            return Ok(c.clone());
                        }
                    }
                    Err(e)
                }
            }
        })
    }
}

/// Converts an issuer failure into the data plane's error.
pub(crate) fn unavailable(identity: &Identity, reason: impl std::fmt::Display) -> FetchError {
    FetchError::Unavailable {
        identity: identity.clone(),
        reason: reason.to_string().into(),
    }
}
