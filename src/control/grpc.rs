//! TLS gRPC channels to a control-plane server (istiod, or `ztun control-plane`) and the
//! request metadata every call carries. Used by the CA client; fit for the xDS client too.
//!
//! - The server is verified with webpki against the configured roots ([`RootCert`]). A root
//!   file is re-read at every (re)connection, so a rotated `root-cert.pem` takes effect
//!   without a restart. The accepted names are the address's host and, when configured, an
//!   alternative hostname (`ALT_CA_HOSTNAME`, `ALT_XDS_HOSTNAME`).
//! - ALPN `h2`; TLS 1.2 or 1.3 with aws-lc (istiod speaks both). An `http://` address is
//!   dialled in plaintext (local testing only).
//! - `SYSTEM` roots are the distribution's CA bundle (Debian, RHEL or Alpine path).
//! - The bearer token is read for every call ([`bearer_token`]): projected tokens rotate.
//!
//! Allowed imports: `config`, `tls` (PEM parsing).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use crate::config::{AuthToken, RootCert};

/// Why a control-plane channel or request cannot be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// The address is not an `http(s)://host:port` URI.
    #[error("invalid control-plane address {address:?}: {reason}")]
    Address {
        /// The address as configured.
        address: String,
        /// What is wrong with it.
        reason: Arc<str>,
    },
    /// The trust roots cannot be loaded.
    #[error("control-plane root certificates: {0}")]
    Roots(Arc<str>),
    /// The token file cannot be read.
    #[error("reading the bearer token {path}: {reason}")]
    Token {
        /// The token file.
        path: String,
        /// The I/O error.
        reason: Arc<str>,
    },
    /// A header name or value is not acceptable gRPC metadata.
    #[error("request header {0:?} is not valid gRPC metadata")]
    Header(String),
}

/// Settings of a TLS channel to a control-plane server.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// `https://host:port`, or `http://host:port` for plaintext.
    pub address: String,
    /// Roots that verify the server's certificate.
    pub roots: RootCert,
    /// A name accepted in the server's certificate besides the address's host.
    pub alt_hostname: Option<String>,
    /// TCP connect plus TLS handshake deadline.
    pub connect_timeout: Duration,
    /// Deadline of each request.
    pub request_timeout: Duration,
}

/// A lazily connected channel: nothing is dialled until the first request, and a broken
/// connection is re-established (re-reading the roots) on the next one.
pub fn channel(config: &ChannelConfig) -> Result<Channel, ChannelError> {
    channel_pinging(config, PING_INTERVAL)
}

/// HTTP/2 PINGs every 30 s, 10 s to answer: a control plane that vanished without closing
/// the connection (node lost, network cut) is noticed, and the client reconnects.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// [`channel`] sending HTTP/2 PINGs every `ping_interval`.
fn channel_pinging(
    config: &ChannelConfig,
    ping_interval: Duration,
) -> Result<Channel, ChannelError> {
    let bad = |reason: &str| ChannelError::Address {
        address: config.address.clone(),
        reason: reason.into(),
    };
    let origin: Uri = config
        .address
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let tls = match origin.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be https:// (or http:// for plaintext)")),
    };
    let authority = origin.authority().ok_or_else(|| bad("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let server_name = ServerName::try_from(host.clone()).map_err(|_| bad("invalid host"))?;
    let alt_name = match &config.alt_hostname {
        Some(alt) => {
            Some(
                ServerName::try_from(alt.clone()).map_err(|_| ChannelError::Address {
                    address: alt.clone(),
                    reason: "invalid alternative hostname".into(),
                })?,
            )
        }
        None => None,
    };
    // The channel dials `http://`: TLS is the connector's job, not tonic's.
    let dial: Uri = format!("http://{authority}")
        .parse()
        .map_err(|_| bad("invalid authority"))?;
    let endpoint = Endpoint::from(dial)
        .origin(origin)
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .http2_keep_alive_interval(ping_interval)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = Connector {
        host: host.into(),
        port,
        tls: tls.then(|| TlsSettings {
            roots: Arc::new(config.roots.clone()),
            server_name,
            alt_name,
        }),
        timeout: config.connect_timeout,
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// The `authorization` value for `token` (`Bearer <token>`), reading a token file now (a
/// small local file: read synchronously); `None` without a token.
pub fn bearer_token(token: &AuthToken) -> Result<Option<AsciiMetadataValue>, ChannelError> {
    let value = match token {
        AuthToken::None => return Ok(None),
        AuthToken::Static(t) => t.trim().to_string(),
        AuthToken::File(path) => std::fs::read_to_string(path)
            .map_err(|e| ChannelError::Token {
                path: path.display().to_string(),
                reason: e.to_string().into(),
            })?
            .trim()
            .to_string(),
    };
    AsciiMetadataValue::try_from(format!("Bearer {value}"))
        .map(Some)
        .map_err(|_| ChannelError::Header("authorization".into()))
}

/// The fixed metadata of every request: `clusterid` and the extra configured headers.
pub fn static_metadata(
    cluster_id: &str,
    headers: &BTreeMap<String, String>,
) -> Result<MetadataMap, ChannelError> {
    let mut map = MetadataMap::new();
    let pairs = std::iter::once(("clusterid", cluster_id))
        .chain(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (name, value) in pairs {
        let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| ChannelError::Header(name.to_string()))?;
        let value = AsciiMetadataValue::try_from(value)
            .map_err(|_| ChannelError::Header(name.to_string()))?;
        map.insert(key, value);
    }
    Ok(map)
}

/// Loads the roots now (a file is read at every call).
pub fn load_roots(roots: &RootCert) -> Result<rustls::RootCertStore, ChannelError> {
    let certs: Vec<CertificateDer<'static>> = match roots {
        RootCert::File(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ChannelError::Roots(format!("reading {}: {e}", path.display()).into())
            })?;
            crate::tls::parse_pem_certs(&pem)
                .map_err(|e| ChannelError::Roots(format!("{}: {e}", path.display()).into()))?
        }
        RootCert::Static(pem) => crate::tls::parse_pem_certs(pem.as_bytes())
            .map_err(|e| ChannelError::Roots(e.to_string().into()))?,
        RootCert::System => {
            let (path, pem) = SYSTEM_BUNDLES
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|pem| (*p, pem)))
                .ok_or_else(|| ChannelError::Roots("no system CA bundle found".into()))?;
            crate::tls::parse_pem_certs(&pem)
                .map_err(|e| ChannelError::Roots(format!("{path}: {e}").into()))?
        }
    };
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ChannelError::Roots("no usable root certificate".into()));
    }
    Ok(store)
}

/// Trust bundles tried, in order, for `SYSTEM` roots (Debian, RHEL, Alpine and others).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Dials the configured server (the URI tonic passes is the plaintext dial URI), then TLS with
/// freshly loaded roots; tonic's channel calls it for every new connection.
#[derive(Clone)]
struct Connector {
    host: Arc<str>,
    port: u16,
    tls: Option<TlsSettings>,
    timeout: Duration,
}

#[derive(Clone)]
struct TlsSettings {
    roots: Arc<RootCert>,
    server_name: ServerName<'static>,
    alt_name: Option<ServerName<'static>>,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<Io>, std::io::Error>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Io>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let connect = async {
                let tcp = TcpStream::connect((&*this.host, this.port)).await?;
                tcp.set_nodelay(true)?;
                // TCP keepalive 300 s / 75 s / 9 probes, as Istio's agents use toward istiod.
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(300))
                    .with_interval(Duration::from_secs(75))
                    .with_retries(9);
                socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
                let Some(tls) = this.tls else {
                    return Ok::<_, std::io::Error>(Io::Plain(tcp));
                };
                let io_err = |e: ChannelError| std::io::Error::other(e);
                let roots = load_roots(&tls.roots).map_err(io_err)?;
                let config = client_config(roots, tls.alt_name).map_err(io_err)?;
                let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(tls.server_name, tcp)
                    .await?;
                Ok(Io::Tls(Box::new(stream)))
            };
            let io = tokio::time::timeout(this.timeout, connect)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            Ok(TokioIo::new(io))
        })
    }
}

/// A plaintext or TLS connection to the server.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn client_config(
    roots: rustls::RootCertStore,
    alt_name: Option<ServerName<'static>>,
) -> Result<rustls::ClientConfig, ChannelError> {
    // TLS 1.3 with AES-GCM and the process's key exchanges, as ztunnel talks to istiod.
    let provider = crate::tls::crypto_provider();
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ChannelError::Roots(e.to_string().into()))?;
    let verifier = Arc::new(AltNameVerifier {
        inner: webpki,
        alt_name,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ChannelError::Roots(e.to_string().into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Standard webpki verification that also accepts one alternative server name.
#[derive(Debug)]
struct AltNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    alt_name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for AltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        let first = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match (&first, &self.alt_name) {
            (
                Err(rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                )),
                Some(alt),
            ) => self
                .inner
                .verify_server_cert(end_entity, intermediates, alt, ocsp_response, now),
            _ => first,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    /// An HTTP/2 frame: 9-byte head, then `payload`.
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    /// A bare HTTP/2 server for one connection: answers SETTINGS and PINGs, counts the PINGs,
    /// and never answers a request, so the client's stream stays open and idle.
    async fn ping_counter(listener: TcpListener, pings: Arc<AtomicUsize>) -> std::io::Result<()> {
        let (mut s, _) = listener.accept().await?;
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await?;
        s.write_all(&frame(4, 0, &[])).await?;
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await?;
            match (head[3], head[4] & 1) {
                (4, 0) => s.write_all(&frame(4, 1, &[])).await?,
                (6, 0) => {
                    pings.fetch_add(1, Ordering::SeqCst);
                    s.write_all(&frame(6, 1, &payload)).await?;
                }
                _ => {}
            }
        }
    }

    fn plaintext(port: u16) -> ChannelConfig {
        ChannelConfig {
            address: format!("http://127.0.0.1:{port}"),
            roots: RootCert::System,
            alt_hostname: None,
            connect_timeout: WAIT,
            request_timeout: Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn an_idle_stream_is_kept_alive_with_http2_pings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pings = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn(ping_counter(listener, pings.clone()));
        let channel = channel_pinging(&plaintext(port), Duration::from_millis(100)).unwrap();
        // One request the server never answers: the connection carries an open, silent stream.
        let call = tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unknown(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static("/test.Silent/Wait");
            grpc.unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        while pings.load(Ordering::SeqCst) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} PINGs on the idle connection",
                pings.load(Ordering::SeqCst)
            );
            assert!(!call.is_finished(), "the request ended: {:?}", call.await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        call.abort();
        server.abort();
    }

    #[tokio::test]
    async fn control_plane_sockets_have_tcp_keepalive_300s_75s_9() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut connector = Connector {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            timeout: WAIT,
        };
        let uri: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let io = tonic::codegen::Service::call(&mut connector, uri)
            .await
            .unwrap();
        let Io::Plain(tcp) = io.inner() else {
            panic!("a TLS connection to an http:// address");
        };
        let socket = socket2::SockRef::from(tcp);
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE off");
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(75)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 9);
    }
}
