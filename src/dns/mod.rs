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
//! ([`resolve`]: the [`ResolveHost`] capability the data plane is given), from ztun's own
//! namespace, with a bounded TTL cache.
//!
//! Allowed imports: `state`, `config`, `sockets`, `drain`, `ops`. The data plane depends on
//! this module, never the reverse: a pod's DNS proxy gets a narrow [`PodDns`] context.

mod forward;
mod lookup;
pub mod metrics;
mod resolve;
mod server;
#[cfg(test)]
mod tests;

pub use forward::{ForwardError, Upstreams};
pub use lookup::{
    aliases, kubernetes_expansion, lookup, search_domains, Alias, Family, HostIndex, Lookup, Zone,
};
pub use resolve::{HostCache, HostResolver};
pub use server::{respond, start, Outcome, PodDns, TCP_REQUEST_TIMEOUT, TTL};

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use crate::state::model::Strng;

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

/// Resolves the hostname of a workload that has no IPs (a DNS-resolved ServiceEntry endpoint)
/// when a connection is routed to it. Implementations cache answers for their TTL.
pub trait ResolveHost: Send + Sync + 'static {
    /// The current addresses of `hostname` (IPv4, and IPv6 when enabled), never empty.
    fn resolve(&self, hostname: Strng) -> Resolution<'_>;
}

/// A pending [`ResolveHost::resolve`].
pub type Resolution<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<[IpAddr]>, ResolveError>> + Send + 'a>>;

/// Why a hostname-only workload's addresses could not be found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// ztun's resolv.conf names no nameserver.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// No upstream answered; this is the last one's failure.
    #[error("upstream {upstream}: {source}")]
    Unreachable {
        /// The last upstream tried.
        upstream: SocketAddr,
        /// What went wrong with it.
        source: Arc<io::Error>,
    },
    /// The upstream answered with an error code.
    #[error("upstream answered {0}")]
    Rcode(&'static str),
    /// The answer carried no address.
    #[error("no address in the answer")]
    NoAddress,
    /// The hostname is not a valid DNS name.
    #[error("not a valid DNS name")]
    BadName,
}
