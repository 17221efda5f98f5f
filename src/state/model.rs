//! ztun's own model of the mesh: workloads, services and authorization policies.
//!
//! These types are what the data plane reads. They carry no protobuf or YAML: the control side
//! (`control/`) converts its inputs into them at the edge, validating as it goes, so code that
//! reads a model value never re-checks it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use super::vecmap::VecMap;
use crate::identity::Identity;

/// Shared immutable string.
pub type Strng = Arc<str>;

/// Tunnel protocol a workload accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// Plain TCP (not meshed, or meshed without a tunnel).
    #[default]
    Tcp,
    /// HBONE: HTTP/2 CONNECT over mutual TLS to port 15008.
    Hbone,
}

/// How the workload's pod is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum NetworkMode {
    /// A pod with its own IPs.
    #[default]
    Standard,
    /// A host-network pod: its IPs are the node's, so it is never indexed by IP.
    HostNetwork,
}

/// Health as reported by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum HealthStatus {
    /// Ready to receive traffic.
    #[default]
    Healthy,
    /// Not ready; excluded from load balancing unless the service allows all.
    Unhealthy,
}

/// Where a gateway (waypoint or network gateway) is reached. Serialized as ztunnel does: the
/// string `network/ip` or `namespace/hostname`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum GatewayDestination {
    /// A workload address on a network.
    Address(NetworkAddress),
    /// A service, by namespace and hostname.
    Hostname(NamespacedHostname),
}

/// A waypoint or network gateway reference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// Where the gateway is.
    pub destination: GatewayDestination,
    /// The port its HBONE listener is on (usually 15008).
    pub hbone_mtls_port: u16,
}

/// An IP address qualified by its network (the empty network is the default one). Serialized
/// as ztunnel does: `network/ip` (`/10.0.0.1` on the default network).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: Strng,
    /// The address.
    pub address: IpAddr,
}

/// A service name qualified by its namespace. Serialized as `namespace/hostname`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// Namespace of the service.
    pub namespace: Strng,
    /// Fully qualified hostname of the service.
    pub hostname: Strng,
}

/// Protocol of an application tunnel (how a sandwiched waypoint wants traffic delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AppTunnelProtocol {
    /// Deliver raw bytes.
    #[default]
    None,
    /// Prepend a PROXY protocol v2 header.
    Proxy,
}

/// A workload's application tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ApplicationTunnel {
    /// How to deliver.
    pub protocol: AppTunnelProtocol,
    /// Port to deliver to; `None` means the target port.
    pub port: Option<u16>,
}

/// Locality of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: Strng,
    /// Zone within the region.
    pub zone: Strng,
    /// Subzone within the zone.
    pub subzone: Strng,
}

/// Service port → target port of one endpoint (target 0 = use the service's target port).
pub type PortMap = BTreeMap<u16, u16>;

/// A workload (a pod, VM or other endpoint) as the mesh knows it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Unique id; the xDS resource name (e.g. `cluster//Pod/ns/name`).
    pub uid: Strng,
    /// Pod name.
    pub name: Strng,
    /// Namespace.
    pub namespace: Strng,
    /// IP addresses, possibly empty (hostname-only workloads).
    pub workload_ips: Vec<IpAddr>,
    /// Hostname for DNS-resolved workloads.
    pub hostname: Strng,
    /// Network the IPs belong to.
    pub network: Strng,
    /// Tunnel protocol the workload accepts.
    pub protocol: TunnelProtocol,
    /// Trust domain of its identity.
    pub trust_domain: Strng,
    /// Service account of its identity.
    pub service_account: Strng,
    /// Workload waypoint, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<Box<GatewayAddress>>,
    /// Network gateway for cross-network traffic, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<Box<GatewayAddress>>,
    /// Node the workload runs on.
    pub node: Strng,
    /// Canonical service name (telemetry).
    pub canonical_name: Strng,
    /// Canonical revision (telemetry).
    pub canonical_revision: Strng,
    /// Kind of controller (deployment, cronjob, pod, job), lowercase.
    pub workload_type: Strng,
    /// Name of the controller (telemetry).
    pub workload_name: Strng,
    /// Whether the workload terminates HBONE itself.
    pub native_tunnel: bool,
    /// Application tunnel, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Service memberships: `namespace/hostname` → port map. Serialized as ztunnel does, as
    /// the list of keys (the port maps show in each service's `endpoints`).
    #[serde(serialize_with = "keys", skip_serializing_if = "VecMap::is_empty")]
    pub services: VecMap<Strng, PortMap>,
    /// WORKLOAD_SELECTOR policies (`namespace/name`) that apply to it.
    pub authorization_policies: Vec<Strng>,
    /// Health.
    pub status: HealthStatus,
    /// Cluster id.
    pub cluster_id: Strng,
    /// Locality.
    #[serde(skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    /// Network mode.
    pub network_mode: NetworkMode,
    /// Load-balancing weight (≥ 1).
    pub capacity: u32,
}

impl Workload {
    /// The workload's SPIFFE identity, or `None` when a part is not a valid identity part
    /// (such a workload can never be the peer of an mTLS connection).
    pub fn identity(&self) -> Option<Identity> {
        Identity::from_shared(&self.trust_domain, &self.namespace, &self.service_account).ok()
    }
}

/// How a service's VIPs and endpoints are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum LoadBalancerMode {
    /// No preference: all endpoints are candidates.
    #[default]
    Standard,
    /// Only endpoints matching every routing preference.
    Strict,
    /// Prefer endpoints matching the most leading routing preferences.
    Failover,
    /// Send to the original destination without endpoint selection.
    Passthrough,
}

/// A locality scope for routing preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LoadBalancerScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// Which endpoints may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum HealthPolicy {
    /// Only healthy endpoints.
    #[default]
    OnlyHealthy,
    /// Every endpoint.
    AllowAll,
}

/// Load-balancing settings of a service.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// Ordered routing preferences.
    pub routing_preferences: Vec<LoadBalancerScope>,
    /// Mode.
    pub mode: LoadBalancerMode,
    /// Health policy.
    pub health_policy: HealthPolicy,
}

/// IP families a service serves (serialized with ztunnel's names; `Automatic` is omitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum IpFamilies {
    /// Whatever the endpoints have.
    #[default]
    Automatic,
    /// IPv4 only.
    #[serde(rename = "IPv4")]
    Ipv4Only,
    /// IPv6 only.
    #[serde(rename = "IPv6")]
    Ipv6Only,
    /// Both.
    Dual,
}

/// Who can see a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Visibility {
    /// Everyone.
    #[default]
    Public,
    /// Clients in the service's namespace only.
    Namespace,
}

/// A CIDR VIP: every address of the prefix belongs to the service. Serialized as ztunnel
/// does: `{network, cidr: "a.b.c.d/len"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrVip {
    /// Network of the prefix.
    pub network: Strng,
    /// First address of the prefix.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// A waypoint chosen with a weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WeightedWaypoint {
    /// The waypoint.
    pub destination: GatewayAddress,
    /// Relative weight.
    pub weight: u32,
}

/// A service: VIPs, ports and the endpoints behind them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Short name.
    pub name: Strng,
    /// Namespace.
    pub namespace: Strng,
    /// Fully qualified hostname; with the namespace, the service's key.
    pub hostname: Strng,
    /// Virtual IPs (full-length addresses).
    pub vips: Vec<NetworkAddress>,
    /// CIDR VIPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cidr_vips: Vec<CidrVip>,
    /// Service port → target port (0 = a named port resolved per endpoint).
    pub ports: PortMap,
    /// Extra SPIFFE identities accepted from endpoints of this service.
    pub subject_alt_names: Vec<Strng>,
    /// Service waypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    /// Weighted waypoints (sampled per connection).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    /// Load balancing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// IP families.
    #[serde(skip_serializing_if = "IpFamilies::is_automatic")]
    pub ip_families: IpFamilies,
    /// Tie-break among services sharing a VIP or hostname.
    pub canonical: bool,
    /// Visibility.
    pub visibility: Visibility,
}

impl Service {
    /// The key the service is stored and removed under: `namespace/hostname`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// Whether `w` may receive this service's traffic by its health: healthy endpoints
    /// only, unless the service's health policy allows all.
    pub fn admits(&self, w: &Workload) -> bool {
        w.status == HealthStatus::Healthy
            || self
                .load_balancer
                .as_ref()
                .is_some_and(|lb| lb.health_policy == HealthPolicy::AllowAll)
    }
}

/// Where an authorization policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that list the policy.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PolicyAction {
    /// Permit matching connections.
    Allow,
    /// Refuse matching connections.
    Deny,
}

/// A string matcher. Serialized as ztunnel does: `{"Exact": "x"}`, `{"Presence": []}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// Equal to.
    Exact(Strng),
    /// Starts with.
    Prefix(Strng),
    /// Ends with.
    Suffix(Strng),
    /// Any non-empty value.
    Presence,
}

/// A (namespace, service account) pair to match exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: Strng,
    /// Service account.
    pub service_account: Strng,
}

/// An IP prefix. Serialized as a CIDR string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// First address.
    pub address: IpAddr,
    /// Prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix_len: u8,
}

/// One match: every present field must hold (positive lists: any element; `not_` lists: none).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Source namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    /// Source namespace must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Source principal (identity without `spiffe://`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    /// Source principal must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    /// Source service account.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service account must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Source IP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    /// Source IP must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    /// Destination IP must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    /// Destination port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    /// Destination port must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl PolicyMatch {
    /// Whether the match names no condition at all. istiod sends such a match group for a
    /// `from`/`to`/`when` that names only HTTP attributes (methods, paths, request principals,
    /// request headers): L4 cannot evaluate them, so the group never matches.
    pub fn is_empty(&self) -> bool {
        *self == PolicyMatch::default()
    }
}

/// A clause: OR of matches.
pub type PolicyClause = Vec<PolicyMatch>;
/// A rule: AND of clauses.
pub type PolicyRule = Vec<PolicyClause>;

/// An L4 authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Name.
    pub name: Strng,
    /// Namespace; with the name, the policy's key.
    pub namespace: Strng,
    /// Where it applies.
    pub scope: PolicyScope,
    /// What it does.
    pub action: PolicyAction,
    /// Rules (OR).
    pub rules: Vec<PolicyRule>,
    /// Only log the decision.
    pub dry_run: bool,
}

impl Policy {
    /// The key the policy is stored under and referenced by: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Indexes of the rules that can never match at L4: rules with a clause made only of empty
    /// match groups (see [`PolicyMatch::is_empty`]). Istio evaluates them as never matching;
    /// operators are told (a warning, a metric, `config_dump`, `ztun ctl explain`).
    pub fn unmatchable_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().enumerate().filter_map(|(i, rule)| {
            rule.iter()
                .any(|clause| !clause.is_empty() && clause.iter().all(PolicyMatch::is_empty))
                .then_some(i)
        })
    }
}

impl Locality {
    /// Whether no part is known.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl IpFamilies {
    fn is_automatic(&self) -> bool {
        *self == IpFamilies::Automatic
    }
}

/// Serializes a map as the list of its keys.
fn keys<S: serde::Serializer, V>(map: &VecMap<Strng, V>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(map.keys())
}

impl std::fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl serde::Serialize for NetworkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for NamespacedHostname {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.namespace, self.hostname))
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for CidrVip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("CidrVip", 2)?;
        st.serialize_field("network", &*self.network)?;
        st.serialize_field("cidr", &format!("{}/{}", self.address, self.prefix_len))?;
        st.end()
    }
}

impl serde::Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            StringMatch::Exact(v) => m.serialize_entry("Exact", &**v)?,
            StringMatch::Prefix(v) => m.serialize_entry("Prefix", &**v)?,
            StringMatch::Suffix(v) => m.serialize_entry("Suffix", &**v)?,
            StringMatch::Presence => m.serialize_entry("Presence", &[(); 0])?,
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node holds one `Workload` per pod of the mesh (50 000 in the state benchmark):
    /// its two gateways, present on few workloads, are boxed rather than inline (inline they
    /// made every workload 464 B instead of 352 B).
    #[test]
    fn a_workload_keeps_its_rarely_set_gateways_out_of_line() {
        let size = std::mem::size_of::<Workload>();
        assert!(size <= 384, "Workload is {size} B");
    }
}
