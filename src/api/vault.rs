//! The `kluis.v1.Vault` service: thin handlers that parse, call the core and convert back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, run};
use crate::{
    domain::{FieldName, InputError, RecordId, SubjectId},
    pb::{self, vault_server::Vault as VaultRpc},
    vault::{FieldInfo, RecordMeta, Vault},
};

/// The gRPC face of a `Vault`.
#[derive(Clone, Debug)]
pub struct VaultApi {
    vault: Arc<Vault>,
}

impl VaultApi {
    /// Serves `vault`.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl VaultRpc for VaultApi {
    type ExportSubjectStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ExportLine, Status>>;

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<Self::ExportSubjectStream>, Status> {
        let token = super::bearer_token(request.metadata())?;
        let req = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let principal = vault.authenticate(&token)?;
                let ctx = convert::context(req.context)?;
                let subject = SubjectId::parse("subject_id", &req.subject_id)?;
                // A closed channel means the client went away: stop.
                vault.export_subject(&principal, &ctx, &subject, |line| {
                    tx.blocking_send(Ok(pb::ExportLine {
                        json: line.to_string(),
                    }))
                    .is_ok()
                })
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(super::status::to_status(e)));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let fields = convert::new_fields(req.fields, vault.limits())?;
            let labels = convert::labels(req.labels, vault.limits())?;
            let (id, expires_at) = vault.put_record(principal, &ctx, &subject, fields, labels)?;
            Ok(pb::PutRecordResponse {
                record_id: id.as_str().into(),
                expires_at: expires_at.map(convert::timestamp),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            if req.fields.len() > vault.limits().max_fields {
                return Err(InputError::new(
                    "fields",
                    format!("at most {} field names", vault.limits().max_fields),
                )
                .into());
            }
            let wanted = req
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| FieldName::parse(&format!("fields[{i}]"), f))
                .collect::<Result<Vec<_>, _>>()?;
            let view = vault.get_record(principal, &ctx, &id, &wanted)?;
            let meta = view.meta;
            Ok(pb::GetRecordResponse {
                record_id: meta.id,
                subject_id: meta.subject,
                purpose: meta.purpose.as_str().into(),
                fields: view
                    .fields
                    .into_iter()
                    .map(|f| pb::FieldValue {
                        name: f.name,
                        category: f.category.as_str().into(),
                        value: Some(convert::value(f.value)),
                    })
                    .collect(),
                withheld: view
                    .withheld
                    .into_iter()
                    .map(|w| pb::WithheldField {
                        name: w.name,
                        reason: w.reason,
                    })
                    .collect(),
                labels: meta.labels.into_iter().collect(),
                created_at: Some(convert::timestamp(meta.created_at)),
                updated_at: Some(convert::timestamp(meta.updated_at)),
                expires_at: meta.expires_at.map(convert::timestamp),
            })
        })
        .await
        .map(Response::new)
    }

    async fn update_record(
        &self,
        request: Request<pb::UpdateRecordRequest>,
    ) -> Result<Response<pb::UpdateRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            let fields = convert::new_fields(req.fields, vault.limits())?;
            let updated_at = vault.update_record(principal, &ctx, &id, fields)?;
            Ok(pb::UpdateRecordResponse {
                record_id: id.as_str().into(),
                updated_at: Some(convert::timestamp(updated_at)),
            })
        })
        .await
        .map(Response::new)
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            vault.delete_record(principal, &ctx, &id)?;
            Ok(pb::DeleteRecordResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn close_record(
        &self,
        request: Request<pb::CloseRecordRequest>,
    ) -> Result<Response<pb::CloseRecordResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let id = RecordId::parse("record_id", &req.record_id)?;
            let expires_at = vault.close_record(principal, &ctx, &id)?;
            Ok(pb::CloseRecordResponse {
                expires_at: expires_at.map(convert::timestamp),
            })
        })
        .await
        .map(Response::new)
    }

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        run(&self.vault, request, |vault, principal, req| {
            let ctx = convert::context(req.context)?;
            let subject = SubjectId::parse("subject_id", &req.subject_id)?;
            let records = vault.list_records(principal, &ctx, &subject)?;
            Ok(pb::ListRecordsResponse {
                records: records.into_iter().map(record_info).collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        run(&self.vault, request, |_vault, principal, _req| {
            Ok(pb::WhoAmIResponse {
                principal_id: principal.id.as_str().into(),
                roles: principal
                    .roles
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
                scope_subject_id: principal
                    .scope_subject
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                expires_at: Some(convert::timestamp(principal.expires_at)),
                token_id: principal.token_id.clone(),
            })
        })
        .await
        .map(Response::new)
    }
}

fn record_info((meta, fields): (RecordMeta, Vec<FieldInfo>)) -> pb::RecordInfo {
    pb::RecordInfo {
        record_id: meta.id,
        subject_id: meta.subject,
        purpose: meta.purpose.as_str().into(),
        fields: fields
            .into_iter()
            .map(|f| pb::FieldInfo {
                name: f.name,
                category: f.category,
                size: f.size,
            })
            .collect(),
        labels: meta.labels.into_iter().collect(),
        created_at: Some(convert::timestamp(meta.created_at)),
        updated_at: Some(convert::timestamp(meta.updated_at)),
        expires_at: meta.expires_at.map(convert::timestamp),
    }
}
