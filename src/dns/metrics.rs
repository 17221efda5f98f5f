//! Istio's DNS metrics: requests, forwarded requests, their failures and duration, registered
//! by the DNS proxy in the registry it is given.
//!
//! Labels are ztunnel's: the query type lowercased (`a`, `aaaa`, `srv`, ...; `unknown` for a
//! type without a name or a query that does not parse), the protocol lowercased, and the
//! source as the client's canonical service and revision, not the pod. Every family is
//! "(unstable)" in its HELP, as in ztunnel.

use std::sync::Arc;

use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the upstream duration buckets, in seconds: ztunnel's (0.5 ms … 5 s).
pub const DURATION_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];

/// The `request_query_type` of a query that does not parse.
pub const UNKNOWN_QUERY_TYPE: &str = "unknown";

/// The labels of every DNS series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DnsLabels {
    /// `a`, `aaaa`, … or `unknown`.
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
            "DNS requests received by the DNS proxy (unstable)",
            m.requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "DNS requests forwarded to an upstream resolver (unstable)",
            m.upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "Forwarded DNS requests that no upstream resolver answered (unstable)",
            m.upstream_failures.clone(),
        );
        // Registered with its unit: the family is `…_duration_seconds`, with a `# UNIT` line.
        istio.register_with_unit(
            "dns_upstream_request_duration",
            "Time an upstream resolver took to answer (unstable)",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        m
    }
}

/// The `request_query_type` label of a query type: its mnemonic in lowercase, `unknown` for a
/// type hickory has no name for.
pub fn query_type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "a",
        RecordType::AAAA => "aaaa",
        RecordType::ANAME => "aname",
        RecordType::ANY => "any",
        RecordType::AXFR => "axfr",
        RecordType::CAA => "caa",
        RecordType::CDNSKEY => "cdnskey",
        RecordType::CDS => "cds",
        RecordType::CERT => "cert",
        RecordType::CNAME => "cname",
        RecordType::CSYNC => "csync",
        RecordType::DNSKEY => "dnskey",
        RecordType::DS => "ds",
        RecordType::HINFO => "hinfo",
        RecordType::HTTPS => "https",
        RecordType::IXFR => "ixfr",
        RecordType::KEY => "key",
        RecordType::MX => "mx",
        RecordType::NAPTR => "naptr",
        RecordType::NS => "ns",
        RecordType::NSEC => "nsec",
        RecordType::NSEC3 => "nsec3",
        RecordType::NSEC3PARAM => "nsec3param",
        RecordType::NULL => "null",
        RecordType::OPENPGPKEY => "openpgpkey",
        RecordType::OPT => "opt",
        RecordType::PTR => "ptr",
        RecordType::RRSIG => "rrsig",
        RecordType::SIG => "sig",
        RecordType::SOA => "soa",
        RecordType::SRV => "srv",
        RecordType::SSHFP => "sshfp",
        RecordType::SVCB => "svcb",
        RecordType::TLSA => "tlsa",
        RecordType::TSIG => "tsig",
        RecordType::TXT => "txt",
        RecordType::ZERO => "zero",
        _ => UNKNOWN_QUERY_TYPE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type is its hickory mnemonic lowercased, as ztunnel writes it (hickory names
    /// every unnamed type `Unknown`), so the table cannot drift from hickory's names.
    #[test]
    fn query_types_are_hickory_mnemonics_lowercased() {
        for code in 0..=u16::MAX {
            let t = RecordType::from(code);
            let name: &'static str = t.into();
            assert_eq!(query_type_label(t), name.to_ascii_lowercase(), "{t:?}");
        }
    }
}
