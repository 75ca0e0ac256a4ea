//! A deterministic fuzz smoke run on stable: every input of the committed
//! corpus (`fuzz/corpus/<target>/`, minimized with `cargo fuzz cmin`) goes
//! through the same function the fuzz target calls, so `make test` replays
//! what the fuzzer found interesting without needing nightly.

use std::path::PathBuf;

use iso8583::fuzzing;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    // A corpus that went missing would make this test pass vacuously.
    assert!(
        inputs.len() >= 20,
        "{}: {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

fn replay(target: &str, body: fn(&[u8])) {
    for (path, input) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| body(&input));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
    }
}

#[test]
fn unpack_ascii_corpus() {
    replay("unpack_ascii", fuzzing::unpack_ascii);
}

#[test]
fn unpack_cup_corpus() {
    replay("unpack_cup", fuzzing::unpack_cup);
}

#[test]
fn round_trip_corpus() {
    replay("round_trip", fuzzing::round_trip);
}
