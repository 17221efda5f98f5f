//! README claims that had no test of their own, one test each (docs/limits.md maps every claim
//! of the README's "What works today" table to the tests that hold it): the HTTP/2 PING
//! keepalive against a silent peer, the HBONE pool's stream cap, single dial per key and idle
//! release, metric series expiring with their workload, the admin `/connections` list, every
//! `ztun ctl` subcommand, the ZDS client reconnecting after the CNI agent restarts, and (in
//! `claims/dns.rs`) the DNS proxy's per-pod limits.
//!
//! Every wait is on an event (a log line, an echo, a connection count) under a generous
//! deadline; where no event exists (a socket disappearing from `ss`, a series from
//! `/metrics`) the state is polled until the deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::lab::{connect, Netns, Process};
use ztun::testkit::mesh::MeshFile;

use crate::ops::{http, local, sample, scrape};
use crate::support::{standard_lab, wait_for_line, wait_for_nth_log, Cluster, Concurrent, WAIT};

mod dns;

/// HBONE's port.
const HBONE: u16 = 15008;
/// The echo server's port in pod c.
const ECHO: u16 = 8080;
/// A service VIP in front of c's echo server.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// Source ztun's debug line for each HBONE connection it dials.
const DIALLED: &str = "hbone connection established";

/// HBONE: "HTTP/2 PING keepalive". The destination ztun is frozen (SIGSTOP: its kernel still
/// acknowledges TCP, so only an unanswered PING can tell), and the source ztun closes the
/// pooled connection that carries an open stream (a PING every 10 s, unanswered for 20 s),
/// logs it, and closes the app connection riding it. Once the peer is back, a new connection
/// is dialled.
#[test]
fn a_silent_hbone_peer_fails_the_ping_and_its_pooled_connection_is_closed() {
    let lab = standard_lab("claim_ping");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let (opened_tx, opened_rx) = mpsc::channel();
    let app = lab.pod("a").spawn_async(async move {
        let mut s = connect(dst, WAIT).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        // EOF or a reset: either way ztun ended it.
        let mut rest = Vec::new();
        match tokio::time::timeout(3 * WAIT, s.read_to_end(&mut rest)).await {
            Ok(_) => anyhow::Ok(()),
            Err(_) => anyhow::bail!("the app connection outlived its dead tunnel"),
        }
    });
    opened_rx.recv_timeout(WAIT).expect("a's connection echoed");
    let a = lab.pod("a").netns();
    assert_eq!(hbone_connections(a), 1, "one pooled connection to c");
    let n1 = cluster.ztun("n1");
    let cursor = n1.log_cursor();
    {
        let _frozen = Frozen::stop(cluster.ztun("n2"));
        // Detected 20 to 30 s after the freeze: the deadline leaves room for a loaded machine.
        n1.wait_for_log_after(cursor, "hbone peer did not answer PING", 3 * WAIT)
            .expect("the source ztun gave up on the silent peer");
        wait_for_hbone_connections(a, 0);
        app.join()
            .expect("app task")
            .expect("the app connection was closed with its tunnel");
        wait_for_line(
            n1,
            cursor,
            &["connection complete", "reason=\"relay_failed\""],
        )
        .unwrap();
        let metrics = scrape(lab.node("n1").netns());
        let failed = [("direction", "outbound"), ("reason", "relay_failed")];
        assert_eq!(
            sample(&metrics, "ztun_connection_failures_total", &failed),
            Some(1.0),
            "{metrics}"
        );
    }
    lab.pod("a")
        .bulk_echo(dst, 4096)
        .expect("a -> c once the peer answers again");
    assert_eq!(
        count_lines(n1, DIALLED),
        2,
        "a fresh connection was dialled"
    );
}

/// HBONE: "one dial per key and idle release". Twenty connections from a to c opened at once
/// share exactly one dialled TLS connection; with `POOL_UNUSED_RELEASE_TIMEOUT=1s` it is
/// closed once the last stream has ended, and the next connection dials a new one. ztun
/// keeps a pool per data worker (docs/compat.md), so the claim is checked with one worker,
/// as ztunnel's one pool; the next test checks two.
#[test]
fn concurrent_connections_share_one_dial_and_the_idle_connection_is_released() {
    const N: usize = 20;
    let lab = standard_lab("claim_pool");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let env = [
        ("POOL_UNUSED_RELEASE_TIMEOUT", "1s"),
        ("ZTUNNEL_WORKER_THREADS", "1"),
    ];
    let cluster = Cluster::start_with(lab, mesh, &env);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let held = Concurrent::open(lab.pod("a"), dst, N);
    let n1 = cluster.ztun("n1");
    let a = lab.pod("a").netns();
    assert_eq!(count_lines(n1, DIALLED), 1, "{N} streams, one dial");
    assert_eq!(hbone_connections(a), 1, "{N} streams, one TLS connection");
    held.close();
    wait_for_nth_log(n1, "direction=\"outbound\"", N);
    // Idle for POOL_UNUSED_RELEASE_TIMEOUT: closed.
    wait_for_hbone_connections(a, 0);
    assert_eq!(count_lines(n1, DIALLED), 1);
    lab.pod("a").bulk_echo(dst, 4096).unwrap();
    assert_eq!(
        count_lines(n1, DIALLED),
        2,
        "the released connection left the pool"
    );
}

/// With two workers (the default) each worker's pool dials its own connection: twenty
/// connections from a to c opened at once, spread by the kernel over both workers, ride two
/// TLS connections, one dial each (all twenty on one worker: one chance in 2^19).
#[test]
fn each_worker_dials_its_own_pooled_connection() {
    const N: usize = 20;
    let lab = standard_lab("claim_pool_workers");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start_with(lab, mesh, &[]);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let held = Concurrent::open(lab.pod("a"), dst, N);
    let n1 = cluster.ztun("n1");
    assert_eq!(
        count_lines(n1, DIALLED),
        2,
        "{N} streams, one dial per worker"
    );
    assert_eq!(
        hbone_connections(lab.pod("a").netns()),
        2,
        "{N} streams, a TLS connection per worker"
    );
    held.close();
}

/// HBONE: "a stream cap". With `POOL_MAX_STREAMS_PER_CONNECTION=5`, twenty connections from a
/// to c opened at once ride exactly four TLS connections (one worker: its pool is ztunnel's
/// one pool).
#[test]
fn concurrent_connections_beyond_the_stream_cap_dial_one_connection_per_cap() {
    let lab = standard_lab("claim_pool_cap");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let env = [
        ("POOL_MAX_STREAMS_PER_CONNECTION", "5"),
        ("ZTUNNEL_WORKER_THREADS", "1"),
    ];
    let cluster = Cluster::start_with(lab, mesh, &env);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let held = Concurrent::open(lab.pod("a"), dst, 20);
    assert_eq!(
        count_lines(cluster.ztun("n1"), DIALLED),
        4,
        "20 streams, 5 per connection"
    );
    assert_eq!(hbone_connections(lab.pod("a").netns()), 4);
    held.close();
}

/// Metrics: "series of workloads that left the mesh expire". b and a both talk to c; b is
/// removed from the mesh file; b's series disappear from both nodes' `/metrics` while a's
/// stay.
#[test]
fn metric_series_of_a_workload_that_left_the_mesh_expire() {
    let lab = standard_lab("claim_metrics_expire");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh.clone());
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    lab.pod("a").bulk_echo(dst, 1024).unwrap();
    lab.pod("b").bulk_echo(dst, 1024).unwrap();
    wait_for_nth_log(cluster.ztun("n2"), "direction=\"inbound\"", 2);
    let opened = |node: &str, reporter: &str, src: &str| {
        let body = scrape(lab.node(node).netns());
        let labels = [("reporter", reporter), ("source_workload", src)];
        sample(&body, "istio_tcp_connections_opened_total", &labels)
    };
    for (node, reporter) in [("n1", "source"), ("n2", "destination")] {
        assert_eq!(opened(node, reporter, "b"), Some(1.0), "{node}");
        assert_eq!(opened(node, reporter, "a"), Some(1.0), "{node}");
    }
    cluster.update_mesh(&mesh.without_workload("b"));
    for node in ["n1", "n2"] {
        let ns = lab.node(node).netns();
        let deadline = Instant::now() + WAIT;
        loop {
            let body = scrape(ns);
            let left: Vec<&str> = body
                .lines()
                .filter(|l| l.contains("_workload=\"b\""))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{node} still has {left:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(opened("n1", "source", "a"), Some(1.0), "a's series stay");
    assert_eq!(
        opened("n2", "destination", "a"),
        Some(1.0),
        "a's series stay"
    );
}

/// Admin: "`/connections`". While a tunnelled connection from a to c is open, each node lists
/// it once with its addresses, identities and workloads; once it has closed (its access log
/// line written) neither lists it.
#[test]
fn admin_connections_lists_an_open_connection_until_it_closes() {
    let lab = standard_lab("claim_connections");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let (a_ip, c_ip) = (lab.pod("a").ip(), lab.pod("c").ip());
    let dst = SocketAddr::from((c_ip, server.port()));
    let started = unix_now();
    let (opened_tx, opened_rx) = mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let app = lab.pod("a").spawn_async(async move {
        let mut s = connect(dst, WAIT).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(s.local_addr()?);
        let _ = finish_rx.await;
        s.shutdown().await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        anyhow::Ok(())
    });
    let client = opened_rx.recv_timeout(WAIT).expect("a's connection echoed");
    let (a_id, c_id) = (lab.pod("a").spiffe_id(), lab.pod("c").spiffe_id());
    let out = single_connection(lab.node("n1").netns());
    let want = json!({
        "direction": "outbound",
        "src": client.to_string(),
        "srcIdentity": a_id,
        "srcWorkload": "default/a",
        "dst": SocketAddr::from((c_ip, HBONE)).to_string(),
        "hboneTarget": dst.to_string(),
        "dstIdentity": c_id,
        "dstWorkload": "default/c",
    });
    assert_fields(&out, &want, started);
    let inbound = single_connection(lab.node("n2").netns());
    let src = inbound["src"].as_str().unwrap_or_default();
    assert!(src.starts_with(&format!("{a_ip}:")), "{inbound:#}");
    let want = json!({
        "direction": "inbound",
        "srcIdentity": a_id,
        "srcWorkload": "default/a",
        "dst": dst.to_string(),
        "dstIdentity": c_id,
        "dstWorkload": "default/c",
    });
    assert_fields(&inbound, &want, started);

    let cursors: Vec<usize> = ["n1", "n2"].map(|n| cluster.ztun(n).log_cursor()).to_vec();
    let _ = finish_tx.send(());
    app.join().unwrap().expect("a's connection");
    for (node, cursor) in ["n1", "n2"].into_iter().zip(cursors) {
        wait_for_line(cluster.ztun(node), cursor, &["connection complete"])
            .unwrap_or_else(|e| panic!("{node} never logged the close: {e:#}"));
        assert_eq!(connections(lab.node(node).netns()), json!([]), "{node}");
    }
}

/// `ztun ctl`: every subcommand, run on node n1 against its ztun, prints what it names.
#[test]
fn every_ctl_subcommand_prints_what_it_names() {
    let lab = standard_lab("claim_ctl");
    let mesh = MeshFile::from_lab(&lab)
        .service("echo", "default", VIP, &[(80, ECHO)], &["c"])
        .policy(json!({
            "name": "deny-admin-port",
            "namespace": "default",
            "scope": "Namespace",
            "action": "Deny",
            "rules": [[[{"destinationPorts": [9090]}]]],
        }));
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let (a, b, c) = (lab.pod("a"), lab.pod("b"), lab.pod("c"));
    let dst = SocketAddr::from((c.ip(), server.port()));
    let (opened_tx, opened_rx) = mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let app = a.spawn_async(async move {
        let mut s = connect(dst, WAIT).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        let _ = finish_rx.await;
        anyhow::Ok(())
    });
    opened_rx.recv_timeout(WAIT).expect("a's connection echoed");
    let n1 = lab.node("n1").netns();
    let ctl = |args: &[&str]| crate::support::ctl(n1, args);
    let row = |out: &str, needles: &[&str]| {
        assert!(
            out.lines().any(|l| needles.iter().all(|n| l.contains(n))),
            "no row with {needles:?} in\n{out}"
        );
    };

    let out = ctl(&["--help"]);
    for command in [
        "workloads",
        "services",
        "policies",
        "certs",
        "pods",
        "connections",
        "log-level",
        "explain",
        "dump",
    ] {
        assert!(out.contains(&format!("\n  {command}")), "{command}:\n{out}");
    }

    let out = ctl(&["workloads"]);
    assert!(out.starts_with("NAMESPACE"), "{out}");
    for p in [a, b, c] {
        row(
            &out,
            &["default", p.name(), &p.ip().to_string(), p.node(), "HBONE"],
        );
    }
    row(&out, &["u", &lab.pod("u").ip().to_string(), "TCP"]);
    let json_out: Value = serde_json::from_str(&ctl(&["--json", "workloads"])).unwrap();
    assert_eq!(json_out.as_array().map(Vec::len), Some(4), "{json_out:#}");

    let out = ctl(&["services"]);
    row(
        &out,
        &[
            "default",
            "echo.default.svc.cluster.local",
            &VIP.to_string(),
            "80->8080",
        ],
    );

    let out = ctl(&["policies"]);
    row(
        &out,
        &["default", "deny-admin-port", "Namespace", "Deny", "1"],
    );

    // n1 holds certificates for its own HBONE pods only.
    let out = ctl(&["certs"]);
    row(&out, &[&a.spiffe_id()]);
    row(&out, &[&b.spiffe_id()]);
    assert!(!out.contains(&c.spiffe_id()), "{out}");

    // a has one outbound connection open.
    let out = ctl(&["pods"]);
    let a_row = out
        .lines()
        .find(|l| l.contains(a.uid()))
        .unwrap_or_else(|| panic!("no row for a in\n{out}"));
    let cells: Vec<&str> = a_row.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        ["default", "a", "sa-a", "Up", "0", "1"],
        "{out}"
    );
    row(&out, &[b.uid(), "sa-b", "Up"]);

    let out = ctl(&["connections"]);
    row(
        &out,
        &["outbound", &a.spiffe_id(), &dst.to_string(), &c.spiffe_id()],
    );

    let out = ctl(&["log-level", "ztun=trace"]);
    assert!(out.contains("ztun=trace"), "{out}");
    let out = ctl(&["log-level"]);
    assert!(
        out.starts_with("current log level is ") && out.contains("ztun=trace"),
        "{out}"
    );
    let out = ctl(&["log-level", "reset"]);
    assert!(!out.contains("trace"), "{out}");

    let dump: Value = serde_json::from_str(&ctl(&["dump"])).expect("dump is JSON");
    assert_eq!(dump["workloads"].as_array().map(Vec::len), Some(4));
    assert_eq!(dump["policies"][0]["name"], "deny-admin-port");
    assert_eq!(dump["workloadState"][a.uid()]["state"], "Up");

    let a_ip = a.ip().to_string();
    let out = ctl(&[
        "explain",
        "--src",
        &a_ip,
        "--dst",
        &format!("{}:9090", c.ip()),
    ]);
    assert!(out.starts_with("DENY"), "{out}");
    assert!(
        out.contains("reason: deny_matched  policy: default/deny-admin-port  rule: 0"),
        "{out}"
    );
    let out = ctl(&["explain", "--src", &a_ip, "--dst", &dst.to_string()]);
    assert!(out.starts_with("ALLOW"), "{out}");
    assert!(out.contains(&a.spiffe_id()), "{out}");

    let _ = finish_tx.send(());
    app.join().unwrap().unwrap();
}

/// Capture: "reconnect with backoff, snapshot reconciliation". The CNI agent goes away (its
/// socket disappears and the connection closes) while b leaves its snapshot: ztun keeps its
/// pods running and retries at growing intervals (at least 20, 40, 80, … ms apart: the
/// doubling backoff, whose exact schedule `src/control/zds.rs` checks on a paused clock),
/// reconnects when the socket is back, receives the snapshot again and stops b, which is no
/// longer in it; traffic from a keeps working, and b works again once the CNI re-adds it.
#[test]
fn zds_reconnects_with_backoff_after_the_cni_restarts_and_resyncs() {
    let lab = standard_lab("claim_zds");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(ECHO).unwrap();
    let cluster = Cluster::start(lab, mesh);
    let lab = &cluster.lab;
    let dst = SocketAddr::from((lab.pod("c").ip(), server.port()));
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    a.bulk_echo(dst, 4096).unwrap();
    let cni = lab.cni("n1");
    let n1 = cluster.ztun("n1");
    assert_eq!(cni.connections(), 1);
    let cursor = n1.log_cursor();
    {
        let _down = CniDown::new(cni.socket_path().to_path_buf());
        cni.forget(b.uid());
        cni.disconnect();
        n1.wait_for_log_after(cursor, "CNI closed the ZDS connection", WAIT)
            .unwrap();
        const ATTEMPTS: usize = 7;
        wait_for_nth_after(n1, cursor, "cannot connect to CNI", ATTEMPTS);
        let times: Vec<i64> = n1
            .logs()
            .iter()
            .skip(cursor)
            .filter(|l| l.contains("cannot connect to CNI"))
            .take(ATTEMPTS)
            .map(|l| log_micros(l))
            .collect();
        for (k, pair) in times.windows(2).enumerate() {
            let least = 20_000i64 << k;
            assert!(
                pair[1] - pair[0] >= least.min(15_000_000),
                "retry {} came {} µs after the one before, want ≥ {least} µs: {times:?}",
                k + 2,
                pair[1] - pair[0]
            );
        }
        assert!(
            n1.logs()
                .iter()
                .skip(cursor)
                .all(|l| !l.contains("pod removed") && !l.contains("pod not in CNI snapshot")),
            "pods must keep running while the CNI is away"
        );
        a.bulk_echo(dst, 4096)
            .expect("a -> c while the CNI is away");
    }
    cni.wait_connections(2, WAIT)
        .expect("ztun reconnected and acked the snapshot");
    let resync: Vec<String> = cni
        .acks()
        .into_iter()
        .filter(|r| r.connection == 2)
        .map(|r| {
            assert!(r.ack.is_ok(), "{r:?}");
            r.request
        })
        .collect();
    assert_eq!(
        resync,
        [format!("add {}", a.uid()), "snapshot_sent".to_string()]
    );
    let line = wait_for_line(n1, cursor, &["pod not in CNI snapshot, stopping"]).unwrap();
    assert!(line.contains(b.uid()), "{line}");
    a.bulk_echo(dst, 1 << 20).expect("a -> c after the resync");
    assert!(cni.add_pod(&b.info()).expect("re-adding b").is_ok());
    b.bulk_echo(dst, 4096).expect("b -> c once re-added");
}

/// Established TCP connections from `ns` to an HBONE port, as `ss` lists them.
fn hbone_connections(ns: &Netns) -> usize {
    let filter = format!("( dport = :{HBONE} )");
    ns.exec("ss", &["-Htn", "state", "established", &filter], None)
        .expect("ss")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Polls [`hbone_connections`] until it is `n` (a socket closing is no event we can await).
fn wait_for_hbone_connections(ns: &Netns, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = hbone_connections(ns);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {now} HBONE connections, want {n}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Log lines of `p` so far containing `needle`.
fn count_lines(p: &Process, needle: &str) -> usize {
    p.logs().iter().filter(|l| l.contains(needle)).count()
}

/// Waits until `n` lines at or after `cursor` contain `needle`.
fn wait_for_nth_after(p: &Process, cursor: usize, needle: &str, n: usize) {
    loop {
        let logs = p.logs();
        let hits: Vec<usize> = (cursor..logs.len())
            .filter(|&i| logs[i].contains(needle))
            .collect();
        if hits.len() >= n {
            return;
        }
        let after = hits.last().map_or(cursor, |i| i + 1);
        p.wait_for_log_after(after, needle, WAIT)
            .unwrap_or_else(|e| panic!("waiting for {needle:?} #{n}: {e:#}"));
    }
}

/// Microseconds since midnight (UTC) of a plain-format log line's timestamp
/// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), plus a day per day of month, enough to order lines a few
/// seconds apart across midnight within a month.
fn log_micros(line: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| -> i64 {
        line.get(r)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {line:?}"))
    };
    let secs = ((num(8..10) * 24 + num(11..13)) * 60 + num(14..16)) * 60 + num(17..19);
    secs * 1_000_000 + num(20..26)
}

/// A process stopped with SIGSTOP until the guard drops (also when the test panics).
struct Frozen<'a>(&'a Process);

impl<'a> Frozen<'a> {
    fn stop(p: &'a Process) -> Self {
        p.signal(Signal::SIGSTOP).expect("SIGSTOP");
        Frozen(p)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(Signal::SIGCONT);
    }
}

/// The CNI agent away: its socket is moved aside (the listener keeps its fd), so ztun's
/// connects fail as they do while istio-cni restarts. Moved back on drop.
struct CniDown {
    path: PathBuf,
    aside: PathBuf,
}

impl CniDown {
    fn new(path: PathBuf) -> Self {
        let aside = path.with_extension("down");
        std::fs::rename(&path, &aside).expect("moving the CNI socket aside");
        CniDown { path, aside }
    }
}

impl Drop for CniDown {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.aside, &self.path);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `GET /connections` from the node's admin port.
fn connections(node: &Netns) -> Value {
    let (status, body) = http(node, "GET", local(15000), "/connections").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The one connection `/connections` lists.
fn single_connection(node: &Netns) -> Value {
    let list = connections(node);
    match list.as_array().map(Vec::as_slice) {
        Some([one]) => one.clone(),
        _ => panic!("{}: want one connection, got {list:#}", node.name()),
    }
}

/// Checks every field of `want` in `got`, and that `since` is between `started` and now.
fn assert_fields(got: &Value, want: &Value, started: u64) {
    for (k, v) in want.as_object().expect("an object") {
        assert_eq!(&got[k], v, "{k} in {got:#}");
    }
    let since = got["since"].as_u64().unwrap_or_default();
    assert!(
        (started..=unix_now()).contains(&since),
        "since={since} in {got:#}"
    );
}
