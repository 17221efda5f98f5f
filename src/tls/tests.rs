//! Handshakes between real rustls endpoints over an in-memory pipe, and identity extraction
//! from hostile certificates.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, ServerName};

use super::chain::identity_of;
use super::*;
use crate::control::ca::LocalCa;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// Runs a handshake; returns (client result, server result, identity the client saw).
pub(super) async fn handshake(
    client: &WorkloadCert,
    server: &WorkloadCert,
) -> (Result<Identity, String>, Result<Identity, String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let name = ServerName::IpAddress(std::net::IpAddr::from([10, 0, 0, 1]).into());
    let c = async {
        let tls = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server judges the client certificate after the client finished; a
        // round trip surfaces its verdict.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        peer_identity(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())
    };
    let s = async {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        peer_identity(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(c, s) })
        .await
        .expect("handshake hung")
}

#[tokio::test]
async fn same_ca_same_trust_domain_handshakes_both_ways() {
    let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
    let a = ca.mint(&id("spiffe://cluster.local/ns/x/sa/a")).unwrap();
    let b = ca.mint(&id("spiffe://cluster.local/ns/y/sa/b")).unwrap();
    let (c, s) = handshake(&a, &b).await;
    assert_eq!(c.unwrap(), *b.identity());
    assert_eq!(s.unwrap(), *a.identity());
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused() {
    let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
    let evil = ca.mint(&id("spiffe://evil.example/ns/x/sa/a")).unwrap();
    let b = ca.mint(&id("spiffe://cluster.local/ns/y/sa/b")).unwrap();
    let (_, s) = handshake(&evil, &b).await;
    let err = s.unwrap_err();
    assert!(err.contains("TrustDomainMismatch"), "{err}");
}

#[tokio::test]
async fn peers_from_an_unrelated_ca_are_refused_both_ways() {
    let ca1 = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
    let ca2 = LocalCa::ephemeral("cluster.local", Duration::from_secs(3600)).unwrap();
    let a = ca1.mint(&id("spiffe://cluster.local/ns/x/sa/a")).unwrap();
    let b = ca2.mint(&id("spiffe://cluster.local/ns/y/sa/b")).unwrap();
    let (c, _) = handshake(&a, &b).await;
    // Same subject name, different key: the chain fails on the signature.
    let err = c.unwrap_err();
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let (_, s) = handshake(&b, &a).await;
    assert!(s.is_err());
}

/// A leaf signed by a throwaway CA with arbitrary SANs (no identity checks on our side).
fn leaf_with_sans(
    sans: Vec<SanType>,
    eku: Vec<ExtendedKeyUsagePurpose>,
) -> CertificateDer<'static> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_params = super::ca::ca_params("t");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans;
    p.extended_key_usages = eku;
    p.signed_by(&key, &issuer).unwrap().der().clone()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn identity_extraction_rejects_ambiguous_or_malformed_sans() {
    let ok = leaf_with_sans(
        vec![
            uri("spiffe://td/ns/a/sa/b"),
            SanType::DnsName("x.example".try_into().unwrap()),
        ],
        vec![],
    );
    assert_eq!(identity_of(&ok).unwrap(), id("spiffe://td/ns/a/sa/b"));

    let two = leaf_with_sans(
        vec![uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/a/sa/c")],
        vec![],
    );
    assert_eq!(
        identity_of(&two).unwrap_err(),
        IdentityError::UriSanCount(2)
    );

    let none = leaf_with_sans(
        vec![SanType::DnsName("x.example".try_into().unwrap())],
        vec![],
    );
    assert_eq!(
        identity_of(&none).unwrap_err(),
        IdentityError::UriSanCount(0)
    );

    let not_spiffe = leaf_with_sans(vec![uri("https://td/ns/a/sa/b")], vec![]);
    assert!(matches!(
        identity_of(&not_spiffe).unwrap_err(),
        IdentityError::NotSpiffe(_)
    ));

    let extra_path = leaf_with_sans(vec![uri("spiffe://td/ns/a/sa/b/c")], vec![]);
    assert!(matches!(
        identity_of(&extra_path).unwrap_err(),
        IdentityError::NotSpiffe(_)
    ));

    let other_name = leaf_with_sans(
        vec![
            uri("spiffe://td/ns/a/sa/b"),
            SanType::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], "x".into())),
        ],
        vec![],
    );
    assert_eq!(
        identity_of(&other_name).unwrap_err(),
        IdentityError::OtherName
    );

    assert_eq!(
        identity_of(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])).unwrap_err(),
        IdentityError::Malformed
    );
    assert_eq!(
        peer_identity(None).unwrap_err(),
        IdentityError::NoCertificate
    );
}

#[test]
fn workload_cert_refuses_a_leaf_for_another_identity() {
    let ca = LocalCa::ephemeral("td", Duration::from_secs(60)).unwrap();
    let a = ca.mint(&id("spiffe://td/ns/a/sa/a")).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let err = WorkloadCert::new(
        id("spiffe://td/ns/a/sa/other"),
        a.chain().to_vec(),
        key,
        a.roots().to_vec(),
        &crate::tls::Revocation::disabled(),
    )
    .unwrap_err();
    assert!(matches!(err, CertError::Identity(_)), "{err}");
}

#[test]
fn refresh_is_at_half_life() {
    let ca = LocalCa::ephemeral("td", Duration::from_secs(3600)).unwrap();
    let c = ca.mint(&id("spiffe://td/ns/a/sa/a")).unwrap();
    let life = c.not_after().duration_since(c.not_before()).unwrap();
    assert_eq!(c.refresh_at(), c.not_before() + life / 2);
    let _ = Arc::new(c);
}
