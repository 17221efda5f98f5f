//! Multi-network meshes end to end (compat.md §1.5): two networks of two nodes each, one
//! east-west gateway per network, nothing routable between the networks but the gateways.
//! A client on net1 reaches a service whose endpoints are on both networks: locally while a
//! local endpoint is healthy, else by double HBONE through net2's gateway, with both
//! identities checked and the destination's policy seeing the real source identity.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use ztun::identity::Identity;
use ztun::testkit::eastwest::EastWestGateway;
use ztun::testkit::lab::{bulk_echo, Lab, PodSpec};
use ztun::testkit::mesh::MeshFile;

use crate::support::{reaches, require_root, try_ctl, Cluster, WAIT};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HOST: &str = "web.default.svc.cluster.local";
const GW_PORT: u16 = 15008;

fn gateway_identity() -> Identity {
    Identity::new("cluster.local", "istio-system", "istio-eastwestgateway").unwrap()
}

/// net1: n1 (client `a`, gateway `gw1`), n2 (`c1`); net2: n3 (gateway `gw2`), n4 (`c2`).
/// `c1` and `c2` are the endpoints of `web`; the gateways are exposed to the other network.
fn lab(test: &str) -> Lab {
    require_root();
    Lab::builder(test)
        .node_on("n1", "net1")
        .node_on("n2", "net1")
        .node_on("n3", "net2")
        .node_on("n4", "net2")
        .pod(
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
        )
        .pod(
            PodSpec::new("c1", "n2")
                .service_account("sa-c")
                .captured(true),
        )
        .pod(
            PodSpec::new("c2", "n4")
                .service_account("sa-c")
                .captured(true),
        )
        .pod(PodSpec::new("gw1", "n1").namespace("istio-system"))
        .pod(PodSpec::new("gw2", "n3").namespace("istio-system"))
        .expose("gw1")
        .expose("gw2")
        .build()
        .expect("building the two-network lab")
}

/// The mesh as istiod describes it to every node: workloads with their network, the
/// gateways as workloads of their network, each endpoint naming its network's gateway,
/// `web` with a VIP on each network and failover led by the network.
fn mesh(lab: &Lab, c1_healthy: bool) -> MeshFile {
    mesh_with_gateway_port(lab, c1_healthy, GW_PORT)
}

fn mesh_with_gateway_port(lab: &Lab, c1_healthy: bool, gw_port: u16) -> MeshFile {
    let gw = |pod: &str, net: &str| {
        json!({
            "destination": format!("{net}/{}", lab.pod(pod).ip()),
            "hboneMtlsPort": gw_port,
        })
    };
    MeshFile::from_lab(lab)
        .service("web", "default", VIP, &[(80, 8080)], &["c1", "c2"])
        .edit_service("web", |s| {
            s.insert(
                "vips".into(),
                json!([format!("net1/{VIP}"), format!("net2/{VIP}")]),
            );
            s.insert(
                "loadBalancer".into(),
                json!({"routingPreferences": ["Network"], "mode": "Failover"}),
            );
        })
        // What the source's baggage names it by (telemetry at the destination).
        .edit_workload("a", |w| {
            w.insert("workloadName".into(), json!("a"));
        })
        .edit_workload("c1", |w| {
            w.insert("networkGateway".into(), gw("gw1", "net1"));
            if !c1_healthy {
                w.insert("status".into(), json!("Unhealthy"));
            }
        })
        .edit_workload("c2", |w| {
            w.insert("networkGateway".into(), gw("gw2", "net2"));
        })
        .edit_workload("gw1", |w| {
            w.insert("serviceAccount".into(), json!("istio-eastwestgateway"));
            w.insert("protocol".into(), json!("TCP"));
        })
        .edit_workload("gw2", |w| {
            w.insert("serviceAccount".into(), json!("istio-eastwestgateway"));
            w.insert("protocol".into(), json!("TCP"));
        })
}

/// Starts net2's gateway on `port` forwarding `web` to c2's HBONE port.
fn start_gateway(cluster: &Cluster, identity: &Identity, port: u16) -> EastWestGateway {
    let lab = &cluster.lab;
    let c2 = SocketAddr::from((lab.pod("c2").ip(), 15008));
    let routes = HashMap::from([(format!("{HOST}:80"), vec![c2])]);
    EastWestGateway::spawn(
        lab.pod("gw2").netns(),
        port,
        &cluster.ca_dir,
        identity,
        routes,
    )
    .expect("net2's gateway")
}

/// Whether a reaches `web` on its VIP.
fn reaches_web(lab: &Lab) -> bool {
    reaches(lab, "a", SocketAddr::from((VIP, 80)))
}

#[test]
fn cross_network_traffic_goes_through_the_gateway_with_both_identities_checked() {
    let lab = lab("mnet_cross");
    let base = mesh(&lab, true);
    let servers = [
        lab.pod("c1").spawn_echo_server(8080).unwrap(),
        lab.pod("c2").spawn_echo_server(8080).unwrap(),
    ];
    let cluster = Cluster::start(lab, base.clone());
    let gw2 = start_gateway(&cluster, &gateway_identity(), GW_PORT);
    let lab = &cluster.lab;

    // The networks are apart: a cannot reach c2 directly at all.
    let direct = SocketAddr::from((lab.pod("c2").ip(), 8080));
    assert!(
        lab.pod("a")
            .block_on(bulk_echo(direct, 1024, Duration::from_secs(3)))
            .is_err(),
        "net1 reaches a net2 pod directly"
    );

    // A healthy local endpoint: every connection stays on net1.
    for _ in 0..5 {
        assert!(reaches_web(lab), "a → web (local)");
    }
    assert!(gw2.crossings().is_empty(), "{:?}", gw2.crossings());

    // c1 unhealthy: failover to net2, through its gateway, as double HBONE.
    cluster.update_mesh(&mesh(lab, false));
    let capture = lab.capture("n1").unwrap();
    assert!(reaches_web(lab), "a → web (through net2's gateway)");
    let pcap = capture.stop().unwrap();
    let crossings = gw2.crossings();
    assert_eq!(crossings.len(), 1, "{crossings:?}");
    let c = &crossings[0];
    assert_eq!(c.authority, format!("{HOST}:80"));
    assert_eq!(
        c.client_identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/sa-a"
    );
    assert_eq!(
        c.forwarded_to,
        Some(SocketAddr::from((lab.pod("c2").ip(), 15008)))
    );
    // Nothing left n1 but TLS to the gateway's HBONE port.
    let gw_addr = SocketAddr::from((lab.pod("gw2").ip(), GW_PORT));
    assert!(!pcap.tcp_segments().unwrap().is_empty());
    let stray = pcap
        .tcp_segments_not_matching(|s| s.dst == gw_addr || s.src == gw_addr)
        .unwrap();
    assert!(stray.is_empty(), "n1's link carried {stray:?}");
    assert!(
        !pcap.contains(b"web.default"),
        "a CONNECT authority crossed the link in clear"
    );
    // The destination's ztun saw the inner tunnel: a's identity (from the inner TLS), a's
    // workload (from its baggage, its address being the gateway's), the service authority.
    let n4 = cluster.ztun("n4");
    let line = n4
        .wait_for_log(
            "src.identity=spiffe://cluster.local/ns/default/sa/sa-a",
            WAIT,
        )
        .unwrap();
    assert!(line.contains("direction=\"inbound\""), "{line}");
    assert!(line.contains("src.workload=\"a\""), "{line}");
    assert!(
        line.contains(&format!("src.addr={}:", lab.pod("gw2").ip())),
        "{line}"
    );
    // The source's access log shows the gateway hop and the service authority.
    let line = cluster
        .ztun("n1")
        .wait_for_log(&format!("dst.hbone_addr={HOST}:80"), WAIT)
        .unwrap();
    assert!(line.contains(&format!("dst.addr={gw_addr}")), "{line}");
    assert!(line.contains("dst.workload=\"c2\""), "{line}");
    // `ztun ctl explain` on the source node names the gateway hop for the VIP.
    // (A VIP is no workload: explain may fail, and then names the hop in its error text.)
    let vip = SocketAddr::from((VIP, 80)).to_string();
    let src = lab.pod("a").ip().to_string();
    let out = try_ctl(lab.node("n1"), &["explain", "--src", &src, "--dst", &vip])
        .unwrap_or_else(|e| format!("{e:#}"));
    assert!(
        out.contains(&format!("default/c2 (net2) via {}", gw_addr)),
        "{out}"
    );
    drop(servers);
}

#[test]
fn policy_at_the_destination_sees_the_real_source_and_bad_gateways_fail_closed() {
    let lab = lab("mnet_policy");
    let deny_a = json!({
        "name": "deny-a",
        "namespace": "default",
        "scope": "Namespace",
        "action": "Deny",
        "rules": [[[{"principals": [{"Exact": "cluster.local/ns/default/sa/sa-a"}]}]]],
    });
    let unhealthy = mesh(&lab, false);
    let _servers = [
        lab.pod("c1").spawn_echo_server(8080).unwrap(),
        lab.pod("c2").spawn_echo_server(8080).unwrap(),
    ];
    // A gateway (on 15009) proving another identity than the mesh gives it: refused at the
    // outer hop, nothing forwarded.
    const IMPOSTOR_PORT: u16 = 15009;
    let impostor_mesh = mesh_with_gateway_port(&lab, false, IMPOSTOR_PORT);
    let cluster = Cluster::start(lab, impostor_mesh);
    let lab = &cluster.lab;
    let impostor = Identity::new("cluster.local", "istio-system", "not-the-gateway").unwrap();
    let fake = start_gateway(&cluster, &impostor, IMPOSTOR_PORT);
    assert!(
        !reaches_web(lab),
        "a reached web through an impostor gateway"
    );
    let line = cluster
        .ztun("n1")
        .wait_for_log("reason=\"peer_identity_unexpected\"", WAIT)
        .unwrap();
    assert!(
        line.contains(&format!("dst.hbone_addr={HOST}:80")),
        "{line}"
    );
    assert!(fake.crossings().is_empty(), "{:?}", fake.crossings());

    // The real gateway.
    cluster.update_mesh(&unhealthy);
    let gw2 = start_gateway(&cluster, &gateway_identity(), GW_PORT);
    assert!(reaches_web(lab), "a → web through net2's gateway");

    // c2's namespace denies a: the inner tunnel is refused by n4 (401), on a's identity.
    cluster.update_mesh(&unhealthy.clone().policy(deny_a));
    assert!(!reaches_web(lab), "a reached c2 despite the deny");
    cluster
        .ztun("n4")
        .wait_for_log("denied by policy: deny_matched policy=default/deny-a", WAIT)
        .unwrap();
    assert!(gw2.crossings().len() >= 2);

    // A remote endpoint whose gateway the state does not know: refused with its own reason,
    // nothing dialled.
    let lost = unhealthy.edit_workload("c2", |w| {
        w.insert(
            "networkGateway".into(),
            json!({"destination": "net2/192.0.2.1", "hboneMtlsPort": GW_PORT}),
        );
    });
    cluster.update_mesh(&lost);
    let before = gw2.crossings().len();
    assert!(!reaches_web(lab));
    cluster
        .ztun("n1")
        .wait_for_log("reason=\"unknown_network_gateway\"", WAIT)
        .unwrap();
    assert_eq!(gw2.crossings().len(), before);
    let metrics = crate::ops::scrape(lab.node("n1").netns());
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "ztun_connection_failures_total",
            &[("reason", "unknown_network_gateway")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// Double HBONE and revocation: the inner tunnel's peer is the destination, not the gateway,
/// so a CRL revoking the destination's certificate must close an open cross-network tunnel
/// (as it closes a single-HBONE one) and refuse new ones, while the gateway's own certificate
/// is still valid.
#[test]
fn revoking_the_destination_behind_a_gateway_closes_its_double_hbone_tunnel() {
    let lab = lab("mnet_crl");
    let crl = lab.dir().join("crl.pem");
    std::fs::write(&crl, "").unwrap();
    let _server = lab.pod("c2").spawn_echo_server(8080).unwrap();
    let crl_env = crl.to_string_lossy().into_owned();
    // c1 unhealthy: every connection to web goes through net2's gateway to c2.
    let base = mesh(&lab, false);
    let cluster = Cluster::start_with(lab, base, &[("CRL_PATH", crl_env.as_str())]);
    let gw2 = start_gateway(&cluster, &gateway_identity(), GW_PORT);
    let lab = &cluster.lab;
    let web = SocketAddr::from((VIP, 80));

    let (stream, opened, finish) = crate::crl::long_stream(&cluster, "a", web);
    opened
        .recv_timeout(WAIT)
        .expect("a's long stream to web opened");
    let crossings = gw2.crossings();
    assert_eq!(crossings.len(), 1, "{crossings:?}");
    assert_eq!(
        crossings[0].forwarded_to,
        Some(SocketAddr::from((lab.pod("c2").ip(), 15008)))
    );

    // Revoke the certificate n4 holds for c2's service account (c1's, minted by n2, stays
    // valid, and so does the gateway's).
    let c2_serial = crate::crl::serial_in_dump(&cluster, "n4", "sa-c");
    let ca = crate::crl::ca_files(&cluster.ca_dir);
    let n1 = cluster.ztun("n1");
    let cursor = n1.log_cursor();
    crate::crl::publish(
        &crl,
        &ztun::testkit::certs::crl_pem(&ca, &[c2_serial], time::Duration::hours(1)).unwrap(),
    );
    let line = n1
        .wait_for_log_after(cursor, "reason=\"cert_revoked\"", WAIT)
        .expect("n1 closes the double-HBONE tunnel to the revoked c2");
    assert!(
        line.contains(&format!("dst.hbone_addr={HOST}:80")),
        "{line}"
    );
    assert!(line.contains("dst.workload=\"c2\""), "{line}");
    let _ = finish.send(());
    let err = stream
        .join()
        .unwrap()
        .expect_err("a's open stream through the gateway must be closed");
    eprintln!("a's long stream ended: {err:#}");

    // A new connection: the gateway still forwards it, the inner handshake is refused.
    let cursor = n1.log_cursor();
    assert!(!reaches_web(lab), "a reached the revoked c2");
    n1.wait_for_log_after(cursor, "reason=\"cert_revoked\"", WAIT)
        .expect("the new inner handshake is refused as revoked");
    assert_eq!(gw2.crossings().len(), 2, "{:?}", gw2.crossings());
}
