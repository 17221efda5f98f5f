//! The core data plane end to end: captured pods talk through HBONE across and within
//! nodes, plaintext paths for uncaptured pods, and the CNI lifecycle.

use std::net::SocketAddr;

use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster, WAIT};

const BULK: u64 = 64 << 20;

#[test]
fn cross_node_and_same_node_hbone_with_integrity() {
    let lab = standard_lab("hbone_integrity");
    let mesh = MeshFile::from_lab(&lab);
    let c_server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let b_server = lab.pod("b").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;

    let to_c = SocketAddr::from((lab.pod("c").ip(), c_server.port()));
    let t = lab
        .pod("a")
        .bulk_echo(to_c, BULK)
        .expect("a -> c across nodes");
    assert_eq!(t.bytes, BULK);

    let to_b = SocketAddr::from((lab.pod("b").ip(), b_server.port()));
    let t = lab
        .pod("a")
        .bulk_echo(to_b, BULK)
        .expect("a -> b on the same node");
    assert_eq!(t.bytes, BULK);

    // Both ztuns logged the tunnelled connection with both SPIFFE identities.
    let n1 = cluster.ztun("n1");
    let line = n1.wait_for_log("direction=\"outbound\"", WAIT).unwrap();
    assert!(
        line.contains("spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
    let n2 = cluster.ztun("n2");
    let line = n2.wait_for_log("direction=\"inbound\"", WAIT).unwrap();
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
    assert!(
        line.contains("dst.identity=spiffe://cluster.local/ns/default/sa/sa-c"),
        "{line}"
    );
}

#[test]
fn server_sees_the_client_pod_ip() {
    let lab = standard_lab("client_ip");
    let mesh = MeshFile::from_lab(&lab);
    let recorder = lab.pod("c").spawn_peer_recorder(9090).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let seen = lab
        .pod("a")
        .peer_seen_by(SocketAddr::from((lab.pod("c").ip(), recorder.port())))
        .unwrap();
    assert_eq!(seen.ip(), lab.pod("a").ip());
}
