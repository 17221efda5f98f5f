//! Log output: `RUST_LOG`-style filters, plain or JSON (`LOG_FORMAT=json`) lines on stdout.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG {:?}: {e}", cfg.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let res = if cfg.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
