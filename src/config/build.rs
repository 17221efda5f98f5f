//! Assembles a [`Config`] from a [`Source`]: each variable read through [`Vars`], defaults,
//! the ProxyConfig of the mesh config file, and the rules that combine them (see the field
//! docs of [`Config`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::Identity;

use super::env::Source;
use super::mesh::{Origin, ProxyDefaults, MESH_CONFIG_FILE};
use super::syntax::{
    is_header_token_byte, is_namespace_name, parse_bool, parse_cpus, parse_duration, parse_mark,
    parse_thread_spec, parse_workload_info, ThreadSpec,
};
use super::vars::{
    control_plane_uri, Vars, BOOL_FORMS, CPU_FORMS, DISCOVERY_ADDRESS_FORMS, DNS_ADDR_FORMS,
    DURATION_FORMS, WINDOW_FORMS,
};
use super::{
    AuthToken, AuthzConfig, CaConfig, CompliancePolicy, Config, ConfigError, DnsConfig, DnsListen,
    HttpOnlyDeny, InpodConfig, Keepalive, LocalXds, LogConfig, ProxyConfig, ProxyMode, RootCert,
    SelfIdentity, XdsConfig,
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
/// Proxy metadata keys (from `ISTIO_META_<key>` or proxyMetadata) that change behaviour.
const DNS_CAPTURE_KEY: &str = "DNS_CAPTURE";
const DNS_PROXY_ADDR_KEY: &str = "DNS_PROXY_ADDR";
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
const ZTUN_L4_DENY_HTTP_RULES: &str = "ZTUN_L4_DENY_HTTP_RULES";
const AUTHZ_POLICY_INFO_LOGGING: &str = "AUTHZ_POLICY_INFO_LOGGING";
const PROXY_CONFIG: &str = "PROXY_CONFIG";
const ENABLE_PROXY: &str = "ENABLE_PROXY";
const UNSTABLE_ENABLE_SOCKS5: &str = "UNSTABLE_ENABLE_SOCKS5";
const TLS12_ENABLED: &str = "TLS12_ENABLED";
const COMPLIANCE_POLICY: &str = "COMPLIANCE_POLICY";
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

/// Assembles the configuration; see the field docs of [`Config`] for each rule.
pub(super) fn build(source: &dyn Source, available_cpus: usize) -> Result<Config, ConfigError> {
    let env = Vars(source);
    refuse_unimplemented(&env)?;
    let defaults = proxy_defaults(source)?;
    let proxy_metadata = proxy_metadata(source, &defaults);

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
    // XDS_ADDRESS (set, even empty), else ProxyConfig discoveryAddress, else the default.
    let xds_address = match (source.var(XDS_ADDRESS), &defaults.discovery_address) {
        (None, Some((address, origin))) => {
            let invalid = || ConfigError::Invalid {
                var: origin.field("discoveryAddress"),
                value: address.clone(),
                expected: DISCOVERY_ADDRESS_FORMS,
            };
            Some(control_plane_uri(address).ok_or_else(invalid)?)
        }
        _ => env.control_plane_address(XDS_ADDRESS, default_istiod)?,
    };
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
        headers: headers(source, CA_HEADER_PREFIX)?,
        root_ca: root_cert(&env, CA_ROOT_CA),
        alt_hostname: env.string(ALT_CA_HOSTNAME),
    };

    let proxy = proxy_config(&env, &proxy_metadata)?;
    let xds_on_demand = env.bool(XDS_ON_DEMAND, false)?;
    if xds_on_demand && proxy.dns_capture {
        return Err(ConfigError::Conflict {
            first: "XDS_ON_DEMAND=true",
            second: "the DNS proxy (on unless ISTIO_META_DNS_CAPTURE, or DNS_CAPTURE in \
                     proxyMetadata, is set to something other than true)",
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
        xds: XdsConfig {
            address: xds_address,
            on_demand: xds_on_demand,
            headers: headers(source, XDS_HEADER_PREFIX)?,
            root_ca: root_cert(&env, XDS_ROOT_CA),
            alt_hostname: env.string(ALT_XDS_HOSTNAME),
        },
        ca,
        worker_threads: worker_threads(source, available_cpus, defaults.concurrency)?,
        // ztunnel acts on `pqc` only and ignores any other value.
        compliance_policy: match env.string(COMPLIANCE_POLICY).as_deref() {
            Some("pqc") => CompliancePolicy::Pqc,
            _ => CompliancePolicy::None,
        },
        authz: AuthzConfig {
            http_only_deny: env
                .parse(ZTUN_L4_DENY_HTTP_RULES, "ignore | enforce", |v| match v {
                    "ignore" => Some(HttpOnlyDeny::Ignore),
                    "enforce" => Some(HttpOnlyDeny::Enforce),
                    _ => None,
                })?
                .unwrap_or_default(),
            info_logging: env.bool(AUTHZ_POLICY_INFO_LOGGING, false)?,
        },
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
        dns: dns_config(&env, &defaults)?,
        identity: SelfIdentity {
            pod_name: env.string(POD_NAME).unwrap_or_default(),
            pod_namespace: env.string(POD_NAMESPACE).unwrap_or_default(),
            service_account: env.string(SERVICE_ACCOUNT),
            instance_ip: env
                .parse(INSTANCE_IP, "an IPv4 or IPv6 address", |v| v.parse().ok())?
                .unwrap_or(DEFAULT_INSTANCE_IP),
        },
        admin_addr: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            defaults.proxy_admin_port.unwrap_or(15000),
        ),
        stats_addr: SocketAddr::new(wildcard, defaults.stats_port.unwrap_or(15020)),
        readiness_addr: SocketAddr::new(wildcard, 15021),
        termination_deadline: termination_deadline(&env)?,
        proxy_args: Vec::new(),
        proxy_metadata,
        proxy_metadata_json: metadata_json(source)?,
        auth_token: auth_token(&env),
    })
}

/// Resolves the number of data-plane worker threads (rules on [`Config::worker_threads`]);
/// `available_cpus` is the count the OS reports, `concurrency` the ProxyConfig field.
pub(super) fn worker_threads(
    source: &dyn Source,
    available_cpus: usize,
    concurrency: Option<u16>,
) -> Result<usize, ConfigError> {
    let env = Vars(source);
    let limit = env.parse(ZTUNNEL_RESOURCE_CPU_LIMIT, CPU_FORMS, parse_cpus)?;
    let request = env
        .parse(ZTUNNEL_RESOURCE_CPU_REQUEST, CPU_FORMS, parse_cpus)?
        .unwrap_or(0);
    let cpu_count = env.parse(ZTUNNEL_CPU_LIMIT, CPU_FORMS, parse_cpus)?;
    // What `0`, percentages and the 25% rule count: the explicit resource limit first.
    let cpus = limit.or(cpu_count).unwrap_or(available_cpus).max(1);
    let explicit = env.parse(
        ZTUNNEL_WORKER_THREADS,
        "a thread count such as 4, a share of the CPUs such as 50%, or 0 for all CPUs",
        parse_thread_spec,
    )?;
    let threads = match (explicit, concurrency) {
        (Some(ThreadSpec::AllCpus), _) | (None, Some(0)) => cpus,
        (Some(ThreadSpec::Count(n)), _) => n,
        (Some(ThreadSpec::PercentMilli(milli)), _) => {
            // ceil(cpus × percent / 100), exact in integers: percent is in thousandths.
            let threads = (cpus as u128 * milli as u128).div_ceil(100_000);
            usize::try_from(threads).unwrap_or(usize::MAX)
        }
        (None, Some(n)) => usize::from(n),
        (None, None) => match limit {
            Some(limit) => limit.max(request),
            None => cpus.div_ceil(4).max(request).max(MIN_AUTO_WORKER_THREADS),
        },
    };
    Ok(threads.max(1))
}

/// Variables ztunnel reads whose effect ztun does not implement: accepted at a value that
/// changes nothing, refused (naming the variable) at any other, so that a setting is never
/// silently dropped.
fn refuse_unimplemented(env: &Vars<'_>) -> Result<(), ConfigError> {
    let refused = |var: &'static str, reason: &'static str| ConfigError::Unsupported {
        var,
        value: env.string(var).unwrap_or_default(),
        reason,
    };
    if !env.bool(ENABLE_PROXY, true)? {
        return Err(refused(
            ENABLE_PROXY,
            "ztun always runs the proxy; a DNS-only ztun is not implemented",
        ));
    }
    if env.bool(UNSTABLE_ENABLE_SOCKS5, false)? {
        return Err(refused(
            UNSTABLE_ENABLE_SOCKS5,
            "ztun has no SOCKS5 listener",
        ));
    }
    if env.bool(TLS12_ENABLED, false)? {
        return Err(refused(TLS12_ENABLED, "ztun's HBONE speaks TLS 1.3 only"));
    }
    Ok(())
}

/// The ProxyConfig of the mesh config file's `defaultConfig`, overlaid by `PROXY_CONFIG`.
/// No file is no configuration; a file that cannot be read or parsed is an error.
fn proxy_defaults(source: &dyn Source) -> Result<ProxyDefaults, ConfigError> {
    let malformed = |origin: Origin, reason: String| ConfigError::Malformed {
        origin: origin.to_string(),
        reason,
    };
    let mesh = match source.read_file(Path::new(MESH_CONFIG_FILE)) {
        Ok(None) => ProxyDefaults::default(),
        Ok(Some(text)) => ProxyDefaults::from_mesh_file(&text)
            .map_err(|reason| malformed(Origin::MeshFile, reason))?,
        Err(e) => return Err(malformed(Origin::MeshFile, format!("cannot be read: {e}"))),
    };
    let proxy_config = match Vars(source).string(PROXY_CONFIG) {
        None => ProxyDefaults::default(),
        Some(text) => ProxyDefaults::from_proxy_config(&text)
            .map_err(|reason| malformed(Origin::ProxyConfigVar, reason))?,
    };
    Ok(mesh.overlaid_by(proxy_config))
}

/// `proxyMetadata` of the mesh file and `PROXY_CONFIG`, then every `ISTIO_META_<K>` variable
/// as `<K>`, overriding.
fn proxy_metadata(source: &dyn Source, defaults: &ProxyDefaults) -> BTreeMap<String, String> {
    let mut metadata: BTreeMap<String, String> = defaults
        .metadata
        .iter()
        .map(|(key, (value, _))| (key.clone(), value.clone()))
        .collect();
    for (name, value) in source.vars_with_prefix(ISTIO_META_PREFIX) {
        if let Some(key) = name
            .strip_prefix(ISTIO_META_PREFIX)
            .filter(|k| !k.is_empty())
        {
            metadata.insert(key.to_owned(), value);
        }
    }
    metadata
}

fn proxy_config(
    env: &Vars<'_>,
    metadata: &BTreeMap<String, String>,
) -> Result<ProxyConfig, ConfigError> {
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
        // The merged metadata: `ISTIO_META_DNS_CAPTURE`, else proxyMetadata `DNS_CAPTURE`.
        // As ztunnel: unset is on, set is on only for `true` in any case (empty is off).
        dns_capture: metadata
            .get(DNS_CAPTURE_KEY)
            .is_none_or(|v| v.eq_ignore_ascii_case("true")),
        localhost_app_tunnel: env.bool(LOCALHOST_APP_TUNNEL, true)?,
    })
}

fn dns_config(env: &Vars<'_>, defaults: &ProxyDefaults) -> Result<DnsConfig, ConfigError> {
    // The environment (either variable) wins over proxyMetadata from PROXY_CONFIG or the file.
    let from_env = [ISTIO_META_DNS_PROXY_ADDR, DNS_PROXY_ADDR]
        .into_iter()
        .find_map(|var| Some((var.to_owned(), env.string(var)?)));
    let from_metadata = || {
        let (value, origin) = defaults.metadata.get(DNS_PROXY_ADDR_KEY)?;
        let field = origin.field(&format!("proxyMetadata.{DNS_PROXY_ADDR_KEY}"));
        (!value.is_empty()).then(|| (field, value.clone()))
    };
    let listen = match from_env.or_else(from_metadata) {
        None => DnsListen::Localhost(15053),
        Some((var, value)) => match value.strip_prefix("localhost:") {
            Some(port) => port.parse().ok().map(DnsListen::Localhost),
            None => value.parse().ok().map(DnsListen::Addr),
        }
        .ok_or(ConfigError::Invalid {
            var,
            value,
            expected: DNS_ADDR_FORMS,
        })?,
    };
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
