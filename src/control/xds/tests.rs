//! The xDS client against a scripted server over real TLS on loopback, and its backoff with
//! paused time.

mod conformance;
mod conformance_addresses;
mod server;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prost_types::value::Kind;
use tokio::time::Instant;

use self::server::{
    address_resource, policy, resource, response, service, workload, workload_proto, Conn, TestAds,
    WAIT,
};
use super::proto::istio::workload as wl;
use super::proto::{DeltaDiscoveryRequest, Resource};
use super::transport::{OpenFuture, RequestStream, Transport};
use super::*;
use crate::config::{MapEnv, RootCert};
use crate::state::{self, Reader};

const NODE_ENV: &[(&str, &str)] = &[
    ("INSTANCE_IP", "10.1.2.3"),
    ("POD_NAME", "ztun-abc"),
    ("POD_NAMESPACE", "istio-system"),
    ("NODE_NAME", "node-1"),
    ("ISTIO_META_CLUSTER_ID", "cluster-7"),
    ("ISTIO_META_DNS_CAPTURE", "true"),
    ("AUTH_TOKEN", "secret-token"),
    ("XDS_HEADER_X_TEST", "yes"),
];

/// Client settings for `ads`, built from environment variables as in production.
fn client_config(ads: &TestAds, extra: &[(&str, &str)]) -> ClientConfig {
    let address = format!("https://127.0.0.1:{}", ads.addr.port());
    let root = ads.root.to_string_lossy().into_owned();
    let mut env = MapEnv::new()
        .with_var("XDS_ADDRESS", address)
        .with_var("XDS_ROOT_CA", root.clone())
        .with_existing_path(root);
    for (k, v) in NODE_ENV.iter().chain(extra) {
        env = env.with_var(*k, *v);
    }
    let config = Config::from_source(&env).expect("valid config");
    let mut client = ClientConfig::from_config(&config)
        .expect("valid client config")
        .expect("xDS enabled");
    client.demand_timeout = Duration::from_millis(500);
    client
}

struct Running {
    reader: Reader,
    synced: tokio::sync::watch::Receiver<bool>,
    demander: Option<Demander>,
    metrics: Arc<XdsMetrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(config: ClientConfig) -> Running {
    let (writer, reader) = state::new();
    let client = Client::new(config, writer, Arc::default()).expect("client");
    Running {
        reader,
        synced: client.synced(),
        demander: client.demander(),
        metrics: client.metrics(),
        task: tokio::spawn(client.run()),
    }
}

/// A client with the default configuration, connected to a new test ADS server that has
/// read its two initial requests.
async fn connected() -> (TestAds, Running, Conn) {
    let mut ads = TestAds::start(&["127.0.0.1"]).await;
    let c = start(client_config(&ads, &[]));
    let mut conn = ads.accept().await;
    initial(&mut conn).await;
    (ads, c, conn)
}

/// Reads the two initial requests and checks they are Address then Authorization.
async fn initial(conn: &mut Conn) -> (DeltaDiscoveryRequest, DeltaDiscoveryRequest) {
    let a = conn.recv().await;
    let b = conn.recv().await;
    assert_eq!(a.type_url, ADDRESS_TYPE);
    assert_eq!(b.type_url, AUTHORIZATION_TYPE);
    (a, b)
}

#[tokio::test]
async fn initial_requests_identify_the_node_and_subscribe_to_everything() {
    let mut ads = TestAds::start(&["localhost", "127.0.0.1"]).await;
    let _client = start(client_config(&ads, &[]));
    let mut conn = ads.accept().await;
    let md = &conn.metadata;
    assert_eq!(md.get("authorization").unwrap(), "Bearer secret-token");
    assert_eq!(md.get("clusterid").unwrap(), "cluster-7");
    assert_eq!(md.get("x_test").or(md.get("x-test")).unwrap(), "yes");
    let (address, auth) = initial(&mut conn).await;
    for req in [&address, &auth] {
        assert!(req.resource_names_subscribe.is_empty(), "wildcard");
        assert!(req.resource_names_unsubscribe.is_empty());
        assert!(req.initial_resource_versions.is_empty());
        assert!(req.response_nonce.is_empty());
        let node = req.node.as_ref().expect("node on initial requests");
        assert_eq!(
            node.id,
            "ztunnel~10.1.2.3~ztun-abc.istio-system~istio-system.svc.cluster.local"
        );
        let meta = &node.metadata.as_ref().unwrap().fields;
        let text = |k: &str| match meta.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("NAME"), "ztun-abc");
        assert_eq!(text("NAMESPACE"), "istio-system");
        assert_eq!(text("INSTANCE_IPS"), "10.1.2.3");
        assert_eq!(text("NODE_NAME"), "node-1");
        assert_eq!(text("CLUSTER_ID"), "cluster-7");
        assert_eq!(text("DNS_CAPTURE"), "true");
    }
}

#[tokio::test]
async fn acks_every_response_and_syncs_after_the_first_of_both_types() {
    let (_ads, mut c, mut conn) = connected().await;
    assert!(!*c.synced.borrow());

    let resources = vec![
        workload("w1", [10, 0, 0, 1], "v1"),
        service("svc", [10, 96, 0, 1], "v1"),
    ];
    // ztunnel's istio_xds_message_bytes: the resources' payload (`Any` value) bytes.
    let payload: usize = resources
        .iter()
        .map(|r| r.resource.as_ref().map_or(0, |a| a.value.len()))
        .sum();
    let first = response(ADDRESS_TYPE, "n1", resources, &[]);
    assert!(prost::Message::encoded_len(&first) > payload);
    conn.send(first);
    let ack = conn.recv().await;
    assert_eq!(ack.type_url, ADDRESS_TYPE);
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert!(ack.node.is_none(), "the node goes on initial requests only");
    assert!(!*c.synced.borrow(), "authorization not received yet");
    let snap = c.reader.load_full();
    assert!(snap
        .workload_by_ip("", IpAddr::from([10, 0, 0, 1]))
        .is_some());
    assert_eq!(
        snap.services_by_vip("", IpAddr::from([10, 96, 0, 1])).len(),
        1
    );

    // An empty first response of the other type completes the sync.
    conn.send(response(AUTHORIZATION_TYPE, "n2", vec![], &[]));
    let ack = conn.recv().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (AUTHORIZATION_TYPE, "n2")
    );
    tokio::time::timeout(WAIT, c.synced.wait_for(|s| *s))
        .await
        .expect("synced in time")
        .unwrap();
    assert_eq!(c.metrics.message_total(ResourceType::Address), 1);
    assert_eq!(c.metrics.message_total(ResourceType::Authorization), 1);
    assert_eq!(
        c.metrics.message_bytes_total(ResourceType::Address),
        payload as u64
    );
    assert_eq!(
        c.metrics.message_bytes_total(ResourceType::Authorization),
        0
    );
}

/// A workload `bad-ip` whose address is 3 bytes long, and the start of its NACK reason.
fn short_ip_workload() -> Resource {
    let mut w = workload_proto("bad-ip", [10, 0, 0, 2]);
    w.addresses = vec![vec![10, 0, 0]];
    address_resource("bad-ip", "v1", wl::address::Type::Workload(w))
}
const SHORT_IP_REASON: &str = "bad-ip: addresses[0]: is 3 bytes long";

/// The NACK of the response `nonce`, whole and split into its per-resource reasons.
async fn nack_parts(conn: &mut Conn, nonce: &str) -> (String, Vec<String>) {
    let nack = conn.recv().await;
    assert_eq!(nack.response_nonce, nonce);
    let msg = nack.error_detail.expect("NACK").message;
    let parts = msg.split("; ").map(str::to_owned).collect();
    (msg, parts)
}

#[tokio::test]
async fn a_bad_resource_is_nacked_by_name_and_the_rest_applies() {
    let (_ads, c, mut conn) = connected().await;

    let mut legacy = workload_proto("legacy", [10, 0, 0, 3]);
    legacy.tunnel_protocol = wl::TunnelProtocol::LegacyIstioMtls as i32;
    conn.send(response(
        ADDRESS_TYPE,
        "1",
        vec![
            workload("good", [10, 0, 0, 1], "v1"),
            short_ip_workload(),
            resource(ADDRESS_TYPE, "garbage", "v1", vec![0xff, 0xff, 0xff]),
            address_resource("legacy", "v1", wl::address::Type::Workload(legacy)),
        ],
        &[],
    ));
    let (msg, parts) = nack_parts(&mut conn, "1").await;
    assert_eq!(parts.len(), 3, "{msg}");
    assert!(parts[0].starts_with(SHORT_IP_REASON), "{msg}");
    assert!(parts[1].starts_with("garbage: decode: "), "{msg}");
    assert_eq!(
        parts[2],
        "legacy: tunnel_protocol: LEGACY_ISTIO_MTLS is not supported"
    );
    let snap = c.reader.load_full();
    assert!(
        snap.workload_by_uid("good").is_some(),
        "the valid resource applies"
    );
    assert!(snap.workload_by_uid("bad-ip").is_none());
    assert!(snap.workload_by_uid("legacy").is_none());
    assert_eq!(c.metrics.rejected_resources_total(), 3);

    // A policy whose CIDR cannot be parsed is rejected, never widened; a valid one applies.
    conn.send(response(
        AUTHORIZATION_TYPE,
        "2",
        vec![
            policy("ok", vec![10, 0, 0, 0], 8, "v1"),
            policy("too-long", vec![10, 0, 0, 0], 33, "v1"),
            policy("not-an-ip", vec![10, 0], 16, "v1"),
        ],
        &[],
    ));
    let nack = conn.recv().await;
    let msg = nack.error_detail.expect("NACK").message;
    assert_eq!(
        msg,
        "default/too-long: rules[0].clauses[0].matches[0].source_ips[0]: prefix length 33 exceeds 32; \
         default/not-an-ip: rules[0].clauses[0].matches[0].source_ips[0]: is 2 bytes long, not an IPv4 (4) or IPv6 (16) address"
    );
    let snap = c.reader.load_full();
    assert!(snap.policy("default/ok").is_some());
    assert!(snap.policy("default/too-long").is_none());
    // A NACKed type is not synced.
    assert!(!*c.synced.borrow());
}

#[tokio::test]
async fn one_generation_per_response_and_removal_by_name() {
    let (_ads, c, mut conn) = connected().await;
    let before = c.reader.load().generation();
    let many: Vec<_> = (1..=50)
        .map(|i| workload(&format!("w{i}"), [10, 0, 1, i], "v1"))
        .collect();
    conn.send(response(ADDRESS_TYPE, "1", many, &[]));
    conn.recv().await;
    let snap = c.reader.load_full();
    assert_eq!(
        snap.generation(),
        before + 1,
        "50 resources, one generation"
    );
    assert_eq!(snap.workloads().count(), 50);

    // A workload naming a service that is not known yet becomes its endpoint when it comes.
    let mut member = workload_proto("member", [10, 0, 2, 1]);
    member.services.insert(
        "default/late".to_owned(),
        wl::PortList {
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
        },
    );
    conn.send(response(
        ADDRESS_TYPE,
        "2",
        vec![address_resource(
            "member",
            "v1",
            wl::address::Type::Workload(member),
        )],
        &[],
    ));
    conn.recv().await;
    conn.send(response(
        ADDRESS_TYPE,
        "3",
        vec![service("late", [10, 96, 0, 9], "v1")],
        &[],
    ));
    conn.recv().await;
    let snap = c.reader.load_full();
    assert_eq!(snap.endpoints("default/late").len(), 1);
    assert!(snap.service("default/late").is_some());

    conn.send(response(
        ADDRESS_TYPE,
        "4",
        vec![],
        &["w1", "default/late", "never-existed"],
    ));
    let ack = conn.recv().await;
    assert!(
        ack.error_detail.is_none(),
        "removing an unknown name is fine"
    );
    let snap = c.reader.load_full();
    assert!(snap.workload_by_uid("w1").is_none());
    assert!(snap.service("default/late").is_none());
    assert_eq!(snap.workloads().count(), 50, "49 + member");
}

#[tokio::test]
async fn reconnects_with_accepted_versions_and_keeps_state_meanwhile() {
    let (mut ads, c, mut conn) = connected().await;
    let mut bad = workload_proto("bad", [10, 0, 0, 9]);
    bad.addresses = vec![vec![1]];
    conn.send(response(
        ADDRESS_TYPE,
        "1",
        vec![
            workload("w1", [10, 0, 0, 1], "v1"),
            address_resource("bad", "v7", wl::address::Type::Workload(bad)),
        ],
        &[],
    ));
    conn.recv().await;
    conn.send(response(
        AUTHORIZATION_TYPE,
        "2",
        vec![policy("p", vec![10, 0, 0, 0], 8, "pv1")],
        &[],
    ));
    conn.recv().await;

    // The server ends the stream: the client reconnects and says what it has.
    conn.close();
    let mut conn = ads.accept().await;
    let (address, auth) = initial(&mut conn).await;
    assert_eq!(
        address.initial_resource_versions,
        [("w1".to_owned(), "v1".to_owned())].into(),
        "accepted resources only"
    );
    assert_eq!(
        auth.initial_resource_versions,
        [("default/p".to_owned(), "pv1".to_owned())].into()
    );
    assert!(
        c.reader.load().workload_by_uid("w1").is_some(),
        "state kept"
    );
    assert_eq!(c.metrics.terminations_total(TerminationReason::Complete), 1);

    // A gRPC error ends the stream too; the state still stays.
    conn.fail(tonic::Status::internal("boom"));
    let mut conn = ads.accept().await;
    initial(&mut conn).await;
    assert_eq!(c.metrics.terminations_total(TerminationReason::Error), 1);
    assert!(c.reader.load().policy("default/p").is_some());
}

#[tokio::test]
async fn token_is_read_again_for_every_connection() {
    let mut ads = TestAds::start(&["127.0.0.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").unwrap();
    let token_s = token.to_string_lossy().into_owned();
    let mut config = client_config(&ads, &[]);
    config.auth_token = crate::config::AuthToken::File(token_s.into());
    let _c = start(config);
    let conn = ads.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer first");
    std::fs::write(&token, "second").unwrap();
    conn.close();
    let conn = ads.accept().await;
    assert_eq!(conn.metadata.get("authorization").unwrap(), "Bearer second");
}

#[tokio::test]
async fn server_name_must_match_the_host_or_the_alt_hostname() {
    // The certificate names only istiod: dialling 127.0.0.1 fails...
    let mut ads = TestAds::start(&["istiod.istio-system.svc"]).await;
    let c = start(client_config(&ads, &[]));
    let deadline = Instant::now() + WAIT;
    while c
        .metrics
        .terminations_total(TerminationReason::ConnectionError)
        == 0
    {
        assert!(Instant::now() < deadline, "no connection error recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    // ...unless ALT_XDS_HOSTNAME names it.
    let _c = start(client_config(
        &ads,
        &[("ALT_XDS_HOSTNAME", "istiod.istio-system.svc")],
    ));
    let mut conn = ads.accept().await;
    initial(&mut conn).await;
}

#[tokio::test]
async fn unknown_types_are_acked() {
    let (_ads, _c, mut conn) = connected().await;
    conn.send(response("type.googleapis.com/some.Other", "x", vec![], &[]));
    let ack = conn.recv().await;
    assert_eq!(ack.response_nonce, "x");
    assert!(ack.error_detail.is_none());
}

#[tokio::test]
async fn on_demand_subscribes_to_nothing_and_fetches_by_key() {
    let mut ads = TestAds::start(&["127.0.0.1"]).await;
    let mut c = start(client_config(
        &ads,
        &[
            ("XDS_ON_DEMAND", "true"),
            ("ISTIO_META_DNS_CAPTURE", "false"),
        ],
    ));
    let demander = c.demander.clone().expect("on-demand mode");
    let mut conn = ads.accept().await;
    let (address, auth) = initial(&mut conn).await;
    assert_eq!(address.resource_names_subscribe, ["*"]);
    assert_eq!(address.resource_names_unsubscribe, ["*"]);
    assert!(
        auth.resource_names_subscribe.is_empty(),
        "policies are never on demand"
    );

    // Only the authorization type gates readiness.
    conn.send(response(AUTHORIZATION_TYPE, "1", vec![], &[]));
    conn.recv().await;
    tokio::time::timeout(WAIT, c.synced.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();

    // A key the server answers with a resource under another name (the key as alias).
    let ask = tokio::spawn({
        let d = demander.clone();
        async move { d.demand("/10.0.0.7").await }
    });
    let sub = conn.recv().await;
    assert_eq!(sub.type_url, ADDRESS_TYPE);
    assert_eq!(sub.resource_names_subscribe, ["/10.0.0.7"]);
    let mut r = workload("uid-7", [10, 0, 0, 7], "v1");
    r.aliases.push("/10.0.0.7".into());
    conn.send(response(ADDRESS_TYPE, "2", vec![r], &[]));
    assert!(ask.await.unwrap(), "answered");
    assert!(c.reader.load().workload_by_uid("uid-7").is_some());
    conn.recv().await;

    // A key the server does not know: answered by a removal.
    let ask = tokio::spawn({
        let d = demander.clone();
        async move { d.demand("/10.9.9.9").await }
    });
    let sub = conn.recv().await;
    assert_eq!(sub.resource_names_subscribe, ["/10.9.9.9"]);
    conn.send(response(ADDRESS_TYPE, "3", vec![], &["/10.9.9.9"]));
    assert!(ask.await.unwrap());
    conn.recv().await;

    // No answer at all: the wait is bounded.
    let started = Instant::now();
    assert!(!demander.demand("/10.8.8.8").await);
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = conn.recv().await;

    // A key already known is answered at once, without a request.
    assert!(demander.demand("uid-7").await);

    // Demanded names are asked for again after a reconnect.
    conn.close();
    let mut conn = ads.accept().await;
    let (address, _) = initial(&mut conn).await;
    assert!(address
        .resource_names_subscribe
        .contains(&"/10.8.8.8".to_owned()));
    assert_eq!(
        address
            .initial_resource_versions
            .get("uid-7")
            .map(String::as_str),
        Some("v1")
    );
}

/// A transport that never connects, recording when it was asked to.
struct Refusing {
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Transport for Refusing {
    fn open(&self, _requests: RequestStream) -> OpenFuture<'_> {
        self.attempts.lock().push(Instant::now());
        Box::pin(async {
            Err(Error::Connect(Box::new(tonic::Status::unavailable(
                "connection refused",
            ))))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn reconnect_backoff_doubles_with_jitter_up_to_fifteen_seconds() {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let config = ClientConfig {
        address: "https://127.0.0.1:1".parse().unwrap(),
        root_cert: RootCert::System,
        alt_hostname: None,
        auth_token: crate::config::AuthToken::None,
        cluster_id: "Kubernetes".into(),
        headers: Default::default(),
        node_id: "ztunnel~1.1.1.1~.~.svc.cluster.local".into(),
        node_metadata: Default::default(),
        node_metadata_json: Default::default(),
        on_demand: false,
        demand_timeout: DEFAULT_DEMAND_TIMEOUT,
    };
    let (writer, _reader) = state::new();
    let client = Client::with_transport(
        config,
        writer,
        Box::new(Refusing {
            attempts: attempts.clone(),
        }),
        Arc::default(),
    );
    let metrics = client.metrics();
    let task = tokio::spawn(client.run());
    tokio::time::sleep(Duration::from_secs(120)).await;
    task.abort();
    let times = attempts.lock().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() > 10, "{gaps:?}");
    // Attempt n waits in [base/2, base] with base = 10 ms · 2^n, capped at 15 s.
    let mut base = Duration::from_millis(10);
    for gap in &gaps {
        base = (base * 2).min(Duration::from_secs(15));
        assert!(
            *gap >= base / 2 && *gap <= base,
            "gap {gap:?} outside [{:?}, {base:?}]",
            base / 2
        );
    }
    assert!(gaps.iter().all(|g| *g <= Duration::from_secs(15)));
    assert!(
        gaps.last().unwrap() >= &Duration::from_millis(7500),
        "capped range reached"
    );
    assert_eq!(
        metrics.terminations_total(TerminationReason::ConnectionError) as usize,
        times.len()
    );
}

/// A response spanning many DATA frames, its resources decoded while the rest arrives: a bad
/// resource, one of another type and one with no payload among thousands are NACKed by name
/// exactly as in a small response, and the rest applies in one generation.
#[tokio::test]
async fn a_response_of_many_frames_applies_and_nacks_as_a_small_one_does() {
    let (_ads, c, mut conn) = connected().await;

    const N: usize = 3_000;
    let mut resources: Vec<Resource> = (0..N)
        .map(|i| {
            let ip = [10, 1, (i >> 8) as u8, i as u8];
            workload(&format!("w-{i}"), ip, "v1")
        })
        .collect();
    resources.insert(1_000, short_ip_workload());
    resources.insert(2_000, policy("a-policy", vec![10, 0, 0, 0], 8, "v1"));
    resources.insert(
        2_500,
        Resource {
            name: "empty".into(),
            version: "v1".into(),
            ..Default::default()
        },
    );
    let generation = c.reader.load().generation();
    let sent = response(ADDRESS_TYPE, "1", resources, &[]);
    let size = prost::Message::encoded_len(&sent);
    assert!(size > 8 * 16_384, "{size} bytes");
    conn.send(sent);
    let (msg, parts) = nack_parts(&mut conn, "1").await;
    assert_eq!(parts.len(), 3, "{msg}");
    assert!(parts[0].starts_with(SHORT_IP_REASON), "{msg}");
    assert_eq!(
        parts[1],
        format!("default/a-policy: payload type {AUTHORIZATION_TYPE:?} does not match the response type")
    );
    assert_eq!(parts[2], "empty: resource has no payload");
    let snap = c.reader.load_full();
    assert_eq!(snap.workload_count(), N);
    assert_eq!(snap.generation(), generation + 1, "one generation");
    // Each decoded into the buffers of the one before: nothing carried over.
    for i in [0, 999, 1_000, 2_999] {
        let w = snap.workload_by_uid(&format!("w-{i}")).expect("applied");
        let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        assert_eq!(w.workload_ips, [ip], "w-{i}");
    }
    assert!(snap.policy("default/a-policy").is_none());
    assert_eq!(c.metrics.rejected_resources_total(), 3);
}
