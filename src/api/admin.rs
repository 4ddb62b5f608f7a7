//! The `kluis.v1.Admin` service: credentials. Policy-checked and audited in the core.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, run};
use crate::{
    domain::now_unix,
    pb::{self, admin_server::Admin as AdminRpc},
    vault::{Vault, tokens::TokenSpec},
};

/// The gRPC face of the vault's administration.
#[derive(Clone, Debug)]
pub struct AdminApi {
    vault: Arc<Vault>,
}

impl AdminApi {
    /// Serves `vault`.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl AdminRpc for AdminApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let spec = TokenSpec::parse(
                &req.principal_id,
                &req.roles,
                req.ttl_seconds,
                &req.scope_subject_id,
            )?;
            let issued = vault.issue_token(principal, &spec, &req.justification)?;
            Ok(pb::IssueTokenResponse {
                token_id: issued.id,
                token: issued.token.expose_secret().to_owned(),
                expires_at: Some(convert::timestamp(issued.expires_at)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            if req.token_id.is_empty() {
                return Err(crate::domain::InputError::new(
                    "token_id",
                    "the id of the token to revoke is required (`tok_…`)",
                )
                .into());
            }
            vault.revoke_token(principal, &req.token_id, &req.justification)?;
            Ok(pb::RevokeTokenResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let now = now_unix();
            let tokens = vault
                .list_tokens(principal, req.include_inactive)?
                .into_iter()
                .map(|t| pb::TokenInfo {
                    state: if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= now {
                        "expired"
                    } else {
                        "active"
                    }
                    .into(),
                    token_id: t.id,
                    principal_id: t.principal,
                    roles: t.roles,
                    scope_subject_id: t.scope_subject.unwrap_or_default(),
                    created_at: Some(convert::timestamp(t.created_at)),
                    expires_at: Some(convert::timestamp(t.expires_at)),
                    revoked_at: t.revoked_at.map(convert::timestamp),
                })
                .collect();
            Ok(pb::ListTokensResponse { tokens })
        })
        .await
        .map(Response::new)
    }
}
