//! CRL parsing, handshakes against CRLs (both ways, stale and forged CRLs), and revocation of
//! tracked connections on reload. Real rustls endpoints over an in-memory pipe.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::control::ca::LocalCa;
use crate::identity::Identity;
use crate::testkit::certs::{
    crl_pem, crl_signed_by, serial_of, write_ca_dir, write_other_ca_dir, CaFiles,
};
use crate::tls::tests::handshake;
use crate::tls::WorkloadCert;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

const HOUR: time::Duration = time::Duration::hours(1);

/// A CA directory, a CRL file (initially `crl`) and a CA minting certificates that check it.
struct Fixture {
    _dir: tempfile::TempDir,
    ca: CaFiles,
    crl_path: std::path::PathBuf,
    revocation: Revocation,
    issuer: LocalCa,
}

impl Fixture {
    fn new(crl: &str) -> Fixture {
        Fixture::with_ca(crl, write_ca_dir)
    }

    fn with_ca(crl: &str, write: fn(&Path) -> anyhow::Result<CaFiles>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(&dir.path().join("ca")).unwrap();
        let crl_path = dir.path().join("crl.pem");
        std::fs::write(&crl_path, crl).unwrap();
        let revocation = Revocation::load(&crl_path).unwrap();
        let issuer = LocalCa::load(&ca.dir, Duration::from_secs(3600))
            .unwrap()
            .with_revocation(revocation.clone());
        Fixture {
            _dir: dir,
            ca,
            crl_path,
            revocation,
            issuer,
        }
    }

    fn mint(&self, name: &str) -> WorkloadCert {
        self.issuer
            .mint(&id(&format!("spiffe://cluster.local/ns/default/sa/{name}")))
            .unwrap()
    }

    fn revoking(&self, certs: &[&WorkloadCert]) -> String {
        let serials: Vec<_> = certs
            .iter()
            .map(|c| serial_of(&c.chain()[0]).unwrap())
            .collect();
        crl_pem(&self.ca, &serials, HOUR).unwrap()
    }

    /// Replaces the file the way a ConfigMap update does: a new file renamed over the old.
    fn publish(&self, text: &str) {
        write_renamed(&self.crl_path, text);
    }
}

fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn parses_pem_with_several_crls_der_and_empty_files() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    let one = f.revoking(&[&a]);
    let two = f.revoking(&[&b]);
    let both = parse_crls(format!("{one}\n{two}").as_bytes()).unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both.serials().len(), 2);

    let der = CertificateRevocationListDer::pem_slice_iter(one.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let parsed = parse_crls(der.as_ref()).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed.serials(), &[hex(&serial_of(&a.chain()[0]).unwrap())]);

    assert!(parse_crls(b"").unwrap().is_empty());
    assert!(parse_crls(b" \n\t\n").unwrap().is_empty());
}

#[test]
fn garbage_and_pem_without_crls_are_refused() {
    assert!(matches!(
        parse_crls(b"not a crl at all"),
        Err(CrlError::Invalid { index: 1, .. })
    ));
    let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        parse_crls(cert_only.as_bytes()),
        Err(CrlError::Pem(_))
    ));
    let truncated = "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";
    assert!(parse_crls(truncated.as_bytes()).is_err());
    let dir = tempfile::tempdir().unwrap();
    let missing = Revocation::load(&dir.path().join("absent.pem")).unwrap_err();
    assert!(matches!(missing, CrlError::Read { .. }), "{missing}");
}

#[tokio::test]
async fn a_revoked_peer_is_refused_both_ways_and_others_are_not() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    let c = f.mint("c");
    f.publish(&f.revoking(&[&a]));
    assert_eq!(f.revocation.reload().unwrap(), Some(0));

    // a as client: b (server) refuses it.
    let (_, s) = handshake(&a, &b).await;
    let err = s.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    // a as server: c (client) refuses it.
    let (cl, _) = handshake(&c, &a).await;
    let err = cl.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    // b and c are not revoked.
    let (cl, s) = handshake(&b, &c).await;
    assert_eq!(cl.unwrap(), *c.identity());
    assert_eq!(s.unwrap(), *b.identity());

    let dump = f.revocation.dump();
    assert_eq!(dump["rejections"]["destination"], 1, "{dump}");
    assert_eq!(dump["rejections"]["source"], 1, "{dump}");
    let mut registry = prometheus_client::registry::Registry::default();
    f.revocation.register_metrics(&mut registry);
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
    assert!(
        metrics.contains("istio_crl_policy_rejections_total{reporter=\"destination\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stale_crl_fails_the_handshakes_it_covers() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    f.publish(&crl_pem(&f.ca, &[], -time::Duration::minutes(1)).unwrap());
    f.revocation.reload().unwrap();
    // The client checks the server's chain first and aborts; the server sees the alert.
    let (cl, s) = handshake(&a, &b).await;
    let err = cl.unwrap_err();
    assert!(err.contains("CrlExpired"), "{err}");
    assert!(s.is_err());
}

#[tokio::test]
async fn a_crl_under_the_cas_name_but_another_key_fails_closed() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    // Same subject as the CA, different key: a forgery.
    let forger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&f.ca.cert_pem, forger).unwrap();
    f.publish(&crl_signed_by(&issuer, &[], HOUR).unwrap());
    f.revocation.reload().unwrap();
    let (cl, s) = handshake(&a, &b).await;
    let err = cl.unwrap_err();
    assert!(err.contains("InvalidCrlSignature"), "{err}");
    assert!(s.is_err());
}

#[tokio::test]
async fn a_crl_of_another_ca_revokes_nothing_here() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    let other = Fixture::with_ca("", write_other_ca_dir);
    let o = other.mint("a");
    f.publish(&other.revoking(&[&o]));
    f.revocation.reload().unwrap();
    let (cl, s) = handshake(&a, &b).await;
    assert_eq!(cl.unwrap(), *b.identity());
    assert_eq!(s.unwrap(), *a.identity());
}

#[tokio::test]
async fn a_reload_signals_the_tracked_connections_it_revokes() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let b = f.mint("b");
    let seen = f.revocation.generation();
    let mut of_a = f
        .revocation
        .track(Side::Server, a.chain(), &a.verifier_anchors(), seen)
        .unwrap()
        .expect("tracked");
    let mut of_b = f
        .revocation
        .track(Side::Client, b.chain(), &b.verifier_anchors(), seen)
        .unwrap()
        .expect("tracked");
    let mut stream_of_a = of_a.signal();
    // The wait a relay polls in place, one for each connection.
    let mut wait_of_a = of_a.signal().into_wait();
    let mut wait_of_b = of_b.signal().into_wait();
    assert_eq!(f.revocation.dump()["trackedConnections"], 2);

    f.publish(&f.revoking(&[&a]));
    assert_eq!(f.revocation.reload().unwrap(), Some(1));
    tokio::time::timeout(Duration::from_secs(10), of_a.revoked())
        .await
        .expect("a's connection is signalled");
    tokio::time::timeout(Duration::from_secs(10), stream_of_a.revoked())
        .await
        .expect("and so are its streams");
    tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| wait_of_a.poll(cx)),
    )
    .await
    .expect("and so is a polled wait");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), of_b.revoked())
            .await
            .is_err(),
        "b is not revoked"
    );
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        wait_of_b.poll(&mut cx).is_pending(),
        "b's wait is not fired"
    );
    assert!(
        crate::tls::RevokedSignal::never()
            .into_wait()
            .poll(&mut cx)
            .is_pending(),
        "an untracked connection's wait never fires"
    );
    assert_eq!(f.revocation.dump()["rejections"]["destination"], 1);
    drop(of_a);
    assert_eq!(f.revocation.dump()["trackedConnections"], 1);
}

#[test]
fn a_connection_tracked_after_a_reload_it_missed_is_checked_at_once() {
    let f = Fixture::new("");
    let a = f.mint("a");
    // The handshake ran at this generation…
    let seen = f.revocation.generation();
    // …then a reload revoked a before the connection was tracked.
    f.publish(&f.revoking(&[&a]));
    f.revocation.reload().unwrap();
    assert!(f
        .revocation
        .track(Side::Server, a.chain(), &a.verifier_anchors(), seen)
        .is_err());
    assert_eq!(f.revocation.dump()["trackedConnections"], 0);
}

#[test]
fn a_bad_or_missing_file_keeps_the_crls_in_force() {
    let f = Fixture::new("");
    let a = f.mint("a");
    f.publish(&f.revoking(&[&a]));
    f.revocation.reload().unwrap();
    let generation = f.revocation.generation();

    f.publish("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n");
    assert!(f.revocation.reload().is_err());
    // Reported once: the same bad file is not read again.
    assert_eq!(f.revocation.reload().unwrap(), None);
    std::fs::remove_file(&f.crl_path).unwrap();
    assert!(matches!(f.revocation.reload(), Err(CrlError::Read { .. })));
    assert_eq!(f.revocation.reload().unwrap(), None);

    let dump = f.revocation.dump();
    assert_eq!(f.revocation.generation(), generation);
    assert_eq!(dump["crls"], 1, "{dump}");
    assert_eq!(dump["reloads"]["failed"], 2, "{dump}");
    // Still revoked.
    let seen = f.revocation.generation() - 1;
    assert!(f
        .revocation
        .track(Side::Server, a.chain(), &a.verifier_anchors(), seen)
        .is_err());
}

#[tokio::test]
async fn the_watcher_picks_up_a_renamed_file() {
    let f = Fixture::new("");
    let a = f.mint("a");
    let mut tracked = f
        .revocation
        .track(Side::Server, a.chain(), &a.verifier_anchors(), 1)
        .unwrap()
        .unwrap();
    let watcher = tokio::spawn(f.revocation.clone().watch(Duration::from_millis(20)));
    f.publish(&f.revoking(&[&a]));
    tokio::time::timeout(Duration::from_secs(30), tracked.revoked())
        .await
        .expect("the watcher reloads the renamed file");
    watcher.abort();
}

#[test]
fn disabled_revocation_tracks_nothing_and_checks_nothing() {
    let r = Revocation::disabled();
    assert!(!r.is_enabled());
    assert_eq!(r.generation(), 0);
    let ca = LocalCa::ephemeral("cluster.local", Duration::from_secs(60)).unwrap();
    let a = ca.mint(&id("spiffe://cluster.local/ns/x/sa/a")).unwrap();
    assert!(r
        .track(Side::Server, a.chain(), &a.verifier_anchors(), 0)
        .unwrap()
        .is_none());
    assert!(r.dump().is_null());
    assert_eq!(r.reload().unwrap(), None);
}
