//! Cryptographic building blocks: key newtypes, a subkey per use, the self-describing AEAD
//! envelope, associated data, nonces and the passphrase KDF.
//!
//! Invariant: key material lives only in the zeroize-on-drop types of `keys` and `subkey`,
//! reachable through `expose_secret()`; nothing here prints or logs a key or a plaintext.
//! Invariant: one key, one use — a key of the hierarchy is only ever HKDF input; each AEAD, MAC
//! and key check uses its own subkey (`subkey`).
//! Invariant: associated data is built only in `aad`, nonces only in `envelope::nonce`.
//! Invariant: a failed open is opaque (`CryptoError::Open`), whatever the cause.

pub mod envelope;
pub mod kdf;
pub mod keys;
pub mod stream;
pub mod subkey;

pub use envelope::{Algorithm, Header, open, seal};
pub use keys::{AuditKey, IndexKey, PurposeKey, RootKey, SubjectKey};
pub use subkey::{EnvelopeKey, Subkey};

use aes_gcm::aead::{self, AeadCore};

/// The nonce of the AEAD `A` in `bytes`; the AEAD's error when they are not as long as it.
pub(crate) fn nonce_of<A: AeadCore>(bytes: &[u8]) -> Result<&aead::Nonce<A>, aead::Error> {
    bytes.try_into().map_err(|_| aead::Error)
}

/// The tag of the AEAD `A` in `bytes`; the AEAD's error when they are not as long as it.
pub(crate) fn tag_of<A: AeadCore>(bytes: &[u8]) -> Result<&aead::Tag<A>, aead::Error> {
    bytes.try_into().map_err(|_| aead::Error)
}

/// Errors of the crypto layer. Deliberately uninformative about why an open failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext failed authentication: tampered, moved, or the wrong key.
    #[error("ciphertext failed its integrity check")]
    Open,
    /// The ciphertext is not in a format this version of kluis understands.
    #[error("unsupported ciphertext format")]
    Format,
    /// The ciphertext is of a format version this kluis does not read (format 1 used keys
    /// directly, without a subkey per use; it is refused rather than opened).
    #[error("ciphertext format version {0} is not read by this kluis (it reads version 2)")]
    Version(u8),
    /// Sealing failed (should not happen with valid keys).
    #[error("encryption failed")]
    Seal,
    /// The key derivation function failed (bad parameters).
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Where a ciphertext belongs. The associated data of every ciphertext is built from one of
/// these, so a ciphertext moved to another place fails to open.
#[derive(Clone, Copy, Debug)]
pub enum AadContext<'a> {
    /// A field value of a record.
    Field {
        /// The data subject.
        subject: &'a str,
        /// The record id.
        record: &'a str,
        /// The field name.
        field: &'a str,
        /// The field's category.
        category: &'a str,
        /// The record's purpose.
        purpose: &'a str,
        /// `text` or `binary`.
        kind: &'a str,
        /// The value's version: random per write, so an older ciphertext put back in the
        /// field's place no longer opens.
        version: &'a str,
    },
    /// A subject data key wrapped under a purpose key version.
    SubjectKey {
        /// The data subject.
        subject: &'a str,
        /// The purpose.
        purpose: &'a str,
        /// The subject key's generation.
        generation: u32,
    },
    /// A purpose key version wrapped under the root key.
    PurposeKey {
        /// The purpose.
        purpose: &'a str,
        /// The version.
        version: u32,
    },
    /// The audit MAC key wrapped under the root key, bound to the store it was made for.
    AuditKey {
        /// The store id fixed at initialisation (16 bytes).
        store_id: &'a [u8],
    },
    /// A blind-index key version wrapped under the root key, bound to its store and version.
    IndexKey {
        /// The store id fixed at initialisation (16 bytes).
        store_id: &'a [u8],
        /// The version.
        version: u32,
    },
    /// An evidence file: its segments and its sealed file name.
    Evidence {
        /// The data subject.
        subject: &'a str,
        /// The record the evidence belongs to.
        record: &'a str,
        /// The evidence id.
        evidence: &'a str,
        /// The field name.
        field: &'a str,
        /// The category.
        category: &'a str,
        /// The record's purpose.
        purpose: &'a str,
    },
}

/// Builds the associated data for `ctx`: a domain label and length-prefixed parts, so that no two
/// different contexts can produce the same bytes.
pub fn aad(ctx: &AadContext<'_>) -> Vec<u8> {
    fn part(out: &mut Vec<u8>, s: &[u8]) {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut out = Vec::with_capacity(128);
    match ctx {
        AadContext::Field {
            subject,
            record,
            field,
            category,
            purpose,
            kind,
            version,
        } => {
            part(&mut out, b"kluis.v2.field");
            for p in [subject, record, field, category, purpose, kind, version] {
                part(&mut out, p.as_bytes());
            }
        }
        AadContext::SubjectKey {
            subject,
            purpose,
            generation,
        } => {
            part(&mut out, b"kluis.v1.subject-key");
            part(&mut out, subject.as_bytes());
            part(&mut out, purpose.as_bytes());
            part(&mut out, &generation.to_be_bytes());
        }
        AadContext::PurposeKey { purpose, version } => {
            part(&mut out, b"kluis.v1.purpose-key");
            part(&mut out, purpose.as_bytes());
            part(&mut out, &version.to_be_bytes());
        }
        AadContext::AuditKey { store_id } => {
            part(&mut out, b"kluis.v2.audit-key");
            part(&mut out, store_id);
        }
        AadContext::IndexKey { store_id, version } => {
            part(&mut out, b"kluis.v2.index-key");
            part(&mut out, store_id);
            part(&mut out, &version.to_be_bytes());
        }
        AadContext::Evidence {
            subject,
            record,
            evidence,
            field,
            category,
            purpose,
        } => {
            part(&mut out, b"kluis.v1.evidence");
            for p in [subject, record, evidence, field, category, purpose] {
                part(&mut out, p.as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_parts_cannot_be_shifted() {
        let a = aad(&AadContext::PurposeKey {
            purpose: "ab",
            version: 1,
        });
        let b = aad(&AadContext::PurposeKey {
            purpose: "a",
            version: 1,
        });
        assert_ne!(a, b);
        let f = |subject, record, version| {
            aad(&AadContext::Field {
                subject,
                record,
                field: "f",
                category: "contact",
                purpose: "contract",
                kind: "text",
                version,
            })
        };
        assert_ne!(f("s1", "r", "v"), f("s", "1r", "v"));
        // Another version of the same field's value is another place.
        assert_ne!(f("s", "r", "v1"), f("s", "r", "v2"));
    }
}
