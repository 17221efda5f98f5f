//! Test fixtures, compiled only for tests and with the `testing` feature (integration tests
//! and the `ztun-lab` binary): the namespace lab (`lab`) and CA fixtures (`certs`).
//!
//! Nothing in production code may depend on this module.

pub mod bench;
pub mod certs;
pub mod control_plane_bench;
pub mod demo;
pub mod eastwest;
pub mod fixtures;
pub mod grpc;
pub mod hbone_server;
pub mod istioctl;
pub mod lab;
pub mod mesh;
pub mod rng;
pub mod state_bench;
pub mod waypoint;

use std::path::PathBuf;

use anyhow::bail;

/// Where the `ztun` binary under test is: `$ZTUN_BIN` if set; otherwise `ztun` next to the
/// running test binary's profile dir (`target/<profile>/deps/..`); otherwise the newest of
/// `target/debug/ztun` and `target/release/ztun` under the crate (or `$CARGO_TARGET_DIR`).
pub fn ztun_bin() -> anyhow::Result<PathBuf> {
    // Test tooling, not ztun's configuration: where the binary under test is.
    #[allow(clippy::disallowed_methods)]
    if let Some(bin) = std::env::var_os("ZTUN_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("ZTUN_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps; the other binaries one level up.
        let profile_dir = exe.parent().and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        });
        if let Some(dir) = profile_dir {
            let bin = dir.join("ztun");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    #[allow(clippy::disallowed_methods)]
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let mut candidates = Vec::new();
    for profile in ["debug", "release"] {
        let bin = target.join(profile).join("ztun");
        if let Ok(modified) = bin.metadata().and_then(|m| m.modified()) {
            candidates.push((modified, bin));
        }
    }
    match candidates.into_iter().max() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no ztun binary found (set ZTUN_BIN or run `cargo build --features testing --bins`) \
             under {}",
            target.display()
        ),
    }
}
