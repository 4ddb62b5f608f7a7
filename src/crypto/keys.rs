//! Key newtypes, one per role in the key hierarchy. Each zeroizes on drop, has a redacted
//! `Debug`, no `Clone`, no `Serialize`, and hands out its bytes only through `expose_secret()`.

use std::fmt;

use rand::RngCore;
use zeroize::Zeroizing;

macro_rules! key_type {
    ($(#[$meta:meta])* $name:ident $(, $(#[$fmeta:meta])* $field:ident: $ty:ty)* $(,)?) => {
        $(#[$meta])*
        pub struct $name {
            key: Box<Zeroizing<[u8; 32]>>,
            $($(#[$fmeta])* pub(crate) $field: $ty,)*
        }

        impl $name {
            /// A fresh random key from the operating system's CSPRNG.
            pub fn generate() -> Self {
                let mut key = Box::new(Zeroizing::new([0u8; 32]));
                rand::rngs::OsRng.fill_bytes(key.as_mut_slice());
                Self::from_box(key)
            }

            /// Takes ownership of key bytes; the source is wiped when it is a `Zeroizing`.
            pub fn from_bytes(bytes: &[u8; 32]) -> Self {
                Self::from_box(Box::new(Zeroizing::new(*bytes)))
            }

            /// Takes 32 bytes from a slice, or `None` when the length is wrong.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let arr: &[u8; 32] = bytes.try_into().ok()?;
                Some(Self::from_bytes(arr))
            }

            /// The key bytes. The only way to reach them; grep for it when reviewing.
            pub fn expose_secret(&self) -> &[u8; 32] {
                &self.key
            }

            fn from_box(key: Box<Zeroizing<[u8; 32]>>) -> Self {
                Self {
                    key,
                    $($field: Default::default(),)*
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

key_type!(
    /// The root key: derived from a passphrase or read from a key file; never stored.
    RootKey
);
key_type!(
    /// One version of a purpose key: wraps subject keys; stored wrapped under the root key.
    PurposeKey
);
key_type!(
    /// A data key per (subject, purpose): encrypts field values; stored wrapped under a purpose
    /// key.
    ///
    /// Keeps the AES-256-GCM cipher of its field subkey once it has been used
    /// (`fields_aes`), so that a key the keyring caches does not derive a subkey and
    /// expand AES round keys for every field it seals or opens. The cipher is wiped with the key.
    SubjectKey,
    /// The field cipher, prepared at its first use (`EnvelopeKey::prepared_aes`).
    fields_aes: std::sync::OnceLock<Box<aes_gcm::Aes256Gcm>>,
);
key_type!(
    /// The audit MAC key: separate from all data keys; stored wrapped under the root key.
    AuditKey
);
key_type!(
    /// One version of the blind-index key: separate from every encryption key; stored wrapped
    /// under the root key. Only HKDF input for the tag key of each (purpose, field).
    IndexKey
);

#[cfg(test)]
mod tests {
    use super::*;

    static_assertions::assert_not_impl_any!(RootKey: Clone, serde::Serialize);
    static_assertions::assert_not_impl_any!(SubjectKey: Clone, serde::Serialize);

    #[test]
    fn debug_is_redacted() {
        let key = SubjectKey::from_bytes(&[0x41; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "SubjectKey(<redacted>)");
        assert!(!shown.contains("41"));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            RootKey::generate().expose_secret(),
            RootKey::generate().expose_secret()
        );
    }
}
