//! HTTP/2 frame sequences (what follows the client preface) for the `h2_frames` body: every
//! frame type with consistent lengths and padding, header blocks in HPACK (literal and
//! indexed representations, table size updates, Huffman flags on raw bytes) carrying the
//! pseudo-headers and headers the inbound checks look at.

use arbitrary::Arbitrary;

use crate::Text;

/// The frames a client sends after the preface.
#[derive(Arbitrary, Debug)]
pub struct Frames {
    /// Leave out the SETTINGS frame a client must send first.
    no_initial_settings: bool,
    frames: Vec<Frame>,
}

impl Frames {
    /// The bytes after the preface.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.no_initial_settings {
            frame(&mut out, SETTINGS, 0, 0, &[]);
        }
        for f in &self.frames {
            f.encode(&mut out);
        }
        out
    }
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// A stream id: a client stream (odd), the connection (0), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Stream {
    /// `2n + 1`.
    Client(u8),
    /// 0.
    Connection,
    /// Any 32 bits (the reserved bit too).
    Any(u32),
}

impl Stream {
    fn id(self) -> u32 {
        match self {
            Stream::Client(n) => 2 * u32::from(n) + 1,
            Stream::Connection => 0,
            Stream::Any(n) => n,
        }
    }
}

/// One frame.
#[derive(Arbitrary, Debug)]
pub enum Frame {
    /// DATA.
    Data {
        /// Stream.
        stream: Stream,
        /// END_STREAM.
        end_stream: bool,
        /// Padding length, if PADDED.
        pad: Option<u8>,
        /// Payload length (zeros).
        len: u16,
    },
    /// HEADERS.
    Headers {
        /// Stream.
        stream: Stream,
        /// END_STREAM.
        end_stream: bool,
        /// END_HEADERS.
        end_headers: bool,
        /// Padding length, if PADDED.
        pad: Option<u8>,
        /// Dependency and weight, if PRIORITY.
        priority: Option<(u32, u8)>,
        /// The header block.
        fields: Vec<Field>,
    },
    /// CONTINUATION.
    Continuation {
        /// Stream.
        stream: Stream,
        /// END_HEADERS.
        end_headers: bool,
        /// The rest of the header block.
        fields: Vec<Field>,
    },
    /// PRIORITY.
    Priority {
        /// Stream.
        stream: Stream,
        /// Dependency (with the exclusive bit).
        dependency: u32,
        /// Weight.
        weight: u8,
    },
    /// RST_STREAM.
    RstStream {
        /// Stream.
        stream: Stream,
        /// Error code.
        code: u32,
    },
    /// SETTINGS.
    Settings {
        /// ACK (then the parameters make it malformed).
        ack: bool,
        /// Parameters: id (mostly 1–6) and value.
        params: Vec<(u8, u32)>,
    },
    /// PUSH_PROMISE (never legal from a client).
    PushPromise {
        /// Stream.
        stream: Stream,
        /// Promised stream.
        promised: u32,
        /// Header block.
        fields: Vec<Field>,
    },
    /// PING.
    Ping {
        /// ACK.
        ack: bool,
        /// Opaque data.
        data: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// Last stream id.
        last: u32,
        /// Error code.
        code: u32,
        /// Debug data.
        debug: Vec<u8>,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// Stream.
        stream: Stream,
        /// Increment (0 is an error).
        increment: u32,
    },
    /// Any frame header and payload (unknown types too).
    Raw {
        /// Type.
        kind: u8,
        /// Flags.
        flags: u8,
        /// Stream.
        stream: Stream,
        /// Payload.
        payload: Vec<u8>,
    },
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    // Lengths over 2^24 - 1 cannot be expressed; cut the payload (the fuzzer never gets near).
    let payload = &payload[..payload.len().min(0xff_ffff)];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn block(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        f.encode(&mut out);
    }
    out
}

/// `payload` with PADDED's length byte in front and `pad` zeros behind.
fn padded(pad: Option<u8>, payload: Vec<u8>) -> (u8, Vec<u8>) {
    match pad {
        None => (0, payload),
        Some(n) => {
            let mut out = vec![n];
            out.extend_from_slice(&payload);
            out.resize(out.len() + usize::from(n), 0);
            (PADDED, out)
        }
    }
}

impl Frame {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Data {
                stream,
                end_stream,
                pad,
                len,
            } => {
                let (flags, payload) = padded(*pad, vec![0; usize::from(*len)]);
                let flags = flags | if *end_stream { END_STREAM } else { 0 };
                frame(out, DATA, flags, stream.id(), &payload);
            }
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                pad,
                priority,
                fields,
            } => {
                let mut payload = Vec::new();
                let mut flags = 0;
                if let Some((dependency, weight)) = priority {
                    payload.extend_from_slice(&dependency.to_be_bytes());
                    payload.push(*weight);
                    flags |= PRIORITY_FLAG;
                }
                payload.extend_from_slice(&block(fields));
                let (pad_flag, payload) = padded(*pad, payload);
                flags |= pad_flag;
                flags |= if *end_stream { END_STREAM } else { 0 };
                flags |= if *end_headers { END_HEADERS } else { 0 };
                frame(out, HEADERS, flags, stream.id(), &payload);
            }
            Frame::Continuation {
                stream,
                end_headers,
                fields,
            } => {
                let flags = if *end_headers { END_HEADERS } else { 0 };
                frame(out, CONTINUATION, flags, stream.id(), &block(fields));
            }
            Frame::Priority {
                stream,
                dependency,
                weight,
            } => {
                let mut payload = dependency.to_be_bytes().to_vec();
                payload.push(*weight);
                frame(out, PRIORITY, 0, stream.id(), &payload);
            }
            Frame::RstStream { stream, code } => {
                frame(out, RST_STREAM, 0, stream.id(), &code.to_be_bytes());
            }
            Frame::Settings { ack, params } => {
                let mut payload = Vec::new();
                for (id, value) in params {
                    // Mostly the six defined settings (and 8, extended CONNECT), sometimes any.
                    let id = if *id < 0xf0 {
                        [1u16, 2, 3, 4, 5, 6, 8][usize::from(*id) % 7]
                    } else {
                        u16::from(*id) << 4
                    };
                    payload.extend_from_slice(&id.to_be_bytes());
                    payload.extend_from_slice(&value.to_be_bytes());
                }
                frame(out, SETTINGS, if *ack { ACK } else { 0 }, 0, &payload);
            }
            Frame::PushPromise {
                stream,
                promised,
                fields,
            } => {
                let mut payload = promised.to_be_bytes().to_vec();
                payload.extend_from_slice(&block(fields));
                frame(out, PUSH_PROMISE, END_HEADERS, stream.id(), &payload);
            }
            Frame::Ping { ack, data } => {
                frame(out, PING, if *ack { ACK } else { 0 }, 0, data);
            }
            Frame::GoAway { last, code, debug } => {
                let mut payload = last.to_be_bytes().to_vec();
                payload.extend_from_slice(&code.to_be_bytes());
                payload.extend_from_slice(debug);
                frame(out, GOAWAY, 0, 0, &payload);
            }
            Frame::WindowUpdate { stream, increment } => {
                frame(out, WINDOW_UPDATE, 0, stream.id(), &increment.to_be_bytes());
            }
            Frame::Raw {
                kind,
                flags,
                stream,
                payload,
            } => frame(out, *kind, *flags, stream.id(), payload),
        }
    }
}

/// One HPACK header field representation.
#[derive(Arbitrary, Debug)]
pub enum Field {
    /// Indexed field (static table 1–61, dynamic above).
    Indexed(u8),
    /// Literal with incremental indexing, new name.
    Incremental(Name, Value),
    /// Literal without indexing, new name.
    NotIndexed(Name, Value),
    /// Literal never indexed, new name.
    NeverIndexed(Name, Value),
    /// Literal with incremental indexing, indexed name.
    IndexedName(u8, Value),
    /// Dynamic table size update.
    SizeUpdate(u16),
    /// A string literal with the Huffman bit set on raw bytes, as the name.
    Huffman(Vec<u8>, Value),
}

/// HPACK integer with an `n`-bit prefix, the first byte's high bits set to `high`.
fn integer(out: &mut Vec<u8>, high: u8, n: u32, mut value: u64) {
    let max = (1u64 << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, huffman: bool, bytes: &[u8]) {
    integer(out, if huffman { 0x80 } else { 0 }, 7, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Field::Indexed(i) => integer(out, 0x80, 7, u64::from(*i)),
            Field::Incremental(name, value) => {
                out.push(0x40);
                string(out, false, name.render().as_bytes());
                string(out, false, &value.render());
            }
            Field::NotIndexed(name, value) => {
                out.push(0x00);
                string(out, false, name.render().as_bytes());
                string(out, false, &value.render());
            }
            Field::NeverIndexed(name, value) => {
                out.push(0x10);
                string(out, false, name.render().as_bytes());
                string(out, false, &value.render());
            }
            Field::IndexedName(i, value) => {
                integer(out, 0x40, 6, u64::from(*i));
                string(out, false, &value.render());
            }
            Field::SizeUpdate(size) => integer(out, 0x20, 5, u64::from(*size)),
            Field::Huffman(raw, value) => {
                out.push(0x00);
                string(out, true, raw);
                string(out, false, &value.render());
            }
        }
    }
}

/// A header name.
#[derive(Arbitrary, Debug)]
pub enum Name {
    /// `:method`.
    Method,
    /// `:scheme`.
    Scheme,
    /// `:authority`.
    Authority,
    /// `:path`.
    Path,
    /// `:protocol`.
    Protocol,
    /// `:status` (response-only).
    Status,
    /// An unknown pseudo-header.
    UnknownPseudo,
    /// `host`.
    Host,
    /// `baggage`.
    Baggage,
    /// `forwarded`.
    Forwarded,
    /// `traceparent`.
    Traceparent,
    /// `te`.
    Te,
    /// `connection` (forbidden in HTTP/2).
    Connection,
    /// `content-length`.
    ContentLength,
    /// `cookie`.
    Cookie,
    /// An upper-case name (malformed in HTTP/2).
    Upper,
    /// Anything.
    Other(String),
}

impl Name {
    fn render(&self) -> String {
        match self {
            Name::Method => ":method",
            Name::Scheme => ":scheme",
            Name::Authority => ":authority",
            Name::Path => ":path",
            Name::Protocol => ":protocol",
            Name::Status => ":status",
            Name::UnknownPseudo => ":x",
            Name::Host => "host",
            Name::Baggage => "baggage",
            Name::Forwarded => "forwarded",
            Name::Traceparent => "traceparent",
            Name::Te => "te",
            Name::Connection => "connection",
            Name::ContentLength => "content-length",
            Name::Cookie => "cookie",
            Name::Upper => "X-Upper",
            Name::Other(s) => return s.clone(),
        }
        .to_owned()
    }
}

/// A header value.
#[derive(Arbitrary, Debug)]
pub enum Value {
    /// `CONNECT`.
    Connect,
    /// `GET`.
    Get,
    /// `https`.
    Https,
    /// `/`.
    Slash,
    /// `trailers`.
    Trailers,
    /// `ip:port` from IPv4 bytes.
    V4([u8; 4], u16),
    /// `[ip]:port` from IPv6 bytes.
    V6([u8; 16], u16),
    /// `host:port`.
    HostPort(Text, u16),
    /// A decimal number.
    Number(u64),
    /// `n` times `x` (header list size limits).
    Long(u16),
    /// Any bytes.
    Bytes(Vec<u8>),
}

impl Value {
    fn render(&self) -> Vec<u8> {
        match self {
            Value::Connect => b"CONNECT".to_vec(),
            Value::Get => b"GET".to_vec(),
            Value::Https => b"https".to_vec(),
            Value::Slash => b"/".to_vec(),
            Value::Trailers => b"trailers".to_vec(),
            Value::V4(ip, port) => format!("{}:{port}", std::net::Ipv4Addr::from(*ip)).into_bytes(),
            Value::V6(ip, port) => {
                format!("[{}]:{port}", std::net::Ipv6Addr::from(*ip)).into_bytes()
            }
            Value::HostPort(host, port) => format!("{}:{port}", host.render()).into_bytes(),
            Value::Number(n) => n.to_string().into_bytes(),
            Value::Long(n) => vec![b'x'; usize::from(*n) + 1],
            Value::Bytes(b) => b.clone(),
        }
    }
}
