//! Inbound HBONE (15008): terminate mTLS with the pod's own certificate, then serve each
//! CONNECT stream as a tunnel to the app, delivered with the client's original IP.
//!
//! Request validation is strict and happens before anything is dialled: only CONNECT, only
//! an `ip:port` authority equal to the address the client dialled, never ztun's own ports or
//! loopback. Nothing read from the stream is forwarded before the 200 is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::hbone::parse_authority;
use super::hbone::stream::relay as relay_h2;
use super::outbound::canonical;
use super::proxy::Drains;
use super::{Error, Proxy};
use crate::drain::DrainMode;
use crate::identity::Identity;
use crate::ops::access::{AccessLog, Direction};
use crate::tls::peer_identity;

/// Concurrent streams a client may open on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Largest decoded header list accepted (bounds CONTINUATION floods).
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Send buffer per stream.
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// Serves one HBONE connection: handshake, then streams until the client or a drain ends it.
pub async fn serve(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, mut drain: Drains) {
    let peer = canonical(peer);
    let local = match tcp.local_addr() {
        Ok(a) => canonical(a),
        Err(_) => return,
    };
    let _ = proxy.sockets.prepare_accepted(&tcp);
    let accepted =
        tokio::time::timeout(proxy.cfg.proxy.handshake_timeout, handshake(&proxy, tcp)).await;
    let (mut conn, client_id) = match accepted {
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
    let conn_info = Arc::new(ConnInfo {
        peer,
        local,
        client: client_id,
    });
    let mut draining = false;
    let keepalive = super::hbone::keepalive(
        conn.ping_pong(),
        super::hbone::H2Settings::from_config(&proxy.cfg.proxy).ping_interval,
    );
    tokio::pin!(keepalive);
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = &mut keepalive => break,
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
                let proxy = proxy.clone();
                let info = conn_info.clone();
                let mut w = drain.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_stream(&proxy, &info, req, respond) => {}
                        _ = w.immediate() => {}
                    }
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
}

type ServerConn = h2::server::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes>;

async fn handshake(proxy: &Proxy, tcp: TcpStream) -> Result<(ServerConn, Identity), Error> {
    let w = proxy.local_workload().await?;
    let cert = proxy.local_cert(&w).await?;
    let tls = TlsAcceptor::from(cert.server_config())
        .accept(tcp)
        .await
        .map_err(|e| Error::Tls(Arc::new(e)))?;
    let client = peer_identity(tls.get_ref().1.peer_certificates())?;
    let s = &proxy.cfg.proxy;
    let conn = h2::server::Builder::new()
        .initial_window_size(s.http2_stream_window)
        .initial_connection_window_size(s.http2_connection_window)
        .max_frame_size(s.http2_frame_size)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake(tls)
        .await
        .map_err(|e| Error::H2(Arc::new(e)))?;
    Ok((conn, client))
}

async fn serve_stream(
    proxy: &Proxy,
    info: &ConnInfo,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let mut log = AccessLog::new(Direction::Inbound);
    log.src.addr = Some(info.peer);
    log.src.identity = Some(info.client.clone());
    log.src.namespace = Some(info.client.namespace().into());
    log.dst.workload = Some(proxy.pod.name.clone());
    log.dst.namespace = Some(proxy.pod.namespace.clone());
    log.dst.identity = proxy
        .state
        .load()
        .workload_by_pod(&proxy.pod.namespace, &proxy.pod.name, None)
        .and_then(|w| w.identity());

    let target = match validate(proxy, info, &req) {
        Ok(t) => t,
        Err(e) => return reject(&mut respond, &log, e),
    };
    log.hbone_addr = Some(target);
    log.dst.addr = Some(target);
    let upstream = match proxy.sockets.connect(target, Some(info.peer.ip())).await {
        Ok(s) => s,
        Err(e) => return reject(&mut respond, &log, Error::ConnectUpstream(Arc::new(e))),
    };
    let send = match respond.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default(),
        false,
    ) {
        Ok(s) => s,
        Err(e) => return log.complete(0, 0, Some(&Error::H2(Arc::new(e)))),
    };
    let (rd, wr) = upstream.into_split();
    let (t, res) = relay_h2(rd, wr, send, req.into_body()).await;
    // From the client's point of view: it sent what we wrote to the app.
    match res {
        Ok(()) => log.complete(t.to_tcp, t.from_tcp, None),
        Err(e) => log.complete(t.to_tcp, t.from_tcp, Some(&Error::from(e))),
    }
}

/// Checks the request and returns the address to dial.
fn validate(
    proxy: &Proxy,
    info: &ConnInfo,
    req: &Request<h2::RecvStream>,
) -> Result<SocketAddr, Error> {
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
    let target = parse_authority(authority.as_str())
        .map_err(|_| Error::BadRequest("authority is not ip:port"))?;
    if target.ip() != info.local.ip() {
        return Err(Error::IpMismatch {
            authority: target,
            dialled: info.local,
        });
    }
    if target.ip().is_loopback() || proxy.is_own_port(target.port()) {
        return Err(Error::SelfCall(target));
    }
    Ok(target)
}

fn reject(respond: &mut SendResponse<Bytes>, log: &AccessLog, e: Error) {
    let status = e.status();
    let resp = Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    let _ = respond.send_response(resp, true);
    log.complete(0, 0, Some(&e));
}
