//! Istio's DNS metrics: requests, forwarded requests, their failures and duration.
//!
//! Labels are bounded: the query type is one of a fixed set (anything else is `other`), and
//! the source is the client's canonical service and revision, not the pod.

use std::sync::Arc;

use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the upstream duration buckets, in seconds (0.5 ms … 5 s).
const DURATION_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The labels of every DNS series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DnsLabels {
    /// `A`, `AAAA`, … or `other`.
    pub request_query_type: &'static str,
    /// `udp` or `tcp`.
    pub request_protocol: &'static str,
    /// The client's canonical service, or `unknown`.
    pub source_canonical_service: Arc<str>,
    /// The client's canonical revision, or `unknown`.
    pub source_canonical_revision: Arc<str>,
}

type DurationFamily = Family<DnsLabels, Histogram, fn() -> Histogram>;

/// The DNS proxy's series, shared by every pod's server.
pub struct DnsMetrics {
    /// `istio_dns_requests_total`: queries received.
    pub requests: Family<DnsLabels, Counter>,
    /// `istio_dns_upstream_requests_total`: queries forwarded upstream.
    pub upstream_requests: Family<DnsLabels, Counter>,
    /// `istio_dns_upstream_failures_total`: forwarded queries no upstream answered.
    pub upstream_failures: Family<DnsLabels, Counter>,
    /// `istio_dns_upstream_request_duration_seconds`: time to an upstream's answer.
    pub upstream_duration: DurationFamily,
}

impl DnsMetrics {
    /// Creates the series and registers them in `registry` under Istio's names.
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "dns_requests",
            "DNS requests received by the DNS proxy",
            m.requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "DNS requests forwarded to an upstream resolver",
            m.upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "Forwarded DNS requests that no upstream resolver answered",
            m.upstream_failures.clone(),
        );
        istio.register(
            "dns_upstream_request_duration_seconds",
            "Time an upstream resolver took to answer, in seconds",
            m.upstream_duration.clone(),
        );
        m
    }
}

/// The bounded label value for a query type.
pub fn query_type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::MX => "MX",
        RecordType::NS => "NS",
        RecordType::PTR => "PTR",
        RecordType::SOA => "SOA",
        RecordType::SRV => "SRV",
        RecordType::TXT => "TXT",
        RecordType::CAA => "CAA",
        RecordType::HTTPS => "HTTPS",
        RecordType::SVCB => "SVCB",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}
