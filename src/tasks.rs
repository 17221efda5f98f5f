//! The owner of ztun's long-lived background tasks (xDS client, certificate store follower,
//! CRL watcher, ops listeners, CNI client, metric expiry): each runs in a span named after
//! it, is joined at shutdown, and an unexpected end — a panic, or a return of a task that
//! should run until shutdown — is reported by [`Tasks::next_exit`] so the composition root
//! can log it, count it and fail readiness.
//!
//! Allowed imports: none of the crate.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tracing::Instrument;

/// Background tasks with one owner.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    /// Task id → (name, whether ending on its own is normal).
    names: HashMap<Id, (&'static str, bool)>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned, though it should run until shutdown.
    Returned,
    /// It panicked, with the panic's message.
    Panicked(String),
}

impl Exit {
    /// The label of `ztun_task_exits_total`: `returned` or `panicked`.
    pub fn label(&self) -> &'static str {
        match self {
            Exit::Returned => "returned",
            Exit::Panicked(_) => "panicked",
        }
    }
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut`, which should run until shutdown, on the current runtime.
    pub fn spawn(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        self.spawn_inner(name, false, fut);
    }

    /// Spawns `fut`, which may finish on its own (a one-off wait), on the current runtime;
    /// only a panic of it is reported.
    pub fn spawn_finite(
        &mut self,
        name: &'static str,
        fut: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_inner(name, true, fut);
    }

    fn spawn_inner(
        &mut self,
        name: &'static str,
        finite: bool,
        fut: impl Future<Output = ()> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", name);
        let handle = self.set.spawn(fut.instrument(span));
        self.names.insert(handle.id(), (name, finite));
    }

    /// Number of tasks still running.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }

    /// The next task to end unexpectedly, with how; `None` once no task is left. A finite
    /// task that returns is forgotten silently. Cancel-safe.
    pub async fn next_exit(&mut self) -> Option<(&'static str, Exit)> {
        loop {
            let (id, exit) = match self.set.join_next_with_id().await? {
                Ok((id, ())) => (id, Exit::Returned),
                Err(e) if e.is_panic() => {
                    let id = e.id();
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    (id, Exit::Panicked(msg))
                }
                // Cancelled: only `shutdown` aborts, and it does not call this.
                Err(e) => {
                    self.names.remove(&e.id());
                    continue;
                }
            };
            let (name, finite) = self.names.remove(&id).unwrap_or(("unknown", false));
            if finite && exit == Exit::Returned {
                continue;
            }
            return Some((name, exit));
        }
    }

    /// Aborts every task and waits up to `deadline` for them to be gone.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.set.abort_all();
        let _ = tokio::time::timeout(deadline, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_and_early_returns_are_reported_by_name() {
        let mut tasks = Tasks::new();
        tasks.spawn_finite("waiter", async {});
        tasks.spawn("quitter", async {});
        tasks.spawn("crasher", async { panic!("boom") });
        tasks.spawn("runner", std::future::pending());
        let mut seen = vec![
            tasks.next_exit().await.unwrap(),
            tasks.next_exit().await.unwrap(),
        ];
        seen.sort_by_key(|(n, _)| *n);
        assert_eq!(
            seen,
            [
                ("crasher", Exit::Panicked("boom".into())),
                ("quitter", Exit::Returned),
            ]
        );
        // The finite one ended silently; the runner is still there.
        assert_eq!(tasks.len(), 1);
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.next_exit()).await;
        assert!(waited.is_err(), "the runner does not end");
        tasks.shutdown(Duration::from_secs(5)).await;
    }
}
