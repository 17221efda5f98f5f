use std::net::IpAddr;

use super::*;
use crate::state::model::{
    AppTunnelProtocol, HealthPolicy, HealthStatus, LoadBalancerMode, LoadBalancerScope,
    NetworkMode, PolicyAction, PolicyScope, PortMap, TunnelProtocol, VecMap, Visibility,
};

mod block;
mod errors;

/// Modeled on ztunnel's `examples/localhost.yaml`: two local workloads (HBONE and TCP) in two
/// services, one namespace-wide policy.
const EXAMPLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
    "default/example2.com":
      80: 8080
- name: local-tcp
  namespace: default
  serviceAccount: tcp-sa
  trustDomain: example.org
  clusterId: cluster1
  workloadIps: ["127.0.0.2", "::1"]
  protocol: TCP
  node: local
  status: Unhealthy
  capacity: 3
  locality: {region: r1, zone: z1, subzone: s1}
  canonicalName: local-tcp
  canonicalRevision: v2
  workloadName: local-tcp-deploy
  workloadType: Deployment
  hostname: local-tcp.example
  networkMode: HostNetwork
  nativeTunnel: true
  applicationTunnel: {protocol: PROXY, port: 15088}
  authorizationPolicies: ["default/allow-some"]
  waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}
  networkGateway: {destination: "remote/10.9.0.1", hboneMtlsPort: 15009}
  services:
    "default/example.com":
      80: 8080
policies:
- action: Allow
  rules:
  - - - notDestinationPorts:
        - 9999
  name: allow-all-but-9999
  namespace: default
  scope: Namespace
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
  - /127.10.0.1
  ports:
    80: 8080
  subjectAltNames:
  - spiffe://cluster.local/ns/default/sa/local
- name: remote
  namespace: default
  hostname: example2.com
  vips:
  - remote/127.10.0.2
  cidrVips:
  - {network: "", cidr: 10.96.0.7/16}
  ports:
    80: 8080
    443: 0
  waypoint: {destination: "/127.0.0.9"}
  weightedWaypoints:
  - destination: {destination: "default/wp-a", hboneMtlsPort: 15008}
    weight: 90
  - destination: {destination: "default/wp-b"}
  loadBalancer:
    routingPreferences: [Network, Region]
    mode: Failover
    healthPolicy: AllowAll
  ipFamilies: Dual
  canonical: true
  visibility: Namespace
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ports(pairs: &[(u16, u16)]) -> PortMap {
    pairs.iter().copied().collect()
}

fn net(address: &str, prefix_len: u8) -> IpNet {
    IpNet {
        address: ip(address),
        prefix_len,
    }
}

/// Parses a document that must fail with a semantic error, returning (entry, field, problem).
fn invalid(yaml: &str) -> (String, String, Problem) {
    match parse(yaml) {
        Err(LocalConfigError::Invalid {
            entry,
            field,
            problem,
        }) => (entry, field, problem),
        other => panic!("expected a semantic error, got {other:?}\n{yaml}"),
    }
}

#[test]
fn example_file_converts_field_by_field() {
    let config = parse(EXAMPLE).expect("the example is valid");
    let [local, tcp] = config.workloads.as_slice() else {
        panic!("two workloads")
    };

    assert_eq!(
        *local,
        Workload {
            uid: "cluster1//v1/Pod/default/local".into(),
            name: "local".into(),
            namespace: "default".into(),
            workload_ips: vec![ip("127.0.0.1")],
            hostname: "".into(),
            network: "".into(),
            protocol: TunnelProtocol::Hbone,
            trust_domain: "cluster.local".into(),
            service_account: "default".into(),
            waypoint: None,
            network_gateway: None,
            node: "local".into(),
            canonical_name: "".into(),
            canonical_revision: "".into(),
            workload_type: "".into(),
            workload_name: "".into(),
            native_tunnel: false,
            application_tunnel: None,
            services: VecMap::from([
                ("default/example.com".into(), ports(&[(80, 8080)])),
                ("default/example2.com".into(), ports(&[(80, 8080)])),
            ]),
            authorization_policies: vec![],
            status: HealthStatus::Healthy,
            cluster_id: "Kubernetes".into(),
            locality: Locality::default(),
            network_mode: NetworkMode::Standard,
            capacity: 1,
        }
    );
    assert_eq!(
        local.identity().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );

    assert_eq!(
        *tcp,
        Workload {
            uid: "cluster1//Pod/default/local-tcp".into(),
            name: "local-tcp".into(),
            namespace: "default".into(),
            workload_ips: vec![ip("127.0.0.2"), ip("::1")],
            hostname: "local-tcp.example".into(),
            network: "".into(),
            protocol: TunnelProtocol::Tcp,
            trust_domain: "example.org".into(),
            service_account: "tcp-sa".into(),
            waypoint: Some(Box::new(GatewayAddress {
                destination: GatewayDestination::Hostname(NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                }),
                hbone_mtls_port: 15008,
            })),
            network_gateway: Some(Box::new(GatewayAddress {
                destination: GatewayDestination::Address(NetworkAddress {
                    network: "remote".into(),
                    address: ip("10.9.0.1"),
                }),
                hbone_mtls_port: 15009,
            })),
            node: "local".into(),
            canonical_name: "local-tcp".into(),
            canonical_revision: "v2".into(),
            workload_type: "deployment".into(),
            workload_name: "local-tcp-deploy".into(),
            native_tunnel: true,
            application_tunnel: Some(ApplicationTunnel {
                protocol: AppTunnelProtocol::Proxy,
                port: Some(15088)
            }),
            services: VecMap::from([("default/example.com".into(), ports(&[(80, 8080)]))]),
            authorization_policies: vec!["default/allow-some".into()],
            status: HealthStatus::Unhealthy,
            cluster_id: "cluster1".into(),
            locality: Locality {
                region: "r1".into(),
                zone: "z1".into(),
                subzone: "s1".into()
            },
            network_mode: NetworkMode::HostNetwork,
            capacity: 3,
        }
    );

    let [example, example2] = config.services.as_slice() else {
        panic!("two services")
    };
    assert_eq!(
        *example,
        Service {
            name: "local".into(),
            namespace: "default".into(),
            hostname: "example.com".into(),
            vips: vec![NetworkAddress {
                network: "".into(),
                address: ip("127.10.0.1")
            }],
            cidr_vips: vec![],
            ports: ports(&[(80, 8080)]),
            subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/local".into()],
            waypoint: None,
            weighted_waypoints: vec![],
            load_balancer: None,
            ip_families: IpFamilies::Automatic,
            canonical: false,
            visibility: Visibility::Public,
        }
    );
    let hostname_gateway = |host: &str, port| GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: "default".into(),
            hostname: host.into(),
        }),
        hbone_mtls_port: port,
    };
    assert_eq!(
        *example2,
        Service {
            name: "remote".into(),
            namespace: "default".into(),
            hostname: "example2.com".into(),
            vips: vec![NetworkAddress {
                network: "remote".into(),
                address: ip("127.10.0.2")
            }],
            // Normalised to the first address of the prefix.
            cidr_vips: vec![CidrVip {
                network: "".into(),
                address: ip("10.96.0.0"),
                prefix_len: 16
            }],
            ports: ports(&[(80, 8080), (443, 0)]),
            subject_alt_names: vec![],
            waypoint: Some(GatewayAddress {
                destination: GatewayDestination::Address(NetworkAddress {
                    network: "".into(),
                    address: ip("127.0.0.9"),
                }),
                hbone_mtls_port: 15008,
            }),
            weighted_waypoints: vec![
                WeightedWaypoint {
                    destination: hostname_gateway("wp-a", 15008),
                    weight: 90
                },
                WeightedWaypoint {
                    destination: hostname_gateway("wp-b", 15008),
                    weight: 1
                },
            ],
            load_balancer: Some(LoadBalancer {
                routing_preferences: vec![LoadBalancerScope::Network, LoadBalancerScope::Region],
                mode: LoadBalancerMode::Failover,
                health_policy: HealthPolicy::AllowAll,
            }),
            ip_families: IpFamilies::Dual,
            canonical: true,
            visibility: Visibility::Namespace,
        }
    );

    assert_eq!(
        config.policies,
        vec![Policy {
            name: "allow-all-but-9999".into(),
            namespace: "default".into(),
            scope: PolicyScope::Namespace,
            action: PolicyAction::Allow,
            rules: vec![vec![vec![PolicyMatch {
                not_destination_ports: vec![9999],
                ..Default::default()
            }]]],
            dry_run: false,
        }]
    );
}

#[test]
fn every_policy_match_field_converts() {
    let yaml = r#"
policies:
- name: everything
  namespace: ns
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [{Exact: ns1}]
        notNamespaces: [{Prefix: kube-}]
        principals: [{Suffix: /sa/admin}, {Presence: []}, !Exact cluster.local/ns/a/sa/b]
        notPrincipals: [{Presence: }]
        serviceAccounts: [{namespace: ns1, serviceAccount: sa1}]
        notServiceAccounts: [{namespace: ns2, serviceAccount: sa2}]
        sourceIps: ["10.1.2.3/8", "10.0.0.1"]
        notSourceIps: ["fd00::1/64"]
        destinationIps: ["::ffff:192.168.1.7/120"]
        notDestinationIps: ["0.0.0.0/0"]
        destinationPorts: [80, 443]
        notDestinationPorts: [65535]
      - destinationPorts: [8080]
    - - sourceIps: ["192.168.0.0/16"]
  - - - principals: [{Exact: x}]
"#;
    let config = parse(yaml).expect("valid policy");
    let policy = &config.policies[0];
    assert_eq!(
        (policy.scope, policy.action, policy.dry_run),
        (PolicyScope::WorkloadSelector, PolicyAction::Deny, true)
    );
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[0].len(), 2);
    assert_eq!(policy.rules[0][0].len(), 2);
    assert_eq!(
        policy.rules[0][0][0],
        PolicyMatch {
            namespaces: vec![StringMatch::Exact("ns1".into())],
            not_namespaces: vec![StringMatch::Prefix("kube-".into())],
            principals: vec![
                StringMatch::Suffix("/sa/admin".into()),
                StringMatch::Presence,
                StringMatch::Exact("cluster.local/ns/a/sa/b".into()),
            ],
            not_principals: vec![StringMatch::Presence],
            service_accounts: vec![ServiceAccountMatch {
                namespace: "ns1".into(),
                service_account: "sa1".into()
            }],
            not_service_accounts: vec![ServiceAccountMatch {
                namespace: "ns2".into(),
                service_account: "sa2".into(),
            }],
            source_ips: vec![net("10.0.0.0", 8), net("10.0.0.1", 32)],
            not_source_ips: vec![net("fd00::", 64)],
            // IPv4-mapped prefixes become IPv4, as the data plane sees peers.
            destination_ips: vec![net("192.168.1.0", 24)],
            not_destination_ips: vec![net("0.0.0.0", 0)],
            destination_ports: vec![80, 443],
            not_destination_ports: vec![65535],
        }
    );
    assert_eq!(policy.rules[0][0][1].destination_ports, vec![8080]);
    assert_eq!(
        policy.rules[0][1][0].source_ips,
        vec![net("192.168.0.0", 16)]
    );
    assert_eq!(
        policy.rules[1][0][0].principals,
        vec![StringMatch::Exact("x".into())]
    );
}

/// Parses `doc(spelling)` for every spelling and checks the value `get` reads from the result.
fn check_spellings<T: PartialEq + std::fmt::Debug + Copy>(
    cases: &[(&str, T)],
    doc: impl Fn(&str) -> String,
    get: impl Fn(&LocalConfig) -> T,
) {
    for &(spelling, want) in cases {
        let config = parse(&doc(spelling)).unwrap_or_else(|e| panic!("{spelling}: {e}"));
        assert_eq!(get(&config), want, "{spelling}");
    }
}

#[test]
fn enum_spellings_map_to_every_model_variant() {
    let workload = |field: String| {
        format!("workloads:\n- {{name: w, namespace: ns, workloadIps: [], {field}}}\n")
    };
    let service =
        |field: String| format!("services:\n- {{name: s, namespace: ns, hostname: h, {field}}}\n");
    let policy = |field: String| {
        format!("policies:\n- {{name: p, namespace: ns, action: Allow, scope: Global, {field}}}\n")
    };
    let lb = |c: &LocalConfig| c.services[0].load_balancer.clone().unwrap();

    use TunnelProtocol as P;
    check_spellings(
        &[("TCP", P::Tcp), ("HBONE", P::Hbone)],
        |s| workload(format!("protocol: {s}")),
        |c| c.workloads[0].protocol,
    );
    check_spellings(
        &[
            ("Standard", NetworkMode::Standard),
            ("HostNetwork", NetworkMode::HostNetwork),
        ],
        |s| workload(format!("networkMode: {s}")),
        |c| c.workloads[0].network_mode,
    );
    check_spellings(
        &[
            ("Healthy", HealthStatus::Healthy),
            ("Unhealthy", HealthStatus::Unhealthy),
        ],
        |s| workload(format!("status: {s}")),
        |c| c.workloads[0].status,
    );
    check_spellings(
        &[
            ("NONE", AppTunnelProtocol::None),
            ("PROXY", AppTunnelProtocol::Proxy),
        ],
        |s| workload(format!("applicationTunnel: {{protocol: {s}}}")),
        |c| c.workloads[0].application_tunnel.unwrap().protocol,
    );
    use LoadBalancerScope as S;
    check_spellings(
        &[
            ("Region", S::Region),
            ("Zone", S::Zone),
            ("Subzone", S::Subzone),
            ("Node", S::Node),
            ("Cluster", S::Cluster),
            ("Network", S::Network),
        ],
        |s| service(format!("loadBalancer: {{routingPreferences: [{s}]}}")),
        |c| lb(c).routing_preferences[0],
    );
    use LoadBalancerMode as M;
    check_spellings(
        &[
            ("Standard", M::Standard),
            ("Strict", M::Strict),
            ("Failover", M::Failover),
            ("Passthrough", M::Passthrough),
        ],
        |s| service(format!("loadBalancer: {{mode: {s}}}")),
        |c| lb(c).mode,
    );
    check_spellings(
        &[
            ("OnlyHealthy", HealthPolicy::OnlyHealthy),
            ("AllowAll", HealthPolicy::AllowAll),
        ],
        |s| service(format!("loadBalancer: {{healthPolicy: {s}}}")),
        |c| lb(c).health_policy,
    );
    check_spellings(
        &[
            ("Dual", IpFamilies::Dual),
            ("IPv4", IpFamilies::Ipv4Only),
            ("IPv6", IpFamilies::Ipv6Only),
        ],
        |s| service(format!("ipFamilies: {s}")),
        |c| c.services[0].ip_families,
    );
    // Absent means automatic: the file has no spelling for it.
    check_spellings(
        &[("", IpFamilies::Automatic)],
        |_| service("ports: {}".into()),
        |c| c.services[0].ip_families,
    );
    check_spellings(
        &[
            ("Public", Visibility::Public),
            ("Namespace", Visibility::Namespace),
        ],
        |s| service(format!("visibility: {s}")),
        |c| c.services[0].visibility,
    );
    let scopes =
        |s: &str| format!("policies:\n- {{name: p, namespace: ns, action: Allow, scope: {s}}}\n");
    check_spellings(
        &[
            ("Global", PolicyScope::Global),
            ("Namespace", PolicyScope::Namespace),
            ("WorkloadSelector", PolicyScope::WorkloadSelector),
        ],
        scopes,
        |c| c.policies[0].scope,
    );
    let actions =
        |s: &str| format!("policies:\n- {{name: p, namespace: ns, scope: Global, action: {s}}}\n");
    check_spellings(
        &[("Allow", PolicyAction::Allow), ("Deny", PolicyAction::Deny)],
        actions,
        |c| c.policies[0].action,
    );
    check_spellings(
        &[("true", true), ("false", false)],
        |s| policy(format!("dryRun: {s}")),
        |c| c.policies[0].dry_run,
    );

    // Spellings are exact: ztunnel's file format is case-sensitive.
    for doc in [
        workload("protocol: hbone".into()),
        scopes("global"),
        actions("allow"),
    ] {
        assert!(
            matches!(parse(&doc), Err(LocalConfigError::Yaml(_))),
            "{doc}"
        );
    }
}

#[test]
fn workload_defaults() {
    let config =
        parse("workloads:\n- {name: w, namespace: ns, workloadIps: [\"::ffff:10.0.0.1\"]}\n")
            .unwrap();
    let w = &config.workloads[0];
    assert_eq!(&*w.uid, "Kubernetes//Pod/ns/w");
    assert_eq!(
        (&*w.trust_domain, &*w.service_account, &*w.cluster_id),
        ("cluster.local", "default", "Kubernetes")
    );
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, TunnelProtocol::Tcp);
    assert_eq!(
        w.workload_ips,
        vec![ip("10.0.0.1")],
        "IPv4-mapped addresses are canonicalised"
    );
    let port_zero = "workloads:\n- {name: w, namespace: ns, workloadIps: [], \
                     applicationTunnel: {protocol: PROXY, port: 0}}\n";
    let tunnel = parse(port_zero).unwrap().workloads[0].application_tunnel;
    assert_eq!(
        tunnel,
        Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: None
        })
    );
}

#[test]
fn empty_documents_are_empty_configs() {
    for text in [
        "",
        "\n",
        "# nothing here\n",
        "{}",
        "workloads: []\nservices: []\npolicies: []\n",
    ] {
        assert_eq!(parse(text).unwrap(), LocalConfig::default(), "{text:?}");
    }
}

#[test]
fn service_endpoints_become_memberships() {
    let yaml = r#"
workloads:
- {uid: u1, name: a, namespace: ns, workloadIps: ["10.0.0.1"]}
services:
- name: s
  namespace: ns
  hostname: s.ns.svc.cluster.local
  ports: {80: 8080}
  endpoints:
    u1: {workloadUid: u1, port: {80: 9090}, status: Healthy}
"#;
    let config = parse(yaml).unwrap();
    assert_eq!(
        config.workloads[0].services,
        VecMap::from([("ns/s.ns.svc.cluster.local".into(), ports(&[(80, 9090)]))])
    );

    let unknown = yaml.replace("{workloadUid: u1,", "{workloadUid: u2,");
    assert_eq!(invalid(&unknown).2, Problem::UnknownWorkload("u2".into()));
    let conflicting = yaml.replace(
        r#"workloadIps: ["10.0.0.1"]}"#,
        r#"workloadIps: ["10.0.0.1"], services: {"ns/s.ns.svc.cluster.local": {80: 1}}}"#,
    );
    assert_eq!(
        invalid(&conflicting).2,
        Problem::ConflictingPorts("u1".into())
    );
}

#[test]
fn load_reads_files_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(load(&path).unwrap(), parse(EXAMPLE).unwrap());
    assert_eq!(
        from_source(&LocalXds::Path(path.clone()))
            .unwrap()
            .workloads
            .len(),
        2
    );
    assert_eq!(
        from_source(&LocalXds::Inline(EXAMPLE.into()))
            .unwrap()
            .services
            .len(),
        2
    );

    let missing = dir.path().join("missing.yaml");
    let err = load(&missing).unwrap_err();
    assert!(
        matches!(&err, LocalConfigError::Read { path, .. } if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn entries_share_repeated_strings_and_lists_come_in_any_order() {
    // Services (with endpoints) before the workloads they name: attached once those are read.
    let yaml = r#"
services:
- name: s
  namespace: ns
  hostname: s.ns.svc.cluster.local
  ports: {80: 8080}
  endpoints:
    u2: {workloadUid: u2, port: {80: 9090}}
workloads:
- {uid: u1, name: a, namespace: ns, serviceAccount: sa, workloadIps: ["10.0.0.1"]}
- {uid: u2, name: b, namespace: ns, serviceAccount: sa, workloadIps: ["10.0.0.2"]}
"#;
    let config = parse(yaml).unwrap();
    assert!(config.workloads[0].services.is_empty());
    assert_eq!(
        config.workloads[1].services,
        VecMap::from([("ns/s.ns.svc.cluster.local".into(), ports(&[(80, 9090)]))])
    );
    // Each entry's repeated strings are the state's shared copies as soon as it is converted.
    let (a, b) = (&config.workloads[0], &config.workloads[1]);
    assert!(std::sync::Arc::ptr_eq(&a.namespace, &b.namespace));
    assert!(std::sync::Arc::ptr_eq(
        &a.service_account,
        &b.service_account
    ));
    assert!(std::sync::Arc::ptr_eq(
        &a.namespace,
        &config.services[0].namespace
    ));
    // An endpoint naming a workload the file lacks is still refused, wherever the list is.
    let unknown = yaml.replace("{workloadUid: u2,", "{workloadUid: u3,");
    assert_eq!(invalid(&unknown).2, Problem::UnknownWorkload("u3".into()));
    // A list given twice is refused, not merged or replaced.
    let twice = format!("{yaml}workloads: []\n");
    let err = parse(&twice).unwrap_err().to_string();
    assert!(err.contains("duplicate field `workloads`"), "{err}");
}
