//! The local xDS file: a static mesh description in ztunnel's YAML format (`LOCAL_XDS_PATH` /
//! `LOCAL_XDS`), converted into [`state::model`](crate::state::model) values.
//!
//! The format is ztunnel's, key for key: a map with optional `workloads`, `services` and
//! `policies` lists, camelCase keys, unknown keys rejected. Parsing happens in two steps: serde
//! reads the text into private structs that mirror the format (syntax, unknown keys, wrong
//! types and out-of-range numbers are reported with their YAML line and column), then each
//! entry is converted into the model as soon as serde has read it, where semantic problems are reported with the entry and
//! field (`workloads[2] (uid "x"): workloadIps[0] "10.0.0.300" is not an IP address`).
//!
//! Policies are converted strictly: an unparsable CIDR, a string match without a variant or a
//! prefix longer than the address rejects the whole file (a match object without conditions
//! is valid: istiod's rendering of HTTP-only conditions, it never matches at L4). ztunnel
//! drops such entries silently, which can turn "match these" into "match everything"; ztun
//! never widens a policy.
//!
//! Allowed imports: `config` (for [`LocalXds`]), `state` (its model, and sharing repeated
//! strings with it while converting).

mod block;
#[cfg(test)]
mod tests;
mod yaml;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hashbrown::hash_map::Entry;
use hashbrown::{HashMap, HashSet};

use crate::config::LocalXds;
use crate::state::model::{
    ApplicationTunnel, CidrVip, GatewayAddress, GatewayDestination, IpFamilies, IpNet,
    LoadBalancer, Locality, NamespacedHostname, NetworkAddress, Policy, PolicyMatch, Service,
    ServiceAccountMatch, StringMatch, Strng, WeightedWaypoint, Workload,
};

use yaml::{
    YamlEndpoint, YamlGateway, YamlMatch, YamlPolicy, YamlService, YamlServiceAccount,
    YamlStringMatch, YamlWorkload,
};

/// Trust domain of a workload that does not name one.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account of a workload that does not name one.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster of a workload that does not name one.
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Everything a local file defines. Loading one replaces all mesh state.
///
/// Every workload has a unique non-empty `uid`, a non-empty namespace, trust domain, service
/// account and cluster id, and a capacity of at least 1. Deliberate difference from ztunnel,
/// whose YAML path keeps them empty: an empty `trustDomain`, `serviceAccount` or `clusterId`
/// becomes `cluster.local`, `default` or `Kubernetes` (the xDS defaults), because an empty
/// trust domain cannot form a valid identity. An empty `uid` becomes
/// `<clusterId>//Pod/<namespace>/<name>`. Service keys (`namespace/hostname`)
/// and policy keys (`namespace/name`) are unique. Every IP prefix is normalised to its first
/// address.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct LocalConfig {
    /// Workloads, in file order, with service memberships from both their own `services`
    /// map and the services' `endpoints`.
    pub workloads: Vec<Workload>,
    /// Services, in file order.
    pub services: Vec<Service>,
    /// Authorization policies, in file order.
    pub policies: Vec<Policy>,
}

/// Parses a local config document. An empty document is an empty config.
///
/// Each list entry is converted (and its repeated strings shared with the mesh state's) as
/// soon as serde has read it, so the file's intermediate values never all live at once:
/// loading a large file peaks lower and leaves the heap unfragmented. A document in the plain
/// block style of generated files is read straight from the text ([`block`]); any other
/// (anchors and aliases, merge keys, tags, multi-line scalars, ...) or an invalid one is read
/// by the full YAML loader, which also gives every error message.
pub fn parse(yaml: &str) -> Result<LocalConfig, LocalConfigError> {
    match parse_block(yaml) {
        Some(config) => Ok(config),
        None => parse_loaded(yaml),
    }
}

/// The document read by the streaming block reader, or `None` where it declines the text or
/// finds any error (the full loader then reads the text again and reports it).
pub(crate) fn parse_block(yaml: &str) -> Option<LocalConfig> {
    let mut collector = Collector::default();
    block::read(yaml, Document(&mut collector)).ok()?;
    if collector.error.is_some() {
        return None;
    }
    collector.finish().ok()
}

/// The document read by the full YAML loader (libyaml's events for the whole document, then
/// serde over them): every YAML feature, and the error messages with line and column.
pub(crate) fn parse_loaded(yaml: &str) -> Result<LocalConfig, LocalConfigError> {
    let mut collector = Collector::default();
    let read = serde::de::DeserializeSeed::deserialize(
        Document(&mut collector),
        serde_yaml_ng::Deserializer::from_str(yaml),
    );
    // A conversion error stops serde through a placeholder error; report the real one.
    if let Some(e) = collector.error.take() {
        return Err(e);
    }
    read?;
    collector.finish()
}

/// Reads and parses the local config file at `path`.
pub fn load(path: &Path) -> Result<LocalConfig, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// Loads the local config from wherever the configuration says it is.
pub fn from_source(source: &LocalXds) -> Result<LocalConfig, LocalConfigError> {
    match source {
        LocalXds::Path(path) => load(path),
        LocalXds::Inline(yaml) => parse(yaml),
    }
}

/// Why a local config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("cannot read local config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML of the expected shape: a syntax error, an unknown key, a value of
    /// the wrong type or a number out of range. The message names the path and line/column.
    #[error("local config: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// An entry has the expected shape but a value that does not make sense.
    #[error("local config: {entry}: {field} {problem}")]
    Invalid {
        /// The entry, e.g. `workloads[2] (uid "x")`.
        entry: String,
        /// The field within the entry, e.g. `workloadIps[0]`.
        field: String,
        /// What is wrong.
        problem: Problem,
    },
}

impl LocalConfigError {
    /// The 1-based line and column of a YAML error, when the parser knows them.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            LocalConfigError::Yaml(err) => err.location().map(|at| (at.line(), at.column())),
            LocalConfigError::Read { .. } | LocalConfigError::Invalid { .. } => None,
        }
    }
}

/// What is wrong with a field of an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A value that must be present is empty.
    #[error("must not be empty")]
    Empty,
    /// The value is not an IP address.
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
    /// The value is not `<network>/<IP>`.
    #[error("{0:?} is not <network>/<IP>")]
    NotANetworkAddress(String),
    /// The value is not `<namespace>/<name>`.
    #[error("{0:?} is not <namespace>/<name>")]
    NotANamespacedName(String),
    /// The value is neither form of gateway destination.
    #[error("{0:?} is neither <network>/<IP> nor <namespace>/<hostname>")]
    NotAGatewayDestination(String),
    /// The value is not an IP prefix.
    #[error("{0:?} is not a CIDR (<IP>/<prefix length>)")]
    NotACidr(String),
    /// The prefix length exceeds the address's bits.
    #[error("{value:?} has a prefix length above {max}")]
    PrefixTooLong {
        /// The CIDR as written.
        value: String,
        /// The address family's bit count.
        max: u8,
    },
    /// Zero where at least one is required.
    #[error("must be at least 1")]
    Zero,
    /// The key is already used by an earlier entry of the same list.
    #[error("{0:?} is already used by an earlier entry")]
    Duplicate(String),
    /// A service endpoint names a workload uid the file does not define.
    #[error("{0:?} names no workload in this file")]
    UnknownWorkload(String),
    /// A service endpoint gives a workload a port map different from the workload's own.
    #[error("gives workload {0:?} ports that differ from its own services entry")]
    ConflictingPorts(String),
}

/// The converted entries so far, in file order, with what the checks across entries need.
#[derive(Default)]
struct Collector {
    workloads: Vec<Workload>,
    /// uid → index in `workloads`.
    uids: HashMap<Strng, usize>,
    services: Vec<Service>,
    service_keys: HashSet<String>,
    /// Endpoints of services read before the workloads (attached once those are read).
    pending_endpoints: Vec<(At, Strng, BTreeMap<String, YamlEndpoint>)>,
    policies: Vec<Policy>,
    policy_keys: HashSet<String>,
    /// Which lists have been read (each may appear once).
    seen: [bool; 3],
    /// The first conversion error, which stopped the parse.
    error: Option<LocalConfigError>,
}

impl Collector {
    fn workload(&mut self, index: usize, yaml: YamlWorkload) -> Result<(), LocalConfigError> {
        let mut workload = workload(index, yaml)?;
        crate::state::share_workload_strings(&mut workload);
        match self.uids.entry(workload.uid.clone()) {
            Entry::Occupied(_) => {
                let at = At(format!("workloads[{index}] (uid {:?})", workload.uid));
                Err(at.err("uid", Problem::Duplicate(workload.uid.to_string())))
            }
            Entry::Vacant(v) => {
                v.insert(self.workloads.len());
                self.workloads.push(workload);
                Ok(())
            }
        }
    }

    fn service(&mut self, index: usize, mut yaml: YamlService) -> Result<(), LocalConfigError> {
        let at = At(format!(
            "services[{index}] ({}/{})",
            yaml.namespace, yaml.hostname
        ));
        let endpoints = std::mem::take(&mut yaml.endpoints);
        let mut service = service(&at, yaml)?;
        crate::state::share_service_strings(&mut service);
        if !self.service_keys.insert(service.key()) {
            return Err(at.err("hostname", Problem::Duplicate(service.key())));
        }
        let key = Strng::from(service.key());
        self.services.push(service);
        if self.seen[LIST_WORKLOADS] {
            // The lists are read one after the other: the workloads are all known.
            self.attach_endpoints(&at, &key, endpoints)
        } else {
            if !endpoints.is_empty() {
                self.pending_endpoints.push((at, key, endpoints));
            }
            Ok(())
        }
    }

    fn policy(&mut self, index: usize, yaml: YamlPolicy) -> Result<(), LocalConfigError> {
        let at = At(format!(
            "policies[{index}] ({}/{})",
            yaml.namespace, yaml.name
        ));
        let policy = policy(&at, yaml)?;
        if !self.policy_keys.insert(policy.key()) {
            return Err(at.err("name", Problem::Duplicate(policy.key())));
        }
        self.policies.push(policy);
        Ok(())
    }

    /// Adds a service's explicitly listed endpoints to the workloads' memberships. The map
    /// key is informational; `workloadUid` decides. An endpoint's `status` is accepted but
    /// the workload's own `status` governs.
    fn attach_endpoints(
        &mut self,
        at: &At,
        key: &Strng,
        endpoints: BTreeMap<String, YamlEndpoint>,
    ) -> Result<(), LocalConfigError> {
        for (name, endpoint) in endpoints {
            let field = format!("endpoints[{name:?}].workloadUid");
            let uid = endpoint.workload_uid;
            let Some(workload) = self
                .uids
                .get(uid.as_str())
                .and_then(|i| self.workloads.get_mut(*i))
            else {
                return Err(at.err(field, Problem::UnknownWorkload(uid)));
            };
            match workload.services.get(key) {
                Some(existing) if *existing != endpoint.port => {
                    return Err(at.err(field, Problem::ConflictingPorts(uid)));
                }
                Some(_) => {}
                None => {
                    workload.services.insert(key.clone(), endpoint.port);
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<LocalConfig, LocalConfigError> {
        for (at, key, endpoints) in std::mem::take(&mut self.pending_endpoints) {
            self.attach_endpoints(&at, &key, endpoints)?;
        }
        Ok(LocalConfig {
            workloads: self.workloads,
            services: self.services,
            policies: self.policies,
        })
    }
}

const LIST_WORKLOADS: usize = 0;
const LIST_SERVICES: usize = 1;
const LIST_POLICIES: usize = 2;
/// The document's keys, as ztunnel's format names them.
const LISTS: [&str; 3] = ["workloads", "services", "policies"];

/// The whole document: a map of the three lists, or nothing (an empty document, or one
/// holding only comments or `null`, is an empty config).
struct Document<'a>(&'a mut Collector);

impl<'de> serde::de::DeserializeSeed<'de> for Document<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Document<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("struct YamlConfig")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(list) = LISTS.iter().position(|l| *l == key) else {
                return Err(A::Error::unknown_field(&key, &LISTS));
            };
            if std::mem::replace(&mut self.0.seen[list], true) {
                return Err(A::Error::duplicate_field(LISTS[list]));
            }
            map.next_value_seed(List {
                collector: &mut *self.0,
                list,
            })?;
        }
        Ok(())
    }
}

/// One of the lists, each entry handed to the collector as soon as it is read.
struct List<'a> {
    collector: &'a mut Collector,
    list: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for List<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for List<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let c = self.collector;
        let mut index = 0;
        loop {
            let converted = match self.list {
                LIST_WORKLOADS => match seq.next_element::<YamlWorkload>()? {
                    Some(yaml) => c.workload(index, yaml),
                    None => break,
                },
                LIST_SERVICES => match seq.next_element::<YamlService>()? {
                    Some(yaml) => c.service(index, yaml),
                    None => break,
                },
                LIST_POLICIES => match seq.next_element::<YamlPolicy>()? {
                    Some(yaml) => c.policy(index, yaml),
                    None => break,
                },
                _ => break,
            };
            if let Err(e) = converted {
                c.error = Some(e);
                return Err(serde::de::Error::custom("invalid entry"));
            }
            index += 1;
        }
        if self.list == LIST_WORKLOADS {
            for (at, key, endpoints) in std::mem::take(&mut c.pending_endpoints) {
                if let Err(e) = c.attach_endpoints(&at, &key, endpoints) {
                    c.error = Some(e);
                    return Err(serde::de::Error::custom("invalid entry"));
                }
            }
        }
        Ok(())
    }
}

/// Converts one workload.
///
/// Deliberate difference from ztunnel: an empty `trustDomain`, `serviceAccount` or `clusterId`
/// defaults to `cluster.local`, `default` and `Kubernetes` (as for xDS workloads), where
/// ztunnel's YAML path keeps them empty. An empty trust domain cannot form a valid SPIFFE
/// identity, so such a workload could never be reached over HBONE.
fn workload(index: usize, w: YamlWorkload) -> Result<Workload, LocalConfigError> {
    let cluster_id = or_default(w.cluster_id, DEFAULT_CLUSTER_ID);
    if w.namespace.is_empty() {
        return Err(At(format!("workloads[{index}]")).err("namespace", Problem::Empty));
    }
    let uid = match (w.uid.is_empty(), w.name.is_empty()) {
        (false, _) => w.uid,
        (true, false) => format!("{cluster_id}//Pod/{}/{}", w.namespace, w.name),
        // Without a uid or a name to derive one from, the entry cannot be told apart.
        (true, true) => return Err(At(format!("workloads[{index}]")).err("name", Problem::Empty)),
    };
    let at = At(format!("workloads[{index}] (uid {uid:?})"));
    let workload_ips = w
        .workload_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            parse_ip(ip)
                .ok_or_else(|| at.err(format!("workloadIps[{i}]"), Problem::NotAnIp(ip.clone())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut services = BTreeMap::new();
    for (key, ports) in w.services {
        if split_namespaced(&key).is_none() {
            return Err(at.err(
                format!("services[{key:?}]"),
                Problem::NotANamespacedName(key),
            ));
        }
        services.insert(Strng::from(key), ports);
    }
    for (i, policy) in w.authorization_policies.iter().enumerate() {
        if split_namespaced(policy).is_none() {
            let problem = Problem::NotANamespacedName(policy.clone());
            return Err(at.err(format!("authorizationPolicies[{i}]"), problem));
        }
    }
    if w.capacity == 0 {
        return Err(at.err("capacity", Problem::Zero));
    }
    Ok(Workload {
        uid: uid.into(),
        name: w.name.into(),
        namespace: w.namespace.into(),
        workload_ips,
        hostname: w.hostname.into(),
        network: w.network.into(),
        protocol: w.protocol.into(),
        trust_domain: or_default(w.trust_domain, DEFAULT_TRUST_DOMAIN).into(),
        service_account: or_default(w.service_account, DEFAULT_SERVICE_ACCOUNT).into(),
        waypoint: w
            .waypoint
            .map(|g| gateway(&at, "waypoint", g).map(Box::new))
            .transpose()?,
        network_gateway: w
            .network_gateway
            .map(|g| gateway(&at, "networkGateway", g).map(Box::new))
            .transpose()?,
        node: w.node.into(),
        canonical_name: w.canonical_name.into(),
        canonical_revision: w.canonical_revision.into(),
        workload_type: w.workload_type.to_ascii_lowercase().into(),
        workload_name: w.workload_name.into(),
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.map(|t| ApplicationTunnel {
            protocol: t.protocol.into(),
            // Port 0 means "the target port", as in the xDS resource.
            port: t.port.filter(|port| *port != 0),
        }),
        services: services.into_iter().collect(),
        authorization_policies: w
            .authorization_policies
            .into_iter()
            .map(Strng::from)
            .collect(),
        status: w.status.into(),
        cluster_id: cluster_id.into(),
        locality: Locality {
            region: w.locality.region.into(),
            zone: w.locality.zone.into(),
            subzone: w.locality.subzone.into(),
        },
        network_mode: w.network_mode.into(),
        capacity: w.capacity,
    })
}

fn service(at: &At, s: YamlService) -> Result<Service, LocalConfigError> {
    if s.namespace.is_empty() {
        return Err(at.err("namespace", Problem::Empty));
    }
    if s.hostname.is_empty() {
        return Err(at.err("hostname", Problem::Empty));
    }
    let vips = s
        .vips
        .iter()
        .enumerate()
        .map(|(i, vip)| {
            parse_network_address(vip).ok_or_else(|| {
                at.err(
                    format!("vips[{i}]"),
                    Problem::NotANetworkAddress(vip.clone()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cidr_vips = s
        .cidr_vips
        .into_iter()
        .enumerate()
        .map(|(i, vip)| {
            let net = parse_cidr(&vip.cidr)
                .map_err(|problem| at.err(format!("cidrVips[{i}].cidr"), problem))?;
            Ok(CidrVip {
                network: vip.network.into(),
                address: net.address,
                prefix_len: net.prefix_len,
            })
        })
        .collect::<Result<Vec<_>, LocalConfigError>>()?;
    let weighted_waypoints = s
        .weighted_waypoints
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let destination = gateway(
                at,
                &format!("weightedWaypoints[{i}].destination"),
                w.destination,
            )?;
            Ok(WeightedWaypoint {
                destination,
                weight: w.weight,
            })
        })
        .collect::<Result<Vec<_>, LocalConfigError>>()?;
    Ok(Service {
        name: s.name.into(),
        namespace: s.namespace.into(),
        hostname: s.hostname.into(),
        vips,
        cidr_vips,
        ports: s.ports,
        subject_alt_names: s.subject_alt_names.into_iter().map(Strng::from).collect(),
        waypoint: s.waypoint.map(|g| gateway(at, "waypoint", g)).transpose()?,
        weighted_waypoints,
        load_balancer: s.load_balancer.map(|lb| LoadBalancer {
            routing_preferences: lb.routing_preferences.into_iter().map(Into::into).collect(),
            mode: lb.mode.into(),
            health_policy: lb.health_policy.into(),
        }),
        ip_families: s.ip_families.map_or(IpFamilies::Automatic, Into::into),
        canonical: s.canonical,
        visibility: s.visibility.into(),
    })
}

fn policy(at: &At, p: YamlPolicy) -> Result<Policy, LocalConfigError> {
    if p.name.is_empty() {
        return Err(at.err("name", Problem::Empty));
    }
    if p.namespace.is_empty() {
        return Err(at.err("namespace", Problem::Empty));
    }
    let mut rules = Vec::with_capacity(p.rules.len());
    for (r, rule) in p.rules.into_iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.len());
        for (c, clause) in rule.into_iter().enumerate() {
            let matches = clause
                .into_iter()
                .enumerate()
                .map(|(m, yaml)| policy_match(at, &format!("rules[{r}][{c}][{m}]"), yaml))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    Ok(Policy {
        name: p.name.into(),
        namespace: p.namespace.into(),
        scope: p.scope.into(),
        action: p.action.into(),
        rules,
        dry_run: p.dry_run,
    })
}

fn policy_match(at: &At, field: &str, m: YamlMatch) -> Result<PolicyMatch, LocalConfigError> {
    let ips = |name: &str, list: Vec<String>| {
        list.iter()
            .enumerate()
            .map(|(i, cidr)| {
                parse_cidr(cidr).map_err(|problem| at.err(format!("{field}.{name}[{i}]"), problem))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let accounts = |name: &str, list: Vec<YamlServiceAccount>| {
        list.into_iter()
            .enumerate()
            .map(|(i, sa)| {
                if sa.namespace.is_empty() {
                    return Err(at.err(format!("{field}.{name}[{i}].namespace"), Problem::Empty));
                }
                if sa.service_account.is_empty() {
                    return Err(at.err(
                        format!("{field}.{name}[{i}].serviceAccount"),
                        Problem::Empty,
                    ));
                }
                Ok(ServiceAccountMatch {
                    namespace: sa.namespace.into(),
                    service_account: sa.service_account.into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let strings =
        |list: Vec<YamlStringMatch>| list.into_iter().map(StringMatch::from).collect::<Vec<_>>();
    let converted = PolicyMatch {
        namespaces: strings(m.namespaces),
        not_namespaces: strings(m.not_namespaces),
        principals: strings(m.principals),
        not_principals: strings(m.not_principals),
        service_accounts: accounts("serviceAccounts", m.service_accounts)?,
        not_service_accounts: accounts("notServiceAccounts", m.not_service_accounts)?,
        source_ips: ips("sourceIps", m.source_ips)?,
        not_source_ips: ips("notSourceIps", m.not_source_ips)?,
        destination_ips: ips("destinationIps", m.destination_ips)?,
        not_destination_ips: ips("notDestinationIps", m.not_destination_ips)?,
        destination_ports: m.destination_ports,
        not_destination_ports: m.not_destination_ports,
    };
    // A match with no condition is what istiod sends for HTTP-only conditions: valid, and
    // never matching at L4 (see `authz`).
    Ok(converted)
}

fn gateway(at: &At, field: &str, g: YamlGateway) -> Result<GatewayAddress, LocalConfigError> {
    let destination = match parse_network_address(&g.destination) {
        Some(address) => GatewayDestination::Address(address),
        None => match split_namespaced(&g.destination) {
            Some((namespace, hostname)) => GatewayDestination::Hostname(NamespacedHostname {
                namespace: namespace.into(),
                hostname: hostname.into(),
            }),
            None => {
                let problem = Problem::NotAGatewayDestination(g.destination);
                return Err(at.err(format!("{field}.destination"), problem));
            }
        },
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: g.hbone_mtls_port,
    })
}

/// Where a semantic error is: the entry's description.
struct At(String);

impl At {
    fn err(&self, field: impl Into<String>, problem: Problem) -> LocalConfigError {
        LocalConfigError::Invalid {
            entry: self.0.clone(),
            field: field.into(),
            problem,
        }
    }
}

fn or_default(value: String, default: &str) -> String {
    match value.is_empty() {
        true => default.to_owned(),
        false => value,
    }
}

/// An IP address; IPv4-mapped IPv6 addresses become IPv4, as the data plane sees peers.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// `<network>/<IP>`; the network may be empty.
fn parse_network_address(text: &str) -> Option<NetworkAddress> {
    let (network, ip) = text.split_once('/')?;
    Some(NetworkAddress {
        network: network.into(),
        address: parse_ip(ip)?,
    })
}

/// `<namespace>/<name>` with both parts non-empty and no further `/`.
fn split_namespaced(text: &str) -> Option<(&str, &str)> {
    let (namespace, name) = text.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
}

/// `<IP>/<prefix length>` or a bare IP (a single address), normalised to the first address.
/// IPv4-mapped IPv6 prefixes of /96 or longer become IPv4 prefixes, so they match the IPv4
/// peers the data plane sees (otherwise a `not` list holding one would never match).
fn parse_cidr(text: &str) -> Result<IpNet, Problem> {
    let not_a_cidr = || Problem::NotACidr(text.to_owned());
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let address: IpAddr = ip.parse().map_err(|_| not_a_cidr())?;
    let max: u8 = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => len
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or(Problem::PrefixTooLong {
                value: text.to_owned(),
                max,
            })?,
        Some(_) => return Err(not_a_cidr()),
    };
    let (address, prefix_len) = match address {
        IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
            None => (address, prefix_len),
        },
        _ => (address, prefix_len),
    };
    Ok(IpNet {
        address: first_address(address, prefix_len),
        prefix_len,
    })
}

fn first_address(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}
