use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::state::model::{
    AppTunnelProtocol, HealthPolicy, HealthStatus, LoadBalancerMode, LoadBalancerScope,
    NetworkMode, PolicyAction, PolicyScope, PortMap, TunnelProtocol, Visibility,
};

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

/// Parses a document that must fail in the YAML step, returning (message, line).
fn yaml_error(yaml: &str) -> (String, usize) {
    match parse(yaml) {
        Err(err @ LocalConfigError::Yaml(_)) => {
            let (line, _column) = err.location().expect("YAML errors carry a location");
            (err.to_string(), line)
        }
        other => panic!("expected a YAML error, got {other:?}\n{yaml}"),
    }
}

fn policy_with_match(m: &str) -> String {
    format!(
        "policies:\n- {{name: p, namespace: ns, scope: Global, action: Deny, rules: [[[{m}]]]}}\n"
    )
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
            services: BTreeMap::from([
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
            waypoint: Some(GatewayAddress {
                destination: GatewayDestination::Hostname(NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                }),
                hbone_mtls_port: 15008,
            }),
            network_gateway: Some(GatewayAddress {
                destination: GatewayDestination::Address(NetworkAddress {
                    network: "remote".into(),
                    address: ip("10.9.0.1"),
                }),
                hbone_mtls_port: 15009,
            }),
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
            services: BTreeMap::from([("default/example.com".into(), ports(&[(80, 8080)]))]),
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

#[test]
fn enum_spellings_map_to_every_model_variant() {
    let workload = |field: &str| {
        format!("workloads:\n- {{name: w, namespace: ns, workloadIps: [], {field}}}\n")
    };
    for (spelling, want) in [
        ("TCP", TunnelProtocol::Tcp),
        ("HBONE", TunnelProtocol::Hbone),
    ] {
        assert_eq!(
            parse(&workload(&format!("protocol: {spelling}")))
                .unwrap()
                .workloads[0]
                .protocol,
            want
        );
    }
    for (spelling, want) in [
        ("Standard", NetworkMode::Standard),
        ("HostNetwork", NetworkMode::HostNetwork),
    ] {
        assert_eq!(
            parse(&workload(&format!("networkMode: {spelling}")))
                .unwrap()
                .workloads[0]
                .network_mode,
            want
        );
    }
    for (spelling, want) in [
        ("Healthy", HealthStatus::Healthy),
        ("Unhealthy", HealthStatus::Unhealthy),
    ] {
        assert_eq!(
            parse(&workload(&format!("status: {spelling}")))
                .unwrap()
                .workloads[0]
                .status,
            want
        );
    }
    for (spelling, want) in [
        ("NONE", AppTunnelProtocol::None),
        ("PROXY", AppTunnelProtocol::Proxy),
    ] {
        let config = parse(&workload(&format!(
            "applicationTunnel: {{protocol: {spelling}}}"
        )))
        .unwrap();
        assert_eq!(
            config.workloads[0].application_tunnel,
            Some(ApplicationTunnel {
                protocol: want,
                port: None
            })
        );
    }

    let service =
        |field: &str| format!("services:\n- {{name: s, namespace: ns, hostname: h, {field}}}\n");
    let scopes = [
        ("Region", LoadBalancerScope::Region),
        ("Zone", LoadBalancerScope::Zone),
        ("Subzone", LoadBalancerScope::Subzone),
        ("Node", LoadBalancerScope::Node),
        ("Cluster", LoadBalancerScope::Cluster),
        ("Network", LoadBalancerScope::Network),
    ];
    for (spelling, want) in scopes {
        let config = parse(&service(&format!(
            "loadBalancer: {{routingPreferences: [{spelling}]}}"
        )))
        .unwrap();
        assert_eq!(
            config.services[0]
                .load_balancer
                .as_ref()
                .unwrap()
                .routing_preferences,
            vec![want]
        );
    }
    let modes = [
        ("Standard", LoadBalancerMode::Standard),
        ("Strict", LoadBalancerMode::Strict),
        ("Failover", LoadBalancerMode::Failover),
        ("Passthrough", LoadBalancerMode::Passthrough),
    ];
    for (spelling, want) in modes {
        let config = parse(&service(&format!("loadBalancer: {{mode: {spelling}}}"))).unwrap();
        assert_eq!(
            config.services[0].load_balancer.as_ref().unwrap().mode,
            want
        );
    }
    for (spelling, want) in [
        ("OnlyHealthy", HealthPolicy::OnlyHealthy),
        ("AllowAll", HealthPolicy::AllowAll),
    ] {
        let config = parse(&service(&format!(
            "loadBalancer: {{healthPolicy: {spelling}}}"
        )))
        .unwrap();
        assert_eq!(
            config.services[0]
                .load_balancer
                .as_ref()
                .unwrap()
                .health_policy,
            want
        );
    }
    for (spelling, want) in [
        ("Dual", IpFamilies::Dual),
        ("IPv4", IpFamilies::Ipv4Only),
        ("IPv6", IpFamilies::Ipv6Only),
    ] {
        assert_eq!(
            parse(&service(&format!("ipFamilies: {spelling}")))
                .unwrap()
                .services[0]
                .ip_families,
            want
        );
    }
    assert_eq!(
        parse(&service("ports: {}")).unwrap().services[0].ip_families,
        IpFamilies::Automatic
    );
    for (spelling, want) in [
        ("Public", Visibility::Public),
        ("Namespace", Visibility::Namespace),
    ] {
        assert_eq!(
            parse(&service(&format!("visibility: {spelling}")))
                .unwrap()
                .services[0]
                .visibility,
            want
        );
    }

    let policy = |scope: &str, action: &str| {
        format!("policies:\n- {{name: p, namespace: ns, scope: {scope}, action: {action}}}\n")
    };
    let scopes = [
        ("Global", PolicyScope::Global),
        ("Namespace", PolicyScope::Namespace),
        ("WorkloadSelector", PolicyScope::WorkloadSelector),
    ];
    for (spelling, want) in scopes {
        assert_eq!(
            parse(&policy(spelling, "Allow")).unwrap().policies[0].scope,
            want
        );
    }
    for (spelling, want) in [("Allow", PolicyAction::Allow), ("Deny", PolicyAction::Deny)] {
        assert_eq!(
            parse(&policy("Global", spelling)).unwrap().policies[0].action,
            want
        );
    }
    // Spellings are exact: ztunnel's file format is case-sensitive.
    assert!(matches!(
        parse(&workload("protocol: hbone")),
        Err(LocalConfigError::Yaml(_))
    ));
    assert!(matches!(
        parse(&policy("global", "Allow")),
        Err(LocalConfigError::Yaml(_))
    ));
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
    let port_zero = "workloads:\n- {name: w, namespace: ns, workloadIps: [], applicationTunnel: {protocol: PROXY, port: 0}}\n";
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
        BTreeMap::from([("ns/s.ns.svc.cluster.local".into(), ports(&[(80, 9090)]))])
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
fn semantic_errors_name_entry_and_field() {
    let w = |body: &str| {
        format!("workloads:\n- {{uid: x, namespace: ns, workloadIps: [], {body}}}\n- {{uid: y, namespace: ns, workloadIps: []}}\n")
    };
    let s = |body: &str| {
        format!("services:\n- {{name: s, namespace: ns, hostname: h.example, {body}}}\n")
    };
    #[rustfmt::skip]
    let cases: Vec<(String, &str, &str, Problem)> = vec![
        (
            "workloads:\n- {uid: a, namespace: ns, workloadIps: []}\n- {uid: b, namespace: ns, workloadIps: []}\n- {uid: x, namespace: ns, workloadIps: [\"10.0.0.1\", \"10.0.0.300\"]}\n".into(),
            r#"workloads[2] (uid "x")"#, "workloadIps[1]", Problem::NotAnIp("10.0.0.300".into()),
        ),
        ("workloads:\n- {name: w, namespace: \"\", workloadIps: []}\n".into(), "workloads[0]", "namespace", Problem::Empty),
        ("workloads:\n- {namespace: ns, workloadIps: []}\n".into(), "workloads[0]", "name", Problem::Empty),
        (w("capacity: 0"), r#"workloads[0] (uid "x")"#, "capacity", Problem::Zero),
        (w("services: {example.com: {80: 80}}"), r#"workloads[0] (uid "x")"#, r#"services["example.com"]"#, Problem::NotANamespacedName("example.com".into())),
        (w("authorizationPolicies: [p1]"), r#"workloads[0] (uid "x")"#, "authorizationPolicies[0]", Problem::NotANamespacedName("p1".into())),
        (w("waypoint: {destination: nowhere}"), r#"workloads[0] (uid "x")"#, "waypoint.destination", Problem::NotAGatewayDestination("nowhere".into())),
        (w("networkGateway: {destination: \"/\"}"), r#"workloads[0] (uid "x")"#, "networkGateway.destination", Problem::NotAGatewayDestination("/".into())),
        (
            "workloads:\n- {uid: x, namespace: ns, workloadIps: []}\n- {uid: x, namespace: ns, workloadIps: []}\n".into(),
            r#"workloads[1] (uid "x")"#, "uid", Problem::Duplicate("x".into()),
        ),
        (s("vips: [\"10.0.0.1\"]"), "services[0] (ns/h.example)", "vips[0]", Problem::NotANetworkAddress("10.0.0.1".into())),
        (s("vips: [\"/10.0.0.x\"]"), "services[0] (ns/h.example)", "vips[0]", Problem::NotANetworkAddress("/10.0.0.x".into())),
        (s("cidrVips: [{cidr: \"10.0.0.0/33\"}]"), "services[0] (ns/h.example)", "cidrVips[0].cidr", Problem::PrefixTooLong { value: "10.0.0.0/33".into(), max: 32 }),
        (s("weightedWaypoints: [{destination: {destination: x}}]"), "services[0] (ns/h.example)", "weightedWaypoints[0].destination.destination", Problem::NotAGatewayDestination("x".into())),
        ("services:\n- {name: s, namespace: ns, hostname: \"\"}\n".into(), "services[0] (ns/)", "hostname", Problem::Empty),
        (
            "services:\n- {name: s, namespace: ns, hostname: h}\n- {name: t, namespace: ns, hostname: h}\n".into(),
            "services[1] (ns/h)", "hostname", Problem::Duplicate("ns/h".into()),
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow}\n- {name: p, namespace: ns, scope: Global, action: Deny}\n".into(),
            "policies[1] (ns/p)", "name", Problem::Duplicate("ns/p".into()),
        ),
        ("policies:\n- {name: \"\", namespace: ns, scope: Global, action: Allow}\n".into(), "policies[0] (ns/)", "name", Problem::Empty),
    ];
    for (yaml, entry, field, problem) in cases {
        assert_eq!(
            invalid(&yaml),
            (entry.to_owned(), field.to_owned(), problem),
            "{yaml}"
        );
    }
    let err = parse("workloads:\n- {uid: x, namespace: ns, workloadIps: [\"10.0.0.300\"]}\n")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"local config: workloads[0] (uid "x"): workloadIps[0] "10.0.0.300" is not an IP address"#
    );
    assert_eq!(err.location(), None);
}

#[test]
fn policies_never_widen() {
    let p = "policies[0] (ns/p)";
    #[rustfmt::skip]
    let cases: &[(&str, &str, Problem)] = &[
        ("{sourceIps: [\"10.0.0.0/8\", \"bogus\"]}", "rules[0][0][0].sourceIps[1]", Problem::NotACidr("bogus".into())),
        ("{notSourceIps: [\"10.0.0.0/\"]}", "rules[0][0][0].notSourceIps[0]", Problem::NotACidr("10.0.0.0/".into())),
        ("{destinationIps: [\"fd00::/129\"]}", "rules[0][0][0].destinationIps[0]", Problem::PrefixTooLong { value: "fd00::/129".into(), max: 128 }),
        ("{notDestinationIps: [\"1.2.3.4/-1\"]}", "rules[0][0][0].notDestinationIps[0]", Problem::NotACidr("1.2.3.4/-1".into())),
        ("{destinationPorts: [80]}, {}", "rules[0][0][1]", Problem::EmptyMatch),
        ("{principals: [], notNamespaces: []}", "rules[0][0][0]", Problem::EmptyMatch),
        ("{serviceAccounts: [{namespace: \"\", serviceAccount: sa}]}", "rules[0][0][0].serviceAccounts[0].namespace", Problem::Empty),
        ("{notServiceAccounts: [{namespace: ns, serviceAccount: \"\"}]}", "rules[0][0][0].notServiceAccounts[0].serviceAccount", Problem::Empty),
    ];
    for (m, field, problem) in cases {
        assert_eq!(
            invalid(&policy_with_match(m)),
            (p.to_owned(), (*field).to_owned(), problem.clone()),
            "{m}"
        );
    }
}

#[test]
fn yaml_errors_report_their_location() {
    #[rustfmt::skip]
    let cases: &[(&str, usize, &str)] = &[
        // Unknown keys, at every level.
        ("workloads:\n- name: w\n  namespace: ns\n  workloadIps: []\n  workloadIp: 10.0.0.1\n", 5, "unknown field `workloadIp`"),
        ("services:\n- name: s\n  namespace: ns\n  hostname: h\n  loadBalancer: {mode: Strict, extra: 1}\n", 5, "unknown field `extra`"),
        ("policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{sourceIp: [\"1.2.3.4\"]}]]]\n", 6, "unknown field `sourceIp`"),
        ("workload: []\n", 1, "unknown field `workload`"),
        // A string match with no variant, or an unknown one.
        ("policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{principals: [{}]}]]]\n", 6, "principals[0]"),
        ("policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{principals: [{Regex: a.*}]}]]]\n", 6, "unknown variant `Regex`"),
        ("policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{principals: [{Presence: [x]}]}]]]\n", 6, "principals[0]"),
        // Ports out of range.
        ("policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  rules: [[[{destinationPorts: [70000]}]]]\n", 6, "70000"),
        ("workloads:\n- name: w\n  namespace: ns\n  workloadIps: []\n  services:\n    ns/s: {80: 65536}\n", 6, "65536"),
        // Missing required keys and wrong types.
        ("workloads:\n- name: w\n  workloadIps: []\n", 2, "missing field `namespace`"),
        ("services:\n- name: s\n  namespace: ns\n  hostname: h\n  vips: 10.0.0.1\n", 5, "vips"),
        ("policies:\n- {name: p, namespace: ns, scope: Global}\n", 2, "missing field `action`"),
        // Plain syntax errors.
        ("workloads:\n\t- name: w\n", 2, ""),
        ("workloads: [\n  {name: a, namespace: ns, workloadIps: []},\n  - b\n]\n", 3, ""),
    ];
    for &(yaml, line, fragment) in cases {
        let (message, at) = yaml_error(yaml);
        assert_eq!(at, line, "{message}\n{yaml}");
        assert!(
            message.contains(fragment),
            "{message:?} should mention {fragment:?}"
        );
    }
    let (message, _) = yaml_error(cases[0].0);
    assert!(
        message.starts_with("local config: workloads[0]: unknown field `workloadIp`"),
        "{message}"
    );
    assert!(message.ends_with("at line 5 column 3"), "{message}");
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
