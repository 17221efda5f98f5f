//! Writes mesh files in ztunnel's local YAML format (what `LOCAL_XDS_PATH` and
//! `ztun control-plane --config` read) for a lab's pods, plus services and policies.

use std::net::IpAddr;
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
    /// Every pod of the lab as a workload: captured pods speak HBONE, the rest plain TCP, with
    /// an empty `services` map (ztunnel refuses a workload without one) and trust domain
    /// `cluster.local` (ztunnel does not default an absent one). Its
    /// `workloadIps` are all the pod's addresses (both families in a dual-stack lab); its
    /// `network` is its node's, when the lab has networks.
    pub fn from_lab(lab: &Lab) -> MeshFile {
        let mut m = MeshFile::default();
        for p in lab.pods() {
            m.workloads.push(json!({
                "uid": p.uid(),
                "name": p.name(),
                "namespace": p.namespace(),
                "serviceAccount": p.service_account(),
                "workloadIps": p.ips().iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                "protocol": if p.captured() { "HBONE" } else { "TCP" },
                "node": p.node(),
                // ztunnel's local format requires the field, even empty.
                "services": {},
                // ztunnel takes the local file's trust domain as written (empty stays empty).
                "trustDomain": "cluster.local",
            }));
            let network = lab.node(p.node()).network();
            if !network.is_empty() {
                if let Some(Value::Object(w)) = m.workloads.last_mut() {
                    w.insert("network".into(), json!(network));
                }
            }
        }
        m
    }

    /// Adds a service `name.namespace.svc.cluster.local` at `vip` with `ports`
    /// (service port → target port) whose endpoints are the named pods.
    pub fn service(
        self,
        name: &str,
        namespace: &str,
        vip: impl Into<IpAddr>,
        ports: &[(u16, u16)],
        endpoints: &[&str],
    ) -> MeshFile {
        self.service_with_vips(name, namespace, &[vip.into()], ports, endpoints)
    }

    /// Like [`service`](Self::service) with several VIPs, e.g. one per IP family for a
    /// dual-stack service (set its `ipFamilies` with [`edit_service`](Self::edit_service)).
    pub fn service_with_vips(
        mut self,
        name: &str,
        namespace: &str,
        vips: &[IpAddr],
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
            "vips": vips.iter().map(|vip| format!("/{vip}")).collect::<Vec<_>>(),
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

    /// Edits the service `name` (e.g. to add a waypoint or load-balancing settings).
    pub fn edit_service(mut self, name: &str, f: impl FnOnce(&mut Map<String, Value>)) -> MeshFile {
        if let Some(s) = self
            .services
            .iter_mut()
            .find(|s| s["name"] == name)
            .and_then(Value::as_object_mut)
        {
            f(s);
        }
        self
    }

    /// Removes the workload of pod `name`, as when it leaves the mesh (services lose it as an
    /// endpoint with it: a workload carries its own service memberships).
    pub fn without_workload(mut self, name: &str) -> MeshFile {
        self.workloads.retain(|w| w["name"] != name);
        self
    }

    /// Adds a raw workload object (keys as in the local YAML format), e.g. a waypoint that
    /// is not one of the lab's captured pods.
    pub fn workload(mut self, workload: Value) -> MeshFile {
        self.workloads.push(workload);
        self
    }

    /// The YAML text. Numeric map keys (port maps) are written as YAML integers, as the
    /// format expects, not as the strings JSON objects hold them as.
    pub fn to_yaml(&self) -> String {
        let doc = json!({ "workloads": self.workloads, "services": self.services, "policies": self.policies });
        serde_yaml_ng::to_string(&to_yaml_value(doc)).expect("YAML values always serialize")
    }

    /// Writes the YAML to `path` atomically (write + rename), so a watcher never sees half.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_yaml())?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

fn to_yaml_value(v: Value) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Value::Null => Y::Null,
        Value::Bool(b) => Y::Bool(b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Y::Number(u.into()),
            (None, Some(i), _) => Y::Number(i.into()),
            (None, None, Some(f)) => Y::Number(f.into()),
            (None, None, None) => Y::Null,
        },
        Value::String(s) => Y::String(s),
        Value::Array(a) => Y::Sequence(a.into_iter().map(to_yaml_value).collect()),
        Value::Object(o) => Y::Mapping(
            o.into_iter()
                .map(|(k, v)| {
                    let key = match k.parse::<u64>() {
                        Ok(n) => Y::Number(n.into()),
                        Err(_) => Y::String(k),
                    };
                    (key, to_yaml_value(v))
                })
                .collect(),
        ),
    }
}
