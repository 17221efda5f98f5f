//! The composition root: builds every component from the configuration, starts them in
//! order, and runs the shutdown sequence.
//!
//! Runtimes: the calling thread runs a current-thread *control* runtime (CNI, configuration,
//! certificates, signals); a separate multi-thread *data* runtime runs listeners and
//! connections. They share only `state` (snapshots) and the certificate source.
//!
//! Shutdown: SIGTERM/SIGINT → every listener stops accepting and HBONE connections send
//! GOAWAY → connections finish until the termination deadline → the rest are closed → exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::runtime::Handle;

use crate::config::{Config, LocalXds, ProxyMode};
use crate::control::ca::{CertCache, LocalCa};
use crate::control::zds::{self, Pod, PodStarter};
use crate::dataplane::sockets::Sockets;
use crate::dataplane::{PodInfo, Proxy};
use crate::drain::{self, DrainMode};
use crate::state::{self, Reader, Writer};
use crate::sys::Netns;
use crate::tls::CertSource;

/// Runs ztun until it is told to stop.
pub fn run(config: Config) -> anyhow::Result<()> {
    crate::ops::logging::init(&config.log)?;
    raise_fd_limit();
    let config = Arc::new(config);
    let data = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .thread_name("ztun-data")
        .enable_all()
        .build()
        .context("building the data-plane runtime")?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")?;
    let res = control.block_on(run_control(config, data.handle().clone()));
    data.shutdown_timeout(Duration::from_secs(1));
    res
}

async fn run_control(config: Arc<Config>, data: Handle) -> anyhow::Result<()> {
    tracing::info!(version = crate::VERSION, mode = ?config.proxy_mode, workers = config.worker_threads, "ztun starting");
    let (writer, reader) = state::new();
    load_local_config(&config, &writer)?;
    if config.xds_address.is_some() {
        tracing::warn!("XDS_ADDRESS is set but this build has no xDS client yet; using local configuration only");
    }
    let certs = cert_source(&config)?;
    let process = Arc::new(drain::channel().0);

    // Keeps dedicated-mode listeners alive until shutdown.
    let mut _dedicated = None;
    match config.proxy_mode {
        ProxyMode::Shared => {
            let starter = Arc::new(PodProxies {
                config: config.clone(),
                state: reader.clone(),
                certs: certs.clone(),
                data: data.clone(),
                process: process.clone(),
            });
            let client = zds::Client::new(config.inpod.uds.clone(), starter, Arc::new(()));
            tokio::spawn(client.run());
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
            let proxy = Proxy::new(pod, config.clone(), reader.clone(), certs.clone(), sockets);
            _dedicated = Some(
                proxy
                    .start(&data, &process)
                    .context("binding dedicated-mode listeners")?,
            );
        }
    }
    tracing::info!("ztun ready");

    wait_for_signal().await;
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
    tracing::info!("ztun stopped");
    Ok(())
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
    tracing::info!(
        workloads = w,
        services = s,
        policies = p,
        "local configuration loaded"
    );
    Ok(())
}

fn cert_source(config: &Config) -> anyhow::Result<Arc<dyn CertSource>> {
    let ttl = config.ca.secret_ttl;
    let ca = if let Some(dir) = &config.ca.local_ca_dir {
        tracing::info!(dir = %dir.display(), "issuing workload certificates from the local CA");
        LocalCa::load(dir, ttl)?
    } else if config.ca.fake_ca {
        tracing::warn!(
            "FAKE_CA: ephemeral in-memory CA; only this node will trust its certificates"
        );
        LocalCa::ephemeral(&config.trust_domain, ttl)?
    } else {
        bail!("no certificate source: set LOCAL_CA_DIR or FAKE_CA=true (this build has no CA client yet)");
    };
    Ok(Arc::new(CertCache::new(Arc::new(ca))))
}

fn sockets_for(config: &Config, netns: Option<Arc<Netns>>) -> Sockets {
    Sockets::new(
        netns,
        config.packet_mark,
        config.inpod.port_reuse,
        config.proxy.keepalive.clone(),
        config.proxy.connect_timeout,
    )
}

/// Starts a pod's proxy in its namespace (shared mode).
struct PodProxies {
    config: Arc<Config>,
    state: Reader,
    certs: Arc<dyn CertSource>,
    data: Handle,
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
        let sockets = sockets_for(&self.config, Some(netns));
        let proxy = Proxy::new(
            info,
            self.config.clone(),
            self.state.clone(),
            self.certs.clone(),
            sockets,
        );
        let handle = proxy.start(&self.data, &self.process)?;
        Ok(Box::new(handle))
    }
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
