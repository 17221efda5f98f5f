//! An immutable, indexed generation of the mesh, and the builder that makes the next one.
//!
//! Every map and index is a [`ShardMap`]: a new generation shares all the shards its delta
//! does not touch with the previous one, and the builder keeps the indexes up to date as it
//! applies each insert or removal. A delta of `n` resources costs O(n), not O(mesh), and the
//! generation readers hold is never modified.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::intern::{self, Interner};
use super::model::{
    GatewayAddress, GatewayDestination, NetworkAddress, NetworkMode, Policy, PolicyScope, Service,
    Strng, Workload,
};
use super::shards::ShardMap;

/// One consistent generation of workloads, services and policies, with lookup indexes.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    generation: u64,
    workloads: ShardMap<Strng, Arc<Workload>>,
    /// (network, IP) → the workloads on it, the preferred one first.
    workloads_by_ip: ShardMap<NetworkAddress, List<Workload>>,
    services: ShardMap<Strng, Arc<Service>>,
    /// (network, VIP) → services, sorted by (namespace, hostname).
    services_by_vip: ShardMap<NetworkAddress, List<Service>>,
    /// The services with CIDR VIPs (few), sorted by (namespace, hostname): what a
    /// destination that is no exact VIP is checked against, without a pass over every service.
    cidr_services: Option<List<Service>>,
    /// (namespace, name) → workloads with that pod name (sorted by uid).
    pods: ShardMap<(Strng, Strng), List<Workload>>,
    /// Service key → workloads that list the service (sorted by uid).
    endpoints: ShardMap<Strng, List<Workload>>,
    policies: Arc<Policies>,
    /// The node this state is kept for, if it was told, and its workloads (sorted by uid):
    /// what follows the local workloads reads them without a pass over the mesh.
    local_node: Option<Strng>,
    local: Option<List<Workload>>,
    /// Counts the workloads that left (removed, or replaced under another name).
    departures: u64,
}

/// The policies and their scope indexes (few: rebuilt whole when one changes).
#[derive(Debug, Default, Clone)]
struct Policies {
    by_key: HashMap<Strng, Arc<Policy>>,
    /// GLOBAL policies, then NAMESPACE policies by namespace (each sorted by key).
    global: Vec<Arc<Policy>>,
    namespace: HashMap<Strng, Vec<Arc<Policy>>>,
}

/// An index value: one item (no allocation beyond the entry) or several, shared.
#[derive(Debug)]
enum List<T> {
    One(Arc<T>),
    Many(Arc<[Arc<T>]>),
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        match self {
            List::One(x) => List::One(x.clone()),
            List::Many(x) => List::Many(x.clone()),
        }
    }
}

impl<T> List<T> {
    fn as_slice(&self) -> &[Arc<T>] {
        match self {
            List::One(x) => std::slice::from_ref(x),
            List::Many(x) => x,
        }
    }

    /// `list` with `item` added in `order` (unchanged if `item` is already there).
    fn with(list: Option<&Self>, item: &Arc<T>, order: impl Fn(&T, &T) -> Ordering) -> Self {
        let Some(list) = list else {
            return List::One(item.clone());
        };
        let items = list.as_slice();
        if items.iter().any(|x| Arc::ptr_eq(x, item)) {
            return list.clone();
        }
        let at = items.partition_point(|x| order(x, item) == Ordering::Less);
        let mut v = Vec::with_capacity(items.len() + 1);
        v.extend_from_slice(&items[..at]);
        v.push(item.clone());
        v.extend_from_slice(&items[at..]);
        List::Many(v.into())
    }

    /// `list` without `item`; `None` when nothing is left.
    fn without(list: Option<&Self>, item: &Arc<T>) -> Option<Self> {
        let items = list?.as_slice();
        let mut rest = items.iter().filter(|x| !Arc::ptr_eq(x, item));
        match (rest.next(), rest.next()) {
            (None, _) => None,
            (Some(one), None) => Some(List::One(one.clone())),
            _ => Some(List::Many(
                items
                    .iter()
                    .filter(|x| !Arc::ptr_eq(x, item))
                    .cloned()
                    .collect(),
            )),
        }
    }
}

impl Snapshot {
    /// Buckets allocated by the workload and service tables (tests: what a reservation holds).
    #[cfg(test)]
    pub(crate) fn table_buckets(&self) -> usize {
        self.workloads.capacity() + self.services.capacity()
    }

    /// An empty state that keeps the workloads scheduled on `node` listed apart
    /// ([`local_workloads`](Self::local_workloads)).
    pub fn for_node(node: Option<&str>) -> Snapshot {
        Snapshot {
            local_node: node.map(Strng::from),
            ..Snapshot::default()
        }
    }

    /// The node whose workloads [`local_workloads`](Self::local_workloads) lists, if any.
    pub fn local_node(&self) -> Option<&str> {
        self.local_node.as_deref()
    }

    /// The workloads scheduled on [`local_node`](Self::local_node), sorted by uid (none when
    /// no node was given).
    pub fn local_workloads(&self) -> &[Arc<Workload>] {
        self.local.as_ref().map(List::as_slice).unwrap_or_default()
    }

    fn is_local(&self, w: &Workload) -> bool {
        self.local_node.as_deref().is_some_and(|n| *w.node == *n)
    }

    /// Monotonic generation number (0 = nothing received yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A count that moves whenever a workload leaves the mesh: removed, or replaced by one
    /// with another namespace, name or workload name. What keeps something per workload name
    /// (metric series) need only look for the names that left when it moved, not on every
    /// generation.
    pub fn departures(&self) -> u64 {
        self.departures
    }

    /// The workload owning `ip` on `network`. Host-network workloads are never returned.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        let ip = canonical_ip(ip);
        let m = &self.workloads_by_ip;
        m.find(m.hash(&(network, ip)), |k| {
            k.address == ip && &*k.network == network
        })
        .and_then(|l| l.as_slice().first())
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
        let m = &self.pods;
        let list = m
            .find(m.hash(&(namespace, name)), |(ns, n)| {
                &**n == name && &**ns == namespace
            })?
            .as_slice();
        node.and_then(|n| list.iter().find(|w| &*w.node == n))
            .or_else(|| list.first())
    }

    /// Services reachable at `vip` on `network` (several may share a VIP).
    pub fn services_by_vip(&self, network: &str, vip: IpAddr) -> &[Arc<Service>] {
        let vip = canonical_ip(vip);
        let m = &self.services_by_vip;
        m.find(m.hash(&(network, vip)), |k| {
            k.address == vip && &*k.network == network
        })
        .map(List::as_slice)
        .unwrap_or_default()
    }

    /// The services with at least one CIDR VIP, sorted by (namespace, hostname).
    pub fn cidr_services(&self) -> &[Arc<Service>] {
        self.cidr_services
            .as_ref()
            .map(List::as_slice)
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
            .map(List::as_slice)
            .unwrap_or_default()
    }

    /// The policy with key `namespace/name`.
    pub fn policy(&self, key: &str) -> Option<&Arc<Policy>> {
        self.policies.by_key.get(key)
    }

    /// All workloads, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// All services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Number of workloads.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The GLOBAL policies and the NAMESPACE policies of `namespace`: what applies to every
    /// workload of that namespace before its own WORKLOAD_SELECTOR list. No scan: this runs on
    /// every inbound connection.
    pub fn scoped_policies<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        let ns = self
            .policies
            .namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.policies.global.iter().chain(ns.iter())
    }

    /// All policies, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.by_key.values()
    }

    /// Sizes of the indexes (entries), for tests and benchmarks that check an update keeps
    /// them consistent and that removals leave nothing behind.
    pub fn index_sizes(&self) -> [usize; 6] {
        [
            self.workloads.len(),
            self.workloads_by_ip.len(),
            self.services.len(),
            self.services_by_vip.len(),
            self.pods.len(),
            self.endpoints.len(),
        ]
    }
}

/// IPv4-mapped IPv6 addresses are looked up as plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The next generation: starts as a copy of one (sharing all its data) and keeps every index
/// up to date as resources are inserted and removed. A bulk load into an empty builder (see
/// [`reserve`](Self::reserve)) builds the lookup indexes once, when the generation is built.
#[derive(Debug, Default, Clone)]
pub struct SnapshotBuilder {
    next: Snapshot,
    policies_changed: bool,
    /// Set for a bulk load: what the lookup indexes are built from (they stay empty until then).
    bulk: Option<Box<Bulk>>,
}

/// The workloads and services of a bulk load, in arrival order, to index once they are all in.
#[derive(Debug, Default, Clone)]
struct Bulk {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    /// Those of them replaced or removed since, by address (each is kept alive by the lists
    /// above until the indexes are built, so no address is reused meanwhile).
    gone: std::collections::HashSet<usize>,
}

impl Bulk {
    fn forget<T>(&mut self, x: &Arc<T>) {
        self.gone.insert(Arc::as_ptr(x) as usize);
    }
}

impl SnapshotBuilder {
    /// Starts from the contents of `snap` (shares them: O(1) in the mesh size).
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        SnapshotBuilder {
            next: snap.clone(),
            policies_changed: false,
            bulk: None,
        }
    }

    /// Removes every resource.
    pub fn clear(&mut self) {
        let (generation, departures) = (self.next.generation, self.next.departures + 1);
        self.next = Snapshot::for_node(self.next.local_node.as_deref());
        (self.next.generation, self.next.departures) = (generation, departures);
        self.policies_changed = true;
        self.bulk = None;
    }

    /// Prepares an empty builder (the first response of a stream, a cleared state) for a bulk
    /// load of about `workloads` workloads and `services` services: the workload and service
    /// tables are sized once rather than grown step by step, and the lookup indexes are built
    /// when the generation is (in [`build`](Self::build)), from everything inserted by then,
    /// instead of being updated per insert. No effect on a non-empty builder: a delta
    /// touches few entries, and those indexes are shared with older generations.
    pub fn reserve(&mut self, workloads: usize, services: usize) {
        let next = &mut self.next;
        if next.workloads.len() != 0 || next.services.len() != 0 {
            return;
        }
        next.workloads.reserve_empty(workloads);
        next.services.reserve_empty(services);
        self.bulk.get_or_insert_with(|| {
            Box::new(Bulk {
                workloads: Vec::with_capacity(workloads),
                services: Vec::with_capacity(services),
                gone: Default::default(),
            })
        });
    }

    /// Gives back what [`reserve`](Self::reserve) set aside beyond the entries the builder
    /// holds: for a bulk load most of whose resources were rejected after being counted.
    pub fn shrink_reserved(&mut self) {
        let next = &mut self.next;
        next.workloads.shrink_to_fit();
        next.workloads_by_ip.shrink_to_fit();
        next.pods.shrink_to_fit();
        next.services.shrink_to_fit();
        next.services_by_vip.shrink_to_fit();
        next.endpoints.shrink_to_fit();
        if let Some(bulk) = &mut self.bulk {
            bulk.workloads.shrink_to_fit();
            bulk.services.shrink_to_fit();
        }
    }

    /// Adds or replaces a workload (by uid).
    pub fn insert_workload(&mut self, mut w: Workload) {
        intern::with(|i| intern_workload(i, &mut w));
        self.insert_shared_workload(w);
    }

    /// As [`insert_workload`](Self::insert_workload), for a workload whose repeated strings
    /// already are the mesh's shared copies (built with [`super::SharedStrings`]): they are
    /// not looked up again. (A string that is not shared only costs memory, never a wrong
    /// answer.)
    pub fn insert_shared_workload(&mut self, w: Workload) {
        let old = match self.next.workloads.get(&*w.uid) {
            // Resent unchanged: nothing to do (and readers keep the same value).
            Some(old) if **old == w => return,
            old => old.cloned(),
        };
        if let Some(old) = old {
            if (&old.namespace, &old.name, &old.workload_name)
                != (&w.namespace, &w.name, &w.workload_name)
            {
                self.next.departures += 1;
            }
            self.unindex_workload(&old);
        }
        let w = Arc::new(w);
        self.next.workloads.insert(w.uid.clone(), w.clone());
        self.index_workload(&w);
    }

    /// Adds or replaces a service (by `namespace/hostname`).
    pub fn insert_service(&mut self, mut s: Service) {
        intern::with(|i| intern_service(i, &mut s));
        self.insert_shared_service(s);
    }

    /// As [`insert_service`](Self::insert_service), for a service whose repeated strings
    /// already are the mesh's shared copies (built with [`super::SharedStrings`]).
    pub fn insert_shared_service(&mut self, s: Service) {
        let mut key: Strng = s.key().into();
        intern::with(|i| i.intern(&mut key));
        let old = match self.next.services.get(&key) {
            Some(old) if **old == s => return,
            old => old.cloned(),
        };
        if let Some(old) = old {
            self.unindex_service(&old);
        }
        let s = Arc::new(s);
        self.next.services.insert(key, s.clone());
        self.index_service(&s);
    }

    /// Adds or replaces a policy (by `namespace/name`).
    pub fn insert_policy(&mut self, p: Policy) {
        Arc::make_mut(&mut self.next.policies)
            .by_key
            .insert(p.key().into(), Arc::new(p));
        self.policies_changed = true;
    }

    /// Makes the departure count of the generation being built follow `previous`'s, the one it
    /// replaces. A builder not started from `previous` (a default one, or one from an older
    /// generation) may have left out any of its workloads: counted as a departure.
    pub(super) fn succeed(&mut self, previous: &Snapshot) {
        if self.next.generation != previous.generation {
            self.next.departures = self.next.departures.max(previous.departures) + 1;
        }
    }

    /// Logs, once per new or changed policy compared with `previous`, the policies with rules
    /// that can never match at L4: Istio accepts such policies and says so only in the
    /// policy's status, which node operators rarely see.
    pub(super) fn warn_unmatchable(&self, previous: &Snapshot) {
        if !self.policies_changed {
            return;
        }
        for (key, p) in &self.next.policies.by_key {
            let unchanged = previous
                .policies
                .by_key
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
        if let Some(w) = self.next.workloads.remove(name) {
            self.next.departures += 1;
            self.unindex_workload(&w);
            return true;
        }
        if let Some(s) = self.next.services.remove(name) {
            self.unindex_service(&s);
            return true;
        }
        false
    }

    /// Removes a policy by key. Returns whether it existed.
    pub fn remove_policy(&mut self, key: &str) -> bool {
        if !self.next.policies.by_key.contains_key(key) {
            return false;
        }
        Arc::make_mut(&mut self.next.policies).by_key.remove(key);
        self.policies_changed = true;
        true
    }

    /// Freezes the generation (the policy scope lists are rebuilt if a policy changed).
    pub fn build(mut self, generation: u64) -> Snapshot {
        if self.policies_changed {
            let policies = Arc::make_mut(&mut self.next.policies);
            policies.global.clear();
            policies.namespace.clear();
            for p in policies.by_key.values() {
                match p.scope {
                    PolicyScope::Global => policies.global.push(p.clone()),
                    PolicyScope::Namespace => policies
                        .namespace
                        .entry(p.namespace.clone())
                        .or_default()
                        .push(p.clone()),
                    PolicyScope::WorkloadSelector => {}
                }
            }
            let by_key = |a: &Arc<Policy>, b: &Arc<Policy>| {
                (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
            };
            policies.global.sort_by(by_key);
            for list in policies.namespace.values_mut() {
                list.sort_by(by_key);
            }
        }
        if let Some(bulk) = self.bulk.take() {
            self.index_bulk(*bulk);
        }
        self.next.generation = generation;
        self.next
    }

    /// Builds the lookup indexes of a bulk load from its live workloads and services, each
    /// index in one pass ([`ShardMap::load_grouped`]). A list comes out as the per-insert
    /// updates would have made it: the same order, each item once.
    fn index_bulk(&mut self, bulk: Bulk) {
        fn list<T>(items: &mut Vec<Arc<T>>, order: fn(&T, &T) -> Ordering) -> List<T> {
            if items.len() == 1 {
                return List::One(items.pop().expect("one item"));
            }
            items.sort_by(|a, b| order(a, b));
            // A workload listing one IP twice is on that IP once.
            items.dedup_by(|a, b| Arc::ptr_eq(a, b));
            match items.len() {
                1 => List::One(items.pop().expect("one item")),
                _ => List::Many(items.drain(..).collect()),
            }
        }
        let live_workloads = bulk.workloads.len();
        let mut by_ip = Vec::with_capacity(live_workloads);
        let mut pods = Vec::with_capacity(live_workloads);
        let mut endpoints = Vec::with_capacity(live_workloads);
        let mut by_vip = Vec::with_capacity(bulk.services.len());
        let mut cidr = Vec::new();
        let mut local = Vec::new();
        // Each Arc moves into its last index entry: no reference count is taken and given
        // back for the bulk list itself (a cold cache line per workload).
        let Bulk {
            workloads,
            services,
            gone,
        } = bulk;
        let live = |addr: usize| gone.is_empty() || !gone.contains(&addr);
        for w in workloads {
            if !live(Arc::as_ptr(&w) as usize) {
                continue;
            }
            by_ip.extend(ip_keys(&w).map(|key| (key, w.clone())));
            for key in w.services.keys() {
                endpoints.push((key.clone(), w.clone()));
            }
            if self.next.is_local(&w) {
                local.push(w.clone());
            }
            pods.push((pod_key(&w), w));
        }
        for s in services {
            if !live(Arc::as_ptr(&s) as usize) {
                continue;
            }
            by_vip.extend(vip_keys(&s).map(|key| (key, s.clone())));
            if !s.cidr_vips.is_empty() {
                cidr.push(s);
            }
        }
        let next = &mut self.next;
        next.local = (!local.is_empty()).then(|| list(&mut local, by_uid));
        next.cidr_services = (!cidr.is_empty()).then(|| list(&mut cidr, by_service_key));
        next.workloads_by_ip
            .load_grouped(by_ip, |l| list(l, preference));
        next.pods.load_grouped(pods, |l| list(l, by_uid));
        next.endpoints.load_grouped(endpoints, |l| list(l, by_uid));
        next.services_by_vip
            .load_grouped(by_vip, |l| list(l, by_service_key));
    }

    fn index_workload(&mut self, w: &Arc<Workload>) {
        if let Some(bulk) = &mut self.bulk {
            bulk.workloads.push(w.clone());
            return;
        }
        let next = &mut self.next;
        for key in ip_keys(w) {
            // Several workloads on one IP: prefer pods, then HBONE ones, then a stable order
            // by uid so every node resolves the conflict the same way.
            next.workloads_by_ip
                .update(key, |l| Some(List::with(l, w, preference)));
        }
        next.pods
            .update(pod_key(w), |l| Some(List::with(l, w, by_uid)));
        for key in w.services.keys() {
            next.endpoints
                .update(key.clone(), |l| Some(List::with(l, w, by_uid)));
        }
        if next.is_local(w) {
            next.local = Some(List::with(next.local.as_ref(), w, by_uid));
        }
    }

    fn unindex_workload(&mut self, w: &Arc<Workload>) {
        if let Some(bulk) = &mut self.bulk {
            bulk.forget(w);
            return;
        }
        let next = &mut self.next;
        for key in ip_keys(w) {
            next.workloads_by_ip.update(key, |l| List::without(l, w));
        }
        next.pods.update(pod_key(w), |l| List::without(l, w));
        for key in w.services.keys() {
            next.endpoints.update(key.clone(), |l| List::without(l, w));
        }
        if next.is_local(w) {
            next.local = List::without(next.local.as_ref(), w);
        }
    }

    fn index_service(&mut self, s: &Arc<Service>) {
        if let Some(bulk) = &mut self.bulk {
            bulk.services.push(s.clone());
            return;
        }
        for key in vip_keys(s) {
            self.next
                .services_by_vip
                .update(key, |l| Some(List::with(l, s, by_service_key)));
        }
        if !s.cidr_vips.is_empty() {
            let cidr = &mut self.next.cidr_services;
            *cidr = Some(List::with(cidr.as_ref(), s, by_service_key));
        }
    }

    fn unindex_service(&mut self, s: &Arc<Service>) {
        if let Some(bulk) = &mut self.bulk {
            bulk.forget(s);
            return;
        }
        for key in vip_keys(s) {
            self.next
                .services_by_vip
                .update(key, |l| List::without(l, s));
        }
        if !s.cidr_vips.is_empty() {
            let cidr = &mut self.next.cidr_services;
            *cidr = List::without(cidr.as_ref(), s);
        }
    }
}

/// The `workloads_by_ip` keys of `w`: none for a host-network workload, which owns no IP.
fn ip_keys(w: &Workload) -> impl Iterator<Item = NetworkAddress> + '_ {
    let ips = match w.network_mode {
        NetworkMode::HostNetwork => &[][..],
        _ => &w.workload_ips[..],
    };
    ips.iter().map(|ip| NetworkAddress {
        network: w.network.clone(),
        address: canonical_ip(*ip),
    })
}

/// The `services_by_vip` keys of `s`.
fn vip_keys(s: &Service) -> impl Iterator<Item = NetworkAddress> + '_ {
    s.vips.iter().map(|vip| NetworkAddress {
        network: vip.network.clone(),
        address: canonical_ip(vip.address),
    })
}

/// The `pods` key of `w`: (namespace, name).
fn pod_key(w: &Workload) -> (Strng, Strng) {
    (w.namespace.clone(), w.name.clone())
}

fn by_uid(a: &Workload, b: &Workload) -> Ordering {
    a.uid.cmp(&b.uid)
}

fn by_service_key(a: &Service, b: &Service) -> Ordering {
    (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname))
}

/// The preferred owner of an IP sorts first: pods, then HBONE workloads, then by uid.
fn preference(a: &Workload, b: &Workload) -> Ordering {
    let rank = |w: &Workload| {
        (
            w.uid.contains("//Pod/"),
            w.protocol == super::model::TunnelProtocol::Hbone,
        )
    };
    rank(b).cmp(&rank(a)).then_with(|| a.uid.cmp(&b.uid))
}

fn intern_gateway(i: &mut Interner, g: Option<&mut GatewayAddress>) {
    match g.map(|g| &mut g.destination) {
        Some(GatewayDestination::Address(a)) => i.intern(&mut a.network),
        Some(GatewayDestination::Hostname(h)) => {
            i.intern(&mut h.namespace);
            i.intern(&mut h.hostname);
        }
        None => {}
    }
}

/// Replaces the workload's repeated strings by their shared copies (all but uid and name).
pub(super) fn intern_workload(i: &mut Interner, w: &mut Workload) {
    for s in [
        &mut w.namespace,
        &mut w.hostname,
        &mut w.network,
        &mut w.trust_domain,
        &mut w.service_account,
        &mut w.node,
        &mut w.canonical_name,
        &mut w.canonical_revision,
        &mut w.workload_type,
        &mut w.workload_name,
        &mut w.cluster_id,
        &mut w.locality.region,
        &mut w.locality.zone,
        &mut w.locality.subzone,
    ] {
        i.intern(s);
    }
    intern_gateway(i, w.waypoint.as_deref_mut());
    intern_gateway(i, w.network_gateway.as_deref_mut());
    for p in &mut w.authorization_policies {
        i.intern(p);
    }
    if !w.services.is_empty() {
        w.services = std::mem::take(&mut w.services)
            .into_iter()
            .map(|(mut k, v)| {
                i.intern(&mut k);
                (k, v)
            })
            .collect();
    }
}

/// Replaces the service's repeated strings by their shared copies.
pub(super) fn intern_service(i: &mut Interner, s: &mut Service) {
    i.intern(&mut s.namespace);
    for v in &mut s.vips {
        i.intern(&mut v.network);
    }
    for v in &mut s.cidr_vips {
        i.intern(&mut v.network);
    }
    for san in &mut s.subject_alt_names {
        i.intern(san);
    }
    intern_gateway(i, s.waypoint.as_mut());
    for w in &mut s.weighted_waypoints {
        match &mut w.destination.destination {
            GatewayDestination::Address(a) => i.intern(&mut a.network),
            GatewayDestination::Hostname(h) => {
                i.intern(&mut h.namespace);
                i.intern(&mut h.hostname);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::model::{CidrVip, TunnelProtocol, VecMap};
    use super::*;

    use crate::testkit::rng::Xorshift as Rng;

    /// IPs from a small pool, so that workloads share them; now and then an IPv4-mapped
    /// IPv6 form of one, or the same IP twice.
    fn ips(r: &mut Rng) -> Vec<IpAddr> {
        let mut v = Vec::new();
        for _ in 0..r.below(3) {
            let ip = Ipv4Addr::new(10, 0, 0, r.below(40) as u8);
            v.push(match r.below(6) {
                0 => IpAddr::V6(ip.to_ipv6_mapped()),
                1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, r.below(9) as u16)),
                _ => IpAddr::V4(ip),
            });
            if r.below(8) == 0 {
                v.push(v[v.len() - 1]);
            }
        }
        v
    }

    fn workload(r: &mut Rng) -> Workload {
        let i = r.below(300);
        let kind = if r.below(4) == 0 {
            "WorkloadEntry"
        } else {
            "Pod"
        };
        let services: VecMap<Strng, BTreeMap<u16, u16>> = (0..r.below(3))
            .map(|_| {
                let s = r.below(12);
                (
                    format!("ns/svc-{s}.ns.svc").into(),
                    BTreeMap::from([(80, 8080)]),
                )
            })
            .collect();
        Workload {
            uid: format!("c//{kind}/ns-{}/w-{i}", i % 4).into(),
            // Pod names repeat across uids (the same pod seen through two clusters).
            name: format!("w-{}", i % 150).into(),
            namespace: format!("ns-{}", i % 4).into(),
            network: ["", "net-b"][r.below(2) as usize].into(),
            workload_ips: ips(r),
            protocol: [TunnelProtocol::Tcp, TunnelProtocol::Hbone][r.below(2) as usize],
            network_mode: if r.below(10) == 0 {
                NetworkMode::HostNetwork
            } else {
                NetworkMode::Standard
            },
            node: format!("node-{}", r.below(3)).into(),
            services,
            ..Default::default()
        }
    }

    fn service(r: &mut Rng) -> Service {
        let i = r.below(40);
        let vips = (0..r.below(3))
            .map(|_| NetworkAddress {
                network: ["", "net-b"][r.below(2) as usize].into(),
                address: IpAddr::V4(Ipv4Addr::new(172, 16, 0, r.below(10) as u8)),
            })
            .collect();
        Service {
            name: format!("svc-{i}").into(),
            namespace: format!("ns-{}", i % 3).into(),
            hostname: format!("svc-{i}.ns-{}.svc", i % 3).into(),
            vips,
            // One in four covers a range (a ServiceEntry's CIDR address).
            cidr_vips: match r.below(4) {
                0 => vec![CidrVip {
                    network: "".into(),
                    address: IpAddr::V4(Ipv4Addr::new(10, r.below(4) as u8, 0, 0)),
                    prefix_len: 16,
                }],
                _ => Vec::new(),
            },
            ports: BTreeMap::from([(80, r.below(3) as u16 + 8080)]),
            subject_alt_names: Vec::new(),
            waypoint: None,
            weighted_waypoints: Vec::new(),
            load_balancer: None,
            ip_families: Default::default(),
            canonical: r.below(2) == 0,
            visibility: Default::default(),
        }
    }

    /// Every index, as sorted text lines: key → the uids or service keys of its list, in
    /// the list's order.
    fn dump(s: &Snapshot) -> Vec<String> {
        let mut lines = Vec::new();
        for (k, w) in s.workloads.iter() {
            lines.push(format!("workload {k} → {}", w.uid));
        }
        for (k, l) in s.workloads_by_ip.iter() {
            let uids: Vec<&str> = l.as_slice().iter().map(|w| &*w.uid).collect();
            lines.push(format!("ip {}/{} → {uids:?}", k.network, k.address));
        }
        for (k, v) in s.services.iter() {
            lines.push(format!("service {k} → {}", v.key()));
        }
        for (k, l) in s.services_by_vip.iter() {
            let keys: Vec<String> = l.as_slice().iter().map(|s| s.key()).collect();
            lines.push(format!("vip {}/{} → {keys:?}", k.network, k.address));
        }
        for ((ns, name), l) in s.pods.iter() {
            let uids: Vec<&str> = l.as_slice().iter().map(|w| &*w.uid).collect();
            lines.push(format!("pod {ns}/{name} → {uids:?}"));
        }
        for (k, l) in s.endpoints.iter() {
            let uids: Vec<&str> = l.as_slice().iter().map(|w| &*w.uid).collect();
            lines.push(format!("endpoints {k} → {uids:?}"));
        }
        let uids: Vec<&str> = s.local_workloads().iter().map(|w| &*w.uid).collect();
        lines.push(format!("local {:?} → {uids:?}", s.local_node()));
        let keys: Vec<String> = s.cidr_services().iter().map(|s| s.key()).collect();
        lines.push(format!("cidr → {keys:?}"));
        lines.sort();
        lines
    }

    /// The same inserts, replacements (changed or resent unchanged) and removals, applied to
    /// an empty builder prepared for a bulk load and to one kept up to date per change, give
    /// the same generation: every index, every list in the same order, each item once.
    #[test]
    fn a_bulk_load_indexes_as_per_insert_updates_do() {
        for seed in 1..=20u64 {
            let mut r = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // The node's own list is kept too (the generator spreads workloads over node-0..2).
            let empty = Snapshot::for_node(Some("node-1"));
            let mut bulk = SnapshotBuilder::from_snapshot(&empty);
            bulk.reserve(200, 40);
            assert!(bulk.bulk.is_some());
            let mut each = SnapshotBuilder::from_snapshot(&empty);
            for _ in 0..600 {
                match r.below(10) {
                    0..=5 => {
                        let w = workload(&mut r);
                        bulk.insert_workload(w.clone());
                        each.insert_workload(w);
                    }
                    6..=7 => {
                        let s = service(&mut r);
                        bulk.insert_service(s.clone());
                        each.insert_service(s);
                    }
                    _ => {
                        let name = match r.below(2) {
                            0 => {
                                let i = r.below(300);
                                format!("c//Pod/ns-{}/w-{i}", i % 4)
                            }
                            _ => {
                                let i = r.below(40);
                                format!("ns-{}/svc-{i}.ns-{}.svc", i % 3, i % 3)
                            }
                        };
                        assert_eq!(bulk.remove_address(&name), each.remove_address(&name));
                    }
                }
            }
            // Nothing was indexed per insert.
            assert_eq!(bulk.next.index_sizes()[1], 0, "seed {seed}");
            let (bulk, each) = (bulk.build(1), each.build(1));
            let (b, e) = (dump(&bulk), dump(&each));
            let first = b.iter().zip(&e).position(|(x, y)| x != y);
            assert!(
                b == e,
                "seed {seed}: {} vs {} lines, first difference: {:?} vs {:?}",
                b.len(),
                e.len(),
                first.map(|i| &b[i]),
                first.map(|i| &e[i])
            );
            assert!(bulk.index_sizes().iter().all(|n| *n > 0), "seed {seed}");
            // The node's list is exactly its workloads, by uid, in both ways of building.
            let mut on_node: Vec<&str> = each
                .workloads()
                .filter(|w| &*w.node == "node-1")
                .map(|w| &*w.uid)
                .collect();
            on_node.sort();
            let listed: Vec<&str> = each.local_workloads().iter().map(|w| &*w.uid).collect();
            assert_eq!(listed, on_node, "seed {seed}");
            assert!(!listed.is_empty(), "seed {seed}");
            // The CIDR list is exactly the services with a CIDR VIP, by key.
            let mut with_cidr: Vec<String> = each
                .services()
                .filter(|s| !s.cidr_vips.is_empty())
                .map(|s| s.key())
                .collect();
            with_cidr.sort();
            let listed: Vec<String> = each.cidr_services().iter().map(|s| s.key()).collect();
            assert_eq!(listed, with_cidr, "seed {seed}");
            assert!(!listed.is_empty(), "seed {seed}");
        }
    }

    #[test]
    fn a_builder_holding_entries_is_not_bulk_loaded() {
        let mut r = Rng::new(7);
        let mut b = SnapshotBuilder::default();
        b.insert_workload(workload(&mut r));
        b.reserve(100_000, 20_000);
        assert!(b.bulk.is_none());
        // A cleared builder is empty again.
        b.clear();
        b.reserve(100_000, 20_000);
        assert!(b.bulk.is_some());
    }
}
