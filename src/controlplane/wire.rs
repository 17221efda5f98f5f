//! Delta ADS on the wire, written by hand rather than by tonic's generated server: each
//! response is framed from the bytes the mesh generation encoded once per resource
//! ([`super::store::Entry::encoded`]), shared by every client, and written in chunks of at
//! most [`CHUNK`] bytes as HTTP/2 asks for them.
//!
//! Why not tonic's encoder: it encodes a whole message into one buffer per stream and keeps
//! that buffer, grown to the largest response (a full mesh, ~17 MB at 50 000 workloads +
//! 10 000 services), for the stream's life; with each client's resources cloned and encoded
//! per client besides, a synced client cost the control plane ~27 MB and ~0.25 s of CPU.
//! Here a client holds a response only while it is written, one chunk at a time (HTTP/2 flow
//! control paces the chunks), and the resources themselves are not copied until they go into
//! a chunk.
//!
//! Requests are decoded with tonic's `Streaming` (prost), as before; the response is a gRPC
//! stream like tonic's (`content-type: application/grpc`, length-prefixed uncompressed
//! messages, `grpc-status` in the trailers; a refused stream is a trailers-only response).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tokio::sync::mpsc;
use tonic::Status;

/// Largest chunk of response body handed to HTTP/2 at once (a resource larger than this is
/// handed over alone, without a copy).
pub const CHUNK: usize = 64 * 1024;

/// `DeltaDiscoveryResponse` field numbers (envoy's `discovery.proto`).
mod field {
    pub const SYSTEM_VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
    pub const REMOVED_RESOURCES: u32 = 6;
    /// `Resource.aliases`.
    pub const ALIASES: u32 = 4;
}

/// One response: its scalar fields and removals, encoded, and its resources as the mesh's
/// shared encodings.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// gRPC message prefix + `system_version_info`, `type_url`, `nonce`, `removed_resources`.
    head: Bytes,
    /// Encoded `Resource` messages.
    resources: Vec<Bytes>,
}

impl Response {
    /// Frames a response (fields left empty are omitted, as prost omits them).
    pub fn new(
        system_version_info: &str,
        type_url: &str,
        nonce: &str,
        removed: &[String],
        resources: Vec<Bytes>,
    ) -> Result<Response, Status> {
        let mut fields = BytesMut::new();
        for (tag, value) in [
            (field::SYSTEM_VERSION_INFO, system_version_info),
            (field::TYPE_URL, type_url),
            (field::NONCE, nonce),
        ] {
            if !value.is_empty() {
                put_bytes_field(tag, value.as_bytes(), &mut fields);
            }
        }
        for name in removed {
            put_bytes_field(field::REMOVED_RESOURCES, name.as_bytes(), &mut fields);
        }
        let len = fields.len()
            + resources
                .iter()
                .map(|r| bytes_field_len(field::RESOURCES, r.len()))
                .sum::<usize>();
        let len = u32::try_from(len).map_err(|_| {
            Status::resource_exhausted(format!("response of {len} bytes exceeds gRPC's limit"))
        })?;
        let mut head = BytesMut::with_capacity(5 + fields.len());
        head.put_u8(0); // not compressed
        head.put_u32(len);
        head.extend_from_slice(&fields);
        Ok(Response {
            head: head.freeze(),
            resources,
        })
    }

    /// Decodes the response (tests).
    #[cfg(test)]
    pub fn decode(&self) -> crate::control::xds::proto::DeltaDiscoveryResponse {
        use prost::Message as _;
        let mut all = Vec::new();
        let mut writer = Writer::new(self.clone());
        while let Some(chunk) = writer.next_chunk() {
            all.extend_from_slice(&chunk);
        }
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap()) as usize;
        assert_eq!(all.len(), 5 + len, "gRPC length prefix");
        crate::control::xds::proto::DeltaDiscoveryResponse::decode(&all[5..])
            .expect("a valid response")
    }
}

/// An encoded `Resource` with `alias` added to its `aliases` (a copy: on-demand clients ask
/// for few resources).
pub fn with_alias(resource: &Bytes, alias: &str) -> Bytes {
    let mut b =
        BytesMut::with_capacity(resource.len() + bytes_field_len(field::ALIASES, alias.len()));
    b.extend_from_slice(resource);
    put_bytes_field(field::ALIASES, alias.as_bytes(), &mut b);
    b.freeze()
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Cuts one response into body chunks.
struct Writer {
    head: Option<Bytes>,
    resources: std::vec::IntoIter<Bytes>,
    /// A resource larger than a chunk, handed over on its own after its field prefix.
    large: Option<Bytes>,
}

impl Writer {
    fn new(response: Response) -> Writer {
        Writer {
            head: Some(response.head),
            resources: response.resources.into_iter(),
            large: None,
        }
    }

    /// The next chunk, `None` when the response is written.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(large) = self.large.take() {
            return Some(large);
        }
        let mut buf = BytesMut::new();
        if let Some(head) = self.head.take() {
            buf.reserve(CHUNK.max(head.len()));
            buf.extend_from_slice(&head);
        }
        while let Some(next) = self.resources.as_slice().first() {
            let size = bytes_field_len(field::RESOURCES, next.len());
            if !buf.is_empty() && buf.len() + size > CHUNK {
                break;
            }
            let resource = self.resources.next().expect("first() was Some");
            if buf.capacity() == 0 {
                buf.reserve(CHUNK.min(size));
            }
            encode_key(field::RESOURCES, WireType::LengthDelimited, &mut buf);
            encode_varint(resource.len() as u64, &mut buf);
            if size > CHUNK {
                self.large = Some(resource);
                break;
            }
            buf.extend_from_slice(&resource);
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// The body of an ADS stream: the responses its session sends, then the stream's status.
pub struct ResponseBody {
    rx: mpsc::Receiver<Result<Response, Status>>,
    writing: Option<Writer>,
    ended: bool,
}

impl ResponseBody {
    /// The body written from what `rx` receives; when every sender is gone the stream ends
    /// with `OK`, an `Err` ends it with that status.
    pub fn new(rx: mpsc::Receiver<Result<Response, Status>>) -> ResponseBody {
        ResponseBody {
            rx,
            writing: None,
            ended: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(writer) = &mut this.writing {
                if let Some(chunk) = writer.next_chunk() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.writing = None;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let status = match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(response)) => {
                    this.writing = Some(Writer::new(response));
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.ended = true;
            let mut trailers = http::HeaderMap::new();
            return Poll::Ready(Some(
                status
                    .add_header(&mut trailers)
                    .map(|()| Frame::trailers(trailers)),
            ));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.writing.is_none()
    }
}
