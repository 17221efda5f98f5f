//! The fuzz targets: one per parser of outside input, each with a seed corpus built from
//! valid values (so mutations start deep inside the format).
//!
//! Not covered here, and why: `baggage` and `forwarded` have no parser in ztun — the inbound
//! side never reads them from peers (identity comes from the certificate, the source address
//! from the TCP connection), so the `request_head` and `h2_frames` targets carry them through
//! the head checks instead.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rustls_pki_types::CertificateDer;

use super::Target;
use crate::control::xds::proto::istio::{security as sec, workload as wl};
use crate::control::xds::translate::{translate_address, translate_policy, AddressResource};
use crate::control::zds;
use crate::dataplane::route::inbound::Authority;
use crate::identity::Identity;

/// Every target, in a stable order.
pub const ALL: &[Target] = &[
    Target {
        name: "xds_address",
        seeds: xds_address_seeds,
        run: xds_address,
    },
    Target {
        name: "xds_authorization",
        seeds: xds_authorization_seeds,
        run: xds_authorization,
    },
    Target {
        name: "zds",
        seeds: zds_seeds,
        run: zds_messages,
    },
    Target {
        name: "local_yaml",
        seeds: local_yaml_seeds,
        run: local_yaml,
    },
    Target {
        name: "authority",
        seeds: authority_seeds,
        run: authority,
    },
    Target {
        name: "request_head",
        seeds: request_head_seeds,
        run: request_head,
    },
    Target {
        name: "h2_frames",
        seeds: h2_frames_seeds,
        run: h2_frames,
    },
    Target {
        name: "cert_der",
        seeds: cert_der_seeds,
        run: cert_der,
    },
    Target {
        name: "pem",
        seeds: pem_seeds,
        run: pem,
    },
    Target {
        name: "dns",
        seeds: super::dns::seeds,
        run: super::dns::packet,
    },
    Target {
        name: "crl",
        seeds: crl_seeds,
        run: crl,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    ALL.iter().find(|t| t.name == name)
}

// --- xDS ------------------------------------------------------------------------------------

/// A local config exercising most model fields; its workloads, services and policies,
/// encoded to protobuf, seed the xDS targets.
const MESH_YAML: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["10.0.1.1", "fd00::1"]
  protocol: HBONE
  node: n1
  network: net1
  services:
    "default/example.com":
      80: 8080
- name: local-tcp
  namespace: default
  serviceAccount: tcp-sa
  trustDomain: example.org
  clusterId: cluster1
  workloadIps: ["127.0.0.2"]
  protocol: TCP
  node: n2
  status: Unhealthy
  capacity: 3
  locality: {region: r1, zone: z1, subzone: s1}
  canonicalName: local-tcp
  canonicalRevision: v2
  workloadName: local-tcp-deploy
  workloadType: Deployment
  hostname: local-tcp.example
  applicationTunnel: {protocol: PROXY, port: 15088}
  authorizationPolicies: ["default/allow-some"]
  waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}
  networkGateway: {destination: "remote/10.9.0.1", hboneMtlsPort: 15009}
policies:
- action: Allow
  rules:
  - - - notDestinationPorts: [9999]
        principals: [{Exact: "cluster.local/ns/default/sa/a.b*"}, {Prefix: "cluster.local/ns/x"}]
        namespaces: [{Suffix: "fault"}]
        sourceIps: ["10.0.0.0/8"]
  name: allow-some
  namespace: default
  scope: Namespace
- action: Deny
  rules: []
  name: deny-none
  namespace: other
  scope: WorkloadSelector
services:
- name: local
  namespace: default
  hostname: example.com
  vips: ["/10.96.0.1"]
  ports:
    80: 8080
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/local"]
- name: remote
  namespace: default
  hostname: example2.com
  vips: ["remote/10.96.0.2"]
  cidrVips:
  - {network: "", cidr: 10.96.0.7/16}
  ports:
    80: 8080
    443: 0
  waypoint: {destination: "/127.0.0.9"}
  loadBalancer:
    routingPreferences: [Network, Region]
    mode: Failover
    healthPolicy: AllowAll
  ipFamilies: Dual
  visibility: Namespace
"#;

fn mesh() -> crate::control::local::LocalConfig {
    crate::control::local::parse(MESH_YAML).expect("the fuzz seed mesh is valid")
}

fn xds_address_seeds() -> Vec<Vec<u8>> {
    let m = mesh();
    let mut seeds: Vec<Vec<u8>> = m
        .workloads
        .iter()
        .map(|w| crate::controlplane::encode::workload(w).encode_to_vec())
        .chain(
            m.services
                .iter()
                .map(|s| crate::controlplane::encode::service(s).encode_to_vec()),
        )
        .collect();
    seeds.push(Vec::new());
    seeds
}

/// Decode + translate, as the xDS client does per resource; a translated workload's IPs and
/// identity must be well-formed when accepted.
fn xds_address(input: &[u8]) {
    let Ok(a) = wl::Address::decode(input) else {
        return;
    };
    if let Ok(t) = translate_address(a) {
        if let AddressResource::Workload(w) = t.value {
            let _ = w.identity();
            for ip in &w.workload_ips {
                assert!(matches!(ip, IpAddr::V4(_) | IpAddr::V6(_)));
            }
        }
    }
}

fn xds_authorization_seeds() -> Vec<Vec<u8>> {
    mesh()
        .policies
        .iter()
        .map(|p| crate::controlplane::encode::policy(p).encode_to_vec())
        .collect()
}

fn xds_authorization(input: &[u8]) {
    if let Ok(p) = sec::Authorization::decode(input) {
        let _ = translate_policy(p);
    }
}

// --- ZDS ------------------------------------------------------------------------------------

struct NoopStarter;

impl zds::PodStarter for NoopStarter {
    fn start(
        &self,
        _pod: &zds::Pod,
        _netns: Arc<crate::sys::Netns>,
    ) -> std::io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(()))
    }
}

/// Frames ZDS messages for [`zds_messages`]: `[len][fd flags][payload]` per message; flag bit
/// 0 attaches a network namespace fd, bit 1 attaches a non-namespace fd (`/dev/null`).
fn zds_frame(out: &mut Vec<u8>, fds: u8, msg: &zds::proto::WorkloadRequest) {
    let bytes = msg.encode_to_vec();
    out.push(bytes.len().min(255) as u8);
    out.push(fds);
    out.extend_from_slice(&bytes[..bytes.len().min(255)]);
}

fn zds_seeds() -> Vec<Vec<u8>> {
    use zds::proto::{workload_request::Payload, *};
    let add = |uid: &str| WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: uid.into(),
            workload_info: Some(WorkloadInfo {
                name: "p".into(),
                namespace: "ns".into(),
                service_account: "sa".into(),
            }),
        })),
    };
    let keep = |uid: &str| WorkloadRequest {
        payload: Some(Payload::Keep(KeepWorkload { uid: uid.into() })),
    };
    let del = |uid: &str| WorkloadRequest {
        payload: Some(Payload::Del(DelWorkload { uid: uid.into() })),
    };
    let snap = WorkloadRequest {
        payload: Some(Payload::SnapshotSent(SnapshotSent {})),
    };
    let mut a = Vec::new();
    zds_frame(&mut a, 1, &add("u1"));
    zds_frame(&mut a, 1, &add("u2"));
    zds_frame(&mut a, 0, &snap);
    zds_frame(&mut a, 0, &del("u1"));
    zds_frame(&mut a, 1, &add("u1"));
    let mut b = Vec::new();
    zds_frame(&mut b, 0, &keep("u1"));
    zds_frame(&mut b, 2, &add("u3"));
    zds_frame(&mut b, 3, &add("u4"));
    zds_frame(&mut b, 0, &snap);
    zds_frame(&mut b, 0, &snap);
    vec![a, b]
}

/// A sequence of ZDS messages through the client's decode and validation (the socket layer
/// only adds framing and fd passing). The pod starter is a no-op.
fn zds_messages(input: &[u8]) {
    let mut client = zds::Client::new("/nonexistent".into(), Arc::new(NoopStarter), Arc::new(()));
    let mut rest = input;
    while rest.len() >= 2 {
        let len = rest[0] as usize;
        let flags = rest[1];
        let end = (2 + len).min(rest.len());
        let msg = &rest[2..end];
        rest = &rest[end..];
        let mut fds: Vec<OwnedFd> = Vec::new();
        if flags & 1 != 0 {
            if let Ok(f) = std::fs::File::open("/proc/self/ns/net") {
                fds.push(f.into());
            }
        }
        if flags & 2 != 0 {
            if let Ok(f) = std::fs::File::open("/dev/null") {
                fds.push(f.into());
            }
        }
        let _ = client.handle(msg, fds);
    }
}

// --- Local YAML -----------------------------------------------------------------------------

fn local_yaml_seeds() -> Vec<Vec<u8>> {
    vec![
        MESH_YAML.as_bytes().to_vec(),
        b"workloads: []\n".to_vec(),
        b"a: &a [*a]\n".to_vec(),
    ]
}

fn local_yaml(input: &[u8]) {
    if let Ok(s) = std::str::from_utf8(input) {
        let _ = crate::control::local::parse(s);
    }
}

// --- CONNECT authority and request heads ----------------------------------------------------

fn authority_seeds() -> Vec<Vec<u8>> {
    [
        "10.0.0.1:8080",
        "[fd00::1]:443",
        "[::ffff:10.0.0.1]:80",
        "example.default.svc.cluster.local:80",
        "10.0.0.1:0",
        "[fe80::1%eth0]:80",
        "spiffe://cluster.local/ns/default/sa/web",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The strict authority parsers and the SPIFFE identity parser, with their invariants.
fn authority(input: &[u8]) {
    let Ok(s) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(a) = crate::dataplane::hbone::parse_authority(s) {
        assert_ne!(a.port(), 0, "port 0 accepted from {s:?}");
    }
    match Authority::parse(s) {
        Ok(Authority::Addr(a)) => assert_ne!(a.port(), 0),
        Ok(Authority::Host { host, port }) => {
            assert_ne!(port, 0);
            assert!(host.len() <= 253, "hostname too long from {s:?}");
            assert!(
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "hostname {host:?} from {s:?}"
            );
        }
        Err(_) => {}
    }
    if let Ok(id) = s.parse::<Identity>() {
        let again: Identity = id.to_string().parse().expect("identity round trip");
        assert_eq!(again, id);
    }
}

fn request_head_seeds() -> Vec<Vec<u8>> {
    [
        "CONNECT\n10.0.0.1:8080\nbaggage: k8s.namespace.name=default,service.name=a\nforwarded: for=\"10.0.0.9:1234\";host=a.svc\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\n",
        "CONNECT\nexample.default.svc.cluster.local:80\n",
        "GET\nhttp://10.0.0.1:80/\nhost: 10.0.0.1\n",
        "connect\n[fd00::1]:80\n",
        "CONNECT\n10.0.0.1:80\nhost: 10.0.0.2:80\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Builds an `http::Request` from `method\nuri\nname: value\n…` and runs the inbound head
/// checks; anything accepted must be a CONNECT without a Host header or a path.
fn request_head(input: &[u8]) {
    let mut lines = input.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    let uri = lines.next().unwrap_or_default();
    let mut b = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], line[i + 1..].trim_ascii_start()),
            None => (line, &b""[..]),
        };
        b = b.header(name, value);
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    if crate::dataplane::inbound::parse_head(&req).is_ok() {
        assert_eq!(req.method(), http::Method::CONNECT);
        assert!(!req.headers().contains_key(http::header::HOST));
        assert!(req.uri().scheme().is_none());
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK literal header field without indexing, new name (no Huffman).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_frames_seeds() -> Vec<Vec<u8>> {
    const HEADERS: u8 = 1;
    const RST: u8 = 3;
    const SETTINGS: u8 = 4;
    const CONTINUATION: u8 = 9;
    const END_HEADERS: u8 = 4;
    let mut connect = Vec::new();
    hpack_literal(&mut connect, ":method", "CONNECT");
    hpack_literal(&mut connect, ":authority", "10.0.0.1:8080");
    hpack_literal(&mut connect, "baggage", "k8s.namespace.name=default");
    hpack_literal(&mut connect, "forwarded", "for=\"10.0.0.9:1\"");

    let mut a = Vec::new();
    h2_frame(&mut a, SETTINGS, 0, 0, &[]);
    h2_frame(&mut a, HEADERS, END_HEADERS, 1, &connect);
    h2_frame(&mut a, RST, 0, 1, &8u32.to_be_bytes());
    h2_frame(&mut a, HEADERS, END_HEADERS, 3, &connect);

    let mut b = Vec::new();
    h2_frame(&mut b, SETTINGS, 0, 0, &[]);
    let (first, second) = connect.split_at(10);
    h2_frame(&mut b, HEADERS, 0, 1, first);
    h2_frame(&mut b, CONTINUATION, 0, 1, second);
    let mut cookie = Vec::new();
    hpack_literal(&mut cookie, "cookie", &"x".repeat(100));
    h2_frame(&mut b, CONTINUATION, END_HEADERS, 1, &cookie);
    vec![a, b]
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for the h2 target");
}

/// Raw bytes after the client preface, into an h2 server with the inbound listener's
/// settings; every accepted request goes through the inbound head checks.
fn h2_frames(input: &[u8]) {
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend_from_slice(input);
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let feed = async move {
                let _ = client.write_all(&bytes).await;
                let _ = client.shutdown().await;
                // Drain what the server writes so it never blocks on a full pipe.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut client, &mut sink).await;
            };
            let serve = async move {
                // Same limits as the inbound listener (`dataplane/inbound.rs`).
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_concurrent_streams(200)
                    .max_header_list_size(64 * 1024)
                    .max_send_buffer_size(400 * 1024)
                    .handshake::<_, bytes::Bytes>(server)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let status = match crate::dataplane::inbound::parse_head(&req) {
                        Ok(_) => http::StatusCode::OK,
                        Err(e) => e.status(),
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .body(())
                        .unwrap_or_default();
                    let _ = respond.send_response(resp, true);
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::join!(feed, serve);
            })
            .await;
        })
    });
}

// --- Certificates ---------------------------------------------------------------------------

fn leaf_and_root() -> (Vec<u8>, Vec<u8>) {
    let ca = crate::control::ca::LocalCa::ephemeral("cluster.local", Duration::from_secs(3600))
        .expect("an ephemeral CA");
    let id = Identity::new("cluster.local", "default", "web").expect("a valid identity");
    let cert = ca.mint(&id).expect("minting a leaf");
    (cert.chain()[0].to_vec(), ca.roots()[0].to_vec())
}

fn cert_der_seeds() -> Vec<Vec<u8>> {
    let (leaf, root) = leaf_and_root();
    vec![leaf, root]
}

/// SPIFFE identity extraction from a peer's leaf certificate (the server's client check).
fn cert_der(input: &[u8]) {
    let der = CertificateDer::from(input);
    if let Ok(id) = crate::tls::peer_identity(Some(std::slice::from_ref(&der))) {
        assert!(!id.trust_domain().is_empty());
    }
}

fn pem_seeds() -> Vec<Vec<u8>> {
    let ca = crate::control::ca::LocalCa::ephemeral("cluster.local", Duration::from_secs(3600))
        .expect("an ephemeral CA");
    let id = Identity::new("cluster.local", "default", "web").expect("a valid identity");
    let cert = ca.mint(&id).expect("minting a leaf");
    let pem = |der: &[u8]| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s.into_bytes()
    };
    let leaf = pem(&cert.chain()[0]);
    let root = pem(&ca.roots()[0]);
    let mut chain = leaf.clone();
    chain.extend_from_slice(&root);
    vec![
        leaf,
        chain,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
    ]
}

/// PEM certificate chains and keys as loaded from CA directories and CA responses.
fn pem(input: &[u8]) {
    if let Ok(certs) = crate::tls::parse_pem_certs(input) {
        let _ = crate::tls::peer_identity(Some(&certs));
    }
    let _ = crate::tls::parse_pem_key(input);
}

// --- CRLs -----------------------------------------------------------------------------------

/// A CA, a leaf it signed, and CRLs of that CA (revoking the leaf, revoking nothing, stale).
struct CrlFixture {
    leaf: CertificateDer<'static>,
    root: CertificateDer<'static>,
    crls: Vec<Vec<u8>>,
}

fn crl_fixture() -> &'static CrlFixture {
    static FIXTURE: std::sync::OnceLock<CrlFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        use crate::testkit::certs;
        let dir = std::env::temp_dir().join(format!("ztun-fuzz-crl-{}", std::process::id()));
        let ca = certs::write_ca_dir(&dir).expect("writing a CA");
        let issuer = crate::control::ca::LocalCa::load(&dir, Duration::from_secs(3600))
            .expect("loading the CA");
        let _ = std::fs::remove_dir_all(&dir);
        let id = Identity::new("cluster.local", "default", "web").expect("a valid identity");
        let leaf = issuer.mint(&id).expect("minting a leaf");
        let serial = certs::serial_of(&leaf.chain()[0]).expect("a serial");
        let hour = time::Duration::hours(1);
        let crls = [
            certs::crl_pem(&ca, std::slice::from_ref(&serial), hour),
            certs::crl_pem(&ca, &[], hour),
            certs::crl_pem(&ca, &[serial.clone(), vec![1], vec![0x7f; 20]], -hour),
        ]
        .into_iter()
        .map(|pem| pem.expect("signing a CRL").into_bytes())
        .collect();
        CrlFixture {
            leaf: leaf.chain()[0].clone(),
            root: issuer.roots()[0].clone(),
            crls,
        }
    })
}

fn crl_seeds() -> Vec<Vec<u8>> {
    let f = crl_fixture();
    let mut seeds = f.crls.clone();
    // The first CRL as DER.
    use rustls_pki_types::pem::PemObject;
    if let Some(Ok(der)) =
        rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&f.crls[0]).next()
    {
        seeds.push(der.to_vec());
    }
    seeds.push(Vec::new());
    seeds
}

/// A `CRL_PATH` file: parsed, then a handshake's chain check against it. An empty file
/// revokes nothing.
fn crl(input: &[u8]) {
    let Ok(parsed) = crate::tls::crl::parse_crls(input) else {
        return;
    };
    let f = crl_fixture();
    let res = parsed.check_client_chain(
        &f.leaf,
        &[],
        std::slice::from_ref(&f.root),
        rustls_pki_types::UnixTime::now(),
    );
    if parsed.is_empty() {
        assert!(res.is_ok(), "no CRL must revoke nothing: {res:?}");
    }
}
