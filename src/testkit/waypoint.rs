//! A minimal waypoint for e2e tests: an HBONE server (mTLS with a certificate from the test
//! CA, HTTP/2 CONNECT) that records what each tunnel asked for and forwards it in plain TCP
//! to the original `:authority` — as an L4 waypoint would, resolving service VIPs through a
//! table the test supplies instead of its own service discovery.
//!
//! It runs in an uncaptured pod, so its forwarded connections reach captured destinations as
//! plaintext inbound (15006), like traffic from any non-mesh client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::StatusCode;
use parking_lot::Mutex;

use super::hbone_server::HboneServer;
use super::lab::{Netns, NetnsTask};
use crate::identity::Identity;

/// One tunnel the waypoint accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The CONNECT `:authority`.
    pub authority: String,
    /// The client's proven identity.
    pub client_identity: Identity,
    /// The client's address (its node's ztun, dialling from the source pod's IP).
    pub client_addr: SocketAddr,
    /// The `forwarded` header, if any.
    pub forwarded: Option<String>,
    /// Where the waypoint forwarded the tunnel.
    pub forwarded_to: SocketAddr,
}

/// A running waypoint; stops when dropped.
pub struct Waypoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: NetnsTask<()>,
}

impl Waypoint {
    /// Starts a waypoint in `netns` on `0.0.0.0:port` presenting `identity`, with a
    /// certificate minted by the CA in `ca_dir`. A CONNECT to an authority found in `resolve`
    /// is forwarded to the mapped address, any other to the authority itself; an authority
    /// that is no `ip:port` gets 400.
    pub fn spawn(
        netns: &Netns,
        port: u16,
        ca_dir: &Path,
        identity: &Identity,
        resolve: HashMap<SocketAddr, SocketAddr>,
    ) -> anyhow::Result<Waypoint> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let route = move |req: &http::Request<h2::RecvStream>,
                          client_identity: &Identity,
                          client_addr: SocketAddr| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let target: SocketAddr = authority.parse().map_err(|_| StatusCode::BAD_REQUEST)?;
            let forwarded = req
                .headers()
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let to = resolve.get(&target).copied().unwrap_or(target);
            record.lock().push(Seen {
                authority,
                client_identity: client_identity.clone(),
                client_addr,
                forwarded,
                forwarded_to: to,
            });
            Ok(to)
        };
        let (addr, task) = HboneServer::spawn("waypoint", netns, port, ca_dir, identity, route)?;
        Ok(Waypoint {
            addr,
            seen,
            _task: task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every tunnel accepted so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}
