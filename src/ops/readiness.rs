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
            let mut pending = this.pending();
            if super::telemetry().fd_exhausted_recently() {
                pending.push("file descriptors exhausted".to_string());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(r: &Readiness) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let req = Req {
            method: http::Method::GET,
            path: "/healthz/ready".into(),
            query: String::new(),
            body: bytes::Bytes::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let resp = rt.block_on((r.handler())(req));
        let status = resp.status().as_u16();
        let body = rt
            .block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn pending_tasks_and_fd_exhaustion_make_it_unready() {
        let r = Readiness::new();
        assert_eq!(ready(&r).0, 200);
        r.block("xds client");
        let (status, body) = ready(&r);
        assert_eq!(status, 500);
        assert!(body.contains("xds client"), "{body}");
        r.unblock("xds client");
        super::super::telemetry().note_fd_exhausted();
        let (status, body) = ready(&r);
        assert_eq!(status, 500);
        assert!(body.contains("file descriptors exhausted"), "{body}");
    }
}
