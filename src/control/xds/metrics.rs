//! Counters of the xDS client, registered by it under Istio's names:
//! `istio_xds_connection_terminations_total{reason}`, `istio_xds_message_total{url}`,
//! `istio_xds_message_bytes_total{url}`, and ztun's `ztun_xds_rejected_resources_total` and
//! `ztun_xds_unknown_enum_values_total`.
//!
//! As with ztunnel's (prometheus-client writes nothing for a label family with no series), a
//! labelled family appears only once it has a series, and a series only once counted: a
//! termination reason once it happened, a type's message and byte series once a message of
//! that type arrived (bytes possibly 0). The two unlabelled ztun counters are always written.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::ResourceType;

/// Why an xDS stream ended (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminationReason {
    /// The connection could not be established (TCP, TLS or HTTP/2); reconnect with backoff.
    ConnectionError,
    /// The stream failed with a non-benign gRPC status or a local error.
    Error,
    /// A benign termination (server restart, GOAWAY, cancellation); reconnect promptly.
    Reconnect,
    /// The server ended the stream cleanly.
    Complete,
}

impl TerminationReason {
    /// Every reason, for registering label values.
    pub const ALL: [TerminationReason; 4] = [
        TerminationReason::ConnectionError,
        TerminationReason::Error,
        TerminationReason::Reconnect,
        TerminationReason::Complete,
    ];

    /// The label value Istio uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::ConnectionError => "ConnectionError",
            TerminationReason::Error => "Error",
            TerminationReason::Reconnect => "Reconnect",
            TerminationReason::Complete => "Complete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl From<TerminationReason> for ReasonLabels {
    fn from(r: TerminationReason) -> Self {
        ReasonLabels { reason: r.as_str() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UrlLabels {
    url: &'static str,
}

impl From<ResourceType> for UrlLabels {
    fn from(kind: ResourceType) -> Self {
        UrlLabels {
            url: kind.type_url(),
        }
    }
}

/// A series' count, 0 while it does not exist.
fn count<L: Clone + Eq + std::hash::Hash>(family: &Family<L, Counter>, labels: L) -> u64 {
    family.get(&labels).map_or(0, |c| c.get())
}

/// Counters of one xDS client, each one atomic add from the client task once its series
/// exists. `Default` counts into no registry.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    terminations: Family<ReasonLabels, Counter>,
    messages: Family<UrlLabels, Counter>,
    message_bytes: Family<UrlLabels, Counter>,
    rejected_resources: Counter,
    unknown_enum_values: Counter,
}

impl XdsMetrics {
    /// The client's counters, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        registry.register(
            "istio_xds_connection_terminations",
            "xDS stream terminations (unstable)",
            m.terminations.clone(),
        );
        registry.register(
            "istio_xds_message",
            "xDS messages received (unstable)",
            m.messages.clone(),
        );
        // With its unit: written as `istio_xds_message_bytes_total`, with a `# UNIT` line.
        registry.register_with_unit(
            "istio_xds_message",
            "xDS resource payload bytes received (unstable)",
            Unit::Bytes,
            m.message_bytes.clone(),
        );
        registry.register(
            "ztun_xds_rejected_resources",
            "xDS resources rejected (NACKed) since start",
            m.rejected_resources.clone(),
        );
        registry.register(
            "ztun_xds_unknown_enum_values",
            "xDS enum values newer than ztun's protos, read with their safe fallback",
            m.unknown_enum_values.clone(),
        );
        m
    }

    /// `istio_xds_connection_terminations_total{reason}`.
    pub fn terminations_total(&self, reason: TerminationReason) -> u64 {
        count(&self.terminations, reason.into())
    }

    /// `istio_xds_message_total{url}`: responses received of a type.
    pub fn message_total(&self, kind: ResourceType) -> u64 {
        count(&self.messages, kind.into())
    }

    /// `istio_xds_message_bytes_total{url}`: payload bytes of the resources in those responses
    /// (each resource's `Any` value, as ztunnel counts them).
    pub fn message_bytes_total(&self, kind: ResourceType) -> u64 {
        count(&self.message_bytes, kind.into())
    }

    /// Resources rejected (NACKed) since start.
    pub fn rejected_resources_total(&self) -> u64 {
        self.rejected_resources.get()
    }

    /// Unknown enum values met in received resources since start (a newer control plane).
    pub fn unknown_enum_values_total(&self) -> u64 {
        self.unknown_enum_values.get()
    }

    pub(crate) fn record_termination(&self, reason: TerminationReason) {
        self.terminations.get_or_create(&reason.into()).inc();
    }

    pub(crate) fn record_message(&self, kind: ResourceType, bytes: usize) {
        let labels = UrlLabels::from(kind);
        self.messages.get_or_create(&labels).inc();
        self.message_bytes
            .get_or_create(&labels)
            .inc_by(bytes as u64);
    }

    pub(crate) fn record_rejected(&self, n: usize) {
        self.rejected_resources.inc_by(n as u64);
    }

    pub(crate) fn record_unknown_enums(&self, n: u32) {
        if n > 0 {
            self.unknown_enum_values.inc_by(u64::from(n));
        }
    }
}
