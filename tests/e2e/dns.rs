//! The DNS proxy end to end: a captured pod's queries to its cluster resolver address are
//! redirected by the capture rules to ztun's 15053 in the pod, which answers mesh names
//! itself and forwards the rest to the resolvers of its resolv.conf (here a test resolver in
//! node n1's namespace), over UDP and TCP; the answer then carries traffic through HBONE.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster, WAIT};

/// Where the pod believes its resolver is (kube-dns); the capture rules redirect it.
const CLUSTER_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53)), 53);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const SVC_PORT: u16 = 80;
const TARGET: u16 = 8080;
/// What the test upstream resolver answers for `external.test`.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

#[derive(Debug, Clone, Copy)]
enum Via {
    Udp,
    Tcp,
}

#[test]
fn captured_pod_resolves_mesh_and_external_names_then_connects() {
    let lab = standard_lab("dns_resolve");
    let mesh =
        MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["c"]);
    let _server = lab.pod("c").spawn_echo_server(TARGET).unwrap();

    // The upstream resolver lives in n1's namespace on the node's link address; ztun (on n1)
    // reads it from its resolv.conf and reaches it from the pod's namespace.
    let upstream_addr = SocketAddr::from((lab.node("n1").link_ip(), 53));
    let upstream_hits = Arc::new(AtomicUsize::new(0));
    let _upstream = lab
        .node("n1")
        .netns()
        .spawn_async(upstream_resolver(upstream_addr, upstream_hits.clone()));
    let resolv = lab.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver {}\noptions ndots:5\n",
            upstream_addr.ip()
        ),
    )
    .unwrap();
    let resolv = resolv.to_string_lossy().into_owned();
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
                .block_on(resolve(name, RecordType::A, via))
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
        let m = a.block_on(resolve("echo.", RecordType::AAAA, via)).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());

        let before = upstream_hits.load(Ordering::SeqCst);
        let m = a
            .block_on(resolve("external.test.", RecordType::A, via))
            .unwrap_or_else(|e| panic!("external name over {via:?}: {e:#}"));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![IpAddr::V4(EXTERNAL)], "{via:?}");
        assert!(
            upstream_hits.load(Ordering::SeqCst) > before,
            "the external name went through the upstream resolver"
        );
        // The upstream's NXDOMAIN is passed on.
        let m = a
            .block_on(resolve("missing.test.", RecordType::A, via))
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
    let metrics = scrape(lab.node("n1").netns());
    for family in [
        "istio_dns_requests_total{",
        "istio_dns_upstream_requests_total{",
        "istio_dns_upstream_request_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    assert!(metrics.contains("request_protocol=\"tcp\""));
}

/// With the state loaded from `LOCAL_XDS_PATH` there is no control plane to reach: answers
/// come from the snapshot ztun holds, and keep coming while nothing refreshes it.
#[test]
fn answers_keep_coming_without_a_control_plane() {
    let lab = standard_lab("dns_no_cp");
    let mesh =
        MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["c"]);
    let resolv = lab.dir().join("resolv.conf");
    // No nameserver at all: only mesh names can resolve.
    std::fs::write(&resolv, "search default.svc.cluster.local\n").unwrap();
    let resolv = resolv.to_string_lossy().into_owned();
    let cluster = Cluster::start_with(lab, mesh, &[("ZTUN_DNS_RESOLV_CONF", resolv.as_str())]);
    let a = cluster.lab.pod("a");
    for round in 0..3 {
        for via in [Via::Udp, Via::Tcp] {
            let m = a.block_on(resolve("echo.", RecordType::A, via)).unwrap();
            assert_eq!(
                addresses(&m),
                vec![IpAddr::V4(VIP)],
                "round {round} {via:?}"
            );
        }
        // With no upstream, forwarded names fail cleanly.
        let m = a
            .block_on(resolve("external.test.", RecordType::A, Via::Udp))
            .unwrap();
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends one query for `name` to the pod's cluster resolver address and returns the answer.
async fn resolve(name: &str, t: RecordType, via: Via) -> anyhow::Result<Message> {
    let mut q = Message::new();
    let id: u16 = rand::random();
    q.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name)?, t));
    let raw = q.to_vec()?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        match via {
            Via::Udp => {
                let s = UdpSocket::bind("0.0.0.0:0").await?;
                s.send_to(&raw, CLUSTER_DNS).await?;
                let mut buf = vec![0u8; 4096];
                let (n, from) = s.recv_from(&mut buf).await?;
                anyhow::ensure!(from == CLUSTER_DNS, "answer from {from}");
                buf.truncate(n);
                anyhow::Ok(buf)
            }
            Via::Tcp => {
                let mut s = TcpStream::connect(CLUSTER_DNS).await?;
                s.write_all(&(raw.len() as u16).to_be_bytes()).await?;
                s.write_all(&raw).await?;
                let len = s.read_u16().await? as usize;
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

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// A resolver on `addr` (UDP and TCP) knowing one name, `external.test` → [`EXTERNAL`];
/// everything else is NXDOMAIN. Counts the queries it answers.
async fn upstream_resolver(addr: SocketAddr, hits: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let udp = UdpSocket::bind(addr).await?;
    let tcp = TcpListener::bind(addr).await?;
    let answer = move |raw: &[u8]| -> Option<Vec<u8>> {
        let q = Message::from_vec(raw).ok()?;
        hits.fetch_add(1, Ordering::SeqCst);
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(q.recursion_desired())
            .set_recursion_available(true);
        m.add_queries(q.queries().iter().cloned());
        let query = q.queries().first()?;
        if query
            .name()
            .to_ascii()
            .eq_ignore_ascii_case("external.test.")
            && query.query_type() == RecordType::A
        {
            m.add_answer(Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(A(EXTERNAL)),
            ));
        } else {
            m.set_response_code(ResponseCode::NXDomain);
        }
        m.to_vec().ok()
    };
    let answer = Arc::new(answer);
    let tcp_answer = answer.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let answer = tcp_answer.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut buf = vec![0u8; len as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(out) = answer(&buf) else { return };
                    let _ = s.write_all(&(out.len() as u16).to_be_bytes()).await;
                    let _ = s.write_all(&out).await;
                }
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = udp.recv_from(&mut buf).await?;
        if let Some(out) = answer(&buf[..n]) {
            udp.send_to(&out, peer).await?;
        }
    }
}

/// The node's metrics page.
fn scrape(ns: &ztun::testkit::lab::Netns) -> String {
    ns.block_on(async {
        let mut s = TcpStream::connect(("127.0.0.1", 15020)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await??;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    })
    .expect("scraping metrics")
}
