//! The side-by-side benchmark behind `scripts/bench.sh`: every figure through two ztuns is
//! measured in the same run against direct TCP between pods of the same cluster (pods that
//! are not captured), and reported as a ratio.
//!
//! Topology: node n1 with captured `a`, `b` and uncaptured `x`, `w`; node n2 with captured
//! `c` and uncaptured `y`. Direct = x → y, tunnelled = a → c (HBONE through both ztuns). The
//! isolation figure (hardening R4) measures a's request latency while b streams to c at full
//! speed through the same ztuns, against x's while w streams to y directly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::lab::{Lab, PodSpec, Process};
use super::mesh::MeshFile;

const WAIT: Duration = Duration::from_secs(60);
/// The rate-limited neighbour of the isolation figure.
const NEIGHBOUR_RATE: &str = "1G";

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
    /// Figures to measure (`throughput`, `connections`, `isolation`, `memory`); empty: all.
    /// Request/response latency always runs: the isolation figure is relative to it.
    pub only: Vec<String>,
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
            idle_connections: vec![1000, 10_000],
            concurrency: 8,
            only: Vec::new(),
        }
    }
}

/// Runs the benchmark with the `ztun` binary at `ztun`; prints a table and returns the JSON.
pub fn run(ztun: &Path, opts: &Options) -> anyhow::Result<Value> {
    raise_fd_limit();
    let lab = Lab::builder("bench")
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
    let (ca, mesh) = (
        ca.to_string_lossy().into_owned(),
        mesh.to_string_lossy().into_owned(),
    );
    let env = [
        ("LOCAL_CA_DIR", ca.as_str()),
        ("LOCAL_XDS_PATH", mesh.as_str()),
        ("ZTUNNEL_WORKER_THREADS", "1"),
        ("RUST_LOG", "warn"),
    ];
    let z1 = lab.spawn_ztun_with("n1", ztun, &["proxy", "ztunnel"], &env)?;
    let z2 = lab.spawn_ztun_with("n2", ztun, &["proxy", "ztunnel"], &env)?;
    for n in ["n1", "n2"] {
        lab.cni(n)
            .wait_connected(WAIT)
            .with_context(|| format!("ztun on {n} did not sync"))?;
    }
    // Clients close first and keep TIME_WAIT (and so does ztun's connection to the app, which
    // mirrors the client's close): without reuse, tens of thousands of short connections
    // exhaust the ephemeral ports and the connection-rate figure measures that.
    for client in ["a", "x", "c", "y"] {
        lab.pod(client)
            .exec("sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"], None)?;
    }
    let echo_c = lab.pod("c").spawn_echo_server(7000)?;
    let echo_y = lab.pod("y").spawn_echo_server(7000)?;
    let tunnel = SocketAddr::from((lab.pod("c").ip(), echo_c.port()));
    let direct = SocketAddr::from((lab.pod("y").ip(), echo_y.port()));
    // Warm the pool and the certificates.
    lab.pod("a").bulk_echo(tunnel, 1 << 20)?;
    let idle_rss = rss(&z1) + rss(&z2);

    let mut rows = Vec::new();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };

    // 1. Bulk throughput (iperf3), and CPU per GB through the tunnel.
    let (mut d, mut t, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs * usize::from(opts.wants("throughput")) {
        d.push(iperf(&lab, "x", "y", opts.seconds)?.0);
        let before = cpu_seconds(&z1) + cpu_seconds(&z2);
        let (bps, bytes) = iperf(&lab, "a", "c", opts.seconds)?;
        let after = cpu_seconds(&z1) + cpu_seconds(&z2);
        t.push(bps);
        cpu.push((after - before) / (bytes as f64 / 1e9));
    }
    if opts.wants("throughput") {
        let (d, t) = (median(d), median(t));
        rows.push(row("throughput (Gbit/s)", d / 1e9, t / 1e9, t / d));
    }

    // 2. Request/response latency on one kept-alive connection.
    let (mut d50, mut d99, mut t50, mut t99, mut drps, mut trps) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let (p50, p99, rps) = lab.pod("x").block_on(latency(direct, opts.requests))?;
        d50.push(p50);
        d99.push(p99);
        drps.push(rps);
        let (p50, p99, rps) = lab.pod("a").block_on(latency(tunnel, opts.requests))?;
        t50.push(p50);
        t99.push(p99);
        trps.push(rps);
    }
    let (d50, d99, t50, t99, drps, trps) = (
        median(d50),
        median(d99),
        median(t50),
        median(t99),
        median(drps),
        median(trps),
    );
    rows.push(row("requests/s (1 conn)", drps, trps, trps / drps));
    rows.push(row("p50 latency (µs)", d50, t50, t50 / d50));
    rows.push(row("p99 latency (µs)", d99, t99, t99 / d99));

    // 3. New connections per second.
    let (mut dc, mut tc) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs * usize::from(opts.wants("connections")) {
        dc.push(
            lab.pod("x")
                .block_on(conn_rate(direct, opts.concurrency, opts.seconds))?,
        );
        tc.push(
            lab.pod("a")
                .block_on(conn_rate(tunnel, opts.concurrency, opts.seconds))?,
        );
    }
    if opts.wants("connections") {
        let (dc, tc) = (median(dc), median(tc));
        rows.push(row("connections/s", dc, tc, tc / dc));
    }

    // 4. Isolation (hardening R4): p99 of small requests while a neighbour streams, as a
    // multiple of the p99 measured alone above; the neighbour at full speed (every core busy
    // on this machine), at NEIGHBOUR_RATE, and at full speed with its two iperf3 processes at
    // SCHED_IDLE. The last models tenant pods with CPU of their own, which this 2-core machine
    // cannot give them: the ztuns still relay the neighbour's stream as fast as it comes and
    // share their one worker thread with the small requests, but the neighbour's own
    // processes no longer take the CPU from everyone else.
    let mut isolation = serde_json::Map::new();
    let mut iso_lines = Vec::new();
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
        let (mut dl, mut tl) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let stream = neighbour_stream(&lab, "w", "y", rate)?;
            dl.push(lab.pod("x").block_on(latency(direct, opts.requests))?.1);
            drop(stream);
            let stream = neighbour_stream(&lab, "b", "c", rate)?;
            tl.push(lab.pod("a").block_on(latency(tunnel, opts.requests))?.1);
            drop(stream);
        }
        let (dl, tl) = (median(dl), median(tl));
        isolation.insert(
            format!("neighbour {label}"),
            json!({
                "direct_p99_us": dl, "direct_factor": dl / d99,
                "ztun_p99_us": tl, "ztun_factor": tl / t99,
            }),
        );
        iso_lines.push(format!(
            "p99 with a neighbour streaming at {label}: direct {dl:.0} µs ({:.2}x alone), \
             through ztun {tl:.0} µs ({:.2}x alone)",
            dl / d99,
            tl / t99
        ));
    }

    // 5. Memory: idle, and per idle tunnelled connection (both ztuns together) at each level.
    let before = rss(&z1) + rss(&z2);
    let levels: &[usize] = if opts.wants("memory") {
        &opts.idle_connections
    } else {
        &[]
    };
    // The idle connections' echo server is a process of its own: this one holds the clients,
    // and both ends of 10 000 connections would not fit one process's descriptor limit.
    let idle_echo = match levels {
        [] => None,
        _ => {
            let exe = std::env::current_exe()?;
            let p = lab.spawn_in(
                lab.pod("c").netns(),
                "idle-echo",
                &exe,
                &["echo-server", "--port", &IDLE_PORT.to_string()],
                &[],
                lab.dir(),
            )?;
            p.wait_for_log("listening on", WAIT)?;
            Some(p)
        }
    };
    let idle = SocketAddr::from((lab.pod("c").ip(), IDLE_PORT));
    let mut held = Vec::new();
    let mut memory = Vec::new();
    for &n in levels {
        let more = n.saturating_sub(idle_established(&lab)?);
        held.push(lab.pod("a").spawn_async(hold_connections(idle, more)));
        let deadline = Instant::now() + WAIT;
        while idle_established(&lab)? < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} idle connections got established",
                    idle_established(&lab)?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let loaded = rss(&z1) + rss(&z2);
        let per_conn = (loaded.saturating_sub(before)) as f64 / n.max(1) as f64;
        memory.push(json!({ "idle_connections": n, "bytes_per_idle_connection_both": per_conn }));
    }
    for h in held {
        h.abort();
    }
    drop(idle_echo);
    let cpu_gb = if cpu.is_empty() { 0.0 } else { median(cpu) };

    print_table(&rows, idle_rss, &memory, cpu_gb);
    for l in &iso_lines {
        println!("{l}");
    }
    Ok(json!({
        "isolation": isolation,
        "runs": opts.runs,
        "rows": rows,
        "memory": { "idle_rss_bytes_both": idle_rss, "levels": memory },
        "cpu_seconds_per_gb_both": cpu_gb,
    }))
}

fn row(name: &str, direct: f64, tunnel: f64, ratio: f64) -> Value {
    json!({ "figure": name, "direct": direct, "ztun": tunnel, "ratio": ratio })
}

fn print_table(rows: &[Value], idle: u64, memory: &[Value], cpu_gb: f64) {
    println!(
        "{:<22} {:>14} {:>14} {:>8}",
        "figure", "direct TCP", "through ztun", "ratio"
    );
    for r in rows {
        println!(
            "{:<22} {:>14.1} {:>14.1} {:>7.2}x",
            r["figure"].as_str().unwrap_or_default(),
            r["direct"].as_f64().unwrap_or_default(),
            r["ztun"].as_f64().unwrap_or_default(),
            r["ratio"].as_f64().unwrap_or_default()
        );
    }
    println!(
        "RSS idle, both ztuns: {:.1} MiB",
        idle as f64 / (1 << 20) as f64
    );
    for m in memory {
        println!(
            "RSS per idle tunnelled connection (both ends, {} conns): {:.0} bytes",
            m["idle_connections"],
            m["bytes_per_idle_connection_both"]
                .as_f64()
                .unwrap_or_default()
        );
    }
    println!("CPU seconds per GB through both ztuns: {cpu_gb:.2}");
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

/// iperf3 from `from` to `to`: (bits/s received, bytes moved).
fn iperf(lab: &Lab, from: &str, to: &str, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let server = iperf_server(lab, to)?;
    let ip = lab.pod(to).ip().to_string();
    let secs = seconds.to_string();
    let out = lab.pod(from).exec(
        "iperf3",
        &["-c", &ip, "-p", "5201", "-t", &secs, "-J"],
        None,
    )?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 output: {out}"))?;
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("iperf3: no bits_per_second")?;
    let bytes = sum["bytes"].as_f64().unwrap_or(0.0) as u64;
    let _ = server.wait_exit(WAIT);
    Ok((bps, bytes))
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

/// p50 and p99 in µs, and requests per second, of `n` 64-byte round trips.
async fn latency(dst: SocketAddr, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let mut s = super::lab::connect(dst, WAIT).await?;
    s.set_nodelay(true)?;
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    for _ in 0..100 {
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

/// Connections per second: each worker connects, does one 64-byte round trip, closes.
async fn conn_rate(dst: SocketAddr, concurrency: usize, seconds: u64) -> anyhow::Result<f64> {
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
    Ok(total as f64 / seconds as f64)
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

/// Established TCP connections to the idle echo server, seen in the destination app's namespace.
fn idle_established(lab: &Lab) -> anyhow::Result<usize> {
    let filter = format!("( sport = :{IDLE_PORT} )");
    let out = lab
        .pod("c")
        .exec("ss", &["-Htn", "state", "established", &filter], None)?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

fn rss(p: &Process) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cpu_seconds(p: &Process) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc reports in USER_HZ, which the Linux ABI fixes at 100.
    (ticks(11) + ticks(12)) / 100.0
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
