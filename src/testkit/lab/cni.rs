//! A test CNI agent: the ZDS *server* side of `spec/compat.md` §2.4, as istio-cni runs it.
//!
//! It listens on a SOCK_SEQPACKET Unix socket. For every ztun that connects it reads the
//! `ZdsHello`, replays the snapshot (one `add` per enrolled pod, each with the pod's netns fd
//! via SCM_RIGHTS, each acked before the next), sends `snapshot_sent`, and then forwards the
//! `add`/`del` calls the test makes. A newer connection replaces an older one, so a ztun that
//! restarts or reconnects always gets the current snapshot.
//!
//! One accept thread owns the listener. Every request/ack exchange happens under the state
//! lock, so requests never interleave and a snapshot replay is atomic with respect to
//! `add_pod`/`del_pod`.

use std::fs::File;
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};
use parking_lot::{Condvar, Mutex};
use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::control::zds::proto;

/// How long an exchange may wait for ztun's ack, and `add_pod`/`del_pod` for a connection.
pub const ACK_DEADLINE: Duration = Duration::from_secs(30);
/// How often the accept thread wakes up to notice shutdown and dead connections.
const TICK: Duration = Duration::from_millis(100);

/// What the CNI tells ztun about a pod (`AddWorkload` plus the netns to pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Kubernetes pod UID; the key ztun tracks the pod by.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod service account.
    pub service_account: String,
    /// File whose open fd is the pod's network namespace (sent via SCM_RIGHTS).
    pub netns_path: PathBuf,
}

/// ztun's answer to one request: `Ack{error}`; an empty error means success.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    /// The NACK reason, empty on success.
    pub error: String,
}

impl Ack {
    /// Whether ztun accepted the request.
    pub fn is_ok(&self) -> bool {
        self.error.is_empty()
    }
}

/// One acked exchange, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// Which connection (1 = the first ztun connection) the exchange was on.
    pub connection: usize,
    /// What was sent: `add <uid>`, `del <uid>`, `snapshot_sent` or `raw`.
    pub request: String,
    /// The answer.
    pub ack: Ack,
}

/// A running test CNI listening on one Unix socket. Stops listening and removes the socket
/// file on drop.
pub struct TestCni {
    socket_path: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    acks: Mutex<Vec<AckRecord>>,
}

#[derive(Default)]
struct State {
    /// Enrolled pods, in enrollment order: the snapshot.
    pods: Vec<PodInfo>,
    /// The current connection, once its hello has been read.
    conn: Option<Connection>,
    /// Connections accepted so far (hello read); numbers the connections.
    accepted: usize,
    /// Connections whose snapshot was fully acked.
    synced: usize,
}

struct Connection {
    socket: Socket,
    id: usize,
    /// The snapshot has been sent and acked: `add`/`del` may flow.
    ready: bool,
}

impl TestCni {
    /// Binds `socket_path` (replacing a stale file) and starts serving.
    pub fn start(socket_path: impl Into<PathBuf>) -> anyhow::Result<TestCni> {
        let socket_path = socket_path.into();
        let _ = std::fs::remove_file(&socket_path);
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        listener
            .bind(&SockAddr::unix(&socket_path)?)
            .with_context(|| format!("bind ZDS socket {}", socket_path.display()))?;
        listener.listen(16)?;
        // SO_RCVTIMEO bounds accept(2) too, so the thread can notice `stop`.
        listener.set_read_timeout(Some(TICK))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            acks: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("test-cni".into()).spawn({
            let shared = shared.clone();
            let stop = stop.clone();
            let label = socket_path.display().to_string();
            move || accept_loop(&listener, &shared, &stop, &label)
        })?;
        Ok(TestCni {
            socket_path,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket ztun must connect to (its `INPOD_UDS`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Adds (or replaces, by uid) `pod` in the snapshot without sending anything now: it
    /// reaches ztun with the next snapshot. Use it before ztun starts.
    pub fn enroll(&self, pod: &PodInfo) {
        enroll(&mut self.shared.state.lock(), pod);
    }

    /// Removes `uid` from the snapshot without telling ztun.
    pub fn forget(&self, uid: &str) {
        self.shared.state.lock().pods.retain(|p| p.uid != uid);
    }

    /// Enrolls `pod` and sends `add` (with its netns fd) to the connected ztun, waiting up to
    /// [`ACK_DEADLINE`] for a synced connection and for the ack. The pod stays enrolled even
    /// if this fails.
    pub fn add_pod(&self, pod: &PodInfo) -> anyhow::Result<Ack> {
        let mut state = self.wait_ready(ACK_DEADLINE)?;
        enroll(&mut state, pod);
        self.exchange_on(&mut state, &format!("add {}", pod.uid), |conn| {
            send_add(conn, pod)
        })
    }

    /// Removes `uid` from the snapshot and sends `del` to the connected ztun, waiting as
    /// [`add_pod`](Self::add_pod) does.
    pub fn del_pod(&self, uid: &str) -> anyhow::Result<Ack> {
        let mut state = self.wait_ready(ACK_DEADLINE)?;
        state.pods.retain(|p| p.uid != uid);
        let request = proto::WorkloadRequest {
            payload: Some(proto::workload_request::Payload::Del(proto::DelWorkload {
                uid: uid.to_string(),
            })),
        };
        self.exchange_on(&mut state, &format!("del {uid}"), |conn| {
            send(conn, &request.encode_to_vec(), &[])
        })
    }

    /// Sends `bytes` as one packet with `fds` attached, to the connected ztun, and waits for
    /// its ack: for malformed-input tests. Fails if ztun closes the connection instead.
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> anyhow::Result<Ack> {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut state = self.wait_ready(ACK_DEADLINE)?;
        self.exchange_on(&mut state, "raw", |conn| send(conn, bytes, &raw))
    }

    /// Closes the current connection, as a restarting CNI agent would; ztun is expected to
    /// reconnect and receive the snapshot again.
    pub fn disconnect(&self) {
        let mut state = self.shared.state.lock();
        if let Some(conn) = state.conn.take() {
            let _ = conn.socket.shutdown(std::net::Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Whether a ztun is connected and has acked its snapshot.
    pub fn is_connected(&self) -> bool {
        self.shared
            .state
            .lock()
            .conn
            .as_ref()
            .is_some_and(|c| c.ready)
    }

    /// Waits until a ztun is connected and has acked its snapshot.
    pub fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_ready(timeout).map(drop)
    }

    /// How many connections have completed the snapshot so far (1 after the first ztun
    /// synced); compare before and after a restart to see a reconnection.
    pub fn connections(&self) -> usize {
        self.shared.state.lock().synced
    }

    /// Waits until at least `n` connections have completed the snapshot.
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        while state.synced < n {
            if self
                .shared
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                bail!(
                    "ZDS socket {}: {} synced connections after {timeout:?}, wanted {n}",
                    self.socket_path.display(),
                    state.synced
                );
            }
        }
        Ok(())
    }

    /// Every ack received so far, oldest first.
    pub fn acks(&self) -> Vec<AckRecord> {
        self.shared.acks.lock().clone()
    }

    /// The pods currently in the snapshot.
    pub fn enrolled(&self) -> Vec<PodInfo> {
        self.shared.state.lock().pods.clone()
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<parking_lot::MutexGuard<'_, State>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        while !state.conn.as_ref().is_some_and(|c| c.ready) {
            if self
                .shared
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                bail!(
                    "no ztun connected to ZDS socket {} (with its snapshot acked) within {timeout:?}",
                    self.socket_path.display()
                );
            }
        }
        Ok(state)
    }

    /// Sends with `send_fn` on the current connection and reads the ack; a failed exchange
    /// drops the connection (ztun will reconnect and resync).
    fn exchange_on(
        &self,
        state: &mut State,
        request: &str,
        send_fn: impl FnOnce(&Socket) -> anyhow::Result<()>,
    ) -> anyhow::Result<Ack> {
        let conn = state
            .conn
            .as_ref()
            .ok_or_else(|| anyhow!("no connection"))?;
        let id = conn.id;
        let result = send_fn(&conn.socket).and_then(|()| read_ack(&conn.socket));
        match result {
            Ok(ack) => {
                record(&self.shared, id, request, &ack);
                Ok(ack)
            }
            Err(e) => {
                state.conn = None;
                self.shared.changed.notify_all();
                Err(e.context(format!("ZDS `{request}` on {}", self.socket_path.display())))
            }
        }
    }
}

impl Drop for TestCni {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.shared.state.lock().conn = None;
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl std::fmt::Debug for TestCni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCni")
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: &Socket, shared: &Shared, stop: &AtomicBool, label: &str) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((socket, _)) => {
                if let Err(e) = serve_new_connection(socket, shared) {
                    eprintln!("[test-cni {label}] connection dropped: {e:#}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                forget_dead_connection(shared);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("[test-cni {label}] accept failed: {e}");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Reads the hello, makes the connection current and replays the snapshot under the lock.
fn serve_new_connection(socket: Socket, shared: &Shared) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(ACK_DEADLINE))?;
    let mut buf = [0u8; 1024];
    let n = (&socket).read(&mut buf).context("read ZdsHello")?;
    let hello = proto::ZdsHello::decode(&buf[..n]).context("decode ZdsHello")?;
    if hello.version != proto::Version::V1 as i32 {
        bail!("unexpected ZDS version {} in hello", hello.version);
    }

    let mut state = shared.state.lock();
    state.accepted += 1;
    let id = state.accepted;
    // Replacing the previous connection closes it.
    state.conn = Some(Connection {
        socket,
        id,
        ready: false,
    });
    shared.changed.notify_all();

    let snapshot = state.pods.clone();
    let socket = &state.conn.as_ref().expect("just set").socket;
    let replay = || -> anyhow::Result<()> {
        for pod in &snapshot {
            send_add(socket, pod)?;
            record(shared, id, &format!("add {}", pod.uid), &read_ack(socket)?);
        }
        let sent = proto::WorkloadRequest {
            payload: Some(proto::workload_request::Payload::SnapshotSent(
                proto::SnapshotSent {},
            )),
        };
        send(socket, &sent.encode_to_vec(), &[])?;
        record(shared, id, "snapshot_sent", &read_ack(socket)?);
        Ok(())
    };
    match replay() {
        Ok(()) => {
            state.conn.as_mut().expect("still current").ready = true;
            state.synced += 1;
            shared.changed.notify_all();
            Ok(())
        }
        Err(e) => {
            state.conn = None;
            shared.changed.notify_all();
            Err(e.context("snapshot replay"))
        }
    }
}

/// Drops the current connection if its peer has gone away (ztun never sends unsolicited
/// data, so a readable socket with nothing to read means EOF).
fn forget_dead_connection(shared: &Shared) {
    let Some(mut state) = shared.state.try_lock() else {
        return;
    };
    let Some(conn) = &state.conn else { return };
    let mut probe = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let dead = match recv(conn.socket.as_raw_fd(), &mut probe, flags) {
        Ok(0) => true,
        Ok(_) | Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    };
    if dead {
        state.conn = None;
        shared.changed.notify_all();
    }
}

fn enroll(state: &mut State, pod: &PodInfo) {
    match state.pods.iter_mut().find(|p| p.uid == pod.uid) {
        Some(existing) => *existing = pod.clone(),
        None => state.pods.push(pod.clone()),
    }
}

fn send_add(socket: &Socket, pod: &PodInfo) -> anyhow::Result<()> {
    let netns = File::open(&pod.netns_path).with_context(|| {
        format!(
            "open netns {} of pod {}",
            pod.netns_path.display(),
            pod.name
        )
    })?;
    let request = proto::WorkloadRequest {
        payload: Some(proto::workload_request::Payload::Add(proto::AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(proto::WorkloadInfo {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
            }),
        })),
    };
    send(socket, &request.encode_to_vec(), &[netns.as_raw_fd()])
}

fn send(socket: &Socket, bytes: &[u8], fds: &[RawFd]) -> anyhow::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let rights;
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() {
        &[]
    } else {
        rights = [ControlMessage::ScmRights(fds)];
        &rights
    };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .context("send ZDS request")?;
    Ok(())
}

fn read_ack(socket: &Socket) -> anyhow::Result<Ack> {
    let mut buf = [0u8; 1024];
    let n = match (&*socket).read(&mut buf) {
        Ok(0) => bail!("ztun closed the ZDS connection instead of acking"),
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("no ack from ztun within {ACK_DEADLINE:?}")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("read ZDS ack")),
    };
    let response = proto::WorkloadResponse::decode(&buf[..n]).context("decode WorkloadResponse")?;
    match response.payload {
        Some(proto::workload_response::Payload::Ack(ack)) => Ok(Ack { error: ack.error }),
        None => bail!("WorkloadResponse without an ack"),
    }
}

fn record(shared: &Shared, connection: usize, request: &str, ack: &Ack) {
    shared.acks.lock().push(AckRecord {
        connection,
        request: request.to_string(),
        ack: ack.clone(),
    });
}
