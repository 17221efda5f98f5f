//! The CA of `ztun control-plane`: `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! served on the same TLS listener as xDS, signing with the `--ca-dir` CA.
//!
//! **CA directory** (`--ca-dir`): the `LOCAL_CA_DIR` layout ([`crate::control::ca::LocalCa`]):
//! `root-cert.pem` (the trust bundle, one or more roots), `ca-key.pem` (the signing key) and
//! optionally `cert-chain.pem` (signing intermediate first). A response is
//! `[leaf, intermediates…, root bundle]`. The directory is re-read when one of its files
//! changes (write the new file elsewhere and rename it in place); if the new content is not
//! usable the previous CA keeps signing and the error is logged. A root rotation A → B is
//! rolled out without a failed handshake in four steps, each waiting for every node to renew:
//! bundle `A` signed by A → bundle `A+B` signed by A (everyone trusts both) → bundle `A+B`
//! signed by B (`ca-key.pem` = B's key; the signing root is the bundle entry matching the
//! key) → bundle `B` signed by B.
//!
//! **Tokens file** (`--tokens`): who may ask. One `<token> <node>` pair per line, separated by
//! whitespace; blank lines and lines starting with `#` are ignored; a token maps to one node.
//! ```text
//! # token                           node
//! 3f9c2b7e0d5a4e1f8a6b9c0d1e2f3a4b  worker-1
//! 7a1e5d9c3b8f4a2e6d0c9b8a7f6e5d4c  worker-2
//! ```
//! Re-read when it changes. Without a tokens file every request is refused. The same tokens
//! authenticate delta ADS clients ([`super::auth`]).
//!
//! **Authorization** (like istiod's node-restricted impersonation): the caller's bearer token
//! names its node; the requested identity is the CSR's single URI SAN, which must equal the
//! `ImpersonatedIdentity` metadata when present; a workload with that identity must be
//! scheduled on the caller's node (its `node` field in the mesh file). The CSR signature is
//! verified. Unknown or missing token → `UNAUTHENTICATED`; identity not on the caller's node
//! → `PERMISSION_DENIED`; malformed request → `INVALID_ARGUMENT`. The granted lifetime is the
//! requested one capped at `--max-cert-ttl` (24 h by default; a request of 0 gets the cap).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateSigningRequestParams, SanType};
use tonic::{Request, Response, Status};

use super::auth::{Tokens, Unauthenticated};
use super::reload::Reloading;
use crate::control::ca::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::control::ca::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::control::ca::{LocalCa, LocalCaError, IMPERSONATED_IDENTITY};
use crate::identity::Identity;
use crate::state::Reader;
use crate::tls::ca::backdate;
use crate::tls::pem_of;

/// Largest CSR accepted, in bytes of PEM.
const MAX_CSR: usize = 16 * 1024;

/// Settings of the control plane's CA.
#[derive(Debug, Clone)]
pub struct CaServerConfig {
    /// `--ca-dir`: the signing CA.
    pub ca_dir: PathBuf,
    /// `--tokens`: bearer token → node; `None` refuses every request.
    pub tokens: Option<PathBuf>,
    /// `--max-cert-ttl`: longest lifetime granted; default 24 h.
    pub max_ttl: Duration,
}

impl CaServerConfig {
    /// Default maximum certificate lifetime.
    pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

    /// Parses a `--max-cert-ttl` value: a positive whole number of seconds, optionally with
    /// a unit `s`, `m`, `h` or `d` (`90s`, `12h`).
    pub fn parse_ttl(text: &str) -> Option<Duration> {
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => text.split_at(i),
            None => (text, "s"),
        };
        let n: u64 = digits.parse().ok().filter(|n| *n > 0)?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        };
        n.checked_mul(scale).map(Duration::from_secs)
    }
}

/// Why the CA cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CaServerError {
    /// The CA directory is not usable.
    #[error("--ca-dir: {0}")]
    Ca(#[from] LocalCaError),
    /// The mesh file is not usable.
    #[error("mesh file {path}: {reason}")]
    Mesh {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokens file is not usable.
    #[error("--tokens {path}: {reason}")]
    Tokens {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a certificate request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `authorization: Bearer` header.
    #[error("missing bearer token")]
    NoToken,
    /// The token is not in the tokens file (or there is none).
    #[error("unknown bearer token")]
    UnknownToken,
    /// The CSR cannot be parsed or its signature is wrong.
    #[error("invalid CSR: {0}")]
    Csr(Arc<str>),
    /// The CSR does not name exactly one SPIFFE identity as its only SAN.
    #[error("CSR must carry exactly one URI SAN with a SPIFFE identity: {0}")]
    San(Arc<str>),
    /// The impersonation metadata is malformed or differs from the CSR.
    #[error("ImpersonatedIdentity {0}")]
    Impersonation(Arc<str>),
    /// No workload with this identity is scheduled on the caller's node.
    #[error(
        "node {node:?} may not request {identity}: no workload with that identity is scheduled \
         on it"
    )]
    NotOnNode {
        /// The caller's node.
        node: Arc<str>,
        /// The identity asked for.
        identity: Identity,
    },
}

impl From<Unauthenticated> for Refusal {
    fn from(u: Unauthenticated) -> Refusal {
        match u {
            Unauthenticated::NoToken => Refusal::NoToken,
            Unauthenticated::UnknownToken => Refusal::UnknownToken,
        }
    }
}

impl Refusal {
    fn status(&self) -> Status {
        let code = match self {
            Refusal::NoToken | Refusal::UnknownToken => tonic::Code::Unauthenticated,
            Refusal::NotOnNode { .. } => tonic::Code::PermissionDenied,
            Refusal::Csr(_) | Refusal::San(_) | Refusal::Impersonation(_) => {
                tonic::Code::InvalidArgument
            }
        };
        Status::new(code, self.to_string())
    }
}

/// Where workloads are scheduled: the CA's authorization source.
pub trait Schedule: Send + Sync + 'static {
    /// Whether a workload with `identity` runs on `node`.
    fn scheduled_on(&self, identity: &Identity, node: &str) -> bool;
}

impl<F: Fn(&Identity, &str) -> bool + Send + Sync + 'static> Schedule for F {
    fn scheduled_on(&self, identity: &Identity, node: &str) -> bool {
        self(identity, node)
    }
}

impl Schedule for Reader {
    fn scheduled_on(&self, identity: &Identity, node: &str) -> bool {
        self.load()
            .workloads()
            .any(|w| &*w.node == node && w.identity().as_ref() == Some(identity))
    }
}

/// The schedule of the mesh file (`--config`): which identities have a workload on which
/// node. Re-read when the file changes; a file that no longer parses keeps the last good
/// schedule (as the xDS side does).
pub struct MeshFileSchedule {
    placement: Reloading<HashSet<(String, Identity)>>,
}

impl MeshFileSchedule {
    /// Loads the schedule of the mesh file at `path`.
    pub fn load(path: &Path) -> Result<MeshFileSchedule, CaServerError> {
        let read = |path: &Path| -> Result<HashSet<(String, Identity)>, String> {
            let mesh = crate::control::local::load(path).map_err(|e| e.to_string())?;
            Ok(mesh
                .workloads
                .iter()
                .filter_map(|w| Some((w.node.to_string(), w.identity()?)))
                .collect())
        };
        let initial = read(path).map_err(|reason| CaServerError::Mesh {
            path: path.display().to_string(),
            reason,
        })?;
        let p = path.to_path_buf();
        Ok(MeshFileSchedule {
            placement: Reloading::new(vec![p.clone()], initial, Box::new(move || read(&p))),
        })
    }
}

impl Schedule for MeshFileSchedule {
    fn scheduled_on(&self, identity: &Identity, node: &str) -> bool {
        self.placement
            .get()
            .contains(&(node.to_string(), identity.clone()))
    }
}

/// The `CreateCertificate` service. Cheap to clone.
#[derive(Clone)]
pub struct CaService {
    inner: Arc<Inner>,
}

struct Inner {
    config: CaServerConfig,
    schedule: Box<dyn Schedule>,
    ca: Reloading<LocalCa>,
    tokens: Arc<Tokens>,
}

impl CaService {
    /// Loads the CA and the tokens (both must be usable at start) and authorizes against
    /// `schedule`.
    pub fn new(
        config: CaServerConfig,
        schedule: impl Schedule,
    ) -> Result<CaService, CaServerError> {
        let dir = config.ca_dir.clone();
        let ttl = config.max_ttl;
        let ca = Reloading::new(
            ["root-cert.pem", "ca-key.pem", "cert-chain.pem"]
                .iter()
                .map(|f| dir.join(f))
                .collect(),
            LocalCa::load(&dir, ttl)?,
            Box::new(move || LocalCa::load(&dir, ttl).map_err(|e| e.to_string())),
        );
        let tokens =
            Tokens::load(config.tokens.as_deref()).map_err(|reason| CaServerError::Tokens {
                path: config
                    .tokens
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                reason,
            })?;
        Ok(CaService {
            inner: Arc::new(Inner {
                config,
                schedule: Box::new(schedule),
                ca,
                tokens: Arc::new(tokens),
            }),
        })
    }

    /// The bearer tokens this CA authenticates with (reloaded as the file changes), to share
    /// with the other services of the port.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.inner.tokens.clone()
    }

    /// The tonic service to add to the control plane's server.
    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    /// Decides a request: the caller's node and the identity to certify, or why not.
    fn authorize(
        &self,
        bearer: Option<&str>,
        req: &IstioCertificateRequest,
    ) -> Result<(Arc<str>, Identity, CertificateSigningRequestParams), Refusal> {
        let node = self.inner.tokens.authenticate(bearer)?;
        let (identity, csr) = parse_csr(&req.csr)?;
        if let Some(meta) = &req.metadata {
            if let Some(value) = meta.fields.get(IMPERSONATED_IDENTITY) {
                let Some(prost_types::value::Kind::StringValue(s)) = &value.kind else {
                    return Err(Refusal::Impersonation("is not a string".into()));
                };
                let wanted: Identity = s
                    .parse()
                    .map_err(|e| Refusal::Impersonation(format!("{s:?}: {e}").into()))?;
                if wanted != identity {
                    return Err(Refusal::Impersonation(
                        format!("{wanted} differs from the CSR's {identity}").into(),
                    ));
                }
            }
        }
        if !self.inner.schedule.scheduled_on(&identity, &node) {
            return Err(Refusal::NotOnNode { node, identity });
        }
        Ok((node, identity, csr))
    }

    /// The lifetime granted for a requested `validity_duration` (seconds).
    fn granted_ttl(&self, requested: i64) -> Duration {
        let max = self.inner.config.max_ttl;
        match u64::try_from(requested) {
            Ok(0) | Err(_) => max,
            Ok(secs) => Duration::from_secs(secs).min(max),
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = request.into_inner();
        let (node, identity, csr) = match self.authorize(bearer.as_deref(), &req) {
            Ok(ok) => ok,
            Err(refusal) => {
                tracing::warn!(reason = %refusal, "certificate request refused");
                return Err(refusal.status());
            }
        };
        let ttl = self.granted_ttl(req.validity_duration);
        let ca = self.inner.ca.get();
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| Status::internal("certificate lifetime out of range"))?;
        let chain = ca
            .sign(&csr.public_key, &identity, now - backdate(ttl), not_after)
            .map_err(|e| {
                tracing::error!(%identity, error = %e, "signing failed");
                Status::internal(format!("signing failed: {e}"))
            })?;
        let bundle: String = ca.roots().iter().map(pem_of).collect();
        let mut cert_chain: Vec<String> = chain.iter().map(pem_of).collect();
        cert_chain.push(bundle);
        tracing::info!(%identity, %node, ?ttl, roots = ca.roots().len(), "issued certificate");
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// The identity a CSR asks for (its only SAN, a SPIFFE URI), after checking its signature.
fn parse_csr(pem: &str) -> Result<(Identity, CertificateSigningRequestParams), Refusal> {
    if pem.len() > MAX_CSR {
        return Err(Refusal::Csr(format!("larger than {MAX_CSR} bytes").into()));
    }
    let csr = CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| Refusal::Csr(e.to_string().into()))?;
    let identity = match csr.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => uri
            .as_str()
            .parse::<Identity>()
            .map_err(|e| Refusal::San(format!("{:?}: {e}", uri.as_str()).into()))?,
        other => return Err(Refusal::San(format!("found {} SANs", other.len()).into())),
    };
    Ok((identity, csr))
}

#[cfg(test)]
mod tests;
