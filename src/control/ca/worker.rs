//! The certificate store's background worker: the one task that schedules fetches from the
//! [`Issuer`], renewals at half-life with jitter, retries with backoff and expiries, and
//! publishes each identity's [`CertState`] into the slots the store's handles read. What it
//! is configured with ([`StoreConfig`], [`Clock`]) and asked ([`Priority`]) is here too, so
//! the store depends on the worker and never the reverse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::state::{rfc3339, CertState};
use super::{unavailable, Issuer};
use crate::identity::Identity;
use crate::tls::{FetchError, WorkloadCert};

/// Tunables of the certificate store. The defaults follow ztunnel's certificate manager.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a connection waits for an identity's first certificate before failing; 10 s.
    pub first_fetch_wait: Duration,
    /// Issue requests in flight at once, across all identities; 8.
    pub max_concurrent_fetches: usize,
    /// Delay before the first retry after a failure; doubles per consecutive failure; 1 s.
    pub initial_backoff: Duration,
    /// Longest delay between retries; 150 s.
    pub max_backoff: Duration,
    /// Random spread of each retry delay, as a fraction of it; 0.2 (±20 %).
    pub backoff_jitter: f64,
    /// Random spread of the renewal time around half-life, as a fraction of the certificate
    /// lifetime; 0.05 (±5 %).
    pub refresh_jitter: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            first_fetch_wait: Duration::from_secs(10),
            max_concurrent_fetches: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(150),
            backoff_jitter: 0.2,
            refresh_jitter: 0.05,
        }
    }
}

/// Why an identity is wanted; when several requests are due, higher goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Renewal or retry on the store's own schedule.
    Background,
    /// Prefetch for a workload on this node, before any connection needs it.
    Warmup,
    /// A connection is waiting for it.
    RealTime,
}

/// Maps certificate validity times (wall clock) onto the tokio clock, so scheduling follows
/// `tokio::time` (and its pause in tests). Fixed at creation: a later wall-clock step does
/// not move already-scheduled renewals.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub(super) instant: Instant,
    pub(super) system: SystemTime,
}

impl Clock {
    /// A clock anchored at the current time of both clocks.
    pub fn new() -> Clock {
        Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// The wall-clock time now, as the tokio clock sees it.
    pub fn now(&self) -> SystemTime {
        self.system + Instant::now().saturating_duration_since(self.instant)
    }

    /// The tokio instant of wall-clock time `t` (the anchor for times before it).
    pub fn instant_of(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.system) {
            Ok(ahead) => self.instant + ahead,
            Err(e) => self
                .instant
                .checked_sub(e.duration())
                .unwrap_or(self.instant),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The published state of every known identity.
// Lock: held only to look up, insert or remove an entry and to read or replace a state;
// never across an `.await`. Shared by the handles (readers) and the worker (writer).
pub(super) type Slots = Mutex<HashMap<Identity, watch::Sender<CertState>>>;

pub(super) enum Request {
    Fetch(Identity, Priority),
    Forget(Identity),
}

/// A fetch waiting for its time (and a free slot).
#[derive(Debug, Clone, Copy)]
struct Pending {
    due: Instant,
    priority: Priority,
    /// Order of scheduling: first come, first served among equal priority and due time.
    seq: u64,
}

struct InFlight {
    generation: u64,
    task: tokio::task::Id,
    abort: AbortHandle,
}

type FetchResult = (Identity, u64, Result<Arc<WorkloadCert>, FetchError>);

/// Owns the schedule. Invariant: every identity in `slots` is either pending or in flight
/// (the worker learns of new identities through `Request::Fetch`).
pub(super) struct Worker {
    issuer: Arc<dyn Issuer>,
    config: StoreConfig,
    clock: Clock,
    slots: Arc<Slots>,
    requests: mpsc::UnboundedReceiver<Request>,
    pending: HashMap<Identity, Pending>,
    in_flight: HashMap<Identity, InFlight>,
    tasks: JoinSet<FetchResult>,
    /// Next retry delay (before jitter) per identity with consecutive failures.
    backoff: HashMap<Identity, Duration>,
    /// When each held certificate expires (tokio time, and wall-clock time for messages).
    expiry: HashMap<Identity, (Instant, SystemTime)>,
    /// Identities whose last certificate expired without being renewed, and when.
    expired: HashMap<Identity, SystemTime>,
    next_generation: u64,
    next_seq: u64,
}

impl Worker {
    /// Starts the worker for `slots` on the current tokio runtime; it runs until every
    /// sender of the returned channel is dropped.
    pub(super) fn spawn(
        issuer: Arc<dyn Issuer>,
        config: StoreConfig,
        clock: Clock,
        slots: Arc<Slots>,
    ) -> mpsc::UnboundedSender<Request> {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            issuer,
            config,
            clock,
            slots,
            requests: rx,
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            tasks: JoinSet::new(),
            backoff: HashMap::new(),
            expiry: HashMap::new(),
            expired: HashMap::new(),
            next_generation: 0,
            next_seq: 0,
        };
        tokio::spawn(worker.run().instrument(tracing::info_span!("certificates")));
        tx
    }

    async fn run(mut self) {
        loop {
            self.start_due_fetches();
            let next_due = self.next_due();
            let next_expiry = self.expiry.values().map(|(at, _)| *at).min();
            tokio::select! {
                biased;
                req = self.requests.recv() => match req {
                    Some(req) => self.handle_request(req),
                    None => break,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.handle_done(done);
                }
                _ = sleep_until(next_expiry), if next_expiry.is_some() => self.expire(),
                _ = sleep_until(next_due), if next_due.is_some() => {}
            }
        }
        self.tasks.shutdown().await;
    }

    /// Schedules (or reschedules) a fetch of `id`.
    fn schedule(&mut self, id: Identity, due: Instant, priority: Priority) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(id, Pending { due, priority, seq });
    }

    /// The earliest pending time, when a slot is free to act on it.
    fn next_due(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.config.max_concurrent_fetches {
            return None;
        }
        self.pending.values().map(|p| p.due).min()
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Fetch(id, priority) => {
                // Forgotten meanwhile (the slot goes first), or already being fetched.
                let Some(state) = self.state(&id) else { return };
                if self.in_flight.contains_key(&id) {
                    return;
                }
                let now = Instant::now();
                let initializing = matches!(state, CertState::Initializing);
                match self.pending.get_mut(&id) {
                    Some(p) => {
                        p.priority = p.priority.max(priority);
                        // A first certificate is wanted now; a retry keeps its backoff and a
                        // renewal its schedule.
                        if initializing && !self.backoff.contains_key(&id) {
                            p.due = p.due.min(now);
                        }
                    }
                    None => self.schedule(id, now, priority),
                }
            }
            Request::Forget(id) => {
                self.pending.remove(&id);
                self.backoff.remove(&id);
                self.expiry.remove(&id);
                self.expired.remove(&id);
                if let Some(f) = self.in_flight.remove(&id) {
                    f.abort.abort();
                }
            }
        }
    }

    /// Starts due fetches, highest priority first (earliest due among equals), while slots
    /// are free.
    fn start_due_fetches(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < self.config.max_concurrent_fetches {
            let best = self
                .pending
                .iter()
                .filter(|(_, p)| p.due <= now)
                .max_by(|(_, a), (_, b)| {
                    (a.priority, b.due, b.seq).cmp(&(b.priority, a.due, a.seq))
                })
                .map(|(id, p)| (id.clone(), *p));
            let Some((id, p)) = best else { return };
            self.pending.remove(&id);
            let generation = self.next_generation;
            self.next_generation += 1;
            tracing::debug!(identity = %id, priority = ?p.priority, "requesting certificate");
            let fut = self.issuer.issue(&id);
            let task_id = id.clone();
            let abort = self
                .tasks
                .spawn(async move { (task_id, generation, fut.await) });
            self.in_flight.insert(
                id,
                InFlight {
                    generation,
                    task: abort.id(),
                    abort,
                },
            );
        }
    }

    fn handle_done(
        &mut self,
        done: Result<(tokio::task::Id, FetchResult), tokio::task::JoinError>,
    ) {
        let (id, generation, result) = match done {
            Ok((_, r)) => r,
            Err(e) => {
                // Aborted (forgotten) or the issuer panicked.
                let Some(id) = self
                    .in_flight
                    .iter()
                    .find(|(_, f)| f.task == e.id())
                    .map(|(id, _)| id.clone())
                else {
                    return;
                };
                let generation = self.in_flight[&id].generation;
                let err = unavailable(&id, "certificate issuer failed unexpectedly");
                (id, generation, Err(err))
            }
        };
        match self.in_flight.get(&id) {
            Some(f) if f.generation == generation => {
                self.in_flight.remove(&id);
            }
            // A forgotten identity's late answer.
            _ => return,
        }
        if !self.slots.lock().contains_key(&id) {
            return;
        }
        let result = result.and_then(|cert| self.check_validity(cert));
        match result {
            Ok(cert) => self.install(id, cert),
            Err(e) => self.fail(id, e),
        }
    }

    /// A received certificate must be valid now: an expired or not-yet-valid one would fail
    /// every handshake.
    fn check_validity(&self, cert: Arc<WorkloadCert>) -> Result<Arc<WorkloadCert>, FetchError> {
        let now = self.clock.now();
        if now < cert.not_before() {
            return Err(unavailable(
                cert.identity(),
                format!(
                    "received certificate is not valid before {}",
                    rfc3339(cert.not_before())
                ),
            ));
        }
        if now >= cert.not_after() {
            return Err(unavailable(
                cert.identity(),
                format!(
                    "received certificate expired at {}",
                    rfc3339(cert.not_after())
                ),
            ));
        }
        Ok(cert)
    }

    fn install(&mut self, id: Identity, cert: Arc<WorkloadCert>) {
        self.backoff.remove(&id);
        let refresh = self.refresh_instant(&cert);
        let expires = self.clock.instant_of(cert.not_after());
        self.expiry.insert(id.clone(), (expires, cert.not_after()));
        self.expired.remove(&id);
        self.schedule(id.clone(), refresh, Priority::Background);
        let previous = self.publish(&id, CertState::Available(cert.clone()));
        let leaf = cert.chain().first().map(super::snapshot::CertInfo::of);
        let (serial, issuer) = leaf
            .map(|l| (l.serial_number, l.issuer))
            .unwrap_or_default();
        let event = if matches!(previous, Some(CertState::Available(_))) {
            "certificate rotated"
        } else {
            "certificate issued"
        };
        tracing::info!(
            identity = %id,
            serial = %serial,
            issuer = %issuer,
            not_after = %rfc3339(cert.not_after()),
            roots = cert.roots().len(),
            refresh_in = ?refresh.saturating_duration_since(Instant::now()),
            "{event}"
        );
    }

    fn fail(&mut self, id: Identity, err: FetchError) {
        let delay = self.next_backoff(&id);
        self.schedule(id.clone(), Instant::now() + delay, Priority::Background);
        let mut reason = reason_of(&err);
        if let Some(CertState::Available(cert)) = self.state(&id) {
            if self.clock.now() < cert.not_after() {
                tracing::warn!(
                    identity = %id,
                    error = %reason,
                    retry_in = ?delay,
                    valid_until = %rfc3339(cert.not_after()),
                    "certificate renewal failed; the current certificate keeps serving"
                );
                return;
            }
            self.expired.insert(id.clone(), cert.not_after());
        }
        if let Some(at) = self.expired.get(&id) {
            reason = format!(
                "certificate expired at {}; renewal failed: {reason}",
                rfc3339(*at)
            )
            .into();
        }
        tracing::warn!(
            identity = %id,
            error = %reason,
            retry_in = ?delay,
            "certificate unavailable"
        );
        self.expiry.remove(&id);
        self.publish(&id, CertState::Unavailable(reason));
    }

    /// Marks identities whose certificate expired without renewal as unavailable.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<Identity> = self
            .expiry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some((_, not_after)) = self.expiry.remove(&id) else {
                continue;
            };
            tracing::error!(identity = %id, "certificate expired before it could be renewed");
            self.expired.insert(id.clone(), not_after);
            let reason = format!(
                "certificate expired at {}; renewal is failing",
                rfc3339(not_after)
            );
            self.publish(&id, CertState::Unavailable(reason.into()));
            // Renewal keeps being retried on its backoff schedule; make sure one is pending.
            if !self.in_flight.contains_key(&id) && !self.pending.contains_key(&id) {
                self.schedule(id, now, Priority::Background);
            }
        }
    }

    /// Half of the lifetime ± `refresh_jitter` of it. When that moment has already passed on
    /// receipt (a CA that backdates heavily, clock skew), half of the remaining validity
    /// instead: a fresh certificate never triggers an immediate renewal loop.
    fn refresh_instant(&self, cert: &WorkloadCert) -> Instant {
        let now = Instant::now();
        let life = cert
            .not_after()
            .duration_since(cert.not_before())
            .unwrap_or_default();
        let remaining = self
            .clock
            .instant_of(cert.not_after())
            .saturating_duration_since(now);
        let at = self
            .clock
            .instant_of(cert.refresh_at())
            .max(now + remaining / 2);
        let spread = life
            .mul_f64(self.config.refresh_jitter.clamp(0.0, 0.5))
            .min(remaining / 4);
        let at = if spread.is_zero() {
            at
        } else {
            let offset = rand::rng().random_range(Duration::ZERO..=spread * 2);
            (at + offset).checked_sub(spread).unwrap_or(at)
        };
        at.max(now)
    }

    /// The delay before the next retry of `id`, advancing its backoff.
    fn next_backoff(&mut self, id: &Identity) -> Duration {
        let max = self.config.max_backoff;
        let base = *self.backoff.get(id).unwrap_or(&self.config.initial_backoff);
        self.backoff.insert(id.clone(), (base * 2).min(max));
        let jitter = self.config.backoff_jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        base.mul_f64(factor).min(max)
    }

    fn state(&self, id: &Identity) -> Option<CertState> {
        self.slots.lock().get(id).map(|s| s.borrow().clone())
    }

    /// Publishes `state` for `id` (if still known) and returns the previous one.
    fn publish(&self, id: &Identity, state: CertState) -> Option<CertState> {
        self.slots.lock().get(id).map(|s| s.send_replace(state))
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn reason_of(e: &FetchError) -> Arc<str> {
    match e {
        FetchError::Unavailable { reason, .. } => reason.clone(),
    }
}
