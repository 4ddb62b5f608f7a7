//! The gRPC edge: tonic services for `kluis.v1.Vault` and `kluis.v1.Admin`, bearer-token
//! authentication, proto ⇄ domain conversion and the one mapping from `VaultError` to `Status`.
//!
//! Invariant: the only module that sees proto types; it converts them by hand.
//! Invariant: never formats a request, metadata map or token with `{:?}`.
//! Invariant: each call runs its core work on one blocking thread (`spawn_blocking`).

pub mod admin;
pub mod convert;
pub mod status;
pub mod vault;

use std::sync::Arc;

use tonic::{Request, Status, metadata::MetadataMap};

use crate::vault::{Vault, VaultError, tokens::BearerToken};

pub use admin::AdminApi;
pub use vault::VaultApi;

/// Takes the bearer token from `authorization: Bearer <token>` metadata.
pub fn bearer_token(metadata: &MetadataMap) -> Result<BearerToken, Status> {
    let missing = || {
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata",
        )
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(missing)?
        .trim();
    if token.is_empty() || token.len() > 256 {
        return Err(missing());
    }
    Ok(BearerToken::new(token.to_owned()))
}

/// How long a unary call may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `f` with the authenticated principal on a blocking thread and maps its error.
pub(crate) async fn run<Req, T, F>(
    vault: &Arc<Vault>,
    request: Request<Req>,
    f: F,
) -> Result<T, Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Vault, &crate::domain::Principal, Req) -> Result<T, VaultError> + Send + 'static,
{
    let token = bearer_token(request.metadata())?;
    let message = request.into_inner();
    let vault = Arc::clone(vault);
    let task = tokio::task::spawn_blocking(move || {
        let principal = vault.authenticate(&token)?;
        f(&vault, &principal, message)
    });
    tokio::time::timeout(REQUEST_TIMEOUT, task)
        .await
        .map_err(|_| Status::deadline_exceeded("the request took longer than 60 s"))?
        .map_err(|e| {
            tracing::error!(error = %e, "request task failed");
            Status::internal("internal error")
        })?
        .map_err(status::to_status)
}
