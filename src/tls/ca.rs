//! What every CA of ztun shares, whether it runs on the node (`LOCAL_CA_DIR`, `FAKE_CA`) or
//! in `ztun control-plane`: the parameters of a CA certificate and how far back an issued
//! certificate starts to be valid.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, IsCa, KeyUsagePurpose};

/// How far before issuance a certificate with lifetime `ttl` starts to be valid, to tolerate
/// clock skew between nodes: a minute, but at most a quarter of the lifetime (so the
/// half-life of a short-lived certificate is still ahead when it is issued).
pub fn backdate(ttl: Duration) -> Duration {
    Duration::from_secs(60).min(ttl / 4)
}

/// Parameters of a self-signed CA certificate for `trust_domain`, valid from an hour ago for
/// ten years.
pub fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, trust_domain);
    dn.push(rcgen::DnType::CommonName, format!("ztun CA {trust_domain}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}
