//! Opening the ADS stream over a control-plane channel ([`crate::control::grpc`]): a fresh
//! channel per connection, so rotated roots and tokens are picked up, plus the request
//! metadata (`authorization`, `clusterid`, `XDS_HEADER_*`).
//!
//! The [`Transport`] trait is the seam tests use to drive the client without a network.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;

use super::proto::{
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use super::{ClientConfig, Error};
use crate::config::AuthToken;
use crate::control::grpc::{self, ChannelConfig};

/// Requests the client sends on a stream.
pub(crate) type RequestStream = ReceiverStream<DeltaDiscoveryRequest>;
/// Responses the server sends on a stream.
pub(crate) type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;
/// The future of [`Transport::open`].
pub(crate) type OpenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ResponseStream, Error>> + Send + 'a>>;

/// Opens one ADS stream carrying `requests`.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Connects and starts the stream. [`Error::Connect`] means the connection itself failed.
    fn open(&self, requests: RequestStream) -> OpenFuture<'_>;
}

/// TCP connect plus TLS handshake deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for the server to accept the stream (not for the stream's life).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted (a full mesh in one response can be large).
const MAX_MESSAGE: usize = 200 << 20;

/// The production transport: gRPC over TLS (or plaintext for `http://` addresses).
pub(crate) struct GrpcTransport {
    channel: ChannelConfig,
    auth_token: AuthToken,
    metadata: MetadataMap,
}

impl GrpcTransport {
    /// Validates the address and headers once; roots and token are read per connection.
    pub(crate) fn new(config: &ClientConfig) -> Result<GrpcTransport, Error> {
        let channel = ChannelConfig {
            address: config.address.to_string(),
            roots: config.root_cert.clone(),
            alt_hostname: config.alt_hostname.clone(),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: OPEN_TIMEOUT,
        };
        // Fail early on an unusable address.
        grpc::channel(&channel)?;
        Ok(GrpcTransport {
            channel,
            auth_token: config.auth_token.clone(),
            metadata: grpc::static_metadata(&config.cluster_id, &config.headers)?,
        })
    }
}

impl Transport for GrpcTransport {
    fn open(&self, requests: RequestStream) -> OpenFuture<'_> {
        Box::pin(async move {
            let channel = grpc::channel(&self.channel)?;
            let mut req = tonic::Request::new(requests);
            let md = req.metadata_mut();
            for kv in self.metadata.iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    md.insert(k.clone(), v.clone());
                }
            }
            if let Some(token) = grpc::bearer_token(&self.auth_token)? {
                md.insert("authorization", token);
            }
            let response = AggregatedDiscoveryServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .delta_aggregated_resources(req)
                .await
                .map_err(|s| match is_connect_failure(&s) {
                    true => Error::Connect(Box::new(s)),
                    false => Error::Status(Box::new(s)),
                })?;
            let stream: ResponseStream = Box::pin(response.into_inner());
            Ok(stream)
        })
    }
}

/// Whether the stream failed because no connection could be made (TCP, TLS or HTTP/2 setup).
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}
