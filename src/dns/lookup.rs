//! Which mesh addresses answer a name: name expansion, hostname matching and address filtering.
//!
//! Pure functions over a snapshot: no I/O, no clock, no randomness, so every rule is a table
//! test. The server shuffles what comes out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::state::model::{HealthStatus, IpFamilies, Service, Strng, Visibility, Workload};
use crate::state::Snapshot;

/// The address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `A` records.
    V4,
    /// `AAAA` records.
    V6,
}

impl Family {
    fn holds(self, ip: &IpAddr) -> bool {
        match self {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// The cluster-wide facts name expansion needs.
#[derive(Debug, Clone)]
pub struct Zone {
    /// `CLUSTER_DOMAIN`, lowercase, without dots at either end.
    pub domain: Arc<str>,
    /// Whether AAAA queries may be answered with IPv6 addresses (`IPV6_ENABLED`).
    pub ipv6: bool,
    /// `PREFERED_SERVICE_NAMESPACE`: the tie-break among services of other namespaces sharing
    /// a hostname.
    pub preferred_namespace: Option<Arc<str>>,
}

/// One name a query may stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Lowercase, no trailing dot.
    pub name: String,
    /// Found by removing one of the pod's search domains from the query: an answer for it
    /// carries a CNAME from the query to this name.
    pub stripped: bool,
}

/// What the mesh says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A mesh service owns the name: answer authoritatively with `addrs` (possibly none: then
    /// an empty NOERROR), preceded by a CNAME to `cname` when set.
    Mesh {
        /// The name the addresses belong to, when it is not the query's.
        cname: Option<String>,
        /// Addresses of the asked family, unshuffled.
        addrs: Vec<IpAddr>,
    },
    /// Not a mesh name: forward it.
    NotMesh,
}

/// The per-pod search domains: `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`, in that order.
pub fn search_domains(namespace: &str, domain: &str) -> [String; 3] {
    [
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ]
}

/// Every name `query` (lowercase, no trailing dot) may stand for, for a client in `namespace`,
/// most specific first and without duplicates: the query itself and its Kubernetes expansions,
/// then, for the first search domain the query ends with, the query without it and that
/// name's expansions.
pub fn aliases(query: &str, namespace: &str, domain: &str) -> Vec<Alias> {
    let mut out: Vec<Alias> = Vec::with_capacity(6);
    let mut push = |name: String, stripped: bool| {
        if !name.is_empty() && !out.iter().any(|a| a.name == name) {
            out.push(Alias { name, stripped });
        }
    };
    push(query.to_owned(), false);
    if let Some(e) = kubernetes_expansion(query, namespace, domain) {
        push(e, false);
    }
    for sd in search_domains(namespace, domain) {
        let Some(stripped) = query
            .strip_suffix(sd.as_str())
            .and_then(|s| s.strip_suffix('.'))
        else {
            continue;
        };
        if let Some(e) = kubernetes_expansion(stripped, namespace, domain) {
            // `name.ns.svc.<domain>` stripped of `ns.svc.<domain>` expands back to the query:
            // that is the same name, not an alias needing a CNAME.
            push(e.clone(), e != query);
        }
        push(stripped.to_owned(), true);
        break;
    }
    out
}

/// The cluster FQDN a short Kubernetes name stands for: `name` → `name.<ns>.svc.<domain>`,
/// `name.ns` and `name.ns.svc` → `name.ns.svc.<domain>`. Longer names expand to nothing.
pub fn kubernetes_expansion(name: &str, namespace: &str, domain: &str) -> Option<String> {
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    match labels.as_slice() {
        [svc] => Some(format!("{svc}.{namespace}.svc.{domain}")),
        [svc, ns] => Some(format!("{svc}.{ns}.svc.{domain}")),
        [svc, ns, "svc"] => Some(format!("{svc}.{ns}.svc.{domain}")),
        _ => None,
    }
}

/// Hostname → services, built once per snapshot generation.
#[derive(Debug, Default)]
pub struct HostIndex {
    by_host: HashMap<Strng, Vec<Arc<Service>>>,
}

impl HostIndex {
    /// Indexes every service of `snap` by lowercase hostname (each list ordered by namespace).
    pub fn build(snap: &Snapshot) -> HostIndex {
        let mut by_host: HashMap<Strng, Vec<Arc<Service>>> = HashMap::new();
        for s in snap.services() {
            let host: Strng = s.hostname.to_ascii_lowercase().into();
            by_host.entry(host).or_default().push(s.clone());
        }
        for list in by_host.values_mut() {
            list.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        }
        HostIndex { by_host }
    }

    fn get(&self, host: &str) -> &[Arc<Service>] {
        self.by_host
            .get(host)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Shares one [`HostIndex`] among all pods for the current snapshot.
#[derive(Default)]
pub struct IndexCache {
    /// Held only to compare or swap the pointers, never while building.
    current: Mutex<Option<(Weak<Snapshot>, Arc<HostIndex>)>>,
}

impl IndexCache {
    /// The index of `snap`, building it when the snapshot changed since the last call.
    pub fn index(&self, snap: &Arc<Snapshot>) -> Arc<HostIndex> {
        if let Some((s, idx)) = &*self.current.lock() {
            if std::ptr::eq(s.as_ptr(), Arc::as_ptr(snap)) {
                return idx.clone();
            }
        }
        let idx = Arc::new(HostIndex::build(snap));
        *self.current.lock() = Some((Arc::downgrade(snap), idx.clone()));
        idx
    }
}

/// Resolves `query` (lowercase, no trailing dot) for `client` against the mesh.
///
/// Each alias is tried in order, first as an exact hostname, then against wildcard hostnames
/// (`*.example.com`) from the most specific. The first alias owned by a service the client can
/// see wins; its addresses are the VIPs on the client's network, or for a headless cluster
/// service (`*.svc.<domain>` without VIPs) its healthy endpoints' IPs, in the asked family.
pub fn lookup(
    index: &HostIndex,
    snap: &Snapshot,
    client: &Workload,
    query: &str,
    family: Family,
    zone: &Zone,
) -> Lookup {
    for alias in aliases(query, &client.namespace, &zone.domain) {
        let Some(service) = find_service(index, &alias.name, client, zone) else {
            continue;
        };
        let addrs = if zone.ipv6 || family == Family::V4 {
            addresses(snap, service, client, family)
        } else {
            Vec::new()
        };
        return Lookup::Mesh {
            cname: alias.stripped.then_some(alias.name),
            addrs,
        };
    }
    Lookup::NotMesh
}

fn find_service<'a>(
    index: &'a HostIndex,
    name: &str,
    client: &Workload,
    zone: &Zone,
) -> Option<&'a Arc<Service>> {
    if let Some(s) = choose(index.get(name), client, zone) {
        return Some(s);
    }
    let mut rest = name;
    while let Some((_, parent)) = rest.split_once('.') {
        if parent.is_empty() {
            break;
        }
        if let Some(s) = choose(index.get(&format!("*.{parent}")), client, zone) {
            return Some(s);
        }
        rest = parent;
    }
    None
}

/// Among services sharing a hostname: only those the client may see and that DNS can answer
/// for; prefer the client's namespace, then the canonical one, then the one in
/// `PREFERED_SERVICE_NAMESPACE`, then the first by namespace (compat.md §1.6).
fn choose<'a>(
    services: &'a [Arc<Service>],
    client: &Workload,
    zone: &Zone,
) -> Option<&'a Arc<Service>> {
    let preferred = zone.preferred_namespace.as_deref();
    // (in the client's namespace, canonical, in the preferred namespace)
    type Rank = (bool, bool, bool);
    let mut best: Option<(&Arc<Service>, Rank)> = None;
    for s in services {
        let visible = s.visibility == Visibility::Public || s.namespace == client.namespace;
        if !visible || !(has_vips(s) || is_headless(s, zone)) {
            continue;
        }
        let rank = (
            s.namespace == client.namespace,
            s.canonical,
            preferred == Some(&*s.namespace),
        );
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((s, rank));
        }
    }
    best.map(|(s, _)| s)
}

fn has_vips(s: &Service) -> bool {
    !s.vips.is_empty()
}

/// A cluster service without VIPs: DNS answers with its endpoints.
fn is_headless(s: &Service, zone: &Zone) -> bool {
    !has_vips(s)
        && s.hostname
            .to_ascii_lowercase()
            .strip_suffix(&*zone.domain)
            .is_some_and(|h| h.ends_with(".svc."))
}

fn addresses(snap: &Snapshot, s: &Service, client: &Workload, family: Family) -> Vec<IpAddr> {
    let family_allowed = !matches!(
        (s.ip_families, family),
        (IpFamilies::Ipv4Only, Family::V6) | (IpFamilies::Ipv6Only, Family::V4)
    );
    if !family_allowed {
        return Vec::new();
    }
    let mut out: Vec<IpAddr> = Vec::new();
    if has_vips(s) {
        for vip in &s.vips {
            if vip.network == client.network && family.holds(&vip.address) {
                out.push(vip.address);
            }
        }
    } else {
        for w in snap.endpoints(&s.key()) {
            if w.status != HealthStatus::Healthy || w.network != client.network {
                continue;
            }
            for ip in &w.workload_ips {
                if family.holds(ip) && !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
    }
    out
}
