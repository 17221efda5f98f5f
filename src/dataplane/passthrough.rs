//! Plaintext inbound (15006): TCP from clients outside the mesh, redirected here by the pod's
//! rules, delivered to the app with the client's own IP (the pod's own when
//! `ENABLE_ORIG_SRC=false`). Such connections carry no identity:
//! authorization sees them as plaintext, denies close them, and a later policy change that
//! denies an open one closes it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::enforce::Revoked;
use super::tcp::{canonical, original_destination, relay_tcp};
use super::{Drains, Error, Proxy};
use crate::authz::Conn;
use crate::ops::access::{AccessLog, Direction};

/// Serves one plaintext inbound connection.
pub async fn serve(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, _drain: Drains) {
    let peer = canonical(peer);
    let mut log = AccessLog::new(Direction::Inbound, proxy.telemetry.clone());
    log.src.addr = Some(peer);
    log.dst.workload = Some(proxy.pod.name.clone());
    log.dst.namespace = Some(proxy.pod.namespace.clone());
    let Some(dst) = original_destination(&tcp, proxy.cfg.proxy.inbound_plaintext_port) else {
        return log.complete(Some(&Error::NoOriginalDestination));
    };
    log.dst.addr = Some(dst);
    if dst.ip().is_loopback() || proxy.is_own_port(dst.port()) {
        return log.complete(Some(&Error::SelfCall(dst)));
    }
    // Authorize with no identity (registered first: see `dataplane::enforce`). The pod's
    // workload may still be on its way from the control plane: wait for it, bounded.
    if let Err(e) = proxy.local_workload().await {
        return log.complete(Some(&e));
    }
    let conn = Conn {
        src_ip: peer.ip(),
        src_identity: None,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    };
    let mut registration = proxy.connections.register(conn.clone());
    let decision = proxy.connections.check(&proxy.state.load(), &conn);
    if let Some(denial) = decision.denial() {
        // Dropping the socket closes the client's connection.
        return log.complete(Some(&Error::Denied(denial)));
    }
    let source = proxy.upstream_source(peer.ip());
    let upstream = match proxy.sockets.connect(dst, source).await {
        Ok(s) => s,
        Err(e) => return log.complete(Some(&Error::ConnectUpstream(Arc::new(e)))),
    };
    log.established();
    let meter = log.meter();
    tokio::select! {
        res = relay_tcp(tcp, upstream, &meter) => match res {
            Ok(()) => log.complete(None),
            Err(e) => log.complete(Some(&e)),
        },
        Revoked(denial) = registration.revoked() => {
            log.complete(Some(&Error::Revoked(denial)));
        }
    }
}
