//! Streaming AEAD for evidence files: an online AEAD of the STREAM kind (Hoang, Reyhanitabar,
//! Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance"),
//! laid out like Tink's AES-GCM-HKDF streaming AEAD.
//!
//! A file is cut into segments of `SEGMENT_SIZE` plaintext bytes (the last one may be shorter,
//! and a file of 0 bytes is one empty segment). Per file:
//!
//! ```text
//! file key ‖ nonce prefix = HKDF-SHA256(ikm = subject key, salt = 32 random bytes,
//!                                       info = "kluis.v2.subject.evidence-stream" ‖ format ‖
//!                                              algorithm ‖ the file's associated data)
//! nonce of segment i     = nonce prefix ‖ i (4 bytes, big endian) ‖ last (1 byte: 1 or 0)
//! ```
//!
//! The prefix is 7 bytes for AES-256-GCM (12-byte nonce) and 19 for XChaCha20-Poly1305. Each
//! sealed segment starts with a 6-byte header (format version 2, algorithm, key reference: the
//! subject key generation), which is also its associated data. The label is the subject key's
//! own one for this use (`subkey::KeyUse::SubjectEvidenceStream`), apart from those of its field
//! and file-name subkeys; format 1 segments are refused like format 1 envelopes. Because the position and the last
//! flag are in the nonce and the file's identity is in the key, a segment that is reordered,
//! dropped, duplicated, cut off at the end or moved to another file fails to open.

use aes_gcm::{
    Aes256Gcm,
    aead::{AeadInOut, KeyInit},
};
use chacha20poly1305::XChaCha20Poly1305;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    Algorithm, CryptoError, SubjectKey, envelope::FORMAT, nonce_of, subkey::KeyUse, tag_of,
};

/// Plaintext bytes per segment (64 KiB).
pub const SEGMENT_SIZE: usize = 64 * 1024;
/// Bytes of the per-file salt.
pub const SALT_LEN: usize = 32;
const HEADER_LEN: usize = 6;
const TAG_LEN: usize = 16;
const MAX_PREFIX: usize = 19;

/// The number of segments a file of `size` plaintext bytes has (at least one).
pub fn segment_count(size: u64) -> u64 {
    let seg = SEGMENT_SIZE as u64;
    size.div_ceil(seg).max(1)
}

/// The plaintext length of segment `index` of a file of `size` bytes, or `None` past the end.
pub fn segment_len(size: u64, index: u64) -> Option<usize> {
    let count = segment_count(size);
    if index >= count {
        return None;
    }
    let start = index.saturating_mul(SEGMENT_SIZE as u64);
    let len = size.saturating_sub(start).min(SEGMENT_SIZE as u64);
    usize::try_from(len).ok()
}

/// A fresh random salt for a new file.
pub fn new_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// The parsed header of a sealed segment.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SegmentHeader {
    /// The algorithm that sealed it.
    pub algorithm: Algorithm,
    /// The generation of the subject key the file key was derived from.
    pub key_ref: u32,
}

impl SegmentHeader {
    /// Reads the header of a sealed segment without opening it.
    pub fn parse(sealed: &[u8]) -> Result<Self, CryptoError> {
        let header = super::Header::parse(sealed.get(..HEADER_LEN).ok_or(CryptoError::Format)?)?;
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Format);
        }
        Ok(Self {
            algorithm: header.algorithm,
            key_ref: header.key_ref,
        })
    }
}

/// The key of one file under one subject key generation. Wiped on drop; never printed.
pub struct FileKey {
    key: Zeroizing<[u8; 32]>,
    prefix: [u8; MAX_PREFIX],
    algorithm: Algorithm,
    key_ref: u32,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey")
            .field("algorithm", &self.algorithm)
            .field("key_ref", &self.key_ref)
            .finish_non_exhaustive()
    }
}

impl FileKey {
    /// Derives the key of the file with `salt` and associated data `aad` (built by
    /// `crypto::aad`) from `subject_key` of generation `key_ref`.
    pub fn derive(
        subject_key: &SubjectKey,
        algorithm: Algorithm,
        key_ref: u32,
        salt: &[u8],
        aad: &[u8],
    ) -> Result<Self, CryptoError> {
        if salt.len() != SALT_LEN {
            return Err(CryptoError::Format);
        }
        let hk = Hkdf::<Sha256>::new(Some(salt), subject_key.expose_secret());
        let mut okm = Zeroizing::new([0u8; 32 + MAX_PREFIX]);
        // The format and the algorithm are bound too: one derived key never serves two AEADs.
        let info = [
            KeyUse::SubjectEvidenceStream.label(),
            &[FORMAT, algorithm.id()],
            aad,
        ]
        .concat();
        hk.expand(&info, okm.as_mut_slice())
            .map_err(|_| CryptoError::Seal)?;
        let mut key = Zeroizing::new([0u8; 32]);
        let mut prefix = [0u8; MAX_PREFIX];
        let (k, p) = okm.split_at(32);
        key.copy_from_slice(k);
        prefix.copy_from_slice(p);
        Ok(Self {
            key,
            prefix,
            algorithm,
            key_ref,
        })
    }

    /// The subject key generation this file key was derived from.
    pub fn key_ref(&self) -> u32 {
        self.key_ref
    }

    /// Seals segment `index` (`last` for the final one): the header, then the plaintext
    /// encrypted where it was copied in, then the tag (one copy of the plaintext, which the
    /// encryption overwrites).
    pub fn seal_segment(
        &self,
        index: u32,
        last: bool,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN));
        out.push(FORMAT);
        out.push(self.algorithm.id());
        out.extend_from_slice(&self.key_ref.to_be_bytes());
        out.extend_from_slice(plaintext);
        let nonce = self.nonce(index, last);
        let (head, body) = out.split_at_mut(HEADER_LEN);
        let tag = match self.algorithm {
            Algorithm::Aes256Gcm => nonce_of::<Aes256Gcm>(nonce.get(..12).unwrap_or_default())
                .and_then(|n| {
                    Aes256Gcm::new((&*self.key).into()).encrypt_inout_detached(n, head, body.into())
                }),
            Algorithm::XChaCha20Poly1305 => nonce_of::<XChaCha20Poly1305>(&nonce).and_then(|n| {
                XChaCha20Poly1305::new((&*self.key).into()).encrypt_inout_detached(
                    n,
                    head,
                    body.into(),
                )
            }),
        }
        .map_err(|_| CryptoError::Seal)?;
        out.extend_from_slice(&tag);
        // Sealed: nothing left to wipe.
        Ok(std::mem::take(&mut *out))
    }

    /// Opens segment `index` (`last` for the final one). Any failure is `CryptoError::Open`.
    pub fn open_segment(
        &self,
        index: u32,
        last: bool,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self.open_segment_in_place(index, last, &mut buf)?;
        buf.truncate(plain.end);
        buf.drain(..plain.start);
        Ok(buf)
    }

    /// Opens segment `index` (`last` for the final one) where it lies: `sealed` then holds
    /// the plaintext at the range returned (between the header and the tag), and nothing is
    /// copied. Any failure is `CryptoError::Open`, and leaves the ciphertext unchanged (the
    /// tag is checked before anything is decrypted).
    pub fn open_segment_in_place(
        &self,
        index: u32,
        last: bool,
        sealed: &mut [u8],
    ) -> Result<std::ops::Range<usize>, CryptoError> {
        let header = SegmentHeader::parse(sealed).map_err(|_| CryptoError::Open)?;
        if header.algorithm != self.algorithm || header.key_ref != self.key_ref {
            return Err(CryptoError::Open);
        }
        let end = sealed
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&end| end >= HEADER_LEN)
            .ok_or(CryptoError::Open)?;
        let (rest, tag) = sealed.split_at_mut(end);
        let (head, body) = rest.split_at_mut(HEADER_LEN);
        let nonce = self.nonce(index, last);
        match self.algorithm {
            Algorithm::Aes256Gcm => {
                let nonce = nonce_of::<Aes256Gcm>(nonce.get(..12).unwrap_or_default());
                nonce.and_then(|n| {
                    Aes256Gcm::new((&*self.key).into()).decrypt_inout_detached(
                        n,
                        head,
                        body.into(),
                        tag_of::<Aes256Gcm>(tag)?,
                    )
                })
            }
            Algorithm::XChaCha20Poly1305 => nonce_of::<XChaCha20Poly1305>(&nonce).and_then(|n| {
                XChaCha20Poly1305::new((&*self.key).into()).decrypt_inout_detached(
                    n,
                    head,
                    body.into(),
                    tag_of::<XChaCha20Poly1305>(tag)?,
                )
            }),
        }
        .map_err(|_| CryptoError::Open)?;
        Ok(HEADER_LEN..end)
    }

    /// The nonce of segment `index`: the prefix (7 or 19 bytes), the index and the last flag. The
    /// AES-256-GCM nonce is the first 12 bytes of the 24 built here.
    fn nonce(&self, index: u32, last: bool) -> [u8; 24] {
        let prefix_len = match self.algorithm {
            Algorithm::Aes256Gcm => 7,
            Algorithm::XChaCha20Poly1305 => MAX_PREFIX,
        };
        let mut nonce = [0u8; 24];
        for (n, p) in nonce.iter_mut().zip(self.prefix.iter().take(prefix_len)) {
            *n = *p;
        }
        let tail = index
            .to_be_bytes()
            .into_iter()
            .chain(std::iter::once(u8::from(last)));
        for (n, t) in nonce.iter_mut().skip(prefix_len).zip(tail) {
            *n = t;
        }
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_key() -> SubjectKey {
        SubjectKey::from_bytes(&[9; 32])
    }

    fn key(alg: Algorithm, salt: &[u8], aad: &[u8]) -> FileKey {
        FileKey::derive(&subject_key(), alg, 1, salt, aad).unwrap()
    }

    fn both() -> [Algorithm; 2] {
        [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305]
    }

    #[test]
    fn segments_round_trip_and_bind_position_and_end() {
        for alg in both() {
            let salt = new_salt();
            let k = key(alg, &salt, b"file-a");
            let s0 = k.seal_segment(0, false, b"first").unwrap();
            let s1 = k.seal_segment(1, true, b"second").unwrap();
            assert_eq!(k.open_segment(0, false, &s0).unwrap().as_slice(), b"first");
            assert_eq!(k.open_segment(1, true, &s1).unwrap().as_slice(), b"second");
            // Reordered, truncated (a non-final segment read as the last) or extended.
            assert!(k.open_segment(1, false, &s0).is_err());
            assert!(k.open_segment(0, true, &s0).is_err());
            assert!(k.open_segment(1, false, &s1).is_err());
            assert!(k.open_segment(0, false, &s1).is_err());
        }
    }

    #[test]
    fn a_segment_opened_where_it_lies_keeps_its_ciphertext_when_it_fails() {
        for alg in both() {
            let k = key(alg, &new_salt(), b"f");
            let text = b"letter from the neighbours";
            let sealed = k.seal_segment(2, true, text).unwrap();
            let mut buf = sealed.clone();
            let range = k.open_segment_in_place(2, true, &mut buf).unwrap();
            assert_eq!(range, HEADER_LEN..sealed.len() - TAG_LEN);
            assert_eq!(&buf[range], text);
            // The twin: every flipped byte fails, and leaves the bytes as they were: nothing
            // that did not authenticate was decrypted.
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x80;
                let before = bad.clone();
                assert!(
                    k.open_segment_in_place(2, true, &mut bad).is_err(),
                    "byte {i}"
                );
                assert_eq!(bad, before, "byte {i}");
            }
            for len in 0..sealed.len() {
                let mut short = sealed[..len].to_vec();
                assert!(k.open_segment_in_place(2, true, &mut short).is_err());
            }
        }
    }

    #[test]
    fn a_segment_is_sealed_as_the_aead_seals_a_whole_message() {
        use aes_gcm::aead::{Aead, Payload};
        // Segments stored before sealing went in place open as before: the header, then the
        // AEAD's ciphertext and tag as its one-shot `encrypt` gives them.
        for alg in both() {
            let k = key(alg, &new_salt(), b"f");
            let sealed = k.seal_segment(5, false, b"photo of the stairwell").unwrap();
            let nonce = k.nonce(5, false);
            let payload = Payload {
                msg: b"photo of the stairwell",
                aad: &sealed[..HEADER_LEN],
            };
            let whole = match alg {
                Algorithm::Aes256Gcm => Aes256Gcm::new((&*k.key).into())
                    .encrypt(nonce_of::<Aes256Gcm>(&nonce[..12]).unwrap(), payload),
                Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new((&*k.key).into())
                    .encrypt(nonce_of::<XChaCha20Poly1305>(&nonce).unwrap(), payload),
            }
            .unwrap();
            assert_eq!(&sealed[HEADER_LEN..], whole.as_slice());
            // The twin: another segment's number gives other bytes.
            assert_ne!(
                k.seal_segment(6, false, b"photo of the stairwell").unwrap(),
                sealed
            );
        }
    }

    #[test]
    fn segments_do_not_move_between_files_or_keys() {
        for alg in both() {
            let salt = new_salt();
            let a = key(alg, &salt, b"file-a");
            let sealed = a.seal_segment(0, true, b"x").unwrap();
            // Another file (other associated data, other salt) or another subject key.
            assert!(
                key(alg, &salt, b"file-b")
                    .open_segment(0, true, &sealed)
                    .is_err()
            );
            assert!(
                key(alg, &new_salt(), b"file-a")
                    .open_segment(0, true, &sealed)
                    .is_err()
            );
            let other =
                FileKey::derive(&SubjectKey::from_bytes(&[1; 32]), alg, 1, &salt, b"file-a")
                    .unwrap();
            assert!(other.open_segment(0, true, &sealed).is_err());
        }
    }

    #[test]
    fn every_flipped_byte_fails() {
        for alg in both() {
            let k = key(alg, &new_salt(), b"f");
            let sealed = k.seal_segment(3, false, b"doorbell camera").unwrap();
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x80;
                assert!(k.open_segment(3, false, &bad).is_err(), "byte {i}");
            }
            for len in 0..sealed.len() {
                assert!(k.open_segment(3, false, &sealed[..len]).is_err());
            }
        }
    }

    #[test]
    fn file_keys_are_apart_from_the_subject_keys_other_subkeys() {
        use crate::crypto::{EnvelopeKey, subkey::KeyUse};
        let subject = subject_key();
        for alg in both() {
            // Even with the zero salt HKDF uses when none is given (the salt is in the store and
            // could be set to anything), a file key is none of the subject key's other subkeys.
            let file = FileKey::derive(&subject, alg, 1, &[0; SALT_LEN], b"").unwrap();
            for other in both() {
                for sub in [
                    subject.fields().aead_subkey(other).unwrap(),
                    subject.evidence_names().aead_subkey(other).unwrap(),
                ] {
                    assert_ne!(
                        file.key.as_slice(),
                        sub.expose_secret(),
                        "{:?}",
                        sub.usage()
                    );
                }
            }
            assert_ne!(file.key.as_slice(), subject.expose_secret());
            // The twin: derived again alike, it is the same key (the comparison can tell).
            let again = FileKey::derive(&subject, alg, 1, &[0; SALT_LEN], b"").unwrap();
            assert_eq!(file.key.as_slice(), again.key.as_slice());
            assert_eq!(
                KeyUse::SubjectEvidenceStream.label(),
                b"kluis.v2.subject.evidence-stream"
            );
        }
    }

    #[test]
    fn a_format_1_segment_is_refused() {
        for alg in both() {
            let k = key(alg, &[3; SALT_LEN], b"f");
            let sealed = k.seal_segment(0, true, b"x").unwrap();
            assert!(k.open_segment(0, true, &sealed).is_ok());
            assert!(matches!(
                SegmentHeader::parse(&sealed),
                Ok(SegmentHeader { key_ref: 1, .. })
            ));
            let mut v1 = sealed.clone();
            v1[0] = 1;
            assert!(matches!(
                SegmentHeader::parse(&v1),
                Err(CryptoError::Version(1))
            ));
            assert!(k.open_segment(0, true, &v1).is_err());
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = SEGMENT_SIZE as u64;
        assert_eq!(segment_count(0), 1);
        assert_eq!(segment_count(1), 1);
        assert_eq!(segment_count(seg), 1);
        assert_eq!(segment_count(seg + 1), 2);
        assert_eq!(segment_len(0, 0), Some(0));
        assert_eq!(segment_len(seg + 1, 0), Some(SEGMENT_SIZE));
        assert_eq!(segment_len(seg + 1, 1), Some(1));
        assert_eq!(segment_len(seg + 1, 2), None);
    }

    #[test]
    fn wrong_salt_length_is_refused() {
        assert!(FileKey::derive(&subject_key(), Algorithm::Aes256Gcm, 1, &[0; 8], b"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = SegmentHeader::parse(&bytes);
            let k = key(Algorithm::Aes256Gcm, &[0; SALT_LEN], b"");
            let _ = k.open_segment(0, true, &bytes);
        }
    }
}
