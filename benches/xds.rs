//! xDS state at scale, through the client path (decode the response → validate and translate
//! every resource → publish one snapshot): a mesh of W workloads and W/5 services (each
//! service backed by 5 workloads; 100 nodes, 50 namespaces), then a 100-workload delta on top
//! of it, then the data-path lookups on that state; last, a first push of W/5 workloads that
//! are all endpoints of one service.
//!
//! Run: `cargo bench --bench xds` (release build): 50 000 + 10 000, then 200 000 + 40 000.
//! `cargo bench --bench xds -- 50000` runs one size. Memory is counted by this binary's
//! allocator (bytes live in the heap), so figures are exact and repeatable; peak RSS
//! (`VmHWM`, reset through `/proc/self/clear_refs`) is printed beside them.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use ztun::control::xds::proto::{DeltaDiscoveryResponse, Resource};
use ztun::control::xds::{Applier, XdsMetrics, ADDRESS_TYPE};
use ztun::controlplane::encode;
use ztun::state::model::{
    HealthStatus, Locality, NetworkAddress, NetworkMode, Service, TunnelProtocol, VecMap, Workload,
};
use ztun::sys::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PER_SERVICE: u32 = 5;
const NODES: u32 = 100;
const NAMESPACES: u32 = 50;
const UPDATE: u32 = 100;
const UPDATES: u32 = 20;
const LOOKUPS: u32 = 1_000_000;

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![50_000, 200_000]
    } else {
        sizes
    };
    for workloads in sizes {
        run(workloads);
    }
}

fn run(workloads: u32) {
    let services = workloads / PER_SERVICE;
    let full = response(
        (0..workloads).map(|i| address(&workload(i, 0))),
        (0..services).map(|i| address_service(&service(i))),
        "1",
    )
    .encode_to_vec();
    println!(
        "\nxds bench: {workloads} workloads + {services} services ({NODES} nodes, {NAMESPACES} namespaces), response {:.1} MiB encoded",
        full.len() as f64 / (1 << 20) as f64
    );

    // As ztun keeps it: node-0's workloads listed apart.
    let (writer, reader) = ztun::state::new_for_node(Some("node-0"));
    let mut applier = Applier::new(writer, Arc::new(XdsMetrics::default()));

    // The state of the world in one response, as a first connection receives it.
    let base = CountingAlloc::live();
    CountingAlloc::reset_peak();
    reset_peak_rss();
    let started = Instant::now();
    let decoded = DeltaDiscoveryResponse::decode(full.as_slice()).expect("valid response");
    let applied = applier.apply(decoded);
    let took = started.elapsed();
    assert!(applied.is_ack(), "{:?}", applied.nack_message());
    let peak = CountingAlloc::peak() - base;
    let encoded = full.len();
    drop(full);
    let state = CountingAlloc::live() - base;
    println!(
        "apply full:   {:>8.1} ms  ({:.2} µs/resource); state {:.1} MiB ({} B/workload incl. its share of services); peak while applying {:.1} MiB (incl. the {:.1} MiB response); VmHWM {} MiB",
        ms(took),
        took.as_secs_f64() * 1e6 / f64::from(workloads + services),
        mib(state),
        state / workloads as usize,
        mib(peak),
        mib(encoded),
        status_kib("VmHWM") / 1024,
    );

    // Incremental pushes: 100 workloads change (e.g. a rollout), one response each.
    let mut times = Vec::new();
    let mut peak_ratio: f64 = 0.0;
    for u in 0..UPDATES {
        let update = response(
            (0..UPDATE).map(|i| address(&workload(i * (workloads / UPDATE) + u, u + 1))),
            std::iter::empty(),
            "2",
        )
        .encode_to_vec();
        let steady = CountingAlloc::live();
        CountingAlloc::reset_peak();
        let started = Instant::now();
        let applied = applier.apply(DeltaDiscoveryResponse::decode(update.as_slice()).unwrap());
        times.push(started.elapsed());
        assert!(applied.is_ack());
        assert_eq!(applied.updated, UPDATE as usize);
        let ratio = (CountingAlloc::peak() - base) as f64 / (steady - base) as f64;
        peak_ratio = peak_ratio.max(ratio);
    }
    times.sort();
    println!(
        "apply delta:  {:>8.3} ms median, {:.3} ms max of {UPDATES} ({UPDATE} workloads on top of {} resources); peak heap while applying {:.3}x steady",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        workloads + services,
        peak_ratio,
    );

    // Data path: lookups a connection does on the snapshot.
    let snap = reader.load_full();
    assert_eq!(snap.workloads().count(), workloads as usize);
    let started = Instant::now();
    let mut found = 0u32;
    for i in 0..LOOKUPS {
        found +=
            u32::from(black_box(snap.workload_by_ip("", workload_ip(i % workloads))).is_some());
    }
    let per_ip = started.elapsed();
    assert_eq!(found, LOOKUPS);
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..LOOKUPS {
        found += black_box(snap.services_by_vip("", service_vip(i % services))).len();
    }
    let per_vip = started.elapsed();
    assert_eq!(found, LOOKUPS as usize);
    let keys: Vec<String> = (0..services).map(service_key).collect();
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..LOOKUPS {
        found += black_box(snap.endpoints(&keys[(i % services) as usize])).len();
    }
    let per_endpoints = started.elapsed();
    assert_eq!(found, PER_SERVICE as usize * LOOKUPS as usize);
    println!(
        "lookups:      workload_by_ip {:.0} ns, services_by_vip {:.0} ns, endpoints {:.0} ns",
        ns_per(per_ip),
        ns_per(per_vip),
        ns_per(per_endpoints)
    );
    // What a connection to an address that is no exact VIP checks for a CIDR VIP covering
    // it: the services with CIDR VIPs, listed apart, against a pass over every service.
    let started = Instant::now();
    let mut candidates = 0usize;
    for _ in 0..LOOKUPS {
        candidates += black_box(snap.cidr_services()).len();
    }
    let per_listed = started.elapsed();
    let started = Instant::now();
    let mut scanned = 0usize;
    for _ in 0..LOOKUPS / 100 {
        scanned += black_box(&snap)
            .services()
            .filter(|s| !s.cidr_vips.is_empty())
            .count();
    }
    let per_pass = started.elapsed() * 100;
    assert_eq!(candidates, scanned * 100);
    println!(
        "CIDR VIP candidates for a pod address: from the list {:.0} ns; from a pass over the {services} services {:.0} ns",
        ns_per(per_listed),
        ns_per(per_pass)
    );
    // What follows the node's workloads after every change (the certificate prefetch takes
    // each one's identity): from the node's own list, against a pass over the mesh.
    let started = Instant::now();
    let listed = snap
        .local_workloads()
        .iter()
        .filter_map(|w| black_box(w.identity()))
        .count();
    let per_list = started.elapsed();
    let started = Instant::now();
    let scanned = snap
        .workloads()
        .filter(|w| &*w.node == "node-0")
        .filter_map(|w| black_box(w.identity()))
        .count();
    let per_scan = started.elapsed();
    assert_eq!(listed, scanned);
    assert_eq!(listed, (workloads / NODES) as usize);
    println!(
        "node's workloads: {listed} identities from its list in {:.1} µs; from a pass over the mesh {:.1} µs",
        per_list.as_secs_f64() * 1e6,
        per_scan.as_secs_f64() * 1e6
    );
    drop(snap);
    drop((reader, applier));
    wide_service(workloads / 5);
}

/// One service with `n` endpoints (a large deployment), in a first push: each endpoint list
/// is built once, not copied for every endpoint added to it.
fn wide_service(n: u32) {
    let mut s = service(0);
    s.hostname = "wide.ns-0.svc.cluster.local".into();
    let key = s.key();
    let full = response(
        (0..n).map(|i| {
            let mut w = workload(i, 0);
            w.services = VecMap::from([(key.as_str().into(), BTreeMap::from([(80, 8080)]))]);
            address(&w)
        }),
        std::iter::once(address_service(&s)),
        "1",
    )
    .encode_to_vec();
    let (writer, reader) = ztun::state::new();
    let mut applier = Applier::new(writer, Arc::new(XdsMetrics::default()));
    let started = Instant::now();
    let applied = applier.apply(DeltaDiscoveryResponse::decode(full.as_slice()).unwrap());
    let took = started.elapsed();
    assert!(applied.is_ack());
    assert_eq!(reader.load().endpoints(&key).len(), n as usize);
    println!(
        "apply wide:   {:>8.1} ms  (one service of {n} endpoints, in a first push)",
        ms(took)
    );
}

/// Workload `i`: pod of service `i / 5`, in that service's namespace, on node `i % 100`.
fn workload(i: u32, generation: u32) -> Workload {
    let svc = i / PER_SERVICE;
    let ns = format!("ns-{}", svc % NAMESPACES);
    Workload {
        uid: format!("Kubernetes//Pod/{ns}/app-{svc}-{i}").into(),
        name: format!("app-{svc}-{i}").into(),
        namespace: ns.into(),
        workload_ips: vec![workload_ip(i)],
        hostname: "".into(),
        network: "".into(),
        protocol: TunnelProtocol::Hbone,
        trust_domain: "cluster.local".into(),
        service_account: format!("app-{svc}").into(),
        waypoint: None,
        network_gateway: None,
        node: format!("node-{}", i % NODES).into(),
        canonical_name: format!("app-{svc}").into(),
        canonical_revision: format!("v{generation}").into(),
        workload_type: "deployment".into(),
        workload_name: format!("app-{svc}").into(),
        native_tunnel: false,
        application_tunnel: None,
        services: VecMap::from([(service_key(svc).into(), BTreeMap::from([(80, 8080)]))]),
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
        name: format!("app-{i}").into(),
        namespace: format!("ns-{}", i % NAMESPACES).into(),
        hostname: hostname(i).into(),
        vips: vec![NetworkAddress {
            network: "".into(),
            address: service_vip(i),
        }],
        cidr_vips: Vec::new(),
        ports: BTreeMap::from([(80, 8080)]),
        subject_alt_names: Vec::new(),
        waypoint: None,
        weighted_waypoints: Vec::new(),
        load_balancer: None,
        ip_families: Default::default(),
        canonical: true,
        visibility: Default::default(),
    }
}

fn hostname(i: u32) -> String {
    format!("app-{i}.ns-{}.svc.cluster.local", i % NAMESPACES)
}

fn service_key(i: u32) -> String {
    format!("ns-{}/{}", i % NAMESPACES, hostname(i))
}

fn workload_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + 1))
}

fn service_vip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xac10_0000 + i + 1))
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
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn ns_per(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9 / f64::from(LOOKUPS)
}
