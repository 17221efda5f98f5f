//! The control plane: arguments, resource generations and diffs, per-stream subscriptions,
//! and real gRPC clients (ztun's own and a raw tonic one) over TLS against the real server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::ads::Subscription;
use super::*;
use crate::config::{AuthToken, RootCert};
use crate::control::grpc::{self, ChannelConfig};
use crate::control::local;
use crate::control::xds::proto::{
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use crate::control::xds::{self, ResourceType, ADDRESS_TYPE, AUTHORIZATION_TYPE};
use crate::state;

const WAIT: Duration = Duration::from_secs(20);
/// The token of node `n1` in the control plane's tokens file.
const TOKEN: &str = "t0k3n-n1";

/// A mesh file with workloads `w<i>` for `ids`, one service and the given policies.
fn mesh_yaml(ids: &[u8], port: u16, policies: &[&str]) -> String {
    let mut y = String::from("workloads:\n");
    for i in ids {
        y.push_str(&format!(
            "- {{uid: w{i}, name: w{i}, namespace: default, workloadIps: [\"10.0.0.{i}\"], protocol: HBONE, services: {{default/svc.example: {{80: {port}}}}}}}\n"
        ));
    }
    y.push_str("services:\n- {name: svc, namespace: default, hostname: svc.example, vips: [\"/10.96.0.1\"], ports: {80: 8080}}\n");
    y.push_str("policies:\n");
    for p in policies {
        y.push_str(&format!(
            "- {{name: {p}, namespace: default, scope: Namespace, action: Allow, rules: [[[{{destinationPorts: [80]}}]]]}}\n"
        ));
    }
    if policies.is_empty() {
        y.push_str("[]\n");
    }
    y.replace("policies:\n[]", "policies: []")
}

fn mesh(ids: &[u8], port: u16, policies: &[&str]) -> MeshResources {
    MeshResources::new(&local::parse(&mesh_yaml(ids, port, policies)).unwrap())
}

fn names(v: &[std::sync::Arc<str>]) -> Vec<&str> {
    v.iter().map(|s| &**s).collect()
}

#[test]
fn args_parse_with_defaults_and_repeated_sans() {
    let a = Args::parse(
        [
            "--config",
            "m.yaml",
            "--ca-dir=/ca",
            "--san",
            "cp.example",
            "--san=10.0.0.5",
        ]
        .map(String::from),
    )
    .unwrap();
    assert_eq!(a.config, PathBuf::from("m.yaml"));
    assert_eq!(a.ca_dir, PathBuf::from("/ca"));
    assert_eq!(a.listen, DEFAULT_LISTEN);
    assert_eq!(a.sans, ["cp.example", "10.0.0.5"]);
    assert!(
        !a.dangerous_unauthenticated_xds,
        "xDS authenticates by default"
    );
    assert_eq!(
        a.serving_sans(),
        [
            "istiod.istio-system.svc",
            "localhost",
            "cp.example",
            "10.0.0.5"
        ]
    );
    let a = Args::parse(
        [
            "--config",
            "m",
            "--ca-dir",
            "c",
            "--listen",
            "172.30.0.1:15012",
        ]
        .map(String::from),
    )
    .unwrap();
    assert_eq!(
        a.serving_sans(),
        ["istiod.istio-system.svc", "localhost", "172.30.0.1"]
    );
    let a = Args::parse(
        [
            "--config",
            "m",
            "--ca-dir",
            "c",
            "--dangerous-unauthenticated-xds",
        ]
        .map(String::from),
    )
    .unwrap();
    assert!(a.dangerous_unauthenticated_xds);
    for bad in [
        vec!["--ca-dir", "c"],
        vec!["--config", "m"],
        vec!["--config", "m", "--ca-dir", "c", "--listen", "nope"],
        vec!["--config", "m", "--ca-dir", "c", "--bogus"],
        vec!["--config"],
        vec![
            "--config",
            "m",
            "--ca-dir",
            "c",
            "--dangerous-unauthenticated-xds=no",
        ],
    ] {
        assert!(
            Args::parse(bad.iter().map(|s| s.to_string())).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn generations_record_exactly_what_changed() {
    let one = mesh(&[1, 2, 3], 8080, &["p1"]);
    assert_eq!(one.generation(), 1);
    assert_eq!(one.len(ResourceType::Address), 4);
    assert!(one.delta(ResourceType::Address).is_none());
    // Versions are content hashes: the same file gives the same versions (even after a
    // restart); names follow istiod.
    let again = mesh(&[1, 2, 3], 8080, &["p1"]);
    for kind in ResourceType::ALL {
        assert_eq!(one.resources(kind), again.resources(kind));
    }
    assert!(one.get(ResourceType::Address, "w1").is_some());
    assert!(one
        .get(ResourceType::Address, "default/svc.example")
        .is_some());
    assert!(one.get(ResourceType::Authorization, "default/p1").is_some());
    assert!(one
        .next(&local::parse(&mesh_yaml(&[1, 2, 3], 8080, &["p1"])).unwrap())
        .is_none());

    // w2 changes (port), w3 goes, w4 comes, p1 goes, p2 comes.
    let two = one
        .next(&local::parse(&mesh_yaml(&[1, 2, 4], 8080, &["p2"])).unwrap())
        .unwrap();
    assert_eq!(two.generation(), 2);
    let d = two.delta(ResourceType::Address).unwrap();
    assert_eq!(names(&d.updated), ["w4"]);
    assert_eq!(names(&d.removed), ["w3"]);
    let d = two.delta(ResourceType::Authorization).unwrap();
    assert_eq!(
        (names(&d.updated), names(&d.removed)),
        (vec!["default/p2"], vec!["default/p1"])
    );
    let three = two
        .next(&local::parse(&mesh_yaml(&[1, 2, 4], 9090, &["p2"])).unwrap())
        .unwrap();
    let d = three.delta(ResourceType::Address).unwrap();
    assert_eq!(
        names(&d.updated),
        ["w1", "w2", "w4"],
        "the port map is in each workload"
    );
    assert!(d.removed.is_empty());
    assert!(three.delta(ResourceType::Authorization).unwrap().is_empty());

    // Aliases: a workload's network/IP and a service's VIP resolve to their names.
    assert_eq!(
        three.resolve(ResourceType::Address, "/10.0.0.4").as_deref(),
        Some("w4")
    );
    assert_eq!(
        three
            .resolve(ResourceType::Address, "/10.96.0.1")
            .as_deref(),
        Some("default/svc.example")
    );
    assert_eq!(three.resolve(ResourceType::Address, "/10.0.0.3"), None);
}

fn request(
    subscribe: &[&str],
    unsubscribe: &[&str],
    initial: &[(&str, &str)],
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        initial_resource_versions: initial
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The resources of a push, decoded.
fn sent(push: &ads::Push) -> Vec<Resource> {
    push.resources
        .iter()
        .map(|r| Resource::decode(r.as_ref()).expect("an encoded Resource"))
        .collect()
}

fn sent_names(push: &ads::Push) -> Vec<String> {
    let mut n: Vec<String> = sent(push).into_iter().map(|r| r.name).collect();
    n.sort();
    n
}

/// A response framed by hand from shared encodings decodes to the message prost would have
/// sent (resources in order, an added alias, removals, scalar fields), whether its resources
/// fit a chunk or one is larger than a chunk.
#[test]
fn hand_framed_responses_decode_to_the_same_message() {
    let resource = |name: &str, size: usize| Resource {
        name: name.into(),
        version: format!("v-{name}"),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value: vec![7; size],
        }),
        aliases: Vec::new(),
        ttl: None,
    };
    let mut expected = DeltaDiscoveryResponse {
        system_version_info: "3".into(),
        type_url: ADDRESS_TYPE.into(),
        nonce: "12".into(),
        removed_resources: vec!["gone".into(), "w9".into()],
        resources: (0..2000).map(|i| resource(&format!("w{i}"), 300)).collect(),
    };
    expected
        .resources
        .insert(5, resource("big", 3 * wire::CHUNK));
    let mut encoded: Vec<bytes::Bytes> = expected
        .resources
        .iter()
        .map(|r| r.encode_to_vec().into())
        .collect();
    encoded[1] = wire::with_alias(&encoded[1], "/10.0.0.1");
    expected.resources[1].aliases.push("/10.0.0.1".into());
    let response = wire::Response::new(
        "3",
        ADDRESS_TYPE,
        "12",
        &expected.removed_resources,
        encoded,
    )
    .unwrap();
    assert_eq!(response.decode(), expected);
    // Nothing but the response's own fields.
    let empty = wire::Response::new("1", AUTHORIZATION_TYPE, "1", &[], Vec::new()).unwrap();
    assert_eq!(
        empty.decode(),
        DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            type_url: AUTHORIZATION_TYPE.into(),
            nonce: "1".into(),
            ..Default::default()
        }
    );
}

#[test]
fn a_reconnecting_client_receives_only_the_difference() {
    let m = Arc::new(mesh(&[1, 2, 3], 8080, &[]));
    let v = |n: &str| m.get(ResourceType::Address, n).unwrap().version.to_string();
    // The client has w1 current, w2 outdated, and w9 which no longer exists.
    let initial = [
        ("w1", v("w1")),
        ("w2", "old".to_string()),
        ("w9", "x".to_string()),
    ];
    let initial: Vec<(&str, &str)> = initial.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let mut sub = Subscription::open(&request(&[], &[], &initial));
    assert!(sub.wildcard);
    let push = sub.push(ResourceType::Address, &m, None, &[]);
    assert_eq!(sent_names(&push), ["default/svc.example", "w2", "w3"]);
    assert_eq!(push.removed, ["w9"]);
    // In sync: what the client has is the generation itself, not a map per client.
    assert!(sub.sent.is_empty() && sub.in_sync.is_some());
    // Nothing more to send until the mesh changes.
    assert_eq!(
        sub.push(ResourceType::Address, &m, None, &[]),
        ads::Push::default()
    );

    // The incremental path (the mesh's own delta) agrees with a full scan.
    let next = Arc::new(
        m.next(&local::parse(&mesh_yaml(&[1, 3, 4], 9090, &[])).unwrap())
            .unwrap(),
    );
    let mut full = Subscription::open(&request(&[], &[], &[]));
    full.push(ResourceType::Address, &m, None, &[]);
    let incremental_push = sub.push(
        ResourceType::Address,
        &next,
        next.delta(ResourceType::Address),
        &[],
    );
    let full_push = full.push(ResourceType::Address, &next, None, &[]);
    assert_eq!(sent_names(&incremental_push), sent_names(&full_push));
    assert_eq!(incremental_push.removed, full_push.removed);
    assert_eq!(sent_names(&full_push), ["w1", "w3", "w4"]);
    assert_eq!(full_push.removed, ["w2"]);
}

/// A wildcard subscription that is cancelled keeps track of what the client has: a
/// resource it received under the wildcard and that is later removed is reported removed.
#[test]
fn a_cancelled_wildcard_still_reports_removals_of_what_the_client_has() {
    let m = Arc::new(mesh(&[1, 2], 8080, &[]));
    let mut sub = Subscription::open(&request(&[], &[], &[]));
    let push = sub.push(ResourceType::Address, &m, None, &[]);
    assert_eq!(sent_names(&push), ["default/svc.example", "w1", "w2"]);
    sub.change(&request(&[], &["*"], &[]));
    assert!(!sub.wildcard);
    let push = push_change(&mut sub, &m, &[1]);
    assert!(push.resources.is_empty());
    assert_eq!(push.removed, ["w2"]);
}

#[test]
fn on_demand_subscriptions_resolve_keys_and_report_missing_ones() {
    let m = Arc::new(mesh(&[1, 2], 8080, &[]));
    // "Subscribe to nothing".
    let mut sub = Subscription::open(&request(&["*"], &["*"], &[]));
    assert!(!sub.wildcard);
    assert_eq!(
        sub.push(ResourceType::Address, &m, None, &[]),
        ads::Push::default()
    );
    // By alias: the resource under its own name, with the key as alias.
    let added = sub.change(&request(&["/10.0.0.2"], &[], &[]));
    let push = sub.push(ResourceType::Address, &m, None, &added);
    assert_eq!(sent_names(&push), ["w2"]);
    assert_eq!(sent(&push)[0].aliases, ["/10.0.0.2"]);
    // By name, and a key that does not exist (answered by a removal).
    let added = sub.change(&request(&["w1", "/10.0.0.77"], &[], &[]));
    let push = sub.push(ResourceType::Address, &m, None, &added);
    assert_eq!(sent_names(&push), ["w1"]);
    assert_eq!(push.removed, ["/10.0.0.77"]);
    // When a subscribed resource disappears, the client is told.
    let push = push_change(&mut sub, &m, &[1]);
    assert!(push.resources.is_empty(), "w1 unchanged");
    assert_eq!(push.removed, ["/10.0.0.2", "w2"]);
}

/// A started control plane on loopback, serving `mesh` from a fresh directory.
struct Running {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ads: Ads,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

/// A temporary directory holding `yaml` as its mesh file.
fn mesh_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    dir
}

impl Running {
    async fn start(yaml: &str) -> Running {
        Running::start_in(mesh_dir(yaml), None).await
    }

    /// Starts on the mesh in `dir`, with node `n1`'s token, pinging clients every
    /// `keepalive.0` and closing one silent for both together (else the defaults).
    async fn start_in(dir: tempfile::TempDir, keepalive: Option<(Duration, Duration)>) -> Running {
        std::fs::write(dir.path().join("tokens"), format!("{TOKEN} n1\n")).unwrap();
        Running::start_with(dir, Some("tokens"), false, keepalive).await
    }

    /// Starts with the tokens file `tokens` (relative to the directory) or none, and
    /// optionally without xDS authentication.
    async fn start_with(
        dir: tempfile::TempDir,
        tokens: Option<&str>,
        dangerous_unauthenticated_xds: bool,
        keepalive: Option<(Duration, Duration)>,
    ) -> Running {
        let args = Args {
            config: dir.path().join("mesh.yaml"),
            listen: "127.0.0.1:0".parse().unwrap(),
            ca_dir: dir.path().join("ca"),
            sans: vec![],
            tokens: tokens.map(|t| dir.path().join(t)),
            dangerous_unauthenticated_xds,
            max_cert_ttl: super::ca::CaServerConfig::DEFAULT_MAX_TTL,
        };
        let mut cp = ControlPlane::start(&args)
            .await
            .expect("control plane starts");
        if let Some((interval, timeout)) = keepalive {
            cp = cp.with_keepalive(interval, timeout);
        }
        let addr = cp.local_addr().unwrap();
        let ads = cp.ads().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(cp.serve(async {
            let _ = stopped.await;
        }));
        Running {
            dir,
            addr,
            stop: Some(stop),
            ads,
            task,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("ca").join(tls::ROOT_CERT)
    }

    fn write_mesh(&self, yaml: &str) {
        // Write + rename, as editors and the test kit do.
        let tmp = self.dir.path().join("mesh.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("mesh.yaml")).unwrap();
    }

    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.dir
    }
}

/// A raw delta-ADS stream over TLS.
struct Raw {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Raw {
    /// Opens a stream with the known token.
    async fn connect(
        addr: std::net::SocketAddr,
        root: &Path,
        first: Vec<DeltaDiscoveryRequest>,
    ) -> Raw {
        Raw::open(addr, root, Some(TOKEN), first)
            .await
            .expect("stream opens")
    }

    /// Opens a stream sending `authorization: Bearer <token>` if `token`.
    async fn open(
        addr: std::net::SocketAddr,
        root: &Path,
        token: Option<&str>,
        first: Vec<DeltaDiscoveryRequest>,
    ) -> Result<Raw, tonic::Status> {
        let channel = grpc::channel(&ChannelConfig {
            address: format!("https://localhost:{}", addr.port()),
            roots: RootCert::File(root.to_owned()),
            alt_hostname: None,
            connect_timeout: WAIT,
            request_timeout: WAIT,
        })
        .unwrap();
        let (tx, rx) = mpsc::channel(16);
        for r in first {
            tx.send(r).await.unwrap();
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let bearer = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
        }
        let rx = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(Raw { tx, rx })
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(ack).await.unwrap();
    }
}

fn wildcard(type_url: &str, initial: BTreeMap<String, String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        initial_resource_versions: initial,
        ..Default::default()
    }
}

fn xds_client(addr: std::net::SocketAddr, root: &Path) -> xds::ClientConfig {
    xds::ClientConfig {
        address: format!("https://127.0.0.1:{}", addr.port())
            .parse()
            .unwrap(),
        root_cert: RootCert::File(root.to_owned()),
        alt_hostname: None,
        auth_token: AuthToken::Static(TOKEN.into()),
        cluster_id: "Kubernetes".into(),
        headers: Default::default(),
        node_id: "ztunnel~10.0.0.1~z.ns~ns.svc.cluster.local".into(),
        node_metadata: Default::default(),
        node_metadata_json: Default::default(),
        on_demand: false,
        demand_timeout: xds::DEFAULT_DEMAND_TIMEOUT,
    }
}

#[tokio::test]
async fn serves_ztuns_client_and_pushes_file_changes() {
    let cp = Running::start(&mesh_yaml(&[1, 2], 8080, &["p1"])).await;
    assert!(cp.root().exists(), "CA created on first start");
    let (writer, mut reader) = state::new();
    let client =
        xds::Client::new(xds_client(cp.addr, &cp.root()), writer, Default::default()).unwrap();
    let mut synced = client.synced();
    let task = tokio::spawn(client.run());
    tokio::time::timeout(WAIT, synced.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();
    let snap = reader.load_full();
    assert_eq!(snap.workloads().count(), 2);
    assert_eq!(snap.endpoints("default/svc.example").len(), 2);
    assert!(snap.policy("default/p1").is_some());

    // Edit the file: w3 added, p1 replaced by p2.
    cp.write_mesh(&mesh_yaml(&[1, 2, 3], 8080, &["p2"]));
    tokio::time::timeout(WAIT, async {
        loop {
            let s = reader.load_full();
            if s.workload_by_uid("w3").is_some()
                && s.policy("default/p2").is_some()
                && s.policy("default/p1").is_none()
            {
                break;
            }
            reader.changed().await;
        }
    })
    .await
    .expect("change pushed");

    // A malformed file keeps the last good state; the next good one applies.
    cp.write_mesh("workloads: [{{{");
    tokio::time::sleep(store::POLL_INTERVAL * 3).await;
    assert!(reader.load().workload_by_uid("w3").is_some());
    cp.write_mesh(&mesh_yaml(&[1], 8080, &["p2"]));
    tokio::time::timeout(WAIT, async {
        while reader.load().workload_by_uid("w2").is_some() {
            reader.changed().await;
        }
    })
    .await
    .expect("removal pushed");
    assert_eq!(reader.load().workloads().count(), 1);
    task.abort();
    cp.stop().await;
}

#[tokio::test]
async fn pushes_only_changes_and_honours_initial_versions_across_restarts() {
    let cp = Running::start(&mesh_yaml(&[1, 2, 3], 8080, &["p1"])).await;
    let mut raw = Raw::connect(
        cp.addr,
        &cp.root(),
        vec![
            wildcard(ADDRESS_TYPE, BTreeMap::new()),
            wildcard(AUTHORIZATION_TYPE, BTreeMap::new()),
        ],
    )
    .await;
    let first = raw.recv().await;
    assert_eq!(first.type_url, ADDRESS_TYPE);
    assert_eq!(first.resources.len(), 4);
    raw.ack(&first).await;
    let auth = raw.recv().await;
    assert_eq!(auth.type_url, AUTHORIZATION_TYPE);
    assert_eq!(auth.resources.len(), 1);
    raw.ack(&auth).await;
    let versions: BTreeMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();

    // One workload changes (w2 leaves the service): exactly it is pushed.
    cp.write_mesh(&mesh_yaml(&[1, 2, 3], 8080, &["p1"]).replace(
        "uid: w2, name: w2, namespace: default, workloadIps: [\"10.0.0.2\"], protocol: HBONE, services: {default/svc.example: {80: 8080}}",
        "uid: w2, name: w2, namespace: default, workloadIps: [\"10.0.0.2\"], protocol: HBONE",
    ));
    let push = raw.recv().await;
    assert_eq!(push.type_url, ADDRESS_TYPE);
    assert_eq!(
        push.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["w2"]
    );
    assert!(push.removed_resources.is_empty());
    raw.ack(&push).await;

    // Restart the control plane with the original file: a client resuming with what it had
    // before the change gets w2 back and nothing else, plus the removal of a name it has that
    // does not exist.
    let dir = cp.stop().await;
    std::fs::write(
        dir.path().join("mesh.yaml"),
        mesh_yaml(&[1, 2, 3], 8080, &["p1"]),
    )
    .unwrap();
    let cp = Running::start_in(dir, None).await;
    let mut initial = versions.clone();
    initial.insert("w2".into(), "stale".into());
    initial.insert("gone".into(), "v".into());
    let mut raw = Raw::connect(cp.addr, &cp.root(), vec![wildcard(ADDRESS_TYPE, initial)]).await;
    let resumed = raw.recv().await;
    assert_eq!(
        resumed
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["w2"]
    );
    assert_eq!(
        resumed.resources[0].version, versions["w2"],
        "same content, same version"
    );
    assert_eq!(resumed.removed_resources, ["gone"]);
    // A type subscribed with everything current still gets an (empty) answer.
    let auth_versions = auth
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    raw.tx
        .send(wildcard(AUTHORIZATION_TYPE, auth_versions))
        .await
        .unwrap();
    let auth = raw.recv().await;
    assert_eq!(auth.type_url, AUTHORIZATION_TYPE);
    assert!(auth.resources.is_empty() && auth.removed_resources.is_empty());
    cp.stop().await;
}

/// An on-demand client (ztun's and ztunnel's `XDS_ON_DEMAND`: subscribe to the wildcard and
/// unsubscribe from it in one request, then ask by `network/IP` or by name) receives, over the
/// wire, exactly what it named: nothing of the mesh at the start, and of a change that touches
/// every workload only the ones it named.
#[tokio::test]
async fn on_demand_clients_receive_only_the_resources_they_name() {
    let ids: Vec<u8> = (1..=50).collect();
    let cp = Running::start(&mesh_yaml(&ids, 8080, &["p1"])).await;
    let nothing = DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        ..Default::default()
    };
    let mut raw = Raw::connect(cp.addr, &cp.root(), vec![nothing]).await;
    let first = raw.recv().await;
    assert_eq!(first.type_url, ADDRESS_TYPE);
    assert_eq!(
        resource_names(&first),
        Vec::<String>::new(),
        "subscribed to nothing"
    );
    assert!(first.removed_resources.is_empty());
    raw.ack(&first).await;

    // By alias, as on a connection to an unknown IP, and by name, as for a pod's own workload.
    raw.tx
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE.into(),
            resource_names_subscribe: vec!["/10.0.0.7".into(), "w9".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let asked = raw.recv().await;
    assert_eq!(resource_names(&asked), ["w7", "w9"]);
    raw.ack(&asked).await;

    // Every workload changes (a new target port) and one is added: only the named two come.
    let more: Vec<u8> = (1..=51).collect();
    cp.write_mesh(&mesh_yaml(&more, 9090, &["p1"]));
    let push = raw.recv().await;
    assert_eq!(resource_names(&push), ["w7", "w9"]);
    assert!(push.removed_resources.is_empty());
    raw.ack(&push).await;
    cp.stop().await;
}

/// Delta ADS authenticates like the CA: over the wire, a stream without a token or with one
/// the tokens file does not hold gets `UNAUTHENTICATED` and no resource (the session never
/// starts); the file's token gets the mesh; a token added to the file works without a
/// restart (the same reloading source as the CA's).
#[tokio::test]
async fn xds_streams_without_a_known_token_are_refused_before_any_resource() {
    let cp = Running::start(&mesh_yaml(&[1, 2], 8080, &["p1"])).await;
    let first = || vec![wildcard(ADDRESS_TYPE, BTreeMap::new())];
    for (token, message) in [
        (None, "missing bearer token"),
        (Some(""), "missing bearer token"),
        (Some("not-a-token"), "unknown bearer token"),
    ] {
        let refused = Raw::open(cp.addr, &cp.root(), token, first()).await;
        let status = refused
            .err()
            .unwrap_or_else(|| panic!("{token:?} was served"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), message, "{token:?}");
    }
    assert_eq!(cp.ads.clients(), 0, "no session started");

    let mut raw = Raw::connect(cp.addr, &cp.root(), first()).await;
    let r = raw.recv().await;
    assert_eq!(resource_names(&r), ["default/svc.example", "w1", "w2"]);

    // A new token: write + rename, as with the mesh file.
    let tmp = cp.dir.path().join("tokens.tmp");
    std::fs::write(&tmp, format!("{TOKEN} n1\nt0k3n-n2 n2\n")).unwrap();
    std::fs::rename(&tmp, cp.dir.path().join("tokens")).unwrap();
    let mut raw2 = Raw::open(cp.addr, &cp.root(), Some("t0k3n-n2"), first())
        .await
        .expect("a token added to the file is accepted");
    assert_eq!(resource_names(&raw2.recv().await).len(), 3);
    cp.stop().await;
}

/// Without a tokens file nobody authenticates: xDS refuses every stream, whatever token it
/// carries, as the CA refuses every request — unless `--dangerous-unauthenticated-xds`, which
/// serves a stream without any token.
#[tokio::test]
async fn without_a_tokens_file_xds_refuses_everyone_unless_opted_out() {
    let first = || vec![wildcard(ADDRESS_TYPE, BTreeMap::new())];
    let dir = mesh_dir(&mesh_yaml(&[1], 8080, &[]));
    let cp = Running::start_with(dir, None, false, None).await;
    for token in [None, Some(TOKEN)] {
        let status = Raw::open(cp.addr, &cp.root(), token, first())
            .await
            .err()
            .unwrap_or_else(|| panic!("{token:?} was served without a tokens file"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    let dir = cp.stop().await;

    let cp = Running::start_with(dir, None, true, None).await;
    let mut raw = Raw::open(cp.addr, &cp.root(), None, first())
        .await
        .expect("opted out: served without a token");
    assert_eq!(
        resource_names(&raw.recv().await),
        ["default/svc.example", "w1"]
    );
    cp.stop().await;
}

/// A new wildcard subscriber's first push is a full scan, run under one of a few scan
/// permits: more clients than there are permits, one after another, each get the whole mesh,
/// and every permit is back afterwards (a permit kept would leave the next client waiting
/// forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_scans_give_their_scan_permit_back() {
    let cp = Running::start(&mesh_yaml(&[1, 2, 3], 8080, &[])).await;
    let permits = cp.ads.scans.available_permits();
    assert!(permits >= 1);
    for _ in 0..permits + 2 {
        let first = vec![wildcard(ADDRESS_TYPE, BTreeMap::new())];
        let mut raw = Raw::connect(cp.addr, &cp.root(), first).await;
        let r = raw.recv().await;
        assert_eq!(
            resource_names(&r),
            ["default/svc.example", "w1", "w2", "w3"]
        );
    }
    assert_eq!(cp.ads.scans.available_permits(), permits);
    cp.stop().await;
}

/// A wildcard client that leaves while its first full scan waits for a permit is let go: its
/// stream ends (no scan is queued for nobody, and a shutdown does not wait behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_for_a_scan_permit_is_let_go() {
    let cp = Running::start(&mesh_yaml(&[1, 2, 3], 8080, &[])).await;
    let permits = cp.ads.scans.available_permits();
    // Every permit busy, as with other clients' scans in progress.
    let busy = cp
        .ads
        .scans
        .clone()
        .acquire_many_owned(permits as u32)
        .await
        .unwrap();
    let first = vec![wildcard(ADDRESS_TYPE, BTreeMap::new())];
    let raw = Raw::connect(cp.addr, &cp.root(), first).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while cp.ads.clients() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never opened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(raw);
    while cp.ads.clients() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session of a client that left still waits for a scan permit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(busy);
    cp.stop().await;
}

fn resource_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_clients_each_get_the_mesh_and_every_change() {
    const CLIENTS: usize = 200;
    let cp = Running::start(&mesh_yaml(&[1, 2], 8080, &[])).await;
    let root = cp.root();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (addr, root) = (cp.addr, root.clone());
        clients.push(tokio::spawn(async move {
            let first = vec![wildcard(ADDRESS_TYPE, BTreeMap::new())];
            let mut raw = Raw::connect(addr, &root, first).await;
            let r = raw.recv().await;
            assert_eq!(r.resources.len(), 3);
            raw.ack(&r).await;
            raw
        }));
    }
    let mut raws = Vec::with_capacity(CLIENTS);
    for c in clients {
        raws.push(c.await.unwrap());
    }
    assert_eq!(cp.ads.clients(), CLIENTS);
    cp.write_mesh(&mesh_yaml(&[1, 2, 3], 8080, &[]));
    let started = std::time::Instant::now();
    let pushes: Vec<_> = raws
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                let r = raw.recv().await;
                assert_eq!(
                    r.resources
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>(),
                    ["w3"]
                );
            })
        })
        .collect();
    for p in pushes {
        p.await.unwrap();
    }
    eprintln!(
        "push to {CLIENTS} clients: {:?} after the file changed",
        started.elapsed()
    );
    cp.stop().await;
}

/// Moves the mesh `m` to one with workloads `ids` and returns `sub`'s push of that change
/// (the Address type, from the mesh's own delta).
fn push_change(sub: &mut Subscription, m: &MeshResources, ids: &[u8]) -> ads::Push {
    let next = Arc::new(
        m.next(&local::parse(&mesh_yaml(ids, 8080, &[])).unwrap())
            .unwrap(),
    );
    sub.push(
        ResourceType::Address,
        &next,
        next.delta(ResourceType::Address),
        &[],
    )
}

/// A client that connects, says its HTTP/2 preface and then nothing at all (a stopped or
/// lost node) is closed once it has been silent for the PING interval and timeout together,
/// although hyper's own verdict on the unanswered PINGs is kept out of the way.
#[tokio::test]
async fn a_silent_client_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let keepalive = (Duration::from_millis(100), Duration::from_millis(400));
    let cp = Running::start_in(mesh_dir(&mesh_yaml(&[1], 8080, &[])), Some(keepalive)).await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cp.root()).unwrap();
    roots.add_parsable_certificates(crate::tls::parse_pem_certs(&pem).unwrap());
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    // The preface and an empty SETTINGS frame; never an answer to anything after that.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    // Reading what the server sends (its SETTINGS, PINGs) sends nothing back.
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent client was kept for {WAIT:?}");
    cp.stop().await;
}

/// An idle client that answers the PINGs is kept across many silence limits, and its stream
/// still carries the next change.
#[tokio::test]
async fn an_idle_client_that_answers_pings_is_kept() {
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_secs(2);
    let dir = mesh_dir(&mesh_yaml(&[1], 8080, &[]));
    let cp = Running::start_in(dir, Some((interval, timeout))).await;
    let mut raw = Raw::connect(
        cp.addr,
        &cp.root(),
        vec![wildcard(ADDRESS_TYPE, BTreeMap::new())],
    )
    .await;
    let first = raw.recv().await;
    raw.ack(&first).await;
    // Idle for three times the silence limit: only PINGs and their answers cross.
    tokio::time::sleep((interval + timeout) * 3).await;
    cp.write_mesh(&mesh_yaml(&[1, 2], 8080, &[]));
    let change = raw.recv().await;
    assert!(
        resource_names(&change).iter().any(|n| n.contains("w2")),
        "{:?}",
        resource_names(&change)
    );
    cp.stop().await;
}

/// The merge in `store::diff` finds exactly what looking each name up in the other map finds,
/// in the same order, over random pairs of generations (names added, removed, changed, kept).
#[test]
fn the_merged_diff_matches_a_lookup_of_every_name() {
    use crate::testkit::rng::Xorshift;
    let entry = |v: u64| store::Entry {
        version: format!("{v:016x}").into(),
        encoded: Default::default(),
    };
    for seed in 1..=50u64 {
        let mut r = Xorshift::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut old = BTreeMap::new();
        let mut new = BTreeMap::new();
        for i in 0..r.below(200) {
            let name: Arc<str> = format!("Kubernetes//Pod/ns-{}/w-{i}", i % 7).into();
            let version = r.below(3);
            match r.below(4) {
                0 => {
                    old.insert(name, entry(version));
                }
                1 => {
                    new.insert(name, entry(version));
                }
                _ => {
                    old.insert(name.clone(), entry(version));
                    new.insert(name, entry(version + r.below(2)));
                }
            }
        }
        let updated: Vec<Arc<str>> = new
            .iter()
            .filter(|(name, e)| old.get(*name).is_none_or(|o| o.version != e.version))
            .map(|(name, _)| name.clone())
            .collect();
        let removed: Vec<Arc<str>> = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .cloned()
            .collect();
        let d = store::diff(&old, &new);
        assert_eq!((d.updated, d.removed), (updated, removed), "seed {seed}");
    }
}
