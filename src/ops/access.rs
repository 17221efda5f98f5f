//! Access logs: one line per completed connection on tracing target `access`, with ztunnel's
//! field names so existing log pipelines keep working.
//!
//! The record is filled in at connection setup and emitted once on close. It also drives the
//! traffic metrics and the live connection table behind the admin API:
//! - [`AccessLog::meter`], called when the relay starts, counts the connection opened (labels
//!   built once) and gives the relay a [`Meter`], which adds each read to the byte series as
//!   it happens, so long-lived connections show their traffic while they run;
//! - [`AccessLog::established`] registers the connection in the live table;
//! - completion, or drop (a drained task), counts it closed and unregisters it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::metrics::{
    unknown, workload_label, LocalityLabels, MaybeLocality, Reporter, Series, TrafficLabels,
};
use crate::identity::Identity;

/// Direction of a connection relative to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Leaving the pod.
    Outbound,
    /// Entering the pod.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Who a connection endpoint is.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Socket address.
    pub addr: Option<SocketAddr>,
    /// Workload name.
    pub workload: Option<Arc<str>>,
    /// Namespace.
    pub namespace: Option<Arc<str>>,
    /// Proven (mTLS) identity.
    pub identity: Option<Identity>,
    /// The mesh state's record, once described: the source of the telemetry labels
    /// (`*_canonical_service`, `*_app`, `*_canonical_revision`, `*_version`, `*_cluster`).
    pub described: Option<Arc<crate::state::model::Workload>>,
}

impl Peer {
    /// Fills the workload fields from the mesh state's record.
    pub fn describe(&mut self, w: &Arc<crate::state::model::Workload>) {
        self.workload = non_empty(&w.name);
        self.namespace = non_empty(&w.namespace);
        self.described = Some(w.clone());
    }

    fn canonical_name(&self) -> Option<Arc<str>> {
        let w = self.described.as_ref()?;
        non_empty(&w.canonical_name).or_else(|| non_empty(&w.name))
    }

    fn canonical_revision(&self) -> Option<Arc<str>> {
        non_empty(&self.described.as_ref()?.canonical_revision)
    }

    fn cluster(&self) -> Option<Arc<str>> {
        non_empty(&self.described.as_ref()?.cluster_id)
    }

    /// The `*_workload` label: the described workload's controller name (its pod name when
    /// it has none), else the pod name known.
    fn workload_label(&self) -> Option<Arc<str>> {
        match &self.described {
            Some(w) => non_empty(workload_label(w)),
            None => self.workload.clone(),
        }
    }

    /// The `*_region` and `*_zone` labels.
    fn region_zone(&self) -> (Arc<str>, Arc<str>) {
        let part = |f: fn(&crate::state::model::Locality) -> &Arc<str>| {
            self.described
                .as_ref()
                .and_then(|w| non_empty(f(&w.locality)))
                .unwrap_or_else(unknown)
        };
        (part(|l| &l.region), part(|l| &l.zone))
    }
}

fn non_empty(s: &Arc<str>) -> Option<Arc<str>> {
    (!s.is_empty()).then(|| s.clone())
}

/// The destination service as telemetry names it: its hostname, and the namespace and name
/// of the Service (or ServiceEntry) resource itself, never parsed out of the hostname (a
/// ServiceEntry's hostname `api.example.com` belongs to, say, `shop/se-api`). Shares the
/// strings of the mesh state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// The hostname (`destination_service`, the access log's `dst.service`).
    pub hostname: Arc<str>,
    /// The resource's namespace (`destination_service_namespace`).
    pub namespace: Arc<str>,
    /// The resource's name (`destination_service_name`).
    pub name: Arc<str>,
}

impl From<&crate::state::model::Service> for ServiceRef {
    fn from(s: &crate::state::model::Service) -> Self {
        ServiceRef {
            hostname: s.hostname.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }
    }
}

/// A workload named by namespace and name; shown as `namespace/name`. Shares the strings of
/// the mesh state (no allocation per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl WorkloadRef {
    /// Whether this is `namespace/name`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        &*self.namespace == namespace && &*self.name == name
    }
}

impl serde::Serialize for WorkloadRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", self.namespace, self.name))
    }
}

/// The target a tunnel's CONNECT names: `ip:port`, or a service's `hostname:port` (double
/// HBONE through a network gateway). Shown and serialized as that string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HboneTarget {
    /// `ip:port`.
    Addr(SocketAddr),
    /// `hostname:port`.
    Authority(Arc<str>),
}

impl Display for HboneTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HboneTarget::Addr(a) => a.fmt(f),
            HboneTarget::Authority(a) => f.write_str(a),
        }
    }
}

impl serde::Serialize for HboneTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An established connection, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveConnection {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Client address.
    pub src: Option<SocketAddr>,
    /// Client identity, when proven.
    pub src_identity: Option<Identity>,
    /// Source workload (`namespace/name`), when known.
    pub src_workload: Option<WorkloadRef>,
    /// L4 next hop.
    pub dst: Option<SocketAddr>,
    /// CONNECT authority, for tunnels.
    pub hbone_target: Option<HboneTarget>,
    /// Destination identity, when proven.
    pub dst_identity: Option<Identity>,
    /// Destination workload (`namespace/name`), when known.
    pub dst_workload: Option<WorkloadRef>,
    /// When it was established (seconds since the epoch).
    pub since: u64,
}

/// A connection's log record.
///
/// Who and what the connection is ([`ConnectionInfo`], reached through `Deref`) is filled in
/// during setup and read at close; it lives in one heap allocation that the live table
/// shares once the connection is established, so an idle connection's task holds a pointer
/// to it, not the record, and its live-table entry is a pointer too (not a copy).
#[derive(Debug)]
pub struct AccessLog {
    /// Changed through `DerefMut`, which copies it if the live table already shares it: set
    /// the fields before [`AccessLog::established`] for the admin API to show them.
    info: Arc<ConnectionInfo>,
    started: Instant,
    /// Live-table id once established.
    live: Option<u64>,
    /// Once the relay has started.
    meter: Option<Meter>,
    completed: bool,
    /// Where the connection is counted and listed.
    telemetry: Arc<super::Telemetry>,
}

/// Who and what a connection is, as its access log and the live table report it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Direction.
    pub direction: Direction,
    /// The client side.
    pub src: Peer,
    /// The server side (`addr` = the L4 next hop).
    pub dst: Peer,
    /// The CONNECT `:authority`, for tunnelled connections.
    pub hbone_target: Option<HboneTarget>,
    /// Destination service.
    pub service: Option<ServiceRef>,
}

impl ConnectionInfo {
    /// The admin API's view of this connection, established at `since` (seconds since the
    /// epoch).
    pub(crate) fn live(&self, since: u64) -> LiveConnection {
        let workload = |p: &Peer| match (&p.namespace, &p.workload) {
            (Some(ns), Some(w)) => Some(WorkloadRef {
                namespace: ns.clone(),
                name: w.clone(),
            }),
            _ => None,
        };
        LiveConnection {
            direction: self.direction.as_str(),
            src: self.src.addr,
            src_identity: self.src.identity.clone(),
            src_workload: workload(&self.src),
            dst: self.dst.addr,
            hbone_target: self.hbone_target.clone(),
            dst_identity: self.dst.identity.clone(),
            dst_workload: workload(&self.dst),
            since,
        }
    }
}

impl std::ops::Deref for AccessLog {
    type Target = ConnectionInfo;

    fn deref(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl std::ops::DerefMut for AccessLog {
    fn deref_mut(&mut self) -> &mut ConnectionInfo {
        Arc::make_mut(&mut self.info)
    }
}

/// The byte counts of one running connection, shared by its relay and its record. Each count
/// goes to the connection's metric series at once.
#[derive(Debug, Clone)]
pub struct Meter(Arc<MeterInner>);

#[derive(Debug)]
struct MeterInner {
    /// Whether the pod-side socket is the client's (outbound) or the app's (inbound).
    client_side: bool,
    client_sent: AtomicU64,
    client_received: AtomicU64,
    series: Series,
}

impl Meter {
    /// A meter counting into no registered series, for relays outside a connection record.
    pub fn detached() -> Self {
        Meter::new(true, Series::detached())
    }

    fn new(client_side: bool, series: Series) -> Self {
        Meter(Arc::new(MeterInner {
            client_side,
            client_sent: AtomicU64::new(0),
            client_received: AtomicU64::new(0),
            series,
        }))
    }

    /// `n` bytes read from the pod-side socket and forwarded.
    pub fn from_pod(&self, n: u64) {
        if self.0.client_side {
            self.client_sent(n)
        } else {
            self.client_received(n)
        }
    }

    /// `n` bytes written to the pod-side socket.
    pub fn to_pod(&self, n: u64) {
        if self.0.client_side {
            self.client_received(n)
        } else {
            self.client_sent(n)
        }
    }

    /// `n` bytes sent by the client.
    pub fn client_sent(&self, n: u64) {
        self.0.client_sent.fetch_add(n, Ordering::Relaxed);
        self.0.series.client_sent(n);
    }

    /// `n` bytes received by the client.
    pub fn client_received(&self, n: u64) {
        self.0.client_received.fetch_add(n, Ordering::Relaxed);
        self.0.series.client_received(n);
    }

    /// Bytes (sent, received) by the client so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.0.client_sent.load(Ordering::Relaxed),
            self.0.client_received.load(Ordering::Relaxed),
        )
    }
}

impl AccessLog {
    /// Starts a record now, reporting to `telemetry`.
    pub fn new(direction: Direction, telemetry: Arc<super::Telemetry>) -> Self {
        AccessLog {
            info: Arc::new(ConnectionInfo {
                direction,
                src: Peer::default(),
                dst: Peer::default(),
                hbone_target: None,
                service: None,
            }),
            started: Instant::now(),
            live: None,
            meter: None,
            completed: false,
            telemetry,
        }
    }

    /// The connection's byte meter; the first call counts the connection opened, under the
    /// labels its record has by then. Call it when the relay starts, the peers known.
    pub fn meter(&mut self) -> Meter {
        if let Some(m) = &self.meter {
            return m.clone();
        }
        let series = self.telemetry.metrics.open(&self.labels(None));
        let m = Meter::new(self.direction == Direction::Outbound, series);
        self.meter = Some(m.clone());
        m
    }

    /// Marks the connection established: it appears in the admin API's live table until it
    /// completes, as its record says now (the table shares the record).
    pub fn established(&mut self) {
        if self.live.is_some() {
            return;
        }
        self.live = Some(self.telemetry.register(self.info.clone()));
    }

    /// Whether the connection went through an HBONE tunnel.
    fn tunnelled(&self) -> bool {
        self.hbone_target.is_some()
    }

    /// Istio's traffic labels for this connection.
    ///
    /// - `*_workload` is the workload's controller name ([`workload_label`]).
    /// - `source_principal` is the identity the source proves over mTLS: the peer's on
    ///   inbound, ours on an outbound tunnel; `unknown` on outbound plain TCP.
    /// - The locality labels are there only when a source or destination workload is known
    ///   (described from the mesh state, or the inbound peer's proven identity).
    pub fn labels(&self, failure: Option<&'static str>) -> TrafficLabels {
        let or_unknown = |v: &Option<Arc<str>>| v.clone().unwrap_or_else(unknown);
        let id = |v: &Option<Identity>| {
            v.as_ref()
                .map(|i| Arc::from(i.to_string()))
                .unwrap_or_else(unknown)
        };
        let mtls = self.src.identity.is_some() && self.dst.identity.is_some() && self.tunnelled()
            || self.direction == Direction::Inbound && self.src.identity.is_some();
        let src_proven = match self.direction {
            Direction::Inbound => self.src.identity.is_some(),
            Direction::Outbound => self.tunnelled(),
        };
        let locality = (self.src.described.is_some()
            || self.dst.described.is_some()
            || self.direction == Direction::Inbound && self.src.identity.is_some())
        .then(|| {
            let (source_region, source_zone) = self.src.region_zone();
            let (destination_region, destination_zone) = self.dst.region_zone();
            LocalityLabels {
                source_region,
                source_zone,
                destination_region,
                destination_zone,
            }
        });
        let service_part = |f: fn(&ServiceRef) -> &Arc<str>| {
            or_unknown(&self.service.as_ref().and_then(|s| non_empty(f(s))))
        };
        // ztunnel's `destination_principal` is the destination workload's identity whenever
        // the mesh state knows that workload, plain TCP included; else the proven one.
        let dst_principal = self
            .dst
            .described
            .as_ref()
            .and_then(|w| w.identity())
            .or_else(|| self.dst.identity.clone());
        let src_name = self.src.canonical_name();
        let src_revision = self.src.canonical_revision();
        let dst_name = self.dst.canonical_name();
        let dst_revision = self.dst.canonical_revision();
        TrafficLabels {
            reporter: match self.direction {
                Direction::Outbound => Reporter::Source,
                Direction::Inbound => Reporter::Destination,
            },
            source_workload: or_unknown(&self.src.workload_label()),
            source_canonical_service: or_unknown(&src_name),
            source_canonical_revision: or_unknown(&src_revision),
            source_workload_namespace: or_unknown(&self.src.namespace),
            source_principal: if src_proven {
                id(&self.src.identity)
            } else {
                unknown()
            },
            source_app: or_unknown(&src_name),
            source_version: or_unknown(&src_revision),
            source_cluster: or_unknown(&self.src.cluster()),
            destination_service: service_part(|s| &s.hostname),
            destination_service_namespace: service_part(|s| &s.namespace),
            destination_service_name: service_part(|s| &s.name),
            destination_workload: or_unknown(&self.dst.workload_label()),
            destination_canonical_service: or_unknown(&dst_name),
            destination_canonical_revision: or_unknown(&dst_revision),
            destination_workload_namespace: or_unknown(&self.dst.namespace),
            destination_principal: id(&dst_principal),
            destination_app: or_unknown(&dst_name),
            destination_version: or_unknown(&dst_revision),
            destination_cluster: or_unknown(&self.dst.cluster()),
            request_protocol: "tcp",
            response_flags: failure.unwrap_or("-"),
            connection_security_policy: if mtls { "mutual_tls" } else { "unknown" },
            locality: MaybeLocality(locality),
        }
    }

    /// Emits the record, with the bytes its meter counted (none if the relay never started).
    /// A failure is logged at error level with its reason.
    pub fn complete(&mut self, error: Option<&dyn Failure>) {
        self.completed = true;
        let telemetry = self.telemetry.clone();
        if let Some(id) = self.live.take() {
            telemetry.unregister(id);
        }
        // A connection that failed before its relay started is counted opened here.
        let meter = self.meter();
        let (sent, recv) = meter.totals();
        let flag = error.map(|e| e.response_flag());
        telemetry.metrics.close(&self.labels(flag), flag.is_some());
        if let Some(e) = error {
            let labels = super::metrics::FailureLabels {
                direction: self.direction.as_str(),
                reason: e.reason(),
            };
            telemetry.metrics.failures.get_or_create(&labels).inc();
            // Refused by authorization policy, at connect time or closed later by it.
            if e.response_flag() == "DENY" {
                telemetry.metrics.policy_denials.inc();
            }
        }
        let duration = format!("{}ms", self.started.elapsed().as_millis());
        let src_addr = self.src.addr.map(tracing::field::display);
        let dst_addr = self.dst.addr.map(tracing::field::display);
        let hbone_addr = self.hbone_target.as_ref().map(tracing::field::display);
        let src_id = self.src.identity.as_ref().map(tracing::field::display);
        let dst_id = self.dst.identity.as_ref().map(tracing::field::display);
        // Two call sites because tracing levels are static per event.
        match error {
            Some(e) => tracing::event!(
                target: "access",
                tracing::Level::ERROR,
                src.addr = src_addr,
                src.workload = self.src.workload.as_deref(),
                src.namespace = self.src.namespace.as_deref(),
                src.identity = src_id,
                dst.addr = dst_addr,
                dst.hbone_addr = hbone_addr,
                dst.service = self.service.as_ref().map(|s| &*s.hostname),
                dst.workload = self.dst.workload.as_deref(),
                dst.namespace = self.dst.namespace.as_deref(),
                dst.identity = dst_id,
                direction = self.direction.as_str(),
                bytes_sent = sent,
                bytes_recv = recv,
                duration = duration.as_str(),
                error = %e,
                reason = e.reason(),
                "connection complete"
            ),
            None => tracing::event!(
                target: "access",
                tracing::Level::INFO,
                src.addr = src_addr,
                src.workload = self.src.workload.as_deref(),
                src.namespace = self.src.namespace.as_deref(),
                src.identity = src_id,
                dst.addr = dst_addr,
                dst.hbone_addr = hbone_addr,
                dst.service = self.service.as_ref().map(|s| &*s.hostname),
                dst.workload = self.dst.workload.as_deref(),
                dst.namespace = self.dst.namespace.as_deref(),
                dst.identity = dst_id,
                direction = self.direction.as_str(),
                bytes_sent = sent,
                bytes_recv = recv,
                duration = duration.as_str(),
                "connection complete"
            ),
        }
    }
}

/// Why a connection failed, as the access log and metrics report it.
pub trait Failure: Display {
    /// Istio's `response_flags` label for the failure, one of ztunnel's values: `DENY`,
    /// `CONNECT` (the default), `H2_HANDSHAKE_FAILURE`, `NETWORK_POLICY`, `IDENTITY_ERROR`,
    /// `CERT_REVOKED` (ztunnel's `TLS_FAILURE`, for a TLS configuration that cannot be built,
    /// has no case in ztun).
    fn response_flag(&self) -> &'static str {
        "CONNECT"
    }

    /// A stable, distinct name for the reject path (`policy_denied`, `ip_mismatch`, ...):
    /// the `reason` label of `ztun_connection_failures_total` and the `reason` log field.
    fn reason(&self) -> &'static str {
        "other"
    }
}

impl Failure for &str {
    fn reason(&self) -> &'static str {
        "closed_by_drain"
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // A connection task dropped mid-flight (immediate drain) still closes its record.
        if !self.completed {
            self.complete(Some(&"connection closed by drain"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
workloads:
- uid: cluster1//Pod/shop/client-1
  name: client-1
  namespace: shop
  serviceAccount: client
  workloadIps: [10.0.1.5]
  workloadName: client
- uid: cluster1//Pod/shop/api-1
  name: api-1
  namespace: shop
  serviceAccount: api
  workloadIps: [10.0.2.7]
  workloadName: api
  protocol: TCP
services:
- name: se-api
  namespace: shop
  hostname: api.example.com
  vips: [/10.9.0.1]
  ports: {80: 8080}
"#;

    fn mesh() -> crate::control::local::LocalConfig {
        crate::control::local::parse(MESH).expect("test mesh")
    }

    fn workload(name: &str) -> Arc<crate::state::model::Workload> {
        let w = mesh().workloads.into_iter().find(|w| &*w.name == name);
        Arc::new(w.expect("workload in the mesh"))
    }

    /// Outbound plain TCP from client-1 to api-1 behind the ServiceEntry `shop/se-api`
    /// (`api.example.com`), as the outbound proxy records it: no proven identity.
    fn outbound_tcp(dst_known: bool) -> AccessLog {
        let mut log = AccessLog::new(Direction::Outbound, crate::ops::Telemetry::detached());
        log.completed = true;
        let client = workload("client-1");
        log.src.describe(&client);
        log.src.identity = client.identity();
        log.dst.addr = Some(SocketAddr::from(([10, 0, 2, 7], 8080)));
        if dst_known {
            log.dst.describe(&workload("api-1"));
            let services = mesh().services;
            log.service = services.first().map(ServiceRef::from);
        }
        log
    }

    /// ztunnel takes `destination_service_namespace`/`_name` from the Service resource, not
    /// from the hostname; `destination_service` stays the hostname.
    #[test]
    fn service_labels_name_the_service_resource_not_its_hostname() {
        let labels = outbound_tcp(true).labels(None);
        assert_eq!(&*labels.destination_service, "api.example.com");
        assert_eq!(&*labels.destination_service_namespace, "shop");
        assert_eq!(&*labels.destination_service_name, "se-api");
        let none = outbound_tcp(false).labels(None);
        assert_eq!(
            (
                &*none.destination_service,
                &*none.destination_service_namespace,
                &*none.destination_service_name
            ),
            ("unknown", "unknown", "unknown")
        );
    }

    /// ztunnel reports the destination workload's identity as `destination_principal`
    /// whenever the mesh state knows that workload, outbound plain TCP included (its
    /// `with_destination`); `unknown` for a destination it does not know (passthrough). The
    /// source proves nothing over plain TCP: `source_principal` stays `unknown`.
    #[test]
    fn outbound_plain_tcp_names_a_known_destinations_identity() {
        let known = outbound_tcp(true).labels(None);
        assert_eq!(
            &*known.destination_principal,
            "spiffe://cluster.local/ns/shop/sa/api"
        );
        assert_eq!(&*known.source_principal, "unknown");
        assert_eq!(known.connection_security_policy, "unknown");
        let passthrough = outbound_tcp(false).labels(None);
        assert_eq!(&*passthrough.destination_principal, "unknown");
    }

    /// The record an idle connection's task carries inline is a pointer to who and what the
    /// connection is plus its close-time state, not the description itself (which the live
    /// table shares): a few words, where the description alone is hundreds of bytes.
    #[test]
    fn the_record_keeps_the_description_out_of_line() {
        let record = std::mem::size_of::<AccessLog>();
        assert!(record <= 64, "access-log record {record} B");
        assert!(
            std::mem::size_of::<ConnectionInfo>() > 4 * record,
            "the description is small enough to keep inline"
        );
    }

    /// A failure with a chosen response flag.
    struct Flagged(&'static str);

    impl std::fmt::Display for Flagged {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Failure for Flagged {
        fn response_flag(&self) -> &'static str {
            self.0
        }
    }

    /// `ztun_policy_denials_total` counts the connections authorization policy refused or
    /// closed (response flag `DENY`), and no other failure.
    #[test]
    fn policy_denials_count_only_policy_refusals() {
        let telemetry = crate::ops::Telemetry::detached();
        for flag in ["DENY", "CONNECT", "DENY", "IDENTITY_ERROR"] {
            let mut log = AccessLog::new(Direction::Inbound, telemetry.clone());
            log.complete(Some(&Flagged(flag)));
        }
        assert_eq!(telemetry.metrics.policy_denials.get(), 2);
    }
}
