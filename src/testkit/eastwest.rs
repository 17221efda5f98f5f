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
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use http::{Response, StatusCode};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::lab::{Netns, NetnsTask};
use crate::control::ca::LocalCa;
use crate::dataplane::hbone::stream::relay;
use crate::identity::Identity;
use crate::tls::peer_identity;

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
        let ca = LocalCa::load(ca_dir, Duration::from_secs(3600)).context("loading the test CA")?;
        let cert = ca
            .mint(identity)
            .context("minting the gateway certificate")?;
        let acceptor = TlsAcceptor::from(cert.server_config());
        let crossings = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        let turn = Arc::new(AtomicUsize::new(0));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let task = netns.spawn_async({
            let crossings = crossings.clone();
            async move {
                let listener = match TcpListener::bind(("0.0.0.0", port)).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr());
                loop {
                    let Ok((tcp, client)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let gw = Gateway {
                        acceptor: acceptor.clone(),
                        crossings: crossings.clone(),
                        routes: routes.clone(),
                        turn: turn.clone(),
                    };
                    tokio::spawn(async move {
                        if let Err(e) = gw.serve(tcp, client).await {
                            eprintln!("[east-west gateway] connection from {client}: {e:#}");
                        }
                    });
                }
            }
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("gateway in {} did not start", netns.name()))?
            .with_context(|| format!("bind 0.0.0.0:{port} in {}", netns.name()))?;
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

#[derive(Clone)]
struct Gateway {
    acceptor: TlsAcceptor,
    crossings: Arc<Mutex<Vec<Crossing>>>,
    routes: Arc<Routes>,
    turn: Arc<AtomicUsize>,
}

impl Gateway {
    async fn serve(self, tcp: TcpStream, client: SocketAddr) -> anyhow::Result<()> {
        let tls = self.acceptor.accept(tcp).await.context("TLS")?;
        let client_identity =
            peer_identity(tls.get_ref().1.peer_certificates()).context("client identity")?;
        let mut conn = h2::server::handshake(tls).await.context("h2 handshake")?;
        while let Some(next) = conn.accept().await {
            let (req, mut respond) = next.context("h2 accept")?;
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let to = self.routes.get(&authority).and_then(|eps| {
                let n = self.turn.fetch_add(1, Ordering::Relaxed);
                eps.get(n % eps.len().max(1)).copied()
            });
            self.crossings.lock().push(Crossing {
                authority,
                client_identity: client_identity.clone(),
                client_addr: client,
                forwarded_to: to,
            });
            tokio::spawn(async move {
                let upstream = match to {
                    Some(to) => TcpStream::connect(to).await.ok(),
                    None => None,
                };
                let Some(upstream) = upstream else {
                    let resp = Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(())
                        .unwrap_or_default();
                    let _ = respond.send_response(resp, true);
                    return;
                };
                let ok = Response::builder()
                    .status(StatusCode::OK)
                    .body(())
                    .unwrap_or_default();
                let Ok(send) = respond.send_response(ok, false) else {
                    return;
                };
                let (rd, wr) = upstream.into_split();
                let meter = crate::ops::access::Meter::detached();
                let _ = relay(rd, wr, send, req.into_body(), &meter, None).await;
            });
        }
        Ok(())
    }
}
