//! The demo scenario behind `scripts/demo.sh`: a two-node namespace cluster, the built-in
//! control plane (or a local mesh file), ztun on each node, real traffic, and a report.

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
    path: &'static str,
    bytes: u64,
    result: anyhow::Result<Duration>,
}

/// Runs the demo, printing as it goes. `ztun` is the binary under demonstration.
pub fn run(ztun: &Path, source: Source) -> anyhow::Result<()> {
    println!("== building a two-node cluster out of network namespaces");
    let lab = Lab::builder("demo")
        .node("n1")
        .node("n2")
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
        .build()?;
    for p in lab.pods() {
        let role = if p.captured() {
            "captured by ztun"
        } else {
            "outside the mesh"
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
    MeshFile::from_lab(&lab).write(&mesh_path)?;
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
    let mut node_env: Vec<(&str, Vec<(String, String)>)> =
        vec![("n1", env_common.clone()), ("n2", env_common.clone())];
    let _control_plane: Option<Process> = match source {
        Source::ControlPlane => {
            let n1 = lab.node("n1");
            let listen = format!("{}:15012", n1.link_ip());
            let tokens = lab.dir().join("tokens");
            std::fs::write(&tokens, "demo-token-n1 n1\ndemo-token-n2 n2\n")?;
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
    let mib = 1 << 20;
    flows.push(echo(
        &lab,
        "cross-node mTLS",
        "web",
        db,
        "HBONE n1 -> n2",
        32 * mib,
    ));
    flows.push(echo(
        &lab,
        "same-node mTLS",
        "web",
        worker,
        "HBONE within n1",
        32 * mib,
    ));
    flows.push(echo(
        &lab,
        "worker to db",
        "worker",
        db,
        "HBONE n1 -> n2",
        8 * mib,
    ));
    flows.push(echo(
        &lab,
        "into the mesh",
        "legacy",
        db,
        "plaintext -> 15006",
        mib,
    ));
    flows.push(echo(
        &lab,
        "out of the mesh",
        "web",
        legacy,
        "passthrough (TCP)",
        mib,
    ));
    let started = Instant::now();
    let seen = lab.pod("legacy").peer_seen_by(web);
    flows.push(Flow {
        name: "client IP kept",
        from: "legacy",
        to: web.to_string(),
        path: "plaintext -> 15006",
        bytes: 0,
        result: match seen {
            Ok(addr) if addr.ip() == lab.pod("legacy").ip() => Ok(started.elapsed()),
            Ok(addr) => Err(anyhow::anyhow!("web saw {addr}, not legacy's IP")),
            Err(e) => Err(e),
        },
    });

    if source == Source::ControlPlane {
        println!(
            "== adding a DENY policy for shop/worker -> data to the mesh file (pushed over xDS)"
        );
        let deny = serde_json::json!({
            "name": "deny-worker", "namespace": "data", "scope": "Namespace", "action": "Deny",
            "rules": [[[{ "principals": [{ "Exact": "cluster.local/ns/shop/sa/worker" }] }]]],
        });
        MeshFile::from_lab(&lab).policy(deny).write(&mesh_path)?;
        let started = Instant::now();
        // A demo, not a test: poll until both nodes applied the push (bounded).
        let mut denied = false;
        while started.elapsed() < Duration::from_secs(20) {
            if lab.pod("worker").bulk_echo(db, 1024).is_err() {
                denied = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        flows.push(Flow {
            name: "policy push",
            from: "worker",
            to: db.to_string(),
            path: "DENY by xDS policy",
            bytes: 0,
            result: if denied {
                Ok(started.elapsed())
            } else {
                Err(anyhow::anyhow!("still allowed after 20s"))
            },
        });
        let still_ok = lab.pod("web").bulk_echo(db, 1 << 20).map(|t| t.elapsed);
        flows.push(Flow {
            name: "others unaffected",
            from: "web",
            to: db.to_string(),
            path: "HBONE n1 -> n2",
            bytes: 2 << 20,
            result: still_ok,
        });
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
        "{:<18} {:<7} {:<20} {:<20} {:>9} {:>10}  result",
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
            "{:<18} {:<7} {:<20} {:<20} {:>9} {:>10}  {result}",
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

fn echo(
    lab: &Lab,
    name: &'static str,
    from: &'static str,
    dst: SocketAddr,
    path: &'static str,
    bytes: u64,
) -> Flow {
    let result = lab.pod(from).bulk_echo(dst, bytes).map(|t| t.elapsed);
    Flow {
        name,
        from,
        to: dst.to_string(),
        path,
        bytes: bytes * 2,
        result,
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{b} B"),
    }
}
