//! The shape `istioctl ztunnel-config` decodes `/config_dump` into, written from the Go types
//! of istioctl's ztunnel config-dump writer (`istioctl/pkg/writer/ztunnel/configdump/api.go`
//! in istio/istio): one Rust type per Go type, with the Go field types.
//!
//! Go's `encoding/json` fails the whole decode (and so every `ztunnel-config` subcommand but
//! `log`) on a value of the wrong JSON kind: an object where a string is declared, a string
//! where a list is, a map key that is not a `uint16`. It ignores unknown keys, matches keys
//! case-insensitively and accepts `null` anywhere. [`decode`] is stricter on purpose: keys
//! must be spelled exactly, and a field ztunnel always writes must be present and not `null`;
//! only what Go marks `omitempty` may be missing. On top of the types it checks the value
//! forms the summaries parse (`network/ip` VIPs, decimal serial numbers, RFC 3339 times), so a
//! dump that passes reads in istioctl with every column filled.

use std::collections::BTreeMap;

use anyhow::{ensure, Context};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// What istioctl keeps of a dump.
#[derive(Debug)]
pub struct ZtunnelDump {
    /// `workloads`.
    pub workloads: Vec<Workload>,
    /// `services`.
    pub services: Vec<Service>,
    /// `policies`.
    pub policies: Vec<Policy>,
    /// `certificates`.
    pub certificates: Vec<Certs>,
    /// `workloadState`, by pod uid.
    pub workload_state: BTreeMap<String, WorkloadState>,
}

/// A workload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Workload {
    pub uid: String,
    pub workload_ips: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default)]
    pub network_gateway: Option<GatewayAddress>,
    pub protocol: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub workload_name: String,
    pub workload_type: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub cluster_id: String,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub locality: Option<Locality>,
    pub node: String,
    #[serde(default)]
    pub network: Option<String>,
    pub status: String,
    pub hostname: String,
    pub capacity: u32,
    #[serde(default)]
    pub application_tunnel: Option<ApplicationTunnel>,
    #[serde(default)]
    pub authorization_policies: Option<Vec<String>>,
}

/// A workload's locality.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct Locality {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub subzone: Option<String>,
}

/// An application tunnel.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct ApplicationTunnel {
    pub protocol: String,
    #[serde(default)]
    pub port: Option<u16>,
}

/// A waypoint or network gateway: istioctl keeps the destination, a string.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct GatewayAddress {
    pub destination: String,
}

/// A service.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<String>,
    #[serde(default)]
    pub cidr_vips: Option<Vec<CidrVip>>,
    pub ports: BTreeMap<String, i64>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub waypoint: Option<GatewayAddress>,
    pub endpoints: BTreeMap<String, Endpoint>,
    #[serde(default)]
    pub subject_alt_names: Option<Vec<String>>,
    #[serde(default)]
    pub ip_families: Option<String>,
    #[serde(default)]
    pub canonical: Option<bool>,
    #[serde(default)]
    pub visibility: Option<String>,
}

/// A CIDR VIP (istioctl also accepts the string `network/cidr`; ztunnel writes the object).
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct CidrVip {
    pub cidr: String,
    #[serde(default)]
    pub network: Option<String>,
}

/// A service's load balancing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct LoadBalancer {
    pub mode: String,
    pub routing_preferences: Vec<String>,
    pub health_policy: String,
}

/// One endpoint of a service. Go reads `port` as `map[uint16]uint16`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Endpoint {
    pub workload_uid: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    pub port: BTreeMap<u16, u16>,
}

/// A policy: rules → clauses → matches.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: String,
    pub action: String,
    pub rules: Vec<Vec<Vec<PolicyMatch>>>,
}

/// One match group; every list may be absent.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct PolicyMatch {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<String>,
    pub not_source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
    pub not_destination_ips: Vec<String>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// A string match: an object with one of these keys (Go declares a struct).
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct StringMatch {
    #[serde(rename = "Exact", default)]
    pub exact: Option<String>,
    #[serde(rename = "Prefix", default)]
    pub prefix: Option<String>,
    #[serde(rename = "Suffix", default)]
    pub suffix: Option<String>,
    #[serde(rename = "Presence", default)]
    pub presence: Option<Value>,
}

/// A service-account match.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One identity's certificates.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Certs {
    pub identity: String,
    pub state: String,
    pub cert_chain: Vec<Cert>,
    pub root_certs: Vec<Cert>,
}

/// A certificate.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Cert {
    pub pem: String,
    pub serial_number: String,
    pub valid_from: String,
    pub expiration_time: String,
}

/// A pod's proxy (`workloadState`).
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct WorkloadState {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub connections: Option<WorkloadConnections>,
    pub info: WorkloadInfo,
}

/// A pod's live connections.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct WorkloadConnections {
    pub inbound: Vec<Connection>,
    pub outbound: Vec<Connection>,
}

/// Who a pod is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub trust_domain: Option<String>,
    pub service_account: String,
}

/// A live connection as `ztunnel-config connections` lists it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Connection {
    pub src: String,
    pub original_dst: Option<String>,
    pub actual_dst: Option<String>,
    pub protocol: String,
}

/// Decodes `dump` as istioctl does (each section a list, or a map whose values are taken),
/// then checks the value forms its summaries parse.
pub fn decode(dump: &Value) -> anyhow::Result<ZtunnelDump> {
    let d = ZtunnelDump {
        workloads: section(dump, "workloads")?,
        services: section(dump, "services")?,
        policies: section(dump, "policies")?,
        certificates: section(dump, "certificates")?,
        workload_state: match dump.get("workloadState") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value(v.clone()).context("workloadState")?,
        },
    };
    for s in &d.services {
        for vip in &s.vips {
            let (_, ip) = vip
                .split_once('/')
                .with_context(|| format!("service {} VIP {vip:?} is not network/ip", s.hostname))?;
            ensure!(ip.parse::<std::net::IpAddr>().is_ok(), "VIP {vip:?}");
        }
        for (key, e) in &s.endpoints {
            ensure!(
                !e.workload_uid.is_empty(),
                "endpoint {key} has no workloadUid"
            );
        }
    }
    for p in &d.policies {
        for m in p.rules.iter().flatten().flatten() {
            for sm in m
                .namespaces
                .iter()
                .chain(&m.not_namespaces)
                .chain(&m.principals)
                .chain(&m.not_principals)
            {
                let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.suffix.is_some()]
                    .into_iter()
                    .filter(|x| *x)
                    .count()
                    + usize::from(sm.presence.is_some());
                ensure!(set == 1, "policy {}: string match {sm:?}", p.name);
            }
            for cidr in m
                .source_ips
                .iter()
                .chain(&m.not_source_ips)
                .chain(&m.destination_ips)
                .chain(&m.not_destination_ips)
            {
                let (ip, len) = cidr.split_once('/').with_context(|| format!("{cidr:?}"))?;
                ensure!(
                    ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok(),
                    "policy {}: {cidr:?} is not a CIDR",
                    p.name
                );
            }
        }
    }
    for c in d
        .certificates
        .iter()
        .flat_map(|c| c.cert_chain.iter().chain(&c.root_certs))
    {
        ensure!(
            !c.serial_number.is_empty() && c.serial_number.bytes().all(|b| b.is_ascii_digit()),
            "serial {:?} is not decimal",
            c.serial_number
        );
        for t in [&c.valid_from, &c.expiration_time] {
            ensure!(rfc3339(t), "{t:?} is not RFC 3339");
        }
    }
    Ok(d)
}

fn section<T: DeserializeOwned>(dump: &Value, key: &str) -> anyhow::Result<Vec<T>> {
    let values: Vec<Value> = match dump.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(o)) => o.values().cloned().collect(),
        Some(other) => anyhow::bail!("{key} is neither a list nor a map: {other}"),
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value(v.clone()).with_context(|| format!("{key}[{i}]: {v}")))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS` followed by `Z`, an offset, or fractional seconds then either.
fn rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && matches!(b[b.len() - 1], b'Z' | b'z' | b'0'..=b'9')
}
