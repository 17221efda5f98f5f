//! SPIFFE-aware certificate verification.
//!
//! Both sides first validate the peer chain to the trust roots that came with our own workload
//! certificate (webpki, with the right extended key usage). Names are never DNS or IP: the
//! identity is the leaf's single SPIFFE URI SAN. The client then requires that identity to be
//! one of the expected destination identities (checked right after the handshake, before any
//! request is sent, by [`peer_identity`](super::peer_identity) + the caller); the server requires the client's trust
//! domain to equal its own.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::chain::identity_of;
use super::crl::{Revocation, Side};
use crate::identity::Identity;

fn verify_chain(
    verifier: &Verifier,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    side: Side,
) -> Result<Identity, rustls::Error> {
    verifier
        .revocation
        .check(
            side,
            verifier.provider.signature_verification_algorithms.all,
            &verifier.anchors,
            end_entity,
            intermediates,
            now,
        )
        .map_err(pki_error)?;
    identity_of(end_entity).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => C::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => C::Expired,
        E::CertNotValidYet { .. } => C::NotValidYet,
        E::UnknownIssuer => C::UnknownIssuer,
        E::InvalidSignatureForPublicKey => C::BadSignature,
        E::CertRevoked => C::Revoked,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// What both verifiers check a chain with.
#[derive(Debug)]
pub(super) struct Verifier {
    /// The roots that came with our own certificate.
    pub(super) anchors: Arc<[TrustAnchor<'static>]>,
    /// The CRLs in force.
    pub(super) revocation: Revocation,
    /// Signature algorithms.
    pub(super) provider: Arc<CryptoProvider>,
}

/// Verifies an HBONE server (used by the client side).
#[derive(Debug)]
pub(super) struct ServerVerifier(pub(super) Arc<Verifier>);

impl Verifier {
    /// HBONE is TLS 1.3 only (both configurations offer nothing else), so this is never
    /// reached; if it were, the handshake fails.
    fn tls12_signature(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "HBONE is TLS 1.3 only: TLS 1.2 signatures are not verified".into(),
        ))
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(&self.0, end_entity, intermediates, now, Side::Client)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Verifies an HBONE client (used by the server side): chain to our roots, and a SPIFFE
/// identity in our own trust domain.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    pub(super) verifier: Arc<Verifier>,
    pub(super) trust_domain: Arc<str>,
}

/// The client's trust domain differs from ours.
#[derive(Debug, thiserror::Error)]
#[error("client trust domain {got:?} is not {want:?}")]
struct TrustDomainMismatch {
    got: String,
    want: Arc<str>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = verify_chain(&self.verifier, end_entity, intermediates, now, Side::Server)?;
        if id.trust_domain() != &*self.trust_domain {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    TrustDomainMismatch {
                        got: id.trust_domain().to_string(),
                        want: self.trust_domain.clone(),
                    },
                ))),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}
