//! ztunnel's local config format as serde types: keys and enum spellings exactly as ztunnel
//! writes them, with unknown keys rejected. These types never leave `control::local`; the
//! parent module converts them into the model.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::state::model::{
    AppTunnelProtocol, HealthPolicy, HealthStatus, IpFamilies, LoadBalancerMode, LoadBalancerScope,
    NetworkMode, PolicyAction, PolicyScope, PortMap, StringMatch, TunnelProtocol, Visibility,
};

/// HBONE port of a gateway that does not name one.
const DEFAULT_HBONE_PORT: u16 = 15008;

fn one() -> u32 {
    1
}

fn default_hbone_port() -> u16 {
    DEFAULT_HBONE_PORT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlWorkload {
    pub(super) workload_ips: Vec<String>,
    #[serde(default)]
    pub(super) uid: String,
    #[serde(default)]
    pub(super) name: String,
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) service_account: String,
    #[serde(default)]
    pub(super) trust_domain: String,
    #[serde(default)]
    pub(super) network: String,
    #[serde(default)]
    pub(super) node: String,
    #[serde(default)]
    pub(super) protocol: YamlProtocol,
    #[serde(default)]
    pub(super) network_mode: YamlNetworkMode,
    #[serde(default)]
    pub(super) hostname: String,
    #[serde(default)]
    pub(super) waypoint: Option<YamlGateway>,
    #[serde(default)]
    pub(super) network_gateway: Option<YamlGateway>,
    #[serde(default)]
    pub(super) native_tunnel: bool,
    #[serde(default)]
    pub(super) application_tunnel: Option<YamlAppTunnel>,
    #[serde(default)]
    pub(super) authorization_policies: Vec<String>,
    #[serde(default)]
    pub(super) status: YamlHealth,
    #[serde(default)]
    pub(super) cluster_id: String,
    #[serde(default)]
    pub(super) locality: YamlLocality,
    #[serde(default)]
    pub(super) workload_name: String,
    #[serde(default)]
    pub(super) workload_type: String,
    #[serde(default)]
    pub(super) canonical_name: String,
    #[serde(default)]
    pub(super) canonical_revision: String,
    #[serde(default = "one")]
    pub(super) capacity: u32,
    #[serde(default)]
    pub(super) services: BTreeMap<String, PortMap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlGateway {
    pub(super) destination: String,
    #[serde(default = "default_hbone_port")]
    pub(super) hbone_mtls_port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlAppTunnel {
    #[serde(default)]
    pub(super) protocol: YamlAppTunnelProtocol,
    #[serde(default)]
    pub(super) port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlLocality {
    #[serde(default)]
    pub(super) region: String,
    #[serde(default)]
    pub(super) zone: String,
    #[serde(default)]
    pub(super) subzone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlService {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) hostname: String,
    #[serde(default)]
    pub(super) vips: Vec<String>,
    #[serde(default)]
    pub(super) cidr_vips: Vec<YamlCidrVip>,
    #[serde(default)]
    pub(super) ports: PortMap,
    #[serde(default)]
    pub(super) endpoints: BTreeMap<String, YamlEndpoint>,
    #[serde(default)]
    pub(super) subject_alt_names: Vec<String>,
    #[serde(default)]
    pub(super) waypoint: Option<YamlGateway>,
    #[serde(default)]
    pub(super) weighted_waypoints: Vec<YamlWeightedWaypoint>,
    #[serde(default)]
    pub(super) load_balancer: Option<YamlLoadBalancer>,
    #[serde(default)]
    pub(super) ip_families: Option<YamlIpFamilies>,
    #[serde(default)]
    pub(super) canonical: bool,
    #[serde(default)]
    pub(super) visibility: YamlVisibility,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlCidrVip {
    #[serde(default)]
    pub(super) network: String,
    pub(super) cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlEndpoint {
    pub(super) workload_uid: String,
    #[serde(default)]
    pub(super) port: PortMap,
    #[serde(default, rename = "status")]
    pub(super) _status: Option<YamlHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlWeightedWaypoint {
    pub(super) destination: YamlGateway,
    #[serde(default = "one")]
    pub(super) weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlLoadBalancer {
    #[serde(default)]
    pub(super) routing_preferences: Vec<YamlScope>,
    #[serde(default)]
    pub(super) mode: YamlLbMode,
    #[serde(default)]
    pub(super) health_policy: YamlHealthPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlPolicy {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) scope: YamlPolicyScope,
    pub(super) action: YamlPolicyAction,
    #[serde(default)]
    pub(super) rules: Vec<Vec<Vec<YamlMatch>>>,
    #[serde(default)]
    pub(super) dry_run: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlMatch {
    #[serde(default)]
    pub(super) namespaces: Vec<YamlStringMatch>,
    #[serde(default)]
    pub(super) not_namespaces: Vec<YamlStringMatch>,
    #[serde(default)]
    pub(super) principals: Vec<YamlStringMatch>,
    #[serde(default)]
    pub(super) not_principals: Vec<YamlStringMatch>,
    #[serde(default)]
    pub(super) service_accounts: Vec<YamlServiceAccount>,
    #[serde(default)]
    pub(super) not_service_accounts: Vec<YamlServiceAccount>,
    #[serde(default)]
    pub(super) source_ips: Vec<String>,
    #[serde(default)]
    pub(super) not_source_ips: Vec<String>,
    #[serde(default)]
    pub(super) destination_ips: Vec<String>,
    #[serde(default)]
    pub(super) not_destination_ips: Vec<String>,
    #[serde(default)]
    pub(super) destination_ports: Vec<u16>,
    #[serde(default)]
    pub(super) not_destination_ports: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct YamlServiceAccount {
    pub(super) namespace: String,
    pub(super) service_account: String,
}

/// A string match, written as a single-key map like ztunnel writes it (`{Exact: "x"}`,
/// `{Prefix: "x"}`, `{Suffix: "x"}`, `{Presence: []}`) or as a YAML tag (`!Exact x`). A map
/// with no key, several keys or another key is a YAML error: a match that cannot be read is
/// never dropped.
pub(super) enum YamlStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

const STRING_MATCH_VARIANTS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

impl<'de> Deserialize<'de> for YamlStringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{EnumAccess, Error, MapAccess, VariantAccess};

        fn variant<E: Error>(name: &str) -> Result<fn(String) -> YamlStringMatch, Option<E>> {
            match name {
                "Exact" => Ok(YamlStringMatch::Exact),
                "Prefix" => Ok(YamlStringMatch::Prefix),
                "Suffix" => Ok(YamlStringMatch::Suffix),
                "Presence" => Err(None),
                other => Err(Some(E::unknown_variant(other, STRING_MATCH_VARIANTS))),
            }
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = YamlStringMatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one of {Exact: s}, {Prefix: s}, {Suffix: s} or {Presence: []}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlStringMatch, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(A::Error::invalid_length(0, &self));
                };
                let value = match variant::<A::Error>(&name) {
                    Ok(make) => make(map.next_value()?),
                    Err(None) => {
                        map.next_value::<NoArguments>()?;
                        YamlStringMatch::Presence
                    }
                    Err(Some(err)) => return Err(err),
                };
                match map.next_key::<serde::de::IgnoredAny>()? {
                    None => Ok(value),
                    Some(_) => Err(A::Error::invalid_length(2, &self)),
                }
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<YamlStringMatch, A::Error> {
                let (name, access) = data.variant::<String>()?;
                match variant::<A::Error>(&name) {
                    Ok(make) => Ok(make(access.newtype_variant()?)),
                    Err(None) => {
                        access.newtype_variant::<NoArguments>()?;
                        Ok(YamlStringMatch::Presence)
                    }
                    Err(Some(err)) => Err(err),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The (ignored) value of `Presence`: `[]`, `{}` or nothing.
pub(super) struct NoArguments;

impl<'de> Deserialize<'de> for NoArguments {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoArguments;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an empty list, an empty map or nothing")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<NoArguments, E> {
                Ok(NoArguments)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<NoArguments, E> {
                Ok(NoArguments)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NoArguments, A::Error> {
                match seq.next_element::<serde::de::IgnoredAny>()? {
                    None => Ok(NoArguments),
                    Some(_) => Err(serde::de::Error::invalid_length(1, &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoArguments, A::Error> {
                match map.next_key::<serde::de::IgnoredAny>()? {
                    None => Ok(NoArguments),
                    Some(_) => Err(serde::de::Error::invalid_length(1, &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, Default)]
pub(super) enum YamlProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlNetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlHealth {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlAppTunnelProtocol {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

#[derive(Deserialize)]
pub(super) enum YamlScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlLbMode {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Deserialize)]
pub(super) enum YamlIpFamilies {
    Dual,
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

#[derive(Deserialize, Default)]
pub(super) enum YamlVisibility {
    #[default]
    Public,
    Namespace,
}

#[derive(Deserialize)]
pub(super) enum YamlPolicyScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Deserialize)]
pub(super) enum YamlPolicyAction {
    Allow,
    Deny,
}

impl From<YamlStringMatch> for StringMatch {
    fn from(value: YamlStringMatch) -> Self {
        match value {
            YamlStringMatch::Exact(s) => StringMatch::Exact(s.into()),
            YamlStringMatch::Prefix(s) => StringMatch::Prefix(s.into()),
            YamlStringMatch::Suffix(s) => StringMatch::Suffix(s.into()),
            YamlStringMatch::Presence => StringMatch::Presence,
        }
    }
}

impl From<YamlProtocol> for TunnelProtocol {
    fn from(value: YamlProtocol) -> Self {
        match value {
            YamlProtocol::Tcp => TunnelProtocol::Tcp,
            YamlProtocol::Hbone => TunnelProtocol::Hbone,
        }
    }
}

impl From<YamlNetworkMode> for NetworkMode {
    fn from(value: YamlNetworkMode) -> Self {
        match value {
            YamlNetworkMode::Standard => NetworkMode::Standard,
            YamlNetworkMode::HostNetwork => NetworkMode::HostNetwork,
        }
    }
}

impl From<YamlHealth> for HealthStatus {
    fn from(value: YamlHealth) -> Self {
        match value {
            YamlHealth::Healthy => HealthStatus::Healthy,
            YamlHealth::Unhealthy => HealthStatus::Unhealthy,
        }
    }
}

impl From<YamlAppTunnelProtocol> for AppTunnelProtocol {
    fn from(value: YamlAppTunnelProtocol) -> Self {
        match value {
            YamlAppTunnelProtocol::None => AppTunnelProtocol::None,
            YamlAppTunnelProtocol::Proxy => AppTunnelProtocol::Proxy,
        }
    }
}

impl From<YamlScope> for LoadBalancerScope {
    fn from(value: YamlScope) -> Self {
        match value {
            YamlScope::Region => LoadBalancerScope::Region,
            YamlScope::Zone => LoadBalancerScope::Zone,
            YamlScope::Subzone => LoadBalancerScope::Subzone,
            YamlScope::Node => LoadBalancerScope::Node,
            YamlScope::Cluster => LoadBalancerScope::Cluster,
            YamlScope::Network => LoadBalancerScope::Network,
        }
    }
}

impl From<YamlLbMode> for LoadBalancerMode {
    fn from(value: YamlLbMode) -> Self {
        match value {
            YamlLbMode::Standard => LoadBalancerMode::Standard,
            YamlLbMode::Strict => LoadBalancerMode::Strict,
            YamlLbMode::Failover => LoadBalancerMode::Failover,
            YamlLbMode::Passthrough => LoadBalancerMode::Passthrough,
        }
    }
}

impl From<YamlHealthPolicy> for HealthPolicy {
    fn from(value: YamlHealthPolicy) -> Self {
        match value {
            YamlHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy,
            YamlHealthPolicy::AllowAll => HealthPolicy::AllowAll,
        }
    }
}

impl From<YamlIpFamilies> for IpFamilies {
    fn from(value: YamlIpFamilies) -> Self {
        match value {
            YamlIpFamilies::Dual => IpFamilies::Dual,
            YamlIpFamilies::Ipv4 => IpFamilies::Ipv4Only,
            YamlIpFamilies::Ipv6 => IpFamilies::Ipv6Only,
        }
    }
}

impl From<YamlVisibility> for Visibility {
    fn from(value: YamlVisibility) -> Self {
        match value {
            YamlVisibility::Public => Visibility::Public,
            YamlVisibility::Namespace => Visibility::Namespace,
        }
    }
}

impl From<YamlPolicyScope> for PolicyScope {
    fn from(value: YamlPolicyScope) -> Self {
        match value {
            YamlPolicyScope::Global => PolicyScope::Global,
            YamlPolicyScope::Namespace => PolicyScope::Namespace,
            YamlPolicyScope::WorkloadSelector => PolicyScope::WorkloadSelector,
        }
    }
}

impl From<YamlPolicyAction> for PolicyAction {
    fn from(value: YamlPolicyAction) -> Self {
        match value {
            YamlPolicyAction::Allow => PolicyAction::Allow,
            YamlPolicyAction::Deny => PolicyAction::Deny,
        }
    }
}
