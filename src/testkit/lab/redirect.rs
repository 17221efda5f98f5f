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

use super::netns::Netns;

/// Packet mark ztun sets (SO_MARK) on every socket it opens in a pod: 1337.
pub const ZTUN_MARK: &str = "0x539/0xfff";
/// Mark/connmark of connections that must be routed back to ztun's transparent sockets.
pub const ROUTE_MARK: &str = "0x111/0xfff";
/// Policy-routing table that delivers every destination locally.
pub const ROUTE_TABLE: &str = "100";
/// Source address kubelet health probes are SNATed to; never redirected.
pub const PROBE_ADDR: &str = "169.254.7.127/32";

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

/// The `iptables-restore` input that sets up capture in a pod for `mode`.
pub fn rules(mode: CaptureMode) -> String {
    let mut mangle_prert = vec![
        // ztun's own packets (inbound to the app, or replies) tag their connection.
        format!("-m mark --mark {ZTUN_MARK} -j CONNMARK --set-xmark {ROUTE_MARK}"),
    ];
    let mut nat_prert = vec![format!("-s {PROBE_ADDR} -p tcp -j ACCEPT")];
    match mode {
        CaptureMode::Redirect => nat_prert.push(format!(
            "! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark {ZTUN_MARK} \
             -j REDIRECT --to-ports 15006"
        )),
        CaptureMode::Tproxy => mangle_prert.extend([
            format!("-s {PROBE_ADDR} -p tcp -j ACCEPT"),
            // The pod talking to itself over loopback is not captured.
            "! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT".to_string(),
            format!(
                "-p tcp --dport 15008 -m mark ! --mark {ZTUN_MARK} \
                 -j TPROXY --on-port 15008 --on-ip 0.0.0.0 --tproxy-mark {ROUTE_MARK}"
            ),
            // Packets of connections already handed to a listener need no new decision.
            "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
            format!(
                "! -d 127.0.0.1/32 -p tcp -m mark ! --mark {ZTUN_MARK} \
                 -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark {ROUTE_MARK}"
            ),
        ]),
    }
    let mangle_output = vec![format!(
        "-m connmark --mark {ROUTE_MARK} -j CONNMARK --restore-mark \
         --nfmask 0xffffffff --ctmask 0xffffffff"
    )];
    let nat_output = vec![
        format!("-d {PROBE_ADDR} -p tcp -j ACCEPT"),
        format!(
            "! -o lo -p udp --dport 53 -m mark ! --mark {ZTUN_MARK} -j REDIRECT --to-ports 15053"
        ),
        format!(
            "! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark {ZTUN_MARK} \
             -j REDIRECT --to-ports 15053"
        ),
        format!("-p tcp -m mark --mark {ROUTE_MARK} -j ACCEPT"),
        // The pod calling its own (non-loopback) address goes out via lo: not captured.
        "! -d 127.0.0.1/32 -o lo -j ACCEPT".to_string(),
        format!(
            "! -d 127.0.0.1/32 -p tcp -m mark ! --mark {ZTUN_MARK} -j REDIRECT --to-ports 15001"
        ),
    ];

    let mut out = String::new();
    table(&mut out, "mangle", &mangle_prert, &mangle_output);
    table(&mut out, "nat", &nat_prert, &nat_output);
    out
}

/// Installs the capture rules for `mode` in `netns` (one atomic `iptables-restore`) and the
/// policy routing that goes with them.
pub fn apply(netns: &Netns, mode: CaptureMode) -> anyhow::Result<()> {
    netns.exec("iptables-restore", &[], Some(rules(mode).as_bytes()))?;
    netns.ip_batch(&[
        format!("route add local 0.0.0.0/0 dev lo table {ROUTE_TABLE}"),
        format!("rule add fwmark {ROUTE_MARK} pref 32764 lookup {ROUTE_TABLE}"),
    ])
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
        let r = rules(CaptureMode::Redirect);
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
        assert!(!r.contains("TPROXY"));
    }

    #[test]
    fn tproxy_mode_sends_inbound_via_mangle_tproxy() {
        let r = rules(CaptureMode::Tproxy);
        assert!(r.contains("TPROXY --on-port 15006"));
        assert!(r.contains("TPROXY --on-port 15008"));
        assert!(!r.contains("--to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
    }
}
