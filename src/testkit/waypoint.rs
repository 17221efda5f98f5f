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
    /// is forwarded to the mapped address, any other to the authority itself.
    pub fn spawn(
        netns: &Netns,
        port: u16,
        ca_dir: &Path,
        identity: &Identity,
        resolve: HashMap<SocketAddr, SocketAddr>,
    ) -> anyhow::Result<Waypoint> {
        let ca = LocalCa::load(ca_dir, Duration::from_secs(3600)).context("loading the test CA")?;
        let cert = ca
            .mint(identity)
            .context("minting the waypoint certificate")?;
        let acceptor = TlsAcceptor::from(cert.server_config());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let resolve = Arc::new(resolve);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let task = netns.spawn_async({
            let seen = seen.clone();
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
                    let (acceptor, seen, resolve) =
                        (acceptor.clone(), seen.clone(), resolve.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve(acceptor, tcp, client, seen, resolve).await {
                            eprintln!("[waypoint] connection from {client}: {e:#}");
                        }
                    });
                }
            }
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("waypoint in {} did not start", netns.name()))?
            .with_context(|| format!("bind 0.0.0.0:{port} in {}", netns.name()))?;
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

async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    client: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    resolve: Arc<HashMap<SocketAddr, SocketAddr>>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await.context("TLS")?;
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
        let forwarded = req
            .headers()
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let target: Option<SocketAddr> = authority.parse().ok();
        let Some(target) = target else {
            let resp = Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(())?;
            let _ = respond.send_response(resp, true);
            continue;
        };
        let to = resolve.get(&target).copied().unwrap_or(target);
        seen.lock().push(Seen {
            authority,
            client_identity: client_identity.clone(),
            client_addr: client,
            forwarded,
            forwarded_to: to,
        });
        tokio::spawn(async move {
            let upstream = match TcpStream::connect(to).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("[waypoint] forwarding to {to}: {e}");
                    let resp = Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(())
                        .unwrap_or_default();
                    let _ = respond.send_response(resp, true);
                    return;
                }
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
