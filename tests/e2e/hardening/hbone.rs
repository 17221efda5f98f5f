//! HBONE request input: H1 (non-CONNECT), H2 (malformed authorities), H3 (IP mismatch), H4
//! (self-calls), H5 (hostname authorities), H6 (`:path`/`:scheme`, Host, duplicate
//! `:authority`), H7 (data before the response is not forwarded for a rejected request), H15
//! (`forwarded`/`baggage` from a peer).

use http::StatusCode;

use super::client::{self, kind, END_HEADERS};
use super::Target;
use crate::support::WAIT;

/// H1: GET, POST and a lowercase `connect` each get 400 on their stream, and the same
/// connection then carries a valid tunnel.
#[test]
fn non_connect_methods_get_400_and_the_connection_stays_usable() {
    let t = Target::start("hard_h1", &[]);
    let config = client::client_config(&t.cluster, "sa-u");
    let (hbone, echo) = (t.hbone(), t.authority(t.echo.port()));
    t.cluster
        .lab
        .pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            for method in ["GET", "POST", "connect"] {
                let req = http::Request::builder()
                    .method(method)
                    .uri(format!("http://{echo}/"))
                    .body(())?;
                let (status, _, _) = client::send(&h2, req).await?;
                anyhow::ensure!(status == StatusCode::BAD_REQUEST, "{method}: {status}");
            }
            let (status, mut tx, mut rx) =
                client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::ensure!(
                status == StatusCode::OK,
                "valid CONNECT after rejects: {status}"
            );
            client::echo(&mut tx, &mut rx, b"still usable").await
        })
        .expect("H1");
    let n2 = t.cluster.ztun("n2");
    let line = n2
        .wait_for_log("method is not CONNECT", WAIT)
        .expect("a rejected method is access-logged");
    assert!(line.contains("direction=\"inbound\""), "{line}");
}

/// H2, H3, H4, H6 with requests the h2 client can express: every one gets a non-200 status
/// (400 for the client's mistakes) and the recorder on c:9090 is never dialled; a valid
/// CONNECT afterwards is.
#[test]
fn bad_authorities_and_self_calls_are_refused_without_dialling() {
    let t = Target::start("hard_h2", &[]);
    let lab = &t.cluster.lab;
    let c = lab.pod("c").ip();
    let b = lab.pod("b").ip();
    let port = t.recorder.port();
    let mut bad: Vec<(String, Option<&str>)> = vec![
        // H2: malformed.
        (format!("{c}"), None),
        (format!("{c}:0"), None),
        (format!("{c}:65536"), None),
        (format!("{c}:{port}0"), None),
        (format!("{}:{port}", "a".repeat(300)), None),
        ("[fd00::1]".into(), None),
        (format!("[::ffff:{c}]:0"), None),
        (format!("{c}.:{port}"), None),
        // H3: another pod's IP.
        (format!("{b}:{port}"), None),
        // H4: loopback and ztun's own ports.
        (format!("127.0.0.1:{port}"), None),
        (format!("[::1]:{port}"), None),
        // H6: Host disagreeing with (or even equal to) :authority.
        (format!("{c}:{port}"), Some("10.9.9.9:80")),
        (format!("{c}:{port}"), Some("HOST_SAME")),
    ];
    for own in [15001, 15006, 15008, 15000, 15020, 15021] {
        bad.push((format!("{c}:{own}"), None));
    }
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let good = t.authority(port);
    let statuses = lab
        .pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let mut out = Vec::new();
            for (authority, host) in bad {
                let mut req = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri(authority.as_str());
                if let Some(h) = host {
                    let h = if h == "HOST_SAME" {
                        authority.as_str()
                    } else {
                        h
                    };
                    req = req.header(http::header::HOST, h);
                }
                // Some of these the http crate refuses to build: those are covered by the
                // raw-frame test and the fuzz targets.
                let Ok(req) = req.body(()) else { continue };
                let (status, _, _) = client::send(&h2, req).await?;
                out.push((authority, host, status));
            }
            anyhow::Ok(out)
        })
        .expect("sending the bad requests");
    assert!(
        statuses.len() >= 15,
        "too few requests could be sent: {statuses:?}"
    );
    for (authority, host, status) in &statuses {
        assert_ne!(
            *status,
            StatusCode::OK,
            "{authority} (host {host:?}) was accepted"
        );
        assert!(
            status.is_client_error() || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{authority}: {status}"
        );
    }
    let by = |a: String| {
        statuses
            .iter()
            .find(|s| s.0 == a && s.1.is_none())
            .map(|s| s.2)
    };
    assert_eq!(
        by(format!("{b}:{port}")),
        Some(StatusCode::BAD_REQUEST),
        "H3"
    );
    assert_eq!(
        by(format!("{c}:0")),
        Some(StatusCode::BAD_REQUEST),
        "H2 port 0"
    );
    assert!(
        t.recorder.peers().is_empty(),
        "ztun dialled: {:?}",
        t.recorder.peers()
    );

    // Positive control: the same recorder is reachable with a valid request.
    let config = client::client_config(&t.cluster, "sa-u");
    lab.pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let (status, _, _) = client::send(&h2, client::connect_request(&good)).await?;
            anyhow::ensure!(status == StatusCode::OK, "{status}");
            anyhow::Ok(())
        })
        .expect("valid CONNECT");
    let deadline = std::time::Instant::now() + WAIT;
    while t.recorder.peers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(t.recorder.peers().len(), 1);
}

/// H2 and H6 with what the h2 crate will not send, as raw frames: `:path`/`:scheme` on a
/// CONNECT, a duplicate `:authority`, NUL/space/UTF-8/zone ids/overlong authorities. Each
/// HEADERS is followed in the same write by DATA (H7: never forwarded for a rejected
/// request). None gets a 200, nothing is dialled, and ztun still serves afterwards.
#[test]
fn malformed_request_heads_as_raw_frames_are_refused() {
    let t = Target::start("hard_h6", &[]);
    let lab = &t.cluster.lab;
    let c = lab.pod("c").ip().to_string();
    let ok = t.authority(t.recorder.port());
    let long = format!("{}:9090", "a".repeat(300));
    let heads: Vec<Vec<u8>> = vec![
        client::hpack(&[
            (b":method", b"CONNECT"),
            (b":authority", ok.as_bytes()),
            (b":path", b"/"),
        ]),
        client::hpack(&[
            (b":method", b"CONNECT"),
            (b":authority", ok.as_bytes()),
            (b":scheme", b"https"),
        ]),
        client::hpack(&[
            (b":method", b"CONNECT"),
            (b":authority", ok.as_bytes()),
            (b":authority", b"10.9.9.9:9090"),
        ]),
        client::hpack(&[(b":method", b"CONNECT")]),
        client::connect_block(&format!("{c}\0:9090")),
        client::connect_block(&format!("{c} :9090")),
        client::connect_block(&format!("{c}:9090 ")),
        client::connect_block(&format!("{c}é:9090")),
        client::connect_block("[fe80::1%eth0]:9090"),
        client::connect_block("fd00::1:9090"),
        client::connect_block(&long),
        client::connect_block(""),
        client::hpack(&[
            (b":method", b"CONNECT"),
            (b":authority", ok.as_bytes()),
            (b"Host", b"x"),
        ]),
        client::hpack(&[
            (b":method", b"GET"),
            (b":authority", ok.as_bytes()),
            (b":path", b"/"),
            (b":scheme", b"http"),
        ]),
    ];
    let count = heads.len();
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let frames = lab
        .pod("u")
        .block_on(async move {
            let (mut w, mut r) = client::raw(hbone, config).await?;
            let mut batch = Vec::new();
            for (i, head) in heads.iter().enumerate() {
                let stream = 1 + 2 * i as u32;
                client::push_frame(&mut batch, kind::HEADERS, END_HEADERS, stream, head);
                client::push_frame(&mut batch, kind::DATA, 0, stream, b"GET / HTTP/1.1\r\n\r\n");
            }
            w.raw(&batch).await?;
            // Read until every stream got an answer (HEADERS or RST_STREAM) or the server
            // closed the connection (a protocol error may end it: also fine).
            let mut answered = std::collections::BTreeMap::new();
            while answered.len() < count {
                let Some(f) = r.next().await? else { break };
                if f.kind == kind::GOAWAY {
                    answered.insert(0, f.clone());
                    break;
                }
                if matches!(f.kind, kind::HEADERS | kind::RST_STREAM) && f.stream != 0 {
                    answered.entry(f.stream).or_insert(f);
                }
            }
            anyhow::Ok(answered)
        })
        .expect("raw frames");
    for f in frames.values() {
        assert_ne!(
            f.indexed_status(),
            Some(200),
            "accepted: stream {}",
            f.stream
        );
    }
    assert!(
        t.recorder.peers().is_empty(),
        "ztun dialled: {:?}",
        t.recorder.peers()
    );
    // ztun still serves.
    t.serves_a_new_client(b"after raw frames")
        .expect("ztun serves after malformed heads");
}

/// H5: a hostname authority is looked up in the mesh state only. An unknown service, a
/// known service on a port it does not declare, and an outside name all get 503 with
/// nothing dialled (ztun resolves no name for an inbound request); the service's own
/// `hostname:port` reaches the target port on c.
#[test]
fn hostname_authorities_resolve_only_to_known_service_ports() {
    let vip = std::net::Ipv4Addr::new(10, 96, 0, 50);
    let t = Target::start_mesh("hard_h5", &[], |m| {
        m.service("rec", "default", vip, &[(80, 9090)], &["c"])
    });
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let bad = [
        "nosuch.default.svc.cluster.local:80",
        "rec.default.svc.cluster.local:81",
        "rec.other.svc.cluster.local:80",
        "example.com:80",
        "localhost:9090",
    ];
    let statuses = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let mut out = Vec::new();
            for authority in bad {
                let (status, _, _) = client::send(&h2, client::connect_request(authority)).await?;
                out.push((authority, status));
            }
            let (status, _, _) = client::send(
                &h2,
                client::connect_request("rec.default.svc.cluster.local:80"),
            )
            .await?;
            anyhow::ensure!(status == StatusCode::OK, "the service's own name: {status}");
            anyhow::Ok(out)
        })
        .expect("H5 requests");
    for (authority, status) in &statuses {
        assert_eq!(
            *status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{authority}: {status}"
        );
    }
    let deadline = std::time::Instant::now() + WAIT;
    while t.recorder.peers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        t.recorder.peers().len(),
        1,
        "only the valid name was dialled: {:?}",
        t.recorder.peers()
    );
    let n2 = t.cluster.ztun("n2");
    let line = n2
        .wait_for_log("nosuch.default.svc.cluster.local:80", WAIT)
        .expect("the unknown service is access-logged");
    assert!(line.contains("unknown_service"), "{line}");
}

/// H15: `forwarded` and `baggage` headers from an ordinary (non-waypoint) peer, well-formed
/// or not, change nothing: the app sees the peer's own address, the access log the
/// certificate's identity, and malformed values cost nothing but being ignored.
#[test]
fn forwarded_and_baggage_from_a_peer_never_change_the_source() {
    let t = Target::start("hard_h15", &[]);
    let lab = &t.cluster.lab;
    let u_ip = lab.pod("u").ip();
    let config = client::client_config(&t.cluster, "sa-u");
    let hbone = t.hbone();
    let rec = t.authority(t.recorder.port());
    let headers: Vec<Vec<(&'static str, &'static [u8])>> = vec![
        vec![
            ("forwarded", b"for=10.9.9.9"),
            (
                "baggage",
                b"k8s.namespace.name=evil,k8s.deployment.name=x,service.name=x,k8s.cluster.name=y",
            ),
        ],
        vec![
            ("forwarded", b"for=\"[::1"),
            ("baggage", b"=,,;;==\xff\xfe"),
        ],
        vec![
            ("forwarded", b"for=10.9.9.9;for=10.8.8.8, by=1.1.1.1"),
            ("x-forwarded-for", b"10.9.9.9"),
            ("baggage", &[b'a'; 8000]),
        ],
    ];
    let n = headers.len();
    lab.pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            for set in headers {
                let mut req = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri(rec.as_str());
                for (name, value) in set {
                    req = req.header(name, http::HeaderValue::from_bytes(value)?);
                }
                let (status, tx, rx) = client::send(&h2, req.body(())?).await?;
                anyhow::ensure!(status == StatusCode::OK, "{status}");
                drop((tx, rx));
            }
            anyhow::Ok(())
        })
        .expect("H15 requests");
    let deadline = std::time::Instant::now() + WAIT;
    while t.recorder.peers().len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let peers = t.recorder.peers();
    assert_eq!(peers.len(), n, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.ip() == u_ip),
        "the app saw another source than the peer: {peers:?}"
    );
    let n2 = t.cluster.ztun("n2");
    crate::support::wait_for_nth_log(n2, "direction=\"inbound\"", n);
    for line in n2
        .logs()
        .iter()
        .filter(|l| l.contains("direction=\"inbound\""))
    {
        assert!(line.contains("sa/sa-u"), "{line}");
        assert!(
            !line.contains("10.9.9.9") && !line.contains("evil"),
            "{line}"
        );
    }
}
