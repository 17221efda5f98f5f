//! The CA client against an in-process TLS gRPC CA whose answers each test scripts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rcgen::{CertificateSigningRequestParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::*;
use crate::control::ca::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::control::ca::proto::IstioCertificateResponse;
use crate::control::ca::LocalCa;
use crate::testkit::grpc::{serve_tls, TlsServer};
use crate::tls::pem_of;

type Answer = Box<dyn Fn(&IstioCertificateRequest) -> Result<Vec<String>, Status> + Send + Sync>;

/// A CA that records requests and answers with `answer`.
struct MockCa {
    answer: Answer,
    seen: Arc<Mutex<Vec<(IstioCertificateRequest, MetadataMap)>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for MockCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let answer = (self.answer)(&req);
        self.seen.lock().push((req, metadata));
        answer.map(|cert_chain| Response::new(IstioCertificateResponse { cert_chain }))
    }
}

struct Fixture {
    server: TlsServer,
    seen: Arc<Mutex<Vec<(IstioCertificateRequest, MetadataMap)>>>,
}

impl Fixture {
    async fn start(answer: Answer) -> Fixture {
        Self::start_named(answer, &["localhost", "127.0.0.1"]).await
    }

    async fn start_named(answer: Answer, names: &[&str]) -> Fixture {
        let seen = Arc::default();
        let mock = MockCa {
            answer,
            seen: Arc::clone(&seen),
        };
        let router = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(mock));
        let server = serve_tls(router, names).await.unwrap();
        Fixture { server, seen }
    }

    fn config(&self) -> CaClientConfig {
        CaClientConfig::new(
            self.server.url(),
            RootCert::Static(self.server.root_pem.clone()),
        )
    }

    fn client(&self) -> CaClient {
        CaClient::new(&self.config()).unwrap()
    }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "ns1", sa).unwrap()
}

fn ca() -> Arc<LocalCa> {
    Arc::new(LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap())
}

/// Signs the request's CSR for `identity` (or the CSR's own SAN when `None`) with `ca`.
fn sign(ca: &LocalCa, req: &IstioCertificateRequest, identity: Option<&Identity>) -> Vec<String> {
    let csr = CertificateSigningRequestParams::from_pem(&req.csr).unwrap();
    let own = match &csr.params.subject_alt_names[..] {
        [rcgen::SanType::URI(u)] => u.as_str().parse::<Identity>().unwrap(),
        other => panic!("CSR SANs {other:?}"),
    };
    let identity = identity.unwrap_or(&own);
    let now = SystemTime::now();
    let chain = ca
        .sign(
            &csr.public_key,
            identity,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
    chain.iter().map(pem_of).collect()
}

fn bundle(roots: &[&LocalCa]) -> String {
    roots
        .iter()
        .flat_map(|ca| ca.roots().iter().map(pem_of))
        .collect()
}

/// A CA that answers `[leaf, intermediates…, bundle of its roots]`.
fn honest(ca: Arc<LocalCa>) -> Answer {
    Box::new(move |req| {
        let mut chain = sign(&ca, req, None);
        chain.push(bundle(&[&ca]));
        Ok(chain)
    })
}

#[tokio::test]
async fn sends_csr_token_headers_ttl_and_impersonation() {
    let f = Fixture::start(honest(ca())).await;
    let mut config = f.config();
    config.token = AuthToken::Static("s3cret".into());
    config.cluster_id = "east".into();
    config.headers = [("x-tenant".to_string(), "blue".to_string())].into();
    config.ttl = Duration::from_secs(3600);
    let client = CaClient::new(&config).unwrap();
    let cert = client.request(&id("web")).await.unwrap();
    assert_eq!(cert.identity(), &id("web"));

    let seen = f.seen.lock();
    let (req, md) = &seen[0];
    assert_eq!(md.get("authorization").unwrap(), "Bearer s3cret");
    assert_eq!(md.get("clusterid").unwrap(), "east");
    assert_eq!(md.get("x-tenant").unwrap(), "blue");
    assert_eq!(req.validity_duration, 3600);
    let imp = &req.metadata.as_ref().unwrap().fields[IMPERSONATED_IDENTITY];
    assert_eq!(
        imp.kind,
        Some(prost_types::value::Kind::StringValue(id("web").to_string()))
    );

    // The CSR: EC P-256, empty subject, exactly one critical URI SAN.
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes())
        .unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .unwrap();
    let info = &csr.certification_request_info;
    assert_eq!(info.subject.iter_attributes().count(), 0, "empty subject");
    assert_eq!(
        info.subject_pki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(x509_parser::oid_registry::OID_EC_P256)
    );
    let exts: Vec<_> = csr.requested_extensions().into_iter().flatten().collect();
    assert_eq!(exts.len(), 1, "{exts:?}");
    let san = csr
        .certification_request_info
        .attributes()
        .iter()
        .find_map(|a| match a.parsed_attribute() {
            x509_parser::prelude::ParsedCriAttribute::ExtensionRequest(r) => {
                r.extensions.first().cloned()
            }
            _ => None,
        })
        .unwrap();
    assert!(san.critical, "SAN must be critical with an empty subject");
    match san.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => {
            assert_eq!(
                s.general_names,
                vec![x509_parser::extensions::GeneralName::URI(
                    "spiffe://cluster.local/ns/ns1/sa/web"
                )]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dedicated_mode_sends_no_impersonation_and_no_token_when_none() {
    let f = Fixture::start(honest(ca())).await;
    let mut config = f.config();
    config.impersonate = false;
    CaClient::new(&config)
        .unwrap()
        .request(&id("web"))
        .await
        .unwrap();
    let seen = f.seen.lock();
    assert!(seen[0].0.metadata.is_none());
    assert!(seen[0].1.get("authorization").is_none());
    assert_eq!(seen[0].1.get("clusterid").unwrap(), "Kubernetes");
}

#[tokio::test]
async fn the_token_file_is_read_for_every_request() {
    let f = Fixture::start(honest(ca())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("istio-token");
    std::fs::write(&path, "first\n").unwrap();
    let mut config = f.config();
    config.token = AuthToken::File(path.clone());
    let client = CaClient::new(&config).unwrap();
    client.request(&id("a")).await.unwrap();
    std::fs::write(&path, "second").unwrap();
    client.request(&id("a")).await.unwrap();
    {
        let seen = f.seen.lock();
        assert_eq!(seen[0].1.get("authorization").unwrap(), "Bearer first");
        assert_eq!(seen[1].1.get("authorization").unwrap(), "Bearer second");
    }

    std::fs::remove_file(&path).unwrap();
    let err = client.request(&id("a")).await.unwrap_err();
    assert!(
        matches!(err, CaError::Channel(ChannelError::Token { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn a_leaf_for_another_identity_is_refused() {
    let ca = ca();
    let f = Fixture::start(Box::new(move |req| {
        let mut chain = sign(&ca, req, Some(&id("someone-else")));
        chain.push(bundle(&[&ca]));
        Ok(chain)
    }))
    .await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(
        matches!(err, CaError::Invalid(CertError::Identity(_))),
        "{err}"
    );
    assert!(err.to_string().contains("someone-else"), "{err}");
}

#[tokio::test]
async fn an_empty_chain_or_a_missing_bundle_is_refused() {
    let f = Fixture::start(Box::new(|_| Ok(vec![]))).await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(matches!(err, CaError::EmptyChain), "{err}");

    let ca = ca();
    let f = Fixture::start(Box::new(move |req| Ok(sign(&ca, req, None)))).await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(matches!(err, CaError::NoRootBundle(1)), "{err}");

    let f = Fixture::start(Box::new(|_| Ok(vec!["garbage".into(), "more".into()]))).await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(matches!(err, CaError::Invalid(CertError::Pem(_))), "{err}");
}

#[tokio::test]
async fn every_root_of_the_bundle_becomes_a_trust_anchor() {
    let (signer, other) = (ca(), ca());
    let f = Fixture::start(Box::new(move |req| {
        let mut chain = sign(&signer, req, None);
        // The signing root second: position in the bundle does not matter.
        chain.push(bundle(&[&other, &signer]));
        Ok(chain)
    }))
    .await;
    let cert = f.client().request(&id("web")).await.unwrap();
    assert_eq!(cert.roots().len(), 2);
}

#[tokio::test]
async fn a_leaf_that_does_not_chain_to_the_bundle_is_refused() {
    let (signer, unrelated) = (ca(), ca());
    let f = Fixture::start(Box::new(move |req| {
        let mut chain = sign(&signer, req, None);
        chain.push(bundle(&[&unrelated]));
        Ok(chain)
    }))
    .await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(matches!(err, CaError::Untrusted(_)), "{err}");
}

#[tokio::test]
async fn intermediates_sit_between_leaf_and_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = crate::tls::ca::ca_params("root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let int = crate::tls::ca::ca_params("intermediate")
        .signed_by(&int_key, &root_issuer)
        .unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(dir.path().join("cert-chain.pem"), int.pem()).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    let ca = Arc::new(LocalCa::load(dir.path(), Duration::from_secs(3600)).unwrap());

    let f = Fixture::start(honest(ca)).await;
    let cert = f.client().request(&id("web")).await.unwrap();
    assert_eq!(cert.chain().len(), 2, "leaf + intermediate");
    assert_eq!(cert.roots().len(), 1);
    assert_eq!(cert.roots()[0], *root.der());
}

#[tokio::test]
async fn a_refusal_keeps_its_grpc_code_and_message() {
    let f = Fixture::start(Box::new(|_| {
        Err(Status::permission_denied("node n2 may not request it"))
    }))
    .await;
    let err = f.client().request(&id("web")).await.unwrap_err();
    match &err {
        CaError::Rpc { code, message } => {
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert!(message.contains("may not"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_server_name_or_the_alternative_hostname_must_match() {
    let f = Fixture::start_named(honest(ca()), &["istiod.istio-system.svc"]).await;
    // Dialled by IP, the certificate names only istiod's service name.
    let err = f.client().request(&id("web")).await.unwrap_err();
    assert!(
        matches!(
            err,
            CaError::Rpc {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{err}"
    );
    let mut config = f.config();
    config.channel.alt_hostname = Some("istiod.istio-system.svc".into());
    CaClient::new(&config)
        .unwrap()
        .request(&id("web"))
        .await
        .expect("accepted under the alternative hostname");
}

#[tokio::test]
async fn an_untrusted_server_is_refused() {
    let f = Fixture::start(honest(ca())).await;
    let other = crate::testkit::grpc::serve_tls(
        tonic::transport::Server::builder().add_service(IstioCertificateServiceServer::new(
            MockCa {
                answer: Box::new(|_| Ok(vec![])),
                seen: Arc::default(),
            },
        )),
        &["localhost"],
    )
    .await
    .unwrap();
    let mut config = f.config();
    config.channel.roots = RootCert::Static(other.root_pem.clone());
    let err = CaClient::new(&config)
        .unwrap()
        .request(&id("web"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CaError::Rpc {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{err}"
    );
    assert!(f.seen.lock().is_empty());
}

#[tokio::test]
async fn issuer_reports_the_reason_to_the_store() {
    let f = Fixture::start(Box::new(|_| {
        Err(Status::unauthenticated("unknown bearer token"))
    }))
    .await;
    let err = f.client().issue(&id("web")).await.unwrap_err().to_string();
    assert!(err.contains("unknown bearer token"), "{err}");
    assert!(
        err.contains("spiffe://cluster.local/ns/ns1/sa/web"),
        "{err}"
    );
}
