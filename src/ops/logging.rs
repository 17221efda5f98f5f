//! Log output: `RUST_LOG`-style filters, plain or JSON (`LOG_FORMAT=json`) lines on stdout,
//! with a filter that the admin API can change at runtime.

use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogConfig;

/// Changes the active log filter.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    default: Arc<str>,
    // The directives currently applied (for display and appending).
    current: Arc<Mutex<String>>,
}

impl LogHandle {
    /// The active filter directives.
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Appends directives (`debug`, `ztun=debug,access=info`) to the active filter.
    pub fn append(&self, directives: &str) -> Result<String, String> {
        let next = format!("{},{}", self.current(), directives);
        self.set(&next)
    }

    /// Restores the startup filter.
    pub fn reset(&self) -> Result<String, String> {
        let d = self.default.clone();
        self.set(&d)
    }

    fn set(&self, directives: &str) -> Result<String, String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("invalid filter {directives:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())?;
        *self.current.lock() = directives.to_string();
        Ok(directives.to_string())
    }
}

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) -> anyhow::Result<LogHandle> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG {:?}: {e}", cfg.filter))?;
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(false);
    let res = if cfg.json {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json().flatten_event(true))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(LogHandle {
        handle,
        default: cfg.filter.as_str().into(),
        current: Arc::new(Mutex::new(cfg.filter.clone())),
    })
}
