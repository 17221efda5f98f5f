//! The Istio CA client: `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS
//! (compat.md §2.3).
//!
//! Each request carries a CSR for a fresh EC P-256 key (empty subject, one critical URI SAN
//! with the identity), the requested lifetime (`SECRET_TTL`), and in shared mode the
//! `ImpersonatedIdentity` metadata; headers are `authorization: Bearer <token>` (the token file
//! is re-read for every request), `clusterid` and the `CA_HEADER_*` extras.
//!
//! The response is checked before use, failing closed: element 0 is the leaf (which must carry
//! exactly the requested identity), the last element is the root bundle (every certificate in
//! it becomes a trust anchor), the elements between are intermediates, and the leaf must chain
//! to the bundle through them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use super::proto::IstioCertificateRequest;
use super::{unavailable, Issuer, IMPERSONATED_IDENTITY};
use crate::config::{AuthToken, Config, ProxyMode, RootCert};
use crate::control::grpc::{self, ChannelConfig, ChannelError};
use crate::identity::Identity;
use crate::tls::{parse_pem_certs, CertError, FetchFuture, Revocation, WorkloadCert};

/// Why the CA did not give us a usable certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    /// The channel or request metadata cannot be set up.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The CSR cannot be built.
    #[error("building the CSR: {0}")]
    Csr(Arc<str>),
    /// The CA answered with an error (or could not be reached).
    #[error("CA request failed: {code:?}: {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: Arc<str>,
    },
    /// The response holds no certificate at all.
    #[error("CA returned an empty certificate chain")]
    EmptyChain,
    /// The response holds a leaf but no root bundle.
    #[error("CA response has no root bundle (only {0} element)")]
    NoRootBundle(usize),
    /// An element of the response is not PEM certificates, or the key/roots are unusable.
    #[error("CA response: {0}")]
    Invalid(#[from] CertError),
    /// The leaf does not chain to the root bundle through the intermediates.
    #[error("CA response: leaf does not chain to the returned roots: {0}")]
    Untrusted(Arc<str>),
}

/// Settings of the CA client, from the process configuration.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// The channel to the CA (`CA_ADDRESS`, `CA_ROOT_CA`, `ALT_CA_HOSTNAME`).
    pub channel: ChannelConfig,
    /// `AUTH_TOKEN`.
    pub token: AuthToken,
    /// `clusterid` header value.
    pub cluster_id: String,
    /// `CA_HEADER_*` extras.
    pub headers: BTreeMap<String, String>,
    /// Requested lifetime (`SECRET_TTL`).
    pub ttl: Duration,
    /// Send `ImpersonatedIdentity` (shared mode: the node asks on behalf of workloads).
    pub impersonate: bool,
    /// The CRLs the issued certificates check peers against (`CRL_PATH`; set by the app).
    pub revocation: Revocation,
}

impl CaClientConfig {
    /// The CA client settings of `config`, or `None` when `CA_ADDRESS` is disabled.
    pub fn from_config(config: &Config) -> Option<CaClientConfig> {
        let address = config.ca.address.clone()?;
        Some(CaClientConfig {
            channel: ChannelConfig {
                address,
                roots: config.ca.root_ca.clone(),
                alt_hostname: config.ca.alt_hostname.clone(),
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
            },
            token: config.auth_token.clone(),
            cluster_id: config.cluster_id.clone(),
            headers: config.ca.headers.clone(),
            ttl: config.ca.secret_ttl,
            impersonate: config.proxy_mode == ProxyMode::Shared,
            revocation: Revocation::disabled(),
        })
    }

    /// A configuration for `address` verified with `roots`, with defaults for the rest
    /// (shared mode, 24 h, cluster `Kubernetes`, no token).
    pub fn new(address: impl Into<String>, roots: RootCert) -> CaClientConfig {
        CaClientConfig {
            channel: ChannelConfig {
                address: address.into(),
                roots,
                alt_hostname: None,
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
            },
            token: AuthToken::None,
            cluster_id: "Kubernetes".into(),
            headers: BTreeMap::new(),
            ttl: Duration::from_secs(24 * 3600),
            impersonate: true,
            revocation: Revocation::disabled(),
        }
    }
}

/// A client of the Istio CA. Cheap to clone; connects on first use.
#[derive(Clone)]
pub struct CaClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    grpc: IstioCertificateServiceClient<Channel>,
    metadata: MetadataMap,
    token: AuthToken,
    ttl_seconds: i64,
    impersonate: bool,
    revocation: Revocation,
}

impl CaClient {
    /// A client for `config`. Fails only on unusable settings (address, header names); the
    /// CA itself is first contacted by a request.
    pub fn new(config: &CaClientConfig) -> Result<CaClient, CaError> {
        let channel = grpc::channel(&config.channel)?;
        let metadata = grpc::static_metadata(&config.cluster_id, &config.headers)?;
        Ok(CaClient {
            inner: Arc::new(ClientInner {
                grpc: IstioCertificateServiceClient::new(channel),
                metadata,
                token: config.token.clone(),
                ttl_seconds: i64::try_from(config.ttl.as_secs()).unwrap_or(i64::MAX),
                impersonate: config.impersonate,
                revocation: config.revocation.clone(),
            }),
        })
    }

    /// Asks the CA for a certificate for `identity` and checks the answer.
    pub async fn request(&self, identity: &Identity) -> Result<WorkloadCert, CaError> {
        let (csr, key) = csr_for(identity)?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self.inner.ttl_seconds,
            metadata: self
                .inner
                .impersonate
                .then(|| impersonation_metadata(identity)),
        });
        *request.metadata_mut() = self.inner.metadata.clone();
        if let Some(bearer) = grpc::bearer_token(&self.inner.token)? {
            request.metadata_mut().insert("authorization", bearer);
        }
        let response = self
            .inner
            .grpc
            .clone()
            .create_certificate(request)
            .await
            .map_err(|s| CaError::Rpc {
                code: s.code(),
                message: s.message().into(),
            })?
            .into_inner();
        certificate_from_chain(identity, &response.cert_chain, key, &self.inner.revocation)
    }
}

impl Issuer for CaClient {
    fn issue(&self, identity: &Identity) -> FetchFuture {
        let this = self.clone();
        let identity = identity.clone();
        Box::pin(async move {
            this.request(&identity)
                .await
                .map(Arc::new)
                .map_err(|e| unavailable(&identity, e))
        })
    }
}

/// A PEM CSR for `identity` and its fresh private key.
pub fn csr_for(identity: &Identity) -> Result<(String, PrivateKeyDer<'static>), CaError> {
    let csr_err = |e: rcgen::Error| CaError::Csr(e.to_string().into());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = CertificateParams::default();
    // Empty subject: the SAN extension is then marked critical (RFC 5280 §4.2.1.6).
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(csr_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(csr_err)?;
    let pem = csr.pem().map_err(csr_err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((pem, key))
}

/// `{"ImpersonatedIdentity": "<identity>"}`.
fn impersonation_metadata(identity: &Identity) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
    };
    prost_types::Struct {
        fields: [(IMPERSONATED_IDENTITY.to_string(), value)].into(),
    }
}

/// Builds the workload certificate from a CA response chain (see the module doc) and the
/// CSR's key.
pub fn certificate_from_chain(
    identity: &Identity,
    cert_chain: &[String],
    key: PrivateKeyDer<'static>,
    revocation: &Revocation,
) -> Result<WorkloadCert, CaError> {
    let (first, rest) = cert_chain.split_first().ok_or(CaError::EmptyChain)?;
    let (bundle, middle) = rest
        .split_last()
        .ok_or(CaError::NoRootBundle(cert_chain.len()))?;
    // Element 0 may carry intermediates after the leaf; accept them in order.
    let mut chain = parse_pem_certs(first.as_bytes())?;
    for element in middle {
        chain.extend(parse_pem_certs(element.as_bytes())?);
    }
    let roots = parse_pem_certs(bundle.as_bytes())?;
    check_chains_to(&chain, &roots)?;
    WorkloadCert::new(identity.clone(), chain, key, roots, revocation).map_err(CaError::Invalid)
}

/// The leaf must be valid now and chain to one of `roots` (for both TLS client and server
/// use): a certificate that fails here would fail every handshake.
fn check_chains_to(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), CaError> {
    let untrusted = |e: &dyn std::fmt::Debug| CaError::Untrusted(format!("{e:?}").into());
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| untrusted(&e)))
        .collect::<Result<_, _>>()?;
    let (leaf, intermediates) = chain.split_first().ok_or(CaError::EmptyChain)?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| untrusted(&e))?;
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            algs,
            &anchors,
            intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| untrusted(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
