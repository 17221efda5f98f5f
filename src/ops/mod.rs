//! Operations: access logs, metrics, the live connection table, admin API, readiness.
//!
//! Nothing here is global: the composition root builds one metrics registry, lets each
//! component register its own families in it, and hands each component what it counts into
//! ([`Telemetry`] for the data plane's connections, readiness and the admin API).

pub mod access;
pub mod admin;
pub mod exposition;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod readiness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;

use access::{ConnectionInfo, LiveConnection};
use metrics::Metrics;

/// What connections report to: their metrics, the live connection table and fd exhaustion.
/// Built once by the composition root and shared (`Arc`) with whoever reports or reads.
pub struct Telemetry {
    /// Prometheus metrics (registered in the registry given to [`Telemetry::new`]).
    pub metrics: Metrics,
    /// The live connection table, by id (ids grow, so the order is the connections' age).
    /// An entry shares its connection's record ([`Live`]); the lock is held to insert, remove
    /// or clone out the entries, never across I/O.
    connections: Mutex<BTreeMap<u64, Live>>,
    next_id: AtomicU64,
    /// When an accept last failed for lack of file descriptors (ms since the epoch; 0 = never).
    fd_exhausted_at: AtomicU64,
    /// When the current run of fd exhaustion began (ms since the epoch): a run ends when no
    /// exhaustion is seen for [`FD_EXHAUSTION_WINDOW`].
    fd_exhausted_since: AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// How long after the last EMFILE/ENFILE readiness reports the exhaustion.
pub const FD_EXHAUSTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Telemetry {
    /// Telemetry whose metric families are registered in `registry` (the optional ones as
    /// `exports` says); `istio_version` tags `istio_build`.
    pub fn new(registry: &mut Registry, istio_version: &str, exports: metrics::Exports) -> Self {
        Telemetry {
            metrics: Metrics::new(registry, istio_version, exports),
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

    /// Telemetry counting into a registry of its own, for tests of one component.
    #[cfg(any(test, feature = "testing"))]
    pub fn detached() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Telemetry::new(
            &mut Registry::default(),
            "test",
            metrics::Exports::default(),
        ))
    }

    pub(crate) fn register(&self, info: Arc<ConnectionInfo>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let since = now_ms() / 1000;
        self.connections.lock().insert(id, Live { since, info });
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.connections.lock().remove(&id);
    }

    /// The established connections right now.
    pub fn connections(&self) -> Vec<LiveConnection> {
        let live: Vec<Live> = self.connections.lock().values().cloned().collect();
        live.iter().map(|l| l.info.live(l.since)).collect()
    }
}

/// A live-table entry: two words. The table's nodes are kept partly empty (a B-tree's), so
/// what an entry holds inline is paid about twice per idle connection; the record itself is
/// the connection's own, shared, not copied.
#[derive(Clone)]
struct Live {
    /// When the connection was established (seconds since the epoch).
    since: u64,
    info: Arc<ConnectionInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use access::{AccessLog, Direction};

    /// The live table shares each established connection's record (one allocation per
    /// connection, not a copy in the table), and its entries are two words.
    #[test]
    fn the_live_table_shares_the_connections_record() {
        assert!(
            std::mem::size_of::<Live>() <= 2 * std::mem::size_of::<usize>(),
            "live-table entry {} B",
            std::mem::size_of::<Live>()
        );
        let telemetry = Telemetry::detached();
        let mut log = AccessLog::new(Direction::Inbound, telemetry.clone());
        log.src.addr = Some(std::net::SocketAddr::from(([10, 0, 0, 1], 4000)));
        log.established();
        let shared = {
            let table = telemetry.connections.lock();
            let live = table.values().next().expect("registered");
            std::ptr::eq(Arc::as_ptr(&live.info), &*log as &ConnectionInfo)
        };
        assert!(shared, "the table holds a copy of the record");
        let listed = telemetry.connections();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].src, log.src.addr);
        log.complete(None);
        assert!(telemetry.connections().is_empty());
    }
}
