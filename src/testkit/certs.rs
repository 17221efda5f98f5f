//! Certificate-authority fixtures: self-signed EC P-256 CAs written in the layout ztun reads
//! from `LOCAL_CA_DIR` (`root-cert.pem` + `ca-key.pem`, the key in PKCS#8).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};

/// The files of a CA written by [`write_ca_dir`], and their contents.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// The directory holding the files (pass it as `LOCAL_CA_DIR`).
    pub dir: PathBuf,
    /// `<dir>/root-cert.pem`: the self-signed CA certificate.
    pub root_cert: PathBuf,
    /// `<dir>/ca-key.pem`: the CA's private key, PKCS#8 PEM.
    pub ca_key: PathBuf,
    /// PEM of the CA certificate.
    pub cert_pem: String,
    /// PEM of the CA key.
    pub key_pem: String,
}

/// Creates `dir` if needed and writes a fresh mesh CA into it (organisation `ztun-test`).
pub fn write_ca_dir(dir: &Path) -> anyhow::Result<CaFiles> {
    write_named_ca_dir(dir, "ztun-test")
}

/// Like [`write_ca_dir`], but a second CA that shares nothing with the first (different key
/// and subject): workloads certified by it must not be trusted by the first mesh.
pub fn write_other_ca_dir(dir: &Path) -> anyhow::Result<CaFiles> {
    write_named_ca_dir(dir, "ztun-test-other")
}

/// A CA certificate's parameters: subject `O=<org>, CN=<org> <role> CA`, signing usages.
fn ca_params(
    org: &str,
    role: &str,
    constraints: BasicConstraints,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, org);
    name.push(DnType::CommonName, format!("{org} {role} CA"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes a fresh self-signed CA whose subject has organisation `org`.
pub fn write_named_ca_dir(dir: &Path, org: &str) -> anyhow::Result<CaFiles> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(org, "root", BasicConstraints::Unconstrained)?.self_signed(&key)?;

    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let files = CaFiles {
        dir: dir.to_path_buf(),
        root_cert: dir.join("root-cert.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    std::fs::write(&files.root_cert, &files.cert_pem)
        .with_context(|| format!("write {}", files.root_cert.display()))?;
    std::fs::write(&files.ca_key, &files.key_pem)
        .with_context(|| format!("write {}", files.ca_key.display()))?;
    Ok(files)
}

/// An intermediate CA signed by `root`, whose subject has organisation `org`: returns its
/// certificate and key as PEM (write them as `cert-chain.pem` and `ca-key.pem` to make the
/// CA directory sign through it).
pub fn intermediate(root: &CaFiles, org: &str) -> anyhow::Result<(String, String)> {
    let root_key = KeyPair::from_pem(&root.key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root.cert_pem, root_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(org, "intermediate", BasicConstraints::Constrained(0))?
        .signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CRL signed by the CA in `ca` (its own key) revoking the certificates whose serial numbers
/// (the big-endian bytes, as in the certificate) are `serials`; issued an hour ago, with the
/// next update `next_update` from now (negative: a stale CRL). PEM.
pub fn crl_pem(
    ca: &CaFiles,
    serials: &[Vec<u8>],
    next_update: time::Duration,
) -> anyhow::Result<String> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, key)?;
    crl_signed_by(&issuer, serials, next_update)
}

/// Like [`crl_pem`], signed by `issuer` (any key under any name: forged CRLs too).
pub fn crl_signed_by(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    serials: &[Vec<u8>],
    next_update: time::Duration,
) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let this_update = now - time::Duration::hours(1);
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update: (now + next_update).max(this_update + time::Duration::seconds(1)),
        crl_number: rcgen::SerialNumber::from(now.unix_timestamp_nanos() as u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: this_update,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer)?.pem()?)
}

/// The serial number of a certificate: the big-endian bytes of its INTEGER.
pub fn serial_of(der: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    Ok(cert.raw_serial().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_two_distinct_pkcs8_cas() {
        let base = std::env::temp_dir().join(format!("ztun-certs-test-{}", std::process::id()));
        let one = write_ca_dir(&base.join("one")).unwrap();
        let other = write_other_ca_dir(&base.join("other")).unwrap();
        assert!(one.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(std::fs::read_to_string(&one.root_cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert_ne!(one.cert_pem, other.cert_pem);
        assert_ne!(one.key_pem, other.key_pem);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
