//! The core data plane end to end: captured pods talk through HBONE across and within
//! nodes, plaintext paths for uncaptured pods, and the CNI lifecycle.

use std::net::SocketAddr;

use ztun::testkit::mesh::MeshFile;

use crate::support::{assert_field_only_in, standard_lab, wait_for_line, Cluster, WAIT};

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
    // The same-node leg went through n1's ztun as mTLS HBONE: out to b's 15008, in on b's
    // HBONE listener with both proven identities and every byte.
    let b_ip = lab.pod("b").ip();
    let n1 = cluster.ztun("n1");
    let out = wait_for_line(
        n1,
        0,
        &["direction=\"outbound\"", &format!("dst.addr={b_ip}:15008")],
    )
    .unwrap();
    assert!(out.contains("direction=\"outbound\""), "{out}");
    assert!(out.contains(&format!("dst.hbone_addr={to_b}")), "{out}");
    assert!(out.contains(&format!("bytes_sent={BULK}")), "{out}");
    let inb = wait_for_line(
        n1,
        0,
        &[
            "direction=\"inbound\"",
            "dst.identity=spiffe://cluster.local/ns/default/sa/sa-b",
        ],
    )
    .unwrap();
    assert!(inb.contains("direction=\"inbound\""), "{inb}");
    assert!(
        inb.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{inb}"
    );
    assert!(inb.contains(&format!("bytes_recv={BULK}")), "{inb}");

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
    // Through ztun, not around it: n2 delivered a tunnel to the recorder from a's address,
    // proving a's identity.
    let target = SocketAddr::from((lab.pod("c").ip(), recorder.port()));
    let line = cluster
        .ztun("n2")
        .wait_for_log(&format!("dst.hbone_addr={target}"), WAIT)
        .unwrap();
    assert!(line.contains(&format!("src.addr={}:", seen.ip())), "{line}");
    assert!(line.contains("direction=\"inbound\""), "{line}");
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
}

/// `ENABLE_ORIG_SRC=false`: delivery comes from the destination pod's own address, as ztunnel
/// does, over HBONE (15008) and over plaintext (15006) alike.
#[test]
fn without_orig_src_the_server_sees_its_own_pod_ip() {
    let lab = standard_lab("no_orig_src");
    let mesh = MeshFile::from_lab(&lab);
    let recorder = lab.pod("c").spawn_peer_recorder(9090).unwrap();
    let cluster = Cluster::start_with(lab, mesh, &[("ENABLE_ORIG_SRC", "false")]);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), recorder.port()));
    let tunnelled = lab.pod("a").peer_seen_by(dst).unwrap();
    assert_eq!(tunnelled.ip(), lab.pod("c").ip(), "over HBONE");
    let plaintext = lab.pod("u").peer_seen_by(dst).unwrap();
    assert_eq!(plaintext.ip(), lab.pod("c").ip(), "over 15006");
    // The tunnel did carry it: n2 logged the inbound connection from a.
    let line = cluster
        .ztun("n2")
        .wait_for_log("src.workload=\"a\"", WAIT)
        .unwrap();
    assert!(line.contains("direction=\"inbound\""), "{line}");
}

/// Sends `marker` many times over one connection from `pod` to `dst` and checks every byte
/// is echoed back.
pub(crate) fn send_marker(
    lab: &ztun::testkit::lab::Lab,
    pod: &str,
    dst: SocketAddr,
    marker: &'static [u8],
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    lab.pod(pod)
        .block_on(async move {
            let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
            let payload = marker.repeat(1000);
            s.write_all(&payload).await?;
            s.shutdown().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            anyhow::ensure!(back == payload, "echo differs");
            anyhow::Ok(())
        })
        .expect("marker round trip");
}

#[test]
fn node_link_carries_only_tls_to_15008() {
    let lab = standard_lab("link_tls");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let capture = lab.capture("n1").unwrap();
    send_marker(
        lab,
        "a",
        SocketAddr::from((lab.pod("c").ip(), server.port())),
        b"ZTUN-PLAINTEXT-MARKER-7f3a;",
    );
    let pcap = capture.stop().unwrap();
    assert!(
        !pcap.contains(b"ZTUN-PLAINTEXT-MARKER"),
        "plaintext marker seen on the node link"
    );
    assert!(
        pcap.saw_tcp_port(15008).unwrap(),
        "no traffic to 15008 on the link"
    );
    // Nothing but HBONE: in particular the app port was not reached directly over the link.
    let stray = pcap
        .tcp_segments_not_matching(|s| s.has_port(15008))
        .unwrap();
    assert!(
        stray.is_empty(),
        "TCP other than to 15008 on the link: {stray:?}"
    );
}

#[test]
fn client_of_another_trust_domain_is_rejected() {
    let lab = standard_lab("foreign_td");
    // Pod a's workload claims another trust domain: n1 mints it such a certificate (same CA),
    // and c's ztun must refuse it as a client.
    let mesh = MeshFile::from_lab(&lab).edit_workload("a", |w| {
        w.insert("trustDomain".into(), "evil.example".into());
    });
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    assert!(
        lab.pod("a").bulk_echo(dst, 1024).is_err(),
        "a connection from another trust domain went through"
    );
    let line = cluster
        .ztun("n2")
        .wait_for_log("hbone handshake failed", WAIT)
        .unwrap();
    assert!(
        line.contains("TrustDomainMismatch") && line.contains("evil.example"),
        "{line}"
    );
    // Pod b, in the right trust domain, still gets through.
    lab.pod("b").bulk_echo(dst, 1024).expect("b -> c");
}

#[test]
fn uncaptured_clients_reach_captured_pods_through_15006() {
    let lab = standard_lab("plaintext_inbound");
    let mesh = MeshFile::from_lab(&lab);
    let recorder = lab.pod("a").spawn_peer_recorder(9090).unwrap();
    let echo = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let seen = lab
        .pod("u")
        .peer_seen_by(SocketAddr::from((lab.pod("a").ip(), recorder.port())))
        .unwrap();
    assert_eq!(
        seen.ip(),
        lab.pod("u").ip(),
        "the app must see the uncaptured client's own IP"
    );
    let t = lab
        .pod("u")
        .bulk_echo(SocketAddr::from((lab.pod("c").ip(), echo.port())), 8 << 20)
        .unwrap();
    assert_eq!(t.bytes, 8 << 20);
    let n1 = cluster.ztun("n1");
    let u_ip = lab.pod("u").ip();
    let line = wait_for_line(
        n1,
        0,
        &["direction=\"inbound\"", &format!("src.addr={u_ip}:")],
    )
    .unwrap();
    assert!(line.contains("dst.workload=\"a\""), "{line}");
    // An mTLS client of the same listener's pod, for contrast: its line names its identity.
    lab.pod("b")
        .peer_seen_by(SocketAddr::from((lab.pod("a").ip(), recorder.port())))
        .unwrap();
    let b_ip = lab.pod("b").ip();
    let mtls = wait_for_line(
        n1,
        0,
        &["direction=\"inbound\"", &format!("src.addr={b_ip}:")],
    )
    .unwrap();
    assert_field_only_in(
        &mtls,
        "src.identity",
        "spiffe://cluster.local/ns/default/sa/sa-b",
        &line,
    );
}

#[test]
fn captured_clients_reach_non_mesh_destinations_in_plain_tcp() {
    let lab = standard_lab("passthrough");
    let mesh = MeshFile::from_lab(&lab);
    let u_echo = lab.pod("u").spawn_echo_server(8080).unwrap();
    let c_echo = lab.pod("c").spawn_echo_server(8080).unwrap();
    // An address the mesh does not know at all: a server in node n2's own namespace.
    let node_echo = lab.node("n2").netns().spawn_echo_server(7070).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let t = lab
        .pod("a")
        .bulk_echo(
            SocketAddr::from((lab.pod("u").ip(), u_echo.port())),
            8 << 20,
        )
        .unwrap();
    assert_eq!(t.bytes, 8 << 20);
    let t = lab
        .pod("a")
        .bulk_echo(
            SocketAddr::from((lab.node("n2").link_ip(), node_echo.port())),
            1 << 20,
        )
        .unwrap();
    assert_eq!(t.bytes, 1 << 20);
    let n1 = cluster.ztun("n1");
    let line = n1.wait_for_log("dst.workload=\"u\"", WAIT).unwrap();
    // Dialled directly: an HBONE route would log the destination's 15008 here.
    let to_u = SocketAddr::from((lab.pod("u").ip(), u_echo.port()));
    assert!(line.contains(&format!("dst.addr={to_u} ")), "{line}");
    // A mesh workload, for contrast: its line names the tunnel's target.
    let to_c = SocketAddr::from((lab.pod("c").ip(), c_echo.port()));
    lab.pod("a").bulk_echo(to_c, 1024).unwrap();
    let hbone = n1.wait_for_log("dst.workload=\"c\"", WAIT).unwrap();
    assert_field_only_in(&hbone, "dst.hbone_addr", &to_c.to_string(), &line);
}

#[test]
fn cni_lifecycle_add_is_idempotent_and_del_closes_listeners() {
    let lab = standard_lab("cni_lifecycle");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let n1 = cluster.ztun("n1");
    let a = lab.pod("a");
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let added = |logs: &[String]| {
        logs.iter()
            .filter(|l| l.contains("pod added") && l.contains(a.uid()))
            .count()
    };

    // Re-adding with the same namespace changes nothing.
    let ack = lab.cni("n1").add_pod(&a.info()).unwrap();
    assert!(ack.is_ok(), "{ack:?}");
    assert_eq!(added(&n1.logs()), 1);
    a.bulk_echo(dst, 1 << 20).unwrap();

    // Deleting closes the pod's listeners: its redirected traffic finds nothing on 15001.
    let ack = lab.cni("n1").del_pod(a.uid()).unwrap();
    assert!(ack.is_ok(), "{ack:?}");
    // The pod's listeners close right after the ack: wait for that event.
    crate::support::wait_for_nth_log(n1, "listener closed", crate::support::POD_LISTENERS);
    let err = a
        .try_connect(dst)
        .expect_err("a deleted pod's traffic must not flow");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Pod b on the same node is untouched.
    lab.pod("b").bulk_echo(dst, 1 << 20).unwrap();

    // Adding it back restores it.
    assert!(lab.cni("n1").add_pod(&a.info()).unwrap().is_ok());
    a.bulk_echo(dst, 1 << 20).unwrap();
}

#[test]
fn cni_reconnect_resyncs_from_the_snapshot() {
    let lab = standard_lab("cni_resync");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let cni = lab.cni("n1");
    // b leaves the CNI's cache while ztun is disconnected: the next snapshot omits it.
    cni.forget(lab.pod("b").uid());
    cni.disconnect();
    cni.wait_connections(2, WAIT).unwrap();
    cni.wait_connected(WAIT).unwrap();
    let n1 = cluster.ztun("n1");
    n1.wait_for_log("pod not in CNI snapshot", WAIT).unwrap();
    lab.pod("a")
        .bulk_echo(dst, 1 << 20)
        .expect("a keeps working across the reconnect");
    let err = lab
        .pod("b")
        .try_connect(dst)
        .expect_err("b was dropped from the snapshot");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn bad_zds_input_is_nacked_and_other_pods_keep_working() {
    use std::os::fd::AsFd;
    let lab = standard_lab("zds_bad_input");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let cni = lab.cni("n1");
    let not_a_netns = std::fs::File::open("/proc/self/status").unwrap();
    let netns = std::fs::File::open(lab.pod("a").netns().path()).unwrap();
    let add = || {
        use prost::Message;
        use ztun::control::zds::proto;
        proto::WorkloadRequest {
            payload: Some(proto::workload_request::Payload::Add(proto::AddWorkload {
                uid: "bad-pod".into(),
                workload_info: Some(proto::WorkloadInfo {
                    name: "x".into(),
                    namespace: "default".into(),
                    service_account: "x".into(),
                }),
            })),
        }
        .encode_to_vec()
    };
    let del = {
        use prost::Message;
        use ztun::control::zds::proto;
        proto::WorkloadRequest {
            payload: Some(proto::workload_request::Payload::Del(proto::DelWorkload {
                uid: "x".into(),
            })),
        }
        .encode_to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, Vec<std::os::fd::BorrowedFd<'_>>, &str)> = vec![
        ("garbage", vec![0xff, 0xff, 0xff, 0x01], vec![], "malformed"),
        // Only an unknown field (4): decodes to a request without payload.
        ("no payload", vec![0x20, 0x01], vec![], "no payload"),
        ("add without fd", add(), vec![], "exactly one netns fd"),
        (
            "add with two fds",
            add(),
            vec![netns.as_fd(), netns.as_fd()],
            "exactly one netns fd",
        ),
        (
            "add with a non-netns fd",
            add(),
            vec![not_a_netns.as_fd()],
            "not a network namespace",
        ),
        (
            "del with an fd",
            del,
            vec![netns.as_fd()],
            "unexpected file descriptor",
        ),
    ];
    for (name, bytes, fds, want) in cases {
        let ack = cni
            .send_raw(&bytes, &fds)
            .unwrap_or_else(|e| panic!("{name}: no answer: {e:#}"));
        assert!(ack.error.contains(want), "{name}: got {:?}", ack.error);
    }
    // The connection and every pod survived.
    assert_eq!(cni.connections(), 1);
    lab.pod("a")
        .bulk_echo(
            SocketAddr::from((lab.pod("c").ip(), server.port())),
            1 << 20,
        )
        .unwrap();
}

#[test]
fn tproxy_captured_pods_work_like_redirected_ones() {
    use ztun::testkit::lab::{CaptureMode, PodSpec};
    let lab = crate::support::two_node_lab(
        "tproxy",
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("t", "n2")
                .service_account("sa-t")
                .captured(true)
                .capture_mode(CaptureMode::Tproxy),
            PodSpec::new("u", "n2").service_account("sa-u"),
        ],
    );
    let mesh = MeshFile::from_lab(&lab);
    let echo = lab.pod("t").spawn_echo_server(8080).unwrap();
    let recorder = lab.pod("t").spawn_peer_recorder(9090).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let t = lab.pod("t").ip();
    assert_eq!(
        lab.pod("a")
            .bulk_echo(SocketAddr::from((t, echo.port())), 8 << 20)
            .unwrap()
            .bytes,
        8 << 20
    );
    assert_eq!(
        lab.pod("u")
            .bulk_echo(SocketAddr::from((t, echo.port())), 8 << 20)
            .unwrap()
            .bytes,
        8 << 20
    );
    let seen = lab
        .pod("u")
        .peer_seen_by(SocketAddr::from((t, recorder.port())))
        .unwrap();
    assert_eq!(seen.ip(), lab.pod("u").ip());
    let line = cluster
        .ztun("n2")
        .wait_for_log(
            "src.identity=spiffe://cluster.local/ns/default/sa/sa-a",
            WAIT,
        )
        .unwrap();
    assert!(line.contains("direction=\"inbound\""), "{line}");
}

#[test]
fn a_new_netns_for_the_same_uid_replaces_the_pod_proxy() {
    let lab = standard_lab("netns_replace");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    // Pod b's sandbox is recreated: same uid and identity, a new network namespace (here,
    // the one of pod a, which is then served as b).
    let mut moved = lab.pod("b").info();
    moved.netns_path = lab.pod("a").netns().path().to_path_buf();
    let ack = lab.cni("n1").add_pod(&moved).unwrap();
    assert!(ack.is_ok(), "{ack:?}");
    cluster
        .ztun("n1")
        .wait_for_log("pod has a new network namespace", WAIT)
        .unwrap();
    crate::support::wait_for_nth_log(
        cluster.ztun("n1"),
        "listener closed",
        crate::support::POD_LISTENERS,
    );
    let err = lab
        .pod("b")
        .try_connect(dst)
        .expect_err("the old namespace is still served");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn dedicated_mode_serves_one_workload_from_its_own_namespace() {
    use ztun::testkit::lab::PodSpec;
    crate::support::require_root();
    // Pod a runs its own ztun (dedicated mode) next to its app; n2 runs a shared-mode ztun.
    let lab = crate::support::two_node_lab(
        "dedicated",
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true)
                .enrolled(false),
            PodSpec::new("c", "n2")
                .service_account("sa-c")
                .captured(true),
        ],
    );
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let local = crate::support::local_env(&lab, &mesh);
    let common: Vec<(&str, &str)> = local.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let n2 = lab.spawn_ztun("n2", &common).unwrap();
    lab.cni("n2").wait_connected(WAIT).unwrap();
    let bin = ztun::testkit::ztun_bin().unwrap();
    let mut env = common.clone();
    env.extend([
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/a/sa-a"),
        ("PACKET_MARK", "1337"),
        ("NODE_NAME", "n1"),
    ]);
    let dedicated = lab
        .spawn_in(
            lab.pod("a").netns(),
            "a-dedicated",
            &bin,
            &["proxy", "ztunnel"],
            &env,
            lab.dir(),
        )
        .unwrap();
    dedicated.wait_for_log("ztun ready", WAIT).unwrap();
    let t = lab
        .pod("a")
        .bulk_echo(
            SocketAddr::from((lab.pod("c").ip(), server.port())),
            4 << 20,
        )
        .unwrap();
    assert_eq!(t.bytes, 4 << 20);
    let line = n2.wait_for_log("direction=\"inbound\"", WAIT).unwrap();
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
}

/// `ENABLE_ORIG_SRC` unset, and neither CAP_NET_ADMIN nor CAP_NET_RAW (what IP_TRANSPARENT
/// needs): as ztunnel, the inbound listeners come up plain and connections reach the app
/// from the pod's own address, instead of failing to bind the client's.
#[test]
fn without_the_capability_delivery_falls_back_to_the_pod_address() {
    use ztun::testkit::lab::PodSpec;
    crate::support::require_root();
    // c is served by a dedicated-mode ztun in its own namespace (no packet mark there, so it
    // needs neither capability otherwise), started with both dropped from its bounding set.
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    assert!(setpriv.exists(), "this test needs setpriv (util-linux)");
    let lab = crate::support::two_node_lab(
        "no_cap_net_admin",
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("c", "n2")
                .service_account("sa-c")
                .captured(true)
                .enrolled(false),
        ],
    );
    let mesh = MeshFile::from_lab(&lab);
    let recorder = lab.pod("c").spawn_peer_recorder(9090).unwrap();
    let local = crate::support::local_env(&lab, &mesh);
    let common: Vec<(&str, &str)> = local.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _n1 = lab.spawn_ztun("n1", &common).unwrap();
    lab.cni("n1").wait_connected(WAIT).unwrap();
    let bin = ztun::testkit::ztun_bin().unwrap();
    let bin = bin.to_string_lossy().into_owned();
    let mut env = common.clone();
    env.extend([
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/c/sa-c"),
        ("NODE_NAME", "n2"),
    ]);
    let dedicated = lab
        .spawn_in(
            lab.pod("c").netns(),
            "c-no-cap",
            setpriv,
            &[
                "--bounding-set=-net_admin,-net_raw",
                "--inh-caps=-net_admin,-net_raw",
                "--",
                &bin,
                "proxy",
                "ztunnel",
            ],
            &env,
            lab.dir(),
        )
        .unwrap();
    dedicated
        .wait_for_log("connections reach the app from the pod's own address", WAIT)
        .unwrap();
    dedicated.wait_for_log("ztun ready", WAIT).unwrap();
    let dst = SocketAddr::from((lab.pod("c").ip(), recorder.port()));
    let seen = lab.pod("a").peer_seen_by(dst).unwrap();
    assert_eq!(seen.ip(), lab.pod("c").ip());
    // Through the tunnel: c's ztun logged a's connection with a's identity.
    let line = dedicated.wait_for_log("src.workload=\"a\"", WAIT).unwrap();
    assert!(line.contains("direction=\"inbound\""), "{line}");
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/default/sa/sa-a"),
        "{line}"
    );
}

#[test]
fn a_pod_whose_proxy_cannot_start_is_pending_until_a_retry_succeeds() {
    use ztun::testkit::lab::PodSpec;
    let lab = crate::support::two_node_lab(
        "pending_pod",
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("b", "n1")
                .service_account("sa-b")
                .captured(true)
                .enrolled(false),
            PodSpec::new("c", "n2")
                .service_account("sa-c")
                .captured(true),
        ],
    );
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    // Something in pod b already holds 15001 (without SO_REUSEPORT).
    let blocker = lab.pod("b").spawn_echo_server(15001).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let n1 = cluster.ztun("n1");
    let ack = lab.cni("n1").add_pod(&lab.pod("b").info()).unwrap();
    assert!(
        ack.error.contains("in use"),
        "expected a NACK for the port conflict, got {ack:?}"
    );
    let (status, body) = crate::ops::http(
        lab.node("n1").netns(),
        "GET",
        SocketAddr::from(([127, 0, 0, 1], 15021)),
        "/healthz/ready",
    )
    .unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("pending workloads"), "{body}");
    // The conflict goes away: the retry starts the proxy and readiness recovers.
    blocker.stop();
    n1.wait_for_log(&format!("pod added uid={}", lab.pod("b").uid()), WAIT)
        .unwrap();
    let (status, body) = crate::ops::http(
        lab.node("n1").netns(),
        "GET",
        SocketAddr::from(([127, 0, 0, 1], 15021)),
        "/healthz/ready",
    )
    .unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    assert_eq!(lab.pod("b").bulk_echo(dst, 1 << 20).unwrap().bytes, 1 << 20);
}
