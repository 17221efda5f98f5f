//! What Istio's dashboards and ztunnel's own tests read from `:15020/metrics`, held as lists
//! and checked against ztun's exposition:
//! - in process (no root): one connection of each kind recorded through the access log, DNS
//!   and on-demand DNS counted, then the scrape text encoded as the stats server does;
//! - against a running ztun (root: a one-node namespace lab), idle, with the xDS client and
//!   CRL checking on, for the families written at scrape time outside the registry.
//!
//! Sources: Istio's `ztunnel`, `istio-mesh`, `istio-workload` and `istio-service` dashboards,
//! the ambient integration tests' L4 queries, and ztunnel's `test_stats_exist` expectations
//! (stable families never say "unstable" in their HELP, every other one does; `istio_build`
//! exists; `process_open_fds` and `process_max_fds` are one positive gauge sample each).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::rr::RecordType;
use prometheus_client::registry::Registry;
use ztun::authz::{Denial, Reason};
use ztun::dataplane::Error;
use ztun::dns::metrics::{query_type_label, DnsLabels, DnsMetrics};
use ztun::dns::Transport;
use ztun::ops::access::{AccessLog, Direction, Failure};
use ztun::ops::metrics::{OnDemandDnsLabels, Reporter};
use ztun::ops::Telemetry;
use ztun::state::model::Workload;

/// The families ztunnel treats as stable: their HELP must not say "unstable".
const STABLE: [&str; 13] = [
    "istio_build",
    "istio_tcp_connections_opened",
    "istio_tcp_connections_closed",
    "istio_tcp_received_bytes",
    "istio_tcp_sent_bytes",
    "process_max_fds",
    "process_open_fds",
    "tokio_num_workers",
    "tokio_global_queue_depth",
    "tokio_num_alive_tasks",
    "tokio_worker_park_count",
    "tokio_worker_park_unpark_count",
    "tokio_worker_total_busy_duration_seconds",
];

/// Labels the workload and service dashboards filter and group the byte series by.
const BYTES_LABELS: &[&str] = &[
    "reporter",
    "connection_security_policy",
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "source_cluster",
    "destination_cluster",
];

/// Labels of the ambient integration tests' L4 query (`buildL4Query`).
const L4_QUERY_LABELS: &[&str] = &[
    "reporter",
    "connection_security_policy",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_principal",
    "destination_version",
    "destination_workload",
    "destination_workload_namespace",
    "source_canonical_service",
    "source_canonical_revision",
    "source_principal",
    "source_version",
    "source_workload",
    "source_workload_namespace",
];

const LOCALITY_LABELS: &[&str] = &[
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
];

const ON_DEMAND_DNS_LABELS: &[&str] = &[
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "hostname",
];

const DNS_LABELS: &[&str] = &[
    "request_query_type",
    "request_protocol",
    "source_canonical_service",
    "source_canonical_revision",
];

/// Series the dashboards read that exist once traffic flowed: (sample name, labels used).
const TRAFFIC_SERIES: &[(&str, &[&str])] = &[
    // ztunnel dashboard "Connections" and "Resource Usage"; the L4 integration query.
    ("istio_tcp_connections_opened_total", L4_QUERY_LABELS),
    ("istio_tcp_connections_closed_total", &["reporter"]),
    // ztunnel "Bytes Transmitted", mesh "TCP Workloads", workload and service dashboards.
    ("istio_tcp_sent_bytes_total", BYTES_LABELS),
    ("istio_tcp_received_bytes_total", BYTES_LABELS),
    // ztunnel "Resource Usage → Open Sockets".
    ("istio_tcp_sockets_open", &["reporter"]),
    // ztunnel "DNS Request".
    ("istio_dns_requests_total", DNS_LABELS),
    // ztunnel "Ztunnel Versions", mesh dashboard.
    ("istio_build", &["component", "tag"]),
    // ztunnel "Workload Manager".
    ("workload_manager_active_proxy_count", &[]),
    ("workload_manager_pending_proxy_count", &[]),
    // ztunnel "Resource Usage".
    ("process_open_fds", &[]),
    // Parity with ztunnel's own expectations (not dashboards).
    ("istio_tcp_connections_failed_total", &["response_flags"]),
    ("istio_on_demand_dns_total", ON_DEMAND_DNS_LABELS),
    ("istio_dns_upstream_requests_total", DNS_LABELS),
    ("istio_dns_upstream_failures_total", DNS_LABELS),
    (
        "istio_dns_upstream_request_duration_seconds_bucket",
        DNS_LABELS,
    ),
];

const MESH: &str = r#"
workloads:
- uid: cluster1//Pod/shop/client-6d4f9-x2k8q
  name: client-6d4f9-x2k8q
  namespace: shop
  serviceAccount: client
  workloadIps: [10.0.1.5]
  workloadName: client
  canonicalName: client
  canonicalRevision: v1
  clusterId: cluster1
  locality: {region: eu-west1, zone: eu-west1-b}
- uid: cluster1//Pod/shop/server-7c8d5-p9z2m
  name: server-7c8d5-p9z2m
  namespace: shop
  serviceAccount: server
  workloadIps: [10.0.2.7]
  workloadName: server
  canonicalName: server
  canonicalRevision: v2
  clusterId: cluster1
"#;

/// One sample: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One family's metadata, from its `# HELP`, `# TYPE` and `# UNIT` lines.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    unit: Option<String>,
}

/// A parsed exposition.
struct Exposition {
    families: BTreeMap<String, Family>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let rest = parts.next().unwrap_or_default().to_string();
                let f = families.entry(name.to_string()).or_default();
                match what {
                    "HELP" => f.help = Some(rest),
                    "TYPE" => f.kind = Some(rest),
                    "UNIT" => f.unit = Some(rest),
                    _ => {}
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value: value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            });
        }
        families.remove("EOF");
        Exposition { families, samples }
    }

    /// The family a sample name belongs to (the longest declared family it extends).
    fn family_of(&self, sample: &str) -> Option<&str> {
        self.families
            .keys()
            .filter(|f| {
                sample == f.as_str()
                    || sample.strip_prefix(f.as_str()).is_some_and(|s| {
                        ["_total", "_bucket", "_sum", "_count", "_created"].contains(&s)
                    })
            })
            .max_by_key(|f| f.len())
            .map(String::as_str)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Missing series of `list`: no sample of the name carries every listed label.
    fn missing(&self, list: &[(&str, &[&str])]) -> Vec<String> {
        list.iter()
            .filter(|(name, labels)| {
                !self
                    .named(name)
                    .any(|s| labels.iter().all(|l| s.labels.contains_key(*l)))
            })
            .map(|(name, labels)| format!("{name}{labels:?}"))
            .collect()
    }

    /// Whether a sample of `name` has every `labels` pair.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.named(name).any(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while let Some((key, rest)) = s.split_once("=\"") {
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        s = &rest[end..];
    }
    out
}

/// ztunnel's `test_stats_exist` rules, plus: every sample belongs to a family with HELP and
/// TYPE. Returns the problems found.
fn stats_exist_problems(exp: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &exp.samples {
        match exp.family_of(&s.name).and_then(|f| exp.families.get(f)) {
            Some(f) if f.help.is_some() && f.kind.is_some() => {}
            _ => problems.push(format!("{}: no HELP/TYPE", s.name)),
        }
    }
    for (name, f) in &exp.families {
        let help = f.help.as_deref().unwrap_or_default();
        // ztun's own families are outside ztunnel's scheme.
        if name.starts_with("ztun_") {
            continue;
        }
        let stable = STABLE.contains(&name.as_str());
        if stable && help.contains("unstable") {
            problems.push(format!(
                "{name} is stable but its HELP says unstable: {help:?}"
            ));
        }
        if !stable && !help.contains("(unstable)") {
            problems.push(format!(
                "{name} is unstable but its HELP does not say so: {help:?}"
            ));
        }
    }
    if !exp.has("istio_build", &[("component", "ztunnel")]) {
        problems.push("no istio_build{component=\"ztunnel\"}".into());
    }
    for name in ["process_open_fds", "process_max_fds"] {
        let n: Vec<_> = exp.named(name).collect();
        let gauge = exp.families.get(name).and_then(|f| f.kind.as_deref()) == Some("gauge");
        if n.len() != 1 || !gauge || n[0].value <= 0.0 {
            problems.push(format!("{name}: want one positive gauge sample, got {n:?}"));
        }
    }
    problems
}

fn workload(mesh: &[Workload], name: &str) -> Arc<Workload> {
    Arc::new(
        mesh.iter()
            .find(|w| w.workload_name.as_ref() == name)
            .unwrap_or_else(|| panic!("no {name} in the mesh"))
            .clone(),
    )
}

/// One connection from `client` to `server` on `direction`'s side, failing with `error`.
fn connection(
    telemetry: &Arc<Telemetry>,
    direction: Direction,
    client: &Arc<Workload>,
    server: &Arc<Workload>,
    tunnel: bool,
    error: Option<Error>,
) {
    let mut log = AccessLog::new(direction, telemetry.clone());
    log.src.addr = Some(SocketAddr::from(([10, 0, 1, 5], 40000)));
    log.dst.addr = Some(SocketAddr::from(([10, 0, 2, 7], 8080)));
    match direction {
        // The outbound proxy knows its own pod; inbound, the source only by proven identity.
        Direction::Outbound => {
            log.src.describe(client);
            log.src.identity = client.identity();
        }
        Direction::Inbound => {
            if tunnel {
                log.src.identity = client.identity();
                log.src.describe(client);
            }
        }
    }
    log.dst.describe(server);
    log.service = Some(ztun::ops::access::ServiceRef {
        hostname: "server.shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        name: "server".into(),
    });
    if tunnel {
        log.hbone_target = log.dst.addr.map(ztun::ops::access::HboneTarget::Addr);
        log.dst.identity = server.identity();
    }
    if error.is_none() {
        let meter = log.meter();
        log.established();
        meter.from_pod(11);
        meter.to_pod(22);
    }
    log.complete(error.as_ref().map(|e| e as &dyn Failure));
}

/// The scrape text after one connection of each kind, DNS and on-demand DNS.
fn in_process_scrape() -> String {
    let mesh = ztun::control::local::parse(MESH)
        .expect("test mesh")
        .workloads;
    let client = workload(&mesh, "client");
    let server = workload(&mesh, "server");
    // One registry with the families of the data plane, the DNS proxy and the process, as the
    // composition root builds it.
    let mut registry = Registry::default();
    let exports = ztun::ops::metrics::Exports::default();
    let telemetry = Arc::new(Telemetry::new(&mut registry, "unknown", exports));
    let dns = DnsMetrics::register(&mut registry);
    let (workers, _threads) = ztun::workers::start(2, || {}).expect("data workers");
    ztun::ops::metrics::register_process(&mut registry, Some(workers));
    let _outbound_socket = telemetry.metrics.socket_opened(Reporter::Source);
    let _inbound_socket = telemetry.metrics.socket_opened(Reporter::Destination);

    // Succeeding: outbound HBONE, inbound HBONE, inbound passthrough, outbound plain TCP.
    connection(
        &telemetry,
        Direction::Outbound,
        &client,
        &server,
        true,
        None,
    );
    connection(&telemetry, Direction::Inbound, &client, &server, true, None);
    connection(
        &telemetry,
        Direction::Inbound,
        &client,
        &server,
        false,
        None,
    );
    connection(
        &telemetry,
        Direction::Outbound,
        &client,
        &server,
        false,
        None,
    );
    // Failing, one per response flag ztunnel sets.
    let identity = client.identity().expect("client identity");
    let failures = [
        Error::Denied(Denial {
            reason: Reason::NoAllowMatched,
            policy: None,
            rule: None,
        }),
        Error::CertRevoked,
        Error::Certificate(ztun::tls::FetchError::Unavailable {
            identity,
            reason: "CA unreachable".into(),
        }),
        Error::ConnectPeer(Arc::new(io::Error::from(io::ErrorKind::TimedOut))),
        Error::H2(Arc::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR))),
        Error::ConnectPeer(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
    ];
    for e in failures {
        connection(
            &telemetry,
            Direction::Outbound,
            &client,
            &server,
            true,
            Some(e),
        );
    }

    let labels = DnsLabels {
        request_query_type: query_type_label(RecordType::AAAA),
        request_protocol: Transport::Udp.label(),
        source_canonical_service: client.canonical_name.clone(),
        source_canonical_revision: client.canonical_revision.clone(),
    };
    dns.requests.get_or_create(&labels).inc();
    dns.upstream_requests.get_or_create(&labels).inc();
    dns.upstream_failures.get_or_create(&labels).inc();
    dns.upstream_duration.get_or_create(&labels).observe(0.002);
    telemetry
        .metrics
        .on_demand_dns
        .get_or_create(&OnDemandDnsLabels::new(
            &client,
            "backend.example.com".into(),
        ))
        .inc();

    ztun::ops::metrics::encode(&registry)
}

#[test]
fn in_process_scrape_has_every_series_the_dashboards_query() {
    let text = in_process_scrape();
    let exp = Exposition::parse(&text);

    let mut problems = exp.missing(TRAFFIC_SERIES);
    problems.extend(stats_exist_problems(&exp));

    // The dashboards split the byte series by reporter and by mTLS.
    for (reporter, policy) in [("source", "mutual_tls"), ("destination", "mutual_tls")] {
        let want = [
            ("reporter", reporter),
            ("connection_security_policy", policy),
            ("source_workload", "client"),
            ("destination_workload", "server"),
            ("source_cluster", "cluster1"),
        ];
        if !exp.has("istio_tcp_sent_bytes_total", &want) {
            problems.push(format!("no istio_tcp_sent_bytes_total{want:?}"));
        }
    }
    // Locality labels on every traffic series here (a workload is known on both sides).
    for s in exp
        .samples
        .iter()
        .filter(|s| s.name.starts_with("istio_tcp_connections"))
    {
        if !LOCALITY_LABELS.iter().all(|l| s.labels.contains_key(*l)) {
            problems.push(format!("{}{:?}: no locality labels", s.name, s.labels));
        }
    }
    if !exp.has(
        "istio_tcp_connections_opened_total",
        &[
            ("source_region", "eu-west1"),
            ("source_zone", "eu-west1-b"),
            ("destination_region", "unknown"),
            ("destination_zone", "unknown"),
        ],
    ) {
        problems.push("locality values are not the workloads'".into());
    }
    // Outbound plain TCP proves no source identity.
    if !exp.has(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "unknown"),
            ("source_principal", "unknown"),
        ],
    ) {
        problems.push("outbound plain TCP has a source_principal".into());
    }
    // ztunnel's response flags, each in the failed series.
    for flag in [
        "DENY",
        "CERT_REVOKED",
        "IDENTITY_ERROR",
        "NETWORK_POLICY",
        "H2_HANDSHAKE_FAILURE",
        "CONNECT",
    ] {
        if !exp.has(
            "istio_tcp_connections_failed_total",
            &[("response_flags", flag)],
        ) {
            problems.push(format!("no failed series with response_flags={flag}"));
        }
    }
    // DNS: ztunnel's lowercase labels, buckets and unit.
    if !exp.has(
        "istio_dns_requests_total",
        &[("request_query_type", "aaaa"), ("request_protocol", "udp")],
    ) {
        problems.push("DNS labels are not lowercase".into());
    }
    let buckets: BTreeSet<String> = exp
        .named("istio_dns_upstream_request_duration_seconds_bucket")
        .filter_map(|s| s.labels.get("le").cloned())
        .collect();
    let want: BTreeSet<String> = ["0.0005", "0.001", "0.01", "0.1", "1.0", "5.0", "+Inf"]
        .map(String::from)
        .into();
    if buckets != want {
        problems.push(format!("DNS buckets {buckets:?}, want {want:?}"));
    }
    if exp
        .families
        .get("istio_dns_upstream_request_duration_seconds")
        .and_then(|f| f.unit.as_deref())
        != Some("seconds")
    {
        problems.push("no # UNIT for the DNS duration".into());
    }
    if !exp.has(
        "istio_on_demand_dns_total",
        &[
            ("source_workload", "client"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/client",
            ),
            ("source_cluster", "cluster1"),
            ("hostname", "backend.example.com"),
        ],
    ) {
        problems.push("istio_on_demand_dns_total lacks the source's labels".into());
    }
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
}

/// Against a running ztun: needs the `testing` feature (the namespace lab) and root.
#[cfg(feature = "testing")]
mod running {
    use std::time::Duration;

    use super::*;

    /// Series a running, idle ztun exports (xDS client configured but its server absent,
    /// CRLs checked).
    const IDLE_SERIES: &[(&str, &[&str])] = &[
        ("istio_build", &["component", "tag"]),
        // ztunnel "XDS Connections": once the first connection attempt failed.
        ("istio_xds_connection_terminations_total", &["reason"]),
        // ztun's own xDS counters, exported next to Istio's.
        ("ztun_xds_rejected_resources_total", &[]),
        ("ztun_xds_unknown_enum_values_total", &[]),
        ("workload_manager_active_proxy_count", &[]),
        ("workload_manager_pending_proxy_count", &[]),
        ("process_open_fds", &[]),
        ("process_max_fds", &[]),
        ("tokio_num_workers", &[]),
        ("tokio_global_queue_depth", &[]),
        ("tokio_num_alive_tasks", &[]),
        ("tokio_worker_park_count_total", &["worker"]),
    ];

    /// Families ztunnel does not write at all until they have a series (prometheus-client
    /// skips an empty family, HELP and TYPE included): no message arrived, no socket was
    /// accepted, no connection, no DNS query, no revoked peer.
    const ABSENT_WHEN_IDLE: &[&str] = &[
        "istio_xds_message",
        "istio_xds_message_bytes",
        "istio_tcp_sockets_open",
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
        "istio_tcp_connections_failed",
        "istio_tcp_received_bytes",
        "istio_tcp_sent_bytes",
        "istio_on_demand_dns",
        "istio_dns_requests",
        "istio_dns_upstream_requests",
        "istio_dns_upstream_failures",
        "istio_dns_upstream_request_duration_seconds",
        "istio_crl_policy_rejections",
        "istio_crl_untracked_connections",
    ];

    /// Fails loudly (never skips) when not root: the lab needs network namespaces.
    fn require_root() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        assert!(root, "this test needs root (a network namespace lab)");
    }

    /// `GET path` on `addr` from inside `ns` with `headers`; the status line and headers
    /// (lowercased) and the raw body. Refuses a chunked body.
    fn get_raw(
        ns: &ztun::testkit::lab::Netns,
        addr: SocketAddr,
        path: &str,
        headers: &str,
    ) -> anyhow::Result<(String, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
        ns.block_on(async move {
            let wait = Duration::from_secs(30);
            let mut s = ztun::testkit::lab::connect(addr, wait).await?;
            s.write_all(req.as_bytes()).await?;
            let mut raw = Vec::new();
            tokio::time::timeout(wait, s.read_to_end(&mut raw)).await??;
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or_else(|| anyhow::anyhow!("no HTTP head in {raw:?}"))?;
            let head = String::from_utf8(raw[..split].to_vec())?.to_ascii_lowercase();
            anyhow::ensure!(head.starts_with("http/1.1 200"), "{head}");
            anyhow::ensure!(
                !head.contains("transfer-encoding: chunked"),
                "chunked body: {head}"
            );
            Ok((head, raw[split + 4..].to_vec()))
        })
    }

    /// `GET path` on `addr` from inside `ns`; the body.
    fn get(ns: &ztun::testkit::lab::Netns, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let (_, body) = get_raw(ns, addr, path, "")?;
        Ok(String::from_utf8(body)?)
    }

    #[test]
    fn a_running_ztun_exports_what_ztunnel_tests_and_dashboards_expect() {
        require_root();
        let lab = ztun::testkit::lab::Lab::builder("dashboards")
            .node("n1")
            .build()
            .expect("building the lab");
        let ca = ztun::testkit::certs::write_ca_dir(&lab.dir().join("ca")).expect("CA");
        let crl = lab.dir().join("crl.pem");
        std::fs::write(&crl, "").expect("empty CRL file");
        let root = ca.root_cert.to_string_lossy().into_owned();
        let ca_dir = ca.dir.to_string_lossy().into_owned();
        let crl = crl.to_string_lossy().into_owned();
        // An xDS server that is not there: the client keeps retrying, its families are written.
        let ztun = lab
            .spawn_ztun(
                "n1",
                &[
                    ("XDS_ADDRESS", "https://127.0.0.1:1"),
                    ("XDS_ROOT_CA", root.as_str()),
                    ("LOCAL_CA_DIR", ca_dir.as_str()),
                    ("CRL_PATH", crl.as_str()),
                    ("ISTIO_META_ISTIO_VERSION", "1.99.0"),
                ],
            )
            .expect("spawning ztun");
        ztun.wait_for_log("operational endpoints up", Duration::from_secs(60))
            .expect("ztun serves :15020");
        // The first failed connection to the absent xDS server is counted; wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let text = loop {
            let text = get(
                lab.node("n1").netns(),
                SocketAddr::from(([127, 0, 0, 1], 15020)),
                "/metrics",
            )
            .expect("scraping :15020/metrics");
            if text.contains("istio_xds_connection_terminations_total{")
                || std::time::Instant::now() > deadline
            {
                break text;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let exp = Exposition::parse(&text);
        let mut problems = exp.missing(IDLE_SERIES);
        for family in ABSENT_WHEN_IDLE {
            let declared = exp.families.contains_key(*family);
            let sampled = exp
                .samples
                .iter()
                .any(|s| exp.family_of(&s.name) == Some(*family));
            if declared || sampled {
                problems.push(format!("{family} written before its first series"));
            }
        }
        problems.extend(stats_exist_problems(&exp));
        if !exp.has(
            "istio_build",
            &[("component", "ztunnel"), ("tag", "1.99.0")],
        ) {
            problems.push("istio_build is not tagged with ISTIO_META_ISTIO_VERSION".into());
        }
        assert!(problems.is_empty(), "{problems:#?}\n{text}");

        // What Prometheus sends: OpenMetrics asked for (plain text otherwise), gzip accepted.
        let stats = SocketAddr::from(([127, 0, 0, 1], 15020));
        let (head, _) =
            get_raw(lab.node("n1").netns(), stats, "/metrics", "").expect("plain scrape");
        assert!(
            head.contains("content-type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert!(!head.contains("content-encoding"), "{head}");
        let prometheus = "Accept: application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n";
        let (head, gz) = get_raw(
            lab.node("n1").netns(),
            stats,
            "/stats/prometheus",
            prometheus,
        )
        .expect("gzip scrape");
        assert!(
            head.contains("content-type: application/openmetrics-text;charset=utf-8;version=1.0.0"),
            "{head}"
        );
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain)
            .expect("a gzip body");
        assert!(plain.ends_with("# EOF\n"), "{plain}");
        assert!(Exposition::parse(&plain).has("istio_build", &[("tag", "1.99.0")]));
    }
}
