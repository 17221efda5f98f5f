//! Data-plane micro-benchmarks: TLS 1.3 mutual handshake between two workload certificates,
//! policy evaluation, and the per-connection state lookups, each reported as time per
//! operation. `cargo bench --bench dataplane`. Figures are machine-dependent: compare runs on
//! the same machine (see docs/performance.md for the end-to-end ratios).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use ztun::control::ca::LocalCa;
use ztun::dataplane::policy::{authorize, Conn};
use ztun::identity::Identity;

fn main() {
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
        ));
    }
    println!(
        "authorize (1 applicable ALLOW among 1 001 policies): {:?} per decision",
        start.elapsed() / n
    );

    // 3. Per-connection lookups.
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
