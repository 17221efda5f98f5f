//! Rejected documents: every error class, with where it is reported.

use super::*;

/// Parses a document that must fail in the YAML step, returning (message, line).
fn yaml_error(yaml: &str) -> (String, usize) {
    match parse(yaml) {
        Err(err @ LocalConfigError::Yaml(_)) => {
            let (line, _column) = err.location().expect("YAML errors carry a location");
            (err.to_string(), line)
        }
        other => panic!("expected a YAML error, got {other:?}\n{yaml}"),
    }
}

fn policy_with_match(m: &str) -> String {
    format!(
        "policies:\n- {{name: p, namespace: ns, scope: Global, action: Deny, rules: [[[{m}]]]}}\n"
    )
}

#[test]
fn semantic_errors_name_entry_and_field() {
    // Entry `x` comes first; entry `y` shows the error is about the right one.
    let w = |body: &str| {
        format!(
            "workloads:\n- {{uid: x, namespace: ns, workloadIps: [], {body}}}\n\
             - {{uid: y, namespace: ns, workloadIps: []}}\n"
        )
    };
    let s =
        |body: &str| format!("services:\n- {{name: s, namespace: ns, hostname: h.ex, {body}}}\n");
    let wx = r#"workloads[0] (uid "x")"#;
    let s0 = "services[0] (ns/h.ex)";
    let name = |s: &str| Problem::NotANamespacedName(s.into());
    let gateway = |s: &str| Problem::NotAGatewayDestination(s.into());
    let cases: Vec<(String, &str, &str, Problem)> = vec![
        (
            "workloads:\n- {uid: a, namespace: ns, workloadIps: []}\n\
             - {uid: b, namespace: ns, workloadIps: []}\n\
             - {uid: x, namespace: ns, workloadIps: [\"10.0.0.1\", \"10.0.0.300\"]}\n"
                .into(),
            r#"workloads[2] (uid "x")"#,
            "workloadIps[1]",
            Problem::NotAnIp("10.0.0.300".into()),
        ),
        (
            "workloads:\n- {name: w, namespace: \"\", workloadIps: []}\n".into(),
            "workloads[0]",
            "namespace",
            Problem::Empty,
        ),
        (
            "workloads:\n- {namespace: ns, workloadIps: []}\n".into(),
            "workloads[0]",
            "name",
            Problem::Empty,
        ),
        (w("capacity: 0"), wx, "capacity", Problem::Zero),
        (
            w("services: {example.com: {80: 80}}"),
            wx,
            r#"services["example.com"]"#,
            name("example.com"),
        ),
        (
            w("authorizationPolicies: [p1]"),
            wx,
            "authorizationPolicies[0]",
            name("p1"),
        ),
        (
            w("waypoint: {destination: nowhere}"),
            wx,
            "waypoint.destination",
            gateway("nowhere"),
        ),
        (
            w("networkGateway: {destination: \"/\"}"),
            wx,
            "networkGateway.destination",
            gateway("/"),
        ),
        (
            "workloads:\n- {uid: x, namespace: ns, workloadIps: []}\n\
             - {uid: x, namespace: ns, workloadIps: []}\n"
                .into(),
            r#"workloads[1] (uid "x")"#,
            "uid",
            Problem::Duplicate("x".into()),
        ),
        (
            s("vips: [\"10.0.0.1\"]"),
            s0,
            "vips[0]",
            Problem::NotANetworkAddress("10.0.0.1".into()),
        ),
        (
            s("vips: [\"/10.0.0.x\"]"),
            s0,
            "vips[0]",
            Problem::NotANetworkAddress("/10.0.0.x".into()),
        ),
        (
            s("cidrVips: [{cidr: \"10.0.0.0/33\"}]"),
            s0,
            "cidrVips[0].cidr",
            Problem::PrefixTooLong {
                value: "10.0.0.0/33".into(),
                max: 32,
            },
        ),
        (
            s("weightedWaypoints: [{destination: {destination: x}}]"),
            s0,
            "weightedWaypoints[0].destination.destination",
            gateway("x"),
        ),
        (
            "services:\n- {name: s, namespace: ns, hostname: \"\"}\n".into(),
            "services[0] (ns/)",
            "hostname",
            Problem::Empty,
        ),
        (
            "services:\n- {name: s, namespace: ns, hostname: h}\n\
             - {name: t, namespace: ns, hostname: h}\n"
                .into(),
            "services[1] (ns/h)",
            "hostname",
            Problem::Duplicate("ns/h".into()),
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow}\n\
             - {name: p, namespace: ns, scope: Global, action: Deny}\n"
                .into(),
            "policies[1] (ns/p)",
            "name",
            Problem::Duplicate("ns/p".into()),
        ),
        (
            "policies:\n- {name: \"\", namespace: ns, scope: Global, action: Allow}\n".into(),
            "policies[0] (ns/)",
            "name",
            Problem::Empty,
        ),
    ];
    for (yaml, entry, field, problem) in cases {
        assert_eq!(
            invalid(&yaml),
            (entry.to_owned(), field.to_owned(), problem),
            "{yaml}"
        );
    }
    let err = parse("workloads:\n- {uid: x, namespace: ns, workloadIps: [\"10.0.0.300\"]}\n")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"local config: workloads[0] (uid "x"): workloadIps[0] "10.0.0.300" is not an IP address"#
    );
    assert_eq!(err.location(), None);
}

#[test]
fn policies_never_widen() {
    let cidr = |s: &str| Problem::NotACidr(s.into());
    let too_long = |s: &str, max| Problem::PrefixTooLong {
        value: s.into(),
        max,
    };
    let cases: &[(&str, &str, Problem)] = &[
        (
            r#"{sourceIps: ["10.0.0.0/8", "bogus"]}"#,
            "sourceIps[1]",
            cidr("bogus"),
        ),
        (
            r#"{notSourceIps: ["10.0.0.0/"]}"#,
            "notSourceIps[0]",
            cidr("10.0.0.0/"),
        ),
        (
            r#"{destinationIps: ["fd00::/129"]}"#,
            "destinationIps[0]",
            too_long("fd00::/129", 128),
        ),
        (
            r#"{notDestinationIps: ["1.2.3.4/-1"]}"#,
            "notDestinationIps[0]",
            cidr("1.2.3.4/-1"),
        ),
        (
            r#"{serviceAccounts: [{namespace: "", serviceAccount: sa}]}"#,
            "serviceAccounts[0].namespace",
            Problem::Empty,
        ),
        (
            r#"{notServiceAccounts: [{namespace: ns, serviceAccount: ""}]}"#,
            "notServiceAccounts[0].serviceAccount",
            Problem::Empty,
        ),
    ];
    for (m, field, problem) in cases {
        let want = (
            "policies[0] (ns/p)".to_owned(),
            format!("rules[0][0][0].{field}"),
            problem.clone(),
        );
        assert_eq!(invalid(&policy_with_match(m)), want, "{m}");
    }
}

#[test]
fn yaml_errors_report_their_location() {
    // Policy rules sit on line 6 of this document.
    let rules = |m: &str| {
        format!(
            "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Allow\n  \
             rules: [[[{m}]]]\n"
        )
    };
    let cases: Vec<(String, usize, &str)> =
        vec![
        // Unknown keys, at every level.
        (
            "workloads:\n- name: w\n  namespace: ns\n  workloadIps: []\n  workloadIp: 10.0.0.1\n"
                .into(),
            5,
            "unknown field `workloadIp`",
        ),
        (
            "services:\n- name: s\n  namespace: ns\n  hostname: h\n  \
             loadBalancer: {mode: Strict, extra: 1}\n"
                .into(),
            5,
            "unknown field `extra`",
        ),
        (rules(r#"{sourceIp: ["1.2.3.4"]}"#), 6, "unknown field `sourceIp`"),
        ("workload: []\n".into(), 1, "unknown field `workload`"),
        // A string match with no variant, an unknown one, or an argument to Presence.
        (rules("{principals: [{}]}"), 6, "principals[0]: invalid length 0"),
        (rules("{principals: [{Regex: a.*}]}"), 6, "unknown variant `Regex`"),
        (rules("{principals: [{Exact: a, Prefix: b}]}"), 6, "principals[0]: invalid length 2"),
        (rules("{principals: [{Presence: [x]}]}"), 6, "principals[0].Presence"),
        // Ports out of range.
        (rules("{destinationPorts: [70000]}"), 6, "70000"),
        (
            "workloads:\n- name: w\n  namespace: ns\n  workloadIps: []\n  services:\n    \
             ns/s: {80: 65536}\n"
                .into(),
            6,
            "65536",
        ),
        // Missing required keys and wrong types.
        ("workloads:\n- name: w\n  workloadIps: []\n".into(), 2, "missing field `namespace`"),
        (
            "services:\n- name: s\n  namespace: ns\n  hostname: h\n  vips: 10.0.0.1\n".into(),
            5,
            "vips",
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global}\n".into(),
            2,
            "missing field `action`",
        ),
        // Plain syntax errors.
        ("workloads:\n\t- name: w\n".into(), 2, ""),
        (
            "workloads: [\n  {name: a, namespace: ns, workloadIps: []},\n  - b\n]\n".into(),
            3,
            "",
        ),
    ];
    for (yaml, line, fragment) in &cases {
        let (message, at) = yaml_error(yaml);
        assert_eq!(at, *line, "{message}\n{yaml}");
        assert!(
            message.contains(fragment),
            "{message:?} should mention {fragment:?}"
        );
    }
    let (message, _) = yaml_error(&cases[0].0);
    assert!(
        message.starts_with("local config: workloads[0]: unknown field `workloadIp`"),
        "{message}"
    );
    assert!(message.ends_with("at line 5 column 3"), "{message}");
}
