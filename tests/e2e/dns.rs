//! The DNS proxy end to end: a captured pod's queries to its cluster resolver address are
//! redirected by the capture rules to ztun's 15053 in the pod, which answers mesh names
//! itself and forwards the rest to the resolvers of its resolv.conf (here a test resolver in
//! node n1's namespace), over UDP and TCP; the answer then carries traffic through HBONE.
//! The same resolver serves hostname-only endpoints, and answers keep coming while the
//! control plane is down.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::{Condvar, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use ztun::testkit::lab::{Lab, NetnsTask};
use ztun::testkit::mesh::MeshFile;

use crate::support::{
    assert_field_only_in, standard_lab, wait_for_line, Cluster, XdsCluster, WAIT,
};

/// Where the pod believes its resolver is (kube-dns); the capture rules redirect it to 15053.
pub(crate) const CLUSTER_DNS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53)), 53);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const SVC_PORT: u16 = 80;
const TARGET: u16 = 8080;
/// What the test upstream resolver answers for `external.test`.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// The transport of a DNS query.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    Udp,
    Tcp,
}

#[test]
fn captured_pod_resolves_mesh_and_external_names_then_connects() {
    let lab = standard_lab("dns_resolve");
    let mesh =
        MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["c"]);
    let _server = lab.pod("c").spawn_echo_server(TARGET).unwrap();
    let (_upstream, upstream_hits, resolv) = start_upstream(&lab, &[]);
    let cluster = Cluster::start_with(
        lab,
        mesh,
        &[
            ("ZTUN_DNS_RESOLV_CONF", resolv.as_str()),
            ("RUST_LOG", "info,ztun=debug,dns=debug"),
        ],
    );
    let lab = &cluster.lab;
    let a = lab.pod("a");

    for via in [Via::Udp, Via::Tcp] {
        for name in ["echo.", "echo.default.", "echo.default.svc.cluster.local."] {
            let m = a
                .block_on(resolve(CLUSTER_DNS, via, name, RecordType::A))
                .unwrap_or_else(|e| panic!("{name} over {via:?}: {e:#}"));
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name} {via:?}");
            assert!(
                m.authoritative(),
                "{name} {via:?}: mesh answers are authoritative"
            );
            assert_eq!(addresses(&m), vec![IpAddr::V4(VIP)], "{name} {via:?}");
            assert!(m.answers().iter().all(|r| r.ttl() == 30));
        }
        // A mesh name without IPv6: empty NOERROR, not forwarded.
        let m = a
            .block_on(resolve(CLUSTER_DNS, via, "echo.", RecordType::AAAA))
            .unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        let before = upstream_hits.total();
        let m = a
            .block_on(resolve(CLUSTER_DNS, via, "external.test.", RecordType::A))
            .unwrap_or_else(|e| panic!("external name over {via:?}: {e:#}"));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![IpAddr::V4(EXTERNAL)], "{via:?}");
        assert!(
            upstream_hits.total() > before,
            "the external name went through the upstream resolver"
        );
        // Forwarded from the pod's namespace: the upstream sees the pod's address.
        let sources = upstream_hits.sources("external.test.");
        assert!(
            sources.iter().all(|ip| *ip == IpAddr::V4(a.ip())),
            "forwarded from {sources:?}"
        );
        // The upstream's NXDOMAIN is passed on.
        let m = a
            .block_on(resolve(CLUSTER_DNS, via, "missing.test.", RecordType::A))
            .unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    // The answer works: the VIP carries traffic through HBONE to c on n2.
    let t = a
        .bulk_echo(SocketAddr::from((VIP, SVC_PORT)), 1 << 20)
        .expect("connecting to the resolved VIP");
    assert_eq!(t.bytes, 1 << 20);
    let n1 = cluster.ztun("n1");
    n1.wait_for_log("direction=\"outbound\"", WAIT).unwrap();
    n1.wait_for_log("dns request", WAIT).unwrap();

    // Metrics count requests and upstream requests.
    let metrics = crate::ops::scrape(lab.node("n1").netns());
    for family in [
        "istio_dns_requests_total{",
        "istio_dns_upstream_requests_total{",
        "istio_dns_upstream_request_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    assert!(metrics.contains("request_protocol=\"tcp\""));
}

/// The control plane (`ztun control-plane`, over xDS) dies: both nodes notice the stream
/// dropped, and the pod's DNS keeps answering mesh names from the last state and forwarding
/// external names, over UDP and TCP.
#[test]
fn dns_keeps_working_while_the_control_plane_is_down() {
    let lab = standard_lab("dns_cp_down");
    let mesh =
        MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["c"]);
    let (_upstream, _hits, resolv) = start_upstream(&lab, &[]);
    let mut cluster = XdsCluster::start_with(
        lab,
        &mesh.to_yaml(),
        &[("ZTUN_DNS_RESOLV_CONF", resolv.as_str())],
    );
    let check = |cluster: &XdsCluster, when: &str| {
        let a = cluster.lab.pod("a");
        for via in [Via::Udp, Via::Tcp] {
            for name in ["echo.", "echo.default.svc.cluster.local."] {
                let m = a
                    .block_on(resolve(CLUSTER_DNS, via, name, RecordType::A))
                    .unwrap_or_else(|e| panic!("{when}: {name} over {via:?}: {e:#}"));
                assert_eq!(
                    addresses(&m),
                    vec![IpAddr::V4(VIP)],
                    "{when}: {name} {via:?}"
                );
            }
            let m = a
                .block_on(resolve(CLUSTER_DNS, via, "external.test.", RecordType::A))
                .unwrap_or_else(|e| panic!("{when}: external name over {via:?}: {e:#}"));
            assert_eq!(addresses(&m), vec![IpAddr::V4(EXTERNAL)], "{when}: {via:?}");
        }
    };
    check(&cluster, "control plane up");

    cluster.kill_control_plane();
    check(&cluster, "control plane down");
}

/// A service whose only endpoint is a hostname-only workload (a DNS-resolved ServiceEntry):
/// connecting to the VIP resolves the hostname through ztun's upstream resolver (from the
/// node, once, then from the cache) and connects to the answer, in plain TCP or HBONE as the
/// workload says. A hostname that does not resolve closes the connection with a clear reason.
#[test]
fn hostname_only_endpoints_are_resolved_when_traffic_goes_to_them() {
    const VIP_TCP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
    const VIP_HBONE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 32);
    const VIP_MISSING: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);
    let lab = standard_lab("dns_hostname_ep");
    let (u_ip, c_ip) = (lab.pod("u").ip(), lab.pod("c").ip());
    let _u = lab.pod("u").spawn_echo_server(TARGET).unwrap();
    let _c = lab.pod("c").spawn_echo_server(TARGET).unwrap();
    let (_upstream, hits, resolv) = start_upstream(
        &lab,
        &[("backend-tcp.test.", u_ip), ("backend-hbone.test.", c_ip)],
    );
    let hostname_workload = |name: &str, sa: &str, protocol: &str| {
        serde_json::json!({
            "uid": format!("Kubernetes//ServiceEntry/default/{name}"),
            "name": name,
            "namespace": "default",
            "serviceAccount": sa,
            "hostname": format!("{name}.test"),
            "workloadIps": [],
            "protocol": protocol,
        })
    };
    let mesh = MeshFile::from_lab(&lab)
        .workload(hostname_workload("backend-tcp", "default", "TCP"))
        .workload(hostname_workload("backend-hbone", "sa-c", "HBONE"))
        .workload(hostname_workload("backend-missing", "default", "TCP"))
        .service(
            "ext-tcp",
            "default",
            VIP_TCP,
            &[(SVC_PORT, TARGET)],
            &["backend-tcp"],
        )
        .service(
            "ext-hbone",
            "default",
            VIP_HBONE,
            &[(SVC_PORT, TARGET)],
            &["backend-hbone"],
        )
        .service(
            "ext-missing",
            "default",
            VIP_MISSING,
            &[(SVC_PORT, TARGET)],
            &["backend-missing"],
        );
    let cluster = Cluster::start_with(
        lab,
        mesh,
        &[
            ("ZTUN_DNS_RESOLV_CONF", resolv.as_str()),
            ("RUST_LOG", "info,ztun=debug"),
        ],
    );
    let (lab, n1) = (&cluster.lab, cluster.ztun("n1"));
    let a = lab.pod("a");

    // Plain TCP to the resolved address (u, not in HBONE); twice, one A query.
    let mut plain = Vec::new();
    for _ in 0..2 {
        let cursor = n1.log_cursor();
        let t = a
            .bulk_echo(SocketAddr::from((VIP_TCP, SVC_PORT)), 64 * 1024)
            .expect("a -> ext-tcp -> u");
        assert_eq!(t.bytes, 64 * 1024);
        let line = wait_for_line(
            n1,
            cursor,
            &[
                "direction=\"outbound\"",
                &format!("dst.addr={u_ip}:{TARGET}"),
            ],
        )
        .unwrap();
        // u's address itself was dialled (HBONE would log its node's 15008).
        assert!(
            line.contains("dst.service=\"ext-tcp.default.svc.cluster.local\""),
            "{line}"
        );
        plain.push(line);
    }
    assert_eq!(
        hits.count("backend-tcp.test.", RecordType::A),
        1,
        "the second connection used the cached answer"
    );
    // Asked from the node's namespace, not the pod's (whose DNS goes through its own proxy).
    let node_ip = IpAddr::V4(lab.node("n1").link_ip());
    let sources = hits.sources("backend-tcp.test.");
    assert!(
        !sources.is_empty() && sources.iter().all(|ip| *ip == node_ip),
        "queries from {sources:?}, expected {node_ip}"
    );

    // HBONE to the resolved address (c): c's identity proven, a's seen by n2.
    let cursors = (n1.log_cursor(), cluster.ztun("n2").log_cursor());
    let t = a
        .bulk_echo(SocketAddr::from((VIP_HBONE, SVC_PORT)), 64 * 1024)
        .expect("a -> ext-hbone -> c");
    assert_eq!(t.bytes, 64 * 1024);
    let out = wait_for_line(
        n1,
        cursors.0,
        &[
            "direction=\"outbound\"",
            &format!("dst.hbone_addr={c_ip}:{TARGET}"),
        ],
    )
    .unwrap();
    assert!(
        out.contains("dst.identity=spiffe://cluster.local/ns/default/sa/sa-c"),
        "{out}"
    );
    // The plain TCP connections named no tunnel target, which this one does.
    for line in &plain {
        assert_field_only_in(&out, "dst.hbone_addr", &format!("{c_ip}:{TARGET}"), line);
    }
    wait_for_line(
        cluster.ztun("n2"),
        cursors.1,
        &[
            "direction=\"inbound\"",
            "src.identity=spiffe://cluster.local/ns/default/sa/sa-a",
        ],
    )
    .unwrap();

    // The upstream says NXDOMAIN: the connection is closed, the log says why.
    let cursor = n1.log_cursor();
    assert!(a
        .bulk_echo(SocketAddr::from((VIP_MISSING, SVC_PORT)), 1024)
        .is_err());
    let line = wait_for_line(n1, cursor, &["reason=\"hostname_unresolved\""]).unwrap();
    assert!(line.contains("backend-missing.test"), "{line}");

    let metrics = crate::ops::scrape(lab.node("n1").netns());
    assert!(
        metrics.contains("istio_on_demand_dns_total{")
            && metrics.contains("hostname=\"backend-tcp.test\""),
        "{metrics}"
    );
}

/// A recursive query for `name` (fully qualified, with its trailing dot) of type `t`, with a
/// random id.
pub(crate) fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut q = Message::new();
    q.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name).expect("a DNS name"), t));
    q.to_vec().expect("encodable query")
}

/// A DNS message with its TCP length prefix.
pub(crate) fn framed(msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("a DNS message fits a TCP frame");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// Sends one query for `name` of type `t` to `server` (from the calling thread's namespace,
/// usually [`CLUSTER_DNS`]) and returns the answer, checking it comes from `server` and
/// answers this query; fails if the connection ends first or none comes within [`WAIT`].
pub(crate) async fn resolve(
    server: SocketAddr,
    via: Via,
    name: &str,
    t: RecordType,
) -> anyhow::Result<Message> {
    let raw = query(name, t);
    let id = Message::from_vec(&raw)?.id();
    let answer = tokio::time::timeout(WAIT, async {
        match via {
            Via::Udp => {
                let any = SocketAddr::new(
                    match server {
                        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                    },
                    0,
                );
                let s = UdpSocket::bind(any).await?;
                s.send_to(&raw, server).await?;
                let mut buf = vec![0u8; 4096];
                let (n, from) = s.recv_from(&mut buf).await?;
                anyhow::ensure!(from == server, "answer from {from}");
                buf.truncate(n);
                anyhow::Ok(buf)
            }
            Via::Tcp => {
                let mut s = TcpStream::connect(server).await?;
                s.write_all(&framed(&raw)).await?;
                let len = usize::from(s.read_u16().await?);
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await?;
                anyhow::Ok(buf)
            }
        }
    })
    .await??;
    let m = Message::from_vec(&answer)?;
    anyhow::ensure!(m.id() == id, "answer id {} for query {id}", m.id());
    Ok(m)
}

/// The A and AAAA addresses of an answer, in order.
pub(crate) fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The queries a test upstream resolver received: name, type and the client's address.
#[derive(Default)]
pub(crate) struct Hits {
    seen: Mutex<Vec<(String, RecordType, IpAddr)>>,
    arrived: Condvar,
}

impl Hits {
    fn record(&self, name: String, t: RecordType, from: IpAddr) {
        self.seen.lock().push((name, t, from));
        self.arrived.notify_all();
    }

    pub(crate) fn total(&self) -> usize {
        self.seen.lock().len()
    }

    pub(crate) fn count(&self, name: &str, t: RecordType) -> usize {
        let seen = self.seen.lock();
        seen.iter()
            .filter(|(n, q, _)| n.eq_ignore_ascii_case(name) && *q == t)
            .count()
    }

    /// Where the queries for `name` came from.
    pub(crate) fn sources(&self, name: &str) -> Vec<IpAddr> {
        let seen = self.seen.lock();
        seen.iter()
            .filter(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|(.., from)| *from)
            .collect()
    }

    /// Waits until a query for each of `names` has arrived (within [`WAIT`] in all).
    pub(crate) fn wait_for(&self, names: impl IntoIterator<Item = String>) {
        let deadline = Instant::now() + WAIT;
        let mut seen = self.seen.lock();
        for name in names {
            let has = |seen: &[(String, RecordType, IpAddr)]| {
                seen.iter().any(|(n, ..)| n.eq_ignore_ascii_case(&name))
            };
            while !has(&seen) {
                let timed_out = self.arrived.wait_until(&mut seen, deadline).timed_out();
                assert!(
                    !timed_out || has(&seen),
                    "the upstream resolver never saw {name}"
                );
            }
        }
    }
}

/// What a test upstream resolver does with the queries it receives (all are recorded).
pub(crate) enum Upstream {
    /// Answers A queries for these names; other types of a known name get an empty NOERROR,
    /// unknown names NXDOMAIN.
    Answering(Vec<(String, Ipv4Addr)>),
    /// Never answers, and keeps TCP connections open.
    Silent,
}

/// Starts a test upstream resolver doing `mode` in n1's namespace on the node's link address
/// (UDP and TCP port 53). Returns once it listens: the task (dropping it stops the
/// resolver), its hits, and its address.
pub(crate) fn spawn_upstream(
    lab: &Lab,
    mode: Upstream,
) -> (NetnsTask<anyhow::Result<()>>, Arc<Hits>, SocketAddr) {
    let addr = SocketAddr::from((lab.node("n1").link_ip(), 53));
    let hits = Arc::new(Hits::default());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let task =
        lab.node("n1")
            .netns()
            .spawn_async(upstream_resolver(addr, mode, hits.clone(), bound_tx));
    bound_rx
        .recv_timeout(WAIT)
        .expect("the upstream resolver started")
        .expect("the upstream resolver bound port 53");
    (task, hits, addr)
}

/// Starts the test upstream resolver ([`spawn_upstream`]) knowing `external.test` →
/// [`EXTERNAL`] and `names` (A records), and writes a resolv.conf naming it. Returns the task
/// (dropping it stops the resolver), its hits, and the resolv.conf path for
/// `ZTUN_DNS_RESOLV_CONF`.
fn start_upstream(
    lab: &Lab,
    names: &[(&str, Ipv4Addr)],
) -> (NetnsTask<anyhow::Result<()>>, Arc<Hits>, String) {
    let mut known: Vec<(String, Ipv4Addr)> = vec![("external.test.".into(), EXTERNAL)];
    known.extend(names.iter().map(|(n, ip)| (n.to_string(), *ip)));
    let (task, hits, addr) = spawn_upstream(lab, Upstream::Answering(known));
    let resolv = lab.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver {}\noptions ndots:5\n",
            addr.ip()
        ),
    )
    .unwrap();
    (task, hits, resolv.to_string_lossy().into_owned())
}

/// A resolver on `addr` (UDP and TCP) recording every query in `hits` and replying as `mode`
/// says. Reports on `bound` once it listens.
async fn upstream_resolver(
    addr: SocketAddr,
    mode: Upstream,
    hits: Arc<Hits>,
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let sockets = async {
        std::io::Result::Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
    };
    let (udp, tcp) = match sockets.await {
        Ok(s) => {
            let _ = bound.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = bound.send(Err(e.to_string()));
            return Err(e.into());
        }
    };
    // The reply to one query, if any.
    let answer = move |raw: &[u8], from: SocketAddr| -> Option<Vec<u8>> {
        let q = Message::from_vec(raw).ok()?;
        let query = q.queries().first()?;
        let name = query.name().to_ascii();
        hits.record(name.clone(), query.query_type(), from.ip());
        let Upstream::Answering(known) = &mode else {
            return None;
        };
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(q.recursion_desired())
            .set_recursion_available(true);
        m.add_queries(q.queries().iter().cloned());
        match known.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some((_, ip)) if query.query_type() == RecordType::A => {
                m.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(*ip)),
                ));
            }
            Some(_) => {}
            None => {
                m.set_response_code(ResponseCode::NXDomain);
            }
        }
        m.to_vec().ok()
    };
    let answer = Arc::new(answer);
    let tcp_answer = answer.clone();
    tokio::spawn(async move {
        while let Ok((mut s, from)) = tcp.accept().await {
            let answer = tcp_answer.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut buf = vec![0u8; len as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    if let Some(out) = answer(&buf, from) {
                        let _ = s.write_all(&framed(&out)).await;
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = udp.recv_from(&mut buf).await?;
        if let Some(out) = answer(&buf[..n], peer) {
            udp.send_to(&out, peer).await?;
        }
    }
}
