//! The one mapping from `VaultError` to a gRPC `Status`. Internal causes are logged here and the
//! caller gets `internal error`; caller mistakes get a message that says what to do.

use tonic::Status;

use crate::{
    audit::AuditError, crypto::CryptoError, keys::KeyError, seal::SealError, store::StoreError,
    vault::VaultError,
};

/// Maps a core error to the status the caller sees.
pub fn to_status(e: VaultError) -> Status {
    match e {
        VaultError::Unauthenticated(m) => Status::unauthenticated(m),
        VaultError::Denied(m) => Status::permission_denied(format!("access denied: {m}")),
        VaultError::Input(e) => Status::invalid_argument(e.to_string()),
        e @ VaultError::NotFound(_) => Status::not_found(e.to_string()),
        VaultError::FailedPrecondition(m) | VaultError::Rollback(m) => {
            Status::failed_precondition(m)
        }
        VaultError::RateLimited(m) | VaultError::Exhausted(m) => Status::resource_exhausted(m),
        e @ (VaultError::DataLoss(_) | VaultError::Key(KeyError::Tampered(_))) => {
            tracing::error!(error = %e, "integrity check failed");
            Status::data_loss(e.to_string())
        }
        // A stored subject key wrapped under a version that cannot unwrap, or a purpose with no
        // active version: the key rows were edited by hand (kluis never leaves either).
        e @ VaultError::Key(
            KeyError::MissingPurposeKey(_)
            | KeyError::BelowMinimum { .. }
            | KeyError::Destroyed { .. },
        ) => {
            tracing::error!(error = %e, "stored keys are inconsistent");
            Status::data_loss(
                "stored keys are inconsistent; the store is damaged or was tampered with; run \
                 `kluis admin keys report` and `kluis admin store verify`",
            )
        }
        // A stored value that is none of the values it stands for was edited by hand.
        e @ (VaultError::Store(StoreError::Corrupt(_))
        | VaultError::Key(KeyError::Store(StoreError::Corrupt(_)))) => {
            tracing::error!(error = %e, "a stored row cannot be read");
            Status::data_loss(
                "a stored row cannot be read; the store is damaged or was tampered with; run \
                 `kluis admin store verify`",
            )
        }
        // An audit entry that does not read as one (a value of another type put in its row by
        // hand), or a trail whose last entry is not the one to chain onto (edited, deleted, cut
        // back): the trail was edited, and `audit verify` names the entry. Trying again does
        // not help, so it is not `UNAVAILABLE`.
        e @ VaultError::Audit(AuditError::Store(StoreError::Corrupt(_))) => {
            tracing::error!(error = %e, "an audit entry cannot be read");
            Status::data_loss(
                "an audit entry cannot be read, or the trail's last entry is not the one to chain \
                 on: the trail is damaged, was tampered with, or lost committed entries (a \
                 database failover or restore); nothing was done; run \
                 `kluis admin audit verify`",
            )
        }
        // A write the database answered as done and did not keep as written: someone added a
        // trigger or rule to it, or deleted a row kluis needs. The change is refused.
        e @ (VaultError::Store(StoreError::NotKept(_))
        | VaultError::Key(KeyError::Store(StoreError::NotKept(_)))) => {
            tracing::error!(error = %e, "a write was not kept by the database");
            Status::data_loss(
                "the database did not keep a write as kluis made it (a trigger or rule added to \
                 it, or a row kluis needs deleted?); the change is refused; run `kluis admin \
                 store verify` and look for triggers and rules",
            )
        }
        // The root key is checked at start, so a stored wrapped key that does not open was
        // damaged or tampered with (swapped, edited): not an internal fault.
        VaultError::Key(KeyError::Crypto(CryptoError::Open)) => {
            tracing::error!("a stored wrapped key failed to open; run `kluis admin store verify`");
            Status::data_loss(
                "a stored key failed its integrity check; the stored data is damaged or was \
                 tampered with",
            )
        }
        VaultError::Unavailable(m) => Status::unavailable(m),
        e @ VaultError::AuditUnavailable => {
            tracing::error!("audit trail unavailable; request refused");
            Status::unavailable(e.to_string())
        }
        // Another change came between reading and writing: the caller may simply try again.
        e @ (VaultError::Store(
            StoreError::Stale(_) | StoreError::NotLive { .. } | StoreError::Retry,
        )
        | VaultError::Key(KeyError::Store(
            StoreError::Stale(_) | StoreError::NotLive { .. } | StoreError::Retry,
        ))) => Status::aborted(format!("{e}; try again")),
        // The database is down or restarting: nothing was decrypted or changed, and kluis
        // reconnects by itself.
        e @ (VaultError::Store(StoreError::Unavailable(_))
        | VaultError::Key(KeyError::Store(StoreError::Unavailable(_)))) => {
            tracing::warn!(error = %e, "store unavailable; request refused");
            Status::unavailable("the database is unavailable; try again shortly")
        }
        VaultError::Store(StoreError::Unsupported(m)) => Status::failed_precondition(m),
        // A share named as mistyped, foreign or short of a quorum; a secret of another kind
        // than the store's; an HSM that refused: the caller's to correct.
        VaultError::Key(KeyError::Seal(SealError::Hsm(m) | SealError::HsmPin(m))) => {
            Status::failed_precondition(format!("HSM: {m}"))
        }
        VaultError::Key(KeyError::Seal(e)) => Status::invalid_argument(e.to_string()),
        e @ VaultError::Key(KeyError::SourceMismatch { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        VaultError::Key(KeyError::WrongRootKey) => {
            Status::invalid_argument("the shares given do not open this store's root key")
        }
        e @ (VaultError::Store(_)
        | VaultError::Key(_)
        | VaultError::Policy(_)
        | VaultError::Audit(_)) => {
            tracing::error!(error = %e, "internal error");
            Status::internal("internal error")
        }
    }
}
