//! ztun starts from exactly the container Istio's ztunnel chart describes, with the meaning the
//! chart intends.
//!
//! The test reads the ztunnel DaemonSet as Istio's Helm chart renders it
//! (`../shared/fixtures/istio-ztunnel-ambient.yaml`) and ours (`deploy/manifests/ztun-ambient.yaml`),
//! rebuilds the container's environment the way the kubelet would (image `ENV` from our
//! Dockerfile, then the container's `env` with downward-API values filled in from a sample pod),
//! lays out the files its volumes mount, and checks that `Config::from_source` accepts that
//! environment and reads the addresses, cluster id, node, identity, token, root certificate and
//! drain deadline the chart means. It also checks that the container's argv (our image's
//! `ENTRYPOINT` plus the chart's `args`) is the command the `ztun` binary runs as the proxy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use ztun::config::{AuthToken, Config, MapEnv, ProxyMode, RootCert};

/// Sample values for what only exists once the pod is scheduled.
const POD_NAME: &str = "ztunnel-abc";
const NODE_NAME: &str = "node-1";
const POD_IP: &str = "10.1.2.3";
/// `limits.cpu` of a container without a CPU limit: the node's allocatable CPUs.
const NODE_ALLOCATABLE_CPUS: u64 = 2;
/// Service env the kubelet adds to every container (the `kubernetes` Service in `default`).
const KUBERNETES_SERVICE_ENV: [(&str, &str); 2] = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
];
/// The key istiod writes into the `istio-ca-root-cert` ConfigMap of every namespace.
const ROOT_CERT_CONFIG_MAP: (&str, &str) = ("istio-ca-root-cert", "root-cert.pem");
/// Audience istiod's CA accepts on ztunnel's token.
const TOKEN_AUDIENCE: &str = "istio-ca";
const ISTIOD: &str = "https://istiod.istio-system.svc:15012";

/// Every variable the chart sets, in its order, and what ztun makes of it (checked below). A
/// new variable in Istio's chart fails this test until someone decides what ztun does with it.
const CHART_ENV: [&str; 15] = [
    "CA_ADDRESS",                       // CA endpoint
    "XDS_ADDRESS",                      // istiod's xDS endpoint
    "RUST_LOG",                         // log filter
    "RUST_BACKTRACE",                   // read by the Rust runtime on panic
    "ISTIO_META_CLUSTER_ID",            // cluster id, also node metadata
    "INPOD_ENABLED",                    // legacy, ignored (shared mode is the default)
    "TERMINATION_GRACE_PERIOD_SECONDS", // drain deadline
    "POD_NAME",                         // ztun's own identity and the xDS node id
    "POD_NAMESPACE",                    // ditto
    "NODE_NAME",                        // which workloads are local
    "INSTANCE_IP",                      // xDS node id
    "SERVICE_ACCOUNT",                  // ztun's own identity
    "ISTIO_META_ENABLE_HBONE",          // node metadata
    "ZTUNNEL_CPU_LIMIT",                // worker threads
    "ZTUNNEL_RESOURCE_CPU_REQUEST",     // worker threads
];

#[test]
fn istio_chart_daemonset_configures_ztun() {
    let daemonset = load_daemonset(&shared_fixture("istio-ztunnel-ambient.yaml"));
    check_daemonset(&daemonset, &dockerfile());
}

#[test]
fn our_plain_manifest_configures_ztun_with_our_image() {
    let daemonset = load_daemonset(&repo_file("deploy/manifests/ztun-ambient.yaml"));
    check_daemonset(&daemonset, &dockerfile());

    let values: BTreeMap<String, Value> =
        serde_yaml_ng::from_str(&read(&repo_file("deploy/values-ztun.yaml")))
            .expect("deploy/values-ztun.yaml is a YAML mapping");
    let container = daemonset.proxy_container();
    assert_eq!(
        Some(&Value::from(container.image.as_str())),
        values.get("image"),
        "the plain manifest and the Helm values run the same image"
    );
    assert_eq!(
        container
            .image_pull_policy
            .as_ref()
            .map(|p| Value::from(p.as_str())),
        values.get("imagePullPolicy").cloned(),
    );
}

#[test]
fn istio_cni_shares_the_zds_socket_directory() {
    let cni = load_daemonset(&shared_fixture("istio-cni-ambient.yaml"));
    let cni_container = cni
        .spec
        .template
        .spec
        .containers
        .iter()
        .find(|c| c.name == "install-cni")
        .expect("istio-cni has an install-cni container");
    let host_dir = |daemonset: &DaemonSet, container: &Container, dir: &Path| match Mounts::of(
        daemonset, container,
    )
    .dirs
    .get(dir)
    {
        Some(Provided::HostPath(path)) => path.clone(),
        other => panic!("{dir:?} is not a hostPath mount: {other:?}"),
    };
    for manifest in [
        shared_fixture("istio-ztunnel-ambient.yaml"),
        repo_file("deploy/manifests/ztun-ambient.yaml"),
    ] {
        let ztunnel = load_daemonset(&manifest);
        let config = Config::from_source(&container_env(&ztunnel, &dockerfile()).0)
            .expect("the chart's environment is a valid configuration");
        let socket_dir = config
            .inpod
            .uds
            .parent()
            .expect("INPOD_UDS has a directory");
        assert_eq!(
            host_dir(&ztunnel, ztunnel.proxy_container(), socket_dir),
            host_dir(&cni, cni_container, socket_dir),
            "{manifest:?}: ztun and istio-cni must see the same host directory for the ZDS socket"
        );
    }
}

#[test]
fn container_argv_runs_the_proxy() {
    for manifest in [
        shared_fixture("istio-ztunnel-ambient.yaml"),
        repo_file("deploy/manifests/ztun-ambient.yaml"),
    ] {
        let daemonset = load_daemonset(&manifest);
        let argv = container_argv(daemonset.proxy_container(), &dockerfile());
        assert_eq!(
            argv,
            ["/usr/local/bin/ztun", "proxy", "ztunnel"],
            "{manifest:?}"
        );

        // With an invalid PROXY_MODE the proxy command stops at configuration, which shows the
        // argv reached it; an argv ztun does not know stops earlier with "unknown command".
        let output = Command::new(env!("CARGO_BIN_EXE_ztun"))
            .args(&argv[1..])
            .env_clear()
            .env("PROXY_MODE", "not-a-mode")
            .output()
            .expect("the ztun binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("configuration error") && stderr.contains("PROXY_MODE"),
            "`ztun {}` did not run the proxy's configuration: {stderr}",
            argv[1..].join(" ")
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ztun"))
        .arg("ztunnel")
        .env_clear()
        .output()
        .expect("the ztun binary runs");
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown command"));
}

/// The checks shared by Istio's DaemonSet and ours.
fn check_daemonset(daemonset: &DaemonSet, image: &Image) {
    let container = daemonset.proxy_container();
    let pod = &daemonset.spec.template.spec;

    let names: Vec<&str> = container.env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names, CHART_ENV,
        "the chart's environment variables changed"
    );

    let (env, mounts) = container_env(daemonset, image);
    let config = Config::from_source(&env)
        .unwrap_or_else(|e| panic!("ztun rejects the chart's environment: {e}"));

    assert_eq!(config.proxy_mode, ProxyMode::Shared);
    assert_eq!(config.packet_mark, Some(1337));
    assert_eq!(config.xds.address.as_deref(), Some(ISTIOD));
    assert_eq!(config.ca.address.as_deref(), Some(ISTIOD));
    assert_eq!(config.cluster_id, "Kubernetes");
    assert_eq!(config.node_name.as_deref(), Some(NODE_NAME));
    assert_eq!(config.identity.pod_name, POD_NAME);
    assert_eq!(config.identity.pod_namespace, "istio-system");
    assert_eq!(config.identity.service_account.as_deref(), Some("ztunnel"));
    assert_eq!(
        config.identity.instance_ip,
        POD_IP.parse::<IpAddr>().unwrap()
    );
    assert_eq!(config.trust_domain, "cluster.local");
    assert_eq!(config.log.filter, "info");
    assert!(!config.log.json);

    // The token is the projected service-account token for istiod's CA, re-read on each use.
    let AuthToken::File(token) = &config.auth_token else {
        panic!("expected the token file, got {:?}", config.auth_token);
    };
    match mounts.files.get(&resolve(&image.workdir, token)) {
        Some(Provided::ServiceAccountToken { audience }) => assert_eq!(audience, TOKEN_AUDIENCE),
        other => panic!("token path {token:?} is not a mounted token: {other:?}"),
    }
    // Both control-plane connections verify istiod against the root istiod publishes.
    for (what, root) in [("XDS", &config.xds.root_ca), ("CA", &config.ca.root_ca)] {
        let RootCert::File(path) = root else {
            panic!("{what} root: expected a file, got {root:?}");
        };
        match mounts.files.get(&resolve(&image.workdir, path)) {
            Some(Provided::ConfigMapKey { config_map, key }) => {
                assert_eq!((config_map.as_str(), key.as_str()), ROOT_CERT_CONFIG_MAP)
            }
            other => panic!("{what} root {path:?} is not istiod's root ConfigMap: {other:?}"),
        }
    }
    // The ZDS socket lives in the host directory istio-cni also mounts.
    let uds = resolve(&image.workdir, &config.inpod.uds);
    assert_eq!(uds, Path::new("/var/run/ztunnel/ztunnel.sock"));
    assert!(matches!(
        mounts.dirs.get(uds.parent().unwrap()),
        Some(Provided::HostPath(_))
    ));

    // Drain: TERMINATION_GRACE_PERIOD_SECONDS=30 leaves 25 s, inside the pod's grace period.
    assert_eq!(config.termination_deadline, Duration::from_secs(25));
    let grace = pod
        .termination_grace_period_seconds
        .expect("the chart sets terminationGracePeriodSeconds");
    assert!(config.termination_deadline < Duration::from_secs(grace));

    // 2 node CPUs and no CPU limit: max(ceil(25% of 2), request 1, 2) = 2 worker threads.
    assert_eq!(config.worker_threads, 2);

    let metadata: BTreeMap<&str, &str> = config
        .proxy_metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        metadata,
        BTreeMap::from([
            ("CLUSTER_ID", "Kubernetes"),
            ("ENABLE_HBONE", "true"),
            (
                "ISTIO_VERSION",
                image.env["ISTIO_META_ISTIO_VERSION"].as_str()
            ),
        ])
    );

    // Probes and scraping reach ztun's own listeners.
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("the chart has an HTTP readiness probe");
    assert_eq!(
        (probe.port, probe.path.as_str()),
        (config.readiness_addr.port(), "/healthz/ready")
    );
    let stats = container
        .ports
        .iter()
        .find(|p| p.name.as_deref() == Some("ztunnel-stats"))
        .expect("the chart exposes ztunnel-stats");
    assert_eq!(stats.container_port, config.stats_addr.port());
    assert_eq!(
        daemonset
            .spec
            .template
            .metadata
            .annotations
            .get("prometheus.io/port"),
        Some(&config.stats_addr.port().to_string())
    );
    assert!(config.admin_addr.ip().is_loopback());
}

/// The container's environment as the kubelet builds it, and the files its volumes provide.
fn container_env(daemonset: &DaemonSet, image: &Image) -> (MapEnv, Mounts) {
    let container = daemonset.proxy_container();
    let pod = &daemonset.spec.template.spec;
    let namespace = daemonset.metadata.namespace.as_deref().unwrap_or("default");

    let mut vars: BTreeMap<String, String> = image.env.clone();
    vars.insert("HOSTNAME".into(), POD_NAME.into());
    for (name, value) in KUBERNETES_SERVICE_ENV {
        vars.insert(name.into(), value.into());
    }
    for var in &container.env {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(source)) => source.resolve(namespace, pod, container),
            (None, None) => String::new(),
            (Some(_), Some(_)) => panic!("{}: both value and valueFrom", var.name),
        };
        vars.insert(var.name.clone(), value);
    }

    let mounts = Mounts::of(daemonset, container);
    let mut env: MapEnv = vars.into_iter().collect();
    for file in mounts.files.keys() {
        // ztun checks paths as given; relative ones are relative to the image's WORKDIR.
        env = env.with_existing_path(file);
        if let Ok(relative) = file.strip_prefix(&image.workdir) {
            env = env
                .with_existing_path(relative)
                .with_existing_path(Path::new(".").join(relative));
        }
    }
    (env, mounts)
}

/// What the container executes: the image's ENTRYPOINT unless `command` replaces it, then the
/// container's `args`, or the image's CMD when there are none.
fn container_argv(container: &Container, image: &Image) -> Vec<String> {
    let mut argv = container
        .command
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    match &container.args {
        Some(args) => argv.extend(args.iter().cloned()),
        None if container.command.is_none() => argv.extend(image.cmd.iter().cloned()),
        None => {}
    }
    argv
}

/// `path` as the process sees it from `workdir`, without `.` components.
fn resolve(workdir: &Path, path: &Path) -> PathBuf {
    workdir
        .join(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The runtime stage of our Dockerfile.
struct Image {
    workdir: PathBuf,
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn dockerfile() -> Image {
    let text = read(&repo_file("Dockerfile"));
    let joined = text.replace("\\\n", " ");
    let runtime: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = runtime
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    let mut image = Image {
        workdir: PathBuf::from("/"),
        env: BTreeMap::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
    };
    for line in &runtime[last_from + 1..] {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let exec_form = |what: &str| -> Vec<String> {
            serde_json::from_str(rest)
                .unwrap_or_else(|e| panic!("{what} must be in exec (JSON) form: {rest}: {e}"))
        };
        match instruction.to_ascii_uppercase().as_str() {
            "WORKDIR" => image.workdir = image.workdir.join(rest),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV must use KEY=VALUE: {line}"));
                    assert!(
                        !value.contains(['"', '\'', '$']),
                        "unquoted literal ENV only: {line}"
                    );
                    image.env.insert(key.into(), value.into());
                }
            }
            "ENTRYPOINT" => image.entrypoint = exec_form("ENTRYPOINT"),
            "CMD" => image.cmd = exec_form("CMD"),
            _ => {}
        }
    }
    assert_eq!(
        image.workdir,
        Path::new("/"),
        "ztunnel's relative default paths assume WORKDIR /"
    );
    assert_eq!(image.entrypoint, ["/usr/local/bin/ztun"]);
    assert_eq!(
        image.cmd,
        ["proxy", "ztunnel"],
        "`docker run` defaults to the chart's args"
    );
    assert!(
        image.env.contains_key("ISTIO_META_ISTIO_VERSION"),
        "the image names the Istio release it targets"
    );
    image
}

/// Files and directories the container's volume mounts provide, and where they come from.
struct Mounts {
    files: BTreeMap<PathBuf, Provided>,
    dirs: BTreeMap<PathBuf, Provided>,
}

#[derive(Debug, Clone)]
enum Provided {
    ServiceAccountToken { audience: String },
    ConfigMapKey { config_map: String, key: String },
    HostPath(PathBuf),
    EmptyDir,
}

impl Mounts {
    fn of(daemonset: &DaemonSet, container: &Container) -> Mounts {
        let volumes = &daemonset.spec.template.spec.volumes;
        let mut mounts = Mounts {
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
        };
        for mount in &container.volume_mounts {
            let dir = PathBuf::from(&mount.mount_path);
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("volumeMount {} names no volume", mount.name));
            if let Some(projected) = &volume.projected {
                for source in &projected.sources {
                    let token = source.service_account_token.as_ref().unwrap_or_else(|| {
                        panic!("{}: only token projections are modelled", volume.name)
                    });
                    let audience = token.audience.clone().unwrap_or_default();
                    mounts.files.insert(
                        dir.join(&token.path),
                        Provided::ServiceAccountToken { audience },
                    );
                }
            } else if let Some(config_map) = &volume.config_map {
                // Without `items`, every key becomes a file; the one that matters is istiod's.
                let keys: Vec<(String, String)> = match &config_map.items {
                    Some(items) => items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect(),
                    None if config_map.name == ROOT_CERT_CONFIG_MAP.0 => {
                        vec![(ROOT_CERT_CONFIG_MAP.1.into(), ROOT_CERT_CONFIG_MAP.1.into())]
                    }
                    None => Vec::new(),
                };
                for (key, path) in keys {
                    mounts.files.insert(
                        dir.join(path),
                        Provided::ConfigMapKey {
                            config_map: config_map.name.clone(),
                            key,
                        },
                    );
                }
            } else if let Some(host_path) = &volume.host_path {
                mounts
                    .dirs
                    .insert(dir, Provided::HostPath(PathBuf::from(&host_path.path)));
            } else if volume.empty_dir.is_some() {
                mounts.dirs.insert(dir, Provided::EmptyDir);
            } else {
                panic!("volume {}: kind not modelled", volume.name);
            }
        }
        mounts
    }
}

fn load_daemonset(path: &Path) -> DaemonSet {
    let text = read(path);
    let mut found = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{path:?} is not valid YAML: {e}"));
        if value.get("kind").and_then(Value::as_str) == Some("DaemonSet") {
            found.push(
                serde_yaml_ng::from_value::<DaemonSet>(value)
                    .unwrap_or_else(|e| panic!("{path:?}: unexpected DaemonSet shape: {e}")),
            );
        }
    }
    assert_eq!(found.len(), 1, "{path:?} must hold exactly one DaemonSet");
    found.remove(0)
}

fn shared_fixture(name: &str) -> PathBuf {
    let path = repo_file("../shared/fixtures").join(name);
    assert!(
        path.is_file(),
        "fixture {path:?} is missing: the shared/ directory must sit beside the repository"
    );
    path
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

// The parts of the Kubernetes API these manifests use. Unknown fields are ignored; unknown
// kinds of env source or volume fail loudly where they are used.

#[derive(Deserialize)]
struct DaemonSet {
    metadata: ObjectMeta,
    spec: DaemonSetSpec,
}

impl DaemonSet {
    /// ztunnel's container: Istio's chart names it `istio-proxy`.
    fn proxy_container(&self) -> &Container {
        let containers = &self.spec.template.spec.containers;
        assert_eq!(containers.len(), 1, "the ztunnel pod has one container");
        assert_eq!(containers[0].name, "istio-proxy");
        &containers[0]
    }
}

#[derive(Deserialize)]
struct ObjectMeta {
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct DaemonSetSpec {
    template: PodTemplate,
}

#[derive(Deserialize)]
struct PodTemplate {
    metadata: ObjectMeta,
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    service_account_name: String,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
    termination_grace_period_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    image: String,
    image_pull_policy: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    readiness_probe: Option<Probe>,
    #[serde(default)]
    resources: Resources,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvVarSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVarSource {
    field_ref: Option<FieldRef>,
    resource_field_ref: Option<ResourceFieldRef>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

impl EnvVarSource {
    /// The value the kubelet gives this variable in the sample pod.
    fn resolve(&self, namespace: &str, pod: &PodSpec, container: &Container) -> String {
        assert!(
            self.other.is_empty(),
            "env source not modelled: {:?}",
            self.other.keys()
        );
        if let Some(field) = &self.field_ref {
            return match field.field_path.as_str() {
                "metadata.name" => POD_NAME.into(),
                "metadata.namespace" => namespace.into(),
                "spec.nodeName" => NODE_NAME.into(),
                "status.podIP" => POD_IP.into(),
                "spec.serviceAccountName" => pod.service_account_name.clone(),
                other => panic!("fieldRef {other} not modelled"),
            };
        }
        let resource = self
            .resource_field_ref
            .as_ref()
            .expect("valueFrom names a source");
        assert!(
            matches!(resource.divisor.as_deref(), None | Some("1")),
            "resourceFieldRef divisor {:?} not modelled",
            resource.divisor
        );
        // CPU with divisor 1 is reported in whole CPUs, rounded up.
        let milli = match resource.resource.as_str() {
            "limits.cpu" => container
                .resources
                .limits
                .get("cpu")
                .map_or(NODE_ALLOCATABLE_CPUS * 1000, |q| cpu_milli(q)),
            "requests.cpu" => cpu_milli(
                container
                    .resources
                    .requests
                    .get("cpu")
                    .expect("the chart requests CPU"),
            ),
            other => panic!("resourceFieldRef {other} not modelled"),
        };
        milli.div_ceil(1000).to_string()
    }
}

/// A CPU quantity (`200m`, `2`) in millicores.
fn cpu_milli(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse().expect("millicores"),
        None => quantity.parse::<u64>().expect("whole CPUs") * 1000,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: String,
}

#[derive(Deserialize)]
struct ResourceFieldRef {
    resource: String,
    divisor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    projected: Option<ProjectedVolume>,
    config_map: Option<ConfigMapVolume>,
    host_path: Option<HostPathVolume>,
    empty_dir: Option<Value>,
}

#[derive(Deserialize)]
struct ProjectedVolume {
    sources: Vec<ProjectedSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectedSource {
    service_account_token: Option<ServiceAccountTokenProjection>,
}

#[derive(Deserialize)]
struct ServiceAccountTokenProjection {
    path: String,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct ConfigMapVolume {
    name: String,
    items: Option<Vec<KeyToPath>>,
}

#[derive(Deserialize)]
struct KeyToPath {
    key: String,
    path: String,
}

#[derive(Deserialize)]
struct HostPathVolume {
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    container_port: u16,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Deserialize)]
struct HttpGet {
    port: u16,
    path: String,
}

#[derive(Deserialize, Default)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, String>,
    #[serde(default)]
    limits: BTreeMap<String, String>,
}
