//! The address conformance corpus (`tests/conformance/addresses.yaml`, format in its README):
//! `istio.workload.Address` resources (Workload | Service) as istiod builds them, and what
//! ztun's state must hold after them. Every case goes through the real delta-xDS client
//! (scripted server, real TLS; ACK expected unless the case expects a NACK), and, where
//! ztunnel's local YAML format can express it, through the local-file loader. Then the case's
//! expectations are checked against the published snapshot: IP and VIP lookups, endpoint
//! sets and partial `/config_dump` objects.
//!
//! A case may carry `disagreement`: a known difference between ztun and the facts, found and
//! reported but not yet resolved, with `ztunGets`: what ztun produces instead, for the
//! disagreeing parts only. Such a case must match its expectations with `ztunGets` applied,
//! everything else as strictly as any case; its mismatches with the facts are printed, not
//! failed. A marked case that stops disagreeing over xDS fails, so the marker is removed once
//! ztun is fixed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::{address_resource, connected_client, report, state_where};
use crate::control::xds::proto::istio::workload as wl;
use crate::control::xds::ADDRESS_TYPE;
use crate::controlplane::encode::ip_bytes;
use crate::state::model::{Service, Workload};
use crate::state::{self, Snapshot};

const CORPUS_PATH: &str = "tests/conformance/addresses.yaml";
const CORPUS: &str = include_str!("../../../../tests/conformance/addresses.yaml");
/// The corpus may grow, never shrink below this.
const MIN_CASES: usize = 15;
/// Cases the local file must be able to express.
const MIN_LOCAL_CASES: usize = 10;

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    about: String,
    /// The Istio objects as applied: documentation only.
    #[allow(dead_code)]
    istio: String,
    emitted: Vec<Address>,
    expect: Expect,
    /// A known disagreement between ztun and the facts (see the module doc).
    #[serde(default)]
    disagreement: Option<String>,
    /// With `disagreement`: what ztun produces for the disagreeing parts of `expect`.
    #[serde(default)]
    ztun_gets: Option<ZtunGets>,
}

/// `istio.workload.Address` in protojson form: `{workload: {...}}` or `{service: {...}}`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "AddressKeys")]
// Test data, parsed once per case: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Address {
    Workload(WorkloadY),
    Service(ServiceY),
}

/// The protojson `oneof`: exactly one key must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressKeys {
    workload: Option<WorkloadY>,
    service: Option<ServiceY>,
}

impl TryFrom<AddressKeys> for Address {
    type Error = &'static str;

    fn try_from(k: AddressKeys) -> Result<Self, Self::Error> {
        match (k.workload, k.service) {
            (Some(w), None) => Ok(Address::Workload(w)),
            (None, Some(s)) => Ok(Address::Service(s)),
            _ => Err("an address needs exactly one of workload, service"),
        }
    }
}

/// An enum field: its proto name, or a number (for values no proto names).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum EnumY {
    Number(i32),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct WorkloadY {
    uid: String,
    name: String,
    namespace: String,
    addresses: Vec<IpAddr>,
    hostname: String,
    network: String,
    tunnel_protocol: Option<EnumY>,
    trust_domain: String,
    service_account: String,
    waypoint: Option<GatewayY>,
    network_gateway: Option<GatewayY>,
    node: String,
    canonical_name: String,
    canonical_revision: String,
    workload_type: Option<EnumY>,
    workload_name: String,
    native_tunnel: bool,
    application_tunnel: Option<AppTunnelY>,
    services: BTreeMap<String, PortListY>,
    authorization_policies: Vec<String>,
    status: Option<EnumY>,
    cluster_id: String,
    locality: Option<LocalityY>,
    network_mode: Option<EnumY>,
    extensions: Vec<ExtensionY>,
    capacity: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct ServiceY {
    name: String,
    namespace: String,
    hostname: String,
    addresses: Vec<NetworkAddressY>,
    ports: Vec<PortY>,
    subject_alt_names: Vec<String>,
    waypoint: Option<GatewayY>,
    load_balancing: Option<LoadBalancingY>,
    ip_families: Option<EnumY>,
    extensions: Vec<ExtensionY>,
    canonical: bool,
    ingress_use_waypoint: bool,
    weighted_waypoints: Vec<WeightedWaypointY>,
    visibility: Option<EnumY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkAddressY {
    #[serde(default)]
    network: String,
    address: IpAddr,
    #[serde(default)]
    length: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespacedHostnameY {
    namespace: String,
    hostname: String,
}

/// `GatewayAddress`: at most one of `hostname` / `address` (the `destination` oneof).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GatewayY {
    #[serde(default)]
    hostname: Option<NamespacedHostnameY>,
    #[serde(default)]
    address: Option<NetworkAddressY>,
    #[serde(default)]
    hbone_mtls_port: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedWaypointY {
    #[serde(default)]
    destination: Option<GatewayY>,
    #[serde(default)]
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AppTunnelY {
    #[serde(default)]
    protocol: Option<EnumY>,
    #[serde(default)]
    port: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortListY {
    #[serde(default)]
    ports: Vec<PortY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortY {
    service_port: u32,
    #[serde(default)]
    target_port: u32,
    #[serde(default)]
    app_protocol: Option<EnumY>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LocalityY {
    region: String,
    zone: String,
    subzone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct LoadBalancingY {
    routing_preference: Vec<EnumY>,
    mode: Option<EnumY>,
    health_policy: Option<EnumY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionY {
    name: String,
    #[serde(default)]
    config: Option<AnyY>,
}

/// `google.protobuf.Any` in protojson form; only `StringValue` payloads are supported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnyY {
    #[serde(rename = "@type")]
    type_url: String,
    value: String,
}

/// What ztun's state must hold after the case (or the NACK it must send).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct Expect {
    /// The case must be NACKed with a message containing this.
    nack: Option<String>,
    workload_by_ip: Vec<ByIp>,
    services_by_vip: Vec<ByVip>,
    /// Service key → the uids in its config_dump `endpoints` (ztunnel's endpoint set).
    endpoints: BTreeMap<String, Vec<String>>,
    /// Workload uid → a partial config_dump object (`null`: no such workload).
    workloads: BTreeMap<String, Value>,
    /// Service key → a partial config_dump object (`null`: no such service).
    services: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByIp {
    ip: IpAddr,
    #[serde(default)]
    network: String,
    /// `null` (or absent): no workload.
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByVip {
    ip: IpAddr,
    #[serde(default)]
    network: String,
    services: Vec<String>,
}

/// What ztun produces where it disagrees with the facts, in `expect`'s terms. Each entry
/// replaces the facts' entry for the same thing (or adds one): `nack`; a `workloadByIp` or
/// `servicesByVip` row by its ip and network; an `endpoints` set; in a `workloads` or
/// `services` partial object, the keys given (the others stay the facts').
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct ZtunGets {
    /// `null`: ztun ACKs (the facts say NACK); a text: ztun's NACK contains that.
    #[serde(deserialize_with = "present")]
    nack: Option<Option<String>>,
    workload_by_ip: Vec<ByIp>,
    services_by_vip: Vec<ByVip>,
    endpoints: BTreeMap<String, Vec<String>>,
    workloads: BTreeMap<String, Value>,
    services: BTreeMap<String, Value>,
}

/// A key that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Expect {
    fn count(&self) -> usize {
        usize::from(self.nack.is_some())
            + self.workload_by_ip.len()
            + self.services_by_vip.len()
            + self.endpoints.len()
            + self.workloads.len()
            + self.services.len()
    }

    /// These expectations with what ztun gets in place of the facts it disagrees with.
    fn with(&self, gets: &ZtunGets) -> Expect {
        let mut e = self.clone();
        if let Some(nack) = &gets.nack {
            e.nack = nack.clone();
        }
        for row in &gets.workload_by_ip {
            e.workload_by_ip
                .retain(|w| (w.ip, &w.network) != (row.ip, &row.network));
            e.workload_by_ip.push(row.clone());
        }
        for row in &gets.services_by_vip {
            e.services_by_vip
                .retain(|s| (s.ip, &s.network) != (row.ip, &row.network));
            e.services_by_vip.push(row.clone());
        }
        e.endpoints.extend(gets.endpoints.clone());
        for (dumps, replaced) in [
            (&mut e.workloads, &gets.workloads),
            (&mut e.services, &gets.services),
        ] {
            for (name, got) in replaced {
                match (dumps.get_mut(name), got) {
                    (Some(Value::Object(want)), Value::Object(got)) => want.extend(got.clone()),
                    _ => {
                        dumps.insert(name.clone(), got.clone());
                    }
                }
            }
        }
        e
    }
}

/// Parses and checks the corpus; panics on anything malformed.
fn corpus() -> Corpus {
    let corpus: Corpus = parse(CORPUS).unwrap_or_else(|e| panic!("{CORPUS_PATH}: {e}"));
    let mut seen = HashSet::new();
    for case in &corpus.cases {
        let at = format!("{CORPUS_PATH}: case `{}`", case.name);
        assert!(seen.insert(case.name.as_str()), "{at}: duplicate case name");
        let names: HashSet<String> = case.emitted.iter().map(Address::name).collect();
        assert_eq!(
            names.len(),
            case.emitted.len(),
            "{at}: two resources share a name"
        );
        if case.expect.nack.is_some() {
            assert_eq!(
                case.emitted.len(),
                1,
                "{at}: a NACK case sends exactly one resource"
            );
        }
        if let Some(d) = &case.disagreement {
            assert!(!d.trim().is_empty(), "{at}: empty `disagreement`");
        }
        match (&case.disagreement, &case.ztun_gets) {
            (Some(_), Some(gets)) => assert_ne!(
                case.expect.with(gets),
                case.expect,
                "{at}: `ztunGets` changes nothing in `expect`"
            ),
            (Some(_), None) => panic!("{at}: `disagreement` without `ztunGets`"),
            (None, Some(_)) => panic!("{at}: `ztunGets` without `disagreement`"),
            (None, None) => {}
        }
    }
    corpus
}

/// The corpus text → cases, with every emitted resource checked to encode.
fn parse(text: &str) -> Result<Corpus, String> {
    let corpus: Corpus = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    for case in &corpus.cases {
        for a in &case.emitted {
            a.proto()
                .map_err(|e| format!("case `{}`: {}: {e}", case.name, a.name()))?;
        }
    }
    Ok(corpus)
}

// ---------------------------------------------------------------------------------------------
// The corpus → protos
// ---------------------------------------------------------------------------------------------

/// `AppProtocol` as istio/istio's workload.proto names it (ztun's proto names only UNKNOWN).
const APP_PROTOCOLS: &[(&str, i32)] = &[
    ("UNKNOWN", 0),
    ("HTTP11", 1),
    ("HTTP2", 2),
    ("GRPC", 3),
    ("TCP", 4),
    ("TLS", 5),
];

impl EnumY {
    fn value(&self, what: &str, by_name: impl Fn(&str) -> Option<i32>) -> Result<i32, String> {
        match self {
            EnumY::Number(n) => Ok(*n),
            EnumY::Name(s) => by_name(s).ok_or_else(|| format!("{what}: unknown name {s:?}")),
        }
    }
}

fn enum_or_zero(
    e: &Option<EnumY>,
    what: &str,
    by_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32, String> {
    e.as_ref().map_or(Ok(0), |e| e.value(what, by_name))
}

fn tunnel_protocol(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "tunnelProtocol", |s| {
        wl::TunnelProtocol::from_str_name(s).map(|v| v as i32)
    })
}
fn workload_type(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "workloadType", |s| {
        wl::WorkloadType::from_str_name(s).map(|v| v as i32)
    })
}
fn workload_status(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "status", |s| {
        wl::WorkloadStatus::from_str_name(s).map(|v| v as i32)
    })
}
fn network_mode(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "networkMode", |s| {
        wl::NetworkMode::from_str_name(s).map(|v| v as i32)
    })
}
fn app_tunnel_protocol(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "applicationTunnel.protocol", |s| {
        wl::application_tunnel::Protocol::from_str_name(s).map(|v| v as i32)
    })
}
fn app_protocol(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "appProtocol", |s| {
        APP_PROTOCOLS.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    })
}
fn lb_scope(e: &EnumY) -> Result<i32, String> {
    e.value("routingPreference", |s| {
        wl::load_balancing::Scope::from_str_name(s).map(|v| v as i32)
    })
}
fn lb_mode(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "loadBalancing.mode", |s| {
        wl::load_balancing::Mode::from_str_name(s).map(|v| v as i32)
    })
}
fn lb_health(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "loadBalancing.healthPolicy", |s| {
        wl::load_balancing::HealthPolicy::from_str_name(s).map(|v| v as i32)
    })
}
fn ip_families(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "ipFamilies", |s| {
        wl::IpFamilies::from_str_name(s).map(|v| v as i32)
    })
}
fn visibility(e: &Option<EnumY>) -> Result<i32, String> {
    enum_or_zero(e, "visibility", |s| {
        wl::service::Visibility::from_str_name(s).map(|v| v as i32)
    })
}

impl Address {
    /// The xDS resource name istiod uses: the uid, or `namespace/hostname`.
    fn name(&self) -> String {
        match self {
            Address::Workload(w) => w.uid.clone(),
            Address::Service(s) => s.key(),
        }
    }

    fn proto(&self) -> Result<wl::address::Type, String> {
        Ok(match self {
            Address::Workload(w) => wl::address::Type::Workload(w.proto()?),
            Address::Service(s) => wl::address::Type::Service(s.proto()?),
        })
    }
}

impl WorkloadY {
    fn proto(&self) -> Result<wl::Workload, String> {
        let services = self
            .services
            .iter()
            .map(|(k, l)| Ok((k.clone(), l.proto()?)))
            .collect::<Result<_, String>>()?;
        Ok(wl::Workload {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            addresses: self.addresses.iter().map(|ip| ip_bytes(*ip)).collect(),
            hostname: self.hostname.clone(),
            network: self.network.clone(),
            tunnel_protocol: tunnel_protocol(&self.tunnel_protocol)?,
            trust_domain: self.trust_domain.clone(),
            service_account: self.service_account.clone(),
            waypoint: self.waypoint.as_ref().map(GatewayY::proto).transpose()?,
            network_gateway: self
                .network_gateway
                .as_ref()
                .map(GatewayY::proto)
                .transpose()?,
            node: self.node.clone(),
            canonical_name: self.canonical_name.clone(),
            canonical_revision: self.canonical_revision.clone(),
            workload_type: workload_type(&self.workload_type)?,
            workload_name: self.workload_name.clone(),
            native_tunnel: self.native_tunnel,
            application_tunnel: self
                .application_tunnel
                .as_ref()
                .map(|t| {
                    Ok::<_, String>(wl::ApplicationTunnel {
                        protocol: app_tunnel_protocol(&t.protocol)?,
                        port: t.port,
                    })
                })
                .transpose()?,
            services,
            authorization_policies: self.authorization_policies.clone(),
            status: workload_status(&self.status)?,
            cluster_id: self.cluster_id.clone(),
            locality: self.locality.as_ref().map(|l| wl::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            }),
            network_mode: network_mode(&self.network_mode)?,
            extensions: extensions(&self.extensions)?,
            capacity: self.capacity,
        })
    }
}

impl ServiceY {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    fn proto(&self) -> Result<wl::Service, String> {
        Ok(wl::Service {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
            addresses: self.addresses.iter().map(NetworkAddressY::proto).collect(),
            ports: ports(&self.ports)?,
            subject_alt_names: self.subject_alt_names.clone(),
            waypoint: self.waypoint.as_ref().map(GatewayY::proto).transpose()?,
            load_balancing: self
                .load_balancing
                .as_ref()
                .map(|lb| {
                    Ok::<_, String>(wl::LoadBalancing {
                        routing_preference: lb
                            .routing_preference
                            .iter()
                            .map(lb_scope)
                            .collect::<Result<_, _>>()?,
                        mode: lb_mode(&lb.mode)?,
                        health_policy: lb_health(&lb.health_policy)?,
                    })
                })
                .transpose()?,
            ip_families: ip_families(&self.ip_families)?,
            extensions: extensions(&self.extensions)?,
            canonical: self.canonical,
            ingress_use_waypoint: self.ingress_use_waypoint,
            weighted_waypoints: self
                .weighted_waypoints
                .iter()
                .map(|w| {
                    Ok::<_, String>(wl::WeightedWaypoint {
                        destination: w.destination.as_ref().map(GatewayY::proto).transpose()?,
                        weight: w.weight,
                    })
                })
                .collect::<Result<_, _>>()?,
            visibility: visibility(&self.visibility)?,
        })
    }
}

impl NetworkAddressY {
    fn proto(&self) -> wl::NetworkAddress {
        wl::NetworkAddress {
            network: self.network.clone(),
            address: ip_bytes(self.address),
            length: self.length,
        }
    }
}

impl GatewayY {
    fn proto(&self) -> Result<wl::GatewayAddress, String> {
        use wl::gateway_address::Destination;
        let destination = match (&self.hostname, &self.address) {
            (Some(h), None) => Some(Destination::Hostname(wl::NamespacedHostname {
                namespace: h.namespace.clone(),
                hostname: h.hostname.clone(),
            })),
            (None, Some(a)) => Some(Destination::Address(a.proto())),
            (None, None) => None,
            (Some(_), Some(_)) => return Err("a gateway has both hostname and address".into()),
        };
        Ok(wl::GatewayAddress {
            destination,
            hbone_mtls_port: self.hbone_mtls_port,
        })
    }
}

impl PortListY {
    fn proto(&self) -> Result<wl::PortList, String> {
        Ok(wl::PortList {
            ports: ports(&self.ports)?,
        })
    }
}

fn ports(list: &[PortY]) -> Result<Vec<wl::Port>, String> {
    list.iter()
        .map(|p| {
            Ok(wl::Port {
                service_port: p.service_port,
                target_port: p.target_port,
                app_protocol: app_protocol(&p.app_protocol)?,
            })
        })
        .collect()
}

fn extensions(list: &[ExtensionY]) -> Result<Vec<wl::Extension>, String> {
    const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
    list.iter()
        .map(|e| {
            let config = match &e.config {
                None => None,
                Some(any) if any.type_url == STRING_VALUE => Some(prost_types::Any {
                    type_url: any.type_url.clone(),
                    // prost encodes `String` as google.protobuf.StringValue.
                    value: any.value.clone().encode_to_vec(),
                }),
                Some(any) => return Err(format!("extension config type {:?}", any.type_url)),
            };
            Ok(wl::Extension {
                name: e.name.clone(),
                config,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ztunnel's local file format
// ---------------------------------------------------------------------------------------------

type Yaml = serde_yaml_ng::Value;

fn yaml(v: impl serde::Serialize) -> Yaml {
    serde_yaml_ng::to_value(v).expect("YAML value")
}

/// A port map with numeric keys, as the local format reads it.
fn local_ports(list: &[PortY]) -> Result<Yaml, String> {
    let mut m = serde_yaml_ng::Mapping::new();
    for p in list {
        let service = u16::try_from(p.service_port).map_err(|_| "port above 65535")?;
        let target = u16::try_from(p.target_port).map_err(|_| "port above 65535")?;
        m.insert(yaml(service), yaml(target));
    }
    Ok(Yaml::Mapping(m))
}

fn insert(map: &mut Yaml, key: &str, value: Yaml) {
    if let Yaml::Mapping(m) = map {
        m.insert(yaml(key), value);
    }
}

/// `network/ip` or `namespace/hostname`, as the local format writes a gateway.
fn local_gateway(g: &GatewayY) -> Result<Value, String> {
    let destination = match (&g.hostname, &g.address) {
        (Some(h), None) if !h.hostname.contains('/') => format!("{}/{}", h.namespace, h.hostname),
        (None, Some(a)) => format!("{}/{}", a.network, a.address),
        _ => return Err("a gateway destination the local format cannot write".into()),
    };
    Ok(json!({"destination": destination, "hboneMtlsPort": g.hbone_mtls_port}))
}

impl WorkloadY {
    /// This workload in the local format, or why it cannot be written there. `extensions`
    /// has no key there; ztunnel ignores it from xDS too, so it is left out.
    fn local(&self) -> Result<Yaml, String> {
        let protocol = match tunnel_protocol(&self.tunnel_protocol)? {
            0 => "TCP",
            1 => "HBONE",
            n => return Err(format!("tunnel protocol {n}")),
        };
        let status = match workload_status(&self.status)? {
            0 => "Healthy",
            1 => "Unhealthy",
            n => return Err(format!("status {n}")),
        };
        let network_mode = match network_mode(&self.network_mode)? {
            0 => "Standard",
            1 => "HostNetwork",
            n => return Err(format!("network mode {n}")),
        };
        // The local format takes the type as text; xDS's default (0) is DEPLOYMENT.
        let workload_type = match workload_type(&self.workload_type)? {
            0 => "deployment",
            1 => "cronjob",
            2 => "pod",
            3 => "job",
            n => return Err(format!("workload type {n}")),
        };
        let mut w = json!({
            "uid": self.uid,
            "name": self.name,
            "namespace": self.namespace,
            "workloadIps": self.addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "hostname": self.hostname,
            "network": self.network,
            "protocol": protocol,
            "trustDomain": self.trust_domain,
            "serviceAccount": self.service_account,
            "node": self.node,
            "canonicalName": self.canonical_name,
            "canonicalRevision": self.canonical_revision,
            "workloadType": workload_type,
            "workloadName": self.workload_name,
            "nativeTunnel": self.native_tunnel,
            "authorizationPolicies": self.authorization_policies,
            "status": status,
            "clusterId": self.cluster_id,
            "networkMode": network_mode,
        });
        let o = w.as_object_mut().expect("object");
        if let Some(g) = &self.waypoint {
            o.insert("waypoint".into(), local_gateway(g)?);
        }
        if let Some(g) = &self.network_gateway {
            o.insert("networkGateway".into(), local_gateway(g)?);
        }
        if let Some(t) = &self.application_tunnel {
            let protocol = match app_tunnel_protocol(&t.protocol)? {
                0 => "NONE",
                1 => "PROXY",
                n => return Err(format!("application tunnel protocol {n}")),
            };
            let mut tunnel = json!({"protocol": protocol});
            if t.port != 0 {
                tunnel["port"] = json!(t.port);
            }
            o.insert("applicationTunnel".into(), tunnel);
        }
        if let Some(l) = &self.locality {
            o.insert(
                "locality".into(),
                json!({"region": l.region, "zone": l.zone, "subzone": l.subzone}),
            );
        }
        match self.capacity {
            None => {}
            Some(0) => return Err("capacity 0".into()),
            Some(n) => {
                o.insert("capacity".into(), json!(n));
            }
        }
        let mut w = yaml(w);
        if !self.services.is_empty() {
            let mut services = serde_yaml_ng::Mapping::new();
            for (key, list) in &self.services {
                services.insert(yaml(key), local_ports(&list.ports)?);
            }
            insert(&mut w, "services", Yaml::Mapping(services));
        }
        Ok(w)
    }
}

impl ServiceY {
    /// This service in the local format, or why it cannot be written there. `app_protocol`,
    /// `ingress_use_waypoint` and `extensions` have no key there; ztunnel ignores them from
    /// xDS too, so they are left out.
    fn local(&self) -> Result<Yaml, String> {
        let mut vips = Vec::new();
        let mut cidr_vips = Vec::new();
        for a in &self.addresses {
            let max = if a.address.is_ipv4() { 32 } else { 128 };
            match a.length {
                Some(len) if len != max => cidr_vips.push(json!({
                    "network": a.network,
                    "cidr": format!("{}/{len}", a.address),
                })),
                _ => vips.push(format!("{}/{}", a.network, a.address)),
            }
        }
        let visibility = match visibility(&self.visibility)? {
            0 => "Public",
            1 => "Namespace",
            n => return Err(format!("visibility {n}")),
        };
        let mut s = json!({
            "name": self.name,
            "namespace": self.namespace,
            "hostname": self.hostname,
            "vips": vips,
            "cidrVips": cidr_vips,
            "subjectAltNames": self.subject_alt_names,
            "canonical": self.canonical,
            "visibility": visibility,
        });
        let o = s.as_object_mut().expect("object");
        if let Some(g) = &self.waypoint {
            o.insert("waypoint".into(), local_gateway(g)?);
        }
        let weighted = self
            .weighted_waypoints
            .iter()
            .map(|w| {
                let g = w
                    .destination
                    .as_ref()
                    .ok_or("a weighted waypoint without destination")?;
                Ok(json!({"destination": local_gateway(g)?, "weight": w.weight}))
            })
            .collect::<Result<Vec<_>, String>>()?;
        o.insert("weightedWaypoints".into(), json!(weighted));
        if let Some(lb) = &self.load_balancing {
            let scopes = lb
                .routing_preference
                .iter()
                .map(|e| match lb_scope(e)? {
                    1 => Ok("Region"),
                    2 => Ok("Zone"),
                    3 => Ok("Subzone"),
                    4 => Ok("Node"),
                    5 => Ok("Cluster"),
                    6 => Ok("Network"),
                    n => Err(format!("routing preference {n}")),
                })
                .collect::<Result<Vec<_>, String>>()?;
            let mode = match lb_mode(&lb.mode)? {
                0 => "Standard",
                1 => "Strict",
                2 => "Failover",
                3 => "Passthrough",
                n => return Err(format!("load-balancing mode {n}")),
            };
            let health = match lb_health(&lb.health_policy)? {
                0 => "OnlyHealthy",
                1 => "AllowAll",
                n => return Err(format!("health policy {n}")),
            };
            o.insert(
                "loadBalancer".into(),
                json!({"routingPreferences": scopes, "mode": mode, "healthPolicy": health}),
            );
        }
        match ip_families(&self.ip_families)? {
            0 => {}
            1 => {
                o.insert("ipFamilies".into(), json!("IPv4"));
            }
            2 => {
                o.insert("ipFamilies".into(), json!("IPv6"));
            }
            3 => {
                o.insert("ipFamilies".into(), json!("Dual"));
            }
            n => return Err(format!("ip families {n}")),
        }
        let mut s = yaml(s);
        insert(&mut s, "ports", local_ports(&self.ports)?);
        Ok(s)
    }
}

/// The case as a ztunnel local config document, or why the format cannot express it.
fn local_yaml(case: &Case) -> Result<String, String> {
    if case.expect.nack.is_some() {
        return Err("expects a NACK".into());
    }
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for a in &case.emitted {
        match a {
            Address::Workload(w) => workloads.push(w.local()?),
            Address::Service(s) => services.push(s.local()?),
        }
    }
    let mut doc = serde_yaml_ng::Mapping::new();
    doc.insert(yaml("workloads"), Yaml::Sequence(workloads));
    doc.insert(yaml("services"), Yaml::Sequence(services));
    serde_yaml_ng::to_string(&Yaml::Mapping(doc)).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Checking the state
// ---------------------------------------------------------------------------------------------

/// Checks `e` (a case's state expectations) against `snap`, appending one line per mismatch.
fn check_state(snap: &Snapshot, e: &Expect, out: &mut Vec<String>) {
    for want in &e.workload_by_ip {
        let got = snap
            .workload_by_ip(&want.network, want.ip)
            .map(|w| w.uid.to_string());
        if got != want.uid {
            out.push(format!(
                "workload at {:?}/{}: got {got:?}, want {:?}",
                want.network, want.ip, want.uid
            ));
        }
    }
    for want in &e.services_by_vip {
        let got: BTreeSet<String> = snap
            .services_by_vip(&want.network, want.ip)
            .iter()
            .map(|s| s.key())
            .collect();
        let expected: BTreeSet<String> = want.services.iter().cloned().collect();
        if got != expected {
            out.push(format!(
                "services at VIP {:?}/{}: got {got:?}, want {expected:?}",
                want.network, want.ip
            ));
        }
    }
    for (key, uids) in &e.endpoints {
        let Some(svc) = snap.service(key) else {
            out.push(format!("endpoints of {key}: no such service"));
            continue;
        };
        let dump = crate::ops::admin::service_dump(snap, svc);
        let got: BTreeSet<String> = dump["endpoints"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let expected: BTreeSet<String> = uids.iter().cloned().collect();
        if got != expected {
            out.push(format!(
                "endpoints of {key}: got {got:?}, want {expected:?}"
            ));
        }
    }
    for (uid, want) in &e.workloads {
        let got = snap
            .workload_by_uid(uid)
            .map(|w| serde_json::to_value(&**w).expect("workload JSON"));
        check_dump(&format!("workload {uid}"), want, got, out);
    }
    for (key, want) in &e.services {
        let got = snap
            .service(key)
            .map(|s| crate::ops::admin::service_dump(snap, s));
        check_dump(&format!("service {key}"), want, got, out);
    }
}

fn check_dump(what: &str, want: &Value, got: Option<Value>, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Null, None) => {}
        (Value::Null, Some(_)) => out.push(format!("{what}: present, want none")),
        (_, None) => out.push(format!("{what}: missing")),
        (want, Some(got)) => {
            let mut wrong = Vec::new();
            subset(want, &got, "", &mut wrong);
            if !wrong.is_empty() {
                out.push(format!("{what} config_dump: {}", wrong.join("; ")));
            }
        }
    }
}

/// Whether `want` is a subset of `got`: objects by their keys (a missing key counts as
/// `null`), arrays element by element with equal length, anything else by equality.
fn subset(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                subset(
                    v,
                    g.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                subset(a, b, &format!("{path}[{i}]"), out);
            }
        }
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{path}: got {g}, want {w}")),
    }
}

/// The state holds exactly `names` (workload uids and service keys)?
fn holds(snap: &Snapshot, names: &BTreeSet<String>) -> bool {
    let mut have: BTreeSet<String> = snap.workloads().map(|w| w.uid.to_string()).collect();
    have.extend(snap.services().map(|s| s.key()));
    have == *names
}

/// Mismatches of one case, sorted into failures and known disagreements.
#[derive(Default)]
struct Outcome {
    failures: Vec<String>,
    known: Vec<String>,
}

impl Outcome {
    /// Records how `case` fared via `path`; `check` lists the mismatches against given
    /// expectations. An unmarked case must match its facts (`expect`). A marked one must match
    /// its facts with `ztunGets` applied, in full; its mismatches with the facts are known
    /// disagreements. With `strict`, it must still disagree with the facts (else the marker
    /// is stale); without, matching the facts in full is accepted too.
    fn record(
        &mut self,
        case: &Case,
        path: &str,
        check: impl Fn(&Expect) -> Vec<String>,
        strict: bool,
    ) {
        let at = |m: String| format!("case `{}` via {path}: {m}", case.name);
        let facts = check(&case.expect);
        let Some(gets) = &case.ztun_gets else {
            self.failures.extend(facts.into_iter().map(at));
            return;
        };
        let against_ztun = check(&case.expect.with(gets));
        if facts.is_empty() && !strict {
            return;
        }
        if !against_ztun.is_empty() {
            self.failures.extend(
                against_ztun
                    .into_iter()
                    .map(|m| at(format!("(facts with `ztunGets` applied) {m}"))),
            );
        }
        if facts.is_empty() {
            self.failures.push(at(
                "marked `disagreement` but ztun now agrees: drop the marker and `ztunGets`".into(),
            ));
        }
        self.known.extend(facts.into_iter().map(at));
    }

    fn finish(self, path: &str, checked: usize) {
        if !self.known.is_empty() {
            eprintln!(
                "{} known disagreement(s) via {path} (marked in {CORPUS_PATH}):\n{}",
                self.known.len(),
                self.known.join("\n")
            );
        }
        report(
            CORPUS_PATH,
            path,
            &format!("{checked} cases"),
            &self.failures,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every case through the real delta-xDS client, one after the other on one stream: the
/// previous case's resources are removed, then the case's are sent in one response.
#[tokio::test]
async fn address_corpus_through_xds() {
    let corpus = corpus();
    let (_ads, client, mut conn) = connected_client().await;

    let mut outcome = Outcome::default();
    let mut previous: Vec<String> = Vec::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        // Mismatches whatever the expectations.
        let mut always = Vec::new();
        if !previous.is_empty() {
            let removed: Vec<&str> = previous.iter().map(String::as_str).collect();
            let nonce = format!("{i}-clear");
            match conn
                .exchange(ADDRESS_TYPE, Vec::new(), &removed, &nonce)
                .await
            {
                Ok(None) => {}
                Ok(Some(m)) => always.push(format!("removal NACKed: {m}")),
                Err(e) => always.push(e),
            }
        }
        let version = format!("case-{i}");
        let resources = case
            .emitted
            .iter()
            .map(|a| {
                let proto = a.proto().expect("checked by corpus()");
                address_resource(&a.name(), &version, proto)
            })
            .collect();
        let names: BTreeSet<String> = case.emitted.iter().map(Address::name).collect();
        previous = names.iter().cloned().collect();
        let nonce = format!("{i}-case");
        let nacked = match conn.exchange(ADDRESS_TYPE, resources, &[], &nonce).await {
            Ok(n) => n,
            Err(e) => {
                always.push(e);
                outcome.record(case, "xDS", |_| always.clone(), true);
                continue;
            }
        };
        // A NACK case sends one resource: after a NACK the state holds nothing of the case.
        let present = match nacked {
            None => names,
            Some(_) => BTreeSet::new(),
        };
        let snap = state_where(&client.reader, |snap| {
            if holds(snap, &present) {
                Ok(())
            } else {
                Err(format!("the state never held exactly {present:?}"))
            }
        })
        .await;
        let check = |expect: &Expect| {
            let mut mismatches = always.clone();
            match (&expect.nack, &nacked) {
                (None, None) => {}
                (None, Some(m)) => {
                    mismatches.push(format!("NACKed (istiod's output must be accepted): {m}"))
                }
                (Some(want), None) => mismatches.push(format!(
                    "ACKed; ztunnel rejects this (want a NACK containing {want:?})"
                )),
                (Some(want), Some(m)) if !m.contains(want.as_str()) => {
                    mismatches.push(format!("NACK {m:?} does not contain {want:?}"))
                }
                (Some(_), Some(_)) => {}
            }
            match &snap {
                Ok(snap) => check_state(snap, expect, &mut mismatches),
                Err(e) => mismatches.push(e.clone()),
            }
            mismatches
        };
        outcome.record(case, "xDS", check, true);
    }
    outcome.finish("xDS", corpus.cases.len());
}

/// Every case the local format can express, loaded as ztun loads `LOCAL_XDS_PATH`. The
/// models must also equal what the xDS translation makes of the same resources.
#[test]
fn address_corpus_through_local_file() {
    let corpus = corpus();
    let mut outcome = Outcome::default();
    let mut checked = 0;
    let mut skipped = Vec::new();
    for case in &corpus.cases {
        let text = match local_yaml(case) {
            Ok(text) => text,
            Err(why) => {
                skipped.push(format!("{} ({why})", case.name));
                continue;
            }
        };
        checked += 1;
        let mut always = Vec::new();
        let config = match crate::control::local::parse(&text) {
            Ok(config) => config,
            Err(e) => {
                always.push(format!("local file rejected: {e}\n{text}"));
                outcome.record(case, "the local file", |_| always.clone(), false);
                continue;
            }
        };
        for a in &case.emitted {
            let name = a.name();
            let differs = match a.proto().expect("checked by corpus()") {
                wl::address::Type::Workload(w) => differs(
                    Workload::try_from(w),
                    config.workloads.iter().find(|l| *l.uid == *name),
                ),
                wl::address::Type::Service(s) => differs(
                    Service::try_from(s),
                    config.services.iter().find(|l| l.key() == name),
                ),
            };
            if let Some(d) = differs {
                always.push(format!("{name} differs between xDS and the local file:{d}"));
            }
        }
        let (writer, reader) = state::new();
        crate::control::local_watch::publish(&writer, config);
        let snap = reader.load_full();
        let check = |expect: &Expect| {
            let mut mismatches = always.clone();
            check_state(&snap, expect, &mut mismatches);
            mismatches
        };
        outcome.record(case, "the local file", check, false);
    }
    eprintln!(
        "{checked} case(s) through the local file; not expressible there: {}",
        skipped.join(", ")
    );
    outcome.finish("the local file", checked);
}

/// `None` when the xDS translation and the local file made the same model value.
fn differs<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    via_xds: Result<T, E>,
    via_file: Option<&T>,
) -> Option<String> {
    match (&via_xds, via_file) {
        (Ok(x), Some(l)) if x == l => None,
        _ => Some(format!("\n  xDS:  {via_xds:?}\n  file: {via_file:?}")),
    }
}

/// An empty or one-sided corpus must never pass.
#[test]
fn address_corpus_is_substantial() {
    let corpus = corpus();
    assert!(
        corpus.cases.len() >= MIN_CASES,
        "{CORPUS_PATH}: {} cases, want at least {MIN_CASES}",
        corpus.cases.len()
    );
    for case in &corpus.cases {
        assert!(
            case.expect.count() > 0,
            "case `{}` expects nothing",
            case.name
        );
        assert!(
            !case.about.trim().is_empty(),
            "case `{}` has no `about`",
            case.name
        );
        assert!(
            !case.emitted.is_empty(),
            "case `{}` sends nothing",
            case.name
        );
    }
    let local = corpus
        .cases
        .iter()
        .filter(|c| local_yaml(c).is_ok())
        .count();
    assert!(
        local >= MIN_LOCAL_CASES,
        "{local} cases expressible in the local file, want at least {MIN_LOCAL_CASES}"
    );
    let all = || corpus.cases.iter().flat_map(|c| &c.emitted);
    assert!(
        corpus.cases.iter().any(|c| c.expect.nack.is_some()),
        "no case expects a NACK"
    );
    assert!(
        all().any(|a| matches!(a, Address::Workload(w) if w.addresses.is_empty())),
        "no workload without addresses"
    );
    assert!(
        all().any(|a| matches!(a, Address::Service(s) if s.addresses.len() > 1)),
        "no service with several VIPs"
    );
    assert!(
        all().any(|a| matches!(a, Address::Workload(w) if w.addresses.iter().any(IpAddr::is_ipv6))),
        "no IPv6 workload"
    );
}

/// A typo in the corpus is an error, not a silently ignored key.
#[test]
fn address_corpus_rejects_unknown_keys() {
    let case = |emitted: &str, expect: &str| {
        format!(
            "cases:\n- name: x\n  about: y\n  istio: z\n  emitted: {emitted}\n  expect: {expect}\n"
        )
    };
    let good = case("[{workload: {uid: u, addresses: [10.0.0.1]}}]", "{nack: x}");
    assert!(parse(&good).is_ok(), "{:?}", parse(&good).err());
    for (emitted, expect, typo) in [
        (
            "[{workload: {uid: u, adresses: []}}]",
            "{nack: x}",
            "adresses",
        ),
        ("[{workloads: {uid: u}}]", "{nack: x}", "workloads"),
        ("[{service: {hostname: h, vips: []}}]", "{nack: x}", "vips"),
        (
            "[{workload: {uid: u}}]",
            "{workloadByIP: []}",
            "workloadByIP",
        ),
        (
            "[{workload: {uid: u, tunnelProtocol: HBONNE}}]",
            "{nack: x}",
            "HBONNE",
        ),
        (
            "[{service: {ports: [{servicePort: 1, appProtocol: HTTP3}]}}]",
            "{nack: x}",
            "HTTP3",
        ),
    ] {
        let err = parse(&case(emitted, expect)).expect_err(typo);
        assert!(err.contains(typo), "{typo}: {err}");
    }
}

/// `ztunGets` replaces only what it names: `nack: null` is an ACK and an absent `nack` keeps
/// the facts'; a row replaces the facts' row for its IP; a partial object keeps the facts'
/// other keys.
#[test]
fn ztun_gets_replaces_only_what_it_names() {
    let facts: Expect = serde_yaml_ng::from_str(
        "{nack: x, workloadByIp: [{ip: 10.0.0.1, uid: a}, {ip: 10.0.0.2, uid: b}], \
         workloads: {a: {status: Healthy, name: a}}}",
    )
    .unwrap();
    let gets: ZtunGets = serde_yaml_ng::from_str(
        "{nack: null, workloadByIp: [{ip: 10.0.0.2, uid: c}], workloads: {a: {status: Unhealthy}}}",
    )
    .unwrap();
    let e = facts.with(&gets);
    assert_eq!(e.nack, None);
    let rows: Vec<(IpAddr, Option<&str>)> = e
        .workload_by_ip
        .iter()
        .map(|r| (r.ip, r.uid.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            (IpAddr::from([10, 0, 0, 1]), Some("a")),
            (IpAddr::from([10, 0, 0, 2]), Some("c"))
        ]
    );
    assert_eq!(
        e.workloads["a"],
        json!({"status": "Unhealthy", "name": "a"})
    );

    let gets: ZtunGets = serde_yaml_ng::from_str("{workloads: {b: null}}").unwrap();
    let e = facts.with(&gets);
    assert_eq!(e.nack.as_deref(), Some("x"));
    assert_eq!(e.workloads["a"], facts.workloads["a"]);
    assert_eq!(e.workloads["b"], Value::Null);
    assert!(serde_yaml_ng::from_str::<ZtunGets>("{nak: null}").is_err());
}
