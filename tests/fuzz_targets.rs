//! The fuzz targets of tests/fuzz on stable (the session target against an in-process node
//! on the embedded backend): replays the seed and regression inputs, then
//! feeds seeded random inputs (a bounded random driver; libFuzzer needs nightly, see
//! docs/fuzzing.md) for `SWITCHBOARD_FUZZ_SECS` seconds per target (default 2, the CI pass).
//! `SWITCHBOARD_FUZZ_SEED` repeats a run; the seed is printed either way.

#[path = "fuzz/src/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use checks::Rng;

/// Fuzzing time per target.
fn budget() -> Duration {
    let secs = std::env::var("SWITCHBOARD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// The run's seed: given, or from the clock.
fn seed() -> u64 {
    std::env::var("SWITCHBOARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Runs `target` on `input`; on a panic prints the input (to add under regressions/) first.
fn check(name: &str, target: fn(&[u8]), input: &[u8]) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| target(input))) {
        eprintln!(
            "{name}: failing input {:?}",
            input.escape_ascii().to_string()
        );
        resume_unwind(p);
    }
}

/// Replays tests/fuzz/{seeds,regressions}/`name`/*; returns how many inputs.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for e in entries {
            let input = std::fs::read(e.unwrap().path()).unwrap();
            check(name, target, &input);
            n += 1;
        }
    }
    n
}

/// Replays, then fuzzes `target` with inputs from `generate` until the budget is spent.
/// At least `min` inputs even on a slow machine.
fn drive(name: &str, target: fn(&[u8]), generate: fn(&mut Rng) -> Vec<u8>, min: u64) {
    let replayed = replay(name, target);
    assert!(replayed > 0, "{name}: no seed inputs found");
    let seed = seed();
    eprintln!("{name}: seed {seed} (SWITCHBOARD_FUZZ_SEED={seed} repeats this run)");
    let mut rng = Rng::new(seed);
    let (start, budget) = (Instant::now(), budget());
    let mut n: u64 = 0;
    while n < min || start.elapsed() < budget {
        let input = generate(&mut rng);
        check(name, target, &input);
        n += 1;
    }
    eprintln!(
        "{name}: {replayed} seed inputs, {n} random inputs in {:.1} s, 0 failures",
        start.elapsed().as_secs_f64()
    );
}

/// A frame-reader input: control bytes, then frames (requests or raw bytes) with mixed
/// endings, sometimes an unfinished one.
fn reader_input(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![rng.next_u64() as u8, rng.below(16) as u8];
    for _ in 0..usize::from(v[1]) {
        v.push(if rng.one_in(2) {
            rng.below(4) as u8
        } else {
            rng.next_u64() as u8
        });
    }
    for _ in 0..rng.below(8) {
        let n = rng.below(80);
        v.extend(if rng.one_in(2) {
            rng.bytes(n)
        } else {
            rng.frame()
        });
        const ENDINGS: [&[u8]; 5] = [b"\n", b"\r\n", b"\r\r\n", b"", b"\n\n"];
        v.extend_from_slice(rng.pick::<&[u8]>(&ENDINGS));
    }
    v
}

#[test]
fn frame_reader() {
    drive("frame_reader", checks::frame_reader, reader_input, 1000);
}

#[test]
fn request() {
    drive("request", checks::request, Rng::frame, 1000);
}

#[test]
fn session() {
    drive("session", checks::session, Rng::session, 50);
}
