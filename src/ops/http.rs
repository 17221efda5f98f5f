//! A minimal HTTP/1 server for the operational endpoints (admin, metrics, readiness).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain;

/// Largest request body the operational endpoints read.
const MAX_BODY: usize = 64 * 1024;

/// A request as handlers see it: method, path, query and a bounded body.
#[derive(Debug)]
pub struct Req {
    /// The method.
    pub method: http::Method,
    /// The path.
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The body (at most 64 KiB).
    pub body: Bytes,
    /// The client.
    pub peer: SocketAddr,
}

/// Boxed handler future.
pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
/// A request handler.
pub type Handler = Arc<dyn Fn(Req) -> Reply + Send + Sync>;

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}")),
    }
}

/// Serves `handler` on `listener` until `drain` fires. With `loopback_only`, clients that
/// are not on loopback are refused with 403 whatever the bind address.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    mut drain: drain::Watch,
    loopback_only: bool,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.signaled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    if loopback_only && !peer.ip().to_canonical().is_loopback() {
                        return Ok::<_, Infallible>(text(
                            StatusCode::FORBIDDEN,
                            "admin API is loopback-only\n",
                        ));
                    }
                    let (parts, body) = req.into_parts();
                    let body = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"))
                        }
                    };
                    let req = Req {
                        method: parts.method,
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().unwrap_or_default().to_string(),
                        headers: parts.headers,
                        body,
                        peer,
                    };
                    Ok(handler(req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "operational HTTP connection failed");
            }
        });
    }
}
