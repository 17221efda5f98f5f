//! One proxy instance: a pod's identity, sockets and pool, and what its connections need
//! (the `listen` module binds and serves its listeners).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::enforce::{Connections, LocalPod};
use super::hbone::pool::{Pool, PoolConfig};
use super::hbone::H2Settings;
use super::Error;
use crate::config::Config;
use crate::ops::Telemetry;
use crate::sockets::Sockets;
use crate::state::model::Workload;
use crate::state::Reader;
use crate::tls::{CertSource, WorkloadCert};

/// How long a connection waits for its own workload to appear in the mesh state.
const LOCAL_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// Who a proxy instance serves, as the CNI (or `PROXY_WORKLOAD_INFO`) announced it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Pod uid (may be empty in dedicated mode).
    pub uid: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service account.
    pub service_account: Arc<str>,
}

/// What every pod's proxy on the node is given: configuration, mesh state, certificates,
/// capabilities and where to report. Built once by the composition root.
#[derive(Clone)]
pub struct ProxyInputs {
    /// The process configuration.
    pub cfg: Arc<Config>,
    /// The mesh state.
    pub state: Reader,
    /// The node's workload certificates (each proxy fetches only its own pod's).
    pub certs: Arc<dyn CertSource>,
    /// Fetches missing addresses from the control plane (`XDS_ON_DEMAND`).
    pub on_demand: Option<Arc<dyn super::OnDemand>>,
    /// Resolves hostname-only endpoints.
    pub resolver: Arc<dyn super::ResolveHost>,
    /// Connection metrics, the live connection table, fd exhaustion.
    pub telemetry: Arc<Telemetry>,
}

/// Everything a pod's connections need. Shared by all its connection tasks.
pub struct Proxy {
    pub(crate) pod: PodInfo,
    pub(crate) cfg: Arc<Config>,
    pub(crate) state: Reader,
    certs: Arc<dyn CertSource>,
    pub(crate) sockets: Sockets,
    /// One HBONE pool per data worker: a pooled connection's task and the tunnels riding it
    /// stay on one thread (`crate::workers`).
    pools: Box<[Pool]>,
    /// Live inbound connections, re-authorized when the mesh state changes.
    pub(crate) connections: Connections,
    /// Fetches missing addresses from the control plane (`XDS_ON_DEMAND`).
    pub(crate) on_demand: Option<Arc<dyn super::OnDemand>>,
    /// Resolves hostname-only endpoints (shared by every pod: it resolves from ztun's own
    /// namespace, not the pod's).
    pub(crate) resolver: Arc<dyn super::ResolveHost>,
    /// Whether inbound connections reach the app from the client's own address: set by
    /// [`Proxy::start`] from what the inbound listeners got (see [`transparency`]).
    pub(super) original_source: AtomicBool,
    /// Where connections report (metrics, live table).
    pub(crate) telemetry: Arc<Telemetry>,
}

impl Proxy {
    /// A proxy for `pod` whose sockets come from `sockets`.
    pub fn new(pod: PodInfo, sockets: Sockets, inputs: &ProxyInputs) -> Arc<Self> {
        let ProxyInputs {
            cfg,
            state,
            certs,
            on_demand,
            resolver,
            telemetry,
        } = inputs.clone();
        let pool_cfg = PoolConfig {
            max_streams: cfg.proxy.pool_max_streams_per_connection,
            idle_timeout: cfg.proxy.pool_unused_release_timeout,
            handshake_timeout: cfg.proxy.handshake_timeout,
            h2: H2Settings::from_config(&cfg.proxy),
        };
        let pools = (0..crate::workers::count(cfg.worker_threads))
            .map(|_| Pool::new(pool_cfg, sockets.clone()))
            .collect();
        let connections = Connections::new(
            LocalPod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                service_account: pod.service_account.clone(),
                node: cfg.node_name.as_deref().map(Into::into),
            },
            cfg.authz,
        );
        Arc::new(Proxy {
            pod,
            cfg,
            state,
            certs,
            sockets,
            pools,
            connections,
            on_demand,
            resolver,
            original_source: AtomicBool::new(false),
            telemetry,
        })
    }

    /// The HBONE pool of the worker the caller runs on.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pools[crate::workers::index() % self.pools.len()]
    }

    /// The source address to connect from when delivering a connection from `client` to
    /// the app: the client's own (a transparent bind, so the app sees the real client) when
    /// the inbound listeners are transparent, else `None`: the kernel picks the pod's own
    /// address.
    pub(crate) fn upstream_source(&self, client: IpAddr) -> Option<IpAddr> {
        self.original_source
            .load(Ordering::Relaxed)
            .then_some(client)
    }

    /// The pod's workload from the mesh state, waiting a bounded time for it to arrive. Its
    /// identity must match what the CNI announced: a mismatch fails closed.
    pub async fn local_workload(&self) -> Result<Arc<Workload>, Error> {
        let mut state = self.state.clone();
        let deadline = tokio::time::Instant::now() + LOCAL_WORKLOAD_WAIT;
        let mut demanded = false;
        loop {
            let found = {
                let snap = state.load();
                snap.workload_by_pod(
                    &self.pod.namespace,
                    &self.pod.name,
                    self.cfg.node_name.as_deref(),
                )
                .cloned()
            };
            if let Some(w) = found {
                if w.service_account != self.pod.service_account {
                    return Err(Error::LocalIdentityMismatch {
                        cni: self.pod.service_account.clone(),
                        state: w.service_account.clone(),
                    });
                }
                return Ok(w);
            }
            // On-demand mode: ask for the pod by uid once, then keep waiting for the state.
            if let (Some(od), false) = (&self.on_demand, demanded || self.pod.uid.is_empty()) {
                demanded = true;
                if od.demand(self.pod.uid.to_string()).await {
                    continue;
                }
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(true) => continue,
                _ => {
                    return Err(Error::UnknownLocalWorkload(
                        format!("{}/{}", self.pod.namespace, self.pod.name).into(),
                    ))
                }
            }
        }
    }

    /// The certificate of the pod's own identity (the only one this proxy may use).
    pub async fn local_cert(&self, w: &Workload) -> Result<Arc<WorkloadCert>, Error> {
        let id = w
            .identity()
            .ok_or_else(|| Error::UnknownLocalWorkload(w.uid.clone()))?;
        Ok(self.certs.fetch(&id).await?)
    }

    /// Ports ztun itself holds inside the pod: a captured connection is never sent to them
    /// on loopback or the pod's own address.
    pub(crate) fn is_own_port(&self, port: u16) -> bool {
        let p = &self.cfg.proxy;
        [
            p.outbound_port,
            p.inbound_plaintext_port,
            p.inbound_hbone_port,
            p.dns_port,
        ]
        .contains(&port)
    }
}
