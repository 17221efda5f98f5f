//! The data plane: per-pod listeners and the connections they carry.
//!
//! For each enrolled pod a [`Proxy`] owns the pod's identity, socket factory and HBONE pool.
//! Listeners: 15001 outbound capture → [`outbound`], 15008 HBONE → [`inbound`], 15006
//! plaintext inbound → [`passthrough`]. Routing decisions are synchronous functions over a
//! state snapshot ([`route`]); I/O comes after.
//!
//! Allowed imports: `state`, `tls`, `identity`, `config`, `sys`, `sockets`, `drain`,
//! `authz`, `dns` (the pod's DNS proxy and the hostname resolver it is given), `ops`. Never
//! `control/` or generated proto code (docs/architecture.md; `tests/layering.rs` checks it).

pub mod enforce;
pub mod hbone;
pub mod inbound;
pub mod listen;
pub mod outbound;
pub mod passthrough;
pub mod proxy;
pub mod proxy_protocol;
pub mod route;
pub mod tcp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::Identity;
use crate::state::model::Strng;
use crate::tls::{FetchError, IdentityError};

pub use listen::ProxyHandle;
pub use proxy::{PodInfo, Proxy, ProxyInputs};

/// The drain a pod's tasks obey: the more urgent of the pod's own (CNI `del`) and the
/// process's (SIGTERM), merged into one watch ([`crate::drain::merge`]).
pub type Drains = crate::drain::Watch;

/// The value in `boxed`, its box freed now. Moving out of a box in place (`*boxed` in a
/// `match` or a call) leaves the emptied box allocated until the box's binding goes out of
/// scope, which for a parameter of a connection's future is the connection's whole life.
#[allow(clippy::boxed_local)] // Taking the box is the point: it is freed on return.
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Asks the control plane for an address resource the state lacks (`XDS_ON_DEMAND`) and
/// waits a bounded time. The key is `network/IP`, a workload uid or `namespace/hostname`;
/// `true` once an answer (added or removed) is in the state.
pub trait OnDemand: Send + Sync + 'static {
    /// Requests `key` and waits for the answer.
    fn demand(
        &self,
        key: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

pub use crate::dns::{Resolution, ResolveError, ResolveHost};

/// Whose fault a failed connection is (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong.
    Source,
    /// The destination (peer ztun or app) failed or misbehaved.
    Destination,
    /// Something on this node (state, certificates, sockets).
    Local,
    /// A policy decision.
    Policy,
}

/// Why a proxied connection failed or was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The connection targets one of ztun's own ports or loopback.
    #[error("refused call to ztun's own port or loopback: {0}")]
    SelfCall(SocketAddr),
    /// The original destination of a captured connection cannot be determined.
    #[error("no original destination")]
    NoOriginalDestination,
    /// The local workload is not (yet) known in the mesh state.
    #[error("unknown local workload {0}")]
    UnknownLocalWorkload(Arc<str>),
    /// The local workload's identity in state differs from the one the CNI announced.
    #[error("local workload identity mismatch: CNI says {cni}, mesh state says {state}")]
    LocalIdentityMismatch {
        /// From the CNI.
        cni: Arc<str>,
        /// From state.
        state: Arc<str>,
    },
    /// No certificate for the identity.
    #[error(transparent)]
    Certificate(#[from] FetchError),
    /// Connecting to the HBONE peer failed.
    #[error("connecting to peer: {0}")]
    ConnectPeer(#[source] Arc<io::Error>),
    /// TLS handshake did not finish in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(#[source] Arc<io::Error>),
    /// The peer's certificate carries no usable identity.
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] IdentityError),
    /// The peer proved an identity we did not expect.
    #[error("peer identity {got} is not the expected {}", expected.as_ref().map(ToString::to_string).unwrap_or_default())]
    UnexpectedPeer {
        /// Proven identity.
        got: Identity,
        /// First expected identity.
        expected: Option<Identity>,
    },
    /// HTTP/2 failed.
    #[error("http2: {0}")]
    H2(#[source] Arc<h2::Error>),
    /// The HBONE peer answered the CONNECT with a non-200 status.
    #[error("peer answered {0}")]
    HttpStatus(http::StatusCode),
    /// Connecting to the destination application failed.
    #[error("connecting to destination: {0}")]
    ConnectUpstream(#[source] Arc<io::Error>),
    /// Authority IP is not the IP the client dialled.
    #[error("authority {authority} does not match dialled address {dialled}")]
    IpMismatch {
        /// From `:authority`.
        authority: SocketAddr,
        /// The local address of the connection.
        dialled: SocketAddr,
    },
    /// The CONNECT request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A service has no usable endpoint.
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(SocketAddr),
    /// The destination is not served here.
    #[error("unknown destination {0}")]
    UnknownDestination(SocketAddr),
    /// The destination names a waypoint that cannot be found or reached.
    #[error("unknown waypoint for {0}")]
    UnknownWaypoint(SocketAddr),
    /// The destination is on another network and its network gateway cannot be found.
    #[error("no network gateway for {0}")]
    UnknownNetworkGateway(SocketAddr),
    /// A hostname `:authority` names no service, or a port the service cannot map.
    #[error("unknown service {0}")]
    UnknownService(Arc<str>),
    /// The chosen endpoint is known only by hostname, and resolving it failed.
    #[error("resolving {hostname}: {source}")]
    Resolve {
        /// The workload's hostname.
        hostname: Strng,
        /// Why it did not resolve.
        source: ResolveError,
    },
    /// Relaying bytes failed.
    #[error("relay: {0}")]
    Io(#[source] Arc<io::Error>),
    /// Authorization policy denied the connection.
    #[error("denied by policy: {0}")]
    Denied(crate::authz::Denial),
    /// A policy change denied the open connection, which was closed.
    #[error("closed by policy change: {0}")]
    Revoked(crate::authz::Denial),
    /// The peer's certificate is revoked by a CRL: the handshake was refused, or the open
    /// connection closed on a CRL reload.
    #[error("peer certificate revoked")]
    CertRevoked,
    /// The stream's peer granted no flow-control window for the stall timeout.
    #[error("relay: {0}")]
    StreamStalled(hbone::stream::Stalled),
}

impl Error {
    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            Error::SelfCall(_) | Error::IpMismatch { .. } | Error::BadRequest(_) => Side::Source,
            Error::NoOriginalDestination
            | Error::UnknownLocalWorkload(_)
            | Error::LocalIdentityMismatch { .. }
            | Error::Certificate(_) => Side::Local,
            Error::ConnectPeer(_)
            | Error::HandshakeTimeout
            | Error::Tls(_)
            | Error::PeerIdentity(_)
            | Error::UnexpectedPeer { .. }
            | Error::H2(_)
            | Error::HttpStatus(_)
            | Error::ConnectUpstream(_)
            | Error::NoHealthyUpstream(_)
            | Error::UnknownDestination(_)
            | Error::UnknownWaypoint(_)
            | Error::UnknownNetworkGateway(_)
            | Error::UnknownService(_)
            | Error::Resolve { .. }
            | Error::Io(_)
            | Error::CertRevoked
            | Error::StreamStalled(_) => Side::Destination,
            Error::Denied(_) | Error::Revoked(_) => Side::Policy,
        }
    }

    /// The HTTP status an inbound CONNECT gets for this error.
    pub fn status(&self) -> http::StatusCode {
        match self.side() {
            Side::Source => http::StatusCode::BAD_REQUEST,
            Side::Policy => http::StatusCode::UNAUTHORIZED,
            Side::Local | Side::Destination => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl crate::ops::access::Failure for Error {
    /// As ztunnel flags them: `DENY` for policy, `IDENTITY_ERROR` when our own certificate
    /// is unavailable, `NETWORK_POLICY` when the peer's HBONE port never answers (connect
    /// timeout), `H2_HANDSHAKE_FAILURE` for HTTP/2 errors with the peer (during the handshake
    /// or after it, as ztunnel's `Error::H2` is), `CONNECT` otherwise, TLS handshake and
    /// peer identity failures included (ztunnel verifies the peer inside the handshake).
    fn response_flag(&self) -> &'static str {
        match self {
            Error::Denied(_) | Error::Revoked(_) => "DENY",
            Error::CertRevoked => "CERT_REVOKED",
            Error::Certificate(_) => "IDENTITY_ERROR",
            Error::ConnectPeer(e) if e.kind() == io::ErrorKind::TimedOut => "NETWORK_POLICY",
            Error::H2(_) => "H2_HANDSHAKE_FAILURE",
            _ => "CONNECT",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Error::SelfCall(_) => "self_call",
            Error::NoOriginalDestination => "no_original_destination",
            Error::UnknownLocalWorkload(_) => "unknown_local_workload",
            Error::LocalIdentityMismatch { .. } => "local_identity_mismatch",
            Error::Certificate(_) => "no_certificate",
            Error::ConnectPeer(_) => "peer_connect_failed",
            Error::HandshakeTimeout => "handshake_timeout",
            Error::Tls(_) => "tls_failed",
            Error::PeerIdentity(_) => "peer_identity_invalid",
            Error::UnexpectedPeer { .. } => "peer_identity_unexpected",
            Error::H2(_) => "http2_failed",
            Error::HttpStatus(_) => "peer_refused",
            Error::ConnectUpstream(_) => "upstream_connect_failed",
            Error::IpMismatch { .. } => "ip_mismatch",
            Error::BadRequest(_) => "bad_request",
            Error::NoHealthyUpstream(_) => "no_healthy_upstream",
            Error::UnknownDestination(_) => "unknown_destination",
            Error::UnknownWaypoint(_) => "unknown_waypoint",
            Error::UnknownNetworkGateway(_) => "unknown_network_gateway",
            Error::UnknownService(_) => "unknown_service",
            Error::Resolve { .. } => "hostname_unresolved",
            Error::Io(_) => "relay_failed",
            Error::Denied(_) => "policy_denied",
            Error::Revoked(_) => "policy_revoked",
            Error::CertRevoked => "cert_revoked",
            Error::StreamStalled(_) => "stream_stalled",
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<hbone::stream::Stalled>())
        {
            Some(stalled) => Error::StreamStalled(*stalled),
            None => Error::Io(Arc::new(e)),
        }
    }
}
