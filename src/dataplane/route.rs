//! Outbound routing: a pure decision over a state snapshot.
//!
//! Given the source and the original destination, decide where the connection goes and how
//! (compat.md §1.2, §1.5, §1.6):
//!
//! 1. A service VIP (exact, else the best CIDR VIP) visible to the source: a service waypoint
//!    gets the connection over HBONE with the original `VIP:port` as `:authority`; a
//!    PASSTHROUGH service goes to the original destination; otherwise one endpoint is chosen
//!    (healthy unless ALLOW_ALL, routing preference ranks for STRICT/FAILOVER, random weighted
//!    by capacity) and the service port is translated (endpoint port map, else the service
//!    target port). No usable endpoint: refuse.
//! 2. A workload IP: its workload waypoint, if any (unless the source *is* that waypoint);
//!    else the workload itself.
//! 3. Anything else: plain TCP to the original destination (passthrough).
//!
//! A workload marked HBONE, and every waypoint, is only ever reached over HBONE. An endpoint
//! (or service waypoint) on another network is reached through its network's east-west
//! gateway with double HBONE ([`Route::DoubleHbone`]): outer HBONE to the gateway, inner HBONE
//! end to end, both with the service's `hostname:port` as `:authority`, as ztunnel does. An
//! endpoint on another network without a gateway is never chosen (it could only be dialled
//! directly), nor is an in-network endpoint with neither an IP nor a hostname. With FAILOVER
//! or STRICT routing preferences led by `Network`, endpoints on this node's network rank above
//! every remote one, so remote networks take traffic only when no local endpoint is usable. An endpoint with only a
//! hostname (a DNS-resolved ServiceEntry) yields [`Route::Resolve`]: the caller resolves the
//! hostname, then [`PendingHost::complete`] finishes the decision.

pub mod inbound;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::seq::IteratorRandom;
use rand::Rng;

use crate::authz::contains;
use crate::identity::Identity;
use crate::state::model::{
    GatewayAddress, GatewayDestination, IpFamilies, IpNet, LoadBalancer, LoadBalancerMode,
    LoadBalancerScope, Service, Strng, TunnelProtocol, Visibility, Workload,
};
use crate::state::{canonical_ip, Snapshot};

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// HBONE to a mesh workload's node proxy, or to a waypoint.
    Hbone {
        /// The peer's HBONE listener (`ip:15008`, or the waypoint's `ip:hbone_mtls_port`).
        dst: SocketAddr,
        /// The `:authority` of the CONNECT: `ip:targetPort` for a workload, the original
        /// destination for a waypoint.
        authority: SocketAddr,
        /// Identities the peer may prove.
        identities: Arc<[Identity]>,
        /// The workload dialled (the waypoint's, via a waypoint).
        workload: Arc<Workload>,
        /// The service the destination was reached through, if any.
        service: Option<Arc<Service>>,
        /// Whether `workload` is a waypoint in front of the real destination.
        waypoint: bool,
    },
    /// Double HBONE to a service endpoint (or service waypoint) on another network: an outer
    /// HBONE stream to that network's east-west gateway, carrying the inner, end-to-end mTLS
    /// HBONE to the destination.
    DoubleHbone {
        /// The gateway's HBONE listener (`ip:hbone_mtls_port`).
        gateway: SocketAddr,
        /// Identities the gateway may prove (outer TLS).
        gateway_identities: Arc<[Identity]>,
        /// The `:authority` of both CONNECTs: the service hostname and the service port.
        authority: Strng,
        /// Identities the destination may prove (inner TLS).
        identities: Arc<[Identity]>,
        /// The remote workload chosen (a waypoint, when the service has one there).
        workload: Arc<Workload>,
        /// The service the destination was reached through.
        service: Arc<Service>,
    },
    /// Plain TCP to a non-mesh workload (or an unknown address: `workload` is `None`).
    Tcp {
        /// Where to connect.
        dst: SocketAddr,
        /// The workload, when known.
        workload: Option<Arc<Workload>>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
    },
    /// The chosen endpoint is known only by hostname: resolve it, then complete the route.
    Resolve(PendingHost),
    /// Refuse the connection.
    Refuse(RefuseReason),
}

/// A route decided up to the address of a hostname-only endpoint.
#[derive(Debug, Clone)]
pub struct PendingHost {
    /// The endpoint (no IPs, a hostname).
    pub workload: Arc<Workload>,
    /// Target port on the endpoint.
    pub port: u16,
    /// The service the endpoint was chosen from.
    pub service: Arc<Service>,
    /// The address the client dialled (its family is preferred).
    dialled: SocketAddr,
    hbone_port: u16,
}

impl PendingHost {
    /// The hostname to resolve.
    pub fn hostname(&self) -> &Strng {
        &self.workload.hostname
    }

    /// The route to one of `addrs` (the hostname's resolved addresses): a random one allowed
    /// by the service's IP families, of the dialled family when there is one. `None` when no
    /// address is allowed.
    pub fn complete(self, rng: &mut impl Rng, addrs: &[IpAddr]) -> Option<Route> {
        let families = self.service.ip_families;
        let allowed = || {
            addrs
                .iter()
                .map(|ip| canonical_ip(*ip))
                .filter(move |ip| family_allowed(families, ip))
        };
        let ip = allowed()
            .filter(|ip| ip.is_ipv4() == self.dialled.is_ipv4())
            .choose(rng)
            .or_else(|| allowed().choose(rng))?;
        Some(to_workload(
            self.workload,
            SocketAddr::new(ip, self.port),
            Some(self.service),
            self.hbone_port,
        ))
    }
}

/// Why a connection is refused at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The service has no usable endpoint.
    NoHealthyUpstream,
    /// The service does not declare the port.
    UnknownServicePort,
    /// The destination names a waypoint that cannot be found or reached.
    UnknownWaypoint,
    /// The endpoint is on another network and its gateway cannot be found.
    UnknownNetworkGateway,
}

/// The source of an outbound connection: the pod the listener belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The pod's workload.
    pub workload: &'a Workload,
    /// The client address's IP (the pod's IP).
    pub ip: IpAddr,
    /// The network this node is on.
    pub network: &'a str,
}

/// Plans the route for `src` connecting to `dst`, using `hbone_port` for peers.
pub fn plan(snap: &Snapshot, src: &Source<'_>, dst: SocketAddr, hbone_port: u16) -> Route {
    plan_with(&mut rand::rng(), snap, src, dst, hbone_port)
}

/// [`plan`] with the random source for endpoint and waypoint choice.
pub fn plan_with(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    dst: SocketAddr,
    hbone_port: u16,
) -> Route {
    let dst = SocketAddr::new(canonical_ip(dst.ip()), dst.port());
    if let Some(svc) = find_service(snap, src, dst.ip()) {
        if let Some(gw) = service_waypoint(rng, &svc) {
            if !is_from(snap, gw, src) {
                return via_waypoint(rng, snap, src, gw, dst, Some(svc.clone()));
            }
        }
        if lb_mode(&svc) == LoadBalancerMode::Passthrough {
            return Route::Tcp {
                dst,
                workload: None,
                service: Some(svc),
            };
        }
        if !svc.ports.contains_key(&dst.port()) {
            return Route::Refuse(RefuseReason::UnknownServicePort);
        }
        let Some((w, port)) = pick_endpoint(rng, snap, src, &svc, dst.port(), Mode::Service) else {
            return Route::Refuse(RefuseReason::NoHealthyUpstream);
        };
        if w.network != src.workload.network {
            return through_gateway(rng, snap, src, w, svc, dst);
        }
        if w.workload_ips.is_empty() {
            return Route::Resolve(PendingHost {
                workload: w,
                port,
                service: svc,
                dialled: dst,
                hbone_port,
            });
        }
        let Some(ip) = pick_ip(&w, dst, svc.ip_families) else {
            return Route::Refuse(RefuseReason::NoHealthyUpstream);
        };
        return to_workload(w, SocketAddr::new(ip, port), Some(svc), hbone_port);
    }
    match snap.workload_by_ip(src.network, dst.ip()) {
        Some(w) => {
            if let Some(gw) = &w.waypoint {
                if !is_from(snap, gw, src) {
                    return via_waypoint(rng, snap, src, gw, dst, None);
                }
            }
            to_workload(w.clone(), dst, None, hbone_port)
        }
        None => Route::Tcp {
            dst,
            workload: None,
            service: None,
        },
    }
}

fn to_workload(
    w: Arc<Workload>,
    target: SocketAddr,
    service: Option<Arc<Service>>,
    hbone_port: u16,
) -> Route {
    match w.protocol {
        TunnelProtocol::Hbone => Route::Hbone {
            dst: SocketAddr::new(target.ip(), hbone_port),
            authority: target,
            identities: identities(&w, service.as_deref()),
            workload: w,
            service,
            waypoint: false,
        },
        TunnelProtocol::Tcp => Route::Tcp {
            dst: target,
            workload: Some(w),
            service,
        },
    }
}

/// The workload's identity, then the service's `subject_alt_names` that parse as identities.
fn identities(w: &Workload, svc: Option<&Service>) -> Arc<[Identity]> {
    let mut ids: Vec<Identity> = w.identity().into_iter().collect();
    if let Some(s) = svc {
        for san in &s.subject_alt_names {
            match san.parse::<Identity>() {
                Ok(id) if !ids.contains(&id) => ids.push(id),
                Ok(_) => {}
                Err(e) => tracing::debug!(%san, error = %e, "ignoring unusable subject alt name"),
            }
        }
    }
    ids.into()
}

/// The service at `ip` for this source: an exact VIP, else the best CIDR VIP containing it.
pub(crate) fn find_service(snap: &Snapshot, src: &Source<'_>, ip: IpAddr) -> Option<Arc<Service>> {
    let visible = |s: &&Arc<Service>| {
        s.visibility == Visibility::Public || s.namespace == src.workload.namespace
    };
    let exact = snap
        .services_by_vip(src.network, ip)
        .iter()
        .filter(visible)
        // Same namespace first, then canonical; among equals, the first by key.
        .rev()
        .max_by_key(|s| (s.namespace == src.workload.namespace, s.canonical));
    if let Some(s) = exact {
        return Some(s.clone());
    }
    // A CIDR VIP takes precedence over a workload IP it covers, so every destination that is
    // not an exact VIP is checked against the services with CIDR VIPs (the snapshot lists
    // them apart: few, against every service of the mesh).
    snap.cidr_services()
        .iter()
        .filter(visible)
        .filter_map(|s| {
            let len = s
                .cidr_vips
                .iter()
                .filter(|c| *c.network == *src.network)
                .filter(|c| {
                    let net = IpNet {
                        address: c.address,
                        prefix_len: c.prefix_len,
                    };
                    contains(&net, ip)
                })
                .map(|c| c.prefix_len)
                .max()?;
            Some((s, len))
        })
        .max_by(|(a, la), (b, lb)| {
            let rank = |s: &Service, l: u8| (s.namespace == src.workload.namespace, l, s.canonical);
            rank(a, *la)
                .cmp(&rank(b, *lb))
                // Deterministic among equals: the smaller key wins.
                .then_with(|| (&b.namespace, &b.hostname).cmp(&(&a.namespace, &a.hostname)))
        })
        .map(|(s, _)| s.clone())
}

fn lb_mode(svc: &Service) -> LoadBalancerMode {
    svc.load_balancer
        .as_ref()
        .map_or(LoadBalancerMode::Standard, |lb| lb.mode)
}

/// The service's waypoint: sampled by weight from `weighted_waypoints`, else `waypoint`.
fn service_waypoint<'s>(rng: &mut impl Rng, svc: &'s Service) -> Option<&'s GatewayAddress> {
    let total: u64 = svc
        .weighted_waypoints
        .iter()
        .map(|w| u64::from(w.weight))
        .sum();
    if total == 0 {
        return svc.waypoint.as_ref();
    }
    let mut pick = rng.random_range(0..total);
    for w in &svc.weighted_waypoints {
        let weight = u64::from(w.weight);
        if pick < weight {
            return Some(&w.destination);
        }
        pick -= weight;
    }
    svc.waypoint.as_ref()
}

/// Whether the source is (one of the workloads behind) the gateway `gw`: same identity and
/// the source IP is one of its IPs. Traffic from a waypoint must not loop back into it.
fn is_from(snap: &Snapshot, gw: &GatewayAddress, src: &Source<'_>) -> bool {
    let Some(src_id) = src.workload.identity() else {
        return false;
    };
    let is_it =
        |w: &Workload| w.identity().as_ref() == Some(&src_id) && w.workload_ips.contains(&src.ip);
    match &gw.destination {
        GatewayDestination::Address(a) => {
            if let Some(w) = snap.workload_by_ip(&a.network, a.address) {
                return is_it(w);
            }
            snap.services_by_vip(&a.network, a.address)
                .iter()
                .any(|s| snap.endpoints(&s.key()).iter().any(|w| is_it(w)))
        }
        GatewayDestination::Hostname(h) => {
            let key = format!("{}/{}", h.namespace, h.hostname);
            if snap.service(&key).is_some() {
                return snap.endpoints(&key).iter().any(|w| is_it(w));
            }
            workload_by_hostname(snap, &h.namespace, &h.hostname).is_some_and(|w| is_it(w))
        }
    }
}

fn workload_by_hostname<'a>(snap: &'a Snapshot, ns: &str, host: &str) -> Option<&'a Arc<Workload>> {
    snap.workloads()
        .filter(|w| *w.hostname == *host && *w.namespace == *ns)
        .min_by(|a, b| a.uid.cmp(&b.uid))
}

/// HBONE to the waypoint `gw` with the original destination as `:authority`.
fn via_waypoint(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    gw: &GatewayAddress,
    original: SocketAddr,
    service: Option<Arc<Service>>,
) -> Route {
    let resolved = resolve_gateway(rng, snap, src, gw, original, Mode::Waypoint);
    let Some((w, dst, wp_service)) = resolved else {
        return Route::Refuse(RefuseReason::UnknownWaypoint);
    };
    if w.network != src.workload.network {
        // A service's waypoint on another network is reached through that network's gateway
        // (the inner tunnel ends at the waypoint); a workload waypoint never is.
        return match service {
            Some(svc) if w.network_gateway.is_some() => {
                through_gateway(rng, snap, src, w, svc, original)
            }
            _ => Route::Refuse(RefuseReason::UnknownWaypoint),
        };
    }
    Route::Hbone {
        dst,
        authority: original,
        identities: identities(&w, wp_service.as_deref()),
        workload: w,
        service,
        waypoint: true,
    }
}

/// Double HBONE to `w`, a workload on another network reached through its network gateway,
/// for the service `svc` the client addressed at `original` (compat.md §1.5): the outer
/// tunnel ends at the gateway (its identities), the inner one at `w` (its identity and the
/// service's SANs); both CONNECTs name `hostname:port`, which is how the gateway picks where
/// to forward without opening the inner tunnel.
fn through_gateway(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    w: Arc<Workload>,
    svc: Arc<Service>,
    original: SocketAddr,
) -> Route {
    let Some(gw) = w.network_gateway.as_ref() else {
        return Route::Refuse(RefuseReason::UnknownNetworkGateway);
    };
    let Some((gateway, gateway_identities)) = network_gateway(rng, snap, src, gw, original) else {
        return Route::Refuse(RefuseReason::UnknownNetworkGateway);
    };
    Route::DoubleHbone {
        gateway,
        gateway_identities,
        authority: format!("{}:{}", svc.hostname, original.port()).into(),
        identities: identities(&w, Some(&svc)),
        workload: w,
        service: svc,
    }
}

/// Where a network gateway listens, and who it may prove to be (see [`resolve_gateway`]).
fn network_gateway(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    gw: &GatewayAddress,
    original: SocketAddr,
) -> Option<(SocketAddr, Arc<[Identity]>)> {
    let (w, dst, svc) = resolve_gateway(rng, snap, src, gw, original, Mode::Gateway)?;
    Some((dst, identities(&w, svc.as_deref())))
}

/// The workload behind a waypoint or network gateway reference, where to reach it, and the
/// service it was chosen from: by address, the workload at that address on the reference's
/// network (at `hbone_mtls_port`), else an endpoint of the service with that VIP there; by
/// hostname, an endpoint of that service, else the workload with that hostname. Endpoint
/// addresses are of the family of `original` when they have one.
fn resolve_gateway(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    gw: &GatewayAddress,
    original: SocketAddr,
    mode: Mode,
) -> Option<(Arc<Workload>, SocketAddr, Option<Arc<Service>>)> {
    let port = gw.hbone_mtls_port;
    let endpoint_of = |rng: &mut _, s: &Arc<Service>| {
        let (w, target) = pick_endpoint(rng, snap, src, s, port, mode)?;
        let ip = pick_ip(&w, original, s.ip_families)?;
        Some((w, SocketAddr::new(ip, target), Some(s.clone())))
    };
    match &gw.destination {
        GatewayDestination::Address(a) => match snap.workload_by_ip(&a.network, a.address) {
            Some(w) => Some((w.clone(), SocketAddr::new(a.address, port), None)),
            None => {
                let s = snap.services_by_vip(&a.network, a.address).first()?.clone();
                endpoint_of(rng, &s)
            }
        },
        GatewayDestination::Hostname(h) => {
            let key = format!("{}/{}", h.namespace, h.hostname);
            if let Some(s) = snap.service(&key).cloned() {
                return endpoint_of(rng, &s);
            }
            let w = workload_by_hostname(snap, &h.namespace, &h.hostname)?;
            let ip = pick_ip(w, original, IpFamilies::Automatic)?;
            Some((w.clone(), SocketAddr::new(ip, port), None))
        }
    }
}

/// How an endpoint's port is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A client addressed the service port: it must be declared on the service.
    Service,
    /// The service fronts a waypoint reached at its HBONE port, which needs no declaration
    /// when the waypoint has an application tunnel.
    Waypoint,
    /// The service fronts a network gateway: its endpoints are on their own network, which
    /// the gateway is the way into.
    Gateway,
}

/// A random usable endpoint of `svc` for `svc_port`, weighted by capacity among the best
/// routing-preference rank, with its target port.
fn pick_endpoint(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    svc: &Service,
    svc_port: u16,
    mode: Mode,
) -> Option<(Arc<Workload>, u16)> {
    let key = svc.key();
    let target = svc.ports.get(&svc_port).copied().filter(|p| *p != 0);
    let usable = snap
        .endpoints(&key)
        .iter()
        .filter(|w| svc.admits(w))
        .filter(|w| {
            let local = w.network == src.workload.network;
            match mode {
                // A gateway's endpoints are reached directly, on whatever network they are.
                Mode::Gateway => !w.workload_ips.is_empty(),
                // On another network only through its gateway (which needs no address of the
                // endpoint); here, a hostname-only endpoint is resolved by the caller and
                // waypoints need an address.
                _ if !local => w.network_gateway.is_some(),
                Mode::Service => !w.workload_ips.is_empty() || !w.hostname.is_empty(),
                Mode::Waypoint => !w.workload_ips.is_empty(),
            }
        })
        .filter_map(|w| {
            let mapped = w
                .services
                .get(key.as_str())
                .and_then(|m| m.get(&svc_port))
                .copied()
                .filter(|p| *p != 0);
            let port = match mode {
                Mode::Service | Mode::Gateway => mapped.or(target)?,
                Mode::Waypoint => mapped.or(target).or_else(|| {
                    w.application_tunnel
                        .as_ref()
                        .and_then(|t| t.port)
                        .map(|_| svc_port)
                })?,
            };
            Some((w, port))
        });
    let candidates: Vec<(&Arc<Workload>, u16)> = match &svc.load_balancer {
        Some(lb)
            if matches!(
                lb.mode,
                LoadBalancerMode::Strict | LoadBalancerMode::Failover
            ) =>
        {
            let ranked: Vec<_> = usable
                .filter_map(|(w, port)| rank(lb, src.workload, w).map(|r| (r, w, port)))
                .collect();
            let best = ranked.iter().map(|(r, ..)| *r).max()?;
            ranked
                .into_iter()
                .filter(|(r, ..)| *r == best)
                .map(|(_, w, port)| (w, port))
                .collect()
        }
        _ => usable.collect(),
    };
    let total: u64 = candidates
        .iter()
        .map(|(w, _)| u64::from(w.capacity.max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.random_range(0..total);
    for (w, port) in candidates {
        let weight = u64::from(w.capacity.max(1));
        if pick < weight {
            return Some((w.clone(), port));
        }
        pick -= weight;
    }
    None
}

/// How well `w` matches `src` under `lb`'s routing preferences: the number of leading
/// scopes both share; `None` when STRICT requires all of them and some differ. When `Network`
/// leads the preferences, it does not end the count for a remote endpoint (the next scopes
/// still rank remote endpoints among themselves), and a local endpoint gets the count of
/// every scope on top, so any local endpoint outranks every remote one (ztunnel's ranking).
fn rank(lb: &LoadBalancer, src: &Workload, w: &Workload) -> Option<usize> {
    let prefs = &lb.routing_preferences;
    let network_first = prefs.first() == Some(&LoadBalancerScope::Network);
    let mut rank = 0;
    let mut bonus = 0;
    for scope in prefs {
        let same = match scope {
            LoadBalancerScope::Region => src.locality.region == w.locality.region,
            LoadBalancerScope::Zone => src.locality.zone == w.locality.zone,
            LoadBalancerScope::Subzone => src.locality.subzone == w.locality.subzone,
            LoadBalancerScope::Node => src.node == w.node,
            LoadBalancerScope::Cluster => src.cluster_id == w.cluster_id,
            LoadBalancerScope::Network => {
                let same = src.network == w.network;
                if network_first {
                    if !same {
                        continue;
                    }
                    bonus = prefs.len() - 1;
                }
                same
            }
        };
        if !same {
            break;
        }
        rank += 1;
    }
    if lb.mode == LoadBalancerMode::Strict && rank != prefs.len() {
        return None;
    }
    Some(rank + bonus)
}

/// The address to reach `w` at: the one the client dialled if it is the workload's, else one
/// allowed by the service's IP families, preferring the dialled family.
fn pick_ip(w: &Workload, dialled: SocketAddr, families: IpFamilies) -> Option<IpAddr> {
    let dialled_ip = canonical_ip(dialled.ip());
    if w.workload_ips
        .iter()
        .any(|ip| canonical_ip(*ip) == dialled_ip)
    {
        return Some(dialled_ip);
    }
    let mut ips = w
        .workload_ips
        .iter()
        .filter(|ip| family_allowed(families, ip));
    let first = ips.clone().next().copied();
    ips.find(|ip| ip.is_ipv4() == dialled.is_ipv4())
        .copied()
        .or(first)
        .map(canonical_ip)
}

/// Whether a service restricted to `families` may be reached at `ip`.
fn family_allowed(families: IpFamilies, ip: &IpAddr) -> bool {
    match families {
        IpFamilies::Ipv4Only => ip.is_ipv4(),
        IpFamilies::Ipv6Only => ip.is_ipv6(),
        IpFamilies::Automatic | IpFamilies::Dual => true,
    }
}
