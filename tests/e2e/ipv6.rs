//! IPv6 end to end, in IPv6-only and dual-stack labs: HBONE across nodes with the client's
//! IPv6 address preserved and only 15008 on the wire, each family of a dual-stack pod
//! tunnelled on its own, the endpoint address of a dual-stack service chosen by its
//! `ipFamilies` as ztunnel does, plaintext (15006) and passthrough, DNS AAAA answers, and the
//! admin API on the IPv6 loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;
use ztun::testkit::lab::{CaptureMode, IpFamilies, Lab, PodSpec};
use ztun::testkit::mesh::MeshFile;

use crate::dataplane::send_marker;
use crate::dns::{addresses, resolve, Via, CLUSTER_DNS};
use crate::ops::http;
use crate::support::{
    assert_field_only_in, require_root, two_node_lab_in, wait_for_line, Cluster, WAIT,
};

const ECHO: u16 = 8080;
const RECORDER: u16 = 9090;
const SVC_PORT: u16 = 80;
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
const SVC_HOST: &str = "echo.default.svc.cluster.local.";

/// Nodes n1 and n2 in `families`: captured `a` (sa-a) on n1; captured `c` (sa-c), `t` (sa-t,
/// captured with TPROXY rather than REDIRECT) and uncaptured `u` (sa-u) on n2.
fn lab(test: &str, families: IpFamilies) -> Lab {
    two_node_lab_in(
        test,
        families,
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("c", "n2")
                .service_account("sa-c")
                .captured(true),
            PodSpec::new("t", "n2")
                .service_account("sa-t")
                .captured(true)
                .capture_mode(CaptureMode::Tproxy),
            PodSpec::new("u", "n2").service_account("sa-u"),
        ],
    )
}

/// The IPv6-only case: bytes cross nodes intact over HBONE, the server sees the client pod's
/// IPv6 address — with the destination captured by REDIRECT or by TPROXY — and the node link
/// carries nothing but TLS to 15008 (over IPv6).
#[test]
fn ipv6_only_pods_tunnel_across_nodes() {
    let lab = lab("v6_only_hbone", IpFamilies::V6Only);
    let mesh = MeshFile::from_lab(&lab);
    let echo = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let recorder = lab.pod("c").spawn_peer_recorder(RECORDER).unwrap();
    let t_echo = lab.pod("t").spawn_echo_server(ECHO).unwrap();
    let t_recorder = lab.pod("t").spawn_peer_recorder(RECORDER).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let (a, c, t) = (lab.pod("a"), lab.pod("c"), lab.pod("t"));
    assert_eq!(a.ips(), vec![IpAddr::V6(a.ip6())], "an IPv6-only pod");

    let capture = lab.capture("n1").unwrap();
    // a -> c over IPv6: every byte of the marker comes back.
    send_marker(
        lab,
        "a",
        SocketAddr::from((c.ip6(), ECHO)),
        b"ZTUN-V6-PLAINTEXT-MARKER-41c9;",
    );
    let seen = a
        .peer_seen_by(SocketAddr::from((c.ip6(), RECORDER)))
        .unwrap();
    assert_eq!(seen.ip(), IpAddr::V6(a.ip6()), "the server sees a's IPv6");
    let moved = a
        .bulk_echo(SocketAddr::from((t.ip6(), ECHO)), 1 << 20)
        .expect("a -> t (TPROXY) over IPv6");
    assert_eq!(moved.bytes, 1 << 20);
    let seen = a
        .peer_seen_by(SocketAddr::from((t.ip6(), RECORDER)))
        .unwrap();
    assert_eq!(
        seen.ip(),
        IpAddr::V6(a.ip6()),
        "the TPROXY server sees a's IPv6"
    );
    let pcap = capture.stop().unwrap();

    assert!(
        !pcap.contains(b"ZTUN-V6-PLAINTEXT-MARKER"),
        "plaintext on the link"
    );
    assert!(
        pcap.tcp_segments()
            .unwrap()
            .iter()
            .any(|s| s.dst.port() == 15008),
        "no TCP to 15008 on the link"
    );
    let stray = pcap
        .tcp_segments_not_matching(|s| s.has_port(15008) && s.src.is_ipv6())
        .unwrap();
    assert!(
        stray.is_empty(),
        "TCP other than IPv6 HBONE on the link: {stray:?}"
    );
    for server in [&echo, &recorder, &t_echo, &t_recorder] {
        assert_eq!(server.peers().len(), 1);
    }
}

/// Dual-stack pods: the client dials the server's IPv4 and its IPv6 address; both go through
/// HBONE (the destination's access log, ztunnel-style addresses) and the server sees the
/// client's address of the dialled family each time.
#[test]
fn dual_stack_pods_tunnel_each_family() {
    let lab = lab("dual_hbone", IpFamilies::Dual);
    let mesh = MeshFile::from_lab(&lab);
    let _recorder = lab.pod("c").spawn_peer_recorder(RECORDER).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let (a, c) = (lab.pod("a"), lab.pod("c"));
    assert_eq!(
        a.ips(),
        vec![IpAddr::V4(a.ip()), IpAddr::V6(a.ip6())],
        "a dual-stack pod"
    );
    let n2 = cluster.ztun("n2");
    for (dst_ip, src_ip) in [
        (IpAddr::V4(c.ip()), IpAddr::V4(a.ip())),
        (IpAddr::V6(c.ip6()), IpAddr::V6(a.ip6())),
    ] {
        let cursor = n2.log_cursor();
        let dst = SocketAddr::new(dst_ip, RECORDER);
        let seen = a.peer_seen_by(dst).unwrap();
        assert_eq!(seen.ip(), src_ip, "client address seen via {dst}");
        let line = wait_for_line(
            n2,
            cursor,
            &["direction=\"inbound\"", &format!("dst.addr={dst} ")],
        )
        .unwrap_or_else(|e| panic!("no inbound access log for {dst}: {e:#}"));
        assert!(
            line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
            "not through HBONE: {line}"
        );
        assert!(
            line.contains(&format!("src.addr={}:", host(src_ip))),
            "{line}"
        );
    }
}

/// A dual-stack service (an IPv4 and an IPv6 VIP) whose endpoint has both families. As in
/// ztunnel (`state.rs` `pick_workload_destination_or_resolve`), the endpoint address is one
/// allowed by the service's `ipFamilies`, of the dialled family when there is one, else the
/// first allowed: Dual keeps the dialled family; IPv4 sends an IPv6-VIP connection to the
/// endpoint's IPv4 address; IPv6 sends an IPv4-VIP connection to its IPv6 address. The
/// server sees the client address of the family it was reached on.
#[test]
fn dual_stack_service_picks_the_endpoint_address_by_ip_family() {
    let lab = lab("dual_service", IpFamilies::Dual);
    let with_families = |families: &'static str| {
        MeshFile::from_lab(&lab)
            .service_with_vips(
                "echo",
                "default",
                &[VIP4.into(), VIP6.into()],
                &[(SVC_PORT, RECORDER)],
                &["c"],
            )
            .edit_service("echo", |s| {
                s.insert("ipFamilies".into(), json!(families));
            })
    };
    let (dual, v4_only, v6_only) = (
        with_families("Dual"),
        with_families("IPv4"),
        with_families("IPv6"),
    );
    let _recorder = lab.pod("c").spawn_peer_recorder(RECORDER).unwrap();
    let cluster = Cluster::start(lab, dual);
    let lab = &cluster.lab;
    let (a, c) = (lab.pod("a"), lab.pod("c"));
    let (a4, a6) = (IpAddr::V4(a.ip()), IpAddr::V6(a.ip6()));
    let (c4, c6) = (IpAddr::V4(c.ip()), IpAddr::V6(c.ip6()));
    let n2 = cluster.ztun("n2");
    // Dials `vip`, checks the address the server saw and the endpoint address n2 delivered to.
    let call = |vip: IpAddr, client: IpAddr, endpoint: IpAddr| {
        let cursor = n2.log_cursor();
        let seen = a
            .peer_seen_by(SocketAddr::new(vip, SVC_PORT))
            .unwrap_or_else(|e| panic!("calling {vip}: {e:#}"));
        assert_eq!(seen.ip(), client, "client address seen via {vip}");
        let endpoint = SocketAddr::new(endpoint, RECORDER);
        wait_for_line(
            n2,
            cursor,
            &["direction=\"inbound\"", &format!("dst.addr={endpoint} ")],
        )
        .unwrap_or_else(|e| panic!("{vip} did not reach {endpoint}: {e:#}"));
    };

    // Dual: the dialled family.
    call(VIP6.into(), a6, c6);
    call(VIP4.into(), a4, c4);
    // IPv4 only: the IPv6 VIP leads to the endpoint's IPv4 address.
    cluster.update_mesh(&v4_only);
    call(VIP6.into(), a4, c4);
    call(VIP4.into(), a4, c4);
    // IPv6 only: the IPv4 VIP leads to the endpoint's IPv6 address.
    cluster.update_mesh(&v6_only);
    call(VIP4.into(), a6, c6);
    call(VIP6.into(), a6, c6);
}

/// Plaintext and passthrough over IPv6: an uncaptured client reaches captured pods (REDIRECT
/// and TPROXY) through their 15006 (the app sees the client's own IPv6 address, no identity),
/// and a captured pod
/// reaches an IPv6 address the mesh does not know (node n2's link) in plain TCP.
#[test]
fn plaintext_inbound_and_passthrough_over_ipv6() {
    let lab = lab("v6_plaintext", IpFamilies::V6Only);
    let mesh = MeshFile::from_lab(&lab);
    let _recorder = lab.pod("a").spawn_peer_recorder(RECORDER).unwrap();
    let _t_recorder = lab.pod("t").spawn_peer_recorder(RECORDER).unwrap();
    let node_echo = lab.node("n2").netns().spawn_echo_server(7070).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let (a, u) = (lab.pod("a"), lab.pod("u"));
    let n1 = cluster.ztun("n1");

    // Same node, TPROXY capture: 15006 too.
    let t = lab.pod("t");
    let seen = u
        .peer_seen_by(SocketAddr::from((t.ip6(), RECORDER)))
        .unwrap();
    assert_eq!(seen.ip(), IpAddr::V6(u.ip6()), "t's app sees u's own IPv6");
    cluster
        .ztun("n2")
        .wait_for_log(&format!("dst.addr=[{}]:{RECORDER} ", t.ip6()), WAIT)
        .expect("n2 logged the plaintext inbound connection to t");

    let cursor = n1.log_cursor();
    let to_a = SocketAddr::from((a.ip6(), RECORDER));
    let seen = u.peer_seen_by(to_a).unwrap();
    assert_eq!(seen.ip(), IpAddr::V6(u.ip6()), "the app sees u's own IPv6");
    let line = wait_for_line(
        n1,
        cursor,
        &["direction=\"inbound\"", &format!("dst.addr={to_a} ")],
    )
    .expect("n1 logged the plaintext inbound connection");
    assert!(
        line.contains(&format!("src.addr={}:", host(u.ip6().into()))),
        "{line}"
    );
    // c's connection to the same app, for contrast: over HBONE, its line names c's identity.
    let cursor = n1.log_cursor();
    let c = lab.pod("c");
    c.peer_seen_by(to_a).unwrap();
    let mtls = wait_for_line(
        n1,
        cursor,
        &["direction=\"inbound\"", &format!("dst.addr={to_a} ")],
    )
    .expect("n1 logged c's inbound connection");
    assert_field_only_in(
        &mtls,
        "src.identity",
        "spiffe://cluster.local/ns/default/sa/sa-c",
        &line,
    );

    let cursor = n1.log_cursor();
    let to_node = SocketAddr::from((lab.node("n2").link_ip6(), node_echo.port()));
    let t = a
        .bulk_echo(to_node, 1 << 20)
        .expect("a -> n2's link address");
    assert_eq!(t.bytes, 1 << 20);
    let line = wait_for_line(
        n1,
        cursor,
        &["direction=\"outbound\"", &format!("dst.addr={to_node} ")],
    )
    .expect("n1 logged the passthrough connection");
    // The address itself was dialled (the wait above); a's HBONE connection to t, for
    // contrast, names its tunnel target, which passthrough has not.
    let cursor = n1.log_cursor();
    let to_t = SocketAddr::from((lab.pod("t").ip6(), RECORDER));
    a.peer_seen_by(to_t).unwrap();
    let hbone = wait_for_line(n1, cursor, &["direction=\"outbound\""])
        .expect("n1 logged a's HBONE connection to t");
    assert_field_only_in(&hbone, "dst.hbone_addr", &to_t.to_string(), &line);
    assert_eq!(
        node_echo.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![IpAddr::V6(a.ip6())],
        "passthrough leaves from the pod's own address"
    );
}

/// The pod's DNS proxy answers A and AAAA for a dual-stack service from the same state, over
/// an IPv4 and an IPv6 resolver address (both captured to 15053), UDP and TCP; the AAAA
/// answer then carries traffic through HBONE to the endpoint's IPv6 address.
#[test]
fn dns_proxy_answers_aaaa_for_a_dual_stack_service() {
    let lab = lab("v6_dns", IpFamilies::Dual);
    let mesh = MeshFile::from_lab(&lab).service_with_vips(
        "echo",
        "default",
        &[VIP4.into(), VIP6.into()],
        &[(SVC_PORT, ECHO)],
        &["c"],
    );
    let _echo = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let a = lab.pod("a");
    let resolvers = [
        CLUSTER_DNS,
        SocketAddr::from((Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53), 53)),
    ];
    for server in resolvers {
        for transport in [Via::Udp, Via::Tcp] {
            let via = format!("{server} over {transport:?}");
            for (t, want) in [
                (RecordType::AAAA, IpAddr::V6(VIP6)),
                (RecordType::A, IpAddr::V4(VIP4)),
            ] {
                let m = a
                    .block_on(resolve(server, transport, SVC_HOST, t))
                    .unwrap_or_else(|e| panic!("{t} via {via}: {e:#}"));
                assert_eq!(m.response_code(), ResponseCode::NoError, "{t} via {via}");
                assert!(m.authoritative(), "{t} via {via}: a mesh answer");
                assert_eq!(addresses(&m), vec![want], "{t} via {via}");
            }
        }
    }

    let n2 = cluster.ztun("n2");
    let cursor = n2.log_cursor();
    let t = a
        .bulk_echo(SocketAddr::from((VIP6, SVC_PORT)), 1 << 20)
        .expect("connecting to the AAAA answer");
    assert_eq!(t.bytes, 1 << 20);
    let endpoint = SocketAddr::from((lab.pod("c").ip6(), ECHO));
    let line = wait_for_line(
        n2,
        cursor,
        &["direction=\"inbound\"", &format!("dst.addr={endpoint} ")],
    )
    .expect("the AAAA answer led to c's IPv6 address");
    assert!(line.contains("src.identity="), "through HBONE: {line}");
}

/// The admin API listens on `[::1]` beside `127.0.0.1`, as ztunnel's does with IPv6 on.
#[test]
fn admin_api_listens_on_both_loopbacks() {
    require_root();
    let lab = Lab::builder("v6_admin")
        .ip_families(IpFamilies::V6Only)
        .node("n1")
        .build()
        .expect("building the namespace lab");
    let cluster = Cluster::start(lab, MeshFile::default());
    let node = cluster.lab.node("n1").netns();
    for ip in [
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, 15000);
        let (status, body) =
            http(node, "GET", addr, "/config_dump").unwrap_or_else(|e| panic!("{addr}: {e:#}"));
        assert_eq!(status, 200, "{addr}: {body}");
        assert!(body.contains("\"workloads\""), "{addr}: {body}");
    }
}

/// `ip` as it starts a printed socket address: IPv6 in brackets.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
