//! Fuzzes the vpc parser and driver with untrusted image bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    paddock_disk::fuzzing::exercise_encoded(Some(paddock_disk::Format::Vpc), data);
});
