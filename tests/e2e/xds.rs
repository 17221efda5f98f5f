//! Both nodes driven over xDS by `ztun control-plane` (running in n1's namespace, serving TLS
//! on n1's link IP): mesh-file edits reach both nodes without a restart, removals remove,
//! traffic survives a control-plane outage, a restart resyncs, and a malformed file keeps the
//! last good state.
//!
//! Propagation times (file write → both nodes applied the response) are printed, not
//! asserted: "within 1 s" is a performance goal, and these machines are shared.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ztun::testkit::lab::{bulk_echo, Lab};
use ztun::testkit::mesh::MeshFile;

use crate::support::{
    assert_field_only_in, standard_lab, wait_for_line, write_atomically, XdsCluster, WAIT,
};

/// The VIP of the service whose endpoint is `c` (for clients on n1).
const VIP_C: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The VIP of the service whose endpoint is `a` (for clients on n2).
const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

/// The lab's mesh without the workloads of the named pods.
fn without(mesh: &MeshFile, pods: &[&str]) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(&mesh.to_yaml()).expect("valid YAML");
    if let Some(list) = doc["workloads"].as_array_mut() {
        list.retain(|w| !pods.iter().any(|p| w["name"] == *p));
    }
    serde_yaml_ng::to_string(&doc).expect("YAML")
}

fn uid(lab: &Lab, pod: &str) -> String {
    lab.pod(pod).uid().to_string()
}

/// Whether a small echo from `pod` to `dst` completes.
fn reaches(lab: &Lab, pod: &str, dst: SocketAddr) -> bool {
    lab.pod(pod)
        .block_on(bulk_echo(dst, 4096, Duration::from_secs(20)))
        .is_ok()
}

/// The lab's mesh with two services: `to-c` (VIP_C:80 → c:8080) and `to-a` (VIP_A:80 → a:8080).
fn with_services(mesh: MeshFile) -> MeshFile {
    mesh.service("to-c", "default", VIP_C, &[(80, 8080)], &["c"])
        .service("to-a", "default", VIP_A, &[(80, 8080)], &["a"])
}

/// A DENY of `a`'s identity on port 8080, in the servers' namespace.
fn deny_a() -> Value {
    json!({
        "name": "deny-a",
        "namespace": "default",
        "scope": "Namespace",
        "action": "Deny",
        "rules": [[[{
            "principals": [{"Exact": "cluster.local/ns/default/sa/sa-a"}],
            "destinationPorts": [8080],
        }]]],
    })
}

#[test]
fn mesh_file_edits_reach_both_nodes_without_restart() {
    let lab = standard_lab("xds_edits");
    let base = MeshFile::from_lab(&lab);
    let _a = lab.pod("a").spawn_echo_server(8080).unwrap();
    let _c = lab.pod("c").spawn_echo_server(8080).unwrap();
    // Start without pod c's workload: n1 cannot know c's IP is a mesh workload.
    let cluster = XdsCluster::start(lab, &without(&base, &["c"]));
    let lab = &cluster.lab;
    let to_c = SocketAddr::from((lab.pod("c").ip(), 8080));
    let mut figures = Vec::new();

    // Workload added: a -> c becomes HBONE, proven by both ends' identities.
    let took = cluster.push(&base.to_yaml(), &uid(lab, "c"));
    figures.push(("add workload", took));
    let cursors = cluster.cursors();
    assert!(reaches(lab, "a", to_c), "a -> c after c joined the mesh");
    let out = wait_for_line(
        cluster.ztun("n1"),
        cursors[0],
        &["direction=\"outbound\"", &format!("dst.hbone_addr={to_c}")],
    )
    .unwrap();
    assert!(
        out.contains("dst.identity=spiffe://cluster.local/ns/default/sa/sa-c"),
        "{out}"
    );
    let inb = wait_for_line(
        cluster.ztun("n2"),
        cursors[1],
        &[
            "direction=\"inbound\"",
            "src.identity=spiffe://cluster.local/ns/default/sa/sa-a",
        ],
    )
    .unwrap();
    assert!(
        inb.contains("dst.identity=spiffe://cluster.local/ns/default/sa/sa-c"),
        "{inb}"
    );

    // Services added: each node resolves the VIP whose endpoint is on the other node.
    let services = with_services(base.clone());
    let took = cluster.push(
        &services.to_yaml(),
        "default/to-c.default.svc.cluster.local",
    );
    figures.push(("add services", took));
    let cursors = cluster.cursors();
    assert!(
        reaches(lab, "a", SocketAddr::from((VIP_C, 80))),
        "a (n1) -> VIP of c"
    );
    let via_service = wait_for_line(
        cluster.ztun("n1"),
        cursors[0],
        &["direction=\"outbound\"", &format!("dst.hbone_addr={to_c}")],
    )
    .unwrap();
    assert!(
        reaches(lab, "c", SocketAddr::from((VIP_A, 80))),
        "c (n2) -> VIP of a"
    );

    // Policy added: c's node denies a; b is still allowed.
    let denied = services.clone().policy(deny_a());
    let took = cluster.push(&denied.to_yaml(), "default/deny-a");
    figures.push(("add policy", took));
    assert!(!reaches(lab, "a", to_c), "a is denied by the new policy");
    assert!(reaches(lab, "b", to_c), "b is not");

    // Policy removed: a is allowed again.
    let took = cluster.push(&services.to_yaml(), "default/deny-a");
    figures.push(("remove policy", took));
    assert!(reaches(lab, "a", to_c), "a allowed after the policy left");

    // Service removed: n1 no longer knows the VIP (the connection is not load-balanced to c).
    let cursors = cluster.cursors();
    let took = cluster.push(
        &base
            .clone()
            .service("to-a", "default", VIP_A, &[(80, 8080)], &["a"])
            .to_yaml(),
        "default/to-c.default.svc.cluster.local",
    );
    figures.push(("remove service", took));
    assert!(
        !reaches(lab, "a", SocketAddr::from((VIP_C, 80))),
        "the VIP is gone"
    );
    let line = wait_for_line(
        cluster.ztun("n1"),
        cursors[0],
        &["direction=\"outbound\"", &format!("dst.addr={VIP_C}:80")],
    )
    .unwrap();
    // The VIP itself was dialled (a service route would log c's 15008), as no service.
    assert_field_only_in(
        &via_service,
        "dst.service",
        "\"to-c.default.svc.cluster.local\"",
        &line,
    );

    // Workload removed: a -> c is no longer tunnelled (n1 treats c's IP as unknown).
    let cursors = cluster.cursors();
    let took = cluster.push(&without(&base, &["c"]), &uid(lab, "c"));
    figures.push(("remove workload", took));
    let _ = reaches(lab, "a", to_c);
    let line = wait_for_line(
        cluster.ztun("n1"),
        cursors[0],
        &["direction=\"outbound\"", &format!("dst.addr={to_c}")],
    )
    .unwrap();
    // c's address itself was dialled (HBONE would log c's 15008), with neither a tunnel
    // target nor a peer identity, which the HBONE line of the start carried.
    assert_field_only_in(&out, "dst.hbone_addr", &to_c.to_string(), &line);
    assert_field_only_in(
        &out,
        "dst.identity",
        "spiffe://cluster.local/ns/default/sa/sa-c",
        &line,
    );

    for (what, took) in figures {
        eprintln!("xDS propagation, {what}: file written -> both nodes applied in {took:?}");
    }
}

#[test]
fn traffic_survives_a_control_plane_outage_and_a_restart_resyncs() {
    let lab = standard_lab("xds_outage");
    let base = MeshFile::from_lab(&lab);
    let _a = lab.pod("a").spawn_echo_server(8080).unwrap();
    let _c = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = XdsCluster::start(lab, &base.to_yaml());
    let to_c = SocketAddr::from((cluster.lab.pod("c").ip(), 8080));
    assert!(reaches(&cluster.lab, "a", to_c));

    // A malformed file is refused and the last good state stays.
    let cp_cursor = cluster.control_plane().log_cursor();
    write_atomically(&cluster.mesh_path, "workloads: [ {uid: broken");
    cluster
        .control_plane()
        .wait_for_log_after(
            cp_cursor,
            "mesh file rejected; keeping the last good state",
            WAIT,
        )
        .unwrap();
    assert!(
        reaches(&cluster.lab, "a", to_c),
        "still meshed after a bad edit"
    );

    // The control plane dies: the nodes notice, and traffic keeps flowing.
    let cursors = cluster.kill_control_plane();
    assert!(
        reaches(&cluster.lab, "a", to_c),
        "a -> c with the control plane down"
    );
    let out = wait_for_line(
        cluster.ztun("n1"),
        cursors[0],
        &[
            "direction=\"outbound\"",
            "dst.identity=spiffe://cluster.local/ns/default/sa/sa-c",
        ],
    );
    assert!(out.is_ok(), "still HBONE while disconnected");

    // The mesh changes while it is down; a restarted control plane resyncs both nodes.
    let services = with_services(base.clone());
    write_atomically(&cluster.mesh_path, &services.to_yaml());
    let cursors = cluster.cursors();
    let started = Instant::now();
    cluster.start_control_plane();
    cluster.wait_applied(&cursors, "default/to-c.default.svc.cluster.local");
    eprintln!(
        "xDS resync after control-plane restart: {:?}",
        started.elapsed()
    );
    for ((node, p), cursor) in cluster.ztuns.iter().zip(&cursors) {
        wait_for_line(p, *cursor, &["xDS stream established"])
            .unwrap_or_else(|e| panic!("ztun on {node} did not reconnect: {e:#}"));
    }
    assert!(reaches(&cluster.lab, "a", SocketAddr::from((VIP_C, 80))));
    assert!(reaches(&cluster.lab, "c", SocketAddr::from((VIP_A, 80))));
    // Both nodes resumed with what they had: every response applied after the restart
    // rejected nothing, and the rejection counter stayed at zero.
    for ((node, p), cursor) in cluster.ztuns.iter().zip(&cursors) {
        let applied: Vec<String> = p
            .logs()
            .into_iter()
            .skip(*cursor)
            .filter(|l| l.contains("xDS response applied"))
            .collect();
        assert!(!applied.is_empty(), "ztun on {node} applied nothing");
        for line in &applied {
            assert!(line.contains(" rejected=0 "), "ztun on {node}: {line}");
        }
        let metrics = crate::ops::scrape(cluster.lab.node(node).netns());
        assert!(
            metrics
                .lines()
                .any(|l| l == "ztun_xds_rejected_resources_total 0"),
            "ztun on {node} rejected resources:\n{metrics}"
        );
        assert!(
            !p.logs().iter().any(|l| l.contains("NACK")),
            "ztun on {node} rejected something"
        );
    }
    // The outage and the reconnect are in Istio's xDS metrics.
    let metrics = crate::ops::scrape(cluster.lab.node("n1").netns());
    let terminations: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("istio_xds_connection_terminations_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        terminations >= 1.0,
        "no xDS termination counted:\n{metrics}"
    );
    assert!(
        metrics.contains(
            "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"}"
        ),
        "{metrics}"
    );
}

/// `XDS_ON_DEMAND=true`: the nodes subscribe to no address at all; each pod's own workload is
/// fetched by uid when its first connection needs it, and a destination by `network/IP` on
/// the first miss. Traffic then flows through HBONE as with a full subscription.
#[test]
fn on_demand_nodes_fetch_what_their_connections_need() {
    let lab = standard_lab("xds_on_demand");
    let mesh = MeshFile::from_lab(&lab);
    let _c = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = XdsCluster::start_with(
        lab,
        &mesh.to_yaml(),
        &[
            ("XDS_ON_DEMAND", "true"),
            ("ISTIO_META_DNS_CAPTURE", "false"),
        ],
    );
    let to_c = SocketAddr::from((cluster.lab.pod("c").ip(), 8080));
    let t = cluster
        .lab
        .pod("a")
        .bulk_echo(to_c, 1 << 20)
        .expect("a -> c with on-demand xDS");
    assert_eq!(t.bytes, 1 << 20);
    let line = cluster
        .ztun("n2")
        .wait_for_log("direction=\"inbound\"", WAIT)
        .unwrap();
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
    // n1 holds only what was asked for: a and c, not b, not u.
    let (_, dump) = crate::ops::http(
        cluster.lab.node("n1").netns(),
        "GET",
        SocketAddr::from(([127, 0, 0, 1], 15000)),
        "/config_dump",
    )
    .unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let mut names: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "c"],
        "on-demand state should hold exactly what connections needed"
    );
}
