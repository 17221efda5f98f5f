//! A pod's DNS listeners (UDP and TCP) and the per-query decision: answer from the mesh,
//! refuse, or forward.
//!
//! Work per packet is bounded: queries are parsed once into a bounded buffer, local answers
//! are computed synchronously, forwarded queries hold one of a fixed number of permits per pod
//! (none left: SERVFAIL at once), TCP connections are limited per pod and each request must
//! arrive within [`TCP_REQUEST_TIMEOUT`].

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::forward::{self, Upstreams};
use super::lookup::{self, Family, HostIndex, IndexCache, Lookup, Zone};
use super::metrics::{query_type_label, DnsLabels, DnsMetrics, UNKNOWN_QUERY_TYPE};
use super::Transport;
use crate::config::{loopbacks, Config, DnsListen, Requirement};
use crate::drain::Watch as Drains;
use crate::sockets::Sockets;
use crate::state::model::Strng;
use crate::state::model::Workload;
use crate::state::{Reader, Snapshot};

/// TTL of local answers.
pub const TTL: u32 = 30;
/// How long a TCP client may take to send each request (and to take each answer).
pub const TCP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest UDP query read; longer datagrams are cut and then fail to parse.
const MAX_UDP_QUERY: usize = 4096;
/// UDP payload size ztun advertises in EDNS answers and caps clients' advertised sizes at.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Answer size for UDP clients without EDNS (RFC 1035).
const CLASSIC_UDP_PAYLOAD: usize = 512;
/// Forwarded queries in flight per pod; more get SERVFAIL at once.
const MAX_FORWARDS: usize = 64;
/// TCP connections open per pod; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 32;

/// Hostname indexes shared by every pod (one per snapshot generation).
static INDEXES: std::sync::LazyLock<IndexCache> = std::sync::LazyLock::new(IndexCache::default);

/// What a pod's DNS proxy is given: who the pod is, the configuration, the mesh state, and
/// the pod's socket factory. Nothing else of the pod's data plane.
pub struct PodDns {
    /// The pod's namespace.
    pub namespace: Strng,
    /// The pod's name.
    pub name: Strng,
    /// The pod's service account.
    pub service_account: Strng,
    /// The process configuration.
    pub cfg: Arc<Config>,
    /// The mesh state.
    pub state: Reader,
    /// Sockets in the pod's namespace, with the packet mark.
    pub sockets: Sockets,
    /// The DNS families every pod's server counts into.
    pub metrics: Arc<DnsMetrics>,
}

/// Binds the pod's DNS listeners (on the calling thread, in the pod's namespace) and serves
/// them on `data` until `drains` signal. Binding errors fail the pod's start, except the IPv6
/// loopback when the pod has no IPv6.
pub fn start(pod: PodDns, data: &Handle, drains: &Drains) -> io::Result<()> {
    let PodDns {
        namespace,
        name,
        service_account,
        cfg,
        state,
        sockets,
        metrics,
    } = pod;
    let upstreams = Upstreams::load_or_warn(&cfg.dns.resolv_conf);
    let server = Arc::new(DnsServer {
        client: ClientRef {
            namespace,
            name,
            service_account,
            node: cfg.node_name.as_deref().map(Into::into),
        },
        state,
        sockets: sockets.clone(),
        zone: Zone {
            domain: cfg
                .cluster_domain
                .trim_matches('.')
                .to_ascii_lowercase()
                .into(),
            ipv6: cfg.proxy.ipv6_enabled,
            preferred_namespace: cfg.dns.preferred_service_namespace.clone(),
        },
        upstreams,
        forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        tcp_connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        client_cache: Mutex::new(None),
        metrics,
    });
    let addrs = match cfg.dns.listen {
        DnsListen::Addr(a) => vec![(a, Requirement::Required)],
        DnsListen::Localhost(port) => loopbacks(port, cfg.proxy.ipv6_enabled),
    };
    for (addr, requirement) in addrs {
        let bound = sockets.udp_socket(addr).and_then(|udp| {
            let tcp = sockets.std_listener(addr, false)?;
            Ok((udp, tcp))
        });
        let (udp, tcp) = match bound {
            Ok(b) => b,
            Err(e) if requirement == Requirement::IfIpv6 => {
                tracing::debug!(%addr, error = %e, "no IPv6 DNS listener in this pod");
                continue;
            }
            Err(e) => return Err(e),
        };
        data.spawn(serve_udp(server.clone(), udp, drains.clone()));
        data.spawn(serve_tcp(server.clone(), tcp, drains.clone()));
    }
    Ok(())
}

/// The pod a DNS server answers for, as the CNI announced it.
struct ClientRef {
    namespace: Arc<str>,
    name: Arc<str>,
    service_account: Arc<str>,
    node: Option<Arc<str>>,
}

/// One pod's DNS server, shared by its listeners and in-flight queries.
struct DnsServer {
    client: ClientRef,
    state: Reader,
    sockets: Sockets,
    zone: Zone,
    upstreams: Upstreams,
    forwards: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
    /// The client workload found in the last snapshot looked at (finding it scans the
    /// workloads). Held only to compare or swap.
    client_cache: Mutex<Option<CachedClient>>,
    /// Where queries are counted.
    metrics: Arc<DnsMetrics>,
}

/// A snapshot (weakly held, only compared) and the client workload found in it.
type CachedClient = (Weak<Snapshot>, Option<Arc<Workload>>);

/// What to do with one received message.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply {
        /// The encoded response.
        bytes: Vec<u8>,
        /// Its response code.
        rcode: ResponseCode,
        /// Records in its answer section.
        answers: usize,
    },
    /// Not a mesh name: forward the query upstream and answer within `limit` bytes.
    Forward {
        /// The parsed query, to build the error answer if forwarding fails.
        request: Box<Message>,
        /// Largest answer the client accepts.
        limit: usize,
    },
    /// Too short to be DNS: say nothing.
    Drop,
}

/// Decides what to answer to `raw`, received over `transport` from `client` (`None`: the pod
/// is not in the mesh state), against `snap`. Synchronous and bounded by the message size.
pub fn respond(
    raw: &[u8],
    transport: Transport,
    client: Option<&Workload>,
    snap: &Snapshot,
    index: &HostIndex,
    zone: &Zone,
) -> (Outcome, Option<Query>) {
    let Some(header) = raw
        .get(..Header::len())
        .and_then(|h| Header::from_bytes(h).ok())
    else {
        return (Outcome::Drop, None);
    };
    if header.message_type() != MessageType::Query {
        return (error_reply(&header, ResponseCode::FormErr), None);
    }
    if header.op_code() != OpCode::Query {
        return (error_reply(&header, ResponseCode::NotImp), None);
    }
    let request = match Message::from_vec(raw) {
        Ok(m) if m.queries().len() == 1 => m,
        _ => return (error_reply(&header, ResponseCode::FormErr), None),
    };
    let query = request.queries()[0].clone();
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => match request.extensions() {
            Some(e) => e.max_payload().clamp(512, MAX_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD,
        },
    };
    let Some(client) = client else {
        return (
            reply(&request, ResponseCode::ServFail, Vec::new(), false, limit),
            Some(query),
        );
    };
    let family = match query.query_type() {
        RecordType::A => Some(Family::V4),
        RecordType::AAAA => Some(Family::V6),
        _ => None,
    };
    let local = match family {
        Some(family) if query.query_class() == DNSClass::IN => {
            let qname = query.name().to_lowercase().to_ascii();
            let qname = qname.trim_end_matches('.');
            lookup::lookup(index, snap, client, qname, family, zone)
        }
        _ => Lookup::NotMesh,
    };
    let Lookup::Mesh { cname, mut addrs } = local else {
        return (
            Outcome::Forward {
                request: Box::new(request),
                limit,
            },
            Some(query),
        );
    };
    addrs.shuffle(&mut rand::rng());
    let mut records = Vec::with_capacity(addrs.len() + 1);
    let mut owner = query.name().clone();
    if let Some(target) = cname {
        if let Ok(mut target) = Name::from_ascii(&target) {
            target.set_fqdn(true);
            records.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            owner = target;
        }
    }
    for ip in addrs {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        records.push(Record::from_rdata(owner.clone(), TTL, rdata));
    }
    (
        reply(&request, ResponseCode::NoError, records, true, limit),
        Some(query),
    )
}

impl DnsServer {
    /// The pod's workload in `snap`, if the mesh knows it with the identity the CNI announced.
    fn client(&self, snap: &Arc<Snapshot>) -> Option<Arc<Workload>> {
        if let Some((s, w)) = &*self.client_cache.lock() {
            if std::ptr::eq(s.as_ptr(), Arc::as_ptr(snap)) {
                return w.clone();
            }
        }
        let c = &self.client;
        let w = snap
            .workload_by_pod(&c.namespace, &c.name, c.node.as_deref())
            .filter(|w| w.service_account == c.service_account)
            .cloned();
        *self.client_cache.lock() = Some((Arc::downgrade(snap), w.clone()));
        w
    }

    /// Decides on `raw`, counts it, and logs local answers.
    fn handle(&self, raw: &[u8], transport: Transport) -> Handled {
        let snap = self.state.load_full();
        let index = INDEXES.index(&snap);
        let client = self.client(&snap);
        let (outcome, query) =
            respond(raw, transport, client.as_deref(), &snap, &index, &self.zone);
        let labels = DnsLabels {
            request_query_type: query
                .as_ref()
                .map_or(UNKNOWN_QUERY_TYPE, |q| query_type_label(q.query_type())),
            request_protocol: transport.label(),
            source_canonical_service: client
                .as_ref()
                .map_or_else(crate::ops::metrics::unknown, |w| w.canonical_name.clone()),
            source_canonical_revision: client
                .as_ref()
                .map_or_else(crate::ops::metrics::unknown, |w| {
                    w.canonical_revision.clone()
                }),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        if let Outcome::Reply { rcode, answers, .. } = &outcome {
            self.log(transport, query.as_ref(), "local", *rcode, *answers, None);
        }
        Handled { outcome, labels }
    }

    /// Forwards a query to the upstreams and returns the answer for the client: the
    /// upstream's, or SERVFAIL when there are too many in flight or none answered.
    async fn forward(
        &self,
        request: &Message,
        raw: &[u8],
        limit: usize,
        transport: Transport,
        labels: &DnsLabels,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Vec<u8> {
        let query = request.queries().first();
        let Some(_permit) = permit else {
            self.log(
                transport,
                query,
                "overloaded",
                ResponseCode::ServFail,
                0,
                None,
            );
            return encode(reply(
                request,
                ResponseCode::ServFail,
                Vec::new(),
                false,
                limit,
            ));
        };
        let metrics = &self.metrics;
        metrics.upstream_requests.get_or_create(labels).inc();
        // A fresh id upstream, so answers cannot be forged by guessing the client's.
        let upstream_id: u16 = rand::random();
        let mut upstream_query = raw.to_vec();
        upstream_query[..2].copy_from_slice(&upstream_id.to_be_bytes());
        let started = Instant::now();
        let res = forward::forward(
            &self.sockets,
            &self.upstreams,
            &upstream_query,
            upstream_id,
            transport,
        )
        .await;
        let elapsed = started.elapsed();
        match res {
            Ok(mut answer) => {
                metrics
                    .upstream_duration
                    .get_or_create(labels)
                    .observe(elapsed.as_secs_f64());
                answer[..2].copy_from_slice(&request.id().to_be_bytes());
                let rcode = Header::from_bytes(&answer[..Header::len()])
                    .map_or(ResponseCode::ServFail, |h| h.response_code());
                if answer.len() > limit {
                    // Too big for the client's UDP size: the truncated form makes it retry
                    // over TCP.
                    answer = Message::from_vec(&answer)
                        .ok()
                        .and_then(|m| m.truncate().to_vec().ok())
                        .unwrap_or_default();
                }
                self.log(transport, query, "forwarded", rcode, 0, Some(elapsed));
                answer
            }
            Err(e) => {
                metrics.upstream_failures.get_or_create(labels).inc();
                tracing::debug!(target: "dns", error = %e, "upstream resolution failed");
                self.log(
                    transport,
                    query,
                    "forwarded",
                    ResponseCode::ServFail,
                    0,
                    Some(elapsed),
                );
                encode(reply(
                    request,
                    ResponseCode::ServFail,
                    Vec::new(),
                    false,
                    limit,
                ))
            }
        }
    }

    fn log(
        &self,
        transport: Transport,
        query: Option<&Query>,
        outcome: &'static str,
        rcode: ResponseCode,
        answers: usize,
        upstream: Option<Duration>,
    ) {
        tracing::event!(
            target: "dns",
            tracing::Level::DEBUG,
            src.workload = &*self.client.name,
            src.namespace = &*self.client.namespace,
            protocol = transport.label(),
            query = query.map(|q| q.name().to_ascii()).unwrap_or_default(),
            qtype = query.map_or(UNKNOWN_QUERY_TYPE, |q| query_type_label(q.query_type())),
            outcome,
            rcode = rcode.to_str(),
            answers,
            upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0),
            "dns request"
        );
    }
}

/// A decided message with what the metrics need.
struct Handled {
    outcome: Outcome,
    labels: DnsLabels,
}

async fn serve_udp(server: Arc<DnsServer>, socket: std::net::UdpSocket, mut drains: Drains) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot register the DNS UDP socket");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let received = tokio::select! {
            _ = drains.signaled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let raw = &buf[..n];
        let handled = server.handle(raw, Transport::Udp);
        match handled.outcome {
            Outcome::Drop => {}
            Outcome::Reply { bytes, .. } => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Outcome::Forward { request, limit } => {
                let permit = server.forwards.clone().try_acquire_owned().ok();
                let raw = raw.to_vec();
                let (server, socket, mut d) = (server.clone(), socket.clone(), drains.clone());
                tokio::spawn(async move {
                    let answer = server.forward(
                        &request,
                        &raw,
                        limit,
                        Transport::Udp,
                        &handled.labels,
                        permit,
                    );
                    tokio::select! {
                        bytes = answer => { let _ = socket.send_to(&bytes, peer).await; }
                        _ = d.immediate() => {}
                    }
                });
            }
        }
    }
    tracing::debug!(target: "dns", "DNS UDP server stopped");
}

async fn serve_tcp(server: Arc<DnsServer>, listener: std::net::TcpListener, mut drains: Drains) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the DNS TCP listener");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = drains.signaled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = server.tcp_connections.clone().try_acquire_owned() else {
            tracing::debug!(target: "dns", "too many DNS TCP connections; closing one");
            continue;
        };
        let (server, mut d) = (server.clone(), drains.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_tcp_connection(&server, stream) => {}
                _ = d.signaled() => {}
            }
            drop(permit);
        });
    }
    tracing::debug!(target: "dns", "DNS TCP server stopped");
}

/// Answers length-prefixed requests in order until the client closes, idles past
/// [`TCP_REQUEST_TIMEOUT`], or sends something undecodable.
async fn serve_tcp_connection(server: &DnsServer, mut stream: TcpStream) {
    loop {
        let read = async {
            let len = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            io::Result::Ok(buf)
        };
        let raw = match tokio::time::timeout(TCP_REQUEST_TIMEOUT, read).await {
            Ok(Ok(raw)) => raw,
            _ => return,
        };
        let handled = server.handle(&raw, Transport::Tcp);
        let bytes = match handled.outcome {
            Outcome::Drop => return,
            Outcome::Reply { bytes, .. } => bytes,
            Outcome::Forward { request, limit } => {
                let permit = server.forwards.clone().try_acquire_owned().ok();
                server
                    .forward(
                        &request,
                        &raw,
                        limit,
                        Transport::Tcp,
                        &handled.labels,
                        permit,
                    )
                    .await
            }
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        match tokio::time::timeout(TCP_REQUEST_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// A response to `request` with `answers`, fitted to `limit` bytes (truncated when larger).
fn reply(
    request: &Message,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authoritative: bool,
    limit: usize,
) -> Outcome {
    let count = answers.len();
    let mut m = Message::new();
    m.set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(authoritative)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(request.checking_disabled())
        .set_response_code(rcode);
    m.add_queries(request.queries().iter().cloned());
    m.add_answers(answers);
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
        m.set_edns(edns);
    }
    let bytes = match m.to_vec() {
        Ok(b) if b.len() <= limit => b,
        _ => m.truncate().to_vec().unwrap_or_else(|_| {
            Message::error_msg(request.id(), OpCode::Query, ResponseCode::ServFail)
                .to_vec()
                .unwrap_or_default()
        }),
    };
    Outcome::Reply {
        bytes,
        rcode,
        answers: count,
    }
}

/// An answer carrying only a response code, for a message whose body is not trusted.
fn error_reply(header: &Header, rcode: ResponseCode) -> Outcome {
    let bytes = Message::error_msg(header.id(), header.op_code(), rcode)
        .to_vec()
        .unwrap_or_default();
    Outcome::Reply {
        bytes,
        rcode,
        answers: 0,
    }
}

fn encode(outcome: Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Reply { bytes, .. } => bytes,
        _ => Vec::new(),
    }
}
