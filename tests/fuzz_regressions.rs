//! Replays every input checked in under `fuzz/regressions/<target>/` (inputs that once
//! crashed or hung a parser, or hand-written hostile ones; a `*_structured` target's crash is
//! checked in rendered, under its byte target) and every seed under `fuzz/seeds/<target>/`
//! through the fuzz target bodies (`ztun::fuzz::targets`), so the normal test run catches a
//! regression without a fuzzing step. The fuzzing itself is cargo-fuzz in `fuzz/` (see
//! fuzz/README.md).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ztun::fuzz::targets::{self, Body};

/// The regular files of each `<root>/<target>/` directory, sorted, with the target's body.
/// Panics if `root` is missing, or holds a file or a directory that names no target. The
/// `*_structured` targets' directories are skipped when `skip_structured` is set: their input
/// is `arbitrary`'s encoding, rendered by the fuzz crate (fuzz/src/), not a body's input.
fn inputs(root: &Path, skip_structured: bool) -> Vec<(PathBuf, Body)> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for entry in entries {
        let dir = entry.expect("listing a fuzz directory").path();
        assert!(
            dir.is_dir(),
            "{}: inputs belong in a <target>/ directory",
            dir.display()
        );
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if skip_structured && name.ends_with("_structured") {
            continue;
        }
        let target =
            targets::find(name).unwrap_or_else(|| panic!("{}: no such fuzz target", dir.display()));
        for file in std::fs::read_dir(&dir).expect("listing a target's inputs") {
            let path = file.expect("listing a target's inputs").path();
            if path.is_file() {
                out.push((path, target));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Runs every input through its target; returns how many ran. Fails naming each input that
/// panics.
fn replay(inputs: &[(PathBuf, Body)]) -> usize {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (path, target) in inputs {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match panic::catch_unwind(AssertUnwindSafe(|| target(&bytes))) {
            Ok(()) => replayed += 1,
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "failing again: {failed:?}");
    replayed
}

fn root(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
}

#[test]
fn fuzz_regression_inputs_replay_cleanly() {
    let found = inputs(&root("fuzz/regressions"), false);
    assert!(
        !found.is_empty(),
        "fuzz/regressions/ holds no input to replay"
    );
    let replayed = replay(&found);
    assert_eq!(replayed, found.len(), "every checked-in input replayed");
    eprintln!("replayed {replayed} regression input(s)");
}

#[test]
fn fuzz_seed_corpora_replay_cleanly_and_cover_every_target() {
    let found = inputs(&root("fuzz/seeds"), true);
    let replayed = replay(&found);
    assert_eq!(replayed, found.len(), "every seed replayed");
    for (name, _) in targets::ALL {
        let dir = root("fuzz/seeds").join(name);
        assert!(
            found.iter().any(|(p, _)| p.starts_with(&dir)),
            "fuzz/seeds/{name}/ holds no seed"
        );
    }
    eprintln!("replayed {replayed} seed(s)");
}
