//! `ztun-fuzz`: runs the in-repo fuzz targets (`ztun::fuzz`) on stable Rust.
//!
//! ```text
//! ztun-fuzz [--target NAME]... [--seconds N] [--iterations N] [--seed N | --random-seed]
//!           [--artifacts DIR] [--corpus DIR] [--list]
//! ```
//! Each target runs for `--seconds` (default 2) or `--iterations`, whichever ends first.
//! Failing inputs are written to `<artifacts>/<target>/crash-<hash>` (default
//! `fuzz/artifacts`); `<corpus>/<target>/` (default `fuzz/corpus`) adds seeds. Exits non-zero
//! if any target failed.

use std::path::PathBuf;
use std::time::Duration;

use ztun::fuzz::{self, targets, Budget};

fn main() -> anyhow::Result<()> {
    let mut names: Vec<String> = Vec::new();
    let mut seconds = 2.0f64;
    let mut iterations = u64::MAX;
    let mut seed = 1u64;
    let mut artifacts = PathBuf::from("fuzz/artifacts");
    let mut corpus = PathBuf::from("fuzz/corpus");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--target" => names.push(value()?),
            "--seconds" => seconds = value()?.parse()?,
            "--iterations" => iterations = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--random-seed" => seed = rand::random(),
            "--artifacts" => artifacts = value()?.into(),
            "--corpus" => corpus = value()?.into(),
            "--list" => {
                for t in targets::ALL {
                    println!("{}", t.name);
                }
                return Ok(());
            }
            other => anyhow::bail!(
                "unknown argument {other:?} (see the doc comment in src/bin/ztun-fuzz.rs)"
            ),
        }
    }
    let selected: Vec<&fuzz::Target> = if names.is_empty() {
        targets::ALL.iter().collect()
    } else {
        names
            .iter()
            .map(|n| targets::find(n).ok_or_else(|| anyhow::anyhow!("no target {n:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let budget = Budget {
        time: Duration::from_secs_f64(seconds),
        iterations,
    };
    let mut failed = false;
    for t in selected {
        let extra: Vec<Vec<u8>> = fuzz::load_dir(&corpus.join(t.name))?
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let report = fuzz::run(t, seed, budget, &extra);
        println!(
            "fuzz {:<18} seed {seed:<20} {:>8} execs  {} failing input(s)",
            t.name,
            report.executions,
            report.crashes.len()
        );
        for c in &report.crashes {
            failed = true;
            let dir = artifacts.join(t.name);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("crash-{:016x}", fnv1a(&c.input)));
            std::fs::write(&path, &c.input)?;
            println!("  {}: {}", path.display(), c.reason);
        }
    }
    if failed {
        anyhow::bail!("fuzzing found failing inputs (see above); add them under fuzz/regressions/<target>/ once fixed");
    }
    Ok(())
}

/// A stable name for an artifact.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
