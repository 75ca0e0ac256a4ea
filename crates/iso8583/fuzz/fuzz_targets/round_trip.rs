//! Fuzz target `round_trip`: the body is `iso8583::fuzzing::round_trip`, shared with
//! the deterministic smoke test in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iso8583::fuzzing::round_trip(data));
