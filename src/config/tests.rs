use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::build::worker_threads;
use super::syntax::{format_duration, parse_duration};
use super::*;

/// A table row's variables.
type Vars = &'static [(&'static str, &'static str)];

/// The CPU count used where the test does not care; the auto rule gives max(ceil(8/4), 2) = 2.
const CPUS: usize = 8;

fn env(vars: &[(&str, &str)]) -> MapEnv {
    vars.iter().copied().collect()
}

fn build(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_source_with_cpus(&env(vars), CPUS)
}

fn config(vars: &[(&str, &str)]) -> Config {
    build(vars).unwrap_or_else(|e| panic!("{vars:?} should be accepted: {e}"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn empty_environment_gives_documented_defaults() {
    let c = config(&[]);
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.workload_info, None);
    assert_eq!(
        c.inpod,
        InpodConfig {
            uds: PathBuf::from("/var/run/ztunnel/ztunnel.sock"),
            port_reuse: true
        }
    );
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(c.node_name, None);
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!(c.cluster_domain, "cluster.local");
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.network, "");
    assert_eq!(c.local_xds, None);
    assert_eq!(c.xds.address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(
        c.ca,
        CaConfig {
            address: Some("https://localhost:15012".into()),
            fake_ca: false,
            local_ca_dir: None,
            crl_path: None,
            secret_ttl: secs(24 * 3600),
            // The connection settings are checked by their own tests.
            headers: c.ca.headers.clone(),
            root_ca: c.ca.root_ca.clone(),
            alt_hostname: c.ca.alt_hostname.clone(),
        }
    );
    assert_eq!(c.worker_threads, 2);
    assert_eq!(
        c.log,
        LogConfig {
            filter: "info".into(),
            json: false
        }
    );
    assert_eq!(
        c.proxy,
        ProxyConfig {
            outbound_port: 15001,
            inbound_plaintext_port: 15006,
            inbound_hbone_port: 15008,
            dns_port: 15053,
            ipv6_enabled: true,
            enable_orig_src: None,
            pool_max_streams_per_connection: 100,
            pool_unused_release_timeout: secs(300),
            http2_stream_window: 4 << 20,
            http2_connection_window: 16 << 20,
            http2_frame_size: 1 << 20,
            connect_timeout: secs(10),
            handshake_timeout: secs(10),
            hbone_idle_timeout: secs(600),
            stream_stall_timeout: Some(secs(600)),
            max_connections_per_pod: 16384,
            fd_exhaustion_liveness: secs(60),
            keepalive: Keepalive {
                enabled: true,
                time: secs(180),
                interval: secs(180),
                retries: 9,
                user_timeout_enabled: false,
            },
            enable_response_baggage: true,
            dns_capture: true,
            localhost_app_tunnel: true,
        }
    );
    assert_eq!(
        c.identity,
        SelfIdentity {
            pod_name: String::new(),
            pod_namespace: String::new(),
            service_account: None,
            instance_ip: IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
        }
    );
    assert_eq!(
        c.admin_addr,
        "127.0.0.1:15000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.stats_addr, "[::]:15020".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.readiness_addr,
        "[::]:15021".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.termination_deadline, secs(5));
    assert!(!c.xds.on_demand);
    assert!(c.proxy_args.is_empty());
    assert!(c.proxy_metadata.is_empty());
    assert!(c.xds.headers.is_empty());
    assert!(c.ca.headers.is_empty());
    let default_root = RootCert::File("./var/run/secrets/istio/root-cert.pem".into());
    assert_eq!(c.xds.root_ca, default_root);
    assert_eq!(c.ca.root_ca, default_root);
    assert_eq!(c.xds.alt_hostname, None);
    assert_eq!(c.ca.alt_hostname, None);
    assert_eq!(c.auth_token, AuthToken::None);
    assert_eq!(
        c.illegal_ports(),
        [15001, 15006, 15008, 15053, 15000, 15020, 15021]
    );
}

#[test]
fn every_variable_is_read() {
    let c = config(&[
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "ns1/pod-a/sa-a"),
        ("INPOD_UDS", "/tmp/zds.sock"),
        ("INPOD_PORT_REUSE", "FALSE"),
        ("PACKET_MARK", "0x539"),
        ("NODE_NAME", "node-1"),
        ("CLUSTER_ID", "c2"),
        ("CLUSTER_DOMAIN", "example.internal"),
        ("TRUST_DOMAIN", "example.org"),
        ("NETWORK", "net-1"),
        ("LOCAL_XDS_PATH", "/etc/ztun/local.yaml"),
        ("XDS_ADDRESS", "http://istiod.custom:15010"),
        ("CA_ADDRESS", "ca.custom:15012"),
        ("LOCAL_CA_DIR", "/etc/ztun/ca"),
        ("CRL_PATH", "/etc/ztun/crl.pem"),
        ("SECRET_TTL", "1h30m"),
        ("ZTUNNEL_WORKER_THREADS", "3"),
        ("RUST_LOG", "debug,h2=info"),
        ("LOG_FORMAT", "json"),
        ("IPV6_ENABLED", "0"),
        ("ENABLE_ORIG_SRC", "true"),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "50"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "90s"),
        ("HTTP2_STREAM_WINDOW_SIZE", "65535"),
        ("HTTP2_CONNECTION_WINDOW_SIZE", "1048576"),
        ("HTTP2_FRAME_SIZE", "16384"),
        ("ZTUN_HANDSHAKE_TIMEOUT", "2500ms"),
        ("ZTUN_HBONE_IDLE_TIMEOUT", "90s"),
        ("ZTUN_HBONE_STREAM_STALL_TIMEOUT", "0"),
        ("ZTUN_MAX_CONNECTIONS_PER_POD", "0"),
        ("ZTUN_FD_EXHAUSTION_LIVENESS", "5s"),
        ("KEEPALIVE_ENABLED", "false"),
        ("KEEPALIVE_TIME", "30s"),
        ("KEEPALIVE_INTERVAL", "10s"),
        ("KEEPALIVE_RETRIES", "3"),
        ("USER_TIMEOUT_ENABLED", "1"),
        ("ENABLE_RESPONSE_BAGGAGE", "false"),
        ("ISTIO_META_DNS_CAPTURE", "false"),
        ("LOCALHOST_APP_TUNNEL", "false"),
        ("POD_NAME", "ztun-abc"),
        ("POD_NAMESPACE", "istio-system"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("INSTANCE_IP", "fd00::7"),
        ("CONNECTION_TERMINATION_DEADLINE", "45s"),
        ("XDS_ON_DEMAND", "true"),
        ("ISTIO_META_FOO", "bar"),
        ("XDS_HEADER_X_Tenant", "blue"),
        ("CA_HEADER_AUTHORIZATION", "Bearer abc"),
        ("XDS_ROOT_CA", "SYSTEM"),
        (
            "CA_ROOT_CA",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ),
        ("ALT_XDS_HOSTNAME", "istiod.alt"),
        ("ALT_CA_HOSTNAME", "ca.alt"),
        ("AUTH_TOKEN", "literal-token"),
        ("PREFERED_SERVICE_NAMESPACE", "istio-system"),
    ]);
    assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
    assert_eq!(
        c.workload_info,
        Some(WorkloadInfo {
            namespace: "ns1".into(),
            name: "pod-a".into(),
            service_account: "sa-a".into()
        })
    );
    assert_eq!(
        c.inpod,
        InpodConfig {
            uds: "/tmp/zds.sock".into(),
            port_reuse: false
        }
    );
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(c.node_name.as_deref(), Some("node-1"));
    assert_eq!(c.cluster_id, "c2");
    assert_eq!(c.cluster_domain, "example.internal");
    assert_eq!(c.trust_domain, "example.org");
    assert_eq!(c.network, "net-1");
    assert_eq!(
        c.local_xds,
        Some(LocalXds::Path("/etc/ztun/local.yaml".into()))
    );
    assert_eq!(c.xds.address.as_deref(), Some("http://istiod.custom:15010"));
    assert_eq!(
        c.ca,
        CaConfig {
            address: Some("https://ca.custom:15012".into()),
            fake_ca: false,
            local_ca_dir: Some("/etc/ztun/ca".into()),
            crl_path: Some("/etc/ztun/crl.pem".into()),
            secret_ttl: secs(5400),
            // The connection settings are checked by their own tests.
            headers: c.ca.headers.clone(),
            root_ca: c.ca.root_ca.clone(),
            alt_hostname: c.ca.alt_hostname.clone(),
        }
    );
    assert_eq!(c.worker_threads, 3);
    assert_eq!(
        c.log,
        LogConfig {
            filter: "debug,h2=info".into(),
            json: true
        }
    );
    let p = &c.proxy;
    assert!(!p.ipv6_enabled);
    assert_eq!(p.enable_orig_src, Some(true));
    assert_eq!(p.pool_max_streams_per_connection, 50);
    assert_eq!(p.pool_unused_release_timeout, secs(90));
    assert_eq!(
        (
            p.http2_stream_window,
            p.http2_connection_window,
            p.http2_frame_size
        ),
        (65535, 1 << 20, 16384)
    );
    assert_eq!(p.handshake_timeout, Duration::from_millis(2500));
    assert_eq!(p.hbone_idle_timeout, Duration::from_secs(90));
    assert_eq!(p.stream_stall_timeout, None);
    assert_eq!(p.max_connections_per_pod, 0);
    assert_eq!(p.fd_exhaustion_liveness, Duration::from_secs(5));
    assert_eq!(
        p.keepalive,
        Keepalive {
            enabled: false,
            time: secs(30),
            interval: secs(10),
            retries: 3,
            user_timeout_enabled: true
        }
    );
    assert!(!p.enable_response_baggage);
    assert!(!p.dns_capture);
    assert!(!p.localhost_app_tunnel);
    assert_eq!(
        c.identity,
        SelfIdentity {
            pod_name: "ztun-abc".into(),
            pod_namespace: "istio-system".into(),
            service_account: Some("ztunnel".into()),
            instance_ip: "fd00::7".parse().unwrap(),
        }
    );
    assert_eq!(c.stats_addr, "0.0.0.0:15020".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.readiness_addr,
        "0.0.0.0:15021".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.termination_deadline, secs(45));
    assert!(c.xds.on_demand);
    assert_eq!(
        c.proxy_metadata,
        BTreeMap::from([
            ("DNS_CAPTURE".to_owned(), "false".to_owned()),
            ("FOO".to_owned(), "bar".to_owned())
        ])
    );
    assert_eq!(
        c.xds.headers,
        BTreeMap::from([("x_tenant".to_owned(), "blue".to_owned())])
    );
    assert_eq!(
        c.ca.headers,
        BTreeMap::from([("authorization".to_owned(), "Bearer abc".to_owned())])
    );
    assert_eq!(c.xds.root_ca, RootCert::System);
    assert!(
        matches!(&c.ca.root_ca, RootCert::Static(pem) if pem.starts_with("-----BEGIN CERTIFICATE"))
    );
    assert_eq!(c.xds.alt_hostname.as_deref(), Some("istiod.alt"));
    assert_eq!(c.ca.alt_hostname.as_deref(), Some("ca.alt"));
    assert_eq!(c.auth_token, AuthToken::Static("literal-token".into()));
    assert_eq!(
        c.dns.preferred_service_namespace.as_deref(),
        Some("istio-system")
    );
}

#[test]
fn the_helm_chart_environment_is_accepted() {
    // The env of the istio-proxy container in fixtures/istio-ztunnel-ambient.yaml, with the
    // downward-API values a 16-CPU node without a CPU limit would provide (limits.cpu falls
    // back to the node's allocatable CPUs; requests.cpu 200m is rounded up by divisor 1).
    let vars = env(&[
        ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
        ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
        ("RUST_LOG", "info"),
        ("RUST_BACKTRACE", "1"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("INPOD_ENABLED", "true"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("POD_NAME", "ztunnel-x7k2p"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "worker-1"),
        ("INSTANCE_IP", "10.244.1.5"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("ISTIO_META_ENABLE_HBONE", "true"),
        ("ZTUNNEL_CPU_LIMIT", "16"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ])
    .with_existing_path("./var/run/secrets/tokens/istio-token");
    let c = Config::from_source_with_cpus(&vars, 64).expect("the chart's environment is valid");

    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca.address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        c.log,
        LogConfig {
            filter: "info".into(),
            json: false
        }
    );
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!(c.termination_deadline, secs(25));
    assert_eq!(c.node_name.as_deref(), Some("worker-1"));
    assert_eq!(c.identity.pod_name, "ztunnel-x7k2p");
    assert_eq!(c.identity.pod_namespace, "istio-system");
    assert_eq!(c.identity.service_account.as_deref(), Some("ztunnel"));
    assert_eq!(
        c.identity.instance_ip,
        "10.244.1.5".parse::<IpAddr>().unwrap()
    );
    // ZTUNNEL_CPU_LIMIT (16) is the CPU count, not a limit: ceil(16 / 4) = 4 beats request 1.
    assert_eq!(c.worker_threads, 4);
    assert_eq!(
        c.proxy_metadata,
        BTreeMap::from([
            ("CLUSTER_ID".to_owned(), "Kubernetes".to_owned()),
            ("ENABLE_HBONE".to_owned(), "true".to_owned()),
        ])
    );
    assert!(c.proxy.dns_capture);
    assert_eq!(
        c.auth_token,
        AuthToken::File("./var/run/secrets/tokens/istio-token".into())
    );
    assert_eq!(
        c.xds.root_ca,
        RootCert::File("./var/run/secrets/istio/root-cert.pem".into())
    );
}

#[test]
fn malformed_values_name_the_variable() {
    let cases: &[(&str, &str)] = &[
        ("PROXY_MODE", "x"),
        ("INPOD_PORT_REUSE", "yes"),
        ("PACKET_MARK", "0"),
        ("PACKET_MARK", "mark"),
        ("TRUST_DOMAIN", "a/b"),
        ("XDS_ADDRESS", "ftp://istiod:15012"),
        ("XDS_ADDRESS", "istiod 15012"),
        ("CA_ADDRESS", "https://"),
        ("FAKE_CA", "maybe"),
        ("SECRET_TTL", "0s"),
        ("SECRET_TTL", "1 day"),
        ("ZTUNNEL_WORKER_THREADS", "-1"),
        ("ZTUNNEL_WORKER_THREADS", "150%"),
        ("ZTUNNEL_WORKER_THREADS", "0%"),
        ("ZTUNNEL_CPU_LIMIT", "0"),
        ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2 cores"),
        ("ZTUNNEL_RESOURCE_CPU_REQUEST", "1.5.2"),
        ("LOG_FORMAT", "xml"),
        ("IPV6_ENABLED", "on"),
        ("ENABLE_ORIG_SRC", "auto"),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "0"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "5x"),
        ("HTTP2_STREAM_WINDOW_SIZE", "2147483648"),
        ("HTTP2_CONNECTION_WINDOW_SIZE", "0"),
        ("HTTP2_FRAME_SIZE", "16383"),
        ("HTTP2_FRAME_SIZE", "16777216"),
        ("ZTUN_HANDSHAKE_TIMEOUT", "0ms"),
        ("ZTUN_HBONE_IDLE_TIMEOUT", "0s"),
        ("ZTUN_MAX_CONNECTIONS_PER_POD", "-1"),
        ("ZTUN_FD_EXHAUSTION_LIVENESS", "500ms"),
        ("KEEPALIVE_TIME", "500ms"),
        ("KEEPALIVE_INTERVAL", "10 s"),
        ("KEEPALIVE_RETRIES", "-3"),
        ("INSTANCE_IP", "10.0.0.300"),
        ("CONNECTION_TERMINATION_DEADLINE", "soon"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30s"),
        ("XDS_ON_DEMAND", "2"),
        ("XDS_HEADER_X_TENANT", "caf\u{e9}"),
        ("PREFERED_SERVICE_NAMESPACE", "Istio.System"),
        ("PREFERED_SERVICE_NAMESPACE", "-ns"),
    ];
    for &(var, value) in cases {
        let err = build(&[(var, value)]).expect_err(&format!("{var}={value:?} should be rejected"));
        let ConfigError::Invalid {
            var: named,
            value: found,
            ..
        } = &err
        else {
            panic!("{var}={value:?}: unexpected error {err:?}");
        };
        assert_eq!((named.as_str(), found.as_str()), (var, value));
        assert!(
            err.to_string()
                .starts_with(&format!("{var}={value:?}: expected ")),
            "{err}"
        );
    }
    // The message lists the accepted forms.
    assert_eq!(
        build(&[("PROXY_MODE", "x")]).unwrap_err().to_string(),
        r#"PROXY_MODE="x": expected shared | dedicated"#
    );
}

#[test]
fn header_names_must_be_tokens() {
    let err = build(&[("XDS_HEADER_", "v")]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidName { var, .. } if var == "XDS_HEADER_"),
        "{err:?}"
    );
    let err = build(&[("CA_HEADER_A B", "v")]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidName { var, .. } if var == "CA_HEADER_A B"),
        "{err:?}"
    );
}

#[test]
fn dedicated_mode_requires_workload_info() {
    assert_eq!(
        build(&[("PROXY_MODE", "dedicated")]).unwrap_err(),
        ConfigError::Missing {
            var: "PROXY_WORKLOAD_INFO",
            because: "PROXY_MODE=dedicated"
        }
    );
    for bad in [
        "ns/name",
        "ns/name/sa/extra",
        "ns//sa",
        "/name/sa",
        "ns/name/",
    ] {
        let err = build(&[("PROXY_MODE", "dedicated"), ("PROXY_WORKLOAD_INFO", bad)]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { var, .. } if var == "PROXY_WORKLOAD_INFO"),
            "{bad}: {err:?}"
        );
    }
    let c = config(&[
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "ns/name/sa"),
    ]);
    assert_eq!(c.packet_mark, None, "dedicated mode marks only when asked");
    // Shared mode ignores the variable entirely.
    assert_eq!(
        config(&[("PROXY_WORKLOAD_INFO", "not valid")]).workload_info,
        None
    );
}

#[test]
fn control_plane_addresses() {
    let cases: &[(Vars, Option<&str>)] = &[
        (&[], Some("https://localhost:15012")),
        (
            &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")],
            Some("https://istiod.istio-system.svc:15012"),
        ),
        (
            &[("KUBERNETES_SERVICE_HOST", "")],
            Some("https://istiod.istio-system.svc:15012"),
        ),
        (&[("XDS_ADDRESS", "")], None),
        (
            &[
                ("XDS_ADDRESS", ""),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ],
            None,
        ),
        (
            &[("XDS_ADDRESS", "istiod-rev1.istio-system.svc:15012")],
            Some("https://istiod-rev1.istio-system.svc:15012"),
        ),
        (
            &[("XDS_ADDRESS", "https://10.0.0.1:15012")],
            Some("https://10.0.0.1:15012"),
        ),
        (
            &[("XDS_ADDRESS", "[fd00::1]:15012")],
            Some("https://[fd00::1]:15012"),
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(config(vars).xds.address.as_deref(), *want, "{vars:?}");
    }
    // The CA follows the same rules, and a fake CA needs no address.
    assert_eq!(config(&[("CA_ADDRESS", "")]).ca.address, None);
    assert_eq!(
        config(&[("CA_ADDRESS", "ca:1")]).ca.address.as_deref(),
        Some("https://ca:1")
    );
    let fake = config(&[("FAKE_CA", "true"), ("CA_ADDRESS", "ca:1")]).ca;
    assert!(fake.fake_ca);
    assert_eq!(fake.address, None);
}

#[test]
fn worker_thread_rules() {
    #[rustfmt::skip]
    let cases: &[(Vars, usize, usize)] = &[
        // (variables, CPUs the OS reports, threads)
        (&[], 1, 2),
        (&[], 8, 2),
        (&[], 9, 3),
        (&[], 64, 16),
        (&[("ZTUNNEL_WORKER_THREADS", "4")], 64, 4),
        (&[("ZTUNNEL_WORKER_THREADS", "0")], 12, 12),
        (&[("ZTUNNEL_WORKER_THREADS", "0"), ("ZTUNNEL_CPU_LIMIT", "3")], 64, 3),
        (&[("ZTUNNEL_WORKER_THREADS", "50%")], 8, 4),
        (&[("ZTUNNEL_WORKER_THREADS", "30%"), ("ZTUNNEL_CPU_LIMIT", "16")], 64, 5),
        (&[("ZTUNNEL_WORKER_THREADS", "10%"), ("ZTUNNEL_CPU_LIMIT", "4")], 64, 1),
        (&[("ZTUNNEL_WORKER_THREADS", "12.5%")], 16, 2),
        (&[("ZTUNNEL_WORKER_THREADS", "100%")], 6, 6),
        // Explicit count wins over resources.
        (&[("ZTUNNEL_WORKER_THREADS", "1"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "8")], 64, 1),
        // A resource limit: max(limit, request), quantities rounded up.
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m")], 64, 1),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1.5")], 64, 2),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "3"), ("ZTUNNEL_RESOURCE_CPU_REQUEST", "2")], 64, 3),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"), ("ZTUNNEL_RESOURCE_CPU_REQUEST", "2500m")], 64, 3),
        // No limit: max(ceil(25% of CPUs), request, 2).
        (&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "200m")], 4, 2),
        (&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "6")], 16, 6),
        (&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "1")], 64, 16),
        // ZTUNNEL_CPU_LIMIT replaces the OS count.
        (&[("ZTUNNEL_CPU_LIMIT", "32")], 4, 8),
        (&[("ZTUNNEL_CPU_LIMIT", "2500m")], 64, 2),
        // `0` and percentages count ZTUNNEL_RESOURCE_CPU_LIMIT first, then ZTUNNEL_CPU_LIMIT.
        (&[("ZTUNNEL_WORKER_THREADS", "50%"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"), ("ZTUNNEL_CPU_LIMIT", "16")], 64, 1),
        (&[("ZTUNNEL_WORKER_THREADS", "50%"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "6")], 64, 3),
        (&[("ZTUNNEL_WORKER_THREADS", "100%"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2500m")], 64, 3),
        (&[("ZTUNNEL_WORKER_THREADS", "10%"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m")], 64, 1),
        (&[("ZTUNNEL_WORKER_THREADS", "0"), ("ZTUNNEL_RESOURCE_CPU_LIMIT", "3"), ("ZTUNNEL_CPU_LIMIT", "16")], 64, 3),
        // ... but not the request.
        (&[("ZTUNNEL_WORKER_THREADS", "50%"), ("ZTUNNEL_RESOURCE_CPU_REQUEST", "2"), ("ZTUNNEL_CPU_LIMIT", "16")], 64, 8),
    ];
    for &(vars, cpus, want) in cases {
        assert_eq!(
            worker_threads(&env(vars), cpus, None),
            Ok(want),
            "{vars:?} with {cpus} CPUs"
        );
    }
}

#[test]
fn proxy_config_concurrency_sits_between_worker_threads_and_the_cpu_default() {
    #[rustfmt::skip]
    let cases: &[(Vars, Option<u16>, usize, usize)] = &[
        // (variables, concurrency, CPUs the OS reports, threads)
        (&[], Some(5), 64, 5),
        (&[], Some(1), 64, 1),
        (&[], Some(0), 12, 12),
        (&[("ZTUNNEL_CPU_LIMIT", "6")], Some(0), 64, 6),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "3"), ("ZTUNNEL_CPU_LIMIT", "16")], Some(0), 64, 3),
        // It beats the resource-derived default...
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "8")], Some(2), 64, 2),
        // ... and loses to ZTUNNEL_WORKER_THREADS.
        (&[("ZTUNNEL_WORKER_THREADS", "3")], Some(7), 64, 3),
        (&[("ZTUNNEL_WORKER_THREADS", "25%")], Some(7), 16, 4),
    ];
    for &(vars, concurrency, cpus, want) in cases {
        assert_eq!(
            worker_threads(&env(vars), cpus, concurrency),
            Ok(want),
            "{vars:?}, concurrency {concurrency:?}, {cpus} CPUs"
        );
    }
    // Through the whole configuration: from PROXY_CONFIG, and from the mesh file.
    assert_eq!(
        config(&[("PROXY_CONFIG", "concurrency: 6")]).worker_threads,
        6
    );
    assert_eq!(
        config(&[("PROXY_CONFIG", "concurrency: 0")]).worker_threads,
        CPUS
    );
    let mesh = mesh_env("defaultConfig:\n  concurrency: 3\n");
    assert_eq!(from(&mesh).unwrap().worker_threads, 3);
    let both = mesh_env("defaultConfig:\n  concurrency: 3\n")
        .with_var("PROXY_CONFIG", "{\"concurrency\": 4}");
    assert_eq!(from(&both).unwrap().worker_threads, 4);
    let env_wins =
        mesh_env("defaultConfig:\n  concurrency: 3\n").with_var("ZTUNNEL_WORKER_THREADS", "1");
    assert_eq!(from(&env_wins).unwrap().worker_threads, 1);
}

#[test]
fn termination_deadline_rules() {
    let cases: &[(Vars, Duration)] = &[
        (&[], secs(5)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "30")], secs(25)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "11")], secs(6)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "10")], secs(9)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "2")], secs(1)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "1")], secs(1)),
        (&[("TERMINATION_GRACE_PERIOD_SECONDS", "0")], secs(1)),
        (
            &[
                ("CONNECTION_TERMINATION_DEADLINE", "3s"),
                ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
            ],
            secs(3),
        ),
        (&[("CONNECTION_TERMINATION_DEADLINE", "1m30s")], secs(90)),
        (&[("CONNECTION_TERMINATION_DEADLINE", "0s")], Duration::ZERO),
    ];
    for &(vars, want) in cases {
        assert_eq!(config(vars).termination_deadline, want, "{vars:?}");
    }
}

#[test]
fn durations_parse_and_format_round_trip() {
    #[rustfmt::skip]
    let cases: &[(&str, Option<Duration>)] = &[
        ("500ms", Some(Duration::from_millis(500))),
        ("5s", Some(secs(5))),
        ("10m", Some(secs(600))),
        ("24h", Some(secs(86_400))),
        ("1h30m", Some(secs(5400))),
        ("2d", Some(secs(172_800))),
        ("1s500ms", Some(Duration::from_millis(1500))),
        ("250us", Some(Duration::from_micros(250))),
        ("7µs", Some(Duration::from_micros(7))),
        ("10ns", Some(Duration::from_nanos(10))),
        ("30", Some(secs(30))),
        ("0s", Some(Duration::ZERO)),
        ("", None),
        ("s", None),
        ("1.5s", None),
        ("5 s", None),
        ("-5s", None),
        ("1h30", None),
        ("5sec", None),
        ("99999999999999999999h", None),
        ("18446744073709551615h", None),
    ];
    for &(text, want) in cases {
        assert_eq!(parse_duration(text), want, "{text:?}");
        if let Some(d) = want {
            assert_eq!(
                parse_duration(&format_duration(d)),
                Some(d),
                "{text:?} round trip"
            );
        }
    }
    assert_eq!(format_duration(secs(5400)), "1h30m");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    assert_eq!(format_duration(Duration::ZERO), "0s");
}

#[test]
fn booleans_accept_documented_forms() {
    for (value, want) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("1", true),
        ("false", false),
        ("False", false),
        ("0", false),
    ] {
        assert_eq!(config(&[("FAKE_CA", value)]).ca.fake_ca, want, "{value}");
    }
}

#[test]
fn empty_values_count_as_unset() {
    let c = config(&[
        ("RUST_LOG", ""),
        ("PACKET_MARK", ""),
        ("SECRET_TTL", ""),
        ("NODE_NAME", ""),
    ]);
    assert_eq!(c.log.filter, "info");
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(c.ca.secret_ttl, secs(86_400));
    assert_eq!(c.node_name, None);
}

#[test]
fn cluster_id_prefers_istio_meta() {
    assert_eq!(config(&[("CLUSTER_ID", "b")]).cluster_id, "b");
    assert_eq!(
        config(&[("CLUSTER_ID", "b"), ("ISTIO_META_CLUSTER_ID", "a")]).cluster_id,
        "a"
    );
}

#[test]
fn local_xds_sources() {
    assert_eq!(
        config(&[("LOCAL_XDS", "workloads: []")]).local_xds,
        Some(LocalXds::Inline("workloads: []".into()))
    );
    assert_eq!(
        build(&[
            ("LOCAL_XDS", "workloads: []"),
            ("LOCAL_XDS_PATH", "/x.yaml")
        ])
        .unwrap_err(),
        ConfigError::Conflict {
            first: "LOCAL_XDS_PATH",
            second: "LOCAL_XDS"
        }
    );
}

#[test]
fn on_demand_xds_needs_the_dns_proxy_off() {
    let err = build(&[("XDS_ON_DEMAND", "true")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Conflict {
                first: "XDS_ON_DEMAND=true",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        config(&[
            ("XDS_ON_DEMAND", "true"),
            ("ISTIO_META_DNS_CAPTURE", "false")
        ])
        .xds
        .on_demand
    );
}

#[test]
fn dns_capture_is_on_when_unset_or_true_and_off_otherwise() {
    // ztunnel: `proxy_metadata.get("DNS_CAPTURE").is_none_or(|v| lowercase(v) == "true")`.
    assert!(config(&[]).proxy.dns_capture);
    for (value, want) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("", false),
        ("false", false),
        ("yes", false),
        ("1", false),
    ] {
        assert_eq!(
            config(&[("ISTIO_META_DNS_CAPTURE", value)])
                .proxy
                .dns_capture,
            want,
            "{value:?}"
        );
    }
}

#[test]
fn auth_token_sources() {
    let token = "./var/run/secrets/tokens/istio-token";
    let cases: Vec<(MapEnv, AuthToken)> = vec![
        (MapEnv::new(), AuthToken::None),
        (
            MapEnv::new().with_existing_path(token),
            AuthToken::File(token.into()),
        ),
        (
            MapEnv::new()
                .with_var("AUTH_TOKEN", "/tokens/t")
                .with_existing_path("/tokens/t"),
            AuthToken::File("/tokens/t".into()),
        ),
        (
            MapEnv::new()
                .with_var("AUTH_TOKEN", "s3cr3t")
                .with_existing_path(token),
            AuthToken::Static("s3cr3t".into()),
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(
            Config::from_source_with_cpus(&vars, CPUS)
                .unwrap()
                .auth_token,
            want,
            "{vars:?}"
        );
    }
}

#[test]
fn root_cert_forms() {
    let cases = [
        ("SYSTEM", RootCert::System),
        ("/etc/roots.pem", RootCert::File("/etc/roots.pem".into())),
        (
            "-----BEGIN CERTIFICATE-----x",
            RootCert::Static("-----BEGIN CERTIFICATE-----x".into()),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(config(&[("XDS_ROOT_CA", value)]).xds.root_ca, want);
        assert_eq!(config(&[("CA_ROOT_CA", value)]).ca.root_ca, want);
    }
}

#[test]
fn static_tokens_never_leak() {
    let c = config(&[("AUTH_TOKEN", "s3cr3t")]);
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let json = serde_json::to_value(&c).unwrap();
    assert!(!json.to_string().contains("s3cr3t"));
    assert_eq!(
        json["authToken"],
        serde_json::json!({ "Static": "<redacted>" })
    );
}

#[test]
fn dump_is_camel_case_with_readable_durations() {
    let json = serde_json::to_value(config(&[])).unwrap();
    assert_eq!(json["terminationDeadline"], "5s");
    assert_eq!(json["ca"]["secretTtl"], "24h");
    assert_eq!(json["proxy"]["poolUnusedReleaseTimeout"], "5m");
    assert_eq!(json["proxy"]["keepalive"]["time"], "3m");
    assert_eq!(json["xdsAddress"], "https://localhost:15012");
    assert_eq!(json["adminAddr"], "127.0.0.1:15000");
    assert_eq!(json["proxyMode"], "Shared");
    assert_eq!(json["authToken"], "None");
}

#[test]
fn process_env_reads_the_real_environment() {
    // Read-only: PATH is set in any test environment; the test never modifies the environment.
    let path = ProcessEnv.var("PATH");
    assert!(path.is_some());
    assert!(ProcessEnv
        .vars_with_prefix("PATH")
        .iter()
        .any(|(name, _)| name == "PATH"));
    assert!(ProcessEnv.path_exists(std::path::Path::new("/")));
}

#[test]
fn metajson_variables_are_parsed_and_bad_json_names_the_variable() {
    let env = MapEnv::new()
        .with_var("ISTIO_METAJSON_LABELS", r#"{"app":"ztun","tier":1}"#)
        .with_var("ISTIO_META_DNS_CAPTURE", "true");
    let c = Config::from_source_with_cpus(&env, 4).unwrap();
    assert_eq!(
        c.proxy_metadata_json["LABELS"],
        serde_json::json!({"app": "ztun", "tier": 1})
    );
    assert!(!c.proxy_metadata.contains_key("JSON_LABELS"));
    let bad = MapEnv::new().with_var("ISTIO_METAJSON_LABELS", "{not json");
    let err = Config::from_source_with_cpus(&bad, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ISTIO_METAJSON_LABELS") && err.contains("JSON"),
        "{err}"
    );
}

#[test]
fn preferred_service_namespace_is_unset_by_default_and_must_be_a_namespace_name() {
    assert_eq!(config(&[]).dns.preferred_service_namespace, None);
    assert_eq!(
        config(&[("PREFERED_SERVICE_NAMESPACE", "")])
            .dns
            .preferred_service_namespace,
        None,
        "empty counts as unset"
    );
    let ns = |v: &str| build(&[("PREFERED_SERVICE_NAMESPACE", v)]).map(|c| c.dns);
    assert_eq!(
        ns("team-a1")
            .unwrap()
            .preferred_service_namespace
            .as_deref(),
        Some("team-a1")
    );
    for bad in ["Team", "a_b", "a.b", "ns-", &"n".repeat(64)] {
        let err = ns(bad).expect_err(bad).to_string();
        assert!(
            err.starts_with("PREFERED_SERVICE_NAMESPACE=") && err.contains("namespace name"),
            "{err}"
        );
    }
}

/// The mesh config file's path, as ztunnel reads it (relative to the working directory).
const MESH_FILE: &str = "./etc/istio/config/mesh";

/// An environment whose mesh config file holds `text`.
fn mesh_env(text: &str) -> MapEnv {
    MapEnv::new().with_file(MESH_FILE, text)
}

fn from(env: &MapEnv) -> Result<Config, ConfigError> {
    Config::from_source_with_cpus(env, CPUS)
}

#[test]
fn enable_orig_src_is_read_as_a_tristate() {
    for (vars, want) in [
        (&[][..], None),
        (&[("ENABLE_ORIG_SRC", "true")][..], Some(true)),
        (&[("ENABLE_ORIG_SRC", "false")][..], Some(false)),
        (&[("ENABLE_ORIG_SRC", "0")][..], Some(false)),
    ] {
        assert_eq!(config(vars).proxy.enable_orig_src, want, "{vars:?}");
    }
}

#[test]
fn unimplemented_ztunnel_settings_are_refused_naming_the_variable() {
    let refused: &[(&str, &str)] = &[
        ("ENABLE_PROXY", "false"),
        ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ("TLS12_ENABLED", "true"),
        ("TLS12_ENABLED", "1"),
    ];
    for &(var, value) in refused {
        let err = build(&[(var, value)]).expect_err(&format!("{var}={value} must be refused"));
        assert!(
            matches!(&err, ConfigError::Unsupported { var: named, value: found, .. }
                if *named == var && found == value),
            "{var}={value}: {err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{var}={value:?} is not supported by ztun")),
            "{err}"
        );
    }
    // Values that change nothing are accepted.
    config(&[
        ("ENABLE_PROXY", "true"),
        ("UNSTABLE_ENABLE_SOCKS5", "false"),
        ("TLS12_ENABLED", "false"),
        ("COMPLIANCE_POLICY", ""),
    ]);
    // ztunnel acts on `pqc` only and ignores any other compliance policy.
    assert_eq!(
        config(&[("COMPLIANCE_POLICY", "pqc")]).compliance_policy,
        CompliancePolicy::Pqc
    );
    for other in ["fips-140-3", "PQC", ""] {
        assert_eq!(
            config(&[("COMPLIANCE_POLICY", other)]).compliance_policy,
            CompliancePolicy::None
        );
    }
    // Values of no accepted form are malformed, as for any boolean.
    for var in ["ENABLE_PROXY", "UNSTABLE_ENABLE_SOCKS5", "TLS12_ENABLED"] {
        let err = build(&[(var, "maybe")]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { var: named, .. } if named == var),
            "{err:?}"
        );
    }
}

#[test]
fn proxy_config_fields_apply_under_the_environment() {
    let yaml = "
discoveryAddress: istiod-rev1.istio-system.svc:15012
proxyAdminPort: 15100
statsPort: 15120
concurrency: 3
proxyMetadata:
  ISTIO_META_FOO: from-proxy-config
  BAR: 'yes'
  ENABLED: true
  PORT: 15053
drainDuration: 45s
tracing: {zipkin: {address: zipkin:9411}}
";
    let c = config(&[("PROXY_CONFIG", yaml)]);
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod-rev1.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca.address.as_deref(),
        Some("https://localhost:15012"),
        "the CA never uses discoveryAddress"
    );
    assert_eq!(
        c.admin_addr,
        "127.0.0.1:15100".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.stats_addr, "[::]:15120".parse::<SocketAddr>().unwrap());
    assert_eq!(c.readiness_addr.port(), 15021);
    assert_eq!(
        c.illegal_ports(),
        [15001, 15006, 15008, 15053, 15100, 15120, 15021]
    );
    assert_eq!(c.worker_threads, 3);
    assert_eq!(
        c.proxy_metadata,
        BTreeMap::from([
            ("BAR".to_owned(), "yes".to_owned()),
            ("ENABLED".to_owned(), "true".to_owned()),
            ("FOO".to_owned(), "from-proxy-config".to_owned()),
            ("PORT".to_owned(), "15053".to_owned()),
        ])
    );

    // The environment wins: XDS_ADDRESS (even empty), ZTUNNEL_WORKER_THREADS, ISTIO_META_*.
    let c = config(&[
        ("PROXY_CONFIG", yaml),
        ("XDS_ADDRESS", "istiod.custom:15012"),
        ("ZTUNNEL_WORKER_THREADS", "2"),
        ("ISTIO_META_FOO", "from-env"),
    ]);
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod.custom:15012")
    );
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.proxy_metadata["FOO"], "from-env");
    assert_eq!(c.proxy_metadata["BAR"], "yes");
    assert_eq!(
        config(&[("PROXY_CONFIG", yaml), ("XDS_ADDRESS", "")])
            .xds
            .address,
        None
    );

    // JSON is YAML too; an empty PROXY_CONFIG is unset; `http://` is kept.
    let c = config(&[(
        "PROXY_CONFIG",
        r#"{"discoveryAddress": "http://istiod:15010", "statsPort": 9090}"#,
    )]);
    assert_eq!(c.xds.address.as_deref(), Some("http://istiod:15010"));
    assert_eq!(c.stats_addr.port(), 9090);
    assert_eq!(config(&[("PROXY_CONFIG", "")]).admin_addr.port(), 15000);
    assert_eq!(config(&[("PROXY_CONFIG", "{}")]).stats_addr.port(), 15020);
}

#[test]
fn mesh_file_default_config_is_overlaid_by_proxy_config() {
    let mesh = "
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod-mesh.istio-system.svc:15012
  proxyAdminPort: 15100
  statsPort: 15120
  proxyMetadata:
    ISTIO_META_A: mesh
    B: mesh
";
    let c = from(&mesh_env(mesh)).unwrap();
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod-mesh.istio-system.svc:15012")
    );
    assert_eq!(c.admin_addr.port(), 15100);
    assert_eq!(c.stats_addr.port(), 15120);
    assert_eq!(
        c.proxy_metadata,
        BTreeMap::from([
            ("A".to_owned(), "mesh".to_owned()),
            ("B".to_owned(), "mesh".to_owned()),
        ])
    );

    // PROXY_CONFIG replaces the fields it sets and merges metadata key by key.
    let env = mesh_env(mesh).with_var(
        "PROXY_CONFIG",
        "statsPort: 15220\nproxyMetadata: {B: proxy-config, C: proxy-config}",
    );
    let c = from(&env).unwrap();
    assert_eq!(
        c.xds.address.as_deref(),
        Some("https://istiod-mesh.istio-system.svc:15012")
    );
    assert_eq!(c.admin_addr.port(), 15100);
    assert_eq!(c.stats_addr.port(), 15220);
    assert_eq!(
        c.proxy_metadata,
        BTreeMap::from([
            ("A".to_owned(), "mesh".to_owned()),
            ("B".to_owned(), "proxy-config".to_owned()),
            ("C".to_owned(), "proxy-config".to_owned()),
        ])
    );

    // Within one source, `ISTIO_META_K` beats `K`, whatever the order.
    for text in [
        "proxyMetadata: {ISTIO_META_K: prefixed, K: plain}",
        "proxyMetadata: {K: plain, ISTIO_META_K: prefixed}",
    ] {
        assert_eq!(
            config(&[("PROXY_CONFIG", text)]).proxy_metadata,
            BTreeMap::from([("K".to_owned(), "prefixed".to_owned())]),
            "{text}"
        );
    }

    // A mesh without defaultConfig, or an empty file, configures nothing.
    for text in ["", "accessLogFile: /dev/stdout\n", "defaultConfig:\n"] {
        let c = from(&mesh_env(text)).unwrap();
        assert_eq!(c.admin_addr.port(), 15000, "{text:?}");
        assert_eq!(c.xds.address.as_deref(), Some("https://localhost:15012"));
    }
    // A bare ProxyConfig in the mesh file is not read (it belongs under defaultConfig).
    assert_eq!(
        from(&mesh_env("proxyAdminPort: 15100\n"))
            .unwrap()
            .admin_addr
            .port(),
        15000
    );
}

#[test]
fn dns_settings_come_from_proxy_metadata_too() {
    let off = config(&[("PROXY_CONFIG", "proxyMetadata: {DNS_CAPTURE: 'false'}")]);
    assert!(!off.proxy.dns_capture);
    // Empty is not `true`: off, as in ztunnel.
    let off = config(&[("PROXY_CONFIG", "proxyMetadata: {DNS_CAPTURE: ''}")]);
    assert!(!off.proxy.dns_capture);
    let off = from(&mesh_env(
        "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: false\n",
    ))
    .unwrap();
    assert!(!off.proxy.dns_capture);
    // ISTIO_META_DNS_CAPTURE in the environment wins.
    let on = config(&[
        ("PROXY_CONFIG", "proxyMetadata: {DNS_CAPTURE: 'false'}"),
        ("ISTIO_META_DNS_CAPTURE", "true"),
    ]);
    assert!(on.proxy.dns_capture);
    // With the DNS proxy off in proxyMetadata, on-demand xDS is allowed.
    assert!(
        config(&[
            ("PROXY_CONFIG", "proxyMetadata: {DNS_CAPTURE: 'false'}"),
            ("XDS_ON_DEMAND", "true"),
        ])
        .xds
        .on_demand
    );

    let addr = |vars: &[(&str, &str)]| config(vars).dns.listen;
    let pc = (
        "PROXY_CONFIG",
        "proxyMetadata: {DNS_PROXY_ADDR: '127.0.0.1:15054'}",
    );
    assert_eq!(
        addr(&[pc]),
        DnsListen::Addr("127.0.0.1:15054".parse().unwrap())
    );
    assert_eq!(
        addr(&[pc, ("DNS_PROXY_ADDR", "localhost:15055")]),
        DnsListen::Localhost(15055)
    );
    assert_eq!(
        addr(&[pc, ("ISTIO_META_DNS_PROXY_ADDR", "localhost:15056")]),
        DnsListen::Localhost(15056)
    );
    let err = build(&[("PROXY_CONFIG", "proxyMetadata: {DNS_PROXY_ADDR: nowhere}")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"PROXY_CONFIG proxyMetadata.DNS_PROXY_ADDR="nowhere": expected localhost:<port> or ip:port"#
    );
}

#[test]
fn unreadable_or_malformed_proxy_config_names_its_source() {
    let cases: Vec<(MapEnv, &str, &str)> = vec![
        (
            MapEnv::new().with_var("PROXY_CONFIG", "concurrency: [1"),
            "PROXY_CONFIG",
            "not a valid YAML or JSON ProxyConfig",
        ),
        (
            MapEnv::new().with_var("PROXY_CONFIG", "concurrency: -1"),
            "PROXY_CONFIG",
            "concurrency",
        ),
        (
            MapEnv::new().with_var("PROXY_CONFIG", "proxyAdminPort: 0"),
            "PROXY_CONFIG",
            "proxyAdminPort",
        ),
        (
            MapEnv::new().with_var("PROXY_CONFIG", "statsPort: 70000"),
            "PROXY_CONFIG",
            "statsPort",
        ),
        (
            MapEnv::new().with_var("PROXY_CONFIG", "proxyMetadata: {K: [a]}"),
            "PROXY_CONFIG",
            "proxyMetadata.K",
        ),
        (
            mesh_env("defaultConfig: [1, 2]"),
            "mesh config file ./etc/istio/config/mesh",
            "not a valid YAML or JSON MeshConfig",
        ),
        (
            mesh_env("defaultConfig:\n  proxyMetadata:\n    K: {a: b}\n"),
            "mesh config file ./etc/istio/config/mesh",
            "defaultConfig.proxyMetadata.K",
        ),
    ];
    for (env, origin, mentions) in cases {
        let err = from(&env).unwrap_err();
        let ConfigError::Malformed {
            origin: named,
            reason,
        } = &err
        else {
            panic!("{env:?}: unexpected error {err:?}");
        };
        assert_eq!(named, origin);
        assert!(reason.contains(mentions), "{reason}");
        assert!(err.to_string().starts_with(&format!("{origin}: ")), "{err}");
    }
    // A discoveryAddress that is not an address names its field and source.
    let err = build(&[("PROXY_CONFIG", "discoveryAddress: ftp://istiod:15012")]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { var, .. } if var == "PROXY_CONFIG discoveryAddress"),
        "{err:?}"
    );
    let err = from(&mesh_env(
        "defaultConfig: {discoveryAddress: 'istiod 15012'}",
    ))
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { var, .. }
            if var == "./etc/istio/config/mesh defaultConfig.discoveryAddress"),
        "{err:?}"
    );
    // An empty discoveryAddress is unset.
    assert_eq!(
        config(&[("PROXY_CONFIG", "discoveryAddress: ''")])
            .xds
            .address
            .as_deref(),
        Some("https://localhost:15012")
    );
}

#[test]
fn process_env_reads_files_and_reports_missing_ones_as_absent() {
    // Read-only, on files of this crate.
    let manifest = ProcessEnv
        .read_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )))
        .unwrap()
        .unwrap();
    assert!(manifest.contains("[package]"));
    assert!(ProcessEnv
        .read_file(std::path::Path::new("/nonexistent/ztun/mesh"))
        .unwrap()
        .is_none());
    // A directory is not a mesh file: an error, not "absent".
    assert!(ProcessEnv.read_file(std::path::Path::new("/")).is_err());
}

/// The admin API listens on both loopbacks when IPv6 is on, as ztunnel's
/// `Address::Localhost` does, and on the IPv4 one only when it is off.
#[test]
fn admin_api_binds_both_loopbacks_with_ipv6() {
    let addrs = |vars: &[(&str, &str)]| config(vars).admin_addrs();
    assert_eq!(
        addrs(&[]),
        vec![
            ("127.0.0.1:15000".parse().unwrap(), Requirement::Required),
            ("[::1]:15000".parse().unwrap(), Requirement::IfIpv6),
        ]
    );
    assert_eq!(
        addrs(&[("IPV6_ENABLED", "false")]),
        vec![("127.0.0.1:15000".parse().unwrap(), Requirement::Required)]
    );
    let moved = addrs(&[("PROXY_CONFIG", "{\"proxyAdminPort\": 15100}")]);
    assert_eq!(moved[1].0, "[::1]:15100".parse::<SocketAddr>().unwrap());
}
