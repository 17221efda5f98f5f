//! Access logs: one line per completed connection on tracing target `access`, with ztunnel's
//! field names so existing log pipelines keep working.
//!
//! The record is filled in at connection setup (no per-byte cost) and emitted once on close.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::identity::Identity;

/// Direction of a connection relative to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Leaving the pod.
    Outbound,
    /// Entering the pod.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Who a connection endpoint is.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Socket address.
    pub addr: Option<SocketAddr>,
    /// Workload name.
    pub workload: Option<Arc<str>>,
    /// Namespace.
    pub namespace: Option<Arc<str>>,
    /// Proven (mTLS) identity.
    pub identity: Option<Identity>,
}

/// A connection's log record.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// Direction.
    pub direction: Direction,
    /// The client side.
    pub src: Peer,
    /// The server side (`addr` = the L4 next hop).
    pub dst: Peer,
    /// The CONNECT `:authority`, for tunnelled connections.
    pub hbone_addr: Option<SocketAddr>,
    /// Destination service hostname.
    pub service: Option<Arc<str>>,
    started: Instant,
}

impl AccessLog {
    /// Starts a record now.
    pub fn new(direction: Direction) -> Self {
        AccessLog {
            direction,
            src: Peer::default(),
            dst: Peer::default(),
            hbone_addr: None,
            service: None,
            started: Instant::now(),
        }
    }

    /// Emits the record. `sent`/`recv` are from the client's point of view (bytes sent by the
    /// client / received by it). A failure is logged at error level with its reason.
    pub fn complete(&self, sent: u64, recv: u64, error: Option<&dyn Display>) {
        let duration = format!("{}ms", self.started.elapsed().as_millis());
        let src_addr = self.src.addr.map(tracing::field::display);
        let dst_addr = self.dst.addr.map(tracing::field::display);
        let hbone_addr = self.hbone_addr.map(tracing::field::display);
        let src_id = self.src.identity.as_ref().map(tracing::field::display);
        let dst_id = self.dst.identity.as_ref().map(tracing::field::display);
        // Two call sites because tracing levels are static per event.
        match error {
            Some(e) => tracing::event!(
                target: "access",
                tracing::Level::ERROR,
                src.addr = src_addr,
                src.workload = self.src.workload.as_deref(),
                src.namespace = self.src.namespace.as_deref(),
                src.identity = src_id,
                dst.addr = dst_addr,
                dst.hbone_addr = hbone_addr,
                dst.service = self.service.as_deref(),
                dst.workload = self.dst.workload.as_deref(),
                dst.namespace = self.dst.namespace.as_deref(),
                dst.identity = dst_id,
                direction = self.direction.as_str(),
                bytes_sent = sent,
                bytes_recv = recv,
                duration = duration.as_str(),
                error = %e,
                "connection complete"
            ),
            None => tracing::event!(
                target: "access",
                tracing::Level::INFO,
                src.addr = src_addr,
                src.workload = self.src.workload.as_deref(),
                src.namespace = self.src.namespace.as_deref(),
                src.identity = src_id,
                dst.addr = dst_addr,
                dst.hbone_addr = hbone_addr,
                dst.service = self.service.as_deref(),
                dst.workload = self.dst.workload.as_deref(),
                dst.namespace = self.dst.namespace.as_deref(),
                dst.identity = dst_id,
                direction = self.direction.as_str(),
                bytes_sent = sent,
                bytes_recv = recv,
                duration = duration.as_str(),
                "connection complete"
            ),
        }
    }
}
