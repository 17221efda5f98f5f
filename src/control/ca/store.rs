//! The per-identity certificate store: fetches each workload identity's certificate from an
//! [`Issuer`], keeps it fresh, and hands it to the data plane through [`CertSource`].
//!
//! Each identity is in one [`CertState`]: `Initializing` until its first certificate arrives,
//! then `Available` while a valid certificate is held (even when its renewal is failing), or
//! `Unavailable` when the last attempt failed and no valid certificate is left.
//!
//! How certificates are obtained:
//! - On first use ([`CertSource::fetch`]): the connection waits up to
//!   [`StoreConfig::first_fetch_wait`], then fails with the reason.
//! - Ahead of use ([`CertStore::prefetch`]) for workloads scheduled on this node;
//!   [`CertStore::forget`] drops an identity no local workload has any more
//!   ([`CertStore::follow_local_workloads`] does both from the mesh state).
//! - Renewal at half of the lifetime, ± [`StoreConfig::refresh_jitter`] of the lifetime, so
//!   nodes started together do not renew together (at half of the remaining validity if the
//!   half-life has already passed when the certificate arrives). A renewed certificate
//!   replaces the old one for new handshakes only; established connections keep their `Arc`
//!   to the old one.
//! - Failures retry with exponential backoff (1 s, ×2, ±20 %, at most 150 s) per identity,
//!   while a still-valid certificate keeps serving. A certificate that expires without
//!   renewal makes its identity `Unavailable`; a received certificate that is already expired
//!   or not yet valid counts as a failure (retried with backoff, never in a tight loop).
//! - One background worker runs at most [`StoreConfig::max_concurrent_fetches`] requests at
//!   once. When more are due, a connection waiting for its first certificate goes first, then
//!   prefetches, then background renewals.
//!
//! Time: all scheduling uses `tokio::time`, so tests drive it with `tokio::time::pause()`.
//! Certificate validity (wall-clock `SystemTime`) is mapped onto the tokio clock by [`Clock`].
//!
//! Allowed imports: `identity`, `tls`, `state` (to follow local workloads).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};

use super::snapshot::CertSnapshot;
use super::state::{rfc3339, CertState};
pub use super::worker::{Clock, Priority, StoreConfig};
use super::worker::{Request, Slots, Worker};
use super::{unavailable, Issuer};
use crate::identity::Identity;
use crate::state::model::{TunnelProtocol, Workload};
use crate::state::Reader;
use crate::tls::{CertSource, FetchError, FetchFuture, WorkloadCert};

/// Counts of [`CertStore::summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertSummary {
    /// Asked for, nothing yet.
    pub initializing: usize,
    /// Holding a valid certificate.
    pub available: usize,
    /// Without a usable certificate.
    pub unavailable: usize,
    /// The earliest `not_after` among available certificates.
    pub earliest_expiry: Option<SystemTime>,
}

/// The certificate store. Cheap to clone; the background worker stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    clock: Clock,
    slots: Arc<Slots>,
    requests: mpsc::UnboundedSender<Request>,
}

impl CertStore {
    /// A store in front of `issuer`; spawns its worker on the current tokio runtime.
    pub fn spawn(issuer: Arc<dyn Issuer>, config: StoreConfig) -> CertStore {
        Self::spawn_with_clock(issuer, config, Clock::new())
    }

    /// Like [`CertStore::spawn`], with the clock that maps certificate times (tests share one
    /// with their issuer).
    pub fn spawn_with_clock(
        issuer: Arc<dyn Issuer>,
        config: StoreConfig,
        clock: Clock,
    ) -> CertStore {
        let slots: Arc<Slots> = Arc::default();
        let tx = Worker::spawn(issuer, config.clone(), clock, slots.clone());
        CertStore {
            inner: Arc::new(Inner {
                config,
                clock,
                slots,
                requests: tx,
            }),
        }
    }

    /// Starts fetching `identity`'s certificate if the store does not have it yet (a workload
    /// with that identity is scheduled on this node).
    pub fn prefetch(&self, identity: &Identity) {
        let mut slots = self.inner.slots.lock();
        if !slots.contains_key(identity) {
            slots.insert(
                identity.clone(),
                watch::Sender::new(CertState::Initializing),
            );
            self.request(Request::Fetch(identity.clone(), Priority::Warmup));
        }
    }

    /// Drops `identity`'s certificate and stops renewing it (no workload on this node has it
    /// any more). Connections already using the certificate keep it; a connection waiting
    /// for it fails.
    pub fn forget(&self, identity: &Identity) {
        if self.inner.slots.lock().remove(identity).is_some() {
            self.request(Request::Forget(identity.clone()));
        }
    }

    /// The identities the store holds.
    pub fn identities(&self) -> Vec<Identity> {
        self.inner.slots.lock().keys().cloned().collect()
    }

    /// The state of `identity`, if the store knows it.
    pub fn state(&self, identity: &Identity) -> Option<CertState> {
        let slots = self.inner.slots.lock();
        slots.get(identity).map(|s| s.borrow().clone())
    }

    /// Identities per state (initializing, available, unavailable) and the earliest expiry
    /// among the certificates held, for metrics: an alert on the expiry fires while a
    /// failing renewal still has time to recover.
    pub fn summary(&self) -> CertSummary {
        let slots = self.inner.slots.lock();
        let mut out = CertSummary::default();
        for s in slots.values() {
            match &*s.borrow() {
                CertState::Initializing => out.initializing += 1,
                CertState::Available(c) => {
                    out.available += 1;
                    let t = c.not_after();
                    out.earliest_expiry = Some(out.earliest_expiry.map_or(t, |e| e.min(t)));
                }
                CertState::Unavailable(_) => out.unavailable += 1,
            }
        }
        out
    }

    /// Every identity's state and public certificate material, sorted by identity (for the
    /// admin config dump). Never contains a private key.
    pub fn snapshot(&self) -> Vec<CertSnapshot> {
        let states: Vec<(Identity, CertState)> = {
            let slots = self.inner.slots.lock();
            slots
                .iter()
                .map(|(id, s)| (id.clone(), s.borrow().clone()))
                .collect()
        };
        let mut out: Vec<_> = states
            .into_iter()
            .map(|(id, state)| CertSnapshot::new(id, &state))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// Keeps the store in line with the mesh state: prefetches the identity of every HBONE
    /// workload scheduled on `node`, and forgets identities no workload on `node` has any
    /// more. Runs until the state writer is gone.
    pub async fn follow_local_workloads(self, mut state: Reader, node: String) {
        loop {
            let (wanted, local) = local_identities(&state, &node);
            for id in &wanted {
                self.prefetch(id);
            }
            for id in self.identities() {
                if !local.contains(&id) {
                    tracing::debug!(identity = %id, "no local workload left, forgetting it");
                    self.forget(&id);
                }
            }
            if !state.changed().await {
                return;
            }
        }
    }

    fn request(&self, r: Request) {
        // The worker only stops once every handle is gone, so this cannot fail while `self`
        // exists; if it ever did, waiters time out with a clear reason.
        let _ = self.inner.requests.send(r);
    }

    fn expired_error(&self, cert: &WorkloadCert) -> Option<FetchError> {
        let now = self.inner.clock.now();
        (now >= cert.not_after()).then(|| {
            unavailable(
                cert.identity(),
                format!("certificate expired at {}", rfc3339(cert.not_after())),
            )
        })
    }
}

impl CertSource for CertStore {
    fn fetch(&self, identity: &Identity) -> FetchFuture {
        let mut rx = {
            let mut slots = self.inner.slots.lock();
            let tx = slots
                .entry(identity.clone())
                .or_insert_with(|| watch::Sender::new(CertState::Initializing));
            let state = tx.borrow().clone();
            match state {
                CertState::Available(cert) => {
                    let result = match self.expired_error(&cert) {
                        Some(e) => Err(e),
                        None => Ok(cert),
                    };
                    return Box::pin(std::future::ready(result));
                }
                CertState::Unavailable(reason) => {
                    // Fail now; the pending retry keeps its backoff but moves up the queue.
                    self.request(Request::Fetch(identity.clone(), Priority::RealTime));
                    return Box::pin(std::future::ready(Err(unavailable(identity, reason))));
                }
                CertState::Initializing => tx.subscribe(),
            }
        };
        self.request(Request::Fetch(identity.clone(), Priority::RealTime));
        let wait = self.inner.config.first_fetch_wait;
        let identity = identity.clone();
        Box::pin(async move {
            let settled =
                tokio::time::timeout(wait, rx.wait_for(|s| !matches!(s, CertState::Initializing)))
                    .await
                    .map(|r| r.map(|state| state.clone()));
            match settled {
                Ok(Ok(CertState::Available(cert))) => Ok(cert),
                Ok(Ok(CertState::Unavailable(reason))) => Err(unavailable(&identity, reason)),
                Ok(Ok(CertState::Initializing)) => {
                    Err(unavailable(&identity, "still initializing"))
                }
                Ok(Err(_)) => Err(unavailable(
                    &identity,
                    "identity was forgotten while waiting for its certificate",
                )),
                Err(_) => Err(unavailable(
                    &identity,
                    format!("no certificate from the CA within {wait:?}"),
                )),
            }
        })
    }
}

/// Identities of HBONE workloads on `node` (to prefetch) and of all workloads on `node`.
fn local_identities(state: &Reader, node: &str) -> (HashSet<Identity>, HashSet<Identity>) {
    let snap = state.load();
    let mut hbone = HashSet::new();
    let mut all = HashSet::new();
    // The state's own list of this node's workloads when it keeps one (no pass over the mesh
    // on every change), else a scan.
    let on_node: Box<dyn Iterator<Item = &Arc<Workload>>> = match snap.local_node() {
        Some(n) if n == node => Box::new(snap.local_workloads().iter()),
        _ => Box::new(snap.workloads().filter(|w| &*w.node == node)),
    };
    for w in on_node {
        let Some(id) = w.identity() else { continue };
        if w.protocol == TunnelProtocol::Hbone || w.native_tunnel {
            hbone.insert(id.clone());
        }
        all.insert(id);
    }
    (hbone, all)
}

#[cfg(test)]
mod tests;
