//! Lifecycle end to end: a zero-downtime handover to a new ztun on the same node, and an
//! abrupt kill that must never let captured traffic out in plaintext.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztun::testkit::lab::{Netns, Process};
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster, WAIT};

#[test]
fn upgrade_hands_pods_to_the_new_ztun_without_failures() {
    rolling_update_fails_no_new_connection("upgrade", "n1");
}

/// The destination's rolling update: the old ztun's GOAWAY reaches n1's pooled connection,
/// which the long-lived stream keeps open. New connections of the same pool key (same pod,
/// same destination) must move to a new connection, to the new ztun, instead of failing on
/// the refusing one.
#[test]
fn upgrade_of_the_destination_node_fails_no_new_connection() {
    rolling_update_fails_no_new_connection("upgradedst", "n2");
}

/// A new ztun starts beside the old one on `node` and takes its pods; the old one gets
/// SIGTERM and drains. Pod a (n1) keeps a long-lived stream to c (n2) open throughout and opens
/// new connections to c one after another: not one may fail, and the new ztun must serve.
fn rolling_update_fails_no_new_connection(test: &str, node: &str) {
    let lab = standard_lab(test);
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = Cluster::start_with(lab, mesh, &[("CONNECTION_TERMINATION_DEADLINE", "60s")]);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));

    // A long-lived stream through the old ztun.
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let long = cluster.lab.pod("a").spawn_async(async move {
        let mut s = ztun::testkit::lab::connect(dst, WAIT).await?;
        let mut buf = [0u8; 4];
        s.write_all(b"old1").await?;
        s.read_exact(&mut buf).await?;
        let _ = opened_tx.send(());
        let _ = finish_rx.await;
        s.write_all(b"old2").await?;
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"old2", "echo differs");
        anyhow::Ok(())
    });
    opened_rx.recv_timeout(WAIT).unwrap();

    // New connections, one after another, for the whole handover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churn = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        cluster.lab.pod("a").spawn_async(async move {
            while !stop.load(Ordering::Acquire) {
                match ztun::testkit::lab::bulk_echo(dst, 4096, WAIT).await {
                    Ok(_) => ok.fetch_add(1, Ordering::AcqRel),
                    Err(e) => {
                        eprintln!("churn connection failed: {e:#}");
                        failed.fetch_add(1, Ordering::AcqRel)
                    }
                };
            }
        })
    };
    let wait_ok = |n: u64| {
        let target = ok.load(Ordering::Acquire) + n;
        let deadline = std::time::Instant::now() + WAIT;
        while ok.load(Ordering::Acquire) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "churn made no progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait_ok(20);

    let new = spawn_successor(&mut cluster, node);
    wait_ok(20);

    // The old one is told to stop, as a rolling update does.
    let old = cluster.ztun(node);
    old.sigterm().unwrap();
    old.wait_for_log("shutting down", WAIT).unwrap();
    wait_ok(50);
    // The old ztun still carries the long-lived stream until it ends.
    let _ = finish_tx.send(());
    long.join().unwrap().unwrap();
    let exit = old.wait_exit(WAIT).unwrap();
    assert!(exit.success(), "{exit:?}");
    wait_ok(20);
    stop.store(true, Ordering::Release);
    churn.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Acquire),
        0,
        "connections failed during the handover ({} ok)",
        ok.load(Ordering::Acquire)
    );
    // n1 serves the churn outbound, n2 inbound.
    let direction = if node == "n1" { "outbound" } else { "inbound" };
    let served_by_new = new
        .logs()
        .iter()
        .filter(|l| l.contains(&format!("direction=\"{direction}\"")))
        .count();
    assert!(served_by_new > 0, "the new ztun served nothing");
    cluster.ztuns.retain(|(n, _)| n != node);
}

/// Starts a new ztun for `node` in its own namespace, connected to the node's CNI as a
/// rolling update does, and waits until the CNI has handed it the node's pods.
fn spawn_successor(cluster: &mut Cluster, node: &str) -> Process {
    let ns = cluster.lab.add_netns(&format!("{node}new")).unwrap();
    let mesh_path = cluster.mesh_path.to_string_lossy().into_owned();
    let ca = cluster.ca_dir.to_string_lossy().into_owned();
    let cni = cluster
        .lab
        .cni(node)
        .socket_path()
        .to_string_lossy()
        .into_owned();
    let bin = ztun::testkit::ztun_bin().unwrap();
    let env = [
        ("INPOD_UDS", cni.as_str()),
        ("NODE_NAME", node),
        ("RUST_LOG", "info,ztun=debug"),
        ("XDS_ADDRESS", ""),
        ("LOCAL_XDS_PATH", mesh_path.as_str()),
        ("LOCAL_CA_DIR", ca.as_str()),
    ];
    let new = cluster
        .lab
        .spawn_in(
            &ns,
            &format!("{node}-new"),
            &bin,
            &["proxy", "ztunnel"],
            &env,
            cluster.lab.dir(),
        )
        .unwrap();
    cluster.lab.cni(node).wait_connections(2, WAIT).unwrap();
    cluster.lab.cni(node).wait_connected(WAIT).unwrap();
    new.wait_for_log("pod added", WAIT).unwrap();
    new
}

#[test]
fn killed_ztun_never_leaks_plaintext_and_recovers_from_the_snapshot() {
    let lab = standard_lab("sigkill");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = Cluster::start(lab, mesh);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));
    cluster.lab.pod("a").bulk_echo(dst, 1 << 20).unwrap();

    let old = cluster.ztuns.remove(0).1;
    old.kill().unwrap();
    old.wait_exit(WAIT).unwrap();
    cluster.lab.cni("n1").wait_connections(1, WAIT).unwrap();
    let capture = cluster.lab.capture("n1").unwrap();
    // With nothing on 15001 the redirected connection is refused: it never leaves the pod.
    for _ in 0..5 {
        let err = cluster
            .lab
            .pod("a")
            .try_connect(dst)
            .expect_err("traffic flowed with ztun dead");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
    let pcap = capture.stop().unwrap();
    assert!(
        !pcap.saw_tcp_port(8080).unwrap(),
        "a captured pod reached the app port in plaintext"
    );

    // A new ztun re-adopts the pods from the CNI snapshot; no pod restart.
    let new = cluster.spawn("n1", &[]);
    cluster.lab.cni("n1").wait_connections(2, WAIT).unwrap();
    cluster.lab.cni("n1").wait_connected(WAIT).unwrap();
    new.wait_for_log("pod added", WAIT).unwrap();
    cluster
        .lab
        .pod("a")
        .bulk_echo(dst, 1 << 20)
        .expect("traffic recovers after restart");
    cluster.ztuns.insert(0, ("n1".into(), new));
}

/// Clients in pod a keeping this many connections in flight each, for the whole handover.
const CLIENTS: usize = 6;
const IN_FLIGHT: usize = 16;
/// Bytes each connection sends and must get back.
const ECHO_LEN: u64 = 2048;
/// Connections the old ztun's listener must hold queued when it is told to stop (all
/// `CLIENTS * IN_FLIGHT` end up there; ztun's listen backlog is 128).
const QUEUED: usize = 48;
/// Connections opened after the old listener closed, each proven served by the new ztun.
const AFTER_CLOSE: usize = 150;
/// Data-plane workers of each ztun (the default): a listener each per port.
const WORKERS: usize = 2;

/// An upgrade under load: connections queued in the old ztun's listeners when it closes them
/// move to the new ztun's listeners of the same SO_REUSEPORT group (`tcp_migrate_req`, set by
/// ztun in each pod), instead of being reset. The old ztun is first starved of file
/// descriptors, so every connection the kernel hashes to its listener stays in that
/// listener's accept queue (the clients keep opening connections until the queue holds
/// dozens); then it gets SIGTERM and closes its listeners. Not one connection may fail, each
/// must get its full echo, the kernel must count the migrations, and each connection is
/// logged by exactly one of the two ztuns, the new one for every connection opened after the
/// old listener was gone.
#[test]
fn queued_connections_move_to_the_new_ztun_during_an_upgrade() {
    let lab = standard_lab("migrate");
    let mesh = MeshFile::from_lab(&lab);
    let server = lab.pod("c").spawn_echo_server(8080).unwrap();
    let mut cluster = Cluster::start_with(lab, mesh, &[("CONNECTION_TERMINATION_DEADLINE", "60s")]);
    let dst = SocketAddr::from((cluster.lab.pod("c").ip(), server.port()));
    let a_ip = cluster.lab.pod("a").ip();
    let old_pid = cluster.ztun("n1").pid();

    let churn = Churn::default();
    let clients = cluster.lab.pod("a").spawn_async(churn.clone().run(dst));
    churn.wait_ok(50);

    let new = spawn_successor(&mut cluster, "n1");
    let pod_a = cluster.lab.pod("a").netns().clone();
    // Each ztun has a listener per worker (two by default) in the group.
    let owned_by = |pid: u32| {
        outbound_listeners(&pod_a)
            .iter()
            .filter(|l| l.pid == pid)
            .count()
    };
    wait_until(
        "the new ztun's outbound listeners join the old ones in pod a",
        || owned_by(old_pid) == WORKERS && owned_by(new.pid()) == WORKERS,
    );
    churn.wait_ok(50);

    // Starve the old ztun: accept() fails (EMFILE) and leaves connections queued.
    let limit = "--nofile=0:";
    ztun::testkit::lab::run_cmd("prlimit", &["--pid", &old_pid.to_string(), limit], None).unwrap();
    let mut queued = 0;
    wait_until("connections queue up in the old ztun's listeners", || {
        queued = outbound_listeners(&pod_a)
            .iter()
            .filter(|l| l.pid == old_pid)
            .map(|l| l.queued)
            .sum();
        queued >= QUEUED
    });
    let before = migration_counters(&pod_a);

    let old = cluster.ztun("n1");
    old.sigterm().unwrap();
    wait_until(
        "the old ztun closes its outbound listeners in pod a",
        || {
            let owners: Vec<u32> = outbound_listeners(&pod_a).iter().map(|l| l.pid).collect();
            owners == [new.pid(); WORKERS]
        },
    );
    churn.after_close.store(true, Ordering::Release);
    churn.wait_after_close(AFTER_CLOSE);
    churn.stop.store(true, Ordering::Release);
    clients.join().unwrap();
    let exit = old.wait_exit(WAIT).unwrap();
    assert!(exit.success(), "{exit:?}");

    let failures = churn.failures.lock().clone();
    let done = churn.done.lock().clone();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed during the handover, first: {:?}",
        failures.len(),
        failures.len() + done.len(),
        failures.first()
    );
    let after = migration_counters(&pod_a);
    let migrated = after.0 - before.0;
    assert_eq!(
        after.1, before.1,
        "the kernel failed to migrate queued connections"
    );
    assert!(
        migrated >= queued as u64,
        "{queued} connections were queued in the old listener, {migrated} migrated"
    );

    // Every connection is logged once, by the ztun that served it (lines come as the
    // connections close, just after the clients saw their echo).
    let served = |p: &Process| outbound_ports(p, a_ip);
    wait_until("both ztuns logged every connection", || {
        served(old).len() + served(&new).len() >= done.len()
    });
    let (by_old, by_new) = (served(old), served(&new));
    assert_eq!(
        by_old.len() + by_new.len(),
        done.len(),
        "access lines of the old ({}) and new ({}) ztun against {} connections",
        by_old.len(),
        by_new.len(),
        done.len()
    );
    let late: Vec<u16> = done
        .iter()
        .filter(|c| c.after_close)
        .map(|c| c.port)
        .collect();
    let missing: Vec<&u16> = late.iter().filter(|p| !by_new.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "connections opened after the old listener closed, not logged by the new ztun: {missing:?}"
    );
    assert!(
        by_new.len() >= late.len() + queued,
        "the new ztun served {} connections; {} opened after the close and {queued} migrated",
        by_new.len(),
        late.len()
    );
    eprintln!(
        "handover: {} connections, {} by the old ztun, {} by the new; {queued} queued at \
         SIGTERM, {migrated} migrated by the kernel, {} opened after the close",
        done.len(),
        by_old.len(),
        by_new.len(),
        late.len()
    );
    cluster.ztuns.retain(|(n, _)| n != "n1");
}

/// One finished connection: its client port, and whether it was opened after the old
/// ztun's listener was gone.
#[derive(Clone, Copy, Debug)]
struct Done {
    port: u16,
    after_close: bool,
}

/// Clients that keep [`IN_FLIGHT`] echo connections open each until stopped, and what
/// became of every connection.
#[derive(Clone, Default)]
struct Churn {
    stop: Arc<AtomicBool>,
    after_close: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Done>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Churn {
    /// Runs the clients (in the pod's namespace) until `stop`, then waits for the
    /// connections in flight.
    async fn run(self, dst: SocketAddr) {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let churn = self.clone();
            clients.spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    while !churn.stop.load(Ordering::Acquire) && conns.len() < IN_FLIGHT {
                        conns.spawn(churn.clone().one(dst));
                    }
                    if conns.join_next().await.is_none() {
                        break;
                    }
                }
            });
        }
        while clients.join_next().await.is_some() {}
    }

    async fn one(self, dst: SocketAddr) {
        let after_close = self.after_close.load(Ordering::Acquire);
        let echo = async {
            let s = ztun::testkit::lab::connect(dst, WAIT).await?;
            let port = s.local_addr()?.port();
            let n = tokio::time::timeout(WAIT, ztun::testkit::lab::bulk_echo_over(s, ECHO_LEN))
                .await
                .map_err(|_| anyhow::anyhow!("no echo within {WAIT:?}"))??;
            anyhow::ensure!(n == ECHO_LEN, "{n} of {ECHO_LEN} bytes echoed");
            anyhow::Ok(port)
        };
        match echo.await {
            Ok(port) => self.done.lock().push(Done { port, after_close }),
            Err(e) => self.failures.lock().push(format!("{e:#}")),
        }
    }

    /// Waits until `n` more connections have completed.
    fn wait_ok(&self, n: usize) {
        let target = self.done.lock().len() + n;
        wait_until("connections complete", || self.done.lock().len() >= target);
    }

    /// Waits until `n` connections opened after the old listener closed have completed.
    fn wait_after_close(&self, n: usize) {
        wait_until("connections opened after the close complete", || {
            self.done.lock().iter().filter(|c| c.after_close).count() >= n
        });
    }
}

/// A TCP listener on 15001 in a pod: the pid holding it and its accept queue.
struct Listener {
    pid: u32,
    queued: usize,
}

/// The outbound (15001) listeners in `pod`, as `ss` reports them.
fn outbound_listeners(pod: &Netns) -> Vec<Listener> {
    let out = pod.exec("ss", &["-Hltnp", "sport = :15001"], None).unwrap();
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // State Recv-Q Send-Q Local Peer Process; a listener's Recv-Q is its accept queue.
            let queued = l.split_whitespace().nth(1).and_then(|q| q.parse().ok());
            let pid = l
                .split("pid=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|p| p.parse().ok());
            match (queued, pid) {
                (Some(queued), Some(pid)) => Listener { pid, queued },
                _ => panic!("unexpected ss line: {l}"),
            }
        })
        .collect()
}

/// The kernel's `TCPMigrateReqSuccess` and `TCPMigrateReqFailure` counters of `pod`'s
/// namespace.
fn migration_counters(pod: &Netns) -> (u64, u64) {
    let text = pod.exec("cat", &["/proc/net/netstat"], None).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let counter = |name: &str| -> u64 {
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {name} in /proc/net/netstat"));
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    (
        counter("TCPMigrateReqSuccess"),
        counter("TCPMigrateReqFailure"),
    )
}

/// Client ports of the outbound connections from `src` that `p` logged as complete.
fn outbound_ports(p: &Process, src: std::net::Ipv4Addr) -> Vec<u16> {
    let needle = format!("src.addr={src}:");
    p.logs()
        .iter()
        .filter(|l| l.contains("connection complete") && l.contains("direction=\"outbound\""))
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Polls `done` until it holds, failing after [`WAIT`] with `what`. Used where the kernel
/// offers no event to wait on (socket tables, counters).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
