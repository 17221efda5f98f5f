//! Operations: access logs, metrics, the live connection table, admin API, readiness.
//!
//! Telemetry is process-wide (like a Prometheus default registry): the access-log record is
//! the single place connections report to, so [`telemetry`] is a global initialised once by
//! the app (`init`) and lazily with defaults elsewhere (unit tests).

pub mod access;
pub mod admin;
pub mod dns_metrics;
pub mod exposition;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod readiness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use access::LiveConnection;
use metrics::Metrics;

/// Writes extra metric families in Prometheus text format at scrape time.
pub type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

/// Process-wide telemetry: metrics and the live connection table.
pub struct Telemetry {
    /// Prometheus metrics.
    pub metrics: Metrics,
    collectors: Mutex<Vec<Collector>>,
    connections: Mutex<BTreeMap<u64, LiveConnection>>,
    next_id: AtomicU64,
    /// When an accept last failed for lack of file descriptors (ms since the epoch; 0 = never).
    fd_exhausted_at: AtomicU64,
    /// When the current run of fd exhaustion began (ms since the epoch): a run ends when no
    /// exhaustion is seen for [`FD_EXHAUSTION_WINDOW`].
    fd_exhausted_since: AtomicU64,
}

/// How long after the last EMFILE/ENFILE readiness reports the exhaustion.
pub const FD_EXHAUSTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Initialises telemetry with the Istio version tag and the optional families exported;
/// later calls keep the first values.
pub fn init(istio_version: &str, exports: metrics::Exports) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| Telemetry::new(istio_version, exports))
}

/// The process telemetry.
pub fn telemetry() -> &'static Telemetry {
    TELEMETRY.get_or_init(|| Telemetry::new("unknown", metrics::Exports::default()))
}

impl Telemetry {
    fn new(istio_version: &str, exports: metrics::Exports) -> Self {
        Telemetry {
            metrics: Metrics::new(istio_version, exports),
            collectors: Mutex::new(Vec::new()),
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            fd_exhausted_at: AtomicU64::new(0),
            fd_exhausted_since: AtomicU64::new(0),
        }
    }

    /// Records that an accept failed for lack of file descriptors.
    pub fn note_fd_exhausted(&self) {
        self.metrics.fd_exhausted.inc();
        let now = now_ms();
        let prev = self.fd_exhausted_at.swap(now, Ordering::Relaxed);
        if prev == 0 || now.saturating_sub(prev) >= FD_EXHAUSTION_WINDOW.as_millis() as u64 {
            self.fd_exhausted_since.store(now, Ordering::Relaxed);
        }
    }

    /// How long file descriptors have been running out without a break of
    /// [`FD_EXHAUSTION_WINDOW`]; `None` when they are not exhausted now.
    pub fn fd_exhausted_for(&self) -> Option<std::time::Duration> {
        if !self.fd_exhausted_recently() {
            return None;
        }
        let since = self.fd_exhausted_since.load(Ordering::Relaxed);
        Some(std::time::Duration::from_millis(
            now_ms().saturating_sub(since),
        ))
    }

    /// Whether file descriptors ran out within [`FD_EXHAUSTION_WINDOW`].
    pub fn fd_exhausted_recently(&self) -> bool {
        let at = self.fd_exhausted_at.load(Ordering::Relaxed);
        at != 0 && now_ms().saturating_sub(at) < FD_EXHAUSTION_WINDOW.as_millis() as u64
    }

    /// Adds families owned elsewhere (e.g. the xDS client's counters) to every scrape.
    pub fn add_collector(&self, c: Collector) {
        self.collectors.lock().push(c);
    }

    /// The full scrape: registry, process and runtime gauges, and the collectors.
    pub fn encode(&self, stats: &metrics::ProcessStats) -> String {
        let mut extra = String::new();
        for c in self.collectors.lock().iter() {
            c(&mut extra);
        }
        self.metrics.encode(stats, &extra)
    }

    pub(crate) fn register(&self, conn: LiveConnection) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(id, conn);
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.connections.lock().remove(&id);
    }

    /// The established connections right now.
    pub fn connections(&self) -> Vec<LiveConnection> {
        self.connections.lock().values().cloned().collect()
    }
}
