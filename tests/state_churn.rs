//! Churn: thousands of workloads and services added, updated and removed through the xDS
//! client path (encoded delta responses → decode → validate → publish) leave the state exactly
//! as it was, and the heap returns to its baseline. Memory is counted by this binary's
//! allocator (bytes live in the heap), so the check is exact and does not depend on timing
//! or on how the system allocator caches freed pages.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use prost::Message;
use ztun::control::xds::proto::{DeltaDiscoveryResponse, Resource};
use ztun::control::xds::{Applier, XdsMetrics, ADDRESS_TYPE};
use ztun::controlplane::encode;
use ztun::state::model::{NetworkAddress, Service, TunnelProtocol, VecMap, Workload};
use ztun::sys::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const BASE_WORKLOADS: u32 = 2_000;
const CHURN_WORKLOADS: u32 = 1_000;
const ROUNDS: u32 = 8;

fn workload(i: u32, ns: &str, revision: &str) -> Workload {
    let svc = i / 5;
    Workload {
        uid: format!("Kubernetes//Pod/{ns}/pod-{i}").into(),
        name: format!("pod-{i}").into(),
        namespace: ns.into(),
        workload_ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + 1))],
        protocol: TunnelProtocol::Hbone,
        trust_domain: "cluster.local".into(),
        service_account: format!("sa-{svc}").into(),
        node: format!("node-{}", i % 10).into(),
        canonical_name: format!("app-{svc}").into(),
        canonical_revision: revision.into(),
        workload_name: format!("app-{svc}").into(),
        cluster_id: "Kubernetes".into(),
        services: VecMap::from([(
            format!("{ns}/svc-{svc}.{ns}.svc.cluster.local").into(),
            BTreeMap::from([(80, 8080)]),
        )]),
        capacity: 1,
        ..Default::default()
    }
}

fn service(i: u32, ns: &str) -> Service {
    Service {
        name: format!("svc-{i}").into(),
        namespace: ns.into(),
        hostname: format!("svc-{i}.{ns}.svc.cluster.local").into(),
        vips: vec![NetworkAddress {
            network: "".into(),
            address: IpAddr::V4(Ipv4Addr::from(0xac10_0000 + i + 1)),
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

fn resource(name: String, value: Vec<u8>) -> Resource {
    Resource {
        version: format!("{:x}", value.len()),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value,
        }),
        name,
        aliases: Vec::new(),
        ttl: None,
    }
}

fn push(applier: &mut Applier, resources: Vec<Resource>, removed: Vec<String>) {
    let (n_added, n_removed) = (resources.len(), removed.len());
    let bytes = DeltaDiscoveryResponse {
        resources,
        removed_resources: removed,
        type_url: ADDRESS_TYPE.into(),
        nonce: "n".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let applied = applier.apply(DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap());
    assert!(applied.is_ack(), "{:?}", applied.nack_message());
    assert_eq!((applied.updated, applied.removed), (n_added, n_removed));
}

fn workloads(range: std::ops::Range<u32>, ns: &str, revision: &str) -> Vec<Resource> {
    range
        .map(|i| {
            let w = workload(i, ns, revision);
            resource(w.uid.to_string(), encode::workload(&w).encode_to_vec())
        })
        .collect()
}

fn services(range: std::ops::Range<u32>, ns: &str) -> Vec<Resource> {
    range
        .map(|i| {
            let s = service(i, ns);
            resource(s.key(), encode::service(&s).encode_to_vec())
        })
        .collect()
}

#[test]
fn state_churn_over_xds_returns_the_heap_to_its_baseline() {
    let (writer, reader) = ztun::state::new();
    let mut applier = Applier::new(writer, Arc::new(XdsMetrics::default()));
    let base = BASE_WORKLOADS;
    let extra = base..base + CHURN_WORKLOADS;
    push(
        &mut applier,
        workloads(0..base, "base", "v1")
            .into_iter()
            .chain(services(0..base / 5, "base"))
            .collect(),
        Vec::new(),
    );
    ztun::state::purge_interned();
    let sizes = reader.load().index_sizes();
    let baseline = CountingAlloc::live();

    let mut after_round = Vec::new();
    for round in 0..ROUNDS {
        // Strings new to this round (a namespace, its service keys, a revision), so that the
        // shared strings must be released too.
        let ns = format!("churn-{round}");
        let revision = format!("r{round}");
        // Add 1 000 workloads and their 200 services, roll 500 existing workloads to a new
        // revision, one response each.
        push(
            &mut applier,
            services(extra.start / 5..extra.end / 5, &ns),
            Vec::new(),
        );
        push(
            &mut applier,
            workloads(extra.clone(), &ns, &revision),
            Vec::new(),
        );
        push(
            &mut applier,
            workloads(0..base / 4, "base", &revision),
            Vec::new(),
        );
        {
            let snap = reader.load();
            assert_eq!(snap.workload_count(), (base + CHURN_WORKLOADS) as usize);
            let key = format!("{ns}/svc-{}.{ns}.svc.cluster.local", extra.start / 5);
            assert_eq!(snap.endpoints(&key).len(), 5);
        }
        // Then remove all of it and roll the 500 back: the mesh is the baseline again.
        let removed: Vec<String> = extra
            .clone()
            .map(|i| workload(i, &ns, "").uid.to_string())
            .chain((extra.start / 5..extra.end / 5).map(|i| service(i, &ns).key()))
            .collect();
        push(&mut applier, Vec::new(), removed);
        push(
            &mut applier,
            workloads(0..base / 4, "base", "v1"),
            Vec::new(),
        );
        assert_eq!(reader.load().index_sizes(), sizes, "round {round}");
        ztun::state::purge_interned();
        after_round.push(CountingAlloc::live());
        eprintln!("interned {}", ztun::state::interned_strings());
    }
    let last = *after_round.last().unwrap();
    eprintln!("heap: baseline {baseline} B, after each round {after_round:?}");
    // Back to the baseline, up to the hash-table slack of the xDS cache; and no growth from
    // round to round (one workload leaked per round would add more than 4 KiB by the end).
    assert!(
        last <= baseline + baseline / 50,
        "heap after churn {last} B, baseline {baseline} B"
    );
    let (low, high) = (
        after_round.iter().min().unwrap(),
        after_round.iter().max().unwrap(),
    );
    assert!(
        high - low < 4096,
        "heap grows from round to round: {after_round:?}"
    );
}
