//! Evidence segments: the header parser and the segment open never panic; garbage never opens.
#![no_main]

use kluis::crypto::{
    Algorithm,
    stream::{FileKey, SALT_LEN, SegmentHeader},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::parse(data);
    for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
        let key = FileKey::derive(&[3; 32], alg, 1, &[5; SALT_LEN], b"file").unwrap();
        assert!(key.open_segment(0, true, data).is_err());
        let sealed = key.seal_segment(2, false, data).unwrap();
        assert_eq!(key.open_segment(2, false, &sealed).unwrap().as_slice(), data);
        assert!(key.open_segment(2, true, &sealed).is_err());
    }
});
