//! Self-tests of the namespace lab itself, without ztun: topology and routing, the capture
//! rules, the test CNI (against a minimal ZDS client written here), process supervision,
//! packet capture and cleanup.

use std::io::{IoSliceMut, Read};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use ztun::control::zds::proto;
use ztun::testkit::lab::{self, CaptureMode, Lab, Pcap, PodSpec};

const MIB: u64 = 1024 * 1024;

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    lab::run_cmd("ip", &["netns", "list"], None)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn two_nodes_route_pods_and_capture_captured_pods() {
    let lab = Lab::builder("two_nodes_route_pods_and_capture_captured_pods")
        .node("n1")
        .node("n2")
        .pod(
            PodSpec::new("a", "n1")
                .service_account("sa-a")
                .captured(true),
        )
        .pod(PodSpec::new("b", "n1").captured(true))
        .pod(PodSpec::new("c", "n2").captured(true))
        .pod(PodSpec::new("u", "n2"))
        .build()
        .unwrap();
    let (a, c, u) = (lab.pod("a"), lab.pod("c"), lab.pod("u"));
    assert_eq!(a.ip().to_string(), "10.0.1.11");
    assert_eq!(lab.pod("b").ip().to_string(), "10.0.1.12");
    assert_eq!(c.ip().to_string(), "10.0.2.11");
    assert_eq!(lab.node("n2").link_ip().to_string(), "172.30.0.2");
    assert_eq!(a.spiffe_id(), "spiffe://cluster.local/ns/default/sa/sa-a");
    let sysctl = |netns: &lab::Netns, key: &str| {
        let out = netns.exec("cat", &[&format!("/proc/sys/net/ipv4/{key}")], None);
        out.unwrap().trim().to_string()
    };
    assert_eq!(sysctl(lab.node("n1"), "ip_forward"), "1");
    assert_eq!(sysctl(lab.node("n2"), "conf/eth0/rp_filter"), "0");

    let echo = u.spawn_echo_server(8080).unwrap();
    // A pod reaches itself by its pod IP.
    assert_eq!(u.bulk_echo(addr(u.ip(), 8080), MIB).unwrap().bytes, MIB);
    // A node reaches a pod on another node.
    assert_eq!(
        lab.node("n1")
            .bulk_echo(addr(u.ip(), 8080), 4 * MIB)
            .unwrap()
            .bytes,
        4 * MIB
    );
    assert_eq!(echo.peers().len(), 2);

    // Without NAT on the way, the server sees the node's link address.
    let recorder = u.spawn_peer_recorder(0).unwrap();
    let seen = lab
        .node("n1")
        .peer_seen_by(addr(u.ip(), recorder.port()))
        .unwrap();
    assert_eq!(seen.ip(), std::net::IpAddr::V4(lab.node("n1").link_ip()));
    assert_eq!(recorder.peers(), vec![seen]);

    // A captured pod's outbound TCP goes to 15001, where nothing listens yet.
    let refused = a.try_connect(addr(u.ip(), 8080)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    // Inbound TCP to a captured pod goes to 15006 (the SYN did cross both nodes).
    let _c_server = c.spawn_echo_server(8080).unwrap();
    let refused = lab.node("n1").try_connect(addr(c.ip(), 8080)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    // A captured pod calling its own IP is not captured.
    let _a_server = a.spawn_echo_server(9090).unwrap();
    assert_eq!(a.bulk_echo(addr(a.ip(), 9090), MIB).unwrap().bytes, MIB);

    let rules = a.exec("iptables-save", &[], None).unwrap();
    assert!(
        rules.contains("--to-ports 15001") && rules.contains("--to-ports 15006"),
        "{rules}"
    );
    let policy = a.ip_command(&["rule", "list"]).unwrap();
    assert!(policy.contains("lookup 100"), "{policy}");
    assert!(u
        .exec("iptables-save", &[], None)
        .unwrap()
        .lines()
        .all(|l| !l.contains("ISTIO")));
}

#[test]
fn tproxy_capture_diverts_inbound_without_nat() {
    let lab = Lab::builder("tproxy_capture_diverts_inbound_without_nat")
        .node("n1")
        .pod(
            PodSpec::new("t", "n1")
                .captured(true)
                .capture_mode(CaptureMode::Tproxy),
        )
        .pod(PodSpec::new("u", "n1"))
        .build()
        .unwrap();
    let (t, u) = (lab.pod("t"), lab.pod("u"));
    assert_eq!(t.capture_mode(), CaptureMode::Tproxy);
    let _server = t.spawn_echo_server(8080).unwrap();
    // TPROXY hands the SYN to port 15006; with no listener there the SYN is dropped, where
    // an uncaptured pod would have been served by the echo server.
    let err = u
        .block_on(lab::connect(addr(t.ip(), 8080), Duration::from_secs(2)))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let rules = t.exec("iptables-save", &[], None).unwrap();
    assert!(rules.contains("TPROXY --on-port 15006"), "{rules}");
    // Outbound capture is the same as in REDIRECT mode.
    let _u_server = u.spawn_echo_server(8080).unwrap();
    let err = t.try_connect(addr(u.ip(), 8080)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn three_nodes_share_a_bridge() {
    let lab = Lab::builder("three_nodes_share_a_bridge")
        .node("n1")
        .node("n2")
        .node("n3")
        .pod(PodSpec::new("p", "n3"))
        .pod(PodSpec::new("q", "n1"))
        .build()
        .unwrap();
    let p = lab.pod("p");
    assert_eq!(p.ip().to_string(), "10.0.3.11");
    let _server = p.spawn_echo_server(7000).unwrap();
    assert_eq!(
        lab.pod("q")
            .bulk_echo(addr(p.ip(), 7000), MIB)
            .unwrap()
            .bytes,
        MIB
    );
    assert_eq!(
        lab.node("n2")
            .bulk_echo(addr(p.ip(), 7000), MIB)
            .unwrap()
            .bytes,
        MIB
    );
}

/// The client half of ZDS, just enough to drive the test CNI.
struct ZdsClient {
    socket: Socket,
}

impl ZdsClient {
    fn connect(path: &Path) -> ZdsClient {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        socket.connect(&SockAddr::unix(path).unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let hello = proto::ZdsHello {
            version: proto::Version::V1 as i32,
        };
        socket.send(&hello.encode_to_vec()).unwrap();
        ZdsClient { socket }
    }

    /// Receives one request and the fds that came with it.
    fn recv(&self) -> (proto::WorkloadRequest, Vec<RawFd>) {
        let mut buf = [0u8; 1024];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .unwrap();
            let fds: Vec<RawFd> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => Some(fds),
                    _ => None,
                })
                .flatten()
                .collect();
            (msg.bytes, fds)
        };
        assert!(len > 0, "CNI closed the connection");
        (proto::WorkloadRequest::decode(&buf[..len]).unwrap(), fds)
    }

    fn ack(&self, error: &str) {
        let response = proto::WorkloadResponse {
            payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
                error: error.to_string(),
            })),
        };
        self.socket.send(&response.encode_to_vec()).unwrap();
    }

    /// Receives an `add`, checks its single fd is the netns at `netns_path`, acks it and
    /// returns the uid.
    fn expect_add(&self, netns_path: &Path) -> String {
        let (request, fds) = self.recv();
        let Some(proto::workload_request::Payload::Add(add)) = request.payload else {
            panic!("expected add, got {request:?}");
        };
        assert_eq!(fds.len(), 1, "an add carries exactly one fd");
        // An fd opened from /var/run/netns/<name> reads back as that path in /proc/self/fd
        // (not `net:[..]`), so check the filesystem type and the namespace inode instead.
        let fd_path = format!("/proc/self/fd/{}", fds[0]);
        let fs = nix::sys::statfs::statfs(fd_path.as_str()).unwrap();
        assert_eq!(
            fs.filesystem_type(),
            nix::sys::statfs::NSFS_MAGIC,
            "fd is not a namespace"
        );
        let fd_ino = std::fs::metadata(&fd_path).unwrap().ino();
        assert_eq!(
            fd_ino,
            std::fs::metadata(netns_path).unwrap().ino(),
            "fd is another netns"
        );
        nix::unistd::close(fds[0]).unwrap();
        assert!(add.workload_info.is_some());
        self.ack("");
        add.uid
    }

    fn expect_snapshot_sent(&self) {
        let (request, fds) = self.recv();
        assert!(fds.is_empty());
        assert!(
            matches!(
                request.payload,
                Some(proto::workload_request::Payload::SnapshotSent(_))
            ),
            "expected snapshot_sent, got {request:?}"
        );
        self.ack("");
    }
}

#[test]
fn test_cni_replays_snapshot_and_forwards_adds_and_dels() {
    let lab = Lab::builder("test_cni_replays_snapshot_and_forwards_adds_and_dels")
        .node("n1")
        .pod(
            PodSpec::new("a", "n1")
                .namespace("ns1")
                .service_account("sa-a")
                .captured(true),
        )
        .pod(PodSpec::new("b", "n1").captured(true))
        .pod(PodSpec::new("late", "n1").captured(true).enrolled(false))
        .pod(PodSpec::new("plain", "n1"))
        .build()
        .unwrap();
    let cni = lab.cni("n1");
    let (a, b, late) = (lab.pod("a"), lab.pod("b"), lab.pod("late"));
    assert_eq!(cni.enrolled(), vec![a.info(), b.info()]);
    assert!(!cni.is_connected());

    let client = ZdsClient::connect(cni.socket_path());
    assert_eq!(client.expect_add(a.netns().path()), a.uid());
    assert_eq!(client.expect_add(b.netns().path()), b.uid());
    client.expect_snapshot_sent();
    cni.wait_connected(Duration::from_secs(10)).unwrap();
    assert_eq!(cni.connections(), 1);

    std::thread::scope(|scope| {
        let served = scope.spawn(|| {
            let uid = client.expect_add(late.netns().path());
            let (request, fds) = client.recv();
            assert!(fds.is_empty());
            let Some(proto::workload_request::Payload::Del(del)) = request.payload else {
                panic!("expected del, got {request:?}");
            };
            client.ack("not today");
            let (raw, _) = client.recv();
            client.ack("malformed");
            (uid, del.uid, raw)
        });
        assert!(cni.add_pod(&late.info()).unwrap().is_ok());
        assert_eq!(cni.del_pod(a.uid()).unwrap().error, "not today");
        let snapshot_sent = [0x1a, 0x00];
        assert_eq!(
            cni.send_raw(&snapshot_sent, &[]).unwrap().error,
            "malformed"
        );
        let (added, deleted, raw) = served.join().unwrap();
        assert_eq!((added.as_str(), deleted.as_str()), (late.uid(), a.uid()));
        assert!(matches!(
            raw.payload,
            Some(proto::workload_request::Payload::SnapshotSent(_))
        ));
    });
    let requests: Vec<String> = cni.acks().into_iter().map(|r| r.request).collect();
    assert_eq!(
        requests,
        [
            format!("add {}", a.uid()),
            format!("add {}", b.uid()),
            "snapshot_sent".to_string(),
            format!("add {}", late.uid()),
            format!("del {}", a.uid()),
            "raw".to_string(),
        ]
    );

    // After a disconnect the client sees EOF, and a reconnect gets the current snapshot.
    cni.disconnect();
    let mut rest = [0u8; 16];
    assert_eq!((&client.socket).read(&mut rest).unwrap(), 0);
    let again = ZdsClient::connect(cni.socket_path());
    assert_eq!(again.expect_add(b.netns().path()), b.uid());
    assert_eq!(again.expect_add(late.netns().path()), late.uid());
    again.expect_snapshot_sent();
    cni.wait_connections(2, Duration::from_secs(10)).unwrap();
    assert!(cni
        .acks()
        .iter()
        .rev()
        .take(3)
        .all(|r| r.connection == 2 && r.ack.is_ok()));

    // A client that goes away is noticed without any request being sent.
    drop(again);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cni.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "dead connection not noticed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn processes_are_supervised_and_logs_awaitable() {
    let lab = Lab::builder("processes_are_supervised_and_logs_awaitable")
        .node("n1")
        .build()
        .unwrap();
    let node = lab.node("n1");
    let script =
        "echo starting; echo to-stderr >&2; sleep 0.3; echo ip=$(ip -4 -o addr show eth0); exit 3";
    let process = lab
        .spawn_in(
            node.netns(),
            "sh",
            Path::new("/bin/sh"),
            &["-c", script],
            &[],
            node.dir(),
        )
        .unwrap();
    let cursor = process.log_cursor();
    let line = process
        .wait_for_log_after(cursor, "ip=", Duration::from_secs(10))
        .unwrap();
    assert!(
        line.contains("172.30.0.1/24"),
        "runs in the node netns: {line}"
    );
    assert_eq!(
        process.wait_for_log("to-stderr", Duration::ZERO).unwrap(),
        "to-stderr"
    );
    assert_eq!(
        process.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(3)
    );
    let err = process
        .wait_for_log("never printed", Duration::from_secs(5))
        .unwrap_err();
    assert!(format!("{err}").contains("closed its output"), "{err}");

    // The ztun launcher's defaults, with overrides, in the node's netns and dir.
    let show = "echo uds=$INPOD_UDS node=$NODE_NAME xds=[$XDS_ADDRESS] log=$RUST_LOG extra=$EXTRA pwd=$(pwd)";
    let fake = lab
        .spawn_ztun_with(
            "n1",
            Path::new("/bin/sh"),
            &["-c", show],
            &[("EXTRA", "1"), ("RUST_LOG", "trace")],
        )
        .unwrap();
    let line = fake.wait_for_log("uds=", Duration::from_secs(10)).unwrap();
    let expected = format!(
        "uds={} node=n1 xds=[] log=trace extra=1 pwd={}",
        node.cni().socket_path().display(),
        node.dir().display()
    );
    assert_eq!(line, expected);

    let sleeper = lab
        .spawn_in(
            node.netns(),
            "sleep",
            Path::new("/bin/sleep"),
            &["600"],
            &[],
            node.dir(),
        )
        .unwrap();
    sleeper.sigterm().unwrap();
    assert!(!sleeper
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn capture_records_traffic_on_the_node_link() {
    let lab = Lab::builder("capture_records_traffic_on_the_node_link")
        .node("n1")
        .node("n2")
        .pod(PodSpec::new("s", "n2"))
        .build()
        .unwrap();
    let s = lab.pod("s");
    let server = s.spawn_peer_recorder(8443).unwrap();
    let capture = lab.capture("n1").unwrap();
    lab.node("n1")
        .peer_seen_by(addr(s.ip(), server.port()))
        .unwrap();
    let pcap: Pcap = capture.stop().unwrap();
    assert!(pcap.saw_tcp_port(8443).unwrap());
    assert!(!pcap.saw_tcp_port(15008).unwrap());
    // The recorder's answer crossed the link in clear text.
    assert!(pcap.contains(b"172.30.0.1:"));
}

/// The connection-rate benchmark's destination pods keep no TIME_WAIT sockets, so a tunnel
/// whose connections to the app close first does not carry them from one run to the next.
#[test]
fn bench_destination_pods_keep_no_time_wait() {
    let lab = Lab::builder("bench_destination_pods_keep_no_time_wait")
        .node("n1")
        .pod(PodSpec::new("x", "n1"))
        .pod(PodSpec::new("c", "n1"))
        .build()
        .unwrap();
    ztun::testkit::bench::tune_for_short_connections(&lab, &["x"], &["c"]).unwrap();
    let c = lab.pod("c");
    // The recorder in c answers and closes first, as a tunnel's connection to its app does.
    let server = c.spawn_peer_recorder(7100).unwrap();
    const CONNECTIONS: usize = 20;
    for _ in 0..CONNECTIONS {
        lab.pod("x")
            .peer_seen_by(addr(c.ip(), server.port()))
            .unwrap();
    }
    let in_state = |states: &[&str]| {
        let mut args = vec!["-Htan"];
        for s in states {
            args.extend(["state", s]);
        }
        let out = c.exec("ss", &args, None).unwrap();
        out.lines().filter(|l| !l.trim().is_empty()).count()
    };
    // Every connection's close completes (x's FIN reaches c) before TIME_WAIT is counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while in_state(&["fin-wait-1", "fin-wait-2", "closing"]) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "c's connections never finished closing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.peers().len(), CONNECTIONS);
    assert_eq!(in_state(&["time-wait"]), 0, "c kept TIME_WAIT sockets");
}

#[test]
fn drop_removes_everything_even_on_panic() {
    let mut prefix = String::new();
    let mut sleeper_pid = 0;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder("drop_removes_everything_even_on_panic")
            .node("n1")
            .node("n2")
            .node("n3")
            .pod(PodSpec::new("x", "n2").captured(true))
            .build()
            .unwrap();
        prefix = lab.prefix().to_string();
        assert_eq!(
            lab_namespaces(&prefix).len(),
            5,
            "3 nodes, a switch and a pod"
        );
        let pod = lab.pod("x");
        let sleeper = lab
            .spawn_in(
                pod.netns(),
                "sleep",
                Path::new("/bin/sleep"),
                &["600"],
                &[],
                lab.dir(),
            )
            .unwrap();
        sleeper_pid = sleeper.pid();
        // Leaked handles are still killed by the lab.
        std::mem::forget(sleeper);
        panic!("test failure inside a lab");
    }));
    assert!(outcome.is_err());
    assert!(prefix.starts_with("ztl-"));
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
    assert!(!std::env::temp_dir()
        .join(prefix.trim_end_matches('-'))
        .exists());
    let status = std::fs::read_to_string(format!("/proc/{sleeper_pid}/status")).unwrap_or_default();
    assert!(
        !status.contains("sleep"),
        "sleep {sleeper_pid} survived the lab"
    );
}

#[test]
fn cleanup_stale_removes_leftovers_by_prefix() {
    let name = format!("ztl-stale{}-n1", std::process::id());
    lab::Netns::create(&name).unwrap();
    let removed = lab::cleanup_stale(&format!("ztl-stale{}-", std::process::id())).unwrap();
    assert_eq!(removed, vec![name.clone()]);
    assert!(lab_namespaces(&name).is_empty());
}
