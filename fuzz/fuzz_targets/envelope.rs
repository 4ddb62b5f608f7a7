//! The ciphertext envelope: parsing its header and opening it must never panic, and nothing
//! but the genuine ciphertext opens.
#![no_main]

use kluis::crypto::{self, Algorithm, Header};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    assert!(crypto::open(&KEY, b"aad", data).is_err());
    // A genuine ciphertext of the input opens to it; one flipped bit does not.
    let sealed = crypto::seal(&KEY, Algorithm::Aes256Gcm, 1, b"aad", data).unwrap();
    assert_eq!(crypto::open(&KEY, b"aad", &sealed).unwrap().as_slice(), data);
    let mut bad = sealed.clone();
    let i = data.len() % bad.len();
    bad[i] ^= 1;
    assert!(crypto::open(&KEY, b"aad", &bad).is_err());
});
