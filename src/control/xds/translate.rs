//! xDS resources (proto) → `state::model`, validating at the edge.
//!
//! Strict where security is at stake: anything that could make a policy match more than it
//! says, or send plaintext to a workload that expects a tunnel, rejects the whole resource
//! (the client NACKs it by name and keeps the previous version). ztunnel silently drops
//! unparsable IPs and empty string matches, which can turn "match these" into "match
//! everything"; ztun never widens a policy.
//!
//! | Input | Result |
//! |---|---|
//! | IP bytes not 4 or 16 long, prefix longer than the address | reject |
//! | policy `StringMatch` without a variant | reject |
//! | policy `Match` without conditions (istiod's HTTP-only conditions) | accept; never matches at L4 |
//! | empty `GatewayAddress.destination` | reject |
//! | `LEGACY_ISTIO_MTLS` or unknown tunnel protocol | reject |
//! | port > 65535 | reject |
//! | empty workload uid, service namespace/hostname, policy namespace/name (the keys) | reject |
//! | `trust_domain` / `service_account` / `cluster_id` empty | `cluster.local` / `default` / `Kubernetes` |
//! | `capacity` absent or 0 | 1 |
//!
//! Unknown enum values (a newer control plane) are counted and either take the safer value
//! or reject the resource when no value is safe:
//!
//! | Enum | Unknown value becomes |
//! |---|---|
//! | `WorkloadStatus` | `UNHEALTHY` (no traffic) |
//! | `NetworkMode` | `STANDARD` (indexed by IP, so an HBONE workload is never reached in plaintext) |
//! | `WorkloadType` | empty (telemetry only) |
//! | `Service.Visibility` | `NAMESPACE` (narrowest; ztunnel uses `PUBLIC`) |
//! | `IPFamilies` | `AUTOMATIC` |
//! | `LoadBalancing.HealthPolicy` | `ONLY_HEALTHY` |
//! | `Authorization.action` | `DENY` |
//! | `TunnelProtocol`, `ApplicationTunnel.Protocol`, `LoadBalancing.Scope`/`Mode`, `Authorization.scope` | reject |
//!
//! IPv4-mapped IPv6 addresses become IPv4 (as the data plane sees peers); CIDRs are
//! normalised to their first address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::proto::istio::security as sec;
use super::proto::istio::workload as wl;
use crate::state::model::{
    AppTunnelProtocol, ApplicationTunnel, CidrVip, GatewayAddress, GatewayDestination,
    HealthPolicy, HealthStatus, IpFamilies, IpNet, LoadBalancer, LoadBalancerMode,
    LoadBalancerScope, Locality, NamespacedHostname, NetworkAddress, NetworkMode, Policy,
    PolicyAction, PolicyMatch, PolicyScope, PortMap, Service, ServiceAccountMatch, StringMatch,
    Strng, TunnelProtocol, Visibility, WeightedWaypoint, Workload,
};
use crate::state::SharedStrings;

/// Trust domain of a workload that does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account of a workload that does not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster of a workload that does not name one.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Why a resource cannot be used: the field (a path such as
/// `rules[0].clauses[1].matches[0].source_ips[2]`) and what is wrong with it. This is the
/// reason text of a NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct TranslateError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A value that must be present is empty.
    #[error("must not be empty")]
    Empty,
    /// An address that is neither 4 nor 16 bytes long.
    #[error("is {0} bytes long, not an IPv4 (4) or IPv6 (16) address")]
    NotAnIp(usize),
    /// A prefix length above the address's bit count.
    #[error("prefix length {len} exceeds {max}")]
    PrefixTooLong {
        /// The length given.
        len: u32,
        /// The address family's bit count.
        max: u32,
    },
    /// A port number above 65535.
    #[error("port {0} is out of range")]
    PortOutOfRange(u32),
    /// The legacy Istio mTLS tunnel, which ztun does not speak.
    #[error("LEGACY_ISTIO_MTLS is not supported")]
    LegacyIstioMtls,
    /// An enum value this build does not know and cannot safely default.
    #[error("unknown enum value {0}")]
    UnknownEnum(i32),
    /// A gateway without a destination.
    #[error("has no destination")]
    NoDestination,
    /// A string match without a variant: dropping it could widen the policy.
    #[error("has no exact, prefix, suffix or presence")]
    EmptyStringMatch,
    /// A key that is not `<namespace>/<name>`.
    #[error("{0:?} is not <namespace>/<name>")]
    NotNamespaced(String),
    /// An address resource that is neither a workload nor a service.
    #[error("is neither a workload nor a service")]
    EmptyAddress,
}

/// One decoded `istio.workload.Address`.
#[derive(Debug, Clone, PartialEq)]
pub enum AddressResource {
    /// A workload (keyed by uid).
    Workload(Workload),
    /// A service (keyed by `namespace/hostname`).
    Service(Service),
}

/// A translated value plus how many unknown enum values were replaced by a safe default.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated<T> {
    /// The model value.
    pub value: T,
    /// Unknown enum values met (including those in a rejected resource, see
    /// [`translate_address`]).
    pub unknown_enums: u32,
}

/// Translates an address resource, counting unknown enum values. On rejection the count is
/// returned too, so it can be recorded.
pub fn translate_address(
    a: wl::Address,
) -> Result<Translated<AddressResource>, (TranslateError, u32)> {
    address(Ctx::default(), &a)
}

/// As [`translate_address`], building the resource's repeated strings (namespace, service
/// account, node, service keys, ...) as the mesh's shared copies: a string the mesh already
/// holds is not allocated again, and the result can be inserted with
/// [`SnapshotBuilder::insert_shared_workload`](crate::state::SnapshotBuilder::insert_shared_workload)
/// / `insert_shared_service` (drop `strings` first). Borrows the message: a decoder can reuse
/// it (and its strings' buffers) for the next resource.
pub fn translate_shared_address(
    a: &wl::Address,
    strings: &mut SharedStrings,
) -> Result<Translated<AddressResource>, (TranslateError, u32)> {
    address(
        Ctx {
            unknown_enums: 0,
            strings: Some(strings),
        },
        a,
    )
}

fn address(
    mut ctx: Ctx<'_>,
    a: &wl::Address,
) -> Result<Translated<AddressResource>, (TranslateError, u32)> {
    let value = match &a.r#type {
        Some(wl::address::Type::Workload(w)) => {
            workload(&mut ctx, w).map(AddressResource::Workload)
        }
        Some(wl::address::Type::Service(s)) => service(&mut ctx, s).map(AddressResource::Service),
        None => Err(invalid("type", Problem::EmptyAddress)),
    };
    ctx.finish(value)
}

/// Translates an authorization resource, counting unknown enum values.
pub fn translate_policy(
    p: sec::Authorization,
) -> Result<Translated<Policy>, (TranslateError, u32)> {
    let mut ctx = Ctx::default();
    let value = policy(&mut ctx, p);
    ctx.finish(value)
}

impl TryFrom<wl::Workload> for Workload {
    type Error = TranslateError;

    fn try_from(w: wl::Workload) -> Result<Self, Self::Error> {
        workload(&mut Ctx::default(), &w)
    }
}

impl TryFrom<wl::Service> for Service {
    type Error = TranslateError;

    fn try_from(s: wl::Service) -> Result<Self, Self::Error> {
        service(&mut Ctx::default(), &s)
    }
}

impl TryFrom<wl::Address> for AddressResource {
    type Error = TranslateError;

    fn try_from(a: wl::Address) -> Result<Self, Self::Error> {
        translate_address(a).map(|t| t.value).map_err(|(e, _)| e)
    }
}

impl TryFrom<sec::Authorization> for Policy {
    type Error = TranslateError;

    fn try_from(p: sec::Authorization) -> Result<Self, Self::Error> {
        policy(&mut Ctx::default(), p)
    }
}

/// Counts unknown enum values met during one translation, and shares repeated strings when
/// given the table.
#[derive(Default)]
struct Ctx<'a> {
    unknown_enums: u32,
    strings: Option<&'a mut SharedStrings>,
}

impl Ctx<'_> {
    /// A repeated string: the shared copy when translating with the table, else its own.
    fn share(&mut self, s: &str) -> Strng {
        match &mut self.strings {
            Some(t) => t.share(s),
            None => s.into(),
        }
    }

    /// As [`share`](Self::share), with `default` for an empty value.
    fn share_or(&mut self, s: &str, default: &str) -> Strng {
        self.share(if s.is_empty() { default } else { s })
    }

    /// Records an unknown enum value and returns the safe default.
    fn unknown<T>(&mut self, safe: T) -> T {
        self.unknown_enums += 1;
        safe
    }

    fn finish<T>(
        self,
        value: Result<T, TranslateError>,
    ) -> Result<Translated<T>, (TranslateError, u32)> {
        match value {
            Ok(value) => Ok(Translated {
                value,
                unknown_enums: self.unknown_enums,
            }),
            Err(e) => Err((e, self.unknown_enums)),
        }
    }
}

fn invalid(field: impl Into<String>, problem: Problem) -> TranslateError {
    TranslateError {
        field: field.into(),
        problem,
    }
}

fn workload(ctx: &mut Ctx<'_>, w: &wl::Workload) -> Result<Workload, TranslateError> {
    if w.uid.is_empty() {
        return Err(invalid("uid", Problem::Empty));
    }
    let workload_ips = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, bytes)| ip(bytes).map_err(|p| invalid(format!("addresses[{i}]"), p)))
        .collect::<Result<Vec<_>, _>>()?;
    let protocol = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::None) => TunnelProtocol::Tcp,
        Ok(wl::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        Ok(wl::TunnelProtocol::LegacyIstioMtls) => {
            return Err(invalid("tunnel_protocol", Problem::LegacyIstioMtls))
        }
        Err(_) => {
            ctx.unknown(());
            return Err(invalid(
                "tunnel_protocol",
                Problem::UnknownEnum(w.tunnel_protocol),
            ));
        }
    };
    let status = match wl::WorkloadStatus::try_from(w.status) {
        Ok(wl::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(wl::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => ctx.unknown(HealthStatus::Unhealthy),
    };
    let network_mode = match wl::NetworkMode::try_from(w.network_mode) {
        Ok(wl::NetworkMode::Standard) => NetworkMode::Standard,
        Ok(wl::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
        Err(_) => ctx.unknown(NetworkMode::Standard),
    };
    let workload_type = match wl::WorkloadType::try_from(w.workload_type) {
        Ok(wl::WorkloadType::Deployment) => "deployment",
        Ok(wl::WorkloadType::Cronjob) => "cronjob",
        Ok(wl::WorkloadType::Pod) => "pod",
        Ok(wl::WorkloadType::Job) => "job",
        Err(_) => ctx.unknown(""),
    };
    let application_tunnel = w
        .application_tunnel
        .as_ref()
        .map(|t| {
            let protocol = match wl::application_tunnel::Protocol::try_from(t.protocol) {
                Ok(wl::application_tunnel::Protocol::None) => AppTunnelProtocol::None,
                Ok(wl::application_tunnel::Protocol::Proxy) => AppTunnelProtocol::Proxy,
                Err(_) => {
                    ctx.unknown(());
                    return Err(invalid(
                        "application_tunnel.protocol",
                        Problem::UnknownEnum(t.protocol),
                    ));
                }
            };
            let port = port(|| "application_tunnel.port".into(), t.port)?;
            Ok(ApplicationTunnel {
                protocol,
                port: (port != 0).then_some(port),
            })
        })
        .transpose()?;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        let field = || format!("services[{key:?}]");
        if split_namespaced(key).is_none() {
            return Err(invalid(field(), Problem::NotNamespaced(key.clone())));
        }
        let ports = port_map(field, &list.ports)?;
        services.insert(ctx.share(key), ports);
    }
    Ok(Workload {
        uid: w.uid.as_str().into(),
        name: w.name.as_str().into(),
        namespace: ctx.share(&w.namespace),
        workload_ips,
        hostname: ctx.share(&w.hostname),
        network: ctx.share(&w.network),
        protocol,
        trust_domain: ctx.share_or(&w.trust_domain, DEFAULT_TRUST_DOMAIN),
        service_account: ctx.share_or(&w.service_account, DEFAULT_SERVICE_ACCOUNT),
        waypoint: w
            .waypoint
            .as_ref()
            .map(|g| gateway(ctx, "waypoint", g).map(Box::new))
            .transpose()?,
        network_gateway: w
            .network_gateway
            .as_ref()
            .map(|g| gateway(ctx, "network_gateway", g).map(Box::new))
            .transpose()?,
        node: ctx.share(&w.node),
        canonical_name: ctx.share(&w.canonical_name),
        canonical_revision: ctx.share(&w.canonical_revision),
        workload_type: ctx.share(workload_type),
        workload_name: ctx.share(&w.workload_name),
        native_tunnel: w.native_tunnel,
        application_tunnel,
        services: services.into_iter().collect(),
        authorization_policies: w
            .authorization_policies
            .iter()
            .map(|p| ctx.share(p))
            .collect(),
        status,
        cluster_id: ctx.share_or(&w.cluster_id, DEFAULT_CLUSTER_ID),
        locality: match &w.locality {
            Some(l) => Locality {
                region: ctx.share(&l.region),
                zone: ctx.share(&l.zone),
                subzone: ctx.share(&l.subzone),
            },
            None => Locality {
                region: ctx.share(""),
                zone: ctx.share(""),
                subzone: ctx.share(""),
            },
        },
        network_mode,
        // Weight 0 would make the endpoint unreachable by load balancing; treat it as unset.
        capacity: w.capacity.filter(|c| *c > 0).unwrap_or(1),
    })
}

fn service(ctx: &mut Ctx<'_>, s: &wl::Service) -> Result<Service, TranslateError> {
    if s.namespace.is_empty() {
        return Err(invalid("namespace", Problem::Empty));
    }
    if s.hostname.is_empty() {
        return Err(invalid("hostname", Problem::Empty));
    }
    let mut vips = Vec::new();
    let mut cidr_vips = Vec::new();
    for (i, a) in s.addresses.iter().enumerate() {
        let field = || format!("addresses[{i}]");
        let max = raw_ip(&a.address)
            .map(bits)
            .map_err(|p| invalid(field(), p))?;
        match a.length {
            // No length, or the full length: an ordinary VIP.
            None => {}
            Some(len) if len == max => {}
            Some(len) => {
                let net = ip_net(&a.address, len).map_err(|p| invalid(field(), p))?;
                cidr_vips.push(CidrVip {
                    network: ctx.share(&a.network),
                    address: net.address,
                    prefix_len: net.prefix_len,
                });
                continue;
            }
        }
        vips.push(NetworkAddress {
            network: ctx.share(&a.network),
            address: ip(&a.address).map_err(|p| invalid(field(), p))?,
        });
    }
    let ports = port_map(|| "ports".into(), &s.ports)?;
    let load_balancer = s
        .load_balancing
        .as_ref()
        .map(|lb| load_balancer(ctx, lb))
        .transpose()?;
    let ip_families = match wl::IpFamilies::try_from(s.ip_families) {
        Ok(wl::IpFamilies::Automatic) => IpFamilies::Automatic,
        Ok(wl::IpFamilies::Ipv4Only) => IpFamilies::Ipv4Only,
        Ok(wl::IpFamilies::Ipv6Only) => IpFamilies::Ipv6Only,
        Ok(wl::IpFamilies::Dual) => IpFamilies::Dual,
        Err(_) => ctx.unknown(IpFamilies::Automatic),
    };
    let visibility = match wl::service::Visibility::try_from(s.visibility) {
        Ok(wl::service::Visibility::Public) => Visibility::Public,
        Ok(wl::service::Visibility::Namespace) => Visibility::Namespace,
        Err(_) => ctx.unknown(Visibility::Namespace),
    };
    let weighted_waypoints = s
        .weighted_waypoints
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let field = format!("weighted_waypoints[{i}].destination");
            let destination = w
                .destination
                .as_ref()
                .ok_or_else(|| invalid(field.clone(), Problem::NoDestination))
                .and_then(|g| gateway(ctx, &field, g))?;
            Ok(WeightedWaypoint {
                destination,
                weight: w.weight,
            })
        })
        .collect::<Result<Vec<_>, TranslateError>>()?;
    Ok(Service {
        name: s.name.as_str().into(),
        namespace: ctx.share(&s.namespace),
        hostname: s.hostname.as_str().into(),
        vips,
        cidr_vips,
        ports,
        subject_alt_names: s
            .subject_alt_names
            .iter()
            .map(|san| ctx.share(san))
            .collect(),
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway(ctx, "waypoint", g))
            .transpose()?,
        weighted_waypoints,
        load_balancer,
        ip_families,
        canonical: s.canonical,
        visibility,
    })
}

fn load_balancer(
    ctx: &mut Ctx<'_>,
    lb: &wl::LoadBalancing,
) -> Result<LoadBalancer, TranslateError> {
    use wl::load_balancing::{HealthPolicy as H, Mode as M, Scope as S};
    let mut routing_preferences = Vec::with_capacity(lb.routing_preference.len());
    for (i, raw) in lb.routing_preference.iter().enumerate() {
        let scope = match S::try_from(*raw) {
            Ok(S::Region) => LoadBalancerScope::Region,
            Ok(S::Zone) => LoadBalancerScope::Zone,
            Ok(S::Subzone) => LoadBalancerScope::Subzone,
            Ok(S::Node) => LoadBalancerScope::Node,
            Ok(S::Cluster) => LoadBalancerScope::Cluster,
            Ok(S::Network) => LoadBalancerScope::Network,
            // "Unspecified" carries no preference.
            Ok(S::UnspecifiedScope) => continue,
            Err(_) => {
                ctx.unknown(());
                let field = format!("load_balancing.routing_preference[{i}]");
                return Err(invalid(field, Problem::UnknownEnum(*raw)));
            }
        };
        routing_preferences.push(scope);
    }
    let mode = match M::try_from(lb.mode) {
        Ok(M::UnspecifiedMode) => LoadBalancerMode::Standard,
        Ok(M::Strict) => LoadBalancerMode::Strict,
        Ok(M::Failover) => LoadBalancerMode::Failover,
        Ok(M::Passthrough) => LoadBalancerMode::Passthrough,
        Err(_) => {
            ctx.unknown(());
            return Err(invalid(
                "load_balancing.mode",
                Problem::UnknownEnum(lb.mode),
            ));
        }
    };
    let health_policy = match H::try_from(lb.health_policy) {
        Ok(H::OnlyHealthy) => HealthPolicy::OnlyHealthy,
        Ok(H::AllowAll) => HealthPolicy::AllowAll,
        Err(_) => ctx.unknown(HealthPolicy::OnlyHealthy),
    };
    Ok(LoadBalancer {
        routing_preferences,
        mode,
        health_policy,
    })
}

fn policy(ctx: &mut Ctx<'_>, p: sec::Authorization) -> Result<Policy, TranslateError> {
    if p.name.is_empty() {
        return Err(invalid("name", Problem::Empty));
    }
    if p.namespace.is_empty() {
        return Err(invalid("namespace", Problem::Empty));
    }
    let scope = match sec::Scope::try_from(p.scope) {
        Ok(sec::Scope::Global) => PolicyScope::Global,
        Ok(sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
        Err(_) => {
            ctx.unknown(());
            return Err(invalid("scope", Problem::UnknownEnum(p.scope)));
        }
    };
    let action = match sec::Action::try_from(p.action) {
        Ok(sec::Action::Allow) => PolicyAction::Allow,
        Ok(sec::Action::Deny) => PolicyAction::Deny,
        Err(_) => ctx.unknown(PolicyAction::Deny),
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for (r, rule) in p.rules.into_iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.into_iter().enumerate() {
            let matches = clause
                .matches
                .into_iter()
                .enumerate()
                .map(|(m, x)| policy_match(&format!("rules[{r}].clauses[{c}].matches[{m}]"), x))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    Ok(Policy {
        name: p.name.into(),
        namespace: p.namespace.into(),
        scope,
        action,
        rules,
        dry_run: p.dry_run,
    })
}

fn policy_match(field: &str, m: sec::Match) -> Result<PolicyMatch, TranslateError> {
    let strings = |name: &str, list: Vec<sec::StringMatch>| {
        list.into_iter()
            .enumerate()
            .map(|(i, s)| {
                use sec::string_match::MatchType;
                match s.match_type {
                    Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v.into())),
                    Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v.into())),
                    Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v.into())),
                    Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
                    None => Err(invalid(
                        format!("{field}.{name}[{i}]"),
                        Problem::EmptyStringMatch,
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let nets = |name: &str, list: Vec<sec::Address>| {
        list.into_iter()
            .enumerate()
            .map(|(i, a)| {
                ip_net(&a.address, a.length).map_err(|p| invalid(format!("{field}.{name}[{i}]"), p))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |list: Vec<sec::ServiceAccountMatch>| {
        list.into_iter()
            .map(|sa| ServiceAccountMatch {
                namespace: sa.namespace.into(),
                service_account: sa.service_account.into(),
            })
            .collect::<Vec<_>>()
    };
    let ports = |name: &str, list: Vec<u32>| {
        list.into_iter()
            .enumerate()
            .map(|(i, p)| port(|| format!("{field}.{name}[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()
    };
    let converted = PolicyMatch {
        namespaces: strings("namespaces", m.namespaces)?,
        not_namespaces: strings("not_namespaces", m.not_namespaces)?,
        principals: strings("principals", m.principals)?,
        not_principals: strings("not_principals", m.not_principals)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
        source_ips: nets("source_ips", m.source_ips)?,
        not_source_ips: nets("not_source_ips", m.not_source_ips)?,
        destination_ips: nets("destination_ips", m.destination_ips)?,
        not_destination_ips: nets("not_destination_ips", m.not_destination_ips)?,
        destination_ports: ports("destination_ports", m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", m.not_destination_ports)?,
    };
    // A match with no condition is what istiod sends for HTTP-only conditions: valid, and
    // never matching at L4 (see `authz`).
    Ok(converted)
}

fn gateway(
    ctx: &mut Ctx<'_>,
    field: &str,
    g: &wl::GatewayAddress,
) -> Result<GatewayAddress, TranslateError> {
    use wl::gateway_address::Destination;
    let destination = match &g.destination {
        Some(Destination::Address(a)) => GatewayDestination::Address(NetworkAddress {
            network: ctx.share(&a.network),
            address: ip(&a.address).map_err(|p| invalid(format!("{field}.address"), p))?,
        }),
        Some(Destination::Hostname(h)) => {
            if h.hostname.is_empty() {
                return Err(invalid(format!("{field}.hostname"), Problem::Empty));
            }
            GatewayDestination::Hostname(NamespacedHostname {
                namespace: ctx.share(&h.namespace),
                hostname: ctx.share(&h.hostname),
            })
        }
        None => return Err(invalid(field, Problem::NoDestination)),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port(|| format!("{field}.hbone_mtls_port"), g.hbone_mtls_port)?,
    })
}

/// The field paths are formatted only for an error: this runs for every port of every
/// workload of a full push.
fn port_map(field: impl Fn() -> String, ports: &[wl::Port]) -> Result<PortMap, TranslateError> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok((
                port(|| format!("{}[{i}].service_port", field()), p.service_port)?,
                port(|| format!("{}[{i}].target_port", field()), p.target_port)?,
            ))
        })
        .collect()
}

/// A port number; `field` names it in the error.
fn port(field: impl FnOnce() -> String, value: u32) -> Result<u16, TranslateError> {
    u16::try_from(value).map_err(|_| invalid(field(), Problem::PortOutOfRange(value)))
}

/// A 4- or 16-byte address; IPv4-mapped IPv6 becomes IPv4.
fn ip(bytes: &[u8]) -> Result<IpAddr, Problem> {
    raw_ip(bytes).map(|ip| ip.to_canonical())
}

/// A 4- or 16-byte address, as given.
fn raw_ip(bytes: &[u8]) -> Result<IpAddr, Problem> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    match <[u8; 16]>::try_from(bytes) {
        Ok(v6) => Ok(IpAddr::V6(Ipv6Addr::from(v6))),
        Err(_) => Err(Problem::NotAnIp(bytes.len())),
    }
}

fn bits(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// A prefix, normalised to its first address. IPv4-mapped IPv6 prefixes of /96 or longer
/// become IPv4 prefixes, so they match the IPv4 peers the data plane sees.
fn ip_net(bytes: &[u8], len: u32) -> Result<IpNet, Problem> {
    let raw = raw_ip(bytes)?;
    let max = bits(raw);
    if len > max {
        return Err(Problem::PrefixTooLong { len, max });
    }
    let (address, len) = match raw {
        IpAddr::V6(v6) if len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), len - 96),
            None => (raw, len),
        },
        _ => (raw, len),
    };
    let first = match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(IpNet {
        address: first,
        // len ≤ 128, checked above.
        prefix_len: len as u8,
    })
}

/// `<namespace>/<name>` with both parts non-empty.
fn split_namespaced(text: &str) -> Option<(&str, &str)> {
    let (namespace, name) = text.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name))
}

#[cfg(test)]
mod tests;
