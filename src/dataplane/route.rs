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
//! A workload marked HBONE, and every waypoint, is only ever reached over HBONE. Endpoints on
//! another network (reachable only through an east-west gateway, which ztun does not do) and
//! endpoints with neither an IP nor a hostname are never chosen. An endpoint with only a
//! hostname (a DNS-resolved ServiceEntry) yields [`Route::Resolve`]: the caller resolves the
//! hostname, then [`PendingHost::complete`] finishes the decision.

pub mod inbound;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::seq::IteratorRandom;
use rand::Rng;

use crate::dataplane::policy::contains;
use crate::identity::Identity;
use crate::state::model::{
    GatewayAddress, GatewayDestination, HealthPolicy, HealthStatus, IpFamilies, IpNet,
    LoadBalancer, LoadBalancerMode, LoadBalancerScope, Service, Strng, TunnelProtocol, Visibility,
    Workload,
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
    // not an exact VIP pays this scan over the services (O(services)). It belongs in a
    // `Snapshot` index built once per generation.
    snap.services()
        .filter(|s| !s.cidr_vips.is_empty())
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
    let port = gw.hbone_mtls_port;
    let resolved: Option<(Arc<Workload>, SocketAddr, Option<Arc<Service>>)> = match &gw.destination
    {
        GatewayDestination::Address(a) => {
            if let Some(w) = snap.workload_by_ip(&a.network, a.address) {
                Some((w.clone(), SocketAddr::new(a.address, port), None))
            } else {
                snap.services_by_vip(&a.network, a.address)
                    .first()
                    .and_then(|s| waypoint_endpoint(rng, snap, src, s, port, original))
            }
        }
        GatewayDestination::Hostname(h) => {
            let key = format!("{}/{}", h.namespace, h.hostname);
            if let Some(s) = snap.service(&key) {
                waypoint_endpoint(rng, snap, src, s, port, original)
            } else {
                workload_by_hostname(snap, &h.namespace, &h.hostname).and_then(|w| {
                    let ip = pick_ip(w, original, IpFamilies::Automatic)?;
                    Some((w.clone(), SocketAddr::new(ip, port), None))
                })
            }
        }
    };
    let Some((w, dst, wp_service)) = resolved else {
        return Route::Refuse(RefuseReason::UnknownWaypoint);
    };
    if w.network != src.workload.network {
        return Route::Refuse(RefuseReason::UnknownWaypoint);
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

/// One endpoint of the waypoint service `s` for its port `hbone_port`, with an address of
/// the family of `original` when it has one.
fn waypoint_endpoint(
    rng: &mut impl Rng,
    snap: &Snapshot,
    src: &Source<'_>,
    s: &Arc<Service>,
    hbone_port: u16,
    original: SocketAddr,
) -> Option<(Arc<Workload>, SocketAddr, Option<Arc<Service>>)> {
    let (w, port) = pick_endpoint(rng, snap, src, s, hbone_port, Mode::Waypoint)?;
    let ip = pick_ip(&w, original, s.ip_families)?;
    Some((w, SocketAddr::new(ip, port), Some(s.clone())))
}

/// How an endpoint's port is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A client addressed the service port: it must be declared on the service.
    Service,
    /// The service fronts a waypoint reached at its HBONE port, which needs no declaration
    /// when the waypoint has an application tunnel.
    Waypoint,
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
    let allow_all = svc
        .load_balancer
        .as_ref()
        .is_some_and(|lb| lb.health_policy == HealthPolicy::AllowAll);
    let key = svc.key();
    let target = svc.ports.get(&svc_port).copied().filter(|p| *p != 0);
    let usable = snap
        .endpoints(&key)
        .iter()
        .filter(|w| allow_all || w.status == HealthStatus::Healthy)
        .filter(|w| w.network == src.workload.network)
        // A hostname-only endpoint is resolved by the caller; waypoints need an address.
        .filter(|w| !w.workload_ips.is_empty() || (mode == Mode::Service && !w.hostname.is_empty()))
        .filter_map(|w| {
            let mapped = w
                .services
                .get(key.as_str())
                .and_then(|m| m.get(&svc_port))
                .copied()
                .filter(|p| *p != 0);
            let port = match mode {
                Mode::Service => mapped.or(target)?,
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

/// How many leading routing preferences `w` shares with `src`; `None` when STRICT requires
/// all of them and some differ.
fn rank(lb: &LoadBalancer, src: &Workload, w: &Workload) -> Option<usize> {
    let same = |scope: &LoadBalancerScope| match scope {
        LoadBalancerScope::Region => src.locality.region == w.locality.region,
        LoadBalancerScope::Zone => src.locality.zone == w.locality.zone,
        LoadBalancerScope::Subzone => src.locality.subzone == w.locality.subzone,
        LoadBalancerScope::Node => src.node == w.node,
        LoadBalancerScope::Cluster => src.cluster_id == w.cluster_id,
        LoadBalancerScope::Network => src.network == w.network,
    };
    let r = lb
        .routing_preferences
        .iter()
        .take_while(|s| same(s))
        .count();
    (lb.mode != LoadBalancerMode::Strict || r == lb.routing_preferences.len()).then_some(r)
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
