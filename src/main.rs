//! `ztun`: argv → config → runtimes → app.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "proxy".to_string());
    match command.as_str() {
        "proxy" => run_proxy(args.collect()),
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
