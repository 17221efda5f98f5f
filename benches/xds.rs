//! xDS at scale: 10 000 workloads and 5 000 services through the client path (decode the
//! response → validate and translate every resource → publish one snapshot), an incremental
//! update on top of that state, and the data-path lookup cost with that state.
//!
//! Run: `cargo bench --bench xds` (release build). Prints time, peak RSS (`VmHWM`, reset
//! before each phase through `/proc/self/clear_refs`) and nanoseconds per lookup.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use ztun::control::xds::proto::{DeltaDiscoveryResponse, Resource};
use ztun::control::xds::{translate, Applier, XdsMetrics, ADDRESS_TYPE};
use ztun::controlplane::encode;
use ztun::state::model::{
    HealthStatus, Locality, NetworkAddress, NetworkMode, Service, TunnelProtocol, Workload,
};

const WORKLOADS: u32 = 10_000;
const SERVICES: u32 = 5_000;
const UPDATE: u32 = 100;
const LOOKUPS: u32 = 1_000_000;

fn main() {
    let rss_start = status_kib("VmRSS");
    let full = response(
        (0..WORKLOADS).map(|i| address(&workload(i, 0))),
        (0..SERVICES).map(|i| address_service(&service(i))),
        "1",
    );
    let bytes = full.encode_to_vec();
    drop(full);
    println!(
        "xds bench: {WORKLOADS} workloads + {SERVICES} services, response {:.1} MiB encoded",
        bytes.len() as f64 / (1 << 20) as f64
    );

    // Where the time goes: decoding the response, then each resource, then translating.
    let started = Instant::now();
    let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("valid response");
    let decode_outer = started.elapsed();
    let started = Instant::now();
    let mut translated = Vec::with_capacity(decoded.resources.len());
    for r in decoded.resources {
        let any = r.resource.expect("payload");
        let msg = ztun::control::xds::proto::istio::workload::Address::decode(any.value.as_slice())
            .expect("valid address");
        translated.push(translate::translate_address(msg).expect("valid"));
    }
    let decode_translate = started.elapsed();
    drop(translated);

    let (writer, reader) = ztun::state::new();
    let mut applier = Applier::new(writer, Arc::new(XdsMetrics::default()));

    // Full state of the world in one response, as a first connection receives it.
    reset_peak();
    let before = status_kib("VmRSS");
    let started = Instant::now();
    let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("valid response");
    let applied = applier.apply(decoded);
    let took = started.elapsed();
    assert!(applied.is_ack(), "{:?}", applied.nack_message());
    let peak = status_kib("VmHWM");
    let after = status_kib("VmRSS");
    drop(bytes);
    println!(
        "apply full:   {:>8.1} ms  ({:.2} µs/resource), peak RSS {} MiB, RSS {} -> {} MiB (process start {} MiB)",
        ms(took),
        took.as_secs_f64() * 1e6 / f64::from(WORKLOADS + SERVICES),
        peak / 1024,
        before / 1024,
        after / 1024,
        rss_start / 1024,
    );
    println!(
        "  of which:   {:>8.1} ms decoding the response, {:.1} ms decoding + validating resources, the rest building the snapshot",
        ms(decode_outer),
        ms(decode_translate)
    );

    // An incremental push: 100 workloads change (e.g. a rollout), one response.
    let update = response(
        (0..UPDATE).map(|i| address(&workload(i, 1))),
        std::iter::empty(),
        "2",
    )
    .encode_to_vec();
    reset_peak();
    let started = Instant::now();
    let applied = applier.apply(DeltaDiscoveryResponse::decode(update.as_slice()).unwrap());
    let took = started.elapsed();
    assert!(applied.is_ack());
    println!(
        "apply update: {:>8.1} ms  ({UPDATE} workloads on top of {} resources), peak RSS {} MiB",
        ms(took),
        WORKLOADS + SERVICES,
        status_kib("VmHWM") / 1024
    );

    // Data path: lookups a connection does on the snapshot.
    let snap = reader.load_full();
    assert_eq!(snap.workloads().count(), WORKLOADS as usize);
    let started = Instant::now();
    let mut found = 0u32;
    for i in 0..LOOKUPS {
        found += u32::from(
            snap.workload_by_ip("", workload_ip(i % WORKLOADS))
                .is_some(),
        );
    }
    let per_ip = started.elapsed();
    assert_eq!(found, LOOKUPS);
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..LOOKUPS {
        found += black_box(snap.services_by_vip("", service_vip(i % SERVICES))).len();
    }
    let per_vip = started.elapsed();
    assert_eq!(found, LOOKUPS as usize);
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..LOOKUPS {
        let key = format_key(i % SERVICES);
        found += black_box(snap.endpoints(&key)).len();
    }
    let per_endpoints = started.elapsed();
    assert_eq!(found, 2 * LOOKUPS as usize);
    println!(
        "lookups:      workload_by_ip {:.0} ns, services_by_vip {:.0} ns, endpoints {:.0} ns (incl. key format)",
        ns_per(per_ip),
        ns_per(per_vip),
        ns_per(per_endpoints)
    );
}

fn workload(i: u32, generation: u32) -> Workload {
    let svc = i % SERVICES;
    Workload {
        uid: format!("Kubernetes//Pod/ns-{}/pod-{i}", i % 50).into(),
        name: format!("pod-{i}").into(),
        namespace: format!("ns-{}", i % 50).into(),
        workload_ips: vec![workload_ip(i)],
        hostname: "".into(),
        network: "".into(),
        protocol: TunnelProtocol::Hbone,
        trust_domain: "cluster.local".into(),
        service_account: format!("sa-{}", i % 200).into(),
        waypoint: None,
        network_gateway: None,
        node: format!("node-{}", i % 100).into(),
        canonical_name: format!("app-{svc}").into(),
        canonical_revision: format!("v{generation}").into(),
        workload_type: "deployment".into(),
        workload_name: format!("app-{svc}").into(),
        native_tunnel: false,
        application_tunnel: None,
        services: BTreeMap::from([(format_key(svc).into(), BTreeMap::from([(80, 8080)]))]),
        authorization_policies: Vec::new(),
        status: HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: Locality::default(),
        network_mode: NetworkMode::Standard,
        capacity: 1,
    }
}

fn service(i: u32) -> Service {
    Service {
        name: format!("svc-{i}").into(),
        namespace: format!("ns-{}", i % 50).into(),
        hostname: hostname(i).into(),
        vips: vec![NetworkAddress {
            network: "".into(),
            address: service_vip(i),
        }],
        cidr_vips: Vec::new(),
        ports: BTreeMap::from([(80, 8080), (443, 8443)]),
        subject_alt_names: Vec::new(),
        waypoint: None,
        weighted_waypoints: Vec::new(),
        load_balancer: None,
        ip_families: Default::default(),
        canonical: false,
        visibility: Default::default(),
    }
}

fn hostname(i: u32) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local", i % 50)
}

fn format_key(i: u32) -> String {
    format!("ns-{}/{}", i % 50, hostname(i))
}

fn workload_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + 1))
}

fn service_vip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i + 1))
}

fn address(w: &Workload) -> Resource {
    resource(w.uid.to_string(), encode::workload(w).encode_to_vec())
}

fn address_service(s: &Service) -> Resource {
    resource(s.key(), encode::service(s).encode_to_vec())
}

fn resource(name: String, bytes: Vec<u8>) -> Resource {
    Resource {
        version: format!("{:x}", bytes.len()),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value: bytes,
        }),
        name,
        aliases: Vec::new(),
        ttl: None,
    }
}

fn response(
    workloads: impl Iterator<Item = Resource>,
    services: impl Iterator<Item = Resource>,
    nonce: &str,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: String::new(),
        resources: workloads.chain(services).collect(),
        type_url: ADDRESS_TYPE.into(),
        nonce: nonce.into(),
        removed_resources: Vec::new(),
    }
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ns_per(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9 / f64::from(LOOKUPS)
}
