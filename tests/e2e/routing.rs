//! Service routing end to end: load balancing by capacity, locality failover, health, refusal
//! when nothing is usable, and waypoints (service and workload) in front of destinations.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use ztun::identity::Identity;
use ztun::testkit::lab::{connect, peer_seen_by, Lab, PodSpec, Server};
use ztun::testkit::mesh::MeshFile;
use ztun::testkit::waypoint::Waypoint;

use crate::support::{two_node_lab, Cluster, WAIT};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SVC_PORT: u16 = 80;
const TARGET: u16 = 8080;

/// n1: client `a` and endpoint `b`; n2: endpoints `c` and `d`; all captured, plus the
/// uncaptured `w` on n2 (used as a waypoint).
fn routing_lab(test: &str) -> Lab {
    two_node_lab(
        test,
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("b", "n1")
                .service_account("sa-b")
                .captured(true),
            PodSpec::new("c", "n2")
                .service_account("sa-c")
                .captured(true),
            PodSpec::new("d", "n2")
                .service_account("sa-d")
                .captured(true),
            PodSpec::new("w", "n2").service_account("waypoint"),
        ],
    )
}

/// Peer recorders on `TARGET` in each named pod.
fn recorders(lab: &Lab, pods: &[&str]) -> HashMap<String, Server> {
    pods.iter()
        .map(|p| {
            (
                p.to_string(),
                lab.pod(p).spawn_peer_recorder(TARGET).unwrap(),
            )
        })
        .collect()
}

/// Opens `n` connections from `pod` to the service VIP, one after the other.
fn call_service(lab: &Lab, pod: &str, n: usize) {
    let vip = SocketAddr::from((VIP, SVC_PORT));
    lab.pod(pod)
        .block_on(async move {
            for i in 0..n {
                peer_seen_by(vip, WAIT)
                    .await
                    .map_err(|e| e.context(format!("connection {i}")))?;
            }
            anyhow::Ok(())
        })
        .expect("service calls");
}

/// How many connections each recorder has accepted.
fn counts(servers: &HashMap<String, Server>) -> HashMap<String, usize> {
    servers
        .iter()
        .map(|(k, s)| (k.clone(), s.peers().len()))
        .collect()
}

#[test]
fn service_traffic_spreads_over_endpoints_by_capacity() {
    let lab = routing_lab("lb_weights");
    let mesh = MeshFile::from_lab(&lab)
        .service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["b", "c"])
        .edit_workload("c", |w| {
            w.insert("capacity".into(), json!(3));
        });
    let servers = recorders(&lab, &["b", "c"]);
    let cluster = Cluster::start(lab, mesh);
    let n = 300;
    call_service(&cluster.lab, "a", n);
    let got = counts(&servers);
    assert_eq!(got["b"] + got["c"], n, "{got:?}");
    let heavy = got["c"] as f64 / n as f64;
    // Expected 0.75; the bound is generous so that a correct build never flakes.
    assert!((0.6..=0.9).contains(&heavy), "capacity 1:3 gave {got:?}");
}

#[test]
fn locality_failover_health_and_refusal() {
    let lab = routing_lab("lb_failover");
    let zone = |z: &'static str| {
        move |w: &mut serde_json::Map<String, serde_json::Value>| {
            w.insert("locality".into(), json!({"region": "r1", "zone": z}));
        }
    };
    let base = MeshFile::from_lab(&lab)
        .service(
            "echo",
            "default",
            VIP,
            &[(SVC_PORT, TARGET)],
            &["b", "c", "d"],
        )
        .edit_service("echo", |s| {
            s.insert(
                "loadBalancer".into(),
                json!({"routingPreferences": ["Region", "Zone"], "mode": "Failover"}),
            );
        })
        .edit_workload("a", zone("z1"))
        .edit_workload("b", zone("z1"))
        .edit_workload("c", zone("z2"))
        .edit_workload("d", zone("z2"));
    let unhealthy = |m: MeshFile, pod: &str| {
        m.edit_workload(pod, |w| {
            w.insert("status".into(), json!("Unhealthy"));
        })
    };
    let servers = recorders(&lab, &["b", "c", "d"]);
    let cluster = Cluster::start(lab, base.clone());
    let lab = &cluster.lab;

    // Same zone first.
    call_service(lab, "a", 20);
    assert_eq!(counts(&servers)["b"], 20, "{:?}", counts(&servers));

    // The local endpoint goes unhealthy: fail over to the next zone, both of its endpoints.
    cluster.update_mesh(&unhealthy(base.clone(), "b"));
    call_service(lab, "a", 40);
    let got = counts(&servers);
    assert_eq!(
        got["b"], 20,
        "an unhealthy endpoint gets no traffic: {got:?}"
    );
    assert_eq!(got["c"] + got["d"], 40, "{got:?}");
    assert!(got["c"] > 0 && got["d"] > 0, "{got:?}");

    // Nothing usable: the client's connection is refused (reset), not left hanging.
    let none = unhealthy(unhealthy(unhealthy(base, "b"), "c"), "d");
    cluster.update_mesh(&none);
    let started = Instant::now();
    let res = lab.pod("a").block_on(async {
        let mut s = connect(SocketAddr::from((VIP, SVC_PORT)), WAIT).await?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
        anyhow::Ok(n)
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    match res {
        Ok(0) => {}
        Ok(n) => panic!("read {n} bytes from a service without endpoints"),
        Err(e) => {
            let io = e.downcast_ref::<std::io::Error>().map(|e| e.kind());
            assert_eq!(io, Some(std::io::ErrorKind::ConnectionReset), "{e:#}");
        }
    }
    let line = cluster
        .ztun("n1")
        .wait_for_log("no healthy upstream", WAIT)
        .unwrap();
    assert!(line.contains(&format!("{VIP}:{SVC_PORT}")), "{line}");
}

#[test]
fn waypoints_receive_the_traffic_of_services_and_workloads_that_name_them() {
    let lab = routing_lab("waypoints");
    let w_ip = lab.pod("w").ip();
    let c_ip = lab.pod("c").ip();
    let gateway = json!({"destination": format!("/{w_ip}"), "hboneMtlsPort": 15008});
    let mesh = MeshFile::from_lab(&lab)
        .service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &["c"])
        .edit_service("echo", |s| {
            s.insert("waypoint".into(), gateway.clone());
        })
        .edit_workload("d", |w| {
            w.insert("waypoint".into(), gateway.clone());
        });
    let c_echo = lab.pod("c").spawn_echo_server(TARGET).unwrap();
    let d_echo = lab.pod("d").spawn_echo_server(TARGET).unwrap();
    let d_ip = lab.pod("d").ip();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let waypoint_id: Identity = "spiffe://cluster.local/ns/default/sa/waypoint"
        .parse()
        .unwrap();
    // The waypoint resolves the VIP as its own service discovery would.
    let resolve = HashMap::from([(
        SocketAddr::from((VIP, SVC_PORT)),
        SocketAddr::from((c_ip, c_echo.port())),
    )]);
    let waypoint = Waypoint::spawn(
        lab.pod("w").netns(),
        15008,
        &cluster.ca_dir,
        &waypoint_id,
        resolve,
    )
    .expect("starting the waypoint");

    // Service traffic goes through the waypoint, with the VIP as the CONNECT authority.
    let t = lab
        .pod("a")
        .bulk_echo(SocketAddr::from((VIP, SVC_PORT)), 1 << 20)
        .expect("a -> echo service via its waypoint");
    assert_eq!(t.bytes, 1 << 20);
    let seen = waypoint.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authority, format!("{VIP}:{SVC_PORT}"));
    assert_eq!(
        seen[0].client_identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/sa-a"
    );
    assert_eq!(seen[0].client_addr.ip(), lab.pod("a").ip());
    assert!(
        seen[0]
            .forwarded
            .as_deref()
            .is_some_and(|f| f.contains("host=echo.default.svc.cluster.local")),
        "{seen:?}"
    );

    // Addressing c directly skips the service's waypoint.
    lab.pod("a")
        .bulk_echo(SocketAddr::from((c_ip, c_echo.port())), 1024)
        .expect("a -> c directly");
    assert_eq!(waypoint.seen().len(), 1);

    // A workload waypoint: d's traffic goes through it with d's address as the authority.
    lab.pod("a")
        .bulk_echo(SocketAddr::from((d_ip, d_echo.port())), 1024)
        .expect("a -> d via its workload waypoint");
    let seen = waypoint.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].authority, format!("{d_ip}:{}", d_echo.port()));
    let line = cluster
        .ztun("n1")
        .wait_for_log(&format!("dst.hbone_addr={d_ip}:{}", d_echo.port()), WAIT)
        .unwrap();
    assert!(line.contains(&format!("dst.addr={w_ip}:15008")), "{line}");
}

#[test]
fn a_sandwiched_waypoint_gets_a_proxy_header_through_its_application_tunnel() {
    let lab = two_node_lab(
        "app_tunnel",
        vec![
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
            PodSpec::new("wp", "n2")
                .service_account("waypoint")
                .captured(true),
        ],
    );
    let wp_ip = lab.pod("wp").ip();
    let mesh = MeshFile::from_lab(&lab)
        .service("echo", "default", VIP, &[(SVC_PORT, TARGET)], &[])
        .edit_service("echo", |s| {
            s.insert(
                "waypoint".into(),
                json!({"destination": format!("/{wp_ip}"), "hboneMtlsPort": 15008}),
            );
        })
        .edit_workload("wp", |w| {
            w.insert(
                "applicationTunnel".into(),
                json!({"protocol": "PROXY", "port": 15088}),
            );
        });
    // The waypoint's app: reads the PROXY header and answers with what it carried.
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let _app = lab.pod("wp").spawn_async(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 15088))
            .await
            .expect("bind 127.0.0.1:15088");
        let _ = bound_tx.send(());
        loop {
            let Ok((mut s, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let parsed = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = ztun::dataplane::proxy_protocol::parse(&buf) {
                        break p;
                    }
                };
                let identity = parsed
                    .tlvs
                    .iter()
                    .find(|(t, _)| *t == 0xD0)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let line = format!("{} {} {} {}\n", parsed.src, parsed.dst, identity, peer.ip());
                let _ = s.write_all(line.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("waypoint app listening");
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let line = lab
        .pod("a")
        .block_on(async {
            let mut s = connect(SocketAddr::from((VIP, SVC_PORT)), WAIT).await?;
            let mut out = String::new();
            tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await??;
            anyhow::Ok(out)
        })
        .expect("a -> echo via the sandwiched waypoint");
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "{line:?}");
    let src: SocketAddr = parts[0].parse().unwrap();
    assert_eq!(
        src.ip(),
        lab.pod("a").ip(),
        "PROXY source is the original client"
    );
    assert_eq!(
        parts[1],
        format!("{VIP}:{SVC_PORT}"),
        "PROXY destination is the HBONE target"
    );
    assert_eq!(
        parts[2], "spiffe://cluster.local/ns/default/sa/sa-a",
        "TLV 0xD0"
    );
    assert_eq!(parts[3], "127.0.0.1", "delivered over loopback");
}
