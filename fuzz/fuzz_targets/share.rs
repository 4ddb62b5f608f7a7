//! libFuzzer on `kluis::fuzzing::share` (see its documentation for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kluis::fuzzing::share(data));
