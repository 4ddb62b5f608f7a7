//! Root key custody: what unlocks the root key besides a passphrase or a key file.
//!
//! - **Shares** (`shares`): the root key split by Shamir secret sharing over GF(256) into N
//!   shares of which any K open the store; each share a line of text with its set, its number
//!   and a checksum, so a mistyped or foreign share is named, not silently wrong.
//! - **HSM** (`pkcs11`): the root key encrypted with AES-GCM by a non-extractable AES key inside
//!   a PKCS#11 token, the store id bound as associated data.
//!
//! Invariant: nothing here logs, prints or formats a share's value or key bytes; `Debug` of every
//! type is redacted.
//! Invariant: knows neither gRPC nor SQL.

pub mod pkcs11;
pub mod shares;

/// Errors of the seals.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A share is malformed, mistyped, foreign or a duplicate; says which and why.
    #[error("{0}")]
    Share(String),
    /// Too few shares, or shares of different sets.
    #[error("{0}")]
    Quorum(String),
    /// The HSM (or its PKCS#11 module) refused or failed; says what to check.
    #[error("HSM: {0}")]
    Hsm(String),
    /// The HSM refused the PIN (wrong or locked): trying again with the same PIN only brings
    /// the token's lock-out nearer.
    #[error("HSM: {0}")]
    HsmPin(String),
    /// The parameters of a split are out of range.
    #[error("{0}")]
    Parameters(String),
}
