//! Table tests of proto → model translation, and the round trip with the control plane's
//! encoder.

use std::net::IpAddr;

use super::*;
use crate::controlplane::encode;
use crate::state::model::{HealthStatus, NetworkMode, PolicyRule};

fn workload() -> wl::Workload {
    wl::Workload {
        uid: "cluster//Pod/ns/a".into(),
        name: "a".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

fn service() -> wl::Service {
    wl::Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc.cluster.local".into(),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

fn policy_with(m: sec::Match) -> sec::Authorization {
    sec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause { matches: vec![m] }],
        }],
        ..Default::default()
    }
}

fn net(bytes: &[u8], len: u32) -> sec::Address {
    sec::Address {
        address: bytes.to_vec(),
        length: len,
    }
}

fn exact(s: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s.into())),
    }
}

#[test]
fn workload_defaults_follow_istio() {
    let w = Workload::try_from(workload()).unwrap();
    assert_eq!(&*w.trust_domain, "cluster.local");
    assert_eq!(&*w.service_account, "default");
    assert_eq!(&*w.cluster_id, "Kubernetes");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(&*w.workload_type, "deployment");
    assert_eq!(w.workload_ips, vec![IpAddr::from([10, 0, 0, 1])]);
    let id = w.identity().unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/ns/sa/default");

    let mut p = workload();
    p.capacity = Some(0);
    assert_eq!(
        Workload::try_from(p).unwrap().capacity,
        1,
        "0 is treated as unset"
    );
    let mut p = workload();
    p.capacity = Some(7);
    p.trust_domain = "td".into();
    p.service_account = "sa".into();
    p.cluster_id = "c1".into();
    let w = Workload::try_from(p).unwrap();
    assert_eq!(
        (
            w.capacity,
            &*w.trust_domain,
            &*w.service_account,
            &*w.cluster_id
        ),
        (7, "td", "sa", "c1")
    );
}

#[test]
fn ipv4_mapped_addresses_become_ipv4() {
    let mut p = workload();
    p.addresses = vec![std::net::Ipv4Addr::new(10, 0, 0, 5)
        .to_ipv6_mapped()
        .octets()
        .to_vec()];
    let w = Workload::try_from(p).unwrap();
    assert_eq!(w.workload_ips, vec![IpAddr::from([10, 0, 0, 5])]);

    let mapped = std::net::Ipv4Addr::new(10, 1, 2, 3)
        .to_ipv6_mapped()
        .octets();
    let m = sec::Match {
        source_ips: vec![net(&mapped, 120)],
        ..Default::default()
    };
    let p = Policy::try_from(policy_with(m)).unwrap();
    assert_eq!(
        p.rules[0][0][0].source_ips,
        vec![IpNet {
            address: IpAddr::from([10, 1, 2, 0]),
            prefix_len: 24
        }]
    );
}

/// One invalid workload field each, and the reason the NACK carries.
#[test]
fn invalid_workloads_are_rejected_with_the_field() {
    type Edit = fn(&mut wl::Workload);
    let cases: &[(&str, Edit, &str)] = &[
        ("empty uid", |w| w.uid.clear(), "uid: must not be empty"),
        (
            "3-byte IP",
            |w| w.addresses = vec![vec![1, 2, 3]],
            "addresses[0]: is 3 bytes long, not an IPv4 (4) or IPv6 (16) address",
        ),
        (
            "second IP bad",
            |w| w.addresses.push(vec![]),
            "addresses[1]: is 0 bytes long, not an IPv4 (4) or IPv6 (16) address",
        ),
        (
            "legacy mTLS",
            |w| w.tunnel_protocol = 2,
            "tunnel_protocol: LEGACY_ISTIO_MTLS is not supported",
        ),
        (
            "unknown protocol",
            |w| w.tunnel_protocol = 9,
            "tunnel_protocol: unknown enum value 9",
        ),
        (
            "empty waypoint",
            |w| w.waypoint = Some(wl::GatewayAddress::default()),
            "waypoint: has no destination",
        ),
        (
            "empty network gateway",
            |w| w.network_gateway = Some(wl::GatewayAddress::default()),
            "network_gateway: has no destination",
        ),
        (
            "waypoint port",
            |w| {
                w.waypoint = Some(wl::GatewayAddress {
                    destination: Some(wl::gateway_address::Destination::Address(
                        wl::NetworkAddress {
                            network: String::new(),
                            address: vec![10, 0, 0, 9],
                            length: None,
                        },
                    )),
                    hbone_mtls_port: 70000,
                })
            },
            "waypoint.hbone_mtls_port: port 70000 is out of range",
        ),
        (
            "app tunnel protocol",
            |w| {
                w.application_tunnel = Some(wl::ApplicationTunnel {
                    protocol: 5,
                    port: 0,
                })
            },
            "application_tunnel.protocol: unknown enum value 5",
        ),
        (
            "service key",
            |w| {
                w.services
                    .insert("no-slash".into(), wl::PortList::default());
            },
            "services[\"no-slash\"]: \"no-slash\" is not <namespace>/<name>",
        ),
        (
            "service port",
            |w| {
                w.services.insert(
                    "ns/h".into(),
                    wl::PortList {
                        ports: vec![wl::Port {
                            service_port: 80,
                            target_port: 65536,
                            app_protocol: 0,
                        }],
                    },
                );
            },
            "services[\"ns/h\"][0].target_port: port 65536 is out of range",
        ),
    ];
    for (what, edit, reason) in cases {
        let mut w = workload();
        edit(&mut w);
        let err = Workload::try_from(w).expect_err(what);
        assert_eq!(err.to_string(), *reason, "{what}");
    }
}

#[test]
fn invalid_services_are_rejected_with_the_field() {
    type Edit = fn(&mut wl::Service);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "no namespace",
            |s| s.namespace.clear(),
            "namespace: must not be empty",
        ),
        (
            "no hostname",
            |s| s.hostname.clear(),
            "hostname: must not be empty",
        ),
        (
            "bad VIP",
            |s| s.addresses[0].address = vec![1; 5],
            "addresses[0]: is 5 bytes long, not an IPv4 (4) or IPv6 (16) address",
        ),
        (
            "long prefix",
            |s| s.addresses[0].length = Some(40),
            "addresses[0]: prefix length 40 exceeds 32",
        ),
        (
            "port",
            |s| s.ports[0].service_port = 1 << 20,
            "ports[0].service_port: port 1048576 is out of range",
        ),
        (
            "LB scope",
            |s| {
                s.load_balancing = Some(wl::LoadBalancing {
                    routing_preference: vec![1, 42],
                    ..Default::default()
                })
            },
            "load_balancing.routing_preference[1]: unknown enum value 42",
        ),
        (
            "LB mode",
            |s| {
                s.load_balancing = Some(wl::LoadBalancing {
                    mode: 9,
                    ..Default::default()
                })
            },
            "load_balancing.mode: unknown enum value 9",
        ),
        (
            "weighted waypoint",
            |s| {
                s.weighted_waypoints = vec![wl::WeightedWaypoint {
                    destination: None,
                    weight: 1,
                }]
            },
            "weighted_waypoints[0].destination: has no destination",
        ),
    ];
    for (what, edit, reason) in cases {
        let mut s = service();
        edit(&mut s);
        let err = Service::try_from(s).expect_err(what);
        assert_eq!(err.to_string(), *reason, "{what}");
    }
}

#[test]
fn service_addresses_split_into_vips_and_cidrs() {
    let mut s = service();
    s.addresses.push(wl::NetworkAddress {
        network: "net2".into(),
        address: vec![10, 97, 5, 7],
        length: Some(16),
    });
    s.addresses.push(wl::NetworkAddress {
        network: String::new(),
        address: vec![10, 98, 0, 1],
        length: Some(32),
    });
    let s = Service::try_from(s).unwrap();
    let vips: Vec<IpAddr> = s.vips.iter().map(|v| v.address).collect();
    assert_eq!(
        vips,
        vec![IpAddr::from([10, 96, 0, 1]), IpAddr::from([10, 98, 0, 1])]
    );
    assert_eq!(s.cidr_vips.len(), 1);
    assert_eq!(
        s.cidr_vips[0].address,
        IpAddr::from([10, 97, 0, 0]),
        "first address"
    );
    assert_eq!(
        (&*s.cidr_vips[0].network, s.cidr_vips[0].prefix_len),
        ("net2", 16)
    );
    assert_eq!(s.ports.get(&80), Some(&8080));
}

/// Policies never widen: anything that cannot be understood rejects the policy.
#[test]
fn invalid_policies_are_rejected_never_widened() {
    let cases: Vec<(&str, sec::Authorization, &str)> = vec![
        ("no name", sec::Authorization { name: String::new(), ..policy_with(sec::Match { destination_ports: vec![80], ..Default::default() }) }, "name: must not be empty"),
        ("no namespace", sec::Authorization { namespace: String::new(), ..policy_with(sec::Match { destination_ports: vec![80], ..Default::default() }) }, "namespace: must not be empty"),
        ("empty string match", policy_with(sec::Match { principals: vec![exact("a"), sec::StringMatch { match_type: None }], ..Default::default() }), "rules[0].clauses[0].matches[0].principals[1]: has no exact, prefix, suffix or presence"),
        ("bad source IP", policy_with(sec::Match { source_ips: vec![net(&[10, 0, 0], 24)], ..Default::default() }), "rules[0].clauses[0].matches[0].source_ips[0]: is 3 bytes long, not an IPv4 (4) or IPv6 (16) address"),
        ("long not_destination prefix", policy_with(sec::Match { not_destination_ips: vec![net(&[0; 16], 129)], ..Default::default() }), "rules[0].clauses[0].matches[0].not_destination_ips[0]: prefix length 129 exceeds 128"),
        ("port", policy_with(sec::Match { not_destination_ports: vec![65536], ..Default::default() }), "rules[0].clauses[0].matches[0].not_destination_ports[0]: port 65536 is out of range"),
        ("unknown scope", sec::Authorization { scope: 7, ..policy_with(sec::Match { destination_ports: vec![80], ..Default::default() }) }, "scope: unknown enum value 7"),
    ];
    for (what, p, reason) in cases {
        let err = Policy::try_from(p).expect_err(what);
        assert_eq!(err.to_string(), reason, "{what}");
    }
}

#[test]
fn policy_matches_translate_field_by_field() {
    let m = sec::Match {
        namespaces: vec![exact("a")],
        not_namespaces: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Prefix("kube-".into())),
        }],
        principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Presence(())),
        }],
        not_principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Suffix("/sa/evil".into())),
        }],
        service_accounts: vec![sec::ServiceAccountMatch {
            namespace: "ns".into(),
            service_account: "sa".into(),
        }],
        source_ips: vec![net(&[10, 1, 2, 3], 8)],
        destination_ips: vec![net(&[10, 9, 9, 9], 32)],
        destination_ports: vec![80, 443],
        not_destination_ports: vec![9999],
        ..Default::default()
    };
    let p = Policy::try_from(policy_with(m)).unwrap();
    let m = &p.rules[0][0][0];
    assert_eq!(m.namespaces, vec![StringMatch::Exact("a".into())]);
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("kube-".into())]);
    assert_eq!(m.principals, vec![StringMatch::Presence]);
    assert_eq!(
        m.not_principals,
        vec![StringMatch::Suffix("/sa/evil".into())]
    );
    assert_eq!(&*m.service_accounts[0].service_account, "sa");
    assert_eq!(m.source_ips[0].address, IpAddr::from([10, 0, 0, 0]));
    assert_eq!(m.source_ips[0].prefix_len, 8);
    assert_eq!(m.destination_ips[0].prefix_len, 32);
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![9999]);
    assert_eq!(p.scope, PolicyScope::Global);
    assert_eq!(p.action, PolicyAction::Allow);

    // Zero rules never match; a rule with zero clauses matches everything: both are valid.
    let empty = sec::Authorization {
        rules: vec![sec::Rule { clauses: vec![] }],
        ..policy_with(sec::Match::default())
    };
    let p = Policy::try_from(empty).unwrap();
    assert_eq!(p.rules, vec![PolicyRule::new()]);
}

#[test]
fn unknown_enums_take_the_safer_value_and_are_counted() {
    let mut w = workload();
    w.status = 5;
    w.network_mode = 6;
    w.workload_type = 7;
    let addr = wl::Address {
        r#type: Some(wl::address::Type::Workload(w)),
    };
    let t = translate_address(addr).unwrap();
    assert_eq!(t.unknown_enums, 3);
    let AddressResource::Workload(w) = t.value else {
        panic!("a workload")
    };
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.network_mode, NetworkMode::Standard);
    assert_eq!(&*w.workload_type, "");

    let mut s = service();
    s.visibility = 3;
    s.ip_families = 9;
    s.load_balancing = Some(wl::LoadBalancing {
        health_policy: 4,
        ..Default::default()
    });
    let t = translate_address(wl::Address {
        r#type: Some(wl::address::Type::Service(s)),
    })
    .unwrap();
    assert_eq!(t.unknown_enums, 3);
    let AddressResource::Service(s) = t.value else {
        panic!("a service")
    };
    assert_eq!(s.visibility, Visibility::Namespace);
    assert_eq!(s.ip_families, IpFamilies::Automatic);
    assert_eq!(
        s.load_balancer.unwrap().health_policy,
        HealthPolicy::OnlyHealthy
    );

    let p = sec::Authorization {
        action: 3,
        ..policy_with(sec::Match {
            destination_ports: vec![1],
            ..Default::default()
        })
    };
    let t = translate_policy(p).unwrap();
    assert_eq!((t.value.action, t.unknown_enums), (PolicyAction::Deny, 1));

    // Counted even when the resource is rejected.
    let mut w = workload();
    w.tunnel_protocol = 8;
    let (_, unknown) = translate_address(wl::Address {
        r#type: Some(wl::address::Type::Workload(w)),
    })
    .unwrap_err();
    assert_eq!(unknown, 1);
    let err = translate_address(wl::Address { r#type: None })
        .unwrap_err()
        .0;
    assert_eq!(err.to_string(), "type: is neither a workload nor a service");
}

/// Everything the local mesh file can say reaches a client unchanged.
#[test]
fn encode_then_translate_is_the_identity() {
    let yaml = r#"
workloads:
- uid: cluster1//Pod/ns1/a
  name: a
  namespace: ns1
  serviceAccount: sa-a
  trustDomain: td.example
  workloadIps: ["10.0.0.1", "fd00::1"]
  protocol: HBONE
  network: net1
  node: node-1
  clusterId: c1
  hostname: a.example
  canonicalName: app
  canonicalRevision: v2
  workloadType: pod
  workloadName: a-deploy
  nativeTunnel: true
  status: Unhealthy
  networkMode: HostNetwork
  capacity: 3
  locality: {region: r, zone: z, subzone: s}
  authorizationPolicies: [ns1/p1]
  waypoint: {destination: "net1/10.0.0.99", hboneMtlsPort: 15008}
  networkGateway: {destination: "istio-system/gw.example", hboneMtlsPort: 15009}
  applicationTunnel: {protocol: PROXY, port: 15088}
  services:
    ns1/svc.ns1.svc.cluster.local: {80: 8080, 81: 0}
- uid: u2
  name: b
  namespace: ns2
  workloadIps: ["10.0.0.2"]
  workloadType: deployment
services:
- name: svc
  namespace: ns1
  hostname: svc.ns1.svc.cluster.local
  vips: ["/10.96.0.1", "net1/fd00::96"]
  cidrVips: [{network: "", cidr: "10.97.0.0/16"}]
  ports: {80: 8080, 81: 0}
  subjectAltNames: ["spiffe://td.example/ns/ns1/sa/extra"]
  waypoint: {destination: "ns1/wp.ns1.svc.cluster.local", hboneMtlsPort: 15008}
  weightedWaypoints: [{destination: {destination: "/10.0.0.50", hboneMtlsPort: 15008}, weight: 3}]
  loadBalancer: {routingPreferences: [Region, Zone, Node, Network], mode: Failover, healthPolicy: AllowAll}
  ipFamilies: Dual
  canonical: true
  visibility: Namespace
policies:
- name: p1
  namespace: ns1
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - namespaces: [{Exact: ns2}]
        notPrincipals: [{Suffix: /sa/x}]
        principals: [{Presence: []}]
        serviceAccounts: [{namespace: ns2, serviceAccount: b}]
        sourceIps: ["10.0.0.0/8", "fd00::/64"]
        notDestinationIps: ["10.96.0.1"]
        destinationPorts: [80]
        notDestinationPorts: [9999]
      - notNamespaces: [{Prefix: kube-}]
    - - destinationIps: ["0.0.0.0/0"]
  - []
"#;
    let local = crate::control::local::parse(yaml).expect("valid mesh");
    assert_eq!(local.workloads.len(), 2);
    for w in &local.workloads {
        let back = translate_address(encode::workload(w)).unwrap();
        assert_eq!(back.unknown_enums, 0);
        assert_eq!(
            back.value,
            AddressResource::Workload(w.clone()),
            "{}",
            w.uid
        );
    }
    for s in &local.services {
        let back = translate_address(encode::service(s)).unwrap();
        assert_eq!(back.value, AddressResource::Service(s.clone()));
    }
    // The path the xDS client takes gives the same values, its repeated strings shared.
    for w in &local.workloads {
        let mut strings = crate::state::SharedStrings::lock();
        let back = translate_shared_address(&encode::workload(w), &mut strings).unwrap();
        assert_eq!(back.value, AddressResource::Workload(w.clone()));
    }
    for s in &local.services {
        let mut strings = crate::state::SharedStrings::lock();
        let back = translate_shared_address(&encode::service(s), &mut strings).unwrap();
        assert_eq!(back.value, AddressResource::Service(s.clone()));
    }
    for p in &local.policies {
        let back = translate_policy(encode::policy(p)).unwrap();
        assert_eq!(back.value, p.clone());
    }
}

/// istiod sends a match group with no L4 condition for `from`/`to`/`when` entries that name
/// only HTTP attributes (and ztunnel ignores match extensions): accepted as an empty group,
/// which never matches at L4. Rejecting it would drop the policy's L4 rules with it.
#[test]
fn empty_match_groups_are_accepted_as_empty() {
    for m in [
        sec::Match::default(),
        sec::Match {
            extensions: vec![wl::Extension::default()],
            ..Default::default()
        },
    ] {
        let p = Policy::try_from(policy_with(m)).expect("accepted");
        assert_eq!(p.rules.len(), 1);
        assert!(p.rules[0][0][0].is_empty(), "{p:?}");
        assert_eq!(p.unmatchable_rules().collect::<Vec<_>>(), vec![0]);
    }
}

/// Translated for the xDS client, a resource's repeated strings are the mesh's shared copies
/// (the snapshot then inserts it without looking them up again): two workloads of one
/// namespace, service account and service hold one copy of each.
#[test]
fn shared_translation_shares_the_repeated_strings() {
    let pair = |uid: &str| {
        let mut w = workload();
        w.uid = uid.into();
        w.service_account = "sa-shared-translation".into();
        w.node = "node-shared-translation".into();
        w.services.insert(
            "ns/svc-shared-translation.ns.svc.cluster.local".into(),
            wl::PortList::default(),
        );
        let mut strings = crate::state::SharedStrings::lock();
        let t = translate_shared_address(
            &wl::Address {
                r#type: Some(wl::address::Type::Workload(w)),
            },
            &mut strings,
        )
        .unwrap();
        match t.value {
            AddressResource::Workload(w) => w,
            other => panic!("not a workload: {other:?}"),
        }
    };
    let (a, b) = (pair("c//Pod/ns/shared-a"), pair("c//Pod/ns/shared-b"));
    for (x, y) in [
        (&a.namespace, &b.namespace),
        (&a.service_account, &b.service_account),
        (&a.node, &b.node),
        (&a.trust_domain, &b.trust_domain),
        (&a.cluster_id, &b.cluster_id),
        (&a.locality.zone, &b.locality.zone),
        (
            a.services.keys().next().unwrap(),
            b.services.keys().next().unwrap(),
        ),
    ] {
        assert!(std::sync::Arc::ptr_eq(x, y), "{x:?} is not shared");
    }
}
