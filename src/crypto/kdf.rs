//! The passphrase KDF (Argon2id), the key check value that detects a wrong passphrase or key
//! file at unseal time, before anything is decrypted, and HMAC under a subkey.

use argon2::{Algorithm as Variant, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{CryptoError, keys::RootKey, subkey::Subkey};

/// Argon2id parameters, stored with the salt so the same key can be derived again.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const RFC9106_SECOND: KdfParams = KdfParams {
        m_cost: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };

    /// The most the stored parameters may ask for: 4 GiB of memory, 64 passes, 64 lanes. Far
    /// above any sensible setting, low enough that a tampered store cannot make start-up hang or
    /// run out of memory.
    pub const MAX: KdfParams = KdfParams {
        m_cost: 4 * 1024 * 1024,
        t_cost: 64,
        p_cost: 64,
    };

    /// Refuses parameters weaker than RFC 9106's second recommendation (a tampered store must
    /// not be able to weaken the KDF) or above `MAX` (nor make unsealing hang or exhaust memory).
    pub fn check_strength(&self) -> Result<(), CryptoError> {
        let min = Self::RFC9106_SECOND;
        if self.m_cost < min.m_cost || self.t_cost < min.t_cost || self.p_cost < 1 {
            return Err(CryptoError::Kdf(format!(
                "Argon2id parameters m={} t={} p={} are weaker than the minimum m={} t={} p=1",
                self.m_cost, self.t_cost, self.p_cost, min.m_cost, min.t_cost
            )));
        }
        let max = Self::MAX;
        for (name, value, limit, unit) in [
            ("m_cost", self.m_cost, max.m_cost, " KiB (4 GiB)"),
            ("t_cost", self.t_cost, max.t_cost, " passes"),
            ("p_cost", self.p_cost, max.p_cost, " lanes"),
        ] {
            if value > limit {
                return Err(CryptoError::Kdf(format!(
                    "Argon2id parameter {name}={value} is above the limit of {limit}{unit}; \
                     the stored key derivation parameters were changed"
                )));
            }
        }
        Ok(())
    }
}

/// Derives the root key from a passphrase with Argon2id.
pub fn derive_root_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<RootKey, CryptoError> {
    let argon_params = Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = Argon2::new(Variant::Argon2id, Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut_slice())
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(RootKey::from_bytes(&out))
}

/// The key check value of a root key: a MAC of a fixed label under the root key's key check
/// subkey, which serves nothing else. Reveals nothing about the key but tells whether a candidate
/// key is the one the store was created with.
pub fn key_check_value(root: &RootKey) -> Result<[u8; 32], CryptoError> {
    Ok(mac(&root.key_check_subkey()?, b"kluis.v2.key-check-value"))
}

/// True when `root` matches the stored key check value (constant-time comparison).
pub fn key_matches(root: &RootKey, stored: &[u8]) -> bool {
    key_check_value(root).is_ok_and(|kcv| kcv.ct_eq(stored).into())
}

/// HMAC-SHA-256 of `data` under `key`, a subkey derived for this MAC alone.
pub fn mac(key: &Subkey, data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret()) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Algorithm, EnvelopeKey};

    const FAST: KdfParams = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn same_passphrase_same_key_and_check_value() {
        let a = derive_root_key(b"correct horse", b"saltsaltsaltsalt", FAST).unwrap();
        let b = derive_root_key(b"correct horse", b"saltsaltsaltsalt", FAST).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(key_matches(&b, &key_check_value(&a).unwrap()));
    }

    #[test]
    fn wrong_passphrase_fails_key_check() {
        let a = derive_root_key(b"correct horse", b"saltsaltsaltsalt", FAST).unwrap();
        let b = derive_root_key(b"correct horsf", b"saltsaltsaltsalt", FAST).unwrap();
        assert!(!key_matches(&b, &key_check_value(&a).unwrap()));
        let mut kcv = key_check_value(&a).unwrap();
        kcv[0] ^= 1;
        assert!(!key_matches(&a, &kcv));
    }

    #[test]
    fn the_key_check_value_is_not_made_with_the_root_key_or_its_wrapping_subkeys() {
        let root = RootKey::from_bytes(&[0x33; 32]);
        let kcv = key_check_value(&root).unwrap();
        // Twin: the check subkey is what makes it.
        let check = root.key_check_subkey().unwrap();
        assert_eq!(mac(&check, b"kluis.v2.key-check-value"), kcv);
        // The key itself (format 1's key check value) or a wrapping subkey would give another
        // value: the root key's AEAD keys are not its key check key.
        let direct = <Hmac<Sha256> as Mac>::new_from_slice(root.expose_secret())
            .unwrap()
            .chain_update(b"kluis.v2.key-check-value")
            .finalize()
            .into_bytes();
        assert_ne!(direct.as_slice(), kcv.as_slice());
        for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
            let wrap = root.aead_subkey(alg).unwrap();
            assert_ne!(wrap.expose_secret(), check.expose_secret());
            assert_ne!(mac(&wrap, b"kluis.v2.key-check-value"), kcv);
            // A ciphertext the root key wrapped does not pass as its key check value.
            let wrapped = crate::crypto::seal(&root, alg, 1, b"", &[0; 32]).unwrap();
            assert!(!key_matches(&root, &wrapped));
            assert!(!key_matches(&root, &wrapped[wrapped.len() - 32..]));
        }
    }

    #[test]
    fn weak_parameters_are_refused() {
        assert!(FAST.check_strength().is_err());
        assert!(KdfParams::RFC9106_SECOND.check_strength().is_ok());
        let no_lanes = KdfParams {
            p_cost: 0,
            ..KdfParams::RFC9106_SECOND
        };
        assert!(no_lanes.check_strength().is_err());
    }

    fn refused_naming(params: KdfParams, name: &str, limit: u32) {
        let err = params.check_strength().unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        assert!(err.contains(&format!("limit of {limit}")), "{err}");
    }

    #[test]
    fn memory_above_4_gib_is_refused() {
        let at = KdfParams {
            m_cost: KdfParams::MAX.m_cost,
            ..KdfParams::RFC9106_SECOND
        };
        assert!(at.check_strength().is_ok());
        let above = KdfParams {
            m_cost: at.m_cost + 1,
            ..at
        };
        refused_naming(above, "m_cost", 4 * 1024 * 1024);
        // 4 TiB, as a tampered store might ask.
        refused_naming(
            KdfParams {
                m_cost: u32::MAX,
                ..at
            },
            "m_cost",
            4 * 1024 * 1024,
        );
    }

    #[test]
    fn passes_above_64_are_refused() {
        let at = KdfParams {
            t_cost: 64,
            ..KdfParams::RFC9106_SECOND
        };
        assert!(at.check_strength().is_ok());
        refused_naming(KdfParams { t_cost: 65, ..at }, "t_cost", 64);
    }

    #[test]
    fn lanes_above_64_are_refused() {
        let at = KdfParams {
            p_cost: 64,
            ..KdfParams::RFC9106_SECOND
        };
        assert!(at.check_strength().is_ok());
        refused_naming(KdfParams { p_cost: 65, ..at }, "p_cost", 64);
    }
}
