//! Dialling an HBONE peer: TCP in the source pod's namespace, mTLS with the source identity,
//! the peer identity checked against the expected set, then an HTTP/2 connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::H2Settings;
use crate::dataplane::Error;
use crate::identity::Identity;
use crate::sockets::Sockets;
use crate::tls::crl::{Side, Tracked};
use crate::tls::{peer_identity, WorkloadCert};

/// Largest header list we accept in CONNECT responses.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// An established HBONE connection over `IO` (a TCP socket, or for the inner tunnel of
/// double HBONE an HTTP/2 stream): the request handle, and the task driving it.
pub struct Dialed<IO = super::Transport> {
    /// Opens CONNECT streams.
    pub send: SendRequest<Bytes>,
    /// Drives the connection; completes when it closes.
    pub connection: h2::client::Connection<tokio_rustls::client::TlsStream<IO>, Bytes>,
    /// The identity the peer proved.
    pub peer: Identity,
    /// The connection's entry in the CRL tracking (`None` without CRL checking).
    pub tracked: Option<Tracked>,
}

/// Dials `dst` presenting `cert`, accepting only a peer proving one of `expected`.
pub async fn dial(
    sockets: &Sockets,
    cert: &WorkloadCert,
    expected: &[Identity],
    dst: SocketAddr,
    settings: &H2Settings,
    handshake_timeout: Duration,
) -> Result<Dialed, Error> {
    let tcp = sockets
        .connect(dst, None)
        .await
        .map_err(|e| Error::ConnectPeer(Arc::new(e)))?;
    handshake(
        super::transport(tcp),
        dst,
        cert,
        expected,
        settings,
        handshake_timeout,
    )
    .await
}

/// mTLS presenting `cert` over `io` (already connected to `dst`), accepting only a peer
/// proving one of `expected`, then the HTTP/2 handshake.
pub async fn handshake<IO>(
    io: IO,
    dst: SocketAddr,
    cert: &WorkloadCert,
    expected: &[Identity],
    settings: &H2Settings,
    handshake_timeout: Duration,
) -> Result<Dialed<IO>, Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(cert.client_config());
    let crl_generation = cert.crl_generation();
    // SNI is disabled in the config; the name only satisfies the API.
    let name = ServerName::IpAddress(dst.ip().into());
    let tls = match tokio::time::timeout(handshake_timeout, connector.connect(name, io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if is_revoked(&e) => return Err(Error::CertRevoked),
        Ok(Err(e)) => return Err(Error::Tls(Arc::new(e))),
        Err(_) => return Err(Error::HandshakeTimeout),
    };
    let peer_chain = tls.get_ref().1.peer_certificates();
    let peer = peer_identity(peer_chain).map_err(Error::PeerIdentity)?;
    if !expected.contains(&peer) {
        return Err(Error::UnexpectedPeer {
            got: peer,
            expected: expected.first().cloned(),
        });
    }
    let tracked = cert
        .track_peer(Side::Client, peer_chain, crl_generation)
        .map_err(|_| Error::CertRevoked)?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.frame_size)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(settings.stream_window as usize)
        .enable_push(false)
        .handshake(tls)
        .await
        .map_err(|e| Error::H2(Arc::new(e)))?;
    Ok(Dialed {
        send,
        connection,
        peer,
        tracked,
    })
}

/// Whether a handshake failed because our verifier found the peer's certificate revoked.
pub(crate) fn is_revoked(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            )
        })
}
