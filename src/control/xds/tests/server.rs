//! A scripted delta-ADS server over real TLS on loopback: each accepted stream is handed to the
//! test as a [`Conn`] whose requests it reads and whose responses it writes, so tests can send
//! anything (including invalid resources) and check every ACK/NACK.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::{client_config, initial, start, Running};
use crate::control::xds::proto::istio::{security as sec, workload as wl};
use crate::control::xds::proto::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Resource,
};
use crate::control::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use crate::controlplane::tls::{self, Ca};
use crate::state::{Reader, Snapshot};

/// Deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running scripted server.
pub struct TestAds {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA's root certificate file (for `XDS_ROOT_CA`).
    pub root: PathBuf,
    conns: mpsc::UnboundedReceiver<Conn>,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

/// One client stream.
pub struct Conn {
    /// The request metadata (headers) the client sent.
    pub metadata: MetadataMap,
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

impl TestAds {
    /// Starts a server whose certificate carries `sans`.
    pub async fn start(sans: &[&str]) -> TestAds {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::load_or_create(dir.path()).expect("CA");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let (chain, key) = ca.serving_cert(&sans).expect("serving cert");
        let config = tls::server_config(chain, key).expect("TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, conns) = mpsc::unbounded_channel();
        let incoming = tls::incoming(listener, config.into(), Duration::from_secs(3600));
        let service = AggregatedDiscoveryServiceServer::new(Scripted { conns: tx });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        TestAds {
            addr,
            root: dir.path().join(tls::ROOT_CERT),
            conns,
            _dir: dir,
            _server: server,
        }
    }

    /// The next client stream.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("no client connected in time")
            .expect("server gone")
    }
}

impl Conn {
    /// The next request; panics after [`WAIT`].
    pub async fn recv(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request in time")
            .expect("client closed the stream")
    }

    /// Sends a response.
    pub fn send(&self, response: DeltaDiscoveryResponse) {
        self.responses.send(Ok(response)).expect("stream open");
    }

    /// Fails the stream with `status`.
    pub fn fail(&self, status: Status) {
        let _ = self.responses.send(Err(status));
    }

    /// Ends the stream cleanly (the client sees end of stream).
    pub fn close(self) {}

    /// Sends a `type_url` response and returns the client's answer to it: `Ok(None)` for an
    /// ACK, `Ok(Some(message))` for a NACK, `Err` if the answer is to something else.
    pub async fn exchange(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: &[&str],
        nonce: &str,
    ) -> Result<Option<String>, String> {
        self.send(response(type_url, nonce, resources, removed));
        let reply = self.recv().await;
        if reply.type_url != type_url || reply.response_nonce != nonce {
            return Err(format!(
                "expected the answer to {type_url} nonce {nonce}, got {} nonce {}",
                reply.type_url, reply.response_nonce
            ));
        }
        Ok(reply.error_detail.map(|s| s.message))
    }
}

/// A scripted server with the real client connected to it (built from the environment as in
/// production) and past its initial requests. Keep the server: dropping it stops it.
pub async fn connected_client() -> (TestAds, Running, Conn) {
    let mut ads = TestAds::start(&["127.0.0.1"]).await;
    let client = start(client_config(&ads, &[]));
    let mut conn = ads.accept().await;
    initial(&mut conn).await;
    (ads, client, conn)
}

/// Polls the published state until `check` accepts it; after [`WAIT`], `check`'s last
/// complaint.
pub async fn state_where(
    reader: &Reader,
    check: impl Fn(&Snapshot) -> Result<(), String>,
) -> Result<Arc<Snapshot>, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let snap = reader.load_full();
        match check(&snap) {
            Ok(()) => return Ok(snap),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Fails with every mismatch between the corpus at `corpus` and ztun via `path`, if any.
/// `checked` says how much was checked ("12 cases").
pub fn report(corpus: &str, path: &str, checked: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} mismatch(es) between {corpus} and ztun via {path} ({checked} checked):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

struct Scripted {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (responses, resp_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let _ = self.conns.send(Conn {
            metadata,
            requests,
            responses,
        });
        Ok(Response::new(UnboundedReceiverStream::new(resp_rx)))
    }
}

/// A response of `type_url` with `resources` and `removed` names.
pub fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: String::new(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

/// A named resource carrying `payload` as its type's message.
pub fn resource(type_url: &str, name: &str, version: &str, payload: Vec<u8>) -> Resource {
    Resource {
        version: version.to_owned(),
        resource: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value: payload,
        }),
        name: name.to_owned(),
        aliases: Vec::new(),
        ttl: None,
    }
}

/// A minimal HBONE workload resource named by its uid.
pub fn workload(uid: &str, ip: [u8; 4], version: &str) -> Resource {
    let w = workload_proto(uid, ip);
    address_resource(uid, version, wl::address::Type::Workload(w))
}

/// The proto of a minimal HBONE workload.
pub fn workload_proto(uid: &str, ip: [u8; 4]) -> wl::Workload {
    wl::Workload {
        uid: uid.to_owned(),
        name: uid.to_owned(),
        namespace: "default".to_owned(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

/// An address resource.
pub fn address_resource(name: &str, version: &str, t: wl::address::Type) -> Resource {
    let bytes = wl::Address { r#type: Some(t) }.encode_to_vec();
    resource(ADDRESS_TYPE, name, version, bytes)
}

/// A service `default/<host>` at `vip` with port 80 → 8080.
pub fn service(host: &str, vip: [u8; 4], version: &str) -> Resource {
    let s = wl::Service {
        name: host.to_owned(),
        namespace: "default".to_owned(),
        hostname: host.to_owned(),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
            length: None,
        }],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    address_resource(
        &format!("default/{host}"),
        version,
        wl::address::Type::Service(s),
    )
}

/// A policy `default/<name>` allowing destination port `port` from `cidr`.
pub fn policy(name: &str, source: Vec<u8>, len: u32, version: &str) -> Resource {
    let p = sec::Authorization {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    source_ips: vec![sec::Address {
                        address: source,
                        length: len,
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    resource(
        AUTHORIZATION_TYPE,
        &format!("default/{name}"),
        version,
        p.encode_to_vec(),
    )
}
