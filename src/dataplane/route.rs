//! Outbound routing: a pure decision over a state snapshot.
//!
//! Given the source workload and the original destination, decide where the connection goes
//! and how: HBONE to a mesh workload (never plaintext to one), plain TCP to a non-mesh
//! workload, passthrough for addresses the mesh does not know, or refusal (a service without
//! usable endpoints).

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;

use crate::identity::Identity;
use crate::state::model::{
    HealthPolicy, HealthStatus, Service, TunnelProtocol, Visibility, Workload,
};
use crate::state::Snapshot;

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// HBONE to a mesh workload's node proxy.
    Hbone {
        /// The peer's HBONE listener (`ip:15008`).
        dst: SocketAddr,
        /// The `:authority` of the CONNECT (`ip:targetPort`).
        authority: SocketAddr,
        /// Identities the peer may prove.
        identities: Arc<[Identity]>,
        /// The chosen workload.
        workload: Arc<Workload>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
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
    /// Refuse the connection.
    Refuse(RefuseReason),
}

/// Why a connection is refused at the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The service has no usable endpoint.
    NoHealthyUpstream,
    /// The service does not declare the port.
    UnknownServicePort,
}

/// Plans the route for `src` connecting to `dst` on `network`, using `hbone_port` for peers.
pub fn plan(
    snap: &Snapshot,
    network: &str,
    src: &Workload,
    dst: SocketAddr,
    hbone_port: u16,
) -> Route {
    if let Some(svc) = pick_service(snap.services_by_vip(network, dst.ip()), src) {
        let Some(&target) = svc.ports.get(&dst.port()) else {
            return Route::Refuse(RefuseReason::UnknownServicePort);
        };
        let Some((w, port)) = pick_endpoint(snap, &svc, dst.port(), target) else {
            return Route::Refuse(RefuseReason::NoHealthyUpstream);
        };
        let Some(ip) = w
            .workload_ips
            .iter()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .or(w.workload_ips.first())
            .copied()
        else {
            return Route::Refuse(RefuseReason::NoHealthyUpstream);
        };
        return to_workload(w, SocketAddr::new(ip, port), Some(svc), hbone_port);
    }
    match snap.workload_by_ip(network, dst.ip()) {
        Some(w) => to_workload(w.clone(), dst, None, hbone_port),
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
        TunnelProtocol::Hbone => {
            let mut identities: Vec<Identity> = w.identity().into_iter().collect();
            if let Some(s) = &service {
                identities.extend(
                    s.subject_alt_names
                        .iter()
                        .filter_map(|san| san.parse().ok()),
                );
            }
            Route::Hbone {
                dst: SocketAddr::new(target.ip(), hbone_port),
                authority: target,
                identities: identities.into(),
                workload: w,
                service,
            }
        }
        TunnelProtocol::Tcp => Route::Tcp {
            dst: target,
            workload: Some(w),
            service,
        },
    }
}

/// Among services sharing a VIP: visible to the source, same namespace first, then canonical.
fn pick_service(candidates: &[Arc<Service>], src: &Workload) -> Option<Arc<Service>> {
    candidates
        .iter()
        .filter(|s| s.visibility == Visibility::Public || s.namespace == src.namespace)
        .max_by_key(|s| (s.namespace == src.namespace, s.canonical))
        .cloned()
}

/// A random endpoint weighted by capacity, with its target port.
fn pick_endpoint(
    snap: &Snapshot,
    svc: &Service,
    svc_port: u16,
    svc_target: u16,
) -> Option<(Arc<Workload>, u16)> {
    let allow_all = svc
        .load_balancer
        .as_ref()
        .is_some_and(|lb| lb.health_policy == HealthPolicy::AllowAll);
    let key = svc.key();
    let candidates: Vec<(Arc<Workload>, u16)> = snap
        .endpoints(&key)
        .iter()
        .filter(|w| allow_all || w.status == HealthStatus::Healthy)
        .filter_map(|w| {
            let port = w
                .services
                .get(key.as_str())
                .and_then(|m| m.get(&svc_port))
                .copied()
                .filter(|p| *p != 0);
            let port = port.or((svc_target != 0).then_some(svc_target))?;
            Some((w.clone(), port))
        })
        .collect();
    let total: u64 = candidates
        .iter()
        .map(|(w, _)| u64::from(w.capacity.max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut pick = rand::rng().random_range(0..total);
    for (w, port) in candidates {
        let weight = u64::from(w.capacity.max(1));
        if pick < weight {
            return Some((w, port));
        }
        pick -= weight;
    }
    None
}
