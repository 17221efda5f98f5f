//! The composition root's tests: task deaths, and the metrics registry as `run_control`
//! builds it.

use super::*;

/// A background task that dies is counted and keeps the process unready from then on.
#[tokio::test]
async fn a_dead_task_fails_readiness_and_is_counted() {
    let mut registry = Registry::default();
    let exports = crate::ops::metrics::Exports::default();
    let telemetry = Telemetry::new(&mut registry, "test", exports);
    let readiness = Readiness::new(Telemetry::detached());
    let mut tasks = Tasks::new();
    tasks.spawn("doomed", async { panic!("lost the stream") });
    let (name, exit) = tasks.next_exit().await.expect("an exit");
    task_died(&readiness, &telemetry, name, &exit);
    assert_eq!(readiness.pending(), ["task doomed (panicked)"]);
    let scrape = crate::ops::metrics::encode(&registry);
    assert!(
        scrape.contains("ztun_task_exits_total{task=\"doomed\",exit=\"panicked\"} 1"),
        "{scrape}"
    );
}

/// ztunnel registers the DNS families only with its DNS proxy on; counting works either way.
#[test]
fn dns_families_are_exported_only_with_the_dns_proxy() {
    let labels = crate::dns::metrics::DnsLabels {
        request_query_type: "a",
        request_protocol: "udp",
        source_canonical_service: "c".into(),
        source_canonical_revision: "r".into(),
    };
    for on in [true, false] {
        let mut registry = Registry::default();
        let exports = crate::ops::metrics::Exports {
            workload_manager: true,
            dns: on,
        };
        let dns = dns_metrics(&mut registry, exports);
        dns.requests.get_or_create(&labels).inc();
        let scrape = crate::ops::metrics::encode(&registry);
        assert_eq!(scrape.contains("istio_dns_requests_total"), on, "{scrape}");
    }
}

/// ztunnel's xDS and CRL families (prometheus-client families) on a fresh start: not
/// written at all; a family appears with its first series. The bytes family carries
/// its UNIT.
#[test]
fn xds_and_crl_families_appear_with_their_first_series() {
    let mut registry = Registry::default();
    let m = xds::XdsMetrics::new(&mut registry);
    let crl = tempfile::NamedTempFile::new().expect("temp file");
    let revocation = Revocation::load(crl.path()).expect("empty CRL file");
    revocation.register_metrics(&mut registry);
    Revocation::disabled().register_metrics(&mut registry);
    let out = crate::ops::metrics::encode(&registry);
    assert!(!out.contains("istio_"), "{out}");
    assert!(out.contains("ztun_xds_rejected_resources_total 0"), "{out}");
    assert!(
        out.contains("ztun_crl_reloads_total{result=\"ok\"} 0"),
        "{out}"
    );

    m.record_message(xds::ResourceType::Address, 0);
    m.record_termination(xds::TerminationReason::Reconnect);
    let out = crate::ops::metrics::encode(&registry);
    let url = xds::ResourceType::Address.type_url();
    for line in [
        format!("istio_xds_message_total{{url=\"{url}\"}} 1"),
        "# UNIT istio_xds_message_bytes bytes".to_string(),
        format!("istio_xds_message_bytes_total{{url=\"{url}\"}} 0"),
        "istio_xds_connection_terminations_total{reason=\"Reconnect\"} 1".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
    }
    let authorization = xds::ResourceType::Authorization.type_url();
    assert!(!out.contains(authorization), "{out}");
    assert!(!out.contains("reason=\"Error\""), "{out}");
}

/// Every family a component counts into reaches the one registry the stats server
/// encodes: each component registers its families in a registry built as `run_control`
/// builds it, each metric is counted once through its component's API, and the scrape
/// must hold exactly the expected families, each with a sample. (The one family left out,
/// `istio_crl_policy_rejections`, needs a revoked peer's handshake: `tls::crl`'s tests
/// count one and read it from a registry the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_a_component_counts_is_exported() {
    use crate::ops::access::{AccessLog, Direction};
    use crate::ops::metrics::{OnDemandDnsLabels, Reporter};
    use crate::tls::CertSource;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut registry = Registry::default();
    let exports = crate::ops::metrics::Exports::default();
    let telemetry = Arc::new(Telemetry::new(&mut registry, "test", exports));
    let dns = crate::dns::metrics::DnsMetrics::register(&mut registry);
    crate::ops::metrics::register_process(&mut registry, Some(crate::workers::Workers::current()));
    let (_writer, reader) = state::new();
    crate::authz::metrics::register_metrics(
        &mut registry,
        reader,
        crate::config::HttpOnlyDeny::Ignore,
    );
    let xds = xds::XdsMetrics::new(&mut registry);
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, "").expect("CRL file");
    let revocation = Revocation::load(&crl).expect("empty CRL");
    revocation.register_metrics(&mut registry);
    let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).expect("CA");
    let store = CertStore::spawn(Arc::new(ca), StoreConfig::default());
    store.register_metrics(&mut registry);

    // The data plane: one connection that relayed bytes, one that failed.
    let _socket = telemetry.metrics.socket_opened(Reporter::Source);
    let mut ok = AccessLog::new(Direction::Outbound, telemetry.clone());
    let meter = ok.meter();
    meter.from_pod(1);
    meter.to_pod(1);
    ok.complete(None);
    let mut failed = AccessLog::new(Direction::Outbound, telemetry.clone());
    failed.complete(Some(&"refused"));
    // One refused by policy (`ztun_policy_denials`).
    let mut denied = AccessLog::new(Direction::Inbound, telemetry.clone());
    let denial = crate::authz::Denial {
        reason: crate::authz::Reason::DenyMatched,
        policy: None,
        rule: None,
    };
    denied.complete(Some(&crate::dataplane::Error::Denied(denial)));
    let src = crate::state::model::Workload::default();
    telemetry
        .metrics
        .on_demand_dns
        .get_or_create(&OnDemandDnsLabels::new(&src, "db.example".into()))
        .inc();
    telemetry.note_fd_exhausted();
    // The process: a task that died, pods the CNI handed over.
    let readiness = Readiness::new(telemetry.clone());
    task_died(&readiness, &telemetry, "doomed", &Exit::Returned);
    let observer = OpsObserver {
        readiness,
        pods: WorkloadStates::default(),
        telemetry: telemetry.clone(),
    };
    let pod = Pod {
        uid: "u1".into(),
        name: "p".into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    };
    zds::ZdsObserver::pod_started(&observer, &pod);
    zds::ZdsObserver::pending(&observer, 1);
    zds::ZdsObserver::pod_stopped(&observer, &pod);
    // The DNS proxy.
    let labels = crate::dns::metrics::DnsLabels {
        request_query_type: "a",
        request_protocol: "udp",
        source_canonical_service: "c".into(),
        source_canonical_revision: "r".into(),
    };
    dns.requests.get_or_create(&labels).inc();
    dns.upstream_requests.get_or_create(&labels).inc();
    dns.upstream_failures.get_or_create(&labels).inc();
    dns.upstream_duration.get_or_create(&labels).observe(0.01);
    // The xDS client.
    xds.record_termination(xds::TerminationReason::Error);
    xds.record_message(xds::ResourceType::Address, 10);
    xds.record_rejected(1);
    xds.record_unknown_enums(1);
    // The certificate store: one certificate held.
    let id: crate::identity::Identity = "spiffe://cluster.local/ns/ns/sa/sa".parse().unwrap();
    store.fetch(&id).await.expect("certificate");

    let scrape = crate::ops::metrics::encode(&registry);
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let expected: std::collections::BTreeSet<&str> = [
        "istio_build",
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
        "istio_tcp_connections_failed",
        "istio_tcp_received_bytes",
        "istio_tcp_sent_bytes",
        "istio_tcp_sockets_open",
        "istio_on_demand_dns",
        "workload_manager_active_proxy_count",
        "workload_manager_pending_proxy_count",
        "workload_manager_proxies_started",
        "workload_manager_proxies_stopped",
        "ztun_task_exits",
        "ztun_accept_fd_exhausted",
        "ztun_connection_failures",
        "ztun_policy_denials",
        "istio_dns_requests",
        "istio_dns_upstream_requests",
        "istio_dns_upstream_failures",
        "istio_dns_upstream_request_duration_seconds",
        "process_open_fds",
        "process_max_fds",
        "tokio_num_workers",
        "tokio_num_alive_tasks",
        "tokio_global_queue_depth",
        "tokio_worker_total_busy_duration_seconds",
        "tokio_worker_park_count",
        "tokio_worker_park_unpark_count",
        "ztun_worker_alive_tasks",
        "ztun_authorization_policies_with_unmatchable_rules",
        "istio_xds_connection_terminations",
        "istio_xds_message",
        "istio_xds_message_bytes",
        "ztun_xds_rejected_resources",
        "ztun_xds_unknown_enum_values",
        "ztun_crl_reloads",
        "ztun_crls",
        "ztun_crl_tracked_connections",
        "ztun_workload_certificates",
        "ztun_workload_certificate_earliest_expiry_timestamp_seconds",
    ]
    .into();
    assert_eq!(exported, expected, "{scrape}");
    for family in &expected {
        let sampled = scrape
            .lines()
            .any(|l| !l.starts_with('#') && l.starts_with(family));
        assert!(sampled, "no sample of {family}\n{scrape}");
    }
    // Every counter counted above shows it: a counter family whose samples are all 0 was
    // registered but not reached by its component's API. (The runtime's and the CRL
    // reload counters count what the process did, not this test.)
    let counters = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|f| !f.starts_with("tokio_") && *f != "ztun_crl_reloads");
    for family in counters {
        let counted = scrape.lines().any(|l| {
            let Some(rest) = l.strip_prefix(family) else {
                return false;
            };
            rest.starts_with(['{', ' ', '_']) && l.rsplit(' ').next().is_some_and(|v| v != "0")
        });
        assert!(counted, "{family} registered but never counted\n{scrape}");
    }
}

/// Metric series expiry passes over the workloads only after a workload left the mesh, or
/// when a series names a workload the last pass did not find alive; not for a generation that
/// only adds or updates workloads.
#[test]
fn metric_expiry_passes_over_the_mesh_only_when_a_workload_left_or_a_series_is_new() {
    use crate::testkit::fixtures::{pod, workload};
    let (writer, _reader) = state::new();
    let mut b = writer.builder();
    b.insert_workload(pod("ns", "a", "sa", [10, 0, 0, 1]));
    b.insert_workload(pod("ns", "b", "sa", [10, 0, 0, 2]));
    let snap = writer.publish(b);
    let pairs = |names: &[&str]| -> NamedPairs {
        names
            .iter()
            .map(|n| (Arc::<str>::from("ns"), Arc::<str>::from(*n)))
            .collect()
    };
    let mut check = ExpiryCheck::default();
    assert!(
        !check.due(&snap, &pairs(&[])),
        "no series, nothing to expire"
    );
    assert!(check.due(&snap, &pairs(&["a", "b"])), "the first pass");
    check.passed(&snap, pairs(&["a", "b"]));
    assert!(!check.due(&snap, &pairs(&["a", "b"])));
    assert!(!check.due(&snap, &pairs(&["a"])), "fewer series");

    // A workload added, one updated under the same names: nobody left.
    let mut b = writer.builder();
    b.insert_workload(pod("ns", "c", "sa", [10, 0, 0, 3]));
    b.insert_workload(pod("ns", "a", "other-sa", [10, 0, 0, 9]));
    let snap = writer.publish(b);
    assert!(!check.due(&snap, &pairs(&["a", "b"])));
    // A series naming c, recorded after the pass.
    assert!(check.due(&snap, &pairs(&["a", "b", "c"])));
    check.passed(&snap, pairs(&["a", "b", "c"]));

    // a renamed (same uid, another workload name): a left.
    let mut b = writer.builder();
    let mut renamed = workload("ns", "a").ip([10, 0, 0, 9]).build();
    renamed.workload_name = "a-deploy".into();
    b.insert_workload(renamed);
    let snap = writer.publish(b);
    assert!(check.due(&snap, &pairs(&["a", "b", "c"])));
    check.passed(&snap, pairs(&["a", "b", "c"]));

    // b removed.
    let mut b = writer.builder();
    assert!(b.remove_address("Kubernetes//Pod/ns/b"));
    let snap = writer.publish(b);
    assert!(check.due(&snap, &pairs(&["a", "b", "c"])));
    check.passed(&snap, pairs(&["a", "c"]));
    assert!(!check.due(&snap, &pairs(&["a", "c"])));

    // Everything cleared (a reload of the whole mesh).
    let mut b = writer.builder();
    b.clear();
    let snap = writer.publish(b);
    assert!(check.due(&snap, &pairs(&["a", "c"])));
    check.passed(&snap, pairs(&[]));

    // A builder not started from the current state (it holds none of its workloads).
    let mut b = writer.builder();
    b.insert_workload(pod("ns", "a", "sa", [10, 0, 0, 1]));
    let snap = writer.publish(b);
    assert!(check.due(&snap, &pairs(&["a"])), "a series naming a");
    check.passed(&snap, pairs(&["a"]));
    let before = snap.departures();
    let snap = writer.publish(state::SnapshotBuilder::default());
    assert!(snap.departures() > before);
    assert!(check.due(&snap, &pairs(&["a"])));
}
