//! xDS resources (`istio.workload.Address`, `istio.security.Authorization`) built field by
//! field, then protobuf-encoded for the `xds_address` and `xds_authorization` bodies.

use arbitrary::Arbitrary;
use prost::Message;
use ztun::control::xds::proto::istio::{security as sec, workload as wl};

use crate::{Enum, Ip, PortNum, Text};

/// An address resource.
#[derive(Arbitrary, Debug)]
pub enum Address {
    /// A workload.
    Workload(Box<Workload>),
    /// A service.
    Service(Box<Service>),
}

impl Address {
    /// The encoded resource.
    pub fn encode(&self) -> Vec<u8> {
        let r#type = match self {
            Address::Workload(w) => wl::address::Type::Workload(w.build()),
            Address::Service(s) => wl::address::Type::Service(s.build()),
        };
        wl::Address {
            r#type: Some(r#type),
        }
        .encode_to_vec()
    }
}

/// `istio.workload.Workload`.
#[derive(Arbitrary, Debug)]
pub struct Workload {
    uid: Text,
    name: Text,
    namespace: Text,
    addresses: Vec<Ip>,
    hostname: Text,
    network: Text,
    tunnel_protocol: Enum,
    trust_domain: Text,
    service_account: Text,
    waypoint: Option<Gateway>,
    network_gateway: Option<Gateway>,
    node: Text,
    canonical_name: Text,
    canonical_revision: Text,
    workload_type: Enum,
    workload_name: Text,
    native_tunnel: bool,
    application_tunnel: Option<(Enum, PortNum)>,
    services: Vec<(Text, Vec<Port>)>,
    authorization_policies: Vec<Text>,
    status: Enum,
    cluster_id: Text,
    locality: Option<(Text, Text, Text)>,
    network_mode: Enum,
    capacity: Option<u32>,
}

impl Workload {
    fn build(&self) -> wl::Workload {
        wl::Workload {
            uid: self.uid.render(),
            name: self.name.render(),
            namespace: self.namespace.render(),
            addresses: self.addresses.iter().map(Ip::render).collect(),
            hostname: self.hostname.render(),
            network: self.network.render(),
            tunnel_protocol: self.tunnel_protocol.render(),
            trust_domain: self.trust_domain.render(),
            service_account: self.service_account.render(),
            waypoint: self.waypoint.as_ref().map(Gateway::build),
            network_gateway: self.network_gateway.as_ref().map(Gateway::build),
            node: self.node.render(),
            canonical_name: self.canonical_name.render(),
            canonical_revision: self.canonical_revision.render(),
            workload_type: self.workload_type.render(),
            workload_name: self.workload_name.render(),
            native_tunnel: self.native_tunnel,
            application_tunnel: self.application_tunnel.map(|(protocol, port)| {
                wl::ApplicationTunnel {
                    protocol: protocol.render(),
                    port: port.render(),
                }
            }),
            services: self
                .services
                .iter()
                .map(|(k, ports)| {
                    let ports = ports.iter().map(Port::build).collect();
                    (k.render(), wl::PortList { ports })
                })
                .collect(),
            authorization_policies: self
                .authorization_policies
                .iter()
                .map(Text::render)
                .collect(),
            status: self.status.render(),
            cluster_id: self.cluster_id.render(),
            locality: self
                .locality
                .as_ref()
                .map(|(region, zone, subzone)| wl::Locality {
                    region: region.render(),
                    zone: zone.render(),
                    subzone: subzone.render(),
                }),
            network_mode: self.network_mode.render(),
            extensions: Vec::new(),
            capacity: self.capacity,
        }
    }
}

/// `istio.workload.Port`.
#[derive(Arbitrary, Debug)]
pub struct Port {
    service_port: PortNum,
    target_port: PortNum,
    app_protocol: Enum,
}

impl Port {
    fn build(&self) -> wl::Port {
        wl::Port {
            service_port: self.service_port.render(),
            target_port: self.target_port.render(),
            app_protocol: self.app_protocol.render(),
        }
    }
}

/// `istio.workload.GatewayAddress`.
#[derive(Arbitrary, Debug)]
pub enum Gateway {
    /// A `namespace/hostname` destination.
    Hostname {
        /// Namespace.
        namespace: Text,
        /// Hostname.
        hostname: Text,
        /// HBONE port.
        port: PortNum,
    },
    /// A `network/ip` destination.
    Address {
        /// The address.
        address: NetworkAddress,
        /// HBONE port.
        port: PortNum,
    },
    /// No destination.
    Empty(PortNum),
}

impl Gateway {
    fn build(&self) -> wl::GatewayAddress {
        use wl::gateway_address::Destination;
        let (destination, port) = match self {
            Gateway::Hostname {
                namespace,
                hostname,
                port,
            } => (
                Some(Destination::Hostname(wl::NamespacedHostname {
                    namespace: namespace.render(),
                    hostname: hostname.render(),
                })),
                port,
            ),
            Gateway::Address { address, port } => {
                (Some(Destination::Address(address.build())), port)
            }
            Gateway::Empty(port) => (None, port),
        };
        wl::GatewayAddress {
            hbone_mtls_port: port.render(),
            destination,
        }
    }
}

/// `istio.workload.NetworkAddress`.
#[derive(Arbitrary, Debug)]
pub struct NetworkAddress {
    network: Text,
    address: Ip,
    length: Option<u8>,
}

impl NetworkAddress {
    fn build(&self) -> wl::NetworkAddress {
        wl::NetworkAddress {
            network: self.network.render(),
            address: self.address.render(),
            length: self.length.map(u32::from),
        }
    }
}

/// `istio.workload.Service`.
#[derive(Arbitrary, Debug)]
pub struct Service {
    name: Text,
    namespace: Text,
    hostname: Text,
    addresses: Vec<NetworkAddress>,
    ports: Vec<Port>,
    subject_alt_names: Vec<Text>,
    waypoint: Option<Gateway>,
    load_balancing: Option<(Vec<Enum>, Enum, Enum)>,
    ip_families: Enum,
    canonical: bool,
    ingress_use_waypoint: bool,
    weighted_waypoints: Vec<(Option<Gateway>, u32)>,
    visibility: Enum,
}

impl Service {
    fn build(&self) -> wl::Service {
        wl::Service {
            name: self.name.render(),
            namespace: self.namespace.render(),
            hostname: self.hostname.render(),
            addresses: self.addresses.iter().map(NetworkAddress::build).collect(),
            ports: self.ports.iter().map(Port::build).collect(),
            subject_alt_names: self.subject_alt_names.iter().map(Text::render).collect(),
            waypoint: self.waypoint.as_ref().map(Gateway::build),
            load_balancing: self.load_balancing.as_ref().map(|(prefs, mode, health)| {
                wl::LoadBalancing {
                    routing_preference: prefs.iter().map(|p| p.render()).collect(),
                    mode: mode.render(),
                    health_policy: health.render(),
                }
            }),
            ip_families: self.ip_families.render(),
            extensions: Vec::new(),
            canonical: self.canonical,
            ingress_use_waypoint: self.ingress_use_waypoint,
            weighted_waypoints: self
                .weighted_waypoints
                .iter()
                .map(|(g, weight)| wl::WeightedWaypoint {
                    destination: g.as_ref().map(Gateway::build),
                    weight: *weight,
                })
                .collect(),
            visibility: self.visibility.render(),
        }
    }
}

/// `istio.security.Authorization`.
#[derive(Arbitrary, Debug)]
pub struct Authorization {
    name: Text,
    namespace: Text,
    scope: Enum,
    action: Enum,
    /// Rules of clauses of matches.
    rules: Vec<Vec<Vec<Match>>>,
    dry_run: bool,
}

impl Authorization {
    /// The encoded resource.
    pub fn encode(&self) -> Vec<u8> {
        sec::Authorization {
            name: self.name.render(),
            namespace: self.namespace.render(),
            scope: self.scope.render(),
            action: self.action.render(),
            rules: self
                .rules
                .iter()
                .map(|clauses| sec::Rule {
                    clauses: clauses
                        .iter()
                        .map(|matches| sec::Clause {
                            matches: matches.iter().map(Match::build).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: self.dry_run,
            extensions: Vec::new(),
        }
        .encode_to_vec()
    }
}

/// `istio.security.Match`.
#[derive(Arbitrary, Debug)]
pub struct Match {
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    service_accounts: Vec<(Text, Text)>,
    not_service_accounts: Vec<(Text, Text)>,
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    source_ips: Vec<(Ip, u8)>,
    not_source_ips: Vec<(Ip, u8)>,
    destination_ips: Vec<(Ip, u8)>,
    not_destination_ips: Vec<(Ip, u8)>,
    destination_ports: Vec<PortNum>,
    not_destination_ports: Vec<PortNum>,
}

impl Match {
    fn build(&self) -> sec::Match {
        let strings = |v: &[StringMatch]| v.iter().map(StringMatch::build).collect();
        let accounts = |v: &[(Text, Text)]| {
            v.iter()
                .map(|(ns, sa)| sec::ServiceAccountMatch {
                    namespace: ns.render(),
                    service_account: sa.render(),
                })
                .collect()
        };
        let cidrs = |v: &[(Ip, u8)]| {
            v.iter()
                .map(|(ip, len)| sec::Address {
                    address: ip.render(),
                    length: u32::from(*len),
                })
                .collect()
        };
        let ports = |v: &[PortNum]| v.iter().map(|p| p.render()).collect();
        sec::Match {
            namespaces: strings(&self.namespaces),
            not_namespaces: strings(&self.not_namespaces),
            service_accounts: accounts(&self.service_accounts),
            not_service_accounts: accounts(&self.not_service_accounts),
            principals: strings(&self.principals),
            not_principals: strings(&self.not_principals),
            source_ips: cidrs(&self.source_ips),
            not_source_ips: cidrs(&self.not_source_ips),
            destination_ips: cidrs(&self.destination_ips),
            not_destination_ips: cidrs(&self.not_destination_ips),
            destination_ports: ports(&self.destination_ports),
            not_destination_ports: ports(&self.not_destination_ports),
            extensions: Vec::new(),
        }
    }
}

/// `istio.security.StringMatch`.
#[derive(Arbitrary, Debug)]
pub enum StringMatch {
    /// Exact.
    Exact(Text),
    /// Prefix.
    Prefix(Text),
    /// Suffix.
    Suffix(Text),
    /// Presence.
    Presence,
    /// No match type set.
    Unset,
}

impl StringMatch {
    fn build(&self) -> sec::StringMatch {
        use sec::string_match::MatchType;
        let match_type = match self {
            StringMatch::Exact(t) => Some(MatchType::Exact(t.render())),
            StringMatch::Prefix(t) => Some(MatchType::Prefix(t.render())),
            StringMatch::Suffix(t) => Some(MatchType::Suffix(t.render())),
            StringMatch::Presence => Some(MatchType::Presence(())),
            StringMatch::Unset => None,
        };
        sec::StringMatch { match_type }
    }
}
