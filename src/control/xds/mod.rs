//! The xDS client: one delta ADS stream (`DeltaAggregatedResources`) to istiod or
//! `ztun control-plane`, feeding workloads, services and policies into `state`.
//!
//! Protocol (compat.md §2.2): over TLS to `XDS_ADDRESS`, verified with `XDS_ROOT_CA` (re-read
//! on every connection) and `ALT_XDS_HOSTNAME`; headers `authorization: Bearer <token>` (the
//! token re-read per connection) + `clusterid` + `XDS_HEADER_*`; wildcard subscriptions to
//! `istio.workload.Address` then `istio.security.Authorization`. Each response is applied as
//! one state generation ([`Applier`]) and answered by exactly one ACK or NACK; a resource that
//! fails validation ([`translate`]) is NACKed by name while the rest applies. Disconnects keep
//! the last good state and reconnect with capped, jittered exponential backoff, resuming with
//! `initial_resource_versions`. With `XDS_ON_DEMAND` the client subscribes to no addresses and
//! fetches them by key through a [`Demander`].
//!
//! Allowed imports: `config`, `state`. The generated [`proto`] types are used here and by the
//! built-in control plane (`controlplane/`) only; nothing else sees them.

mod apply;
mod client;
mod metrics;
pub mod proto;
pub mod translate;
mod transport;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::config::{AuthToken, Config, RootCert};
use proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

#[cfg(any(test, feature = "testing"))]
pub(crate) use apply::decode_reusing;
pub use apply::{Applied, Applier, RejectReason, Rejection};
pub use client::{Client, Demander};
pub use metrics::{TerminationReason, XdsMetrics};

/// Type URL of address resources (workloads and services).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of authorization policy resources.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// How long [`Demander::demand`] waits for the control plane to answer, by default.
pub const DEFAULT_DEMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The responses of a stream opened with [`open_stream`].
pub type Responses =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

/// Opens one ADS stream the way [`Client`] does (TLS verified against the configured roots,
/// bearer token, `clusterid`, `XDS_HEADER_*`; each response read into a buffer of its own)
/// and leaves both directions to the caller: nothing is applied to any state. For load
/// generators that speak the protocol themselves (`ztun-lab control-plane-bench`).
pub async fn open_stream(
    config: &ClientConfig,
    requests: ReceiverStream<DeltaDiscoveryRequest>,
) -> Result<Responses, Error> {
    use transport::Transport as _;
    transport::GrpcTransport::new(config)?.open(requests).await
}

/// The two resource types ztun consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `istio.workload.Address`: workloads and services.
    Address,
    /// `istio.security.Authorization`: L4 policies.
    Authorization,
}

impl ResourceType {
    /// Both types, in subscription order (addresses first, as ztunnel).
    pub const ALL: [ResourceType; 2] = [ResourceType::Address, ResourceType::Authorization];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Address => ADDRESS_TYPE,
            ResourceType::Authorization => AUTHORIZATION_TYPE,
        }
    }

    /// The type with this URL, if it is one of ours.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        match url {
            ADDRESS_TYPE => Some(ResourceType::Address),
            AUTHORIZATION_TYPE => Some(ResourceType::Authorization),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Everything the client needs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server, `https://host:port` (or `http://` for a plaintext test server).
    pub address: http::Uri,
    /// Roots that verify the server's certificate.
    pub root_cert: RootCert,
    /// A name accepted in the server's certificate when the URI host does not match.
    pub alt_hostname: Option<String>,
    /// Bearer token source; with none, neither `authorization` nor `clusterid` is sent.
    pub auth_token: AuthToken,
    /// Value of the `clusterid` header.
    pub cluster_id: String,
    /// Extra gRPC metadata (`XDS_HEADER_*`), lowercase names.
    pub headers: BTreeMap<String, String>,
    /// Node id: `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`.
    pub node_id: String,
    /// Node metadata: `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, then every proxy
    /// metadata entry (which wins on a clash).
    pub node_metadata: BTreeMap<String, String>,
    /// JSON-valued node metadata (`ISTIO_METAJSON_<K>`).
    pub node_metadata_json: BTreeMap<String, serde_json::Value>,
    /// Subscribe to no addresses; fetch them by key on demand.
    pub on_demand: bool,
    /// How long an on-demand request waits for its answer.
    pub demand_timeout: Duration,
}

impl ClientConfig {
    /// The client settings of `config`, or `None` when the xDS client is disabled
    /// (`XDS_ADDRESS=""`).
    pub fn from_config(config: &Config) -> Result<Option<ClientConfig>, Error> {
        let Some(address) = &config.xds.address else {
            return Ok(None);
        };
        let address = address
            .parse::<http::Uri>()
            .map_err(|_| Error::Address(address.clone()))?;
        let id = &config.identity;
        let ip = id.instance_ip.to_string();
        let node_id = format!(
            "ztunnel~{ip}~{}.{ns}~{ns}.svc.cluster.local",
            id.pod_name,
            ns = id.pod_namespace
        );
        let mut node_metadata = BTreeMap::from([
            ("NAME".to_owned(), id.pod_name.clone()),
            ("NAMESPACE".to_owned(), id.pod_namespace.clone()),
            ("INSTANCE_IPS".to_owned(), ip),
            (
                "NODE_NAME".to_owned(),
                config.node_name.clone().unwrap_or_default(),
            ),
        ]);
        node_metadata.extend(config.proxy_metadata.clone());
        Ok(Some(ClientConfig {
            address,
            root_cert: config.xds.root_ca.clone(),
            alt_hostname: config.xds.alt_hostname.clone(),
            auth_token: config.auth_token.clone(),
            cluster_id: config.cluster_id.clone(),
            headers: config.xds.headers.clone(),
            node_id,
            node_metadata,
            node_metadata_json: config.proxy_metadata_json.clone(),
            on_demand: config.xds.on_demand,
            demand_timeout: DEFAULT_DEMAND_TIMEOUT,
        }))
    }
}

/// Why the xDS client cannot connect or its stream ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `XDS_ADDRESS` is not a usable URI.
    #[error("invalid xDS address {0:?}")]
    Address(String),
    /// The channel cannot be set up: address, roots, token or headers.
    #[error("xDS channel: {0}")]
    Channel(#[from] crate::control::grpc::ChannelError),
    /// No connection could be made (TCP, TLS or HTTP/2 setup).
    #[error("connecting: {0}")]
    Connect(Box<tonic::Status>),
    /// The server answered the stream with a gRPC error status.
    #[error("xDS stream: {0}")]
    Status(Box<tonic::Status>),
    /// The outbound half of the stream closed while the client still had a request to send.
    #[error("xDS request stream closed")]
    RequestStreamClosed,
}
