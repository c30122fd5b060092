//! The fuzz targets' bodies (`ringmq::fuzzing`) on the stable toolchain:
//! every seed, the checked-in files of `fuzz/corpus/<target>/` (the seeds
//! and the inputs of fixed bugs, `regression-*`), then a seeded, time- and count-bounded loop of
//! random mutations of them. `RINGMQ_FUZZ_SEED` picks another seed,
//! `RINGMQ_FUZZ_SECONDS` another time budget per target. An input that
//! fails is written to `target/fuzz-failures/<target>-<seed>` for
//! `cargo +nightly fuzz run <target> <file>`.

use ringmq::fuzzing::{self, seeds, LargestAllocation};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

const MUTATIONS_MAX: usize = 20_000;
const SECONDS_DEFAULT: f64 = 1.0;
const INPUT_BYTES_MAX: usize = 64 * 1024;

#[test]
fn the_frame_decoder_holds() {
    run("frame", fuzzing::frame, seeds::frames());
}

#[test]
fn the_message_verifier_holds() {
    run("message", fuzzing::message, seeds::messages());
}

#[test]
fn every_request_kind_holds() {
    run("request", fuzzing::request, seeds::requests());
}

/// Writes the seeds into `fuzz/corpus/`: run after changing them.
#[test]
#[ignore]
fn write_the_seed_corpus() {
    for (target, seeds) in [("frame", seeds::frames()), ("message", seeds::messages()), ("request", seeds::requests())]
    {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        }
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Seeds and the inputs of fixed bugs; a local fuzz run adds files of its
/// own (named by their hash), not replayed here.
fn is_checked_in(path: &Path) -> bool {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    name.starts_with("seed-") || name.starts_with("regression-")
}

fn run(target: &str, body: fn(&[u8]), seeds: seeds::Seeds) {
    assert!(fuzzing::measuring(), "LargestAllocation measures this binary's allocations");
    let mut corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, bytes)| bytes).collect();
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .expect("fuzz/corpus/<target> is checked in")
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| is_checked_in(path))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz/corpus/{target} has inputs");
    corpus.extend(files.iter().map(|path| std::fs::read(path).expect("read a corpus file")));
    for input in &corpus {
        checked(target, body, input);
    }
    let seed = std::env::var("RINGMQ_FUZZ_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(0x5eed);
    let seconds = std::env::var("RINGMQ_FUZZ_SECONDS").ok().and_then(|seconds| seconds.parse().ok());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.unwrap_or(SECONDS_DEFAULT));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut runs = 0;
    while runs < MUTATIONS_MAX && Instant::now() < deadline {
        let input = mutate(&mut rng, &corpus);
        checked(target, body, &input);
        runs += 1;
    }
    eprintln!("{target}: {} corpus inputs, {runs} mutations (seed {seed})", corpus.len());
}

/// Runs `body`; an input that panics is kept for replay before the panic
/// goes on.
fn checked(target: &str, body: fn(&[u8]), input: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(input))) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let path = dir.join(format!("{target}-{:016x}", fastrand::u64(..)));
        if std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)).is_ok() {
            eprintln!("{target}: failing input written to {}", path.display());
        }
        resume_unwind(panic);
    }
}

/// One to four of libFuzzer's usual mutations of a corpus input.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: [u32; 10] = [0, 1, 5, 6, 0x7f, 0xff, 0x100, 0xffff, 0x7fff_ffff, u32::MAX];
    let mut input = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=input.len());
        match rng.u8(..8) {
            0 if !input.is_empty() => {
                let at = rng.usize(..input.len());
                input[at] ^= 1 << rng.u8(..8);
            }
            1 if !input.is_empty() => {
                let at = rng.usize(..input.len());
                input[at] = rng.u8(..);
            }
            2 => {
                let value = INTERESTING[rng.usize(..INTERESTING.len())].to_le_bytes();
                let end = (at + 4).min(input.len());
                input[at..end].copy_from_slice(&value[..end - at]);
            }
            3 => {
                let end = rng.usize(at..=input.len().min(at + 64));
                input.drain(at..end);
            }
            4 => {
                let from = rng.usize(..=input.len());
                let end = rng.usize(from..=input.len().min(from + 64));
                let copy = input[from..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => input.truncate(at),
            6 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let byte = rng.u8(..);
                let count = rng.usize(1..=16);
                input.splice(at..at, std::iter::repeat_n(byte, count));
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
    input
}
