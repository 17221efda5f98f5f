//! Inbound routing: where an HBONE CONNECT to a local workload is delivered, decided over a
//! snapshot before anything is dialled (compat.md §1.3, §1.5).
//!
//! - `ip:port` authorities must name the address the client dialled, except for a workload
//!   with an application tunnel (it receives the original target in a PROXY header) and for
//!   a waypoint the target names as its waypoint ("sandwich"). The port is the target port.
//! - `hostname:port` authorities (sent by gateways and waypoints) name a service: the one in
//!   the local workload's namespace, else the first by key; the service port becomes the
//!   endpoint's mapped port, else the service's target port. Nothing is ever resolved by DNS.
//! - The connection always goes to the local workload's own address; an application tunnel
//!   may redirect it to its port and asks for a PROXY header naming the original target.
//! - ztun's own ports and loopback targets are refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::dataplane::hbone::{parse_authority, AuthorityError};
use crate::dataplane::Error;
use crate::state::model::{
    AppTunnelProtocol, GatewayAddress, GatewayDestination, Service, Strng, Workload,
};
use crate::state::Snapshot;

/// A parsed CONNECT `:authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// `ip:port` / `[ipv6]:port`.
    Addr(SocketAddr),
    /// `hostname:port`: a service hostname and service port.
    Host {
        /// Lowercase DNS name.
        host: Strng,
        /// Service port.
        port: u16,
    },
}

impl Authority {
    /// Parses an authority strictly: an IP form as [`parse_authority`] accepts it, or a DNS
    /// name (letters, digits, `-`, `.`; at most 253 bytes) with a port in 1..=65535.
    pub fn parse(s: &str) -> Result<Authority, AuthorityError> {
        match parse_authority(s) {
            Ok(a) => return Ok(Authority::Addr(a)),
            Err(AuthorityError::PortZero) => return Err(AuthorityError::PortZero),
            Err(AuthorityError::Malformed) => {}
        }
        let (host, port) = s.rsplit_once(':').ok_or(AuthorityError::Malformed)?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-'))
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            // A dotted quad that did not parse as an IP is junk, not a hostname.
            && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !valid_host || !digits {
            return Err(AuthorityError::Malformed);
        }
        match port.parse::<u16>() {
            Ok(0) => Err(AuthorityError::PortZero),
            Ok(port) => Ok(Authority::Host {
                host: host.to_ascii_lowercase().into(),
                port,
            }),
            Err(_) => Err(AuthorityError::Malformed),
        }
    }
}

/// Where an accepted CONNECT is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundTarget {
    /// The socket address to connect to: the local workload's dialled address and the target
    /// (or application tunnel) port.
    pub upstream: SocketAddr,
    /// Set when the local workload has an application tunnel.
    pub tunnel: Option<Tunnel>,
    /// The service a hostname authority named.
    pub service: Option<Arc<Service>>,
}

/// Delivery through the local workload's application tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// How to deliver.
    pub protocol: AppTunnelProtocol,
    /// The original target, for the PROXY header: the authority address, or for a hostname
    /// the service VIP on this network (IPv4 preferred) with the requested port.
    pub target: SocketAddr,
}

/// Resolves `authority` for a CONNECT that reached `local` at `dialled` on `network`.
/// `own_port` says whether a port belongs to ztun itself.
pub fn resolve(
    snap: &Snapshot,
    network: &str,
    local: &Workload,
    dialled: SocketAddr,
    authority: &Authority,
    own_port: impl Fn(u16) -> bool,
) -> Result<InboundTarget, Error> {
    let (port, service, tunnel_target) = match authority {
        Authority::Addr(a) => {
            if a.ip().is_loopback() {
                return Err(Error::SelfCall(*a));
            }
            if a.ip() != dialled.ip()
                && local.application_tunnel.is_none()
                && !names_as_waypoint(snap, network, a.ip(), local, dialled.ip())
            {
                return Err(Error::IpMismatch {
                    authority: *a,
                    dialled,
                });
            }
            (a.port(), None, *a)
        }
        Authority::Host { host, port } => {
            let unknown = || Error::UnknownService(format!("{host}:{port}").into());
            let svc = service_by_hostname(snap, host, &local.namespace).ok_or_else(unknown)?;
            let target = local
                .services
                .get(svc.key().as_str())
                .and_then(|m| m.get(port))
                .copied()
                .filter(|p| *p != 0)
                .or_else(|| svc.ports.get(port).copied().filter(|p| *p != 0))
                .ok_or_else(unknown)?;
            let vip = svc
                .vips
                .iter()
                .filter(|v| *v.network == *network)
                .max_by_key(|v| v.address.is_ipv4())
                .map(|v| SocketAddr::new(v.address, *port));
            match (vip, &local.application_tunnel) {
                (Some(vip), _) => (target, Some(svc), vip),
                // Without a tunnel the VIP is only informational.
                (None, None) => (target, Some(svc), SocketAddr::new(dialled.ip(), target)),
                (None, Some(_)) => return Err(unknown()),
            }
        }
    };
    let dest = SocketAddr::new(dialled.ip(), port);
    if own_port(port) {
        return Err(Error::SelfCall(dest));
    }
    let (upstream, tunnel) = match &local.application_tunnel {
        Some(t) => (
            SocketAddr::new(dialled.ip(), t.port.unwrap_or(port)),
            Some(Tunnel {
                protocol: t.protocol,
                target: tunnel_target,
            }),
        ),
        None => (dest, None),
    };
    Ok(InboundTarget {
        upstream,
        tunnel,
        service,
    })
}

/// The service with `hostname`: in `namespace` if there is one, else the first by key.
fn service_by_hostname(snap: &Snapshot, hostname: &str, namespace: &str) -> Option<Arc<Service>> {
    snap.services()
        .filter(|s| s.hostname.eq_ignore_ascii_case(hostname))
        .min_by(|a, b| {
            (a.namespace.as_ref() != namespace, &a.namespace)
                .cmp(&(b.namespace.as_ref() != namespace, &b.namespace))
        })
        .cloned()
}

/// Whether the workload or service at `target` names `local` (reached at `dialled`) as its
/// waypoint.
fn names_as_waypoint(
    snap: &Snapshot,
    network: &str,
    target: IpAddr,
    local: &Workload,
    dialled: IpAddr,
) -> bool {
    let gateways: Vec<&GatewayAddress> = match snap.workload_by_ip(network, target) {
        Some(w) => w.waypoint.as_deref().into_iter().collect(),
        None => snap
            .services_by_vip(network, target)
            .iter()
            .flat_map(|s| {
                s.waypoint
                    .iter()
                    .chain(s.weighted_waypoints.iter().map(|w| &w.destination))
            })
            .collect(),
    };
    gateways
        .into_iter()
        .any(|gw| is_local(snap, gw, local, dialled))
}

fn is_local(snap: &Snapshot, gw: &GatewayAddress, local: &Workload, dialled: IpAddr) -> bool {
    let member = |key: &str| snap.endpoints(key).iter().any(|w| w.uid == local.uid);
    match &gw.destination {
        GatewayDestination::Address(a) => match snap.workload_by_ip(&a.network, a.address) {
            Some(w) => w.uid == local.uid && w.workload_ips.contains(&dialled),
            None => snap
                .services_by_vip(&a.network, a.address)
                .iter()
                .any(|s| member(&s.key())),
        },
        GatewayDestination::Hostname(h) => {
            let key = format!("{}/{}", h.namespace, h.hostname);
            if snap.service(&key).is_some() {
                member(&key)
            } else {
                *local.hostname == *h.hostname
                    && local.namespace == h.namespace
                    && local.workload_ips.contains(&dialled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::{ApplicationTunnel, NamespacedHostname, NetworkAddress, Visibility};
    use crate::state::SnapshotBuilder;
    use crate::testkit::fixtures::pod as workload;

    #[test]
    fn authorities() {
        let ok = [
            (
                "10.0.0.1:80",
                Authority::Addr("10.0.0.1:80".parse().unwrap()),
            ),
            (
                "web.ns.svc.cluster.local:80",
                Authority::Host {
                    host: "web.ns.svc.cluster.local".into(),
                    port: 80,
                },
            ),
            (
                "WEB.example:8080",
                Authority::Host {
                    host: "web.example".into(),
                    port: 8080,
                },
            ),
        ];
        for (input, want) in ok {
            assert_eq!(Authority::parse(input).unwrap(), want, "{input}");
        }
        let bad = [
            "",
            "web",
            "web:",
            ":80",
            "web:0",
            "web:65536",
            "web:+80",
            "web:-1",
            "we b:80",
            "web..local:80",
            ".web:80",
            "-web:80",
            "web_1:80",
            "10.0.0.300:80",
            "web:80:80",
            "ünï:80",
            "web\0:80",
            "[web]:80",
        ];
        for input in bad {
            assert!(Authority::parse(input).is_err(), "{input:?}");
        }
        assert!(Authority::parse(&format!("{}:80", "a".repeat(254))).is_err());
    }

    fn snap_with(workloads: Vec<Workload>, services: Vec<Service>) -> Snapshot {
        let mut b = SnapshotBuilder::default();
        workloads.into_iter().for_each(|w| b.insert_workload(w));
        services.into_iter().for_each(|s| b.insert_service(s));
        b.build(1)
    }

    fn service(ns: &str, name: &str, vip: [u8; 4], ports: &[(u16, u16)]) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            hostname: format!("{name}.{ns}.svc.cluster.local").into(),
            vips: vec![NetworkAddress {
                network: "".into(),
                address: IpAddr::from(vip),
            }],
            cidr_vips: vec![],
            ports: ports.iter().copied().collect(),
            subject_alt_names: vec![],
            waypoint: None,
            weighted_waypoints: vec![],
            load_balancer: None,
            ip_families: Default::default(),
            canonical: false,
            visibility: Visibility::Public,
        }
    }

    const DIALLED: &str = "10.0.2.11:15008";

    fn run(snap: &Snapshot, local: &Workload, authority: &str) -> Result<InboundTarget, Error> {
        let a = Authority::parse(authority).unwrap();
        resolve(snap, "", local, DIALLED.parse().unwrap(), &a, |p| {
            [15001, 15006, 15008].contains(&p)
        })
    }

    #[test]
    fn ip_authorities() {
        let local = workload("app", "server", "sa", [10, 0, 2, 11]);
        let snap = snap_with(vec![local.clone()], vec![]);
        assert_eq!(
            run(&snap, &local, "10.0.2.11:8080")
                .unwrap()
                .upstream
                .to_string(),
            "10.0.2.11:8080"
        );
        assert!(matches!(
            run(&snap, &local, "10.0.2.12:8080"),
            Err(Error::IpMismatch { .. })
        ));
        assert!(matches!(
            run(&snap, &local, "127.0.0.1:8080"),
            Err(Error::SelfCall(_))
        ));
        assert!(matches!(
            run(&snap, &local, "10.0.2.11:15001"),
            Err(Error::SelfCall(_))
        ));
    }

    #[test]
    fn hostname_authorities() {
        let mut local = workload("app", "server", "sa", [10, 0, 2, 11]);
        let web = service(
            "app",
            "web",
            [10, 96, 0, 1],
            &[(80, 8080), (81, 0), (82, 15006)],
        );
        local
            .services
            .insert(web.key().into(), [(81, 9191)].into_iter().collect());
        let elsewhere = {
            let mut s = service("other", "web", [10, 96, 0, 2], &[(80, 7070)]);
            s.hostname = web.hostname.clone();
            s
        };
        let snap = snap_with(vec![local.clone()], vec![web.clone(), elsewhere]);
        let t = run(&snap, &local, "web.app.svc.cluster.local:80").unwrap();
        assert_eq!(
            t.upstream.to_string(),
            "10.0.2.11:8080",
            "local namespace wins"
        );
        assert_eq!(t.service.unwrap().namespace.as_ref(), "app");
        assert_eq!(
            run(&snap, &local, "web.app.svc.cluster.local:81")
                .unwrap()
                .upstream
                .port(),
            9191,
            "named port"
        );
        assert!(matches!(
            run(&snap, &local, "web.app.svc.cluster.local:99"),
            Err(Error::UnknownService(_))
        ));
        assert!(matches!(
            run(&snap, &local, "nope.app.svc.cluster.local:80"),
            Err(Error::UnknownService(_))
        ));
        assert!(matches!(
            run(&snap, &local, "web.app.svc.cluster.local:82"),
            Err(Error::SelfCall(_))
        ));
    }

    #[test]
    fn app_tunnels() {
        let mut wp = workload("app", "wp", "wp", [10, 0, 2, 11]);
        wp.application_tunnel = Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088),
        });
        let web = service("app", "web", [10, 96, 0, 1], &[(80, 8080)]);
        let snap = snap_with(vec![wp.clone()], vec![web]);
        // Any IP: the tunnel carries it.
        let t = run(&snap, &wp, "10.0.9.9:8080").unwrap();
        assert_eq!(t.upstream.to_string(), "10.0.2.11:15088");
        assert_eq!(
            t.tunnel,
            Some(Tunnel {
                protocol: AppTunnelProtocol::Proxy,
                target: "10.0.9.9:8080".parse().unwrap()
            })
        );
        // Hostnames: the tunnel target is the VIP with the service port.
        let t = run(&snap, &wp, "web.app.svc.cluster.local:80").unwrap();
        assert_eq!(t.tunnel.unwrap().target.to_string(), "10.96.0.1:80");
    }

    #[test]
    fn sandwiched_waypoints_accept_their_targets() {
        let wp = workload("app", "wp", "wp", [10, 0, 2, 11]);
        let mut target = workload("app", "target", "t", [10, 0, 2, 12]);
        target.waypoint = Some(Box::new(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress {
                network: "".into(),
                address: [10, 0, 2, 11].into(),
            }),
            hbone_mtls_port: 15008,
        }));
        let mut svc = service("app", "web", [10, 96, 0, 1], &[(80, 8080)]);
        let wp_svc = service("app", "waypoint", [10, 96, 0, 100], &[(15008, 15008)]);
        svc.waypoint = Some(GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "app".into(),
                hostname: wp_svc.hostname.clone(),
            }),
            hbone_mtls_port: 15008,
        });
        let mut wp_member = wp.clone();
        wp_member
            .services
            .insert(wp_svc.key().into(), Default::default());
        let other = workload("app", "other", "o", [10, 0, 2, 13]);
        let snap = snap_with(vec![wp_member.clone(), target, other], vec![svc, wp_svc]);
        assert_eq!(
            run(&snap, &wp_member, "10.0.2.12:8080")
                .unwrap()
                .upstream
                .to_string(),
            "10.0.2.11:8080"
        );
        assert_eq!(
            run(&snap, &wp_member, "10.96.0.1:80")
                .unwrap()
                .upstream
                .to_string(),
            "10.0.2.11:80"
        );
        assert!(matches!(
            run(&snap, &wp_member, "10.0.2.13:8080"),
            Err(Error::IpMismatch { .. })
        ));
    }
}
