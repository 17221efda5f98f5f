//! The namespace lab: a small Kubernetes-like cluster made of Linux network namespaces, in
//! which e2e tests run the real `ztun` binary per node (DESIGN.md §4).
//!
//! ```no_run
//! use ztun::testkit::lab::{Lab, PodSpec};
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder("outbound_works")
//!     .node("n1")
//!     .node("n2")
//!     .pod(PodSpec::new("a", "n1").service_account("sa-a").captured(true))
//!     .pod(PodSpec::new("b", "n2").captured(true))
//!     .build()?;
//! let server = lab.pod("b").spawn_echo_server(8080)?;
//! let ztun = lab.spawn_ztun("n1", &[])?;
//! ztun.wait_for_log("ready", std::time::Duration::from_secs(30))?;
//! lab.pod("a").bulk_echo((lab.pod("b").ip(), server.port()).into(), 1 << 20)?;
//! # Ok(()) }
//! ```
//!
//! Everything lives in namespaces named with a unique `ztl-<random>-` prefix, so parallel
//! tests never collide; the root namespace's interfaces and routes are never touched. The
//! lab removes all it created when dropped, and [`cleanup_stale`] removes what a killed test
//! run left behind.
//!
//! Needs root, `ip` (iproute2), `iptables-restore` (for captured pods; `ip6tables-restore`
//! too in labs with IPv6) and `tcpdump` (for captures). Imports nothing from ztun but the ZDS
//! protocol messages.

mod addressing;
mod capture;
mod cluster;
mod cni;
mod netns;
mod pod;
mod process;
mod redirect;
mod traffic;

pub use addressing::IpFamilies;
pub use capture::{Capture, Pcap, TcpSegment};
pub use cluster::{Lab, LabBuilder, Node, LAB_PREFIX, NODE_LINK};
pub use cni::{Ack, AckRecord, PodInfo, TestCni, ACK_DEADLINE};
pub use netns::{run_cmd, Netns, NetnsTask, NETNS_DIR};
pub use pod::{Pod, PodSpec};
pub use process::{Process, ZtunProcess};
pub use redirect::{rules as capture_rules, CaptureMode, IpFamily};
pub use traffic::{
    bulk_echo, bulk_echo_over, connect, echo_server, peer_seen_by, Server, Transfer,
    CONNECT_TIMEOUT, TRAFFIC_DEADLINE,
};

// Tests share a `&Lab` with closures running in pod threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Lab>();
};

/// Deletes every network namespace whose name starts with `prefix` (killing the processes
/// inside first) and every temp dir `$TMPDIR/<prefix>*`, returning the namespaces removed.
/// Meant for leftovers of killed test runs: it also removes the namespaces of labs that are
/// still running, so never call it while tests run.
pub fn cleanup_stale(prefix: &str) -> anyhow::Result<Vec<String>> {
    if prefix.is_empty() {
        anyhow::bail!("refusing to clean up with an empty prefix");
    }
    let mut removed = Vec::new();
    for name in netns::list()?.into_iter().filter(|n| n.starts_with(prefix)) {
        netns::delete(&name)?;
        removed.push(name);
    }
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(removed)
}

/// The machine's load averages (`/proc/loadavg`), recorded beside every benchmark figure.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
