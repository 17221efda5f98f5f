//! Readiness: ztun is ready when no startup task is pending (first xDS sync, CNI snapshot,
//! pods that failed to start). `GET /healthz/ready` answers 200 `ready` or 500 with the list.

use std::collections::BTreeSet;
use std::sync::Arc;

use http::StatusCode;
use parking_lot::Mutex;

use super::http::{text, Handler, Req};

/// The set of pending tasks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    // Short critical sections only.
    pending: Arc<Mutex<BTreeSet<String>>>,
}

impl Readiness {
    /// An empty set (ready).
    pub fn new() -> Self {
        Readiness::default()
    }

    /// Marks `task` pending.
    pub fn block(&self, task: &str) {
        self.pending.lock().insert(task.to_string());
    }

    /// Marks `task` done.
    pub fn unblock(&self, task: &str) {
        self.pending.lock().remove(task);
    }

    /// Pending tasks, sorted.
    pub fn pending(&self) -> Vec<String> {
        self.pending.lock().iter().cloned().collect()
    }

    /// The `/healthz/ready` handler.
    pub fn handler(&self) -> Handler {
        let this = self.clone();
        Arc::new(move |req: Req| {
            let pending = this.pending();
            Box::pin(async move {
                if req.path != "/healthz/ready" {
                    return text(StatusCode::NOT_FOUND, "not found\n");
                }
                if pending.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("not ready, pending: {}\n", pending.join(", ")),
                    )
                }
            })
        })
    }
}
