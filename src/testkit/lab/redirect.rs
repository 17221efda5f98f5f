//! The traffic redirection a CNI agent installs inside a captured pod's network namespace
//! (`spec/compat.md` §2.5), so that ztun's per-pod listeners receive the pod's traffic:
//!
//! - outbound TCP from the app is sent to port 15001; DNS (port 53) to 15053;
//! - inbound TCP to any port but 15008 is sent to port 15006 (HBONE on 15008 is served
//!   directly by ztun's listener in the pod);
//! - ztun's own sockets carry packet mark 0x539 (1337) and are never redirected; the
//!   connections they create are tagged with connmark 0x111, and packets of those connections
//!   carry mark 0x111, which policy routing (`fwmark 0x111 → table 100: local 0.0.0.0/0`)
//!   delivers locally. That is what lets the app's replies to a spoofed (transparent) client
//!   address come back to ztun instead of leaving the pod.
//!
//! Two flavours exist in istio-cni releases and both are supported: nat `REDIRECT` for
//! inbound (ztun reads SO_ORIGINAL_DST), and mangle `TPROXY` (the listener's local address is
//! the original destination).
//!
//! IPv6 gets the same rules through `ip6tables-restore`, as istio-cni installs them with
//! `ENABLE_INBOUND_IPV6` (`cni/pkg/iptables/iptables.go` `AppendInpodRules`, golden files
//! `default_ipv6.golden` / `tproxy_ipv6.golden`): `::1/128` where IPv4 has `127.0.0.1/32`,
//! the IPv6 probe SNAT address, and the policy routing `local ::/0 dev lo table 100` with an
//! IPv6 `fwmark 0x111/0xfff` rule. The IPv4 rules are always installed, as istio-cni does.

use super::netns::Netns;

/// Packet mark ztun sets (SO_MARK) on every socket it opens in a pod: 1337.
pub const ZTUN_MARK: &str = "0x539/0xfff";
/// Mark/connmark of connections that must be routed back to ztun's transparent sockets.
pub const ROUTE_MARK: &str = "0x111/0xfff";
/// Policy-routing table that delivers every destination locally.
pub const ROUTE_TABLE: &str = "100";
/// Source address kubelet health probes are SNATed to; never redirected.
pub const PROBE_ADDR: &str = "169.254.7.127/32";
/// IPv6 source address kubelet health probes are SNATed to (istio-cni
/// `HOST_PROBE_V6_SNAT_ADDRESS` default); never redirected.
pub const PROBE_ADDR_V6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128";

/// How inbound traffic is captured in a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// nat `REDIRECT` to 15006 (the original destination comes from SO_ORIGINAL_DST).
    #[default]
    Redirect,
    /// mangle `TPROXY` to 15006/15008 with mark 0x111 (the original destination is the
    /// accepted socket's local address; listeners need IP_TRANSPARENT).
    Tproxy,
}

/// One IP family's rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// `iptables-restore` rules and IPv4 policy routing.
    V4,
    /// `ip6tables-restore` rules and IPv6 policy routing.
    V6,
}

impl IpFamily {
    /// The loopback prefix that is never captured.
    fn loopback(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.1/32",
            IpFamily::V6 => "::1/128",
        }
    }

    /// The probe SNAT address that is never captured.
    fn probe(self) -> &'static str {
        match self {
            IpFamily::V4 => PROBE_ADDR,
            IpFamily::V6 => PROBE_ADDR_V6,
        }
    }

    /// The wildcard TPROXY listener address.
    fn any(self) -> &'static str {
        match self {
            IpFamily::V4 => "0.0.0.0",
            IpFamily::V6 => "::",
        }
    }

    /// The `*-restore` program for this family.
    fn restore(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        }
    }

    /// `ip` option selecting this family.
    fn ip_flag(self) -> &'static str {
        match self {
            IpFamily::V4 => "-4",
            IpFamily::V6 => "-6",
        }
    }

    /// The "every destination" prefix.
    fn default_prefix(self) -> &'static str {
        match self {
            IpFamily::V4 => "0.0.0.0/0",
            IpFamily::V6 => "::/0",
        }
    }
}

/// The `iptables-restore` (or for [`IpFamily::V6`], `ip6tables-restore`) input that sets up
/// capture in a pod for `mode`.
pub fn rules(mode: CaptureMode, family: IpFamily) -> String {
    let (lo, probe, any) = (family.loopback(), family.probe(), family.any());
    let mut mangle_prert = vec![
        // ztun's own packets (inbound to the app, or replies) tag their connection.
        format!("-m mark --mark {ZTUN_MARK} -j CONNMARK --set-xmark {ROUTE_MARK}"),
    ];
    let mut nat_prert = vec![format!("-s {probe} -p tcp -j ACCEPT")];
    match mode {
        CaptureMode::Redirect => nat_prert.push(format!(
            "! -d {lo} -p tcp ! --dport 15008 -m mark ! --mark {ZTUN_MARK} \
             -j REDIRECT --to-ports 15006"
        )),
        CaptureMode::Tproxy => mangle_prert.extend([
            format!("-s {probe} -p tcp -j ACCEPT"),
            // The pod talking to itself over loopback is not captured.
            format!("! -d {lo} -i lo -p tcp -j ACCEPT"),
            format!(
                "-p tcp --dport 15008 -m mark ! --mark {ZTUN_MARK} \
                 -j TPROXY --on-port 15008 --on-ip {any} --tproxy-mark {ROUTE_MARK}"
            ),
            // Packets of connections already handed to a listener need no new decision.
            "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
            format!(
                "! -d {lo} -p tcp -m mark ! --mark {ZTUN_MARK} \
                 -j TPROXY --on-port 15006 --on-ip {any} --tproxy-mark {ROUTE_MARK}"
            ),
        ]),
    }
    let mangle_output = vec![format!(
        "-m connmark --mark {ROUTE_MARK} -j CONNMARK --restore-mark \
         --nfmask 0xffffffff --ctmask 0xffffffff"
    )];
    let nat_output = vec![
        format!("-d {probe} -p tcp -j ACCEPT"),
        format!(
            "! -o lo -p udp --dport 53 -m mark ! --mark {ZTUN_MARK} -j REDIRECT --to-ports 15053"
        ),
        format!(
            "! -d {lo} -p tcp --dport 53 -m mark ! --mark {ZTUN_MARK} \
             -j REDIRECT --to-ports 15053"
        ),
        format!("-p tcp -m mark --mark {ROUTE_MARK} -j ACCEPT"),
        // The pod calling its own (non-loopback) address goes out via lo: not captured.
        format!("! -d {lo} -o lo -j ACCEPT"),
        format!("! -d {lo} -p tcp -m mark ! --mark {ZTUN_MARK} -j REDIRECT --to-ports 15001"),
    ];

    let mut out = String::new();
    table(&mut out, "mangle", &mangle_prert, &mangle_output);
    table(&mut out, "nat", &nat_prert, &nat_output);
    out
}

/// Installs the capture rules for `mode` and `family` in `netns` (one atomic
/// `iptables-restore` or `ip6tables-restore`) and the policy routing that goes with them.
pub fn apply(netns: &Netns, mode: CaptureMode, family: IpFamily) -> anyhow::Result<()> {
    let input = rules(mode, family);
    netns.exec(family.restore(), &[], Some(input.as_bytes()))?;
    netns.ip_command(&[
        family.ip_flag(),
        "route",
        "add",
        "local",
        family.default_prefix(),
        "dev",
        "lo",
        "table",
        ROUTE_TABLE,
    ])?;
    netns.ip_command(&[
        family.ip_flag(),
        "rule",
        "add",
        "fwmark",
        ROUTE_MARK,
        "pref",
        "32764",
        "lookup",
        ROUTE_TABLE,
    ])?;
    Ok(())
}

/// Appends one table with ISTIO_PRERT / ISTIO_OUTPUT chains hooked from PREROUTING / OUTPUT.
fn table(out: &mut String, name: &str, prerouting: &[String], output: &[String]) {
    out.push_str(&format!(
        "*{name}\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n"
    ));
    out.push_str("-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n");
    for rule in prerouting {
        out.push_str(&format!("-A ISTIO_PRERT {rule}\n"));
    }
    for rule in output {
        out.push_str(&format!("-A ISTIO_OUTPUT {rule}\n"));
    }
    out.push_str("COMMIT\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_mode_sends_inbound_to_15006_via_nat() {
        let r = rules(CaptureMode::Redirect, IpFamily::V4);
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
        assert!(!r.contains("TPROXY"));
    }

    #[test]
    fn tproxy_mode_sends_inbound_via_mangle_tproxy() {
        let r = rules(CaptureMode::Tproxy, IpFamily::V4);
        assert!(r.contains("TPROXY --on-port 15006"));
        assert!(r.contains("TPROXY --on-port 15008"));
        assert!(!r.contains("--to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
    }

    /// The IPv6 rules are the IPv4 ones with IPv6 addresses, as in istio-cni's
    /// `default_ipv6.golden`: nothing IPv4-specific is left, HBONE (15008) is not redirected.
    #[test]
    fn v6_rules_mirror_v4_with_v6_addresses() {
        for mode in [CaptureMode::Redirect, CaptureMode::Tproxy] {
            let v4 = rules(mode, IpFamily::V4);
            let v6 = rules(mode, IpFamily::V6);
            assert!(
                !v6.contains("127.0.0.1") && !v6.contains("169.254") && !v6.contains("0.0.0.0")
            );
            let mapped = v4
                .replace("127.0.0.1/32", "::1/128")
                .replace(PROBE_ADDR, PROBE_ADDR_V6)
                .replace("--on-ip 0.0.0.0", "--on-ip ::");
            assert_eq!(v6, mapped, "{mode:?}");
        }
        let r = rules(CaptureMode::Redirect, IpFamily::V6);
        assert!(r.contains("! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"));
        assert!(r.contains(
            "! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"
        ));
    }
}
