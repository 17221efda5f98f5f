//! SPIFFE workload identity: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! This is the only identity form ztun accepts, from certificates, xDS and policy alike. Parsing
//! is strict: exactly five path segments, no empty parts, no control characters or NUL, so a
//! crafted SAN can never alias another identity.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A SPIFFE identity of a Kubernetes workload. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

/// Why a string is not a SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The string does not start with `spiffe://`.
    #[error("identity does not start with spiffe://")]
    Scheme,
    /// The path is not `/ns/<namespace>/sa/<service account>`.
    #[error("identity path is not /ns/<namespace>/sa/<service-account>")]
    Path,
    /// A part is empty or holds a character that is not allowed.
    #[error("identity has an empty part or a forbidden character")]
    Character,
}

impl Identity {
    /// Builds an identity from its parts. Parts must be non-empty and free of `/`, whitespace
    /// and control characters; anything else is rejected.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, ParseError> {
        check_parts([trust_domain, namespace, service_account])?;
        Ok(Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    /// Like [`Identity::new`], sharing the given strings instead of copying them: an identity
    /// taken from the mesh state costs no allocation.
    pub fn from_shared(
        trust_domain: &Arc<str>,
        namespace: &Arc<str>,
        service_account: &Arc<str>,
    ) -> Result<Self, ParseError> {
        check_parts([trust_domain, namespace, service_account].map(|p| &**p))?;
        Ok(Identity {
            trust_domain: trust_domain.clone(),
            namespace: namespace.clone(),
            service_account: service_account.clone(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace of the workload.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account of the workload.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn check_parts(parts: [&str; 3]) -> Result<(), ParseError> {
    if parts.iter().all(|p| valid_part(p)) {
        Ok(())
    } else {
        Err(ParseError::Character)
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'%' && b != b'\\')
}

impl FromStr for Identity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("spiffe://").ok_or(ParseError::Scheme)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseError::Path);
        };
        Identity::new(td, ns, sa)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_form() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", ParseError::Scheme),
            ("http://cluster.local/ns/a/sa/b", ParseError::Scheme),
            ("spiffe://cluster.local/ns/a/sa", ParseError::Path),
            ("spiffe://cluster.local/ns/a/sa/b/extra", ParseError::Path),
            ("spiffe://cluster.local/namespace/a/sa/b", ParseError::Path),
            ("spiffe://cluster.local/ns//sa/b", ParseError::Character),
            ("spiffe:///ns/a/sa/b", ParseError::Character),
            ("spiffe://cluster.local/ns/a/sa/b\0", ParseError::Character),
            ("spiffe://cluster.local/ns/a b/sa/c", ParseError::Character),
            ("spiffe://cluster.local/ns/a/sa/b%2f", ParseError::Character),
            ("spiffe://clüster/ns/a/sa/b", ParseError::Character),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Identity>().unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn dots_and_metacharacters_are_literal() {
        let id: Identity = "spiffe://td/ns/a.b/sa/c.*+?".parse().unwrap();
        assert_eq!(id.service_account(), "c.*+?");
        assert_ne!(id, "spiffe://td/ns/a.b/sa/cX*+?".parse().unwrap());
    }
}
