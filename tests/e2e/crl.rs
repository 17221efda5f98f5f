//! hardening.md P6 end to end: a CRL published while tunnels are open (`CRL_PATH` on both
//! nodes, replaced by rename as a ConfigMap update does). Revoking a client's certificate
//! closes its open tunnel on the destination node and refuses its new handshakes, while other
//! clients keep working; revoking a server's certificate closes the source node's tunnels to
//! it and refuses new dials; an empty CRL lifts everything.
//!
//! Every wait is on an event (a log line, a counter, a stream's end), never a fixed sleep.

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::certs::{crl_pem, serial_of, CaFiles};
use ztun::testkit::lab::NetnsTask;
use ztun::testkit::mesh::MeshFile;

use crate::ops::{http, local, sample, scrape};
use crate::support::{standard_lab, Cluster, WAIT};

#[test]
fn a_published_crl_closes_the_revoked_peers_tunnels_and_refuses_new_handshakes() {
    let lab = standard_lab("crl");
    let mesh = MeshFile::from_lab(&lab);
    let crl = lab.dir().join("crl.pem");
    std::fs::write(&crl, "").unwrap();
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let crl_env = crl.to_string_lossy().into_owned();
    let cluster = Cluster::start_with(lab, mesh, &[("CRL_PATH", crl_env.as_str())]);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));
    let ca = ca_files(&cluster.ca_dir);

    let (from_a, a_opened, finish_a) = long_stream(&cluster, "a", dst);
    let (from_b, b_opened, finish_b) = long_stream(&cluster, "b", dst);
    a_opened.recv_timeout(WAIT).expect("a's long stream opened");
    b_opened.recv_timeout(WAIT).expect("b's long stream opened");

    // Revoking a: n2 closes the tunnel that carries a's stream and refuses a's new handshakes.
    let a_serial = serial_in_dump(&cluster, "n1", "sa-a");
    let c_serial = serial_in_dump(&cluster, "n2", "sa-c");
    let n2 = cluster.ztun("n2");
    let cursor = n2.log_cursor();
    publish(
        &crl,
        &crl_pem(
            &ca,
            std::slice::from_ref(&a_serial),
            time::Duration::hours(1),
        )
        .unwrap(),
    );
    n2.wait_for_log_after(
        cursor,
        "peer certificate revoked, closing hbone connection",
        WAIT,
    )
    .unwrap();
    let _ = finish_a.send(());
    let err = from_a
        .join()
        .unwrap()
        .expect_err("a's open stream must be closed");
    eprintln!("a's long stream ended: {err:#}");
    let revoked_line = n2
        .wait_for_log_after(cursor, "reason=\"cert_revoked\"", WAIT)
        .unwrap();
    assert!(revoked_line.contains("sa-a"), "{revoked_line}");
    let rejections = |node: &str, reporter: &str| {
        sample(
            &scrape(cluster.lab.node(node).netns()),
            "istio_crl_policy_rejections_total",
            &[("reporter", reporter)],
        )
        .unwrap_or(0.0)
    };
    // Every new connection from a fails; one of them is a handshake n2 refuses (the first may
    // instead meet n1's pooled connection as n2 closes it): one closed tunnel, then at least
    // one refused handshake.
    until_counted(
        || {
            assert!(
                echo_from(&cluster, "a", dst).is_err(),
                "a's new connection must be refused"
            );
            rejections("n2", "destination") >= 2.0
        },
        "n2 refusing a's new handshake",
    );
    echo_from(&cluster, "b", dst).expect("b is not revoked");

    // Revoking c as well: n1 closes b's tunnel to c and refuses to dial c again.
    let n1 = cluster.ztun("n1");
    let cursor = n1.log_cursor();
    publish(
        &crl,
        &crl_pem(&ca, &[a_serial, c_serial], time::Duration::hours(1)).unwrap(),
    );
    n1.wait_for_log_after(
        cursor,
        "peer certificate revoked, closing hbone connection",
        WAIT,
    )
    .unwrap();
    let _ = finish_b.send(());
    from_b
        .join()
        .unwrap()
        .expect_err("b's stream to the revoked c must be closed");
    let err = echo_from(&cluster, "b", dst).expect_err("dialling the revoked c must fail");
    eprintln!("b's new connection to the revoked c: {err:#}");
    n1.wait_for_log_after(cursor, "reason=\"cert_revoked\"", WAIT)
        .unwrap();
    until_counted(
        || {
            assert!(
                echo_from(&cluster, "b", dst).is_err(),
                "dialling the revoked c must fail"
            );
            rejections("n1", "source") >= 2.0
        },
        "n1 refusing c's certificate on a new dial",
    );
    let (status, dump) = http(
        cluster.lab.node("n1").netns(),
        "GET",
        local(15000),
        "/config_dump",
    )
    .unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["crl"]["revokedSerials"].as_array().unwrap().len(),
        2,
        "{}",
        dump["crl"]
    );

    // An empty CRL lifts it all.
    let cursors = [n1.log_cursor(), n2.log_cursor()];
    publish(&crl, "");
    for (p, cursor) in [n1, n2].into_iter().zip(cursors) {
        p.wait_for_log_after(cursor, "CRLs reloaded", WAIT).unwrap();
    }
    echo_from(&cluster, "a", dst).expect("a works again");
    echo_from(&cluster, "b", dst).expect("b works again");
}

/// Runs `attempt` until it reports the counter reached, failing after [`WAIT`] with `what`.
fn until_counted(mut attempt: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !attempt() {
        assert!(
            std::time::Instant::now() < deadline,
            "never counted: {what}"
        );
    }
}

/// The mesh CA the cluster's nodes mint from.
pub(crate) fn ca_files(dir: &Path) -> CaFiles {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    CaFiles {
        dir: dir.to_path_buf(),
        root_cert: dir.join("root-cert.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert_pem: read("root-cert.pem"),
        key_pem: read("ca-key.pem"),
    }
}

/// Replaces the CRL file by rename, as a ConfigMap update does.
pub(crate) fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("next");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The serial number of the leaf certificate `node` holds for service account `sa`.
pub(crate) fn serial_in_dump(cluster: &Cluster, node: &str, sa: &str) -> Vec<u8> {
    let id = format!("spiffe://cluster.local/ns/default/sa/{sa}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http(
            cluster.lab.node(node).netns(),
            "GET",
            local(15000),
            "/config_dump",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        let leaf = dump["certificates"].as_array().and_then(|certs| {
            certs
                .iter()
                .find(|c| c["identity"] == id.as_str())
                .and_then(|c| c["certChain"][0]["pem"].as_str())
                .map(str::to_string)
        });
        if let Some(b64) = leaf {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let der = ztun::tls::parse_pem_certs(&pem).unwrap();
            return serial_of(&der[0]).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} holds no certificate for {id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A stream from pod `from` to `dst` echoed once, held open until told to finish, then
/// echoed again: the result says whether it survived.
pub(crate) fn long_stream(
    cluster: &Cluster,
    from: &str,
    dst: SocketAddr,
) -> (
    NetnsTask<anyhow::Result<()>>,
    std::sync::mpsc::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let task = cluster.lab.pod(from).spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
        let mut buf = [0u8; 5];
        s.write_all(b"first").await?;
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        let _ = finish_rx.await;
        s.write_all(b"again").await?;
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"again", "echo differs");
        anyhow::Ok(())
    });
    (task, opened_rx, finish_tx)
}

/// One new connection from pod `from` to `dst` with a checked echo.
fn echo_from(cluster: &Cluster, from: &str, dst: SocketAddr) -> anyhow::Result<()> {
    cluster
        .lab
        .pod(from)
        .spawn_async(async move {
            ztun::testkit::lab::bulk_echo(dst, 4096, WAIT)
                .await
                .map(drop)
        })
        .join()
        .unwrap()
}
