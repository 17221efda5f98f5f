//! The control plane at scale behind `scripts/bench.sh --control-plane`: `ztun control-plane`
//! serves the state bench's generated mesh ([`super::state_bench::write_mesh`]: W workloads,
//! W/5 services) to N nodes. Each node is a lightweight client in this process, one task
//! each, with its own node id and bearer token, on its own TLS connection to the control
//! plane through ztun's own ADS transport ([`xds::open_stream`], as a tunnel opens it): it
//! subscribes to both types as a tunnel does (wildcard), decodes every response, counts its
//! resources and ACKs it.
//!
//! Figures: the control plane's RSS idle with the mesh loaded, once every client is synced,
//! and its peak (`VmHWM`); the initial push, from the clients starting (connect, TLS,
//! subscribe) until every one has received and ACKed every resource; then per change to the
//! mesh file (one workload edited, or one added, alternately; written to a temporary file and
//! renamed, as editors do) the time from the rename until the first and the last client has
//! it. The control plane polls the file every 200 ms and re-reads all of it on a change, so a
//! change's time includes up to one poll interval and a full reload. With each phase, the CPU
//! time (user + system) the control plane used, and the clients' (this process).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use super::lab::Process;
use super::state_bench::{tail, MeshControlPlane, CONTROL_PLANE, PER_SERVICE};
use crate::config::{AuthToken, RootCert};
use crate::control::xds::proto::{DeltaDiscoveryRequest, Node};
use crate::control::xds::{self, ClientConfig, ResourceType};

/// Per service in the generated mesh (as the state bench writes it).
/// How long the idle control plane is left before its RSS is read, and the synced one.
const SETTLE: Duration = Duration::from_secs(2);
/// Deadline for every client to hold the mesh, and for every change to reach them all.
const DEADLINE: Duration = Duration::from_secs(600);
/// The workload the "edit" changes touch (the first one `write_mesh` writes).
const EDITED: &str = "Kubernetes//Pod/ns-0/app-0-0";

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workloads in the mesh (services: one per 5 workloads).
    pub workloads: u32,
    /// Connected nodes (clients).
    pub nodes: u32,
    /// Changes to the mesh file pushed after the initial sync (edit, add, edit, ...).
    pub changes: usize,
}

/// What a client reports.
#[derive(Debug)]
enum Event {
    /// It holds every resource of the mesh and has ACKed the responses that carried them.
    Synced { at: Instant },
    /// After its sync: a response carried these resources, and it ACKed it.
    Received { node: u32, names: Vec<String> },
    /// Its stream failed or ended.
    Failed { node: u32, error: String },
}

/// One change to the mesh file and how long it took to reach the clients.
#[derive(Debug)]
struct Change {
    what: &'static str,
    first: Duration,
    last: Duration,
    cpu: Duration,
}

/// Runs the benchmark against `ztun control-plane` from `ztun`; prints a table, returns the
/// JSON.
pub fn run(ztun: &Path, opts: &Options) -> anyhow::Result<Value> {
    let lines: String = (0..opts.nodes)
        .map(|n| format!("{} node-{n}\n", token(n)))
        .collect();
    // `_lab` keeps the lab (its namespace and processes) until the bench ends.
    let MeshControlPlane {
        lab: _lab,
        netns,
        mesh,
        ca,
        cp,
        load_start,
        listening,
        ..
    } = MeshControlPlane::start(
        ztun,
        "cpbench",
        "control-plane bench",
        opts.workloads,
        &lines,
    )?;
    let load_cpu = cp.cpu_time();
    std::thread::sleep(SETTLE);
    let rss_idle = cp.rss();
    let root = ca.join("root-cert.pem");
    let report = netns.block_on(serve_nodes(&cp, &mesh, &root, opts))?;
    let rss_peak = cp.peak_rss();
    cp.kill()?;
    cp.wait_exit(Duration::from_secs(30))?;

    let mb = |b: u64| b as f64 / 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\ncontrol plane: {} workloads + {} services, {} nodes (one run)",
        opts.workloads,
        opts.workloads / PER_SERVICE,
        opts.nodes
    );
    println!(
        "  mesh loaded, listening    {:>9.0} ms after spawn ({:.0} ms CPU)",
        ms(listening),
        ms(load_cpu)
    );
    println!("  RSS idle, mesh loaded     {:>9.1} MB", mb(rss_idle));
    println!(
        "  RSS, {:>3} clients synced  {:>9.1} MB",
        opts.nodes,
        mb(report.rss_synced)
    );
    println!("  RSS peak                  {:>9.1} MB", mb(rss_peak));
    println!(
        "  initial push, all synced  {:>9.0} ms (first client {:.0} ms); control plane CPU {:.0} ms, clients' CPU {:.0} ms",
        ms(report.initial_last),
        ms(report.initial_first),
        ms(report.initial_cpu),
        ms(report.initial_client_cpu)
    );
    for (i, c) in report.changes.iter().enumerate() {
        println!(
            "  change {} ({:4})          {:>9.0} ms to all (first client {:.0} ms); control plane CPU {:.0} ms",
            i + 1,
            c.what,
            ms(c.last),
            ms(c.first),
            ms(c.cpu)
        );
    }
    let changes: Vec<Value> = report
        .changes
        .iter()
        .map(|c| {
            json!({"what": c.what, "first_ms": ms(c.first), "all_ms": ms(c.last), "cpu_ms": ms(c.cpu)})
        })
        .collect();
    let load_end = super::lab::loadavg();
    println!("  load average at start: {load_start}; at end: {load_end}");
    Ok(json!({
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "workloads": opts.workloads,
        "services": opts.workloads / PER_SERVICE,
        "nodes": opts.nodes,
        "listening_ms": ms(listening),
        "load_cpu_ms": ms(load_cpu),
        "rss_idle_mb": mb(rss_idle),
        "rss_synced_mb": mb(report.rss_synced),
        "rss_peak_mb": mb(rss_peak),
        "initial_push_ms": ms(report.initial_last),
        "initial_push_first_ms": ms(report.initial_first),
        "initial_push_cpu_ms": ms(report.initial_cpu),
        "initial_push_client_cpu_ms": ms(report.initial_client_cpu),
        "changes": changes,
    }))
}

/// What the clients' phase measured.
struct Report {
    initial_first: Duration,
    initial_last: Duration,
    initial_cpu: Duration,
    initial_client_cpu: Duration,
    rss_synced: u64,
    changes: Vec<Change>,
}

/// Starts the clients, waits for every one to hold the mesh, then changes the file
/// `opts.changes` times, each time waiting for every client to have the change.
async fn serve_nodes(
    cp: &Process,
    mesh: &Path,
    root: &Path,
    opts: &Options,
) -> anyhow::Result<Report> {
    let address: SocketAddr = CONTROL_PLANE.parse()?;
    let expected = (opts.workloads + opts.workloads / PER_SERVICE) as usize;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cpu_before = cp.cpu_time();
    let client_cpu_before = own_cpu_time();
    let started = Instant::now();
    for node in 0..opts.nodes {
        let config = client_config(node, address, root)?;
        let events = events_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = node_stream(node, &config, expected, &events).await {
                let error = format!("{e:#}");
                let _ = events.send(Event::Failed { node, error });
            }
        });
    }
    let deadline = started + DEADLINE;
    let mut synced = Vec::with_capacity(opts.nodes as usize);
    while synced.len() < opts.nodes as usize {
        match next_event(&mut events, deadline, cp).await? {
            Event::Synced { at } => synced.push(at - started),
            Event::Received { .. } => bail!("a push before every client synced"),
            Event::Failed { node, error } => bail!(
                "node-{node} failed {:.1} s after the clients started, {} of {} synced \
                 (control plane RSS {:.1} MB, peak {:.1} MB, CPU {:.1} s): {error}; \
                 control plane: {:?}",
                started.elapsed().as_secs_f64(),
                synced.len(),
                opts.nodes,
                cp.rss() as f64 / 1e6,
                cp.peak_rss() as f64 / 1e6,
                (cp.cpu_time() - cpu_before).as_secs_f64(),
                tail(cp)
            ),
        }
    }
    let initial_cpu = cp.cpu_time() - cpu_before;
    let initial_client_cpu = own_cpu_time() - client_cpu_before;
    tokio::time::sleep(SETTLE).await;
    let rss_synced = cp.rss();

    let mut content = std::fs::read_to_string(mesh)?;
    let mut changes = Vec::with_capacity(opts.changes);
    for i in 0..opts.changes {
        let (what, name) = if i % 2 == 0 {
            // Workload 0's revision: v1 → v2 → v3 ...
            let (old, new) = (
                format!("canonicalRevision: v{}", i / 2 + 1),
                format!("canonicalRevision: v{}", i / 2 + 2),
            );
            let at = content.find(&old).context("workload 0's revision")?;
            content.replace_range(at..at + old.len(), &new);
            ("edit", EDITED.to_owned())
        } else {
            let uid = format!("Kubernetes//Pod/ns-1/extra-{i}");
            let entry = format!(
                "- uid: {uid}\n  name: extra-{i}\n  namespace: ns-1\n  serviceAccount: extra\n  workloadIps: [\"10.255.0.{i}\"]\n  protocol: HBONE\n  node: node-1\n"
            );
            let at = content.find("workloads:\n").context("the workload list")? + 11;
            content.insert_str(at, &entry);
            ("add", uid)
        };
        let tmp = mesh.with_extension("tmp");
        std::fs::write(&tmp, &content)?;
        let cpu_before = cp.cpu_time();
        let written = Instant::now();
        std::fs::rename(&tmp, mesh)?;
        let deadline = written + DEADLINE;
        let mut have = HashSet::new();
        let mut first = None;
        while have.len() < opts.nodes as usize {
            match next_event(&mut events, deadline, cp).await? {
                Event::Received { node, names } => {
                    if names.contains(&name) && have.insert(node) {
                        first.get_or_insert_with(|| written.elapsed());
                    }
                }
                Event::Synced { .. } => bail!("a client synced twice"),
                Event::Failed { node, error } => bail!("node-{node}: {error}"),
            }
        }
        let last = written.elapsed();
        changes.push(Change {
            what,
            first: first.unwrap_or(last),
            last,
            cpu: cp.cpu_time() - cpu_before,
        });
    }
    let last = synced.iter().max().copied().unwrap_or_default();
    Ok(Report {
        initial_first: synced.iter().min().copied().unwrap_or_default(),
        initial_last: last,
        initial_cpu,
        initial_client_cpu,
        rss_synced,
        changes,
    })
}

/// One node: subscribes to both types (wildcard, as a tunnel does), counts what arrives and
/// ACKs every response; reports when it holds the whole mesh, then every push after that.
async fn node_stream(
    node: u32,
    config: &ClientConfig,
    expected: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    for kind in ResourceType::ALL {
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: config.node_id.clone(),
                ..Default::default()
            }),
            type_url: kind.type_url().to_owned(),
            ..Default::default()
        })
        .await?;
    }
    let mut responses = xds::open_stream(config, ReceiverStream::new(rx)).await?;
    let (mut addresses, mut policies_answered, mut synced) = (0, false, false);
    while let Some(response) = responses.next().await {
        let response = response?;
        let kind = ResourceType::from_type_url(&response.type_url)
            .with_context(|| format!("a response of type {}", response.type_url))?;
        let names = match synced {
            true => response.resources.iter().map(|r| r.name.clone()).collect(),
            false => Vec::new(),
        };
        match kind {
            ResourceType::Address => addresses += response.resources.len(),
            ResourceType::Authorization => policies_answered = true,
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        })
        .await?;
        if synced {
            let _ = events.send(Event::Received { node, names });
        } else if addresses >= expected && policies_answered {
            synced = true;
            let _ = events.send(Event::Synced { at: Instant::now() });
        }
    }
    bail!("the stream ended")
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<Event>,
    deadline: Instant,
    cp: &Process,
) -> anyhow::Result<Event> {
    let wait = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(wait, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("every client is gone"),
        Err(_) => bail!(
            "no progress within {DEADLINE:?}; control plane: {:?}",
            tail(cp)
        ),
    }
}

/// The bearer token of node `n` (in the control plane's `--tokens` file).
fn token(n: u32) -> String {
    format!("cp-bench-token-{n}")
}

/// A tunnel's xDS settings for node `n`: its own node id and token.
fn client_config(n: u32, address: SocketAddr, root: &Path) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig {
        address: format!("https://{address}").parse()?,
        root_cert: RootCert::File(root.to_owned()),
        alt_hostname: None,
        auth_token: AuthToken::Static(token(n)),
        cluster_id: "Kubernetes".into(),
        headers: Default::default(),
        node_id: format!(
            "ztunnel~10.250.{}.{}~ztunnel-{n}.istio-system~istio-system.svc.cluster.local",
            n / 256,
            n % 256
        ),
        node_metadata: Default::default(),
        node_metadata_json: Default::default(),
        on_demand: false,
        demand_timeout: xds::DEFAULT_DEMAND_TIMEOUT,
    })
}

/// This process's user + system CPU time so far.
fn own_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}
