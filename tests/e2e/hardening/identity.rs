//! Identity: H14 (bad client certificates), P1 (one TLS session per source identity), P2
//! (a pod using another pod's IP keeps its own identity), P10 (an HBONE destination is never
//! reached in plaintext or through the wrong identity).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use ztun::testkit::mesh::MeshFile;

use super::client;
use super::Target;
use crate::support::{standard_lab, wait_for_line, wait_for_nth_log, Cluster, WAIT};

const TD: &str = "spiffe://cluster.local/ns/default/sa";

/// H14: certificates signed by the mesh CA but with two URI SANs, another trust domain, an
/// expired or a not-yet-valid validity are all refused at the handshake (no CONNECT is ever
/// answered), each logged; a valid certificate right after works.
#[test]
fn bad_client_certificates_are_rejected_at_the_handshake() {
    let t = Target::start("hard_h14", &[]);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let two = format!("{TD}/sa-b");
    let one = format!("{TD}/sa-u");
    let cases = [
        (
            "two URI SANs",
            vec![one.clone(), two],
            now - hour,
            now + hour,
        ),
        (
            "wrong trust domain",
            vec!["spiffe://evil.example/ns/default/sa/sa-u".to_string()],
            now - hour,
            now + hour,
        ),
        ("expired", vec![one.clone()], now - 3 * hour, now - 2 * hour),
        (
            "not yet valid",
            vec![one.clone()],
            now + 2 * hour,
            now + 3 * hour,
        ),
    ];
    let hbone = t.hbone();
    let echo = t.authority(t.echo.port());
    for (what, sans, from, until) in &cases {
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let config = client::custom_client_config(&t.cluster, &sans, *from, *until);
        let echo = echo.clone();
        let result = t.cluster.lab.pod("u").block_on(async move {
            // TLS 1.3: the client may finish before the server has judged its certificate,
            // so the refusal can surface at the handshake, the h2 preface or the request.
            let h2 = client::h2(hbone, config).await?;
            let (status, _, _) = client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::Ok(status)
        });
        assert!(result.is_err(), "{what}: got a response {result:?}");
    }
    wait_for_nth_log(t.cluster.ztun("n2"), "hbone handshake failed", cases.len());
    assert!(
        t.echo.peers().is_empty(),
        "a rejected client reached the app: {:?}",
        t.echo.peers()
    );
    let config = client::client_config(&t.cluster, "sa-u");
    t.cluster
        .lab
        .pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let (status, _, _) = client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::ensure!(status == StatusCode::OK, "{status}");
            anyhow::Ok(())
        })
        .expect("a valid certificate is accepted");
}

/// P1: pods a (sa-a) and b (sa-b) on n1 both tunnel to c: n2 sees each connection with its
/// own pod's identity (separate TLS sessions), never the other's.
#[test]
fn two_service_accounts_use_separate_sessions_to_one_destination() {
    let t = Target::start("hard_p1", &[]);
    let lab = &t.cluster.lab;
    let c = lab.pod("c").ip();
    let a_seen = lab
        .pod("a")
        .peer_seen_by((c, t.recorder.port()).into())
        .expect("a -> c");
    let b_seen = lab
        .pod("b")
        .peer_seen_by((c, t.recorder.port()).into())
        .expect("b -> c");
    assert_eq!(a_seen.ip(), lab.pod("a").ip());
    assert_eq!(b_seen.ip(), lab.pod("b").ip());
    let n2 = t.cluster.ztun("n2");
    wait_for_nth_log(n2, "direction=\"inbound\"", 2);
    let inbound: Vec<String> = n2
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("direction=\"inbound\"") && l.contains(&format!(":{}", t.recorder.port()))
        })
        .collect();
    let from = |ip: std::net::Ipv4Addr| {
        inbound
            .iter()
            .find(|l| l.contains(&format!("src.addr={ip}:")))
            .unwrap_or_else(|| panic!("no inbound log from {ip}: {inbound:#?}"))
            .clone()
    };
    let a_line = from(lab.pod("a").ip());
    let b_line = from(lab.pod("b").ip());
    assert!(
        a_line.contains(&format!("src.identity={TD}/sa-a")),
        "{a_line}"
    );
    assert!(
        b_line.contains(&format!("src.identity={TD}/sa-b")),
        "{b_line}"
    );
}

/// P2: pod a adds pod b's IP to its own interface and connects from it: the connection goes
/// through as a's (the listener belongs to a's netns): a's certificate, a's address at the
/// app, a's identity in both access logs; never b's.
#[test]
fn a_pod_using_another_pods_ip_keeps_its_own_identity() {
    let t = Target::start("hard_p2", &[]);
    let lab = &t.cluster.lab;
    let a = lab.pod("a");
    let b_ip = lab.pod("b").ip();
    a.netns()
        .ip_command(&["addr", "add", &format!("{b_ip}/32"), "dev", "eth0"])
        .expect("adding b's IP inside a's netns");
    let dst = SocketAddr::from((lab.pod("c").ip(), t.recorder.port()));
    let result = a.block_on(async move {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((b_ip, 0)))?;
        let mut s = tokio::time::timeout(WAIT, sock.connect(dst)).await??;
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf))
            .await??;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    });
    // The connection goes through, as a's: the tunnel leaves from a's netns with a's
    // certificate, so c's app sees a's address (the tunnel's source), never b's.
    let seen = result.expect("the connection from b's address in a's netns");
    let a_ip = a.ip().to_string();
    assert!(
        seen.contains(&a_ip) && !seen.contains(&b_ip.to_string()),
        "the app saw {seen:?}, expected a's address {a_ip}"
    );
    let n2 = t.cluster.ztun("n2");
    let n1 = t.cluster.ztun("n1");
    wait_for_nth_log(n2, "direction=\"inbound\"", 1);
    wait_for_nth_log(n1, "direction=\"outbound\"", 1);
    let access = |l: &&String| l.contains("direction=");
    for line in n2
        .logs()
        .iter()
        .filter(access)
        .chain(n1.logs().iter().filter(access))
    {
        assert!(
            line.contains(&format!("src.identity={TD}/sa-a")),
            "a connection from a's netns was not attributed to a: {line}"
        );
        assert!(
            !line.contains(&format!("identity={TD}/sa-b")),
            "a connection from a's netns was attributed to b: {line}"
        );
    }
}

/// Binds u's 15008 for a fake peer, waiting while an aborted earlier fake still holds it.
async fn bind_15008() -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::net::TcpListener::bind(("0.0.0.0", 15008)).await {
            Ok(l) => return l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                assert!(tokio::time::Instant::now() < deadline, "15008 stays in use");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("bind 15008: {e}"),
        }
    }
}

/// P10: pod u is declared HBONE but has no ztun listener; something on u:15008 answers
/// plaintext, then (second round) TLS with a mesh certificate of the wrong identity. a's
/// connection to u fails both times and u's app port is never reached in plaintext.
#[test]
fn hbone_destination_never_downgrades_to_plaintext() {
    let lab = standard_lab("hard_p10");
    let mesh = MeshFile::from_lab(&lab).edit_workload("u", |w| {
        w.insert("protocol".into(), "HBONE".into());
    });
    let app = lab.pod("u").spawn_peer_recorder(8080).expect("u's app");
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let u = lab.pod("u").ip();
    // Round 1: plaintext garbage on 15008.
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let fake = lab.pod("u").spawn_async(async move {
        let l = bind_15008().await;
        let _ = bound_tx.send(());
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"HTTP/1.1 200 OK\r\n\r\n").await;
        }
    });
    let dst = SocketAddr::from((u, 8080));
    bound
        .recv_timeout(WAIT)
        .expect("the plaintext peer listens");
    assert!(
        lab.pod("a").peer_seen_by(dst).is_err(),
        "plaintext peer accepted as HBONE"
    );
    fake.abort();
    // Round 2: TLS with a valid mesh certificate for another identity, and behind it a
    // working HBONE server: h2, CONNECT answered 200, then a peer line as u's app would
    // send. Had ztun accepted the identity, a's connection would read that line.
    let wrong = client::mesh_ca(&cluster)
        .mint(&ztun::identity::Identity::new("cluster.local", "default", "sa-evil").expect("id"))
        .expect("mint");
    let server_config = wrong.server_config();
    let (events_tx, events) = std::sync::mpsc::channel();
    let fake = lab.pod("u").spawn_async(async move {
        let l = bind_15008().await;
        let _ = events_tx.send(Fake::Listening);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
        loop {
            let Ok((s, peer)) = l.accept().await else {
                return;
            };
            let (acceptor, events) = (acceptor.clone(), events_tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let _ = events.send(Fake::Tls);
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let mut open = Vec::new();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let _ = events.send(Fake::Connect(req.uri().to_string()));
                    if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                        let line = bytes::Bytes::from(format!("{peer}\n"));
                        let _ = body.send_data(line, false);
                        open.push(body);
                    }
                }
            });
        }
    });
    assert!(
        matches!(events.recv_timeout(WAIT), Ok(Fake::Listening)),
        "the wrong-identity peer listens"
    );
    let seen = lab.pod("a").peer_seen_by(dst);
    assert!(
        seen.is_err(),
        "wrong identity accepted: the app behind it saw {seen:?}"
    );
    // The handshake itself succeeded (the certificate chains to the mesh CA): the refusal is
    // ztun's identity check, and it comes before any request.
    match events.recv_timeout(WAIT) {
        Ok(Fake::Tls) => {}
        other => panic!("expected a completed TLS handshake with the fake peer, got {other:?}"),
    }
    fake.abort();
    let requests: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            Fake::Connect(uri) => Some(uri),
            _ => None,
        })
        .collect();
    assert!(
        requests.is_empty(),
        "ztun sent requests to the wrong identity: {requests:?}"
    );
    assert!(
        app.peers().is_empty(),
        "u's app was reached: {:?}",
        app.peers()
    );
    let n1 = cluster.ztun("n1");
    let line = wait_for_line(n1, 0, &["sa-evil", "reason=\"peer_identity_unexpected\""])
        .expect("the identity mismatch is reported with the identity seen");
    eprintln!("{line}");
}

/// What the fake HBONE peer of P10 went through.
#[derive(Debug)]
enum Fake {
    /// Bound u:15008.
    Listening,
    /// Completed a TLS handshake.
    Tls,
    /// Received a request (its URI), and answered 200.
    Connect(String),
}
