//! The conformance corpus (`tests/conformance/authorization.yaml`, format in its README):
//! istiod's real `istio.security.Authorization` output for AuthorizationPolicy and
//! PeerAuthentication objects. Every case goes through the real delta-xDS client (scripted
//! server, real TLS; every response must be ACKed) and through the local-file loader
//! (ztunnel's YAML format). Then the case's table of connections is checked with
//! `authz::authorize` under both `HttpOnlyDeny` modes.
//!
//! Reaching into `dataplane` and `control::local` from here is deliberate: the test covers
//! the whole path from what istiod sends to the verdict. Mismatches are collected and
//! reported together, so one run shows every disagreement.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::{
    address_resource, connected_client, report, resource, state_where, Conn as AdsConn,
};
use crate::authz::{authorize, Conn, HttpOnlyDeny, Outcome, Verdict};
use crate::control::xds::proto::istio::{security as sec, workload as wl};
use crate::control::xds::proto::Resource;
use crate::control::xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use crate::controlplane::encode::ip_bytes;
use crate::identity::Identity;
use crate::state::model::Policy;
use crate::state::{self, Reader, Snapshot};

const CORPUS_PATH: &str = "tests/conformance/authorization.yaml";
const CORPUS: &str = include_str!("../../../../tests/conformance/authorization.yaml");
/// The corpus may grow, never shrink below this.
const MIN_CASES: usize = 30;

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Corpus {
    mesh: Mesh,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Mesh {
    trust_domain: String,
    workloads: Vec<MeshWorkload>,
}

/// A destination workload. `labels` only document why a case lists policies for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MeshWorkload {
    name: String,
    namespace: String,
    service_account: String,
    ip: IpAddr,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    about: String,
    /// The Istio objects as applied: documentation only.
    #[allow(dead_code)]
    istio: String,
    #[serde(default)]
    emitted: Vec<Authorization>,
    /// Mesh workload name → its `authorization_policies`.
    #[serde(default)]
    references: BTreeMap<String, Vec<String>>,
    connections: Vec<Connection>,
}

/// `istio.security.Authorization`, ztunnel's field names in camelCase, proto3 defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Authorization {
    name: String,
    namespace: String,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Scope {
    #[default]
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    clauses: Vec<Clause>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Clause {
    #[serde(default)]
    matches: Vec<Match>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct Match {
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    service_accounts: Vec<ServiceAccount>,
    not_service_accounts: Vec<ServiceAccount>,
    source_ips: Vec<Cidr>,
    not_source_ips: Vec<Cidr>,
    destination_ips: Vec<Cidr>,
    not_destination_ips: Vec<Cidr>,
    destination_ports: Vec<u32>,
    not_destination_ports: Vec<u32>,
}

/// One of `{exact: x}`, `{prefix: x}`, `{suffix: x}`, `{presence: {}}`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "StringMatchKeys")]
enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(Empty),
}

/// The protojson `oneof`: exactly one key must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchKeys {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    presence: Option<Empty>,
}

impl TryFrom<StringMatchKeys> for StringMatch {
    type Error = &'static str;

    fn try_from(k: StringMatchKeys) -> Result<Self, Self::Error> {
        match (k.exact, k.prefix, k.suffix, k.presence) {
            (Some(s), None, None, None) => Ok(StringMatch::Exact(s)),
            (None, Some(s), None, None) => Ok(StringMatch::Prefix(s)),
            (None, None, Some(s), None) => Ok(StringMatch::Suffix(s)),
            (None, None, None, Some(e)) => Ok(StringMatch::Presence(e)),
            _ => Err("a string match needs exactly one of exact, prefix, suffix, presence"),
        }
    }
}

/// `google.protobuf.Empty`, written `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceAccount {
    namespace: String,
    service_account: String,
}

/// `istio.security.Address` written `ip/len`: the bytes as written (host bits kept).
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Cidr {
    text: String,
    address: IpAddr,
    length: u32,
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ip/len"))?;
        let address: IpAddr = ip.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let length: u32 = len.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if length > max {
            return Err(format!("{text:?}: length above {max}"));
        }
        Ok(Cidr {
            text,
            address,
            length,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Connection {
    from: Peer,
    src_ip: IpAddr,
    to: SocketAddr,
    expect: Expect,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    enforce: Option<Expect>,
    #[serde(default)]
    dry_run: Option<Expect>,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {} -> {}", self.from.text, self.src_ip, self.to)
    }
}

/// A peer: `plaintext`, or an identity with or without `spiffe://`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Peer {
    text: String,
    identity: Option<Identity>,
}

impl TryFrom<String> for Peer {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let identity = match text.as_str() {
            "plaintext" => None,
            t => {
                let uri = match t.starts_with("spiffe://") {
                    true => t.to_owned(),
                    false => format!("spiffe://{t}"),
                };
                Some(Identity::from_str(&uri).map_err(|e| format!("{text:?}: {e}"))?)
            }
        };
        Ok(Peer { text, identity })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

impl Expect {
    fn verdict(self) -> Verdict {
        match self {
            Expect::Allow => Verdict::Allow,
            Expect::Deny => Verdict::Deny,
        }
    }
}

/// Parses and checks the corpus; panics on anything malformed.
fn corpus() -> Corpus {
    let corpus: Corpus =
        serde_yaml_ng::from_str(CORPUS).unwrap_or_else(|e| panic!("{CORPUS_PATH}: {e}"));
    let names: HashSet<&str> = corpus
        .mesh
        .workloads
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    let ips: HashSet<IpAddr> = corpus.mesh.workloads.iter().map(|w| w.ip).collect();
    assert_eq!(
        names.len(),
        corpus.mesh.workloads.len(),
        "{CORPUS_PATH}: duplicate mesh workload name"
    );
    assert_eq!(
        ips.len(),
        corpus.mesh.workloads.len(),
        "{CORPUS_PATH}: duplicate mesh workload IP"
    );
    let mut seen = HashSet::new();
    for case in &corpus.cases {
        let at = format!("{CORPUS_PATH}: case `{}`", case.name);
        assert!(seen.insert(case.name.as_str()), "{at}: duplicate case name");
        for workload in case.references.keys() {
            assert!(
                names.contains(workload.as_str()),
                "{at}: references name no mesh workload {workload:?}"
            );
        }
        let keys: HashSet<String> = case.emitted.iter().map(Authorization::key).collect();
        assert_eq!(
            keys.len(),
            case.emitted.len(),
            "{at}: two emitted policies share a key"
        );
        for c in &case.connections {
            assert!(
                ips.contains(&c.to.ip()),
                "{at}: {c}: no mesh workload has that IP"
            );
        }
    }
    corpus
}

impl MeshWorkload {
    fn uid(&self) -> String {
        format!("Kubernetes//Pod/{}/{}", self.namespace, self.name)
    }

    fn proto(&self, mesh: &Mesh, case: &Case) -> wl::Workload {
        wl::Workload {
            uid: self.uid(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            trust_domain: mesh.trust_domain.clone(),
            service_account: self.service_account.clone(),
            addresses: vec![ip_bytes(self.ip)],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            authorization_policies: case.references_of(&self.name).to_vec(),
            ..Default::default()
        }
    }
}

impl Case {
    fn references_of(&self, workload: &str) -> &[String] {
        self.references
            .get(workload)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

impl Authorization {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn proto(&self) -> sec::Authorization {
        sec::Authorization {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            scope: match self.scope {
                Scope::Global => sec::Scope::Global,
                Scope::Namespace => sec::Scope::Namespace,
                Scope::WorkloadSelector => sec::Scope::WorkloadSelector,
            } as i32,
            action: match self.action {
                Action::Allow => sec::Action::Allow,
                Action::Deny => sec::Action::Deny,
            } as i32,
            rules: self
                .rules
                .iter()
                .map(|r| sec::Rule {
                    clauses: r
                        .clauses
                        .iter()
                        .map(|c| sec::Clause {
                            matches: c.matches.iter().map(Match::proto).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: self.dry_run,
            ..Default::default()
        }
    }
}

impl Match {
    fn proto(&self) -> sec::Match {
        let strings = |l: &[StringMatch]| l.iter().map(StringMatch::proto).collect();
        let accounts = |l: &[ServiceAccount]| {
            l.iter()
                .map(|sa| sec::ServiceAccountMatch {
                    namespace: sa.namespace.clone(),
                    service_account: sa.service_account.clone(),
                })
                .collect()
        };
        let addresses = |l: &[Cidr]| {
            l.iter()
                .map(|c| sec::Address {
                    address: ip_bytes(c.address),
                    length: c.length,
                })
                .collect()
        };
        sec::Match {
            namespaces: strings(&self.namespaces),
            not_namespaces: strings(&self.not_namespaces),
            principals: strings(&self.principals),
            not_principals: strings(&self.not_principals),
            service_accounts: accounts(&self.service_accounts),
            not_service_accounts: accounts(&self.not_service_accounts),
            source_ips: addresses(&self.source_ips),
            not_source_ips: addresses(&self.not_source_ips),
            destination_ips: addresses(&self.destination_ips),
            not_destination_ips: addresses(&self.not_destination_ips),
            destination_ports: self.destination_ports.clone(),
            not_destination_ports: self.not_destination_ports.clone(),
            ..Default::default()
        }
    }
}

impl StringMatch {
    fn proto(&self) -> sec::StringMatch {
        use sec::string_match::MatchType;
        let m = match self {
            StringMatch::Exact(s) => MatchType::Exact(s.clone()),
            StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
            StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
            StringMatch::Presence(Empty {}) => MatchType::Presence(()),
        };
        sec::StringMatch {
            match_type: Some(m),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ztunnel's local file format
// ---------------------------------------------------------------------------------------------

/// The mesh and the case's policies as a ztunnel local config document.
fn local_yaml(mesh: &Mesh, case: &Case) -> String {
    let workloads: Vec<Value> = mesh
        .workloads
        .iter()
        .map(|w| {
            json!({
                "uid": w.uid(),
                "name": w.name,
                "namespace": w.namespace,
                "serviceAccount": w.service_account,
                "trustDomain": mesh.trust_domain,
                "workloadIps": [w.ip.to_string()],
                "protocol": "HBONE",
                "authorizationPolicies": case.references_of(&w.name),
            })
        })
        .collect();
    let policies: Vec<Value> = case
        .emitted
        .iter()
        .map(|p| {
            let rules: Vec<Vec<Vec<Value>>> = p
                .rules
                .iter()
                .map(|r| {
                    r.clauses
                        .iter()
                        .map(|c| c.matches.iter().map(Match::local).collect())
                        .collect()
                })
                .collect();
            json!({
                "name": p.name,
                "namespace": p.namespace,
                "scope": match p.scope {
                    Scope::Global => "Global",
                    Scope::Namespace => "Namespace",
                    Scope::WorkloadSelector => "WorkloadSelector",
                },
                "action": match p.action {
                    Action::Allow => "Allow",
                    Action::Deny => "Deny",
                },
                "dryRun": p.dry_run,
                "rules": rules,
            })
        })
        .collect();
    serde_yaml_ng::to_string(&json!({"workloads": workloads, "policies": policies}))
        .expect("render local YAML")
}

impl Match {
    /// The local-file match object: only the fields present, so `{}` stays `{}`.
    fn local(&self) -> Value {
        let mut out = serde_json::Map::new();
        let mut put = |key: &str, list: Vec<Value>| {
            if !list.is_empty() {
                out.insert(key.to_owned(), Value::Array(list));
            }
        };
        let strings = |l: &[StringMatch]| -> Vec<Value> {
            l.iter()
                .map(|s| match s {
                    StringMatch::Exact(x) => json!({"Exact": x}),
                    StringMatch::Prefix(x) => json!({"Prefix": x}),
                    StringMatch::Suffix(x) => json!({"Suffix": x}),
                    StringMatch::Presence(Empty {}) => json!({"Presence": []}),
                })
                .collect()
        };
        let accounts = |l: &[ServiceAccount]| -> Vec<Value> {
            l.iter()
                .map(|sa| json!({"namespace": sa.namespace, "serviceAccount": sa.service_account}))
                .collect()
        };
        let cidrs = |l: &[Cidr]| -> Vec<Value> { l.iter().map(|c| json!(c.text)).collect() };
        let ports = |l: &[u32]| -> Vec<Value> { l.iter().map(|p| json!(p)).collect() };
        put("namespaces", strings(&self.namespaces));
        put("notNamespaces", strings(&self.not_namespaces));
        put("principals", strings(&self.principals));
        put("notPrincipals", strings(&self.not_principals));
        put("serviceAccounts", accounts(&self.service_accounts));
        put("notServiceAccounts", accounts(&self.not_service_accounts));
        put("sourceIps", cidrs(&self.source_ips));
        put("notSourceIps", cidrs(&self.not_source_ips));
        put("destinationIps", cidrs(&self.destination_ips));
        put("notDestinationIps", cidrs(&self.not_destination_ips));
        put("destinationPorts", ports(&self.destination_ports));
        put("notDestinationPorts", ports(&self.not_destination_ports));
        Value::Object(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Checking verdicts
// ---------------------------------------------------------------------------------------------

/// Evaluates every connection of `case` against `snap`, appending one line per mismatch.
fn check_connections(snap: &Snapshot, case: &Case, failures: &mut Vec<String>) {
    for (n, want) in case.connections.iter().enumerate() {
        let row = format!("case `{}` connection #{} ({want})", case.name, n + 1);
        let Some(dst) = snap.workload_by_ip("", want.to.ip()) else {
            failures.push(format!(
                "{row}: no workload at {} in the state",
                want.to.ip()
            ));
            continue;
        };
        let conn = Conn {
            src_ip: want.src_ip,
            src_identity: want.from.identity.clone(),
            dst_ip: want.to.ip(),
            dst_port: want.to.port(),
        };
        let got = authorize(snap, &conn, dst, HttpOnlyDeny::Ignore);
        let enforced = authorize(snap, &conn, dst, HttpOnlyDeny::Enforce);
        let mut wrong = Vec::new();
        if got.outcome.verdict != want.expect.verdict() {
            wrong.push(format!("want {:?}", want.expect));
        }
        if let Some(reason) = &want.reason {
            if got.outcome.reason.as_str() != reason {
                wrong.push(format!("want reason {reason}"));
            }
        }
        if let Some(policy) = &want.policy {
            if got.outcome.policy.as_deref() != Some(policy.as_str()) {
                wrong.push(format!("want policy {policy}"));
            }
        }
        if let Some(dry) = want.dry_run {
            let got_dry = got.dry_run.as_ref().map(|o| o.verdict);
            if got_dry != Some(dry.verdict()) {
                wrong.push(format!("want dry-run {dry:?}, got dry-run {got_dry:?}"));
            }
        }
        let want_enforced = want.enforce.unwrap_or(want.expect);
        if enforced.outcome.verdict != want_enforced.verdict() {
            wrong.push(format!(
                "with enforce: want {want_enforced:?}, got {}",
                describe(&enforced.outcome)
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{row}: got {}; {}",
                describe(&got.outcome),
                wrong.join("; ")
            ));
        }
    }
}

fn describe(o: &Outcome) -> String {
    let mut s = format!("{:?} ({})", o.verdict, o.reason);
    if let Some(p) = &o.policy {
        s.push_str(&format!(" policy={p}"));
    }
    if let Some(r) = o.rule {
        s.push_str(&format!(" rule={r}"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Sends a `type_url` response for `case` and checks the client ACKs it; records a failure
/// if not.
async fn send_and_expect_ack(
    conn: &mut AdsConn,
    type_url: &str,
    resources: Vec<Resource>,
    removed: &[&str],
    nonce: &str,
    case: &Case,
    failures: &mut Vec<String>,
) -> bool {
    match conn.exchange(type_url, resources, removed, nonce).await {
        Ok(None) => true,
        Ok(Some(message)) => {
            failures.push(format!(
                "case `{}`: {type_url} NACKed (istiod's output must be accepted): {message}",
                case.name
            ));
            false
        }
        Err(e) => {
            failures.push(format!("case `{}`: {e}", case.name));
            false
        }
    }
}

/// Waits until the published state holds exactly the case's policies and references.
async fn state_of_case(reader: &Reader, mesh: &Mesh, case: &Case) -> Result<Arc<Snapshot>, String> {
    let want: BTreeSet<String> = case.emitted.iter().map(Authorization::key).collect();
    state_where(reader, |snap| {
        let have: BTreeSet<String> = snap.policies().map(|p| p.key()).collect();
        let refs_ok = mesh.workloads.iter().all(|w| {
            snap.workload_by_uid(&w.uid()).is_some_and(|got| {
                got.authorization_policies
                    .iter()
                    .map(|k| &**k)
                    .eq(case.references_of(&w.name).iter().map(String::as_str))
            })
        });
        if have == want && refs_ok {
            return Ok(());
        }
        Err(format!(
            "case `{}`: the state never reflected the case (policies {have:?}, want {want:?}; references match: {refs_ok})",
            case.name
        ))
    })
    .await
}

/// Every case through the real delta-xDS client, one case after the other on one stream: the
/// case's policies (and removal of the previous case's), then the mesh with its references.
#[tokio::test]
async fn istiod_corpus_through_xds() {
    let corpus = corpus();
    let (_ads, client, mut conn) = connected_client().await;

    let mut failures = Vec::new();
    let mut checked = 0;
    let mut previous: BTreeSet<String> = BTreeSet::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        let version = format!("case-{i}");
        let keys: BTreeSet<String> = case.emitted.iter().map(Authorization::key).collect();
        let removed: Vec<&str> = previous.difference(&keys).map(String::as_str).collect();
        let policies = case
            .emitted
            .iter()
            .map(|p| {
                resource(
                    AUTHORIZATION_TYPE,
                    &p.key(),
                    &version,
                    p.proto().encode_to_vec(),
                )
            })
            .collect();
        let policies_ok = send_and_expect_ack(
            &mut conn,
            AUTHORIZATION_TYPE,
            policies,
            &removed,
            &format!("{i}-authorization"),
            case,
            &mut failures,
        )
        .await;
        previous = keys;

        let workloads = corpus
            .mesh
            .workloads
            .iter()
            .map(|w| {
                let proto = w.proto(&corpus.mesh, case);
                address_resource(&w.uid(), &version, wl::address::Type::Workload(proto))
            })
            .collect();
        let workloads_ok = send_and_expect_ack(
            &mut conn,
            ADDRESS_TYPE,
            workloads,
            &[],
            &format!("{i}-address"),
            case,
            &mut failures,
        )
        .await;
        if !(policies_ok && workloads_ok) {
            continue;
        }
        match state_of_case(&client.reader, &corpus.mesh, case).await {
            Ok(snap) => {
                check_connections(&snap, case, &mut failures);
                checked += case.connections.len();
            }
            Err(e) => failures.push(e),
        }
    }
    report(
        CORPUS_PATH,
        "xDS",
        &format!("{checked} connections"),
        &failures,
    );
}

/// Every case rendered as ztunnel's local YAML and loaded as ztun loads `LOCAL_XDS_PATH`.
/// The policies must also equal what the xDS translation makes of the same resources.
#[test]
fn istiod_corpus_through_local_file() {
    let corpus = corpus();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &corpus.cases {
        let text = local_yaml(&corpus.mesh, case);
        let config = match crate::control::local::parse(&text) {
            Ok(config) => config,
            Err(e) => {
                failures.push(format!(
                    "case `{}`: local file rejected: {e}\n{text}",
                    case.name
                ));
                continue;
            }
        };
        for p in &case.emitted {
            let via_xds = Policy::try_from(p.proto());
            let via_file = config.policies.iter().find(|l| l.key() == p.key());
            match (via_xds, via_file) {
                (Ok(x), Some(l)) if x == *l => {}
                (x, l) => failures.push(format!(
                    "case `{}`: policy {} differs between xDS and the local file:\n  xDS:  {x:?}\n  file: {l:?}",
                    case.name,
                    p.key()
                )),
            }
        }
        let (writer, reader) = state::new();
        crate::control::local_watch::publish(&writer, config);
        check_connections(&reader.load_full(), case, &mut failures);
        checked += case.connections.len();
    }
    report(
        CORPUS_PATH,
        "the local file",
        &format!("{checked} connections"),
        &failures,
    );
}

/// An empty or one-sided corpus must never pass.
#[test]
fn corpus_is_substantial() {
    let corpus = corpus();
    assert!(
        corpus.cases.len() >= MIN_CASES,
        "{CORPUS_PATH}: {} cases, want at least {MIN_CASES}",
        corpus.cases.len()
    );
    for case in &corpus.cases {
        assert!(
            !case.connections.is_empty(),
            "case `{}` checks no connection",
            case.name
        );
        assert!(
            !case.about.trim().is_empty(),
            "case `{}` has no `about`",
            case.name
        );
    }
    let all: Vec<&Connection> = corpus.cases.iter().flat_map(|c| &c.connections).collect();
    assert!(
        all.iter().any(|c| c.expect == Expect::Allow),
        "no connection expects allow"
    );
    assert!(
        all.iter().any(|c| c.expect == Expect::Deny),
        "no connection expects deny"
    );
    assert!(
        all.iter().any(|c| c.enforce.is_some_and(|e| e != c.expect)),
        "no connection pins ZTUN_L4_DENY_HTTP_RULES=enforce"
    );
    assert!(
        all.iter().any(|c| c.dry_run.is_some()),
        "no connection pins a dry-run verdict"
    );
    let empty_matches = corpus
        .cases
        .iter()
        .flat_map(|c| &c.emitted)
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.clauses)
        .flat_map(|c| &c.matches)
        .any(|m| m.proto() == sec::Match::default());
    assert!(empty_matches, "no case sends an empty match group");
}

/// A typo in the corpus is an error, not a silently ignored key.
#[test]
fn corpus_rejects_unknown_keys() {
    let typo = "mesh: {trustDomain: cluster.local, workloads: []}\n\
                cases:\n\
                - name: x\n  about: y\n  istio: z\n  connections: []\n  emited: []\n";
    let err = serde_yaml_ng::from_str::<Corpus>(typo).unwrap_err();
    assert!(err.to_string().contains("emited"), "{err}");
    let typo = "{destinationPort: [80]}";
    assert!(serde_yaml_ng::from_str::<Match>(typo).is_err());
    for typo in ["{exactly: x}", "{}", "{exact: x, prefix: y}"] {
        assert!(
            serde_yaml_ng::from_str::<StringMatch>(typo).is_err(),
            "{typo}"
        );
    }
}
