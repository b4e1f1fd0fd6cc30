//! Fuzzes probing plus whatever driver the probe picks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    paddock_disk::fuzzing::exercise_encoded(None, data);
});
