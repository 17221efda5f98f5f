//! A minimal east-west gateway for multi-network e2e tests, doing what Istio's east-west
//! gateway does for ambient: it terminates the outer HBONE tunnel of double HBONE (mTLS with
//! the gateway's identity, HTTP/2 CONNECT), reads the `hostname:port` `:authority`, picks an
//! endpoint of that service in its own network from a table the test supplies (instead of
//! its own service discovery), and forwards the stream's bytes — the inner, end-to-end TLS
//! it never opens — to that endpoint's HBONE port.
//!
//! It runs in an uncaptured pod of its network, exposed to the other networks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use parking_lot::Mutex;

use super::hbone_server::HboneServer;
use super::lab::{Netns, NetnsTask};
use crate::identity::Identity;

/// One outer tunnel the gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// The CONNECT `:authority` (`hostname:port`).
    pub authority: String,
    /// The client's proven identity (the source workload's: outer TLS).
    pub client_identity: Identity,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The endpoint's HBONE address the stream was forwarded to (`None`: refused).
    pub forwarded_to: Option<SocketAddr>,
}

/// A running gateway; stops when dropped.
pub struct EastWestGateway {
    addr: SocketAddr,
    crossings: Arc<Mutex<Vec<Crossing>>>,
    _task: NetnsTask<()>,
}

/// `hostname:port` → the HBONE addresses (`endpoint_ip:15008`) of that service's endpoints
/// in the gateway's network; the gateway takes them in turn.
pub type Routes = HashMap<String, Vec<SocketAddr>>;

impl EastWestGateway {
    /// Starts a gateway in `netns` on `0.0.0.0:port` presenting `identity`, with a
    /// certificate minted by the CA in `ca_dir` (the mesh's: clients are verified against
    /// it). A CONNECT for an authority in `routes` is forwarded; any other gets 503.
    pub fn spawn(
        netns: &Netns,
        port: u16,
        ca_dir: &Path,
        identity: &Identity,
        routes: Routes,
    ) -> anyhow::Result<EastWestGateway> {
        let crossings = Arc::new(Mutex::new(Vec::new()));
        let record = crossings.clone();
        let turn = AtomicUsize::new(0);
        let route = move |req: &http::Request<h2::RecvStream>,
                          client_identity: &Identity,
                          client_addr: SocketAddr| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let to = routes.get(&authority).and_then(|eps| {
                let n = turn.fetch_add(1, Ordering::Relaxed);
                eps.get(n % eps.len().max(1)).copied()
            });
            record.lock().push(Crossing {
                authority,
                client_identity: client_identity.clone(),
                client_addr,
                forwarded_to: to,
            });
            to.ok_or(StatusCode::SERVICE_UNAVAILABLE)
        };
        let (addr, task) =
            HboneServer::spawn("east-west gateway", netns, port, ca_dir, identity, route)?;
        Ok(EastWestGateway {
            addr,
            crossings,
            _task: task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every outer tunnel accepted so far, in order.
    pub fn crossings(&self) -> Vec<Crossing> {
        self.crossings.lock().clone()
    }
}
