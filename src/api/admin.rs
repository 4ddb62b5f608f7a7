//! The `kluis.v1.Admin` service: credentials. Policy-checked and audited in the core.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert, run};
use crate::{
    audit::{Filter, Head, Verification},
    domain::{InputError, PrincipalId, SubjectId, now_unix},
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
    type ExportAuditStream = ReceiverStream<Result<pb::AuditEntry, Status>>;

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

    async fn audit_head(
        &self,
        request: Request<pb::AuditHeadRequest>,
    ) -> Result<Response<pb::AuditHeadResponse>, Status> {
        run(&self.vault, request, |vault, principal, _req| {
            let head = vault.audit_head(principal)?;
            Ok(pb::AuditHeadResponse {
                head: Some(pb::AuditHead {
                    seq: head.seq,
                    hash: head.hash,
                    mac: head.mac,
                }),
            })
        })
        .await
        .map(Response::new)
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let expect = req.expect_head.map(|h| Head {
                seq: h.seq,
                hash: h.hash,
                mac: h.mac,
            });
            if let Some(h) = &expect
                && (h.hash.len() != 64 || !h.hash.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(
                    InputError::new("expect_head.hash", "expected 64 hexadecimal digits").into(),
                );
            }
            Ok(match vault.verify_audit(principal, expect.as_ref())? {
                Verification::Intact { count, head } => pb::VerifyAuditResponse {
                    intact: true,
                    count,
                    head_hash: head,
                    ..Default::default()
                },
                Verification::Broken { seq, problem } => pb::VerifyAuditResponse {
                    intact: false,
                    broken_seq: seq,
                    problem,
                    ..Default::default()
                },
            })
        })
        .await
        .map(Response::new)
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        let (filter, upto) = run(&self.vault, request, |vault, principal, req| {
            let filter = Filter {
                subject: (!req.subject_id.is_empty())
                    .then(|| {
                        SubjectId::parse("subject_id", &req.subject_id)
                            .map(|s| s.as_str().to_owned())
                    })
                    .transpose()?,
                principal: (!req.principal_id.is_empty())
                    .then(|| {
                        PrincipalId::parse("principal_id", &req.principal_id)
                            .map(|p| p.as_str().to_owned())
                    })
                    .transpose()?,
                since: req.since.map(|t| t.seconds),
                break_glass: req.break_glass_only,
                actions: Vec::new(),
            };
            let upto = vault.begin_audit_export(principal, &filter, &req.justification)?;
            Ok((filter, upto))
        })
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let result = vault.scan_audit_export(&filter, upto, |seq, raw| {
                let json = String::from_utf8_lossy(raw).into_owned();
                // A closed channel means the client went away: stop reading.
                tx.blocking_send(Ok(pb::AuditEntry { seq, json })).is_ok()
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(super::status::to_status(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn subject_access_report(
        &self,
        request: Request<pb::SubjectAccessReportRequest>,
    ) -> Result<Response<pb::SubjectAccessReportResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let events = vault
                .subject_access_report(principal, &subject, &req.justification)?
                .into_iter()
                .map(|(seq, e)| {
                    let (allowed, denied): (Vec<_>, Vec<_>) =
                        e.fields.into_iter().partition(|f| f.decision == "allow");
                    pb::AccessEvent {
                        seq,
                        time: Some(convert::timestamp(e.time)),
                        principal_id: e.principal,
                        roles: e.roles,
                        action: e.action,
                        purpose: e.purpose.unwrap_or_default(),
                        case_ref: e.case_ref.unwrap_or_default(),
                        justification: e.justification.unwrap_or_default(),
                        channel: e.channel.unwrap_or_default(),
                        break_glass: e.break_glass,
                        record_id: e.record.unwrap_or_default(),
                        decision: e.decision,
                        fields_allowed: allowed.into_iter().map(|f| f.name).collect(),
                        fields_denied: denied.into_iter().map(|f| f.name).collect(),
                    }
                })
                .collect();
            Ok(pb::SubjectAccessReportResponse {
                subject_id: subject.as_str().into(),
                events,
            })
        })
        .await
        .map(Response::new)
    }
}
