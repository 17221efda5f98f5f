//! Lifecycle end to end: a zero-downtime handover to a new ztun on the same node, and an
//! abrupt kill that must never let captured traffic out in plaintext.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster, WAIT};

#[test]
fn upgrade_hands_pods_to_the_new_ztun_without_failures() {
    rolling_update_fails_no_new_connection("upgrade", "n1");
}

/// The destination's rolling update: the old ztun's GOAWAY reaches n1's pooled connection,
/// which the long-lived stream keeps open. New connections of the same pool key (same pod,
/// same destination) must move to a new connection, to the new ztun, instead of failing on
/// the refusing one.
#[test]
fn upgrade_of_the_destination_node_fails_no_new_connection() {
    rolling_update_fails_no_new_connection("upgradedst", "n2");
}

/// A new ztun starts beside the old one on `node` and takes its pods; the old one gets
/// SIGTERM and drains. Pod a (n1) keeps a long-lived stream to c (n2) open throughout and opens
/// new connections to c one after another: not one may fail, and the new ztun must serve.
fn rolling_update_fails_no_new_connection(test: &str, node: &str) {
    let lab = standard_lab(test);
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = Cluster::start_with(lab, mesh, &[("CONNECTION_TERMINATION_DEADLINE", "60s")]);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));

    // A long-lived stream through the old ztun.
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let long = cluster.lab.pod("a").spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
        let mut buf = [0u8; 4];
        s.write_all(b"old1").await?;
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        let _ = finish_rx.await;
        s.write_all(b"old2").await?;
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"old2", "echo differs");
        anyhow::Ok(())
    });
    opened_rx.recv_timeout(WAIT).unwrap();

    // New connections, one after another, for the whole handover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churn = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        cluster.lab.pod("a").spawn_async(async move {
            while !stop.load(Ordering::Acquire) {
                match ztun::testkit::lab::bulk_echo(dst, 4096, WAIT).await {
                    Ok(_) => ok.fetch_add(1, Ordering::AcqRel),
                    Err(e) => {
                        eprintln!("churn connection failed: {e:#}");
                        failed.fetch_add(1, Ordering::AcqRel)
                    }
                };
            }
        })
    };
    let wait_ok = |n: u64| {
        let target = ok.load(Ordering::Acquire) + n;
        let deadline = std::time::Instant::now() + WAIT;
        while ok.load(Ordering::Acquire) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "churn made no progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait_ok(20);

    // The new ztun starts in its own namespace on the node and connects to the same CNI.
    let ns = cluster.lab.add_netns(&format!("{node}new")).unwrap();
    let mesh_path = cluster.mesh_path.to_string_lossy().into_owned();
    let ca = cluster.ca_dir.to_string_lossy().into_owned();
    let cni = cluster
        .lab
        .cni(node)
        .socket_path()
        .to_string_lossy()
        .into_owned();
    let bin = ztun::testkit::ztun_bin().unwrap();
    let env = [
        ("INPOD_UDS", cni.as_str()),
        ("NODE_NAME", node),
        ("RUST_LOG", "info,ztun=debug"),
        ("XDS_ADDRESS", ""),
        ("LOCAL_XDS_PATH", mesh_path.as_str()),
        ("LOCAL_CA_DIR", ca.as_str()),
    ];
    let new = cluster
        .lab
        .spawn_in(
            &ns,
            &format!("{node}-new"),
            &bin,
            &["proxy", "ztunnel"],
            &env,
            cluster.lab.dir(),
        )
        .unwrap();
    cluster.lab.cni(node).wait_connections(2, WAIT).unwrap();
    cluster.lab.cni(node).wait_connected(WAIT).unwrap();
    new.wait_for_log("pod added", WAIT).unwrap();
    wait_ok(20);

    // The old one is told to stop, as a rolling update does.
    let old = cluster.ztun(node);
    old.sigterm().unwrap();
    old.wait_for_log("shutting down", WAIT).unwrap();
    wait_ok(50);
    // The old ztun still carries the long-lived stream until it ends.
    let _ = finish_tx.send(());
    long.join().unwrap().unwrap();
    let exit = old.wait_exit(WAIT).unwrap();
    assert!(exit.success(), "{exit:?}");
    wait_ok(20);
    stop.store(true, Ordering::Release);
    churn.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Acquire),
        0,
        "connections failed during the handover ({} ok)",
        ok.load(Ordering::Acquire)
    );
    // n1 serves the churn outbound, n2 inbound.
    let direction = if node == "n1" { "outbound" } else { "inbound" };
    let served_by_new = new
        .logs()
        .iter()
        .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
        .count();
    assert!(served_by_new > 0, "the new ztun served nothing");
    cluster.ztuns.retain(|(n, _)| n != node);
}

#[test]
fn killed_ztun_never_leaks_plaintext_and_recovers_from_the_snapshot() {
    let lab = standard_lab("sigkill");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = Cluster::start(lab, mesh);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));
    cluster.lab.pod("a").bulk_echo(dst, 1 << 20).unwrap();

    let old = cluster.ztuns.remove(0).1;
    old.kill().unwrap();
    old.wait_exit(WAIT).unwrap();
    cluster.lab.cni("n1").wait_connections(1, WAIT).unwrap();
    let capture = cluster.lab.capture("n1").unwrap();
    // With nothing on 15001 the redirected connection is refused: it never leaves the pod.
    for _ in 0..5 {
        let err = cluster
            .lab
            .pod("a")
            .try_connect(dst)
            .expect_err("traffic flowed with ztun dead");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
    let pcap = capture.stop().unwrap();
    assert!(
        !pcap.saw_tcp_port(8080).unwrap(),
        "a captured pod reached the app port in plaintext"
    );

    // A new ztun re-adopts the pods from the CNI snapshot; no pod restart.
    let new = cluster.spawn("n1", &[]);
    cluster.lab.cni("n1").wait_connections(2, WAIT).unwrap();
    cluster.lab.cni("n1").wait_connected(WAIT).unwrap();
    new.wait_for_log("pod added", WAIT).unwrap();
    cluster
        .lab
        .pod("a")
        .bulk_echo(dst, 1 << 20)
        .expect("traffic recovers after restart");
    cluster.ztuns.insert(0, ("n1".into(), new));
}
