//! The self-describing ciphertext format (version 2):
//!
//! ```text
//! offset  size  meaning
//! 0       1     format version (2)
//! 1       1     algorithm: 1 = AES-256-GCM, 2 = XChaCha20-Poly1305
//! 2       4     key reference, big endian (the version or generation of the key that sealed it)
//! 6       n     nonce: 12 bytes (AES-256-GCM) or 24 bytes (XChaCha20-Poly1305), random
//! 6+n     ..    ciphertext followed by the 16-byte tag
//! ```
//!
//! The 6 header bytes are part of the associated data, followed by the context's `aad`, so a
//! changed algorithm byte or key reference fails to open like any other tampering. Old algorithms
//! stay readable when a newer one becomes the default (crypto agility).
//!
//! The AEAD key is never the caller's key itself but its subkey for the one use and the header's
//! algorithm (`EnvelopeKey`, `subkey`). Format 1 sealed with the key directly, so one key could
//! serve two AEADs; it is refused (`CryptoError::Version`), not opened: there are no stores of
//! format 1 to read, and opening one would keep the key reuse it was retired for.

use aes_gcm::{
    Aes256Gcm,
    aead::{Aead, KeyInit, Payload},
};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use zeroize::Zeroizing;

use super::{CryptoError, EnvelopeKey, nonce_of};

/// The format version kluis writes and reads (also that of evidence segments).
pub const FORMAT: u8 = 2;
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
        if version != FORMAT {
            return Err(CryptoError::Version(version));
        }
        let algorithm = Algorithm::from_id(alg).ok_or(CryptoError::Format)?;
        Ok(Self {
            algorithm,
            key_ref: u32::from_be_bytes([k0, k1, k2, k3]),
        })
    }
}

/// Seals `plaintext` under `key`'s subkey for `algorithm`, recording `key_ref` in the header and
/// binding `aad` (built by `crypto::aad`).
pub fn seal<K: EnvelopeKey + ?Sized>(
    key: &K,
    algorithm: Algorithm,
    key_ref: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 24 + plaintext.len() + TAG_LEN);
    out.push(FORMAT);
    out.push(algorithm.id());
    out.extend_from_slice(&key_ref.to_be_bytes());
    let nonce = nonce(algorithm);
    let full_aad = [out.as_slice(), aad].concat();
    let payload = Payload {
        msg: plaintext,
        aad: &full_aad,
    };
    let ciphertext = match algorithm {
        Algorithm::Aes256Gcm => match key.prepared_aes() {
            Some(cipher) => nonce_of::<Aes256Gcm>(&nonce).and_then(|n| cipher.encrypt(n, payload)),
            None => {
                let subkey = key.aead_subkey(algorithm)?;
                nonce_of::<Aes256Gcm>(&nonce)
                    .and_then(|n| Aes256Gcm::new(subkey.expose_secret().into()).encrypt(n, payload))
            }
        },
        Algorithm::XChaCha20Poly1305 => {
            let subkey = key.aead_subkey(algorithm)?;
            nonce_of::<XChaCha20Poly1305>(&nonce).and_then(|n| {
                XChaCha20Poly1305::new(subkey.expose_secret().into()).encrypt(n, payload)
            })
        }
    }
    .map_err(|_| CryptoError::Seal)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens `sealed` under `key`'s subkey for the header's algorithm, with the associated data
/// `aad`. Any failure is `CryptoError::Open` or, for an unknown format, `CryptoError::Format` or
/// `CryptoError::Version`.
pub fn open<K: EnvelopeKey + ?Sized>(
    key: &K,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
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
        Algorithm::Aes256Gcm => match key.prepared_aes() {
            Some(cipher) => nonce_of::<Aes256Gcm>(nonce).and_then(|n| cipher.decrypt(n, payload)),
            None => {
                let subkey = key.aead_subkey(header.algorithm)?;
                nonce_of::<Aes256Gcm>(nonce)
                    .and_then(|n| Aes256Gcm::new(subkey.expose_secret().into()).decrypt(n, payload))
            }
        },
        Algorithm::XChaCha20Poly1305 => {
            let subkey = key.aead_subkey(header.algorithm)?;
            nonce_of::<XChaCha20Poly1305>(nonce).and_then(|n| {
                XChaCha20Poly1305::new(subkey.expose_secret().into()).decrypt(n, payload)
            })
        }
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
    use crate::crypto::{PurposeKey, RootKey, SubjectKey, subkey::KeyUse};

    const BYTES: [u8; 32] = [7; 32];

    fn key() -> SubjectKey {
        SubjectKey::from_bytes(&BYTES)
    }

    fn both() -> [Algorithm; 2] {
        [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305]
    }

    /// The nonce and the ciphertext with its tag, and the associated data the envelope used.
    fn parts<'a>(alg: Algorithm, sealed: &'a [u8], aad: &[u8]) -> (&'a [u8], &'a [u8], Vec<u8>) {
        let (head, rest) = sealed.split_at(HEADER_LEN);
        let (nonce, body) = rest.split_at(alg.nonce_len());
        (nonce, body, [head, aad].concat())
    }

    /// Opens the AEAD of an envelope directly under `raw`, bypassing the subkey derivation.
    fn open_raw(alg: Algorithm, raw: &[u8; 32], sealed: &[u8], aad: &[u8]) -> bool {
        let (nonce, body, full_aad) = parts(alg, sealed, aad);
        let payload = Payload {
            msg: body,
            aad: &full_aad,
        };
        match alg {
            Algorithm::Aes256Gcm => Aes256Gcm::new(raw.into())
                .decrypt(nonce_of::<Aes256Gcm>(nonce).unwrap(), payload)
                .is_ok(),
            Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(raw.into())
                .decrypt(nonce_of::<XChaCha20Poly1305>(nonce).unwrap(), payload)
                .is_ok(),
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key();
        for alg in both() {
            let sealed = seal(&k.fields(), alg, 3, b"ctx", b"Kastanjelaan 12").unwrap();
            assert_eq!(sealed[0], FORMAT);
            assert_eq!(
                Header::parse(&sealed).unwrap(),
                Header {
                    algorithm: alg,
                    key_ref: 3
                }
            );
            assert_eq!(
                open(&k.fields(), b"ctx", &sealed).unwrap().as_slice(),
                b"Kastanjelaan 12"
            );
        }
    }

    /// A subject key's field use that derives its subkey for every call, as before the cipher
    /// was kept prepared.
    struct Derived<'a>(&'a SubjectKey);

    impl EnvelopeKey for Derived<'_> {
        fn aead_subkey(&self, algorithm: Algorithm) -> Result<crate::crypto::Subkey, CryptoError> {
            crate::crypto::subkey::derive(self.0.expose_secret(), KeyUse::SubjectField(algorithm))
        }
    }

    #[test]
    fn the_prepared_field_cipher_is_the_derived_one_and_kept() {
        let k = key();
        assert!(
            k.fields_aes.get().is_none(),
            "prepared before its first use"
        );
        let by_derived = seal(
            &Derived(&k),
            Algorithm::Aes256Gcm,
            1,
            b"ctx",
            b"Kastanjelaan 12",
        )
        .unwrap();
        let by_prepared = seal(
            &k.fields(),
            Algorithm::Aes256Gcm,
            1,
            b"ctx",
            b"Kastanjelaan 12",
        )
        .unwrap();
        let kept = k.fields_aes.get().map(|c| std::ptr::from_ref(c.as_ref()));
        assert!(kept.is_some(), "not kept after its first use");
        assert_eq!(
            open(&k.fields(), b"ctx", &by_derived).unwrap().as_slice(),
            b"Kastanjelaan 12"
        );
        assert_eq!(
            open(&Derived(&k), b"ctx", &by_prepared).unwrap().as_slice(),
            b"Kastanjelaan 12"
        );
        assert_eq!(
            k.fields_aes.get().map(|c| std::ptr::from_ref(c.as_ref())),
            kept,
            "prepared again"
        );
        // The tamper twin: the prepared cipher refuses what is changed, another key's refuses
        // what is not.
        let mut bad = by_derived.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 0x80;
        }
        assert!(matches!(
            open(&k.fields(), b"ctx", &bad),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            open(&k.fields(), b"ctX", &by_derived),
            Err(CryptoError::Open)
        ));
        let other = SubjectKey::from_bytes(&[8; 32]);
        assert!(matches!(
            open(&other.fields(), b"ctx", &by_derived),
            Err(CryptoError::Open)
        ));
        // The evidence-name use of the same key has a subkey of its own.
        assert!(open(&k.evidence_names(), b"ctx", &by_prepared).is_err());
    }

    #[test]
    fn open_rejects_every_flipped_byte() {
        let k = key();
        for alg in both() {
            let sealed = seal(&k.fields(), alg, 3, b"ctx", b"Kastanjelaan 12").unwrap();
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(
                    open(&k.fields(), b"ctx", &bad).is_err(),
                    "byte {i} of {alg:?}"
                );
            }
        }
    }

    #[test]
    fn open_rejects_other_aad_key_or_truncation() {
        let k = key();
        for alg in both() {
            let sealed = seal(&k.fields(), alg, 1, b"ctx", b"x").unwrap();
            assert!(matches!(
                open(&k.fields(), b"other", &sealed),
                Err(CryptoError::Open)
            ));
            assert!(matches!(
                open(&SubjectKey::from_bytes(&[8; 32]).fields(), b"ctx", &sealed),
                Err(CryptoError::Open)
            ));
            for len in 0..sealed.len() {
                assert!(
                    open(&k.fields(), b"ctx", &sealed[..len]).is_err(),
                    "truncated to {len}"
                );
            }
        }
    }

    #[test]
    fn each_algorithm_seals_under_its_own_subkey_never_the_key_itself() {
        let k = key();
        for alg in both() {
            let sealed = seal(&k.fields(), alg, 1, b"ctx", b"06-12345678").unwrap();
            // The AEAD key is the field subkey of this algorithm …
            let own = k.fields().aead_subkey(alg).unwrap();
            assert_eq!(own.usage(), KeyUse::SubjectField(alg));
            assert!(open_raw(alg, own.expose_secret(), &sealed, b"ctx"));
            // … not the subject key, and not the subkey of the other algorithm: a key that seals
            // under both AEADs after a migration hands each its own bytes.
            assert!(!open_raw(alg, &BYTES, &sealed, b"ctx"));
            for other in both().into_iter().filter(|&o| o != alg) {
                let theirs = k.fields().aead_subkey(other).unwrap();
                assert_ne!(own.expose_secret(), theirs.expose_secret());
                assert!(!open_raw(alg, theirs.expose_secret(), &sealed, b"ctx"));
            }
        }
    }

    #[test]
    fn one_key_in_two_uses_does_not_open_the_other_uses_ciphertexts() {
        for alg in both() {
            // A subject key's field ciphertext is not an evidence file name under the same key,
            // even with the same associated data, and the other way round.
            let k = key();
            let field = seal(&k.fields(), alg, 1, b"ctx", b"x").unwrap();
            let name = seal(&k.evidence_names(), alg, 1, b"ctx", b"x").unwrap();
            assert!(open(&k.fields(), b"ctx", &field).is_ok());
            assert!(open(&k.evidence_names(), b"ctx", &name).is_ok());
            assert!(matches!(
                open(&k.evidence_names(), b"ctx", &field),
                Err(CryptoError::Open)
            ));
            assert!(matches!(
                open(&k.fields(), b"ctx", &name),
                Err(CryptoError::Open)
            ));
            // The same bytes as a root key and as a purpose key wrap under different subkeys.
            let root = RootKey::from_bytes(&BYTES);
            let purpose = PurposeKey::from_bytes(&BYTES);
            let wrapped = seal(&root, alg, 1, b"ctx", b"key").unwrap();
            assert!(open(&root, b"ctx", &wrapped).is_ok());
            assert!(matches!(
                open(&purpose, b"ctx", &wrapped),
                Err(CryptoError::Open)
            ));
            assert!(matches!(
                open(&k.fields(), b"ctx", &wrapped),
                Err(CryptoError::Open)
            ));
        }
    }

    #[test]
    fn a_format_1_envelope_is_refused_by_its_version_not_opened() {
        // A genuine format-1 ciphertext: sealed with the key itself, header version 1.
        let k = key();
        for alg in both() {
            let mut v1 = vec![1u8, alg.id(), 0, 0, 0, 1];
            let nonce = nonce(alg);
            let full_aad = [v1.as_slice(), b"ctx"].concat();
            let payload = Payload {
                msg: b"Kastanjelaan 12".as_slice(),
                aad: &full_aad,
            };
            let body = match alg {
                Algorithm::Aes256Gcm => Aes256Gcm::new((&BYTES).into())
                    .encrypt(nonce_of::<Aes256Gcm>(&nonce).unwrap(), payload),
                Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new((&BYTES).into())
                    .encrypt(nonce_of::<XChaCha20Poly1305>(&nonce).unwrap(), payload),
            }
            .unwrap();
            v1.extend_from_slice(&nonce);
            v1.extend_from_slice(&body);
            assert!(open_raw(alg, &BYTES, &v1, b"ctx"), "a well-formed format 1");
            assert!(matches!(Header::parse(&v1), Err(CryptoError::Version(1))));
            assert!(matches!(
                open(&k.fields(), b"ctx", &v1),
                Err(CryptoError::Version(1))
            ));
            // The twin: the current format of the same value opens.
            let v2 = seal(&k.fields(), alg, 1, b"ctx", b"Kastanjelaan 12").unwrap();
            assert!(open(&k.fields(), b"ctx", &v2).is_ok());
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let k = key();
        let a = seal(&k.fields(), Algorithm::Aes256Gcm, 1, b"", b"same").unwrap();
        let b = seal(&k.fields(), Algorithm::Aes256Gcm, 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn round_trip_any_plaintext(pt in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), aad in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let k = key();
            for alg in both() {
                let sealed = seal(&k.fields(), alg, 9, &aad, &pt).unwrap();
                let opened = open(&k.fields(), &aad, &sealed).unwrap();
                proptest::prop_assert_eq!(opened.as_slice(), pt.as_slice());
            }
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = open(&key().fields(), b"", &bytes);
        }
    }
}
