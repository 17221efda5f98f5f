//! Unit tests: name expansion, hostname matching, address filtering and packet handling.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;
use crate::state::model::*;
use crate::state::{Snapshot, SnapshotBuilder};
use crate::testkit::fixtures;

fn zone() -> Zone {
    Zone {
        domain: "cluster.local".into(),
        ipv6: true,
        preferred_namespace: None,
    }
}

fn workload(ns: &str, name: &str, ips: &[&str], services: &[&str]) -> Workload {
    let mut w = fixtures::workload(ns, name)
        .uid(&format!("c//Pod/{ns}/{name}"))
        .service_account("default")
        .canonical_revision("latest");
    for ip in ips {
        w = w.ip(ip.parse::<IpAddr>().unwrap());
    }
    for s in services {
        w = w.member_of(s, &[]);
    }
    w.build()
}

fn service(ns: &str, hostname: &str, vips: &[(&str, &str)]) -> Service {
    let name = hostname.split('.').next().unwrap();
    let mut s = fixtures::service(ns, name).hostname(hostname);
    for (net, ip) in vips {
        s = s.vip_on(net, ip.parse::<IpAddr>().unwrap());
    }
    s.build()
}

/// Client `client` in `default`; services across namespaces and kinds.
fn mesh() -> Snapshot {
    let mut b = SnapshotBuilder::default();
    b.insert_workload(workload("default", "client", &["10.0.0.1"], &[]));
    b.insert_workload(workload(
        "default",
        "db-0",
        &["10.0.1.1", "fd00::1:1"],
        &["default/db.default.svc.cluster.local"],
    ));
    b.insert_workload(workload(
        "default",
        "db-1",
        &["10.0.1.2"],
        &["default/db.default.svc.cluster.local"],
    ));
    let mut sick = workload(
        "default",
        "db-2",
        &["10.0.1.3"],
        &["default/db.default.svc.cluster.local"],
    );
    sick.status = HealthStatus::Unhealthy;
    b.insert_workload(sick);
    b.insert_service(service(
        "default",
        "echo.default.svc.cluster.local",
        &[
            ("", "10.96.0.20"),
            ("", "fd00::20"),
            ("other-net", "10.200.0.1"),
        ],
    ));
    b.insert_service(service(
        "other",
        "api.other.svc.cluster.local",
        &[("", "10.96.0.30")],
    ));
    // Headless: no VIPs, endpoints answer.
    b.insert_service(service("default", "db.default.svc.cluster.local", &[]));
    b.insert_service(service(
        "default",
        "*.wild.example.com",
        &[("", "10.96.0.40")],
    ));
    b.insert_service(service(
        "default",
        "exact.example.com",
        &[("", "10.96.0.50")],
    ));
    // Namespace-visible only: not for clients elsewhere.
    let mut private = service("other", "private.example.com", &[("", "10.96.0.60")]);
    private.visibility = Visibility::Namespace;
    b.insert_service(private);
    // Two namespaces claim one hostname: the client's namespace wins.
    b.insert_service(service("aaa", "shared.example.com", &[("", "10.96.0.71")]));
    b.insert_service(service(
        "default",
        "shared.example.com",
        &[("", "10.96.0.72")],
    ));
    // IPv4-only service with a v6 VIP.
    let mut v4only = service(
        "default",
        "v4.example.com",
        &[("", "10.96.0.80"), ("", "fd00::80")],
    );
    v4only.ip_families = IpFamilies::Ipv4Only;
    b.insert_service(v4only);
    // A hostname-only service outside the cluster domain: not answered locally.
    b.insert_service(service("default", "dns-only.example.com", &[]));
    b.build(1)
}

fn client(snap: &Snapshot) -> &Workload {
    snap.workload_by_pod("default", "client", None).unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|i| i.parse().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn kubernetes_expansions() {
    let cases = [
        ("echo", Some("echo.ns.svc.cluster.local")),
        ("echo.other", Some("echo.other.svc.cluster.local")),
        ("echo.other.svc", Some("echo.other.svc.cluster.local")),
        ("echo.other.cluster", None),
        ("echo.other.svc.cluster.local", None),
        ("a..b", None),
        ("", None),
    ];
    for (name, want) in cases {
        assert_eq!(
            kubernetes_expansion(name, "ns", "cluster.local").as_deref(),
            want,
            "{name}"
        );
    }
}

#[test]
fn aliases_cover_expansions_and_search_domains() {
    let names = |q: &str| -> Vec<(String, bool)> {
        aliases(q, "ns", "cluster.local")
            .into_iter()
            .map(|a| (a.name, a.stripped))
            .collect()
    };
    let own = |s: &str, stripped: bool| (s.to_owned(), stripped);
    assert_eq!(
        names("echo"),
        vec![own("echo", false), own("echo.ns.svc.cluster.local", false)]
    );
    assert_eq!(
        names("echo.ns.svc.cluster.local"),
        vec![own("echo.ns.svc.cluster.local", false), own("echo", true)]
    );
    // A resolver trying the search list on a two-label name.
    assert_eq!(
        names("echo.other.ns.svc.cluster.local"),
        vec![
            own("echo.other.ns.svc.cluster.local", false),
            own("echo.other.svc.cluster.local", true),
            own("echo.other", true),
        ]
    );
    // An external name with a search domain appended.
    assert_eq!(
        names("foo.example.com.svc.cluster.local"),
        vec![
            own("foo.example.com.svc.cluster.local", false),
            own("foo.example.com", true),
        ]
    );
    assert_eq!(
        names("foo.example.com"),
        vec![own("foo.example.com", false)]
    );
    assert_eq!(
        search_domains("ns", "cluster.local"),
        [
            "ns.svc.cluster.local".to_owned(),
            "svc.cluster.local".to_owned(),
            "cluster.local".to_owned()
        ]
    );
}

#[test]
fn lookup_table() {
    let snap = mesh();
    let index = HostIndex::build(&snap);
    let c = client(&snap);
    let mesh = |cname: Option<&str>, addrs: &[&str]| Some((cname.map(str::to_owned), ips(addrs)));
    type Want = Option<(Option<String>, Vec<IpAddr>)>;
    let cases: Vec<(&str, Family, Want)> = vec![
        // Short name, namespace-qualified, svc-qualified and FQDN.
        ("echo", Family::V4, mesh(None, &["10.96.0.20"])),
        ("echo.default", Family::V4, mesh(None, &["10.96.0.20"])),
        ("echo.default.svc", Family::V4, mesh(None, &["10.96.0.20"])),
        (
            "echo.default.svc.cluster.local",
            Family::V4,
            mesh(None, &["10.96.0.20"]),
        ),
        ("ECHO.Default.svc.cluster.local", Family::V4, None),
        ("echo", Family::V6, mesh(None, &["fd00::20"])),
        // Another namespace needs qualification.
        ("api", Family::V4, None),
        ("api.other", Family::V4, mesh(None, &["10.96.0.30"])),
        // Search-domain variants get a CNAME to the real name.
        (
            "api.other.default.svc.cluster.local",
            Family::V4,
            mesh(Some("api.other.svc.cluster.local"), &["10.96.0.30"]),
        ),
        (
            "exact.example.com.default.svc.cluster.local",
            Family::V4,
            mesh(Some("exact.example.com"), &["10.96.0.50"]),
        ),
        // Wildcards.
        (
            "a.wild.example.com",
            Family::V4,
            mesh(None, &["10.96.0.40"]),
        ),
        (
            "a.b.wild.example.com",
            Family::V4,
            mesh(None, &["10.96.0.40"]),
        ),
        ("wild.example.com", Family::V4, None),
        // Headless: healthy endpoints of the family.
        ("db", Family::V4, mesh(None, &["10.0.1.1", "10.0.1.2"])),
        ("db", Family::V6, mesh(None, &["fd00::1:1"])),
        // Known name, no record of that family: empty NOERROR.
        ("api.other", Family::V6, mesh(None, &[])),
        ("v4.example.com", Family::V6, mesh(None, &[])),
        ("v4.example.com", Family::V4, mesh(None, &["10.96.0.80"])),
        // Visibility and namespace preference.
        ("private.example.com", Family::V4, None),
        (
            "shared.example.com",
            Family::V4,
            mesh(None, &["10.96.0.72"]),
        ),
        // Not mesh names.
        ("dns-only.example.com", Family::V4, None),
        ("example.com", Family::V4, None),
        ("nope", Family::V4, None),
    ];
    for (name, family, want) in cases {
        let got = match lookup(
            &index,
            &snap,
            c,
            &name.to_ascii_lowercase(),
            family,
            &zone(),
        ) {
            Lookup::Mesh { cname, mut addrs } => {
                addrs.sort();
                Some((cname, addrs))
            }
            Lookup::NotMesh => None,
        };
        // Upper-case queries are lowercased by the server before lookup.
        let want = if name == "ECHO.Default.svc.cluster.local" {
            mesh(None, &["10.96.0.20"])
        } else {
            want
        };
        assert_eq!(got, want, "{name} {family:?}");
    }
}

#[test]
fn ipv6_disabled_answers_aaaa_empty() {
    let snap = mesh();
    let index = HostIndex::build(&snap);
    let zone = Zone {
        ipv6: false,
        ..zone()
    };
    assert_eq!(
        lookup(&index, &snap, client(&snap), "echo", Family::V6, &zone),
        Lookup::Mesh {
            cname: None,
            addrs: Vec::new()
        }
    );
}

#[test]
fn other_networks_vips_are_filtered() {
    let snap = mesh();
    let index = HostIndex::build(&snap);
    let mut c = client(&snap).clone();
    c.network = "other-net".into();
    assert_eq!(
        lookup(&index, &snap, &c, "echo", Family::V4, &zone()),
        Lookup::Mesh {
            cname: None,
            addrs: ips(&["10.200.0.1"])
        }
    );
}

/// Services of several namespaces share `multi.example.com`; none is the client's: the
/// canonical one, then `PREFERED_SERVICE_NAMESPACE`, then the first namespace in order wins.
#[test]
fn shared_hostname_tie_break_prefers_canonical_then_the_preferred_namespace() {
    let base = mesh();
    let c = client(&base).clone();
    let build = |canonical: Option<&str>| {
        let mut b = SnapshotBuilder::default();
        b.insert_workload(c.clone());
        for (ns, vip) in [
            ("zeta", "10.96.1.3"),
            ("beta", "10.96.1.2"),
            ("alpha", "10.96.1.1"),
        ] {
            let mut s = service(ns, "multi.example.com", &[("", vip)]);
            s.canonical = canonical == Some(ns);
            b.insert_service(s);
        }
        b.build(1)
    };
    let cases: [(Option<&str>, Option<&str>, &str); 5] = [
        (None, None, "10.96.1.1"),
        (None, Some("beta"), "10.96.1.2"),
        (None, Some("zeta"), "10.96.1.3"),
        // A preferred namespace without such a service changes nothing.
        (None, Some("nowhere"), "10.96.1.1"),
        // Canonical outranks the preferred namespace.
        (Some("zeta"), Some("beta"), "10.96.1.3"),
    ];
    for (canonical, preferred, want) in cases {
        let snap = build(canonical);
        let index = HostIndex::build(&snap);
        let zone = Zone {
            preferred_namespace: preferred.map(Into::into),
            ..zone()
        };
        assert_eq!(
            lookup(&index, &snap, &c, "multi.example.com", Family::V4, &zone),
            Lookup::Mesh {
                cname: None,
                addrs: ips(&[want])
            },
            "canonical {canonical:?}, preferred {preferred:?}"
        );
    }
    // The client's own namespace beats the preferred one.
    let index = HostIndex::build(&base);
    let zone = Zone {
        preferred_namespace: Some("aaa".into()),
        ..zone()
    };
    assert_eq!(
        lookup(&index, &base, &c, "shared.example.com", Family::V4, &zone),
        Lookup::Mesh {
            cname: None,
            addrs: ips(&["10.96.0.72"])
        }
    );
}

#[test]
fn upstreams_from_resolv_conf() {
    let u = Upstreams::parse(
        "# comment\nsearch a.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
         nameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n",
    );
    assert_eq!(
        u.servers(),
        &[
            "10.96.0.10:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
    assert!(Upstreams::parse("").servers().is_empty());
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn run(raw: &[u8], transport: Transport, known_client: bool) -> Outcome {
    let snap = mesh();
    let index = HostIndex::build(&snap);
    let c = known_client.then(|| client(&snap));
    respond(raw, transport, c, &snap, &index, &zone()).0
}

fn reply_of(o: Outcome) -> Message {
    match o {
        Outcome::Reply { bytes, .. } => Message::from_vec(&bytes).expect("a decodable answer"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn answers_mesh_names_authoritatively() {
    let raw = query("echo.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    let m = reply_of(run(&raw, Transport::Udp, true));
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert_eq!(m.answers().len(), 1);
    let a = &m.answers()[0];
    assert_eq!(a.ttl(), TTL);
    assert_eq!(a.name().to_ascii(), "echo.default.svc.cluster.local.");
    assert_eq!(a.data(), &RData::A("10.96.0.20".parse().unwrap()));
}

#[test]
fn stripped_search_domain_answers_with_a_cname() {
    let raw = query(
        "exact.example.com.default.svc.cluster.local.",
        RecordType::A,
    )
    .to_vec()
    .unwrap();
    let m = reply_of(run(&raw, Transport::Udp, true));
    let types: Vec<RecordType> = m.answers().iter().map(|r| r.record_type()).collect();
    assert_eq!(types, vec![RecordType::CNAME, RecordType::A]);
    assert_eq!(m.answers()[1].name().to_ascii(), "exact.example.com.");
}

#[test]
fn known_name_without_records_is_empty_noerror() {
    let raw = query("api.other.", RecordType::AAAA).to_vec().unwrap();
    let m = reply_of(run(&raw, Transport::Udp, true));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
}

#[test]
fn other_names_and_types_are_forwarded() {
    for (name, t) in [
        ("example.org.", RecordType::A),
        ("echo.", RecordType::MX),
        ("echo.", RecordType::Unknown(65280)),
        ("svc.example.", RecordType::HTTPS),
    ] {
        let raw = query(name, t).to_vec().unwrap();
        assert!(
            matches!(run(&raw, Transport::Udp, true), Outcome::Forward { .. }),
            "{name} {t:?}"
        );
    }
}

#[test]
fn unknown_client_gets_servfail() {
    let raw = query("echo.", RecordType::A).to_vec().unwrap();
    let m = reply_of(run(&raw, Transport::Udp, false));
    assert_eq!(m.response_code(), ResponseCode::ServFail);
}

#[test]
fn non_query_opcode_is_notimp() {
    let mut q = query("echo.", RecordType::A);
    q.set_op_code(OpCode::Update);
    let m = reply_of(run(&q.to_vec().unwrap(), Transport::Udp, true));
    assert_eq!(m.response_code(), ResponseCode::NotImp);
    assert_eq!(m.id(), 0x1234);
}

#[test]
fn response_as_query_is_formerr() {
    let mut q = query("echo.", RecordType::A);
    q.set_message_type(MessageType::Response);
    let m = reply_of(run(&q.to_vec().unwrap(), Transport::Udp, true));
    assert_eq!(m.response_code(), ResponseCode::FormErr);
}

#[test]
fn truncated_and_garbage_packets_never_panic() {
    let good = query("echo.default.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    // Every prefix: below a header nothing is said, past it a FORMERR or (whole) an answer.
    for n in 0..good.len() {
        match run(&good[..n], Transport::Udp, true) {
            Outcome::Drop => assert!(n < 12, "prefix {n}"),
            o => assert_eq!(
                reply_of(o).response_code(),
                ResponseCode::FormErr,
                "prefix {n}"
            ),
        }
    }
    // Deterministic pseudo-random garbage, header included.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = run(&bytes, Transport::Udp, true);
        let _ = run(&bytes, Transport::Tcp, true);
    }
}

#[test]
fn names_over_255_bytes_are_formerr() {
    let mut q = query("echo.", RecordType::A).to_vec().unwrap();
    // Replace the question by a hand-encoded 5 × 63-byte-label name (> 255 bytes).
    q.truncate(12);
    for _ in 0..5 {
        q.push(63);
        q.extend(std::iter::repeat_n(b'a', 63));
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    let m = reply_of(run(&q, Transport::Udp, true));
    assert_eq!(m.response_code(), ResponseCode::FormErr);
}

#[test]
fn two_questions_are_formerr() {
    let mut q = query("echo.", RecordType::A);
    q.add_query(Query::query(
        Name::from_ascii("api.other.").unwrap(),
        RecordType::A,
    ));
    let m = reply_of(run(&q.to_vec().unwrap(), Transport::Udp, true));
    assert_eq!(m.response_code(), ResponseCode::FormErr);
}

#[test]
fn big_answers_are_truncated_for_udp_and_edns_is_echoed() {
    let mut b = SnapshotBuilder::default();
    b.insert_workload(workload("default", "client", &["10.0.0.1"], &[]));
    let key = "default/big.default.svc.cluster.local";
    for i in 0..100u8 {
        b.insert_workload(workload(
            "default",
            &format!("p{i}"),
            &[&format!("10.1.0.{i}")],
            &[key],
        ));
    }
    b.insert_service(service("default", "big.default.svc.cluster.local", &[]));
    let snap = b.build(1);
    let index = HostIndex::build(&snap);
    let c = client(&snap);
    let raw = query("big.", RecordType::A).to_vec().unwrap();
    let udp = reply_of(respond(&raw, Transport::Udp, Some(c), &snap, &index, &zone()).0);
    assert!(udp.truncated());
    assert!(udp.answers().is_empty());
    let tcp = reply_of(respond(&raw, Transport::Tcp, Some(c), &snap, &index, &zone()).0);
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 100);
    let mut q = query("big.", RecordType::A);
    q.set_edns(Edns::new());
    let edns = reply_of(
        respond(
            &q.to_vec().unwrap(),
            Transport::Udp,
            Some(c),
            &snap,
            &index,
            &zone(),
        )
        .0,
    );
    assert!(edns.extensions().is_some(), "EDNS echoed");
}

#[test]
fn listen_address_and_resolv_conf_from_the_environment() {
    use crate::config::{Config, DnsListen, MapEnv};
    let dns = |vars: &[(&str, &str)]| {
        let env: MapEnv = vars.iter().copied().collect();
        Config::from_source_with_cpus(&env, 2).map(|c| c.dns)
    };
    let d = dns(&[]).unwrap();
    assert_eq!(d.listen, DnsListen::Localhost(15053));
    assert_eq!(d.resolv_conf, std::path::PathBuf::from("/etc/resolv.conf"));
    let cases = [
        (
            vec![("DNS_PROXY_ADDR", "localhost:5353")],
            DnsListen::Localhost(5353),
        ),
        (
            vec![("DNS_PROXY_ADDR", "127.0.0.2:53")],
            DnsListen::Addr("127.0.0.2:53".parse().unwrap()),
        ),
        (
            vec![
                ("ISTIO_META_DNS_PROXY_ADDR", "[::1]:1053"),
                ("DNS_PROXY_ADDR", "localhost:5353"),
            ],
            DnsListen::Addr("[::1]:1053".parse().unwrap()),
        ),
    ];
    for (vars, want) in cases {
        assert_eq!(dns(&vars).unwrap().listen, want, "{vars:?}");
    }
    assert!(dns(&[("DNS_PROXY_ADDR", "localhost")]).is_err());
    assert!(dns(&[("DNS_PROXY_ADDR", "nope:53")]).is_err());
    let d = dns(&[("ZTUN_DNS_RESOLV_CONF", "/tmp/r.conf")]).unwrap();
    assert_eq!(d.resolv_conf, std::path::PathBuf::from("/tmp/r.conf"));
}
