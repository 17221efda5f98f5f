//! Structured inputs for the `*_structured` fuzz targets: `arbitrary` builds well-formed HTTP/2
//! frame sequences and xDS resources (lengths, framing and protobuf encoding always right, text
//! drawn mostly from values the parsers care about), which are then rendered to the bytes the
//! byte target of the same family takes (`h2_frames`, `xds_address`, `xds_authorization`).
//!
//! A crash found by a structured target is a crash of the byte target on the rendered bytes:
//! run the artifact with `ZTUN_FUZZ_RENDER=<file>` set to write those bytes, and check them in
//! under `fuzz/regressions/<byte target>/`.

pub mod h2;
pub mod xds;

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;

/// Writes `bytes` to the file named by `ZTUN_FUZZ_RENDER`, if set (read once).
// A developer's switch for this harness, not ztun configuration (which `config::Source` reads).
#[allow(clippy::disallowed_methods)]
pub fn render(bytes: &[u8]) {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    if let Some(path) = PATH.get_or_init(|| std::env::var_os("ZTUN_FUZZ_RENDER").map(PathBuf::from))
    {
        if let Err(e) = std::fs::write(path, bytes) {
            eprintln!("ZTUN_FUZZ_RENDER {}: {e}", path.display());
        }
    }
}

/// Names, namespaces, hosts and identities the parsers treat specially.
const WORDS: &[&str] = &[
    "default",
    "kube-system",
    "istio-system",
    "cluster.local",
    "example.org",
    "web",
    "db-0",
    "net1",
    "node-1",
    "example.com",
    "db.default.svc.cluster.local",
    "*.example.com",
    "*",
    "cluster1//v1/Pod/default/web",
    "default/allow-some",
    "default/waypoint.default.svc.cluster.local",
    "spiffe://cluster.local/ns/default/sa/web",
    "cluster.local/ns/default/sa/web",
    "10.0.0.1",
    "fd00::1",
    "Deployment",
    "UPPER",
    "-leading",
    "a..b",
    "ünïcode",
    "with space",
    "a/b/c",
];

/// A string: empty, a word the parsers care about, a label at a length limit, or anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    /// `""`.
    Empty,
    /// One of [`WORDS`].
    Word(u8),
    /// `n` times `a` (63- and 253-byte limits).
    Long(u16),
    /// Any UTF-8.
    Any(String),
}

impl Text {
    /// The text itself.
    pub fn render(&self) -> String {
        match self {
            Text::Empty => String::new(),
            Text::Word(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
            Text::Long(n) => "a".repeat(usize::from(*n % 300)),
            Text::Any(s) => s.clone(),
        }
    }
}

/// An IP address as bytes: IPv4, IPv6, or any length.
#[derive(Arbitrary, Debug, Clone)]
pub enum Ip {
    /// 4 bytes.
    V4([u8; 4]),
    /// 16 bytes.
    V6([u8; 16]),
    /// Anything else.
    Raw(Vec<u8>),
}

impl Ip {
    /// The address bytes.
    pub fn render(&self) -> Vec<u8> {
        match self {
            Ip::V4(b) => b.to_vec(),
            Ip::V6(b) => b.to_vec(),
            Ip::Raw(b) => b.clone(),
        }
    }
}

/// A port: a common one, a bound, or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PortNum {
    /// 80, 443, 8080, 15008, …
    Common(u8),
    /// 0, 65535, 65536, `u32::MAX`.
    Edge(u8),
    /// Any `u32`.
    Any(u32),
}

impl PortNum {
    /// The number.
    pub fn render(self) -> u32 {
        const COMMON: &[u32] = &[80, 443, 8080, 9090, 15008, 15009, 15088];
        const EDGE: &[u32] = &[0, 1, 65535, 65536, u32::MAX];
        match self {
            PortNum::Common(i) => COMMON[usize::from(i) % COMMON.len()],
            PortNum::Edge(i) => EDGE[usize::from(i) % EDGE.len()],
            PortNum::Any(n) => n,
        }
    }
}

/// A protobuf enum value: mostly a known one (0..=3), sometimes any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Enum {
    /// `n % 4`.
    Known(u8),
    /// Anything.
    Any(i32),
}

impl Enum {
    /// The wire value.
    pub fn render(self) -> i32 {
        match self {
            Enum::Known(n) => i32::from(n % 4),
            Enum::Any(n) => n,
        }
    }
}
