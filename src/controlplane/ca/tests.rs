//! The control plane's CA: authorization decisions, lifetime cap, reloading, and the real CA
//! client against it over TLS.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use super::*;
use crate::config::RootCert;
use crate::control::ca::{CaClient, CaClientConfig, CaError};
use crate::testkit::certs::{write_ca_dir, write_named_ca_dir};

const TOKENS: &str = "# token node\ntoken-n1 n1\n\ntoken-n2   n2\n";

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

/// `a` runs on n1, `c` on n2.
fn schedule(identity: &Identity, node: &str) -> bool {
    matches!(
        (identity.service_account(), node),
        ("a", "n1") | ("c", "n2")
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    service: CaService,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_ca_dir(&dir.path().join("ca")).unwrap();
        std::fs::write(dir.path().join("tokens"), TOKENS).unwrap();
        let service = CaService::new(
            CaServerConfig {
                ca_dir: dir.path().join("ca"),
                tokens: Some(dir.path().join("tokens")),
                max_ttl: CaServerConfig::DEFAULT_MAX_TTL,
            },
            schedule,
        )
        .unwrap();
        Fixture { dir, service }
    }

    fn ca_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ca")
    }
}

fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn request(csr: String, impersonate: Option<&str>) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: impersonate.map(|i| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(i.to_string())),
                },
            )]
            .into(),
        }),
    }
}

fn for_identity(sa: &str) -> IstioCertificateRequest {
    let i = id(sa).to_string();
    request(csr(vec![uri(&i)]), Some(&i))
}

#[test]
fn authorization_decisions() {
    let f = Fixture::new();
    let a = id("a").to_string();
    let tampered = {
        // Flip a bit in the signature (the last bytes of the DER).
        let pem = csr(vec![uri(&a)]);
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let last = der.len() - 2;
        der[last] ^= 1;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    };
    let not_string = IstioCertificateRequest {
        metadata: Some(prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(1.0)),
                },
            )]
            .into(),
        }),
        ..for_identity("a")
    };
    type Want = fn(&Refusal) -> bool;
    /// Name, `authorization` header, request, expected identity or refusal.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        IstioCertificateRequest,
        Result<&'a str, Want>,
    );
    let cases: Vec<Case> = vec![
        (
            "own workload, impersonated",
            Some("Bearer token-n1"),
            for_identity("a"),
            Ok("a"),
        ),
        (
            "own workload, no metadata",
            Some("Bearer token-n1"),
            request(csr(vec![uri(&a)]), None),
            Ok("a"),
        ),
        (
            "workload of another node",
            Some("Bearer token-n1"),
            for_identity("c"),
            Err(|r| matches!(r, Refusal::NotOnNode { node, .. } if &**node == "n1")),
        ),
        (
            "unknown workload",
            Some("Bearer token-n1"),
            for_identity("nobody"),
            Err(|r| matches!(r, Refusal::NotOnNode { .. })),
        ),
        (
            "no token",
            None,
            for_identity("a"),
            Err(|r| *r == Refusal::NoToken),
        ),
        (
            "not a bearer token",
            Some("Basic token-n1"),
            for_identity("a"),
            Err(|r| *r == Refusal::NoToken),
        ),
        (
            "unknown token",
            Some("Bearer token-n3"),
            for_identity("a"),
            Err(|r| *r == Refusal::UnknownToken),
        ),
        (
            "impersonation differs from CSR",
            Some("Bearer token-n1"),
            request(csr(vec![uri(&a)]), Some(&id("c").to_string())),
            Err(|r| matches!(r, Refusal::Impersonation(_))),
        ),
        (
            "impersonation not a string",
            Some("Bearer token-n1"),
            not_string,
            Err(|r| matches!(r, Refusal::Impersonation(_))),
        ),
        (
            "impersonation not SPIFFE",
            Some("Bearer token-n1"),
            request(csr(vec![uri(&a)]), Some("a")),
            Err(|r| matches!(r, Refusal::Impersonation(_))),
        ),
        (
            "two URI SANs",
            Some("Bearer token-n1"),
            request(csr(vec![uri(&a), uri(&id("b").to_string())]), None),
            Err(|r| matches!(r, Refusal::San(_))),
        ),
        (
            "URI plus DNS SAN",
            Some("Bearer token-n1"),
            request(
                csr(vec![
                    uri(&a),
                    SanType::DnsName("a.example".try_into().unwrap()),
                ]),
                None,
            ),
            Err(|r| matches!(r, Refusal::San(_))),
        ),
        (
            "no SAN",
            Some("Bearer token-n1"),
            request(csr(vec![]), None),
            Err(|r| matches!(r, Refusal::San(_))),
        ),
        (
            "non-SPIFFE URI",
            Some("Bearer token-n1"),
            request(csr(vec![uri("https://a.example/")]), None),
            Err(|r| matches!(r, Refusal::San(_))),
        ),
        (
            "bad signature",
            Some("Bearer token-n1"),
            request(tampered, None),
            Err(|r| matches!(r, Refusal::Csr(_))),
        ),
        (
            "not a CSR",
            Some("Bearer token-n1"),
            request("hello".into(), None),
            Err(|r| matches!(r, Refusal::Csr(_))),
        ),
        (
            "oversized CSR",
            Some("Bearer token-n1"),
            request("A".repeat(MAX_CSR + 1), None),
            Err(|r| matches!(r, Refusal::Csr(_))),
        ),
    ];
    for (name, bearer, req, want) in cases {
        let got = f.service.authorize(bearer, &req);
        match (got, want) {
            (Ok((_, identity, _)), Ok(sa)) => assert_eq!(identity, id(sa), "{name}"),
            (Err(refusal), Err(check)) => assert!(check(&refusal), "{name}: {refusal:?}"),
            (got, _) => panic!("{name}: unexpected {:?}", got.map(|(n, i, _)| (n, i))),
        }
    }
}

#[test]
fn refusals_map_to_grpc_codes() {
    use tonic::Code;
    let cases = [
        (Refusal::NoToken, Code::Unauthenticated),
        (Refusal::UnknownToken, Code::Unauthenticated),
        (
            Refusal::NotOnNode {
                node: "n1".into(),
                identity: id("c"),
            },
            Code::PermissionDenied,
        ),
        (Refusal::San("x".into()), Code::InvalidArgument),
    ];
    for (refusal, code) in cases {
        assert_eq!(refusal.status().code(), code, "{refusal}");
    }
}

#[test]
fn lifetime_is_capped() {
    let f = Fixture::new();
    let day = CaServerConfig::DEFAULT_MAX_TTL;
    for (requested, granted) in [
        (3600, Duration::from_secs(3600)),
        (0, day),
        (-5, day),
        (3 * 86400, day),
    ] {
        assert_eq!(f.service.granted_ttl(requested), granted, "{requested}");
    }
}

#[test]
fn tokens_file_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let parse = |text: &str| {
        std::fs::write(&path, text).unwrap();
        crate::controlplane::auth::read_tokens(&path)
    };
    let ok = parse(TOKENS).unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(&*ok["token-n2"], "n2");
    assert!(parse("t1 n1\nt1 n2\n").unwrap_err().contains("duplicate"));
    assert!(parse("lonely\n").unwrap_err().contains("line 1"));
    assert!(parse("a b c\n").unwrap_err().contains("line 1"));
}

#[test]
fn a_ca_dir_that_cannot_sign_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    let config = CaServerConfig {
        ca_dir: dir.path().join("missing"),
        tokens: None,
        max_ttl: CaServerConfig::DEFAULT_MAX_TTL,
    };
    assert!(matches!(
        CaService::new(config, schedule),
        Err(CaServerError::Ca(_))
    ));
}

async fn serve(service: &CaService) -> crate::testkit::grpc::TlsServer {
    let router = tonic::transport::Server::builder().add_service(service.clone().into_server());
    crate::testkit::grpc::serve_tls(router, &["127.0.0.1"])
        .await
        .unwrap()
}

fn client(server: &crate::testkit::grpc::TlsServer, token: &str) -> CaClient {
    let mut config = CaClientConfig::new(server.url(), RootCert::Static(server.root_pem.clone()));
    config.token = crate::config::AuthToken::Static(token.into());
    config.ttl = Duration::from_secs(7 * 86400);
    CaClient::new(&config).unwrap()
}

#[tokio::test]
async fn the_ca_client_gets_its_workloads_certificates_and_nothing_else() {
    let f = Fixture::new();
    let server = serve(&f.service).await;
    let n1 = client(&server, "token-n1");

    let cert = n1
        .request(&id("a"))
        .await
        .expect("n1 may have a's certificate");
    let life = cert.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        life <= CaServerConfig::DEFAULT_MAX_TTL,
        "TTL capped: {life:?}"
    );
    assert!(life > CaServerConfig::DEFAULT_MAX_TTL - Duration::from_secs(60));
    assert_eq!(cert.roots().len(), 1);

    match n1.request(&id("c")).await.unwrap_err() {
        CaError::Rpc { code, message } => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert!(message.contains("node \"n1\" may not request"), "{message}");
        }
        other => panic!("{other}"),
    }
    match client(&server, "stolen")
        .request(&id("a"))
        .await
        .unwrap_err()
    {
        CaError::Rpc { code, .. } => assert_eq!(code, tonic::Code::Unauthenticated),
        other => panic!("{other}"),
    }
}

/// Replaces `path` atomically, as an operator (or the e2e test) would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_root_rotation_is_driven_by_rewriting_the_ca_dir() {
    let f = Fixture::new();
    let server = serve(&f.service).await;
    let n1 = client(&server, "token-n1");
    let a = std::fs::read_to_string(f.ca_dir().join("root-cert.pem")).unwrap();
    let b = write_named_ca_dir(&f.dir.path().join("next"), "next").unwrap();
    let der = |pem: &str| crate::tls::parse_pem_certs(pem.as_bytes()).unwrap();

    // 1. Bundle A: signed by A.
    let cert = n1.request(&id("a")).await.unwrap();
    assert_eq!(cert.roots(), der(&a).as_slice());

    // 2. Bundle A+B, still signed by A: both roots come back.
    replace(
        &f.ca_dir().join("root-cert.pem"),
        &format!("{a}{}", b.cert_pem),
    );
    let cert = n1.request(&id("a")).await.unwrap();
    assert_eq!(cert.roots().len(), 2);
    assert!(chains_to(&cert, &der(&a)), "leaf still from A");

    // 3. Key B: the signing root is the bundle entry matching it.
    replace(&f.ca_dir().join("ca-key.pem"), &b.key_pem);
    let cert = n1.request(&id("a")).await.unwrap();
    assert_eq!(cert.roots().len(), 2);
    assert!(chains_to(&cert, &der(&b.cert_pem)), "leaf now from B");
    assert!(!chains_to(&cert, &der(&a)));

    // 4. Bundle B.
    replace(&f.ca_dir().join("root-cert.pem"), &b.cert_pem);
    let cert = n1.request(&id("a")).await.unwrap();
    assert_eq!(cert.roots(), der(&b.cert_pem).as_slice());

    // A broken rewrite keeps the previous CA signing.
    replace(&f.ca_dir().join("ca-key.pem"), "not a key");
    let cert = n1.request(&id("a")).await.expect("previous CA still signs");
    assert!(chains_to(&cert, &der(&b.cert_pem)));
}

#[tokio::test]
async fn new_tokens_apply_without_restart() {
    let f = Fixture::new();
    let server = serve(&f.service).await;
    let late = client(&server, "token-late");
    assert!(late.request(&id("c")).await.is_err());
    replace(
        &f.dir.path().join("tokens"),
        &format!("{TOKENS}token-late n2\n"),
    );
    late.request(&id("c"))
        .await
        .expect("the new token is accepted");
}

fn chains_to(
    cert: &crate::tls::WorkloadCert,
    roots: &[rustls::pki_types::CertificateDer<'_>],
) -> bool {
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&cert.chain()[0]).unwrap();
    ee.verify_for_usage(
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all,
        &anchors,
        &cert.chain()[1..],
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

#[test]
fn max_ttl_syntax() {
    for (text, want) in [
        ("90", Some(90)),
        ("90s", Some(90)),
        ("30m", Some(1800)),
        ("12h", Some(43200)),
        ("2d", Some(172800)),
        ("0", None),
        ("h", None),
        ("5w", None),
        ("-5s", None),
        ("", None),
    ] {
        assert_eq!(
            CaServerConfig::parse_ttl(text),
            want.map(Duration::from_secs),
            "{text:?}"
        );
    }
}

#[test]
fn the_mesh_file_schedules_identities_on_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let workload = |name: &str, sa: &str, node: &str| {
        format!(
            "- uid: {name}\n  name: {name}\n  namespace: default\n  serviceAccount: {sa}\n  \
             workloadIps: []\n  node: {node}\n"
        )
    };
    std::fs::write(&path, format!("workloads:\n{}", workload("a", "a", "n1"))).unwrap();
    let schedule = MeshFileSchedule::load(&path).unwrap();
    assert!(schedule.scheduled_on(&id("a"), "n1"));
    assert!(!schedule.scheduled_on(&id("a"), "n2"));
    // The workload moves: the schedule follows the file.
    replace(&path, &format!("workloads:\n{}", workload("a", "a", "n2")));
    assert!(schedule.scheduled_on(&id("a"), "n2"));
    assert!(!schedule.scheduled_on(&id("a"), "n1"));
    // A broken file keeps the last good schedule.
    replace(&path, "workloads: [");
    assert!(schedule.scheduled_on(&id("a"), "n2"));
}
