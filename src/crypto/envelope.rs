//! The self-describing ciphertext format (version 1):
//!
//! ```text
//! offset  size  meaning
//! 0       1     format version (1)
//! 1       1     algorithm: 1 = AES-256-GCM, 2 = XChaCha20-Poly1305
//! 2       4     key reference, big endian (the version or generation of the key that sealed it)
//! 6       n     nonce: 12 bytes (AES-256-GCM) or 24 bytes (XChaCha20-Poly1305), random
//! 6+n     ..    ciphertext followed by the 16-byte tag
//! ```
//!
//! The 6 header bytes are part of the associated data, followed by the context's `aad`, so a
//! changed algorithm byte or key reference fails to open like any other tampering. Old formats and
//! algorithms stay readable when a newer one becomes the default (crypto agility).

use aes_gcm::{
    Aes256Gcm,
    aead::{Aead, KeyInit, Payload},
};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use zeroize::Zeroizing;

use super::CryptoError;

/// The current format version.
pub const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 6;
const TAG_LEN: usize = 16;

/// An AEAD algorithm kluis can seal with.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Algorithm {
    /// AES-256-GCM (the default; fast with AES instructions).
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305 (for CPUs without AES instructions; 192-bit nonces).
    XChaCha20Poly1305,
}

impl Algorithm {
    /// The configuration name, e.g. `aes-256-gcm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aes-256-gcm" => Some(Algorithm::Aes256Gcm),
            "xchacha20-poly1305" => Some(Algorithm::XChaCha20Poly1305),
            _ => None,
        }
    }

    pub(crate) fn id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::XChaCha20Poly1305 => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::XChaCha20Poly1305),
            _ => None,
        }
    }

    fn nonce_len(self) -> usize {
        match self {
            Algorithm::Aes256Gcm => 12,
            Algorithm::XChaCha20Poly1305 => 24,
        }
    }
}

/// The parsed header of a sealed value.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Header {
    /// The algorithm that sealed it.
    pub algorithm: Algorithm,
    /// The version or generation of the key that sealed it.
    pub key_ref: u32,
}

impl Header {
    /// Reads the header of `sealed` without opening it.
    pub fn parse(sealed: &[u8]) -> Result<Self, CryptoError> {
        let header = sealed.get(..HEADER_LEN).ok_or(CryptoError::Format)?;
        let [version, alg, k0, k1, k2, k3] =
            <[u8; HEADER_LEN]>::try_from(header).map_err(|_| CryptoError::Format)?;
        if version != FORMAT_V1 {
            return Err(CryptoError::Format);
        }
        let algorithm = Algorithm::from_id(alg).ok_or(CryptoError::Format)?;
        Ok(Self {
            algorithm,
            key_ref: u32::from_be_bytes([k0, k1, k2, k3]),
        })
    }
}

/// Seals `plaintext` under `key` with `algorithm`, recording `key_ref` in the header and binding
/// `aad` (built by `crypto::aad`).
pub fn seal(
    key: &[u8; 32],
    algorithm: Algorithm,
    key_ref: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 24 + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.push(algorithm.id());
    out.extend_from_slice(&key_ref.to_be_bytes());
    let nonce = nonce(algorithm);
    let full_aad = [out.as_slice(), aad].concat();
    let payload = Payload {
        msg: plaintext,
        aad: &full_aad,
    };
    let ciphertext = match algorithm {
        Algorithm::Aes256Gcm => {
            Aes256Gcm::new(key.into()).encrypt(aes_gcm::Nonce::from_slice(&nonce), payload)
        }
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(key.into())
            .encrypt(chacha20poly1305::XNonce::from_slice(&nonce), payload),
    }
    .map_err(|_| CryptoError::Seal)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens `sealed` under `key` with the associated data `aad`. Any failure is `CryptoError::Open`
/// or, for an unknown format, `CryptoError::Format`.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = Header::parse(sealed)?;
    let nonce_end = HEADER_LEN + header.algorithm.nonce_len();
    let nonce = sealed.get(HEADER_LEN..nonce_end).ok_or(CryptoError::Open)?;
    let ciphertext = sealed.get(nonce_end..).ok_or(CryptoError::Open)?;
    if ciphertext.len() < TAG_LEN {
        return Err(CryptoError::Open);
    }
    let header_bytes = sealed.get(..HEADER_LEN).ok_or(CryptoError::Format)?;
    let full_aad = [header_bytes, aad].concat();
    let payload = Payload {
        msg: ciphertext,
        aad: &full_aad,
    };
    let plaintext = match header.algorithm {
        Algorithm::Aes256Gcm => {
            Aes256Gcm::new(key.into()).decrypt(aes_gcm::Nonce::from_slice(nonce), payload)
        }
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(key.into())
            .decrypt(chacha20poly1305::XNonce::from_slice(nonce), payload),
    }
    .map_err(|_| CryptoError::Open)?;
    Ok(Zeroizing::new(plaintext))
}

/// A fresh random nonce for `algorithm`. The only place nonces are made.
fn nonce(algorithm: Algorithm) -> Vec<u8> {
    let mut nonce = vec![0u8; algorithm.nonce_len()];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn both() -> [Algorithm; 2] {
        [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305]
    }

    #[test]
    fn seal_open_round_trip() {
        for alg in both() {
            let sealed = seal(&KEY, alg, 3, b"ctx", b"Kastanjelaan 12").unwrap();
            assert_eq!(
                Header::parse(&sealed).unwrap(),
                Header {
                    algorithm: alg,
                    key_ref: 3
                }
            );
            assert_eq!(
                open(&KEY, b"ctx", &sealed).unwrap().as_slice(),
                b"Kastanjelaan 12"
            );
        }
    }

    #[test]
    fn open_rejects_every_flipped_byte() {
        for alg in both() {
            let sealed = seal(&KEY, alg, 3, b"ctx", b"Kastanjelaan 12").unwrap();
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(open(&KEY, b"ctx", &bad).is_err(), "byte {i} of {alg:?}");
            }
        }
    }

    #[test]
    fn open_rejects_other_aad_key_or_truncation() {
        for alg in both() {
            let sealed = seal(&KEY, alg, 1, b"ctx", b"x").unwrap();
            assert!(matches!(
                open(&KEY, b"other", &sealed),
                Err(CryptoError::Open)
            ));
            assert!(matches!(
                open(&[8; 32], b"ctx", &sealed),
                Err(CryptoError::Open)
            ));
            for len in 0..sealed.len() {
                assert!(
                    open(&KEY, b"ctx", &sealed[..len]).is_err(),
                    "truncated to {len}"
                );
            }
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let a = seal(&KEY, Algorithm::Aes256Gcm, 1, b"", b"same").unwrap();
        let b = seal(&KEY, Algorithm::Aes256Gcm, 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn round_trip_any_plaintext(pt in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), aad in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            for alg in both() {
                let sealed = seal(&KEY, alg, 9, &aad, &pt).unwrap();
                let opened = open(&KEY, &aad, &sealed).unwrap();
                proptest::prop_assert_eq!(opened.as_slice(), pt.as_slice());
            }
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = open(&KEY, b"", &bytes);
        }
    }
}
