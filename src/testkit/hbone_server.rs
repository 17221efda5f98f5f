//! The HBONE server behind the test waypoint ([`super::waypoint`]) and the east-west gateway
//! ([`super::eastwest`]): mTLS with a certificate minted by the test CA (clients verified
//! against it), HTTP/2 CONNECT, and each accepted stream either refused with a status or
//! relayed, byte for byte, to a plain TCP address. What to do with a stream is the caller's
//! `route`, which also records what it saw.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use http::{Request, Response, StatusCode};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use super::lab::{Netns, NetnsTask};
use crate::control::ca::LocalCa;
use crate::dataplane::hbone::stream::relay;
use crate::identity::Identity;
use crate::tls::peer_identity;

/// Decides where one CONNECT stream goes, given the request, the client's proven identity and
/// the client's address: `Ok(address)` relays the stream there in plain TCP (503 if it cannot
/// be dialled), `Err(status)` refuses it with that status.
pub type RouteResult = Result<SocketAddr, StatusCode>;

/// What a client's TLS ClientHello offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The SNI server name, if any.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in order (empty without the extension).
    pub alpn: Vec<Vec<u8>>,
}

/// The ClientHellos a server received, in order.
pub type Hellos = Arc<Mutex<Vec<Hello>>>;

/// A minimal HBONE server for tests.
pub struct HboneServer;

impl HboneServer {
    /// Starts a server called `name` (in errors and logs) in `netns` on `0.0.0.0:port`
    /// presenting `identity`, with a certificate minted by the CA in `ca_dir`. Each CONNECT
    /// stream goes where `route` says. Returns the bound address and the task, which stops
    /// the server when dropped.
    pub fn spawn<F>(
        name: &'static str,
        netns: &Netns,
        port: u16,
        ca_dir: &Path,
        identity: &Identity,
        route: F,
    ) -> anyhow::Result<(SocketAddr, NetnsTask<()>)>
    where
        F: Fn(&Request<h2::RecvStream>, &Identity, SocketAddr) -> RouteResult
            + Send
            + Sync
            + 'static,
    {
        HboneServer::spawn_recording(
            name,
            netns,
            port,
            ca_dir,
            identity,
            Hellos::default(),
            route,
        )
    }

    /// [`HboneServer::spawn`], recording every ClientHello in `hellos`.
    pub fn spawn_recording<F>(
        name: &'static str,
        netns: &Netns,
        port: u16,
        ca_dir: &Path,
        identity: &Identity,
        hellos: Hellos,
        route: F,
    ) -> anyhow::Result<(SocketAddr, NetnsTask<()>)>
    where
        F: Fn(&Request<h2::RecvStream>, &Identity, SocketAddr) -> RouteResult
            + Send
            + Sync
            + 'static,
    {
        let ca = LocalCa::load(ca_dir, Duration::from_secs(3600)).context("loading the test CA")?;
        let cert = ca
            .mint(identity)
            .with_context(|| format!("minting the {name} certificate"))?;
        let config = cert.server_config();
        let route = Arc::new(route);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let task = netns.spawn_async(async move {
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
                let (config, route, hellos) = (config.clone(), route.clone(), hellos.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(name, config, hellos, tcp, client, route).await {
                        eprintln!("[{name}] connection from {client}: {e:#}");
                    }
                });
            }
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("{name} in {} did not start", netns.name()))?
            .with_context(|| format!("bind 0.0.0.0:{port} in {}", netns.name()))?;
        Ok((addr, task))
    }
}

/// One client connection: its ClientHello recorded, TLS, the client's identity, then every
/// CONNECT stream on it.
async fn serve<F>(
    name: &'static str,
    config: Arc<rustls::ServerConfig>,
    hellos: Hellos,
    tcp: TcpStream,
    client: SocketAddr,
    route: Arc<F>,
) -> anyhow::Result<()>
where
    F: Fn(&Request<h2::RecvStream>, &Identity, SocketAddr) -> RouteResult,
{
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .context("ClientHello")?;
    let hello = start.client_hello();
    hellos.lock().push(Hello {
        server_name: hello.server_name().map(str::to_string),
        alpn: hello
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default(),
    });
    let tls = start.into_stream(config).await.context("TLS")?;
    let client_identity =
        peer_identity(tls.get_ref().1.peer_certificates()).context("client identity")?;
    let mut conn = h2::server::handshake(tls).await.context("h2 handshake")?;
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next.context("h2 accept")?;
        let to = match route(&req, &client_identity, client) {
            Ok(to) => to,
            Err(status) => {
                let _ = respond.send_response(refusal(status), true);
                continue;
            }
        };
        tokio::spawn(async move {
            let upstream = match TcpStream::connect(to).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("[{name}] forwarding to {to}: {e}");
                    let _ = respond.send_response(refusal(StatusCode::SERVICE_UNAVAILABLE), true);
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
            let _ = relay(rd, wr, send, req.into_body(), meter, None).await;
        });
    }
    Ok(())
}

fn refusal(status: StatusCode) -> Response<()> {
    Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default()
}
