//! HBONE request input: H1 (non-CONNECT), H2 (malformed authorities), H3 (IP mismatch), H4
//! (self-calls), H6 (`:path`/`:scheme`, Host, duplicate `:authority`), H7 (data before the
//! response is not forwarded for a rejected request).

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
    let config = client::client_config(&t.cluster, "sa-u");
    let echo = t.authority(t.echo.port());
    lab.pod("u")
        .block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let (status, mut tx, mut rx) =
                client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::ensure!(status == StatusCode::OK, "{status}");
            client::echo(&mut tx, &mut rx, b"after raw frames").await
        })
        .expect("ztun serves after malformed heads");
}
