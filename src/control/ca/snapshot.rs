//! A point-in-time view of the certificate store for the admin config dump (`certificates`),
//! in the shape `istioctl ztunnel-config certificates` reads. Public material only: a
//! [`CertSnapshot`] never holds a private key.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

use super::state::{rfc3339, CertState};
use crate::identity::Identity;
use crate::tls::pem_of;

/// One identity's entry in the config dump.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSnapshot {
    /// The workload identity.
    pub identity: Identity,
    /// `Initializing`, `Available` or `Unavailable: <reason>`.
    pub state: String,
    /// Leaf first, then intermediates; empty unless available.
    pub cert_chain: Vec<CertInfo>,
    /// The trust roots that came with the certificate; empty unless available.
    pub root_certs: Vec<CertInfo>,
}

/// One certificate of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// The certificate as PEM text; serialized base64-encoded, as istioctl expects.
    #[serde(serialize_with = "base64_pem")]
    pub pem: String,
    /// Serial number, decimal.
    pub serial_number: String,
    /// Distinguished name of the issuer (e.g. `O=example, CN=example root CA`).
    pub issuer: String,
    /// Start of validity, RFC 3339 UTC.
    pub valid_from: String,
    /// End of validity, RFC 3339 UTC.
    pub expiration_time: String,
}

impl CertSnapshot {
    /// The snapshot of `identity` in `state`.
    pub fn new(identity: Identity, state: &CertState) -> CertSnapshot {
        let (state, cert_chain, root_certs) = match state {
            CertState::Initializing => ("Initializing".to_string(), Vec::new(), Vec::new()),
            CertState::Unavailable(reason) => {
                (format!("Unavailable: {reason}"), Vec::new(), Vec::new())
            }
            CertState::Available(cert) => (
                "Available".to_string(),
                cert.chain().iter().map(CertInfo::of).collect(),
                cert.roots().iter().map(CertInfo::of).collect(),
            ),
        };
        CertSnapshot {
            identity,
            state,
            cert_chain,
            root_certs,
        }
    }
}

impl CertInfo {
    /// Describes one DER certificate; unparsable fields read `<invalid>`.
    pub fn of(der: &CertificateDer<'_>) -> CertInfo {
        let parsed = x509_parser::parse_x509_certificate(der).ok();
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            let at = if secs >= 0 {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
            } else {
                std::time::UNIX_EPOCH
            };
            rfc3339(at)
        };
        let invalid = || "<invalid>".to_string();
        CertInfo {
            pem: pem_of(der),
            serial_number: parsed
                .as_ref()
                .map(|(_, c)| c.tbs_certificate.serial.to_string())
                .unwrap_or_else(invalid),
            issuer: parsed
                .as_ref()
                .map(|(_, c)| c.issuer().to_string())
                .unwrap_or_else(invalid),
            valid_from: parsed
                .as_ref()
                .map(|(_, c)| time(c.validity().not_before))
                .unwrap_or_else(invalid),
            expiration_time: parsed
                .as_ref()
                .map(|(_, c)| time(c.validity().not_after))
                .unwrap_or_else(invalid),
        }
    }
}

fn base64_pem<S: serde::Serializer>(pem: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(pem))
}
