//! HBONE request input: H1 (non-CONNECT), H2 (malformed authorities), H3 (IP mismatch), H4
//! (self-calls), H5 (hostname authorities), H6 (`:path`/`:scheme`, Host, duplicate
//! `:authority`), H7 (data before the response is not forwarded for a rejected request), H15
//! (`forwarded`/`baggage` from a peer).

use anyhow::Context as _;
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
/// request). Every head gets its own verdict: a 4xx status (HPACK-decoded, whatever
/// representation ztun's encoder chose), a RST_STREAM, or (sent alone, so the cause is
/// unambiguous) a GOAWAY with an error code. Nothing is dialled, and ztun still serves
/// afterwards.
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
    let verdicts = lab
        .pod("u")
        .block_on(async move {
            // All heads on one connection; those left unanswered when a connection error
            // (caused by one of them) ended it are then judged one by one, each alone on a
            // new connection.
            let all: Vec<usize> = (0..heads.len()).collect();
            let (mut verdicts, unanswered) = judge(hbone, config.clone(), &heads, &all).await?;
            eprintln!("unanswered on the shared connection: {unanswered:?}");
            for i in unanswered {
                let (alone, _) = judge(hbone, config.clone(), &heads, &[i]).await?;
                verdicts.extend(alone);
            }
            anyhow::Ok(verdicts)
        })
        .expect("raw frames");
    eprintln!("verdicts: {verdicts:?}");
    let judged: std::collections::BTreeSet<usize> = verdicts.iter().map(|v| v.0).collect();
    assert_eq!(judged.len(), count, "heads without a verdict: {verdicts:?}");
    for (i, verdict) in &verdicts {
        match verdict {
            Verdict::Status(s) => assert!((400..500).contains(s), "head {i}: status {s}"),
            Verdict::Reset(code) => assert!(
                code.is_some_and(|c| c != 0),
                "head {i}: RST_STREAM {code:?} without an error"
            ),
            Verdict::ConnectionError(code) => assert!(
                code.is_some_and(|c| c != 0),
                "head {i}: GOAWAY {code:?} without an error"
            ),
        }
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

/// How ztun answered one request head.
#[derive(Debug)]
enum Verdict {
    /// A response with this status.
    Status(u16),
    /// RST_STREAM with this code.
    Reset(Option<u32>),
    /// The head, sent alone, got no answer but a connection error: GOAWAY with this code.
    ConnectionError(Option<u32>),
}

/// Sends `heads[i]` for each `i` in `which` on a new raw connection (stream 1, 3, ...), each
/// followed by DATA in the same write, and reads until every stream is answered (status or
/// RST_STREAM) or the connection ends, reading on past a GOAWAY (answers to the streams it
/// covers may follow). Returns the verdicts by head index, and the heads left without an
/// answer when the connection ended: one head's connection error ends the connection for
/// all, unjudged. A head sent alone has no such excuse: a GOAWAY with an error code is then
/// its verdict, and no answer at all is an error, as is a response without `:status`.
async fn judge(
    hbone: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    heads: &[Vec<u8>],
    which: &[usize],
) -> anyhow::Result<(Vec<(usize, Verdict)>, Vec<usize>)> {
    let (mut w, mut r) = client::raw(hbone, config).await?;
    let stream_of = |k: usize| 1 + 2 * k as u32;
    let mut batch = Vec::new();
    for (k, &i) in which.iter().enumerate() {
        client::push_frame(
            &mut batch,
            kind::HEADERS,
            END_HEADERS,
            stream_of(k),
            &heads[i],
        );
        client::push_frame(
            &mut batch,
            kind::DATA,
            0,
            stream_of(k),
            b"GET / HTTP/1.1\r\n\r\n",
        );
    }
    w.raw(&batch).await?;
    let mut answers = std::collections::BTreeMap::new();
    let mut goaway = None;
    while answers.len() < which.len() {
        let Some(f) = r.next().await? else { break };
        match f.kind {
            kind::GOAWAY => goaway = Some(f),
            kind::HEADERS => {
                let status = f
                    .status()
                    .with_context(|| format!("a head without :status: {f:?}"))?;
                answers.entry(f.stream).or_insert(Verdict::Status(status));
            }
            kind::RST_STREAM if f.stream != 0 => {
                answers
                    .entry(f.stream)
                    .or_insert(Verdict::Reset(f.error_code()));
            }
            _ => {}
        }
    }
    let code = goaway.as_ref().and_then(client::Frame::error_code);
    let (mut verdicts, mut unanswered) = (Vec::new(), Vec::new());
    for (k, &i) in which.iter().enumerate() {
        let stream = stream_of(k);
        match answers.remove(&stream) {
            Some(v) => verdicts.push((i, v)),
            None if which.len() > 1 => unanswered.push(i),
            None if code.is_some_and(|c| c != 0) => {
                verdicts.push((i, Verdict::ConnectionError(code)))
            }
            None => anyhow::bail!(
                "head {i}, alone, got no answer before the connection ended (GOAWAY {goaway:?})"
            ),
        }
    }
    Ok((verdicts, unanswered))
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

/// The 200 answering a CONNECT carries `baggage` describing the destination workload, in
/// ztunnel's order (cluster, namespace, workload by type, service name and version, region,
/// zone; `ENABLE_RESPONSE_BAGGAGE`, on by default); a refusal carries none. Read from the raw
/// HEADERS frames, HPACK-decoded by the test.
#[test]
fn the_200_carries_baggage_describing_the_destination() {
    let t = Target::start_mesh("hard_baggage", &[], |m| {
        m.edit_workload("c", |w| {
            for (k, v) in [
                ("workloadName", serde_json::json!("echo-c")),
                ("workloadType", serde_json::json!("StatefulSet")),
                ("canonicalName", serde_json::json!("echo")),
                ("canonicalRevision", serde_json::json!("v1")),
                (
                    "locality",
                    serde_json::json!({"region": "r1", "zone": "z1"}),
                ),
            ] {
                w.insert(k.into(), v);
            }
        })
    });
    let config = client::client_config(&t.cluster, "sa-u");
    // Nothing listens on c:1: ztun cannot dial it and refuses the stream.
    let (hbone, echo, closed) = (t.hbone(), t.authority(t.echo.port()), t.authority(1));
    let heads = t
        .cluster
        .lab
        .pod("u")
        .block_on(async move {
            let (mut w, mut r) = client::raw(hbone, config).await?;
            w.frame(kind::HEADERS, END_HEADERS, 1, &client::connect_block(&echo))
                .await?;
            w.frame(
                kind::HEADERS,
                END_HEADERS,
                3,
                &client::connect_block(&closed),
            )
            .await?;
            let mut heads = std::collections::BTreeMap::new();
            while heads.len() < 2 {
                let f = r.next().await?.context("closed before both answers")?;
                if f.kind == kind::HEADERS {
                    heads.insert(f.stream, f);
                }
            }
            anyhow::Ok(heads)
        })
        .expect("both streams answered");
    let baggage = |stream: u32| -> Vec<String> {
        heads[&stream]
            .headers
            .iter()
            .filter(|(n, _)| n == "baggage")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    assert_eq!(heads[&1].status(), Some(200), "{:?}", heads[&1]);
    assert_eq!(
        baggage(1),
        ["k8s.cluster.name=Kubernetes,k8s.namespace.name=default,\
          k8s.statefulset.name=echo-c,service.name=echo,service.version=v1,\
          cloud.region=r1,cloud.availability_zone=z1"]
    );
    assert_ne!(heads[&3].status(), Some(200), "{:?}", heads[&3]);
    assert_eq!(baggage(3), Vec::<String>::new(), "{:?}", heads[&3]);
}
