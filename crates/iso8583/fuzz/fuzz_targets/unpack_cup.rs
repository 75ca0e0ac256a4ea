//! Fuzz target `unpack_cup`: the body is `iso8583::fuzzing::unpack_cup`, shared with
//! the deterministic smoke test in `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iso8583::fuzzing::unpack_cup(data));
