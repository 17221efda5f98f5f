//! Readiness: ztun is ready when no startup task is pending (first xDS sync, CNI snapshot,
//! pods that failed to start). `GET /healthz/ready` answers 200 `ready` or 500 with the list.
//!
//! Liveness: `GET /healthz/live` answers 200 `live`, or 503 once accepts have failed for lack
//! of file descriptors without a break for `ZTUN_FD_EXHAUSTION_LIVENESS` — a state ztun does
//! not leave by itself when something leaks, so a liveness probe on it restarts the process.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use parking_lot::Mutex;

use super::http::{text, Handler, Req};
use super::Telemetry;

/// The set of pending tasks. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    // Short critical sections only.
    pending: Arc<Mutex<BTreeSet<String>>>,
    /// Where accepts report fd exhaustion.
    telemetry: Arc<Telemetry>,
    /// Unbroken fd exhaustion that fails liveness.
    fd_liveness: Duration,
}

impl Readiness {
    /// An empty set (ready), failing while `telemetry` reports fd exhaustion.
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Readiness {
            pending: Arc::default(),
            telemetry,
            fd_liveness: Duration::from_secs(60),
        }
    }

    /// Fails liveness after `d` of unbroken fd exhaustion (default 60 s).
    pub fn with_fd_liveness(mut self, d: Duration) -> Self {
        self.fd_liveness = d;
        self
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

    /// The `/healthz/ready` and `/healthz/live` handler.
    pub fn handler(&self) -> Handler {
        let this = self.clone();
        Arc::new(move |req: Req| {
            let exhausted = this.telemetry.fd_exhausted_for();
            let mut pending = this.pending();
            if exhausted.is_some() {
                pending.push("file descriptors exhausted".to_string());
            }
            let fd_liveness = this.fd_liveness;
            Box::pin(async move {
                match req.path.as_str() {
                    "/healthz/ready" => {}
                    "/healthz/live" => {
                        return match exhausted {
                            Some(d) if d >= fd_liveness => text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!(
                                    "not live: file descriptors exhausted for {}s\n",
                                    d.as_secs()
                                ),
                            ),
                            _ => text(StatusCode::OK, "live\n"),
                        };
                    }
                    _ => return text(StatusCode::NOT_FOUND, "not found\n"),
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
        get(r, "/healthz/ready")
    }

    fn get(r: &Readiness, path: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let req = Req {
            method: http::Method::GET,
            path: path.into(),
            query: String::new(),
            headers: http::HeaderMap::new(),
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
        let telemetry = Telemetry::detached();
        let r = Readiness::new(telemetry.clone());
        assert_eq!(ready(&r).0, 200);
        r.block("xds client");
        let (status, body) = ready(&r);
        assert_eq!(status, 500);
        assert!(body.contains("xds client"), "{body}");
        r.unblock("xds client");
        assert_eq!(ready(&r).0, 200);
        telemetry.note_fd_exhausted();
        let (status, body) = ready(&r);
        assert_eq!(status, 500);
        assert!(body.contains("file descriptors exhausted"), "{body}");
    }

    #[test]
    fn liveness_fails_only_after_unbroken_fd_exhaustion_for_the_grace() {
        let telemetry = Telemetry::detached();
        let generous =
            Readiness::new(telemetry.clone()).with_fd_liveness(Duration::from_secs(3600));
        assert_eq!(get(&generous, "/healthz/live"), (200, "live\n".into()));
        assert_eq!(ready(&generous).0, 200);
        telemetry.note_fd_exhausted();
        // Exhausted, but not for an hour: still live (readiness already fails).
        assert_eq!(get(&generous, "/healthz/live").0, 200);
        assert_eq!(ready(&generous).0, 500);
        let strict = Readiness::new(telemetry).with_fd_liveness(Duration::ZERO);
        let (status, body) = get(&strict, "/healthz/live");
        assert_eq!(status, 503);
        assert!(body.contains("file descriptors exhausted"), "{body}");
        assert_eq!(get(&strict, "/healthz/other").0, 404);
    }
}
