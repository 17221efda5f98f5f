//! The state-at-scale benchmark behind `scripts/bench.sh --state`: one tunnel in its own
//! namespace (`PROXY_MODE=dedicated`, certificates from the control plane's CA) is handed a generated mesh of W workloads and W/5
//! services (each service backed by 5 workloads, over 100 nodes and 50 namespaces), over
//! delta xDS from `ztun control-plane` (started in the same namespace) and then from a local
//! file (`LOCAL_XDS_PATH`). Figures: time from spawn to the first 200 of
//! `/healthz/ready` (polled every 5 ms), the CPU time the tunnel used until then (user +
//! system: less swayed by a loaded machine than the wall-clock time), and the tunnel's RSS at
//! that moment, its peak (`VmHWM`) until then, and its RSS once settled (2 s later). Given a
//! ztunnel binary (and another ztun build as a baseline), each run starts them one after the
//! other, alternating, with the same environment and mesh.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::lab::{Lab, Netns, Process};

const READY_DEADLINE: Duration = Duration::from_secs(300);
const SETTLE: Duration = Duration::from_secs(2);
pub(super) const PER_SERVICE: u32 = 5;
const NODES: u32 = 100;
const NAMESPACES: u32 = 50;
pub(super) const CONTROL_PLANE: &str = "127.0.0.1:15012";
const TOKEN: &str = "state-bench-token";
const XDS_PATH: &str = "delta xDS from ztun control-plane";
const FILE_PATH: &str = "local file (LOCAL_XDS_PATH)";

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workloads in the mesh (services: one per 5 workloads).
    pub workloads: u32,
    /// Repetitions per tunnel and path (the median is reported).
    pub runs: usize,
    /// ztunnel to compare with, if any.
    pub ztunnel: Option<PathBuf>,
    /// Another ztun build measured the same way (before/after comparisons), if any.
    pub baseline: Option<PathBuf>,
    /// Which paths to measure.
    pub paths: Paths,
}

/// The mesh sources a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paths {
    /// Delta xDS from `ztun control-plane`, then the local file.
    Both,
    /// Delta xDS only.
    Xds,
    /// The local file only.
    File,
}

/// Writes the mesh in the local YAML format both tunnels read (and `ztun control-plane`).
pub fn write_mesh(path: &Path, workloads: u32) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "workloads:")?;
    for i in 0..workloads {
        let svc = i / PER_SERVICE;
        let ns = svc % NAMESPACES;
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i + 1);
        writeln!(
            out,
            "- uid: Kubernetes//Pod/ns-{ns}/app-{svc}-{i}\n  name: app-{svc}-{i}\n  namespace: ns-{ns}\n  serviceAccount: app-{svc}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: node-{node}\n  canonicalName: app-{svc}\n  canonicalRevision: v1\n  workloadName: app-{svc}\n  workloadType: deployment\n  services:\n    ns-{ns}/app-{svc}.ns-{ns}.svc.cluster.local:\n      80: 8080",
            node = i % NODES,
        )?;
    }
    writeln!(out, "services:")?;
    for svc in 0..workloads / PER_SERVICE {
        let ns = svc % NAMESPACES;
        let vip = std::net::Ipv4Addr::from(0xac10_0000 + svc + 1);
        writeln!(
            out,
            "- name: app-{svc}\n  namespace: ns-{ns}\n  hostname: app-{svc}.ns-{ns}.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports:\n    80: 8080",
        )?;
    }
    writeln!(out, "policies: []")?;
    out.flush()?;
    Ok(())
}

/// One measurement of one tunnel.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ready: Duration,
    cpu: Duration,
    rss_ready: u64,
    peak: u64,
    rss_settled: u64,
}

/// Runs the benchmark with `ztun` (and `opts.ztunnel`); prints a table, returns the JSON.
pub fn run(ztun: &Path, opts: &Options) -> anyhow::Result<Value> {
    // The tunnels get their certificates from the control plane's CA (ztunnel's fake CA
    // exists only in its test builds), authenticated by a static token bound to node-0.
    let MeshControlPlane {
        lab,
        netns,
        dir,
        mesh,
        ca,
        cp,
        load_start,
        ..
    } = MeshControlPlane::start(
        ztun,
        "state",
        "state bench",
        opts.workloads,
        &format!("{TOKEN} node-0\n"),
    )?;
    let root = ca.join("root-cert.pem").to_string_lossy().into_owned();
    let mesh = mesh.to_string_lossy().into_owned();

    let mut tunnels: Vec<(&str, PathBuf)> = vec![("ztun", ztun.to_path_buf())];
    if let Some(b) = &opts.baseline {
        tunnels.push(("baseline", b.clone()));
    }
    if let Some(z) = &opts.ztunnel {
        tunnels.push(("ztunnel", z.clone()));
    }
    let paths: &[&str] = match opts.paths {
        Paths::Both => &[XDS_PATH, FILE_PATH],
        Paths::Xds => &[XDS_PATH],
        Paths::File => &[FILE_PATH],
    };
    // samples[path][tunnel]
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); tunnels.len()]; paths.len()];
    for run in 0..opts.runs {
        for (p, path) in paths.iter().enumerate() {
            for (t, (name, bin)) in tunnels.iter().enumerate() {
                let xds = format!("https://{CONTROL_PLANE}");
                let mut env = vec![
                    ("PROXY_MODE", "dedicated"),
                    ("PROXY_WORKLOAD_INFO", "ns-0/app-0-0/app-0"),
                    ("CA_ADDRESS", &xds),
                    ("CA_ROOT_CA", &root),
                    ("AUTH_TOKEN", TOKEN),
                    ("NODE_NAME", "node-0"),
                    ("POD_NAME", "app-0-0"),
                    ("POD_NAMESPACE", "ns-0"),
                    ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
                    ("RUST_LOG", "warn"),
                ];
                if *path == XDS_PATH {
                    env.push(("XDS_ADDRESS", &xds));
                    env.push(("XDS_ROOT_CA", &root));
                } else {
                    env.push(("XDS_ADDRESS", ""));
                    env.push(("LOCAL_XDS_PATH", &mesh));
                }
                let s = measure(&lab, &netns, name, bin, &env, &dir)
                    .with_context(|| format!("{name}, {path}, run {}", run + 1))?;
                eprintln!(
                    "  run {} {name:8} {path}: ready {:.0} ms ({:.0} ms CPU), RSS {:.1} MB at ready (peak {:.1} MB), {:.1} MB settled",
                    run + 1,
                    s.ready.as_secs_f64() * 1e3,
                    s.cpu.as_secs_f64() * 1e3,
                    s.rss_ready as f64 / 1e6,
                    s.peak as f64 / 1e6,
                    s.rss_settled as f64 / 1e6
                );
                samples[p][t].push(s);
            }
        }
    }
    drop(cp);

    let median = |v: &[Sample], f: fn(&Sample) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    };
    let mut rows = Vec::new();
    println!(
        "\nstate: {} workloads + {} services, {NODES} nodes, {NAMESPACES} namespaces; median of {} runs",
        opts.workloads,
        opts.workloads / PER_SERVICE,
        opts.runs
    );
    println!(
        "{:<36} {:>8} {:>14} {:>9} {:>12} {:>12} {:>16}",
        "path", "tunnel", "ready (ms)", "CPU (ms)", "RSS ready", "peak", "RSS settled"
    );
    for (p, path) in paths.iter().enumerate() {
        for (t, (name, _)) in tunnels.iter().enumerate() {
            let v = &samples[p][t];
            let ready = median(v, |s| s.ready.as_secs_f64() * 1e3);
            let cpu = median(v, |s| s.cpu.as_secs_f64() * 1e3);
            let rss_ready = median(v, |s| s.rss_ready as f64 / 1e6);
            let peak = median(v, |s| s.peak as f64 / 1e6);
            let rss_settled = median(v, |s| s.rss_settled as f64 / 1e6);
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), s| {
                let ms = s.ready.as_secs_f64() * 1e3;
                (lo.min(ms), hi.max(ms))
            });
            println!(
                "{path:<36} {name:>8} {ready:>6.0} ({lo:.0}-{hi:.0}) {cpu:>9.0} {rss_ready:>9.1} MB {peak:>9.1} MB {rss_settled:>13.1} MB"
            );
            rows.push(json!({
                "path": path, "tunnel": name, "ready_ms": ready, "ready_ms_min": lo,
                "ready_ms_max": hi, "cpu_ms": cpu, "rss_ready_mb": rss_ready, "peak_mb": peak,
                "rss_settled_mb": rss_settled,
            }));
        }
    }
    let load_end = super::lab::loadavg();
    println!("  load average at start: {load_start}; at end: {load_end}");
    Ok(json!({
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "workloads": opts.workloads,
        "services": opts.workloads / PER_SERVICE,
        "runs": opts.runs,
        "rows": rows,
    }))
}

/// Starts one tunnel, waits for readiness, samples RSS, stops it.
fn measure(
    lab: &Lab,
    netns: &Netns,
    label: &str,
    bin: &Path,
    env: &[(&str, &str)],
    dir: &Path,
) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let p = lab.spawn_in(netns, label, bin, &["proxy", "ztunnel"], env, dir)?;
    let ready_at: SocketAddr = "127.0.0.1:15021".parse()?;
    loop {
        if let Some(status) = p.exit_status() {
            bail!("{label} exited with {status}: {:?}", tail(&p));
        }
        if started.elapsed() > READY_DEADLINE {
            bail!("{label} not ready after {READY_DEADLINE:?}: {:?}", tail(&p));
        }
        if netns.run(move || ready(ready_at)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    let cpu = p.cpu_time();
    let rss_ready = p.rss();
    let peak = p.peak_rss();
    std::thread::sleep(SETTLE);
    let rss_settled = p.rss();
    p.kill()?;
    p.wait_exit(Duration::from_secs(30))?;
    Ok(Sample {
        ready,
        cpu,
        rss_ready,
        peak,
        rss_settled,
    })
}

pub(super) fn tail(p: &Process) -> Vec<String> {
    let logs = p.logs();
    logs[logs.len().saturating_sub(5)..].to_vec()
}

/// Whether `GET /healthz/ready` answers 200.
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A lab namespace of its own running `ztun control-plane` on a generated mesh of W workloads
/// (and W/5 services): what the state bench and the control-plane bench both start from.
pub(super) struct MeshControlPlane {
    pub(super) lab: Lab,
    pub(super) netns: Netns,
    pub(super) dir: PathBuf,
    pub(super) mesh: PathBuf,
    pub(super) ca: PathBuf,
    pub(super) cp: Process,
    /// `/proc/loadavg` before anything was started.
    pub(super) load_start: String,
    /// From the control plane's spawn until it accepted connections (its mesh loaded).
    pub(super) listening: Duration,
}

impl MeshControlPlane {
    /// Builds lab `name`, writes the mesh and the `tokens` file, starts the control plane on
    /// [`CONTROL_PLANE`] and waits until it listens. `bench` names the bench in its messages.
    pub(super) fn start(
        ztun: &Path,
        name: &str,
        bench: &str,
        workloads: u32,
        tokens: &str,
    ) -> anyhow::Result<MeshControlPlane> {
        // One node satisfies the lab builder; everything runs in a namespace of its own.
        let mut lab = Lab::builder(name).node("n1").build()?;
        let netns = lab.add_netns("cp")?;
        let dir = lab.dir().to_path_buf();
        let mesh = dir.join("mesh.yaml");
        let load_start = super::lab::loadavg();
        let started = Instant::now();
        write_mesh(&mesh, workloads)?;
        eprintln!(
            "{bench}: mesh of {} workloads + {} services written in {:.1} s ({:.1} MiB)",
            workloads,
            workloads / PER_SERVICE,
            started.elapsed().as_secs_f64(),
            std::fs::metadata(&mesh)?.len() as f64 / (1 << 20) as f64
        );
        let ca = dir.join("ca");
        let tokens_file = dir.join("tokens");
        std::fs::write(&tokens_file, tokens)?;
        let spawned = Instant::now();
        let cp = lab.spawn_in(
            &netns,
            "control-plane",
            ztun,
            &[
                "control-plane",
                "--config",
                &mesh.to_string_lossy(),
                "--ca-dir",
                &ca.to_string_lossy(),
                "--listen",
                CONTROL_PLANE,
                "--tokens",
                &tokens_file.to_string_lossy(),
            ],
            &[("RUST_LOG", "warn")],
            &dir,
        )?;
        wait_listening(&netns, CONTROL_PLANE.parse()?, &cp)?;
        Ok(MeshControlPlane {
            listening: spawned.elapsed(),
            lab,
            netns,
            dir,
            mesh,
            ca,
            cp,
            load_start,
        })
    }
}

pub(super) fn wait_listening(netns: &Netns, addr: SocketAddr, p: &Process) -> anyhow::Result<()> {
    let started = Instant::now();
    while !netns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
    {
        if let Some(status) = p.exit_status() {
            bail!("control plane exited with {status}: {:?}", tail(p));
        }
        if started.elapsed() > READY_DEADLINE {
            bail!("control plane not listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
