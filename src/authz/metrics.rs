//! `ztun_authorization_policies_with_unmatchable_rules{action}`: the policies of the mesh
//! state now whose rules include some that never match at L4 (HTTP-only conditions), read
//! at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::HttpOnlyDeny;
use crate::state::model::PolicyAction;
use crate::state::Reader;

/// Registers the gauge in `registry`, counted over `state`'s snapshot under `mode`.
pub fn register_metrics(registry: &mut Registry, state: Reader, mode: HttpOnlyDeny) {
    registry.register_collector(Box::new(UnmatchablePolicies { state, mode }));
}

/// Counts the policies with unmatchable rules at scrape time.
struct UnmatchablePolicies {
    state: Reader,
    mode: HttpOnlyDeny,
}

impl std::fmt::Debug for UnmatchablePolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnmatchablePolicies")
            .finish_non_exhaustive()
    }
}

impl Collector for UnmatchablePolicies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snap = self.state.load();
        let (mut allow, mut deny) = (0i64, 0i64);
        for p in snap.policies() {
            if !super::unmatchable_rules(p, self.mode).is_empty() {
                match p.action {
                    PolicyAction::Allow => allow += 1,
                    PolicyAction::Deny => deny += 1,
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "ztun_authorization_policies_with_unmatchable_rules",
            "Authorization policies with rules that name only HTTP attributes, which never match at L4.",
            None,
            MetricType::Gauge,
        )?;
        for (action, n) in [("allow", allow), ("deny", deny)] {
            ConstGauge::new(n).encode(family.encode_family(&[("action", action)])?)?;
        }
        Ok(())
    }
}
