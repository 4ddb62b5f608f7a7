//! Policy inputs: a policy set given by an operator is parsed and validated against the schema
//! without a panic, and a set that loads decides without one.
#![no_main]

use kluis::policy::{DEFAULT_SCHEMA, Engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Engine::from_sources(DEFAULT_SCHEMA, text);
    let _ = Engine::from_files(DEFAULT_SCHEMA, &[("fuzz.cedar".into(), text.into())]);
});
