//! The per-pod DNS proxy (port 15053, compat.md §1.7 and §2.7).
//!
//! istio-cni redirects a captured pod's DNS (UDP and TCP port 53) to 15053 in the pod. Each
//! pod's proxy binds `127.0.0.1:15053` (and `[::1]:15053` when the pod has IPv6) in the pod's
//! namespace and answers A/AAAA queries for mesh services from the state snapshot
//! ([`lookup`]): Kubernetes short names and FQDN expansions from the pod's namespace,
//! search-domain variants (with a CNAME), wildcard hostnames, headless services → endpoint
//! IPs. Everything else goes to the nameservers of ztun's own resolv.conf ([`forward`]) over
//! sockets created in the pod's namespace with the packet mark, so the query leaves as the pod
//! without being redirected back.
//!
//! The same nameservers resolve hostname-only workloads when a connection is routed to one
//! ([`resolve`], the data plane's [`ResolveHost`](crate::dataplane::ResolveHost)), from ztun's
//! own namespace, with a bounded TTL cache.
//!
//! Allowed imports: `state`, `config`, `dataplane::{proxy, sockets}` and the data plane's
//! `ResolveHost` trait with its types, `ops`.

mod forward;
mod lookup;
mod metrics;
mod resolve;
mod server;
#[cfg(test)]
mod tests;

pub use forward::{ForwardError, Upstreams};
pub use lookup::{
    aliases, kubernetes_expansion, lookup, search_domains, Alias, Family, HostIndex, Lookup, Zone,
};
pub use metrics::{query_type_label, DnsLabels, DnsMetrics};
pub use resolve::{HostCache, HostResolver};
pub use server::{respond, start, Outcome, TCP_REQUEST_TIMEOUT, TTL};

/// The transport a query arrived on (and is forwarded over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams: answers are fitted to the client's UDP size.
    Udp,
    /// Length-prefixed messages on a stream.
    Tcp,
}

impl Transport {
    /// The `request_protocol` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}
