//! The certificate store's gauges, read from it at each scrape:
//! `ztun_workload_certificates{state}` and, while any certificate is held,
//! `ztun_workload_certificate_earliest_expiry_timestamp_seconds`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::CertStore;

impl CertStore {
    /// Registers the store's gauges in `registry`. The registry holds a clone of the store.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(CertMetrics(self.clone())));
    }
}

/// Reads [`CertStore::summary`] at scrape time.
struct CertMetrics(CertStore);

impl std::fmt::Debug for CertMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertMetrics").finish_non_exhaustive()
    }
}

impl Collector for CertMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.summary();
        {
            let mut family = encoder.encode_descriptor(
                "ztun_workload_certificates",
                "Workload identities of this node by certificate state.",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [
                ("initializing", s.initializing),
                ("available", s.available),
                ("unavailable", s.unavailable),
            ] {
                let labels = [("state", state)];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let Some(t) = s.earliest_expiry else {
            return Ok(());
        };
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ConstGauge::new(secs as i64).encode(encoder.encode_descriptor(
            "ztun_workload_certificate_earliest_expiry_timestamp_seconds",
            "Earliest expiry among the workload certificates held (Unix time).",
            None,
            MetricType::Gauge,
        )?)
    }
}
