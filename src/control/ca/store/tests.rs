//! Deterministic tests of the certificate store: tokio time is paused, the issuer is a local
//! CA whose certificates follow the paused clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::{sleep, Instant};

use super::*;
use crate::control::ca::LocalCa;

const LIFETIME: Duration = Duration::from_secs(100);

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

/// What the fake issuer should do and what it saw.
#[derive(Default)]
struct Script {
    calls: Vec<(Identity, Instant)>,
    failing: HashSet<Identity>,
    fail_all: bool,
    in_flight: usize,
    max_in_flight: usize,
    /// Issue certificates that are already expired.
    expired: bool,
    /// Issue certificates valid from this long ago (still `lifetime` ahead).
    backdate: Duration,
}

struct FakeIssuer {
    ca: LocalCa,
    clock: Clock,
    latency: Duration,
    lifetime: Duration,
    script: Mutex<Script>,
}

impl FakeIssuer {
    fn new(clock: Clock, latency: Duration) -> Arc<FakeIssuer> {
        Arc::new(FakeIssuer {
            ca: LocalCa::ephemeral("cluster.local", LIFETIME).unwrap(),
            clock,
            latency,
            lifetime: LIFETIME,
            script: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Identity> {
        self.script
            .lock()
            .calls
            .iter()
            .map(|(i, _)| i.clone())
            .collect()
    }

    fn call_times(&self) -> Vec<Instant> {
        self.script.lock().calls.iter().map(|(_, t)| *t).collect()
    }

    fn fail_all(&self, fail: bool) {
        self.script.lock().fail_all = fail;
    }
}

struct Shared(Arc<FakeIssuer>);

impl Issuer for Shared {
    fn issue(&self, identity: &Identity) -> FetchFuture {
        let this = self.0.clone();
        let identity = identity.clone();
        Box::pin(async move {
            {
                let mut s = this.script.lock();
                s.calls.push((identity.clone(), Instant::now()));
                s.in_flight += 1;
                s.max_in_flight = s.max_in_flight.max(s.in_flight);
            }
            sleep(this.latency).await;
            let (fail, expired, backdate) = {
                let mut s = this.script.lock();
                s.in_flight -= 1;
                (
                    s.fail_all || s.failing.contains(&identity),
                    s.expired,
                    s.backdate,
                )
            };
            if fail {
                return Err(unavailable(&identity, "injected CA failure"));
            }
            let now = this.clock.now();
            let (from, to) = if expired {
                (now - 2 * this.lifetime, now - this.lifetime)
            } else {
                (now - backdate, now + this.lifetime)
            };
            let cert = this.ca.mint_valid(&identity, from, to).unwrap();
            Ok(Arc::new(cert))
        })
    }
}

fn store_with(issuer: &Arc<FakeIssuer>, config: StoreConfig) -> CertStore {
    CertStore::spawn_with_clock(Arc::new(Shared(issuer.clone())), config, issuer.clock)
}

fn store(issuer: &Arc<FakeIssuer>) -> CertStore {
    store_with(issuer, StoreConfig::default())
}

fn serial(cert: &WorkloadCert) -> String {
    crate::control::ca::CertInfo::of(&cert.chain()[0]).serial_number
}

#[tokio::test(start_paused = true)]
async fn first_use_fetches_once_then_serves_from_the_store() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_millis(100));
    let store = store(&issuer);
    let a = id("a");
    let (one, two) = tokio::join!(store.fetch(&a), store.fetch(&a));
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(
        Arc::ptr_eq(&one, &two),
        "concurrent first uses share one request"
    );
    let again = store.fetch(&a).await.unwrap();
    assert!(Arc::ptr_eq(&one, &again));
    assert_eq!(issuer.calls(), vec![a.clone()]);
    assert!(matches!(store.state(&a), Some(CertState::Available(_))));
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_within_the_jitter_and_old_certificate_stays_usable() {
    let clock = Clock::new();
    let issuer = FakeIssuer::new(clock, Duration::ZERO);
    let store = store(&issuer);
    let a = id("a");
    let first = store.fetch(&a).await.unwrap();
    // Half-life 50 s, ±5 % of 100 s; one more second for the certificate's second precision.
    sleep(Duration::from_secs(44)).await;
    assert_eq!(
        issuer.calls().len(),
        1,
        "renewed before 45 % of the lifetime"
    );
    sleep(Duration::from_secs(12)).await;
    assert_eq!(
        issuer.calls().len(),
        2,
        "not renewed by 56 % of the lifetime"
    );
    let second = store.fetch(&a).await.unwrap();
    assert_ne!(
        serial(&first),
        serial(&second),
        "new handshakes get the new certificate"
    );
    // A connection holding the first certificate still has a valid one.
    assert!(clock.now() < first.not_after());
    let renewed_at = issuer.call_times()[1] - issuer.call_times()[0];
    assert!(
        (Duration::from_secs(44)..=Duration::from_secs(56)).contains(&renewed_at),
        "{renewed_at:?}"
    );
    // And it keeps renewing every half-life of the current certificate (≤ 56 s + 1 s).
    sleep(Duration::from_secs(58)).await;
    assert_eq!(issuer.calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_certificate_past_its_half_life_on_arrival_renews_at_half_the_remaining_time() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    // Valid from 300 s ago to 100 s ahead: the nominal half-life was 100 s ago.
    issuer.script.lock().backdate = 3 * LIFETIME;
    let store = store(&issuer);
    store.fetch(&id("a")).await.unwrap();
    // Only the first certificate arrives late: the renewal is fresh (valid 100 s from its
    // issue, renewed 47.5..52.5 s later), so exactly one renewal falls in the window below.
    issuer.script.lock().backdate = Duration::ZERO;
    sleep(Duration::from_secs(29)).await;
    assert_eq!(issuer.calls().len(), 1, "no renewal loop");
    // 50 s ± min(5 % of 400 s, 100 s / 4) = 30..70 s.
    sleep(Duration::from_secs(42)).await;
    assert_eq!(issuer.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    issuer.fail_all(true);
    let store = store(&issuer);
    let a = id("a");
    store.prefetch(&a);
    sleep(Duration::from_secs(1500)).await;
    let times = issuer.call_times();
    assert!(times.len() >= 12, "only {} attempts", times.len());
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let base = Duration::from_secs(1u64 << n.min(10)).min(Duration::from_secs(150));
        let low = base.mul_f64(0.8);
        let high = base.mul_f64(1.2).min(Duration::from_secs(150));
        assert!(
            gap >= low && gap <= high,
            "retry {n}: waited {gap:?}, expected {low:?}..={high:?}"
        );
    }
    match store.state(&a) {
        Some(CertState::Unavailable(reason)) => assert!(reason.contains("injected"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_valid_certificate_keeps_serving_while_renewal_fails_until_it_expires() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    let store = store(&issuer);
    let a = id("a");
    let first = store.fetch(&a).await.unwrap();
    issuer.fail_all(true);
    sleep(Duration::from_secs(70)).await;
    assert!(
        issuer.calls().len() >= 3,
        "renewal was attempted and retried"
    );
    let still = store
        .fetch(&a)
        .await
        .expect("old certificate keeps serving");
    assert!(Arc::ptr_eq(&first, &still));

    // Past the end of validity: the identity becomes unavailable, with the reason.
    sleep(Duration::from_secs(35)).await;
    let err = store.fetch(&a).await.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(matches!(store.state(&a), Some(CertState::Unavailable(_))));

    // The CA recovers: the next retry (≤ 150 s away) restores the identity.
    issuer.fail_all(false);
    sleep(Duration::from_secs(151)).await;
    let fresh = match store.fetch(&a).await {
        Ok(c) => c,
        Err(e) => {
            let start = issuer.call_times()[0];
            let times: Vec<_> = issuer.call_times().iter().map(|t| *t - start).collect();
            panic!("not recovered: {e}; attempts at {times:?}");
        }
    };
    assert_ne!(serial(&fresh), serial(&first));
}

#[tokio::test(start_paused = true)]
async fn a_connection_waits_a_bounded_time_then_fails_with_the_reason() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_secs(600));
    let store = store(&issuer);
    let started = Instant::now();
    let err = store.fetch(&id("a")).await.unwrap_err().to_string();
    assert_eq!(started.elapsed(), StoreConfig::default().first_fetch_wait);
    assert!(
        err.contains("no certificate from the CA within 10s"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_failure_fails_waiting_connections_at_once() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_millis(5));
    issuer.fail_all(true);
    let store = store(&issuer);
    let started = Instant::now();
    let err = store.fetch(&id("a")).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(err.contains("injected CA failure"), "{err}");
    // While backing off, further connections fail fast without new requests.
    let err = store.fetch(&id("a")).await.unwrap_err().to_string();
    assert!(err.contains("injected CA failure"), "{err}");
    assert_eq!(issuer.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_failing_identity_does_not_affect_the_others() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    issuer.script.lock().failing.insert(id("bad"));
    let store = store(&issuer);
    assert!(store.fetch(&id("bad")).await.is_err());
    let good = store.fetch(&id("good")).await.unwrap();
    let summary = store.summary();
    assert_eq!((summary.available, summary.unavailable), (1, 1));
    assert_eq!(summary.earliest_expiry, Some(good.not_after()));
}

#[tokio::test(start_paused = true)]
async fn at_most_eight_fetches_run_at_once() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_secs(1));
    let store = store(&issuer);
    let ids: Vec<_> = (0..20).map(|n| id(&format!("sa{n}"))).collect();
    for i in &ids {
        store.prefetch(i);
    }
    sleep(Duration::from_secs(10)).await;
    assert_eq!(issuer.script.lock().max_in_flight, 8);
    for i in &ids {
        assert!(
            matches!(store.state(i), Some(CertState::Available(_))),
            "{i}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_connection_goes_before_prefetches_and_renewals() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_secs(10));
    let config = StoreConfig {
        max_concurrent_fetches: 1,
        refresh_jitter: 0.0,
        first_fetch_wait: Duration::from_secs(60),
        ..StoreConfig::default()
    };
    let store = store_with(&issuer, config);
    let (b1, b2, b3, rt) = (id("b1"), id("b2"), id("b3"), id("rt"));
    // Issued one after the other: b1 in [0, 10], b2 in [10, 20], b3 in [20, 30]; renewals
    // fall due at about 60, 70 and 80 s.
    for b in [&b1, &b2, &b3] {
        store.prefetch(b);
    }
    sleep(Duration::from_secs(65)).await;
    // b1's renewal runs [60, 70]; b2's falls due at 70, but a connection asks at 65.
    let waiting = tokio::spawn({
        let store = store.clone();
        let rt = rt.clone();
        async move { store.fetch(&rt).await }
    });
    // Prefetches queued behind it wait too.
    store.prefetch(&id("w"));
    let got = waiting.await.unwrap();
    assert!(got.is_ok());
    sleep(Duration::from_secs(30)).await;
    let calls = issuer.calls();
    assert_eq!(
        calls[..7],
        [b1.clone(), b2.clone(), b3.clone(), b1, rt, id("w"), b2],
        "order of requests"
    );
}

#[tokio::test(start_paused = true)]
async fn forget_stops_renewal_and_releases_waiters() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::from_secs(5));
    let store = store(&issuer);
    let a = id("a");
    store.fetch(&a).await.unwrap();
    store.forget(&a);
    assert!(store.state(&a).is_none());
    sleep(Duration::from_secs(200)).await;
    assert_eq!(
        issuer.calls().len(),
        1,
        "a forgotten identity is not renewed"
    );

    // A connection waiting for an identity that is forgotten meanwhile fails at once.
    let b = id("b");
    let waiting = tokio::spawn({
        let store = store.clone();
        let b = b.clone();
        async move { store.fetch(&b).await }
    });
    sleep(Duration::from_secs(1)).await;
    store.forget(&b);
    let err = waiting.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("forgotten"), "{err}");
    // Its in-flight request was dropped: nothing comes back to life.
    sleep(Duration::from_secs(10)).await;
    assert!(store.state(&b).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_expired_certificate_from_the_ca_is_a_failure() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    issuer.script.lock().expired = true;
    let store = store(&issuer);
    let err = store.fetch(&id("a")).await.unwrap_err().to_string();
    assert!(err.contains("received certificate expired"), "{err}");
    sleep(Duration::from_secs(5)).await;
    let attempts = issuer.calls().len();
    assert!(
        (2..=4).contains(&attempts),
        "retried with backoff, got {attempts}"
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_shows_states_and_public_material_only() {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    issuer.script.lock().failing.insert(id("bad"));
    let store = store(&issuer);
    let good = store.fetch(&id("good")).await.unwrap();
    let _ = store.fetch(&id("bad")).await;
    let snap = store.snapshot();
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].identity, id("bad"));
    assert!(
        snap[0].state.starts_with("Unavailable: "),
        "{}",
        snap[0].state
    );
    assert!(snap[0].cert_chain.is_empty());
    assert_eq!(snap[1].state, "Available");
    assert_eq!(snap[1].cert_chain.len(), 1);
    assert_eq!(snap[1].root_certs.len(), 1);
    assert_eq!(snap[1].cert_chain[0].serial_number, serial(&good));
    assert!(snap[1].cert_chain[0]
        .pem
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let expires = crate::control::ca::state::rfc3339(good.not_after());
    assert_eq!(snap[1].cert_chain[0].expiration_time, expires);

    let json = serde_json::to_string(&snap).unwrap();
    assert!(
        json.contains("\"certChain\"") && json.contains("\"rootCerts\""),
        "{json}"
    );
    assert!(!json.contains("PRIVATE"), "{json}");
    let pem_b64 = serde_json::to_value(&snap).unwrap()[1]["certChain"][0]["pem"]
        .as_str()
        .unwrap()
        .to_string();
    let decoded =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pem_b64).unwrap();
    assert!(String::from_utf8(decoded)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[tokio::test(start_paused = true)]
async fn follows_the_hbone_workloads_of_this_node() {
    follows_the_hbone_workloads_of(crate::state::new()).await;
}

/// The same, from a state that lists the node's workloads apart (as ztun keeps it).
#[tokio::test(start_paused = true)]
async fn follows_the_hbone_workloads_of_this_node_from_its_own_list() {
    follows_the_hbone_workloads_of(crate::state::new_for_node(Some("n1"))).await;
}

async fn follows_the_hbone_workloads_of(
    (writer, reader): (crate::state::Writer, crate::state::Reader),
) {
    let issuer = FakeIssuer::new(Clock::new(), Duration::ZERO);
    let store = store(&issuer);
    let publish = |yaml: &str| {
        let local = crate::control::local::parse(yaml).unwrap();
        let mut b = writer.builder();
        b.clear();
        local
            .workloads
            .into_iter()
            .for_each(|w| b.insert_workload(w));
        writer.publish(b);
    };
    let workload = |name: &str, sa: &str, node: &str, protocol: &str| {
        format!(
            "- uid: {name}\n  name: {name}\n  namespace: default\n  serviceAccount: {sa}\n  \
             trustDomain: cluster.local\n  workloadIps: []\n  node: {node}\n  \
             protocol: {protocol}\n"
        )
    };
    publish(&format!(
        "workloads:\n{}{}{}{}",
        workload("a1", "a", "n1", "HBONE"),
        workload("a2", "a", "n1", "HBONE"),
        workload("t", "plain", "n1", "TCP"),
        workload("x", "remote", "n2", "HBONE"),
    ));
    tokio::spawn(store.clone().follow_local_workloads(reader, "n1".into()));
    sleep(Duration::from_secs(1)).await;
    let mut held = store.identities();
    held.sort();
    assert_eq!(
        held,
        vec![id("a")],
        "only local HBONE identities are prefetched"
    );

    // A connection of the TCP workload fetches on demand; it stays while the workload does.
    store.fetch(&id("plain")).await.unwrap();
    // One of two pods of identity a leaves: kept. The TCP workload leaves: forgotten.
    publish(&format!(
        "workloads:\n{}",
        workload("a1", "a", "n1", "HBONE")
    ));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(store.identities(), vec![id("a")]);
    // The last pod of identity a leaves: forgotten.
    publish("workloads: []\n");
    sleep(Duration::from_secs(1)).await;
    assert!(store.identities().is_empty());
}

#[tokio::test(start_paused = true)]
async fn clock_maps_wall_time_onto_tokio_time() {
    let clock = Clock::new();
    let at = clock.instant_of(clock.now() + Duration::from_secs(30));
    assert_eq!(at - Instant::now(), Duration::from_secs(30));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        clock.now().duration_since(clock.system).unwrap(),
        Duration::from_secs(10),
        "wall-clock now follows paused tokio time"
    );
    assert!(clock.instant_of(SystemTime::UNIX_EPOCH) <= clock.instant);
}
