//! Counters of the xDS client, as plain atomics. The metrics server registers them under
//! Istio's names: `istio_xds_connection_terminations_total{reason}`,
//! `istio_xds_message_total{url}` and `istio_xds_message_bytes_total{url}`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one xDS client. Cheap to update from the client task; read by the metrics
/// exporter through the getters.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    terminations: [AtomicU64; 4],
    messages: [AtomicU64; 2],
    message_bytes: [AtomicU64; 2],
    rejected_resources: AtomicU64,
    unknown_enum_values: AtomicU64,
}

impl XdsMetrics {
    /// `istio_xds_connection_terminations_total{reason}`.
    pub fn terminations_total(&self, reason: TerminationReason) -> u64 {
        self.terminations[reason.index()].load(Relaxed)
    }

    /// `istio_xds_message_total{url}`: responses received of a type.
    pub fn message_total(&self, kind: ResourceType) -> u64 {
        self.messages[kind.index()].load(Relaxed)
    }

    /// `istio_xds_message_bytes_total{url}`: payload bytes of the resources in those responses
    /// (each resource's `Any` value, as ztunnel counts them).
    pub fn message_bytes_total(&self, kind: ResourceType) -> u64 {
        self.message_bytes[kind.index()].load(Relaxed)
    }

    /// Resources rejected (NACKed) since start.
    pub fn rejected_resources_total(&self) -> u64 {
        self.rejected_resources.load(Relaxed)
    }

    /// Unknown enum values met in received resources since start (a newer control plane).
    pub fn unknown_enum_values_total(&self) -> u64 {
        self.unknown_enum_values.load(Relaxed)
    }

    pub(super) fn record_termination(&self, reason: TerminationReason) {
        self.terminations[reason.index()].fetch_add(1, Relaxed);
    }

    pub(super) fn record_message(&self, kind: ResourceType, bytes: usize) {
        self.messages[kind.index()].fetch_add(1, Relaxed);
        self.message_bytes[kind.index()].fetch_add(bytes as u64, Relaxed);
    }

    pub(super) fn record_rejected(&self, n: usize) {
        self.rejected_resources.fetch_add(n as u64, Relaxed);
    }

    pub(super) fn record_unknown_enums(&self, n: u32) {
        if n > 0 {
            self.unknown_enum_values.fetch_add(u64::from(n), Relaxed);
        }
    }
}
