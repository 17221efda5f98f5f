//! The `AggregatedDiscoveryService` route of the control plane's server, by hand rather than
//! tonic's generated server: requests decoded with tonic's `Streaming` (prost), each stream
//! handed to [`Ads`], its responses framed by [`super::wire`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::Status;

use super::ads::{Ads, PeerAddr};
use crate::control::xds::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

/// The gRPC method served; every other path of the service is `UNIMPLEMENTED`.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The `AggregatedDiscoveryService` route of the control plane's server.
#[derive(Clone)]
pub struct AdsServer {
    ads: Ads,
    max_request: usize,
}

impl AdsServer {
    /// Serves `ads`, refusing requests larger than `max_request` bytes.
    pub fn new(ads: Ads, max_request: usize) -> AdsServer {
        AdsServer { ads, max_request }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != DELTA_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let peer = request.extensions().get::<PeerAddr>().copied();
        let (parts, body) = request.into_parts();
        let mut codec =
            tonic_prost::ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default();
        let requests = Streaming::new_request(codec.decoder(), body, None, Some(self.max_request));
        let opened = self.ads.open(&parts.headers, peer, requests);
        Box::pin(async move {
            Ok(match opened {
                Ok(body) => {
                    let mut response = http::Response::new(tonic::body::Body::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}
