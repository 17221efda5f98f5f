//! `ztun`: argv → config → runtimes → app.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "proxy".to_string());
    match command.as_str() {
        "proxy" => run_proxy(args.collect()),
        "control-plane" => run_control_plane(args.collect()),
        "ctl" => match ztun::cli::run(&args.collect::<Vec<_>>()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ztun ctl: {e:#}");
                ExitCode::FAILURE
            }
        },
        "version" | "--version" => {
            println!("ztun {}", ztun::VERSION);
            ExitCode::SUCCESS
        }
        "help" | "--help" | "-h" => {
            print!("{}", HELP);
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("ztun: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

const HELP: &str = "\
ztun: a per-node zero-trust tunnel for Kubernetes ambient meshes.

Usage:
  ztun [proxy [ztunnel]]   run the node proxy (configured by environment variables)
  ztun control-plane ...   serve xDS from a mesh file (ztun control-plane --help)
  ztun ctl COMMAND         inspect a running ztun through its admin API (ztun ctl help)
  ztun version             print the version
  ztun help                print this help
";

fn run_proxy(proxy_args: Vec<String>) -> ExitCode {
    let mut config = match ztun::config::Config::from_source(&ztun::config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ztun: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    config.proxy_args = proxy_args;
    match ztun::app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztun: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_control_plane(args: Vec<String>) -> ExitCode {
    use ztun::controlplane::{self, Args, USAGE};
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ztun control-plane: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Only the logging settings (RUST_LOG, LOG_FORMAT) of the environment apply here.
    let log = match ztun::config::Config::from_source(&ztun::config::ProcessEnv) {
        Ok(c) => c.log,
        Err(e) => {
            eprintln!("ztun control-plane: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ztun::ops::logging::init(&log) {
        eprintln!("ztun control-plane: {e:#}");
        return ExitCode::FAILURE;
    }
    match controlplane::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztun control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}
