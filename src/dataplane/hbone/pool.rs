//! The HBONE connection pool of one proxy instance (one pod in shared mode).
//!
//! Keyed by (source identity, expected destination identities, destination address, source
//! IP): a stream of pod A never rides a connection authenticated as pod B, nor one that proved
//! a different peer. Each connection carries up to `max_streams` CONNECT streams; when all are
//! busy a new connection is dialled. At most one dial per key is in flight: other callers wait
//! for it and then share the result. A connection idle for `idle_timeout` is released.
//!
//! A connection whose peer sent GOAWAY (a destination ztun draining for an upgrade) stays
//! open while its own streams finish but refuses new ones. Checking out waits for the
//! connection to accept a stream; one that refuses is taken out of the pool and the next is
//! tried, so a long-lived stream on a draining peer never fails the connections after it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::client::{dial, Dialed};
use super::H2Settings;
use crate::dataplane::Error;
use crate::identity::Identity;
use crate::sockets::Sockets;
use crate::tls::crl::Tracked;
use crate::tls::{RevokedSignal, WorkloadCert};

/// What a pooled connection is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Identity presented by the source.
    pub src_identity: Identity,
    /// Identities the destination may prove (ordered as the route gave them).
    pub dst_identities: Arc<[Identity]>,
    /// Where the connection goes (`ip:15008`).
    pub dst: SocketAddr,
    /// IP of the source workload.
    pub src_ip: IpAddr,
}

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Streams per connection before another is dialled.
    pub max_streams: u32,
    /// Idle time after which an unused connection is closed.
    pub idle_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// HTTP/2 settings.
    pub h2: H2Settings,
}

/// A per-proxy HBONE pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: PoolConfig,
    sockets: Sockets,
    // Short critical sections only (lookup/insert); never held across `.await`.
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    // One async lock per key serialises dials for that key.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

struct Conn {
    send: SendRequest<Bytes>,
    /// Fires when a CRL reload revokes the peer (never without CRL checking).
    revoked: RevokedSignal,
    active: AtomicU32,
    closed: AtomicBool,
    /// Last time the stream count dropped to zero.
    idle_since: Mutex<Instant>,
}

/// How many pooled connections one checkout may find refusing new streams before it fails.
const MAX_REFUSING_CONNECTIONS: usize = 3;

/// A checked-out stream slot on a pooled connection. Dropping it frees the slot.
#[must_use = "dropping the checkout frees the stream slot at once"]
pub struct Checkout {
    /// Holds the stream slot; dropping it frees the slot.
    slot: Slot,
    /// The connection's handle, ready to open one stream.
    send: SendRequest<Bytes>,
}

impl Checkout {
    /// The handle to open the stream with; the connection has room for it.
    pub fn sender(&mut self) -> &mut SendRequest<Bytes> {
        &mut self.send
    }

    /// Completes when a CRL reload revokes the connection's peer (which closes it).
    pub fn revoked(&self) -> RevokedSignal {
        self.slot.conn.revoked.clone()
    }

    /// The stream slot alone, for a stream already opened: the connection's handle is let go,
    /// so an open tunnel does not keep it (a tunnel opens one stream, and the handle would
    /// also keep a stream h2 held as pending open).
    pub fn into_slot(self) -> StreamSlot {
        StreamSlot(self.slot)
    }
}

/// The stream slot of an opened tunnel on a pooled connection. Dropping it frees the slot.
#[must_use = "dropping the slot frees it at once"]
pub struct StreamSlot(Slot);

impl StreamSlot {
    /// Completes when a CRL reload revokes the connection's peer (which closes it).
    pub fn revoked(&self) -> RevokedSignal {
        self.0.conn.revoked.clone()
    }
}

impl Pool {
    /// An empty pool creating its sockets with `sockets`.
    pub fn new(cfg: PoolConfig, sockets: Sockets) -> Self {
        Pool {
            inner: Arc::new(Inner {
                cfg,
                sockets,
                conns: Mutex::new(HashMap::new()),
                dialing: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A stream slot for `key` on a connection that accepts a new stream, dialling with
    /// `cert` if no connection has room. Connections that refuse (GOAWAY received) leave the
    /// pool; nothing was sent on them, so moving on to another cannot repeat a request.
    pub async fn checkout(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<Checkout, Error> {
        let mut refused = 0;
        loop {
            let slot = self.reserve(key, cert).await?;
            match slot.conn.send.clone().ready().await {
                Ok(send) => return Ok(Checkout { slot, send }),
                Err(e) => {
                    slot.conn.closed.store(true, Ordering::Release);
                    self.inner.remove(key, &slot.conn);
                    refused += 1;
                    tracing::debug!(dst = %key.dst, error = %e, refused, "pooled hbone connection refuses new streams");
                    if refused == MAX_REFUSING_CONNECTIONS {
                        return Err(Error::H2(Arc::new(e)));
                    }
                }
            }
        }
    }

    /// A slot on a pooled connection with room, or on a newly dialled one.
    async fn reserve(&self, key: &PoolKey, cert: &WorkloadCert) -> Result<Slot, Error> {
        if let Some(c) = self.inner.try_reserve(key) {
            return Ok(c);
        }
        let lock = self
            .inner
            .dialing
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let _dialing = lock.lock().await;
        // Someone may have dialled while we waited.
        if let Some(c) = self.inner.try_reserve(key) {
            return Ok(c);
        }
        let cfg = &self.inner.cfg;
        // Boxed: the handshake state is large and only needed on this cold path, so it must not
        // inflate the future of every connection that checks out a pooled stream.
        let dialed = Box::pin(dial(
            &self.inner.sockets,
            cert,
            &key.dst_identities,
            key.dst,
            &cfg.h2,
            cfg.handshake_timeout,
        ))
        .await;
        let Dialed {
            send,
            connection,
            peer,
            tracked,
        } = match dialed {
            Ok(d) => d,
            Err(e) => {
                self.inner.forget_dial(key, &lock);
                return Err(e);
            }
        };
        tracing::debug!(dst = %key.dst, %peer, src = %key.src_identity, "hbone connection established");
        let conn = Arc::new(Conn {
            send,
            revoked: tracked
                .as_ref()
                .map_or_else(RevokedSignal::never, Tracked::signal),
            active: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        self.inner
            .conns
            .lock()
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        tokio::spawn(drive(
            Arc::downgrade(&self.inner),
            key.clone(),
            Arc::downgrade(&conn),
            connection,
            tracked,
        ));
        Ok(Slot { conn })
    }

    /// Number of open connections (for introspection and tests).
    pub fn connections(&self) -> usize {
        self.inner.conns.lock().values().map(Vec::len).sum()
    }

    /// Drops every connection; their streams end as the connections close.
    pub fn clear(&self) {
        self.inner.conns.lock().clear();
    }
}

/// A reserved stream slot whose connection has not yet been asked for readiness.
struct Slot {
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.release();
    }
}

impl Conn {
    fn release(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock() = Instant::now();
        }
    }
}

impl Inner {
    fn try_reserve(&self, key: &PoolKey) -> Option<Slot> {
        let conns = self.conns.lock();
        let list = conns.get(key)?;
        for c in list {
            if c.closed.load(Ordering::Acquire) {
                continue;
            }
            let reserved = c
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.cfg.max_streams).then_some(n + 1)
                })
                .is_ok();
            if reserved {
                return Some(Slot { conn: c.clone() });
            }
        }
        None
    }

    /// After a failed dial for `key`: its dial lock is dropped from the map unless another
    /// caller is waiting on it or a connection exists, so destinations that never answer do
    /// not leave an entry each behind.
    fn forget_dial(&self, key: &PoolKey, lock: &Arc<tokio::sync::Mutex<()>>) {
        if self.conns.lock().contains_key(key) {
            return;
        }
        let mut dialing = self.dialing.lock();
        // The map's reference and ours: nobody else is waiting to dial this key.
        if Arc::strong_count(lock) <= 2 {
            dialing.remove(key);
        }
    }

    /// Number of keys with a dial lock (for tests).
    #[cfg(test)]
    pub(crate) fn dial_locks(&self) -> usize {
        self.dialing.lock().len()
    }

    fn remove(&self, key: &PoolKey, conn: &Arc<Conn>) {
        let mut conns = self.conns.lock();
        if let Some(list) = conns.get_mut(key) {
            list.retain(|c| !Arc::ptr_eq(c, conn));
            if list.is_empty() {
                conns.remove(key);
                self.dialing.lock().remove(key);
            }
        }
    }
}

/// Drives one connection until it closes or sits idle past the timeout.
async fn drive<T>(
    pool: Weak<Inner>,
    key: PoolKey,
    conn: Weak<Conn>,
    mut connection: h2::client::Connection<T, Bytes>,
    tracked: Option<Tracked>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (idle_timeout, ping_interval) = match pool.upgrade() {
        Some(p) => (p.cfg.idle_timeout, p.cfg.h2.ping_interval),
        None => return,
    };
    let keepalive = super::keepalive(connection.ping_pong(), ping_interval);
    tokio::pin!(keepalive);
    let mut check = tokio::time::interval(
        idle_timeout
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(100)),
    );
    check.tick().await;
    let mut revoked = tracked
        .as_ref()
        .map_or_else(RevokedSignal::never, Tracked::signal);
    // Once unpooled, the connection is only polled until h2 closes it: that happens when the
    // last request handle and the last stream are gone.
    let mut unpooled = false;
    loop {
        tokio::select! {
            _ = revoked.revoked() => {
                tracing::warn!(dst = %key.dst, src = %key.src_identity, reporter = "source", "peer certificate revoked, closing hbone connection");
                break;
            }
            res = &mut connection => {
                if let Err(e) = res {
                    tracing::debug!(dst = %key.dst, error = %e, "hbone connection closed");
                }
                break;
            }
            _ = &mut keepalive => break,
            _ = check.tick(), if !unpooled => {
                let (Some(p), Some(c)) = (pool.upgrade(), conn.upgrade()) else {
                    unpooled = true;
                    continue;
                };
                let idle = c.active.load(Ordering::Acquire) == 0 && c.idle_since.lock().elapsed() >= idle_timeout;
                if idle {
                    c.closed.store(true, Ordering::Release);
                    p.remove(&key, &c);
                    unpooled = true;
                }
            }
        }
    }
    if let (Some(p), Some(c)) = (pool.upgrade(), conn.upgrade()) {
        c.closed.store(true, Ordering::Release);
        p.remove(&key, &c);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::ca::LocalCa;

    fn pool() -> Pool {
        Pool::new(
            PoolConfig {
                max_streams: 100,
                idle_timeout: Duration::from_secs(60),
                handshake_timeout: Duration::from_secs(5),
                h2: crate::dataplane::hbone::H2Settings {
                    stream_window: 1 << 20,
                    connection_window: 1 << 20,
                    frame_size: 1 << 14,
                    ping_interval: Duration::from_secs(10),
                },
            },
            Sockets::for_tests(),
        )
    }

    /// A port nothing listens on: bound, noted, closed.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// A destination that refuses every dial leaves no dial lock behind, however many keys
    /// are tried (the map would otherwise grow with every dead peer), and also when several
    /// callers wait on the same key's dial at once (the last one to fail removes the lock).
    #[tokio::test]
    async fn failed_dials_leave_no_dial_lock() {
        let pool = pool();
        let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca.mint(&id).unwrap();
        let dst = closed_port();
        let key = |n: u8| PoolKey {
            src_identity: id.clone(),
            dst_identities: vec![id.clone()].into(),
            dst,
            src_ip: std::net::IpAddr::from([127, 0, 0, n]),
        };
        for n in 1..=5u8 {
            assert!(pool.checkout(&key(n), &cert).await.is_err());
        }
        assert_eq!(pool.inner.dial_locks(), 0);
        // Eight callers on one key at once: they queue on its dial lock, each fails.
        let cert = Arc::new(cert);
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (pool, cert, key) = (pool.clone(), cert.clone(), key(9));
            callers.spawn(async move { pool.checkout(&key, &cert).await.is_err() });
        }
        while let Some(failed) = callers.join_next().await {
            assert!(failed.unwrap(), "a dial to a closed port succeeded");
        }
        assert_eq!(pool.inner.dial_locks(), 0);
        assert_eq!(pool.connections(), 0);
    }
}
