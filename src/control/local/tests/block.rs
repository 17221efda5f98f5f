//! The streaming block reader against the full loader: what it reads, it reads the same;
//! what it declines, the full loader reads (or rejects) as before.

use super::*;

/// Asserts the block reader reads `yaml` (`taken`) or declines it, and that whatever it
/// reads equals the full loader's result.
#[track_caller]
fn check(yaml: &str, taken: bool) {
    let block = parse_block(yaml);
    let full = parse_loaded(yaml);
    assert_eq!(
        block.is_some(),
        taken,
        "block reader taken?\n{yaml}\nfull: {full:?}"
    );
    if let Some(block) = block {
        assert_eq!(
            Some(block),
            full.ok(),
            "the two readers disagree on\n{yaml}"
        );
    }
}

#[test]
fn block_reader_reads_plain_documents_as_the_full_loader_does() {
    check(EXAMPLE, true);
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    crate::testkit::state_bench::write_mesh(&mesh, 50).unwrap();
    check(&std::fs::read_to_string(&mesh).unwrap(), true);
    let documents = [
        "",
        "# only a comment\n",
        "---\nworkloads: []\n",
        "workloads:\n",
        "policies: []\nservices: []\nworkloads: []",
        // Comments and blank lines everywhere, keys with spaces before the colon.
        "# head\nworkloads: # the pods\n\n  # first\n  - uid: u1 # trailing\n    name : a\n\n    \
         namespace: 'n''s'   \n    workloadIps:\n    - 10.0.0.1\n    - \"::1\"\n# tail\n",
        // Empty values: an empty string, a null option, an empty list and map.
        "workloads:\n- uid: u1\n  name:\n  namespace: ns\n  workloadIps:\n  services:\n  \
         waypoint:\n  applicationTunnel: ~\n",
        // A sequence at its key's column, a deeper one, a compact nested one.
        "workloads:\n  - uid: u1\n    namespace: ns\n    workloadIps: []\n    authorizationPolicies:\n    \
         - ns/p\n",
        "policies:\n- name: p\n  namespace: ns\n  scope: Global\n  action: Deny\n  rules:\n  - - \
         - principals: [{Exact: a}, {Prefix: \"b\"}, {Presence: []}]\n      - namespaces:\n        \
         - {Suffix: c}\n    - - notDestinationPorts: [1, 65535]\n  dryRun: true\n",
        // Flow mappings and sequences, nested, with quoted and plain values.
        "services:\n- {name: s, namespace: ns, hostname: h, ports: {80: 8080, 443: 8443}, \
         vips: [\"/10.1.0.1\", net/fd00::1], loadBalancer: {routingPreferences: [Network, Zone]}}\n",
        // Plain scalars with characters that only look special.
        "workloads:\n- uid: a#b,c]d{e}f:g\n  name: x - y\n  namespace: n:s\n  workloadIps: []\n  \
         hostname: a  b\n",
    ];
    for yaml in documents {
        check(yaml, true);
    }
}

#[test]
fn block_reader_declines_what_it_does_not_handle_and_the_full_loader_reads_it() {
    let documents = [
        // Anchors and aliases.
        "workloads:\n- &w {uid: u1, namespace: ns, workloadIps: []}\nservices:\n- name: s\n  \
         namespace: ns\n  hostname: h\n  endpoints: {e: {workloadUid: u1}}\n",
        "workloads:\n- uid: u1\n  namespace: &ns ns\n  workloadIps: []\n- uid: u2\n  \
         namespace: *ns\n  workloadIps: []\n",
        // Tags.
        "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: [[[{principals: \
         [!Exact a]}]]]}\n",
        // Multi-line and escaped scalars, block scalars.
        "workloads:\n- uid: u1\n  name: a\n    b\n  namespace: ns\n  workloadIps: []\n",
        "workloads:\n- uid: \"u\\u0031\"\n  namespace: ns\n  workloadIps: []\n",
        "workloads:\n- uid: |\n    u1\n  namespace: ns\n  workloadIps: []\n",
        "workloads: [{uid: u1, namespace: ns,\n  workloadIps: []}]\n",
        // Spellings the full loader resolves: hexadecimal ports, a `+`.
        "services:\n- {name: s, namespace: ns, hostname: h, ports: {0x50: +8080}}\n",
        // Tabs, carriage returns and non-ASCII text.
        "workloads:\n- uid: u1\n  namespace:\tns\n  workloadIps: []\n",
        "workloads:\r\n- uid: u1\r\n  namespace: ns\r\n  workloadIps: []\r\n",
        "workloads:\n- uid: u1\n  name: caf\u{e9}\n  namespace: ns\n  workloadIps: []\n",
        // An explicit document end.
        "workloads: []\n...\n",
    ];
    for yaml in documents {
        check(yaml, false);
        parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    }
    // An alias still resolves.
    let aliased = parse(documents[1]).unwrap();
    assert_eq!(aliased.workloads[1].namespace.as_ref(), "ns");
}

#[test]
fn invalid_documents_are_reported_by_the_full_loader() {
    let documents = [
        "workloads:\n- uid: u1\n  namespace: ns\n  workloadIps: []\n  bogus: 1\n",
        "workloads:\n- uid: u1\n  namespace: ns\n  workloadIps: [\"10.0.0.300\"]\n",
        "workloads:\n- uid: u1\n  namespace: ns\n workloadIps: []\n",
        "workloads: []\n---\nservices: []\n",
        "services:\n- {name: s, namespace: ns, hostname: h, ports: {80: 65536}}\n",
        "workloads:\n- uid: u1\n  namespace: ns: x\n  workloadIps: []\n",
        // Merge keys: the full loader does not merge into typed entries (nor does ztunnel's
        // serde_yaml); `<<` is an unknown field there, and stays one.
        "workloads:\n- &base {uid: u1, namespace: ns, workloadIps: []}\n- <<: *base\n  uid: u2\n",
        "workloads:\n- uid: u1\n  <<: {namespace: ns}\n  workloadIps: []\n",
    ];
    for yaml in documents {
        check(yaml, false);
        let (via_parse, via_loader) = (parse(yaml).unwrap_err(), parse_loaded(yaml).unwrap_err());
        assert_eq!(via_parse.to_string(), via_loader.to_string());
        assert_eq!(via_parse.location(), via_loader.location());
    }
}

/// Every small edit of the example (a byte dropped, or a space, colon, dash, hash, quote or
/// line break inserted) either is declined or reads as the full loader reads it.
#[test]
fn edited_documents_read_the_same_or_are_declined() {
    let mut taken = 0;
    for at in 0..EXAMPLE.len() {
        let mut edits = vec![format!("{}{}", &EXAMPLE[..at], &EXAMPLE[at + 1..])];
        for c in [" ", ":", "-", "#", "'", "\n", "["] {
            edits.push(format!("{}{c}{}", &EXAMPLE[..at], &EXAMPLE[at..]));
        }
        for yaml in edits {
            let block = parse_block(&yaml);
            if let Some(block) = block {
                taken += 1;
                assert_eq!(Some(block), parse_loaded(&yaml).ok(), "disagree on\n{yaml}");
            }
        }
    }
    // The edits that keep the document valid and plain are read by the block reader.
    assert!(taken > 1000, "{taken}");
}
