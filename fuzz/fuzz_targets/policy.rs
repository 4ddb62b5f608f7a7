//! libFuzzer on `kluis::fuzzing::policy` (see its documentation for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kluis::fuzzing::policy(data));
