//! Prometheus metrics with Istio's names and labels (`istio_tcp_*`, `istio_build`,
//! `workload_manager_*`; the process and runtime gauges in `process`).
//!
//! Traffic series carry the full Istio label set, built once per connection (when it opens,
//! and again with the failure's flag if it fails).
//!
//! HELP texts follow ztunnel's stability split: the families ztunnel calls stable (build,
//! the four `istio_tcp_*` opened/closed/bytes, `process_*`, `tokio_*`) say nothing about it,
//! every other Istio family says "(unstable)". ztun's own `ztun_*` families are outside it.
//!
//! Cardinality is bounded: series whose workloads left the mesh are removed by
//! [`Metrics::expire`] (called on every state change), so a churn of short-lived pods does not
//! grow the scrape forever.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::model::{Strng, Workload};

/// Which proxy of the two reports a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side.
    Source = 0,
    /// The server side.
    Destination = 1,
}

impl EncodeLabelValue for Reporter {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// Labels of `ztun_task_exits_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskExitLabels {
    task: &'static str,
    exit: &'static str,
}

/// The `reporter` label alone (`istio_tcp_sockets_open`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReporterLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
}

/// An accepted socket counted in `istio_tcp_sockets_open` until dropped.
#[derive(Debug)]
#[must_use = "the socket is counted open only while the guard lives"]
pub struct SocketOpen(Gauge);

impl Drop for SocketOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Istio's TCP traffic labels. Missing values are `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// Source workload name.
    pub source_workload: Arc<str>,
    /// Source canonical service.
    pub source_canonical_service: Arc<str>,
    /// Source canonical revision.
    pub source_canonical_revision: Arc<str>,
    /// Source namespace.
    pub source_workload_namespace: Arc<str>,
    /// Source principal (SPIFFE id).
    pub source_principal: Arc<str>,
    /// Source app.
    pub source_app: Arc<str>,
    /// Source version.
    pub source_version: Arc<str>,
    /// Source cluster.
    pub source_cluster: Arc<str>,
    /// Destination service hostname.
    pub destination_service: Arc<str>,
    /// Destination service namespace.
    pub destination_service_namespace: Arc<str>,
    /// Destination service short name.
    pub destination_service_name: Arc<str>,
    /// Destination workload name.
    pub destination_workload: Arc<str>,
    /// Destination canonical service.
    pub destination_canonical_service: Arc<str>,
    /// Destination canonical revision.
    pub destination_canonical_revision: Arc<str>,
    /// Destination namespace.
    pub destination_workload_namespace: Arc<str>,
    /// Destination principal.
    pub destination_principal: Arc<str>,
    /// Destination app.
    pub destination_app: Arc<str>,
    /// Destination version.
    pub destination_version: Arc<str>,
    /// Destination cluster.
    pub destination_cluster: Arc<str>,
    /// Always `tcp`.
    pub request_protocol: &'static str,
    /// `-` or the failure flag.
    pub response_flags: &'static str,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: &'static str,
    /// `source_region`, `source_zone`, `destination_region`, `destination_zone`: present
    /// only when a workload on either side is known.
    #[prometheus(flatten)]
    pub locality: MaybeLocality,
}

/// Hashes the labels that tell series apart in practice, not all of them: every connection
/// looks its series up about six times on each node (opened, sent, received, closed, and the
/// set expiry walks), and hashing every label was the largest user-space cost of a new
/// connection after the kernel's. The others (canonical names, revisions, principals,
/// cluster, locality) mostly follow the workload; series differing only in them share a hash
/// and are still told apart by equality.
impl std::hash::Hash for TrafficLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.reporter.hash(state);
        self.source_workload.hash(state);
        self.source_workload_namespace.hash(state);
        self.destination_workload.hash(state);
        self.destination_workload_namespace.hash(state);
        self.destination_service.hash(state);
        self.response_flags.hash(state);
    }
}

/// The four locality labels of a traffic series; a part not known is `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LocalityLabels {
    /// The source workload's region.
    pub source_region: Arc<str>,
    /// The source workload's zone.
    pub source_zone: Arc<str>,
    /// The destination workload's region.
    pub destination_region: Arc<str>,
    /// The destination workload's zone.
    pub destination_zone: Arc<str>,
}

/// The locality labels, or none at all (not even as `unknown`) when neither side's workload
/// is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MaybeLocality(pub Option<LocalityLabels>);

impl EncodeLabelSet for MaybeLocality {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(labels) => labels.encode(encoder),
            None => Ok(()),
        }
    }
}

/// One connection's byte series, fetched when it opens. Bytes are named as Istio does,
/// from the reporting proxy's downstream view: "received" is what the client sent.
#[derive(Debug, Clone)]
pub struct Series {
    received: Counter,
    sent: Counter,
}

impl Series {
    /// Counters that belong to no family.
    pub fn detached() -> Self {
        Series {
            received: Counter::default(),
            sent: Counter::default(),
        }
    }

    /// `n` more bytes sent by the client.
    pub fn client_sent(&self, n: u64) {
        self.received.inc_by(n);
    }

    /// `n` more bytes received by the client.
    pub fn client_received(&self, n: u64) {
        self.sent.inc_by(n);
    }
}

/// The label used for missing values.
pub fn unknown() -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from("unknown")).clone()
}

/// `v`, or `unknown` when empty.
pub fn or_unknown(v: &Strng) -> Arc<str> {
    if v.is_empty() {
        unknown()
    } else {
        v.clone()
    }
}

/// The `*_workload` label value of a workload: its controller's name (the Deployment, as
/// Istio's dashboards and tests expect), or the pod's name when the control plane sent none.
pub fn workload_label(w: &Workload) -> &Strng {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

/// Labels of `ztun_connection_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Stable reject reason.
    pub reason: &'static str,
}

/// Labels of `istio_on_demand_dns_total`: the source workload's eight labels, as on the
/// traffic series, and the hostname resolved. Missing values are `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OnDemandDnsLabels {
    /// Source workload (controller) name.
    pub source_workload: Arc<str>,
    /// Source canonical service.
    pub source_canonical_service: Arc<str>,
    /// Source canonical revision.
    pub source_canonical_revision: Arc<str>,
    /// Source namespace.
    pub source_workload_namespace: Arc<str>,
    /// Source principal: the source workload's SPIFFE identity.
    pub source_principal: Arc<str>,
    /// Source app (the canonical service).
    pub source_app: Arc<str>,
    /// Source version (the canonical revision).
    pub source_version: Arc<str>,
    /// Source cluster.
    pub source_cluster: Arc<str>,
    /// The hostname of the endpoint resolved.
    pub hostname: Arc<str>,
}

impl OnDemandDnsLabels {
    /// The labels of a connection from `src` whose endpoint `hostname` must be resolved.
    pub fn new(src: &Workload, hostname: Strng) -> Self {
        OnDemandDnsLabels {
            source_workload: or_unknown(workload_label(src)),
            source_canonical_service: or_unknown(&src.canonical_name),
            source_canonical_revision: or_unknown(&src.canonical_revision),
            source_workload_namespace: or_unknown(&src.namespace),
            source_principal: src
                .identity()
                .map_or_else(unknown, |i| Arc::from(i.to_string())),
            source_app: or_unknown(&src.canonical_name),
            source_version: or_unknown(&src.canonical_revision),
            source_cluster: or_unknown(&src.cluster_id),
            hostname: or_unknown(&hostname),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: String,
}

/// The families exported only in some setups, as ztunnel registers them: `workload_manager_*`
/// in shared mode only, the `istio_dns_*` families only when the DNS proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exports {
    /// `workload_manager_*` (shared mode).
    pub workload_manager: bool,
    /// `istio_dns_*` (`DNS_CAPTURE` not off).
    pub dns: bool,
}

impl Default for Exports {
    /// ztunnel's defaults: shared mode, DNS proxy on.
    fn default() -> Self {
        Exports {
            workload_manager: true,
            dns: true,
        }
    }
}

/// The data plane's and the process's families (traffic, proxies, tasks, failures); the
/// DNS proxy, the xDS client, the certificate store and CRL checking register their own.
///
/// As with ztunnel's, a series exists only once something was counted in it, and a label
/// family with no series is not written at all (prometheus-client skips it, HELP and TYPE
/// included): nothing at 0 ahead of use. Plain gauges and counters are always written.
pub struct Metrics {
    /// Connections opened.
    pub connections_opened: Family<TrafficLabels, Counter>,
    /// Connections closed.
    pub connections_closed: Family<TrafficLabels, Counter>,
    /// Connections that failed.
    pub connections_failed: Family<TrafficLabels, Counter>,
    /// Bytes received from the downstream side.
    pub received_bytes: Family<TrafficLabels, Counter>,
    /// Bytes sent to the downstream side.
    pub sent_bytes: Family<TrafficLabels, Counter>,
    /// Accepted downstream sockets open now: outbound (15001) as `source`, inbound (15008
    /// TLS connections, 15006) as `destination`. Each series is created by its first socket.
    sockets_open_family: Family<ReporterLabels, Gauge>,
    sockets_open: [std::sync::OnceLock<Gauge>; 2],
    /// Pod proxies running.
    pub active_proxies: Gauge,
    /// Pod proxies failed to start and awaiting retry.
    pub pending_proxies: Gauge,
    /// Pod proxies started.
    pub proxies_started: Counter,
    /// Pod proxies stopped.
    pub proxies_stopped: Counter,
    /// Accepts that failed because the process ran out of file descriptors.
    pub fd_exhausted: Counter,
    /// Background tasks that ended before shutdown, by task and how.
    task_exits: Family<TaskExitLabels, Counter>,
    /// Failed connections by stable reject reason and direction.
    pub failures: Family<FailureLabels, Counter>,
    /// Connections denied by policy (all reasons).
    pub policy_denials: Counter,
    /// Connections whose endpoint had to be resolved by hostname.
    pub on_demand_dns: Family<OnDemandDnsLabels, Counter>,
    /// Traffic label sets seen, for expiry.
    seen: Mutex<HashSet<TrafficLabels>>,
}

impl Metrics {
    /// The families, registered in `registry` (`workload_manager_*` only when `exports` says
    /// so); `istio_version` tags `istio_build`.
    pub fn new(registry: &mut Registry, istio_version: &str, exports: Exports) -> Self {
        // Families not exported are registered here, never encoded: their handles still
        // work for the code that counts into them.
        let mut unexported = Registry::default();
        let connections_opened = Family::default();
        let connections_closed = Family::default();
        let connections_failed = Family::default();
        let received_bytes = Family::default();
        let sent_bytes = Family::default();
        let on_demand_dns: Family<OnDemandDnsLabels, Counter> = Family::default();
        let sockets_open_family: Family<ReporterLabels, Gauge> = Family::default();
        {
            let istio = registry.sub_registry_with_prefix("istio");
            istio.register(
                "tcp_connections_opened",
                "Connections opened",
                connections_opened.clone(),
            );
            istio.register(
                "tcp_connections_closed",
                "Connections closed",
                connections_closed.clone(),
            );
            istio.register(
                "tcp_connections_failed",
                "Connections that failed (unstable)",
                connections_failed.clone(),
            );
            istio.register(
                "tcp_received_bytes",
                "Bytes received from the downstream peer",
                received_bytes.clone(),
            );
            istio.register(
                "tcp_sent_bytes",
                "Bytes sent to the downstream peer",
                sent_bytes.clone(),
            );
            istio.register(
                "tcp_sockets_open",
                "Accepted downstream sockets currently open (unstable)",
                sockets_open_family.clone(),
            );
            istio.register(
                "on_demand_dns",
                "Connections whose endpoint was resolved by hostname (unstable)",
                on_demand_dns.clone(),
            );
            let build: Family<BuildLabels, Gauge> = Family::default();
            build
                .get_or_create(&BuildLabels {
                    component: "ztunnel",
                    tag: istio_version.to_string(),
                })
                .set(1);
            istio.register("build", "Build information", build);
        }
        let active_proxies = Gauge::default();
        let pending_proxies = Gauge::default();
        let proxies_started = Counter::default();
        let proxies_stopped = Counter::default();
        {
            let wm = if exports.workload_manager {
                &mut *registry
            } else {
                &mut unexported
            }
            .sub_registry_with_prefix("workload_manager");
            wm.register(
                "active_proxy_count",
                "Pod proxies running (unstable)",
                active_proxies.clone(),
            );
            wm.register(
                "pending_proxy_count",
                "Pod proxies awaiting a retry (unstable)",
                pending_proxies.clone(),
            );
            wm.register(
                "proxies_started",
                "Pod proxies started (unstable)",
                proxies_started.clone(),
            );
            wm.register(
                "proxies_stopped",
                "Pod proxies stopped (unstable)",
                proxies_stopped.clone(),
            );
        }
        let task_exits: Family<TaskExitLabels, Counter> = Family::default();
        registry.register(
            "ztun_task_exits",
            "Background tasks that ended before shutdown (readiness fails after one)",
            task_exits.clone(),
        );
        let fd_exhausted = Counter::default();
        registry.register(
            "ztun_accept_fd_exhausted",
            "Accepts refused by the kernel for lack of file descriptors (EMFILE/ENFILE)",
            fd_exhausted.clone(),
        );
        let failures: Family<FailureLabels, Counter> = Family::default();
        registry.register(
            "ztun_connection_failures",
            "Failed or refused connections by stable reason",
            failures.clone(),
        );
        let policy_denials = Counter::default();
        registry.register(
            "ztun_policy_denials",
            "Connections denied by authorization policy",
            policy_denials.clone(),
        );
        Metrics {
            connections_opened,
            connections_closed,
            connections_failed,
            received_bytes,
            sent_bytes,
            sockets_open_family,
            sockets_open: Default::default(),
            active_proxies,
            pending_proxies,
            proxies_started,
            proxies_stopped,
            policy_denials,
            fd_exhausted,
            task_exits,
            failures,
            on_demand_dns,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Counts a background task that ended before shutdown (`how`: returned or panicked).
    pub fn task_died(&self, task: &'static str, how: &'static str) {
        self.task_exits
            .get_or_create(&TaskExitLabels { task, exit: how })
            .inc();
    }

    /// Counts an accepted downstream socket open until the returned guard drops.
    pub fn socket_opened(&self, reporter: Reporter) -> SocketOpen {
        let gauge = self.sockets_open[reporter as usize].get_or_init(|| {
            self.sockets_open_family
                .get_or_create(&ReporterLabels { reporter })
                .clone()
        });
        gauge.inc();
        SocketOpen(gauge.clone())
    }

    /// Counts a connection opened under `labels` (response flag `-`) and fetches the byte
    /// series it counts into while it runs, so that counting costs an atomic add, not a
    /// lookup. As in ztunnel, the byte series exist (at 0) from here, the closed one only
    /// once the connection closes.
    pub fn open(&self, labels: &TrafficLabels) -> Series {
        self.connections_opened.get_or_create(labels).inc();
        let series = Series {
            received: self.received_bytes.get_or_create(labels).clone(),
            sent: self.sent_bytes.get_or_create(labels).clone(),
        };
        self.remember(labels);
        series
    }

    /// Counts a connection closed under `labels` (a failed one's carry the failure's
    /// response flag), and, when `failed`, in the failed series too.
    pub fn close(&self, labels: &TrafficLabels, failed: bool) {
        self.connections_closed.get_or_create(labels).inc();
        if failed {
            self.connections_failed.get_or_create(labels).inc();
        }
        self.remember(labels);
    }

    /// Keeps `labels` in the set [`Metrics::expire`] walks.
    fn remember(&self, labels: &TrafficLabels) {
        let mut seen = self.seen.lock();
        if !seen.contains(labels) {
            seen.insert(labels.clone());
        }
    }

    /// The `(namespace, workload)` pairs the current connection series name as source or
    /// destination (`unknown` left out): what [`expire`](Self::expire) will ask about.
    pub fn series_workloads(&self) -> hashbrown::HashSet<(Arc<str>, Arc<str>)> {
        let seen = self.seen.lock();
        let mut named = hashbrown::HashSet::new();
        for l in seen.iter() {
            for (ns, w) in [
                (&l.source_workload_namespace, &l.source_workload),
                (&l.destination_workload_namespace, &l.destination_workload),
            ] {
                if &**w != "unknown" {
                    named.insert((ns.clone(), w.clone()));
                }
            }
        }
        named
    }

    /// Drops every traffic series naming a workload for which `live(namespace, name)` is false.
    pub fn expire(&self, live: impl Fn(&str, &str) -> bool) {
        let mut seen = self.seen.lock();
        let dead = |ns: &Arc<str>, w: &Arc<str>| &**w != "unknown" && !live(ns, w);
        seen.retain(|l| {
            let gone = dead(&l.source_workload_namespace, &l.source_workload)
                || dead(&l.destination_workload_namespace, &l.destination_workload);
            if gone {
                for f in [
                    &self.connections_opened,
                    &self.connections_closed,
                    &self.connections_failed,
                    &self.received_bytes,
                    &self.sent_bytes,
                ] {
                    f.remove(l);
                }
            }
            !gone
        });
    }
}

/// The Prometheus text exposition of `registry`: every family registered in it, and what its
/// collectors read at scrape time.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

mod process;
pub use process::{register_process, ProcessStats};

#[cfg(test)]
mod tests;
