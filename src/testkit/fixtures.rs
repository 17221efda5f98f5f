//! Mesh model fixtures for unit tests: workloads and services built like sentences, e.g.
//! `workload("shop", "web").service_account("web-sa").ip([10, 0, 0, 1]).build()` or
//! `service("shop", "web").vip([10, 96, 0, 1]).ports(&[(80, 8080)]).build()`.
//!
//! Defaults: a healthy HBONE pod `ns/name` of cluster `Kubernetes` on node `n1`, uid
//! `Kubernetes//Pod/ns/name`, trust domain `cluster.local`, its name as service account,
//! canonical name and workload name; a public service `name.ns.svc.cluster.local` without
//! VIPs or ports.

use std::net::IpAddr;

use crate::state::model::{
    HealthStatus, IpFamilies, Locality, NetworkAddress, NetworkMode, PortMap, Service, Strng,
    TunnelProtocol, Visibility, Workload,
};

/// A workload `namespace/name` with the defaults of this module.
pub fn workload(namespace: &str, name: &str) -> WorkloadBuilder {
    WorkloadBuilder(Workload {
        uid: format!("Kubernetes//Pod/{namespace}/{name}").into(),
        name: name.into(),
        namespace: namespace.into(),
        protocol: TunnelProtocol::Hbone,
        trust_domain: "cluster.local".into(),
        service_account: name.into(),
        node: "n1".into(),
        canonical_name: name.into(),
        workload_type: "pod".into(),
        workload_name: name.into(),
        status: HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: Locality::default(),
        network_mode: NetworkMode::Standard,
        capacity: 1,
        ..Workload::default()
    })
}

/// The workload of a pod `namespace/name` running as service account `sa` at `ip`.
pub fn pod(namespace: &str, name: &str, sa: &str, ip: impl Into<IpAddr>) -> Workload {
    workload(namespace, name).service_account(sa).ip(ip).build()
}

/// A service `name.namespace.svc.cluster.local` with the defaults of this module.
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        name: name.into(),
        namespace: namespace.into(),
        hostname: format!("{name}.{namespace}.svc.cluster.local").into(),
        vips: Vec::new(),
        cidr_vips: Vec::new(),
        ports: PortMap::new(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        weighted_waypoints: Vec::new(),
        load_balancer: None,
        ip_families: IpFamilies::Automatic,
        canonical: false,
        visibility: Visibility::Public,
    })
}

/// Builds a [`Workload`]; see [`workload`].
#[derive(Debug, Clone)]
pub struct WorkloadBuilder(Workload);

impl WorkloadBuilder {
    /// Its service account.
    pub fn service_account(mut self, sa: &str) -> Self {
        self.0.service_account = sa.into();
        self
    }

    /// One more address.
    pub fn ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.0.workload_ips.push(ip.into());
        self
    }

    /// Its uid.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.uid = uid.into();
        self
    }

    /// Its canonical revision (`service.istio.io/canonical-revision`).
    pub fn canonical_revision(mut self, revision: &str) -> Self {
        self.0.canonical_revision = revision.into();
        self
    }

    /// An endpoint of the service `key` (`namespace/hostname`) with the port map `ports`
    /// (service port → target port).
    pub fn member_of(mut self, key: &str, ports: &[(u16, u16)]) -> Self {
        let map: PortMap = ports.iter().copied().collect();
        self.0.services.insert(Strng::from(key), map);
        self
    }

    /// The workload.
    pub fn build(self) -> Workload {
        self.0
    }
}

/// Builds a [`Service`]; see [`service`].
#[derive(Debug, Clone)]
pub struct ServiceBuilder(Service);

impl ServiceBuilder {
    /// Its hostname instead of `name.namespace.svc.cluster.local`.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.0.hostname = hostname.into();
        self
    }

    /// One more VIP on the default network.
    pub fn vip(self, ip: impl Into<IpAddr>) -> Self {
        self.vip_on("", ip)
    }

    /// One more VIP on `network`.
    pub fn vip_on(mut self, network: &str, ip: impl Into<IpAddr>) -> Self {
        self.0.vips.push(NetworkAddress {
            network: network.into(),
            address: ip.into(),
        });
        self
    }

    /// Its ports (service port → target port).
    pub fn ports(mut self, ports: &[(u16, u16)]) -> Self {
        self.0.ports = ports.iter().copied().collect();
        self
    }

    /// The service.
    pub fn build(self) -> Service {
        self.0
    }
}
