//! The fuzz target bodies: one `pub fn <name>(input: &[u8])` per parser of outside input. The
//! cargo-fuzz target `fuzz/fuzz_targets/<name>.rs` calls the function of the same name;
//! `tests/fuzz_regressions.rs` replays checked-in inputs through [`ALL`]. Seed corpora are
//! files under `fuzz/seeds/<name>/`.
//!
//! `forwarded` has no parser in ztun: the inbound side never reads it (nor `baggage`, except
//! as telemetry labels) — identity comes from the certificate, the source address from the
//! TCP connection. The `forwarded` target checks the header ztun writes for any client
//! address, and that a peer's `forwarded`/`baggage` headers never change the parsed request
//! head; `baggage` fuzzes the telemetry parser (`hbone::workload_from_baggage`) and the writer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rustls_pki_types::CertificateDer;

use crate::control::xds::proto::istio::{security as sec, workload as wl};
use crate::control::xds::translate::{translate_address, translate_policy, AddressResource};
use crate::control::zds;
use crate::dataplane::route::inbound::Authority;
use crate::identity::Identity;

/// A target body: one input through the code under test; must never panic.
pub type Body = fn(&[u8]);

/// Every target body by name, in a stable order. `fuzz/Cargo.toml` has one `[[bin]]` per
/// entry (plus the `*_structured` targets, which feed these same bodies).
pub const ALL: &[(&str, Body)] = &[
    ("xds_address", xds_address),
    ("xds_authorization", xds_authorization),
    ("zds", zds),
    ("local_yaml", local_yaml),
    ("authority", authority),
    ("request_head", request_head),
    ("h2_frames", h2_frames),
    ("cert_der", cert_der),
    ("pem", pem),
    ("dns", dns),
    ("crl", crl),
    ("baggage", baggage),
    ("forwarded", forwarded),
    ("proxy_protocol", proxy_protocol),
    ("mesh_config", mesh_config),
];

/// The body of the target called `name`.
pub fn find(name: &str) -> Option<Body> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

// --- xDS ------------------------------------------------------------------------------------

/// An xDS `istio.workload.Address` resource: decode + translate, as the xDS client does per
/// resource; a translated workload's IPs and identity must be well-formed when accepted. The
/// client decodes into the message of the resource before: from any message before it, that
/// gives what a fresh decode gives.
pub fn xds_address(input: &[u8]) {
    let fresh = wl::Address::decode(input);
    for mut before in decoded_before() {
        let reused = crate::control::xds::decode_reusing(&mut before, input);
        match &fresh {
            Ok(a) => {
                assert!(reused.is_ok(), "{reused:?}");
                assert_eq!(&before, a);
            }
            Err(_) => assert!(reused.is_err()),
        }
    }
    let Ok(a) = fresh else {
        return;
    };
    if let Ok(t) = translate_address(a) {
        if let AddressResource::Workload(w) = t.value {
            let _ = w.identity();
            for ip in &w.workload_ips {
                assert!(matches!(ip, IpAddr::V4(_) | IpAddr::V6(_)));
            }
        }
    }
}

/// Messages a resource may be decoded into: none, a workload and a service with every kind of
/// field set.
fn decoded_before() -> [wl::Address; 3] {
    use wl::address::Type;
    let workload = wl::Workload {
        uid: "cluster1//Pod/ns/before".into(),
        name: "before".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        service_account: "sa".into(),
        node: "node".into(),
        tunnel_protocol: 1,
        services: [("ns/svc.ns.svc".to_string(), wl::PortList::default())].into(),
        authorization_policies: vec!["ns/p".into()],
        locality: Some(wl::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        capacity: Some(3),
        ..Default::default()
    };
    let service = wl::Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc".into(),
        subject_alt_names: vec!["spiffe://td/ns/ns/sa/sa".into()],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            ..Default::default()
        }],
        ..Default::default()
    };
    [
        wl::Address::default(),
        wl::Address {
            r#type: Some(Type::Workload(workload)),
        },
        wl::Address {
            r#type: Some(Type::Service(service)),
        },
    ]
}

/// An xDS `istio.security.Authorization` resource: decode + translate.
pub fn xds_authorization(input: &[u8]) {
    if let Ok(p) = sec::Authorization::decode(input) {
        let _ = translate_policy(p);
    }
}

// --- ZDS ------------------------------------------------------------------------------------

struct NoopStarter;

impl zds::PodStarter for NoopStarter {
    fn start(
        &self,
        _pod: &zds::Pod,
        _netns: Arc<crate::sys::Netns>,
    ) -> std::io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(()))
    }
}

/// A sequence of ZDS messages through the client's decode and validation (the socket layer
/// only adds framing and fd passing). The pod starter is a no-op. Framing:
/// `[len][fd flags][payload]` per message; flag bit 0 attaches a network namespace fd, bit 1
/// a non-namespace fd (`/dev/null`).
pub fn zds(input: &[u8]) {
    let mut client = zds::Client::new("/nonexistent".into(), Arc::new(NoopStarter), Arc::new(()));
    let mut rest = input;
    while rest.len() >= 2 {
        let len = rest[0] as usize;
        let flags = rest[1];
        let end = (2 + len).min(rest.len());
        let msg = &rest[2..end];
        rest = &rest[end..];
        let mut fds: Vec<OwnedFd> = Vec::new();
        if flags & 1 != 0 {
            if let Ok(f) = std::fs::File::open("/proc/self/ns/net") {
                fds.push(f.into());
            }
        }
        if flags & 2 != 0 {
            if let Ok(f) = std::fs::File::open("/dev/null") {
                fds.push(f.into());
            }
        }
        let _ = client.handle(msg, fds);
    }
}

// --- Local YAML and mesh config -------------------------------------------------------------

/// The local config file (`LOCAL_XDS_PATH`): both readers never panic, and whatever the
/// streaming block reader accepts, the full YAML loader reads to the same config.
pub fn local_yaml(input: &[u8]) {
    if let Ok(s) = std::str::from_utf8(input) {
        let full = crate::control::local::parse_loaded(s);
        if let Some(block) = crate::control::local::parse_block(s) {
            assert_eq!(
                Some(&block),
                full.as_ref().ok(),
                "the block reader and the full loader disagree"
            );
        }
    }
}

/// Where ztun (like ztunnel) reads the mesh config file, relative to the working directory.
const MESH_CONFIG_FILE: &str = "./etc/istio/config/mesh";

/// Istio ProxyConfig as ztun reads it at startup: the mesh config file's `defaultConfig` and
/// the `PROXY_CONFIG` variable, through the public entry point
/// ([`crate::config::Config::from_source_with_cpus`]). The input is
/// `[flags][mesh file]\0[PROXY_CONFIG]` (no NUL: no `PROXY_CONFIG`); flag bit 0 drops the
/// file. An accepted configuration has non-zero listener ports and at least one worker thread,
/// and the same sources always give the same configuration.
pub fn mesh_config(input: &[u8]) {
    use crate::config::{Config, MapEnv};
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (file, var) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut env = MapEnv::new();
    if flags & 1 == 0 {
        let Ok(text) = std::str::from_utf8(file) else {
            return;
        };
        env = env.with_file(MESH_CONFIG_FILE, text);
    }
    if let Some(var) = var {
        let Ok(text) = std::str::from_utf8(var) else {
            return;
        };
        env = env.with_var("PROXY_CONFIG", text);
    }
    let Ok(cfg) = Config::from_source_with_cpus(&env, 4) else {
        return;
    };
    assert_ne!(cfg.admin_addr.port(), 0, "admin port 0 accepted");
    assert_ne!(cfg.stats_addr.port(), 0, "stats port 0 accepted");
    assert!(cfg.worker_threads >= 1, "no worker threads");
    let again = Config::from_source_with_cpus(&env, 4).expect("accepted the second time");
    assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
}

// --- CONNECT authority and request heads ----------------------------------------------------

/// The strict authority parsers and the SPIFFE identity parser, with their invariants.
pub fn authority(input: &[u8]) {
    let Ok(s) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(a) = crate::dataplane::hbone::parse_authority(s) {
        assert_ne!(a.port(), 0, "port 0 accepted from {s:?}");
    }
    match Authority::parse(s) {
        Ok(Authority::Addr(a)) => assert_ne!(a.port(), 0),
        Ok(Authority::Host { host, port }) => {
            assert_ne!(port, 0);
            assert!(host.len() <= 253, "hostname too long from {s:?}");
            assert!(
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "hostname {host:?} from {s:?}"
            );
        }
        Err(_) => {}
    }
    if let Ok(id) = s.parse::<Identity>() {
        let again: Identity = id.to_string().parse().expect("identity round trip");
        assert_eq!(again, id);
    }
}

/// Builds an `http::Request` from `method\nuri\nname: value\n…` and runs the inbound head
/// checks; anything accepted must be a CONNECT without a Host header or a path.
pub fn request_head(input: &[u8]) {
    let mut lines = input.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    let uri = lines.next().unwrap_or_default();
    let mut b = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], line[i + 1..].trim_ascii_start()),
            None => (line, &b""[..]),
        };
        b = b.header(name, value);
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    if crate::dataplane::inbound::parse_head(&req).is_ok() {
        assert_eq!(req.method(), http::Method::CONNECT);
        assert!(!req.headers().contains_key(http::header::HOST));
        assert!(req.uri().scheme().is_none());
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime for the h2 target");
}

/// Raw bytes after the client preface, into an h2 server with the inbound listener's
/// settings; every accepted request goes through the inbound head checks.
pub fn h2_frames(input: &[u8]) {
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend_from_slice(input);
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let feed = async move {
                let _ = client.write_all(&bytes).await;
                let _ = client.shutdown().await;
                // Drain what the server writes so it never blocks on a full pipe.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut client, &mut sink).await;
            };
            let serve = async move {
                // Same limits as the inbound listener (`dataplane/inbound.rs`).
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_concurrent_streams(200)
                    .max_header_list_size(64 * 1024)
                    .max_send_buffer_size(400 * 1024)
                    .handshake::<_, bytes::Bytes>(server)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let status = match crate::dataplane::inbound::parse_head(&req) {
                        Ok(_) => http::StatusCode::OK,
                        Err(e) => e.status(),
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .body(())
                        .unwrap_or_default();
                    let _ = respond.send_response(resp, true);
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::join!(feed, serve);
            })
            .await;
        })
    });
}

// --- baggage and forwarded ------------------------------------------------------------------

/// Whether ztun's `baggage` writer sends `v` as given (visible ASCII, no separators).
fn baggage_safe(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'=' | b'\\' | b'"'))
}

/// The workload kinds xDS names (`translate.rs`): the only `workload_type`s ztun writes.
const WORKLOAD_KINDS: &[&str] = &["deployment", "cronjob", "pod", "job"];

/// A peer's `baggage` header through the telemetry parser (`hbone::workload_from_baggage`):
/// identity parts always come from the proven identity, values stay within their bounds; and
/// ztun's own writer (`hbone::baggage`), given the described workload, produces a valid header
/// value that describes it again, field by field, for every value it writes.
pub fn baggage(input: &[u8]) {
    use crate::dataplane::hbone::{baggage, workload_from_baggage};
    let Ok(header) = std::str::from_utf8(input) else {
        return;
    };
    let id = Identity::new("cluster.local", "proven-ns", "proven-sa").expect("a valid identity");
    let Some(mut w) = workload_from_baggage(&id, header) else {
        return;
    };
    assert_eq!(&*w.trust_domain, id.trust_domain());
    assert_eq!(&*w.service_account, id.service_account());
    assert!(!w.workload_name.is_empty());
    for v in [
        &w.namespace,
        &w.cluster_id,
        &w.workload_name,
        &w.canonical_name,
        &w.canonical_revision,
        &w.locality.region,
        &w.locality.zone,
    ] {
        assert!(
            v.len() <= 253 && !v.contains(','),
            "value {v:?} from {header:?}"
        );
    }
    // ztun writes baggage for workloads from xDS, whose kind is one of the known ones.
    if !WORKLOAD_KINDS.contains(&&*w.workload_type) {
        w.workload_type = "pod".into();
    }
    let out = baggage(&w);
    assert!(
        http::HeaderValue::from_str(&out).is_ok(),
        "baggage {out:?} is not a header value"
    );
    let Some(again) = workload_from_baggage(&id, &out) else {
        assert!(!baggage_safe(&w.workload_name), "{out:?} describes nothing");
        return;
    };
    let kept = |v: &str, default: &str| {
        if baggage_safe(v) {
            v.to_owned()
        } else {
            default.to_owned()
        }
    };
    assert_eq!(&*again.namespace, kept(&w.namespace, id.namespace()));
    assert_eq!(&*again.cluster_id, kept(&w.cluster_id, ""));
    assert_eq!(&*again.workload_name, &*w.workload_name);
    assert_eq!(&*again.workload_type, &*w.workload_type);
    assert_eq!(&*again.canonical_name, kept(&w.canonical_name, ""));
    assert_eq!(&*again.canonical_revision, kept(&w.canonical_revision, ""));
    assert_eq!(&*again.locality.region, kept(&w.locality.region, ""));
    assert_eq!(&*again.locality.zone, kept(&w.locality.zone, ""));
}

/// A socket address from the front of `input` (`[flags][ip][port]`, IPv6 also `[scope id]`;
/// flag bit 0 selects IPv6), and what is left.
fn socket_addr(input: &[u8]) -> (SocketAddr, &[u8]) {
    let mut buf = [0u8; 1 + 16 + 2 + 4];
    let n = input.len().min(buf.len());
    buf[..n].copy_from_slice(&input[..n]);
    if buf[0] & 1 == 0 {
        let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&buf[1..5]).unwrap_or_default());
        let port = u16::from_be_bytes([buf[5], buf[6]]);
        (
            SocketAddr::new(ip.into(), port),
            input.get(7..).unwrap_or_default(),
        )
    } else {
        let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&buf[1..17]).unwrap_or_default());
        let port = u16::from_be_bytes([buf[17], buf[18]]);
        let scope = u32::from_be_bytes([buf[19], buf[20], buf[21], buf[22]]);
        let addr = SocketAddrV6::new(ip, port, 0, scope);
        (addr.into(), input.get(23..).unwrap_or_default())
    }
}

/// `[address][peer header]`: the `forwarded` value ztun sends for a client at the address is a
/// valid header value, `for="<address>"`, naming that client exactly; and a CONNECT whose
/// peer sent the rest as its `forwarded` and `baggage` headers parses to the same head as one
/// without them (ztun never takes the source or target from either).
pub fn forwarded(input: &[u8]) {
    let (client, rest) = socket_addr(input);
    let value = crate::dataplane::hbone::forwarded(client);
    assert!(
        http::HeaderValue::from_str(&value).is_ok(),
        "forwarded {value:?} is not a header value"
    );
    let quoted = value
        .strip_prefix("for=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("forwarded {value:?} is not for=\"…\""));
    let back: SocketAddr = quoted
        .parse()
        .unwrap_or_else(|e| panic!("forwarded {value:?} names no address: {e}"));
    assert_eq!(back, client);

    let Ok(peer) = http::HeaderValue::from_bytes(rest) else {
        return;
    };
    let target = if client.port() == 0 {
        "10.0.0.1:8080".to_owned()
    } else {
        client.to_string()
    };
    let head = |extra: bool| {
        let mut b = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.as_str());
        if extra {
            b = b
                .header("forwarded", peer.clone())
                .header("baggage", peer.clone());
        }
        b.body(())
            .ok()
            .map(|req| format!("{:?}", crate::dataplane::inbound::parse_head(&req)))
    };
    assert_eq!(
        head(true),
        head(false),
        "a peer's headers {peer:?} changed the head"
    );
}

// --- PROXY protocol -------------------------------------------------------------------------

/// PROXY protocol v2 (application tunnels): any header the parser accepts is self-delimiting
/// and, when it is in ztun's own form (addresses, at most the identity TLV), is byte for byte
/// what ztun writes for the same connection; and what ztun writes for addresses and an
/// identity taken from the input parses back to them.
pub fn proxy_protocol(input: &[u8]) {
    use crate::dataplane::proxy_protocol::{header, parse, TLV_SOURCE_IDENTITY};
    if let Some(p) = parse(input) {
        assert!(p.len >= 16 + 12 && p.len <= input.len(), "length {}", p.len);
        assert_eq!(
            parse(&input[..p.len]).as_ref(),
            Some(&p),
            "not self-delimiting"
        );
        let ours: Option<Option<Identity>> = match p.tlvs.as_slice() {
            [] => Some(None),
            [(TLV_SOURCE_IDENTITY, v)] => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<Identity>().ok())
                .filter(|id| id.to_string().as_bytes() == v.as_slice())
                .map(Some),
            _ => None,
        };
        if let Some(id) = ours {
            assert_eq!(
                header(p.src, p.dst, id.as_ref()),
                &input[..p.len],
                "{p:?} is not written as parsed"
            );
        }
    }

    let (src, rest) = socket_addr(input);
    let (dst, rest) = socket_addr(rest);
    let id = std::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.parse::<Identity>().ok());
    let h = header(src, dst, id.as_ref());
    let p = parse(&h).unwrap_or_else(|| panic!("ztun's own header for {src} → {dst} rejected"));
    let as_sent = |a: SocketAddr| match (a, src.is_ipv4() && dst.is_ipv4()) {
        (SocketAddr::V4(_), true) => a,
        (a, _) => SocketAddr::new(
            match a.ip() {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            },
            a.port(),
        ),
    };
    // The v2 header carries no IPv6 scope id or flow label.
    assert_eq!(p.src.ip(), as_sent(src).ip());
    assert_eq!(p.src.port(), src.port());
    assert_eq!(p.dst.ip(), as_sent(dst).ip());
    assert_eq!(p.dst.port(), dst.port());
    assert_eq!(p.len, h.len());
    let tlvs: Vec<(u8, Vec<u8>)> = id
        .iter()
        .map(|id| (TLV_SOURCE_IDENTITY, id.to_string().into_bytes()))
        .collect();
    assert_eq!(p.tlvs, tlvs);
}

// --- Certificates ---------------------------------------------------------------------------

/// SPIFFE identity extraction from a peer's leaf certificate (the server's client check).
pub fn cert_der(input: &[u8]) {
    let der = CertificateDer::from(input);
    if let Ok(id) = crate::tls::peer_identity(Some(std::slice::from_ref(&der))) {
        assert!(!id.trust_domain().is_empty());
    }
}

/// PEM certificate chains and keys as loaded from CA directories and CA responses.
pub fn pem(input: &[u8]) {
    if let Ok(certs) = crate::tls::parse_pem_certs(input) {
        let _ = crate::tls::peer_identity(Some(&certs));
    }
    let _ = crate::tls::parse_pem_key(input);
}

// --- CRLs -----------------------------------------------------------------------------------

/// The CA certificate the CRL seeds (`fuzz/seeds/crl/`) were signed with, and a leaf it
/// issued, whose serial the `revokes-leaf` seeds revoke. Fixed files, so that the seeds
/// verify in every run and the target is deterministic.
const CRL_ROOT: &[u8] = include_bytes!("fixtures/crl-root.der");
const CRL_LEAF: &[u8] = include_bytes!("fixtures/crl-leaf.der");
/// The time chains are checked at (a minute after the fixture and seeds were made): the
/// leaf is valid, the seeds' current CRLs are in force and the stale one is past its
/// nextUpdate, whatever the clock says.
const CRL_NOW: u64 = 1_796_360_368;

/// A `CRL_PATH` file: parsed, then a handshake's chain check against it. An empty file
/// revokes nothing.
pub fn crl(input: &[u8]) {
    let Ok(parsed) = crate::tls::crl::parse_crls(input) else {
        return;
    };
    let res = parsed.check_client_chain(
        &CertificateDer::from(CRL_LEAF),
        &[],
        &[CertificateDer::from(CRL_ROOT)],
        rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(CRL_NOW)),
    );
    if parsed.is_empty() {
        assert!(res.is_ok(), "no CRL must revoke nothing: {res:?}");
    }
}

// --- DNS ------------------------------------------------------------------------------------

/// One message through the DNS proxy's decision (see `src/fuzz/dns.rs` for the input form).
pub fn dns(input: &[u8]) {
    super::dns::packet(input);
}
