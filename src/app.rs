//! The composition root: builds every component from the configuration, starts them in
//! order, and runs the shutdown sequence.
//!
//! Runtimes: the calling thread runs a current-thread *control* runtime (CNI, configuration,
//! certificates, signals); the data plane's workers (`workers`: a thread and a current-thread
//! runtime each) run listeners and connections. They share only `state` (snapshots) and the
//! certificate source.
//!
//! Shutdown: SIGTERM/SIGINT → every listener stops accepting and HBONE connections send
//! GOAWAY → connections finish until the termination deadline → the rest are closed → exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use prometheus_client::registry::Registry;

use crate::config::{Config, LocalXds, ProxyMode, Requirement};
use crate::control::ca::{CaClient, CaClientConfig, CertStore, Issuer, LocalCa, StoreConfig};
use crate::control::xds;
use crate::control::zds::{self, Pod, PodStarter};
use crate::dataplane::{OnDemand, PodInfo, Proxy, ProxyInputs, ResolveHost};
use crate::drain::{self, DrainMode};
use crate::ops::admin::{Admin, PodState, PodStateInfo, WorkloadStates};
use crate::ops::logging::LogHandle;
use crate::ops::readiness::Readiness;
use crate::ops::Telemetry;
use crate::sockets::Sockets;
use crate::state::{self, Reader, Writer};
use crate::sys::Netns;
use crate::tasks::{Exit, Tasks};
use crate::tls::{CertSource, Revocation};
use crate::workers::Workers;

/// Runs ztun until it is told to stop.
pub fn run(config: Config) -> anyhow::Result<()> {
    let log = crate::ops::logging::init(&config.log)?;
    // Before any TLS configuration is built.
    crate::tls::set_compliance_policy(config.compliance_policy);
    if config.compliance_policy == crate::config::CompliancePolicy::Pqc {
        tracing::info!("COMPLIANCE_POLICY=pqc: TLS key exchange is X25519MLKEM768 only");
    }
    raise_fd_limit();
    crate::sys::alloc::retain_freed_heap();
    let config = Arc::new(config);
    let (data, threads) = crate::workers::start(
        config.worker_threads,
        crate::ops::logging::batch::flush_thread,
    )?;
    for worker in data.handles() {
        worker.spawn(crate::ops::logging::batch::batch_this_thread());
    }
    tracing::info!(
        workers = data.handles().len(),
        runtime = "current-thread per worker",
        "data plane runtime started"
    );
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")?;
    let res = control.block_on(run_control(config, data, log));
    threads.shutdown(Duration::from_secs(1));
    res
}

async fn run_control(config: Arc<Config>, data: Workers, log: LogHandle) -> anyhow::Result<()> {
    tracing::info!(version = crate::VERSION, mode = ?config.proxy_mode, workers = config.worker_threads, "ztun starting");
    let istio_version = config
        .proxy_metadata
        .get("ISTIO_VERSION")
        .map(String::as_str)
        .unwrap_or("unknown");
    // The one metrics registry: every component registers its own families in it before the
    // stats server starts; nothing is registered after. Some families are exported only in
    // some setups, as ztunnel registers them.
    let exports = crate::ops::metrics::Exports {
        workload_manager: config.proxy_mode == ProxyMode::Shared,
        dns: config.proxy.dns_capture,
    };
    let mut registry = Registry::default();
    let telemetry = Arc::new(Telemetry::new(&mut registry, istio_version, exports));
    let dns_metrics = dns_metrics(&mut registry, exports);
    crate::ops::metrics::register_process(&mut registry, Some(data.clone()));
    let readiness =
        Readiness::new(telemetry.clone()).with_fd_liveness(config.proxy.fd_exhaustion_liveness);
    let pods = WorkloadStates::default();
    // The node's own workloads are listed apart: following them costs no pass over the mesh.
    let (writer, reader) = state::new_for_node(config.node_name.as_deref());
    crate::authz::metrics::register_metrics(
        &mut registry,
        reader.clone(),
        config.authz.http_only_deny,
    );
    load_local_config(&config, &writer)?;
    // Every long-lived task of the control runtime has this one owner.
    let mut tasks = Tasks::new();
    let (xds_synced, on_demand) =
        start_mesh_source(&config, writer, &readiness, &mut tasks, &mut registry)?;
    let revocation = revocation(&config, &mut tasks, &mut registry)?;
    let (certs, cert_dump) = cert_source(&config, &reader, &revocation, &mut tasks, &mut registry)?;
    let resolver = host_resolver(&config);
    let process = Arc::new(drain::channel().0);
    let shutdown = Arc::new(tokio::sync::Notify::new());

    let admin = Admin {
        config: config.clone(),
        state: reader.clone(),
        log,
        shutdown: shutdown.clone(),
        certificates: cert_dump,
        pods: pods.clone(),
        telemetry: telemetry.clone(),
        revocation: revocation.clone(),
        static_config: static_config(&config),
    };
    serve_ops(
        &config,
        admin,
        &readiness,
        Arc::new(registry),
        &process,
        &mut tasks,
    )
    .await?;
    // Ends once the state has no writer left (a static mesh): nothing can change then.
    tasks.spawn_finite(
        "metric expiry",
        expire_metrics(reader.clone(), telemetry.clone()),
    );
    let inputs = ProxyInputs {
        cfg: config.clone(),
        state: reader.clone(),
        certs: certs.clone(),
        on_demand: on_demand.clone(),
        resolver: resolver.clone(),
        telemetry: telemetry.clone(),
    };

    // Keeps dedicated-mode listeners alive until shutdown.
    let mut _dedicated = None;
    match config.proxy_mode {
        ProxyMode::Shared => {
            let starter = Arc::new(PodProxies {
                inputs,
                dns_metrics,
                data: data.clone(),
                process: process.clone(),
            });
            readiness.block(CNI_TASK);
            let observer = Arc::new(OpsObserver {
                readiness: readiness.clone(),
                pods: pods.clone(),
                telemetry: telemetry.clone(),
            });
            let client = zds::Client::new(config.inpod.uds.clone(), starter, observer);
            let drain = process.watch();
            tasks.spawn("cni client", async move {
                // Pods are taken over only once the mesh is known (as ztunnel does).
                if let Some(synced) = xds_synced {
                    wait_synced(synced).await;
                }
                client.run(drain).await
            });
        }
        ProxyMode::Dedicated => {
            let info = config
                .workload_info
                .clone()
                .context("dedicated mode needs PROXY_WORKLOAD_INFO")?;
            let pod = PodInfo {
                uid: "".into(),
                name: info.name.into(),
                namespace: info.namespace.into(),
                service_account: info.service_account.into(),
            };
            let sockets = sockets_for(&config, None);
            _dedicated = Some(
                start_pod(pod, sockets, &inputs, &dns_metrics, &data, &process)
                    .context("binding dedicated-mode listeners")?,
            );
        }
    }
    tracing::info!("ztun ready");

    let signal = wait_for_signal();
    let requested = shutdown.notified();
    tokio::pin!(signal, requested);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = &mut requested => {
                tracing::info!("shutdown requested through the admin API");
                break;
            }
            Some((name, exit)) = tasks.next_exit() => task_died(&readiness, &telemetry, name, &exit),
        }
    }
    tracing::info!(deadline = ?config.termination_deadline, "shutting down: draining connections");
    process.start(DrainMode::Graceful);
    if tokio::time::timeout(config.termination_deadline, process.closed())
        .await
        .is_err()
    {
        tracing::warn!("termination deadline reached, closing remaining connections");
        process.start(DrainMode::Immediate);
        let _ = tokio::time::timeout(Duration::from_secs(1), process.closed()).await;
    }
    tasks.shutdown(Duration::from_secs(1)).await;
    tracing::info!("ztun stopped");
    Ok(())
}

/// A background task ended before shutdown: logged, counted, and readiness fails for good
/// (the process keeps serving what it can; Kubernetes replaces it).
fn task_died(readiness: &Readiness, telemetry: &Telemetry, name: &'static str, exit: &Exit) {
    let how = exit.label();
    tracing::error!(task = name, exit = ?exit, "background task ended unexpectedly; failing readiness");
    telemetry.metrics.task_died(name, how);
    readiness.block(&format!("task {name} ({how})"));
}

/// `staticConfig` of the dump: the local file re-read and parsed at each dump, as ztunnel
/// shows it (`{workloads, services, policies}`), or its error; empty lists without one.
fn static_config(config: &Config) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
    let source = config.local_xds.clone();
    Arc::new(move || {
        let Some(source) = &source else {
            return serde_json::json!({"workloads": [], "services": [], "policies": []});
        };
        match crate::control::local::from_source(source) {
            Ok(local) => serde_json::json!({
                "workloads": local.workloads,
                "services": local.services,
                "policies": local.policies,
            }),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        }
    })
}

fn load_local_config(config: &Config, writer: &Writer) -> anyhow::Result<()> {
    let local = match &config.local_xds {
        None => return Ok(()),
        Some(LocalXds::Path(p)) => crate::control::local::load(p)
            .with_context(|| format!("LOCAL_XDS_PATH {}", p.display()))?,
        Some(LocalXds::Inline(s)) => crate::control::local::parse(s).context("LOCAL_XDS")?,
    };
    let mut b = writer.builder();
    b.clear();
    let (w, s, p) = (
        local.workloads.len(),
        local.services.len(),
        local.policies.len(),
    );
    local
        .workloads
        .into_iter()
        .for_each(|x| b.insert_workload(x));
    local.services.into_iter().for_each(|x| b.insert_service(x));
    local.policies.into_iter().for_each(|x| b.insert_policy(x));
    writer.publish(b);
    crate::sys::alloc::release_free_memory();
    tracing::info!(
        workloads = w,
        services = s,
        policies = p,
        "local configuration loaded"
    );
    Ok(())
}

/// Starts what keeps the mesh state current, after the local file (if any) was loaded.
///
/// Precedence: with an xDS address the stream applies its deltas on top of the local file's
/// contents (a resource of the same name replaces the local one; removals are by name) and
/// the file is not watched. Readiness waits for the first ACK of every type. Without a local
/// file, the CNI is connected only after that (returned signal); with one, its contents serve
/// until then. Without an xDS address the local file is the mesh and its edits are followed.
type MeshSource = (
    Option<tokio::sync::watch::Receiver<bool>>,
    Option<Arc<dyn OnDemand>>,
);

fn start_mesh_source(
    config: &Config,
    writer: Writer,
    readiness: &Readiness,
    tasks: &mut Tasks,
    registry: &mut Registry,
) -> anyhow::Result<MeshSource> {
    let Some(xds) = xds::ClientConfig::from_config(config).context("xDS client")? else {
        if let Some(LocalXds::Path(path)) = &config.local_xds {
            let watcher = crate::control::local_watch::LocalWatcher::new(path.clone());
            tasks.spawn("local file watcher", watcher.run(writer));
        }
        return Ok((None, None));
    };
    tracing::info!(address = %xds.address, on_demand = xds.on_demand, "connecting to the xDS control plane");
    let metrics = Arc::new(xds::XdsMetrics::new(registry));
    let client = xds::Client::new(xds, writer, metrics).context("xDS client")?;
    let synced = client.synced();
    let on_demand = client
        .demander()
        .map(|d| Arc::new(XdsOnDemand(d)) as Arc<dyn OnDemand>);
    readiness.block(XDS_TASK);
    let unblock = readiness.clone();
    let mut ready = synced.clone();
    tasks.spawn_finite("xds readiness", async move {
        if ready.wait_for(|s| *s).await.is_ok() {
            unblock.unblock(XDS_TASK);
        }
    });
    tasks.spawn("xds client", client.run());
    Ok((config.local_xds.is_none().then_some(synced), on_demand))
}

/// The data plane's on-demand capability, backed by the xDS client.
struct XdsOnDemand(xds::Demander);

impl OnDemand for XdsOnDemand {
    fn demand(
        &self,
        key: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        let d = self.0.clone();
        Box::pin(async move { d.demand(&key).await })
    }
}

async fn wait_synced(mut synced: tokio::sync::watch::Receiver<bool>) {
    // An error means the client is gone: nothing will ever sync, so do not wait forever.
    let _ = synced.wait_for(|s| *s).await;
}

/// Readiness task held until the xDS client's first ACK of every type.
const XDS_TASK: &str = "xds client";

/// CRL checking (`CRL_PATH`): the file must parse at startup, then it is polled every
/// second; its metrics join every scrape.
fn revocation(
    config: &Config,
    tasks: &mut Tasks,
    registry: &mut Registry,
) -> anyhow::Result<Revocation> {
    let Some(path) = &config.ca.crl_path else {
        return Ok(Revocation::disabled());
    };
    let revocation =
        Revocation::load(path).with_context(|| format!("CRL_PATH {}", path.display()))?;
    tracing::info!(path = %path.display(), "checking peer certificates against CRLs");
    tasks.spawn(
        "crl watcher",
        revocation.clone().watch(Duration::from_secs(1)),
    );
    revocation.register_metrics(registry);
    Ok(revocation)
}

/// The certificate store and a public (key-free) view of it for the admin API. Issuer
/// precedence: `LOCAL_CA_DIR` > `FAKE_CA` > `CA_ADDRESS`. In shared mode with `NODE_NAME` set,
/// the store prefetches the identities of this node's workloads and forgets departed ones.
fn cert_source(
    config: &Config,
    state: &Reader,
    revocation: &Revocation,
    tasks: &mut Tasks,
    registry: &mut Registry,
) -> anyhow::Result<(Arc<dyn CertSource>, CertDump)> {
    let ttl = config.ca.secret_ttl;
    let issuer: Arc<dyn Issuer> = if let Some(dir) = &config.ca.local_ca_dir {
        tracing::info!(dir = %dir.display(), "issuing workload certificates from the local CA");
        Arc::new(LocalCa::load(dir, ttl)?.with_revocation(revocation.clone()))
    } else if config.ca.fake_ca {
        tracing::warn!(
            "FAKE_CA: ephemeral in-memory CA; only this node will trust its certificates"
        );
        Arc::new(LocalCa::ephemeral(&config.trust_domain, ttl)?.with_revocation(revocation.clone()))
    } else if let Some(mut ca) = CaClientConfig::from_config(config) {
        tracing::info!(address = %ca.channel.address, "requesting workload certificates from the CA");
        ca.revocation = revocation.clone();
        Arc::new(CaClient::new(&ca).context("CA client")?)
    } else {
        bail!("no certificate source: set CA_ADDRESS, LOCAL_CA_DIR or FAKE_CA=true");
    };
    let store = CertStore::spawn(issuer, StoreConfig::default());
    if let (ProxyMode::Shared, Some(node)) = (config.proxy_mode, &config.node_name) {
        // Follows state changes: ends once the state has no writer left.
        tasks.spawn_finite(
            "certificate prefetch",
            store
                .clone()
                .follow_local_workloads(state.clone(), node.clone()),
        );
    }
    store.register_metrics(registry);
    let view = store.clone();
    let dump: CertDump =
        Arc::new(move || serde_json::to_value(view.snapshot()).unwrap_or_default());
    Ok((Arc::new(store), dump))
}

type CertDump = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

const CNI_TASK: &str = "workload proxy manager";

/// Readiness task held while a pod's proxy failed to start and awaits its retry.
const PENDING_TASK: &str = "pending workloads";

/// Binds the admin, metrics and readiness listeners (a conflict fails startup) and serves
/// them on the control runtime; the stats server encodes `registry` at each scrape.
async fn serve_ops(
    config: &Config,
    admin: Admin,
    readiness: &Readiness,
    registry: Arc<Registry>,
    process: &drain::Trigger,
    tasks: &mut Tasks,
) -> anyhow::Result<()> {
    use crate::ops::http::serve;
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let mut admin_ls = Vec::new();
    for (addr, requirement) in config.admin_addrs() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => admin_ls.push(l),
            Err(e) if requirement == Requirement::IfIpv6 && crate::sockets::is_no_ipv6(&e) => {
                tracing::debug!(%addr, error = %e, "no IPv6 loopback: admin API on IPv4 only");
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
    let stats_l = bind(config.stats_addr).await?;
    let ready_l = bind(config.readiness_addr).await?;
    let admin = admin.handler();
    for l in admin_ls {
        tasks.spawn("admin", serve(l, admin.clone(), process.watch(), true));
    }
    tasks.spawn(
        "readiness",
        serve(ready_l, readiness.handler(), process.watch(), false),
    );
    let metrics: crate::ops::http::Handler = Arc::new(move |req| {
        let registry = registry.clone();
        Box::pin(async move {
            use crate::ops::exposition::{content_type, respond, PLAIN_TEXT};
            // Content type and compression negotiated as ztunnel's stats server does.
            match req.path.as_str() {
                "/metrics" | "/stats/prometheus" => {
                    let body = crate::ops::metrics::encode(&registry);
                    let kind = content_type(&req.headers);
                    respond(&req.headers, http::StatusCode::OK, kind, body.into())
                }
                _ => respond(
                    &req.headers,
                    http::StatusCode::NOT_FOUND,
                    PLAIN_TEXT,
                    "not found\n".into(),
                ),
            }
        })
    });
    tasks.spawn("stats", serve(stats_l, metrics, process.watch(), false));
    tracing::info!(admin = %config.admin_addr, stats = %config.stats_addr, readiness = %config.readiness_addr, "operational endpoints up");
    Ok(())
}

/// The DNS proxy's families, registered in `registry` only when it runs (`exports.dns`), as
/// ztunnel registers them; otherwise in a registry never encoded, where its counters still work.
fn dns_metrics(
    registry: &mut Registry,
    exports: crate::ops::metrics::Exports,
) -> Arc<crate::dns::metrics::DnsMetrics> {
    let mut unexported = Registry::default();
    let target = if exports.dns {
        registry
    } else {
        &mut unexported
    };
    Arc::new(crate::dns::metrics::DnsMetrics::register(target))
}

/// Drops metric series of workloads that left the mesh. A generation in which no workload
/// left and no series appeared costs nothing ([`ExpiryCheck`]); otherwise one pass over the
/// workloads looks up only the names the series hold, with no set of the whole mesh built.
async fn expire_metrics(mut state: Reader, telemetry: Arc<Telemetry>) {
    let mut check = ExpiryCheck::default();
    while state.changed().await {
        let named = telemetry.metrics.series_workloads();
        let snap = state.load_full();
        if !check.due(&snap, &named) {
            continue;
        }
        let mut live = hashbrown::HashSet::new();
        for w in snap.workloads() {
            for n in [&w.name, crate::ops::metrics::workload_label(w)] {
                if let Some(pair) = named.get(&NamedPair(&w.namespace, n)) {
                    live.insert(pair.clone());
                }
            }
        }
        // A series recorded since `named` was taken was not looked for: it stays.
        telemetry.metrics.expire(|ns, name| {
            let pair = NamedPair(ns, name);
            live.contains(&pair) || !named.contains(&pair)
        });
        check.passed(&snap, live);
    }
}

type NamedPairs = hashbrown::HashSet<(Arc<str>, Arc<str>)>;

/// Whether a generation needs a pass over the workloads for expired series: only if a
/// workload left since the last pass ([`state::Snapshot::departures`]), or the series name a
/// workload that pass did not find alive (a series recorded afterwards, by a connection that
/// outlived its workload). Otherwise every name the series hold was alive then and still is.
#[derive(Default)]
struct ExpiryCheck {
    departures: Option<u64>,
    alive: NamedPairs,
}

impl ExpiryCheck {
    fn due(&self, snap: &state::Snapshot, named: &NamedPairs) -> bool {
        !named.is_empty()
            && (self.departures != Some(snap.departures()) || !named.is_subset(&self.alive))
    }

    /// After a pass over `snap`: `alive` are the named pairs it found.
    fn passed(&mut self, snap: &state::Snapshot, alive: NamedPairs) {
        self.departures = Some(snap.departures());
        self.alive = alive;
    }
}

/// A borrowed `(namespace, workload)` to look up a set of owned pairs with (hashes as the
/// owned tuple does).
#[derive(Hash)]
struct NamedPair<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(Arc<str>, Arc<str>)> for NamedPair<'_> {
    fn equivalent(&self, key: &(Arc<str>, Arc<str>)) -> bool {
        self.0 == &*key.0 && self.1 == &*key.1
    }
}

/// Feeds readiness, metrics and the admin view from the CNI connection.
struct OpsObserver {
    readiness: Readiness,
    pods: WorkloadStates,
    telemetry: Arc<Telemetry>,
}

impl zds::ZdsObserver for OpsObserver {
    fn synced(&self, synced: bool) {
        if synced {
            self.readiness.unblock(CNI_TASK);
        } else {
            self.readiness.block(CNI_TASK);
        }
    }

    fn pod_started(&self, pod: &Pod) {
        let info = PodStateInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        };
        self.pods.set(&pod.uid, PodState { state: "Up", info });
        let m = &self.telemetry.metrics;
        m.proxies_started.inc();
        m.active_proxies.set(self.pods.up() as i64);
    }

    fn pending(&self, count: usize) {
        if count > 0 {
            self.readiness.block(PENDING_TASK);
        } else {
            self.readiness.unblock(PENDING_TASK);
        }
        self.telemetry.metrics.pending_proxies.set(count as i64);
    }

    fn pod_stopped(&self, pod: &Pod) {
        self.pods.remove(&pod.uid);
        let m = &self.telemetry.metrics;
        m.proxies_stopped.inc();
        m.active_proxies.set(self.pods.up() as i64);
    }
}

fn sockets_for(config: &Config, netns: Option<Arc<Netns>>) -> Sockets {
    Sockets::new(
        netns,
        config.packet_mark,
        config.inpod.port_reuse,
        config.proxy.keepalive,
        config.proxy.connect_timeout,
    )
}

/// The resolver of hostname-only endpoints, shared by every pod: the nameservers of ztun's
/// resolv.conf (as the DNS proxy forwards to), asked from ztun's own namespace without the
/// packet mark, as ztunnel does.
fn host_resolver(config: &Config) -> Arc<dyn ResolveHost> {
    let upstreams = crate::dns::Upstreams::load_or_warn(&config.dns.resolv_conf);
    let sockets = Sockets::new(
        None,
        None,
        false,
        config.proxy.keepalive,
        config.proxy.connect_timeout,
    );
    Arc::new(crate::dns::HostResolver::new(
        sockets,
        upstreams,
        config.proxy.ipv6_enabled,
    ))
}

/// Starts a pod's proxy in its namespace (shared mode).
struct PodProxies {
    inputs: ProxyInputs,
    dns_metrics: Arc<crate::dns::metrics::DnsMetrics>,
    data: Workers,
    process: Arc<drain::Trigger>,
}

impl PodStarter for PodProxies {
    fn start(&self, pod: &Pod, netns: Arc<Netns>) -> std::io::Result<Box<dyn Send + Sync>> {
        let info = PodInfo {
            uid: pod.uid.as_str().into(),
            name: pod.name.as_str().into(),
            namespace: pod.namespace.as_str().into(),
            service_account: pod.service_account.as_str().into(),
        };
        let sockets = sockets_for(&self.inputs.cfg, Some(netns));
        let handle = start_pod(
            info,
            sockets,
            &self.inputs,
            &self.dns_metrics,
            &self.data,
            &self.process,
        )?;
        Ok(Box::new(handle))
    }
}

/// Starts one pod's listeners, on the calling thread (in the pod's namespace for its
/// sockets): the proxy's three, then, with `DNS_CAPTURE` on, its DNS proxy, given only what
/// it needs (`dns::PodDns`) and the proxy's drain. A DNS bind failure fails the pod's start
/// as a whole.
fn start_pod(
    pod: PodInfo,
    sockets: crate::sockets::Sockets,
    inputs: &ProxyInputs,
    dns_metrics: &Arc<crate::dns::metrics::DnsMetrics>,
    data: &Workers,
    process: &drain::Trigger,
) -> std::io::Result<crate::dataplane::ProxyHandle> {
    let dns = crate::dns::PodDns {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        service_account: pod.service_account.clone(),
        cfg: inputs.cfg.clone(),
        state: inputs.state.clone(),
        sockets: sockets.clone(),
        metrics: dns_metrics.clone(),
    };
    Proxy::new(pod, sockets, inputs).start(data, process, |drains, home| {
        if inputs.cfg.proxy.dns_capture {
            crate::dns::start(dns, home, drains)?;
        }
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Raises the soft open-files limit to the hard limit: every connection costs descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

#[cfg(test)]
mod tests;
