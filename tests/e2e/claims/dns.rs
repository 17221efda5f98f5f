//! The DNS proxy's per-pod limits (README "DNS: bounded work per packet", docs/limits.md
//! "DNS proxy"): forwarded queries in flight and TCP connections, against an upstream resolver
//! that never answers.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use ztun::testkit::lab::Pod;
use ztun::testkit::mesh::MeshFile;

use super::{ECHO, VIP};
use crate::dns::{addresses, framed, query, resolve, spawn_upstream, Upstream, Via, CLUSTER_DNS};
use crate::support::{standard_lab, wait_for_line, Cluster};

/// DNS: "bounded ... DNS work": a pod may have 64 forwarded queries in flight (the 65th is
/// answered SERVFAIL at once, never forwarded) and 32 TCP connections open (the 33rd is
/// closed unanswered), each pod on its own budget. The upstream resolver never answers and
/// is listed 40 times, so each forwarded query holds its place for 80 s (UDP) or 200 s (TCP)
/// while ztun tries every entry: longer than any wait here.
#[test]
fn dns_proxy_caps_forwarded_queries_and_tcp_connections_per_pod() {
    let lab = standard_lab("claim_dns_limits");
    let mesh = MeshFile::from_lab(&lab).service("echo", "default", VIP, &[(80, ECHO)], &["c"]);
    let (_resolver, hits, upstream) = spawn_upstream(&lab, Upstream::Silent);
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
    // The mesh name `echo.` as `pod` resolves it over `via`: a NOERROR answer's addresses.
    let echo = |pod: &Pod, via: Via| {
        let m = pod
            .block_on(resolve(CLUSTER_DNS, via, "echo.", RecordType::A))
            .unwrap_or_else(|e| panic!("echo. over {via:?}: {e:#}"));
        assert_eq!(m.response_code(), ResponseCode::NoError, "{m:?}");
        addresses(&m)
    };

    // 64 forwarded UDP queries from a, all reaching the upstream: a's budget is spent.
    a.block_on(async {
        for i in 0..64 {
            send_udp_query(&format!("hold-{i}.test.")).await?;
        }
        anyhow::Ok(())
    })
    .unwrap();
    hits.wait_for((0..64).map(|i| format!("hold-{i}.test.")));
    let cursor = n1.log_cursor();
    let m = a
        .block_on(resolve(CLUSTER_DNS, Via::Udp, "over.test.", RecordType::A))
        .expect("the 65th query is answered (SERVFAIL), not forwarded");
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    wait_for_line(n1, cursor, &["dns request", "over.test", "overloaded"]).unwrap();
    assert!(
        hits.sources("over.test.").is_empty(),
        "the 65th was forwarded"
    );
    // Local answers need no forwarding budget; b has its own.
    assert_eq!(echo(a, Via::Udp), [IpAddr::V4(VIP)]);
    b.block_on(send_udp_query("b-own-budget.test.")).unwrap();
    hits.wait_for(["b-own-budget.test.".to_string()]);

    // 32 TCP connections from b, each waiting on a forwarded query: b's TCP budget is spent.
    let held = b.spawn_async(async {
        let mut open = Vec::new();
        for i in 0..32 {
            let mut s = TcpStream::connect(CLUSTER_DNS).await?;
            let q = query(&format!("tcp-hold-{i}.test."), RecordType::A);
            s.write_all(&framed(&q)).await?;
            open.push(s);
        }
        std::future::pending::<()>().await;
        anyhow::Ok(open)
    });
    hits.wait_for((0..32).map(|i| format!("tcp-hold-{i}.test.")));
    let cursor = n1.log_cursor();
    let refused = b.block_on(resolve(CLUSTER_DNS, Via::Tcp, "echo.", RecordType::A));
    assert!(
        refused.is_err(),
        "the 33rd TCP connection was served: {refused:?}"
    );
    wait_for_line(n1, cursor, &["too many DNS TCP connections"]).unwrap();
    assert_eq!(echo(b, Via::Udp), [IpAddr::V4(VIP)]);
    assert_eq!(echo(a, Via::Tcp), [IpAddr::V4(VIP)]);
    held.abort();
}

/// Sends an A query for `name` to the pod's resolver over UDP, not waiting for an answer.
async fn send_udp_query(name: &str) -> anyhow::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0").await?;
    s.send_to(&query(name, RecordType::A), CLUSTER_DNS).await?;
    Ok(())
}
