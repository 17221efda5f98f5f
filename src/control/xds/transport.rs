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
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
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

/// The gRPC messages of the ADS response body. A message's resources are decoded as each one
/// arrives, while the rest of the message is still on its way (a full mesh's first response
/// is tens of MB: decoding it after the last byte would add the whole transfer to the time to
/// ready); its other fields are kept encoded and decoded once it is complete. The buffer holds
/// only what is not decoded yet, so a large message never sits whole in memory next to its
/// decoded form, and a buffer grown for a large field is not kept once it is decoded (tonic's
/// decoder keeps one buffer for the stream's life, grown to its largest message). Same errors
/// as tonic's: a body error becomes its status, the trailers' `grpc-status` ends the stream (an
/// error unless OK), and a body ending without one is an error mapped from the HTTP status as
/// gRPC maps it.
pub(crate) struct Messages<B> {
    body: B,
    status: http::StatusCode,
    buf: BytesMut,
    max: usize,
    done: bool,
    /// The message being read, once its gRPC header has been.
    current: Option<Partial>,
}

/// A message being read: the resources decoded so far and its other fields as encoded.
#[derive(Default)]
struct Partial {
    /// Bytes of the message not read yet.
    remaining: usize,
    resources: Vec<Resource>,
    /// Every field but the resources decoded so far, as encoded.
    rest: Vec<u8>,
    /// Set at a field that cannot be delimited without decoding it (a group): from there on,
    /// the message's bytes are kept as they are and decoded at its end.
    whole: bool,
}

/// `DeltaDiscoveryResponse.resources`: field 2, length-delimited.
const RESOURCES_KEY: u64 = 2 << 3 | 2;

impl<B> Messages<B> {
    pub(crate) fn new(body: B, status: http::StatusCode, max: usize) -> Messages<B> {
        Messages {
            body,
            status,
            buf: BytesMut::new(),
            max,
            done: false,
            current: None,
        }
    }

    /// The next message, once the buffer completes it; decodes what has arrived meanwhile.
    fn decode(&mut self) -> Result<Option<DeltaDiscoveryResponse>, tonic::Status> {
        const HEADER: usize = 5;
        if self.current.is_none() {
            if self.buf.len() < HEADER {
                return Ok(None);
            }
            if self.buf[0] != 0 {
                return Err(tonic::Status::internal(
                    "protocol error: compressed ADS message, but no compression was negotiated",
                ));
            }
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > self.max {
                return Err(tonic::Status::out_of_range(format!(
                    "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                    self.max
                )));
            }
            self.buf.advance(HEADER);
            self.current = Some(Partial {
                remaining: len,
                ..Default::default()
            });
        }
        let partial = self.current.as_mut().expect("set above");
        while partial.remaining > 0 {
            let here = &self.buf[..self.buf.len().min(partial.remaining)];
            if partial.whole {
                partial.rest.extend_from_slice(here);
                let n = here.len();
                partial.remaining -= n;
                self.buf.advance(n);
                if partial.remaining > 0 {
                    return Ok(None);
                }
                break;
            }
            let field = field_at(here).map_err(malformed)?;
            match field {
                Field::Complete { len, body_at } => {
                    if len > partial.remaining {
                        return Err(malformed("a field runs past the end of the message"));
                    }
                    if self.buf.len() < len {
                        // Room for the whole field at once, instead of doubling as frames come.
                        self.buf.reserve(len - self.buf.len());
                        return Ok(None);
                    }
                    let bytes = &self.buf[..len];
                    match body_at {
                        Some(at) => partial.resources.push(
                            <Resource as prost::Message>::decode(&bytes[at..])
                                .map_err(decode_error)?,
                        ),
                        None => partial.rest.extend_from_slice(bytes),
                    }
                    partial.remaining -= len;
                    self.buf.advance(len);
                }
                Field::Group => partial.whole = true,
                Field::Incomplete if here.len() < partial.remaining => return Ok(None),
                Field::Incomplete => return Err(malformed("the message ends inside a field")),
            }
        }
        let mut done = self.current.take().expect("set above");
        let mut message = <DeltaDiscoveryResponse as prost::Message>::decode(done.rest.as_slice())
            .map_err(decode_error)?;
        done.resources.append(&mut message.resources);
        message.resources = done.resources;
        if self.buf.capacity() > KEEP_BUFFER {
            // What follows this message (usually nothing) moves to a buffer of its size.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        Ok(Some(message))
    }
}

fn decode_error(e: prost::DecodeError) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

/// A message whose fields cannot be delimited, said as prost says a decode error.
fn malformed(why: &str) -> tonic::Status {
    tonic::Status::internal(format!("failed to decode Protobuf message: {why}"))
}

/// The protobuf field at the start of a message's bytes.
enum Field {
    /// `len` bytes in all; `body_at` is where a resource's own bytes start, for a resource.
    Complete { len: usize, body_at: Option<usize> },
    /// The bytes end before the field's length is known.
    Incomplete,
    /// A group: delimited only by decoding it.
    Group,
}

fn field_at(b: &[u8]) -> Result<Field, &'static str> {
    let Some((key, key_len)) = varint(b)? else {
        return Ok(Field::Incomplete);
    };
    let len = match key & 7 {
        0 => match varint(&b[key_len..])? {
            Some((_, n)) => key_len + n,
            None => return Ok(Field::Incomplete),
        },
        1 => key_len + 8,
        5 => key_len + 4,
        2 => match varint(&b[key_len..])? {
            Some((body, n)) => {
                let len = usize::try_from(body)
                    .ok()
                    .and_then(|body| (key_len + n).checked_add(body))
                    .ok_or("field length overflows")?;
                let body_at = (key == RESOURCES_KEY).then_some(key_len + n);
                return Ok(Field::Complete { len, body_at });
            }
            None => return Ok(Field::Incomplete),
        },
        3 | 4 => return Ok(Field::Group),
        _ => return Err("invalid wire type"),
    };
    Ok(Field::Complete { len, body_at: None })
}

/// The varint at the start of `b` and its length; `None` when `b` ends inside it.
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, &'static str> {
    let mut value = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    match b.len() {
        n if n >= 10 => Err("invalid varint"),
        _ => Ok(None),
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
            // A message cut short: bytes of it left over, or fields of it already decoded
            // (cut at a field's end, the buffer is empty).
            if status.is_none() && (!self.buf.is_empty() || self.current.is_some()) {
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

    fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
        prost::encoding::encode_varint(field << 3 | wire, out);
    }

    /// A response whose resources are interleaved with its other fields and with fields this
    /// client does not know (varint, fixed64, fixed32, and from `group` on, a group), as a
    /// server may send them; and the message prost decodes from it whole.
    fn unusual_response(resources: usize, group: bool) -> (Vec<u8>, DeltaDiscoveryResponse) {
        let resource = |i: usize| Resource {
            name: format!("r{i}"),
            version: format!("v{i}"),
            resource: Some(prost_types::Any {
                type_url: "t".into(),
                value: vec![i as u8; i % 40],
            }),
            ..Default::default()
        };
        let mut b = Vec::new();
        for i in 0..resources {
            match i % 5 {
                0 => {
                    key(99, 0, &mut b);
                    prost::encoding::encode_varint(1 << 40 | i as u64, &mut b);
                }
                1 => {
                    key(98, 1, &mut b);
                    b.extend_from_slice(&(i as u64).to_le_bytes());
                }
                2 => {
                    key(97, 5, &mut b);
                    b.extend_from_slice(&(i as u32).to_le_bytes());
                }
                3 => DeltaDiscoveryResponse {
                    nonce: format!("n{i}"),
                    removed_resources: vec![format!("gone-{i}")],
                    ..Default::default()
                }
                .encode(&mut b)
                .unwrap(),
                _ => {}
            }
            if group && i == resources / 2 {
                key(96, 3, &mut b);
                key(1, 0, &mut b);
                b.push(7);
                key(96, 4, &mut b);
            }
            DeltaDiscoveryResponse {
                resources: vec![resource(i)],
                ..Default::default()
            }
            .encode(&mut b)
            .unwrap();
        }
        DeltaDiscoveryResponse {
            type_url: "type.example/T".into(),
            system_version_info: "sv".into(),
            ..Default::default()
        }
        .encode(&mut b)
        .unwrap();
        let whole = DeltaDiscoveryResponse::decode(b.as_slice()).unwrap();
        assert_eq!(whole.resources.len(), resources);
        let mut out = vec![0];
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(&b);
        (out, whole)
    }

    #[tokio::test]
    async fn a_message_read_field_by_field_decodes_as_it_does_whole() {
        for group in [false, true] {
            let (wire, whole) = unusual_response(60, group);
            // Every frame size from one byte up: each field is cut at every point.
            for size in 1..=41 {
                let frames = wire
                    .chunks(size)
                    .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                    .chain([trailers("0")])
                    .collect();
                let mut messages = Messages::new(body(frames), http::StatusCode::OK, MAX_MESSAGE);
                let got = messages.next().await.unwrap().unwrap();
                assert_eq!(got, whole, "frames of {size} bytes, group {group}");
                assert!(messages.next().await.is_none());
            }
        }
    }

    #[tokio::test]
    async fn resources_are_decoded_while_the_rest_of_the_message_is_on_its_way() {
        let (wire, whole) = unusual_response(2_000, false);
        let half = wire.len() / 2;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1 << 12);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut messages = Messages::new(body, http::StatusCode::OK, MAX_MESSAGE);
        for c in wire[..half].chunks(1 << 10) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(c))))
                .await
                .unwrap();
        }
        // Half the message is in: nothing to return yet, but its first resources are
        // decoded and their bytes are no longer held.
        // One poll reads every frame already there, then waits for more.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut messages).poll_next(cx))).await;
        assert!(polled.is_pending(), "a message returned before its end");
        let partial = messages.current.as_ref().expect("a message is being read");
        assert!(
            partial.resources.len() > 900,
            "{} of 2 000 resources decoded at half the message",
            partial.resources.len()
        );
        assert!(
            messages.buf.len() < 1 << 10,
            "{} bytes held",
            messages.buf.len()
        );
        for c in wire[half..].chunks(1 << 10) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(c))))
                .await
                .unwrap();
        }
        tx.send(Ok(trailers("0"))).await.unwrap();
        drop(tx);
        assert_eq!(messages.next().await.unwrap().unwrap(), whole);
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
        // Cut right after a whole resource: nothing is left in the buffer, the message is
        // still incomplete.
        let (wire, _) = unusual_response(3, false);
        let first = wire
            .iter()
            .enumerate()
            .skip(5)
            .find_map(|(at, b)| (u64::from(*b) == RESOURCES_KEY).then_some(at))
            .expect("a resource field");
        let resource_len = usize::from(wire[first + 1]) + 2;
        let cut = wire[..first + resource_len].to_vec();
        let cut_at_a_field = error(
            vec![Frame::data(Bytes::from(cut)), trailers("0")],
            http::StatusCode::OK,
        )
        .await;
        assert_eq!(cut_at_a_field.code(), tonic::Code::Internal);
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
