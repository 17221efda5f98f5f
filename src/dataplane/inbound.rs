//! Inbound HBONE (15008): terminate mTLS with the pod's own certificate, then serve each
//! CONNECT stream as a tunnel to the app, delivered with the client's original IP.
//!
//! Request validation is strict and happens before anything is dialled: only CONNECT, an
//! `ip:port` authority equal to the address the client dialled (or a service `hostname:port`;
//! waypoint exceptions in [`route::inbound`]), never ztun's own ports or loopback. Then
//! authorization ([`crate::authz`], [`super::enforce`]): a denial answers 401, and a later policy change that
//! denies the open tunnel closes it. Nothing read from the stream is forwarded before the 200
//! is sent.

use std::future::{poll_fn, Future};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;
use http::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::enforce::{Registration, Revoked};
use super::hbone::stream::relay as relay_h2;
use super::route::inbound::{Authority, InboundTarget, Tunnel};
use super::tcp::canonical;
use super::{proxy_protocol, route, unbox, Drains, Error, Proxy};
use crate::authz::Conn;
use crate::drain::DrainMode;
use crate::identity::Identity;
use crate::ops::access::{AccessLog, Direction, HboneTarget, ServiceRef};
use crate::state::model::AppTunnelProtocol;
use crate::state::Snapshot;
use crate::tls::crl::{Side, Tracked};
use crate::tls::{peer_identity, RevokedSignal};

/// Concurrent streams a client may open on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Largest decoded header list accepted (bounds CONTINUATION floods).
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Send buffer per stream.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the peer may reset before ztun accepted them (rapid reset, H8): more pending at
/// once is answered with GOAWAY.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the HTTP/2 layer may reset for the peer's protocol errors over a connection's
/// life (H9): one more is answered with GOAWAY(ENHANCE_YOUR_CALM).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves one HBONE connection: handshake, then streams until the client or a drain ends it.
pub async fn serve(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, mut drain: Drains) {
    let peer = canonical(peer);
    let local = match tcp.local_addr() {
        Ok(a) => canonical(a),
        Err(_) => return,
    };
    let accepted =
        tokio::time::timeout(proxy.cfg.proxy.handshake_timeout, handshake(&proxy, tcp)).await;
    let (mut conn, client_id, mut tracked) = match accepted {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(%peer, %local, error = %e, "hbone handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, %local, "hbone handshake timed out");
            return;
        }
    };
    let revoked = tracked
        .as_ref()
        .map_or_else(RevokedSignal::never, Tracked::signal);
    let conn_info = Arc::new(ConnInfo {
        peer,
        local,
        client: client_id,
        revoked,
    });
    let mut draining = false;
    // Idle close: every stream task holds a clone of `busy`; a connection found without
    // streams at two checks in a row (T apart, with no stream in between) is closed, so an
    // idle connection lives between T and 2T.
    let idle_timeout = proxy.cfg.proxy.hbone_idle_timeout;
    let busy = Arc::new(());
    let mut used_since_check = false;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let keepalive = super::hbone::keepalive(
        conn.ping_pong(),
        super::hbone::H2Settings::from_config(&proxy.cfg.proxy).ping_interval,
    );
    tokio::pin!(keepalive);
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = &mut keepalive => break,
            _ = crl_revoked(&mut tracked) => {
                tracing::warn!(%peer, %local, client = %conn_info.client, reporter = "destination", "peer certificate revoked, closing hbone connection");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                // Flush the GOAWAY, briefly; the streams see the connection end.
                let _ = tokio::time::timeout(REVOKED_FLUSH, async {
                    while conn.accept().await.is_some() {}
                })
                .await;
                break;
            }
            _ = &mut idle, if !draining => {
                if Arc::strong_count(&busy) == 1 && !used_since_check {
                    tracing::debug!(%peer, "hbone connection idle, closing");
                    draining = true;
                    conn.graceful_shutdown();
                } else {
                    used_since_check = Arc::strong_count(&busy) > 1;
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                }
                continue;
            }
            mode = drain.signaled(), if !draining => {
                draining = true;
                if mode == DrainMode::Immediate {
                    break;
                }
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                used_since_check = true;
                let busy = busy.clone();
                let proxy = proxy.clone();
                let info = conn_info.clone();
                let mut w = drain.clone();
                // Boxed request head: the task then captures one pointer instead of storing
                // the head both as a capture and inside the stream future.
                let req = Box::new(req);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_stream(&proxy, &info, req, respond) => {}
                        _ = w.immediate() => {}
                    }
                    drop(busy);
                });
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "hbone connection error");
                break;
            }
            None => break,
        }
    }
}

struct ConnInfo {
    peer: SocketAddr,
    local: SocketAddr,
    client: Identity,
    /// Fires when a CRL reload revokes the client's certificate.
    revoked: RevokedSignal,
}

/// How long a revoked connection's GOAWAY may take to flush before the socket is closed.
const REVOKED_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Completes when the tracked connection's peer is revoked; never for an untracked one.
async fn crl_revoked(tracked: &mut Option<Tracked>) {
    match tracked {
        Some(t) => t.revoked().await,
        None => std::future::pending().await,
    }
}

type ServerConn =
    h2::server::Connection<tokio_rustls::server::TlsStream<super::hbone::Transport>, Bytes>;

async fn handshake(
    proxy: &Proxy,
    tcp: TcpStream,
) -> Result<(ServerConn, Identity, Option<Tracked>), Error> {
    let w = proxy.local_workload().await?;
    let cert = proxy.local_cert(&w).await?;
    let crl_generation = cert.crl_generation();
    let tls = TlsAcceptor::from(cert.server_config())
        .accept(super::hbone::transport(tcp))
        .await
        .map_err(|e| {
            if super::hbone::client::is_revoked(&e) {
                Error::CertRevoked
            } else {
                Error::Tls(Arc::new(e))
            }
        })?;
    let peer_chain = tls.get_ref().1.peer_certificates();
    let client = peer_identity(peer_chain)?;
    let tracked = cert
        .track_peer(Side::Server, peer_chain, crl_generation)
        .map_err(|_| Error::CertRevoked)?;
    let s = &proxy.cfg.proxy;
    let conn = h2::server::Builder::new()
        .initial_window_size(s.http2_stream_window)
        .initial_connection_window_size(s.http2_connection_window)
        .max_frame_size(s.http2_frame_size)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake(tls)
        .await
        .map_err(|e| Error::H2(Arc::new(e)))?;
    Ok((conn, client, tracked))
}

/// A stream authorized, its app connection open and its 200 sent.
struct Opened {
    upstream: TcpStream,
    send: SendStream<Bytes>,
    body: h2::RecvStream,
    registration: Registration,
}

async fn serve_stream(
    proxy: &Proxy,
    info: &ConnInfo,
    req: Box<Request<h2::RecvStream>>,
    respond: SendResponse<Bytes>,
) {
    let mut log = AccessLog::new(Direction::Inbound, proxy.telemetry.clone());
    // Opening and relaying are two futures, one after the other: the relay, which an idle
    // stream sits in, does not carry the request head or the opening's state. The opening is
    // boxed for its duration only: inline, it would size this task for the stream's life.
    // The request head leaves its box before (`unbox`): the emptied box would otherwise stay
    // allocated, as a parameter's, for as long as the stream lives.
    let Some(Opened {
        upstream,
        send,
        body,
        mut registration,
    }) = Box::pin(open(proxy, info, unbox(req), respond, &mut log)).await
    else {
        return;
    };
    let (rd, wr) = upstream.into_split();
    let stall = proxy.cfg.proxy.stream_stall_timeout;
    let mut relay = relay_h2(rd, wr, send, body, log.meter(), stall);
    let mut cert_revoked = info.revoked.clone().into_wait();
    // The relay and both revocations in one future polled in place, rather than a `select!`
    // over three futures (two of them borrowing what they wait on) kept in every stream's task.
    let ended = poll_fn(|cx| {
        if let Poll::Ready(Revoked(denial)) = registration.poll_revoked(cx) {
            return Poll::Ready(Err(Error::Revoked(denial)));
        }
        if cert_revoked.poll(cx).is_ready() {
            return Poll::Ready(Err(Error::CertRevoked));
        }
        Pin::new(&mut relay).poll(cx).map_err(Error::from)
    })
    .await;
    drop(relay);
    match ended {
        Ok(()) => log.complete(None),
        Err(e) => log.complete(Some(&e)),
    }
}

/// Authorizes the stream, connects to the app and answers 200; `None` once a refusal has
/// been answered and logged.
async fn open(
    proxy: &Proxy,
    info: &ConnInfo,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    log: &mut AccessLog,
) -> Option<Opened> {
    // One generation for the whole decision: routing, authorization and the labels never
    // disagree because an update landed between them (late enforcement takes over after).
    let snap = proxy.state.load_full();
    log.src.addr = Some(info.peer);
    log.src.identity = Some(info.client.clone());
    log.src.namespace = Some(info.client.namespace().into());
    // Telemetry only: the source workload is named after the pod owning the peer IP, if that
    // pod's identity is the one the peer proved. Identity itself never comes from an IP.
    if let Some(w) = snap.workload_by_ip(&proxy.cfg.network, info.peer.ip()) {
        if w.identity().as_ref() == Some(&info.client) {
            log.src.describe(w);
        }
    }
    // A source on another network arrives from its gateway's address: it is labelled from
    // the metadata it sent (telemetry only; the identity is the one it proved).
    if log.src.described.is_none() {
        let derived = req
            .headers()
            .get("baggage")
            .and_then(|v| v.to_str().ok())
            .and_then(|b| super::hbone::workload_from_baggage(&info.client, b));
        if let Some(w) = derived {
            log.src.describe(&std::sync::Arc::new(w));
        }
    }
    log.dst.workload = Some(proxy.pod.name.clone());
    log.dst.namespace = Some(proxy.pod.namespace.clone());
    let local = snap
        .workload_by_pod(
            &proxy.pod.namespace,
            &proxy.pod.name,
            proxy.cfg.node_name.as_deref(),
        )
        .cloned();
    if let Some(w) = &local {
        log.dst.describe(w);
        log.dst.identity = w.identity();
    }

    let (authority, target) = match resolve(proxy, &snap, info, &req) {
        Ok(t) => t,
        Err(e) => {
            reject(&mut respond, log, e);
            return None;
        }
    };
    log.hbone_target = Some(HboneTarget::Addr(match authority {
        Authority::Addr(a) => a,
        Authority::Host { .. } => target.tunnel.map_or(target.upstream, |t| t.target),
    }));
    log.dst.addr = Some(target.upstream);
    log.service = target.service.as_deref().map(ServiceRef::from);

    // Registered before the check, so a concurrent policy change cannot slip between the two.
    let conn = Conn {
        src_ip: info.peer.ip(),
        src_identity: Some(info.client.clone()),
        dst_ip: info.local.ip(),
        dst_port: target.upstream.port(),
    };
    let registration = proxy.connections.register(conn.clone());
    let decision = proxy.connections.check(&snap, &conn);
    // Decided: no generation stays pinned while the app is dialled.
    drop(snap);
    if let Some(denial) = decision.denial() {
        reject(&mut respond, log, Error::Denied(denial));
        return None;
    }

    let mut upstream = match connect_upstream(proxy, info, &target).await {
        Ok(s) => s,
        Err(e) => {
            reject(&mut respond, log, Error::ConnectUpstream(Arc::new(e)));
            return None;
        }
    };
    let mut ok = Response::builder().status(StatusCode::OK);
    if proxy.cfg.proxy.enable_response_baggage {
        if let Some(w) = &local {
            ok = ok.header("baggage", super::hbone::baggage(w));
        }
    }
    let send = match respond.send_response(ok.body(()).unwrap_or_default(), false) {
        Ok(s) => s,
        Err(e) => {
            log.complete(Some(&Error::H2(Arc::new(e))));
            return None;
        }
    };
    log.established();
    if let Some(Tunnel {
        protocol: AppTunnelProtocol::Proxy,
        target: original,
    }) = target.tunnel
    {
        let header = proxy_protocol::header(info.peer, original, Some(&info.client));
        if let Err(e) = upstream.write_all(&header).await {
            log.complete(Some(&Error::ConnectUpstream(Arc::new(e))));
            return None;
        }
    }
    Some(Opened {
        upstream,
        send,
        body: req.into_body(),
        registration,
    })
}

/// Checks the request and decides where it goes (nothing is dialled yet).
fn resolve(
    proxy: &Proxy,
    snap: &Snapshot,
    info: &ConnInfo,
    req: &Request<h2::RecvStream>,
) -> Result<(Authority, InboundTarget), Error> {
    let authority = parse_head(req)?;
    let local = proxy.connections.pod().find(snap).ok_or_else(|| {
        Error::UnknownLocalWorkload(format!("{}/{}", proxy.pod.namespace, proxy.pod.name).into())
    })?;
    let target = route::inbound::resolve(
        snap,
        &proxy.cfg.network,
        local,
        info.local,
        &authority,
        |p| proxy.is_own_port(p),
    )?;
    Ok((authority, target))
}

/// Checks a CONNECT request head and parses its target, before anything is looked up or
/// dialled: only CONNECT, no `:scheme`/`:path`, no `Host` header next to `:authority` (the
/// target comes from exactly one field), and a strict [`Authority`]. Public so the fuzz
/// harness drives the same code as the server.
pub fn parse_head<B>(req: &Request<B>) -> Result<Authority, Error> {
    if req.method() != Method::CONNECT {
        return Err(Error::BadRequest("method is not CONNECT"));
    }
    if req.uri().scheme().is_some()
        || req
            .uri()
            .path_and_query()
            .is_some_and(|p| !p.as_str().is_empty())
    {
        return Err(Error::BadRequest("CONNECT with :scheme or :path"));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or(Error::BadRequest("missing :authority"))?;
    if req.headers().contains_key(http::header::HOST) {
        return Err(Error::BadRequest("host header alongside :authority"));
    }
    Authority::parse(authority.as_str())
        .map_err(|_| Error::BadRequest("authority is not ip:port or hostname:port"))
}

/// Connects to the app: from the client's own IP (the pod's with `ENABLE_ORIG_SRC=false`), or
/// over loopback for a PROXY-protocol application tunnel (`LOCALHOST_APP_TUNNEL`), whose header
/// carries the client instead.
async fn connect_upstream(
    proxy: &Proxy,
    info: &ConnInfo,
    target: &InboundTarget,
) -> std::io::Result<TcpStream> {
    let loopback = target
        .tunnel
        .is_some_and(|t| t.protocol == AppTunnelProtocol::Proxy)
        && proxy.cfg.proxy.localhost_app_tunnel;
    if loopback {
        let lo = if target.upstream.is_ipv4() {
            IpAddr::from(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::from(Ipv6Addr::LOCALHOST)
        };
        return proxy
            .sockets
            .connect(SocketAddr::new(lo, target.upstream.port()), None)
            .await;
    }
    let source = proxy.upstream_source(info.peer.ip());
    proxy.sockets.connect(target.upstream, source).await
}

fn reject(respond: &mut SendResponse<Bytes>, log: &mut AccessLog, e: Error) {
    let status = e.status();
    let resp = Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    let _ = respond.send_response(resp, true);
    log.complete(Some(&e));
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    /// An idle stream's future is its relay, its record, its late-enforcement registration
    /// and the CRL wait, polled as one: no `select!` over futures that borrow what they wait
    /// on, and no copy of the relay's arguments.
    #[test]
    fn an_idle_stream_holds_its_relay_and_its_waits() {
        fn future_size<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
            size_of::<F>()
        }
        fn relay_size<A, B, C, D, E, G, F: Future>(_: impl Fn(A, B, C, D, E, G) -> F) -> usize {
            size_of::<F>()
        }
        let stream = future_size(|p: &Proxy, i: &ConnInfo, r, s| serve_stream(p, i, r, s));
        let relay = relay_size(relay_h2);
        let waits = size_of::<Registration>() + size_of::<crate::tls::RevokedWait>();
        let started_with = size_of::<&Proxy>()
            + size_of::<&ConnInfo>()
            + size_of::<Box<Request<h2::RecvStream>>>()
            + size_of::<SendResponse<Bytes>>();
        // The poll's three borrows, the future's own state tag and the relay's result slot.
        let bound = relay + size_of::<AccessLog>() + waits + started_with + 3 * 8 + 32;
        assert!(
            stream <= bound,
            "stream future {stream} B: relay {relay} B, waits {waits} B, started with \
             {started_with} B"
        );
    }
}
