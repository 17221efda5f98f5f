//! Late enforcement: the live inbound connections of one pod, re-authorized whenever the mesh
//! state changes, so a policy that starts denying an open connection closes it.
//!
//! Each inbound connection [`register`](Connections::register)s *before* it is authorized and
//! keeps its [`Registration`] for its whole life, selecting on
//! [`Registration::revoked`] next to its relay. [`Connections::enforce`] (one task per pod)
//! wakes on every new snapshot and re-evaluates every registered connection.
//!
//! Concurrency note: registering before the first authorization closes the race with a
//! concurrent publish. Either the connection's own check loads the new snapshot, or the
//! snapshot was published after that load, in which case the enforcer (woken by the publish,
//! loading after it) sees the registration and re-evaluates it.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::authz::{applicable, authorize, Conn, Decision, Denial, Outcome, Reason, Verdict};
use crate::config::AuthzConfig;
use crate::state::model::{Policy, Strng, Workload};
use crate::state::{Reader, Snapshot};

/// The pod a proxy serves, as the CNI announced it: how its workload is found in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// Namespace.
    pub namespace: Strng,
    /// Pod name.
    pub name: Strng,
    /// Service account; a workload with another one is not this pod (fail closed).
    pub service_account: Strng,
    /// This node's name, preferred when several workloads share the pod's name.
    pub node: Option<Strng>,
}

impl LocalPod {
    /// The pod's workload in `snap`, if present and still matching the announced identity.
    pub fn find<'a>(&self, snap: &'a Snapshot) -> Option<&'a Arc<Workload>> {
        snap.workload_by_pod(&self.namespace, &self.name, self.node.as_deref())
            .filter(|w| w.service_account == self.service_account)
    }
}

/// The registry of one pod's live inbound connections. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    pod: Arc<LocalPod>,
    authz: AuthzConfig,
    // Held for map operations only; authorization runs outside the lock.
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// A pointer per connection: the table keeps 1.1-2x its entries' size as it grows, so what
    /// each connection registers lives in its own allocation, shared with its registration.
    entries: HashMap<u64, Arc<Entry>>,
}

/// One registered connection, shared by the registry and the connection's [`Registration`].
struct Entry {
    conn: Conn,
    // Held to set or take the denial and the waker only.
    revocation: Mutex<Revocation>,
}

/// A denial on its way to the connection, in the entry itself rather than in a channel of its
/// own (one allocation per connection instead of two).
#[derive(Default)]
struct Revocation {
    /// Set once a policy change denies the connection; taken by the connection.
    denial: Option<Denial>,
    /// The connection's task, woken when the denial is set.
    waker: Option<Waker>,
}

/// A registered connection. Dropping it unregisters the connection.
#[must_use = "dropping the registration stops late enforcement for the connection"]
pub struct Registration {
    id: u64,
    inner: Arc<Mutex<Registry>>,
    entry: Arc<Entry>,
}

/// A connection closed because a policy change denied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked(pub Denial);

impl Connections {
    /// An empty registry for `pod`, deciding with `authz` (how DENY rules with HTTP-only
    /// clauses act, at which level decisions are logged).
    pub fn new(pod: LocalPod, authz: AuthzConfig) -> Self {
        Connections {
            pod: Arc::new(pod),
            authz,
            inner: Arc::default(),
        }
    }

    /// The pod this registry serves.
    pub fn pod(&self) -> &LocalPod {
        &self.pod
    }

    /// Registers `conn` for late enforcement. Register before the first authorization.
    pub fn register(&self, conn: Conn) -> Registration {
        let entry = Arc::new(Entry {
            conn,
            revocation: Mutex::default(),
        });
        let mut reg = self.inner.lock();
        let id = reg.next;
        reg.next += 1;
        reg.entries.insert(id, entry.clone());
        Registration {
            id,
            inner: self.inner.clone(),
            entry,
        }
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Authorizes `conn` against the pod's workload in `snap`; a pod whose workload is
    /// missing (or no longer matches) denies.
    pub fn authorize(&self, snap: &Snapshot, conn: &Conn) -> Decision {
        match self.pod.find(snap) {
            Some(w) => authorize(snap, conn, w, self.authz.http_only_deny),
            None => unknown_workload(),
        }
    }

    /// [`Connections::authorize`] for a new connection, logging the decision (at info with
    /// `AUTHZ_POLICY_INFO_LOGGING`).
    pub fn check(&self, snap: &Snapshot, conn: &Conn) -> Decision {
        let decision = self.authorize(snap, conn);
        decision.log(conn, self.authz.info_logging);
        decision
    }

    /// Re-authorizes every registered connection against `snap` and revokes the denied ones.
    /// Returns how many were revoked.
    pub fn reevaluate(&self, snap: &Snapshot) -> usize {
        let live: Vec<(u64, Conn)> = self
            .inner
            .lock()
            .entries
            .iter()
            .map(|(id, e)| (*id, e.conn.clone()))
            .collect();
        let denied: Vec<(u64, Denial)> = live
            .into_iter()
            .filter_map(|(id, conn)| self.authorize(snap, &conn).denial().map(|d| (id, d)))
            .collect();
        let mut reg = self.inner.lock();
        let mut revoked = 0;
        for (id, denial) in denied {
            // Gone already if the connection finished meanwhile.
            if let Some(entry) = reg.entries.remove(&id) {
                tracing::info!(
                    src.addr = %entry.conn.src_ip,
                    src.identity = entry.conn.src_identity.as_ref().map(tracing::field::display),
                    dst.port = entry.conn.dst_port,
                    reason = %denial,
                    "policy change denies an open connection, closing it"
                );
                let waker = {
                    let mut revocation = entry.revocation.lock();
                    revocation.denial = Some(denial);
                    revocation.waker.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
                revoked += 1;
            }
        }
        revoked
    }

    /// Runs until the state writer goes away: after every published snapshot, re-evaluates
    /// the registered connections if anything that decides them (the pod's workload or the
    /// policies applying to it) changed. Run it as the pod's enforcement task, under its drain.
    pub async fn enforce(self, mut state: Reader) {
        // Nothing is known about the snapshots connections were authorized with before the
        // first wake-up, so the first change always re-evaluates.
        let mut last: Option<Fingerprint> = None;
        while state.changed().await {
            let snap = state.load_full();
            let now = Fingerprint::of(&self.pod, &snap);
            if last.as_ref() == Some(&now) {
                continue;
            }
            last = Some(now);
            if self.is_empty() {
                continue;
            }
            let revoked = self.reevaluate(&snap);
            tracing::debug!(
                generation = snap.generation(),
                revoked,
                "re-evaluated open inbound connections"
            );
        }
    }
}

impl Registration {
    /// Resolves when a policy change denies the connection. Never resolves otherwise.
    pub async fn revoked(&mut self) -> Revoked {
        std::future::poll_fn(|cx| self.poll_revoked(cx)).await
    }

    /// [`Registration::revoked`] as a poll, for a connection that waits for its relay and its
    /// revocation in one future of its own: ready once a policy change denies the connection,
    /// pending otherwise.
    /// Once the registry is gone (with its pod), nothing revokes: the pod's drain ends the
    /// connection.
    pub fn poll_revoked(&mut self, cx: &mut Context<'_>) -> Poll<Revoked> {
        let mut revocation = self.entry.revocation.lock();
        if let Some(denial) = revocation.denial.take() {
            return Poll::Ready(Revoked(denial));
        }
        if !revocation
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            revocation.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.lock().entries.remove(&self.id);
    }
}

fn unknown_workload() -> Decision {
    Decision {
        outcome: Outcome {
            verdict: Verdict::Deny,
            reason: Reason::UnknownWorkload,
            policy: None,
            rule: None,
        },
        dry_run: None,
    }
}

/// What a pod's decisions depend on, compared by pointer: snapshots share unchanged values.
struct Fingerprint {
    workload: Option<Arc<Workload>>,
    policies: Result<Vec<Arc<Policy>>, Strng>,
}

impl Fingerprint {
    fn of(pod: &LocalPod, snap: &Snapshot) -> Self {
        let workload = pod.find(snap).cloned();
        let policies = match &workload {
            Some(w) => applicable(snap, w).map(|ps| ps.into_iter().cloned().collect()),
            None => Ok(Vec::new()),
        };
        Fingerprint { workload, policies }
    }
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        let same_workload = match (&self.workload, &other.workload) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let same_policies = match (&self.policies, &other.policies) {
            (Ok(a), Ok(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y)),
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        same_workload && same_policies
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::identity::Identity;
    use crate::state::model::{PolicyAction, PolicyMatch, PolicyScope};
    use crate::state::SnapshotBuilder;

    fn pod() -> LocalPod {
        LocalPod {
            namespace: "ns".into(),
            name: "server".into(),
            service_account: "sa".into(),
            node: None,
        }
    }

    fn conn(src: [u8; 4], sa: &str) -> Conn {
        Conn {
            src_ip: IpAddr::from(src),
            src_identity: Some(Identity::new("cluster.local", "ns", sa).unwrap()),
            dst_ip: IpAddr::from([10, 0, 0, 1]),
            dst_port: 8080,
        }
    }

    fn deny_sa(sa: &str) -> Policy {
        Policy {
            name: "deny".into(),
            namespace: "ns".into(),
            scope: PolicyScope::Namespace,
            action: PolicyAction::Deny,
            rules: vec![vec![vec![PolicyMatch {
                service_accounts: vec![crate::state::model::ServiceAccountMatch {
                    namespace: "ns".into(),
                    service_account: sa.into(),
                }],
                ..Default::default()
            }]]],
            dry_run: false,
        }
    }

    fn base() -> SnapshotBuilder {
        let mut b = SnapshotBuilder::default();
        b.insert_workload(crate::testkit::fixtures::pod(
            "ns",
            "server",
            "sa",
            [10, 0, 0, 1],
        ));
        b
    }

    #[tokio::test]
    async fn a_new_deny_revokes_only_the_matching_connection() {
        let (writer, reader) = crate::state::new();
        writer.publish(base());
        let conns = Connections::new(pod(), AuthzConfig::default());
        let mut bad = conns.register(conn([10, 0, 0, 2], "bad"));
        let mut good = conns.register(conn([10, 0, 0, 3], "good"));
        assert!(conns
            .authorize(&reader.load(), &conn([10, 0, 0, 2], "bad"))
            .is_allowed());
        let task = tokio::spawn(conns.clone().enforce(reader.clone()));

        let mut b = base();
        b.insert_policy(deny_sa("bad"));
        writer.publish(b);
        let Revoked(denial) =
            tokio::time::timeout(std::time::Duration::from_secs(1), bad.revoked())
                .await
                .expect("revoked within 1 s");
        assert_eq!(denial.reason, Reason::DenyMatched);
        assert_eq!(denial.policy.as_deref(), Some("ns/deny"));
        assert_eq!(conns.len(), 1, "the revoked entry is gone");
        let still =
            tokio::time::timeout(std::time::Duration::from_millis(50), good.revoked()).await;
        assert!(still.is_err(), "the allowed connection stays open");
        drop(good);
        assert!(conns.is_empty());
        task.abort();
    }

    #[tokio::test]
    async fn losing_the_local_workload_revokes_everything() {
        let (writer, reader) = crate::state::new();
        writer.publish(base());
        let conns = Connections::new(pod(), AuthzConfig::default());
        let mut reg = conns.register(conn([10, 0, 0, 2], "any"));
        let task = tokio::spawn(conns.clone().enforce(reader.clone()));
        writer.publish(SnapshotBuilder::default());
        let Revoked(denial) =
            tokio::time::timeout(std::time::Duration::from_secs(1), reg.revoked())
                .await
                .expect("revoked");
        assert_eq!(denial.reason, Reason::UnknownWorkload);
        task.abort();
    }

    /// A connection polls its registration together with its relay, again after every wake:
    /// once the registry is gone (the pod with it), the registration stays pending however
    /// often it is polled.
    #[test]
    fn a_registration_outliving_its_registry_stays_pending() {
        let conns = Connections::new(pod(), AuthzConfig::default());
        let mut reg = conns.register(conn([10, 0, 0, 2], "any"));
        // The registry's sender goes with its entry.
        conns.inner.lock().entries.clear();
        drop(conns);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..3 {
            assert!(reg.poll_revoked(&mut cx).is_pending());
        }
    }

    /// What a registered connection costs: its entry and the registry's pointer to it (the
    /// table grows by doubling, so up to twice the pointers), measured on this thread's heap.
    #[test]
    fn a_registration_costs_its_entry_and_a_pointer() {
        use crate::sys::alloc::CountingAlloc;
        const N: usize = 1000;
        let conns = Connections::new(pod(), AuthzConfig::default());
        let template = conn([10, 0, 0, 2], "any");
        let before = CountingAlloc::thread_net();
        let held: Vec<Registration> = (0..N).map(|_| conns.register(template.clone())).collect();
        let per_connection = (CountingAlloc::thread_net() - before) as usize / N;
        let vec = std::mem::size_of::<Registration>();
        // The entry (with its reference counts), and a bucket of the table (key, pointer and
        // control byte) up to twice over.
        let bound = vec + 16 + std::mem::size_of::<Entry>() + 2 * (8 + 8 + 1);
        assert!(
            per_connection <= bound,
            "{per_connection} B per registered connection, more than {bound} B"
        );
        drop(held);
        assert!(conns.is_empty());
    }

    #[test]
    fn unrelated_changes_do_not_change_the_fingerprint() {
        let (writer, reader) = crate::state::new();
        writer.publish(base());
        let before = Fingerprint::of(&pod(), &reader.load());
        let mut b = writer.builder();
        b.insert_workload(crate::testkit::fixtures::pod(
            "other",
            "x",
            "sa",
            [10, 0, 0, 9],
        ));
        writer.publish(b);
        assert!(before == Fingerprint::of(&pod(), &reader.load()));
        let mut b = writer.builder();
        b.insert_policy(deny_sa("bad"));
        writer.publish(b);
        assert!(before != Fingerprint::of(&pod(), &reader.load()));
    }
}
