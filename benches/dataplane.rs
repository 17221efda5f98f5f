//! Data-plane micro-benchmarks: TLS 1.3 mutual handshake between two workload certificates,
//! policy evaluation, and the per-connection state lookups, each reported as time per
//! operation. `cargo bench --bench dataplane`. Figures are machine-dependent: compare runs on
//! the same machine (see docs/performance.md for the end-to-end ratios).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use ztun::authz::{authorize, Conn, HttpOnlyDeny};
use ztun::control::ca::LocalCa;
use ztun::identity::Identity;

fn main() {
    // The allocator settings ztun's process runs with (`app` sets them first thing): without
    // them the relay's per-read buffer measures glibc handing heap back and faulting it in.
    ztun::sys::alloc::retain_freed_heap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).expect("CA");
    let a = ca
        .mint(
            &"spiffe://cluster.local/ns/default/sa/a"
                .parse::<Identity>()
                .unwrap(),
        )
        .expect("cert a");
    let b = ca
        .mint(
            &"spiffe://cluster.local/ns/default/sa/b"
                .parse::<Identity>()
                .unwrap(),
        )
        .expect("cert b");

    // 1. Full mutual TLS 1.3 handshake over an in-memory pipe (no resumption, as in HBONE).
    let n = 300;
    let per = rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            let (c, s) = tokio::io::duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(a.client_config());
            let acceptor = tokio_rustls::TlsAcceptor::from(b.server_config());
            let name = ServerName::IpAddress(IpAddr::from([10, 0, 0, 1]).into());
            let (cl, sv) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
            black_box((cl.expect("client handshake"), sv.expect("server handshake")));
        }
        start.elapsed() / n
    });
    println!("tls13 mutual handshake (both sides, one core): {per:?} per handshake");

    // 2. Policy evaluation over a snapshot with 1 000 namespace policies and a matching one.
    let mut yaml = String::from("workloads:\n- {uid: dst, name: dst, namespace: prod, serviceAccount: web, workloadIps: [10.0.0.2]}\npolicies:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "- {{name: p{i}, namespace: ns{i}, scope: Namespace, action: Allow, rules: [[[{{namespaces: [{{Exact: x}}]}}]]]}}\n"
        ));
    }
    yaml.push_str("- {name: allow-a, namespace: prod, scope: Namespace, action: Allow, rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/a}], destinationPorts: [8080]}]]]}\n");
    let local = ztun::control::local::parse(&yaml).expect("mesh");
    let (writer, reader) = ztun::state::new();
    let mut builder = writer.builder();
    local
        .workloads
        .into_iter()
        .for_each(|w| builder.insert_workload(w));
    local
        .policies
        .into_iter()
        .for_each(|p| builder.insert_policy(p));
    writer.publish(builder);
    let snap = reader.load_full();
    let dst = snap.workload_by_uid("dst").expect("dst").clone();
    let conn = Conn {
        src_ip: IpAddr::from([10, 0, 0, 1]),
        src_identity: Some("spiffe://cluster.local/ns/default/sa/a".parse().unwrap()),
        dst_ip: IpAddr::from([10, 0, 0, 2]),
        dst_port: 8080,
    };
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        black_box(authorize(
            black_box(&snap),
            black_box(&conn),
            black_box(&dst),
            HttpOnlyDeny::Ignore,
        ));
    }
    println!(
        "authorize (1 applicable ALLOW among 1 001 policies): {:?} per decision",
        start.elapsed() / n
    );

    // 3. HBONE on a warm connection: CONNECT stream setup (request → 200), and bulk bytes
    //    through ztun's relay (h2 stream → TCP) on loopback.
    let (setup, gbps) = rt.block_on(hbone(&a, &b));
    println!("hbone stream setup on a warm TLS+h2 connection: {setup:?} per stream");
    println!("relay h2 stream -> TCP, 256 MiB over loopback TLS: {gbps:.2} Gbit/s");

    // 4. Per-connection lookups.
    let n = 1_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        black_box(snap.workload_by_pod(black_box("prod"), black_box("dst"), None));
    }
    println!("workload_by_pod: {:?} per lookup", start.elapsed() / n);
    let start = Instant::now();
    for _ in 0..n {
        black_box(snap.workload_by_ip(black_box(""), black_box(IpAddr::from([10, 0, 0, 2]))));
    }
    println!("workload_by_ip: {:?} per lookup", start.elapsed() / n);
}

/// One mTLS+h2 connection on loopback; returns (time per CONNECT round trip, relay Gbit/s).
async fn hbone(
    client_cert: &ztun::tls::WorkloadCert,
    server_cert: &ztun::tls::WorkloadCert,
) -> (Duration, f64) {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // A sink the relay writes into: counts bytes until EOF.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let sink_addr = sink.local_addr().expect("sink addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = s.shutdown().await;
            });
        }
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cert.server_config());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor
            .accept(ztun::dataplane::hbone::transport(tcp))
            .await
            .expect("server TLS");
        let mut conn = h2::server::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(tls)
            .await
            .expect("server h2");
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let bulk = req
                    .uri()
                    .authority()
                    .is_some_and(|a| a.port_u16() == Some(2));
                let send = respond
                    .send_response(
                        http::Response::builder()
                            .status(200)
                            .body(())
                            .expect("response"),
                        !bulk,
                    )
                    .expect("respond");
                if bulk {
                    let up = tokio::net::TcpStream::connect(sink_addr)
                        .await
                        .expect("sink");
                    let (rd, wr) = up.into_split();
                    let meter = ztun::ops::access::Meter::detached();
                    let body = req.into_body();
                    let _ = ztun::dataplane::hbone::stream::relay(rd, wr, send, body, meter, None)
                        .await;
                }
            });
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let tls = tokio_rustls::TlsConnector::from(client_cert.client_config())
        .connect(name, ztun::dataplane::hbone::transport(tcp))
        .await
        .expect("client TLS");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("client h2");
    tokio::spawn(conn);
    let connect = |port: u16| {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("127.0.0.1:{port}"))
            .body(())
            .expect("request")
    };
    let n = 2000u32;
    let start = Instant::now();
    for _ in 0..n {
        let mut s = send.clone().ready().await.expect("ready");
        let (resp, _) = s.send_request(connect(1), true).expect("send");
        black_box(resp.await.expect("response"));
    }
    let setup = start.elapsed() / n;
    let mut s = send.clone().ready().await.expect("ready");
    let (resp, mut body) = s.send_request(connect(2), false).expect("send");
    let mut from_server = resp.await.expect("response").into_body();
    let total: usize = 256 << 20;
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        body.reserve_capacity(chunk.len());
        let cap = std::future::poll_fn(|cx| body.poll_capacity(cx))
            .await
            .expect("capacity")
            .expect("capacity");
        let part = chunk.slice(..cap.min(chunk.len()));
        sent += part.len();
        body.send_data(part, false).expect("data");
    }
    body.send_data(Bytes::new(), true).expect("eos");
    // The server ends its side once the relay has written everything and the sink closed.
    while let Some(chunk) = from_server.data().await {
        if chunk.is_err() {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (setup, total as f64 * 8.0 / secs / 1e9)
}
