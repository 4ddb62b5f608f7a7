//! The `kluis.v1.Admin` service: credentials. Policy-checked and audited in the core.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    Backend, convert,
    judge::Judge,
    run, run_long,
    stream::{Long, ServerStream, Streams},
};
use crate::{
    audit::{Filter, Head, Verification},
    crypto::{Algorithm, RootKey},
    domain::{
        InputError, PrincipalId, Purpose, RecordId, RequestKind, SubjectId, now_unix, parse_purpose,
    },
    identity::Identity,
    keys::RootSecret,
    pb::{self, admin_server::Admin as AdminRpc},
    policy::AdminAction,
    vault::{
        Vault, VaultError,
        keyadmin::{Progress, PurposeKeysInfo},
        lifecycle::RequestStatus,
        rights::Consent,
        tokens::TokenSpec,
    },
};

/// The gRPC face of the vault's administration.
#[derive(Clone, Debug)]
pub struct AdminApi {
    vault: Backend,
    /// Becomes true when the server stops: ends the streams that would otherwise never end
    /// (`WatchAudit` with `follow`), so that a graceful shutdown does not wait for them.
    stop: tokio::sync::watch::Receiver<bool>,
    streams: Arc<Streams>,
}

impl AdminApi {
    /// Serves `vault` to callers with kluis tokens.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self::with_identity(vault, Arc::new(Identity::none()))
    }

    /// Serves `vault` to the callers `identity` establishes.
    pub fn with_identity(vault: Arc<Vault>, identity: Arc<Identity>) -> Self {
        Self {
            vault: Backend { vault, identity },
            stop: tokio::sync::watch::Sender::new(false).subscribe(),
            streams: Arc::default(),
        }
    }

    /// Ends the streams that follow the trail once `stop` says true (the server stopping).
    #[must_use]
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// Sends server streams under `streams` (shared with `VaultApi`: one cap on exports).
    #[must_use]
    pub fn with_streams(mut self, streams: Arc<Streams>) -> Self {
        self.streams = streams;
        self
    }
}

/// Entries read from the store at a time for `WatchAudit`, and entries queued for the client:
/// whatever the reader's pace, a watch holds at most about twice this many in memory.
pub const WATCH_PAGE: usize = 256;

/// How often a follower looks at the store when no commit of this process was announced: other
/// nodes of a shared store commit too.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Entries `WatchAudit` sends first when the request says neither where to resume nor how many.
const WATCH_LAST_DEFAULT: u64 = 20;

/// Most entries `WatchAudit` sends first on request (`last`).
const WATCH_LAST_MAX: u32 = 10_000;

#[tonic::async_trait]
impl AdminRpc for AdminApi {
    type ExportAuditStream = ServerStream<pb::AuditEntry>;
    type WatchAuditStream = ServerStream<pb::AuditWatchEntry>;

    async fn watch_audit(
        &self,
        request: Request<pb::WatchAuditRequest>,
    ) -> Result<Response<Self::WatchAuditStream>, Status> {
        let follow = request.get_ref().follow;
        // Each page is read under one of the caller's places, as the call itself was, and the
        // caller is judged again while the watch runs (`judge`).
        let creds = super::credentials(&request)?;
        let key = super::caller_key(&creds);
        let judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        // A place among the watches open (each reads the trail after every commit), taken
        // before the watch's entry is written and held until it ends.
        let ((watch, principal), permit) = run_long(
            &self.vault,
            &self.streams,
            Long::Watch,
            request,
            |vault, principal, req| {
                if req.last.is_some_and(|last| last > WATCH_LAST_MAX) {
                    return Err(InputError::new(
                        "last",
                        format!(
                            "at most {WATCH_LAST_MAX} entries; resume with `after_seq` instead"
                        ),
                    )
                    .into());
                }
                let last = req.last.map_or(WATCH_LAST_DEFAULT, u64::from);
                vault
                    .begin_audit_watch(
                        principal,
                        req.after_seq,
                        last,
                        req.follow,
                        &req.justification,
                    )
                    .map(|watch| (watch, principal.clone()))
            },
        )
        .await?;
        let mut judge = judge.for_call(principal, "audit-watch", None, None);
        let (tx, stream) = self.streams.channel(WATCH_PAGE);
        let vault = Arc::clone(&self.vault.vault);
        let mut stop = self.stop.clone();
        let mut commits = vault.audit_commits();
        tokio::spawn(async move {
            let _permit = permit;
            let (mut next, mut prev) = (watch.start, None);
            'pages: loop {
                // A token revoked or expired, or a policy that no longer lets the caller read
                // the trail, ends the watch: the caller is judged again before a page is read
                // when a judgement is due (the wait below wakes at least once a second), as
                // it is once the page has its place, however long it waited for one.
                // Read behind what is committed, one page at a time: the next page is read once
                // this one is in the channel, which holds at most a page, so a slow reader
                // holds the watch at two pages.
                let page = match super::take_place(&vault, key).await {
                    Ok(place) => {
                        let (vault, mut judged) = (Arc::clone(&vault), judge.clone());
                        place
                            .run(move || {
                                let judging = judged.due();
                                if judging {
                                    judged.judge(|vault, principal| {
                                        vault.keep_admin(
                                            principal,
                                            AdminAction::ReadAudit,
                                            "audit-watch",
                                        )
                                    })?;
                                }
                                let page = vault.audit_entries_from(next, prev, WATCH_PAGE)?;
                                Ok::<_, VaultError>((judged, page, judging))
                            })
                            .await
                    }
                    Err(status) => {
                        tx.send(Err(status)).await;
                        return;
                    }
                };
                let (page, judging) = match page {
                    Ok(Ok((judged, page, judging))) => {
                        judge = judged;
                        (page, judging)
                    }
                    Ok(Err(e)) => {
                        tx.send(Err(judge.status(e))).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit watch task failed");
                        tx.send(Err(Status::internal("internal error"))).await;
                        return;
                    }
                };
                let got = page.len();
                for (i, entry) in page.into_iter().enumerate() {
                    if !follow && entry.seq > watch.own {
                        return;
                    }
                    // An entry goes out, once the client has made room for it, only while no
                    // judgement is due (a client that kept it waiting, a revocation
                    // meanwhile): else it is read again from `next` after one. The first entry
                    // after a judgement goes however long the client took, unless a change
                    // came meanwhile, so that the watch moves on however slow its reader.
                    let Some(slot) = tx.reserve().await else {
                        return; // The client went away or stopped reading.
                    };
                    if judge.changed() || (!(judging && i == 0) && judge.due()) {
                        continue 'pages;
                    }
                    next = entry.seq + 1;
                    prev = Some(entry.hash);
                    let message = pb::AuditWatchEntry {
                        seq: entry.seq,
                        json: String::from_utf8_lossy(&entry.entry).into_owned(),
                        hash: hex::encode(entry.hash),
                        prev_hash: hex::encode(entry.prev_hash),
                    };
                    slot.send(Ok(message));
                }
                if !follow && next > watch.own {
                    return;
                }
                if got == WATCH_PAGE {
                    continue;
                }
                // Caught up: wait for a commit of this process, a while for other nodes', the
                // client to leave, or the server to stop.
                let stopping = tokio::select! {
                    changed = commits.changed() => changed.is_err() || commits.borrow().1,
                    () = tokio::time::sleep(WATCH_POLL) => false,
                    () = tx.closed() => return,
                    () = async {
                        // A server that never says stop (its sender gone) never stops a watch.
                        if stop.wait_for(|stopped| *stopped).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    } => true,
                };
                if stopping {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "the server is stopping; resume after entry {} once it is back",
                            next - 1
                        ))))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let purpose = parse_purpose("purpose", &req.purpose)?;
            let consent = Consent::parse("state", &req.state)?;
            vault.record_consent(principal, &subject, purpose, consent, &req.justification)?;
            Ok(pb::RecordConsentResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn grant_mandate(
        &self,
        request: Request<pb::GrantMandateRequest>,
    ) -> Result<Response<pb::Mandate>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let representative = PrincipalId::parse("representative_id", &req.representative_id)?;
            let purposes = req
                .purposes
                .iter()
                .enumerate()
                .map(|(i, p)| parse_purpose(&format!("purposes[{i}]"), p))
                .collect::<Result<Vec<_>, _>>()?;
            let categories = req
                .categories
                .iter()
                .enumerate()
                .map(|(i, c)| crate::domain::parse_category(&format!("categories[{i}]"), c))
                .collect::<Result<Vec<_>, _>>()?;
            let until = req
                .valid_until
                .as_ref()
                .ok_or_else(|| InputError::new("valid_until", "is required"))
                .and_then(|t| {
                    convert::request_time(
                        "valid_until",
                        t,
                        vault.now(),
                        convert::MANDATE_VALID_UNTIL,
                    )
                })?;
            let m = vault.grant_mandate(
                principal,
                &subject,
                &representative,
                &purposes,
                &categories,
                until,
                &req.justification,
            )?;
            Ok(mandate_message(m))
        })
        .await
        .map(Response::new)
    }

    async fn revoke_mandate(
        &self,
        request: Request<pb::RevokeMandateRequest>,
    ) -> Result<Response<pb::RevokeMandateResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("mandate_id", "mdt_", &req.mandate_id)?;
            vault.revoke_mandate(principal, id, &req.justification)?;
            Ok(pb::RevokeMandateResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn list_mandates(
        &self,
        request: Request<pb::ListMandatesRequest>,
    ) -> Result<Response<pb::ListMandatesResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = if req.subject_id.is_empty() {
                None
            } else {
                Some(SubjectId::parse("subject_id", &req.subject_id)?)
            };
            let mandates = vault
                .list_mandates(principal, subject.as_ref())?
                .into_iter()
                .map(mandate_message)
                .collect();
            Ok(pb::ListMandatesResponse { mandates })
        })
        .await
        .map(Response::new)
    }

    async fn list_disclosures(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = if req.subject_id.is_empty() {
                None
            } else {
                Some(SubjectId::parse("subject_id", &req.subject_id)?)
            };
            let since = req
                .since
                .as_ref()
                .map(|t| convert::request_time("since", t, now_unix(), convert::AUDIT_SINCE))
                .transpose()?;
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            let disclosures = vault
                .list_disclosures(principal, subject.as_ref(), since, limit)?
                .into_iter()
                .map(convert::disclosure)
                .collect();
            Ok(pb::ListDisclosuresResponse { disclosures })
        })
        .await
        .map(Response::new)
    }

    async fn explain_decision(
        &self,
        request: Request<pb::ExplainDecisionRequest>,
    ) -> Result<Response<pb::ExplainDecisionResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context, vault.channels())?;
            let role = if req.role.is_empty() {
                None
            } else {
                Some(crate::domain::parse_role("role", &req.role)?)
            };
            let action = match req.action.as_str() {
                "" => crate::policy::Action::Read,
                name => match crate::policy::Action::from_name(name) {
                    Some(a) => a,
                    None => {
                        return Err(InputError::new(
                            "action",
                            format!("expected one of {}", crate::policy::Action::names()),
                        )
                        .into());
                    }
                },
            };
            let record_purpose = if req.record_purpose.is_empty() {
                ctx.purpose
            } else {
                parse_purpose("record_purpose", &req.record_purpose)?
            };
            let resource = crate::policy::FieldResource {
                record: "rec_explain".into(),
                name: if req.field.is_empty() {
                    "value".into()
                } else {
                    crate::domain::FieldName::parse("field", &req.field)?
                        .as_str()
                        .into()
                },
                category: crate::domain::parse_category("category", &req.category)?,
                purpose: record_purpose,
                subject: principal
                    .scope_subject
                    .as_ref()
                    .map_or("REL-EXPLAIN".to_owned(), |s| s.as_str().to_owned()),
                flags: Default::default(),
            };
            let e = vault.explain(principal, role, action, &ctx, resource)?;
            Ok(pb::ExplainDecisionResponse {
                decision: if e.decision.is_allow() {
                    "allow"
                } else {
                    "deny"
                }
                .into(),
                reason: e.decision.reason,
                policies: e
                    .policies
                    .into_iter()
                    .map(|(id, text)| pb::ExplainedPolicy { id, text })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn reload_policies(
        &self,
        request: Request<pb::ReloadPoliciesRequest>,
    ) -> Result<Response<pb::ReloadPoliciesResponse>, Status> {
        run(&self.vault, request, |vault, principal, _req| {
            let r = vault.reload_policies(Some(principal))?;
            Ok(pb::ReloadPoliciesResponse {
                digest: r.digest,
                policies: u32::try_from(r.policies).unwrap_or(u32::MAX),
                changed: r.changed,
            })
        })
        .await
        .map(Response::new)
    }

    async fn place_hold(
        &self,
        request: Request<pb::PlaceHoldRequest>,
    ) -> Result<Response<pb::Hold>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let record = if req.record_id.is_empty() {
                None
            } else {
                Some(RecordId::parse("record_id", &req.record_id)?)
            };
            let hold = vault.place_hold(
                principal,
                &subject,
                record.as_ref(),
                &req.reason,
                &req.case_ref,
            )?;
            Ok(hold_message(hold))
        })
        .await
        .map(Response::new)
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("hold_id", "hold_", &req.hold_id)?;
            vault.release_hold(principal, id, &req.justification)?;
            Ok(pb::ReleaseHoldResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = if req.subject_id.is_empty() {
                None
            } else {
                Some(SubjectId::parse("subject_id", &req.subject_id)?)
            };
            let holds = vault.list_holds(principal, subject.as_ref(), req.include_released)?;
            Ok(pb::ListHoldsResponse {
                holds: holds.into_iter().map(hold_message).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn sweep_retention(
        &self,
        request: Request<pb::SweepRetentionRequest>,
    ) -> Result<Response<pb::SweepRetentionResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let records = vault
                .sweep_retention(Some(principal), req.dry_run)?
                .into_iter()
                .map(|s| pb::SweptRecord {
                    record_id: s.record_id,
                    subject_id: s.subject,
                    purpose: s.purpose,
                    expired_at: Some(convert::timestamp(s.expired_at)),
                })
                .collect();
            Ok(pb::SweepRetentionResponse { records })
        })
        .await
        .map(Response::new)
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let erasure = vault.erase_subject(principal, &subject, &req.justification)?;
            Ok(pb::EraseSubjectResponse {
                destroyed_record_ids: erasure.destroyed,
                shredded_purposes: erasure.shredded,
                kept: erasure
                    .kept
                    .into_iter()
                    .map(|(record_id, purpose, reason)| pb::KeptRecord {
                        record_id,
                        purpose,
                        reason,
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn open_subject_request(
        &self,
        request: Request<pb::OpenSubjectRequestRequest>,
    ) -> Result<Response<pb::SubjectRequest>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let kind: RequestKind = req
                .kind
                .parse()
                .map_err(|e: String| InputError::new("kind", e))?;
            let now = vault.now();
            // A time within the clock skew ahead is taken as now.
            let received_at = req
                .received_at
                .as_ref()
                .map(|t| {
                    convert::request_time("received_at", t, now, convert::REQUEST_RECEIVED_AT)
                        .map(|at| at.min(now))
                })
                .transpose()?;
            let row = vault.open_request(principal, &subject, kind, received_at, &req.note)?;
            Ok(request_message(RequestStatus {
                request: row,
                overdue: false,
            }))
        })
        .await
        .map(Response::new)
    }

    async fn complete_subject_request(
        &self,
        request: Request<pb::CompleteSubjectRequestRequest>,
    ) -> Result<Response<pb::CompleteSubjectRequestResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("request_id", "req_", &req.request_id)?;
            vault.complete_request(principal, id, &req.justification)?;
            Ok(pb::CompleteSubjectRequestResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn extend_subject_request(
        &self,
        request: Request<pb::ExtendSubjectRequestRequest>,
    ) -> Result<Response<pb::SubjectRequest>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("request_id", "req_", &req.request_id)?;
            let status = vault.extend_request(principal, id, req.months, req.days, &req.reason)?;
            Ok(request_message(status))
        })
        .await
        .map(Response::new)
    }

    async fn rectify_record(
        &self,
        request: Request<pb::RectifyRecordRequest>,
    ) -> Result<Response<pb::RectifyRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let request_id = convert::issued_id("request_id", "req_", &req.request_id)?;
            let id = crate::domain::RecordId::parse("record_id", &req.record_id)?;
            let fields = convert::new_fields(req.fields, vault.limits())?;
            let names = fields.iter().map(|f| f.name.as_str().to_owned()).collect();
            let updated_at =
                vault.rectify_record(principal, request_id, &id, fields, &req.justification)?;
            Ok(pb::RectifyRecordResponse {
                record_id: id.as_str().into(),
                updated_at: Some(convert::timestamp(updated_at)),
                fields: names,
            })
        })
        .await
        .map(Response::new)
    }

    async fn restrict_processing(
        &self,
        request: Request<pb::RestrictProcessingRequest>,
    ) -> Result<Response<pb::Restriction>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let row = vault.restrict_processing(principal, &subject, &req.reason)?;
            Ok(restriction_message(row))
        })
        .await
        .map(Response::new)
    }

    async fn lift_restriction(
        &self,
        request: Request<pb::LiftRestrictionRequest>,
    ) -> Result<Response<pb::Restriction>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let row = vault.lift_restriction(principal, &subject, &req.justification)?;
            Ok(restriction_message(row))
        })
        .await
        .map(Response::new)
    }

    async fn list_restrictions(
        &self,
        request: Request<pb::ListRestrictionsRequest>,
    ) -> Result<Response<pb::ListRestrictionsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = if req.subject_id.is_empty() {
                None
            } else {
                Some(SubjectId::parse("subject_id", &req.subject_id)?)
            };
            let restrictions = vault
                .list_restrictions(principal, subject.as_ref())?
                .into_iter()
                .map(restriction_message)
                .collect();
            Ok(pb::ListRestrictionsResponse { restrictions })
        })
        .await
        .map(Response::new)
    }

    async fn list_subject_requests(
        &self,
        request: Request<pb::ListSubjectRequestsRequest>,
    ) -> Result<Response<pb::ListSubjectRequestsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let requests = vault
                .list_requests(principal, req.overdue_only)?
                .into_iter()
                .map(request_message)
                .collect();
            Ok(pb::ListSubjectRequestsResponse { requests })
        })
        .await
        .map(Response::new)
    }
    type RewrapStream = ServerStream<pb::KeyJobProgress>;
    type RekeyStream = ServerStream<pb::KeyJobProgress>;
    type ReindexStream = ServerStream<pb::KeyJobProgress>;
    type BackupStream = ServerStream<pb::BackupChunk>;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let creds = super::credentials(&request)?;
        let judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        let ((mut file, head, principal), permit) = run_long(
            &self.vault,
            &self.streams,
            Long::Export,
            request,
            |vault, principal, req| {
                vault
                    .backup(principal, &req.justification)
                    .map(|(file, head)| (file, head, principal.clone()))
            },
        )
        .await?;
        let mut head = Some(pb::AuditHead {
            seq: head.seq,
            hash: head.hash,
            mac: head.mac,
            store_id: head.store_id,
        });
        let mut judge = judge.for_call(principal, "backup", None, None);
        let (tx, stream) = self.streams.channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let _permit = permit;
            let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
            loop {
                let mut chunk = vec![0u8; 1024 * 1024];
                let message = match file.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        chunk.truncate(n);
                        Ok(pb::BackupChunk {
                            data: chunk,
                            size: std::mem::take(&mut size),
                            head: head.take(),
                        })
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the backup snapshot failed");
                        Err(Status::internal("reading the backup snapshot failed"))
                    }
                };
                // A revoked or expired token, or a policy that no longer allows backups, ends
                // the backup before its next chunk goes out. False after an error too: it is
                // the last message.
                if !judge.send_blocking(&tx, message, |vault, principal| {
                    vault.keep_admin(principal, AdminAction::ManageKeys, "backup")
                }) {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let only = if req.purpose.is_empty() {
                None
            } else {
                Some(parse_purpose("purpose", &req.purpose)?)
            };
            let purposes = vault
                .list_keys(principal, only)?
                .into_iter()
                .map(purpose_keys)
                .collect();
            Ok(pb::ListKeysResponse { purposes })
        })
        .await
        .map(Response::new)
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (purpose, response) = run(&self.vault, request, |vault, principal, req| {
            let purpose = parse_purpose("purpose", &req.purpose)?;
            let algorithm = if req.algorithm.is_empty() {
                None
            } else {
                Some(Algorithm::parse(&req.algorithm).ok_or_else(|| {
                    InputError::new(
                        "algorithm",
                        "expected `aes-256-gcm` or `xchacha20-poly1305`",
                    )
                })?)
            };
            let (version, algorithm) =
                vault.rotate_key(principal, purpose, algorithm, &req.justification)?;
            Ok((
                purpose,
                pb::RotateKeyResponse {
                    version,
                    algorithm: algorithm.as_str().into(),
                },
            ))
        })
        .await?;
        // Move the existing subject keys over at once, in the background.
        let vault = Arc::clone(&self.vault.vault);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = vault.rewrap(purpose, |_| true) {
                tracing::error!(purpose = purpose.as_str(), error = %e, "rewrap after rotation failed; run `kluis admin keys rewrap`");
            }
        });
        Ok(Response::new(response))
    }

    async fn rewrap(
        &self,
        request: Request<pb::KeyJobRequest>,
    ) -> Result<Response<Self::RewrapStream>, Status> {
        let purpose = authorize_job(&self.vault, request, "key-rewrap").await?;
        Ok(Response::new(key_job(
            &self.vault.vault,
            &self.streams,
            purpose,
            true,
            move |vault, progress| vault.rewrap(purpose, progress),
        )))
    }

    async fn rotate_index_key(
        &self,
        request: Request<pb::RotateIndexKeyRequest>,
    ) -> Result<Response<pb::RotateIndexKeyResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let version = vault.rotate_index_key(principal, &req.justification)?;
            Ok(pb::RotateIndexKeyResponse { version })
        })
        .await
        .map(Response::new)
    }

    async fn reindex(
        &self,
        request: Request<pb::KeyJobRequest>,
    ) -> Result<Response<Self::ReindexStream>, Status> {
        let purpose = run(&self.vault, request, |vault, principal, req| {
            let purpose = if req.purpose.is_empty() {
                None
            } else {
                Some(parse_purpose("purpose", &req.purpose)?)
            };
            vault.authorize_reindex(principal, purpose, &req.justification)?;
            Ok(purpose)
        })
        .await?;
        let (tx, stream) = self.streams.channel(16);
        let vault = Arc::clone(&self.vault.vault);
        let name = purpose.map(|p| p.as_str().to_owned()).unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let message = |p: Progress, finished| pb::KeyJobProgress {
                purpose: name.clone(),
                done: p.done,
                total: p.total,
                finished,
                keys_on_active: 0,
                keys_total: 0,
            };
            let result = vault.reindex(purpose, |p| {
                tx.offer(Ok(message(p, false)));
                true
            });
            tx.send_blocking(
                result
                    .map(|b| {
                        message(
                            Progress {
                                done: b.tagged,
                                total: b.tagged,
                            },
                            true,
                        )
                    })
                    .map_err(super::status::to_status),
            );
        });
        Ok(Response::new(stream))
    }

    async fn rekey(
        &self,
        request: Request<pb::KeyJobRequest>,
    ) -> Result<Response<Self::RekeyStream>, Status> {
        let purpose = authorize_job(&self.vault, request, "key-rekey").await?;
        Ok(Response::new(key_job(
            &self.vault.vault,
            &self.streams,
            purpose,
            false,
            move |vault, progress| vault.rekey(purpose, progress),
        )))
    }

    async fn schedule_key_destruction(
        &self,
        request: Request<pb::ScheduleKeyDestructionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDestructionResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let purpose = parse_purpose("purpose", &req.purpose)?;
            let due = vault.schedule_key_destruction(
                principal,
                purpose,
                convert::key_version("version", req.version)?,
                convert::destroy_wait(req.wait_seconds)?,
                &req.justification,
            )?;
            Ok(pb::ScheduleKeyDestructionResponse {
                destroy_after: Some(convert::timestamp(due)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn cancel_key_destruction(
        &self,
        request: Request<pb::KeyVersionRequest>,
    ) -> Result<Response<pb::KeyAdminResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let purpose = parse_purpose("purpose", &req.purpose)?;
            let version = convert::key_version("version", req.version)?;
            vault.cancel_key_destruction(principal, purpose, version, &req.justification)?;
            Ok(pb::KeyAdminResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn destroy_due_keys(
        &self,
        request: Request<pb::DestroyDueKeysRequest>,
    ) -> Result<Response<pb::DestroyDueKeysResponse>, Status> {
        run(&self.vault, request, |vault, principal, _req| {
            let destroyed = vault
                .destroy_due_keys(Some(principal))?
                .into_iter()
                .map(|(p, v)| format!("{p} v{v}"))
                .collect();
            Ok(pb::DestroyDueKeysResponse { destroyed })
        })
        .await
        .map(Response::new)
    }

    async fn set_min_decrypt_version(
        &self,
        request: Request<pb::KeyVersionRequest>,
    ) -> Result<Response<pb::KeyAdminResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let purpose = parse_purpose("purpose", &req.purpose)?;
            let version = convert::key_version("version", req.version)?;
            vault.set_min_decrypt_version(principal, purpose, version, &req.justification)?;
            Ok(pb::KeyAdminResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn rotate_root(
        &self,
        request: Request<pb::RotateRootRequest>,
    ) -> Result<Response<pb::RotateRootResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let secret = match req.secret {
                Some(pb::rotate_root_request::Secret::Passphrase(p)) => {
                    let p = zeroize::Zeroizing::new(p);
                    if p.chars().count() < crate::config::MIN_PASSPHRASE_CHARS {
                        return Err(InputError::new(
                            "passphrase",
                            format!(
                                "at least {} characters",
                                crate::config::MIN_PASSPHRASE_CHARS
                            ),
                        )
                        .into());
                    }
                    RootSecret::Passphrase(zeroize::Zeroizing::new(p.to_string()))
                }
                Some(pb::rotate_root_request::Secret::Key(k)) => {
                    let k = zeroize::Zeroizing::new(k);
                    RootSecret::KeyFile(
                        RootKey::from_slice(&k)
                            .ok_or_else(|| InputError::new("key", "expected 32 bytes"))?,
                    )
                }
                Some(pb::rotate_root_request::Secret::Shares(set)) => {
                    let shares = set
                        .shares
                        .iter()
                        .enumerate()
                        .map(|(i, text)| {
                            crate::seal::shares::Share::parse(&format!("shares[{i}]"), text)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| InputError::new("shares", e.to_string()))?;
                    RootSecret::Shares(shares)
                }
                Some(pb::rotate_root_request::Secret::Hsm(_)) => {
                    RootSecret::Hsm(vault.hsm().ok_or_else(|| {
                        crate::vault::VaultError::FailedPrecondition(
                            "this server has no HSM configured (`[seal] type = \"pkcs11\"`); \
                             configure it and restart before changing the seal to it"
                                .into(),
                        )
                    })?)
                }
                None => {
                    return Err(InputError::new(
                        "secret",
                        "give the new `passphrase`, `key`, `shares` or `hsm`",
                    )
                    .into());
                }
            };
            if req.request_id.is_empty() {
                let asked = vault.request_root_change(principal, &secret, &req.justification)?;
                return Ok(pb::RotateRootResponse {
                    request_id: asked.id,
                    rotated: false,
                    expires_at: Some(convert::timestamp(asked.expires_at)),
                });
            }
            let id = convert::issued_id("request_id", "root_", &req.request_id)?;
            vault.rotate_root(principal, id, &secret, &req.justification)?;
            Ok(pb::RotateRootResponse {
                request_id: req.request_id,
                rotated: true,
                expires_at: None,
            })
        })
        .await
        .map(Response::new)
    }

    async fn approve_root_change(
        &self,
        request: Request<pb::ApproveRootChangeRequest>,
    ) -> Result<Response<pb::ApproveRootChangeResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("request_id", "root_", &req.request_id)?;
            vault.approve_root_change(principal, id, &req.justification)?;
            Ok(pb::ApproveRootChangeResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn unseal(
        &self,
        _request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        Err(Status::failed_precondition(
            "this node is not sealed; nothing to unseal",
        ))
    }

    async fn seal_status(
        &self,
        _request: Request<pb::SealStatusRequest>,
    ) -> Result<Response<pb::SealStatus>, Status> {
        super::operator::unsealed_status(Arc::clone(&self.vault.vault))
            .await
            .map(Response::new)
    }

    async fn key_report(
        &self,
        request: Request<pb::KeyReportRequest>,
    ) -> Result<Response<pb::KeyReportResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let report = vault.key_report(principal, req.search_candidates)?;
            let sound = report.purposes.iter().all(PurposeKeysInfo::is_sound);
            let (seal, changed) = vault.seal_info()?;
            Ok(pb::KeyReportResponse {
                purposes: report.purposes.into_iter().map(purpose_keys).collect(),
                sound,
                seal: seal.describe(),
                seal_changed_at: changed.map(convert::timestamp),
                search: report
                    .search
                    .into_iter()
                    .map(|s| pb::SearchIndex {
                        purpose: s.purpose.as_str().into(),
                        field: s.field,
                        tag_bits: s.tag_bits.into(),
                        values: s.values,
                        values_at_other_widths: s.values_at_other_widths,
                        candidates_per_search: s.candidates_per_search,
                        planned_tag_bits: s.planned_tag_bits.into(),
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

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
                pending_approval: issued.pending_approval,
            })
        })
        .await
        .map(Response::new)
    }

    async fn verify_store(
        &self,
        request: Request<pb::VerifyStoreRequest>,
    ) -> Result<Response<pb::VerifyStoreResponse>, Status> {
        run(&self.vault, request, |vault, principal, _req| {
            let bad_rows = vault
                .verify_store(principal)?
                .into_iter()
                .map(|b| pb::BadRow {
                    kind: b.kind.into(),
                    id: b.id,
                    problem: b.problem,
                })
                .collect();
            Ok(pb::VerifyStoreResponse { bad_rows })
        })
        .await
        .map(Response::new)
    }

    async fn approve_token(
        &self,
        request: Request<pb::ApproveTokenRequest>,
    ) -> Result<Response<pb::ApproveTokenResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("token_id", "tok_", &req.token_id)?;
            vault.approve_token(principal, id, &req.justification)?;
            Ok(pb::ApproveTokenResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let id = convert::issued_id("token_id", "tok_", &req.token_id)?;
            vault.revoke_token(principal, id, &req.justification)?;
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
                    } else if t.is_pending() {
                        "pending"
                    } else {
                        "active"
                    }
                    .into(),
                    requested_by: t.requested_by.clone().unwrap_or_default(),
                    approved_by: t.approved_by.clone().unwrap_or_default(),
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
                    store_id: head.store_id,
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
                store_id: h.store_id,
            });
            let hex_of =
                |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
            if let Some(h) = &expect {
                if !hex_of(&h.hash, 64) {
                    return Err(InputError::new(
                        "expect_head.hash",
                        "expected 64 hexadecimal digits",
                    )
                    .into());
                }
                // An empty MAC or store id is refused by the verification itself (and recorded);
                // anything else must have the right form.
                if !h.mac.is_empty() && !hex_of(&h.mac, 64) {
                    return Err(InputError::new(
                        "expect_head.mac",
                        "expected 64 hexadecimal digits",
                    )
                    .into());
                }
                if !h.store_id.is_empty() && !hex_of(&h.store_id, 32) {
                    return Err(InputError::new(
                        "expect_head.store_id",
                        "expected 32 hexadecimal digits",
                    )
                    .into());
                }
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
        let creds = super::credentials(&request)?;
        let judge = Judge::new(&self.vault.vault, &self.vault.identity, creds);
        let ((filter, upto, principal), permit) = run_long(
            &self.vault,
            &self.streams,
            Long::Export,
            request,
            |vault, principal, req| {
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
                    since: req
                        .since
                        .as_ref()
                        .map(|t| {
                            convert::request_time("since", t, now_unix(), convert::AUDIT_SINCE)
                        })
                        .transpose()?,
                    break_glass: req.break_glass_only,
                    actions: Vec::new(),
                };
                let upto = vault.begin_audit_export(principal, &filter, &req.justification)?;
                Ok((filter, upto, principal.clone()))
            },
        )
        .await?;
        let subject = filter.subject.clone();
        let mut judge = judge.for_call(principal, "audit-export", subject, None);
        let (tx, stream) = self.streams.channel(64);
        let vault = Arc::clone(&self.vault.vault);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = vault.scan_audit_export(&filter, upto, |seq, raw| {
                let json = String::from_utf8_lossy(raw).into_owned();
                // A revoked or expired token, or a policy that no longer lets the caller read
                // the trail, ends the export before its next entry goes out. False then, and
                // when the client went away or stopped reading: stop reading.
                judge.send_blocking(&tx, Ok(pb::AuditEntry { seq, json }), |vault, principal| {
                    vault.keep_admin(principal, AdminAction::ReadAudit, "audit-export")
                })
            });
            if let Err(e) = result {
                tx.send_blocking(Err(super::status::to_status(e)));
            }
        });
        Ok(Response::new(stream))
    }

    async fn subject_access_report(
        &self,
        request: Request<pb::SubjectAccessReportRequest>,
    ) -> Result<Response<pb::SubjectAccessReportResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let page = crate::vault::trail::ReportPage {
                after: req.after_seq,
                // 0: the whole report; a size past the limit is refused by the vault.
                size: (req.page_size != 0)
                    .then(|| usize::try_from(req.page_size).unwrap_or(usize::MAX)),
            };
            let crate::vault::trail::SubjectAccessReport {
                events,
                disclosures,
                next_after,
            } = vault.subject_access_report(principal, &subject, &req.justification, page)?;
            let events = events
                .into_iter()
                .map(|(seq, e)| {
                    let (masked, rest): (Vec<_>, Vec<_>) = e
                        .fields
                        .into_iter()
                        .partition(|f| f.decision == crate::vault::READ_MASKED);
                    let (allowed, denied): (Vec<_>, Vec<_>) =
                        rest.into_iter().partition(|f| f.decision == "allow");
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
                        fields_masked: masked.into_iter().map(|f| f.name).collect(),
                    }
                })
                .collect();
            // The report was decided and audited above: the restrictions go with its first page.
            let restrictions = if req.after_seq == 0 {
                vault
                    .restrictions_of(&subject)?
                    .into_iter()
                    .map(restriction_message)
                    .collect()
            } else {
                Vec::new()
            };
            Ok(pb::SubjectAccessReportResponse {
                disclosures: disclosures.into_iter().map(convert::disclosure).collect(),
                subject_id: subject.as_str().into(),
                events,
                restrictions,
                next_after_seq: next_after.unwrap_or(0),
            })
        })
        .await
        .map(Response::new)
    }
}

fn purpose_keys(p: PurposeKeysInfo) -> pb::PurposeKeys {
    pb::PurposeKeys {
        purpose: p.purpose.as_str().into(),
        active_version: p.active_version,
        min_decrypt_version: p.min_decrypt_version,
        versions: p
            .versions
            .into_iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                state: v.state,
                algorithm: v.algorithm,
                subject_keys: v.subject_keys,
                created_at: Some(convert::timestamp(v.created_at)),
                retired_at: v.retired_at.map(convert::timestamp),
                destroy_after: v.destroy_after.map(convert::timestamp),
                destroyed_at: v.destroyed_at.map(convert::timestamp),
            })
            .collect(),
        orphan_fields: p.orphan_fields,
        keys_on_destroyed_versions: p.keys_on_destroyed_versions,
        rekey_pending_since: p.rekey_pending_since.map(convert::timestamp),
    }
}

/// Authenticates and authorizes the start of a key job; returns its purpose.
async fn authorize_job(
    vault: &Backend,
    request: Request<pb::KeyJobRequest>,
    action: &'static str,
) -> Result<Purpose, Status> {
    run(vault, request, move |vault, principal, req| {
        let purpose = parse_purpose("purpose", &req.purpose)?;
        vault.authorize_key_job(principal, action, purpose, &req.justification)?;
        Ok(purpose)
    })
    .await
}

/// Runs a key job on a blocking thread, streaming its progress. The job goes on when the client
/// goes away (it is resumable anyway); it just stops reporting. With `standing`, each message
/// also says how many of the purpose's subject keys are under its active version (a rewrap).
fn key_job(
    vault: &Arc<Vault>,
    streams: &Streams,
    purpose: Purpose,
    standing: bool,
    job: impl FnOnce(
        &Vault,
        &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Progress, crate::vault::VaultError>
    + Send
    + 'static,
) -> ServerStream<pb::KeyJobProgress> {
    let (tx, stream) = streams.channel(16);
    let vault = Arc::clone(vault);
    tokio::task::spawn_blocking(move || {
        let message = |vault: &Vault, p: Progress, finished| {
            let (keys_on_active, keys_total) = if standing {
                vault.rewrap_standing(purpose).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot count the subject keys of a purpose");
                    (0, 0)
                })
            } else {
                (0, 0)
            };
            pb::KeyJobProgress {
                purpose: purpose.as_str().into(),
                done: p.done,
                total: p.total,
                finished,
                keys_on_active,
                keys_total,
            }
        };
        let mut report = |p: Progress| {
            tx.offer(Ok(message(&vault, p, false)));
            true
        };
        let result = job(&vault, &mut report);
        tx.send_blocking(
            result
                .map(|p| message(&vault, p, true))
                .map_err(super::status::to_status),
        );
    });
    stream
}

fn hold_message(h: crate::store::HoldRow) -> pb::Hold {
    pb::Hold {
        hold_id: h.id,
        subject_id: h.subject,
        record_id: h.record_id.unwrap_or_default(),
        reason: h.reason,
        case_ref: h.case_ref,
        placed_by: h.placed_by,
        placed_at: Some(convert::timestamp(h.placed_at)),
        released_at: h.released_at.map(convert::timestamp),
    }
}

fn request_message(s: RequestStatus) -> pb::SubjectRequest {
    let r = s.request;
    pb::SubjectRequest {
        due_at: Some(convert::timestamp(r.due_in_force())),
        original_due_at: Some(convert::timestamp(r.due_at)),
        extended: r.extended_due_at.is_some(),
        extension_reason: r.extension_reason.unwrap_or_default(),
        request_id: r.id,
        subject_id: r.subject,
        kind: r.kind.as_str().into(),
        received_at: Some(convert::timestamp(r.received_at)),
        completed_at: r.completed_at.map(convert::timestamp),
        overdue: s.overdue,
        note: r.note,
    }
}

fn restriction_message(r: crate::store::RestrictionRow) -> pb::Restriction {
    pb::Restriction {
        restriction_id: r.id,
        subject_id: r.subject,
        reason: r.reason,
        placed_by: r.placed_by,
        placed_at: Some(convert::timestamp(r.placed_at)),
        lifted_at: r.lifted_at.map(convert::timestamp),
        lifted_by: r.lifted_by.unwrap_or_default(),
    }
}

fn mandate_message(m: crate::store::MandateRow) -> pb::Mandate {
    pb::Mandate {
        mandate_id: m.id,
        subject_id: m.subject,
        representative_id: m.representative,
        purposes: m.purposes,
        categories: m.categories,
        valid_from: Some(convert::timestamp(m.valid_from)),
        valid_until: Some(convert::timestamp(m.valid_until)),
        revoked_at: m.revoked_at.map(convert::timestamp),
    }
}
