//! A small mutational fuzzer that runs on stable Rust (cargo-fuzz needs nightly and a
//! libFuzzer build): seed corpus + byte-level mutations + a fast deterministic PRNG, bounded
//! by time and iterations, panics caught per input.
//!
//! Every parser of outside input has a [`Target`] ([`targets::ALL`]). Three drivers use it:
//! `scripts/test.sh` (a short run of each target with fixed seeds, via `ztun-fuzz`),
//! `scripts/fuzz.sh` (long runs with random seeds; crashers are written to
//! `fuzz/artifacts/<target>/`) and `tests/fuzz_regressions.rs` (replays the inputs checked in
//! under `fuzz/regressions/<target>/`).
//!
//! What counts as a failure: a panic, or one input taking longer than [`SLOW_INPUT`]. Memory is
//! not metered per input; the targets cap their own input sizes where a parser has no bound.
//!
//! Allowed imports: anything in the crate (this is a test harness behind `testing`).

mod dns;
pub mod targets;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An input slower than this is reported as a failure (parsers must be linear-ish).
pub const SLOW_INPUT: Duration = Duration::from_secs(2);
/// Largest input the mutator produces.
pub const MAX_INPUT: usize = 64 * 1024;

/// One fuzz target: a parser of outside input and its seed corpus.
pub struct Target {
    /// Stable name (also the directory name under `fuzz/`).
    pub name: &'static str,
    /// Valid (or interesting) inputs to start mutating from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Runs one input through the code under test; must never panic.
    pub run: fn(&[u8]),
}

/// How long a run may go on.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Wall-clock limit.
    pub time: Duration,
    /// Iteration limit.
    pub iterations: u64,
}

/// A failing input.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The input.
    pub input: Vec<u8>,
    /// Panic message, or a note that the input was too slow.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs executed.
    pub executions: u64,
    /// Distinct failing inputs (at most [`MAX_CRASHES`] kept).
    pub crashes: Vec<Crash>,
}

/// Crashers kept per run; after that the run stops (one bug usually shows up many times).
pub const MAX_CRASHES: usize = 8;

/// Runs `target` from its seeds (plus `extra` corpus inputs) with a PRNG seeded by `seed`.
pub fn run(target: &Target, seed: u64, budget: Budget, extra: &[Vec<u8>]) -> Report {
    let mut corpus: Vec<Vec<u8>> = (target.seeds)();
    corpus.extend(extra.iter().cloned());
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let start = Instant::now();
    let _quiet = QuietPanics::install();
    // Every seed first, unmutated.
    let seeds = corpus.clone();
    let fixed = seeds.len();
    for input in seeds {
        check(target, input, &mut report);
    }
    while report.executions < budget.iterations
        && start.elapsed() < budget.time
        && report.crashes.len() < MAX_CRASHES
    {
        // Half the time start from an original seed, so depth is never lost to a corpus
        // of shrunken mutants.
        let base = if rng.below(2) == 0 {
            &corpus[rng.below(fixed)]
        } else {
            &corpus[rng.below(corpus.len())]
        };
        let other = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, other);
        // Keep a few mutants around so mutations stack up (cheap stand-in for coverage
        // feedback): a bounded corpus with random replacement.
        if rng.below(16) == 0 {
            if corpus.len() < fixed + 256 {
                corpus.push(input.clone());
            } else {
                let i = fixed + rng.below(corpus.len() - fixed);
                corpus[i] = input.clone();
            }
        }
        check(target, input, &mut report);
    }
    report
}

/// Replays one input; `Err` carries the panic message.
pub fn replay(target: &Target, input: &[u8]) -> Result<(), String> {
    let _quiet = QuietPanics::install();
    execute(target, input)
}

/// The inputs in `dir` (all regular files), sorted by name for determinism.
pub fn load_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn check(target: &Target, input: Vec<u8>, report: &mut Report) {
    report.executions += 1;
    let start = Instant::now();
    let result = execute(target, &input);
    let slow = start.elapsed() > SLOW_INPUT;
    let reason = match (result, slow) {
        (Err(msg), _) => msg,
        (Ok(()), true) => format!("input took {:?} (limit {SLOW_INPUT:?})", start.elapsed()),
        (Ok(()), false) => return,
    };
    if !report.crashes.iter().any(|c| c.reason == reason) {
        report.crashes.push(Crash { input, reason });
    }
}

fn execute(target: &Target, input: &[u8]) -> Result<(), String> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    match panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        Ok(()) => Ok(()),
        Err(payload) => {
            let msg = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(msg)
        }
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook while fuzzing: records the message and location instead of
/// printing a backtrace per crashing input. Restores the previous hook when dropped.
struct QuietPanics;

impl QuietPanics {
    fn install() -> QuietPanics {
        panic::set_hook(Box::new(|info| {
            let loc = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("panic at {loc}: {msg}")));
        }));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let _ = panic::take_hook();
    }
}

/// xorshift64*: fast, deterministic per seed, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is remapped; xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`; 0 yields 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// Values that tend to hit edge cases in length fields, varints and ports.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// One to four stacked mutations of `base` (with `other` for splicing).
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            // Flip a bit.
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            // Random byte.
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            // Insert random bytes.
            2 => {
                let at = rng.below(out.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            // Delete a range.
            3 if !out.is_empty() => {
                let at = rng.below(out.len());
                let n = 1 + rng.below((out.len() - at).min(16));
                out.drain(at..at + n);
            }
            // Duplicate a range (grows repeated fields, nests).
            4 if !out.is_empty() => {
                let at = rng.below(out.len());
                let n = 1 + rng.below((out.len() - at).min(64));
                let chunk = out[at..at + n].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, chunk);
            }
            // Splice with another corpus entry.
            5 if !other.is_empty() => {
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            // Interesting value, little-endian or as a protobuf varint.
            6 if !out.is_empty() => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(out.len());
                if rng.below(2) == 0 {
                    let bytes = v.to_le_bytes();
                    let n = [1, 2, 4, 8][rng.below(4)];
                    let end = (at + n).min(out.len());
                    out[at..end].copy_from_slice(&bytes[..end - at]);
                } else {
                    let mut varint = Vec::new();
                    let mut v = v;
                    loop {
                        let b = (v & 0x7f) as u8;
                        v >>= 7;
                        if v == 0 {
                            varint.push(b);
                            break;
                        }
                        varint.push(b | 0x80);
                    }
                    out.splice(at..at + 1, varint);
                }
            }
            // ASCII specials that parsers split on.
            7 => {
                const SPECIAL: &[u8] = b":/[]%.,;=\"\\\0 \r\n\t@-*?#";
                let at = rng.below(out.len() + 1);
                out.insert(at, SPECIAL[rng.below(SPECIAL.len())]);
            }
            // Truncate.
            8 if !out.is_empty() => {
                let n = rng.below(out.len());
                out.truncate(n);
            }
            // Swap two bytes.
            _ if out.len() > 1 => {
                let i = rng.below(out.len());
                let j = rng.below(out.len());
                out.swap(i, j);
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
    out.truncate(MAX_INPUT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutants() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let base = b"CONNECT 10.0.0.1:80".to_vec();
        for _ in 0..100 {
            assert_eq!(mutate(&mut a, &base, &base), mutate(&mut b, &base, &base));
        }
    }

    #[test]
    fn panics_are_caught_and_reported() {
        fn boom(input: &[u8]) {
            if input.first() == Some(&b'!') {
                panic!("bang");
            }
        }
        let target = Target {
            name: "boom",
            seeds: || vec![b"!".to_vec(), b"ok".to_vec()],
            run: boom,
        };
        let report = run(
            &target,
            1,
            Budget {
                time: Duration::from_secs(5),
                iterations: 10,
            },
            &[],
        );
        assert!(report.crashes.iter().any(|c| c.reason.contains("bang")));
        assert_eq!(replay(&target, b"ok"), Ok(()));
    }
}
