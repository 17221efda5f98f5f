use super::*;

fn scrape(m: &Metrics) -> String {
    m.encode(&ProcessStats::default(), "")
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

/// A fresh start, as ztunnel's /metrics shows it: prometheus-client writes nothing at
/// all (not even HELP/TYPE) for a label family with no series, and plain gauges and
/// counters (the workload manager's) at 0.
#[test]
fn a_fresh_start_writes_no_family_before_its_first_series() {
    let m = Metrics::new("1.0", Exports::default());
    let text = scrape(&m);
    for family in [
        "istio_tcp_connections_opened",
        "istio_tcp_connections_closed",
        "istio_tcp_connections_failed",
        "istio_tcp_received_bytes",
        "istio_tcp_sent_bytes",
        "istio_tcp_sockets_open",
        "istio_on_demand_dns",
        "istio_dns_requests",
        "istio_dns_upstream_requests",
        "istio_dns_upstream_failures",
        "istio_dns_upstream_request_duration_seconds",
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
    let m = Metrics::new("1.0", Exports::default());
    drop(m.socket_opened(Reporter::Destination));
    let text = scrape(&m);
    assert_eq!(
        samples(&text, "istio_tcp_sockets_open"),
        ["istio_tcp_sockets_open{reporter=\"destination\"} 0"]
    );
}

/// A connection's closed series appears when it closes, not when it opens; its byte
/// series from the open (ztunnel fetches those for the relay).
#[test]
fn the_closed_series_appears_at_close() {
    let m = Metrics::new("1.0", Exports::default());
    let labels = TrafficLabels {
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
    };
    let _series = m.open(&labels);
    let text = scrape(&m);
    assert_eq!(samples(&text, "istio_tcp_connections_opened").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_sent_bytes").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_connections_closed").len(), 0);
    m.close(&labels, false);
    let text = scrape(&m);
    assert_eq!(samples(&text, "istio_tcp_connections_closed").len(), 1);
    assert_eq!(samples(&text, "istio_tcp_connections_failed").len(), 0);
}

/// ztunnel registers `workload_manager_*` in shared mode only and the DNS families only
/// with its DNS proxy on.
#[test]
fn optional_families_follow_the_mode_and_the_dns_proxy() {
    let dns_labels = super::super::dns_metrics::DnsLabels {
        request_query_type: "a",
        request_protocol: "udp",
        source_canonical_service: unknown(),
        source_canonical_revision: unknown(),
    };
    let dedicated = Metrics::new(
        "1.0",
        Exports {
            workload_manager: false,
            dns: true,
        },
    );
    dedicated.dns.requests.get_or_create(&dns_labels).inc();
    let dedicated = scrape(&dedicated);
    assert!(!dedicated.contains("workload_manager"), "{dedicated}");
    assert!(declares(&dedicated, "istio_dns_requests"), "{dedicated}");
    let no_dns = Metrics::new(
        "1.0",
        Exports {
            workload_manager: true,
            dns: false,
        },
    );
    no_dns.dns.requests.get_or_create(&dns_labels).inc();
    let no_dns = scrape(&no_dns);
    assert!(!no_dns.contains("istio_dns_"), "{no_dns}");
    assert!(no_dns.contains("workload_manager_active_proxy_count 0"));
}
