//! The only reader of the process environment.
//!
//! [`Source`] abstracts where variables come from ([`ProcessEnv`] in production, [`MapEnv`] in
//! tests); this module also owns the value syntaxes (durations, booleans, Kubernetes CPU
//! quantities) and assembles a [`Config`] from them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::Identity;

use super::{
    AuthToken, CaConfig, Config, ConfigError, DnsConfig, DnsListen, InpodConfig, Keepalive,
    LocalXds, LogConfig, ProxyConfig, ProxyMode, RootCert, SelfIdentity, WorkloadInfo,
};

const PROXY_MODE: &str = "PROXY_MODE";
const PROXY_WORKLOAD_INFO: &str = "PROXY_WORKLOAD_INFO";
const INPOD_UDS: &str = "INPOD_UDS";
const INPOD_PORT_REUSE: &str = "INPOD_PORT_REUSE";
const PACKET_MARK: &str = "PACKET_MARK";
const NODE_NAME: &str = "NODE_NAME";
const ISTIO_META_CLUSTER_ID: &str = "ISTIO_META_CLUSTER_ID";
const CLUSTER_ID: &str = "CLUSTER_ID";
const CLUSTER_DOMAIN: &str = "CLUSTER_DOMAIN";
const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
const NETWORK: &str = "NETWORK";
const LOCAL_XDS_PATH: &str = "LOCAL_XDS_PATH";
const LOCAL_XDS: &str = "LOCAL_XDS";
const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
const XDS_ADDRESS: &str = "XDS_ADDRESS";
const CA_ADDRESS: &str = "CA_ADDRESS";
const FAKE_CA: &str = "FAKE_CA";
const LOCAL_CA_DIR: &str = "LOCAL_CA_DIR";
const CRL_PATH: &str = "CRL_PATH";
const SECRET_TTL: &str = "SECRET_TTL";
const ZTUNNEL_WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
const ZTUNNEL_CPU_LIMIT: &str = "ZTUNNEL_CPU_LIMIT";
const ZTUNNEL_RESOURCE_CPU_LIMIT: &str = "ZTUNNEL_RESOURCE_CPU_LIMIT";
const ZTUNNEL_RESOURCE_CPU_REQUEST: &str = "ZTUNNEL_RESOURCE_CPU_REQUEST";
const RUST_LOG: &str = "RUST_LOG";
const LOG_FORMAT: &str = "LOG_FORMAT";
const IPV6_ENABLED: &str = "IPV6_ENABLED";
const ENABLE_ORIG_SRC: &str = "ENABLE_ORIG_SRC";
const POOL_MAX_STREAMS_PER_CONNECTION: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
const HTTP2_STREAM_WINDOW_SIZE: &str = "HTTP2_STREAM_WINDOW_SIZE";
const HTTP2_CONNECTION_WINDOW_SIZE: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
const HTTP2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
const ZTUN_HANDSHAKE_TIMEOUT: &str = "ZTUN_HANDSHAKE_TIMEOUT";
const ZTUN_HBONE_IDLE_TIMEOUT: &str = "ZTUN_HBONE_IDLE_TIMEOUT";
const ZTUN_HBONE_STREAM_STALL_TIMEOUT: &str = "ZTUN_HBONE_STREAM_STALL_TIMEOUT";
const ZTUN_MAX_CONNECTIONS_PER_POD: &str = "ZTUN_MAX_CONNECTIONS_PER_POD";
const ZTUN_FD_EXHAUSTION_LIVENESS: &str = "ZTUN_FD_EXHAUSTION_LIVENESS";
const KEEPALIVE_ENABLED: &str = "KEEPALIVE_ENABLED";
const KEEPALIVE_TIME: &str = "KEEPALIVE_TIME";
const KEEPALIVE_INTERVAL: &str = "KEEPALIVE_INTERVAL";
const KEEPALIVE_RETRIES: &str = "KEEPALIVE_RETRIES";
const USER_TIMEOUT_ENABLED: &str = "USER_TIMEOUT_ENABLED";
const ENABLE_RESPONSE_BAGGAGE: &str = "ENABLE_RESPONSE_BAGGAGE";
const ISTIO_META_DNS_CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
const ISTIO_META_DNS_PROXY_ADDR: &str = "ISTIO_META_DNS_PROXY_ADDR";
const DNS_PROXY_ADDR: &str = "DNS_PROXY_ADDR";
const ZTUN_DNS_RESOLV_CONF: &str = "ZTUN_DNS_RESOLV_CONF";
/// ztunnel's spelling (sic).
const PREFERED_SERVICE_NAMESPACE: &str = "PREFERED_SERVICE_NAMESPACE";
const LOCALHOST_APP_TUNNEL: &str = "LOCALHOST_APP_TUNNEL";
const POD_NAME: &str = "POD_NAME";
const POD_NAMESPACE: &str = "POD_NAMESPACE";
const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
const INSTANCE_IP: &str = "INSTANCE_IP";
const CONNECTION_TERMINATION_DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
const TERMINATION_GRACE_PERIOD_SECONDS: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
const XDS_ON_DEMAND: &str = "XDS_ON_DEMAND";
const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
const CA_ROOT_CA: &str = "CA_ROOT_CA";
const ALT_XDS_HOSTNAME: &str = "ALT_XDS_HOSTNAME";
const ALT_CA_HOSTNAME: &str = "ALT_CA_HOSTNAME";
const AUTH_TOKEN: &str = "AUTH_TOKEN";
const ISTIO_META_PREFIX: &str = "ISTIO_META_";
const ISTIO_METAJSON_PREFIX: &str = "ISTIO_METAJSON_";

/// `ISTIO_METAJSON_<K>` variables as JSON values keyed by `<K>`.
fn metadata_json(source: &dyn Source) -> Result<BTreeMap<String, serde_json::Value>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in source.vars_with_prefix(ISTIO_METAJSON_PREFIX) {
        let Some(key) = name
            .strip_prefix(ISTIO_METAJSON_PREFIX)
            .filter(|k| !k.is_empty())
        else {
            continue;
        };
        let json = serde_json::from_str(&value).map_err(|_| ConfigError::Invalid {
            var: name.clone(),
            value: value.clone(),
            expected: "a JSON value",
        })?;
        out.insert(key.to_owned(), json);
    }
    Ok(out)
}
const XDS_HEADER_PREFIX: &str = "XDS_HEADER_";
const CA_HEADER_PREFIX: &str = "CA_HEADER_";

const IN_CLUSTER_ISTIOD: &str = "https://istiod.istio-system.svc:15012";
const LOCAL_ISTIOD: &str = "https://localhost:15012";
const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
const DEFAULT_PACKET_MARK: u32 = 1337;
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
const DEFAULT_DOMAIN: &str = "cluster.local";
const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
const DEFAULT_TOKEN: &str = "./var/run/secrets/tokens/istio-token";
const DEFAULT_INSTANCE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
const DEFAULT_TERMINATION_DEADLINE: Duration = Duration::from_secs(5);
const MIN_AUTO_WORKER_THREADS: usize = 2;
const MIB: u32 = 1024 * 1024;
/// HTTP/2's limits (RFC 9113 §6.5.2, §6.9.1).
const H2_MIN_FRAME: u32 = 16 * 1024;
const H2_MAX_FRAME: u32 = 16 * MIB - 1;
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

const BOOL_FORMS: &str = "true | false | 1 | 0";
const DURATION_FORMS: &str = "a duration such as 500ms, 5s, 10m, 24h or 1h30m";
const NONZERO_DURATION_FORMS: &str = "a non-zero duration such as 500ms, 5s, 10m, 24h or 1h30m";
const SECONDS_DURATION_FORMS: &str = "a duration of at least 1s such as 30s, 3m or 1h";
const CPU_FORMS: &str = "a positive CPU quantity such as 500m, 1.5 or 2";
const ADDRESS_FORMS: &str = "[http:// | https://]host:port, or empty to disable";
const WINDOW_FORMS: &str = "a window size in bytes from 1 to 2147483647";

/// Where configuration variables come from.
pub trait Source {
    /// The value of `name`, or `None` when it is unset.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable whose name starts with `prefix` (prefix included), sorted by name.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
    /// Whether `path` exists (decides whether a value names a file).
    fn path_exists(&self, path: &Path) -> bool;
}

/// The real process environment and filesystem. Values that are not valid UTF-8 are converted
/// lossily, so they fail to parse rather than disappear.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                name.starts_with(prefix)
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect();
        vars.sort();
        vars
    }

    fn path_exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// An in-memory environment and a set of paths that "exist": a deterministic [`Source`] for
/// tests and tools.
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    vars: HashMap<String, String>,
    existing_paths: HashSet<PathBuf>,
}

impl MapEnv {
    /// An empty environment in which no path exists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`.
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Makes [`Source::path_exists`] report `path` as existing.
    pub fn with_existing_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.existing_paths.insert(path.into());
        self
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        iter.into_iter().fold(MapEnv::new(), |env, (name, value)| {
            env.with_var(name, value)
        })
    }
}

impl Source for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = self
            .vars
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        vars.sort();
        vars
    }

    fn path_exists(&self, path: &Path) -> bool {
        self.existing_paths.contains(path)
    }
}

/// Assembles the configuration; see the field docs of [`Config`] for each rule.
pub(super) fn build(source: &dyn Source, available_cpus: usize) -> Result<Config, ConfigError> {
    let env = Vars(source);

    let proxy_mode = env
        .parse(PROXY_MODE, "shared | dedicated", |v| match v {
            "shared" => Some(ProxyMode::Shared),
            "dedicated" => Some(ProxyMode::Dedicated),
            _ => None,
        })?
        .unwrap_or_default();
    let workload_info = match proxy_mode {
        ProxyMode::Shared => None,
        ProxyMode::Dedicated => Some(
            env.parse(
                PROXY_WORKLOAD_INFO,
                "namespace/name/serviceaccount",
                parse_workload_info,
            )?
            .ok_or(ConfigError::Missing {
                var: PROXY_WORKLOAD_INFO,
                because: "PROXY_MODE=dedicated",
            })?,
        ),
    };
    let packet_mark = match env.parse(
        PACKET_MARK,
        "a non-zero mark such as 1337 or 0x539",
        parse_mark,
    )? {
        Some(mark) => Some(mark),
        // Shared mode cannot work without a mark: the pods' capture rules would redirect
        // ztun's own connections back to it.
        None if proxy_mode == ProxyMode::Shared => Some(DEFAULT_PACKET_MARK),
        None => None,
    };

    let trust_domain = env
        .parse(
            TRUST_DOMAIN,
            "a trust domain such as cluster.local (no '/', '%', spaces)",
            |v| {
                // The identity rules are the one definition of a valid part; placeholders stand in
                // for the other two parts.
                Identity::new(v, "namespace", "account")
                    .is_ok()
                    .then(|| v.to_owned())
            },
        )?
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());

    let local_xds = match (env.string(LOCAL_XDS_PATH), env.string(LOCAL_XDS)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                first: LOCAL_XDS_PATH,
                second: LOCAL_XDS,
            });
        }
        (Some(path), None) => Some(LocalXds::Path(path.into())),
        (None, Some(yaml)) => Some(LocalXds::Inline(yaml)),
        (None, None) => None,
    };

    let default_istiod = match source.var(KUBERNETES_SERVICE_HOST) {
        Some(_) => IN_CLUSTER_ISTIOD,
        None => LOCAL_ISTIOD,
    };
    let xds_address = env.control_plane_address(XDS_ADDRESS, default_istiod)?;
    let fake_ca = env.bool(FAKE_CA, false)?;
    let ca_address = env.control_plane_address(CA_ADDRESS, default_istiod)?;
    let ca = CaConfig {
        address: if fake_ca { None } else { ca_address },
        fake_ca,
        local_ca_dir: env.string(LOCAL_CA_DIR).map(PathBuf::from),
        crl_path: env.string(CRL_PATH).map(PathBuf::from),
        secret_ttl: env.duration(
            SECRET_TTL,
            Duration::from_secs(24 * 3600),
            Duration::from_nanos(1),
        )?,
    };

    let proxy = proxy_config(&env)?;
    let xds_on_demand = env.bool(XDS_ON_DEMAND, false)?;
    if xds_on_demand && proxy.dns_capture {
        return Err(ConfigError::Conflict {
            first: "XDS_ON_DEMAND=true",
            second: "the DNS proxy (on unless ISTIO_META_DNS_CAPTURE is set to something \
                     other than true)",
        });
    }

    let wildcard = match proxy.ipv6_enabled {
        true => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        false => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };

    Ok(Config {
        proxy_mode,
        workload_info,
        inpod: InpodConfig {
            uds: env
                .string(INPOD_UDS)
                .unwrap_or_else(|| DEFAULT_INPOD_UDS.to_owned())
                .into(),
            port_reuse: env.bool(INPOD_PORT_REUSE, true)?,
        },
        packet_mark,
        node_name: env.string(NODE_NAME),
        cluster_id: env
            .string(ISTIO_META_CLUSTER_ID)
            .or_else(|| env.string(CLUSTER_ID))
            .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_owned()),
        cluster_domain: env
            .string(CLUSTER_DOMAIN)
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned()),
        trust_domain,
        network: env.string(NETWORK).unwrap_or_default(),
        local_xds,
        xds_address,
        ca,
        worker_threads: worker_threads(source, available_cpus)?,
        log: LogConfig {
            filter: env.string(RUST_LOG).unwrap_or_else(|| "info".to_owned()),
            json: env
                .parse(LOG_FORMAT, "json | plain", |v| {
                    match v.to_ascii_lowercase().as_str() {
                        "json" => Some(true),
                        "plain" | "text" => Some(false),
                        _ => None,
                    }
                })?
                .unwrap_or(false),
        },
        proxy,
        dns: dns_config(&env)?,
        identity: SelfIdentity {
            pod_name: env.string(POD_NAME).unwrap_or_default(),
            pod_namespace: env.string(POD_NAMESPACE).unwrap_or_default(),
            service_account: env.string(SERVICE_ACCOUNT),
            instance_ip: env
                .parse(INSTANCE_IP, "an IPv4 or IPv6 address", |v| v.parse().ok())?
                .unwrap_or(DEFAULT_INSTANCE_IP),
        },
        admin_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000),
        stats_addr: SocketAddr::new(wildcard, 15020),
        readiness_addr: SocketAddr::new(wildcard, 15021),
        termination_deadline: termination_deadline(&env)?,
        xds_on_demand,
        proxy_args: Vec::new(),
        proxy_metadata: source
            .vars_with_prefix(ISTIO_META_PREFIX)
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(ISTIO_META_PREFIX)?;
                (!key.is_empty()).then(|| (key.to_owned(), value))
            })
            .collect(),
        proxy_metadata_json: metadata_json(source)?,
        xds_headers: headers(source, XDS_HEADER_PREFIX)?,
        ca_headers: headers(source, CA_HEADER_PREFIX)?,
        xds_root_ca: root_cert(&env, XDS_ROOT_CA),
        ca_root_ca: root_cert(&env, CA_ROOT_CA),
        alt_xds_hostname: env.string(ALT_XDS_HOSTNAME),
        alt_ca_hostname: env.string(ALT_CA_HOSTNAME),
        auth_token: auth_token(&env),
    })
}

/// Resolves the number of data-plane worker threads (rules on [`Config::worker_threads`]);
/// `available_cpus` is the count the OS reports, used when `ZTUNNEL_CPU_LIMIT` is unset.
pub(super) fn worker_threads(
    source: &dyn Source,
    available_cpus: usize,
) -> Result<usize, ConfigError> {
    let env = Vars(source);
    let cpus = env
        .parse(ZTUNNEL_CPU_LIMIT, CPU_FORMS, parse_cpus)?
        .unwrap_or(available_cpus)
        .max(1);
    let explicit = env.parse(
        ZTUNNEL_WORKER_THREADS,
        "a thread count such as 4, a share of the CPUs such as 50%, or 0 for all CPUs",
        parse_thread_spec,
    )?;
    if let Some(spec) = explicit {
        return Ok(match spec {
            ThreadSpec::AllCpus => cpus,
            ThreadSpec::Count(n) => n,
            ThreadSpec::PercentMilli(milli) => {
                // ceil(cpus × percent / 100), exact in integers: percent is in thousandths.
                let threads = (cpus as u128 * milli as u128).div_ceil(100_000);
                usize::try_from(threads).unwrap_or(usize::MAX).max(1)
            }
        });
    }
    let limit = env.parse(ZTUNNEL_RESOURCE_CPU_LIMIT, CPU_FORMS, parse_cpus)?;
    let request = env
        .parse(ZTUNNEL_RESOURCE_CPU_REQUEST, CPU_FORMS, parse_cpus)?
        .unwrap_or(0);
    Ok(match limit {
        Some(limit) => limit.max(request),
        None => cpus.div_ceil(4).max(request).max(MIN_AUTO_WORKER_THREADS),
    })
}

/// Parses a duration: one or more `<integer><unit>` parts with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`, `d` (e.g. `1h30m`), or a bare integer meaning seconds. `None` on anything
/// else, including overflow.
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return None;
        }
        let n: u64 = rest[..digits_end].parse().ok()?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_end] {
            "ns" => Duration::from_nanos(n),
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        rest = &rest[unit_end..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// Formats a duration in the syntax [`parse_duration`] reads back, largest units first
/// (`1h30m`, `500ms`, `0s`).
pub(super) fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1000 % 1000), "us"),
        (u64::from(nanos % 1000), "ns"),
    ];
    let mut out = String::new();
    for (n, unit) in parts.into_iter().filter(|(n, _)| *n > 0) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{n}{unit}");
    }
    out
}

/// Serializes a duration as [`format_duration`] text, for the config dump.
pub(super) fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_duration(*duration))
}

/// Like [`serialize_duration`], `null` for `None` (turned off).
pub(super) fn serialize_optional_duration<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serializer.collect_str(&format_duration(*d)),
        None => serializer.serialize_none(),
    }
}

/// Typed reads over a [`Source`]. Every read treats an empty value as unset.
struct Vars<'a>(&'a dyn Source);

impl Vars<'_> {
    fn string(&self, name: &str) -> Option<String> {
        self.0.var(name).filter(|value| !value.is_empty())
    }

    fn parse<T>(
        &self,
        name: &'static str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(name) {
            None => Ok(None),
            Some(value) => match parse(&value) {
                Some(parsed) => Ok(Some(parsed)),
                None => Err(ConfigError::Invalid {
                    var: name.to_owned(),
                    value,
                    expected,
                }),
            },
        }
    }

    fn bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.parse(name, BOOL_FORMS, parse_bool)?.unwrap_or(default))
    }

    /// A duration no shorter than `min`.
    fn duration(
        &self,
        name: &'static str,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let expected = match min {
            Duration::ZERO => DURATION_FORMS,
            min if min >= Duration::from_secs(1) => SECONDS_DURATION_FORMS,
            _ => NONZERO_DURATION_FORMS,
        };
        Ok(self
            .parse(name, expected, |v| parse_duration(v).filter(|d| *d >= min))?
            .unwrap_or(default))
    }

    /// An `http(s)` URI: unset gives `default`, empty disables (`None`), no scheme gets
    /// `https://`.
    fn control_plane_address(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Option<String>, ConfigError> {
        let value = match self.0.var(name) {
            None => return Ok(Some(default.to_owned())),
            Some(value) if value.is_empty() => return Ok(None),
            Some(value) => value,
        };
        let uri = match value.contains("://") {
            true => value.clone(),
            false => format!("https://{value}"),
        };
        let valid = uri.parse::<http::Uri>().is_ok_and(|parsed| {
            matches!(parsed.scheme_str(), Some("http" | "https"))
                && parsed
                    .authority()
                    .is_some_and(|authority| !authority.host().is_empty())
        });
        match valid {
            true => Ok(Some(uri)),
            false => Err(ConfigError::Invalid {
                var: name.to_owned(),
                value,
                expected: ADDRESS_FORMS,
            }),
        }
    }
}

fn proxy_config(env: &Vars<'_>) -> Result<ProxyConfig, ConfigError> {
    let window = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| (1..=H2_MAX_WINDOW).contains(n))
    };
    Ok(ProxyConfig {
        outbound_port: 15001,
        inbound_plaintext_port: 15006,
        inbound_hbone_port: 15008,
        dns_port: 15053,
        ipv6_enabled: env.bool(IPV6_ENABLED, true)?,
        enable_orig_src: env.parse(ENABLE_ORIG_SRC, BOOL_FORMS, parse_bool)?,
        pool_max_streams_per_connection: env
            .parse(
                POOL_MAX_STREAMS_PER_CONNECTION,
                "an integer from 1 to 4294967295",
                |v| v.parse::<u32>().ok().filter(|n| *n > 0),
            )?
            .unwrap_or(100),
        pool_unused_release_timeout: env.duration(
            POOL_UNUSED_RELEASE_TIMEOUT,
            Duration::from_secs(5 * 60),
            Duration::ZERO,
        )?,
        http2_stream_window: env
            .parse(HTTP2_STREAM_WINDOW_SIZE, WINDOW_FORMS, window)?
            .unwrap_or(4 * MIB),
        http2_connection_window: env
            .parse(HTTP2_CONNECTION_WINDOW_SIZE, WINDOW_FORMS, window)?
            .unwrap_or(16 * MIB),
        http2_frame_size: env
            .parse(
                HTTP2_FRAME_SIZE,
                "a frame size in bytes from 16384 to 16777215",
                |v| {
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (H2_MIN_FRAME..=H2_MAX_FRAME).contains(n))
                },
            )?
            .unwrap_or(MIB),
        connect_timeout: Duration::from_secs(10),
        handshake_timeout: env.duration(
            ZTUN_HANDSHAKE_TIMEOUT,
            Duration::from_secs(10),
            Duration::from_nanos(1),
        )?,
        hbone_idle_timeout: env.duration(
            ZTUN_HBONE_IDLE_TIMEOUT,
            Duration::from_secs(10 * 60),
            Duration::from_nanos(1),
        )?,
        stream_stall_timeout: Some(env.duration(
            ZTUN_HBONE_STREAM_STALL_TIMEOUT,
            Duration::from_secs(10 * 60),
            Duration::ZERO,
        )?)
        .filter(|d| !d.is_zero()),
        max_connections_per_pod: env
            .parse(
                ZTUN_MAX_CONNECTIONS_PER_POD,
                "an integer from 0 (no limit) to 4294967295",
                |v| v.parse::<u32>().ok(),
            )?
            .unwrap_or(16384),
        fd_exhaustion_liveness: env.duration(
            ZTUN_FD_EXHAUSTION_LIVENESS,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )?,
        keepalive: Keepalive {
            enabled: env.bool(KEEPALIVE_ENABLED, true)?,
            time: env.duration(
                KEEPALIVE_TIME,
                Duration::from_secs(180),
                Duration::from_secs(1),
            )?,
            interval: env.duration(
                KEEPALIVE_INTERVAL,
                Duration::from_secs(180),
                Duration::from_secs(1),
            )?,
            retries: env
                .parse(KEEPALIVE_RETRIES, "an integer from 0 to 4294967295", |v| {
                    v.parse().ok()
                })?
                .unwrap_or(9),
            user_timeout_enabled: env.bool(USER_TIMEOUT_ENABLED, false)?,
        },
        enable_response_baggage: env.bool(ENABLE_RESPONSE_BAGGAGE, true)?,
        dns_capture: env
            .string(ISTIO_META_DNS_CAPTURE)
            .is_none_or(|v| v.eq_ignore_ascii_case("true")),
        localhost_app_tunnel: env.bool(LOCALHOST_APP_TUNNEL, true)?,
    })
}

fn dns_config(env: &Vars<'_>) -> Result<DnsConfig, ConfigError> {
    let addr_var = match env.string(ISTIO_META_DNS_PROXY_ADDR) {
        Some(_) => ISTIO_META_DNS_PROXY_ADDR,
        None => DNS_PROXY_ADDR,
    };
    let listen = env
        .parse(addr_var, "localhost:<port> or ip:port", |v| {
            match v.strip_prefix("localhost:") {
                Some(port) => port.parse().ok().map(DnsListen::Localhost),
                None => v.parse().ok().map(DnsListen::Addr),
            }
        })?
        .unwrap_or(DnsListen::Localhost(15053));
    Ok(DnsConfig {
        listen,
        resolv_conf: env
            .string(ZTUN_DNS_RESOLV_CONF)
            .unwrap_or_else(|| "/etc/resolv.conf".to_owned())
            .into(),
        preferred_service_namespace: env.parse(
            PREFERED_SERVICE_NAMESPACE,
            "a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)",
            |v| is_namespace_name(v).then(|| v.into()),
        )?,
    })
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_namespace_name(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

fn termination_deadline(env: &Vars<'_>) -> Result<Duration, ConfigError> {
    if let Some(deadline) = env.parse(
        CONNECTION_TERMINATION_DEADLINE,
        DURATION_FORMS,
        parse_duration,
    )? {
        return Ok(deadline);
    }
    let grace = env.parse(
        TERMINATION_GRACE_PERIOD_SECONDS,
        "a whole number of seconds such as 30",
        |v| v.parse::<u64>().ok(),
    )?;
    Ok(match grace {
        // Finish before Kubernetes' SIGKILL: closing connections ourselves (TLS close,
        // RST_STREAM) is gentler than being killed. Short grace periods get a smaller margin.
        Some(secs) if secs > 10 => Duration::from_secs(secs - 5),
        Some(secs) => Duration::from_secs(secs.saturating_sub(1).max(1)),
        None => DEFAULT_TERMINATION_DEADLINE,
    })
}

fn root_cert(env: &Vars<'_>, name: &str) -> RootCert {
    match env.string(name) {
        None => RootCert::File(DEFAULT_ROOT_CERT.into()),
        Some(value) if value == "SYSTEM" => RootCert::System,
        Some(value) if value.contains("-----BEGIN") => RootCert::Static(value),
        Some(path) => RootCert::File(path.into()),
    }
}

fn auth_token(env: &Vars<'_>) -> AuthToken {
    match env.string(AUTH_TOKEN) {
        Some(value) if env.0.path_exists(Path::new(&value)) => AuthToken::File(value.into()),
        Some(token) => AuthToken::Static(token),
        None if env.0.path_exists(Path::new(DEFAULT_TOKEN)) => {
            AuthToken::File(DEFAULT_TOKEN.into())
        }
        None => AuthToken::None,
    }
}

/// Collects `<prefix><name>=value` variables as lowercased `name` → `value` gRPC metadata.
fn headers(source: &dyn Source, prefix: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut headers = BTreeMap::new();
    for (var, value) in source.vars_with_prefix(prefix) {
        let name = var[prefix.len()..].to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_header_token_byte) {
            return Err(ConfigError::InvalidName {
                var,
                expected:
                    "<prefix><name> where <name> is an HTTP header name (letters, digits, -, _, .)",
            });
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ConfigError::Invalid {
                var,
                value,
                expected: "printable ASCII",
            });
        }
        headers.insert(name, value);
    }
    Ok(headers)
}

/// RFC 9110 `tchar`.
fn is_header_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_workload_info(value: &str) -> Option<WorkloadInfo> {
    let mut parts = value.split('/');
    let (Some(namespace), Some(name), Some(service_account), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if namespace.is_empty() || name.is_empty() || service_account.is_empty() {
        return None;
    }
    Some(WorkloadInfo {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service_account: service_account.to_owned(),
    })
}

/// A decimal or `0x` hexadecimal 32-bit mark other than zero (zero means "no mark").
fn parse_mark(value: &str) -> Option<u32> {
    let mark = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => value.parse().ok()?,
    };
    (mark != 0).then_some(mark)
}

enum ThreadSpec {
    AllCpus,
    Count(usize),
    /// A percentage of the CPUs in thousandths of a percent, in (0, 100 000].
    PercentMilli(u64),
}

fn parse_thread_spec(value: &str) -> Option<ThreadSpec> {
    if let Some(percent) = value.strip_suffix('%') {
        let milli = parse_decimal_milli(percent)?;
        return (1..=100_000)
            .contains(&milli)
            .then_some(ThreadSpec::PercentMilli(milli));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match value.parse().ok()? {
        0 => Some(ThreadSpec::AllCpus),
        n => Some(ThreadSpec::Count(n)),
    }
}

/// A Kubernetes CPU quantity (`500m`, `1.5`, `2`) rounded up to whole CPUs; `None` for zero.
fn parse_cpus(value: &str) -> Option<usize> {
    let milli = match value.strip_suffix('m') {
        Some(milli) if !milli.is_empty() && milli.bytes().all(|b| b.is_ascii_digit()) => {
            milli.parse().ok()?
        }
        Some(_) => return None,
        None => parse_decimal_milli(value)?,
    };
    let cpus = usize::try_from(milli.div_ceil(1000)).ok()?;
    (cpus > 0).then_some(cpus)
}

/// A non-negative decimal (`12`, `0.5`, `1.25`) in thousandths, rounding finer digits up.
fn parse_decimal_milli(value: &str) -> Option<u64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || value.ends_with('.') {
        return None;
    }
    let mut milli = whole.parse::<u64>().ok()?.checked_mul(1000)?;
    let (kept, dropped) = fraction.split_at(fraction.len().min(3));
    if !kept.is_empty() {
        let scale = 10u64.pow(3 - kept.len() as u32);
        milli = milli.checked_add(kept.parse::<u64>().ok()? * scale)?;
    }
    if dropped.bytes().any(|b| b != b'0') {
        milli = milli.checked_add(1)?;
    }
    Some(milli)
}
