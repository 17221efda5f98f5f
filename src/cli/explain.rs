//! `ztun ctl explain`: the admin API's `/explain` answer, rendered for people.

use serde_json::Value;

use super::table::Table;

/// Renders an explanation: the verdict line, the deciding policy and rule, the dry-run
/// outcome if any, the applicable policies in evaluation order, and the assumptions made.
pub(super) fn render(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let reason = |v: &Value| s(v).to_ascii_lowercase();
    let conn = &v["connection"];
    let d = &v["decision"];
    let mut out = String::new();
    let src_who = [&conn["srcIdentity"], &v["sourceWorkload"]]
        .into_iter()
        .filter(|x| !x.is_null())
        .map(s)
        .collect::<Vec<_>>();
    let src_who = if src_who.is_empty() {
        "plaintext".to_string()
    } else {
        src_who.join(", ")
    };
    // An IPv6 destination is bracketed, as socket addresses print (`[fd00::1]:8080`).
    let dst_ip = s(&conn["dstIp"]);
    let dst_host = match dst_ip.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{dst_ip}]"),
        Err(_) => dst_ip,
    };
    out.push_str(&format!(
        "{}  {} ({src_who}) -> {dst_host}:{} ({})\n",
        s(&d["verdict"]).to_ascii_uppercase(),
        s(&conn["srcIp"]),
        s(&conn["dstPort"]),
        s(&v["destinationWorkload"]),
    ));
    out.push_str(&format!(
        "reason: {}  policy: {}  rule: {}\n",
        reason(&d["reason"]),
        s(&d["policy"]),
        s(&d["rule"]),
    ));
    let dry = &d["dryRun"];
    if !dry.is_null() {
        out.push_str(&format!(
            "dry-run policies enforced would give: {} ({})  policy: {}  rule: {}\n",
            s(&dry["verdict"]).to_ascii_uppercase(),
            reason(&dry["reason"]),
            s(&dry["policy"]),
            s(&dry["rule"]),
        ));
    }
    let policies = v["policies"].as_array().cloned().unwrap_or_default();
    if policies.is_empty() {
        out.push_str("no policy applies\n");
    } else {
        let mut t = Table::new(&[
            "POLICY",
            "SCOPE",
            "ACTION",
            "DRY-RUN",
            "MATCHED RULE",
            "L4-UNMATCHABLE RULES",
        ]);
        for p in &policies {
            let unmatchable = p["unmatchableRules"]
                .as_array()
                .map(|rules| rules.iter().map(s).collect::<Vec<_>>().join(","))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "-".into());
            t.row(vec![
                s(&p["policy"]),
                s(&p["scope"]),
                s(&p["action"]),
                s(&p["dryRun"]),
                s(&p["matchedRule"]),
                unmatchable,
            ]);
        }
        out.push_str(&t.render());
        if policies.iter().any(|p| p["unmatchableRules"].is_array()) {
            out.push_str(
                "L4-unmatchable rules name only HTTP attributes (methods, paths, request \
                 principals, headers): ztun, like ztunnel, cannot evaluate them and skips them\n",
            );
        }
    }
    for note in v["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("note: {}\n", s(note)));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render;

    #[test]
    fn renders_the_decision_and_the_trace() {
        let v = json!({
            "connection": {"srcIp": "10.0.1.11", "srcIdentity": "spiffe://cluster.local/ns/a/sa/b", "dstIp": "10.0.2.11", "dstPort": 8080},
            "sourceWorkload": "a/client",
            "destinationWorkload": "default/server",
            "decision": {"verdict": "Deny", "reason": "deny_matched", "policy": "default/deny", "rule": 0,
                         "dryRun": {"verdict": "Allow", "reason": "allow_matched", "policy": "default/dry", "rule": 1}},
            "policies": [{"policy": "default/deny", "scope": "Namespace", "action": "Deny", "dryRun": false, "matchedRule": 0}],
            "notes": ["source identity taken from the mesh workload at the source IP"],
        });
        let out = render(&v);
        assert!(out.starts_with("DENY  10.0.1.11 (spiffe://cluster.local/ns/a/sa/b, a/client) -> 10.0.2.11:8080 (default/server)\n"), "{out}");
        assert!(
            out.contains("reason: deny_matched  policy: default/deny  rule: 0"),
            "{out}"
        );
        assert!(
            out.contains("would give: ALLOW (allow_matched)  policy: default/dry  rule: 1"),
            "{out}"
        );
        assert!(
            out.contains("default/deny  Namespace  Deny    false    0"),
            "{out}"
        );
        assert!(out.contains("note: source identity"), "{out}");
    }

    #[test]
    fn brackets_an_ipv6_destination() {
        let v = json!({
            "connection": {"srcIp": "fd00:0:1::11", "srcIdentity": null, "dstIp": "fd00:0:2::11", "dstPort": 8080},
            "destinationWorkload": "default/server",
            "decision": {"verdict": "Allow", "reason": "no_allow_policy", "policy": null, "rule": null, "dryRun": null},
            "policies": [],
            "notes": [],
        });
        let out = render(&v);
        assert!(
            out.starts_with(
                "ALLOW  fd00:0:1::11 (plaintext) -> [fd00:0:2::11]:8080 (default/server)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn marks_rules_that_never_match_at_l4() {
        let v = json!({
            "connection": {"srcIp": "10.0.1.11", "srcIdentity": null, "dstIp": "10.0.2.11", "dstPort": 8080},
            "destinationWorkload": "default/server",
            "decision": {"verdict": "Allow", "reason": "no_allow_policy", "policy": null, "rule": null, "dryRun": null},
            "policies": [
                {"policy": "default/mixed", "scope": "Namespace", "action": "Deny", "dryRun": false, "matchedRule": null, "unmatchableRules": [0, 2]},
                {"policy": "default/l4", "scope": "Namespace", "action": "Deny", "dryRun": false, "matchedRule": null},
            ],
            "notes": [],
        });
        let out = render(&v);
        let row = |p: &str| {
            out.lines()
                .find(|l| l.starts_with(p))
                .unwrap()
                .trim_end()
                .to_owned()
        };
        assert!(row("default/mixed").ends_with(" 0,2"), "{out}");
        assert!(row("default/l4").ends_with(" -"), "{out}");
        assert!(out.contains("cannot evaluate them and skips them"), "{out}");
    }
}
