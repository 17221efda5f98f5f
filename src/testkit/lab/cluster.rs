//! The lab cluster: nodes and pods as network namespaces, wired like a small Kubernetes
//! cluster, torn down on drop.
//!
//! Addressing (k = node number from 1 in declaration order, j = pod number on its node from 1):
//! - node `k`: netns `<prefix><node>`, link `eth0` with 172.30.0.k/24 (a veth pair for two
//!   nodes; a bridge in a `<prefix>switch` netns for more; a veth with a stub peer for one);
//!   routes 10.0.m.0/24 via 172.30.0.m for every other node m; forwarding on, rp_filter off.
//! - pod `j` on node `k`: netns `<prefix><pod>`, `eth0` with 10.0.k.(10+j)/32, an on-link
//!   route to 10.0.k.1 and a default route via it; the node side of the veth (`veth<10+j>`)
//!   holds 10.0.k.1/32 and a /32 route to the pod.
//!
//! With [`LabBuilder::ip_families`] a lab is dual-stack or IPv6-only instead: node links get
//! fd00:30::k/64 and routes to fd00:0:m::/64, pods fd00:0:k::(10+j)/128 with fd00:0:k::1 as
//! gateway, IPv6 forwarding is on and captured pods get istio-cni's IPv6 rules as well (the
//! plan is in `addressing.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Weak;

use anyhow::{bail, Context as _};
use parking_lot::Mutex;

use super::addressing::{self, IpFamilies, PodAddrs};
use super::capture::Capture;
use super::cni::TestCni;
use super::netns::{self, Netns};
use super::pod::{Pod, PodSpec};
use super::process::{kill_and_reap, Process};
use super::redirect;

/// Every lab namespace and temp dir name starts with this.
pub const LAB_PREFIX: &str = "ztl-";
/// Name of a node's inter-node link interface.
pub const NODE_LINK: &str = "eth0";
/// Sysctls applied in node namespaces (and rp_filter in pods).
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];
const POD_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];

/// Collects nodes and pods; [`build`](LabBuilder::build) creates them.
#[derive(Debug)]
#[must_use]
pub struct LabBuilder {
    test_name: String,
    ip_families: IpFamilies,
    nodes: Vec<String>,
    /// Node → network (absent: the default network, "").
    networks: std::collections::HashMap<String, String>,
    /// Pods reachable from every network (east-west gateways).
    exposed: Vec<String>,
    pods: Vec<PodSpec>,
}

/// A built lab. Dropping it kills every process it started (and any still inside its
/// namespaces), deletes its namespaces and removes its temp dir — also when a test panics.
pub struct Lab {
    test_name: String,
    ip_families: IpFamilies,
    prefix: String,
    dir: PathBuf,
    /// Namespaces in creation order; deleted in reverse.
    created: Vec<String>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    children: Mutex<Vec<Weak<Mutex<Child>>>>,
    captures: AtomicUsize,
}

/// A lab node: a namespace where that node's ztun runs, with its own test CNI.
#[derive(Debug)]
pub struct Node {
    name: String,
    /// Network name ("" for the default network).
    network: String,
    index: u8,
    ip_families: IpFamilies,
    netns: Netns,
    dir: PathBuf,
    cni: TestCni,
}

impl Lab {
    /// Starts describing a lab for the test `test_name` (used in logs and the temp dir).
    pub fn builder(test_name: &str) -> LabBuilder {
        LabBuilder {
            test_name: test_name.to_string(),
            ip_families: IpFamilies::default(),
            nodes: Vec::new(),
            networks: Default::default(),
            exposed: Vec::new(),
            pods: Vec::new(),
        }
    }

    /// The test name given to the builder.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The IP families of the lab's node links and pods.
    pub fn ip_families(&self) -> IpFamilies {
        self.ip_families
    }

    /// The unique `ztl-<random>-` prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's temp dir (node working dirs, CNI sockets, captures); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node named `name`; panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("lab {} has no node {name:?}", self.test_name))
    }

    /// The pod named `name`; panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("lab {} has no pod {name:?}", self.test_name))
    }

    /// All nodes in declaration order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All pods in declaration order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The test CNI of node `name` (shorthand for `lab.node(name).cni()`).
    pub fn cni(&self, node: &str) -> &TestCni {
        self.node(node).cni()
    }

    /// Runs `proxy ztunnel` with the ztun binary from [`ztun_bin`](crate::testkit::ztun_bin)
    /// in `node`'s namespace; see [`spawn_ztun_with`](Self::spawn_ztun_with).
    pub fn spawn_ztun(&self, node: &str, env: &[(&str, &str)]) -> anyhow::Result<Process> {
        let bin = crate::testkit::ztun_bin()?;
        self.spawn_ztun_with(node, &bin, &["proxy", "ztunnel"], env)
    }

    /// Runs `bin args...` in `node`'s namespace, with the node's dir as working directory
    /// and a clean environment: `PATH`, `RUST_BACKTRACE=1`, then the defaults
    /// `INPOD_UDS=<node's CNI socket>`, `NODE_NAME=<node>`, `RUST_LOG=info,ztun=debug`,
    /// `XDS_ADDRESS=""`, then `env` (which overrides the defaults). Logs are echoed with
    /// the node name as label.
    pub fn spawn_ztun_with(
        &self,
        node: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let node = self.node(node);
        let socket = node.cni.socket_path().to_string_lossy().into_owned();
        let mut vars = vec![
            ("INPOD_UDS", socket.as_str()),
            ("NODE_NAME", node.name.as_str()),
            ("NETWORK", node.network.as_str()),
            ("RUST_LOG", "info,ztun=debug"),
            ("XDS_ADDRESS", ""),
        ];
        vars.extend_from_slice(env);
        self.spawn_in(&node.netns, &node.name, bin, args, &vars, &node.dir)
    }

    /// Runs `program args...` inside `netns` with a clean environment (`PATH`,
    /// `RUST_BACKTRACE=1`, then `env`) and working directory `cwd`, under supervision; the
    /// lab kills it on drop if the returned handle is still alive.
    pub fn spawn_in(
        &self,
        netns: &Netns,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> anyhow::Result<Process> {
        if !program.exists() {
            bail!("{} does not exist", program.display());
        }
        let mut cmd = netns.command(program);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("RUST_BACKTRACE", "1");
        // Test tooling: the children find their tools on the caller's PATH.
        #[allow(clippy::disallowed_methods)]
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(env.iter().copied());
        let process = Process::spawn(label, cmd)?;
        self.children.lock().push(process.child_handle());
        Ok(process)
    }

    /// Starts `tcpdump` on `node`'s inter-node link, writing to a fresh file in the lab dir;
    /// returns once it is listening.
    pub fn capture(&self, node: &str) -> anyhow::Result<Capture> {
        let node = self.node(node);
        let n = self.captures.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("{}-{n}.pcap", node.name));
        let capture = Capture::start(&node.netns, NODE_LINK, &file)?;
        Ok(capture)
    }

    /// Creates an extra, unconnected namespace `<prefix><suffix>` that the lab removes on
    /// drop: e.g. a second "ztun pod" on a node during an upgrade (ztun reaches pods through
    /// their netns fds, so its own namespace needs no links).
    pub fn add_netns(&mut self, suffix: &str) -> anyhow::Result<Netns> {
        self.create_netns(suffix)
    }

    fn create_netns(&mut self, suffix: &str) -> anyhow::Result<Netns> {
        let name = format!("{}{suffix}", self.prefix);
        let netns = Netns::create(&name)?;
        self.created.push(name);
        Ok(netns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.lock().drain(..) {
            if let Some(child) = child.upgrade() {
                kill_and_reap(&child);
            }
        }
        // Stop the CNIs before their sockets' directory goes away.
        self.nodes.clear();
        self.pods.clear();
        for name in self.created.iter().rev() {
            if let Err(e) = netns::delete(name) {
                eprintln!("[lab {}] cannot delete netns {name}: {e:#}", self.test_name);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "[lab {}] cannot remove {}: {e}",
                self.test_name,
                self.dir.display()
            );
        }
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("test_name", &self.test_name)
            .field("prefix", &self.prefix)
            .field("nodes", &self.nodes)
            .field("pods", &self.pods)
            .finish_non_exhaustive()
    }
}

impl LabBuilder {
    /// Which IP families node links and pods get (default [`IpFamilies::V4Only`]); with
    /// IPv6, captured pods also get istio-cni's IPv6 capture rules.
    pub fn ip_families(mut self, families: IpFamilies) -> LabBuilder {
        self.ip_families = families;
        self
    }

    /// Adds a node (its number is its position among nodes, from 1).
    pub fn node(mut self, name: &str) -> LabBuilder {
        self.nodes.push(name.to_string());
        self
    }

    /// Adds a node on `network`: nodes route pod traffic only to the nodes of their own
    /// network (all share the link, as networks behind one firewall would), and their ztun
    /// runs with `NETWORK=<network>`.
    pub fn node_on(mut self, name: &str, network: &str) -> LabBuilder {
        self.networks.insert(name.to_string(), network.to_string());
        self.node(name)
    }

    /// Makes pod `name` reachable from every network (a host route to it on every node of
    /// the other networks): an east-west gateway.
    pub fn expose(mut self, name: &str) -> LabBuilder {
        self.exposed.push(name.to_string());
        self
    }

    /// Adds a pod.
    pub fn pod(mut self, spec: PodSpec) -> LabBuilder {
        self.pods.push(spec);
        self
    }

    /// Creates every namespace, link, address, route and capture rule, and starts one test
    /// CNI per node with its captured pods enrolled. Fails with a clear message when not
    /// run as root or when `ip`/`iptables-restore` are missing. On failure, whatever was
    /// already created is removed.
    pub fn build(self) -> anyhow::Result<Lab> {
        self.validate()?;
        // /proc/self is owned by the process's effective uid.
        let euid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        if euid != 0 {
            bail!(
                "the namespace lab needs root (it creates network namespaces); \
                 run the e2e tests as root, e.g. via scripts/test.sh"
            );
        }
        let id = random_id();
        let prefix = format!("{LAB_PREFIX}{id}-");
        let dir = std::env::temp_dir().join(format!("{LAB_PREFIX}{id}"));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("test-name"), &self.test_name)?;
        let mut lab = Lab {
            test_name: self.test_name.clone(),
            ip_families: self.ip_families,
            prefix,
            dir,
            created: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            children: Mutex::new(Vec::new()),
            captures: AtomicUsize::new(0),
        };
        self.build_into(&mut lab)
            .with_context(|| format!("build lab {} ({})", lab.test_name, lab.prefix))?;
        Ok(lab)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() || self.nodes.len() > 250 {
            bail!("a lab needs 1 to 250 nodes, got {}", self.nodes.len());
        }
        let mut names: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        names.push("switch");
        for pod in &self.pods {
            if !self.nodes.contains(&pod.node) {
                bail!("pod {} is on unknown node {}", pod.name, pod.node);
            }
            names.push(&pod.name);
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.contains(['/', ' ']) || names[..i].contains(name) {
                bail!(
                    "node and pod names must be distinct, non-empty, without '/' or ' ', \
                     and not \"switch\": {name:?}"
                );
            }
        }
        Ok(())
    }

    fn build_into(self, lab: &mut Lab) -> anyhow::Result<()> {
        let count = u8::try_from(self.nodes.len()).expect("at most 250 nodes");
        let families = self.ip_families;
        let mut node_netns = Vec::new();
        for name in &self.nodes {
            let netns = lab.create_netns(name)?;
            netns.set_sysctls(NODE_SYSCTLS)?;
            if families.has_v6() {
                netns.set_sysctls(addressing::NODE_SYSCTLS_V6)?;
            }
            node_netns.push(netns);
        }
        wire_nodes(lab, &node_netns)?;
        let network_of = |name: &str| self.networks.get(name).cloned().unwrap_or_default();
        for (k, (name, netns)) in (1..).zip(self.nodes.iter().zip(&node_netns)) {
            let peers: Vec<u8> = (1..=count)
                .zip(&self.nodes)
                .filter(|(_, other)| network_of(other) == network_of(name))
                .map(|(m, _)| m)
                .collect();
            netns.ip_batch(&addressing::node_link_commands(families, k, &peers))?;
        }
        for (k, (name, netns)) in self.nodes.iter().zip(node_netns).enumerate() {
            let dir = lab.dir.join(name);
            std::fs::create_dir_all(&dir)?;
            let cni = TestCni::start(dir.join("ztunnel.sock"))?;
            let index = u8::try_from(k + 1).expect("at most 250 nodes");
            lab.nodes.push(Node {
                network: network_of(name),
                name: name.clone(),
                index,
                ip_families: families,
                netns,
                dir,
                cni,
            });
        }
        for spec in self.pods {
            let pod = create_pod(lab, spec)?;
            if pod.spec.captured && pod.spec.enrolled {
                lab.node(&pod.spec.node).cni.enroll(&pod.info());
            }
            lab.pods.push(pod);
        }
        // An exposed pod is reachable from the other networks' nodes (a host route to it),
        // and its own node routes its replies back to them (from its address only).
        const EXPOSED_TABLE: u32 = 201;
        for exposed in &self.exposed {
            let pod = lab.pod(exposed);
            let home = lab.node(&pod.spec.node);
            let via = home.link_ip();
            let (ip, network) = (pod.ip(), home.network.clone());
            let mut back = vec![format!("rule add from {ip}/32 table {EXPOSED_TABLE}")];
            for node in lab.nodes.iter().filter(|n| n.network != network) {
                node.netns
                    .ip_batch(&[format!("route add {ip}/32 via {via} dev {NODE_LINK}")])?;
                let (net, len) = addressing::pod_cidr_v4(node.index);
                back.push(format!(
                    "route add {net}/{len} via {} dev {NODE_LINK} table {EXPOSED_TABLE}",
                    node.link_ip()
                ));
            }
            home.netns.ip_batch(&back)?;
        }
        Ok(())
    }
}

/// Creates the inter-node links: each node ends up with an `eth0` on a shared segment.
fn wire_nodes(lab: &mut Lab, nodes: &[Netns]) -> anyhow::Result<()> {
    match nodes {
        // Not every kernel has the dummy driver: a veth whose peer stays in the node will do.
        [single] => single.ip_batch(&[
            format!("link add {NODE_LINK} type veth peer name {NODE_LINK}-stub"),
            format!("link set {NODE_LINK}-stub up"),
        ]),
        [a, b] => a
            .ip_command(&[
                "link",
                "add",
                NODE_LINK,
                "type",
                "veth",
                "peer",
                "name",
                NODE_LINK,
                "netns",
                b.name(),
            ])
            .map(drop),
        _ => {
            let switch = lab.create_netns("switch")?;
            let mut lines = vec![
                "link add br0 type bridge".to_string(),
                "link set br0 up".to_string(),
            ];
            for (k, node) in nodes.iter().enumerate() {
                let port = format!("port{}", k + 1);
                lines.push(format!(
                    "link add {port} type veth peer name {NODE_LINK} netns {}",
                    node.name()
                ));
                lines.push(format!("link set {port} master br0 up"));
            }
            switch.ip_batch(&lines)
        }
    }
}

fn create_pod(lab: &mut Lab, spec: PodSpec) -> anyhow::Result<Pod> {
    let node = lab.node(&spec.node);
    let (k, node_netns) = (node.index, node.netns.clone());
    let j = lab.pods.iter().filter(|p| p.spec.node == spec.node).count() + 1;
    let host = u8::try_from(10 + j)
        .ok()
        .filter(|h| *h < 255)
        .context("too many pods on one node")?;
    let families = lab.ip_families;
    let addrs = PodAddrs::new(families, k, host);
    let netns = lab.create_netns(&spec.name)?;
    netns.set_sysctls(POD_SYSCTLS)?;
    if families.has_v6() {
        netns.set_sysctls(addressing::POD_SYSCTLS_V6)?;
    }
    let veth = format!("veth{host}");
    let mut node_side = vec![
        format!(
            "link add {veth} type veth peer name eth0 netns {}",
            netns.name()
        ),
        format!("link set {veth} up"),
    ];
    node_side.extend(addrs.node_side(k, &veth));
    node_netns.ip_batch(&node_side)?;
    let mut pod_side = vec!["link set eth0 up".to_string()];
    pod_side.extend(addrs.pod_side(k));
    netns.ip_batch(&pod_side)?;
    if spec.captured {
        // istio-cni always installs its IPv4 rules, and its IPv6 rules when IPv6 is enabled.
        let v6 = families.has_v6().then_some(redirect::IpFamily::V6);
        for family in std::iter::once(redirect::IpFamily::V4).chain(v6) {
            redirect::apply(&netns, spec.capture_mode, family).with_context(|| {
                format!("install {family:?} capture rules in pod {}", spec.name)
            })?;
        }
    }
    Ok(Pod::new(spec, addrs, netns))
}

impl Node {
    /// The node name given to the builder (also its `NODE_NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's number, from 1 in declaration order.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The node's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's network (`""`: the default one).
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The node's IPv4 address on the inter-node link, 172.30.0.k. Panics in an
    /// [`IpFamilies::V6Only`] lab, whose links have none.
    pub fn link_ip(&self) -> Ipv4Addr {
        assert!(
            self.ip_families.has_v4(),
            "node {} has no IPv4 link address (IPv6-only lab): use link_ip6()",
            self.name
        );
        addressing::node_link_v4(self.index)
    }

    /// The node's IPv6 address on the inter-node link, fd00:30::k. Panics in an
    /// [`IpFamilies::V4Only`] lab, whose links have none.
    pub fn link_ip6(&self) -> Ipv6Addr {
        assert!(
            self.ip_families.has_v6(),
            "node {} has no IPv6 link address (IPv4-only lab)",
            self.name
        );
        addressing::node_link_v6(self.index)
    }

    /// The inter-node link interface inside the node's namespace (for tcpdump).
    pub fn link_iface(&self) -> &str {
        NODE_LINK
    }

    /// The node's IPv4 pod CIDR, 10.0.k.0/24, as (network address, prefix length).
    pub fn pod_cidr(&self) -> (Ipv4Addr, u8) {
        addressing::pod_cidr_v4(self.index)
    }

    /// The node's IPv6 pod CIDR, fd00:0:k::/64, as (network address, prefix length).
    pub fn pod_cidr6(&self) -> (Ipv6Addr, u8) {
        addressing::pod_cidr_v6(self.index)
    }

    /// The node's private dir in the lab dir (ztun's working directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's test CNI (its socket is ztun's `INPOD_UDS`).
    pub fn cni(&self) -> &TestCni {
        &self.cni
    }
}

impl Deref for Node {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.netns
    }
}

/// Six lowercase alphanumerics: short enough for names, random enough for parallel tests.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}
