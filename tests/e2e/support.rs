//! Shared fixtures for the e2e suites: the standard two-node cluster with ztun running, fed
//! by a local mesh file ([`Cluster`]) or over xDS by `ztun control-plane` ([`XdsCluster`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::lab::{bulk_echo, IpFamilies, Lab, Netns, NetnsTask, PodSpec, Process};
use ztun::testkit::mesh::MeshFile;

/// Generous deadline for anything the tests wait on (loaded 2-core CI machines).
pub const WAIT: Duration = Duration::from_secs(60);
/// A pod's listeners in a ztun started with the default worker count (ztunnel's two): its
/// three ports, a listener per worker each.
pub const POD_LISTENERS: usize = 3 * 2;
/// Where `ztun control-plane` listens (on n1's link IP).
const XDS_PORT: u16 = 15012;

/// A lab with ztun on every node, fed by a local mesh file and a shared local CA.
pub struct Cluster {
    /// The namespaces, pods and test CNIs.
    pub lab: Lab,
    /// ztun per node, in node order.
    pub ztuns: Vec<(String, Process)>,
    /// The mesh file (`LOCAL_XDS_PATH`).
    pub mesh_path: PathBuf,
    /// The CA directory (`LOCAL_CA_DIR`).
    pub ca_dir: PathBuf,
}

/// The standard topology: node n1 with captured pods `a` (sa-a) and `b` (sa-b), node n2 with
/// captured pod `c` (sa-c) and uncaptured pod `u`.
pub fn standard_lab(test: &str) -> Lab {
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
            PodSpec::new("u", "n2").service_account("sa-u"),
        ],
    )
}

/// Nodes n1 and n2 with `pods` (after checking for root), IPv4 only.
pub fn two_node_lab(test: &str, pods: Vec<PodSpec>) -> Lab {
    two_node_lab_in(test, IpFamilies::V4Only, pods)
}

/// Nodes n1 and n2 in `families` with `pods` (after checking for root).
pub fn two_node_lab_in(test: &str, families: IpFamilies, pods: Vec<PodSpec>) -> Lab {
    require_root();
    let builder = Lab::builder(test)
        .ip_families(families)
        .node("n1")
        .node("n2");
    pods.into_iter()
        .fold(builder, |b, p| b.pod(p))
        .build()
        .expect("building the namespace lab")
}

/// Whether an echo of 64 KiB from `pod` to `dst` completes within [`WAIT`] (a refused or
/// denied connection is closed at once, so `false` comes quickly).
pub fn reaches(lab: &Lab, pod: &str, dst: SocketAddr) -> bool {
    lab.pod(pod)
        .block_on(bulk_echo(dst, 64 * 1024, WAIT))
        .is_ok()
}

/// Runs `ztun ctl args...` in `ns` (a node's namespace) and returns its output, or why it
/// failed (its exit status and stderr).
pub fn try_ctl(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let bin = ztun::testkit::ztun_bin()?;
    let mut full = vec!["ctl"];
    full.extend_from_slice(args);
    ns.exec(&bin.to_string_lossy(), &full, None)
}

/// [`try_ctl`] for a command that must succeed: its output.
pub fn ctl(ns: &Netns, args: &[&str]) -> String {
    try_ctl(ns, args).unwrap_or_else(|e| panic!("ztun ctl {args:?}: {e:#}"))
}

/// Fails loudly (never skips) when not root: the e2e suite needs namespaces.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = uid
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "the e2e suite needs root (network namespaces, iptables)"
    );
}

/// Writes `mesh` and a fresh CA into the lab's directory, as every ztun of a lab reads them
/// (`LOCAL_XDS_PATH`, `LOCAL_CA_DIR`); returns (mesh file, CA directory).
pub fn write_local_files(lab: &Lab, mesh: &MeshFile) -> (PathBuf, PathBuf) {
    let ca_dir = lab.dir().join("ca");
    ztun::testkit::certs::write_ca_dir(&ca_dir).expect("writing CA");
    let mesh_path = lab.dir().join("mesh.yaml");
    mesh.write(&mesh_path).expect("writing mesh file");
    (mesh_path, ca_dir)
}

/// For a ztun started outside [`Cluster`]: the environment every ztun of the lab shares (the
/// files of [`write_local_files`], no xDS, debug logs), as owned values.
pub fn local_env(lab: &Lab, mesh: &MeshFile) -> Vec<(&'static str, String)> {
    let (mesh_path, ca_dir) = write_local_files(lab, mesh);
    vec![
        ("LOCAL_XDS_PATH", mesh_path.to_string_lossy().into_owned()),
        ("LOCAL_CA_DIR", ca_dir.to_string_lossy().into_owned()),
        ("XDS_ADDRESS", String::new()),
        ("RUST_LOG", "info,ztun=debug".to_owned()),
    ]
}

impl Cluster {
    /// Starts ztun on every node of `lab` with `mesh` and a fresh shared CA, and waits until
    /// each has synced with its CNI.
    pub fn start(lab: Lab, mesh: MeshFile) -> Cluster {
        Cluster::start_with(lab, mesh, &[])
    }

    /// Like [`Cluster::start`] with extra environment for every ztun.
    pub fn start_with(lab: Lab, mesh: MeshFile, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_each(lab, mesh, |_| env.to_vec())
    }

    /// Like [`Cluster::start`] with extra environment per node: `env(node)`.
    pub fn start_each<'a>(
        lab: Lab,
        mesh: MeshFile,
        env: impl Fn(&str) -> Vec<(&'a str, &'a str)>,
    ) -> Cluster {
        let (mesh_path, ca_dir) = write_local_files(&lab, &mesh);
        let mut cluster = Cluster {
            lab,
            ztuns: Vec::new(),
            mesh_path,
            ca_dir,
        };
        let nodes: Vec<String> = cluster
            .lab
            .nodes()
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        for node in nodes {
            let p = cluster.spawn(&node, &env(&node));
            cluster.ztuns.push((node, p));
        }
        for (node, _) in &cluster.ztuns {
            let cni = cluster.lab.cni(node);
            cni.wait_connected(WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} never synced with its CNI: {e:#}"));
            let nacks: Vec<_> = cni.acks().into_iter().filter(|a| !a.ack.is_ok()).collect();
            assert!(nacks.is_empty(), "ztun on {node} refused pods: {nacks:?}");
        }
        cluster
    }

    /// Spawns (another) ztun on `node` with the cluster's mesh file and CA.
    pub fn spawn(&self, node: &str, env: &[(&str, &str)]) -> Process {
        let mesh = self.mesh_path.to_string_lossy().into_owned();
        let ca = self.ca_dir.to_string_lossy().into_owned();
        let mut vars = vec![
            ("LOCAL_XDS_PATH", mesh.as_str()),
            ("LOCAL_CA_DIR", ca.as_str()),
        ];
        vars.extend_from_slice(env);
        self.lab.spawn_ztun(node, &vars).expect("spawning ztun")
    }

    /// Rewrites the mesh file with `mesh` and waits until every ztun has reloaded it (a file
    /// whose contents do not change is not reloaded: then nothing is waited for).
    pub fn update_mesh(&self, mesh: &MeshFile) {
        let text = mesh.to_yaml();
        if std::fs::read_to_string(&self.mesh_path).ok().as_deref() == Some(text.as_str()) {
            return;
        }
        let cursors: Vec<usize> = self.ztuns.iter().map(|(_, p)| p.log_cursor()).collect();
        mesh.write(&self.mesh_path)
            .expect("rewriting the mesh file");
        for ((node, p), cursor) in self.ztuns.iter().zip(cursors) {
            p.wait_for_log_after(cursor, "local mesh file reloaded", WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} did not reload the mesh file: {e:#}"));
        }
    }

    /// The ztun process of `node`.
    pub fn ztun(&self, node: &str) -> &Process {
        &self
            .ztuns
            .iter()
            .find(|(n, _)| n == node)
            .expect("no ztun on that node")
            .1
    }
}

/// Waits until `needle` has appeared in `n` distinct log lines of `p`.
pub fn wait_for_nth_log(p: &Process, needle: &str, n: usize) {
    let mut cursor = 0;
    for _ in 0..n {
        loop {
            let logs = p.logs();
            if let Some(pos) = logs.iter().skip(cursor).position(|l| l.contains(needle)) {
                cursor += pos + 1;
                break;
            }
            p.wait_for_log_after(cursor, needle, WAIT)
                .unwrap_or_else(|e| panic!("waiting for {needle:?} #{n}: {e:#}"));
        }
    }
}

/// The control plane's tokens file in an [`XdsCluster`]: one bearer token per node.
const XDS_TOKENS: &str = "xds-token-of-n1 n1\nxds-token-of-n2 n2\n";

/// A lab whose ztuns get the mesh from `ztun control-plane` (no `LOCAL_XDS_PATH`).
pub struct XdsCluster {
    /// The namespaces, pods and test CNIs.
    pub lab: Lab,
    /// The mesh file the control plane serves.
    pub mesh_path: PathBuf,
    /// The CA directory the control plane and the nodes share.
    pub ca_dir: PathBuf,
    /// The running control plane, if any.
    pub control_plane: Option<Process>,
    /// Control-plane processes started so far (their logs are kept for failure output).
    restarts: usize,
    /// ztun per node, in node order.
    pub ztuns: Vec<(String, Process)>,
}

impl XdsCluster {
    /// Writes `mesh` and a CA, starts the control plane in n1's namespace, then a ztun per
    /// node pointed at it, and waits until every ztun has synced (its CNI connects only then).
    pub fn start(lab: Lab, mesh: &str) -> XdsCluster {
        XdsCluster::start_with(lab, mesh, &[])
    }

    /// Like [`XdsCluster::start`] with extra environment for every ztun.
    pub fn start_with(lab: Lab, mesh: &str, extra: &[(&str, &str)]) -> XdsCluster {
        let ca_dir = lab.dir().join("ca");
        ztun::testkit::certs::write_ca_dir(&ca_dir).expect("writing CA");
        let mesh_path = lab.dir().join("mesh.yaml");
        write_atomically(&mesh_path, mesh);
        // xDS authenticates every node by its bearer token.
        write_atomically(&lab.dir().join("tokens"), XDS_TOKENS);
        let mut cluster = XdsCluster {
            lab,
            mesh_path,
            ca_dir,
            control_plane: None,
            restarts: 0,
            ztuns: Vec::new(),
        };
        cluster.start_control_plane();
        let address = format!("https://{}", cluster.xds_addr());
        let root = cluster
            .ca_dir
            .join("root-cert.pem")
            .to_string_lossy()
            .into_owned();
        let ca = cluster.ca_dir.to_string_lossy().into_owned();
        for node in ["n1", "n2"] {
            let token = format!("xds-token-of-{node}");
            let mut env = vec![
                ("XDS_ADDRESS", address.as_str()),
                ("XDS_ROOT_CA", root.as_str()),
                ("LOCAL_CA_DIR", ca.as_str()),
                ("AUTH_TOKEN", token.as_str()),
            ];
            env.extend_from_slice(extra);
            let p = cluster.lab.spawn_ztun(node, &env).expect("spawning ztun");
            cluster.ztuns.push((node.to_string(), p));
        }
        for (node, p) in &cluster.ztuns {
            p.wait_for_log("xDS synced", WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} never synced over xDS: {e:#}"));
            cluster
                .lab
                .cni(node)
                .wait_connected(WAIT)
                .unwrap_or_else(|e| panic!("ztun on {node} never connected to its CNI: {e:#}"));
        }
        cluster
    }

    /// The control plane's address (n1's link IP).
    pub fn xds_addr(&self) -> SocketAddr {
        SocketAddr::from((self.lab.node("n1").link_ip(), XDS_PORT))
    }

    /// Starts (again) `ztun control-plane` in n1's namespace and waits until it listens.
    pub fn start_control_plane(&mut self) {
        let bin = ztun::testkit::ztun_bin().expect("ztun binary");
        let listen = self.xds_addr().to_string();
        let tokens = self.lab.dir().join("tokens");
        let args = [
            "control-plane",
            "--config",
            path_str(&self.mesh_path),
            "--ca-dir",
            path_str(&self.ca_dir),
            "--listen",
            &listen,
            "--tokens",
            path_str(&tokens),
        ];
        self.restarts += 1;
        self.control_plane = Some(spawn_control_plane(&self.lab, self.restarts, &bin, &args));
    }

    /// Kills the control plane and waits until every node's xDS client noticed (it logs its
    /// retry); returns the log cursors from just before the kill.
    pub fn kill_control_plane(&mut self) -> Vec<usize> {
        let cursors = self.cursors();
        self.control_plane().kill().unwrap();
        self.control_plane = None;
        for ((node, p), cursor) in self.ztuns.iter().zip(&cursors) {
            wait_for_line(p, *cursor, &["xDS", "retry_in"])
                .unwrap_or_else(|e| panic!("ztun on {node} did not notice the outage: {e:#}"));
        }
        cursors
    }

    /// The running control plane.
    pub fn control_plane(&self) -> &Process {
        self.control_plane.as_ref().expect("control plane running")
    }

    /// The ztun process of `node`.
    pub fn ztun(&self, node: &str) -> &Process {
        &self.ztuns.iter().find(|(n, _)| n == node).expect("node").1
    }

    /// Log positions of both ztuns, to wait for what comes after.
    pub fn cursors(&self) -> Vec<usize> {
        self.ztuns.iter().map(|(_, p)| p.log_cursor()).collect()
    }

    /// Writes `mesh` and waits until both ztuns applied an xDS response naming `name`;
    /// returns how long that took.
    pub fn push(&self, mesh: &str, name: &str) -> Duration {
        let cursors = self.cursors();
        let started = Instant::now();
        write_atomically(&self.mesh_path, mesh);
        self.wait_applied(&cursors, name);
        started.elapsed()
    }

    /// Waits until both ztuns, after `cursors`, applied a response naming `name`.
    pub fn wait_applied(&self, cursors: &[usize], name: &str) {
        let quoted = format!("{name:?}");
        for ((node, p), cursor) in self.ztuns.iter().zip(cursors) {
            wait_for_line(p, *cursor, &["xDS response applied", &quoted])
                .unwrap_or_else(|e| panic!("ztun on {node} never applied {name}: {e:#}"));
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// Replaces `path` with `text` in one rename, so a watcher never reads half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the mesh file");
    std::fs::rename(&tmp, path).expect("replacing the mesh file");
}

/// Waits for a line, at or after `cursor`, containing every needle.
pub fn wait_for_line(p: &Process, mut cursor: usize, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs = p.logs();
        if let Some(line) = logs
            .iter()
            .skip(cursor)
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return Ok(line.clone());
        }
        cursor = logs.len();
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "no line with {needles:?}");
        // Returns when a line with the first needle arrives (or fails at the deadline).
        p.wait_for_log_after(cursor, needles[0], left)?;
    }
}

/// Starts `ztun control-plane` (`bin` with `args`) in n1's namespace as its `nth` start and
/// waits until it listens.
pub fn spawn_control_plane(lab: &Lab, nth: usize, bin: &Path, args: &[&str]) -> Process {
    let p = lab
        .spawn_in(
            lab.node("n1").netns(),
            &format!("cp{nth}"),
            bin,
            args,
            &[("RUST_LOG", "info,ztun=debug")],
            lab.dir(),
        )
        .expect("spawning the control plane");
    p.wait_for_log("control plane listening", WAIT)
        .expect("control plane started");
    p
}

/// Asserts that the access line `line` lacks the field `field` while `witness`, a line of
/// the same ztun for a connection that has it, carries it as `field=value`. The absence alone
/// would also hold if the field were renamed; the witness fails then.
pub fn assert_field_only_in(witness: &str, field: &str, value: &str, line: &str) {
    let present = format!("{field}={value}");
    assert!(
        witness.contains(&present),
        "expected {present} in the witness line: {witness}"
    );
    assert!(
        !line.contains(&format!("{field}=")),
        "unexpected {field} in: {line}"
    );
}

/// `n` connections from a pod to an echo server, opened at once (every one accepted before
/// any sends its first bytes) and held open, each having echoed once, until closed.
pub struct Concurrent {
    task: NetnsTask<anyhow::Result<()>>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Concurrent {
    pub fn open(pod: &Netns, dst: SocketAddr, n: usize) -> Concurrent {
        let (echoed_tx, echoed_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let task = pod.spawn_async(async move {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let (barrier, echoed, mut release) =
                    (barrier.clone(), echoed_tx.clone(), release_rx.clone());
                tasks.spawn(async move {
                    let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
                    barrier.wait().await;
                    let msg = format!("stream {i:02}");
                    s.write_all(msg.as_bytes()).await?;
                    let mut buf = vec![0u8; msg.len()];
                    s.read_exact(&mut buf).await?;
                    anyhow::ensure!(buf == msg.as_bytes(), "stream {i}: echo differs");
                    let _ = echoed.send(i);
                    release.wait_for(|go| *go).await?;
                    s.shutdown().await?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).await?;
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            anyhow::Ok(())
        });
        for _ in 0..n {
            echoed_rx
                .recv_timeout(WAIT)
                .expect("every connection echoed");
        }
        Concurrent { task, release }
    }

    /// Closes every connection (each half-closes and reads to EOF).
    pub fn close(self) {
        let _ = self.release.send(true);
        self.task.join().unwrap().expect("the connections");
    }
}
