//! Table and statistical tests of outbound route planning.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::state::model::{
    AppTunnelProtocol, ApplicationTunnel, CidrVip, HealthPolicy, HealthStatus, Locality,
    NamespacedHostname, NetworkAddress, PortMap, WeightedWaypoint,
};
use crate::state::SnapshotBuilder;
use crate::testkit::fixtures::pod as mesh_workload;

const HBONE: u16 = 15008;

fn w(name: &str, ip: [u8; 4]) -> Workload {
    let mut w = mesh_workload("default", name, name, ip);
    w.uid = format!("Kubernetes//Pod/default/{name}").into();
    w
}

fn svc(name: &str, vip: [u8; 4], ports: &[(u16, u16)]) -> Service {
    crate::testkit::fixtures::service("default", name)
        .vip(vip)
        .ports(ports)
        .build()
}

/// Makes `w` an endpoint of `s` with the port map `ports`.
fn member(mut w: Workload, s: &Service, ports: &[(u16, u16)]) -> Workload {
    let map: PortMap = ports.iter().copied().collect();
    w.services.insert(s.key().into(), map);
    w
}

struct World {
    b: SnapshotBuilder,
}

impl World {
    fn new() -> Self {
        let mut b = SnapshotBuilder::default();
        b.insert_workload(w("client", [10, 0, 1, 11]));
        World { b }
    }
    fn with(mut self, w: Workload) -> Self {
        self.b.insert_workload(w);
        self
    }
    fn service(mut self, s: Service) -> Self {
        self.b.insert_service(s);
        self
    }
    fn build(self) -> Snapshot {
        self.b.build(1)
    }
}

fn client() -> Workload {
    w("client", [10, 0, 1, 11])
}

fn route_from(snap: &Snapshot, src: &Workload, dst: &str) -> Route {
    let source = Source {
        workload: src,
        ip: src.workload_ips[0],
        network: "",
    };
    plan_with(
        &mut StdRng::seed_from_u64(7),
        snap,
        &source,
        dst.parse().unwrap(),
        HBONE,
    )
}

fn route(snap: &Snapshot, dst: &str) -> Route {
    route_from(snap, &client(), dst)
}

/// `(dst, authority, workload name, via waypoint)` of an HBONE route.
fn hbone(r: &Route) -> (String, String, String, bool) {
    match r {
        Route::Hbone {
            dst,
            authority,
            workload,
            waypoint,
            ..
        } => (
            dst.to_string(),
            authority.to_string(),
            workload.name.to_string(),
            *waypoint,
        ),
        other => panic!("expected HBONE, got {other:?}"),
    }
}

fn tcp(r: &Route) -> (String, Option<String>) {
    match r {
        Route::Tcp { dst, workload, .. } => (
            dst.to_string(),
            workload.as_ref().map(|w| w.name.to_string()),
        ),
        other => panic!("expected TCP, got {other:?}"),
    }
}

fn refused(r: &Route) -> RefuseReason {
    match r {
        Route::Refuse(reason) => *reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn addresses_without_service() {
    let mut plain = w("plain", [10, 0, 2, 12]);
    plain.protocol = TunnelProtocol::Tcp;
    let snap = World::new()
        .with(w("server", [10, 0, 2, 11]))
        .with(plain)
        .build();
    assert_eq!(
        hbone(&route(&snap, "10.0.2.11:8080")),
        (
            "10.0.2.11:15008".into(),
            "10.0.2.11:8080".into(),
            "server".into(),
            false
        )
    );
    assert_eq!(
        tcp(&route(&snap, "10.0.2.12:80")),
        ("10.0.2.12:80".into(), Some("plain".into()))
    );
    assert_eq!(
        tcp(&route(&snap, "1.2.3.4:443")),
        ("1.2.3.4:443".into(), None)
    );
    // IPv4-mapped destinations are looked up as IPv4.
    assert_eq!(
        hbone(&route(&snap, "[::ffff:10.0.2.11]:8080")).0,
        "10.0.2.11:15008"
    );
}

/// (name, endpoint port map, destination, expected authority or refusal).
type PortCase = (
    &'static str,
    Vec<(u16, u16)>,
    &'static str,
    Result<&'static str, RefuseReason>,
);

#[test]
fn service_port_mapping() {
    let s = svc("web", [10, 96, 0, 1], &[(80, 8080), (81, 0), (82, 8082)]);
    let named = svc("named", [10, 96, 0, 2], &[(80, 0)]);
    #[rustfmt::skip]
    let cases: Vec<PortCase> = vec![
        ("service target port", vec![], "10.96.0.1:80", Ok("10.0.2.11:8080")),
        ("endpoint map overrides", vec![(80, 9090)], "10.96.0.1:80", Ok("10.0.2.11:9090")),
        ("endpoint map 0 falls back", vec![(80, 0)], "10.96.0.1:80", Ok("10.0.2.11:8080")),
        ("named port from endpoint", vec![(81, 7070)], "10.96.0.1:81", Ok("10.0.2.11:7070")),
        ("named port without endpoint map", vec![], "10.96.0.1:81", Err(RefuseReason::NoHealthyUpstream)),
        ("undeclared port", vec![], "10.96.0.1:99", Err(RefuseReason::UnknownServicePort)),
    ];
    for (name, ep_ports, dst, want) in cases {
        let snap = World::new()
            .service(s.clone())
            .with(member(w("server", [10, 0, 2, 11]), &s, &ep_ports))
            .build();
        let r = route(&snap, dst);
        match want {
            Ok(authority) => {
                let (d, a, wl, wp) = hbone(&r);
                assert_eq!(
                    (d.as_str(), a.as_str(), wl.as_str(), wp),
                    ("10.0.2.11:15008", authority, "server", false),
                    "{name}"
                );
            }
            Err(reason) => assert_eq!(refused(&r), reason, "{name}"),
        }
    }
    // A named-port service with only unmapped endpoints is refused, not hung.
    let snap = World::new()
        .service(named.clone())
        .with(member(w("server", [10, 0, 2, 11]), &named, &[]))
        .build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.2:80")),
        RefuseReason::NoHealthyUpstream
    );
}

#[test]
fn health_and_empty_services() {
    let s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    let mut sick = member(w("sick", [10, 0, 2, 12]), &s, &[]);
    sick.status = HealthStatus::Unhealthy;
    let snap = World::new().service(s.clone()).with(sick.clone()).build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.1:80")),
        RefuseReason::NoHealthyUpstream
    );

    let snap = World::new()
        .service(s.clone())
        .with(sick.clone())
        .with(member(w("well", [10, 0, 2, 11]), &s, &[]))
        .build();
    for seed in 0..50 {
        let source = Source {
            workload: &client(),
            ip: [10, 0, 1, 11].into(),
            network: "",
        };
        let r = plan_with(
            &mut StdRng::seed_from_u64(seed),
            &snap,
            &source,
            "10.96.0.1:80".parse().unwrap(),
            HBONE,
        );
        assert_eq!(
            hbone(&r).2,
            "well",
            "an unhealthy endpoint never gets traffic"
        );
    }

    let mut allow_all = s.clone();
    allow_all.load_balancer = Some(LoadBalancer {
        health_policy: HealthPolicy::AllowAll,
        ..Default::default()
    });
    let snap = World::new().service(allow_all).with(sick).build();
    assert_eq!(hbone(&route(&snap, "10.96.0.1:80")).2, "sick");

    let snap = World::new().service(s).build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.1:80")),
        RefuseReason::NoHealthyUpstream
    );
}

#[test]
fn endpoints_without_address_or_on_another_network_are_skipped() {
    let s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    let mut no_address = member(w("no-address", [10, 0, 2, 13]), &s, &[]);
    no_address.workload_ips.clear();
    let mut remote = member(w("remote", [10, 0, 2, 14]), &s, &[]);
    remote.network = "other".into();
    let snap = World::new()
        .service(s)
        .with(no_address)
        .with(remote)
        .build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.1:80")),
        RefuseReason::NoHealthyUpstream
    );
}

/// A hostname-only endpoint (DNS-resolved ServiceEntry) is left for the caller to resolve;
/// completing picks an address of the dialled family allowed by the service, with the
/// endpoint's protocol.
#[test]
fn hostname_only_endpoints_are_resolved_then_completed() {
    let mut s = svc("ext", [10, 96, 0, 1], &[(80, 8080)]);
    let mut vm = member(w("vm", [0, 0, 0, 0]), &s, &[]);
    vm.workload_ips.clear();
    vm.hostname = "vm.example".into();
    let snap = World::new().service(s.clone()).with(vm.clone()).build();
    let Route::Resolve(pending) = route(&snap, "10.96.0.1:80") else {
        panic!("expected a hostname to resolve");
    };
    assert_eq!((&**pending.hostname(), pending.port), ("vm.example", 8080));
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    let rng = &mut StdRng::seed_from_u64(1);
    let done = pending.clone().complete(rng, &[v6, v4]).unwrap();
    assert_eq!(hbone(&done).0, "192.0.2.7:15008");
    assert_eq!(hbone(&done).1, "192.0.2.7:8080");
    assert_eq!(
        hbone(&done).1,
        hbone(&pending.clone().complete(rng, &[v4]).unwrap()).1
    );
    // Only the other family: used. Nothing: no route.
    assert_eq!(
        hbone(&pending.clone().complete(rng, &[v6]).unwrap()).1,
        "[2001:db8::7]:8080"
    );
    assert!(pending.clone().complete(rng, &[]).is_none());
    // A v6-only service never gets the v4 address.
    s.ip_families = IpFamilies::Ipv6Only;
    vm.protocol = TunnelProtocol::Tcp;
    let snap = World::new().service(s.clone()).with(vm.clone()).build();
    let Route::Resolve(pending) = route(&snap, "10.96.0.1:80") else {
        panic!("expected a hostname to resolve");
    };
    assert!(pending.clone().complete(rng, &[v4]).is_none());
    assert_eq!(
        tcp(&pending.complete(rng, &[v4, v6]).unwrap()).0,
        "[2001:db8::7]:8080"
    );
    // Waypoint services need addresses: a hostname-only waypoint endpoint is not chosen.
    let wp_svc = svc("wp", [10, 96, 0, 9], &[(HBONE, HBONE)]);
    let mut wp = member(w("wp", [0, 0, 0, 0]), &wp_svc, &[]);
    wp.workload_ips.clear();
    wp.hostname = "wp.example".into();
    s.waypoint = Some(gw_addr([10, 96, 0, 9]));
    let snap = World::new()
        .service(s)
        .service(wp_svc)
        .with(vm)
        .with(wp)
        .build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.1:80")),
        RefuseReason::UnknownWaypoint
    );
}

#[test]
fn weighted_by_capacity() {
    let s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    let light = member(w("light", [10, 0, 2, 11]), &s, &[]);
    let mut heavy = member(w("heavy", [10, 0, 2, 12]), &s, &[]);
    heavy.capacity = 3;
    let snap = World::new().service(s).with(light).with(heavy).build();
    let mut rng = StdRng::seed_from_u64(42);
    let c = client();
    let source = Source {
        workload: &c,
        ip: [10, 0, 1, 11].into(),
        network: "",
    };
    let n = 4000;
    let heavy_picks = (0..n)
        .filter(|_| {
            let r = plan_with(
                &mut rng,
                &snap,
                &source,
                "10.96.0.1:80".parse().unwrap(),
                HBONE,
            );
            hbone(&r).2 == "heavy"
        })
        .count();
    let share = heavy_picks as f64 / f64::from(n);
    assert!((0.70..0.80).contains(&share), "heavy share {share}");
}

fn located(name: &str, ip: [u8; 4], region: &str, zone: &str) -> Workload {
    let mut w = w(name, ip);
    w.locality = Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: "".into(),
    };
    w
}

/// (name, mode, endpoints, expected endpoint or refusal).
type PreferenceCase<'a> = (
    &'static str,
    LoadBalancerMode,
    Vec<&'a Workload>,
    Result<&'static str, RefuseReason>,
);

#[test]
fn routing_preferences() {
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    let prefs = vec![LoadBalancerScope::Region, LoadBalancerScope::Zone];
    let mut src = located("client", [10, 0, 1, 11], "r1", "z1");
    src.node = "n1".into();
    let same_zone = located("same-zone", [10, 0, 2, 11], "r1", "z1");
    let same_region = located("same-region", [10, 0, 2, 12], "r1", "z2");
    let far = located("far", [10, 0, 2, 13], "r2", "z1");
    let world = |mode: LoadBalancerMode, eps: &[&Workload]| {
        let mut s = s.clone();
        s.load_balancer = Some(LoadBalancer {
            routing_preferences: prefs.clone(),
            mode,
            health_policy: HealthPolicy::OnlyHealthy,
        });
        let mut world = World::new().with(src.clone()).service(s.clone());
        for e in eps {
            world = world.with(member((*e).clone(), &s, &[]));
        }
        world.build()
    };
    #[rustfmt::skip]
    let cases: Vec<PreferenceCase<'_>> = vec![
        ("failover prefers full match", LoadBalancerMode::Failover, vec![&same_zone, &same_region, &far], Ok("same-zone")),
        ("failover to region", LoadBalancerMode::Failover, vec![&same_region, &far], Ok("same-region")),
        ("failover to anything", LoadBalancerMode::Failover, vec![&far], Ok("far")),
        ("strict full match", LoadBalancerMode::Strict, vec![&same_zone, &far], Ok("same-zone")),
        ("strict refuses partial", LoadBalancerMode::Strict, vec![&same_region, &far], Err(RefuseReason::NoHealthyUpstream)),
        // Leading scopes only: `far` shares the zone name but not the region.
        ("ranks count leading scopes", LoadBalancerMode::Failover, vec![&far, &same_region], Ok("same-region")),
    ];
    for (name, mode, eps, want) in cases {
        let snap = world(mode, &eps);
        for seed in 0..20 {
            let source = Source {
                workload: &src,
                ip: [10, 0, 1, 11].into(),
                network: "",
            };
            let r = plan_with(
                &mut StdRng::seed_from_u64(seed),
                &snap,
                &source,
                "10.96.0.1:80".parse().unwrap(),
                HBONE,
            );
            match want {
                Ok(expected) => assert_eq!(hbone(&r).2, expected, "{name}"),
                Err(reason) => assert_eq!(refused(&r), reason, "{name}"),
            }
        }
    }
    // Standard mode ignores preferences.
    s.load_balancer = None;
    let snap = World::new()
        .with(src.clone())
        .service(s.clone())
        .with(member(far.clone(), &s, &[]))
        .build();
    assert_eq!(hbone(&route_from(&snap, &src, "10.96.0.1:80")).2, "far");
}

#[test]
fn node_and_cluster_preferences() {
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    s.load_balancer = Some(LoadBalancer {
        routing_preferences: vec![LoadBalancerScope::Cluster, LoadBalancerScope::Node],
        mode: LoadBalancerMode::Failover,
        health_policy: HealthPolicy::OnlyHealthy,
    });
    let mut local = w("local", [10, 0, 1, 12]);
    local.node = "n1".into();
    let mut remote = w("remote", [10, 0, 2, 12]);
    remote.node = "n2".into();
    let mut src = client();
    src.node = "n1".into();
    let snap = World::new()
        .service(s.clone())
        .with(member(local, &s, &[]))
        .with(member(remote, &s, &[]))
        .build();
    for _ in 0..20 {
        assert_eq!(hbone(&route_from(&snap, &src, "10.96.0.1:80")).2, "local");
    }
}

#[test]
fn passthrough_services_go_to_the_original_destination() {
    let mut s = svc("ext", [10, 96, 0, 9], &[]);
    s.load_balancer = Some(LoadBalancer {
        mode: LoadBalancerMode::Passthrough,
        ..Default::default()
    });
    let snap = World::new().service(s).build();
    match route(&snap, "10.96.0.9:443") {
        Route::Tcp {
            dst,
            workload: None,
            service: Some(svc),
        } => {
            assert_eq!(dst.to_string(), "10.96.0.9:443");
            assert_eq!(&*svc.name, "ext");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn visibility_and_tie_breaks() {
    let mk = |name: &str, ns: &str, canonical: bool, vis: Visibility| {
        let mut s = svc(name, [10, 96, 0, 1], &[(80, 8080)]);
        s.namespace = ns.into();
        s.hostname = format!("{name}.{ns}.svc.cluster.local").into();
        s.canonical = canonical;
        s.visibility = vis;
        s
    };
    let pick = |services: Vec<Service>| {
        let mut world = World::new();
        for s in services {
            world = world.service(s);
        }
        let snap = world.build();
        let c = client();
        let source = Source {
            workload: &c,
            ip: [10, 0, 1, 11].into(),
            network: "",
        };
        find_service(&snap, &source, [10, 96, 0, 1].into()).map(|s| s.key())
    };
    use Visibility::{Namespace, Public};
    assert_eq!(
        pick(vec![
            mk("a", "other", false, Public),
            mk("b", "default", false, Public)
        ])
        .as_deref(),
        Some("default/b.default.svc.cluster.local"),
        "same namespace wins"
    );
    assert_eq!(
        pick(vec![
            mk("a", "x", false, Public),
            mk("b", "y", true, Public)
        ])
        .as_deref(),
        Some("y/b.y.svc.cluster.local"),
        "canonical wins"
    );
    assert_eq!(
        pick(vec![
            mk("a", "x", false, Public),
            mk("b", "y", false, Public)
        ])
        .as_deref(),
        Some("x/a.x.svc.cluster.local"),
        "first by key"
    );
    assert_eq!(
        pick(vec![mk("a", "other", true, Namespace)]),
        None,
        "namespace-visible elsewhere is invisible"
    );
    assert_eq!(
        pick(vec![mk("a", "default", false, Namespace)]).as_deref(),
        Some("default/a.default.svc.cluster.local")
    );
}

#[test]
fn cidr_vips() {
    let cidr = |name: &str, net: [u8; 4], len: u8| {
        let mut s = svc(name, [10, 96, 9, 9], &[(80, 8080)]);
        s.vips.clear();
        s.cidr_vips = vec![CidrVip {
            network: "".into(),
            address: IpAddr::from(net),
            prefix_len: len,
        }];
        s
    };
    let wide = cidr("wide", [10, 200, 0, 0], 16);
    let narrow = cidr("narrow", [10, 200, 1, 0], 24);
    let snap = World::new()
        .service(wide.clone())
        .service(narrow.clone())
        .with(member(w("wide-ep", [10, 0, 2, 11]), &wide, &[]))
        .with(member(w("narrow-ep", [10, 0, 2, 12]), &narrow, &[]))
        .build();
    assert_eq!(
        hbone(&route(&snap, "10.200.1.7:80")).2,
        "narrow-ep",
        "longest prefix"
    );
    assert_eq!(hbone(&route(&snap, "10.200.2.7:80")).2, "wide-ep");
    assert_eq!(tcp(&route(&snap, "10.201.0.1:80")).1, None);
}

#[test]
fn expected_identities_include_service_sans() {
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    s.subject_alt_names = vec![
        "spiffe://cluster.local/ns/default/sa/extra".into(),
        "not-an-identity".into(),
    ];
    let snap = World::new()
        .service(s.clone())
        .with(member(w("server", [10, 0, 2, 11]), &s, &[]))
        .build();
    let Route::Hbone { identities, .. } = route(&snap, "10.96.0.1:80") else {
        panic!("expected HBONE");
    };
    let ids: Vec<String> = identities.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/default/sa/server",
            "spiffe://cluster.local/ns/default/sa/extra"
        ]
    );
}

fn gw_host(ns: &str, host: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: ns.into(),
            hostname: host.into(),
        }),
        hbone_mtls_port: 15008,
    }
}

fn gw_addr(ip: [u8; 4]) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: "".into(),
            address: IpAddr::from(ip),
        }),
        hbone_mtls_port: 15008,
    }
}

/// A waypoint service `waypoint` (port 15008) with one endpoint `wp` at 10.0.3.11.
fn with_waypoint(world: World) -> World {
    let mut wp_svc = svc("waypoint", [10, 96, 0, 100], &[(15008, 15008)]);
    wp_svc.subject_alt_names = vec!["spiffe://cluster.local/ns/default/sa/wp-alias".into()];
    let mut wp = member(w("wp", [10, 0, 3, 11]), &wp_svc, &[]);
    wp.protocol = TunnelProtocol::Tcp; // waypoints are always reached over HBONE anyway
    world.service(wp_svc).with(wp)
}

#[test]
fn service_waypoints() {
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    s.waypoint = Some(gw_host("default", "waypoint.default.svc.cluster.local"));
    let snap = with_waypoint(World::new())
        .service(s.clone())
        .with(member(w("server", [10, 0, 2, 11]), &s, &[]))
        .build();
    let r = route(&snap, "10.96.0.1:80");
    assert_eq!(
        hbone(&r),
        (
            "10.0.3.11:15008".into(),
            "10.96.0.1:80".into(),
            "wp".into(),
            true
        )
    );
    let Route::Hbone {
        identities,
        service,
        ..
    } = &r
    else {
        unreachable!()
    };
    let ids: Vec<String> = identities.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/default/sa/wp",
            "spiffe://cluster.local/ns/default/sa/wp-alias"
        ]
    );
    assert_eq!(
        service.as_ref().map(|s| &*s.name),
        Some("web"),
        "the intended service is kept"
    );

    // The waypoint itself calling the service goes straight to an endpoint.
    let wp = w("wp", [10, 0, 3, 11]);
    assert_eq!(hbone(&route_from(&snap, &wp, "10.96.0.1:80")).2, "server");

    // By address.
    s.waypoint = Some(gw_addr([10, 0, 3, 11]));
    let snap = with_waypoint(World::new()).service(s.clone()).build();
    assert_eq!(hbone(&route(&snap, "10.96.0.1:80")).0, "10.0.3.11:15008");

    // Unknown waypoint: refused, never bypassed.
    s.waypoint = Some(gw_host("default", "nope.default.svc.cluster.local"));
    let snap = World::new()
        .service(s.clone())
        .with(member(w("server", [10, 0, 2, 11]), &s, &[]))
        .build();
    assert_eq!(
        refused(&route(&snap, "10.96.0.1:80")),
        RefuseReason::UnknownWaypoint
    );
}

#[test]
fn weighted_waypoints() {
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    s.waypoint = Some(gw_addr([10, 0, 3, 11]));
    s.weighted_waypoints = vec![
        WeightedWaypoint {
            destination: gw_addr([10, 0, 3, 12]),
            weight: 1,
        },
        WeightedWaypoint {
            destination: gw_addr([10, 0, 3, 13]),
            weight: 0,
        },
    ];
    let world = || {
        World::new()
            .with(w("wp1", [10, 0, 3, 11]))
            .with(w("wp2", [10, 0, 3, 12]))
            .with(w("wp3", [10, 0, 3, 13]))
    };
    let snap = world().service(s.clone()).build();
    for _ in 0..20 {
        assert_eq!(
            hbone(&route(&snap, "10.96.0.1:80")).2,
            "wp2",
            "weight 0 never picked"
        );
    }
    for ww in &mut s.weighted_waypoints {
        ww.weight = 0;
    }
    let snap = world().service(s).build();
    assert_eq!(
        hbone(&route(&snap, "10.96.0.1:80")).2,
        "wp1",
        "all-zero falls back to `waypoint`"
    );
}

#[test]
fn workload_waypoints() {
    let mut server = w("server", [10, 0, 2, 11]);
    server.waypoint = Some(gw_host("default", "waypoint.default.svc.cluster.local").into());
    let s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    let snap = with_waypoint(World::new())
        .service(s.clone())
        .with(member(server, &s, &[]))
        .build();
    assert_eq!(
        hbone(&route(&snap, "10.0.2.11:8080")),
        (
            "10.0.3.11:15008".into(),
            "10.0.2.11:8080".into(),
            "wp".into(),
            true
        )
    );
    // Service-addressed traffic does not take the endpoint's workload waypoint.
    assert_eq!(hbone(&route(&snap, "10.96.0.1:80")).2, "server");
    // The waypoint forwarding to its workload does not loop.
    let wp = w("wp", [10, 0, 3, 11]);
    assert_eq!(hbone(&route_from(&snap, &wp, "10.0.2.11:8080")).2, "server");
    // A workload sharing the waypoint's identity but not its IP still goes through it.
    let impostor = w("wp", [10, 0, 9, 9]);
    assert!(hbone(&route_from(&snap, &impostor, "10.0.2.11:8080")).3);
}

#[test]
fn waypoint_service_ports_and_app_tunnels() {
    // The waypoint service does not declare 15008: only endpoints with an app tunnel qualify.
    let wp_svc = svc("waypoint", [10, 96, 0, 100], &[]);
    let mut tunnelled = member(w("wp", [10, 0, 3, 11]), &wp_svc, &[]);
    tunnelled.application_tunnel = Some(ApplicationTunnel {
        protocol: AppTunnelProtocol::Proxy,
        port: Some(15088),
    });
    let plain = member(w("wp-plain", [10, 0, 3, 12]), &wp_svc, &[]);
    let mut server = w("server", [10, 0, 2, 11]);
    server.waypoint = Some(gw_host("default", "waypoint.default.svc.cluster.local").into());
    let snap = World::new()
        .service(wp_svc)
        .with(tunnelled)
        .with(plain)
        .with(server)
        .build();
    for _ in 0..20 {
        assert_eq!(hbone(&route(&snap, "10.0.2.11:8080")).2, "wp");
    }
}

#[test]
fn ip_family_choice() {
    let mut dual = w("dual", [10, 0, 2, 11]);
    dual.workload_ips.push("fd00::11".parse().unwrap());
    let mut s = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
    s.vips.push(NetworkAddress {
        network: "".into(),
        address: "fd00:96::1".parse().unwrap(),
    });
    let snap = World::new()
        .service(s.clone())
        .with(member(dual.clone(), &s, &[]))
        .build();
    assert_eq!(hbone(&route(&snap, "10.96.0.1:80")).1, "10.0.2.11:8080");
    assert_eq!(hbone(&route(&snap, "[fd00:96::1]:80")).1, "[fd00::11]:8080");
    s.ip_families = IpFamilies::Ipv4Only;
    let snap = World::new()
        .service(s.clone())
        .with(member(dual, &s, &[]))
        .build();
    assert_eq!(hbone(&route(&snap, "[fd00:96::1]:80")).1, "10.0.2.11:8080");
}

#[test]
fn port_maps_are_per_service() {
    let a = svc("a", [10, 96, 0, 1], &[(80, 8080)]);
    let b = svc("b", [10, 96, 0, 2], &[(80, 8080)]);
    let mut server = member(w("server", [10, 0, 2, 11]), &a, &[(80, 1111)]);
    server
        .services
        .insert(b.key().into(), BTreeMap::from([(80, 2222)]));
    let snap = World::new().service(a).service(b).with(server).build();
    assert_eq!(hbone(&route(&snap, "10.96.0.1:80")).1, "10.0.2.11:1111");
    assert_eq!(hbone(&route(&snap, "10.96.0.2:80")).1, "10.0.2.11:2222");
}

/// Multi-network (compat.md §1.5): an endpoint on another network is reached by double HBONE
/// through its network gateway (by address or by hostname), never directly; one without a
/// gateway is never chosen; FAILOVER led by `Network` keeps traffic local while a local
/// endpoint is usable.
mod multi_network {
    use super::*;

    const GW_IP: [u8; 4] = [172, 31, 2, 10];

    fn gateway_workload() -> Workload {
        let mut g = mesh_workload("istio-system", "ew-gw", "istio-eastwestgateway", GW_IP);
        g.network = "net2".into();
        g.protocol = TunnelProtocol::Tcp;
        g
    }

    fn remote(name: &str, ip: [u8; 4], gw: Option<GatewayDestination>) -> Workload {
        let mut r = w(name, ip);
        r.network = "net2".into();
        r.network_gateway = gw.map(|destination| {
            Box::new(GatewayAddress {
                destination,
                hbone_mtls_port: 15443,
            })
        });
        r
    }

    fn by_address() -> GatewayDestination {
        GatewayDestination::Address(NetworkAddress {
            network: "net2".into(),
            address: IpAddr::from(GW_IP),
        })
    }

    fn double(r: &Route) -> (String, String, String, Vec<String>, Vec<String>) {
        match r {
            Route::DoubleHbone {
                gateway,
                gateway_identities,
                authority,
                identities,
                workload,
                ..
            } => (
                gateway.to_string(),
                authority.to_string(),
                workload.name.to_string(),
                gateway_identities.iter().map(ToString::to_string).collect(),
                identities.iter().map(ToString::to_string).collect(),
            ),
            other => panic!("expected double HBONE, got {other:?}"),
        }
    }

    #[test]
    fn remote_endpoints_go_through_their_gateway() {
        let web = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
        let far = member(remote("far", [10, 0, 9, 11], Some(by_address())), &web, &[]);
        let snap = World::new()
            .with(gateway_workload())
            .with(far)
            .service(web.clone())
            .build();
        let (gw, authority, name, gw_ids, ids) = double(&route(&snap, "10.96.0.1:80"));
        assert_eq!(gw, "172.31.2.10:15443");
        assert_eq!(authority, "web.default.svc.cluster.local:80");
        assert_eq!(name, "far");
        assert_eq!(
            gw_ids,
            ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"]
        );
        assert_eq!(ids, ["spiffe://cluster.local/ns/default/sa/far"]);
        // Addressed by its own IP, a remote pod is not in this network's view: passthrough
        // to an unknown address, never HBONE to it directly.
        assert_eq!(
            tcp(&route(&snap, "10.0.9.11:8080")),
            ("10.0.9.11:8080".into(), None)
        );
    }

    #[test]
    fn a_gateway_by_hostname_is_an_endpoint_of_that_service() {
        let web = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
        let mut gw_svc = svc("ew-gw", [10, 96, 9, 9], &[(15443, 15008)]);
        gw_svc.namespace = "istio-system".into();
        gw_svc.hostname = "ew-gw.istio-system.svc.cluster.local".into();
        gw_svc.vips[0].network = "net2".into();
        let gw = member(gateway_workload(), &gw_svc, &[]);
        let host = GatewayDestination::Hostname(NamespacedHostname {
            namespace: "istio-system".into(),
            hostname: gw_svc.hostname.clone(),
        });
        // Only remote endpoints, one of them without a network address at all.
        let mut far = member(remote("far", [10, 0, 9, 11], Some(host)), &web, &[]);
        far.workload_ips.clear();
        let snap = World::new()
            .with(gw)
            .with(far)
            .service(web)
            .service(gw_svc)
            .build();
        let (gw, authority, name, ..) = double(&route(&snap, "10.96.0.1:80"));
        assert_eq!(gw, "172.31.2.10:15008", "the gateway service's target port");
        assert_eq!(authority, "web.default.svc.cluster.local:80");
        assert_eq!(name, "far");
    }

    #[test]
    fn no_gateway_no_route_and_a_missing_gateway_is_refused() {
        let web = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
        let stranded = member(remote("stranded", [10, 0, 9, 11], None), &web, &[]);
        let snap = World::new().with(stranded).service(web.clone()).build();
        assert_eq!(
            refused(&route(&snap, "10.96.0.1:80")),
            RefuseReason::NoHealthyUpstream
        );
        // A gateway the state does not know: refused with its own reason.
        let lost = member(
            remote("lost", [10, 0, 9, 12], Some(by_address())),
            &web,
            &[],
        );
        let snap = World::new().with(lost).service(web).build();
        assert_eq!(
            refused(&route(&snap, "10.96.0.1:80")),
            RefuseReason::UnknownNetworkGateway
        );
    }

    #[test]
    fn failover_led_by_network_prefers_local_endpoints() {
        let mut web = svc("web", [10, 96, 0, 1], &[(80, 8080)]);
        web.load_balancer = Some(LoadBalancer {
            routing_preferences: vec![LoadBalancerScope::Network, LoadBalancerScope::Region],
            mode: LoadBalancerMode::Failover,
            health_policy: HealthPolicy::OnlyHealthy,
        });
        let mut far = remote("far", [10, 0, 9, 11], Some(by_address()));
        far.locality.region = "r1".into();
        let far = member(far, &web, &[]);
        // The local endpoint is in another region than the client, the remote one in the
        // same: network still wins.
        let mut near = w("near", [10, 0, 2, 11]);
        near.locality.region = "r2".into();
        let near = member(near, &web, &[]);
        let mut src = client();
        src.locality.region = "r1".into();
        let world = || {
            World::new()
                .with(gateway_workload())
                .with(far.clone())
                .service(web.clone())
        };
        let snap = world().with(near.clone()).build();
        for _ in 0..20 {
            let r = route_from(&snap, &src, "10.96.0.1:80");
            assert_eq!(hbone(&r).2, "near", "{r:?}");
        }
        // Local endpoint unhealthy: fail over to the remote network.
        let mut sick = near;
        sick.status = HealthStatus::Unhealthy;
        let snap = world().with(sick).build();
        assert_eq!(double(&route_from(&snap, &src, "10.96.0.1:80")).2, "far");
    }
}
