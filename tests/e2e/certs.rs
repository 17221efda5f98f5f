//! Certificates end to end: both nodes get their workload certificates (and the mesh) from
//! `ztun control-plane`, running in n1's namespace on n1's link IP, authenticated by per-node
//! bearer tokens. Covers short-lived certificates rotating under traffic, a root rotation
//! A → A+B → B, an intermediate replaced twice, a CA outage longer than a refresh interval,
//! and the CA's node restriction.
//!
//! Every wait is on an event (a log line, a counter), never on a fixed sleep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::config::{AuthToken, RootCert};
use ztun::control::ca::{CaClient, CaClientConfig, CaError};
use ztun::identity::Identity;
use ztun::testkit::certs::{intermediate, write_ca_dir, write_named_ca_dir, CaFiles};
use ztun::testkit::lab::{Lab, NetnsTask, Process, Server};
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, WAIT};

const CP_PORT: u16 = 15012;
const TOKENS: &str = "# token node\ntoken-of-n1 n1\ntoken-of-n2 n2\n";
/// The issuer names of the two roots (organisations of `write_ca_dir` and the next CA).
const ROOT_A: &str = "CN=ztun-test root CA";
const ROOT_B: &str = "CN=ztun-next root CA";

/// A lab whose ztuns use `ztun control-plane` for xDS and certificates.
struct CaCluster {
    lab: Lab,
    ca: CaFiles,
    /// Roots the nodes verify the control plane's serving certificate with: a copy of the
    /// initial root, so rotating the mesh CA does not change how nodes reach the control plane.
    cp_root: PathBuf,
    mesh_path: PathBuf,
    tokens_path: PathBuf,
    control_plane: Option<Process>,
    starts: usize,
    ztuns: Vec<(String, Process)>,
}

impl CaCluster {
    /// Writes the mesh, a CA and the tokens, starts the control plane, then a ztun per node
    /// with `env`, and waits until both synced over xDS and got their certificates.
    fn start(lab: Lab, env: &[(&str, &str)]) -> CaCluster {
        let ca = write_ca_dir(&lab.dir().join("ca")).expect("writing the CA");
        let cp_root = lab.dir().join("cp-root.pem");
        std::fs::write(&cp_root, &ca.cert_pem).unwrap();
        let mesh_path = lab.dir().join("mesh.yaml");
        MeshFile::from_lab(&lab).write(&mesh_path).unwrap();
        let tokens_path = lab.dir().join("tokens");
        std::fs::write(&tokens_path, TOKENS).unwrap();
        let mut cluster = CaCluster {
            lab,
            ca,
            cp_root,
            mesh_path,
            tokens_path,
            control_plane: None,
            starts: 0,
            ztuns: Vec::new(),
        };
        cluster.start_control_plane();
        let address = cluster.cp_url();
        let root = path_str(&cluster.cp_root).to_string();
        for node in ["n1", "n2"] {
            let token = cluster.lab.dir().join(format!("{node}-token"));
            std::fs::write(&token, format!("token-of-{node}\n")).unwrap();
            let token = path_str(&token).to_string();
            let mut vars = vec![
                ("XDS_ADDRESS", address.as_str()),
                ("XDS_ROOT_CA", root.as_str()),
                ("CA_ADDRESS", address.as_str()),
                ("CA_ROOT_CA", root.as_str()),
                ("AUTH_TOKEN", token.as_str()),
            ];
            vars.extend_from_slice(env);
            let p = cluster.lab.spawn_ztun(node, &vars).expect("spawning ztun");
            cluster.ztuns.push((node.to_string(), p));
        }
        for (node, p) in &cluster.ztuns {
            p.wait_for_log("xDS synced", WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} never synced: {e:#}"));
            cluster
                .lab
                .cni(node)
                .wait_connected(WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} never connected to its CNI: {e:#}"));
        }
        for (node, sa) in LOCAL_IDENTITIES {
            wait_line(cluster.ztun(node), 0, &["certificate issued", &spiffe(sa)])
                .unwrap_or_else(|e| panic!("{node} never got a certificate for {sa}: {e:#}"));
        }
        cluster
    }

    fn cp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.lab.node("n1").link_ip(), CP_PORT))
    }

    fn cp_url(&self) -> String {
        format!("https://{}", self.cp_addr())
    }

    fn start_control_plane(&mut self) {
        let bin = ztun::testkit::ztun_bin().expect("ztun binary");
        let listen = self.cp_addr().to_string();
        let args = [
            "control-plane",
            "--config",
            path_str(&self.mesh_path),
            "--ca-dir",
            path_str(&self.ca.dir),
            "--listen",
            &listen,
            "--tokens",
            path_str(&self.tokens_path),
        ];
        self.starts += 1;
        self.control_plane = Some(crate::support::spawn_control_plane(
            &self.lab,
            self.starts,
            &bin,
            &args,
        ));
    }

    fn control_plane(&self) -> &Process {
        self.control_plane.as_ref().expect("control plane running")
    }

    fn ztun(&self, node: &str) -> &Process {
        &self.ztuns.iter().find(|(n, _)| n == node).expect("node").1
    }

    fn cursor(&self, node: &str) -> usize {
        self.ztun(node).log_cursor()
    }

    /// A CA client in `node`'s namespace presenting `token`.
    fn ca_request(&self, node: &str, token: &str, sa: &str) -> Result<(), CaError> {
        let mut config = CaClientConfig::new(self.cp_url(), RootCert::File(self.cp_root.clone()));
        config.token = AuthToken::Static(token.into());
        let id: Identity = spiffe(sa).parse().unwrap();
        self.lab
            .node(node)
            .block_on(async move { CaClient::new(&config)?.request(&id).await.map(drop) })
    }
}

/// The HBONE identities of the standard lab, by node.
const LOCAL_IDENTITIES: [(&str, &str); 3] = [("n1", "sa-a"), ("n1", "sa-b"), ("n2", "sa-c")];

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// Replaces `path` atomically, as an operator rotating CA files would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("next");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits for a line at index `cursor` or later containing every needle; returns its index.
fn wait_line(p: &Process, cursor: usize, needles: &[&str]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + WAIT;
    let mut next = cursor;
    loop {
        let logs = p.logs();
        if let Some(i) = (next..logs.len()).find(|i| needles.iter().all(|n| logs[*i].contains(n))) {
            return Ok(i);
        }
        next = logs.len();
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "[{}] no line with {needles:?}", p.label());
        // Returns when a line with the first needle arrives (or fails at the deadline).
        p.wait_for_log_after(next, needles[0], left)?;
    }
}

/// Traffic that must never fail: one long-lived echo stream, and new connections one after
/// another in both directions between nodes.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    long: NetnsTask<anyhow::Result<u64>>,
    churn: Vec<NetnsTask<()>>,
}

impl Traffic {
    /// A long-lived stream a → c, and new connections a → c and c → a (every `pace`).
    fn start(lab: &Lab, to_c: SocketAddr, to_a: SocketAddr, pace: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let long = lab.pod("a").spawn_async({
            let stop = stop.clone();
            async move {
                let mut s = ztun::testkit::lab::connect(to_c, WAIT).await?;
                let mut rounds = 0u64;
                let mut back = [0u8; 16];
                while !stop.load(Ordering::Acquire) {
                    let msg = format!("round {rounds:10}");
                    s.write_all(msg.as_bytes()).await?;
                    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await??;
                    anyhow::ensure!(back == msg.as_bytes(), "echo differs in round {rounds}");
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(rounds)
            }
        });
        let churn = [("a", to_c), ("c", to_a)]
            .into_iter()
            .map(|(from, dst)| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                lab.pod(from).spawn_async(async move {
                    while !stop.load(Ordering::Acquire) {
                        match ztun::testkit::lab::bulk_echo(dst, 2048, WAIT).await {
                            Ok(_) => ok.fetch_add(1, Ordering::AcqRel),
                            Err(e) => {
                                eprintln!("connection from {from} to {dst} failed: {e:#}");
                                failed.fetch_add(1, Ordering::AcqRel)
                            }
                        };
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            long,
            churn,
        }
    }

    /// Waits until `n` more connections succeeded.
    fn wait_ok(&self, n: u64) {
        let target = self.ok.load(Ordering::Acquire) + n;
        let deadline = Instant::now() + WAIT;
        while self.ok.load(Ordering::Acquire) < target {
            assert!(Instant::now() < deadline, "traffic made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops, and checks that nothing failed; returns (new connections, long-stream rounds).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        for task in self.churn {
            task.join().expect("churn task");
        }
        let rounds = self
            .long
            .join()
            .expect("long-lived stream task")
            .expect("the long-lived stream broke");
        let failed = self.failed.load(Ordering::Acquire);
        let ok = self.ok.load(Ordering::Acquire);
        assert_eq!(
            failed,
            0,
            "{failed} of {} new connections failed",
            ok + failed
        );
        (ok, rounds)
    }
}

/// Waits, on every node after `cursors`, for each local identity to be rotated to a
/// certificate whose log line contains every one of `with`; then for each node to dial a new
/// HBONE connection (so new handshakes use the new certificates). Returns the new cursors.
fn rotation(cluster: &CaCluster, cursors: &[(&str, usize)], with: &[&str]) -> Vec<(String, usize)> {
    let mut after = Vec::new();
    for (node, sa) in LOCAL_IDENTITIES {
        let cursor = cursors.iter().find(|(n, _)| *n == node).unwrap().1;
        let id = spiffe(sa);
        let mut needles = vec!["certificate rotated", id.as_str()];
        needles.extend_from_slice(with);
        let at = wait_line(cluster.ztun(node), cursor, &needles)
            .unwrap_or_else(|e| panic!("{sa} on {node} not rotated with {with:?}: {e:#}"));
        after.push((node.to_string(), at));
    }
    for (node, sa) in [("n1", "sa-a"), ("n2", "sa-c")] {
        let at = after
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, i)| *i)
            .max()
            .unwrap();
        let src = format!("src={}", spiffe(sa));
        wait_line(
            cluster.ztun(node),
            at,
            &["hbone connection established", &src],
        )
        .unwrap_or_else(|e| panic!("{node} dialled nothing after rotating: {e:#}"));
    }
    after
}

/// No failed handshake, failed connection or missing certificate in any ztun's log.
fn no_handshake_errors(cluster: &CaCluster) {
    for (node, p) in &cluster.ztuns {
        let bad: Vec<String> = p
            .logs()
            .into_iter()
            .filter(|l| {
                l.contains("hbone handshake failed")
                    || l.contains("connection complete") && l.contains("ERROR")
                    || l.contains("UnknownIssuer")
                    || l.contains("certificate unavailable")
            })
            .collect();
        assert!(bad.is_empty(), "{node} logged failures: {bad:#?}");
    }
}

/// A cluster whose certificates live `ttl`, with echo servers on a and c and [`Traffic`]
/// flowing between them (already seen working). One stream per HBONE connection, released
/// soon after: the long-lived stream keeps its connection, new connections need new
/// handshakes.
fn under_traffic(test: &str, ttl: &str) -> (CaCluster, Traffic, [Server; 2]) {
    let lab = standard_lab(test);
    let c_server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let a_server = lab.pod("a").spawn_echo_server(8080).unwrap();
    let cluster = CaCluster::start(
        lab,
        &[
            ("SECRET_TTL", ttl),
            ("POOL_MAX_STREAMS_PER_CONNECTION", "1"),
            ("POOL_UNUSED_RELEASE_TIMEOUT", "200ms"),
        ],
    );
    let to_c = SocketAddr::from((cluster.lab.pod("c").ip(), c_server.port()));
    let to_a = SocketAddr::from((cluster.lab.pod("a").ip(), a_server.port()));
    let traffic = Traffic::start(&cluster.lab, to_c, to_a, Duration::from_millis(500));
    traffic.wait_ok(5);
    (cluster, traffic, [c_server, a_server])
}

/// hardening.md C5. The one long test (about 45 s): 20 s certificates renewed every ~10 s while a
/// long-lived stream and new connections in both directions flow; across four rotations the
/// mesh root moves A → A+B → B (bundle A+B signed by A, then by B, then bundle B), each step
/// waiting until every identity on both nodes renewed. Not one connection may fail.
#[test]
fn certificates_rotate_and_the_root_moves_from_a_to_b_without_a_failed_connection() {
    let (cluster, traffic, _servers) = under_traffic("cert_rotation", "20s");
    let started = Instant::now();
    let lab = &cluster.lab;
    let cursors = |c: &CaCluster| vec![("n1", c.cursor("n1")), ("n2", c.cursor("n2"))];

    // 1. A plain renewal under root A.
    rotation(&cluster, &cursors(&cluster), &["roots=1", ROOT_A]);
    // 2. Bundle A+B, still signed by A: every node learns to trust B.
    let b = write_named_ca_dir(&lab.dir().join("next"), "ztun-next").unwrap();
    let mark = cursors(&cluster);
    replace(
        &cluster.ca.root_cert,
        &format!("{}{}", cluster.ca.cert_pem, b.cert_pem),
    );
    rotation(&cluster, &mark, &["roots=2", ROOT_A]);
    // 3. Signed by B (its key; the bundle still holds both roots).
    let mark = cursors(&cluster);
    replace(&cluster.ca.ca_key, &b.key_pem);
    rotation(&cluster, &mark, &["roots=2", ROOT_B]);
    // 4. Bundle B only: A is gone.
    let mark = cursors(&cluster);
    replace(&cluster.ca.root_cert, &b.cert_pem);
    rotation(&cluster, &mark, &["roots=1", ROOT_B]);
    traffic.wait_ok(5);

    let (connections, rounds) = traffic.finish();
    eprintln!(
        "4 rotations per identity in {:?}: {connections} new connections, {rounds} rounds on \
         the long-lived stream, no failure",
        started.elapsed()
    );
    for (node, sa) in LOCAL_IDENTITIES {
        let rotated = cluster
            .ztun(node)
            .logs()
            .iter()
            .filter(|l| l.contains("certificate rotated") && l.contains(&spiffe(sa)))
            .count();
        assert!(rotated >= 4, "{sa} on {node} rotated {rotated} times");
    }
    no_handshake_errors(&cluster);
}

/// hardening.md C6: the CA starts signing through intermediate I1, then I1 is replaced by
/// I2 (both under the same root). Within one refresh cycle of each change every identity on
/// both nodes holds a certificate issued by the new intermediate, new handshakes (which need
/// the intermediate in the presented chain) succeed, and no connection fails.
#[test]
fn a_replaced_intermediate_reaches_every_certificate_within_a_refresh() {
    let (cluster, traffic, _servers) = under_traffic("cert_intermediate", "20s");
    let cursors = |c: &CaCluster| vec![("n1", c.cursor("n1")), ("n2", c.cursor("n2"))];
    let chain = cluster.ca.dir.join("cert-chain.pem");
    for org in ["ztun-int-1", "ztun-int-2"] {
        let (cert, key) = intermediate(&cluster.ca, org).unwrap();
        let mark = cursors(&cluster);
        // The chain first: until the key follows, the CA keeps its previous configuration
        // (a chain that does not match the key is refused at reload).
        replace(&chain, &cert);
        replace(&cluster.ca.ca_key, &key);
        let issuer = format!("CN={org} intermediate CA");
        rotation(&cluster, &mark, &["roots=1", &issuer]);
    }
    traffic.wait_ok(5);
    traffic.finish();
    no_handshake_errors(&cluster);
}

/// hardening.md C1, scaled down (40 s certificates instead of 24 h, an outage of one refresh
/// interval instead of hours): the CA (the whole control plane) goes away for longer than a
/// refresh interval; renewals fail, the still-valid certificates keep serving new
/// handshakes, and renewal resumes when it is back.
#[test]
fn traffic_continues_on_valid_certificates_while_the_ca_is_down() {
    let (mut cluster, traffic, _servers) = under_traffic("ca_down", "40s");

    let marks = [("n1", cluster.cursor("n1")), ("n2", cluster.cursor("n2"))];
    cluster.control_plane().kill().unwrap();
    cluster.control_plane = None;
    // The refresh time passes with the CA down (a renewal attempt fails on each node)...
    let mut failed_at = Vec::new();
    for ((node, mark), sa) in marks.iter().zip(["sa-a", "sa-c"]) {
        let at = wait_line(
            cluster.ztun(node),
            *mark,
            &["the current certificate keeps serving", &spiffe(sa)],
        )
        .unwrap_or_else(|e| panic!("{node}: no failed renewal of {sa}: {e:#}"));
        failed_at.push((*node, at));
    }
    // ...and new connections, with new handshakes, keep working on the current certificates.
    for ((node, at), sa) in failed_at.iter().zip(["sa-a", "sa-c"]) {
        let src = format!("src={}", spiffe(sa));
        wait_line(
            cluster.ztun(node),
            *at,
            &["hbone connection established", &src],
        )
        .unwrap_or_else(|e| panic!("{node} dialled nothing with the CA down: {e:#}"));
    }
    traffic.wait_ok(10);
    // The alarm: metrics tell when the certificates run out while renewal fails.
    let metrics = crate::ops::scrape(cluster.lab.node("n1").netns());
    let expiry = crate::ops::sample(
        &metrics,
        "ztun_workload_certificate_earliest_expiry_timestamp_seconds",
        &[],
    )
    .expect("the earliest certificate expiry is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry <= now + 40.0,
        "expiry {expiry}, now {now}"
    );
    assert_eq!(
        crate::ops::sample(
            &metrics,
            "ztun_workload_certificates",
            &[("state", "available")]
        ),
        Some(2.0),
        "{metrics}"
    );

    // The CA is back: the retries succeed.
    let marks = [("n1", cluster.cursor("n1")), ("n2", cluster.cursor("n2"))];
    cluster.start_control_plane();
    for ((node, mark), sa) in marks.iter().zip(["sa-a", "sa-c"]) {
        wait_line(
            cluster.ztun(node),
            *mark,
            &["certificate rotated", &spiffe(sa)],
        )
        .unwrap_or_else(|e| panic!("{node}: {sa} not renewed after the CA returned: {e:#}"));
    }
    traffic.wait_ok(5);
    traffic.finish();
    no_handshake_errors(&cluster);
}

/// hardening.md P3: a node may only get certificates of workloads scheduled on it; an
/// unknown token gets nothing; and a node's ztun holds only its own workloads' identities.
#[test]
fn the_ca_refuses_identities_not_scheduled_on_the_asking_node() {
    let lab = standard_lab("ca_node_restriction");
    let cluster = CaCluster::start(lab, &[]);

    // n2's credentials asking for a's identity (a runs on n1): refused.
    match cluster.ca_request("n2", "token-of-n2", "sa-a") {
        Err(CaError::Rpc { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains("\"n2\""), "{message}");
        }
        other => panic!("n2 got sa-a's certificate: {other:?}"),
    }
    // No token, or one the control plane does not know: refused.
    match cluster.ca_request("n2", "forged", "sa-c") {
        Err(CaError::Rpc { code, .. }) => assert_eq!(code, tonic::Code::Unauthenticated),
        other => panic!("an unknown token got a certificate: {other:?}"),
    }
    // The same request with n1's credentials succeeds: the refusal is about scheduling.
    cluster
        .ca_request("n1", "token-of-n1", "sa-a")
        .expect("n1 may have sa-a");
    cluster
        .control_plane()
        .wait_for_log("certificate request refused", WAIT)
        .unwrap();

    // Each ztun holds exactly the identities of its own HBONE workloads.
    for (node, want) in [("n1", vec!["sa-a", "sa-b"]), ("n2", vec!["sa-c"])] {
        let ns = cluster.lab.node(node).netns();
        let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
        let (status, body) = crate::ops::http(ns, "GET", addr, "/config_dump").unwrap();
        assert_eq!(status, 200);
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut held: Vec<String> = dump["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["identity"].as_str().unwrap().to_string())
            .collect();
        held.sort();
        let want: Vec<String> = want.iter().map(|sa| spiffe(sa)).collect();
        assert_eq!(held, want, "{node}");
        assert!(
            dump["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["state"] == "Available"),
            "{node}: {}",
            dump["certificates"]
        );
    }
}
