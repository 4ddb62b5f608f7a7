//! The bearer token as it arrives in metadata: never a panic, never a token longer than allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = MetadataValue::try_from(data) else {
        return;
    };
    let mut map = MetadataMap::new();
    map.insert("authorization", value);
    if let Ok(token) = kluis::api::bearer_token(&map) {
        let t = token.expose_secret();
        assert!(!t.is_empty() && t.len() <= 256);
    }
});
