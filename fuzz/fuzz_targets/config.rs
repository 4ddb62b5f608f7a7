//! The configuration file: parsing and validation never panic, whatever the TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = toml::from_str::<kluis::config::RawConfig>(text) {
        let _ = raw.validate(false);
    }
});
