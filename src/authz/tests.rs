//! Table tests of the authorization semantics (compat.md §1.10, §2.2).

use crate::state::model::PolicyScope;
use std::net::IpAddr;

use super::*;
use crate::state::model::{PolicyRule, ServiceAccountMatch, TunnelProtocol};
use crate::state::SnapshotBuilder;
use crate::testkit::fixtures::pod as workload;

fn policy(
    ns: &str,
    name: &str,
    scope: PolicyScope,
    action: PolicyAction,
    rules: Vec<PolicyRule>,
) -> Policy {
    Policy {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        rules,
        dry_run: false,
    }
}

/// A namespace-scoped policy `app/<name>` (the destination workload's namespace).
fn ns_policy(name: &str, action: PolicyAction, rules: Vec<PolicyRule>) -> Policy {
    policy("app", name, PolicyScope::Namespace, action, rules)
}

fn rule(m: PolicyMatch) -> PolicyRule {
    vec![vec![m]]
}

fn mtls(ns: &str, sa: &str) -> Conn {
    Conn {
        src_ip: IpAddr::from([10, 1, 0, 5]),
        src_identity: Some(Identity::new("cluster.local", ns, sa).unwrap()),
        dst_ip: IpAddr::from([10, 0, 0, 1]),
        dst_port: 8080,
    }
}

fn plaintext() -> Conn {
    Conn {
        src_identity: None,
        ..mtls("x", "y")
    }
}

fn snap(policies: Vec<Policy>, dst: Workload) -> (Snapshot, Workload) {
    let mut b = SnapshotBuilder::default();
    b.insert_workload(dst.clone());
    for p in policies {
        b.insert_policy(p);
    }
    (b.build(1), dst)
}

fn server() -> Workload {
    workload("app", "server", "server-sa", [10, 0, 0, 1])
}

fn decide(policies: Vec<Policy>, conn: &Conn) -> Decision {
    let (s, w) = snap(policies, server());
    authorize(&s, conn, &w, HttpOnlyDeny::Ignore)
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn net(s: &str) -> IpNet {
    let (a, l) = s.split_once('/').unwrap();
    IpNet {
        address: a.parse().unwrap(),
        prefix_len: l.parse().unwrap(),
    }
}

fn sa(ns: &str, sa: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

#[test]
fn every_field_and_its_negation() {
    let client = mtls("client-ns", "client-sa");
    let clear = plaintext();
    let m = PolicyMatch::default;
    #[rustfmt::skip]
    let cases: Vec<(&str, PolicyMatch, &Conn, bool)> = vec![
        ("namespace exact", PolicyMatch { namespaces: vec![exact("client-ns")], ..m() }, &client, true),
        ("namespace other", PolicyMatch { namespaces: vec![exact("other")], ..m() }, &client, false),
        ("namespace any of", PolicyMatch { namespaces: vec![exact("a"), exact("client-ns")], ..m() }, &client, true),
        ("not namespace hit", PolicyMatch { not_namespaces: vec![exact("client-ns")], ..m() }, &client, false),
        ("not namespace miss", PolicyMatch { not_namespaces: vec![exact("other")], ..m() }, &client, true),
        ("namespace prefix", PolicyMatch { namespaces: vec![StringMatch::Prefix("client-".into())], ..m() }, &client, true),
        ("namespace suffix", PolicyMatch { namespaces: vec![StringMatch::Suffix("-ns".into())], ..m() }, &client, true),
        ("namespace suffix miss", PolicyMatch { namespaces: vec![StringMatch::Suffix("-x".into())], ..m() }, &client, false),
        ("namespace presence", PolicyMatch { namespaces: vec![StringMatch::Presence], ..m() }, &client, true),
        ("principal exact", PolicyMatch { principals: vec![exact("cluster.local/ns/client-ns/sa/client-sa")], ..m() }, &client, true),
        ("principal with scheme never matches", PolicyMatch { principals: vec![exact("spiffe://cluster.local/ns/client-ns/sa/client-sa")], ..m() }, &client, false),
        ("principal other td", PolicyMatch { principals: vec![exact("other.td/ns/client-ns/sa/client-sa")], ..m() }, &client, false),
        ("principal prefix", PolicyMatch { principals: vec![StringMatch::Prefix("cluster.local/ns/client-ns/".into())], ..m() }, &client, true),
        ("principal suffix", PolicyMatch { principals: vec![StringMatch::Suffix("/sa/client-sa".into())], ..m() }, &client, true),
        ("principal presence", PolicyMatch { principals: vec![StringMatch::Presence], ..m() }, &client, true),
        ("not principal hit", PolicyMatch { not_principals: vec![StringMatch::Suffix("/sa/client-sa".into())], ..m() }, &client, false),
        ("not principal miss", PolicyMatch { not_principals: vec![exact("x")], ..m() }, &client, true),
        ("service account", PolicyMatch { service_accounts: vec![sa("client-ns", "client-sa")], ..m() }, &client, true),
        ("service account wrong ns", PolicyMatch { service_accounts: vec![sa("other", "client-sa")], ..m() }, &client, false),
        ("not service account hit", PolicyMatch { not_service_accounts: vec![sa("client-ns", "client-sa")], ..m() }, &client, false),
        ("not service account miss", PolicyMatch { not_service_accounts: vec![sa("client-ns", "x")], ..m() }, &client, true),
        ("source ip /32", PolicyMatch { source_ips: vec![net("10.1.0.5/32")], ..m() }, &client, true),
        ("source ip /16", PolicyMatch { source_ips: vec![net("10.1.0.0/16")], ..m() }, &client, true),
        ("source ip /0", PolicyMatch { source_ips: vec![net("0.0.0.0/0")], ..m() }, &client, true),
        ("source ip other", PolicyMatch { source_ips: vec![net("10.2.0.0/16")], ..m() }, &client, false),
        ("source ip /31 boundary", PolicyMatch { source_ips: vec![net("10.1.0.4/31")], ..m() }, &client, true),
        ("source ip /30 bits", PolicyMatch { source_ips: vec![net("10.1.0.0/30")], ..m() }, &client, false),
        ("source ip v6 never matches v4", PolicyMatch { source_ips: vec![net("::/0")], ..m() }, &client, false),
        ("source ip mapped v6 prefix", PolicyMatch { source_ips: vec![net("::ffff:10.1.0.0/112")], ..m() }, &client, true),
        ("not source ip hit", PolicyMatch { not_source_ips: vec![net("10.1.0.0/24")], ..m() }, &client, false),
        ("not source ip miss", PolicyMatch { not_source_ips: vec![net("10.9.0.0/24")], ..m() }, &client, true),
        ("destination ip", PolicyMatch { destination_ips: vec![net("10.0.0.1/32")], ..m() }, &client, true),
        ("destination ip other", PolicyMatch { destination_ips: vec![net("10.0.0.2/32")], ..m() }, &client, false),
        ("not destination ip hit", PolicyMatch { not_destination_ips: vec![net("10.0.0.0/8")], ..m() }, &client, false),
        ("not destination ip miss", PolicyMatch { not_destination_ips: vec![net("11.0.0.0/8")], ..m() }, &client, true),
        ("destination port", PolicyMatch { destination_ports: vec![80, 8080], ..m() }, &client, true),
        ("destination port other", PolicyMatch { destination_ports: vec![80], ..m() }, &client, false),
        ("not destination port hit", PolicyMatch { not_destination_ports: vec![8080], ..m() }, &client, false),
        ("not destination port miss", PolicyMatch { not_destination_ports: vec![9999], ..m() }, &client, true),
        ("positive and negative together", PolicyMatch { namespaces: vec![StringMatch::Prefix("client".into())], not_namespaces: vec![exact("client-ns")], ..m() }, &client, false),
        ("every field must hold", PolicyMatch { namespaces: vec![exact("client-ns")], destination_ports: vec![80], ..m() }, &client, false),
        ("every field holds", PolicyMatch { namespaces: vec![exact("client-ns")], destination_ports: vec![8080], source_ips: vec![net("10.1.0.0/16")], ..m() }, &client, true),
        // P8: metacharacters are literal.
        ("dot is literal", PolicyMatch { namespaces: vec![exact("client.ns")], ..m() }, &client, false),
        ("star is literal", PolicyMatch { namespaces: vec![StringMatch::Prefix("*".into())], ..m() }, &client, false),
        // Plaintext: namespace is "", no principal, no service account.
        ("plaintext namespace exact empty", PolicyMatch { namespaces: vec![exact("")], ..m() }, &clear, true),
        ("plaintext namespace presence", PolicyMatch { namespaces: vec![StringMatch::Presence], ..m() }, &clear, false),
        ("plaintext not namespace presence", PolicyMatch { not_namespaces: vec![StringMatch::Presence], ..m() }, &clear, true),
        ("plaintext principal presence", PolicyMatch { principals: vec![StringMatch::Presence], ..m() }, &clear, false),
        ("plaintext principal prefix empty", PolicyMatch { principals: vec![StringMatch::Prefix("".into())], ..m() }, &clear, false),
        ("plaintext not principal always holds", PolicyMatch { not_principals: vec![StringMatch::Presence], ..m() }, &clear, true),
        ("plaintext service account", PolicyMatch { service_accounts: vec![sa("x", "y")], ..m() }, &clear, false),
        ("plaintext not service account holds", PolicyMatch { not_service_accounts: vec![sa("x", "y")], ..m() }, &clear, true),
        ("plaintext source ip", PolicyMatch { source_ips: vec![net("10.1.0.5/32")], ..m() }, &clear, true),
    ];
    for (name, m, conn, want) in cases {
        let allow = ns_policy("p", PolicyAction::Allow, vec![rule(m.clone())]);
        let d = decide(vec![allow], conn);
        assert_eq!(d.is_allowed(), want, "ALLOW {name}: {d:?}");
        let deny = ns_policy("p", PolicyAction::Deny, vec![rule(m)]);
        let d = decide(vec![deny], conn);
        assert_eq!(d.is_allowed(), !want, "DENY {name}: {d:?}");
    }
}

#[test]
fn rules_or_clauses_and_matches_or() {
    let c = mtls("client-ns", "client-sa");
    let yes = || PolicyMatch {
        destination_ports: vec![8080],
        ..Default::default()
    };
    let no = || PolicyMatch {
        destination_ports: vec![1],
        ..Default::default()
    };
    let empty = PolicyMatch::default;
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<PolicyRule>, Option<usize>)> = vec![
        ("zero rules never match", vec![], None),
        ("empty rule matches everything", vec![vec![]], Some(0)),
        ("empty clause matches", vec![vec![vec![]]], Some(0)),
        ("empty match never matches", vec![vec![vec![empty()]]], None),
        ("empty match skipped, next one matches", vec![vec![vec![empty(), yes()]]], Some(0)),
        ("matches OR", vec![vec![vec![no(), yes()]]], Some(0)),
        ("clauses AND: one fails", vec![vec![vec![yes()], vec![no()]]], None),
        ("clauses AND: all hold", vec![vec![vec![yes()], vec![yes(), no()]]], Some(0)),
        ("rules OR: second", vec![vec![vec![no()]], vec![vec![yes()]]], Some(1)),
        ("rules OR: first wins", vec![vec![vec![yes()]], vec![vec![yes()]]], Some(0)),
    ];
    for (name, rules, want) in cases {
        let p = ns_policy("p", PolicyAction::Allow, rules);
        let d = decide(vec![p], &c);
        assert_eq!(d.outcome.rule, want, "{name}: {d:?}");
        assert_eq!(d.is_allowed(), want.is_some(), "{name}");
    }
}

fn match_port(port: u16) -> Vec<PolicyRule> {
    vec![rule(PolicyMatch {
        destination_ports: vec![port],
        ..Default::default()
    })]
}

/// (name, policies, verdict, reason, deciding policy).
type ProcedureCase = (
    &'static str,
    Vec<Policy>,
    Verdict,
    Reason,
    Option<&'static str>,
);

#[test]
fn decision_procedure() {
    use PolicyAction::{Allow, Deny};
    use PolicyScope::Namespace as Ns;
    let c = mtls("client-ns", "client-sa");
    #[rustfmt::skip]
    let cases: Vec<ProcedureCase> = vec![
        ("no policy allows", vec![], Verdict::Allow, Reason::NoAllowPolicy, None),
        ("non-matching deny only allows", vec![policy("app", "d", Ns, Deny, match_port(1))], Verdict::Allow, Reason::NoAllowPolicy, None),
        ("matching deny denies", vec![policy("app", "d", Ns, Deny, match_port(8080))], Verdict::Deny, Reason::DenyMatched, Some("app/d")),
        ("deny overrides allow", vec![policy("app", "a", Ns, Allow, match_port(8080)), policy("app", "d", Ns, Deny, match_port(8080))], Verdict::Deny, Reason::DenyMatched, Some("app/d")),
        ("non-matching allow denies", vec![policy("app", "a", Ns, Allow, match_port(1))], Verdict::Deny, Reason::NoAllowMatched, None),
        ("one of several allows", vec![policy("app", "a1", Ns, Allow, match_port(1)), policy("app", "a2", Ns, Allow, match_port(8080))], Verdict::Allow, Reason::AllowMatched, Some("app/a2")),
        ("empty allow policy denies everything", vec![policy("app", "a", Ns, Allow, vec![])], Verdict::Deny, Reason::NoAllowMatched, None),
        ("empty deny policy denies nothing", vec![policy("app", "d", Ns, Deny, vec![])], Verdict::Allow, Reason::NoAllowPolicy, None),
        ("allow-all rule", vec![policy("app", "a", Ns, Allow, vec![vec![]])], Verdict::Allow, Reason::AllowMatched, Some("app/a")),
        ("deny-all rule", vec![policy("app", "d", Ns, Deny, vec![vec![]])], Verdict::Deny, Reason::DenyMatched, Some("app/d")),
    ];
    for (name, policies, verdict, reason, by) in cases {
        let d = decide(policies, &c);
        assert_eq!(
            (d.outcome.verdict, d.outcome.reason),
            (verdict, reason),
            "{name}: {d:?}"
        );
        assert_eq!(d.outcome.policy.as_deref(), by, "{name}");
        assert_eq!(d.dry_run, None, "{name}");
    }
}

#[test]
fn scopes() {
    use PolicyAction::Deny;
    let c = mtls("client-ns", "client-sa");
    let deny_all = || vec![vec![]];
    let plain = server();
    let mut listed = server();
    listed.authorization_policies = vec!["other/selected".into()];
    #[rustfmt::skip]
    let cases: Vec<(&str, Policy, &Workload, bool)> = vec![
        ("global from any namespace applies", policy("istio-system", "g", PolicyScope::Global, Deny, deny_all()), &plain, true),
        ("namespace scope in the destination's namespace", policy("app", "n", PolicyScope::Namespace, Deny, deny_all()), &plain, true),
        ("namespace scope elsewhere", policy("other", "n", PolicyScope::Namespace, Deny, deny_all()), &plain, false),
        ("selector not listed", policy("app", "selected", PolicyScope::WorkloadSelector, Deny, deny_all()), &plain, false),
        ("selector listed", policy("other", "selected", PolicyScope::WorkloadSelector, Deny, deny_all()), &listed, true),
    ];
    for (name, p, dst, applies) in cases {
        let (s, _) = snap(vec![p], dst.clone());
        let d = authorize(&s, &c, dst, HttpOnlyDeny::Ignore);
        assert_eq!(!d.is_allowed(), applies, "{name}: {d:?}");
    }
}

#[test]
fn a_listed_policy_missing_from_state_denies() {
    let mut w = server();
    w.authorization_policies = vec!["app/not-yet".into()];
    let (s, w) = snap(vec![], w);
    let d = authorize(
        &s,
        &mtls("client-ns", "client-sa"),
        &w,
        HttpOnlyDeny::Ignore,
    );
    assert_eq!(d.outcome.verdict, Verdict::Deny);
    assert_eq!(d.outcome.reason, Reason::MissingPolicy);
    assert_eq!(d.outcome.policy.as_deref(), Some("app/not-yet"));
    let denial = d.denial().unwrap();
    assert_eq!(denial.to_string(), "missing_policy policy=app/not-yet");
}

#[test]
fn a_listed_policy_that_is_also_namespace_wide_counts_once() {
    let mut w = server();
    w.authorization_policies = vec!["app/a".into(), "app/a".into()];
    let p = ns_policy("a", PolicyAction::Allow, match_port(8080));
    let (s, w) = snap(vec![p], w);
    assert_eq!(applicable(&s, &w).unwrap().len(), 1);
}

#[test]
fn dry_run_policies_only_report() {
    let c = mtls("client-ns", "client-sa");
    let mut dry_deny = ns_policy("dry", PolicyAction::Deny, vec![vec![]]);
    dry_deny.dry_run = true;
    let d = decide(vec![dry_deny.clone()], &c);
    assert!(d.is_allowed());
    assert_eq!(d.outcome.reason, Reason::NoAllowPolicy);
    let shadow = d.dry_run.expect("dry-run outcome reported");
    assert_eq!(shadow.verdict, Verdict::Deny);
    assert_eq!(shadow.policy.as_deref(), Some("app/dry"));

    // A dry-run ALLOW neither allows nor turns "no allow policy" into "deny".
    let mut dry_allow = ns_policy("dry", PolicyAction::Allow, match_port(1));
    dry_allow.dry_run = true;
    let d = decide(vec![dry_allow], &c);
    assert!(d.is_allowed());
    assert_eq!(d.dry_run.unwrap().reason, Reason::NoAllowMatched);

    // A dry-run ALLOW does not rescue an enforced deny.
    let mut dry_allow_all = ns_policy("dry", PolicyAction::Allow, vec![vec![]]);
    dry_allow_all.dry_run = true;
    let enforced = ns_policy("a", PolicyAction::Allow, match_port(1));
    let d = decide(vec![dry_allow_all, enforced], &c);
    assert!(!d.is_allowed());
    assert_eq!(d.dry_run.unwrap().verdict, Verdict::Allow);
}

#[test]
fn plaintext_allow_by_principal_denies_and_deny_by_not_principal_denies() {
    let allow_mesh = ns_policy(
        "mesh-only",
        PolicyAction::Allow,
        vec![rule(PolicyMatch {
            principals: vec![StringMatch::Presence],
            ..Default::default()
        })],
    );
    assert!(decide(vec![allow_mesh.clone()], &mtls("a", "b")).is_allowed());
    assert!(!decide(vec![allow_mesh], &plaintext()).is_allowed());
    // The STRICT-mTLS shape: DENY when not_principals presence (i.e. no identity).
    let strict = ns_policy(
        "strict",
        PolicyAction::Deny,
        vec![rule(PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        })],
    );
    assert!(decide(vec![strict.clone()], &mtls("a", "b")).is_allowed());
    assert!(!decide(vec![strict], &plaintext()).is_allowed());
}

#[test]
fn ipv4_mapped_connection_addresses_match_ipv4_prefixes() {
    let mut c = mtls("client-ns", "client-sa");
    c.src_ip = "::ffff:10.1.0.5".parse().unwrap();
    let p = ns_policy(
        "a",
        PolicyAction::Allow,
        vec![rule(PolicyMatch {
            source_ips: vec![net("10.1.0.0/16")],
            ..Default::default()
        })],
    );
    assert!(decide(vec![p], &c).is_allowed());
}

#[test]
fn explain_reports_the_deciding_policy_and_the_trace() {
    let mut client = workload("client-ns", "client", "client-sa", [10, 1, 0, 5]);
    client.protocol = TunnelProtocol::Hbone;
    let deny = ns_policy("deny-8080", PolicyAction::Deny, match_port(8080));
    let allow = ns_policy("allow-all", PolicyAction::Allow, vec![vec![]]);
    let mut b = SnapshotBuilder::default();
    b.insert_workload(server());
    b.insert_workload(client);
    b.insert_policy(deny);
    b.insert_policy(allow);
    let s = b.build(1);
    let explain_to = |src: &ExplainSource, dst: &str| {
        explain(&s, "", src, dst.parse().unwrap(), HttpOnlyDeny::Ignore)
    };

    let src = ExplainSource::parse("10.1.0.5").unwrap();
    let e = explain_to(&src, "10.0.0.1:8080").unwrap();
    assert_eq!(e.decision.outcome.verdict, Verdict::Deny);
    assert_eq!(e.decision.outcome.policy.as_deref(), Some("app/deny-8080"));
    assert_eq!(
        e.connection
            .src_identity
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("spiffe://cluster.local/ns/client-ns/sa/client-sa")
    );
    let trace: Vec<(&str, Option<usize>)> = e
        .policies
        .iter()
        .map(|t| (&*t.policy, t.matched_rule))
        .collect();
    assert_eq!(
        trace,
        vec![("app/allow-all", Some(0)), ("app/deny-8080", Some(0))]
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["decision"]["verdict"], "Deny");
    assert_eq!(json["decision"]["reason"], "deny_matched");
    assert_eq!(json["decision"]["policy"], "app/deny-8080");

    let e = explain_to(&src, "10.0.0.1:9090").unwrap();
    assert_eq!(e.decision.outcome.reason, Reason::AllowMatched);

    // Identity only: the IP comes from the workload with that identity.
    let src = ExplainSource::parse("spiffe://cluster.local/ns/client-ns/sa/client-sa").unwrap();
    let e = explain_to(&src, "10.0.0.1:9090").unwrap();
    assert_eq!(e.connection.src_ip, IpAddr::from([10, 1, 0, 5]));

    // Unknown IP: plaintext.
    let src = ExplainSource::parse("192.168.0.1").unwrap();
    let e = explain_to(&src, "10.0.0.1:9090").unwrap();
    assert_eq!(e.connection.src_identity, None);
    assert!(!e.notes.is_empty());

    let err = explain_to(&src, "10.9.9.9:80").unwrap_err();
    assert_eq!(
        err,
        ExplainError::UnknownDestination(IpAddr::from([10, 9, 9, 9]))
    );
    assert!(ExplainSource::parse("bogus").is_err());
    assert!(ExplainSource::parse("").is_err());
}

/// hardening.md P7: PeerAuthentication as istiod converts it for ztun (a DENY whose rule ANDs
/// "no principal" with the port condition), against a reference evaluator over random port
/// sets and connections. STRICT with port-level PERMISSIVE exceptions: plaintext passes only
/// on an exception port. PERMISSIVE with port-level STRICT: plaintext fails only on those
/// ports. mTLS always passes.
#[test]
fn converted_peer_authentication_matches_a_reference_evaluator() {
    let mut rng = crate::testkit::rng::Xorshift::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next_u64();
    let ports: Vec<u16> = (8000..8012).collect();
    for case in 0..400 {
        let strict_workload = next() % 2 == 0;
        let listed: Vec<u16> = ports.iter().copied().filter(|_| next() % 3 == 0).collect();
        let no_identity = PolicyMatch {
            not_principals: vec![StringMatch::Presence],
            ..Default::default()
        };
        let port_clause = if strict_workload {
            PolicyMatch {
                not_destination_ports: listed.clone(),
                ..Default::default()
            }
        } else {
            PolicyMatch {
                destination_ports: listed.clone(),
                ..Default::default()
            }
        };
        // Without port-level modes istiod sends the plain shapes: STRICT is "no principal"
        // alone, PERMISSIVE no policy at all.
        let clauses = match (strict_workload, listed.is_empty()) {
            (true, true) => Some(vec![vec![no_identity]]),
            (false, true) => None,
            _ => Some(vec![vec![no_identity], vec![port_clause]]),
        };
        let policies: Vec<Policy> = clauses
            .into_iter()
            .map(|rule| {
                ns_policy(
                    "converted_peer_authentication_p",
                    PolicyAction::Deny,
                    vec![rule],
                )
            })
            .collect();
        for _ in 0..8 {
            let port = ports[(next() % ports.len() as u64) as usize];
            let mtls_conn = next() % 2 == 0;
            let mut conn = if mtls_conn {
                mtls("client-ns", "client-sa")
            } else {
                plaintext()
            };
            conn.dst_port = port;
            let expected = mtls_conn
                || if strict_workload {
                    listed.contains(&port)
                } else {
                    !listed.contains(&port)
                };
            assert_eq!(
                decide(policies.clone(), &conn).is_allowed(),
                expected,
                "case {case}: strict={strict_workload} listed={listed:?} port={port} \
                 mtls={mtls_conn}"
            );
        }
    }
}

/// hardening.md P8: service-account names with dots and regex metacharacters match
/// literally, in principals and in service-account matches.
#[test]
fn service_account_names_with_metacharacters_match_literally() {
    let odd = "a.b*c+[d]$";
    let conn = mtls("ns.x", odd);
    let allow = |m: PolicyMatch| ns_policy("p", PolicyAction::Allow, vec![rule(m)]);
    let principal = |s: &str| PolicyMatch {
        principals: vec![exact(s)],
        ..Default::default()
    };
    assert!(decide(
        vec![allow(principal("cluster.local/ns/ns.x/sa/a.b*c+[d]$"))],
        &conn
    )
    .is_allowed());
    for near in [
        "cluster.local/ns/ns.x/sa/aXb*c+[d]$",
        "cluster.local/ns/nsXx/sa/a.b*c+[d]$",
        "cluster.local/ns/ns.x/sa/a.bbbc+[d]$",
        "cluster.local/ns/ns.x/sa/a.b*c+d",
        "cluster.local/ns/ns.x/sa/.*",
    ] {
        assert!(
            !decide(vec![allow(principal(near))], &conn).is_allowed(),
            "{near} matched {odd}"
        );
    }
    let by_sa = |ns: &str, name: &str| PolicyMatch {
        service_accounts: vec![sa(ns, name)],
        ..Default::default()
    };
    assert!(decide(vec![allow(by_sa("ns.x", odd))], &conn).is_allowed());
    assert!(!decide(vec![allow(by_sa("ns.x", "a.b.c+[d]$"))], &conn).is_allowed());
    assert!(!decide(vec![allow(by_sa("ns?x", odd))], &conn).is_allowed());
    let prefix = PolicyMatch {
        principals: vec![StringMatch::Prefix("cluster.local/ns/ns.x/sa/a.*".into())],
        ..Default::default()
    };
    assert!(!decide(vec![allow(prefix)], &conn).is_allowed());
}

/// istiod renders a DENY rule that names only HTTP attributes (`to: [{operation: {methods:
/// [POST]}}]`) as a clause of one empty match group. Istio: the rule never matches at L4, the
/// connection falls through to the ALLOW policies. With `Enforce`, the DENY applies to what its
/// L4 conditions select; ALLOW policies are unaffected by the mode.
#[test]
fn empty_match_groups_follow_the_http_only_deny_mode() {
    let http_only = || vec![PolicyMatch::default()];
    // Each rule ANDed with an HTTP-only clause.
    let and_http_only = |mut rules: Vec<PolicyRule>| {
        for r in &mut rules {
            r.push(http_only());
        }
        rules
    };
    // DENY { to: [{ports: [8080], methods: [POST]}] } becomes, at L4: clause ports=8080 AND
    // clause <empty> (the HTTP part).
    let deny = ns_policy(
        "deny-post",
        PolicyAction::Deny,
        and_http_only(match_port(8080)),
    );
    let deny_other_port = ns_policy(
        "deny-post-9090",
        PolicyAction::Deny,
        and_http_only(match_port(9090)),
    );
    assert_eq!(
        deny.rules,
        vec![vec![
            vec![PolicyMatch {
                destination_ports: vec![8080],
                ..Default::default()
            }],
            http_only()
        ]]
    );
    let allow_http = ns_policy("allow-get", PolicyAction::Allow, vec![vec![http_only()]]);
    let c = mtls("client-ns", "client-sa");
    let (s, w) = snap(vec![deny.clone(), deny_other_port.clone()], server());
    let ignore = authorize(&s, &c, &w, HttpOnlyDeny::Ignore);
    assert_eq!(ignore.outcome.reason, Reason::NoAllowPolicy, "{ignore:?}");
    let enforce = authorize(&s, &c, &w, HttpOnlyDeny::Enforce);
    assert_eq!(enforce.outcome.reason, Reason::DenyMatched, "{enforce:?}");
    assert_eq!(enforce.outcome.policy.as_deref(), Some("app/deny-post"));
    // The L4 part still has to hold: port 9090's rule does not deny 8080 in either mode.
    let (s, w) = snap(vec![deny_other_port], server());
    assert!(authorize(&s, &c, &w, HttpOnlyDeny::Enforce).is_allowed());
    // An ALLOW whose only rule is HTTP-only allows nothing at L4, in both modes.
    let (s, w) = snap(vec![allow_http], server());
    for mode in [HttpOnlyDeny::Ignore, HttpOnlyDeny::Enforce] {
        let d = authorize(&s, &c, &w, mode);
        assert_eq!(d.outcome.reason, Reason::NoAllowMatched, "{mode:?}: {d:?}");
    }
}

#[test]
fn unmatchable_rules_are_the_ones_with_an_all_empty_clause() {
    let port = PolicyMatch {
        destination_ports: vec![80],
        ..Default::default()
    };
    let empty = PolicyMatch::default;
    let p = ns_policy(
        "p",
        PolicyAction::Deny,
        vec![
            vec![vec![port.clone()]],                // 0: L4 only
            vec![vec![empty()]],                     // 1: HTTP only
            vec![vec![port.clone()], vec![empty()]], // 2: L4 AND HTTP
            vec![vec![empty(), port.clone()]],       // 3: HTTP OR L4: L4 can match
            vec![vec![]],                            // 4: empty clause matches
            vec![],                                  // 5: empty rule matches
        ],
    );
    assert_eq!(p.unmatchable_rules().collect::<Vec<_>>(), vec![1, 2]);
    let (s, _) = snap(vec![p], server());
    let src = ExplainSource::parse("10.1.0.5").unwrap();
    let e = explain(
        &s,
        "",
        &src,
        "10.0.0.1:8080".parse().unwrap(),
        HttpOnlyDeny::Ignore,
    )
    .unwrap();
    assert_eq!(e.policies[0].unmatchable_rules, vec![1, 2]);
    let e = explain(
        &s,
        "",
        &src,
        "10.0.0.1:8080".parse().unwrap(),
        HttpOnlyDeny::Enforce,
    )
    .unwrap();
    assert!(e.policies[0].unmatchable_rules.is_empty());
}
