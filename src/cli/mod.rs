//! `ztun ctl`: an operator's view of a running ztun, read from its admin API.
//!
//! Tables for people, `--json` for scripts. Talks plain HTTP/1.1 to the admin port (loopback
//! only, so run it on the node, e.g. `kubectl exec` into the ztun pod).
//!
//! Allowed imports: none of the proxy's internals; only the admin API's JSON.

mod explain;
mod table;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use table::Table;

const USAGE: &str = "\
usage: ztun ctl [--admin ADDR] [--json] COMMAND

commands:
  workloads            workloads in the mesh state
  services             services and their VIPs, ports and endpoint counts
  policies             authorization policies
  certs                workload certificates (identity, state, expiry)
  pods                 pods handed over by the CNI
  connections          established connections
  log-level [LEVEL]    show, append (e.g. debug, ztun=trace) or `reset` the log filter
  explain --src S --dst IP:PORT
                       which policy allows or denies S (an IP or SPIFFE id) to IP:PORT, and why
  dump                 the raw config_dump

--admin defaults to 127.0.0.1:15000.
";

/// Runs `ztun ctl` with its arguments; returns the process exit code.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut admin: SocketAddr = "127.0.0.1:15000".parse().context("default admin address")?;
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--admin" => {
                admin = it
                    .next()
                    .context("--admin needs ADDR")?
                    .parse()
                    .context("--admin: not ip:port")?
            }
            "--json" => json = true,
            "-h" | "--help" | "help" => {
                print!("{USAGE}");
                return Ok(());
            }
            _ => rest.push(a.clone()),
        }
    }
    let Some(command) = rest.first() else {
        print!("{USAGE}");
        bail!("no command");
    };
    let client = Client { admin };
    match command.as_str() {
        "workloads" | "services" | "policies" | "certs" | "pods" | "dump" => {
            let dump: Value = serde_json::from_str(&client.get("/config_dump")?)
                .context("config_dump is not JSON")?;
            let section = match command.as_str() {
                "workloads" => &dump["workloads"],
                "services" => &dump["services"],
                "policies" => &dump["policies"],
                "certs" => &dump["certificates"],
                "pods" => &dump["workloadState"],
                _ => &dump,
            };
            if json || command == "dump" {
                println!("{}", serde_json::to_string_pretty(section)?);
            } else {
                print!("{}", render(command, section, &dump));
            }
        }
        "connections" => {
            let conns: Value = serde_json::from_str(&client.get("/connections")?)
                .context("connections is not JSON")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&conns)?);
            } else {
                print!("{}", render("connections", &conns, &Value::Null));
            }
        }
        "log-level" => {
            let out = match rest.get(1).map(String::as_str) {
                None => client.post("/logging")?,
                Some("reset") => client.post("/logging?reset")?,
                Some(level) => client.post(&format!("/logging?level={}", encode(level)))?,
            };
            print!("{out}");
        }
        "explain" => {
            let (mut src, mut dst) = (None, None);
            let mut it = rest.iter().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--src" => src = it.next().cloned(),
                    "--dst" => dst = it.next().cloned(),
                    other => bail!("explain: unexpected {other:?}"),
                }
            }
            let (Some(src), Some(dst)) = (src, dst) else {
                bail!("explain needs --src and --dst")
            };
            let body = client.get(&format!(
                "/explain?src={}&dst={}",
                encode(&src),
                encode(&dst)
            ))?;
            if json {
                println!("{body}");
            } else {
                let v: Value = serde_json::from_str(&body).context("explain is not JSON")?;
                print!("{}", explain::render(&v));
            }
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command {other:?}");
        }
    }
    Ok(())
}

fn render(command: &str, v: &Value, _dump: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut t;
    match command {
        "workloads" => {
            t = Table::new(&[
                "NAMESPACE",
                "NAME",
                "IPS",
                "NODE",
                "PROTOCOL",
                "SERVICE ACCOUNT",
                "STATUS",
            ]);
            for w in list(v) {
                let ips: Vec<String> = list(&w["workloadIps"]).iter().map(s).collect();
                t.row(vec![
                    s(&w["namespace"]),
                    s(&w["name"]),
                    ips.join(","),
                    s(&w["node"]),
                    s(&w["protocol"]),
                    s(&w["serviceAccount"]),
                    s(&w["status"]),
                ]);
            }
        }
        "services" => {
            t = Table::new(&["NAMESPACE", "HOSTNAME", "VIPS", "PORTS"]);
            for svc in list(v) {
                let vips: Vec<String> = list(&svc["vips"])
                    .iter()
                    .map(|a| {
                        s(a).split_once('/')
                            .map_or_else(|| s(a), |(_, ip)| ip.to_owned())
                    })
                    .collect();
                let ports: Vec<String> = svc["ports"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}->{}", s(v))).collect())
                    .unwrap_or_default();
                t.row(vec![
                    s(&svc["namespace"]),
                    s(&svc["hostname"]),
                    vips.join(","),
                    ports.join(","),
                ]);
            }
        }
        "policies" => {
            t = Table::new(&["NAMESPACE", "NAME", "SCOPE", "ACTION", "RULES", "DRY RUN"]);
            for p in list(v) {
                t.row(vec![
                    s(&p["namespace"]),
                    s(&p["name"]),
                    s(&p["scope"]),
                    s(&p["action"]),
                    list(&p["rules"]).len().to_string(),
                    s(&p["dryRun"]),
                ]);
            }
        }
        "certs" => {
            t = Table::new(&["IDENTITY", "STATE", "SERIAL", "EXPIRES"]);
            for c in list(v) {
                let leaf = &c["certChain"][0];
                t.row(vec![
                    s(&c["identity"]),
                    s(&c["state"]),
                    s(&leaf["serialNumber"]),
                    s(&leaf["expirationTime"]),
                ]);
            }
        }
        "pods" => {
            t = Table::new(&[
                "UID",
                "NAMESPACE",
                "NAME",
                "SERVICE ACCOUNT",
                "STATE",
                "IN",
                "OUT",
            ]);
            for (uid, p) in v.as_object().cloned().unwrap_or_default() {
                let n = |dir: &str| list(&p["connections"][dir]).len().to_string();
                t.row(vec![
                    uid,
                    s(&p["info"]["namespace"]),
                    s(&p["info"]["name"]),
                    s(&p["info"]["serviceAccount"]),
                    s(&p["state"]),
                    n("inbound"),
                    n("outbound"),
                ]);
            }
        }
        _ => {
            t = Table::new(&[
                "DIRECTION",
                "SOURCE",
                "SOURCE IDENTITY",
                "DESTINATION",
                "TARGET",
                "DESTINATION IDENTITY",
            ]);
            for c in list(v) {
                t.row(vec![
                    s(&c["direction"]),
                    s(&c["src"]),
                    s(&c["srcIdentity"]),
                    s(&c["dst"]),
                    s(&c["hboneTarget"]),
                    s(&c["dstIdentity"]),
                ]);
            }
        }
    }
    t.render()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Client {
    admin: SocketAddr,
}

impl Client {
    fn get(&self, path: &str) -> anyhow::Result<String> {
        self.request("GET", path)
    }

    fn post(&self, path: &str) -> anyhow::Result<String> {
        self.request("POST", path)
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&self.admin, Duration::from_secs(5)).with_context(|| {
                format!(
                    "connecting to the admin API at {} (is ztun running on this node?)",
                    self.admin
                )
            })?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", self.admin)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed status line")?;
        if !(200..300).contains(&status) {
            bail!("admin API answered {status}: {}", body.trim());
        }
        Ok(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_workloads_as_a_table() {
        let v: Value = serde_json::json!([
            {"namespace": "default", "name": "a", "workloadIps": ["10.0.1.11"], "node": "n1", "protocol": "HBONE", "serviceAccount": "sa-a", "status": "Healthy"}
        ]);
        let out = render("workloads", &v, &Value::Null);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE"));
        assert!(
            lines[1].contains("10.0.1.11") && lines[1].contains("HBONE"),
            "{out}"
        );
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode("spiffe://td/ns/a/sa/b"),
            "spiffe%3A%2F%2Ftd%2Fns%2Fa%2Fsa%2Fb"
        );
        assert_eq!(encode("ztun=debug"), "ztun%3Ddebug");
    }
}
