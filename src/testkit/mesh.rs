//! Writes mesh files in ztunnel's local YAML format (what `LOCAL_XDS_PATH` and
//! `ztun control-plane --config` read) for a lab's pods, plus services and policies.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::lab::Lab;

/// A mesh file under construction.
#[derive(Debug, Clone, Default)]
pub struct MeshFile {
    workloads: Vec<Value>,
    services: Vec<Value>,
    policies: Vec<Value>,
}

impl MeshFile {
    /// Every pod of the lab as a workload: captured pods speak HBONE, the rest plain TCP.
    pub fn from_lab(lab: &Lab) -> MeshFile {
        let mut m = MeshFile::default();
        for p in lab.pods() {
            m.workloads.push(json!({
                "uid": p.uid(),
                "name": p.name(),
                "namespace": p.namespace(),
                "serviceAccount": p.service_account(),
                "workloadIps": [p.ip().to_string()],
                "protocol": if p.captured() { "HBONE" } else { "TCP" },
                "node": p.node(),
            }));
        }
        m
    }

    /// Adds a service `name.namespace.svc.cluster.local` at `vip` with `ports`
    /// (service port → target port) whose endpoints are the named pods.
    pub fn service(
        mut self,
        name: &str,
        namespace: &str,
        vip: Ipv4Addr,
        ports: &[(u16, u16)],
        endpoints: &[&str],
    ) -> MeshFile {
        let hostname = format!("{name}.{namespace}.svc.cluster.local");
        let key = format!("{namespace}/{hostname}");
        let port_map: Map<String, Value> = ports
            .iter()
            .map(|(s, t)| (s.to_string(), json!(t)))
            .collect();
        self.services.push(json!({
            "name": name,
            "namespace": namespace,
            "hostname": hostname,
            "vips": [format!("/{vip}")],
            "ports": port_map,
        }));
        for w in &mut self.workloads {
            if endpoints.iter().any(|e| w["name"] == *e) {
                let svcs = w.as_object_mut().and_then(|o| {
                    o.entry("services")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                });
                if let Some(svcs) = svcs {
                    svcs.insert(key.clone(), Value::Object(port_map.clone()));
                }
            }
        }
        self
    }

    /// Adds a raw policy object (keys as in the local YAML format).
    pub fn policy(mut self, policy: Value) -> MeshFile {
        self.policies.push(policy);
        self
    }

    /// Edits the workload of pod `name` (e.g. to change its protocol).
    pub fn edit_workload(
        mut self,
        name: &str,
        f: impl FnOnce(&mut Map<String, Value>),
    ) -> MeshFile {
        if let Some(w) = self
            .workloads
            .iter_mut()
            .find(|w| w["name"] == name)
            .and_then(Value::as_object_mut)
        {
            f(w);
        }
        self
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let doc = json!({ "workloads": self.workloads, "services": self.services, "policies": self.policies });
        serde_yaml_ng::to_string(&doc).expect("JSON values always serialize to YAML")
    }

    /// Writes the YAML to `path` atomically (write + rename), so a watcher never sees half.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_yaml())?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
