//! Opening the ADS stream over a control-plane channel ([`crate::control::grpc`]): a fresh
//! channel per connection, so rotated roots and tokens are picked up, plus the request
//! metadata (`authorization`, `clusterid`, `XDS_HEADER_*`).
//!
//! The [`Transport`] trait is the seam tests use to drive the client without a network.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use parking_lot::Mutex;

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
            // tonic sends the requests and checks the response head; the body is read by
            // `Messages` (see there why not by tonic's own decoder).
            let tap = Tap {
                channel,
                body: Arc::default(),
            };
            let taken = tap.body.clone();
            AggregatedDiscoveryServiceClient::new(tap)
                .max_decoding_message_size(MAX_MESSAGE)
                .delta_aggregated_resources(req)
                .await
                .map_err(|s| match is_connect_failure(&s) {
                    true => Error::Connect(Box::new(s)),
                    false => Error::Status(Box::new(s)),
                })?;
            let Some((head, body)) = taken.lock().take() else {
                return Err(Error::Status(Box::new(tonic::Status::internal(
                    "the ADS response has no body",
                ))));
            };
            if tonic::Status::from_header_map(&head.headers).is_some() {
                // A trailers-only response (its status OK: tonic fails the others): no messages.
                let stream: ResponseStream = Box::pin(tokio_stream::empty());
                return Ok(stream);
            }
            let stream: ResponseStream = Box::pin(Messages::new(body, head.status, MAX_MESSAGE));
            Ok(stream)
        })
    }
}

/// The channel, handing tonic an empty response body and keeping the real one (with the
/// response head) for [`Messages`].
#[derive(Clone)]
struct Tap {
    channel: tonic::transport::Channel,
    body: Arc<Mutex<Option<(http::response::Parts, tonic::body::Body)>>>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Tap {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let response = self.channel.call(request);
        let slot = self.body.clone();
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            *slot.lock() = Some((parts.clone(), body));
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::empty(),
            ))
        })
    }
}

/// A response buffer above this is not kept once its message is decoded.
const KEEP_BUFFER: usize = 64 << 10;

/// The gRPC messages of the ADS response body, each decoded from a buffer sized for it that
/// is freed once it is decoded. tonic's decoder keeps one buffer for the stream's life,
/// grown to its largest message: after a full mesh's first response (17 MB at 50 000
/// workloads) those megabytes would stay resident for as long as the stream lasts. Same
/// errors as tonic's: a body error becomes its status, the trailers' `grpc-status` ends the
/// stream (an error unless OK), and a body ending without one is an error mapped from the
/// HTTP status as gRPC maps it.
pub(crate) struct Messages<B> {
    body: B,
    status: http::StatusCode,
    buf: BytesMut,
    max: usize,
    done: bool,
}

impl<B> Messages<B> {
    pub(crate) fn new(body: B, status: http::StatusCode, max: usize) -> Messages<B> {
        Messages {
            body,
            status,
            buf: BytesMut::new(),
            max,
            done: false,
        }
    }

    /// The next complete message in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<DeltaDiscoveryResponse>, tonic::Status> {
        const HEADER: usize = 5;
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(tonic::Status::internal(
                "protocol error: compressed ADS message, but no compression was negotiated",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(tonic::Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max
            )));
        }
        if self.buf.len() < HEADER + len {
            // Room for the whole message at once, instead of doubling as frames arrive.
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        let message =
            <DeltaDiscoveryResponse as prost::Message>::decode(&self.buf[HEADER..HEADER + len])
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.buf.advance(HEADER + len);
        if self.buf.capacity() > KEEP_BUFFER {
            // What follows this message (usually nothing) moves to a buffer of its size.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        Ok(Some(message))
    }
}

impl<B> Stream for Messages<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<DeltaDiscoveryResponse, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.decode() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            let ended = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        continue;
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => tonic::Status::from_header_map(&trailers),
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => Some(tonic::Status::from_error(e.into())),
                None => None,
            };
            self.done = true;
            let status = match ended {
                Some(status) if status.code() == tonic::Code::Ok => None,
                Some(status) => Some(status),
                None => Some(missing_status(self.status)),
            };
            if status.is_none() && !self.buf.is_empty() {
                return Poll::Ready(Some(Err(tonic::Status::internal(
                    "Unexpected EOF decoding stream.",
                ))));
            }
            return Poll::Ready(status.map(Err));
        }
    }
}

/// The status of a body that ended without `grpc-status`, from its HTTP status as gRPC maps
/// it (<https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>).
fn missing_status(http: http::StatusCode) -> tonic::Status {
    let code = match http {
        http::StatusCode::BAD_REQUEST => tonic::Code::Internal,
        http::StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => tonic::Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(
        code,
        format!("the ADS response ended without grpc-status (HTTP {http})"),
    )
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use prost::Message as _;
    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::control::xds::proto::Resource;

    type Frames = tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    fn framed(nonce: &str, payload: usize) -> Vec<u8> {
        let message = DeltaDiscoveryResponse {
            nonce: nonce.into(),
            resources: vec![Resource {
                name: "r".into(),
                resource: Some(prost_types::Any {
                    type_url: "t".into(),
                    value: vec![7; payload],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(&message);
        out
    }

    fn trailers(code: &str) -> Frame<Bytes> {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        Frame::trailers(t)
    }

    fn body(frames: Vec<Frame<Bytes>>) -> StreamBody<Frames> {
        StreamBody::new(tokio_stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn messages_are_decoded_across_frames_and_big_buffers_are_not_kept() {
        // A 2 MB message in 16 KiB frames, the last one also carrying the start of a small one.
        let mut wire = framed("big", 2 << 20);
        let big_end = wire.len();
        wire.extend(framed("small", 10));
        let mut frames: Vec<Frame<Bytes>> = wire[..big_end + 3]
            .chunks(16 << 10)
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        frames.push(Frame::data(Bytes::copy_from_slice(&wire[big_end + 3..])));
        frames.push(trailers("0"));
        let mut messages = Messages::new(body(frames), http::StatusCode::OK, MAX_MESSAGE);

        let big = messages.next().await.unwrap().unwrap();
        assert_eq!(big.nonce, "big");
        assert_eq!(
            big.resources[0].resource.as_ref().unwrap().value.len(),
            2 << 20
        );
        // The message's 2 MB buffer is gone once it is decoded; the next one's start is kept.
        assert!(
            messages.buf.capacity() <= KEEP_BUFFER,
            "{}",
            messages.buf.capacity()
        );
        assert_eq!(messages.buf.len(), 3);
        assert_eq!(messages.next().await.unwrap().unwrap().nonce, "small");
        assert!(messages.next().await.is_none());
        assert!(messages.next().await.is_none());
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_servers_status_or_one_mapped_from_http() {
        let error = |frames, http| async move {
            let mut messages = Messages::new(body(frames), http, MAX_MESSAGE);
            let status = messages.next().await.unwrap().unwrap_err();
            assert!(messages.next().await.is_none());
            status
        };
        let denied = error(vec![trailers("7")], http::StatusCode::OK).await;
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let no_status = error(vec![], http::StatusCode::OK).await;
        assert_eq!(no_status.code(), tonic::Code::Unknown);
        let unavailable = error(vec![], http::StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        // A message cut short, then a clean end: an error, not a silent end.
        let cut = framed("x", 100)[..50].to_vec();
        let truncated = error(
            vec![Frame::data(Bytes::from(cut)), trailers("0")],
            http::StatusCode::OK,
        )
        .await;
        assert_eq!(truncated.code(), tonic::Code::Internal);
        // Over the size limit, or compressed without negotiation: refused by the header.
        let mut messages = Messages::new(
            body(vec![Frame::data(Bytes::from(framed("x", 100)))]),
            http::StatusCode::OK,
            10,
        );
        let big = messages.next().await.unwrap().unwrap_err();
        assert_eq!(big.code(), tonic::Code::OutOfRange);
        let mut compressed = framed("x", 1);
        compressed[0] = 1;
        let status = error(
            vec![Frame::data(Bytes::from(compressed))],
            http::StatusCode::OK,
        )
        .await;
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
