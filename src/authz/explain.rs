//! `explain`: which policy allows or denies a connection, and why — the answer operators ask
//! for (`ztun ctl explain --src <ip|identity> --dst <ip:port>`).
//!
//! It runs the same evaluation as enforcement, over the same snapshot, and adds the per-policy
//! trace: every applicable policy with the rule that matched it, if any.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{applicable, authorize, matching_rule, Conn, Decision, HttpOnlyDeny, Subject};
use crate::identity::Identity;
use crate::state::model::{PolicyAction, PolicyScope, Strng, TunnelProtocol, Workload};
use crate::state::{canonical_ip, Snapshot};

/// Who the connection comes from: an IP, an identity, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainSource {
    /// Source IP. When absent, the IP of a workload with the identity is used, if any.
    pub ip: Option<IpAddr>,
    /// Source identity. When absent and the IP is a mesh (HBONE) workload, that workload's
    /// identity is used: it is what its ztun would present. Otherwise the connection is
    /// evaluated as plaintext (no identity).
    pub identity: Option<Identity>,
}

impl ExplainSource {
    /// Parses `10.0.0.1`, `spiffe://td/ns/x/sa/y`, or both joined by `,`.
    pub fn parse(s: &str) -> Result<Self, ExplainError> {
        let mut src = ExplainSource {
            ip: None,
            identity: None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(ip) = part.parse::<IpAddr>() {
                src.ip = Some(canonical_ip(ip));
            } else {
                let id = part
                    .parse::<Identity>()
                    .map_err(|_| ExplainError::BadSource(part.into()))?;
                src.identity = Some(id);
            }
        }
        if src.ip.is_none() && src.identity.is_none() {
            return Err(ExplainError::BadSource(s.into()));
        }
        Ok(src)
    }
}

/// Why a connection cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The source is neither an IP nor a SPIFFE identity.
    #[error("source {0:?} is neither an IP address nor a spiffe:// identity")]
    BadSource(String),
    /// No workload has the destination IP.
    #[error("no workload has address {0}")]
    UnknownDestination(IpAddr),
    /// The destination is a service VIP: policies apply per endpoint.
    #[error(
        "{addr} is the VIP of service {service}; explain one of its endpoints: {endpoints:?}{}",
        remote_note(remote)
    )]
    ServiceVip {
        /// The address asked about.
        addr: SocketAddr,
        /// The service key.
        service: Strng,
        /// Its endpoints' addresses on this network, with target ports.
        endpoints: Vec<SocketAddr>,
        /// Its endpoints on other networks, as `workload (network) via gateway`: reached by
        /// double HBONE through that gateway; their own node enforces their policies.
        remote: Vec<String>,
    },
}

/// The answer: the decision, and the policies behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The facts evaluated.
    pub connection: Conn,
    /// The source workload, if the source IP belongs to one (`namespace/name`).
    pub source_workload: Option<Strng>,
    /// The destination workload (`namespace/name`).
    pub destination_workload: Strng,
    /// What enforcement decides.
    pub decision: Decision,
    /// Every applicable policy, in evaluation order (by key), with its match result.
    pub policies: Vec<PolicyTrace>,
    /// Assumptions made to fill in missing facts.
    pub notes: Vec<String>,
}

/// One applicable policy and whether it matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    /// `namespace/name`.
    pub policy: Strng,
    /// Where it applies.
    pub scope: PolicyScope,
    /// What it does.
    pub action: PolicyAction,
    /// Whether it only logs.
    pub dry_run: bool,
    /// The index of the first matching rule, if any.
    pub matched_rule: Option<usize>,
    /// Rules that can never match at L4: a clause of each names only HTTP attributes (istiod
    /// sends it as empty match groups). Empty when none, or when `ZTUN_L4_DENY_HTTP_RULES=enforce`
    /// makes such DENY rules apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatchable_rules: Vec<usize>,
}

/// Explains a connection from `src` to the workload address `dst` on `network`.
pub fn explain(
    snap: &Snapshot,
    network: &str,
    src: &ExplainSource,
    dst: SocketAddr,
    mode: HttpOnlyDeny,
) -> Result<Explanation, ExplainError> {
    let dst_ip = canonical_ip(dst.ip());
    let Some(dst_workload) = snap.workload_by_ip(network, dst_ip) else {
        return Err(match snap.services_by_vip(network, dst_ip).first() {
            Some(svc) => ExplainError::ServiceVip {
                addr: dst,
                service: svc.key().into(),
                endpoints: endpoints_of(snap, network, &svc.key(), dst.port()),
                remote: remote_endpoints_of(snap, network, &svc.key()),
            },
            None => ExplainError::UnknownDestination(dst_ip),
        });
    };
    let mut notes = Vec::new();
    let src_workload = src.ip.and_then(|ip| snap.workload_by_ip(network, ip));
    let identity = match (&src.identity, src_workload) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(w)) if w.protocol == TunnelProtocol::Hbone => {
            notes.push("source identity taken from the mesh workload at the source IP".into());
            w.identity()
        }
        (None, _) => {
            notes.push("no source identity: evaluated as a plaintext connection".into());
            None
        }
    };
    let src_ip = match (src.ip, &identity) {
        (Some(ip), _) => ip,
        (None, Some(id)) => match workload_with_identity(snap, network, id) {
            Some(ip) => {
                notes.push(format!(
                    "source IP {ip} taken from a workload with the identity"
                ));
                ip
            }
            None => {
                notes.push("source IP unknown: IP conditions evaluated against 0.0.0.0".into());
                IpAddr::from([0, 0, 0, 0])
            }
        },
        (None, None) => IpAddr::from([0, 0, 0, 0]),
    };
    let connection = Conn {
        src_ip,
        src_identity: identity,
        dst_ip,
        dst_port: dst.port(),
    };
    let decision = authorize(snap, &connection, dst_workload, mode);
    let subject = Subject::new(&connection, mode);
    let policies = applicable(snap, dst_workload)
        .unwrap_or_default()
        .into_iter()
        .map(|p| PolicyTrace {
            policy: p.key().into(),
            scope: p.scope,
            action: p.action,
            dry_run: p.dry_run,
            matched_rule: matching_rule(p, &subject),
            unmatchable_rules: super::unmatchable_rules(p, mode),
        })
        .collect();
    Ok(Explanation {
        source_workload: src
            .ip
            .and_then(|ip| snap.workload_by_ip(network, ip))
            .map(|w| name_of(w)),
        destination_workload: name_of(dst_workload),
        connection,
        decision,
        policies,
        notes,
    })
}

fn name_of(w: &Workload) -> Strng {
    format!("{}/{}", w.namespace, w.name).into()
}

/// The smallest IP (for a stable answer) of a workload on `network` with identity `id`.
fn workload_with_identity(snap: &Snapshot, network: &str, id: &Identity) -> Option<IpAddr> {
    snap.workloads()
        .filter(|w| *w.network == *network && w.identity().as_ref() == Some(id))
        .flat_map(|w| w.workload_ips.iter().copied())
        .min()
}

fn endpoints_of(snap: &Snapshot, network: &str, key: &str, svc_port: u16) -> Vec<SocketAddr> {
    let target = snap
        .service(key)
        .and_then(|s| s.ports.get(&svc_port).copied());
    snap.endpoints(key)
        .iter()
        .filter(|w| *w.network == *network)
        .filter_map(|w: &Arc<Workload>| {
            let port = w
                .services
                .get(key)
                .and_then(|m| m.get(&svc_port).copied())
                .filter(|p| *p != 0)
                .or(target.filter(|p| *p != 0))?;
            Some(SocketAddr::new(*w.workload_ips.first()?, port))
        })
        .collect()
}

/// The service's endpoints on networks other than `network`, with the gateway hop.
fn remote_endpoints_of(snap: &Snapshot, network: &str, key: &str) -> Vec<String> {
    use crate::state::model::GatewayDestination;
    snap.endpoints(key)
        .iter()
        .filter(|w| *w.network != *network)
        .map(|w| {
            let via = match w
                .network_gateway
                .as_ref()
                .map(|g| (&g.destination, g.hbone_mtls_port))
            {
                Some((GatewayDestination::Address(a), port)) => format!("{}:{port}", a.address),
                Some((GatewayDestination::Hostname(h), port)) => format!("{}:{port}", h.hostname),
                None => "no gateway: never used".into(),
            };
            format!("{}/{} ({}) via {via}", w.namespace, w.name, w.network)
        })
        .collect()
}

fn remote_note(remote: &[String]) -> String {
    if remote.is_empty() {
        String::new()
    } else {
        format!("; on other networks, through their gateway: {remote:?}")
    }
}
