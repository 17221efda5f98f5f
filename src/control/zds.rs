//! ZDS client: the CNI agent hands us pods (uid, identity, netns fd) over a SOCK_SEQPACKET
//! Unix socket; we start a proxy inside each pod's namespace and acknowledge every message.
//!
//! Protocol (one bare protobuf per packet): we send `ZdsHello{V1}`; the agent replays its
//! cache as `add`/`keep`, then `snapshot_sent` (pods not replayed are stopped), then only
//! `add`/`del`. Every message gets an `Ack`; a non-empty `error` is a NACK.
//!
//! Robustness (deliberately stricter and more forgiving than a crash): a malformed message,
//! a missing or extra fd, an fd that is not a network namespace, or an out-of-order message
//! is NACKed with the reason, and the connection and all other pods keep going. A lost
//! connection is retried with capped exponential backoff; pods keep running meanwhile.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use prost::Message;
use tokio::io::unix::AsyncFd;

use crate::sys::netns::NetnsId;
use crate::sys::Netns;

/// Generated ZDS messages (`proto/zds.proto`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
}

use proto::workload_request::Payload;

/// Largest message we accept; bigger ones are truncated and NACKed.
const MAX_MESSAGE: usize = 1024;
/// Most descriptors one message may carry: more truncate the ancillary data, and the message
/// is refused.
const MAX_FDS: usize = 4;

/// A pod as announced by the CNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Kubernetes uid.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// Starts a proxy for a pod inside its namespace. The returned guard keeps it running;
/// dropping the guard stops the pod's listeners and connections.
pub trait PodStarter: Send + Sync + 'static {
    /// Starts the pod's proxy.
    fn start(&self, pod: &Pod, netns: Arc<Netns>) -> io::Result<Box<dyn Send + Sync>>;
}

/// Observes the ZDS lifecycle (readiness, metrics, admin view).
pub trait ZdsObserver: Send + Sync + 'static {
    /// Connected and the snapshot was reconciled (`true`), or disconnected (`false`).
    fn synced(&self, synced: bool);
    /// A pod's proxy started.
    fn pod_started(&self, _pod: &Pod) {}
    /// A pod's proxy stopped.
    fn pod_stopped(&self, _pod: &Pod) {}
    /// The number of pods whose proxy failed to start and awaits a retry changed.
    fn pending(&self, _count: usize) {}
}

impl ZdsObserver for () {
    fn synced(&self, _: bool) {}
}

struct Running {
    netns: NetnsId,
    pod: Pod,
    _guard: Box<dyn Send + Sync>,
}

/// The ZDS client and the pods it runs.
pub struct Client {
    path: PathBuf,
    starter: Arc<dyn PodStarter>,
    observer: Arc<dyn ZdsObserver>,
    pods: HashMap<String, Running>,
    /// Pods whose proxy failed to start (e.g. a port conflict): NACKed, and retried every
    /// [`RETRY_PENDING`] until they start, are deleted or leave the snapshot.
    pending: HashMap<String, (Pod, Arc<Netns>)>,
    /// Uids added or kept since the current connection started.
    seen: HashSet<String>,
    snapshot_done: bool,
}

/// How often pods whose proxy failed to start are retried.
pub const RETRY_PENDING: Duration = Duration::from_secs(5);

/// Why a ZDS connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// Socket I/O failed.
    #[error("zds socket: {0}")]
    Io(#[from] io::Error),
}

impl Client {
    /// A client for the socket at `path`.
    pub fn new(
        path: PathBuf,
        starter: Arc<dyn PodStarter>,
        observer: Arc<dyn ZdsObserver>,
    ) -> Self {
        Client {
            path,
            starter,
            observer,
            pods: HashMap::new(),
            pending: HashMap::new(),
            seen: HashSet::new(),
            snapshot_done: false,
        }
    }

    /// Connects, serves, reconnects until `stop` fires. Then the CNI connection is closed (so
    /// the agent hands pods to a successor) while the pods' proxies keep running: they drain
    /// with the process. Never returns.
    pub async fn run(mut self, mut stop: crate::drain::Watch) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let stopped = tokio::select! {
                _ = stop.signaled() => true,
                _ = self.connect_and_serve(&mut backoff) => false,
            };
            if stopped {
                break;
            }
            tokio::select! {
                _ = stop.signaled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
        tracing::info!(
            "draining: disconnected from the CNI; pod proxies stay until the process exits"
        );
        // The watch must not keep the process drain waiting.
        drop(stop);
        std::future::pending::<()>().await;
        drop(self);
    }

    async fn connect_and_serve(&mut self, backoff: &mut Duration) {
        match connect(&self.path) {
            Ok(fd) => {
                tracing::info!(path = %self.path.display(), "connected to CNI");
                *backoff = Duration::from_millis(10);
                match self.serve(fd).await {
                    Ok(()) => tracing::warn!("CNI closed the ZDS connection"),
                    Err(e) => tracing::warn!(error = %e, "ZDS connection failed"),
                }
                self.observer.synced(false);
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot connect to CNI")
            }
        }
    }

    /// Number of running pod proxies.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    async fn serve(&mut self, fd: OwnedFd) -> Result<(), ZdsError> {
        let fd = crate::sys::socket::async_fd(fd)?;
        self.seen.clear();
        self.snapshot_done = false;
        let hello = proto::ZdsHello {
            version: proto::Version::V1 as i32,
        }
        .encode_to_vec();
        send(&fd, &hello).await?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut retry = tokio::time::interval(RETRY_PENDING);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                r = recv(&fd, &mut buf) => r?,
                _ = retry.tick(), if !self.pending.is_empty() => {
                    self.retry_pending();
                    continue;
                }
            };
            let Some((len, fds, truncated)) = received else {
                return Ok(());
            };
            let error = if truncated {
                "message or its control data was truncated".to_string()
            } else {
                self.handle(&buf[..len], fds).err().unwrap_or_default()
            };
            if !error.is_empty() {
                tracing::warn!(%error, "NACK to CNI");
            }
            let ack = proto::WorkloadResponse {
                payload: Some(proto::workload_response::Payload::Ack(proto::Ack { error })),
            };
            send(&fd, &ack.encode_to_vec()).await?;
        }
    }

    /// Applies one message; `Err` carries the NACK reason.
    pub(crate) fn handle(&mut self, bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<(), String> {
        let req =
            proto::WorkloadRequest::decode(bytes).map_err(|e| format!("malformed message: {e}"))?;
        let payload = req.payload.ok_or("message has no payload")?;
        if !matches!(payload, Payload::Add(_)) && !fds.is_empty() {
            return Err("unexpected file descriptor on a non-add message".into());
        }
        match payload {
            Payload::Add(add) => {
                if fds.len() != 1 {
                    return Err(format!(
                        "add must carry exactly one netns fd, got {}",
                        fds.len()
                    ));
                }
                let info = add.workload_info.ok_or("add without workload_info")?;
                if add.uid.is_empty() {
                    return Err("add without uid".into());
                }
                let netns =
                    Netns::from_fd(fds.remove(0)).map_err(|e| format!("pod {}: {e}", add.uid))?;
                let pod = Pod {
                    uid: add.uid,
                    name: info.name,
                    namespace: info.namespace,
                    service_account: info.service_account,
                };
                self.add(pod, netns)
            }
            Payload::Keep(keep) => {
                if self.snapshot_done {
                    return Err("keep after snapshot_sent".into());
                }
                if !self.pods.contains_key(&keep.uid) {
                    return Err(format!("keep for unknown pod {}", keep.uid));
                }
                self.seen.insert(keep.uid);
                Ok(())
            }
            Payload::Del(del) => {
                self.seen.remove(&del.uid);
                if self.pending.remove(&del.uid).is_some() {
                    self.observer.pending(self.pending.len());
                }
                if let Some(r) = self.pods.remove(&del.uid) {
                    tracing::info!(uid = %del.uid, pod = %r.pod.name, namespace = %r.pod.namespace, "pod removed");
                    self.observer.pod_stopped(&r.pod);
                }
                Ok(())
            }
            Payload::SnapshotSent(_) => {
                if self.snapshot_done {
                    return Err("second snapshot_sent".into());
                }
                let stale: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|u| !self.seen.contains(*u))
                    .cloned()
                    .collect();
                for uid in stale {
                    tracing::info!(%uid, "pod not in CNI snapshot, stopping");
                    if let Some(r) = self.pods.remove(&uid) {
                        self.observer.pod_stopped(&r.pod);
                    }
                }
                let before = self.pending.len();
                let seen = &self.seen;
                self.pending.retain(|uid, _| seen.contains(uid));
                if self.pending.len() != before {
                    self.observer.pending(self.pending.len());
                }
                self.snapshot_done = true;
                self.observer.synced(true);
                Ok(())
            }
        }
    }

    fn add(&mut self, pod: Pod, netns: Netns) -> Result<(), String> {
        if let Some(r) = self.pods.get(&pod.uid) {
            if r.netns == netns.id() {
                self.seen.insert(pod.uid);
                return Ok(());
            }
            tracing::info!(uid = %pod.uid, "pod has a new network namespace, replacing its proxy");
            if let Some(r) = self.pods.remove(&pod.uid) {
                self.observer.pod_stopped(&r.pod);
            }
        }
        self.seen.insert(pod.uid.clone());
        self.start(pod, Arc::new(netns))
    }

    /// Starts a pod's proxy; on failure the pod is kept pending for a retry.
    fn start(&mut self, pod: Pod, netns: Arc<Netns>) -> Result<(), String> {
        let id = netns.id();
        let guard = match self.starter.start(&pod, netns.clone()) {
            Ok(g) => g,
            Err(e) => {
                let reason = format!("starting proxy for {}: {e}", pod.uid);
                tracing::warn!(uid = %pod.uid, error = %e, retry_in = ?RETRY_PENDING, "pod proxy failed to start");
                self.pending.insert(pod.uid.clone(), (pod, netns));
                self.observer.pending(self.pending.len());
                return Err(reason);
            }
        };
        if self.pending.remove(&pod.uid).is_some() {
            self.observer.pending(self.pending.len());
        }
        tracing::info!(uid = %pod.uid, pod = %pod.name, namespace = %pod.namespace, "pod added");
        self.observer.pod_started(&pod);
        self.pods.insert(
            pod.uid.clone(),
            Running {
                netns: id,
                pod,
                _guard: guard,
            },
        );
        Ok(())
    }
}

impl Client {
    /// Retries every pending pod once.
    fn retry_pending(&mut self) {
        let pending: Vec<(Pod, Arc<Netns>)> = self.pending.values().cloned().collect();
        for (pod, netns) in pending {
            let _ = self.start(pod, netns);
        }
    }

    /// Number of pods awaiting a retry.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

fn connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(fd)
}

async fn send(fd: &AsyncFd<OwnedFd>, bytes: &[u8]) -> io::Result<()> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| {
            socket::send(inner.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
        }) {
            Ok(res) => return res.map(|_| ()),
            Err(_would_block) => continue,
        }
    }
}

/// One packet: its length, the fds it carried, and whether anything was truncated.
/// `None` at end of stream.
async fn recv(
    fd: &AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>, bool)>> {
    loop {
        let mut guard = fd.readable().await?;
        let res = guard
            .try_io(|inner| crate::sys::socket::recv_with_fds::<MAX_FDS>(inner.as_raw_fd(), buf));
        match res {
            Ok(Ok((0, fds, false))) if fds.is_empty() => return Ok(None),
            Ok(Ok(v)) => return Ok(Some(v)),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Starter {
        started: AtomicUsize,
    }

    impl PodStarter for Starter {
        fn start(&self, _pod: &Pod, _netns: Arc<Netns>) -> io::Result<Box<dyn Send + Sync>> {
            self.started.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(()))
        }
    }

    fn client() -> (Client, Arc<Starter>) {
        let starter = Arc::new(Starter::default());
        (
            Client::new("/nonexistent".into(), starter.clone(), Arc::new(())),
            starter,
        )
    }

    fn netns_fd() -> OwnedFd {
        std::fs::File::open("/proc/self/ns/net")
            .expect("own netns")
            .into()
    }

    fn add(uid: &str) -> Vec<u8> {
        proto::WorkloadRequest {
            payload: Some(Payload::Add(proto::AddWorkload {
                uid: uid.into(),
                workload_info: Some(proto::WorkloadInfo {
                    name: "p".into(),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }),
            })),
        }
        .encode_to_vec()
    }

    fn msg(p: Payload) -> Vec<u8> {
        proto::WorkloadRequest { payload: Some(p) }.encode_to_vec()
    }

    /// Fails the first `fail` starts, then succeeds.
    struct Flaky {
        fail: AtomicUsize,
    }

    impl PodStarter for Flaky {
        fn start(&self, _pod: &Pod, _netns: Arc<Netns>) -> io::Result<Box<dyn Send + Sync>> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "port 15001 in use",
                ));
            }
            Ok(Box::new(()))
        }
    }

    #[test]
    fn a_pod_that_fails_to_start_is_nacked_kept_pending_and_retried() {
        let mut c = Client::new(
            "/nonexistent".into(),
            Arc::new(Flaky {
                fail: AtomicUsize::new(2),
            }),
            Arc::new(()),
        );
        let err = c.handle(&add("a"), vec![netns_fd()]).unwrap_err();
        assert!(err.contains("port 15001 in use"), "{err}");
        assert_eq!((c.pods(), c.pending()), (0, 1));
        c.retry_pending();
        assert_eq!((c.pods(), c.pending()), (0, 1));
        c.retry_pending();
        assert_eq!((c.pods(), c.pending()), (1, 0));
        // A pending pod that is deleted is forgotten.
        let mut c = Client::new(
            "/nonexistent".into(),
            Arc::new(Flaky {
                fail: AtomicUsize::new(9),
            }),
            Arc::new(()),
        );
        c.handle(&add("b"), vec![netns_fd()]).unwrap_err();
        c.handle(
            &msg(Payload::Del(proto::DelWorkload { uid: "b".into() })),
            vec![],
        )
        .unwrap();
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn wire_bytes_match_the_protocol() {
        assert_eq!(
            proto::ZdsHello {
                version: proto::Version::V1 as i32
            }
            .encode_to_vec(),
            [0x08, 0x01]
        );
        assert_eq!(
            msg(Payload::SnapshotSent(proto::SnapshotSent {})),
            [0x1a, 0x00]
        );
        let ack = proto::WorkloadResponse {
            payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
                error: String::new(),
            })),
        };
        assert_eq!(ack.encode_to_vec(), [0x0a, 0x00]);
        // DelWorkload carries its uid in field 2.
        assert_eq!(
            msg(Payload::Del(proto::DelWorkload { uid: "u".into() })),
            [0x12, 0x03, 0x12, 0x01, b'u']
        );
    }

    #[test]
    fn snapshot_flow_add_keep_reconcile_and_idempotent_readd() {
        let (mut c, starter) = client();
        c.handle(&add("a"), vec![netns_fd()]).unwrap();
        c.handle(&add("b"), vec![netns_fd()]).unwrap();
        c.handle(&msg(Payload::SnapshotSent(proto::SnapshotSent {})), vec![])
            .unwrap();
        assert_eq!((c.pods(), starter.started.load(Ordering::SeqCst)), (2, 2));
        // Same namespace again: nothing restarts.
        c.handle(&add("a"), vec![netns_fd()]).unwrap();
        assert_eq!(starter.started.load(Ordering::SeqCst), 2);
        c.handle(
            &msg(Payload::Del(proto::DelWorkload { uid: "a".into() })),
            vec![],
        )
        .unwrap();
        assert_eq!(c.pods(), 1);

        // Reconnect: only b is kept; a new snapshot without it stops it.
        c.seen.clear();
        c.snapshot_done = false;
        c.handle(
            &msg(Payload::Keep(proto::KeepWorkload { uid: "b".into() })),
            vec![],
        )
        .unwrap();
        c.handle(&msg(Payload::SnapshotSent(proto::SnapshotSent {})), vec![])
            .unwrap();
        assert_eq!(c.pods(), 1);
        c.seen.clear();
        c.snapshot_done = false;
        c.handle(&msg(Payload::SnapshotSent(proto::SnapshotSent {})), vec![])
            .unwrap();
        assert_eq!(c.pods(), 0);
    }

    #[test]
    fn protocol_violations_are_nacked_with_a_reason() {
        let (mut c, starter) = client();
        let not_netns: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        let cases: Vec<(&str, Vec<u8>, Vec<OwnedFd>, &str)> = vec![
            ("garbage", vec![0xff, 0xff, 0xff], vec![], "malformed"),
            ("no payload", vec![0x20, 0x01], vec![], "no payload"),
            ("add without fd", add("x"), vec![], "exactly one netns fd"),
            (
                "add with two fds",
                add("x"),
                vec![netns_fd(), netns_fd()],
                "exactly one netns fd",
            ),
            (
                "add with a file",
                add("x"),
                vec![not_netns],
                "not a network namespace",
            ),
            ("add without uid", add(""), vec![netns_fd()], "without uid"),
            (
                "del with fd",
                msg(Payload::Del(proto::DelWorkload { uid: "x".into() })),
                vec![netns_fd()],
                "unexpected file descriptor",
            ),
            (
                "keep unknown",
                msg(Payload::Keep(proto::KeepWorkload { uid: "nope".into() })),
                vec![],
                "unknown pod",
            ),
        ];
        for (name, bytes, fds, want) in cases {
            let err = c.handle(&bytes, fds).expect_err(name);
            assert!(err.contains(want), "{name}: {err}");
        }
        let no_info = msg(Payload::Add(proto::AddWorkload {
            uid: "x".into(),
            workload_info: None,
        }));
        assert!(c
            .handle(&no_info, vec![netns_fd()])
            .unwrap_err()
            .contains("workload_info"));
        c.handle(&msg(Payload::SnapshotSent(proto::SnapshotSent {})), vec![])
            .unwrap();
        assert!(c
            .handle(&msg(Payload::SnapshotSent(proto::SnapshotSent {})), vec![])
            .unwrap_err()
            .contains("second"));
        assert!(c
            .handle(
                &msg(Payload::Keep(proto::KeepWorkload { uid: "x".into() })),
                vec![]
            )
            .unwrap_err()
            .contains("after snapshot"));
        assert_eq!(starter.started.load(Ordering::SeqCst), 0);
    }

    /// Records, on tokio's clock, each failed connect the client logs.
    #[derive(Clone, Default)]
    struct Attempts(Arc<parking_lot::Mutex<Vec<tokio::time::Instant>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Attempts {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Text(String);
            impl tracing::field::Visit for Text {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut text = Text(String::new());
            event.record(&mut text);
            if text.0 == "cannot connect to CNI" {
                self.0.lock().push(tokio::time::Instant::now());
            }
        }
    }

    impl Attempts {
        fn len(&self) -> usize {
            self.0.lock().len()
        }

        /// Milliseconds between consecutive attempts, from the `from`th on.
        fn gaps(&self, from: usize) -> Vec<u128> {
            let times = self.0.lock();
            times[from..]
                .windows(2)
                .map(|w| (w[1] - w[0]).as_millis())
                .collect()
        }
    }

    /// Sleeps (paused clock) until `attempts` holds `n` attempts.
    async fn until_attempts(attempts: &Attempts, n: usize) {
        while attempts.len() < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_backoff_doubles_to_fifteen_seconds_and_restarts_once_connected() {
        use tracing_subscriber::layer::SubscriberExt;

        let attempts = Attempts::default();
        let _log =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(attempts.clone()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let (_stop, watch) = crate::drain::channel();
        let client = Client::new(path.clone(), Arc::new(Starter::default()), Arc::new(()));
        tokio::spawn(client.run(watch));

        // No CNI: attempts at 0, 10, 30, 70 ms, ..., 20.47 s, then every 15 s.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let want: Vec<u128> = (0..13).map(|k| (10u128 << k).min(15_000)).collect();
        let gaps = attempts.gaps(0);
        assert_eq!(gaps.get(..13), Some(&want[..]));
        assert_eq!(gaps.len(), 13);

        // The CNI comes back: the next attempt (at 65.47 s) connects and says hello.
        let listener =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        listener
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        listener.listen(1).unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(attempts.len(), 14, "the 15th attempt connected");
        listener.set_nonblocking(true).unwrap();
        let (conn, _) = listener.accept().expect("the client connected");
        conn.set_nonblocking(true).unwrap();
        let mut conn = std::os::unix::net::UnixStream::from(OwnedFd::from(conn));
        let mut hello = [0u8; 16];
        let n = std::io::Read::read(&mut conn, &mut hello).expect("the client's hello");
        assert_eq!(hello[..n], [0x08, 0x01]);

        // The CNI goes away again: having connected, the client starts over from 10 ms.
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        drop(conn);
        until_attempts(&attempts, 14 + 6).await;
        assert_eq!(attempts.gaps(14)[..5], [20, 40, 80, 160, 320]);
    }
}
