//! Forwarding to ztun's upstream resolvers, over UDP or TCP, with sockets from the pod's
//! [`Sockets`] (pod network namespace and packet mark, so the query skips the pod's DNS
//! redirect and leaves with the pod's address).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Transport;
use crate::sockets::Sockets;

/// How long one upstream gets to answer over UDP before the next is tried.
const UDP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one upstream gets to answer over TCP (connect included).
const TCP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP answer read from an upstream.
const MAX_UDP_ANSWER: usize = 4096;
/// Stray datagrams (wrong id) tolerated per attempt before giving up on it.
const MAX_STRAY: usize = 8;

/// The nameservers of a resolv.conf (its search list is not used: the pod's search domains
/// are synthesised per pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
}

impl Upstreams {
    /// Exactly these servers, tried in order.
    pub fn new(servers: Vec<SocketAddr>) -> Upstreams {
        Upstreams { servers }
    }

    /// [`Upstreams::load`], or none (with a warning) when the file cannot be read: then every
    /// query that needs an upstream fails.
    pub fn load_or_warn(path: &Path) -> Upstreams {
        Upstreams::load(path).unwrap_or_else(|e| {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read the upstream resolvers; forwarded DNS queries and hostname \
                 endpoints will fail"
            );
            Upstreams::default()
        })
    }

    /// Reads the `nameserver` lines of the file at `path`.
    pub fn load(path: &Path) -> io::Result<Upstreams> {
        Ok(Upstreams::parse(&std::fs::read_to_string(path)?))
    }

    /// Parses resolv.conf text: every valid `nameserver <ip>` line, port 53, in order (a
    /// link-local zone suffix `%eth0` is dropped). Other lines are ignored.
    pub fn parse(text: &str) -> Upstreams {
        let servers = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                if words.next() != Some("nameserver") {
                    return None;
                }
                let ip = words.next()?;
                let ip = ip.split('%').next()?;
                ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
            })
            .collect();
        Upstreams { servers }
    }

    /// The upstream addresses, in the order they are tried.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }
}

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The resolv.conf named no usable nameserver.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every upstream failed; this is the last one's failure.
    #[error("upstream {upstream}: {source}")]
    Upstream {
        /// The last upstream tried.
        upstream: SocketAddr,
        /// What went wrong with it.
        source: io::Error,
    },
}

/// Sends `query` (already carrying the upstream id `id`) to each upstream in turn until one
/// answers with a response to it; returns that response's bytes.
pub async fn forward(
    sockets: &Sockets,
    upstreams: &Upstreams,
    query: &[u8],
    id: u16,
    transport: Transport,
) -> Result<Vec<u8>, ForwardError> {
    let mut last = Err(ForwardError::NoUpstream);
    for &upstream in upstreams.servers() {
        let attempt = match transport {
            Transport::Udp => {
                tokio::time::timeout(UDP_ATTEMPT_TIMEOUT, udp(sockets, upstream, query, id)).await
            }
            Transport::Tcp => {
                tokio::time::timeout(TCP_ATTEMPT_TIMEOUT, tcp(sockets, upstream, query, id)).await
            }
        };
        let res = match attempt {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")),
        };
        match res {
            Ok(answer) => return Ok(answer),
            Err(source) => last = Err(ForwardError::Upstream { upstream, source }),
        }
    }
    last
}

async fn udp(
    sockets: &Sockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
    let local = match upstream {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let sock = tokio::net::UdpSocket::from_std(sockets.udp_socket(local)?)?;
    // Connected: the kernel drops datagrams from any other address.
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_UDP_ANSWER];
    for _ in 0..MAX_STRAY {
        let n = sock.recv(&mut buf).await?;
        if is_answer(&buf[..n], id) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "only stray datagrams",
    ))
}

async fn tcp(
    sockets: &Sockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
    let mut stream = sockets.connect(upstream, None).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too large"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    match is_answer(&buf, id) {
        true => Ok(buf),
        false => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an answer to the query",
        )),
    }
}

/// Whether `bytes` is a well-formed response with id `id`.
fn is_answer(bytes: &[u8], id: u16) -> bool {
    Message::from_vec(bytes)
        .is_ok_and(|m| m.id() == id && m.message_type() == MessageType::Response)
}
