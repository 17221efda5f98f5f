//! The lab's address plan per IP family, and the `ip` commands that set it up.
//!
//! k = node number from 1, j = pod number on its node from 1:
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | node link (`eth0`) | 172.30.0.k/24 | fd00:30::k/64 |
//! | node's pod CIDR | 10.0.k.0/24 | fd00:0:k::/64 |
//! | pod `eth0` | 10.0.k.(10+j)/32 | fd00:0:k::(10+j)/128 |
//! | gateway (node side of each pod veth) | 10.0.k.1/32 | fd00:0:k::1/128 |
//!
//! In IPv6 addresses k and 10+j are written with the same digits as in IPv4 (pod 10.0.1.11 is
//! fd00:0:1::11), so logs of both families read alike.
//!
//! (`ip -batch` takes no per-line `-6`: IPv6 routes are recognised by their addresses.)
//! IPv6 addresses are added with `nodad`: duplicate address detection would leave them
//! tentative (unusable) for a second or two after creation, which tests would have to wait out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::cluster::NODE_LINK;

/// Which IP families a lab's node links and pods have ([`LabBuilder::ip_families`]
/// (super::LabBuilder::ip_families)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpFamilies {
    /// IPv4 only (the default): what every lab had before IPv6 support.
    #[default]
    V4Only,
    /// Both families on every link and pod; IPv4 is each pod's primary address.
    Dual,
    /// IPv6 only: no IPv4 address on node links or pods (loopback keeps 127.0.0.1).
    V6Only,
}

impl IpFamilies {
    /// Whether node links and pods have IPv4 addresses.
    pub fn has_v4(self) -> bool {
        self != IpFamilies::V6Only
    }

    /// Whether node links and pods have IPv6 addresses (and pods IPv6 capture rules).
    pub fn has_v6(self) -> bool {
        self != IpFamilies::V4Only
    }
}

/// Sysctls for IPv6 in node namespaces: forwarding, and no duplicate address detection on
/// links created later (pod veths, the link-local addresses of every interface).
pub(super) const NODE_SYSCTLS_V6: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv6/conf/default/forwarding", "1"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
];
/// Sysctls for IPv6 in pod namespaces (no duplicate address detection).
pub(super) const POD_SYSCTLS_V6: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
];

/// Node `k`'s IPv4 address on the inter-node link.
pub(super) fn node_link_v4(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, k)
}

/// Node `k`'s IPv6 address on the inter-node link.
pub(super) fn node_link_v6(k: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, same_digits(k))
}

/// Node `k`'s IPv4 pod CIDR (network address, prefix length).
pub(super) fn pod_cidr_v4(k: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 0, k, 0), 24)
}

/// Node `k`'s IPv6 pod CIDR (network address, prefix length).
pub(super) fn pod_cidr_v6(k: u8) -> (Ipv6Addr, u8) {
    (Ipv6Addr::new(0xfd00, 0, same_digits(k), 0, 0, 0, 0, 0), 64)
}

/// The addresses of pod `host` (= 10 + j) on node `k`, and of its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PodAddrs {
    pub(super) v4: Option<Ipv4Addr>,
    pub(super) v6: Option<Ipv6Addr>,
}

impl PodAddrs {
    /// The pod's addresses in `families`.
    pub(super) fn new(families: IpFamilies, k: u8, host: u8) -> PodAddrs {
        PodAddrs {
            v4: families.has_v4().then(|| Ipv4Addr::new(10, 0, k, host)),
            v6: families
                .has_v6()
                .then(|| Ipv6Addr::new(0xfd00, 0, same_digits(k), 0, 0, 0, 0, same_digits(host))),
        }
    }

    /// The commands, run in the node's namespace, that give the node side of the pod's veth
    /// `veth` the gateway addresses and route the pod's addresses to it.
    pub(super) fn node_side(&self, k: u8, veth: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(ip) = self.v4 {
            lines.push(format!("addr add {}/32 dev {veth}", gateway_v4(k)));
            lines.push(format!("route add {ip}/32 dev {veth} scope link"));
        }
        if let Some(ip) = self.v6 {
            lines.push(format!("addr add {}/128 dev {veth} nodad", gateway_v6(k)));
            lines.push(format!("route add {ip}/128 dev {veth}"));
        }
        lines
    }

    /// The commands, run in the pod's namespace, that address its `eth0` (already up) and
    /// route everything via the node.
    pub(super) fn pod_side(&self, k: u8) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(ip) = self.v4 {
            let gateway = gateway_v4(k);
            lines.push(format!("addr add {ip}/32 dev eth0"));
            lines.push(format!("route add {gateway} dev eth0 scope link"));
            lines.push(format!("route add default via {gateway} dev eth0"));
        }
        if let Some(ip) = self.v6 {
            let gateway = gateway_v6(k);
            lines.push(format!("addr add {ip}/128 dev eth0 nodad"));
            lines.push(format!("route add {gateway}/128 dev eth0"));
            lines.push(format!("route add ::/0 via {gateway} dev eth0"));
        }
        lines
    }

    /// Every address, IPv4 first.
    pub(super) fn all(&self) -> Vec<IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
            .collect()
    }
}

/// The commands, run in node `k`'s namespace (of `count` nodes), that address its link and
/// route the other nodes' pod CIDRs over it.
pub(super) fn node_link_commands(families: IpFamilies, k: u8, peers: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let others = || peers.iter().copied().filter(move |&m| m != k);
    if families.has_v4() {
        lines.push(format!("addr add {}/24 dev {NODE_LINK}", node_link_v4(k)));
    }
    if families.has_v6() {
        lines.push(format!(
            "addr add {}/64 dev {NODE_LINK} nodad",
            node_link_v6(k)
        ));
    }
    lines.push(format!("link set {NODE_LINK} up"));
    if families.has_v4() {
        lines.extend(others().map(|m| {
            let (net, len) = pod_cidr_v4(m);
            format!(
                "route add {net}/{len} via {} dev {NODE_LINK}",
                node_link_v4(m)
            )
        }));
    }
    if families.has_v6() {
        lines.extend(others().map(|m| {
            let (net, len) = pod_cidr_v6(m);
            format!(
                "route add {net}/{len} via {} dev {NODE_LINK}",
                node_link_v6(m)
            )
        }));
    }
    lines
}

fn gateway_v4(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, k, 1)
}

fn gateway_v6(k: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, same_digits(k), 0, 0, 0, 0, 1)
}

/// The IPv6 group written with the decimal digits of `n` (11 → `0x11`).
fn same_digits(n: u8) -> u16 {
    n.to_string().chars().fold(0, |acc, d| {
        acc * 16 + d.to_digit(10).map_or(0, |d| d as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_only_plan_is_the_historical_one() {
        let pod = PodAddrs::new(IpFamilies::V4Only, 2, 11);
        assert_eq!(pod.all(), vec![IpAddr::from([10, 0, 2, 11])]);
        assert_eq!(
            node_link_commands(IpFamilies::V4Only, 1, &(1..=2).collect::<Vec<u8>>()),
            vec![
                "addr add 172.30.0.1/24 dev eth0",
                "link set eth0 up",
                "route add 10.0.2.0/24 via 172.30.0.2 dev eth0",
            ]
        );
        assert!(pod.pod_side(2).iter().all(|l| !l.contains("fd00")));
    }

    #[test]
    fn dual_plan_adds_v6_addresses_and_routes() {
        let pod = PodAddrs::new(IpFamilies::Dual, 2, 11);
        assert_eq!(
            pod.all(),
            vec![
                IpAddr::from([10, 0, 2, 11]),
                "fd00:0:2::11".parse::<IpAddr>().unwrap()
            ]
        );
        let node = node_link_commands(IpFamilies::Dual, 1, &(1..=2).collect::<Vec<u8>>());
        assert!(node.contains(&"addr add fd00:30::1/64 dev eth0 nodad".to_string()));
        assert!(node.contains(&"route add fd00:0:2::/64 via fd00:30::2 dev eth0".to_string()));
        let side = pod.pod_side(2);
        assert!(side.contains(&"route add ::/0 via fd00:0:2::1 dev eth0".to_string()));
    }

    #[test]
    fn v6_groups_reuse_the_v4_digits() {
        assert_eq!(node_link_v6(12), "fd00:30::12".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            pod_cidr_v6(250).0,
            "fd00:0:250::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            PodAddrs::new(IpFamilies::V6Only, 3, 254).v6,
            Some("fd00:0:3::254".parse().unwrap())
        );
    }

    #[test]
    fn v6_only_plan_has_no_v4() {
        let pod = PodAddrs::new(IpFamilies::V6Only, 1, 12);
        assert_eq!(pod.v4, None);
        assert_eq!(pod.v6, Some("fd00:0:1::12".parse().unwrap()));
        assert!(
            node_link_commands(IpFamilies::V6Only, 1, &(1..=3).collect::<Vec<u8>>())
                .iter()
                .all(|l| !l.contains("172.30.") && !l.contains("10.0."))
        );
    }
}
