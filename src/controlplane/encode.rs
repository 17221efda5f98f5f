//! `state::model` → xDS resources: the inverse of `control::xds::translate`, so anything the
//! local mesh file can express reaches clients unchanged (`translate(encode(x)) == x` for
//! normalised values; the round-trip tests hold both sides to it).
//!
//! Resource names: workloads by uid, services by `namespace/hostname`, policies by
//! `namespace/name`. Aliases (`network/IP` of every workload IP and service VIP) let clients
//! request addresses on demand by key.

use std::net::IpAddr;

use crate::control::xds::proto::istio::security as sec;
use crate::control::xds::proto::istio::workload as wl;
use crate::state::model::{
    AppTunnelProtocol, GatewayAddress, GatewayDestination, HealthPolicy, HealthStatus, IpFamilies,
    IpNet, LoadBalancer, LoadBalancerMode, LoadBalancerScope, NetworkAddress, NetworkMode, Policy,
    PolicyAction, PolicyMatch, PolicyScope, PortMap, Service, StringMatch, TunnelProtocol,
    Visibility, Workload,
};

/// The resource name of a workload.
pub fn workload_name(w: &Workload) -> String {
    w.uid.to_string()
}

/// The on-demand keys (`network/IP`) a workload answers to. Host-network workloads share the
/// node's IPs and answer to none.
pub fn workload_aliases(w: &Workload) -> Vec<String> {
    if w.network_mode == NetworkMode::HostNetwork {
        return Vec::new();
    }
    w.workload_ips
        .iter()
        .map(|ip| format!("{}/{ip}", w.network))
        .collect()
}

/// The on-demand keys (`network/VIP`) a service answers to.
pub fn service_aliases(s: &Service) -> Vec<String> {
    s.vips
        .iter()
        .map(|v| format!("{}/{}", v.network, v.address))
        .collect()
}

/// A workload as an `Address` resource.
pub fn workload(w: &Workload) -> wl::Address {
    let tunnel_protocol = match w.protocol {
        TunnelProtocol::Tcp => wl::TunnelProtocol::None,
        TunnelProtocol::Hbone => wl::TunnelProtocol::Hbone,
    };
    let workload_type = match &*w.workload_type {
        "cronjob" => wl::WorkloadType::Cronjob,
        "pod" => wl::WorkloadType::Pod,
        "job" => wl::WorkloadType::Job,
        _ => wl::WorkloadType::Deployment,
    };
    let proto = wl::Workload {
        uid: w.uid.to_string(),
        name: w.name.to_string(),
        namespace: w.namespace.to_string(),
        addresses: w.workload_ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        hostname: w.hostname.to_string(),
        network: w.network.to_string(),
        tunnel_protocol: tunnel_protocol as i32,
        trust_domain: w.trust_domain.to_string(),
        service_account: w.service_account.to_string(),
        waypoint: w.waypoint.as_deref().map(gateway),
        network_gateway: w.network_gateway.as_deref().map(gateway),
        node: w.node.to_string(),
        canonical_name: w.canonical_name.to_string(),
        canonical_revision: w.canonical_revision.to_string(),
        workload_type: workload_type as i32,
        workload_name: w.workload_name.to_string(),
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.map(|t| wl::ApplicationTunnel {
            protocol: match t.protocol {
                AppTunnelProtocol::None => wl::application_tunnel::Protocol::None,
                AppTunnelProtocol::Proxy => wl::application_tunnel::Protocol::Proxy,
            } as i32,
            port: t.port.map_or(0, u32::from),
        }),
        services: w
            .services
            .iter()
            .map(|(key, ports)| {
                let list = wl::PortList {
                    ports: port_list(ports),
                };
                (key.to_string(), list)
            })
            .collect(),
        authorization_policies: w
            .authorization_policies
            .iter()
            .map(ToString::to_string)
            .collect(),
        status: match w.status {
            HealthStatus::Healthy => wl::WorkloadStatus::Healthy,
            HealthStatus::Unhealthy => wl::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id.to_string(),
        locality: Some(wl::Locality {
            region: w.locality.region.to_string(),
            zone: w.locality.zone.to_string(),
            subzone: w.locality.subzone.to_string(),
        }),
        network_mode: match w.network_mode {
            NetworkMode::Standard => wl::NetworkMode::Standard,
            NetworkMode::HostNetwork => wl::NetworkMode::HostNetwork,
        } as i32,
        extensions: Vec::new(),
        capacity: Some(w.capacity),
    };
    wl::Address {
        r#type: Some(wl::address::Type::Workload(proto)),
    }
}

/// A service as an `Address` resource.
pub fn service(s: &Service) -> wl::Address {
    let mut addresses: Vec<wl::NetworkAddress> = s
        .vips
        .iter()
        .map(|v| wl::NetworkAddress {
            network: v.network.to_string(),
            address: ip_bytes(v.address),
            length: None,
        })
        .collect();
    addresses.extend(s.cidr_vips.iter().map(|c| wl::NetworkAddress {
        network: c.network.to_string(),
        address: ip_bytes(c.address),
        length: Some(u32::from(c.prefix_len)),
    }));
    let proto = wl::Service {
        name: s.name.to_string(),
        namespace: s.namespace.to_string(),
        hostname: s.hostname.to_string(),
        addresses,
        ports: port_list(&s.ports),
        subject_alt_names: s
            .subject_alt_names
            .iter()
            .map(ToString::to_string)
            .collect(),
        waypoint: s.waypoint.as_ref().map(gateway),
        load_balancing: s.load_balancer.as_ref().map(load_balancing),
        ip_families: match s.ip_families {
            IpFamilies::Automatic => wl::IpFamilies::Automatic,
            IpFamilies::Ipv4Only => wl::IpFamilies::Ipv4Only,
            IpFamilies::Ipv6Only => wl::IpFamilies::Ipv6Only,
            IpFamilies::Dual => wl::IpFamilies::Dual,
        } as i32,
        extensions: Vec::new(),
        canonical: s.canonical,
        ingress_use_waypoint: false,
        weighted_waypoints: s
            .weighted_waypoints
            .iter()
            .map(|w| wl::WeightedWaypoint {
                destination: Some(gateway(&w.destination)),
                weight: w.weight,
            })
            .collect(),
        visibility: match s.visibility {
            Visibility::Public => wl::service::Visibility::Public,
            Visibility::Namespace => wl::service::Visibility::Namespace,
        } as i32,
    };
    wl::Address {
        r#type: Some(wl::address::Type::Service(proto)),
    }
}

/// A policy as an `Authorization` resource.
pub fn policy(p: &Policy) -> sec::Authorization {
    sec::Authorization {
        name: p.name.to_string(),
        namespace: p.namespace.to_string(),
        scope: match p.scope {
            PolicyScope::Global => sec::Scope::Global,
            PolicyScope::Namespace => sec::Scope::Namespace,
            PolicyScope::WorkloadSelector => sec::Scope::WorkloadSelector,
        } as i32,
        action: match p.action {
            PolicyAction::Allow => sec::Action::Allow,
            PolicyAction::Deny => sec::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|rule| sec::Rule {
                clauses: rule
                    .iter()
                    .map(|clause| sec::Clause {
                        matches: clause.iter().map(policy_match).collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: p.dry_run,
        extensions: Vec::new(),
    }
}

fn policy_match(m: &PolicyMatch) -> sec::Match {
    let strings = |list: &[StringMatch]| list.iter().map(string_match).collect();
    let nets = |list: &[IpNet]| {
        list.iter()
            .map(|n| sec::Address {
                address: ip_bytes(n.address),
                length: u32::from(n.prefix_len),
            })
            .collect()
    };
    let accounts = |list: &[crate::state::model::ServiceAccountMatch]| {
        list.iter()
            .map(|sa| sec::ServiceAccountMatch {
                namespace: sa.namespace.to_string(),
                service_account: sa.service_account.to_string(),
            })
            .collect()
    };
    let ports = |list: &[u16]| list.iter().map(|p| u32::from(*p)).collect();
    sec::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: nets(&m.source_ips),
        not_source_ips: nets(&m.not_source_ips),
        destination_ips: nets(&m.destination_ips),
        not_destination_ips: nets(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        extensions: Vec::new(),
    }
}

fn string_match(s: &StringMatch) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let match_type = match s {
        StringMatch::Exact(v) => MatchType::Exact(v.to_string()),
        StringMatch::Prefix(v) => MatchType::Prefix(v.to_string()),
        StringMatch::Suffix(v) => MatchType::Suffix(v.to_string()),
        StringMatch::Presence => MatchType::Presence(()),
    };
    sec::StringMatch {
        match_type: Some(match_type),
    }
}

fn load_balancing(lb: &LoadBalancer) -> wl::LoadBalancing {
    use wl::load_balancing::{HealthPolicy as H, Mode as M, Scope as S};
    wl::LoadBalancing {
        routing_preference: lb
            .routing_preferences
            .iter()
            .map(|s| {
                let scope = match s {
                    LoadBalancerScope::Region => S::Region,
                    LoadBalancerScope::Zone => S::Zone,
                    LoadBalancerScope::Subzone => S::Subzone,
                    LoadBalancerScope::Node => S::Node,
                    LoadBalancerScope::Cluster => S::Cluster,
                    LoadBalancerScope::Network => S::Network,
                };
                scope as i32
            })
            .collect(),
        mode: match lb.mode {
            LoadBalancerMode::Standard => M::UnspecifiedMode,
            LoadBalancerMode::Strict => M::Strict,
            LoadBalancerMode::Failover => M::Failover,
            LoadBalancerMode::Passthrough => M::Passthrough,
        } as i32,
        health_policy: match lb.health_policy {
            HealthPolicy::OnlyHealthy => H::OnlyHealthy,
            HealthPolicy::AllowAll => H::AllowAll,
        } as i32,
    }
}

fn gateway(g: &GatewayAddress) -> wl::GatewayAddress {
    use wl::gateway_address::Destination;
    let destination = match &g.destination {
        GatewayDestination::Address(NetworkAddress { network, address }) => {
            Destination::Address(wl::NetworkAddress {
                network: network.to_string(),
                address: ip_bytes(*address),
                length: None,
            })
        }
        GatewayDestination::Hostname(h) => Destination::Hostname(wl::NamespacedHostname {
            namespace: h.namespace.to_string(),
            hostname: h.hostname.to_string(),
        }),
    };
    wl::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(g.hbone_mtls_port),
    }
}

fn port_list(ports: &PortMap) -> Vec<wl::Port> {
    ports
        .iter()
        .map(|(service, target)| wl::Port {
            service_port: u32::from(*service),
            target_port: u32::from(*target),
            app_protocol: 0,
        })
        .collect()
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
