//! The DNS proxy's per-pod limits (README "DNS: bounded work per packet", docs/limits.md
//! "DNS proxy"): forwarded queries in flight and TCP connections, against an upstream resolver
//! that never answers.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use ztun::testkit::mesh::MeshFile;

use super::{ECHO, VIP};
use crate::support::{standard_lab, wait_for_line, Cluster, WAIT};

/// Where a pod believes its resolver is (kube-dns); the capture rules redirect it to 15053.
const CLUSTER_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53)), 53);

/// DNS: "bounded ... DNS work": a pod may have 64 forwarded queries in flight (the 65th is
/// answered SERVFAIL at once, never forwarded) and 32 TCP connections open (the 33rd is
/// closed unanswered), each pod on its own budget. The upstream resolver never answers and
/// is listed 40 times, so each forwarded query holds its place for 80 s (UDP) or 200 s (TCP)
/// while ztun tries every entry: longer than any wait here.
#[test]
fn dns_proxy_caps_forwarded_queries_and_tcp_connections_per_pod() {
    let lab = standard_lab("claim_dns_limits");
    let mesh = MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(80, ECHO)], &["c"]);
    let upstream = SocketAddr::from((lab.node("n1").link_ip(), 53));
    let (seen_tx, seen) = mpsc::channel();
    let (bound_tx, bound_rx) = mpsc::channel();
    let _resolver = lab
        .node("n1")
        .netns()
        .spawn_async(silent_resolver(upstream, seen_tx, bound_tx));
    bound_rx
        .recv_timeout(WAIT)
        .expect("the silent resolver started")
        .expect("the silent resolver bound port 53");
    let resolv = lab.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {}\n", upstream.ip()).repeat(40),
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
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    let n1 = cluster.ztun("n1");
    let mut upstream_saw = HashSet::new();

    // 64 forwarded UDP queries from a, all reaching the upstream: a's budget is spent.
    a.block_on(async {
        for i in 0..64 {
            send_udp_query(&format!("hold-{i}.test.")).await?;
        }
        anyhow::Ok(())
    })
    .unwrap();
    wait_until_seen(
        &seen,
        &mut upstream_saw,
        (0..64).map(|i| format!("hold-{i}.test.")),
    );
    let cursor = n1.log_cursor();
    let m = a
        .block_on(resolve("over.test.", Via::Udp))
        .expect("the 65th query is answered (SERVFAIL), not forwarded");
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    wait_for_line(n1, cursor, &["dns request", "over.test", "overloaded"]).unwrap();
    upstream_saw.extend(seen.try_iter().map(|(name, _)| name));
    assert!(
        !upstream_saw.contains("over.test."),
        "the 65th was forwarded"
    );
    // Local answers need no forwarding budget; b has its own.
    assert_eq!(
        mesh_answer(&a.block_on(resolve("echo.", Via::Udp)).unwrap()),
        [VIP]
    );
    b.block_on(send_udp_query("b-own-budget.test.")).unwrap();
    wait_until_seen(&seen, &mut upstream_saw, ["b-own-budget.test.".to_string()]);

    // 32 TCP connections from b, each waiting on a forwarded query: b's TCP budget is spent.
    let held = b.spawn_async(async {
        let mut open = Vec::new();
        for i in 0..32 {
            let mut s = TcpStream::connect(CLUSTER_DNS).await?;
            s.write_all(&framed(&query(&format!("tcp-hold-{i}.test."))))
                .await?;
            open.push(s);
        }
        std::future::pending::<()>().await;
        anyhow::Ok(open)
    });
    wait_until_seen(
        &seen,
        &mut upstream_saw,
        (0..32).map(|i| format!("tcp-hold-{i}.test.")),
    );
    let cursor = n1.log_cursor();
    let refused = b.block_on(resolve("echo.", Via::Tcp));
    assert!(
        refused.is_err(),
        "the 33rd TCP connection was served: {refused:?}"
    );
    wait_for_line(n1, cursor, &["too many DNS TCP connections"]).unwrap();
    assert_eq!(
        mesh_answer(&b.block_on(resolve("echo.", Via::Udp)).unwrap()),
        [VIP]
    );
    assert_eq!(
        mesh_answer(&a.block_on(resolve("echo.", Via::Tcp)).unwrap()),
        [VIP]
    );
    held.abort();
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Udp,
    Tcp,
}

/// A recursive A query for `name` with a random id.
fn query(name: &str) -> Vec<u8> {
    let mut q = Message::new();
    q.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    q.add_query(Query::query(
        Name::from_ascii(name).expect("a DNS name"),
        RecordType::A,
    ));
    q.to_vec().expect("encodable query")
}

/// A DNS message with its TCP length prefix.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// Sends an A query for `name` to the pod's resolver over UDP, not waiting for an answer.
async fn send_udp_query(name: &str) -> anyhow::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0").await?;
    s.send_to(&query(name), CLUSTER_DNS).await?;
    Ok(())
}

/// Asks the pod's resolver for `name` and returns the answer; fails if the connection ends
/// first or none comes within [`WAIT`].
async fn resolve(name: &str, via: Via) -> anyhow::Result<Message> {
    let raw = query(name);
    let answer = tokio::time::timeout(WAIT, async {
        match via {
            Via::Udp => {
                let s = UdpSocket::bind("0.0.0.0:0").await?;
                s.send_to(&raw, CLUSTER_DNS).await?;
                let mut buf = vec![0u8; 4096];
                let n = s.recv(&mut buf).await?;
                buf.truncate(n);
                anyhow::Ok(buf)
            }
            Via::Tcp => {
                let mut s = TcpStream::connect(CLUSTER_DNS).await?;
                s.write_all(&framed(&raw)).await?;
                let len = s.read_u16().await? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await?;
                anyhow::Ok(buf)
            }
        }
    })
    .await??;
    let m = Message::from_vec(&answer)?;
    anyhow::ensure!(
        m.id() == Message::from_vec(&raw)?.id(),
        "answer to another query"
    );
    Ok(m)
}

/// The IPv4 addresses of a NOERROR answer.
fn mesh_answer(m: &Message) -> Vec<Ipv4Addr> {
    assert_eq!(m.response_code(), ResponseCode::NoError, "{m:?}");
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Receives names from the silent resolver into `saw` until it holds all of `names`.
fn wait_until_seen(
    seen: &mpsc::Receiver<(String, &'static str)>,
    saw: &mut HashSet<String>,
    names: impl IntoIterator<Item = String>,
) {
    let deadline = Instant::now() + WAIT;
    for name in names {
        while !saw.contains(&name) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (got, _) = seen
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the upstream never saw {name}"));
            saw.insert(got);
        }
    }
}

/// A resolver on `addr` (UDP and TCP) that never answers: it reports the name of every query
/// on `seen` (with the transport) and keeps TCP connections open. Reports on `bound` once it
/// listens.
async fn silent_resolver(
    addr: SocketAddr,
    seen: mpsc::Sender<(String, &'static str)>,
    bound: mpsc::Sender<std::io::Result<()>>,
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
            let _ = bound.send(Err(std::io::Error::new(e.kind(), e.to_string())));
            return Err(e.into());
        }
    };
    let name = |raw: &[u8]| {
        Message::from_vec(raw)
            .ok()
            .and_then(|m| m.queries().first().map(|q| q.name().to_ascii()))
    };
    let tcp_seen = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let seen = tcp_seen.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut buf = vec![0u8; len as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    if let Some(n) = name(&buf) {
                        let _ = seen.send((n, "tcp"));
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, _) = udp.recv_from(&mut buf).await?;
        if let Some(n) = name(&buf[..n]) {
            let _ = seen.send((n, "udp"));
        }
    }
}
