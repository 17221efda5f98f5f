//! A pod's listeners: binding them in the pod's namespace, the accept loops, the pod's
//! connection budget, and the handle that keeps them running.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

use super::proxy::Proxy;
use super::Drains;
use crate::drain::{self, DrainMode};
use crate::ops::metrics::{Reporter, SocketOpen};
use crate::ops::Telemetry;
use crate::sockets::Transparency;
use crate::workers::Workers;

impl Proxy {
    /// Binds the pod's listeners (on the calling thread, in the pod's namespace) and starts
    /// serving them on the `data` workers. Dropping the returned handle stops the listeners
    /// and closes the pod's connections. `process` is the process-wide drain: its signal
    /// reaches every listener and connection, and its `closed()` waits for all of them.
    /// `also` starts what else serves the pod under the same drain (its DNS proxy, from the
    /// composition root) on the worker it is given, once the proxy's own listeners are bound;
    /// its error fails the start.
    ///
    /// Each port gets a listener per worker, in one SO_REUSEPORT group, so the kernel
    /// spreads the pod's connections over the workers (`crate::workers`). Without port reuse
    /// (`INPOD_PORT_REUSE=false`) a port takes one listener: the pod is served by one worker.
    pub fn start(
        self: &Arc<Self>,
        data: &Workers,
        process: &drain::Trigger,
        also: impl FnOnce(&Drains, &Handle) -> io::Result<()>,
    ) -> io::Result<ProxyHandle> {
        let any = if self.cfg.proxy.ipv6_enabled {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let transparency = transparency(self.cfg.proxy.enable_orig_src);
        let p = &self.cfg.proxy;
        let home = data.home();
        let workers = if self.sockets.reuses_ports() {
            self.sockets.enable_listener_migration();
            data.handles()
        } else {
            std::slice::from_ref(home)
        };
        // Every listener of a port is bound before any is served; a port is transparent when
        // the kernel let each of its listeners be.
        let listen = |port| -> io::Result<(Vec<std::net::TcpListener>, bool)> {
            let mut bound = Vec::with_capacity(workers.len());
            let mut transparent = true;
            for _ in workers {
                let (l, t) = self
                    .sockets
                    .capture_listener(SocketAddr::new(any, port), transparency)?;
                transparent &= t;
                bound.push(l);
            }
            Ok((bound, transparent))
        };
        let (outbound, _) = listen(p.outbound_port)?;
        let (plaintext, plaintext_transparent) = listen(p.inbound_plaintext_port)?;
        let (hbone, hbone_transparent) = listen(p.inbound_hbone_port)?;
        let original_source = plaintext_transparent && hbone_transparent;
        if transparency == Transparency::BestEffort && !original_source {
            tracing::info!(pod = %self.pod.name, "no CAP_NET_ADMIN: connections reach the app from the pod's own address");
        }
        self.original_source
            .store(original_source, Ordering::Relaxed);
        let (trigger, pod) = drain::channel();
        let (drains, feed) = drain::merge(pod, process.watch());
        home.spawn(feed);
        also(&drains, home)?;
        // The pod's connection budget, shared by its listeners on every worker.
        let budget = Arc::new(ConnSlots::new(self.cfg.proxy.max_connections_per_pod));
        let serving = Serving {
            proxy: self,
            drains: &drains,
            budget: &budget,
        };
        let ports = outbound.into_iter().zip(plaintext).zip(hbone);
        for (worker, ((outbound, plaintext), hbone)) in workers.iter().zip(ports) {
            serving.spawn(worker, outbound, "outbound", super::outbound::serve);
            serving.spawn(worker, plaintext, "inbound", super::passthrough::serve);
            serving.spawn(worker, hbone, "inbound", super::inbound::serve);
        }
        // Late enforcement: closes open inbound connections a policy change denies. It stops
        // when draining starts (it must not hold the drain open); connections still finishing
        // then are bounded by the termination deadline.
        let enforce = self.connections.clone().enforce(self.state.clone());
        let mut d = drains;
        home.spawn(async move {
            tokio::select! {
                _ = enforce => {}
                _ = d.signaled() => {}
            }
        });
        Ok(ProxyHandle { trigger })
    }
}

/// What a pod's listeners share while they are started: each is served on its worker
/// under the pod's drain and connection budget, reporting to the proxy's telemetry.
struct Serving<'a> {
    proxy: &'a Arc<Proxy>,
    drains: &'a Drains,
    budget: &'a Arc<ConnSlots>,
}

impl Serving<'_> {
    /// Serves `listener` on `worker`, each accepted connection by `handle` (`direction`
    /// labels its refusals over the budget).
    fn spawn<H, Fut>(
        &self,
        worker: &Handle,
        listener: std::net::TcpListener,
        direction: &'static str,
        handle: H,
    ) where
        H: Fn(Arc<Proxy>, TcpStream, SocketAddr, Drains) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let proxy = self.proxy.clone();
        let slots = (self.budget.clone(), direction);
        let telemetry = self.proxy.telemetry.clone();
        worker.spawn(serve(
            listener,
            self.drains.clone(),
            slots,
            telemetry,
            move |s, peer, d| handle(proxy.clone(), s, peer, d),
        ));
    }
}

/// Keeps a pod's proxy running; dropping it (or [`ProxyHandle::drain`]) stops it.
#[must_use = "dropping the handle stops the pod's proxy"]
pub struct ProxyHandle {
    trigger: drain::Trigger,
}

impl ProxyHandle {
    /// Stops accepting; connections stop now (`Immediate`) or run to completion (`Graceful`).
    pub fn drain(&self, mode: DrainMode) {
        self.trigger.start(mode);
    }

    /// Resolves when every listener and connection of the pod is gone.
    pub async fn closed(&self) {
        self.trigger.closed().await
    }
}

/// A pod's open connections, counted against `ZTUN_MAX_CONNECTIONS_PER_POD` so one pod cannot
/// spend the whole process's file descriptors.
struct ConnSlots {
    open: AtomicU32,
    /// 0: no limit.
    max: u32,
    /// Set while the pod is at its limit, so the refusal is logged once per episode.
    full: AtomicBool,
}

impl ConnSlots {
    fn new(max: u32) -> Self {
        ConnSlots {
            open: AtomicU32::new(0),
            max,
            full: AtomicBool::new(false),
        }
    }

    /// A slot for one more connection, or `None` at the limit.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let max = match self.max {
            0 => u32::MAX,
            m => m,
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }
}

/// One open connection of a pod; dropping it frees the slot.
struct Slot(Arc<ConnSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// One connection's task: the connection, until it ends or the drain turns immediate,
    /// with its slot of the pod's budget and its socket gauge. A struct polled in place, not
    /// an `async` block: a block that builds the connection's future keeps the socket and
    /// address it handed over for as long as the connection lives (an `async` block's
    /// captures keep their places), and one that `select!`s a future built outside stores
    /// that future twice (as the capture and as the `select!`'s operand).
    struct Connection<C, D> {
        #[pin]
        conn: C,
        #[pin]
        drained: D,
        slot: Slot,
        socket: SocketOpen,
    }
}

impl<C: Future<Output = ()>, D: Future<Output = ()>> Future for Connection<C, D> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.conn.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Dropping the task (on return) drops the connection, then frees the slot.
        this.drained.poll(cx)
    }
}

/// The task serving `conn` under `drain`, holding `slot` and `socket` until it ends.
fn connection_task<C: Future<Output = ()>>(
    conn: C,
    mut drain: Drains,
    slot: Slot,
    socket: SocketOpen,
) -> Connection<C, impl Future<Output = ()>> {
    Connection {
        conn,
        drained: async move { drain.immediate().await },
        slot,
        socket,
    }
}

/// Refuses a connection over the pod's limit: reset at once (nothing was read), counted as
/// `ztun_connection_failures_total{reason="pod_connection_limit"}`, logged once per episode.
fn refuse_over_limit(
    stream: TcpStream,
    peer: SocketAddr,
    slots: &ConnSlots,
    direction: &'static str,
    telemetry: &Telemetry,
) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
    telemetry
        .metrics
        .failures
        .get_or_create(&crate::ops::metrics::FailureLabels {
            direction,
            reason: "pod_connection_limit",
        })
        .inc();
    if !slots.full.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            %peer,
            direction,
            limit = slots.max,
            "pod connection limit reached, refusing new connections"
        );
    }
}

/// What the capture listeners ask of `IP_TRANSPARENT` under `ENABLE_ORIG_SRC`, as ztunnel
/// decides: `true` requires it (a pod whose listeners cannot have it does not start),
/// `false` never asks, unset tries and falls back to delivering from the pod's own
/// address when the kernel refuses (no `CAP_NET_ADMIN` or `CAP_NET_RAW`).
pub(crate) fn transparency(enable_orig_src: Option<bool>) -> Transparency {
    match enable_orig_src {
        Some(true) => Transparency::Required,
        Some(false) => Transparency::Off,
        None => Transparency::BestEffort,
    }
}

/// Accepts until drained; each connection runs in its own task until done or drained
/// immediately. Every task holds a clone of the drains, which is what lets the process wait
/// for its connections on shutdown, and a slot of the pod's connection budget.
async fn serve<F, Fut>(
    listener: std::net::TcpListener,
    mut drains: Drains,
    (slots, direction): (Arc<ConnSlots>, &'static str),
    telemetry: Arc<Telemetry>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Drains) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let reporter = match direction {
        "outbound" => Reporter::Source,
        _ => Reporter::Destination,
    };
    loop {
        let accepted = tokio::select! {
            _ = drains.signaled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = slots.take() else {
                    refuse_over_limit(stream, peer, &slots, direction, &telemetry);
                    continue;
                };
                if slots.full.load(Ordering::Relaxed) {
                    slots.full.store(false, Ordering::Relaxed);
                }
                let socket = telemetry.metrics.socket_opened(reporter);
                let conn = handle(stream, peer, drains.clone());
                tokio::spawn(connection_task(conn, drains.clone(), slot, socket));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning, and say so
                // in metrics and readiness (the kernel queue keeps the client waiting meanwhile).
                if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    telemetry.note_fd_exhausted();
                }
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    drop(listener);
    tracing::debug!(port, "listener closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task is its connection's future, its drain wait and its two guards:
    /// nothing it handed the connection, no second copy of the connection's future. An
    /// immediate drain ends it and frees the connection's slot.
    #[tokio::test]
    async fn a_connection_task_is_its_connection_and_its_drain_wait() {
        use std::mem::size_of_val;
        let slots = Arc::new(ConnSlots::new(0));
        let telemetry = Telemetry::detached();
        let (trigger, mut drain) = drain::channel();
        let state = [7u8; 256];
        let conn = async move {
            std::future::pending::<()>().await;
            std::hint::black_box(state);
        };
        let conn_size = size_of_val(&conn);
        let drained = size_of_val(&drain.immediate()) + std::mem::size_of::<Drains>() + 8;
        let slot = slots.take().expect("a slot");
        let socket = telemetry.metrics.socket_opened(Reporter::Source);
        let guards = std::mem::size_of::<Slot>() + std::mem::size_of::<SocketOpen>();
        let task = connection_task(conn, drain, slot, socket);
        let size = size_of_val(&task);
        // Each field padded to the task's 8-byte alignment.
        assert!(
            size <= conn_size.next_multiple_of(8) + drained + guards,
            "connection task {size} B, its connection {conn_size} B, drain wait {drained} B"
        );
        let running = tokio::spawn(task);
        trigger.start(DrainMode::Immediate);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("an immediate drain ends the task")
            .expect("the task ran");
        assert_eq!(slots.open.load(Ordering::Acquire), 0, "slot freed");
    }

    /// ztunnel's `maybe_set_transparent`: `true` requires, `false` skips, unset tries.
    #[test]
    fn enable_orig_src_picks_ztunnels_listener_transparency() {
        assert_eq!(transparency(Some(true)), Transparency::Required);
        assert_eq!(transparency(Some(false)), Transparency::Off);
        assert_eq!(transparency(None), Transparency::BestEffort);
    }
}
