//! The side-by-side benchmark behind `scripts/bench.sh`: every figure through two ztuns, and,
//! given a ztunnel binary, through two ztunnels in the same run, alternating, with identical
//! settings, against direct TCP between uncaptured pods and a floor (two plain relays plus the
//! AES-GCM cost, and a relay pair carrying every connection over one link, `mux`). Every
//! tunnelled measurement is checked against the node link's counters: it counts only if the
//! link carried nothing but HBONE (port 15008) and at least the bytes the client sent went to
//! 15008; otherwise the run fails instead of reporting a figure.
//!
//! Topology, one lab per tunnel (so both stay up for the whole run): node n1 with captured
//! `a`, `b` and uncaptured `x`, `w`; node n2 with captured `c` and uncaptured `y`. Direct =
//! x → y, tunnelled = a → c (HBONE through both tunnels), the isolation figure's neighbour
//! b → c. Both tunnels read the same mesh file (`LOCAL_XDS_PATH`), get their pods from the
//! test CNI over ZDS, and their certificates from `ztun control-plane`'s Istio CA (EC P-256
//! CSRs, one CA, per-node tokens): the same keys, chains and TLS (1.3, AES-256-GCM).

mod floor;
mod mux;
pub mod report;

pub use floor::{aes_gcm_seconds_per_gb, relay, relay_event_loop};
pub use mux::{relay_demux, relay_mux};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::report::{
    check_path, LinkCounters, PathKind, Table, Through, FIGURE_CONN_RATE, FIGURE_CONN_TUNNELS,
    FIGURE_CPU, WORK_VARIANT_PREFIX, WORK_VARIANT_SUFFIX,
};
use super::lab::{Lab, PodSpec, Process, Server, NODE_LINK};
use super::mesh::MeshFile;

const WAIT: Duration = Duration::from_secs(60);
/// The rate-limited neighbour of the isolation figure.
const NEIGHBOUR_RATE: &str = "1G";
/// The node link's accounting chain in n1 (see [`report::accounting_rules`]).
const ACCOUNTING: &str = "ZTL-BENCH";
/// Where `ztun control-plane` listens in each lab: n1's link address.
const CP_PORT: u16 = 15012;
/// The floor's relays: in y (to y's iperf3 server) and in x (to y's relay).
const RELAY_FAR: u16 = 15109;
const RELAY_NEAR: u16 = 15110;
/// The floor's relays for the round-trip figure: in y (to y's echo server) and in x (to y's).
const RELAY_FAR_ECHO: u16 = 15111;
const RELAY_NEAR_ECHO: u16 = 15112;
/// The same, relaying on one thread's event loop (`relay --event-loop`).
const RELAY_FAR_LOOP: u16 = 15113;
const RELAY_NEAR_LOOP: u16 = 15114;
/// The floor's multiplexing pair, one per run (the run's number added): the far end in y
/// (to y's echo server on `FLOOR_CONN_PORT` + run), the near end in x.
const FLOOR_MUX_FAR: u16 = 7300;
const FLOOR_MUX_NEAR: u16 = 7400;
/// The echo server of the floor's connection figure in y, one per run (the run's number
/// added): dialled direct and through the multiplexing pair.
const FLOOR_CONN_PORT: u16 = 7200;
/// The floor's what-if pairs (`--floor-work-us`), one per run and work (run + `RUN_PORTS` ×
/// the work's index added): the far end in y (to the run's echo server), the near end in x.
const FLOOR_WORK_FAR: u16 = 7500;
const FLOOR_WORK_NEAR: u16 = 8300;
/// Most `--floor-work-us` values one bench takes.
pub const MAX_FLOOR_WORKS: usize = 8;
/// Plaintext encrypted and decrypted once per floor run.
const AEAD_BYTES: u64 = 1 << 30;

/// Knobs of one benchmark run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions per figure (the median is reported).
    pub runs: usize,
    /// Seconds per throughput / connection-rate measurement.
    pub seconds: u64,
    /// Request/response round trips per latency measurement.
    pub requests: usize,
    /// Idle tunnelled connections for the memory figure, ascending: each level is reached by
    /// opening more connections on top of the previous ones.
    pub idle_connections: Vec<usize>,
    /// Concurrency of the connection-rate test.
    pub concurrency: usize,
    /// Data-plane worker threads of every tunnel (`ZTUNNEL_WORKER_THREADS`).
    pub workers: usize,
    /// Figures to measure (`throughput`, `connections`, `isolation`, `memory`, `floor`);
    /// empty: all. Request/response latency always runs: the isolation figure is relative
    /// to it.
    pub only: Vec<String>,
    /// A ztunnel binary to measure beside ztun.
    pub ztunnel: Option<PathBuf>,
    /// `RUST_LOG` levels to measure at, each with freshly started tunnels.
    pub log_levels: Vec<String>,
    /// What-if rows of the floor: the connection rate through the multiplexing pair when each
    /// of its ends spends this much user-space time per new connection (µs), one row each.
    pub floor_work_us: Vec<u32>,
}

impl Options {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 3,
            seconds: 5,
            requests: 20_000,
            idle_connections: vec![1000, 5000, 10_000],
            concurrency: 16,
            workers: 1,
            only: Vec::new(),
            ztunnel: None,
            log_levels: vec!["warn".into(), "info".into()],
            floor_work_us: Vec::new(),
        }
    }
}

/// Which tunnel a lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ztun,
    Ztunnel,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ztun => "ztun",
            Kind::Ztunnel => "ztunnel",
        }
    }

    fn through(self) -> Through {
        match self {
            Kind::Ztun => Through::Ztun,
            Kind::Ztunnel => Through::Ztunnel,
        }
    }
}

/// One lab with its control plane, its pods' servers and (once started) its two tunnels.
struct Side {
    kind: Kind,
    bin: PathBuf,
    lab: Lab,
    ca: String,
    mesh: String,
    tunnels: Vec<Process>,
    _control_plane: Process,
    _servers: Vec<Server>,
    tunnel: SocketAddr,
    direct: SocketAddr,
}

impl Side {
    fn new(kind: Kind, bin: &Path, ztun: &Path) -> anyhow::Result<Side> {
        let lab = Lab::builder(&format!("bench-{}", kind.name()))
            .node("n1")
            .node("n2")
            .pod(PodSpec::new("a", "n1").service_account("a").captured(true))
            .pod(PodSpec::new("b", "n1").service_account("b").captured(true))
            .pod(PodSpec::new("x", "n1").service_account("x"))
            .pod(PodSpec::new("w", "n1").service_account("w"))
            .pod(PodSpec::new("c", "n2").service_account("c").captured(true))
            .pod(PodSpec::new("y", "n2").service_account("y"))
            .build()?;
        let ca = lab.dir().join("ca");
        super::certs::write_ca_dir(&ca)?;
        let mesh = lab.dir().join("mesh.yaml");
        MeshFile::from_lab(&lab).write(&mesh)?;
        let tokens = lab.dir().join("tokens");
        std::fs::write(&tokens, "bench-token-n1 n1\nbench-token-n2 n2\n")?;
        let (ca, mesh) = (
            ca.to_string_lossy().into_owned(),
            mesh.to_string_lossy().into_owned(),
        );
        let listen = format!("{}:{CP_PORT}", lab.node("n1").link_ip());
        let control_plane = lab.spawn_in(
            lab.node("n1").netns(),
            "control-plane",
            ztun,
            &[
                "control-plane",
                "--config",
                &mesh,
                "--listen",
                &listen,
                "--ca-dir",
                &ca,
                "--tokens",
                &tokens.to_string_lossy(),
            ],
            &[("RUST_LOG", "info")],
            lab.dir(),
        )?;
        control_plane
            .wait_for_log("control plane listening", WAIT)
            .context("control plane did not start")?;
        tune_for_short_connections(&lab, &["a", "x"], &["c", "y"])?;
        install_accounting(&lab)?;
        let echo_c = lab.pod("c").spawn_echo_server(7000)?;
        let echo_y = lab.pod("y").spawn_echo_server(7000)?;
        let tunnel = SocketAddr::from((lab.pod("c").ip(), echo_c.port()));
        let direct = SocketAddr::from((lab.pod("y").ip(), echo_y.port()));
        Ok(Side {
            kind,
            bin: bin.to_path_buf(),
            lab,
            ca,
            mesh,
            tunnels: Vec::new(),
            _control_plane: control_plane,
            _servers: vec![echo_c, echo_y],
            tunnel,
            direct,
        })
    }

    /// (Re)starts both tunnels with `RUST_LOG=level` and `workers` data-plane threads, and
    /// waits until they have their pods and certificates (a 1 MiB echo through the tunnel).
    fn start(&mut self, level: &str, workers: usize) -> anyhow::Result<()> {
        self.tunnels.clear();
        let workers = workers.to_string();
        let cp = format!("https://{}:{CP_PORT}", self.lab.node("n1").link_ip());
        let root = format!("{}/root-cert.pem", self.ca);
        for node in ["n1", "n2"] {
            let before = self.lab.cni(node).connections();
            let token = format!("bench-token-{node}");
            let env = [
                ("LOCAL_XDS_PATH", self.mesh.as_str()),
                ("CA_ADDRESS", cp.as_str()),
                ("CA_ROOT_CA", root.as_str()),
                ("AUTH_TOKEN", token.as_str()),
                ("ZTUNNEL_WORKER_THREADS", workers.as_str()),
                ("RUST_LOG", level),
            ];
            let p = self
                .lab
                .spawn_ztun_with(node, &self.bin, &["proxy", "ztunnel"], &env)?;
            self.lab
                .cni(node)
                .wait_connections(before + 1, WAIT)
                .with_context(|| format!("{} on {node} did not sync", self.kind.name()))?;
            self.tunnels.push(p);
        }
        let pod = self.lab.pod("a");
        let deadline = Instant::now() + WAIT;
        loop {
            match pod.bulk_echo(self.tunnel, 1 << 20) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("{} tunnel never worked", self.kind.name())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(())
    }

    fn rss(&self) -> u64 {
        self.tunnels.iter().map(Process::rss).sum()
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.tunnels)
    }

    fn counters(&self) -> anyhow::Result<LinkCounters> {
        let out = self
            .lab
            .node("n1")
            .exec("iptables", &["-w", "-nvxL", ACCOUNTING], None)?;
        report::parse_accounting(&out)
    }

    /// Waits until the node link has been quiet for 200 ms (the previous measurement's
    /// closing packets have crossed it), up to 10 s; returns the counters then.
    fn quiet_link(&self) -> anyhow::Result<LinkCounters> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.counters()?;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.counters()?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Runs `f`, which returns a value and the bytes the far end received, and checks the node
    /// link's counters for `path`; a measurement that took another path is an error.
    fn checked<T>(
        &self,
        path: PathKind,
        what: &str,
        f: impl FnOnce() -> anyhow::Result<(T, u64)>,
    ) -> anyhow::Result<T> {
        self.checked_link(path, what, f).map(|(value, _)| value)
    }

    /// Like [`Side::checked`], also giving what the node link counted meanwhile.
    fn checked_link<T>(
        &self,
        path: PathKind,
        what: &str,
        f: impl FnOnce() -> anyhow::Result<(T, u64)>,
    ) -> anyhow::Result<(T, LinkCounters)> {
        let before = self.quiet_link()?;
        let (value, sent) = f()?;
        let seen = self.counters()?.since(&before);
        check_path(path, &seen, sent).map_err(|e| {
            anyhow!(
                "{what} ({} lab): {e}; not reporting this figure",
                self.kind.name()
            )
        })?;
        Ok((value, seen))
    }

    /// [`conn_rate`] from `client`'s pod to `dst`, checked to take `path`: with, per
    /// connection, the CPU of `carriers` (the tunnels, the floor's relays, none) and of the
    /// machine, and the node link's packets.
    fn conn_rate(
        &self,
        path: PathKind,
        what: &str,
        client: &str,
        dst: SocketAddr,
        opts: &Options,
        carriers: &[Process],
    ) -> anyhow::Result<ConnRate> {
        let ((rate, count, cpu, kernel, machine), seen) = self.checked_link(path, what, || {
            let (cpu, kernel) = cpu_and_system_seconds(carriers);
            let machine = machine_busy_seconds()?;
            let (rate, count) =
                self.lab
                    .pod(client)
                    .block_on(conn_rate(dst, opts.concurrency, opts.seconds))?;
            let (cpu_after, kernel_after) = cpu_and_system_seconds(carriers);
            let machine = machine_busy_seconds()? - machine;
            let used = (rate, count, cpu_after - cpu, kernel_after - kernel, machine);
            // The far end received 64 bytes per connection: the path check's minimum.
            Ok((used, count * 64))
        })?;
        let n = count.max(1) as f64;
        Ok(ConnRate {
            rate,
            cpu: cpu / n,
            kernel: kernel / n,
            machine: machine / n,
            link_packets: seen.packets() as f64 / n,
        })
    }
}

/// Sets the sysctls that keep tens of thousands of short connections (the connection-rate
/// figure) from measuring port bookkeeping instead of the tunnels, the same for every tunnel
/// and every run:
///
/// - `clients` reuse their TIME_WAIT ports (`tcp_tw_reuse`): clients close first and keep
///   TIME_WAIT; without reuse they run out of ephemeral ports.
/// - `destinations` keep no TIME_WAIT sockets (`tcp_max_tw_buckets` 0). A tunnel's connection
///   to the app mirrors the client's close, so it closes first, and its TIME_WAIT sockets stay
///   in the app's namespace for 60 s, bound to the client's address. A tunnel that binds that
///   address with port 0 before connecting (ztunnel does; ztun defers the port to the connect,
///   `IP_BIND_ADDRESS_NO_PORT`, where `tcp_tw_reuse` applies) makes the kernel search the
///   ephemeral range for a port no socket of that address holds: once the earlier runs' ~14 000
///   TIME_WAIT sockets fill the half of the range `bind` tries first, every connect scans it
///   (`inet_csk_get_port`, 85 % of that tunnel's CPU) and its rate falls from thousands to
///   ~200 connections/s in whichever run gets there. Restarting the tunnels would not help:
///   the sockets belong to the namespace, not to a process.
pub fn tune_for_short_connections(
    lab: &Lab,
    clients: &[&str],
    destinations: &[&str],
) -> anyhow::Result<()> {
    for pod in clients {
        lab.pod(pod)
            .set_sysctls(&[("net/ipv4/tcp_tw_reuse", "1")])?;
    }
    for pod in destinations {
        lab.pod(pod).set_sysctls(&[
            ("net/ipv4/tcp_tw_reuse", "1"),
            ("net/ipv4/tcp_max_tw_buckets", "0"),
        ])?;
    }
    Ok(())
}

/// An accounting chain in n1's FORWARD chain counting the inter-node link's packets: to and
/// from 15008, and everything else.
fn install_accounting(lab: &Lab) -> anyhow::Result<()> {
    let n1 = lab.node("n1");
    n1.exec("iptables", &["-w", "-N", ACCOUNTING], None)?;
    for rule in report::accounting_rules(ACCOUNTING, NODE_LINK) {
        let args: Vec<&str> = std::iter::once("-w")
            .chain(rule.iter().map(String::as_str))
            .collect();
        n1.exec("iptables", &args, None)?;
    }
    n1.exec("iptables", &["-w", "-I", "FORWARD", "-j", ACCOUNTING], None)?;
    Ok(())
}

use super::lab::loadavg;

/// Runs the benchmark: ztun's binary at `ztun` (also the control plane), ztunnel's if given.
/// Prints the table and returns the JSON.
pub fn run(ztun: &Path, opts: &Options) -> anyhow::Result<Value> {
    raise_fd_limit();
    let mut sides = vec![Side::new(Kind::Ztun, ztun, ztun)?];
    if let Some(z) = &opts.ztunnel {
        sides.push(Side::new(Kind::Ztunnel, z, ztun)?);
    }
    let mut table = Table::default();
    let mut loads = vec![json!({ "at": "start", "loadavg": loadavg() })];
    println!("load at start: {}", loadavg());

    if opts.wants("floor") {
        floor_figures(&sides[0], opts, &mut table)?;
        loads.push(json!({ "at": "after floor", "loadavg": loadavg() }));
    }
    let mut isolation = Vec::new();
    for level in &opts.log_levels {
        for side in &mut sides {
            side.start(level, opts.workers)?;
        }
        println!("log level {level}: tunnels up; load {}", loadavg());
        loads.push(json!({ "at": format!("{level}: start"), "loadavg": loadavg() }));
        level_figures(&sides, level, opts, &mut table, &mut isolation)?;
        if opts.wants("memory") {
            memory_figures(&mut sides, level, opts, &mut table)?;
        }
        loads.push(json!({ "at": format!("{level}: end"), "loadavg": loadavg() }));
        println!("log level {level}: done; load {}", loadavg());
    }

    println!();
    print!("{}", table.render());
    for l in &isolation {
        println!("{l}");
    }
    println!("load at end: {}", loadavg());
    Ok(json!({
        "runs": opts.runs,
        "seconds": opts.seconds,
        "concurrency": opts.concurrency,
        "workers": opts.workers,
        "log_levels": opts.log_levels,
        "tunnels": sides.iter().map(|s| json!({ "kind": s.kind.name(), "binary": s.bin })).collect::<Vec<_>>(),
        "table": table.to_json(),
        "isolation": isolation,
        "load": loads,
        "floor": { "record_bytes": floor::RECORD, "suite": floor::SUITE },
    }))
}

/// The floor: throughput and CPU per GB of two plain relays (x → relay in x → relay in y →
/// iperf3 in y), plus AES-GCM's sealing and opening cost per GB at a full record; and the
/// latency two plain relays add to a round trip (x → relay in x → relay in y → y's echo
/// server), against direct TCP to the same echo server in the same run.
fn floor_figures(side: &Side, opts: &Options, table: &mut Table) -> anyhow::Result<()> {
    let lab = &side.lab;
    let exe = std::env::current_exe()?;
    let (x, y) = (lab.pod("x").ip(), lab.pod("y").ip());
    let relay_spending =
        |pod: &str, listen: SocketAddr, to: SocketAddr, mode: Option<&str>, work_us: u32| {
            let label = format!("relay-{pod}-{}", listen.port());
            let (listen, to, work) = (listen.to_string(), to.to_string(), work_us.to_string());
            let mut args = vec!["relay", "--listen", &listen, "--to", &to];
            args.extend(mode);
            if work_us > 0 {
                args.extend(["--work-us", &work]);
            }
            lab.spawn_in(lab.pod(pod).netns(), &label, &exe, &args, &[], lab.dir())
        };
    let relay = |pod: &str, listen: SocketAddr, to: SocketAddr, mode: Option<&str>| {
        relay_spending(pod, listen, to, mode, 0)
    };
    // A multiplexing pair to `to`, each end spending `work_us` per new connection: the far
    // end first, so that the near end dials its link once, as it starts.
    let pair = |far: SocketAddr, near: SocketAddr, to: SocketAddr, work_us: u32| {
        let demux = relay_spending("y", far, to, Some("--demux"), work_us)?;
        demux.wait_for_log("relaying", WAIT)?;
        let mux = relay_spending("x", near, far, Some("--mux"), work_us)?;
        mux.wait_for_log("relaying", WAIT)?;
        anyhow::Ok([demux, mux])
    };
    let far = SocketAddr::from((y, RELAY_FAR));
    let far_echo = SocketAddr::from((y, RELAY_FAR_ECHO));
    let far_loop = SocketAddr::from((y, RELAY_FAR_LOOP));
    let event_loop = Some("--event-loop");
    let relays = [
        relay("y", far, SocketAddr::from((y, 5201)), None)?,
        relay("x", SocketAddr::from((x, RELAY_NEAR)), far, None)?,
        relay("y", far_echo, side.direct, None)?,
        relay("x", SocketAddr::from((x, RELAY_NEAR_ECHO)), far_echo, None)?,
        relay("y", far_loop, side.direct, event_loop)?,
        relay(
            "x",
            SocketAddr::from((x, RELAY_NEAR_LOOP)),
            far_loop,
            event_loop,
        )?,
    ];
    for r in &relays {
        r.wait_for_log("relaying", WAIT)?;
    }
    let relay_cpu = || cpu_seconds(&relays[..2]);
    let level = "-";
    for i in 0..opts.runs {
        let (aead_seal, aead_open) = aes_gcm_seconds_per_gb(AEAD_BYTES)?;
        let before = relay_cpu();
        let result = side.checked(PathKind::Plain, "floor throughput", || {
            let r = iperf_to(lab, "x", "y", x, RELAY_NEAR, opts.seconds)?;
            Ok((r, r.bytes_received))
        })?;
        let cpu = (relay_cpu() - before) / (result.bytes_received as f64 / 1e9);
        table.add(
            level,
            "throughput (Gbit/s)",
            Through::Floor,
            result.bits_per_second / 1e9,
        );
        table.add(
            level,
            FIGURE_CPU,
            Through::Floor,
            cpu + aead_seal + aead_open,
        );
        table.add(level, "  of which relays", Through::Floor, cpu);
        table.add(
            level,
            "  of which AES-256-GCM seal + open (16 KiB)",
            Through::Floor,
            aead_seal + aead_open,
        );

        // The multiplexing pair, a pair per run: each run's clients dial ports of their own
        // (see the connection figure), and the far end connects to an echo server of the run.
        let k = u16::try_from(i).unwrap_or(0);
        let conn_port = FLOOR_CONN_PORT + k;
        let _echo = lab.pod("y").spawn_echo_server(conn_port)?;
        let echo = SocketAddr::from((y, conn_port));
        let mux_near = SocketAddr::from((x, FLOOR_MUX_NEAR + k));
        let mux = pair(SocketAddr::from((y, FLOOR_MUX_FAR + k)), mux_near, echo, 0)?;

        let n = opts.requests;
        let sent = (n as u64 + WARMUP as u64) * 64;
        // Direct, the blocking relays, the event-loop relays and the multiplexing pair, in an
        // order rotating per run.
        let paths = [
            (Through::Direct, side.direct, "", &relays[..0]),
            (
                Through::Floor,
                SocketAddr::from((x, RELAY_NEAR_ECHO)),
                "",
                &relays[2..4],
            ),
            (
                Through::Floor,
                SocketAddr::from((x, RELAY_NEAR_LOOP)),
                ", event-loop relays",
                &relays[4..6],
            ),
            (Through::Floor, mux_near, ", mux relays", &mux[..]),
        ];
        for k in 0..paths.len() {
            let (who, dst, variant, relays) = &paths[(i + k) % paths.len()];
            let cpu = || cpu_seconds(relays);
            let ((p50, p99, rps), cpu) = side.checked(PathKind::Plain, "floor latency", || {
                let before = cpu();
                let figures = lab.pod("x").block_on(latency(*dst, n))?;
                Ok(((figures, (cpu() - before) / (n + WARMUP) as f64), sent))
            })?;
            table.add(
                level,
                &format!("requests/s (1 connection){variant}"),
                *who,
                rps,
            );
            table.add(level, &format!("p50 latency (µs){variant}"), *who, p50);
            table.add(level, &format!("p99 latency (µs){variant}"), *who, p99);
            if *who == Through::Floor {
                table.add(
                    level,
                    &format!("{FIGURE_RTT_CPU}{variant}"),
                    *who,
                    cpu * 1e6,
                );
            }
        }

        // New connections through the multiplexing pair, and direct to the same server, in
        // an order rotating per run.
        let figure = format!("{FIGURE_CONN_RATE}{} concurrent)", opts.concurrency);
        let paths = [
            (Through::Direct, echo, &mux[..0]),
            (Through::Floor, mux_near, &mux[..]),
        ];
        for k in 0..paths.len() {
            let (who, dst, carriers) = &paths[(i + k) % paths.len()];
            let r = side.conn_rate(
                PathKind::Plain,
                "floor connection rate",
                "x",
                *dst,
                opts,
                carriers,
            )?;
            r.add_to(table, level, &figure, *who);
        }
        drop(mux);

        // What-if: the same pair, each end spending `work` µs per new connection.
        for (j, &work) in opts.floor_work_us.iter().enumerate() {
            let offset = k + u16::try_from(j).unwrap_or(0) * RUN_PORTS;
            let near = SocketAddr::from((x, FLOOR_WORK_NEAR + offset));
            let far = SocketAddr::from((y, FLOOR_WORK_FAR + offset));
            let what_if = pair(far, near, echo, work)?;
            let r = side.conn_rate(
                PathKind::Plain,
                "floor connection rate, what-if",
                "x",
                near,
                opts,
                &what_if,
            )?;
            let variant = format!("{WORK_VARIANT_PREFIX}{work}{WORK_VARIANT_SUFFIX}");
            r.add_variant_to(
                table,
                level,
                &format!("{figure}{variant}"),
                Through::Floor,
                &variant,
            );
        }
    }
    Ok(())
}

/// The order the tunnels are measured in during run `i`: alternating, so load drifting
/// during a run weighs on both.
fn order(sides: usize, i: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..sides).collect();
    if i % 2 == 1 {
        o.reverse();
    }
    o
}

fn level_figures(
    sides: &[Side],
    level: &str,
    opts: &Options,
    table: &mut Table,
    isolation: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let base = &sides[0];
    for s in sides {
        table.add(
            level,
            "RSS idle, both tunnels (MiB)",
            s.kind.through(),
            s.rss() as f64 / (1 << 20) as f64,
        );
    }

    // 1. Bulk throughput (iperf3), and CPU per GB through the tunnels.
    for i in 0..opts.runs * usize::from(opts.wants("throughput")) {
        let d = base.checked(PathKind::Plain, "direct throughput", || {
            let r = iperf_to(
                &base.lab,
                "x",
                "y",
                base.lab.pod("y").ip(),
                5201,
                opts.seconds,
            )?;
            Ok((r, r.bytes_received))
        })?;
        table.add(
            level,
            "throughput (Gbit/s)",
            Through::Direct,
            d.bits_per_second / 1e9,
        );
        for s in order(sides.len(), i).into_iter().map(|k| &sides[k]) {
            let before = s.cpu_seconds();
            let r = s.checked(PathKind::Hbone, "tunnelled throughput", || {
                let r = iperf_to(&s.lab, "a", "c", s.lab.pod("c").ip(), 5201, opts.seconds)?;
                Ok((r, r.bytes_received))
            })?;
            let cpu = (s.cpu_seconds() - before) / (r.bytes_received as f64 / 1e9);
            let who = s.kind.through();
            table.add(level, "throughput (Gbit/s)", who, r.bits_per_second / 1e9);
            table.add(level, FIGURE_CPU, who, cpu);
        }
    }

    // 2. Request/response latency on one kept-alive connection.
    let mut alone_p99 = std::collections::HashMap::new();
    for i in 0..opts.runs {
        let n = opts.requests;
        let sent = (n as u64 + WARMUP as u64) * 64;
        let (p50, p99, rps) = base.checked(PathKind::Plain, "direct latency", || {
            Ok((base.lab.pod("x").block_on(latency(base.direct, n))?, sent))
        })?;
        table.add(level, "requests/s (1 connection)", Through::Direct, rps);
        table.add(level, "p50 latency (µs)", Through::Direct, p50);
        table.add(level, "p99 latency (µs)", Through::Direct, p99);
        for s in order(sides.len(), i).into_iter().map(|k| &sides[k]) {
            let ((p50, p99, rps), cpu) = s.checked(PathKind::Hbone, "tunnelled latency", || {
                let before = s.cpu_seconds();
                let figures = s.lab.pod("a").block_on(latency(s.tunnel, n))?;
                let cpu = (s.cpu_seconds() - before) / (n + WARMUP) as f64;
                Ok(((figures, cpu), sent))
            })?;
            let who = s.kind.through();
            table.add(level, "requests/s (1 connection)", who, rps);
            table.add(level, "p50 latency (µs)", who, p50);
            table.add(level, "p99 latency (µs)", who, p99);
            table.add(level, FIGURE_RTT_CPU, who, cpu * 1e6);
        }
    }
    if let Some(r) = table.row(level, "p99 latency (µs)") {
        for who in [Through::Direct, Through::Ztun, Through::Ztunnel] {
            if let Some(m) = r.median(who) {
                alone_p99.insert(format!("{who:?}"), m);
            }
        }
    }

    // 3. New connections per second.
    let figure = format!("{FIGURE_CONN_RATE}{} concurrent)", opts.concurrency);
    for i in 0..opts.runs * usize::from(opts.wants("connections")) {
        // Each run dials a port of its own: the clients reuse TIME_WAIT ports
        // (`tcp_tw_reuse`) and a run leaves tens of thousands of 4-tuples in TIME_WAIT for
        // 60 s, which no later run's connections can then meet.
        let port = CONN_RATE_PORT + u16::try_from(i).unwrap_or(0);
        let _direct_server = base.lab.pod("y").spawn_echo_server(port)?;
        let direct = SocketAddr::new(base.direct.ip(), port);
        let d = base.conn_rate(
            PathKind::Plain,
            "direct connection rate",
            "x",
            direct,
            opts,
            &[],
        )?;
        d.add_to(table, level, &figure, Through::Direct);
        for s in order(sides.len(), i).into_iter().map(|k| &sides[k]) {
            let _server = s.lab.pod("c").spawn_echo_server(port)?;
            let tunnel = SocketAddr::new(s.tunnel.ip(), port);
            let t = s.conn_rate(
                PathKind::Hbone,
                "tunnelled connection rate",
                "a",
                tunnel,
                opts,
                &s.tunnels,
            )?;
            t.add_to(table, level, &figure, s.kind.through());
        }
    }

    // 4. Isolation (hardening R4): p99 of small requests while a neighbour streams, as a
    // multiple of the p99 measured alone above; the neighbour at full speed (every core busy
    // on this machine), at NEIGHBOUR_RATE, and at full speed with its two iperf3 processes at
    // SCHED_IDLE (tenant pods with CPU of their own, which this machine cannot give them).
    let neighbours = [
        ("full speed", Neighbour::FULL),
        (
            NEIGHBOUR_RATE,
            Neighbour {
                rate: Some(NEIGHBOUR_RATE),
                idle_priority: false,
            },
        ),
        (
            "full speed, neighbour processes at SCHED_IDLE",
            Neighbour {
                rate: None,
                idle_priority: true,
            },
        ),
    ];
    for (label, rate) in neighbours.into_iter().filter(|_| opts.wants("isolation")) {
        let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
        let mut push = |who: &str, v: f64| match samples.iter_mut().find(|(w, _)| w == who) {
            Some((_, s)) => s.push(v),
            None => samples.push((who.to_string(), vec![v])),
        };
        for i in 0..opts.runs {
            let stream = neighbour_stream(&base.lab, "w", "y", rate)?;
            push(
                "Direct",
                base.lab
                    .pod("x")
                    .block_on(latency(base.direct, opts.requests))?
                    .1,
            );
            drop(stream);
            for s in order(sides.len(), i).into_iter().map(|k| &sides[k]) {
                let stream = neighbour_stream(&s.lab, "b", "c", rate)?;
                let p99 = s.checked(PathKind::Hbone, "isolation", || {
                    let p99 = s.lab.pod("a").block_on(latency(s.tunnel, opts.requests))?.1;
                    Ok((p99, 0))
                })?;
                drop(stream);
                push(&format!("{:?}", s.kind.through()), p99);
            }
        }
        for (who, v) in samples {
            let p99 = report::median(&v).unwrap_or_default();
            let alone = alone_p99.get(&who).copied().unwrap_or(f64::NAN);
            isolation.push(json!({
                "log_level": level, "neighbour": label, "through": who,
                "p99_us": p99, "factor": p99 / alone,
            }));
        }
    }

    for r in isolation.iter().filter(|r| r["log_level"] == level) {
        println!(
            "isolation, log {level}, neighbour {}: {} p99 {:.0} µs ({:.2}x alone)",
            r["neighbour"].as_str().unwrap_or_default(),
            r["through"].as_str().unwrap_or_default(),
            r["p99_us"].as_f64().unwrap_or_default(),
            r["factor"].as_f64().unwrap_or_default()
        );
    }
    Ok(())
}

/// Memory: per idle tunnelled connection (both tunnels together) at each level of
/// `--idle`, from freshly started tunnels: heap the earlier figures freed and the allocator
/// kept would otherwise absorb the first connections' growth (a full run measured 0 B per
/// connection at 1 000 that way).
fn memory_figures(
    sides: &mut [Side],
    level: &str,
    opts: &Options,
    table: &mut Table,
) -> anyhow::Result<()> {
    for s in sides.iter_mut() {
        s.start(level, opts.workers)?;
        for (n, per_conn) in idle_memory(s, &opts.idle_connections)? {
            table.add(
                level,
                &format!("RSS per idle connection, both ends, {n} (B)"),
                s.kind.through(),
                per_conn,
            );
        }
    }
    Ok(())
}

/// Opens idle tunnelled connections a → c up to each level in turn and returns the RSS
/// growth of both tunnels per connection; closes them all before returning.
fn idle_memory(side: &Side, levels: &[usize]) -> anyhow::Result<Vec<(usize, f64)>> {
    let lab = &side.lab;
    let before = side.rss();
    // The idle connections' echo server is a process of its own: this one holds the clients,
    // and both ends of 10 000 connections would not fit one process's descriptor limit.
    let exe = std::env::current_exe()?;
    let echo = lab.spawn_in(
        lab.pod("c").netns(),
        "idle-echo",
        &exe,
        &["echo-server", "--port", &IDLE_PORT.to_string()],
        &[],
        lab.dir(),
    )?;
    echo.wait_for_log("listening on", WAIT)?;
    let idle = SocketAddr::from((lab.pod("c").ip(), IDLE_PORT));
    let mut held = Vec::new();
    let mut out = Vec::new();
    let result = (|| {
        for &n in levels {
            let have = idle_established(lab)?;
            let more = n.saturating_sub(have);
            side.checked(PathKind::Hbone, "idle connections", || {
                held.push(lab.pod("a").spawn_async(hold_connections(idle, more)));
                let deadline = Instant::now() + WAIT;
                while idle_established(lab)? < n {
                    if Instant::now() > deadline {
                        bail!(
                            "only {} of {n} idle connections got established",
                            idle_established(lab)?
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(((), more as u64))
            })?;
            std::thread::sleep(Duration::from_millis(500));
            let per_conn = side.rss().saturating_sub(before) as f64 / n.max(1) as f64;
            out.push((n, per_conn));
        }
        anyhow::Ok(())
    })();
    for h in held {
        h.abort();
    }
    drop(echo);
    result.map(|()| out)
}
const IPERF3: &str = "/usr/bin/iperf3";
/// util-linux's `chrt`, for the SCHED_IDLE neighbour.
const CHRT: &str = "/usr/bin/chrt";

/// A one-shot iperf3 server on port 5201 in pod `to`, listening.
fn iperf_server(lab: &Lab, to: &str) -> anyhow::Result<Process> {
    iperf_server_with(lab, to, false)
}

/// An iperf3 server, at SCHED_IDLE if `idle_priority`.
fn iperf_server_with(lab: &Lab, to: &str, idle_priority: bool) -> anyhow::Result<Process> {
    let server = spawn_iperf(
        lab,
        to,
        "iperf3-s",
        &["-s", "-1", "-p", "5201", "--forceflush"],
        idle_priority,
    )?;
    server.wait_for_log("Server listening", WAIT)?;
    Ok(server)
}

/// iperf3 from pod `from` to `ip:port`, where an iperf3 server in pod `to` answers (directly
/// or through the floor's relays).
fn iperf_to(
    lab: &Lab,
    from: &str,
    to: &str,
    ip: std::net::Ipv4Addr,
    port: u16,
    seconds: u64,
) -> anyhow::Result<report::Iperf> {
    let server = iperf_server(lab, to)?;
    let (ip, port, secs) = (ip.to_string(), port.to_string(), seconds.to_string());
    let out = lab
        .pod(from)
        .exec("iperf3", &["-c", &ip, "-p", &port, "-t", &secs, "-J"], None)?;
    let result = report::parse_iperf(&out)?;
    let _ = server.wait_exit(WAIT);
    Ok(result)
}

/// How the isolation figure's neighbour streams.
#[derive(Debug, Clone, Copy)]
struct Neighbour {
    /// iperf3 `-b` limit; `None` for full speed.
    rate: Option<&'static str>,
    /// Run both iperf3 processes at SCHED_IDLE.
    idle_priority: bool,
}

impl Neighbour {
    const FULL: Neighbour = Neighbour {
        rate: None,
        idle_priority: false,
    };
}

/// An iperf3 stream from `from` to `to` (port 5201), running once its first interval is
/// reported; dropping the processes stops it.
fn neighbour_stream(
    lab: &Lab,
    from: &str,
    to: &str,
    how: Neighbour,
) -> anyhow::Result<(Process, Process)> {
    let server = iperf_server_with(lab, to, how.idle_priority)?;
    let ip = lab.pod(to).ip().to_string();
    let mut args = vec![
        "-c",
        &ip,
        "-p",
        "5201",
        "-t",
        "600",
        "-i",
        "1",
        "--forceflush",
    ];
    if let Some(r) = how.rate {
        args.extend(["-b", r]);
    }
    let client = spawn_iperf(lab, from, "iperf3-c", &args, how.idle_priority)?;
    client.wait_for_log("bits/sec", WAIT)?;
    Ok((server, client))
}

/// iperf3 in pod `pod` with `args`, under `chrt --idle 0` if `idle_priority`.
fn spawn_iperf(
    lab: &Lab,
    pod: &str,
    label: &str,
    args: &[&str],
    idle_priority: bool,
) -> anyhow::Result<Process> {
    let (program, args): (&str, Vec<&str>) = if idle_priority {
        let mut a = vec!["--idle", "0", IPERF3];
        a.extend_from_slice(args);
        (CHRT, a)
    } else {
        (IPERF3, args.to_vec())
    };
    lab.spawn_in(
        lab.pod(pod).netns(),
        label,
        Path::new(program),
        &args,
        &[],
        lab.dir(),
    )
}

/// Round trips before the measured ones.
const WARMUP: usize = 100;

/// p50 and p99 in µs, and requests per second, of `n` 64-byte round trips.
async fn latency(dst: SocketAddr, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let mut s = super::lab::connect(dst, WAIT).await?;
    s.set_nodelay(true)?;
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    for _ in 0..WARMUP {
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed().as_secs_f64();
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((samples[n / 2], samples[n * 99 / 100], n as f64 / total))
}

/// Connections per second, and connections made: each worker connects, does one 64-byte
/// round trip, closes.
async fn conn_rate(
    dst: SocketAddr,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, u64)> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let mut s = super::lab::connect(dst, WAIT).await?;
                s.write_all(&[1u8; 64]).await?;
                let mut b = [0u8; 64];
                s.read_exact(&mut b).await?;
                drop(s);
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total as f64 / seconds as f64, total))
}

/// One connection-rate measurement: connections per second, and per connection the CPU of
/// the processes carrying them (all of it, and the kernel's part) and of the whole machine.
struct ConnRate {
    rate: f64,
    cpu: f64,
    kernel: f64,
    machine: f64,
    /// Packets over the node link per connection, both ways.
    link_packets: f64,
}

impl ConnRate {
    /// Its rows at `level`: the rate under `figure`; the carriers' CPU unless there were
    /// none (direct TCP); the machine's CPU and the node link's packets.
    fn add_to(&self, table: &mut Table, level: &str, figure: &str, who: Through) {
        self.add_variant_to(table, level, figure, who, "");
    }

    /// Like [`ConnRate::add_to`], every row but the rate's named with `variant` appended, so
    /// that a variant's figures stay apart from the plain ones.
    fn add_variant_to(
        &self,
        table: &mut Table,
        level: &str,
        figure: &str,
        who: Through,
        variant: &str,
    ) {
        table.add(level, figure, who, self.rate);
        let mut add =
            |name: &str, value: f64| table.add(level, &format!("{name}{variant}"), who, value);
        if who != Through::Direct {
            add(FIGURE_CONN_TUNNELS, self.cpu * 1e6);
            add(FIGURE_CONN_TUNNELS_KERNEL, self.kernel * 1e6);
        }
        add(FIGURE_CONN_MACHINE, self.machine * 1e6);
        add(FIGURE_CONN_PACKETS, self.link_packets);
    }
}

/// CPU per 64-byte round trip of the latency figure: both tunnels, or the floor's two relays.
const FIGURE_RTT_CPU: &str = "  CPU per round trip, both tunnels (µs)";
/// The kernel's part of [`FIGURE_CONN_TUNNELS`] (the tunnels' system time).
const FIGURE_CONN_TUNNELS_KERNEL: &str = "    of which in the kernel (µs)";
/// Packets crossing the node link per new connection, both ways: what the carriers' framing
/// and coalescing cost the network (and both nodes' stacks).
const FIGURE_CONN_PACKETS: &str = "  node-link packets per connection";
/// CPU per new connection, the whole machine: tunnels, client, server and kernel.
const FIGURE_CONN_MACHINE: &str = "  CPU per connection, whole machine (µs)";

/// User + system CPU seconds of `processes` so far.
fn cpu_seconds(processes: &[Process]) -> f64 {
    processes.iter().map(|p| p.cpu_time().as_secs_f64()).sum()
}

/// CPU seconds of `processes` so far, and the system (kernel) part of them: one read of
/// each one's `/proc/PID/stat`.
fn cpu_and_system_seconds(processes: &[Process]) -> (f64, f64) {
    processes.iter().fold((0.0, 0.0), |(all, system), p| {
        let (u, s) = p.cpu_times();
        (all + (u + s).as_secs_f64(), system + s.as_secs_f64())
    })
}

/// Seconds the machine's CPUs have been busy (every `/proc/stat` field but idle and iowait).
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks = report::parse_busy_ticks(&stat).context("unreadable /proc/stat")?;
    // /proc/stat counts in USER_HZ, which the kernel's ABI fixes at 100 on every
    // architecture this runs on (what `sysconf(_SC_CLK_TCK)` returns).
    Ok(ticks as f64 / 100.0)
}

/// Opens `n` connections and keeps them idle until dropped.
async fn hold_connections(dst: SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = super::lab::connect(dst, WAIT).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        conns.push(s);
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Port of the idle connections' echo server in pod c.
const IDLE_PORT: u16 = 7001;

/// First port of the connection-rate runs' echo servers (one port per run).
const CONN_RATE_PORT: u16 = 7100;

/// Most runs of one benchmark: the connection figures take ports of their own per run
/// (`CONN_RATE_PORT`, `FLOOR_CONN_PORT`, `FLOOR_MUX_FAR`, `FLOOR_MUX_NEAR`, and per what-if
/// value `FLOOR_WORK_FAR`, `FLOOR_WORK_NEAR`), `RUN_PORTS` in each range.
pub const MAX_RUNS: usize = 100;
const RUN_PORTS: u16 = MAX_RUNS as u16;
const _: () = {
    let n = RUN_PORTS;
    assert!(IDLE_PORT < CONN_RATE_PORT);
    assert!(CONN_RATE_PORT + n <= FLOOR_CONN_PORT);
    assert!(FLOOR_CONN_PORT + n <= FLOOR_MUX_FAR);
    assert!(FLOOR_MUX_FAR + n <= FLOOR_MUX_NEAR);
    assert!(FLOOR_MUX_NEAR + n <= FLOOR_WORK_FAR);
    let works = MAX_FLOOR_WORKS as u16 * n;
    assert!(FLOOR_WORK_FAR + works <= FLOOR_WORK_NEAR);
    assert!(FLOOR_WORK_NEAR as u32 + works as u32 <= RELAY_FAR as u32);
};

/// Established TCP connections to the idle echo server, seen in the destination app's namespace.
fn idle_established(lab: &Lab) -> anyhow::Result<usize> {
    let filter = format!("( sport = :{IDLE_PORT} )");
    let out = lab
        .pod("c")
        .exec("ss", &["-Htn", "state", "established", &filter], None)?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
