//! One key, one use. No key of the hierarchy is ever an AEAD or MAC key itself: each is only the
//! input keying material of HKDF-SHA-256 (RFC 5869, no salt), and every use it is put to gets
//! its own subkey under its own label:
//!
//! ```text
//! key           use                                     HKDF info (label)
//! root key      wraps purpose keys and the audit key    kluis.v2.root.wrap.<algorithm>
//!               key check value                         kluis.v2.root.key-check
//! purpose key   wraps subject keys                      kluis.v2.purpose.wrap.<algorithm>
//! subject key   seals field values                      kluis.v2.subject.field.<algorithm>
//!               seals evidence file names               kluis.v2.subject.evidence-name.<algorithm>
//!               derives evidence file keys (STREAM)     kluis.v2.subject.evidence-stream ‖ …
//! audit key     MAC of each trail entry                 kluis.v2.audit.entry-mac
//!               MAC of an anchored head                 kluis.v2.audit.head-mac
//!               MAC of stored rows (tokens, holds, …)   kluis.v2.audit.row-mac
//! index key     blind-index tags of one (purpose, field) kluis.v2.index.tag ‖ purpose ‖ field
//! ```
//!
//! `<algorithm>` is `aes-256-gcm` or `xchacha20-poly1305`, so a key that seals under both AEADs
//! (after a migration from one to the other) never hands the same bytes to both. The evidence
//! stream label is followed by the segment format, the algorithm and the file's associated data
//! and uses the file's random salt (see `stream`); no label is a prefix of another, so no two uses
//! can ever ask HKDF for the same output.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{Algorithm, AuditKey, CryptoError, IndexKey, PurposeKey, RootKey, SubjectKey};

/// Every use a key of the hierarchy is put to.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum KeyUse {
    /// The root key wrapping purpose keys and the audit key with an AEAD.
    RootWrap(Algorithm),
    /// The root key's key check value.
    RootKeyCheck,
    /// A purpose key version wrapping subject keys with an AEAD.
    PurposeWrap(Algorithm),
    /// A subject key sealing field values with an AEAD.
    SubjectField(Algorithm),
    /// A subject key sealing the file names of evidence files with an AEAD.
    SubjectEvidenceName(Algorithm),
    /// A subject key as the input of the per-file key derivation of evidence files.
    SubjectEvidenceStream,
    /// The audit key MAC'ing trail entries.
    AuditEntryMac,
    /// The audit key MAC'ing anchored heads.
    AuditHeadMac,
    /// The audit key MAC'ing the stored rows that grant, withhold or shape access.
    AuditRowMac,
    /// An index key version as the input of the tag key of one (purpose, field); the label is
    /// followed by the length-prefixed purpose and field name.
    IndexTag,
}

impl KeyUse {
    /// Every use, for the tests that keep the labels apart.
    pub const ALL: [KeyUse; 14] = [
        KeyUse::RootWrap(Algorithm::Aes256Gcm),
        KeyUse::RootWrap(Algorithm::XChaCha20Poly1305),
        KeyUse::RootKeyCheck,
        KeyUse::PurposeWrap(Algorithm::Aes256Gcm),
        KeyUse::PurposeWrap(Algorithm::XChaCha20Poly1305),
        KeyUse::SubjectField(Algorithm::Aes256Gcm),
        KeyUse::SubjectField(Algorithm::XChaCha20Poly1305),
        KeyUse::SubjectEvidenceName(Algorithm::Aes256Gcm),
        KeyUse::SubjectEvidenceName(Algorithm::XChaCha20Poly1305),
        KeyUse::SubjectEvidenceStream,
        KeyUse::AuditEntryMac,
        KeyUse::AuditHeadMac,
        KeyUse::AuditRowMac,
        KeyUse::IndexTag,
    ];

    /// The HKDF info of this use.
    pub fn label(self) -> &'static [u8] {
        use Algorithm::{Aes256Gcm as Aes, XChaCha20Poly1305 as XChaCha};
        match self {
            KeyUse::RootWrap(Aes) => b"kluis.v2.root.wrap.aes-256-gcm",
            KeyUse::RootWrap(XChaCha) => b"kluis.v2.root.wrap.xchacha20-poly1305",
            KeyUse::RootKeyCheck => b"kluis.v2.root.key-check",
            KeyUse::PurposeWrap(Aes) => b"kluis.v2.purpose.wrap.aes-256-gcm",
            KeyUse::PurposeWrap(XChaCha) => b"kluis.v2.purpose.wrap.xchacha20-poly1305",
            KeyUse::SubjectField(Aes) => b"kluis.v2.subject.field.aes-256-gcm",
            KeyUse::SubjectField(XChaCha) => b"kluis.v2.subject.field.xchacha20-poly1305",
            KeyUse::SubjectEvidenceName(Aes) => b"kluis.v2.subject.evidence-name.aes-256-gcm",
            KeyUse::SubjectEvidenceName(XChaCha) => {
                b"kluis.v2.subject.evidence-name.xchacha20-poly1305"
            }
            KeyUse::SubjectEvidenceStream => b"kluis.v2.subject.evidence-stream",
            KeyUse::AuditEntryMac => b"kluis.v2.audit.entry-mac",
            KeyUse::AuditHeadMac => b"kluis.v2.audit.head-mac",
            KeyUse::AuditRowMac => b"kluis.v2.audit.row-mac",
            KeyUse::IndexTag => b"kluis.v2.index.tag",
        }
    }
}

/// A key derived for one use. Zeroized on drop, `Debug` shows only the use, bytes only through
/// `expose_secret()`.
pub struct Subkey {
    key: Box<Zeroizing<[u8; 32]>>,
    usage: KeyUse,
}

impl Subkey {
    /// The key bytes, for the one primitive of its use.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.key
    }

    /// What this subkey is for.
    pub fn usage(&self) -> KeyUse {
        self.usage
    }
}

impl fmt::Debug for Subkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subkey({:?}, <redacted>)", self.usage)
    }
}

/// HKDF-SHA-256 of `parent` (no salt) with the label of `usage`.
pub(crate) fn derive(parent: &[u8; 32], usage: KeyUse) -> Result<Subkey, CryptoError> {
    let mut key = Box::new(Zeroizing::new([0u8; 32]));
    Hkdf::<Sha256>::new(None, parent)
        .expand(usage.label(), key.as_mut_slice())
        .map_err(|_| CryptoError::Kdf("HKDF-SHA-256 refused a 32-byte output".into()))?;
    Ok(Subkey { key, usage })
}

/// HKDF-SHA-256 of `parent` (no salt) with the label of `usage` followed by `parts`, each
/// length-prefixed, so that no two lists of parts give the same info.
fn derive_with(parent: &[u8; 32], usage: KeyUse, parts: &[&[u8]]) -> Result<Subkey, CryptoError> {
    let mut info = usage.label().to_vec();
    for part in parts {
        let len = u32::try_from(part.len())
            .map_err(|_| CryptoError::Kdf("an HKDF info part over 4 GiB".into()))?;
        info.extend_from_slice(&len.to_be_bytes());
        info.extend_from_slice(part);
    }
    let mut key = Box::new(Zeroizing::new([0u8; 32]));
    Hkdf::<Sha256>::new(None, parent)
        .expand(&info, key.as_mut_slice())
        .map_err(|_| CryptoError::Kdf("HKDF-SHA-256 refused a 32-byte output".into()))?;
    Ok(Subkey { key, usage })
}

/// A key that seals envelopes (`crypto::seal`, `crypto::open`): hands out the subkey of one AEAD
/// algorithm for its one use. The envelope asks for the algorithm its header names.
pub trait EnvelopeKey {
    /// The subkey that seals and opens under `algorithm`.
    fn aead_subkey(&self, algorithm: Algorithm) -> Result<Subkey, CryptoError>;

    /// The AES-256-GCM cipher of `aead_subkey(Algorithm::Aes256Gcm)`, when the key keeps it
    /// prepared; `None` makes the envelope derive the subkey for the one call.
    fn prepared_aes(&self) -> Option<&aes_gcm::Aes256Gcm> {
        None
    }
}

impl EnvelopeKey for RootKey {
    fn aead_subkey(&self, algorithm: Algorithm) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::RootWrap(algorithm))
    }
}

impl EnvelopeKey for PurposeKey {
    fn aead_subkey(&self, algorithm: Algorithm) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::PurposeWrap(algorithm))
    }
}

/// A subject key in its use for field values (`SubjectKey::fields`).
#[derive(Clone, Copy, Debug)]
pub struct FieldKey<'a>(&'a SubjectKey);

impl EnvelopeKey for FieldKey<'_> {
    fn aead_subkey(&self, algorithm: Algorithm) -> Result<Subkey, CryptoError> {
        derive(self.0.expose_secret(), KeyUse::SubjectField(algorithm))
    }

    /// Prepared the first time it is asked for, and kept by the subject key.
    fn prepared_aes(&self) -> Option<&aes_gcm::Aes256Gcm> {
        use aes_gcm::KeyInit;
        let cell = &self.0.fields_aes;
        if let Some(cipher) = cell.get() {
            return Some(cipher);
        }
        let subkey = self.aead_subkey(Algorithm::Aes256Gcm).ok()?;
        let cipher = aes_gcm::Aes256Gcm::new(subkey.expose_secret().into());
        Some(cell.get_or_init(|| Box::new(cipher)))
    }
}

/// A subject key in its use for evidence file names (`SubjectKey::evidence_names`).
#[derive(Clone, Copy, Debug)]
pub struct EvidenceNameKey<'a>(&'a SubjectKey);

impl EnvelopeKey for EvidenceNameKey<'_> {
    fn aead_subkey(&self, algorithm: Algorithm) -> Result<Subkey, CryptoError> {
        derive(
            self.0.expose_secret(),
            KeyUse::SubjectEvidenceName(algorithm),
        )
    }
}

impl SubjectKey {
    /// This key for sealing and opening field values.
    pub fn fields(&self) -> FieldKey<'_> {
        FieldKey(self)
    }

    /// This key for sealing and opening the file names of evidence files.
    pub fn evidence_names(&self) -> EvidenceNameKey<'_> {
        EvidenceNameKey(self)
    }
}

impl RootKey {
    /// The subkey of the key check value.
    pub fn key_check_subkey(&self) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::RootKeyCheck)
    }
}

impl IndexKey {
    /// The HMAC-SHA-256 key of the blind-index tags of `field` in records of `purpose`: one per
    /// (purpose, field), so equal values in two fields or purposes get unrelated tags.
    pub fn tag_subkey(&self, purpose: &str, field: &str) -> Result<Subkey, CryptoError> {
        derive_with(
            self.expose_secret(),
            KeyUse::IndexTag,
            &[purpose.as_bytes(), field.as_bytes()],
        )
    }
}

impl AuditKey {
    /// The subkey that MACs each trail entry.
    pub fn entry_mac_subkey(&self) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::AuditEntryMac)
    }

    /// The subkey that MACs an anchored head.
    pub fn head_mac_subkey(&self) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::AuditHeadMac)
    }

    /// The subkey that MACs stored rows (`vault::rows`).
    pub fn row_mac_subkey(&self) -> Result<Subkey, CryptoError> {
        derive(self.expose_secret(), KeyUse::AuditRowMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static_assertions::assert_not_impl_any!(Subkey: Clone, serde::Serialize);
    // The AES round keys are wiped when a cipher instance is dropped (the `zeroize` feature of
    // `aes`, unified through the direct dependency).
    static_assertions::assert_impl_all!(aes::Aes256: zeroize::ZeroizeOnDrop);
    // And so are the AEADs' states: the AES-GCM instance with its POLYVAL powers, the XChaCha20
    // keystream (with its buffer, through `cipher`'s feature). POLYVAL and Poly1305 wipe
    // themselves in `Drop` (their `zeroize` features) without the marker trait.
    static_assertions::assert_impl_all!(aes_gcm::Aes256Gcm: zeroize::ZeroizeOnDrop);
    static_assertions::assert_impl_all!(
        chacha20poly1305::XChaCha20Poly1305: zeroize::ZeroizeOnDrop
    );
    static_assertions::assert_impl_all!(chacha20::XChaCha20: zeroize::ZeroizeOnDrop);

    const MATERIAL: [u8; 32] = [0x5a; 32];

    #[test]
    fn labels_are_distinct_and_none_is_a_prefix_of_another() {
        for (i, a) in KeyUse::ALL.iter().enumerate() {
            for (j, b) in KeyUse::ALL.iter().enumerate() {
                if i != j {
                    assert!(
                        !b.label().starts_with(a.label()),
                        "{a:?} is a prefix of {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_key_under_two_uses_gives_two_subkeys() {
        let subkeys: Vec<Subkey> = KeyUse::ALL
            .iter()
            .map(|&u| derive(&MATERIAL, u).unwrap())
            .collect();
        for (i, a) in subkeys.iter().enumerate() {
            // Never the parent key itself.
            assert_ne!(a.expose_secret(), &MATERIAL, "{:?}", a.usage());
            for b in subkeys.iter().skip(i + 1) {
                assert_ne!(
                    a.expose_secret(),
                    b.expose_secret(),
                    "{:?} and {:?}",
                    a.usage(),
                    b.usage()
                );
            }
        }
        // The tamper twin: the same material under the same use gives the same subkey, and
        // other material under that use another one.
        let again = derive(&MATERIAL, KeyUse::AuditEntryMac).unwrap();
        let other = derive(&[0x5b; 32], KeyUse::AuditEntryMac).unwrap();
        let entry = &subkeys[10];
        assert_eq!(entry.usage(), KeyUse::AuditEntryMac);
        assert_eq!(entry.expose_secret(), again.expose_secret());
        assert_ne!(entry.expose_secret(), other.expose_secret());
    }

    #[test]
    fn each_purpose_and_field_gets_its_own_tag_key() {
        let key = IndexKey::from_bytes(&MATERIAL);
        let a = key.tag_subkey("contract", "email").unwrap();
        let again = key.tag_subkey("contract", "email").unwrap();
        assert_eq!(a.expose_secret(), again.expose_secret());
        assert_eq!(a.usage(), KeyUse::IndexTag);
        for (purpose, field) in [
            ("contract", "phone"),
            ("payments", "email"),
            // Shifting a byte between the parts gives another key.
            ("contrac", "temail"),
            ("contracte", "mail"),
        ] {
            let b = key.tag_subkey(purpose, field).unwrap();
            assert_ne!(a.expose_secret(), b.expose_secret(), "{purpose}/{field}");
        }
        // Another index key version gives another tag key for the same place, and none is the
        // plain derivation of the label.
        let other = IndexKey::from_bytes(&[0x5b; 32]);
        assert_ne!(
            a.expose_secret(),
            other
                .tag_subkey("contract", "email")
                .unwrap()
                .expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            derive(&MATERIAL, KeyUse::IndexTag).unwrap().expose_secret()
        );
    }

    #[test]
    fn subkeys_follow_rfc5869() {
        // HKDF by its definition in RFC 5869 for a 32-byte output: PRK = HMAC(zero salt, IKM),
        // OKM = HMAC(PRK, info ‖ 0x01). Pins the construction: a salt, another hash or another
        // label would change every subkey, and no stored key would unwrap.
        use hmac::{Hmac, Mac};
        let mac = |key: &[u8], data: &[&[u8]]| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            for d in data {
                m.update(d);
            }
            m.finalize().into_bytes()
        };
        for usage in KeyUse::ALL {
            let prk = mac(&[0u8; 32], &[&MATERIAL]);
            let okm = mac(&prk, &[usage.label(), &[1]]);
            assert_eq!(
                derive(&MATERIAL, usage).unwrap().expose_secret().as_slice(),
                okm.as_slice()
            );
        }
    }

    #[test]
    fn debug_names_the_use_only() {
        let k = derive(&[0x41; 32], KeyUse::RootKeyCheck).unwrap();
        let shown = format!("{k:?}");
        assert_eq!(shown, "Subkey(RootKeyCheck, <redacted>)");
        let hex = hex::encode(k.expose_secret());
        assert!(!shown.contains(&hex[..8]));
    }
}
