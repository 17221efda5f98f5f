//! The bodies of ztun's fuzz targets: one plain function per parser of outside input,
//! `ztun::fuzz::targets::<name>(data: &[u8])`, which must never panic.
//!
//! The fuzzing itself is cargo-fuzz (libFuzzer, coverage-guided) in `fuzz/`: each
//! `fuzz/fuzz_targets/<name>.rs` calls the function of the same name here (the `*_structured`
//! targets build their input with `arbitrary` first, then call the byte target they name).
//! Three drivers use these bodies: `scripts/test.sh` (a short deterministic run of every
//! cargo-fuzz target), `scripts/fuzz.sh` (long runs) and `tests/fuzz_regressions.rs` (replays the
//! inputs checked in under `fuzz/regressions/<target>/`). Seeds live in `fuzz/seeds/<target>/`.
//!
//! What counts as a failure: a panic (libFuzzer also reports inputs slower than its
//! `-timeout`). Memory is not metered per input beyond libFuzzer's RSS limit; the targets cap
//! their own input sizes where a parser has no bound.
//!
//! Allowed imports: anything in the crate (this is a test harness behind `testing`).

mod dns;
pub mod targets;
