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

    fn dump(&self) -> Value {
        let conns = super::telemetry().connections();
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
            out.insert(uid.clone(), json!({ "state": p.state, "info": p.info, "connections": { "inbound": inbound, "outbound": outbound } }));
        }
        Value::Object(out)
    }
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
    /// The CRLs in force (`crl` in the dump).
    pub revocation: crate::tls::Revocation,
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
            ("/connections", &Method::GET) => {
                json(StatusCode::OK, &super::telemetry().connections())
            }
            ("/logging", &Method::GET) => text(
                StatusCode::OK,
                format!("current log level is {}\n", self.log.current()),
            ),
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

    fn logging(&self, query: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let level = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("level="))
            .map(percent_decode);
        let res = match (query.split('&').any(|kv| kv == "reset"), level) {
            (true, _) => self.log.reset(),
            (false, Some(l)) if !l.is_empty() => self.log.append(&l),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "usage: POST /logging?level=<level>|<target>=<level>,… or /logging?reset\n",
                )
            }
        };
        match res {
            Ok(now) => text(StatusCode::OK, format!("current log level is {now}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    /// `GET /explain?src=<ip|spiffe id>&dst=<ip:port>`: the authorization decision for that
    /// connection against the current state, with the policies behind it.
    fn explain(&self, query: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        use crate::dataplane::policy::{explain, ExplainSource};
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
        match explain(&self.state.load(), &self.config.network, &src, dst) {
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
        let mut policies: Vec<_> = snap.policies().cloned().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        json!({
            "workloads": workloads,
            "services": services,
            "policies": policies,
            "stagedServices": {},
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
            "workloadState": self.pods.dump(),
            "crl": self.revocation.dump(),
        })
    }
}

const INDEX: &str = "ztun admin API\n\
GET  /config_dump     workloads, services, policies, certificates, pods, config\n\
GET  /connections     established connections\n\
GET  /logging         current log filter\n\
POST /logging?level=  append filter directives (e.g. debug, ztun=debug); ?reset restores\n\
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
    use super::percent_decode;

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
