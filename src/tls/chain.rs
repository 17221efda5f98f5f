//! What the handshake verifiers and the CRL re-checks both need: webpki chain validation
//! for a TLS side ([`check_path`]) and the SPIFFE identity a leaf carries ([`identity_of`]).

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::identity::Identity;

/// The signature algorithms chains and CRLs are checked with.
pub(super) type Algs = [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm];

/// Why a certificate does not yield a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate is not parsable X.509.
    #[error("certificate is not valid X.509")]
    Malformed,
    /// No URI SAN, or more than one.
    #[error("certificate must carry exactly one URI SAN (found {0})")]
    UriSanCount(usize),
    /// An otherName SAN is present: ambiguous identity, refused.
    #[error("certificate carries an otherName SAN")]
    OtherName,
    /// The URI SAN is not a SPIFFE workload identity.
    #[error("URI SAN is not a SPIFFE workload identity: {0}")]
    NotSpiffe(crate::identity::ParseError),
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoCertificate,
}

/// The SPIFFE identity of a leaf certificate: its one and only URI SAN.
pub fn identity_of(der: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Malformed)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Malformed)?;
    let Some(san) = san else {
        return Err(IdentityError::UriSanCount(0));
    };
    let mut uri = None;
    let mut count = 0;
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => {
                count += 1;
                uri = Some(*u);
            }
            GeneralName::OtherName(..) => return Err(IdentityError::OtherName),
            _ => {}
        }
    }
    match (count, uri) {
        (1, Some(u)) => u.parse().map_err(IdentityError::NotSpiffe),
        _ => Err(IdentityError::UriSanCount(count)),
    }
}

/// The identity of the peer of an established TLS connection.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, IdentityError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoCertificate)?;
    identity_of(leaf)
}

/// Which extended key usage a chain must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Usage {
    /// A TLS server's chain (checked by the client).
    Server,
    /// A TLS client's chain (checked by the server).
    Client,
}

/// Chain validation to `anchors` at `now` for `usage`, with every certificate of the chain
/// checked against `crls` when there are any (unknown status allowed, expired CRLs refused).
pub(super) fn check_path(
    algs: &Algs,
    anchors: &[TrustAnchor<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: Usage,
    crls: &[&webpki::CertRevocationList<'_>],
) -> Result<(), webpki::Error> {
    let ee = webpki::EndEntityCert::try_from(end_entity)?;
    let revocation = webpki::RevocationOptionsBuilder::new(crls).ok().map(|b| {
        b.with_depth(webpki::RevocationCheckDepth::Chain)
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
            .build()
    });
    let usage = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(algs, anchors, intermediates, now, usage, revocation, None)
        .map(|_| ())
}
