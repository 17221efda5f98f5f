//! Shared fixtures for the e2e suites: the standard two-node cluster with ztun running.

use std::path::PathBuf;
use std::time::Duration;

use ztun::testkit::lab::{Lab, PodSpec, Process};
use ztun::testkit::mesh::MeshFile;

/// Generous deadline for anything the tests wait on (loaded 2-core CI machines).
pub const WAIT: Duration = Duration::from_secs(60);

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

/// Nodes n1 and n2 with `pods` (after checking for root).
pub fn two_node_lab(test: &str, pods: Vec<PodSpec>) -> Lab {
    require_root();
    pods.into_iter()
        .fold(Lab::builder(test).node("n1").node("n2"), |b, p| b.pod(p))
        .build()
        .expect("building the namespace lab")
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

impl Cluster {
    /// Starts ztun on every node of `lab` with `mesh` and a fresh shared CA, and waits until
    /// each has synced with its CNI.
    pub fn start(lab: Lab, mesh: MeshFile) -> Cluster {
        Cluster::start_with(lab, mesh, &[])
    }

    /// Like [`Cluster::start`] with extra environment for every ztun.
    pub fn start_with(lab: Lab, mesh: MeshFile, env: &[(&str, &str)]) -> Cluster {
        let ca_dir = lab.dir().join("ca");
        ztun::testkit::certs::write_ca_dir(&ca_dir).expect("writing CA");
        let mesh_path = lab.dir().join("mesh.yaml");
        mesh.write(&mesh_path).expect("writing mesh file");
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
            let p = cluster.spawn(&node, env);
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
