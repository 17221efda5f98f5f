//! The hostile-input and fault suite of `spec/hardening.md`, against real ztun processes in
//! the namespace lab. Hostile clients run in the uncaptured pod `u` (node n2) and talk to pod
//! `c`'s HBONE listener (`c:15008`, same node) with certificates minted from the cluster CA.
//!
//! Scaled to a 2-core machine: floods are thousands of frames, not sustained rates; churn is
//! thousands of connections, not a soak. Assertions wait on events (responses, frames, log
//! lines, EOF) under generous deadlines, never on elapsed time.

mod client;
mod hbone;
mod identity;
mod limits;
mod load;
mod tls;

use std::net::SocketAddr;

use ztun::testkit::lab::Server;
use ztun::testkit::mesh::MeshFile;

use crate::support::{standard_lab, Cluster};

/// ztun's HBONE port.
pub const HBONE: u16 = 15008;

/// The standard cluster, an echo server on c:8080 and a peer recorder on c:9090 (which
/// tells whether ztun dialled anything).
pub struct Target {
    /// The cluster.
    pub cluster: Cluster,
    /// Echo server in pod c.
    pub echo: Server,
    /// Peer recorder in pod c.
    pub recorder: Server,
}

impl Target {
    /// Starts it, with `env` for every ztun.
    pub fn start(test: &str, env: &[(&str, &str)]) -> Target {
        Target::start_mesh(test, env, |m| m)
    }

    /// Starts it with the lab's mesh as `edit` changes it.
    pub fn start_mesh(
        test: &str,
        env: &[(&str, &str)],
        edit: impl FnOnce(MeshFile) -> MeshFile,
    ) -> Target {
        let lab = standard_lab(test);
        let mesh = edit(MeshFile::from_lab(&lab));
        let echo = lab.pod("c").spawn_echo_server(8080).expect("echo server");
        let recorder = lab.pod("c").spawn_peer_recorder(9090).expect("recorder");
        let cluster = Cluster::start_with(lab, mesh, env);
        Target {
            cluster,
            echo,
            recorder,
        }
    }

    /// A new client (pod u, `sa-u`, its own HBONE connection) gets a tunnel to the echo server
    /// and `msg` echoed back: ztun still serves after whatever the test did to it.
    pub fn serves_a_new_client(&self, msg: &'static [u8]) -> anyhow::Result<()> {
        let config = client::client_config(&self.cluster, "sa-u");
        let (hbone, echo) = (self.hbone(), self.authority(self.echo.port()));
        self.cluster.lab.pod("u").block_on(async move {
            let h2 = client::h2(hbone, config).await?;
            let (status, mut tx, mut rx) =
                client::send(&h2, client::connect_request(&echo)).await?;
            anyhow::ensure!(status == http::StatusCode::OK, "{status}");
            client::echo(&mut tx, &mut rx, msg).await
        })
    }

    /// c's HBONE address.
    pub fn hbone(&self) -> SocketAddr {
        SocketAddr::from((self.cluster.lab.pod("c").ip(), HBONE))
    }

    /// `c_ip:port` as an authority.
    pub fn authority(&self, port: u16) -> String {
        format!("{}:{port}", self.cluster.lab.pod("c").ip())
    }
}
