//! The demo scenario behind `scripts/demo.sh`: a namespace cluster of two nodes on one
//! network and a third on another network behind an east-west gateway, the built-in control
//! plane (or a local mesh file), ztun on each node, real traffic, and a report. Each flow's
//! path is read from what the ztuns logged for it, not assumed, and a flow whose path is not
//! the one it must take fails.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::lab::{Lab, PodSpec, Process};
use super::mesh::MeshFile;

const WAIT: Duration = Duration::from_secs(60);

/// How the nodes get their mesh configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `ztun control-plane` serving xDS from the mesh file.
    ControlPlane,
    /// `LOCAL_XDS_PATH` on every node.
    LocalFile,
}

/// One flow of the demo and what came of it.
struct Flow {
    name: &'static str,
    from: &'static str,
    to: String,
    path: String,
    bytes: u64,
    result: anyhow::Result<Duration>,
}

/// Runs the demo, printing as it goes. `ztun` is the binary under demonstration.
pub fn run(ztun: &Path, source: Source) -> anyhow::Result<()> {
    println!("== building a cluster out of network namespaces: n1, n2 on one network, n3 on net2");
    let lab = Lab::builder("demo")
        .node("n1")
        .node("n2")
        .node_on("n3", "net2")
        .pod(
            PodSpec::new("web", "n1")
                .namespace("shop")
                .service_account("web")
                .captured(true),
        )
        .pod(
            PodSpec::new("worker", "n1")
                .namespace("shop")
                .service_account("worker")
                .captured(true),
        )
        .pod(
            PodSpec::new("db", "n2")
                .namespace("data")
                .service_account("db")
                .captured(true),
        )
        .pod(
            PodSpec::new("legacy", "n2")
                .namespace("legacy")
                .service_account("legacy"),
        )
        .pod(
            PodSpec::new("archive", "n3")
                .namespace("data")
                .service_account("archive")
                .captured(true),
        )
        .pod(PodSpec::new("ew", "n3").namespace("istio-system"))
        .expose("ew")
        .build()?;
    for p in lab.pods() {
        let role = if p.captured() {
            "captured by ztun"
        } else {
            "outside the mesh"
        };
        let role = if p.name() == "ew" {
            "net2's east-west gateway"
        } else {
            role
        };
        println!(
            "   pod {:<7} {:<12} node {}  ip {:<10} {role}",
            p.name(),
            p.namespace(),
            p.node(),
            p.ip().to_string()
        );
    }
    let ca_dir = lab.dir().join("ca");
    super::certs::write_ca_dir(&ca_dir)?;
    let mesh_path = lab.dir().join("mesh.yaml");
    let base = mesh_of(&lab);
    base.write(&mesh_path)?;
    let _archive_echo = lab.pod("archive").spawn_echo_server(5432)?;
    let gateway = super::eastwest::EastWestGateway::spawn(
        lab.pod("ew").netns(),
        15008,
        &ca_dir,
        &crate::identity::Identity::new("cluster.local", "istio-system", "istio-eastwestgateway")?,
        [(
            format!("{ARCHIVE_HOST}:5432"),
            vec![SocketAddr::from((lab.pod("archive").ip(), 15008))],
        )]
        .into(),
    )?;
    let db_echo = lab.pod("db").spawn_echo_server(5432)?;
    let worker_echo = lab.pod("worker").spawn_echo_server(8080)?;
    let web_recorder = lab.pod("web").spawn_peer_recorder(8000)?;
    let legacy_echo = lab.pod("legacy").spawn_echo_server(9000)?;

    let ca = ca_dir.to_string_lossy().into_owned();
    let mesh = mesh_path.to_string_lossy().into_owned();
    let env_common: Vec<(String, String)> = vec![
        ("LOCAL_CA_DIR".into(), ca.clone()),
        ("RUST_LOG".into(), "info".into()),
    ];
    // Per-node environment: the control plane issues certificates to a node only for the
    // pods scheduled on it, identified by the node's bearer token.
    let mut node_env: Vec<(&str, Vec<(String, String)>)> = vec![
        ("n1", env_common.clone()),
        ("n2", env_common.clone()),
        ("n3", env_common.clone()),
    ];
    let _control_plane: Option<Process> = match source {
        Source::ControlPlane => {
            let n1 = lab.node("n1");
            let listen = format!("{}:15012", n1.link_ip());
            let tokens = lab.dir().join("tokens");
            std::fs::write(
                &tokens,
                "demo-token-n1 n1\ndemo-token-n2 n2\ndemo-token-n3 n3\n",
            )?;
            let tokens = tokens.to_string_lossy().into_owned();
            println!("== starting the built-in control plane on {listen} (xDS + CA)");
            let args = [
                "control-plane",
                "--config",
                &mesh,
                "--listen",
                &listen,
                "--ca-dir",
                &ca,
                "--tokens",
                &tokens,
            ];
            let cp = lab.spawn_in(
                n1.netns(),
                "control-plane",
                ztun,
                &args,
                &[("RUST_LOG", "info")],
                lab.dir(),
            )?;
            cp.wait_for_log("control plane listening", WAIT)
                .context("control plane did not start")?;
            for (node, env) in &mut node_env {
                env.retain(|(k, _)| k != "LOCAL_CA_DIR");
                env.push(("XDS_ADDRESS".into(), format!("https://{listen}")));
                env.push(("XDS_ROOT_CA".into(), format!("{ca}/root-cert.pem")));
                env.push(("CA_ADDRESS".into(), format!("https://{listen}")));
                env.push(("CA_ROOT_CA".into(), format!("{ca}/root-cert.pem")));
                env.push(("AUTH_TOKEN".into(), format!("demo-token-{node}")));
            }
            Some(cp)
        }
        Source::LocalFile => {
            println!("== nodes read the mesh from {mesh}");
            for (_, env) in &mut node_env {
                env.push(("LOCAL_XDS_PATH".into(), mesh.clone()));
            }
            None
        }
    };
    let mut ztuns = Vec::new();
    for (node, env) in &node_env {
        println!("== starting ztun on {node}");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = lab.spawn_ztun_with(node, ztun, &["proxy", "ztunnel"], &env)?;
        ztuns.push((*node, p));
    }
    for (node, _) in &ztuns {
        lab.cni(node)
            .wait_connected(WAIT)
            .with_context(|| format!("ztun on {node} did not sync with its CNI"))?;
        let nacks: Vec<_> = lab
            .cni(node)
            .acks()
            .into_iter()
            .filter(|a| !a.ack.is_ok())
            .collect();
        if !nacks.is_empty() {
            bail!("ztun on {node} refused pods: {nacks:?}");
        }
    }

    println!("== sending traffic");
    let mut flows = Vec::new();
    let db = SocketAddr::from((lab.pod("db").ip(), db_echo.port()));
    let worker = SocketAddr::from((lab.pod("worker").ip(), worker_echo.port()));
    let web = SocketAddr::from((lab.pod("web").ip(), web_recorder.port()));
    let legacy = SocketAddr::from((lab.pod("legacy").ip(), legacy_echo.port()));
    let archive = SocketAddr::from((ARCHIVE_VIP, 5432));
    let mib = 1 << 20;
    let run = Runner {
        lab: &lab,
        ztuns: &ztuns,
    };
    // The paths the flows must take, as `Runner::observed_path` words them.
    let n1_to_n2 = "HBONE n1 -> n2";
    let via_gateway = format!(
        "HBONE n1 -> gw {} -> n3",
        SocketAddr::from((lab.pod("ew").ip(), 15008))
    );
    flows.push(run.echo("cross-node mTLS", "web", db, 32 * mib, n1_to_n2));
    flows.push(run.echo("same-node mTLS", "web", worker, 32 * mib, "HBONE within n1"));
    flows.push(run.echo("worker to db", "worker", db, 8 * mib, n1_to_n2));
    flows.push(run.echo(
        "into the mesh",
        "legacy",
        db,
        mib,
        "plaintext -> 15006 on n2",
    ));
    flows.push(run.echo("out of the mesh", "web", legacy, mib, "passthrough (TCP)"));
    flows.push(run.echo("cross-network", "web", archive, 4 * mib, &via_gateway));
    let crossed = gateway.crossings();
    if let Some(c) = crossed.last() {
        println!(
            "   net2's gateway forwarded {} for {} to {}",
            c.authority,
            c.client_identity,
            c.forwarded_to.map_or("nowhere".into(), |a| a.to_string())
        );
    }
    let cursors = run.cursors();
    let started = Instant::now();
    let seen = lab.pod("legacy").peer_seen_by(web);
    let path = run.observed_path(&cursors);
    let result = match seen {
        Ok(addr) if addr.ip() == lab.pod("legacy").ip() => Ok(started.elapsed()),
        Ok(addr) => Err(anyhow::anyhow!("web saw {addr}, not legacy's IP")),
        Err(e) => Err(e),
    };
    flows.push(Flow {
        name: "client IP kept",
        from: "legacy",
        to: web.to_string(),
        result: on_path(result, &path, "plaintext -> 15006 on n1"),
        path,
        bytes: 0,
    });

    if source == Source::ControlPlane {
        println!(
            "== adding a DENY policy for shop/worker -> data to the mesh file (pushed over xDS)"
        );
        let deny = serde_json::json!({
            "name": "deny-worker", "namespace": "data", "scope": "Namespace", "action": "Deny",
            "rules": [[[{ "principals": [{ "Exact": "cluster.local/ns/shop/sa/worker" }] }]]],
        });
        base.clone().policy(deny).write(&mesh_path)?;
        let started = Instant::now();
        // A demo, not a test: poll until both nodes applied the push (bounded). A failure
        // counts as the policy's only when n2 says it denied worker by that policy.
        let denial = "denied by policy: deny_matched policy=data/deny-worker";
        let n2 = ztuns.iter().find(|(n, _)| *n == "n2").map(|(_, p)| p);
        let mut result = Err(anyhow::anyhow!("still allowed after 20s"));
        while started.elapsed() < Duration::from_secs(20) {
            let cursor = n2.map_or(0, |p| p.log_cursor());
            if lab.pod("worker").bulk_echo(db, 1024).is_err() {
                result = match n2.map(|p| p.wait_for_log_after(cursor, denial, WAIT)) {
                    Some(Ok(_)) => Ok(started.elapsed()),
                    _ => Err(anyhow::anyhow!(
                        "refused, but n2 logged no denial by data/deny-worker"
                    )),
                };
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        flows.push(Flow {
            name: "policy push",
            from: "worker",
            to: db.to_string(),
            path: if result.is_ok() {
                "401 from n2: data/deny-worker".into()
            } else {
                "-".into()
            },
            bytes: 0,
            result,
        });
        flows.push(run.echo("others unaffected", "web", db, mib, n1_to_n2));
    }

    println!("\n== access log (ztun on each node, target \"access\")");
    for (node, p) in &ztuns {
        for line in p
            .logs()
            .iter()
            .filter(|l| l.contains("access") && l.contains("connection complete"))
        {
            println!(
                "[{node}] {}",
                line.split_once("access")
                    .map(|(_, rest)| rest.trim_start_matches(':').trim())
                    .unwrap_or(line)
            );
        }
    }

    println!("\n== summary");
    println!(
        "{:<18} {:<7} {:<20} {:<38} {:>9} {:>10}  result",
        "flow", "from", "to", "path", "bytes", "time"
    );
    let mut failed = 0;
    for f in &flows {
        let (result, time) = match &f.result {
            Ok(d) => ("ok".to_string(), format!("{:.0?}", d)),
            Err(e) => {
                failed += 1;
                (format!("FAILED: {e:#}"), "-".into())
            }
        };
        println!(
            "{:<18} {:<7} {:<20} {:<38} {:>9} {:>10}  {result}",
            f.name,
            f.from,
            f.to,
            f.path,
            human(f.bytes),
            time
        );
    }
    if let Some(cp) = &_control_plane {
        let issued = cp
            .logs()
            .iter()
            .filter(|l| l.contains("issued certificate"))
            .count();
        println!("control plane: {issued} workload certificates issued over the Istio CA protocol; xDS pushed the mesh and the policy");
    }
    let tls_lines = ztuns
        .iter()
        .flat_map(|(_, p)| p.logs())
        .filter(|l| l.contains("src.identity=spiffe://"))
        .count();
    println!("\n{} flows, {failed} failed; {tls_lines} access-log lines carry a verified SPIFFE identity", flows.len());
    println!("== cleaning up (namespaces, processes, temp files)");
    drop(ztuns);
    drop(lab);
    if failed > 0 {
        bail!("{failed} flow(s) failed");
    }
    Ok(())
}

const ARCHIVE_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 7, 1);
const ARCHIVE_HOST: &str = "archive.data.svc.cluster.local";

/// The lab's mesh: every pod, and the `archive` service whose only endpoint is on net2,
/// behind net2's gateway `ew`.
fn mesh_of(lab: &Lab) -> MeshFile {
    let gateway = serde_json::json!({
        "destination": format!("net2/{}", lab.pod("ew").ip()),
        "hboneMtlsPort": 15008,
    });
    let mut mesh = MeshFile::from_lab(lab);
    // Deployment names: what a source describes itself by (in `baggage`) to a destination on
    // another network, which sees it arrive from the gateway.
    for p in lab.pods() {
        let name = p.name().to_string();
        mesh = mesh.edit_workload(p.name(), |w| {
            w.insert("workloadName".into(), name.into());
        });
    }
    mesh.service(
        "archive",
        "data",
        ARCHIVE_VIP,
        &[(5432, 5432)],
        &["archive"],
    )
    .edit_workload("archive", |w| {
        w.insert("networkGateway".into(), gateway);
    })
    .edit_workload("ew", |w| {
        w.insert("serviceAccount".into(), "istio-eastwestgateway".into());
    })
}

/// Runs flows and reads their path from the ztuns' access logs.
struct Runner<'a> {
    lab: &'a Lab,
    ztuns: &'a [(&'static str, Process)],
}

impl Runner<'_> {
    /// Echoes `bytes` from pod `from` to `dst`; the flow fails unless its observed path is
    /// `expected`.
    fn echo(
        &self,
        name: &'static str,
        from: &'static str,
        dst: SocketAddr,
        bytes: u64,
        expected: &str,
    ) -> Flow {
        let cursors = self.cursors();
        let result = self.lab.pod(from).bulk_echo(dst, bytes).map(|t| t.elapsed);
        let path = self.observed_path(&cursors);
        Flow {
            name,
            from,
            to: dst.to_string(),
            result: on_path(result, &path, expected),
            path,
            bytes: bytes * 2,
        }
    }

    fn cursors(&self) -> Vec<usize> {
        self.ztuns.iter().map(|(_, p)| p.log_cursor()).collect()
    }

    /// What the ztuns logged since `cursors`: the outbound line (tunnel, gateway hop or
    /// passthrough) and the inbound line (which node, and whether mTLS). Waits (bounded) for
    /// the lines, which are written when the connection completes.
    fn observed_path(&self, cursors: &[usize]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<(&str, String)> = self
                .ztuns
                .iter()
                .zip(cursors)
                .flat_map(|((node, p), &c)| {
                    p.logs()
                        .into_iter()
                        .skip(c)
                        .filter(|l| l.contains("connection complete"))
                        .map(move |l| (*node, l))
                })
                .collect();
            let field = |l: &str, k: &str| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k))
                    .map(|v| v.trim_matches('"').to_string())
            };
            let outbound = lines
                .iter()
                .find(|(_, l)| l.contains("direction=\"outbound\""));
            let inbound = lines
                .iter()
                .find(|(_, l)| l.contains("direction=\"inbound\""));
            let path = match (outbound, inbound) {
                (Some((src, o)), Some((dst, i))) => {
                    let authority = field(o, "dst.hbone_addr=").unwrap_or_default();
                    let mtls = i.contains("src.identity=spiffe://");
                    match (
                        authority.parse::<SocketAddr>().is_ok(),
                        authority.is_empty(),
                        mtls,
                    ) {
                        (true, _, true) if src == dst => Some(format!("HBONE within {src}")),
                        (true, _, true) => Some(format!("HBONE {src} -> {dst}")),
                        (false, false, true) => Some(format!(
                            "HBONE {src} -> gw {} -> {dst}",
                            field(o, "dst.addr=").unwrap_or_default()
                        )),
                        _ => None,
                    }
                }
                (Some((_, o)), None) if field(o, "dst.hbone_addr=").is_none() => {
                    Some("passthrough (TCP)".into())
                }
                (None, Some((dst, i))) if !i.contains("src.identity=") => {
                    Some(format!("plaintext -> 15006 on {dst}"))
                }
                _ => None,
            };
            if let Some(p) = path {
                return p;
            }
            if Instant::now() > deadline {
                return "not observed".into();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A flow's `result`, made an error when the flow did not take the `expected` path (a flow
/// that failed already keeps its error).
fn on_path(
    result: anyhow::Result<Duration>,
    observed: &str,
    expected: &str,
) -> anyhow::Result<Duration> {
    match result {
        Ok(_) if observed != expected => {
            Err(anyhow::anyhow!("path {observed:?}, expected {expected:?}"))
        }
        result => result,
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{b} B"),
    }
}
