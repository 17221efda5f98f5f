//! Replays every input checked in under `fuzz/regressions/<target>/` (inputs that once
//! crashed or hung a parser, or hand-written hostile ones; a `*_structured` target's crash is
//! checked in rendered, under its byte target) and every seed under `fuzz/seeds/<target>/`
//! through the fuzz target bodies (`ztun::fuzz::targets`), so the normal test run catches a
//! regression without a fuzzing step. The fuzzing itself is cargo-fuzz in `fuzz/` (see
//! fuzz/README.md).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ztun::fuzz::targets::{self, Body};

/// The fewest inputs a target keeps under `fuzz/regressions/<target>/`: inputs are added, never
/// dropped. `dns`: the hand-written hostile messages fuzz/README.md lists.
const MIN_REGRESSIONS: &[(&str, usize)] = &[("dns", 4)];

/// The fewest seeds every cargo-fuzz target (`fuzz/fuzz_targets/<target>.rs`) has under
/// `fuzz/seeds/<target>/`.
const MIN_SEEDS: usize = 2;

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

/// How many regular files `dir` holds (0 if it does not exist).
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .count()
    })
}

/// The cargo-fuzz targets: the stems of `fuzz/fuzz_targets/*.rs`, sorted.
fn cargo_fuzz_targets() -> Vec<String> {
    let dir = root("fuzz/fuzz_targets");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.expect("listing fuzz/fuzz_targets").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn fuzz_regression_inputs_replay_cleanly() {
    let found = inputs(&root("fuzz/regressions"), false);
    assert!(
        !found.is_empty(),
        "fuzz/regressions/ holds no input to replay"
    );
    let replayed = replay(&found);
    for (name, min) in MIN_REGRESSIONS {
        let have = files_in(&root("fuzz/regressions").join(name));
        assert!(
            have >= *min,
            "fuzz/regressions/{name}/ holds {have} input(s), want at least {min}"
        );
    }
    eprintln!("replayed {replayed} regression input(s)");
}

#[test]
fn fuzz_seed_corpora_replay_cleanly_and_cover_every_target() {
    let found = inputs(&root("fuzz/seeds"), true);
    let replayed = replay(&found);
    for (name, _) in targets::ALL {
        let dir = root("fuzz/seeds").join(name);
        assert!(
            found.iter().any(|(p, _)| p.starts_with(&dir)),
            "fuzz/seeds/{name}/ holds no seed"
        );
    }
    // Every cargo-fuzz target, `*_structured` ones included, starts from committed seeds
    // (`scripts/fuzz.sh --check` copies them), and every body has its cargo-fuzz target.
    let fuzz_targets = cargo_fuzz_targets();
    for (name, _) in targets::ALL {
        assert!(
            fuzz_targets.iter().any(|t| t == name),
            "{name} has no fuzz/fuzz_targets/{name}.rs"
        );
    }
    for name in &fuzz_targets {
        let have = files_in(&root("fuzz/seeds").join(name));
        assert!(
            have >= MIN_SEEDS,
            "fuzz/seeds/{name}/ holds {have} seed(s), want at least {MIN_SEEDS}"
        );
    }
    eprintln!(
        "replayed {replayed} seed(s); {} cargo-fuzz targets seeded",
        fuzz_targets.len()
    );
}
