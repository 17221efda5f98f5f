//! `ztun-lab`: command-line access to the namespace lab for scripts.
//!
//! Usage: `ztun-lab <command> [options]`; `ztun-lab help` lists the commands. Each command is
//! one entry in `COMMANDS` and one function, so adding a command touches nothing else.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use ztun::testkit::lab::{self, LAB_PREFIX};

/// A subcommand: its name, a one-line usage, and what runs it with the remaining arguments.
struct Command {
    name: &'static str,
    usage: &'static str,
    run: fn(&[String]) -> anyhow::Result<()>,
}

const COMMANDS: &[Command] = &[
    Command {
        name: "cleanup",
        usage: "cleanup [--prefix PREFIX]   delete leftover lab namespaces and temp dirs (default prefix ztl-)",
        run: cleanup,
    },
    Command {
        name: "bench",
        usage: "bench [--ztun PATH] [--ztunnel PATH] [--levels warn,info] [--runs N] [--seconds S] [--requests N] [--idle N[,N...]] [--concurrency N] [--floor-work-us US[,US...]] [--workers N] [--only floor,throughput,connections,isolation,memory] [--out FILE]  direct TCP, the floor, ztun and (given) ztunnel side by side",
        run: bench,
    },
    Command {
        name: "state-bench",
        usage: "state-bench [--ztun PATH] [--ztunnel PATH] [--baseline PATH] [--only xds|file] [--workloads N] [--runs N] [--out FILE]  one dedicated tunnel fed a generated mesh over xDS and from a file: time to ready, RSS, peak",
        run: state_bench,
    },
    Command {
        name: "control-plane-bench",
        usage: "control-plane-bench [--ztun PATH] [--workloads N] [--nodes N] [--changes N] [--out FILE]  ztun control-plane serving a generated mesh to N in-process delta-ADS clients: RSS, CPU, initial push and change times",
        run: control_plane_bench,
    },
    Command {
        name: "echo-server",
        usage: "echo-server --port P   a TCP echo server in the current namespace until killed (the bench's idle-connection peer)",
        run: echo_server,
    },
    Command {
        name: "relay",
        usage: "relay --listen IP:PORT --to IP:PORT [--event-loop | --mux | --demux]   a plain TCP relay (no TLS) until killed: blocking threads, one thread's event loop, or a pair carrying every connection over one link (the bench's floor)",
        run: relay,
    },
    Command {
        name: "demo",
        usage: "demo [--ztun PATH] [--local]  two-node cluster, ztun on each node, real traffic, report",
        run: demo,
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    if matches!(name.as_str(), "help" | "-h" | "--help") {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        eprintln!("unknown command {name:?}\n{}", usage());
        return ExitCode::from(2);
    };
    match (command.run)(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztun-lab {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let mut text = String::from("usage: ztun-lab <command>\ncommands:\n");
    for command in COMMANDS {
        text.push_str(&format!("  {}\n", command.usage));
    }
    text
}

fn cleanup(args: &[String]) -> anyhow::Result<()> {
    let mut prefix = LAB_PREFIX.to_string();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--prefix" => prefix = rest.next().context("--prefix needs a value")?.clone(),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let removed = lab::cleanup_stale(&prefix)?;
    for name in &removed {
        println!("deleted netns {name}");
    }
    println!("{} stale lab namespace(s) removed", removed.len());
    Ok(())
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    let mut bin = None;
    let mut source = ztun::testkit::demo::Source::ControlPlane;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--ztun" => {
                bin = Some(
                    std::fs::canonicalize(rest.next().context("--ztun needs a path")?)
                        .context("--ztun")?,
                )
            }
            "--local" => source = ztun::testkit::demo::Source::LocalFile,
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let bin = ztun_or_built(bin)?;
    ztun::testkit::demo::run(&bin, source)
}

fn echo_server(args: &[String]) -> anyhow::Result<()> {
    let port = match args {
        [flag, p] if flag == "--port" => p.parse().context("--port")?,
        _ => bail!("usage: echo-server --port P"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(lab::echo_server(port))
}

fn relay(args: &[String]) -> anyhow::Result<()> {
    const USAGE: &str =
        "usage: relay --listen IP:PORT --to IP:PORT [--event-loop | --mux | --demux] [--work-us N]";
    // `--work-us N` (mux and demux only): user-space time each end spends per new stream.
    let (args, work) = match args {
        [rest @ .., w, n] if w == "--work-us" => (
            rest,
            std::time::Duration::from_micros(n.parse().context("--work-us")?),
        ),
        _ => (args, std::time::Duration::ZERO),
    };
    let (listen, to, mode) = match args {
        [l, listen, t, to] if l == "--listen" && t == "--to" => (listen, to, ""),
        [l, listen, t, to, m] if l == "--listen" && t == "--to" => (listen, to, m.as_str()),
        _ => bail!(USAGE),
    };
    let (listen, to) = (
        listen.parse().context("--listen")?,
        to.parse().context("--to")?,
    );
    match mode {
        "" if work.is_zero() => ztun::testkit::bench::relay(listen, to),
        "--event-loop" if work.is_zero() => ztun::testkit::bench::relay_event_loop(listen, to),
        "--mux" => ztun::testkit::bench::relay_mux(listen, to, work),
        "--demux" => ztun::testkit::bench::relay_demux(listen, to, work),
        _ => bail!(USAGE),
    }
}

fn state_bench(args: &[String]) -> anyhow::Result<()> {
    let mut opts = ztun::testkit::state_bench::Options {
        workloads: 50_000,
        runs: 3,
        ztunnel: None,
        baseline: None,
        paths: ztun::testkit::state_bench::Paths::Both,
    };
    let mut bin = None;
    let mut out = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ztun" => bin = Some(std::fs::canonicalize(value()?).context("--ztun")?),
            "--ztunnel" => {
                opts.ztunnel = Some(std::fs::canonicalize(value()?).context("--ztunnel")?)
            }
            "--baseline" => {
                opts.baseline = Some(std::fs::canonicalize(value()?).context("--baseline")?)
            }
            "--only" => {
                use ztun::testkit::state_bench::Paths;
                opts.paths = match value()?.as_str() {
                    "xds" => Paths::Xds,
                    "file" => Paths::File,
                    other => bail!("--only takes xds or file, not {other:?}"),
                }
            }
            "--workloads" => opts.workloads = value()?.parse().context("--workloads")?,
            "--runs" => opts.runs = value()?.parse().context("--runs")?,
            "--out" => out = Some(std::path::PathBuf::from(value()?)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    if opts.runs == 0 || opts.workloads < 5 {
        bail!("--runs must be at least 1 and --workloads at least 5");
    }
    let bin = ztun_or_built(bin)?;
    let report = ztun::testkit::state_bench::run(&bin, &opts)?;
    write_report(out, &report)?;
    Ok(())
}

fn control_plane_bench(args: &[String]) -> anyhow::Result<()> {
    let mut opts = ztun::testkit::control_plane_bench::Options {
        workloads: 50_000,
        nodes: 100,
        changes: 6,
    };
    let mut bin = None;
    let mut out = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ztun" => bin = Some(std::fs::canonicalize(value()?).context("--ztun")?),
            "--workloads" => opts.workloads = value()?.parse().context("--workloads")?,
            "--nodes" => opts.nodes = value()?.parse().context("--nodes")?,
            "--changes" => opts.changes = value()?.parse().context("--changes")?,
            "--out" => out = Some(std::path::PathBuf::from(value()?)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    if opts.nodes == 0 || opts.workloads < 5 || opts.changes > 200 {
        bail!("--nodes must be at least 1, --workloads at least 5, --changes at most 200");
    }
    let bin = ztun_or_built(bin)?;
    let report = ztun::testkit::control_plane_bench::run(&bin, &opts)?;
    write_report(out, &report)?;
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    let mut opts = ztun::testkit::bench::Options::default();
    let mut bin = None;
    let mut out = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ztun" => bin = Some(std::fs::canonicalize(value()?).context("--ztun")?),
            "--ztunnel" => {
                opts.ztunnel = Some(std::fs::canonicalize(value()?).context("--ztunnel")?)
            }
            "--levels" => opts.log_levels = value()?.split(',').map(str::to_string).collect(),
            "--runs" => {
                opts.runs = value()?.parse().context("--runs")?;
                let max = ztun::testkit::bench::MAX_RUNS;
                anyhow::ensure!(
                    (1..=max).contains(&opts.runs),
                    "--runs must be between 1 and {max}"
                );
            }
            "--seconds" => opts.seconds = value()?.parse().context("--seconds")?,
            "--idle" => {
                let mut levels = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<usize>, _>>()
                    .context("--idle")?;
                levels.sort_unstable();
                opts.idle_connections = levels;
            }
            "--requests" => opts.requests = value()?.parse().context("--requests")?,
            "--concurrency" => opts.concurrency = value()?.parse().context("--concurrency")?,
            "--floor-work-us" => {
                opts.floor_work_us = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--floor-work-us")?;
                let max = ztun::testkit::bench::MAX_FLOOR_WORKS;
                anyhow::ensure!(
                    opts.floor_work_us.len() <= max,
                    "--floor-work-us takes at most {max} values"
                );
            }
            "--workers" => {
                opts.workers = value()?.parse().context("--workers")?;
                anyhow::ensure!(opts.workers >= 1, "--workers must be at least 1");
            }
            "--only" => opts.only = value()?.split(',').map(str::to_string).collect(),
            "--out" => out = Some(std::path::PathBuf::from(value()?)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let bin = ztun_or_built(bin)?;
    let report = ztun::testkit::bench::run(&bin, &opts)?;
    write_report(out, &report)?;
    Ok(())
}

/// The ztun binary given with `--ztun`, else the one this build made.
fn ztun_or_built(bin: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    match bin {
        Some(b) => Ok(b),
        None => ztun::testkit::ztun_bin(),
    }
}

/// Writes a bench's JSON report to `--out`, when given.
fn write_report(out: Option<std::path::PathBuf>, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_string_pretty(report)?)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
