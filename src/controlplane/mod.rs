//! `ztun control-plane`: a built-in control plane serving delta ADS
//! (`istio.workload.Address`, `istio.security.Authorization`) from a mesh file in ztunnel's
//! local YAML format, so a mesh runs — and is tested — without Istio.
//!
//! - The mesh file is loaded with `control::local` (a malformed file at startup is fatal) and
//!   watched ([`store::MeshWatcher`]); a change becomes a new generation and every connected
//!   client receives only what changed. A malformed file later keeps the last good state.
//! - Resources are named as istiod names them (workloads by uid, services by
//!   `namespace/hostname`, policies by `namespace/name`) and versioned by a hash of their
//!   encoding, so reconnecting clients that send `initial_resource_versions` receive only
//!   the difference, even across a control-plane restart.
//! - Each generation encodes every resource once; all clients' responses are framed from
//!   those shared bytes and written in bounded chunks ([`wire`]), and a synced wildcard
//!   client is tracked as "has this generation", so a connected node costs the control plane
//!   little beyond its connection.
//! - TLS with a serving certificate issued at startup from the CA in `--ca-dir` (created
//!   there on first start), for `istiod.istio-system.svc`, `localhost`, the listen IP and
//!   every `--san`.
//!
//! - Every caller authenticates with a bearer token of the `--tokens` file ([`auth`]), as
//!   istiod authenticates its xDS clients: a stream without a known token gets
//!   `UNAUTHENTICATED` before any resource. Without a tokens file nobody is served unless
//!   `--dangerous-unauthenticated-xds` opts xDS out of authentication.
//! - The same port serves the CA (`istio.v1.auth.IstioCertificateService`, [`ca`]): workload
//!   certificates signed by the `--ca-dir` CA for callers holding a `--tokens` token, limited
//!   to the identities the mesh file schedules on the caller's node.
//!
//! Adding another service to the same port: add it in [`services`] (ADS is served by
//! [`service::AdsServer`], not tonic's generated server).
//!
//! Allowed imports: `control::local`, `control::ca`, `control::xds` (wire types and resource
//! types), `state::model`, `tls` (PEM parsing).

pub mod ads;
pub mod auth;
pub mod ca;
pub mod encode;
mod reload;
mod service;
mod silence;
pub mod store;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tracing::{info, warn};

use crate::control::local::LocalConfigError;

pub use ads::{Ads, XdsAuth};
pub use store::{MeshResources, MeshWatcher};
pub use tls::Ca;

/// Default listen address (istiod's xDS port).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15012);
/// Largest request accepted from a client.
const MAX_REQUEST: usize = 16 << 20;
/// HTTP/2 PINGs to clients, so that an idle client sends at least the answer; a client from
/// which nothing at all arrived for both together is closed ([`silence`]), as istiod's
/// grpc-go keepalive (30 s, 10 s) judges any frame read as a sign of life.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own verdict on a PING's answer, which counts neither WINDOW_UPDATEs nor an answer
/// queued behind a large push: kept out of the way, the silence limit decides.
const PING_ANSWER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Command-line arguments of `ztun control-plane`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--config`: the mesh file (ztunnel's local YAML format).
    pub config: PathBuf,
    /// `--listen`: where to serve; default `0.0.0.0:15012`.
    pub listen: SocketAddr,
    /// `--ca-dir`: the mesh CA (`root-cert.pem`, `ca-key.pem`), created if absent.
    pub ca_dir: PathBuf,
    /// `--san`: extra names (DNS or IP) for the serving certificate.
    pub sans: Vec<String>,
    /// `--tokens`: bearer token → node, authenticating CA and xDS callers (see [`auth`]);
    /// without it both refuse every request (xDS unless `dangerous_unauthenticated_xds`).
    pub tokens: Option<PathBuf>,
    /// `--dangerous-unauthenticated-xds`: serve the whole mesh over xDS to anyone who
    /// completes the TLS handshake, token or not. Off by default.
    pub dangerous_unauthenticated_xds: bool,
    /// `--max-cert-ttl`: longest workload certificate lifetime the CA grants; default 24 h.
    pub max_cert_ttl: Duration,
}

/// Usage text of `ztun control-plane`.
pub const USAGE: &str = "\
Usage: ztun control-plane --config <mesh.yaml> --ca-dir <dir> [--listen <addr:port>] [--san <name>]...
                         [--tokens <file>] [--max-cert-ttl <duration>]
                         [--dangerous-unauthenticated-xds]

  --config <file>      mesh file (ztunnel's local YAML format), watched for changes
  --ca-dir <dir>       mesh CA: root-cert.pem + ca-key.pem (created if absent)
  --listen <addr:port> where to serve delta xDS over TLS (default 0.0.0.0:15012)
  --san <name>         extra DNS name or IP for the serving certificate (repeatable)
  --tokens <file>      who may call: one `<token> <node>` per line, sent as
                       `authorization: Bearer <token>`; xDS serves the mesh to any known
                       token, the CA signs only for workloads scheduled on the token's node
                       (no file: both refuse every caller)
  --max-cert-ttl <d>   longest certificate lifetime granted (e.g. 12h; default 24h)
  --dangerous-unauthenticated-xds
                       serve xDS without a token to anyone completing the TLS handshake
";

impl Args {
    /// Parses the arguments after `control-plane` (`--flag value` or `--flag=value`).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, Error> {
        let mut config = None;
        let mut listen = DEFAULT_LISTEN;
        let mut ca_dir = None;
        let mut sans = Vec::new();
        let mut tokens = None;
        let mut dangerous_unauthenticated_xds = false;
        let mut max_cert_ttl = ca::CaServerConfig::DEFAULT_MAX_TTL;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--dangerous-unauthenticated-xds" if inline.is_none() => {
                    dangerous_unauthenticated_xds = true;
                }
                "--config" => config = Some(PathBuf::from(value()?)),
                "--ca-dir" => ca_dir = Some(PathBuf::from(value()?)),
                "--san" => sans.push(value()?),
                "--tokens" => tokens = Some(PathBuf::from(value()?)),
                "--max-cert-ttl" => {
                    let v = value()?;
                    max_cert_ttl = ca::CaServerConfig::parse_ttl(&v).ok_or_else(|| {
                        Error::Usage(format!("--max-cert-ttl {v:?} is not a duration like 12h"))
                    })?;
                }
                "--listen" => {
                    let v = value()?;
                    listen = v
                        .parse()
                        .map_err(|_| Error::Usage(format!("--listen {v:?} is not <addr:port>")))?;
                }
                other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
            }
        }
        Ok(Args {
            config: config.ok_or_else(|| Error::Usage("--config is required".into()))?,
            listen,
            ca_dir: ca_dir.ok_or_else(|| Error::Usage("--ca-dir is required".into()))?,
            sans,
            tokens,
            dangerous_unauthenticated_xds,
            max_cert_ttl,
        })
    }

    /// The serving certificate's names: istiod's, `localhost`, the listen IP (unless it is a
    /// wildcard) and every `--san`.
    pub fn serving_sans(&self) -> Vec<String> {
        let mut sans = vec![tls::ISTIOD_SAN.to_owned(), "localhost".to_owned()];
        if !self.listen.ip().is_unspecified() {
            sans.push(self.listen.ip().to_string());
        }
        for san in &self.sans {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        sans
    }
}

/// Why the control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The mesh file cannot be loaded at startup.
    #[error("mesh file: {0}")]
    Mesh(#[from] LocalConfigError),
    /// The CA directory is unusable.
    #[error("CA {path}: {reason}")]
    Ca {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// Issuing the serving certificate failed.
    #[error("issuing the serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration is invalid.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate service cannot start.
    #[error("CA service: {0}")]
    CaService(#[from] ca::CaServerError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A started control plane: the mesh watcher and the bound listener, ready to serve.
pub struct ControlPlane {
    watcher: MeshWatcher,
    ads: Ads,
    ca: ca::CaService,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    /// PING interval, and how much longer a client may stay silent.
    keepalive: Duration,
    keepalive_timeout: Duration,
}

impl ControlPlane {
    /// Loads the mesh file and the CA (creating it if absent), issues the serving certificate
    /// and binds the listener.
    pub async fn start(args: &Args) -> Result<ControlPlane, Error> {
        let (watcher, mesh) = MeshWatcher::start(&args.config)?;
        let ca = Ca::load_or_create(&args.ca_dir)?;
        let ca_service = ca::CaService::new(
            ca::CaServerConfig {
                ca_dir: args.ca_dir.clone(),
                tokens: args.tokens.clone(),
                max_ttl: args.max_cert_ttl,
            },
            ca::MeshFileSchedule::load(&args.config)?,
        )?;
        let xds_auth = if args.dangerous_unauthenticated_xds {
            warn!(
                "--dangerous-unauthenticated-xds: anyone reaching the port receives the whole mesh"
            );
            XdsAuth::DangerousUnauthenticated
        } else {
            XdsAuth::Tokens(ca_service.tokens())
        };
        if !ca_service.tokens().configured() {
            warn!(
                xds = if args.dangerous_unauthenticated_xds {
                    "served to anyone"
                } else {
                    "refused"
                },
                "no --tokens file: every certificate request will be refused"
            );
        }
        let sans = args.serving_sans();
        let (chain, key) = ca.serving_cert(&sans)?;
        let tls = Arc::new(tls::server_config(chain, key)?);
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| Error::Io {
                what: format!("binding {}", args.listen),
                source,
            })?;
        info!(listen = %args.listen, ?sans, ca_dir = %args.ca_dir.display(), "control plane listening");
        Ok(ControlPlane {
            watcher,
            ads: Ads::new(mesh, xds_auth),
            ca: ca_service,
            listener,
            tls,
            keepalive: KEEPALIVE,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
        })
    }

    /// Pings clients every `interval` and closes one silent for `interval + timeout`
    /// (tests: the defaults are 30 s and 10 s).
    #[cfg(test)]
    pub(crate) fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        (self.keepalive, self.keepalive_timeout) = (interval, timeout);
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(|source| Error::Io {
            what: "reading the listen address".into(),
            source,
        })
    }

    /// The ADS service (e.g. to read how many clients are connected).
    pub fn ads(&self) -> &Ads {
        &self.ads
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let routes = services(&self.ads, &self.ca);
        let watcher = tokio::spawn(self.watcher.run());
        let incoming = tls::incoming(
            self.listener,
            self.tls,
            self.keepalive + self.keepalive_timeout,
        );
        let ads = self.ads.clone();
        let shutdown = async move {
            shutdown.await;
            // xDS streams never end on their own: end them so the drain can finish.
            ads.stop_streams();
        };
        let served = Server::builder()
            .http2_keepalive_interval(Some(self.keepalive))
            .http2_keepalive_timeout(Some(PING_ANSWER_TIMEOUT))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        watcher.abort();
        served.map_err(Error::from)
    }
}

/// Every gRPC service the control plane serves on its TLS port: delta ADS and the CA
/// (`istio.v1.auth.IstioCertificateService`).
pub fn services(ads: &Ads, ca: &ca::CaService) -> Routes {
    let mut routes = RoutesBuilder::default();
    routes.add_service(service::AdsServer::new(ads.clone(), MAX_REQUEST));
    routes.add_service(ca.clone().into_server());
    routes.routes()
}

/// Runs `ztun control-plane` until SIGTERM/SIGINT.
pub fn run(args: Args) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ztun-cp")
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "building the runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let cp = ControlPlane::start(&args).await?;
        cp.serve(shutdown_signal()).await?;
        info!("control plane stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down");
}
