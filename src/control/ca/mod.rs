//! Workload certificates: where they come from ([`Issuer`]: the Istio CA client, or a CA held
//! on the node), and the per-identity store the data plane fetches through
//! ([`crate::tls::CertSource`]), which keeps them renewed.
//!
//! Allowed imports: `identity`, `tls`, `config`, `state`; the generated CA protocol stays in
//! here and in `controlplane` (the server side).

pub mod client;
pub mod local;
mod metrics;
pub mod snapshot;
mod state;
mod store;
mod worker;

use crate::identity::Identity;
use crate::tls::{FetchError, FetchFuture};

pub use client::{CaClient, CaClientConfig, CaError};
pub use local::{LocalCa, LocalCaError};
pub use snapshot::{CertInfo, CertSnapshot};
pub use state::CertState;
pub use store::{CertStore, CertSummary, Clock, Priority, StoreConfig};

/// The Istio CA protocol (`proto/citadel.proto`), generated.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod proto {
    tonic::include_proto!("istio.v1.auth");
}

/// The key of the request metadata entry that names the identity a node asks for on behalf
/// of a workload (shared mode).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Something that issues a fresh certificate for an identity.
pub trait Issuer: Send + Sync + 'static {
    /// Issues a certificate for `identity`.
    fn issue(&self, identity: &Identity) -> FetchFuture;
}

/// Converts an issuer failure into the data plane's error.
pub(crate) fn unavailable(identity: &Identity, reason: impl std::fmt::Display) -> FetchError {
    FetchError::Unavailable {
        identity: identity.clone(),
        reason: reason.to_string().into(),
    }
}
