//! Outbound capture (15001): a pod's connection, redirected here, leaves as HBONE (mesh
//! destinations), double HBONE through a network gateway (mesh destinations on another
//! network), plain TCP (non-mesh workloads) or passthrough (unknown addresses). An endpoint
//! known only by hostname is resolved first (through the process's resolver).
//!
//! The source is always the pod this listener belongs to: never looked up by IP.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::SendStream;
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::net::TcpStream;

use super::hbone::pool::{PoolKey, StreamSlot};
use super::hbone::stream::relay_early;
use super::route::{self, PendingHost, RefuseReason, Route};
use super::tcp::{canonical, original_destination, relay_tcp};
use super::{unbox, Drains, Error, Proxy, ResolveError};
use crate::ops::access::{AccessLog, Direction, HboneTarget, ServiceRef};
use crate::ops::metrics::OnDemandDnsLabels;
use crate::state::canonical_ip;
use crate::state::model::Workload;
use crate::tls::crl::Tracked;
use crate::tls::RevokedSignal;

/// Serves one captured outbound connection to completion. The drain is not needed here (the
/// connection's task obeys it): it is dropped at once rather than kept in the connection's
/// future, as an `async fn`'s argument would be.
pub fn serve(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    drain: Drains,
) -> impl Future<Output = ()> + Send {
    drop(drain);
    serve_connection(proxy, tcp, peer)
}

async fn serve_connection(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr) {
    let mut log = AccessLog::new(Direction::Outbound, proxy.telemetry.clone());
    log.src.addr = Some(canonical(peer));
    log.src.workload = Some(proxy.pod.name.clone());
    log.src.namespace = Some(proxy.pod.namespace.clone());
    // Setting up and relaying are two futures, one after the other: the relay, which an idle
    // connection sits in, does not carry the setup's state (routes, keys, certificates).
    // `Ready` is boxed so that neither this future nor the relay's keeps a copy of it inline,
    // and so is the setup future itself: inline, this task would be as large as the setup
    // (dial, handshake, pool checkout) for as long as the connection lives, though an idle
    // connection only ever needs the relay's state. The box lives for the setup only.
    let ready = match Box::pin(prepare(&proxy, tcp, peer, &mut log)).await {
        Ok(ready) => ready,
        Err(e) => return log.complete(Some(&e)),
    };
    match relay(proxy.cfg.proxy.stream_stall_timeout, ready, &mut log).await {
        Ok(()) => log.complete(None),
        Err(e) => log.complete(Some(&e)),
    }
}

/// A connection set up and ready to relay.
enum Ready {
    /// Plain TCP to `upstream`.
    Tcp { tcp: TcpStream, upstream: TcpStream },
    /// An HBONE stream whose CONNECT is sent and whose answer is pending.
    Hbone {
        tcp: TcpStream,
        slot: StreamSlot,
        response: ResponseFuture,
        send: SendStream<Bytes>,
    },
    /// The inner HBONE stream of double HBONE, its CONNECT sent: it rides its own HTTP/2
    /// connection (driven by `inner`) inside a pooled outer stream to the gateway.
    DoubleHbone {
        tcp: TcpStream,
        outer: StreamSlot,
        inner: AbortOnDrop,
        /// Fires when a CRL reload revokes the destination (the inner tunnel's peer).
        inner_revoked: RevokedSignal,
        response: ResponseFuture,
        send: SendStream<Bytes>,
    },
}

/// Aborts the task when dropped: the inner HTTP/2 connection of a double-HBONE tunnel lives
/// exactly as long as its one stream.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Relays a connection set up by `prepare`. `ready`'s box is freed as the relay starts
/// ([`unbox`]): its parts move into the relay, and an emptied box would stay allocated for as
/// long as the connection lives. A plain function returning the relay's future, not an
/// `async fn`: awaited inside a `match` on `Ready`, a relay would keep the emptied `Ready`
/// (the `match`'s operand) in the connection's future for as long as it runs.
fn relay(
    stall: Option<Duration>,
    ready: Box<Ready>,
    log: &mut AccessLog,
) -> Relaying<'_, impl Future<Output = Result<(), Error>> + Send + Unpin + '_> {
    match unbox(ready) {
        Ready::Hbone {
            tcp,
            slot,
            response,
            send,
        } => Relaying::Pooled(relay_hbone(stall, tcp, slot, response, send, log)),
        // Boxed: inline, plain TCP's copy state would size every connection's future, the
        // tunnelled ones' too.
        Ready::Tcp { tcp, upstream } => Relaying::Other(Box::pin(async move {
            relay_tcp(tcp, upstream, &log.meter()).await
        })),
        // Boxed: the rare double-HBONE relay must not grow every connection's future.
        Ready::DoubleHbone {
            tcp,
            outer,
            inner,
            inner_revoked,
            response,
            send,
        } => Relaying::Other(Box::pin(async move {
            let mut inner_revoked = inner_revoked.into_wait();
            let mut relay = relay_hbone(stall, tcp, outer, response, send, log);
            let res = poll_fn(|cx| {
                if inner_revoked.poll(cx).is_ready() {
                    return Poll::Ready(Err(Error::CertRevoked));
                }
                Pin::new(&mut relay).poll(cx)
            })
            .await;
            drop(relay);
            drop(inner);
            res
        })),
    }
}

/// A connection's relay: a pooled tunnel's inline, the others' boxed.
enum Relaying<'a, P> {
    Pooled(P),
    Other(Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>),
}

impl<P: Future<Output = Result<(), Error>> + Unpin> Future for Relaying<'_, P> {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Relaying::Pooled(relay) => Pin::new(relay).poll(cx),
            Relaying::Other(relay) => relay.as_mut().poll(cx),
        }
    }
}

/// Relays the client's socket over an HBONE stream whose CONNECT answer is pending, until
/// done or the (outer) tunnel's peer is revoked; the stream's slot is freed as it ends. A
/// plain function returning a [`poll_fn`] that owns the relay, the slot and the revocation
/// wait: an `async fn` would also keep a slot for each argument in the connection's future.
fn relay_hbone<'a>(
    stall: Option<Duration>,
    tcp: TcpStream,
    slot: StreamSlot,
    response: ResponseFuture,
    send: SendStream<Bytes>,
    log: &'a mut AccessLog,
) -> impl Future<Output = Result<(), Error>> + Send + Unpin + 'a {
    let meter = log.meter();
    let mut revoked = slot.revoked().into_wait();
    let response = async move {
        let resp = response.await.map_err(|e| Error::H2(Arc::new(e)))?;
        if resp.status() != StatusCode::OK {
            return Err(Error::HttpStatus(resp.status()));
        }
        log.established();
        Ok(resp.into_body())
    };
    let (rd, wr) = tcp.into_split();
    let mut relay = relay_early(rd, wr, send, response, meter, stall);
    poll_fn(move |cx| {
        // Held for the relay's life: dropped with this future, freeing the stream's slot.
        let _slot = &slot;
        if revoked.poll(cx).is_ready() {
            return Poll::Ready(Err(Error::CertRevoked));
        }
        Pin::new(&mut relay).poll(cx)
    })
}

async fn prepare(
    proxy: &Proxy,
    tcp: TcpStream,
    peer: SocketAddr,
    log: &mut AccessLog,
) -> Result<Box<Ready>, Error> {
    let dst = original_destination(&tcp, proxy.cfg.proxy.outbound_port)
        .ok_or(Error::NoOriginalDestination)?;
    log.dst.addr = Some(dst);
    if proxy.is_own_port(dst.port())
        && (dst.ip().is_loopback() || dst.ip() == canonical_ip(local_ip(&tcp)))
    {
        return Err(Error::SelfCall(dst));
    }
    let src = proxy.local_workload().await?;
    log.src.describe(&src);
    log.src.identity = src.identity();
    let src_ip = canonical_ip(peer.ip());
    let plan = || {
        let snap = proxy.state.load();
        let source = route::Source {
            workload: &src,
            ip: src_ip,
            network: &proxy.cfg.network,
        };
        route::plan(&snap, &source, dst, proxy.cfg.proxy.inbound_hbone_port)
    };
    let mut route = plan();
    // On-demand mode: an address the state does not know may just not be fetched yet. Ask
    // the control plane (bounded wait), then decide again.
    if let (
        Some(od),
        Route::Tcp {
            workload: None,
            service: None,
            ..
        },
    ) = (&proxy.on_demand, &route)
    {
        let key = format!("{}/{}", proxy.cfg.network, dst.ip());
        if od.demand(key).await {
            route = plan();
        }
    }
    // At most two rounds: a hostname-only endpoint is resolved, then connected to.
    loop {
        return match route {
            Route::Resolve(pending) => {
                route = Box::pin(resolve_host(proxy, &src, pending, log)).await?;
                continue;
            }
            Route::Refuse(reason) => {
                // Refused, not hung: the client sees a reset rather than an orderly close.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                Err(match reason {
                    RefuseReason::NoHealthyUpstream | RefuseReason::UnknownServicePort => {
                        Error::NoHealthyUpstream(dst)
                    }
                    RefuseReason::UnknownWaypoint => Error::UnknownWaypoint(dst),
                    RefuseReason::UnknownNetworkGateway => Error::UnknownNetworkGateway(dst),
                })
            }
            Route::Tcp {
                dst: target,
                workload,
                service,
            } => {
                log.dst.addr = Some(target);
                if let Some(w) = &workload {
                    log.dst.describe(w);
                }
                log.service = service.as_deref().map(ServiceRef::from);
                let upstream = proxy
                    .sockets
                    .connect(target, None)
                    .await
                    .map_err(|e| Error::ConnectUpstream(Arc::new(e)))?;
                log.established();
                Ok(Box::new(Ready::Tcp { tcp, upstream }))
            }
            Route::DoubleHbone {
                gateway,
                gateway_identities,
                authority,
                identities,
                workload,
                service,
            } => {
                log.dst.addr = Some(gateway);
                log.hbone_target = Some(HboneTarget::Authority(authority.clone()));
                log.dst.describe(&workload);
                log.service = Some(ServiceRef::from(&*service));
                let cert = proxy.local_cert(&src).await?;
                let key = PoolKey {
                    src_identity: cert.identity().clone(),
                    dst_identities: gateway_identities,
                    dst: gateway,
                    src_ip,
                };
                // One set of headers for both hops: one trace across the gateway.
                let connect = Connect::new(
                    authority.to_string(),
                    canonical(peer),
                    Some(&service.hostname),
                    &src,
                )?;
                let mut outer = proxy.pool().checkout(&key, &cert).await?;
                let (response, send) = outer
                    .sender()
                    .send_request(connect.request(None)?, false)
                    .map_err(|e| Error::H2(Arc::new(e)))?;
                let resp = response.await.map_err(|e| Error::H2(Arc::new(e)))?;
                if resp.status() != StatusCode::OK {
                    return Err(Error::HttpStatus(resp.status()));
                }
                // The inner tunnel: end to end, not pooled (each one may end at another
                // endpoint behind the gateway).
                let io = super::hbone::tunnel::H2Io::new(send, resp.into_body());
                let h2 = super::hbone::H2Settings::from_config(&proxy.cfg.proxy);
                let dialed = super::hbone::client::handshake(
                    io,
                    gateway,
                    &cert,
                    &identities,
                    &h2,
                    proxy.cfg.proxy.handshake_timeout,
                )
                .await?;
                log.dst.identity = Some(dialed.peer.clone());
                let connection = dialed.connection;
                let tracked = dialed.tracked;
                let inner_revoked = tracked
                    .as_ref()
                    .map_or_else(RevokedSignal::never, Tracked::signal);
                let inner = AbortOnDrop(tokio::spawn(async move {
                    // Tracked (for CRL reloads) as long as the connection lives.
                    let _tracked = tracked;
                    let _ = connection.await;
                }));
                let network = Some(proxy.cfg.network.as_str()).filter(|n| !n.is_empty());
                let (response, send) = dialed
                    .send
                    .ready()
                    .await
                    .map_err(|e| Error::H2(Arc::new(e)))?
                    .send_request(connect.request(network)?, false)
                    .map_err(|e| Error::H2(Arc::new(e)))?;
                Ok(Box::new(Ready::DoubleHbone {
                    tcp,
                    outer: outer.into_slot(),
                    inner,
                    inner_revoked,
                    response,
                    send,
                }))
            }
            Route::Hbone {
                dst: hbone_dst,
                authority,
                identities,
                workload,
                service,
                waypoint: _,
            } => {
                log.dst.addr = Some(hbone_dst);
                log.hbone_target = Some(HboneTarget::Addr(authority));
                log.dst.describe(&workload);
                log.service = service.as_deref().map(ServiceRef::from);
                let cert = proxy.local_cert(&src).await?;
                let key = PoolKey {
                    src_identity: cert.identity().clone(),
                    dst_identities: identities,
                    dst: hbone_dst,
                    src_ip,
                };
                let mut checkout = proxy.pool().checkout(&key, &cert).await?;
                // The pool only hands out connections whose peer proved one of the identities.
                log.dst.identity = workload.identity();
                let service = service.as_ref().map(|s| &*s.hostname);
                let req = Connect::new(authority.to_string(), canonical(peer), service, &src)?
                    .request(None)?;
                let (response, send) = checkout
                    .sender()
                    .send_request(req, false)
                    .map_err(|e| Error::H2(Arc::new(e)))?;
                Ok(Box::new(Ready::Hbone {
                    tcp,
                    slot: checkout.into_slot(),
                    response,
                    send,
                }))
            }
        };
    }
}

/// The CONNECT of a tunnel: `:authority`, `forwarded` (the client's address, and the
/// service host when one was addressed), `traceparent` and `baggage`. Double HBONE sends the
/// same headers on both hops (one trace across the gateway); its inner CONNECT also names this
/// node's network (`x-forwarded-network`), as ztunnel sends it.
struct Connect {
    authority: String,
    forwarded: HeaderValue,
    traceparent: HeaderValue,
    baggage: HeaderValue,
}

impl Connect {
    fn new(
        authority: String,
        client: SocketAddr,
        service: Option<&str>,
        src: &Workload,
    ) -> Result<Connect, Error> {
        let mut forwarded = super::hbone::forwarded(client);
        if let Some(host) = service {
            forwarded.push_str(";host=");
            forwarded.push_str(host);
        }
        let value = |v: String| {
            HeaderValue::try_from(v).map_err(|_| Error::BadRequest("cannot build CONNECT"))
        };
        // The client's address and the trace are this connection's alone: indexed, each
        // would take a place in the HPACK tables of both ends of the pooled connection (up
        // to 4 KiB of entries each, plus the buffers behind them) that no later request
        // reuses. h2 sends a sensitive value as a literal that is never indexed. The baggage,
        // the same for every connection of the pod, stays indexed.
        let unique = |v: String| {
            value(v).map(|mut v| {
                v.set_sensitive(true);
                v
            })
        };
        Ok(Connect {
            authority,
            forwarded: unique(forwarded)?,
            traceparent: unique(super::hbone::traceparent())?,
            baggage: value(super::hbone::baggage(src))?,
        })
    }

    fn request(&self, network: Option<&str>) -> Result<Request<()>, Error> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(self.authority.as_str())
            .header("forwarded", self.forwarded.clone())
            .header("traceparent", self.traceparent.clone())
            .header("baggage", self.baggage.clone());
        if let Some(network) = network {
            req = req.header("x-forwarded-network", network);
        }
        req.body(())
            .map_err(|_| Error::BadRequest("cannot build CONNECT"))
    }
}

/// Resolves the hostname of the endpoint `pending` chose and finishes its route.
async fn resolve_host(
    proxy: &Proxy,
    src: &Workload,
    pending: PendingHost,
    log: &mut AccessLog,
) -> Result<Route, Error> {
    log.dst.describe(&pending.workload);
    log.service = Some(ServiceRef::from(&*pending.service));
    let hostname = pending.hostname().clone();
    proxy
        .telemetry
        .metrics
        .on_demand_dns
        .get_or_create(&OnDemandDnsLabels::new(src, hostname.clone()))
        .inc();
    let fail = |source| Error::Resolve {
        hostname: hostname.clone(),
        source,
    };
    let addrs = proxy
        .resolver
        .resolve(hostname.clone())
        .await
        .map_err(fail)?;
    tracing::debug!(%hostname, addresses = ?addrs, "hostname endpoint resolved");
    pending
        .complete(&mut rand::rng(), &addrs)
        .ok_or_else(|| fail(ResolveError::NoAddress))
}

fn local_ip(tcp: &TcpStream) -> std::net::IpAddr {
    tcp.local_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use super::*;
    use crate::ops::access::Direction;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Two connected loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.expect("connect"), accepted.expect("accept").0)
    }

    /// Heap the calling thread holds after polling `f` once, itself included.
    async fn held_after_first_poll<F: std::future::Future>(f: F) -> (isize, Pin<Box<F>>) {
        use crate::sys::alloc::CountingAlloc;
        let before = CountingAlloc::thread_net();
        let mut f = Box::pin(f);
        std::future::poll_fn(|cx| {
            let _ = f.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        (CountingAlloc::thread_net() - before, f)
    }

    /// A relay frees the box its setup handed over as it starts: an idle connection holds no
    /// more heap than the plain relay inside it (here the plain-TCP one, which is boxed), the
    /// box's size less.
    #[tokio::test]
    async fn an_idle_relay_frees_the_setups_box() {
        let mut log = AccessLog::new(Direction::Outbound, crate::ops::Telemetry::detached());
        let meter = log.meter();
        let ((tcp, _client), (upstream, _app)) = tokio::join!(socket_pair(), socket_pair());
        let ((a, _c2), (b, _a2)) = tokio::join!(socket_pair(), socket_pair());
        let ready = Box::new(Ready::Tcp { tcp, upstream });
        let (plain, plain_future) = held_after_first_poll(relay_tcp(a, b, &meter)).await;
        // The relay starts (and unboxes `ready`) when called, before its first poll.
        let called = crate::sys::alloc::CountingAlloc::thread_net();
        let relaying = relay(None, ready, &mut log);
        let called = crate::sys::alloc::CountingAlloc::thread_net() - called;
        let (held, relay_future) = held_after_first_poll(relaying).await;
        let held = called + held;
        let plain_state = plain - std::mem::size_of_val(&*plain_future) as isize;
        let boxed = match &*relay_future {
            Relaying::Other(plain) => std::mem::size_of_val(&**plain),
            Relaying::Pooled(_) => unreachable!("a plain-TCP Ready relays plain TCP"),
        };
        let held_state = held - (std::mem::size_of_val(&*relay_future) + boxed) as isize;
        assert_eq!(
            held_state,
            plain_state - std::mem::size_of::<Ready>() as isize,
            "an idle relay holds {held_state} B of heap besides its future, a plain one {plain_state} B"
        );
        drop(relay_future);
        log.complete(None);
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size3<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size6<A, B, C, D, E, G, F: std::future::Future>(
        _: impl Fn(A, B, C, D, E, G) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle tunnel's connection future is its relay, its record and the three values it was
    /// started with: no drain (the task obeys it), no emptied `Ready`, no pool handle, no copy
    /// of the relay's arguments, no awaited revocation futures beside the relay.
    #[test]
    fn an_idle_tunnel_holds_its_relay_and_little_else() {
        use std::mem::size_of;
        // The pooled relay: the early relay (its response boxed, so any response type sizes
        // it alike), the stream's slot and the revocation wait, and nothing else.
        let early = future_size6(
            |a, b, c, d: std::future::Ready<Result<h2::RecvStream, Error>>, e, g| {
                relay_early(a, b, c, d, e, g)
            },
        );
        let pooled = future_size6(relay_hbone);
        let slot_and_wait = size_of::<StreamSlot>() + size_of::<crate::tls::RevokedWait>();
        assert!(
            pooled <= early + slot_and_wait,
            "pooled relay {pooled} B, early relay {early} B, slot and revocation wait {slot_and_wait} B"
        );
        // Dispatching on `Ready` adds nothing once the relay runs.
        let relay = future_size3(relay);
        assert!(relay <= pooled, "relay {relay} B, pooled relay {pooled} B");
        // The connection: the relay, the record, and what it was started with (the pod's
        // proxy, the socket and the client's address), plus the future's own state tag.
        let started_with =
            size_of::<Arc<Proxy>>() + size_of::<TcpStream>() + size_of::<SocketAddr>();
        let connection = future_size(serve);
        let bound = relay + size_of::<AccessLog>() + started_with + 16;
        assert!(
            connection <= bound,
            "connection future {connection} B, relay {relay} B + record + {started_with} B"
        );
    }

    /// A CONNECT's per-connection headers are never indexed, so they take no place in the
    /// HPACK tables a pooled connection keeps at both ends; the pod's baggage is indexed.
    #[test]
    fn per_connection_connect_headers_stay_out_of_the_hpack_tables() {
        let src = crate::testkit::fixtures::pod("ns", "a", "sa", [10, 0, 0, 1]);
        let client = SocketAddr::from(([10, 0, 0, 1], 40_000));
        let connect =
            Connect::new("10.0.0.2:80".into(), client, Some("b.ns.svc"), &src).expect("CONNECT");
        let req = connect.request(None).expect("request");
        for unique in ["forwarded", "traceparent"] {
            assert!(
                req.headers()[unique].is_sensitive(),
                "{unique} would be indexed"
            );
        }
        assert!(
            !req.headers()["baggage"].is_sensitive(),
            "baggage not indexed"
        );
    }

    /// An idle connection's task holds the relay, not the setup: the setup future (dial,
    /// handshake, pool checkout) is boxed while it runs, so the connection's future is smaller
    /// than the setup's alone.
    #[test]
    fn the_connection_future_does_not_hold_the_setup() {
        let connection = future_size(serve);
        let setup = future_size(prepare);
        assert!(
            connection < setup,
            "connection future {connection} B, setup future {setup} B"
        );
    }
}
