//! One proxy instance: a pod's identity, sockets and pool, and its three listeners.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

use super::enforce::{Connections, LocalPod};
use super::hbone::pool::{Pool, PoolConfig};
use super::hbone::H2Settings;
use super::Error;
use crate::config::Config;
use crate::dns::metrics::DnsMetrics;
use crate::drain::{self, DrainMode};
use crate::ops::metrics::Reporter;
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
    /// The DNS proxy's families.
    pub dns_metrics: Arc<DnsMetrics>,
}

/// Everything a pod's connections need. Shared by all its connection tasks.
pub struct Proxy {
    pub(crate) pod: PodInfo,
    pub(crate) cfg: Arc<Config>,
    pub(crate) state: Reader,
    certs: Arc<dyn CertSource>,
    pub(crate) sockets: Sockets,
    pub(crate) pool: Pool,
    /// Live inbound connections, re-authorized when the mesh state changes.
    pub(crate) connections: Connections,
    /// Fetches missing addresses from the control plane (`XDS_ON_DEMAND`).
    pub(crate) on_demand: Option<Arc<dyn super::OnDemand>>,
    /// Open connections against `ZTUN_MAX_CONNECTIONS_PER_POD`.
    slots: Arc<ConnSlots>,
    /// Resolves hostname-only endpoints (shared by every pod: it resolves from ztun's own
    /// namespace, not the pod's).
    pub(crate) resolver: Arc<dyn super::ResolveHost>,
    /// Where connections report (metrics, live table).
    pub(crate) telemetry: Arc<Telemetry>,
    dns_metrics: Arc<DnsMetrics>,
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
            dns_metrics,
        } = inputs.clone();
        let pool_cfg = PoolConfig {
            max_streams: cfg.proxy.pool_max_streams_per_connection,
            idle_timeout: cfg.proxy.pool_unused_release_timeout,
            handshake_timeout: cfg.proxy.handshake_timeout,
            h2: H2Settings::from_config(&cfg.proxy),
        };
        let pool = Pool::new(pool_cfg, sockets.clone());
        let connections = Connections::new(
            LocalPod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                service_account: pod.service_account.clone(),
                node: cfg.node_name.as_deref().map(Into::into),
            },
            cfg.authz,
        );
        let slots = Arc::new(ConnSlots::new(cfg.proxy.max_connections_per_pod));
        Arc::new(Proxy {
            slots,
            pod,
            cfg,
            state,
            certs,
            sockets,
            pool,
            connections,
            on_demand,
            resolver,
            telemetry,
            dns_metrics,
        })
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

    /// Binds the pod's listeners (on the calling thread, in the pod's namespace) and starts
    /// serving them on `data`. Dropping the returned handle stops the listeners and closes the
    /// pod's connections. `process` is the process-wide drain: its signal reaches every
    /// listener and connection, and its `closed()` waits for all of them.
    pub fn start(
        self: &Arc<Self>,
        data: &Handle,
        process: &drain::Trigger,
    ) -> io::Result<ProxyHandle> {
        let any = if self.cfg.proxy.ipv6_enabled {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let transparent = self.cfg.proxy.enable_orig_src.unwrap_or(true);
        let p = &self.cfg.proxy;
        if self.cfg.inpod.port_reuse {
            self.sockets.enable_listener_migration();
        }
        let outbound = self
            .sockets
            .std_listener(SocketAddr::new(any, p.outbound_port), transparent)?;
        let plaintext = self
            .sockets
            .std_listener(SocketAddr::new(any, p.inbound_plaintext_port), transparent)?;
        let hbone = self
            .sockets
            .std_listener(SocketAddr::new(any, p.inbound_hbone_port), transparent)?;
        let (trigger, pod) = drain::channel();
        let (drains, feed) = drain::merge(pod, process.watch());
        data.spawn(feed);
        if p.dns_capture {
            let pod = crate::dns::PodDns {
                namespace: self.pod.namespace.clone(),
                name: self.pod.name.clone(),
                service_account: self.pod.service_account.clone(),
                cfg: self.cfg.clone(),
                state: self.state.clone(),
                sockets: self.sockets.clone(),
                metrics: self.dns_metrics.clone(),
            };
            crate::dns::start(pod, data, &drains)?;
        }
        let this = self.clone();
        let d = drains.clone();
        let slots = (self.slots.clone(), "outbound");
        let telemetry = self.telemetry.clone();
        data.spawn(async move {
            serve(outbound, d, slots, telemetry, move |s, peer, d| {
                super::outbound::serve(this.clone(), s, peer, d)
            })
            .await
        });
        let this = self.clone();
        let d = drains.clone();
        let slots = (self.slots.clone(), "inbound");
        let telemetry = self.telemetry.clone();
        data.spawn(async move {
            serve(plaintext, d, slots, telemetry, move |s, peer, d| {
                super::passthrough::serve(this.clone(), s, peer, d)
            })
            .await
        });
        let this = self.clone();
        let d = drains.clone();
        let slots = (self.slots.clone(), "inbound");
        let telemetry = self.telemetry.clone();
        data.spawn(async move {
            serve(hbone, d, slots, telemetry, move |s, peer, d| {
                super::inbound::serve(this.clone(), s, peer, d)
            })
            .await
        });
        // Late enforcement: closes open inbound connections a policy change denies. It stops
        // when draining starts (it must not hold the drain open); connections still finishing
        // then are bounded by the termination deadline.
        let enforce = self.connections.clone().enforce(self.state.clone());
        let mut d = drains;
        data.spawn(async move {
            tokio::select! {
                _ = enforce => {}
                _ = d.signaled() => {}
            }
        });
        Ok(ProxyHandle { trigger })
    }
}

/// Keeps a pod's proxy running; dropping it (or [`ProxyHandle::drain`]) stops it.
#[must_use = "dropping the handle stops the pod's proxy"]
pub struct ProxyHandle {
    trigger: drain::Trigger,
}

impl ProxyHandle {
    /// Stops accepting; connections stop now (`Immediate`) or run to completion (`Graceful`).
    pub fn drain(&self, mode: DrainMode) {
        self.trigger.start(mode);
    }

    /// Resolves when every listener and connection of the pod is gone.
    pub async fn closed(&self) {
        self.trigger.closed().await
    }
}

/// The drain a pod's tasks obey: the more urgent of the pod's own (CNI `del`) and the
/// process's (SIGTERM), merged into one watch ([`drain::merge`]).
pub type Drains = drain::Watch;

/// A pod's open connections, counted against `ZTUN_MAX_CONNECTIONS_PER_POD` so one pod cannot
/// spend the whole process's file descriptors.
struct ConnSlots {
    open: AtomicU32,
    /// 0: no limit.
    max: u32,
    /// Set while the pod is at its limit, so the refusal is logged once per episode.
    full: AtomicBool,
}

impl ConnSlots {
    fn new(max: u32) -> Self {
        ConnSlots {
            open: AtomicU32::new(0),
            max,
            full: AtomicBool::new(false),
        }
    }

    /// A slot for one more connection, or `None` at the limit.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let max = match self.max {
            0 => u32::MAX,
            m => m,
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }
}

/// One open connection of a pod; dropping it frees the slot.
struct Slot(Arc<ConnSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection over the pod's limit: reset at once (nothing was read), counted as
/// `ztun_connection_failures_total{reason="pod_connection_limit"}`, logged once per episode.
fn refuse_over_limit(
    stream: TcpStream,
    peer: SocketAddr,
    slots: &ConnSlots,
    direction: &'static str,
    telemetry: &Telemetry,
) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
    telemetry
        .metrics
        .failures
        .get_or_create(&crate::ops::metrics::FailureLabels {
            direction,
            reason: "pod_connection_limit",
        })
        .inc();
    if !slots.full.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            %peer,
            direction,
            limit = slots.max,
            "pod connection limit reached, refusing new connections"
        );
    }
}

/// Accepts until drained; each connection runs in its own task until done or drained
/// immediately. Every task holds a clone of the drains, which is what lets the process wait
/// for its connections on shutdown, and a slot of the pod's connection budget.
async fn serve<F, Fut>(
    listener: std::net::TcpListener,
    mut drains: Drains,
    (slots, direction): (Arc<ConnSlots>, &'static str),
    telemetry: Arc<Telemetry>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Drains) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let reporter = match direction {
        "outbound" => Reporter::Source,
        _ => Reporter::Destination,
    };
    loop {
        let accepted = tokio::select! {
            _ = drains.signaled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = slots.take() else {
                    refuse_over_limit(stream, peer, &slots, direction, &telemetry);
                    continue;
                };
                if slots.full.load(Ordering::Relaxed) {
                    slots.full.store(false, Ordering::Relaxed);
                }
                // The connection future is created inside the task: a future captured from
                // outside would be stored twice in the task (as the capture and as the
                // select's operand), doubling the memory of every idle connection.
                let handle = handle.clone();
                let mut d = drains.clone();
                let socket = telemetry.metrics.socket_opened(reporter);
                tokio::spawn(async move {
                    let conn = handle(stream, peer, d.clone());
                    tokio::select! {
                        _ = conn => {}
                        _ = d.immediate() => {}
                    }
                    drop(slot);
                    drop(socket);
                });
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning, and say so
                // in metrics and readiness (the kernel queue keeps the client waiting meanwhile).
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    telemetry.note_fd_exhausted();
                }
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    drop(listener);
    tracing::debug!(port, "listener closed");
}
