//! Fuzzes the qcow2 parser and driver with untrusted image bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    paddock_disk::fuzzing::exercise_encoded(Some(paddock_disk::Format::Qcow2), data);
});
