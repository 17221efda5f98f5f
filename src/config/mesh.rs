//! Istio ProxyConfig: the few fields ztunnel takes from the mesh config file's `defaultConfig`
//! and from the `PROXY_CONFIG` variable (`discoveryAddress`, `proxyAdminPort`, `statsPort`,
//! `concurrency`, `proxyMetadata`); every other field is ignored, as ztunnel ignores it.
//!
//! Pure parsing: `env.rs` reads the texts through [`super::Source`] and hands them here, then
//! applies the result under the environment (mesh file < `PROXY_CONFIG` < environment).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU16;

use serde::Deserialize;

/// The mesh config file, relative to the working directory (`/` in the image), as ztunnel
/// reads it.
pub(super) const MESH_CONFIG_FILE: &str = "./etc/istio/config/mesh";

/// The prefix ztunnel strips from `proxyMetadata` keys, as from `ISTIO_META_*` variables.
const META_PREFIX: &str = "ISTIO_META_";

/// Where a ProxyConfig value came from; names it in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The `defaultConfig` of [`MESH_CONFIG_FILE`].
    MeshFile,
    /// The `PROXY_CONFIG` variable.
    ProxyConfigVar,
}

impl Origin {
    /// How an error names `field` (a camelCase path such as `proxyMetadata.DNS_PROXY_ADDR`).
    pub(super) fn field(self, field: &str) -> String {
        match self {
            Origin::MeshFile => format!("{MESH_CONFIG_FILE} defaultConfig.{field}"),
            Origin::ProxyConfigVar => format!("PROXY_CONFIG {field}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::MeshFile => write!(f, "mesh config file {MESH_CONFIG_FILE}"),
            Origin::ProxyConfigVar => f.write_str("PROXY_CONFIG"),
        }
    }
}

/// The ProxyConfig fields ztunnel reads, merged from their sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ProxyDefaults {
    /// `discoveryAddress` (never empty): istiod's address when `XDS_ADDRESS` is unset.
    pub discovery_address: Option<(String, Origin)>,
    /// `proxyAdminPort`: the admin API's port (1..=65535).
    pub proxy_admin_port: Option<u16>,
    /// `statsPort`: the metrics listener's port (1..=65535).
    pub stats_port: Option<u16>,
    /// `concurrency`: worker threads when `ZTUNNEL_WORKER_THREADS` is unset; 0 means all CPUs.
    pub concurrency: Option<u16>,
    /// `proxyMetadata`, keys without their `ISTIO_META_` prefix, with where each came from.
    pub metadata: BTreeMap<String, (String, Origin)>,
}

impl ProxyDefaults {
    /// The mesh config file's `defaultConfig` (YAML or JSON). An empty file configures nothing.
    pub(super) fn from_mesh_file(text: &str) -> Result<Self, String> {
        let mesh: Option<RawMeshConfig> =
            serde_yaml_ng::from_str(text).map_err(|e| describe("MeshConfig", e))?;
        let raw = mesh.and_then(|m| m.default_config).unwrap_or_default();
        raw.into_defaults(Origin::MeshFile)
    }

    /// A bare ProxyConfig (YAML or JSON, not wrapped in `defaultConfig`), as `PROXY_CONFIG`
    /// holds it.
    pub(super) fn from_proxy_config(text: &str) -> Result<Self, String> {
        let raw: Option<RawProxyConfig> =
            serde_yaml_ng::from_str(text).map_err(|e| describe("ProxyConfig", e))?;
        raw.unwrap_or_default()
            .into_defaults(Origin::ProxyConfigVar)
    }

    /// `self` with every field `higher` sets replaced; metadata is merged key by key.
    pub(super) fn overlaid_by(mut self, higher: ProxyDefaults) -> ProxyDefaults {
        self.metadata.extend(higher.metadata);
        ProxyDefaults {
            discovery_address: higher.discovery_address.or(self.discovery_address),
            proxy_admin_port: higher.proxy_admin_port.or(self.proxy_admin_port),
            stats_port: higher.stats_port.or(self.stats_port),
            concurrency: higher.concurrency.or(self.concurrency),
            metadata: self.metadata,
        }
    }
}

fn describe(what: &str, e: serde_yaml_ng::Error) -> String {
    format!("not a valid YAML or JSON {what}: {e}")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeshConfig {
    default_config: Option<RawProxyConfig>,
}

/// Unknown fields are ignored (serde's default), as ztunnel ignores them.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProxyConfig {
    discovery_address: Option<String>,
    proxy_admin_port: Option<NonZeroU16>,
    stats_port: Option<NonZeroU16>,
    concurrency: Option<u16>,
    proxy_metadata: Option<BTreeMap<String, serde_yaml_ng::Value>>,
}

impl RawProxyConfig {
    fn into_defaults(self, origin: Origin) -> Result<ProxyDefaults, String> {
        let mut metadata = BTreeMap::new();
        // Prefixed keys sort before most unprefixed ones; apply them last so that when both
        // `ISTIO_META_K` and `K` are present, the prefixed form (the one the environment
        // uses) wins, whatever the order.
        let mut entries: Vec<_> = self
            .proxy_metadata
            .unwrap_or_default()
            .into_iter()
            .collect();
        entries.sort_by_key(|(key, _)| key.starts_with(META_PREFIX));
        for (key, value) in entries {
            let text = scalar_text(value).ok_or_else(|| {
                let field = format!("proxyMetadata.{key}");
                let field = match origin {
                    Origin::MeshFile => format!("defaultConfig.{field}"),
                    Origin::ProxyConfigVar => field,
                };
                format!("{field}: expected a string, number or boolean")
            })?;
            let key = key.strip_prefix(META_PREFIX).unwrap_or(&key);
            if !key.is_empty() {
                metadata.insert(key.to_owned(), (text, origin));
            }
        }
        Ok(ProxyDefaults {
            discovery_address: self
                .discovery_address
                .filter(|a| !a.is_empty())
                .map(|a| (a, origin)),
            proxy_admin_port: self.proxy_admin_port.map(NonZeroU16::get),
            stats_port: self.stats_port.map(NonZeroU16::get),
            concurrency: self.concurrency,
            metadata,
        })
    }
}

/// A YAML scalar as text (`true` → `"true"`, `15053` → `"15053"`, null → `""`); `None` for a
/// list or map.
fn scalar_text(value: serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}
