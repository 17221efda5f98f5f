//! An immutable, indexed generation of the mesh, and the builder that makes one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{NetworkAddress, NetworkMode, Policy, Service, Strng, Workload};

/// One consistent generation of workloads, services and policies, with lookup indexes.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    workloads: HashMap<Strng, Arc<Workload>>,
    workloads_by_ip: HashMap<NetworkAddress, Arc<Workload>>,
    services: HashMap<Strng, Arc<Service>>,
    services_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>>,
    /// GLOBAL policies, then NAMESPACE policies by namespace (each sorted by key).
    global_policies: Vec<Arc<Policy>>,
    namespace_policies: HashMap<Strng, Vec<Arc<Policy>>>,
    /// (namespace, name) → workloads with that pod name (sorted by uid).
    /// Nested by namespace so two `&str` look it up without allocating a key.
    pods: HashMap<Strng, HashMap<Strng, Vec<Arc<Workload>>>>,
    /// Service key → workloads that list the service (sorted by uid).
    endpoints: HashMap<Strng, Vec<Arc<Workload>>>,
    policies: HashMap<Strng, Arc<Policy>>,
}

impl Snapshot {
    /// Monotonic generation number (0 = nothing received yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The workload owning `ip` on `network`. Host-network workloads are never returned.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        let key = NetworkAddress {
            network: network.into(),
            address: canonical_ip(ip),
        };
        self.workloads_by_ip.get(&key)
    }

    /// The workload with this uid.
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The workload of a pod by namespace and name, preferring one scheduled on `node`.
    /// One hash lookup: this runs on every connection.
    pub fn workload_by_pod(
        &self,
        namespace: &str,
        name: &str,
        node: Option<&str>,
    ) -> Option<&Arc<Workload>> {
        let list = self.pods.get(namespace)?.get(name)?;
        node.and_then(|n| list.iter().find(|w| &*w.node == n))
            .or_else(|| list.first())
    }
    /// Services reachable at `vip` on `network` (several may share a VIP).
    pub fn services_by_vip(&self, network: &str, vip: IpAddr) -> &[Arc<Service>] {
        let key = NetworkAddress {
            network: network.into(),
            address: canonical_ip(vip),
        };
        self.services_by_vip
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The service with key `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// Workloads that are endpoints of the service with key `namespace/hostname`.
    pub fn endpoints(&self, service_key: &str) -> &[Arc<Workload>] {
        self.endpoints
            .get(service_key)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The policy with key `namespace/name`.
    pub fn policy(&self, key: &str) -> Option<&Arc<Policy>> {
        self.policies.get(key)
    }

    /// All workloads, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The GLOBAL policies and the NAMESPACE policies of `namespace`: what applies to every
    /// workload of that namespace before its own WORKLOAD_SELECTOR list. No scan: this runs on
    /// every inbound connection.
    pub fn scoped_policies<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        let ns = self
            .namespace_policies
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.global_policies.iter().chain(ns.iter())
    }

    /// All policies, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }
}

/// IPv4-mapped IPv6 addresses are looked up as plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Accumulates resources, then builds the indexes of a [`Snapshot`] in one pass.
#[derive(Debug, Default, Clone)]
pub struct SnapshotBuilder {
    workloads: HashMap<Strng, Arc<Workload>>,
    services: HashMap<Strng, Arc<Service>>,
    policies: HashMap<Strng, Arc<Policy>>,
}

impl SnapshotBuilder {
    /// Starts from the contents of `snap`.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        SnapshotBuilder {
            workloads: snap.workloads.clone(),
            services: snap.services.clone(),
            policies: snap.policies.clone(),
        }
    }

    /// Removes every resource.
    pub fn clear(&mut self) {
        self.workloads.clear();
        self.services.clear();
        self.policies.clear();
    }

    /// Adds or replaces a workload (by uid).
    pub fn insert_workload(&mut self, w: Workload) {
        self.workloads.insert(w.uid.clone(), Arc::new(w));
    }

    /// Adds or replaces a service (by `namespace/hostname`).
    pub fn insert_service(&mut self, s: Service) {
        self.services.insert(s.key().into(), Arc::new(s));
    }

    /// Adds or replaces a policy (by `namespace/name`).
    pub fn insert_policy(&mut self, p: Policy) {
        self.policies.insert(p.key().into(), Arc::new(p));
    }

    /// Logs, once per new or changed policy compared with `previous`, the policies with rules
    /// that can never match at L4: Istio accepts such policies and says so only in the
    /// policy's status, which node operators rarely see.
    pub(super) fn warn_unmatchable(&self, previous: &Snapshot) {
        for (key, p) in &self.policies {
            let unchanged = previous
                .policies
                .get(key)
                .is_some_and(|old| Arc::ptr_eq(old, p) || **old == **p);
            if unchanged {
                continue;
            }
            let rules: Vec<usize> = p.unmatchable_rules().collect();
            if !rules.is_empty() {
                tracing::warn!(
                    policy = %key,
                    action = ?p.action,
                    rules = ?rules,
                    "policy rules name only HTTP attributes (istiod sent empty match groups): \
                     they never match at L4 (ZTUN_L4_DENY_HTTP_RULES=enforce applies DENY ones)"
                );
            }
        }
    }

    /// Removes an address resource by name: a workload uid, else a service key. Returns
    /// whether anything was removed.
    pub fn remove_address(&mut self, name: &str) -> bool {
        self.workloads.remove(name).is_some() || self.services.remove(name).is_some()
    }

    /// Removes a policy by key. Returns whether it existed.
    pub fn remove_policy(&mut self, key: &str) -> bool {
        self.policies.remove(key).is_some()
    }

    /// Builds the indexes and freezes the generation.
    pub fn build(self, generation: u64) -> Snapshot {
        let mut workloads_by_ip: HashMap<NetworkAddress, Arc<Workload>> = HashMap::new();
        for w in self.workloads.values() {
            if w.network_mode == NetworkMode::HostNetwork {
                continue;
            }
            for ip in &w.workload_ips {
                let key = NetworkAddress {
                    network: w.network.clone(),
                    address: canonical_ip(*ip),
                };
                match workloads_by_ip.get(&key) {
                    // Several workloads on one IP: prefer pods, then HBONE ones, then a stable
                    // order by uid so every node resolves the conflict the same way.
                    Some(existing) if !prefer(w, existing) => {}
                    _ => {
                        workloads_by_ip.insert(key, w.clone());
                    }
                }
            }
        }
        let mut pods: HashMap<Strng, HashMap<Strng, Vec<Arc<Workload>>>> = HashMap::new();
        let mut endpoints: HashMap<Strng, Vec<Arc<Workload>>> = HashMap::new();
        for w in self.workloads.values() {
            pods.entry(w.namespace.clone())
                .or_default()
                .entry(w.name.clone())
                .or_default()
                .push(w.clone());
            for key in w.services.keys() {
                endpoints.entry(key.clone()).or_default().push(w.clone());
            }
        }
        for list in endpoints
            .values_mut()
            .chain(pods.values_mut().flat_map(HashMap::values_mut))
        {
            list.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        let mut services_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>> = HashMap::new();
        for s in self.services.values() {
            for vip in &s.vips {
                let key = NetworkAddress {
                    network: vip.network.clone(),
                    address: canonical_ip(vip.address),
                };
                services_by_vip.entry(key).or_default().push(s.clone());
            }
        }
        for list in services_by_vip.values_mut() {
            list.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        }
        let mut global_policies = Vec::new();
        let mut namespace_policies: HashMap<Strng, Vec<Arc<Policy>>> = HashMap::new();
        for p in self.policies.values() {
            match p.scope {
                super::model::PolicyScope::Global => global_policies.push(p.clone()),
                super::model::PolicyScope::Namespace => namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                super::model::PolicyScope::WorkloadSelector => {}
            }
        }
        let by_key = |a: &Arc<Policy>, b: &Arc<Policy>| {
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        };
        global_policies.sort_by(by_key);
        for list in namespace_policies.values_mut() {
            list.sort_by(by_key);
        }
        Snapshot {
            generation,
            global_policies,
            namespace_policies,
            workloads: self.workloads,
            workloads_by_ip,
            services: self.services,
            services_by_vip,
            pods,
            endpoints,
            policies: self.policies,
        }
    }
}

fn prefer(candidate: &Workload, existing: &Workload) -> bool {
    let rank = |w: &Workload| {
        (
            w.uid.contains("//Pod/"),
            w.protocol == super::model::TunnelProtocol::Hbone,
        )
    };
    match rank(candidate).cmp(&rank(existing)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => candidate.uid < existing.uid,
    }
}
