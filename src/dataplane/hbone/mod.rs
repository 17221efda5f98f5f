//! HBONE: TCP tunnelled in HTTP/2 CONNECT streams over mutual TLS 1.3.
//!
//! `client` dials and multiplexes (with `pool`), `dataplane::inbound` terminates, `stream` moves bytes
//! between a TCP socket and an HTTP/2 stream with flow control.

pub mod buffered;
pub mod client;
pub mod fair;
pub mod pool;
pub mod stream;
pub mod tunnel;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ProxyConfig;

/// What TLS runs on: the TCP socket, metered (see [`fair`]), behind a read buffer. rustls
/// pulls ciphertext 4 KiB at a time; the buffer turns that into one syscall per 32 KiB (about
/// two full TLS records) during bulk transfer, at the cost of 32 KiB per HBONE connection
/// while bytes wait in it and one copy of the ciphertext.
/// No buffer (twice the reads), 16 KiB and 64 KiB (more of rustls's own copying) each lost
/// or tied against 32 KiB: docs/performance.md, "Fewer copies per byte". The buffer exists
/// only while it holds bytes ([`buffered::Buffered`]): a pooled connection whose streams are
/// idle holds none.
pub type Transport = buffered::Buffered<fair::Metered<tokio::net::TcpStream>>;

/// Read-buffer size of [`Transport`].
pub const TRANSPORT_READ_BUFFER: usize = 32 * 1024;

/// Wraps an HBONE socket for TLS.
pub fn transport(tcp: tokio::net::TcpStream) -> Transport {
    buffered::Buffered::new(TRANSPORT_READ_BUFFER, fair::Metered(tcp))
}

/// HTTP/2 settings shared by both sides, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct H2Settings {
    /// Initial stream window (bytes).
    pub stream_window: u32,
    /// Initial connection window (bytes).
    pub connection_window: u32,
    /// Max frame size (bytes).
    pub frame_size: u32,
    /// PING interval; a PING unanswered for twice this long closes the connection.
    pub ping_interval: Duration,
}

impl H2Settings {
    /// Settings from the proxy configuration.
    pub fn from_config(cfg: &ProxyConfig) -> Self {
        H2Settings {
            stream_window: cfg.http2_stream_window,
            connection_window: cfg.http2_connection_window,
            frame_size: cfg.http2_frame_size,
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// Why a CONNECT `:authority` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Not `ip:port` / `[ipv6]:port` (hostnames, zone ids, junk).
    #[error("authority is not ip:port")]
    Malformed,
    /// Port 0.
    #[error("authority port is 0")]
    PortZero,
}

/// Parses a CONNECT authority of the form `ip:port` or `[ipv6]:port`. Strict: no zone ids,
/// no whitespace, no leading zeros tricks beyond what `std` rejects, port 1..=65535.
pub fn parse_authority(s: &str) -> Result<SocketAddr, AuthorityError> {
    if s.len() > 64 || s.contains('%') {
        return Err(AuthorityError::Malformed);
    }
    let addr: SocketAddr = s.parse().map_err(|_| AuthorityError::Malformed)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.flowinfo() != 0 || v6.scope_id() != 0 {
            return Err(AuthorityError::Malformed);
        }
    }
    if addr.port() == 0 {
        return Err(AuthorityError::PortZero);
    }
    Ok(SocketAddr::new(
        crate::state::canonical_ip(addr.ip()),
        addr.port(),
    ))
}

/// Sends a PING every `interval` and resolves when one goes unanswered for twice the
/// interval (the peer is gone) or the connection is closed. The caller then drops the
/// connection.
pub async fn keepalive(ping_pong: Option<h2::PingPong>, interval: Duration) {
    let Some(mut pp) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(interval * 2, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => {
                tracing::debug!("hbone peer did not answer PING, closing the connection");
                return;
            }
        }
    }
}

/// The `baggage` header describing a workload (W3C baggage, only non-empty items):
/// `k8s.cluster.name`, `k8s.namespace.name`, `k8s.<workload type>.name`, `service.name`,
/// `service.version`, `cloud.region`, `cloud.availability_zone`. Peers may use it for
/// telemetry only; ztun never derives identity or routing from it.
pub fn baggage(w: &crate::state::model::Workload) -> String {
    let kind = if w.workload_type.is_empty() {
        "deployment"
    } else {
        &w.workload_type
    };
    let kind_key = format!("k8s.{kind}.name");
    let items = [
        ("k8s.cluster.name", &*w.cluster_id),
        ("k8s.namespace.name", &*w.namespace),
        (kind_key.as_str(), &*w.workload_name),
        ("service.name", &*w.canonical_name),
        ("service.version", &*w.canonical_revision),
        ("cloud.region", &*w.locality.region),
        ("cloud.availability_zone", &*w.locality.zone),
    ];
    let mut out = String::new();
    for (k, v) in items {
        // Values go out as given only when they cannot break the header's syntax.
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'=' | b'\\' | b'"'))
        {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The peer a `baggage` header (as [`baggage`] writes it) describes, for telemetry only:
/// a source the state cannot name by its address (it came through a network gateway) is
/// labelled from the metadata it sent, as ztunnel does. Identity parts come from the proven
/// `identity`, never from the header; `None` when the header names no workload.
pub fn workload_from_baggage(
    identity: &crate::identity::Identity,
    header: &str,
) -> Option<crate::state::model::Workload> {
    use crate::state::model::{TunnelProtocol, Workload};
    let mut w = Workload {
        namespace: identity.namespace().into(),
        protocol: TunnelProtocol::Hbone,
        trust_domain: identity.trust_domain().into(),
        service_account: identity.service_account().into(),
        capacity: 1,
        ..Default::default()
    };
    for item in header.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if v.is_empty() || v.len() > 253 {
            continue;
        }
        match k {
            // Not read: the namespace is the proven identity's.
            "k8s.namespace.name" => {}
            "k8s.cluster.name" => w.cluster_id = v.into(),
            "service.name" => w.canonical_name = v.into(),
            "service.version" => w.canonical_revision = v.into(),
            "cloud.region" => w.locality.region = v.into(),
            "cloud.availability_zone" => w.locality.zone = v.into(),
            _ => {
                if let Some(kind) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name")) {
                    if !kind.contains('.') {
                        w.workload_type = kind.into();
                        w.workload_name = v.into();
                        w.name = v.into();
                    }
                }
            }
        }
    }
    (!w.workload_name.is_empty()).then_some(w)
}

/// A fresh W3C `traceparent` value with random trace and parent ids, sampled flag off.
pub fn traceparent() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let parent: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{parent:016x}-00")
}

/// The `forwarded` header value naming the original client.
pub fn forwarded(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let ok = [
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("[fd00::1]:8080", "[fd00::1]:8080"),
            ("[::ffff:10.0.0.1]:80", "10.0.0.1:80"),
            ("1.2.3.4:65535", "1.2.3.4:65535"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_authority(input).unwrap().to_string(), want, "{input}");
        }
        let bad = [
            ("", AuthorityError::Malformed),
            ("10.0.0.1", AuthorityError::Malformed),
            ("10.0.0.1:", AuthorityError::Malformed),
            ("10.0.0.1:0", AuthorityError::PortZero),
            ("10.0.0.1:65536", AuthorityError::Malformed),
            ("fd00::1:80", AuthorityError::Malformed),
            ("[fe80::1%eth0]:80", AuthorityError::Malformed),
            ("example.com:80", AuthorityError::Malformed),
            (" 10.0.0.1:80", AuthorityError::Malformed),
            ("10.0.0.1:80\0", AuthorityError::Malformed),
            ("10.0.0.1:+80", AuthorityError::Malformed),
            ("ünïcode:80", AuthorityError::Malformed),
        ];
        for (input, want) in bad {
            assert_eq!(parse_authority(input).unwrap_err(), want, "{input:?}");
        }
        let long = format!("{}:80", "1".repeat(300));
        assert_eq!(
            parse_authority(&long).unwrap_err(),
            AuthorityError::Malformed
        );
    }

    #[test]
    fn baggage_lists_only_safe_non_empty_items() {
        // A workload as the local format yields it (test-only use of the parser).
        let yaml = "workloads: [{uid: u, name: web, namespace: default, workloadIps: [10.0.0.1]}]";
        let mut w = crate::control::local::parse(yaml)
            .unwrap()
            .workloads
            .remove(0);
        w.cluster_id = "Kubernetes".into();
        w.workload_name = "web".into();
        w.canonical_name = "web".into();
        w.canonical_revision = "v1".into();
        w.locality.region = "eu,evil=1".into();
        assert_eq!(
            baggage(&w),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=web,service.name=web,service.version=v1"
        );
    }

    #[test]
    fn traceparent_shape() {
        let t = traceparent();
        let parts: Vec<_> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
    }

    #[test]
    fn a_source_is_described_from_its_baggage_with_its_proven_identity() {
        let mut w = crate::testkit::fixtures::pod("ns1", "web-7f9", "web-sa", [10, 0, 0, 1]);
        w.workload_name = "web".into();
        w.workload_type = "deployment".into();
        w.canonical_name = "web".into();
        w.canonical_revision = "v2".into();
        w.locality.region = "eu".into();
        let id: crate::identity::Identity = "spiffe://td/ns/ns1/sa/web-sa".parse().unwrap();
        let d = workload_from_baggage(&id, &baggage(&w)).expect("described");
        assert_eq!(
            (
                &*d.workload_name,
                &*d.workload_type,
                &*d.namespace,
                &*d.canonical_revision
            ),
            ("web", "deployment", "ns1", "v2")
        );
        assert_eq!((&*d.cluster_id, &*d.locality.region), ("Kubernetes", "eu"));
        // The identity is the proven one, whatever the header says.
        assert_eq!(d.identity(), Some(id.clone()));
        assert!(workload_from_baggage(&id, "k8s.namespace.name=x").is_none());
        // The namespace is the proven one, whatever the header says.
        let other = workload_from_baggage(&id, "k8s.namespace.name=x,k8s.pod.name=p").unwrap();
        assert_eq!(&*other.namespace, "ns1");
        assert!(workload_from_baggage(&id, "garbage,,=,k8s.a.b.name=c").is_none());
    }
}
