//! ztun's static configuration: one immutable, typed tree built once at startup.
//!
//! [`Config::from_source`] turns environment variables (the interface Istio's Helm chart and
//! ztunnel users already rely on) into typed values at the edge; code that reads a `Config` never
//! re-parses or re-checks a value. Only `config/env.rs` reads the environment (and the mesh
//! config file), through the [`Source`] trait, so tests build a configuration from a [`MapEnv`]
//! and never mutate the process environment. Runtime changes (workloads, policies,
//! certificates) arrive through `state/`, never through `Config`.
//!
//! Like ztunnel, ztun also reads an Istio ProxyConfig: the `defaultConfig` of the mesh config
//! file `./etc/istio/config/mesh` (relative to the working directory), overlaid by the
//! `PROXY_CONFIG` variable, both YAML or JSON; the environment overrides both. Only
//! `discoveryAddress`, `proxyAdminPort`, `statsPort`, `concurrency` and `proxyMetadata` are
//! read; other fields are ignored, as ztunnel ignores them. A file or `PROXY_CONFIG` that does
//! not parse is a startup error.
//!
//! Conventions: durations are [`Duration`] and accept `500ms`, `5s`, `10m`, `24h`, `1h30m`
//! (a bare integer is seconds); booleans accept `true`/`false`/`1`/`0` in any case; an empty
//! variable counts as unset, except `XDS_ADDRESS` and `CA_ADDRESS` where empty disables the
//! client. Unknown variables (including the legacy `INPOD_ENABLED`) are ignored. Variables
//! ztunnel reads whose effect ztun does not implement (`ENABLE_PROXY`,
//! `UNSTABLE_ENABLE_SOCKS5`, `TLS12_ENABLED`) are accepted only at values
//! that change nothing; any other value is refused at startup ([`ConfigError::Unsupported`]).
//!
//! Allowed imports: `identity` (to check that the trust domain can form identities). Nothing
//! else in the crate; every other module may import `config`.

mod build;
mod env;
mod mesh;
mod syntax;
mod vars;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use env::{MapEnv, ProcessEnv, Source};

/// The whole static configuration of a ztun process.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// `PROXY_MODE`: one proxy per pod on the node (`shared`, the default) or a single proxy for
    /// one workload (`dedicated`).
    pub proxy_mode: ProxyMode,
    /// `PROXY_WORKLOAD_INFO` (`namespace/name/serviceaccount`): the workload a dedicated proxy
    /// serves. Required in dedicated mode; ignored (always `None`) in shared mode.
    pub workload_info: Option<WorkloadInfo>,
    /// ZDS (istio-cni ↔ ztun) settings used in shared mode.
    pub inpod: InpodConfig,
    /// `PACKET_MARK`: `SO_MARK` put on every socket ztun creates in a pod, so the pod's capture
    /// rules skip ztun's own traffic. Default `Some(1337)` (0x539) in shared mode, `None`
    /// (no mark) in dedicated mode. Never `Some(0)`.
    pub packet_mark: Option<u32>,
    /// `NODE_NAME`: the node this ztun runs on; decides which workloads are local. Default unset.
    pub node_name: Option<String>,
    /// `ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID`; default `Kubernetes`. Sent to the CA and istiod
    /// as the `clusterid` header and used in telemetry.
    pub cluster_id: String,
    /// `CLUSTER_DOMAIN`: the cluster's DNS suffix; default `cluster.local`.
    pub cluster_domain: String,
    /// `TRUST_DOMAIN`: trust domain of ztun's own identity; default `cluster.local`. Always a
    /// valid SPIFFE trust domain.
    pub trust_domain: String,
    /// `NETWORK`: the network this node's workloads are on; default `""` (the default network).
    pub network: String,
    /// `LOCAL_XDS_PATH` or `LOCAL_XDS`: a static mesh description in the local YAML format,
    /// from a file or inline. Setting both is an error. Default unset.
    pub local_xds: Option<LocalXds>,
    /// xDS client settings (serialized flat: `xdsAddress`, `xdsOnDemand`, ...).
    #[serde(flatten)]
    pub xds: XdsConfig,
    /// Certificate authority client settings.
    pub ca: CaConfig,
    /// Number of data-plane worker threads, at least 1. From `ZTUNNEL_WORKER_THREADS` (`N`,
    /// `P%` of the CPUs rounded up, or `0` for all CPUs), else ProxyConfig `concurrency` (`N`,
    /// or `0` for all CPUs), else derived from the pod's CPU resources: `max(limit, request)`
    /// when `ZTUNNEL_RESOURCE_CPU_LIMIT` is set, else `max(ceil(25% of CPUs), request, 2)`.
    /// "CPUs" is `ZTUNNEL_RESOURCE_CPU_LIMIT` when set, else `ZTUNNEL_CPU_LIMIT` (the chart
    /// passes the container's CPU limit, or the node's CPU count when there is none), else what
    /// the OS reports. CPU quantities use Kubernetes syntax (`500m`, `1.5`, `2`), rounded up.
    /// Each thread costs a stack (2 MiB virtual) and its share of per-thread buffers.
    pub worker_threads: usize,
    /// Logging settings.
    pub log: LogConfig,
    /// Authorization policy settings.
    pub authz: AuthzConfig,
    /// `COMPLIANCE_POLICY`: `pqc` restricts every TLS key exchange ztun makes (HBONE both
    /// ways, the xDS and CA clients) to the post-quantum hybrid X25519MLKEM768, as ztunnel
    /// does. Other values are ignored, as ztunnel ignores them. Default: none.
    pub compliance_policy: CompliancePolicy,
    /// Data-plane (listener, pool, socket, HTTP/2) settings.
    pub proxy: ProxyConfig,
    /// DNS proxy settings (its port and on/off switch are in [`ProxyConfig`]).
    pub dns: DnsConfig,
    /// Who this ztun process is (downward API values).
    pub identity: SelfIdentity,
    /// Admin API listener: `127.0.0.1:15000` (loopback only: it can dump configuration and
    /// trigger shutdown); the port is ProxyConfig `proxyAdminPort` when set. With IPv6 the API
    /// is also served on the IPv6 loopback: see [`Config::admin_addrs`].
    pub admin_addr: SocketAddr,
    /// Prometheus metrics listener: `[::]:15020` (`0.0.0.0:15020` when IPv6 is disabled); the
    /// port is ProxyConfig `statsPort` when set.
    pub stats_addr: SocketAddr,
    /// Readiness probe listener (`/healthz/ready`): `[::]:15021` (`0.0.0.0:15021` when IPv6 is
    /// disabled).
    pub readiness_addr: SocketAddr,
    /// How long a graceful drain may take before remaining connections are closed forcibly.
    /// `CONNECTION_TERMINATION_DEADLINE` if set; else from `TERMINATION_GRACE_PERIOD_SECONDS`
    /// = N: N − 5 s when N > 10, else N − 1 s, never below 1 s (leaving Kubernetes' SIGKILL a
    /// margin); default 5 s.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub termination_deadline: Duration,
    /// Command-line arguments after the program name (Helm passes `proxy ztunnel`); recorded
    /// for the config dump only. Filled in by `main`; empty from [`Config::from_source`].
    pub proxy_args: Vec<String>,
    /// ProxyConfig `proxyMetadata` (keys without an `ISTIO_META_` prefix), overridden by every
    /// `ISTIO_META_<K>` variable as `<K>` → value (including `CLUSTER_ID` and `DNS_CAPTURE`);
    /// sent to istiod as node metadata. (`CLUSTER_ID` here does not change
    /// [`Config::cluster_id`].)
    pub proxy_metadata: BTreeMap<String, String>,
    /// Every `ISTIO_METAJSON_<K>` variable, parsed as JSON, for the xDS node metadata field
    /// `<K>` (a value that is not JSON is a startup error).
    pub proxy_metadata_json: BTreeMap<String, serde_json::Value>,
    /// `AUTH_TOKEN`: the bearer token presented to istiod and the CA. Never printed.
    pub auth_token: AuthToken,
}

impl Config {
    /// Builds the configuration from `source`, taking the CPU count from the OS.
    ///
    /// Fails on the first variable whose value is not one of its accepted forms, on
    /// contradictory settings, and when dedicated mode lacks `PROXY_WORKLOAD_INFO`.
    pub fn from_source(source: &dyn Source) -> Result<Config, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::from_source_with_cpus(source, cpus)
    }

    /// As [`Config::from_source`], with the CPU count the OS would report given explicitly
    /// (it only affects [`Config::worker_threads`]), so the result is deterministic.
    pub fn from_source_with_cpus(
        source: &dyn Source,
        available_cpus: usize,
    ) -> Result<Config, ConfigError> {
        build::build(source, available_cpus)
    }

    /// Where the admin API listens: [`admin_addr`](Self::admin_addr), plus `[::1]` on the same
    /// port when IPv6 is enabled, as ztunnel binds its admin `Address::Localhost` on both
    /// loopbacks (`src/config.rs`). The IPv6 address is optional: a node whose loopback has
    /// no IPv6 (`net.ipv6.conf.lo.disable_ipv6=1`) serves only the first.
    pub fn admin_addrs(&self) -> Vec<(SocketAddr, Requirement)> {
        if self.admin_addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            loopbacks(self.admin_addr.port(), self.proxy.ipv6_enabled)
        } else {
            vec![(self.admin_addr, Requirement::Required)]
        }
    }

    /// Ports that a connection must never be proxied to on a local address, because they are
    /// ztun's own: outbound, inbound plaintext, HBONE, DNS, admin, stats and readiness. Proxying
    /// to them would loop or expose ztun's internals.
    pub fn illegal_ports(&self) -> [u16; 7] {
        [
            self.proxy.outbound_port,
            self.proxy.inbound_plaintext_port,
            self.proxy.inbound_hbone_port,
            self.proxy.dns_port,
            self.admin_addr.port(),
            self.stats_addr.port(),
            self.readiness_addr.port(),
        ]
    }
}

/// The loopback addresses of `port` a listener binds: `127.0.0.1` (required), and with
/// `ipv6` also `[::1]` (skipped where the namespace has no IPv6).
pub fn loopbacks(port: u16, ipv6: bool) -> Vec<(SocketAddr, Requirement)> {
    let mut addrs = vec![(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        Requirement::Required,
    )];
    if ipv6 {
        addrs.push((
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            Requirement::IfIpv6,
        ));
    }
    addrs
}

/// Whether failing to bind a listener address fails startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Any bind error fails startup.
    Required,
    /// Skipped when the namespace has no IPv6 (the address family is unsupported or the
    /// address is not available); other errors fail startup.
    IfIpv6,
}

/// Whether ztun serves every pod on its node or a single workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum ProxyMode {
    /// One ztun per node; pods' network namespaces arrive over ZDS and each gets its own proxy.
    #[default]
    Shared,
    /// One proxy for the workload named by `PROXY_WORKLOAD_INFO`, in ztun's own namespace.
    Dedicated,
}

/// The workload a dedicated proxy serves. All three parts are non-empty and free of `/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Kubernetes service account.
    pub service_account: String,
}

/// Settings of the ZDS connection to istio-cni (shared mode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InpodConfig {
    /// `INPOD_UDS`: the ZDS unix socket istio-cni listens on; default
    /// `/var/run/ztunnel/ztunnel.sock`.
    pub uds: PathBuf,
    /// `INPOD_PORT_REUSE`: create pod listeners with `SO_REUSEPORT`, so an old and a new ztun
    /// can both hold a pod's ports during a rolling upgrade. Default true.
    pub port_reuse: bool,
}

/// Where the static local mesh description comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum LocalXds {
    /// `LOCAL_XDS_PATH`: a YAML file, read at startup.
    Path(PathBuf),
    /// `LOCAL_XDS`: the YAML text itself.
    Inline(String),
}

/// The xDS client's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct XdsConfig {
    /// `XDS_ADDRESS`: istiod's xDS endpoint as an `http(s)://host:port` URI; `None` (set to the
    /// empty string) disables the xDS client. Unset: ProxyConfig `discoveryAddress` if set,
    /// else `https://istiod.istio-system.svc:15012` when `KUBERNETES_SERVICE_HOST` is set, else
    /// `https://localhost:15012`. A value without a scheme gets `https://`.
    #[serde(rename = "xdsAddress")]
    pub address: Option<String>,
    /// `XDS_ON_DEMAND`: subscribe to addresses on demand instead of receiving all of them.
    /// Default false. Cannot be combined with the DNS proxy (see [`ProxyConfig::dns_capture`]).
    #[serde(rename = "xdsOnDemand")]
    pub on_demand: bool,
    /// Every `XDS_HEADER_<name>` variable as lowercased `<name>` → value: extra gRPC metadata
    /// on the xDS stream. Names are HTTP tokens, values printable ASCII.
    #[serde(rename = "xdsHeaders")]
    pub headers: BTreeMap<String, String>,
    /// `XDS_ROOT_CA`: roots that verify istiod's xDS certificate. Default the file
    /// `./var/run/secrets/istio/root-cert.pem`.
    #[serde(rename = "xdsRootCa")]
    pub root_ca: RootCert,
    /// `ALT_XDS_HOSTNAME`: a name accepted in istiod's certificate in addition to the URI host.
    #[serde(rename = "altXdsHostname")]
    pub alt_hostname: Option<String>,
}

/// Certificate authority client settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaConfig {
    /// `CA_ADDRESS`: the CA endpoint, with the same defaulting, `https://` completion and
    /// empty-disables rule as [`XdsConfig::address`]. Always `None` when `fake_ca` is set.
    pub address: Option<String>,
    /// `FAKE_CA`: issue certificates from a built-in throwaway CA (testing only). Default false.
    pub fake_ca: bool,
    /// `LOCAL_CA_DIR`: a directory holding a CA certificate and key to issue workload
    /// certificates locally instead of asking a remote CA. Default unset.
    pub local_ca_dir: Option<PathBuf>,
    /// `CRL_PATH`: a file of certificate revocation lists (PEM `X509 CRL` blocks, one DER CRL,
    /// or empty) checked in every HBONE handshake and, on change, against open tunnels. The
    /// file must exist and parse at startup; it is polled every second. Default unset (no
    /// revocation checking).
    pub crl_path: Option<PathBuf>,
    /// `SECRET_TTL`: requested certificate lifetime; default 24 h, never zero.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub secret_ttl: Duration,
    /// Every `CA_HEADER_<name>` variable, as for [`XdsConfig::headers`], on CA requests.
    pub headers: BTreeMap<String, String>,
    /// `CA_ROOT_CA`: roots that verify the CA's certificate; same forms and default as
    /// [`XdsConfig::root_ca`].
    pub root_ca: RootCert,
    /// `ALT_CA_HOSTNAME`: a name accepted in the CA's certificate in addition to the URI host.
    pub alt_hostname: Option<String>,
}

/// A TLS compliance policy (`COMPLIANCE_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CompliancePolicy {
    /// The default key exchanges (X25519MLKEM768 preferred, then X25519, P-256, P-384).
    #[default]
    None,
    /// Key exchange with X25519MLKEM768 only.
    Pqc,
}

/// Authorization policy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzConfig {
    /// `ZTUN_L4_DENY_HTTP_RULES` (`ignore` | `enforce`, default `ignore`): what a DENY rule
    /// does when a clause of it names only HTTP attributes. No memory cost.
    pub http_only_deny: HttpOnlyDeny,
    /// `AUTHZ_POLICY_INFO_LOGGING`: log every authorization decision at `info` instead of
    /// `debug`. Default false.
    pub info_logging: bool,
}

/// What a DENY rule does at L4 when a clause of it names only HTTP attributes (methods, paths,
/// request principals, request headers): istiod sends that clause as empty match groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpOnlyDeny {
    /// Istio's semantics: the clause never matches, so the rule has no effect at L4 (istiod's
    /// policy status says such a DENY "will have no effect" at ztunnel).
    #[default]
    Ignore,
    /// Fail closed: the clause matches, so the rule denies every connection its L4 conditions
    /// select, as Istio's sidecars did for TCP (istio/istio#21742).
    Enforce,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfig {
    /// `RUST_LOG`: `tracing` filter directives; default `info`.
    pub filter: String,
    /// `LOG_FORMAT`: `json` for one JSON object per line, `plain` (default) for text.
    pub json: bool,
}

/// Data-plane settings shared by every per-pod proxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Outbound capture listener port: 15001.
    pub outbound_port: u16,
    /// Inbound plaintext capture listener port: 15006.
    pub inbound_plaintext_port: u16,
    /// Inbound HBONE (mTLS) listener port: 15008.
    pub inbound_hbone_port: u16,
    /// DNS proxy port (TCP and UDP, loopback): 15053.
    pub dns_port: u16,
    /// `IPV6_ENABLED`: bind dual-stack `[::]` listeners and answer AAAA; false binds IPv4 only.
    /// Default true.
    pub ipv6_enabled: bool,
    /// `ENABLE_ORIG_SRC`: force (`Some(true)`: a pod whose listeners cannot be transparent
    /// does not start) or forbid (`Some(false)`) source-IP spoofing toward applications;
    /// `None` (default) uses it when the kernel allows (`CAP_NET_ADMIN` or `CAP_NET_RAW`).
    /// Without it, inbound connections reach the app from the pod's own address.
    pub enable_orig_src: Option<bool>,
    /// `POOL_MAX_STREAMS_PER_CONNECTION`: CONNECT streams an HBONE pool connection carries before
    /// the pool opens another; default 100, at least 1.
    pub pool_max_streams_per_connection: u32,
    /// `POOL_UNUSED_RELEASE_TIMEOUT`: an HBONE pool connection idle this long is closed;
    /// default 5 min.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub pool_unused_release_timeout: Duration,
    /// `HTTP2_STREAM_WINDOW_SIZE`: HTTP/2 per-stream receive window in bytes; default 4 MiB,
    /// 1..=2³¹−1. Bounds memory buffered per tunnel.
    pub http2_stream_window: u32,
    /// `HTTP2_CONNECTION_WINDOW_SIZE`: HTTP/2 per-connection receive window in bytes; default
    /// 16 MiB, 1..=2³¹−1. Larger than the stream window so one stalled stream cannot starve
    /// the others; bounds memory buffered per HBONE connection.
    pub http2_connection_window: u32,
    /// `HTTP2_FRAME_SIZE`: largest HTTP/2 frame payload accepted, in bytes; default 1 MiB,
    /// within HTTP/2's 16 KiB..=16 MiB−1.
    pub http2_frame_size: u32,
    /// Timeout for a TCP connect to an upstream or peer: 10 s (not configurable).
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub connect_timeout: Duration,
    /// `ZTUN_HANDSHAKE_TIMEOUT`: timeout for a TLS handshake with a peer; default 10 s, never
    /// zero.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub handshake_timeout: Duration,
    /// `ZTUN_HBONE_IDLE_TIMEOUT`: an inbound HBONE connection with no open stream for this long
    /// is closed (GOAWAY, then TLS close); default 10 min (twice the clients' default
    /// `POOL_UNUSED_RELEASE_TIMEOUT`), never zero.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub hbone_idle_timeout: Duration,
    /// `ZTUN_HBONE_STREAM_STALL_TIMEOUT`: an HBONE stream with bytes to send whose peer grants
    /// no flow-control window for this long (its reader stopped, or the peer withholds
    /// WINDOW_UPDATE) is reset and its connection to the app closed. Default 10 min; `0`
    /// turns it off. Costs nothing while the window is open (no timer).
    #[serde(serialize_with = "syntax::serialize_optional_duration")]
    pub stream_stall_timeout: Option<Duration>,
    /// `ZTUN_MAX_CONNECTIONS_PER_POD`: connections one pod may hold open at once across its
    /// three capture listeners (15001, 15006, 15008); the next one is reset at accept and
    /// counted. Default 16384; 0 removes the limit.
    pub max_connections_per_pod: u32,
    /// `ZTUN_FD_EXHAUSTION_LIVENESS`: when accepts have failed for lack of file descriptors
    /// without a break for this long, `/healthz/live` fails so the kubelet restarts ztun.
    /// Default 60 s, at least 1 s.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub fd_exhaustion_liveness: Duration,
    /// TCP keepalive on upstream and accepted sockets.
    pub keepalive: Keepalive,
    /// `ENABLE_RESPONSE_BAGGAGE`: send and parse `baggage` on HBONE requests and responses for
    /// telemetry. Default true.
    pub enable_response_baggage: bool,
    /// `ISTIO_META_DNS_CAPTURE`, else `DNS_CAPTURE` in ProxyConfig `proxyMetadata`: run the
    /// DNS proxy. On when unset or `true` (any case), off for any other value, empty included.
    pub dns_capture: bool,
    /// `LOCALHOST_APP_TUNNEL`: deliver PROXY-protocol application tunnels over loopback
    /// (`127.0.0.1:<port>`) rather than to the pod IP. Default true.
    pub localhost_app_tunnel: bool,
}

/// Where a pod's DNS proxy listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DnsListen {
    /// `127.0.0.1:<port>`, plus `[::1]:<port>` when the pod has IPv6 (`localhost:<port>`).
    Localhost(u16),
    /// Exactly this address.
    Addr(SocketAddr),
}

/// DNS proxy settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfig {
    /// `ISTIO_META_DNS_PROXY_ADDR`, else `DNS_PROXY_ADDR`, else `DNS_PROXY_ADDR` in
    /// ProxyConfig `proxyMetadata` (`localhost:<port>` or `ip:port`); default
    /// `localhost:15053`.
    pub listen: DnsListen,
    /// `ZTUN_DNS_RESOLV_CONF`: the resolv.conf whose nameservers receive forwarded queries (its
    /// search list is ignored); default `/etc/resolv.conf`, read once at startup. The same
    /// nameservers resolve hostname-only workloads, from ztun's own namespace.
    pub resolv_conf: PathBuf,
    /// `PREFERED_SERVICE_NAMESPACE` (ztunnel's spelling): when services of several namespaces
    /// share a hostname and none is in the client's namespace (nor canonical), DNS answers
    /// with the one in this namespace. Unset by default.
    pub preferred_service_namespace: Option<Arc<str>>,
}

/// TCP keepalive settings (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`,
/// `TCP_USER_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    /// `KEEPALIVE_ENABLED`: turn keepalive on; default true.
    pub enabled: bool,
    /// `KEEPALIVE_TIME`: idle time before the first probe; default 180 s, at least 1 s.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub time: Duration,
    /// `KEEPALIVE_INTERVAL`: time between probes; default 180 s, at least 1 s.
    #[serde(serialize_with = "syntax::serialize_duration")]
    pub interval: Duration,
    /// `KEEPALIVE_RETRIES`: unanswered probes before the connection is dropped; default 9.
    pub retries: u32,
    /// `USER_TIMEOUT_ENABLED`: also set `TCP_USER_TIMEOUT` to time + retries × interval;
    /// default false.
    pub user_timeout_enabled: bool,
}

/// Who this ztun process is, from the Kubernetes downward API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfIdentity {
    /// `POD_NAME`: ztun's pod name; default `""`.
    pub pod_name: String,
    /// `POD_NAMESPACE`: ztun's namespace; default `""`.
    pub pod_namespace: String,
    /// `SERVICE_ACCOUNT`: ztun's service account; default unset. With the pod name and
    /// namespace it gives ztun an identity of its own.
    pub service_account: Option<String>,
    /// `INSTANCE_IP`: ztun's pod IP, used in the xDS node id; default `1.1.1.1`.
    pub instance_ip: IpAddr,
}

/// Trust roots for verifying a control-plane server's certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RootCert {
    /// PEM bundle in a file, re-read when the connection is re-established.
    File(PathBuf),
    /// The operating system's trust store (`SYSTEM`).
    System,
    /// PEM text given inline (a value containing `-----BEGIN`).
    Static(String),
}

/// The bearer token presented to istiod and the CA.
///
/// `Debug` and `Serialize` never reveal a static token's value.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthToken {
    /// A token file, re-read on every use (projected tokens rotate).
    File(PathBuf),
    /// A literal token (`AUTH_TOKEN` naming no existing file).
    Static(String),
    /// No token: `AUTH_TOKEN` unset and the default token file absent.
    None,
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthToken::File(path) => f.debug_tuple("File").field(path).finish(),
            AuthToken::Static(_) => f.write_str("Static(<redacted>)"),
            AuthToken::None => f.write_str("None"),
        }
    }
}

impl serde::Serialize for AuthToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AuthToken::File(path) => {
                serializer.serialize_newtype_variant("AuthToken", 0, "File", path)
            }
            AuthToken::Static(_) => {
                serializer.serialize_newtype_variant("AuthToken", 1, "Static", "<redacted>")
            }
            AuthToken::None => serializer.serialize_unit_variant("AuthToken", 2, "None"),
        }
    }
}

/// Why the environment does not describe a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable's value is not one of its accepted forms.
    #[error("{var}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        var: String,
        /// Its value as found.
        value: String,
        /// The accepted forms.
        expected: &'static str,
    },
    /// A variable's name (of a prefixed family such as `XDS_HEADER_<name>`) is not acceptable.
    #[error("variable name {var}: expected {expected}")]
    InvalidName {
        /// The variable.
        var: String,
        /// What the name must look like.
        expected: &'static str,
    },
    /// A variable required by another setting is unset.
    #[error("{var} must be set when {because}")]
    Missing {
        /// The missing variable.
        var: &'static str,
        /// The setting that requires it.
        because: &'static str,
    },
    /// Two settings that exclude each other are both in effect.
    #[error("{first} conflicts with {second}")]
    Conflict {
        /// The first setting.
        first: &'static str,
        /// The setting it excludes.
        second: &'static str,
    },
    /// A variable ztunnel reads is set to a value whose effect ztun does not implement.
    #[error("{var}={value:?} is not supported by ztun ({reason}); unset it")]
    Unsupported {
        /// The variable.
        var: &'static str,
        /// Its value as found.
        value: String,
        /// What ztun does instead.
        reason: &'static str,
    },
    /// `PROXY_CONFIG` or the mesh config file cannot be read or is not a valid ProxyConfig.
    #[error("{origin}: {reason}")]
    Malformed {
        /// `PROXY_CONFIG` or the mesh config file's path.
        origin: String,
        /// What is wrong, naming the field when one is at fault.
        reason: String,
    },
}
