//! L4 authorization: who may open a connection to a local workload.
//!
//! [`authorize`] is a pure, synchronous function over a state snapshot with Istio's semantics
//! (compat.md §1.10):
//!
//! - Applicable policies: GLOBAL ones (everywhere), NAMESPACE ones of the destination's
//!   namespace, and the WORKLOAD_SELECTOR ones the destination workload lists.
//! - A listed policy that is not in the snapshot (not delivered yet, or removed) denies: ztun
//!   fails closed where ztunnel skips it.
//! - Dry-run policies never change the verdict; their would-be effect is reported in
//!   [`Decision::dry_run`] for the logs.
//! - Any matching DENY denies. No ALLOW policy allows. Any matching ALLOW allows. Otherwise
//!   deny.
//! - Policy = OR of rules (none: never matches); rule = AND of clauses (none: matches);
//!   clause = OR of matches; a match with no condition is skipped (never matches); within a
//!   match every present field must hold (positive list: any element, `not_` list: none).
//! - Empty match groups are how istiod renders conditions L4 cannot see (HTTP methods, paths,
//!   request principals, request headers). With [`HttpOnlyDeny::Ignore`] (Istio's semantics,
//!   the default) a rule with such a clause never matches; with [`HttpOnlyDeny::Enforce`] an
//!   empty group matches in DENY policies, so the rule denies what its L4 conditions select,
//!   as Istio's sidecars did for TCP.
//! - A plaintext connection has no identity: its namespace is the empty string, positive
//!   principal and service-account conditions never hold (so negative ones always do).
//!   Principals are compared without `spiffe://`.
//!
//! The data plane authorizes with it (and keeps live connections re-evaluated:
//! `dataplane::enforce`); the admin API's [`explain`] answers "why" for operators from the
//! same evaluation.
//!
//! Allowed imports: `state`, `identity`, `config`.

pub mod explain;
pub mod metrics;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::config::HttpOnlyDeny;
use crate::identity::Identity;
use crate::state::model::{
    IpNet, Policy, PolicyAction, PolicyMatch, ServiceAccountMatch, StringMatch, Strng, Workload,
};
use crate::state::{canonical_ip, Snapshot};

pub use explain::{explain, ExplainError, ExplainSource, Explanation, PolicyTrace};

/// The rules of `p` that can never match at L4 under `mode`: those with a clause made only of
/// empty match groups (HTTP-only conditions), none for a DENY policy under
/// [`HttpOnlyDeny::Enforce`] (there such clauses match).
pub fn unmatchable_rules(p: &Policy, mode: HttpOnlyDeny) -> Vec<usize> {
    match (mode, p.action) {
        (HttpOnlyDeny::Enforce, PolicyAction::Deny) => Vec::new(),
        _ => p.unmatchable_rules().collect(),
    }
}

/// The facts a policy is evaluated against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conn {
    /// The client's IP.
    pub src_ip: IpAddr,
    /// The client's proven (mTLS) identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// The destination IP (the local workload's address the client reached).
    pub dst_ip: IpAddr,
    /// The destination port, after service → target port translation.
    pub dst_port: u16,
}

/// Whether a connection may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Verdict {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
}

/// Why a verdict was reached. Stable names: they appear in logs and the explain output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No ALLOW policy applies (and no DENY matched).
    NoAllowPolicy,
    /// An ALLOW policy matched.
    AllowMatched,
    /// A DENY policy matched.
    DenyMatched,
    /// ALLOW policies apply but none matched.
    NoAllowMatched,
    /// The workload lists a policy that is not in the mesh state: fail closed.
    MissingPolicy,
    /// The destination workload is not (or no longer) in the mesh state, or no longer matches
    /// the pod: fail closed.
    UnknownWorkload,
}

impl Reason {
    /// The stable name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoAllowPolicy => "no_allow_policy",
            Reason::AllowMatched => "allow_matched",
            Reason::DenyMatched => "deny_matched",
            Reason::NoAllowMatched => "no_allow_matched",
            Reason::MissingPolicy => "missing_policy",
            Reason::UnknownWorkload => "unknown_workload",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of evaluating a set of policies: the verdict, why, and which policy and rule
/// (index into the policy's rules) decided it, when one did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Key (`namespace/name`) of the deciding policy (for `MissingPolicy`: the missing key).
    pub policy: Option<Strng>,
    /// Index of the matching rule within that policy.
    pub rule: Option<usize>,
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What is enforced.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When dry-run policies apply: what the outcome would be if they were enforced too.
    pub dry_run: Option<Outcome>,
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        self.outcome.verdict == Verdict::Allow
    }

    /// Logs the decision for `conn`: at debug (at info with `AUTHZ_POLICY_INFO_LOGGING`);
    /// at info when a dry-run policy would have changed it, so operators see what enforcing
    /// it would do.
    pub fn log(&self, conn: &Conn, info: bool) {
        let src_identity = conn.src_identity.as_ref().map(tracing::field::display);
        let o = &self.outcome;
        if let Some(dry) = self
            .dry_run
            .as_ref()
            .filter(|dry| dry.verdict != o.verdict || dry.policy != o.policy)
        {
            tracing::event!(
                target: "authz",
                tracing::Level::INFO,
                src.addr = %conn.src_ip,
                src.identity = src_identity,
                dst.port = conn.dst_port,
                verdict = ?o.verdict,
                dry_run.verdict = ?dry.verdict,
                dry_run.reason = %dry.reason,
                dry_run.policy = dry.policy.as_deref(),
                dry_run.rule = dry.rule,
                "dry-run policy would change the decision"
            );
            return;
        }
        macro_rules! decision {
            ($level:expr) => {
                tracing::event!(
                    target: "authz",
                    $level,
                    src.addr = %conn.src_ip,
                    src.identity = src_identity,
                    dst.addr = %conn.dst_ip,
                    dst.port = conn.dst_port,
                    verdict = ?o.verdict,
                    reason = %o.reason,
                    policy = o.policy.as_deref(),
                    rule = o.rule,
                    "authorization decision"
                )
            };
        }
        if info {
            decision!(tracing::Level::INFO);
        } else {
            decision!(tracing::Level::DEBUG);
        }
    }

    /// The denial to report, if denied.
    pub fn denial(&self) -> Option<Denial> {
        (self.outcome.verdict == Verdict::Deny).then(|| Denial {
            reason: self.outcome.reason,
            policy: self.outcome.policy.clone(),
            rule: self.outcome.rule,
        })
    }
}

/// Why a connection was denied: cheap to clone, carried in data-plane errors and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: Reason,
    /// The deciding (or missing) policy.
    pub policy: Option<Strng>,
    /// The matching rule of that policy.
    pub rule: Option<usize>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason.as_str())?;
        if let Some(p) = &self.policy {
            write!(f, " policy={p}")?;
        }
        if let Some(r) = self.rule {
            write!(f, " rule={r}")?;
        }
        Ok(())
    }
}

/// Decides whether `conn` may reach the local workload `dst`, using the policies of `snap`.
pub fn authorize(snap: &Snapshot, conn: &Conn, dst: &Workload, mode: HttpOnlyDeny) -> Decision {
    let applicable = match applicable(snap, dst) {
        Ok(p) => p,
        Err(missing) => {
            return Decision {
                outcome: Outcome {
                    verdict: Verdict::Deny,
                    reason: Reason::MissingPolicy,
                    policy: Some(missing),
                    rule: None,
                },
                dry_run: None,
            }
        }
    };
    let subject = Subject::new(conn, mode);
    let outcome = evaluate(applicable.iter().copied().filter(|p| !p.dry_run), &subject);
    let dry_run = applicable
        .iter()
        .any(|p| p.dry_run)
        .then(|| evaluate(applicable.iter().copied(), &subject));
    Decision { outcome, dry_run }
}

/// The policies that apply to `dst`, sorted by key (so reports are deterministic), or the key
/// of the first listed policy missing from the snapshot.
///
/// Cost: one pass over the snapshot's policies.
pub(crate) fn applicable<'a>(
    snap: &'a Snapshot,
    dst: &Workload,
) -> Result<Vec<&'a Arc<Policy>>, Strng> {
    let mut out: Vec<&Arc<Policy>> = snap.scoped_policies(&dst.namespace).collect();
    for key in &dst.authorization_policies {
        match snap.policy(key) {
            Some(p) => out.push(p),
            None => return Err(key.clone()),
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // A policy listed by the workload may also be namespace- or mesh-wide: count it once.
    out.dedup_by(|a, b| Arc::ptr_eq(a, b));
    Ok(out)
}

/// Istio's decision procedure over `policies`.
fn evaluate<'a>(policies: impl Iterator<Item = &'a Arc<Policy>> + Clone, s: &Subject) -> Outcome {
    for p in policies.clone().filter(|p| p.action == PolicyAction::Deny) {
        if let Some(rule) = matching_rule(p, s) {
            return Outcome {
                verdict: Verdict::Deny,
                reason: Reason::DenyMatched,
                policy: Some(p.key().into()),
                rule: Some(rule),
            };
        }
    }
    let mut any_allow = false;
    for p in policies.filter(|p| p.action == PolicyAction::Allow) {
        any_allow = true;
        if let Some(rule) = matching_rule(p, s) {
            return Outcome {
                verdict: Verdict::Allow,
                reason: Reason::AllowMatched,
                policy: Some(p.key().into()),
                rule: Some(rule),
            };
        }
    }
    let (verdict, reason) = if any_allow {
        (Verdict::Deny, Reason::NoAllowMatched)
    } else {
        (Verdict::Allow, Reason::NoAllowPolicy)
    };
    Outcome {
        verdict,
        reason,
        policy: None,
        rule: None,
    }
}

/// The connection as the matchers see it, derived once per evaluation.
pub(crate) struct Subject<'a> {
    conn: &'a Conn,
    /// Identity without `spiffe://`; `None` for plaintext.
    principal: Option<String>,
    /// The identity's namespace; empty for plaintext.
    namespace: &'a str,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    mode: HttpOnlyDeny,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(conn: &'a Conn, mode: HttpOnlyDeny) -> Self {
        let principal = conn.src_identity.as_ref().map(|id| {
            format!(
                "{}/ns/{}/sa/{}",
                id.trust_domain(),
                id.namespace(),
                id.service_account()
            )
        });
        Subject {
            conn,
            principal,
            namespace: conn.src_identity.as_ref().map_or("", |id| id.namespace()),
            src_ip: canonical_ip(conn.src_ip),
            dst_ip: canonical_ip(conn.dst_ip),
            mode,
        }
    }
}

/// The index of the first rule of `p` that matches, if any. Zero rules never match.
pub(crate) fn matching_rule(p: &Policy, s: &Subject) -> Option<usize> {
    // Empty match groups stand for HTTP-only conditions: skipped (Istio), or taken as holding
    // in DENY policies when the operator asked for fail-closed.
    let empty_matches = s.mode == HttpOnlyDeny::Enforce && p.action == PolicyAction::Deny;
    p.rules.iter().position(|rule| {
        // AND of clauses; an empty rule matches everything.
        rule.iter().all(|clause| {
            // OR of matches. An empty clause matches.
            clause.is_empty()
                || clause.iter().any(|m| {
                    if m.is_empty() {
                        empty_matches
                    } else {
                        matches(m, s)
                    }
                })
        })
    })
}

fn matches(m: &PolicyMatch, s: &Subject) -> bool {
    let ns = |sm: &StringMatch| string_matches(sm, s.namespace);
    let principal = |sm: &StringMatch| {
        s.principal
            .as_deref()
            .is_some_and(|p| string_matches(sm, p))
    };
    let sa = |sam: &ServiceAccountMatch| {
        s.conn.src_identity.as_ref().is_some_and(|id| {
            *sam.namespace == *id.namespace() && *sam.service_account == *id.service_account()
        })
    };
    let src = |net: &IpNet| contains(net, s.src_ip);
    let dst = |net: &IpNet| contains(net, s.dst_ip);
    let port = |p: &u16| *p == s.conn.dst_port;
    field(&m.namespaces, &m.not_namespaces, ns)
        && field(&m.principals, &m.not_principals, principal)
        && field(&m.service_accounts, &m.not_service_accounts, sa)
        && field(&m.source_ips, &m.not_source_ips, src)
        && field(&m.destination_ips, &m.not_destination_ips, dst)
        && field(&m.destination_ports, &m.not_destination_ports, port)
}

/// A field with its negation: positive list (if present) must contain a match, negative list
/// (if present) must not.
fn field<T>(positive: &[T], negative: &[T], pred: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&pred)) && !negative.iter().any(&pred)
}

/// Literal string comparison (no patterns: `.` and other metacharacters are plain bytes).
fn string_matches(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(s) => value == &**s,
        StringMatch::Prefix(s) => value.starts_with(&**s),
        StringMatch::Suffix(s) => value.ends_with(&**s),
        StringMatch::Presence => !value.is_empty(),
    }
}

/// Whether `ip` (canonical: IPv4-mapped addresses already made IPv4) lies in `net`. An
/// IPv4-mapped prefix (`::ffff:a.b.c.d/96+n`) matches IPv4 addresses as `a.b.c.d/n`.
pub(crate) fn contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net.address, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            prefix_eq(&n.octets(), &a.octets(), net.prefix_len.min(32))
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            prefix_eq(&n.octets(), &a.octets(), net.prefix_len.min(128))
        }
        (IpAddr::V6(n), IpAddr::V4(a)) => match n.to_ipv4_mapped() {
            Some(n) if net.prefix_len >= 96 => {
                prefix_eq(&n.octets(), &a.octets(), (net.prefix_len - 96).min(32))
            }
            _ => false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}
