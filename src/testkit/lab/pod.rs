//! Pods of the lab: what a test asks for ([`PodSpec`]) and what it gets ([`Pod`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

use super::addressing::PodAddrs;
use super::cni::PodInfo;
use super::netns::Netns;
use super::redirect::CaptureMode;

/// Describes one pod of the lab.
#[derive(Debug, Clone)]
#[must_use]
pub struct PodSpec {
    pub(super) name: String,
    pub(super) node: String,
    pub(super) namespace: String,
    pub(super) service_account: String,
    pub(super) captured: bool,
    pub(super) enrolled: bool,
    pub(super) capture_mode: CaptureMode,
}

/// A lab pod: a namespace with an IPv4 address, an IPv6 address, or both, depending on the
/// lab's [`IpFamilies`](super::IpFamilies). Dereferences to its [`Netns`], so `pod.run(..)`,
/// `pod.spawn_echo_server(..)`, `pod.bulk_echo(..)` run inside the pod.
#[derive(Debug)]
pub struct Pod {
    pub(super) spec: PodSpec,
    uid: String,
    addrs: PodAddrs,
    netns: Netns,
}

impl Pod {
    /// A pod made from `spec`, with a fresh random UID.
    pub(super) fn new(spec: PodSpec, addrs: PodAddrs, netns: Netns) -> Pod {
        Pod {
            spec,
            uid: random_uid(),
            addrs,
            netns,
        }
    }

    /// The pod name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The pod's Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.spec.namespace
    }

    /// The pod's service account.
    pub fn service_account(&self) -> &str {
        &self.spec.service_account
    }

    /// The pod's SPIFFE identity in trust domain `cluster.local`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.spec.namespace, self.spec.service_account
        )
    }

    /// The pod's UID (random, UUID-shaped, fixed for the lab's life).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The name of the node the pod runs on.
    pub fn node(&self) -> &str {
        &self.spec.node
    }

    /// The pod's IPv4 address, 10.0.k.(10+j). Panics in an
    /// [`IpFamilies::V6Only`](super::IpFamilies::V6Only) lab, whose pods have none.
    pub fn ip(&self) -> Ipv4Addr {
        self.addrs.v4.unwrap_or_else(|| {
            panic!(
                "pod {} has no IPv4 address (IPv6-only lab): use ip6()",
                self.spec.name
            )
        })
    }

    /// The pod's IPv6 address, fd00:0:k::(10+j). Panics in an
    /// [`IpFamilies::V4Only`](super::IpFamilies::V4Only) lab, whose pods have none.
    pub fn ip6(&self) -> Ipv6Addr {
        self.addrs.v6.unwrap_or_else(|| {
            panic!(
                "pod {} has no IPv6 address (IPv4-only lab): build the lab with \
                 ip_families(IpFamilies::Dual or V6Only)",
                self.spec.name
            )
        })
    }

    /// Every address of the pod, IPv4 first (the order of its `workloadIps`).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs.all()
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Whether capture rules are installed in the pod.
    pub fn captured(&self) -> bool {
        self.spec.captured
    }

    /// How inbound traffic is captured (meaningful only if captured).
    pub fn capture_mode(&self) -> CaptureMode {
        self.spec.capture_mode
    }

    /// What the CNI sends ztun for this pod.
    pub fn info(&self) -> PodInfo {
        PodInfo {
            uid: self.uid.clone(),
            name: self.spec.name.clone(),
            namespace: self.spec.namespace.clone(),
            service_account: self.spec.service_account.clone(),
            netns_path: self.netns.path().to_path_buf(),
        }
    }
}

impl Deref for Pod {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.netns
    }
}

impl PodSpec {
    /// A pod `name` on node `node`: namespace `default`, service account `default`, not
    /// captured.
    pub fn new(name: &str, node: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            node: node.to_string(),
            namespace: "default".to_string(),
            service_account: "default".to_string(),
            captured: false,
            enrolled: true,
            capture_mode: CaptureMode::default(),
        }
    }

    /// Sets the Kubernetes namespace.
    pub fn namespace(mut self, namespace: &str) -> PodSpec {
        self.namespace = namespace.to_string();
        self
    }

    /// Sets the service account.
    pub fn service_account(mut self, service_account: &str) -> PodSpec {
        self.service_account = service_account.to_string();
        self
    }

    /// Whether the pod is in the mesh: capture rules installed and, unless
    /// [`enrolled(false)`](Self::enrolled), announced to its node's CNI snapshot.
    pub fn captured(mut self, captured: bool) -> PodSpec {
        self.captured = captured;
        self
    }

    /// For a captured pod: whether it is in the CNI snapshot from the start (default). With
    /// `false` the test announces it later, e.g. `lab.cni(node).add_pod(&pod.info())`.
    pub fn enrolled(mut self, enrolled: bool) -> PodSpec {
        self.enrolled = enrolled;
        self
    }

    /// How inbound traffic is captured (default [`CaptureMode::Redirect`]).
    pub fn capture_mode(mut self, mode: CaptureMode) -> PodSpec {
        self.capture_mode = mode;
        self
    }
}

fn random_uid() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
