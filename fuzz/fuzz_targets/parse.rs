//! Fuzz target: every parsing path of medpool-sip over arbitrary bytes (see `medpool_sip::fuzzing`).
//! Run: `cargo +nightly fuzz run parse fuzz/corpus/parse` (seed the corpus with node/sip/tests/rfc4475/*.dat
//! and node/sip/tests/corpus/*.dat, the door corpus).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = medpool_sip::fuzzing::exercise(data);
});
