//! The `dns` fuzz target: messages through the DNS proxy's per-query decision (parse, local
//! answer from the mesh, response encoding), with no network. Besides raw bytes, the first
//! input byte can ask for structured shapes of a query (long names, many questions,
//! compression loops, truncation) so mutations reach past the header checks. Seeds, one per
//! kind of query and shape: `fuzz/seeds/dns/`.

use hickory_proto::op::Message;

use crate::dns::{respond, HostIndex, Outcome, Transport, Zone};
use crate::state::{Snapshot, SnapshotBuilder};

/// The DNS proxy's view of the mesh: a client, a service with enough VIPs to overflow a UDP
/// answer, a headless service, a wildcard and a hostname near the 253-byte limit.
fn mesh_yaml() -> String {
    let long_host = format!("{}.example.com", vec!["a".repeat(58); 4].join("."));
    let vips: Vec<String> = (0..200)
        .map(|i| format!("\"/10.96.{}.{}\"", i / 250, i % 250 + 1))
        .chain((0..50).map(|i| format!("\"/fd00::96:{i:x}\"")))
        .collect();
    format!(
        r#"
workloads:
- uid: c//Pod/default/client
  name: client
  namespace: default
  serviceAccount: default
  workloadIps: ["10.0.0.1"]
- uid: c//Pod/default/db-0
  name: db-0
  namespace: default
  serviceAccount: default
  workloadIps: ["10.0.1.1", "fd00::1:1"]
  services:
    "default/db.default.svc.cluster.local": {{}}
services:
- name: big
  namespace: default
  hostname: big.default.svc.cluster.local
  vips: [{vips}]
- name: db
  namespace: default
  hostname: db.default.svc.cluster.local
- name: wild
  namespace: default
  hostname: "*.wild.example.com"
  vips: ["/10.96.9.1"]
- name: long
  namespace: default
  hostname: {long_host}
  vips: ["/10.96.9.2"]
"#,
        vips = vips.join(", ")
    )
}

/// What [`dns_packet`] answers against, built once per thread.
struct World {
    snap: Snapshot,
    index: HostIndex,
    zone: Zone,
}

thread_local! {
    static WORLD: World = {
        let local = crate::control::local::parse(&mesh_yaml())
            .expect("the DNS fuzz mesh is valid");
        let mut b = SnapshotBuilder::default();
        local.workloads.into_iter().for_each(|w| b.insert_workload(w));
        local.services.into_iter().for_each(|s| b.insert_service(s));
        let snap = b.build(1);
        let index = HostIndex::build(&snap);
        let zone = Zone {
            domain: "cluster.local".into(),
            ipv6: true,
            preferred_namespace: Some("default".into()),
        };
        World { snap, index, zone }
    };
}

/// Query types worth aiming at: answered locally, forwarded, and unknown to hickory.
const TYPES: &[u16] = &[1, 28, 5, 16, 33, 64, 65, 255, 0, 0xff00, 0xffff];

/// A DNS query header: `id`, RD set, one count per section.
fn write_header(out: &mut Vec<u8>, id: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// A name in wire form from dot-separated `text`, labels written with their real length
/// (so labels over 63 bytes and names over 255 bytes come out as such).
fn write_name(out: &mut Vec<u8>, text: &[u8]) {
    for label in text.split(|b| *b == b'.').filter(|l| !l.is_empty()) {
        let label = &label[..label.len().min(255)];
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

/// The EDNS OPT pseudo-record advertising `size` bytes.
fn write_opt(out: &mut Vec<u8>, size: u16) {
    out.push(0);
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// A well-formed query for `name` of type `qtype`, with EDNS when `edns` is set.
fn query(name: &[u8], qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = Vec::new();
    write_header(&mut q, 0x1234, [1, 0, 0, u16::from(edns.is_some())]);
    write_name(&mut q, name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        write_opt(&mut q, size);
    }
    q
}

/// Largest message a shape may build (the TCP frame limit).
const MAX_MESSAGE: usize = 65_535;

/// Turns a fuzz input into a DNS message. Byte 0 selects the transport (bit 0: TCP), whether
/// the client is a mesh workload (bit 1: unknown) and a shape (bits 2–4); the rest feeds it:
///
/// - 0: the rest is the raw message;
/// - 1: a query built from `[type index][EDNS size hi][EDNS size lo][name…]`;
/// - 2: a header claiming `[count hi][count lo]` questions, then `[repeat][question…]`
///   repeated;
/// - 3: a compression pointer at `[hi][lo]` as the name, then the raw rest;
/// - 4: a well-formed query for `[name…]` cut at `[cut]` bytes;
/// - 5: a query whose name is the rest repeated until it is longer than 255 bytes.
fn build(shape: u8, rest: &[u8]) -> Vec<u8> {
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    let mut out = match shape {
        1 => {
            let qtype = TYPES[byte(0) as usize % TYPES.len()];
            let size = u16::from_be_bytes([byte(1), byte(2)]);
            let edns = (size != 0).then_some(size);
            query(rest.get(3..).unwrap_or_default(), qtype, edns)
        }
        2 => {
            let count = u16::from_be_bytes([byte(0), byte(1)]);
            let repeat = usize::from(byte(2));
            let question = rest.get(3..).unwrap_or_default();
            let mut q = Vec::new();
            write_header(&mut q, 0x1234, [count, 0, 0, 0]);
            for _ in 0..repeat {
                if q.len() + question.len() > MAX_MESSAGE {
                    break;
                }
                q.extend_from_slice(question);
            }
            q
        }
        3 => {
            let mut q = Vec::new();
            write_header(&mut q, 0x1234, [1, 0, 0, 0]);
            q.extend_from_slice(&(0xc000 | u16::from_be_bytes([byte(0), byte(1)])).to_be_bytes());
            q.extend_from_slice(rest.get(2..).unwrap_or_default());
            q
        }
        4 => {
            let q = query(rest.get(1..).unwrap_or_default(), 1, Some(1232));
            let cut = usize::from(byte(0)).min(q.len());
            q[..cut].to_vec()
        }
        5 => {
            let label = if rest.is_empty() { &b"a."[..] } else { rest };
            let mut name = Vec::new();
            while name.len() <= 255 {
                name.extend_from_slice(label);
            }
            query(&name, 1, None)
        }
        _ => rest.to_vec(),
    };
    out.truncate(MAX_MESSAGE);
    out
}

/// One message through the DNS proxy's decision (parse, local answer, response encoding) for
/// a pod of the fuzz mesh. Never panics; answers fit the transport's size limit (512 bytes
/// over UDP without EDNS, the advertised 1232 with it) and keep the query's id.
pub(super) fn packet(input: &[u8]) {
    let Some((raw, transport, outcome)) = decide(input) else {
        return;
    };
    let classic = Message::from_vec(&raw).is_ok_and(|m| m.extensions().is_none());
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp if classic => 512,
        Transport::Udp => 1232,
    };
    match outcome {
        Outcome::Drop => assert!(raw.len() < 12, "a {}-byte message dropped", raw.len()),
        Outcome::Forward { limit: l, .. } => assert!(l <= limit, "forward limit {l}"),
        Outcome::Reply { bytes, .. } => {
            assert!(
                bytes.len() <= limit,
                "{}-byte answer over {limit}",
                bytes.len()
            );
            let answer = Message::from_vec(&bytes).expect("ztun's answers decode");
            assert_eq!(answer.id(), u16::from_be_bytes([raw[0], raw[1]]));
        }
    }
}

/// The message an input stands for, its transport, and what the proxy decides for it.
fn decide(input: &[u8]) -> Option<(Vec<u8>, Transport, Outcome)> {
    let (&flags, rest) = input.split_first()?;
    let transport = if flags & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let raw = build((flags >> 2) & 7, rest);
    let outcome = WORLD.with(|world| {
        let client = world.snap.workload_by_pod("default", "client", None);
        let client = if flags & 2 == 0 { client } else { None };
        respond(
            &raw,
            transport,
            client.map(|w| &**w),
            &world.snap,
            &world.index,
            &world.zone,
        )
        .0
    });
    Some((raw, transport, outcome))
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;

    use super::*;

    fn reply(input: &[u8]) -> Message {
        match decide(input).expect("an input").2 {
            Outcome::Reply { bytes, .. } => Message::from_vec(&bytes).expect("decodes"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The committed seed of that name (`fuzz/seeds/dns/<name>`).
    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds/dns")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The seeds reach past the header checks: local answers (truncated over UDP, complete
    /// over TCP), forwarding, and each malformed shape's refusal.
    #[test]
    fn seeds_exercise_answers_forwarding_and_refusals() {
        let udp = reply(&seed("udp-mesh-short-name"));
        assert!(udp.truncated() && udp.response_code() == ResponseCode::NoError);
        let tcp = reply(&seed("tcp-fqdn-aaaa-edns"));
        assert_eq!(tcp.answers().len(), 50, "every IPv6 VIP over TCP");
        assert!(matches!(
            decide(&seed("forwarded-https")).unwrap().2,
            Outcome::Forward { .. }
        ));
        assert_eq!(
            reply(&seed("unknown-client")).response_code(),
            ResponseCode::ServFail
        );
        assert_eq!(reply(&seed("wildcard-edns")).answers().len(), 1, "wildcard");
        for name in [
            "many-questions",
            "compression-loop",
            "cut-query",
            "long-name",
        ] {
            assert_eq!(
                reply(&seed(name)).response_code(),
                ResponseCode::FormErr,
                "{name}"
            );
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/dns");
        for entry in std::fs::read_dir(dir).expect("fuzz/seeds/dns") {
            packet(&std::fs::read(entry.expect("a seed").path()).expect("reading a seed"));
        }
    }
}
