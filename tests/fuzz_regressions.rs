//! Replays every input checked in under `fuzz/regressions/<target>/` (inputs that once
//! crashed or hung a parser, or hand-written hostile ones) and runs each fuzz target briefly with a fixed seed, so the
//! normal test run catches a regression without a separate fuzzing step.

use std::path::Path;
use std::time::Duration;

use ztun::fuzz::{self, targets, Budget};

#[test]
fn regression_inputs_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let dir = entry.expect("listing fuzz/regressions").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let target = targets::find(name)
            .unwrap_or_else(|| panic!("fuzz/regressions/{name}: no such fuzz target"));
        for (path, input) in fuzz::load_dir(&dir).expect("reading regression inputs") {
            if let Err(e) = fuzz::replay(target, &input) {
                panic!("{} fails again: {e}", path.display());
            }
            replayed += 1;
        }
    }
    // Hand-written hostile inputs (DNS) so far; the fuzzer has not found a crasher yet.
    eprintln!("replayed {replayed} regression input(s)");
}

#[test]
fn every_target_survives_a_short_fixed_seed_run() {
    for target in targets::ALL {
        let report = fuzz::run(
            target,
            1,
            Budget {
                time: Duration::from_secs(30),
                iterations: 300,
            },
            &[],
        );
        assert!(
            report.crashes.is_empty(),
            "{}: {:?}",
            target.name,
            report.crashes
        );
    }
}
