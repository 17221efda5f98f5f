use super::*;

/// The metrics, registered in a registry of their own.
fn metrics(exports: Exports) -> (Registry, Metrics) {
    let mut registry = Registry::default();
    let m = Metrics::new(&mut registry, "1.0", exports);
    (registry, m)
}

/// Whether `text` declares `family` (`# HELP` and `# TYPE`).
fn declares(text: &str, family: &str) -> bool {
    text.contains(&format!("# HELP {family} ")) && text.contains(&format!("# TYPE {family} "))
}

/// Sample lines of `family` (its name, then `{`, `_` or a space).
fn samples<'a>(text: &'a str, family: &'a str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with(['{', ' ']) || r.starts_with("_total"))
        })
        .collect()
}

/// A traffic series' labels, every one `unknown`.
fn all_unknown() -> TrafficLabels {
    TrafficLabels {
        reporter: Reporter::Source,
        source_workload: unknown(),
        source_canonical_service: unknown(),
        source_canonical_revision: unknown(),
        source_workload_namespace: unknown(),
        source_principal: unknown(),
        source_app: unknown(),
        source_version: unknown(),
        source_cluster: unknown(),
        destination_service: unknown(),
        destination_service_namespace: unknown(),
        destination_service_name: unknown(),
        destination_workload: unknown(),
        destination_canonical_service: unknown(),
        destination_canonical_revision: unknown(),
        destination_workload_namespace: unknown(),
        destination_principal: unknown(),
        destination_app: unknown(),
        destination_version: unknown(),
        destination_cluster: unknown(),
        request_protocol: "tcp",
        response_flags: "-",
        connection_security_policy: "unknown",
        locality: MaybeLocality(None),
    }
}

/// A fresh start, as ztunnel's /metrics shows it: prometheus-client writes nothing at
/// all (not even HELP/TYPE) for a label family with no series, and plain gauges and
/// counters (the workload manager's) at 0.
#[test]
fn a_fresh_start_writes_no_family_before_its_first_series() {
    let (registry, _m) = metrics(Exports::default());
    let text = encode(&registry);
    for family in [
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
        "istio_tcp_connections_failed",
        "istio_tcp_received_bytes",
        "istio_tcp_sent_bytes",
        "istio_tcp_sockets_open",
        "istio_on_demand_dns",
    ] {
        assert!(!text.contains(family), "{family} written:\n{text}");
    }
    for plain in [
        "workload_manager_active_proxy_count",
        "workload_manager_pending_proxy_count",
        "workload_manager_proxies_started",
        "workload_manager_proxies_stopped",
    ] {
        assert!(declares(&text, plain), "{plain}:\n{text}");
        assert_eq!(samples(&text, plain).len(), 1, "{plain}:\n{text}");
    }
}

/// A socket series appears with the first socket of its side and then stays.
#[test]
fn a_socket_series_appears_with_its_first_socket() {
    let (registry, m) = metrics(Exports::default());
    drop(m.socket_opened(Reporter::Destination));
    let text = encode(&registry);
    assert_eq!(
        samples(&text, "istio_tcp_sockets_open"),
        ["istio_tcp_sockets_open{reporter=\"destination\"} 0"]
    );
}

/// A connection's closed series appears when it closes, not when it opens; its byte
/// series from the open (ztunnel fetches those for the relay).
#[test]
fn the_closed_series_appears_at_close() {
    let (registry, m) = metrics(Exports::default());
    let labels = all_unknown();
    let _series = m.open(&labels);
    let text = encode(&registry);
    assert_eq!(samples(&text, "istio_tcp_connections_opened").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_sent_bytes").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_connections_closed").len(), 0);
    m.close(&labels, false);
    let text = encode(&registry);
    assert_eq!(samples(&text, "istio_tcp_connections_closed").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_connections_failed").len(), 0);
}

/// ztunnel registers `workload_manager_*` in shared mode only (the DNS families, only with
/// its DNS proxy on, are `app`'s choice: see its tests).
#[test]
fn workload_manager_families_follow_the_mode() {
    let (dedicated, m) = metrics(Exports {
        workload_manager: false,
        dns: true,
    });
    m.proxies_started.inc();
    let dedicated = encode(&dedicated);
    assert!(!dedicated.contains("workload_manager"), "{dedicated}");
    let (shared, _m) = metrics(Exports::default());
    let shared = encode(&shared);
    assert!(
        shared.contains("workload_manager_active_proxy_count 0"),
        "{shared}"
    );
}

/// Series that differ only in labels their hash leaves out (principals, revisions, locality)
/// are still series of their own.
#[test]
fn series_differing_only_in_unhashed_labels_stay_apart() {
    let (registry, m) = metrics(Exports::default());
    let a = all_unknown();
    let mut b = all_unknown();
    b.source_principal = "spiffe://cluster.local/ns/a/sa/one".into();
    let mut c = all_unknown();
    c.destination_canonical_revision = "v2".into();
    c.locality = MaybeLocality(Some(LocalityLabels {
        source_region: "r".into(),
        source_zone: unknown(),
        destination_region: unknown(),
        destination_zone: unknown(),
    }));
    for labels in [&a, &b, &b, &c, &c, &c] {
        m.close(labels, false);
    }
    let text = encode(&registry);
    let mut counts: Vec<&str> = samples(&text, "istio_tcp_connections_closed")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, ["1", "2", "3"], "{text}");
}
