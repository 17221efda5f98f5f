//! Operability end to end: metrics with exact counts, config_dump, /logging, readiness,
//! loopback-only admin, /quitquitquit and SIGTERM drain.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::lab::Netns;
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster, WAIT};

/// One HTTP/1.1 request from inside `ns`; returns (status, body).
pub fn http(
    ns: &Netns,
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    ns.block_on(async move {
        let mut s = ztun::testkit::lab::connect(addr, WAIT).await?;
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await??;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP head in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {head:?}"))?;
        // Bodies of these endpoints are small; undo chunked encoding if used.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The Prometheus text of `node`'s ztun (`127.0.0.1:15020/metrics` in the node namespace).
pub fn scrape(node: &Netns) -> String {
    let (status, metrics) = http(node, "GET", local(15020), "/metrics").expect("scraping metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
}

/// The value of the first sample of `metric` whose labels contain every `labels` pair.
pub fn sample(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let ok = labels
                .iter()
                .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse().ok()).flatten()
        })
}

#[test]
fn metrics_count_connections_and_bytes_exactly() {
    let lab = standard_lab("metrics_exact");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    // One worker: its one pool makes the HBONE socket counts below exact (with two, a's
    // connections ride one pooled connection per worker that took one).
    let cluster = Cluster::start_with(lab, mesh, &[("ZTUNNEL_WORKER_THREADS", "1")]);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    const N: u64 = 3 << 20;
    for _ in 0..3 {
        lab.pod("a").bulk_echo(dst, N).unwrap();
    }
    // Wait until the destination logged all three, so its counters are final.
    crate::support::wait_for_nth_log(cluster.ztun("n2"), "direction=\"inbound\"", 3);
    let (status, body) = http(lab.node("n2").netns(), "GET", local(15020), "/metrics").unwrap();
    assert_eq!(status, 200);
    let dst_labels = [
        ("reporter", "destination"),
        ("source_workload", "a"),
        ("destination_workload", "c"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sa-a",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        sample(&body, "istio_tcp_connections_opened_total", &dst_labels),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "istio_tcp_connections_closed_total", &dst_labels),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, "istio_tcp_received_bytes_total", &dst_labels),
        Some((3 * N) as f64)
    );
    assert_eq!(
        sample(&body, "istio_tcp_sent_bytes_total", &dst_labels),
        Some((3 * N) as f64)
    );
    assert!(
        body.contains("istio_build{component=\"ztunnel\""),
        "no istio_build"
    );
    assert_eq!(
        sample(&body, "workload_manager_active_proxy_count", &[]),
        Some(1.0)
    );
    assert!(sample(&body, "process_open_fds", &[]).unwrap_or(0.0) > 0.0);
    let (_, stats) = http(
        lab.node("n2").netns(),
        "GET",
        local(15020),
        "/stats/prometheus",
    )
    .unwrap();
    assert!(stats.contains("istio_tcp_connections_opened_total"));
    let (_, src) = http(lab.node("n1").netns(), "GET", local(15020), "/metrics").unwrap();
    let src_labels = [
        ("reporter", "source"),
        ("source_workload", "a"),
        ("destination_workload", "c"),
    ];
    assert_eq!(
        sample(&src, "istio_tcp_connections_opened_total", &src_labels),
        Some(3.0),
        "{src}"
    );

    // A refused connection (nothing listens on 8081 in c) is counted with a stable reason on
    // both sides.
    assert!(lab
        .pod("a")
        .bulk_echo(SocketAddr::from((lab.pod("c").ip(), 8081)), 16)
        .is_err());
    crate::support::wait_for_nth_log(cluster.ztun("n2"), "reason=\"upstream_connect_failed\"", 1);
    crate::support::wait_for_nth_log(cluster.ztun("n1"), "reason=\"peer_refused\"", 1);
    let (_, dst) = http(lab.node("n2").netns(), "GET", local(15020), "/metrics").unwrap();
    let want = [
        ("direction", "inbound"),
        ("reason", "upstream_connect_failed"),
    ];
    assert_eq!(
        sample(&dst, "ztun_connection_failures_total", &want),
        Some(1.0),
        "{dst}"
    );
    let (_, src) = http(lab.node("n1").netns(), "GET", local(15020), "/metrics").unwrap();
    let want = [("direction", "outbound"), ("reason", "peer_refused")];
    assert_eq!(
        sample(&src, "ztun_connection_failures_total", &want),
        Some(1.0),
        "{src}"
    );
    let echo = SocketAddr::from((lab.pod("c").ip(), server.port()));
    long_lived_connections_are_counted_while_they_run(&cluster, echo);
}

/// A connection that stays open is counted opened at once and its bytes as they flow, on both
/// nodes; it is counted closed only when it ends.
fn long_lived_connections_are_counted_while_they_run(cluster: &Cluster, dst: SocketAddr) {
    const SENT: usize = 1000;
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let task = cluster.lab.pod("b").spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
        let mut buf = vec![0u8; SENT];
        s.write_all(&[7u8; SENT]).await?;
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        let _ = finish_rx.await;
        anyhow::Ok(())
    });
    opened_rx.recv_timeout(WAIT).expect("b's connection echoed");
    let series = |node: &str, reporter: &str| {
        let body = scrape(cluster.lab.node(node).netns());
        let labels = [("reporter", reporter), ("source_workload", "b")];
        let value = |m| sample(&body, m, &labels).unwrap_or(0.0);
        (
            value("istio_tcp_connections_opened_total"),
            value("istio_tcp_connections_closed_total"),
            value("istio_tcp_received_bytes_total"),
            value("istio_tcp_sent_bytes_total"),
        )
    };
    let wait_for = |node: &str, reporter: &str, want: (f64, f64, f64, f64)| {
        // The last count may land just after the client has its bytes: poll until it does.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let got = series(node, reporter);
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{node}: (opened, closed, received, sent) = {got:?}, want {want:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // `istio_tcp_sockets_open` (the dashboards' "Open Sockets"): accepted sockets, so b's app
    // connection on n1 (15001) and, on n2, one HBONE connection per pooled tunnel (a's, kept
    // in n1's pool since its echoes, and b's).
    let sockets = |node: &str, reporter: &str| {
        let body = scrape(cluster.lab.node(node).netns());
        sample(&body, "istio_tcp_sockets_open", &[("reporter", reporter)])
    };
    let bytes = SENT as f64;
    wait_for("n1", "source", (1.0, 0.0, bytes, bytes));
    wait_for("n2", "destination", (1.0, 0.0, bytes, bytes));
    assert_eq!(sockets("n1", "source"), Some(1.0));
    assert_eq!(sockets("n2", "destination"), Some(2.0));
    let _ = finish_tx.send(());
    task.join().unwrap().expect("b's connection");
    wait_for("n1", "source", (1.0, 1.0, bytes, bytes));
    wait_for("n2", "destination", (1.0, 1.0, bytes, bytes));
    let deadline = std::time::Instant::now() + WAIT;
    while sockets("n1", "source") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "n1 still counts b's socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The tunnels stay pooled: their sockets on n2 stay open.
    assert_eq!(sockets("n2", "destination"), Some(2.0));
}

#[test]
fn admin_config_dump_logging_and_loopback_only() {
    let lab = standard_lab("admin");
    let mesh = MeshFile::from_lab(&lab)
        .service(
            "web",
            "default",
            std::net::Ipv4Addr::new(10, 96, 0, 7),
            &[(80, 8080)],
            &["c"],
        )
        .policy(serde_json::json!({
            "name": "strict",
            "namespace": "default",
            "scope": "Namespace",
            "action": "Deny",
            "rules": [[[{"notPrincipals": [{"Presence": []}], "notSourceIps": ["10.255.0.0/16"]}]]],
        }));
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    lab.pod("a")
        .bulk_echo(SocketAddr::from((lab.pod("c").ip(), server.port())), 1024)
        .unwrap();
    let n1 = lab.node("n1").netns();
    let (status, body) = http(n1, "GET", local(15000), "/config_dump").unwrap();
    assert_eq!(status, 200);
    assert!(
        !body.contains("PRIVATE KEY"),
        "config_dump leaks a private key"
    );
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    // What `istioctl ztunnel-config` decodes it into (Go types), with ztunnel's forms.
    let decoded = ztun::testkit::istioctl::decode(&dump).unwrap_or_else(|e| panic!("{e:#}"));
    let web = decoded
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("service web");
    assert_eq!(web.vips, ["/10.96.0.7"]);
    assert_eq!(web.endpoints.len(), 1, "{:?}", web.endpoints);
    let strict = &decoded.policies[0];
    assert!(strict.rules[0][0][0].not_principals[0].presence.is_some());
    assert_eq!(strict.rules[0][0][0].not_source_ips, ["10.255.0.0/16"]);
    assert!(!decoded.certificates.is_empty() && !decoded.workload_state.is_empty());
    assert_eq!(
        dump["staticConfig"]["policies"][0]["name"], "strict",
        "{}",
        dump["staticConfig"]
    );
    let uids: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["uid"].as_str())
        .collect();
    assert!(uids.contains(&lab.pod("a").uid()), "{uids:?}");
    assert_eq!(
        dump["workloads"][0]["workloadIps"].as_array().map(Vec::len),
        Some(1)
    );
    let state = &dump["workloadState"][lab.pod("a").uid()];
    assert_eq!(state["state"], "Up");
    assert_eq!(state["info"]["serviceAccount"], "sa-a");
    let certs = dump["certificates"].as_array().unwrap();
    assert!(
        certs
            .iter()
            .any(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/sa-a"),
        "{certs:?}"
    );
    assert!(dump["config"]["proxyMode"].is_string());
    assert!(dump["version"]["version"].is_string());

    let (status, body) = http(n1, "POST", local(15000), "/logging?level=ztun%3Dtrace").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ztun=trace"), "{body}");
    // What `istioctl ztunnel-config log` sends to list the levels.
    let (status, now) = http(n1, "POST", local(15000), "/logging?level=").unwrap();
    assert_eq!(status, 200, "{now}");
    assert!(
        now.starts_with("current log level is ") && now.contains("ztun=trace"),
        "{now}"
    );
    let (status, now) = http(n1, "POST", local(15000), "/logging").unwrap();
    assert_eq!(status, 200, "{now}");
    assert!(now.contains("ztun=trace"), "{now}");
    let (status, _) = http(n1, "GET", local(15000), "/logging").unwrap();
    assert_eq!(status, 405, "ztunnel answers only POST");
    // istioctl passes `access:debug` through; ztunnel refuses the colon form.
    let (status, body) = http(n1, "POST", local(15000), "/logging?level=access:debug").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("Invalid level provided: access:debug"),
        "{body}"
    );
    let (status, _) = http(
        n1,
        "POST",
        local(15000),
        "/logging?level=not%20a%20filter%3D%3D",
    )
    .unwrap();
    assert_eq!(status, 400);
    let (status, body) = http(n1, "POST", local(15000), "/logging?reset").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("trace"), "{body}");
    // istioctl's `-r`: reset, then the level.
    let (status, body) = http(
        n1,
        "POST",
        local(15000),
        "/logging?level=ztun%3Ddebug&reset",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("ztun=debug") && !body.contains("trace"),
        "{body}"
    );
    let (status, _) = http(n1, "GET", local(15000), "/quitquitquit").unwrap();
    assert_eq!(status, 405);

    // Admin listens on loopback only: from the other node it is unreachable.
    let admin = SocketAddr::from((lab.node("n1").link_ip(), 15000));
    assert!(
        lab.node("n2").netns().try_connect(admin).is_err(),
        "admin reachable from off-node"
    );
    // Readiness and metrics are reachable from off-node.
    let (status, body) = http(
        lab.node("n2").netns(),
        "GET",
        SocketAddr::from((lab.node("n1").link_ip(), 15021)),
        "/healthz/ready",
    )
    .unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
}

#[test]
fn readiness_waits_for_the_cni_and_quitquitquit_exits() {
    let lab = standard_lab("readiness");
    let mesh = MeshFile::from_lab(&lab);
    let ca = lab.dir().join("ca");
    ztun::testkit::certs::write_ca_dir(&ca).unwrap();
    let mesh_path = lab.dir().join("mesh.yaml");
    mesh.write(&mesh_path).unwrap();
    let missing = lab.dir().join("no-cni.sock");
    let (m, c, s) = (
        mesh_path.to_string_lossy().into_owned(),
        ca.to_string_lossy().into_owned(),
        missing.to_string_lossy().into_owned(),
    );
    let z = lab
        .spawn_ztun(
            "n1",
            &[
                ("LOCAL_XDS_PATH", &m),
                ("LOCAL_CA_DIR", &c),
                ("INPOD_UDS", &s),
            ],
        )
        .unwrap();
    z.wait_for_log("operational endpoints up", WAIT).unwrap();
    let n1 = lab.node("n1").netns();
    let (status, body) = http(n1, "GET", local(15021), "/healthz/ready").unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("workload proxy manager"), "{body}");
    let (status, _) = http(n1, "POST", local(15000), "/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let exit = z.wait_exit(WAIT).unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    // ztunnel's default: two workers.
    sigterm_drain("sigterm_drain", &[], 2);
}

/// One worker: the tunnel, the drain and the exit work on it as on two.
#[test]
fn one_worker_relays_drains_and_exits_on_its_own_runtime() {
    sigterm_drain("one_worker", &[("ZTUNNEL_WORKER_THREADS", "1")], 1);
}

/// A connection opened through both nodes' ztuns survives SIGTERM on the source node (its
/// listeners close, new connections are refused) and ztun exits once it ends. `workers` is
/// the worker count the startup log names and the metrics report.
fn sigterm_drain(name: &str, env: &[(&str, &str)], workers: usize) {
    let lab = standard_lab(name);
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut env = env.to_vec();
    env.push(("CONNECTION_TERMINATION_DEADLINE", "60s"));
    let cluster = Cluster::start_with(lab, mesh, &env);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let n1 = cluster.ztun("n1");
    let started = n1.wait_for_log("data plane runtime started", WAIT).unwrap();
    assert!(started.contains(&format!("workers={workers}")), "{started}");
    let metrics = scrape(lab.node("n1").netns());
    assert_eq!(
        sample(&metrics, "tokio_num_workers", &[]),
        Some(workers as f64),
        "{metrics}"
    );
    assert_eq!(worker_tasks(&metrics).len(), workers, "{metrics}");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    // A long-lived connection: one exchange, then wait, then another exchange after SIGTERM.
    let task = lab.pod("a").spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
        let mut buf = [0u8; 5];
        s.write_all(b"hello").await?;
        s.read_exact(&mut buf).await?;
        let _ = started_tx.send(());
        let _ = go_rx.await;
        s.write_all(b"again").await?;
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"again", "echo differs");
        s.shutdown().await?;
        anyhow::Ok(())
    });
    started_rx.recv_timeout(WAIT).unwrap();
    n1.sigterm().unwrap();
    n1.wait_for_log("shutting down", WAIT).unwrap();
    // Both pods' three listeners on every worker are closed (the event to wait for, not a
    // delay).
    crate::support::wait_for_nth_log(n1, "listener closed", 6 * workers);
    // New connections are refused while draining...
    let err = lab
        .pod("b")
        .try_connect(dst)
        .expect_err("a draining ztun accepted a new connection");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // ...while the open one keeps working until it closes, then ztun exits cleanly.
    let _ = go_tx.send(());
    task.join().unwrap().unwrap();
    let exit = n1.wait_exit(WAIT).unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        n1.logs()
            .iter()
            .all(|l| !l.contains("termination deadline reached")),
        "drain hit the deadline"
    );
}

/// Tasks alive on each data worker, in worker order (`ztun_worker_alive_tasks`).
fn worker_tasks(metrics: &str) -> Vec<f64> {
    (0..)
        .map_while(|w| {
            let w = w.to_string();
            sample(metrics, "ztun_worker_alive_tasks", &[("worker", &w)])
        })
        .collect()
}

/// With two workers (ztunnel's default), each of a pod's ports has a listener per worker in
/// one SO_REUSEPORT group: the kernel spreads the pod's connections over both workers, and
/// each connection's task lives on the worker that accepted it until the connection ends.
#[test]
fn a_pods_connections_spread_over_both_workers() {
    let (before, during) = connections_per_worker("worker_spread", &[]);
    // Both workers hold some (all 24 hashed to one listener: one chance in 2^23).
    for (w, (b, d)) in before.iter().zip(&during).enumerate() {
        assert!(
            d > b,
            "worker {w} took no connection: {before:?} -> {during:?}"
        );
    }
}

/// Without port reuse (`INPOD_PORT_REUSE=false`) a port cannot have a listener per worker:
/// each of the pod's ports has one, and one worker serves all its connections.
#[test]
fn without_port_reuse_one_worker_serves_a_pod() {
    let (before, during) =
        connections_per_worker("worker_no_reuse", &[("INPOD_PORT_REUSE", "false")]);
    let grew: Vec<usize> = (0..before.len())
        .filter(|&w| during[w] > before[w])
        .collect();
    assert_eq!(grew.len(), 1, "{before:?} -> {during:?}");
}

/// Tasks alive on each of n1's two workers before pod a opens 24 connections to c and while
/// they are open. Every connection adds at least its task on the worker that accepted it,
/// and the tasks end with the connections (each worker's pooled HBONE connection stays,
/// idle).
fn connections_per_worker(name: &str, env: &[(&str, &str)]) -> (Vec<f64>, Vec<f64>) {
    const CONNECTIONS: usize = 24;
    let lab = standard_lab(name);
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start_with(lab, mesh, env);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let n1 = lab.node("n1").netns();
    // Before any traffic: each worker's listeners and the pods' own tasks.
    let before = worker_tasks(&scrape(n1));
    assert_eq!(before.len(), 2, "two workers by default");

    let held = crate::support::Concurrent::open(lab.pod("a"), dst, CONNECTIONS);
    let during = worker_tasks(&scrape(n1));
    let grown: f64 = during.iter().sum::<f64>() - before.iter().sum::<f64>();
    assert!(
        grown >= CONNECTIONS as f64,
        "{grown} more tasks for {CONNECTIONS} connections: {before:?} -> {during:?}"
    );
    held.close();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after = worker_tasks(&scrape(n1));
        let left = after.iter().sum::<f64>() - before.iter().sum::<f64>();
        if left <= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tasks left after the connections closed: {before:?} -> {after:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (before, during)
}

#[test]
fn json_logs_use_ztunnels_fields() {
    let lab = standard_lab("json_logs");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start_with(lab, mesh, &[("LOG_FORMAT", "json")]);
    let lab = &cluster.lab;
    lab.pod("a")
        .bulk_echo(SocketAddr::from((lab.pod("c").ip(), server.port())), 1024)
        .unwrap();
    let line = cluster
        .ztun("n2")
        .wait_for_log("\"scope\":\"access\"", WAIT)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "info", "{line}");
    assert_eq!(v["message"], "connection complete", "{line}");
    assert_eq!(
        v["src.identity"], "spiffe://cluster.local/ns/default/sa/sa-a",
        "{line}"
    );
    assert_eq!(v["direction"], "inbound", "{line}");
    assert_eq!(v["bytes_recv"], 1024, "{line}");
    assert!(
        v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
}

/// A ztun out of file descriptors refuses nothing silently and does not spin: the accept
/// failure is counted and logged, liveness fails once the exhaustion has lasted
/// `ZTUN_FD_EXHAUSTION_LIVENESS` (1 s here, so a kubelet would restart ztun), and traffic,
/// readiness and liveness recover once descriptors are available again. Scaled to this
/// machine: the limit is lowered to a few descriptors above what ztun holds.
#[test]
fn fd_exhaustion_is_counted_and_recovers() {
    let lab = standard_lab("fd_exhaustion");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let cluster = Cluster::start_with(lab, mesh, &[("ZTUN_FD_EXHAUSTION_LIVENESS", "1s")]);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    lab.pod("a").bulk_echo(dst, 1024).unwrap();
    let n1 = cluster.ztun("n1");
    let pid = n1.pid().to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Only the soft limit moves (lowering and restoring it needs no extra capability).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("soft NOFILE limit")
        .to_string();
    let limit = format!("--nofile={}:", open + 4);
    ztun::testkit::lab::run_cmd("prlimit", &["--pid", &pid, &limit], None).unwrap();
    // Hold connections open until ztun cannot accept more.
    let held = lab.pod("a").spawn_async(async move {
        let mut conns = Vec::new();
        for _ in 0..16 {
            if let Ok(s) = ztun::testkit::lab::connect(dst, std::time::Duration::from_secs(2)).await
            {
                conns.push(s);
            }
        }
        std::future::pending::<()>().await;
        drop(conns);
    });
    n1.wait_for_log("Too many open files", WAIT).unwrap();
    // Failed accepts are retried every 50 ms by each listener with connections queued: pod
    // a's outbound listeners, one per worker (two). The 60th failure of at most two such
    // loops is at least 1.45 s into an unbroken run, past the 1 s liveness grace.
    crate::support::wait_for_nth_log(n1, "accept failed", 60);
    let restore = format!("--nofile={soft}:");
    ztun::testkit::lab::run_cmd("prlimit", &["--pid", &pid, &restore], None).unwrap();
    // The probes get through now; the run of failures ended less than the 10 s window ago.
    let (status, body) =
        http(lab.node("n1").netns(), "GET", local(15021), "/healthz/live").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("file descriptors exhausted"), "{body}");
    held.abort();
    let (status, metrics) = http(lab.node("n1").netns(), "GET", local(15020), "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        sample(&metrics, "ztun_accept_fd_exhausted_total", &[]).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    lab.pod("a")
        .bulk_echo(dst, 1 << 20)
        .expect("traffic recovers once descriptors are back");
    // Ten seconds after the last failure both probes pass again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let live = http(lab.node("n1").netns(), "GET", local(15021), "/healthz/live").unwrap();
        let ready = http(
            lab.node("n1").netns(),
            "GET",
            local(15021),
            "/healthz/ready",
        )
        .unwrap();
        if live.0 == 200 && ready.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probes did not recover: {live:?} {ready:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
