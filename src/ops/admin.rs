//! The admin API on `127.0.0.1:15000` (loopback only): `/config_dump` in the shape
//! `istioctl ztunnel-config` reads, `/logging`, `/quitquitquit`, `/connections`.
//!
//! The dump never contains private keys: certificates are listed by their public chain only.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::http::{json, text, Handler, Req};
use super::logging::LogHandle;
use crate::config::Config;
use crate::state::Reader;

/// What the CNI handed us, per pod uid, for `workloadState`.
#[derive(Clone, Default)]
pub struct WorkloadStates {
    // Short critical sections only.
    pods: Arc<Mutex<BTreeMap<String, PodState>>>,
}

/// One pod's proxy as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// `Up` or `Pending`.
    pub state: &'static str,
    /// Who the pod is.
    pub info: PodStateInfo,
}

/// Pod identity in `workloadState`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStateInfo {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl WorkloadStates {
    /// Records a pod's state.
    pub fn set(&self, uid: &str, state: PodState) {
        self.pods.lock().insert(uid.to_string(), state);
    }

    /// Forgets a pod.
    pub fn remove(&self, uid: &str) {
        self.pods.lock().remove(uid);
    }

    /// Number of pods in `Up` state.
    pub fn up(&self) -> usize {
        self.pods
            .lock()
            .values()
            .filter(|p| p.state == "Up")
            .count()
    }

    fn dump(&self, conns: &[super::access::LiveConnection]) -> Value {
        let pods = self.pods.lock();
        let mut out = serde_json::Map::new();
        for (uid, p) in pods.iter() {
            let inbound: Vec<_> = conns
                .iter()
                .filter(|c| {
                    c.direction == "inbound"
                        && c.dst_workload
                            .as_ref()
                            .is_some_and(|w| w.is(&p.info.namespace, &p.info.name))
                })
                .collect();
            let outbound: Vec<_> = conns
                .iter()
                .filter(|c| {
                    c.direction == "outbound"
                        && c.src_workload
                            .as_ref()
                            .is_some_and(|w| w.is(&p.info.namespace, &p.info.name))
                })
                .collect();
            let inbound: Vec<Value> = inbound.into_iter().map(connection_dump).collect();
            let outbound: Vec<Value> = outbound.into_iter().map(connection_dump).collect();
            out.insert(uid.clone(), json!({ "state": p.state, "info": p.info, "connections": { "inbound": inbound, "outbound": outbound } }));
        }
        Value::Object(out)
    }
}

/// A live connection as ztunnel lists it under `workloadState` (`src`, `originalDst`,
/// `actualDst`, `protocol`: what `istioctl ztunnel-config connections` shows), with ztun's own
/// fields beside them.
fn connection_dump(c: &super::access::LiveConnection) -> Value {
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    let target = || {
        c.hbone_target
            .as_ref()
            .map(ToString::to_string)
            .or(addr(c.dst))
    };
    let tunnelled = c.hbone_target.is_some();
    let (original, actual, protocol) = match c.direction {
        // Inbound: the client reached this address; HBONE when the peer is proven.
        "inbound" => (
            None,
            target(),
            if c.src_identity.is_some() {
                "HBONE"
            } else {
                "TCP"
            },
        ),
        // Outbound: the app dialled the CONNECT target (or the destination); the next hop is
        // the peer's 15008 when tunnelled.
        _ => (
            target(),
            addr(c.dst),
            if tunnelled { "HBONE" } else { "TCP" },
        ),
    };
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        o.insert("originalDst".into(), json!(original));
        o.insert("actualDst".into(), json!(actual));
        o.insert("protocol".into(), json!(protocol));
    }
    v
}

/// Everything the admin API reads or controls.
#[derive(Clone)]
pub struct Admin {
    /// The running configuration.
    pub config: Arc<Config>,
    /// Mesh state.
    pub state: Reader,
    /// The log filter.
    pub log: LogHandle,
    /// Notified by `/quitquitquit`.
    pub shutdown: Arc<tokio::sync::Notify>,
    /// Public view of the certificates (no keys).
    pub certificates: Arc<dyn Fn() -> Value + Send + Sync>,
    /// Pods handed over by the CNI.
    pub pods: WorkloadStates,
    /// The live connection table (`/connections`, `workloadState`).
    pub telemetry: Arc<super::Telemetry>,
    /// The CRLs in force (`crl` in the dump).
    pub revocation: crate::tls::Revocation,
    /// The local configuration file as it parses now (`staticConfig`): empty lists without
    /// one, `{error}` when it does not parse.
    pub static_config: Arc<dyn Fn() -> Value + Send + Sync>,
}

impl Admin {
    /// The request handler.
    pub fn handler(self) -> Handler {
        let this = Arc::new(self);
        Arc::new(move |req: Req| {
            let this = this.clone();
            Box::pin(async move { this.route(req) })
        })
    }

    fn route(&self, req: Req) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        match (req.path.as_str(), &req.method) {
            ("/", &Method::GET) => text(StatusCode::OK, INDEX),
            ("/config_dump", &Method::GET) => json(StatusCode::OK, &self.config_dump()),
            ("/connections", &Method::GET) => json(StatusCode::OK, &self.telemetry.connections()),
            ("/logging", &Method::POST) => self.logging(&req.query),
            ("/explain", &Method::GET) => self.explain(&req.query),
            ("/quitquitquit", &Method::POST) => {
                self.shutdown.notify_one();
                text(StatusCode::OK, "shutdown now\n")
            }
            (
                "/" | "/config_dump" | "/connections" | "/logging" | "/quitquitquit" | "/explain",
                _,
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// `POST /logging`, as ztunnel answers it (and as `istioctl ztunnel-config log` sends it):
    /// no `level` (or an empty one) without `reset` lists the current filter; `level=` appends
    /// clauses, each a bare level or `target=level`; any `reset` key restores the startup
    /// filter, then applies `level`. Every success answers with the filter in force.
    fn logging(&self, query: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let mut level = None;
        let mut reset = false;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match percent_decode(k).as_str() {
                "level" => level = Some(percent_decode(v)),
                "reset" => reset = true,
                _ => {}
            }
        }
        let level = level.filter(|l| !l.is_empty());
        if let Some(bad) = level
            .as_deref()
            .and_then(|l| l.split(',').find(|c| !valid_level_clause(c)))
        {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid level provided: {bad}\n{LOGGING_USAGE}"),
            );
        }
        let res = match (reset, level) {
            (true, None) => self.log.reset(),
            (true, Some(l)) => self.log.reset().and_then(|_| self.log.append(&l)),
            (false, Some(l)) => self.log.append(&l),
            (false, None) => Ok(self.log.current()),
        };
        match res {
            Ok(now) => text(StatusCode::OK, format!("current log level is {now}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    /// `GET /explain?src=<ip|spiffe id>&dst=<ip:port>`: the authorization decision for that
    /// connection against the current state, with the policies behind it.
    fn explain(&self, query: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        use crate::authz::{explain, ExplainSource};
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .map(percent_decode)
        };
        let (Some(src), Some(dst)) = (param("src"), param("dst")) else {
            return text(
                StatusCode::BAD_REQUEST,
                "usage: GET /explain?src=<ip|spiffe://…>&dst=<ip:port>\n",
            );
        };
        let src = match ExplainSource::parse(&src) {
            Ok(s) => s,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let Ok(dst) = dst.parse::<std::net::SocketAddr>() else {
            return text(StatusCode::BAD_REQUEST, "dst is not ip:port\n");
        };
        let snap = self.state.load();
        let mode = self.config.authz.http_only_deny;
        match explain(&snap, &self.config.network, &src, dst, mode) {
            Ok(e) => json(StatusCode::OK, &e),
            Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        }
    }

    /// The dump `istioctl ztunnel-config` reads.
    pub fn config_dump(&self) -> Value {
        let snap = self.state.load_full();
        let mut workloads: Vec<_> = snap.workloads().cloned().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = snap.services().cloned().collect();
        services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        let services: Vec<Value> = services.iter().map(|s| service_dump(&snap, s)).collect();
        let mut policies: Vec<_> = snap.policies().cloned().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mode = self.config.authz.http_only_deny;
        let policies: Vec<Value> = policies.iter().map(|p| policy_dump(p, mode)).collect();
        json!({
            "workloads": workloads,
            "services": services,
            "policies": policies,
            "stagedServices": {},
            "staticConfig": (self.static_config)(),
            "version": {
                "version": crate::VERSION,
                "gitRevision": "unknown",
                "rustVersion": "stable",
                "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
                "buildStatus": "Clean",
                "istioVersion": self.config.proxy_metadata.get("ISTIO_VERSION").cloned().unwrap_or_else(|| "unknown".into()),
                "cryptoProvider": "aws-lc",
            },
            "config": &*self.config,
            "certificates": (self.certificates)(),
            "workloadState": self.pods.dump(&self.telemetry.connections()),
            "crl": self.revocation.dump(),
        })
    }
}

const LOGGING_USAGE: &str =
    "usage: POST /logging (list), /logging?level=<level>|<target>=<level>,… \
     (append), /logging?reset[&level=…] (restore the startup filter); \
     levels: off, error, warn, info, debug, trace\n";

/// A service as ztunnel dumps it: the model plus `endpoints`, keyed by workload uid, each
/// `{workloadUid, service, port, status}` (healthy ones only unless the service allows all).
pub(crate) fn service_dump(
    snap: &crate::state::Snapshot,
    svc: &crate::state::model::Service,
) -> Value {
    let key = svc.key();
    let endpoints: serde_json::Map<String, Value> = snap
        .endpoints(&key)
        .iter()
        .filter(|w| svc.admits(w))
        .map(|w| {
            let port = w.services.get(key.as_str()).cloned().unwrap_or_default();
            let endpoint = json!({
                "workloadUid": &*w.uid,
                "service": &key,
                "port": port,
                "status": w.status,
            });
            (w.uid.to_string(), endpoint)
        })
        .collect();
    let mut v = serde_json::to_value(svc).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        o.insert("endpoints".into(), Value::Object(endpoints));
    }
    v
}

/// A policy as ztunnel dumps it, plus `unmatchableRules` (ztun's own key, ignored by
/// istioctl): the rules that can never match at L4 under `mode`.
fn policy_dump(p: &crate::state::model::Policy, mode: crate::config::HttpOnlyDeny) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    let unmatchable = crate::authz::unmatchable_rules(p, mode);
    if let (Value::Object(o), false) = (&mut v, unmatchable.is_empty()) {
        o.insert("unmatchableRules".into(), json!(unmatchable));
    }
    v
}

/// A clause ztunnel accepts in `level=`: a bare level, or `target=level` (a target is a module
/// path such as `ztun::dataplane`; istioctl's `target:level` colon form is refused, as ztunnel
/// refuses it).
fn valid_level_clause(clause: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    match clause.split_once('=') {
        None => level(clause),
        Some((target, l)) => {
            let target = target.trim();
            !target.is_empty() && !target.replace("::", "").contains(':') && level(l)
        }
    }
}

const INDEX: &str = "ztun admin API\n\
GET  /config_dump     workloads, services, policies, certificates, pods, config\n\
GET  /connections     established connections\n\
POST /logging         current log filter; ?level= appends (e.g. debug, ztun=debug); ?reset restores\n\
POST /quitquitquit    drain and exit\n\
GET  /explain?src=&dst=  authorization decision for src (ip or spiffe id) to dst (ip:port)\n";

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::json;

    use super::{percent_decode, policy_dump, service_dump, valid_level_clause};
    use crate::config::HttpOnlyDeny;
    use crate::state::model::*;
    use crate::state::SnapshotBuilder;
    use crate::testkit::fixtures::pod as workload;

    /// Every shape the mesh sections can take decodes into istioctl's Go types (the schema
    /// in `testkit::istioctl`), with ztunnel's value forms.
    #[test]
    fn mesh_sections_decode_as_istioctl_reads_them() {
        let vip = |ip: [u8; 4]| NetworkAddress {
            network: "".into(),
            address: IpAddr::from(ip),
        };
        let gw_address = GatewayAddress {
            destination: GatewayDestination::Address(vip([10, 0, 0, 9])),
            hbone_mtls_port: 15008,
        };
        let gw_host = GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "ns".into(),
                hostname: "wp.ns.svc.cluster.local".into(),
            }),
            hbone_mtls_port: 15008,
        };
        let mut w = workload("ns", "server", "sa", [10, 0, 0, 1]);
        w.services
            .insert("ns/svc.ns.svc.cluster.local".into(), [(80, 8080)].into());
        w.waypoint = Some(gw_host.clone().into());
        w.network_gateway = Some(gw_address.clone().into());
        w.application_tunnel = Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088),
        });
        w.locality.region = "r1".into();
        w.authorization_policies = vec!["ns/p".into()];
        let mut sick = workload("ns", "sick", "sa", [10, 0, 0, 2]);
        sick.services = w.services.clone();
        sick.status = HealthStatus::Unhealthy;
        let svc = Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns.svc.cluster.local".into(),
            vips: vec![
                vip([10, 96, 0, 1]),
                NetworkAddress {
                    network: "net2".into(),
                    address: "fd00::1".parse().unwrap(),
                },
            ],
            cidr_vips: vec![CidrVip {
                network: "".into(),
                address: IpAddr::from([10, 97, 0, 0]),
                prefix_len: 16,
            }],
            ports: [(80, 8080), (81, 0)].into(),
            subject_alt_names: vec!["spiffe://cluster.local/ns/ns/sa/x".into()],
            waypoint: Some(gw_address),
            weighted_waypoints: vec![WeightedWaypoint {
                destination: gw_host,
                weight: 3,
            }],
            load_balancer: Some(LoadBalancer {
                routing_preferences: vec![LoadBalancerScope::Network, LoadBalancerScope::Region],
                mode: LoadBalancerMode::Failover,
                health_policy: HealthPolicy::OnlyHealthy,
            }),
            ip_families: IpFamilies::Dual,
            canonical: true,
            visibility: Visibility::Public,
        };
        let every = PolicyMatch {
            namespaces: vec![StringMatch::Exact("a".into()), StringMatch::Presence],
            not_namespaces: vec![StringMatch::Prefix("kube-".into())],
            principals: vec![StringMatch::Suffix("/sa/x".into())],
            not_principals: vec![StringMatch::Presence],
            service_accounts: vec![ServiceAccountMatch {
                namespace: "a".into(),
                service_account: "b".into(),
            }],
            not_service_accounts: vec![ServiceAccountMatch {
                namespace: "c".into(),
                service_account: "d".into(),
            }],
            source_ips: vec![IpNet {
                address: IpAddr::from([10, 0, 0, 0]),
                prefix_len: 8,
            }],
            not_source_ips: vec![IpNet {
                address: "fd00::".parse().unwrap(),
                prefix_len: 64,
            }],
            destination_ips: vec![IpNet {
                address: IpAddr::from([10, 0, 0, 1]),
                prefix_len: 32,
            }],
            not_destination_ips: vec![IpNet {
                address: IpAddr::from([10, 0, 0, 2]),
                prefix_len: 32,
            }],
            destination_ports: vec![8080],
            not_destination_ports: vec![15021],
        };
        let p = Policy {
            name: "p".into(),
            namespace: "ns".into(),
            scope: PolicyScope::WorkloadSelector,
            action: PolicyAction::Deny,
            rules: vec![vec![vec![every]], vec![vec![PolicyMatch::default()]]],
            dry_run: false,
        };
        let mut b = SnapshotBuilder::default();
        b.insert_workload(w.clone());
        b.insert_workload(sick);
        b.insert_service(svc.clone());
        b.insert_policy(p.clone());
        let snap = b.build(1);
        let service = service_dump(&snap, &svc);
        let policy = policy_dump(&p, HttpOnlyDeny::Ignore);
        let dump = json!({"workloads": [w], "services": [service], "policies": [policy]});
        let d =
            crate::testkit::istioctl::decode(&dump).unwrap_or_else(|e| panic!("{e:#}\n{dump:#}"));
        // ztunnel's value forms.
        let s = &d.services[0];
        assert_eq!(s.vips, ["/10.96.0.1", "net2/fd00::1"]);
        assert_eq!(s.waypoint.as_ref().unwrap().destination, "/10.0.0.9");
        assert_eq!(s.cidr_vips.as_ref().unwrap()[0].cidr, "10.97.0.0/16");
        assert_eq!(s.ip_families.as_deref(), Some("Dual"));
        // Only the healthy endpoint, keyed by uid, with its port map.
        assert_eq!(s.endpoints.len(), 1, "{service:#}");
        let e = &s.endpoints["Kubernetes//Pod/ns/server"];
        assert_eq!(e.workload_uid, "Kubernetes//Pod/ns/server");
        assert_eq!(e.port.get(&80), Some(&8080));
        let wl = &d.workloads[0];
        assert_eq!(
            wl.waypoint.as_ref().unwrap().destination,
            "ns/wp.ns.svc.cluster.local"
        );
        assert_eq!(wl.application_tunnel.as_ref().unwrap().protocol, "PROXY");
        let m = &d.policies[0].rules[0][0][0];
        assert!(m.not_principals[0].presence.is_some());
        assert_eq!(m.service_accounts[0].service_account, "b");
        assert_eq!(m.not_source_ips, ["fd00::/64"]);
        assert_eq!(
            dump["policies"][0]["rules"][0][0][0]["notPrincipals"][0],
            json!({"Presence": []})
        );
        // ztun's mark of the rule that never matches at L4; absent when enforced.
        assert_eq!(dump["policies"][0]["unmatchableRules"], json!([1]));
        assert!(policy_dump(&p, HttpOnlyDeny::Enforce)
            .get("unmatchableRules")
            .is_none());
        // Breaking a form breaks the decode: a VIP object, a bare Presence string.
        let mut bad = dump.clone();
        bad["services"][0]["vips"][0] = json!({"network": "", "address": "10.96.0.1"});
        assert!(crate::testkit::istioctl::decode(&bad).is_err());
        let mut bad = dump.clone();
        bad["policies"][0]["rules"][0][0][0]["notPrincipals"][0] = json!("Presence");
        assert!(crate::testkit::istioctl::decode(&bad).is_err());
    }

    #[test]
    fn level_clauses_are_ztunnels() {
        for ok in [
            "info",
            "DEBUG",
            "ztun=debug",
            "ztun::dataplane=trace",
            "access=off",
        ] {
            assert!(valid_level_clause(ok), "{ok}");
        }
        for bad in [
            "",
            "warning",
            "access:debug",
            "=debug",
            "ztun=loud",
            "verbose",
        ] {
            assert!(!valid_level_clause(bad), "{bad}");
        }
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            percent_decode("ztun%3Ddebug%2Caccess%3Dinfo"),
            "ztun=debug,access=info"
        );
        assert_eq!(percent_decode("debug"), "debug");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
