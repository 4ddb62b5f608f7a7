//! The request path end to end over gRPC: store, read, purpose limitation, per-field withholding,
//! roles that never decrypt, authentication, listing, rectification and deletion.

use kluis::{domain::Role, pb};
use tonic::Code;

use crate::common::*;

// Messages that carry plaintext or tokens cannot be printed by accident.
static_assertions::assert_not_impl_any!(pb::GetRecordResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(pb::PutRecordRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(pb::UpdateRecordRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(pb::FieldValue: std::fmt::Debug);
static_assertions::assert_not_impl_any!(pb::IssueTokenResponse: std::fmt::Debug);

const PHONE: &str = "06-11223344";
const EVIDENCE: &[u8] = b"\x89PNG fake photo of the stairwell";

async fn nuisance_record(server: &TestServer) -> String {
    put(
        server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0100",
        vec![
            text("phone", "contact", PHONE),
            binary("photo", "nuisance-evidence", EVIDENCE),
        ],
    )
    .await
}

/// A contract record with identity and contact (customer service) and an IBAN (finance officer).
async fn contract_record(server: &TestServer) -> String {
    let id = put(
        server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-0200",
        vec![
            text("name", "identity", "J. de Vries"),
            text("email", "contact", "j.devries@example.nl"),
        ],
    )
    .await;
    let mut client = server.client().await;
    client
        .update_record(req(
            server.token(Role::FinanceOfficer),
            pb::UpdateRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec![text("iban", "financial", "NL91ABNA0417164300")],
            },
        ))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn nuisance_officer_stores_and_reads_back_evidence() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let resp = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(resp.purpose, "nuisance");
    assert_eq!(resp.subject_id, "REL-0100");
    assert_eq!(text_of(field(&resp, "phone").unwrap()), PHONE);
    assert!(matches!(
        &field(&resp, "photo").unwrap().value,
        Some(pb::field_value::Value::Binary(b)) if b == EVIDENCE
    ));
    assert!(resp.withheld.is_empty());
    // Nuisance retention counts from the closing of the case: no expiry yet.
    assert!(resp.expires_at.is_none());
    server.stop().await;
}

#[tokio::test]
async fn declaring_another_purpose_is_denied() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let status = get(
        &server,
        server.token(Role::NuisanceOfficer),
        ctx("maintenance", "N-2026-0042", "x"),
        &id,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The caller may not know of the record's fields under that purpose: no rule is named
    // (it would tell the record's purpose); the trail holds the deciding rule.
    assert!(
        status.message().contains("you may not read this record")
            && !status.message().contains("nuisance"),
        "{}",
        status.message()
    );
    let entry = audit_entries(&server)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "read")
        .unwrap();
    assert!(entry.to_string().contains("purpose-limitation"), "{entry}");
    server.stop().await;
}

#[tokio::test]
async fn customer_service_cannot_read_nuisance_record() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    for purpose in ["nuisance", "customer-service"] {
        let status = get(
            &server,
            server.token(Role::CustomerService),
            ctx(purpose, "N-2026-0042", "asked by phone"),
            &id,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied, "{purpose}");
    }
    server.stop().await;
}

#[tokio::test]
async fn customer_service_gets_identity_and_contact_and_the_iban_only_masked() {
    let server = TestServer::start().await;
    let id = contract_record(&server).await;
    let resp = get(
        &server,
        server.token(Role::CustomerService),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();
    let mut names: Vec<&str> = resp.fields.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["email", "iban", "name"]);
    assert!(!field(&resp, "name").unwrap().masked);
    assert!(!field(&resp, "email").unwrap().masked);
    // Bank details: a masked view (`customer-service-masked-bank-details`), never the value.
    let iban = field(&resp, "iban").unwrap();
    assert!(iban.masked);
    assert_eq!(text_of(iban), "NL** **** **** **43 00");
    assert!(resp.withheld.is_empty(), "{:?}", resp.withheld.len());
    // Asked for by name: masked too; a field the record does not hold is answered as absent.
    let named = server
        .client()
        .await
        .get_record(req(
            server.token(Role::CustomerService),
            pb::GetRecordRequest {
                context: ctx("contract", "", ""),
                record_id: id.clone(),
                fields: vec!["iban".into(), "nickname".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.fields.len(), 1);
    assert!(named.fields[0].masked);
    assert_eq!(text_of(&named.fields[0]), "NL** **** **** **43 00");
    assert_eq!(named.withheld.len(), 1);
    assert_eq!(named.withheld[0].name, "nickname");
    // The finance officer does see it.
    let resp = get(
        &server,
        server.token(Role::FinanceOfficer),
        ctx("contract", "", ""),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&resp, "iban").unwrap()), "NL91ABNA0417164300");
    server.stop().await;
}

#[tokio::test]
async fn security_officer_and_analyst_get_nothing() {
    let server = TestServer::start().await;
    let contract = contract_record(&server).await;
    let nuisance = nuisance_record(&server).await;
    for role in [Role::SecurityOfficer, Role::Analyst] {
        for (id, context) in [
            (&contract, ctx("contract", "C-1", "audit")),
            (&nuisance, nuisance_ctx()),
        ] {
            let status = get(&server, server.token(role), context, id)
                .await
                .err()
                .unwrap();
            assert_eq!(status.code(), Code::PermissionDenied, "{role}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn missing_or_unknown_token_is_unauthenticated() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let mut client = server.client().await;
    let no_token = client
        .get_record(tonic::Request::new(pb::GetRecordRequest {
            context: nuisance_ctx(),
            record_id: id.clone(),
            fields: vec![],
        }))
        .await
        .err()
        .unwrap();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let unknown = format!("kluis_{}", "ab".repeat(32));
    let status = get(&server, &unknown, nuisance_ctx(), &id)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut r = tonic::Request::new(pb::WhoAmIRequest {});
    r.metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        client.who_am_i(r).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test]
async fn special_category_read_without_case_ref_is_denied() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let resp = get(
        &server,
        server.token(Role::NuisanceOfficer),
        ctx("nuisance", "", "checking"),
        &id,
    )
    .await
    .unwrap();
    // Contact data is returned; the evidence is withheld for want of a case reference.
    assert_eq!(resp.fields.len(), 1);
    assert_eq!(resp.fields[0].name, "phone");
    assert_eq!(resp.withheld[0].name, "photo");
    assert!(
        resp.withheld[0]
            .reason
            .contains("special-category-needs-case-and-justification")
    );
    // Asking for the evidence alone without a case reference is refused outright.
    let mut client = server.client().await;
    let status = client
        .get_record(req(
            server.token(Role::NuisanceOfficer),
            pb::GetRecordRequest {
                context: ctx("nuisance", "", "checking"),
                record_id: id,
                fields: vec!["photo".into()],
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn confidential_fields_are_withheld_on_social_media() {
    let server = TestServer::start().await;
    let id = contract_record(&server).await;
    let mut context = ctx("contract", "", "");
    context.as_mut().unwrap().channel = "social-media".into();
    let resp = get(&server, server.token(Role::FinanceOfficer), context, &id)
        .await
        .err()
        .unwrap();
    assert_eq!(resp.code(), Code::PermissionDenied);
    // Over social media not even the confidential field's rule is named; the trail has it.
    assert!(!resp.message().contains("financial"), "{}", resp.message());
    let entry = audit_entries(&server)
        .into_iter()
        .rev()
        .find(|e| e["action"] == "read")
        .unwrap();
    assert!(
        entry
            .to_string()
            .contains("no-confidential-data-via-social-media"),
        "{entry}"
    );
    server.stop().await;
}

#[tokio::test]
async fn contractor_sees_name_and_contact_of_their_subject_only() {
    let server = TestServer::start().await;
    let job = || ctx("maintenance", "M-7", "leaking tap");
    let fields = || {
        vec![
            text("name", "identity", "A. Jansen"),
            text("phone", "contact", "06-99887766"),
        ]
    };
    let own = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        SCOPED_SUBJECT,
        fields(),
    )
    .await;
    let other = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        "REL-0999",
        fields(),
    )
    .await;
    let contract = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        SCOPED_SUBJECT,
        vec![
            text("name", "identity", "A. Jansen"),
            text("date_of_birth", "identity", "1961-04-02"),
        ],
    )
    .await;
    let resp = get(&server, server.token(Role::Contractor), job(), &own)
        .await
        .unwrap();
    let mut names: Vec<&str> = resp.fields.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["name", "phone"]);
    // Another subject's job, or the subject's contract record, stays closed.
    for id in [&other, &contract] {
        let status = get(&server, server.token(Role::Contractor), job(), id)
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    let status = get(
        &server,
        server.token(Role::Contractor),
        ctx("contract", "", ""),
        &contract,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn a_denied_write_stores_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let status = client
        .put_record(req(
            server.token(Role::CustomerService),
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-0300".into(),
                fields: vec![
                    text("name", "identity", "P. Bakker"),
                    text("iban", "financial", "NL02RABO0123456789"),
                ],
                labels: Default::default(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("iban"), "{}", status.message());
    let listed = client
        .list_records(req(
            server.token(Role::PrivacyOfficer),
            pb::ListRecordsRequest {
                context: ctx("contract", "", "subject access request"),
                subject_id: "REL-0300".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.records.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn list_records_shows_metadata_the_caller_may_know_and_no_values() {
    let server = TestServer::start().await;
    let contract = contract_record(&server).await;
    let _nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        "REL-0200",
        vec![binary("photo", "nuisance-evidence", EVIDENCE)],
    )
    .await;
    let mut client = server.client().await;
    let list = |role: Role, purpose: &str| {
        req(
            server.token(role),
            pb::ListRecordsRequest {
                context: ctx(purpose, "", ""),
                subject_id: "REL-0200".into(),
                ..Default::default()
            },
        )
    };
    let cs = client
        .list_records(list(Role::CustomerService, "contract"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cs.records.len(), 1);
    assert_eq!(cs.records[0].record_id, contract);
    let mut names: Vec<&str> = cs.records[0]
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["email", "name"]);
    let po = client
        .list_records(list(Role::PrivacyOfficer, "contract"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(po.records.len(), 2);
    let bytes = prost::Message::encode_to_vec(&po);
    for secret in ["J. de Vries", "NL91ABNA0417164300", "stairwell"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} leaked into a listing"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn list_records_gives_pages_of_what_the_caller_may_know_of_and_tells_nothing_else() {
    let server = TestServer::start().await;
    // Three records a nuisance officer may list among 60 they may not know of (contract data).
    let mut visible = Vec::new();
    for n in 0..63 {
        if n % 21 == 0 {
            visible.push(
                put(
                    &server,
                    Role::NuisanceOfficer,
                    nuisance_ctx(),
                    "REL-PAGES",
                    vec![text("phone", "contact", PHONE)],
                )
                .await,
            );
        } else {
            put(
                &server,
                Role::CustomerService,
                ctx("contract", "", ""),
                "REL-PAGES",
                vec![text("name", "identity", "J. de Vries")],
            )
            .await;
        }
    }
    let mut client = server.client().await;
    let page = |size: u32, page_token: &str| {
        req(
            server.token(Role::NuisanceOfficer),
            pb::ListRecordsRequest {
                context: nuisance_ctx(),
                subject_id: "REL-PAGES".into(),
                page_size: size,
                page_token: page_token.into(),
            },
        )
    };
    // Pages of one: a page full of what the caller may know of always says where to go on,
    // naming its last record listed; the records it may not know of make no page, no token and
    // no difference: three records listed in three pages, the fourth call empty and last.
    let (mut listed, mut calls) = (Vec::new(), 0);
    let mut token = String::new();
    loop {
        let got = client
            .list_records(page(1, &token))
            .await
            .unwrap()
            .into_inner();
        calls += 1;
        assert!(got.records.len() <= 1);
        if !got.next_page_token.is_empty() {
            // What the token names is what this page listed, nothing the caller may not know.
            let named = got.next_page_token.rsplit('.').next().unwrap().to_owned();
            assert_eq!([named], [got.records[0].record_id.clone()]);
        }
        listed.extend(got.records.into_iter().map(|r| r.record_id));
        if got.next_page_token.is_empty() {
            break;
        }
        token = got.next_page_token;
    }
    assert_eq!(calls, 4);
    let (mut got, mut want) = (listed.clone(), visible.clone());
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "each record listed once, none missing");
    // One page of all: no token, however many records the caller may not know of.
    for size in [0, 3, 10, 1000] {
        let all = client
            .list_records(page(size, ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.records.len(), 3);
        assert_eq!(all.next_page_token.is_empty(), size != 3, "size {size}");
    }
    // A caller who may know of none of them gets what it gets of a subject without records.
    let contract_only = |subject: &str, size: u32| {
        req(
            server.token(Role::MaintenancePlanner),
            pb::ListRecordsRequest {
                context: ctx("maintenance", "", ""),
                subject_id: subject.into(),
                page_size: size,
                page_token: String::new(),
            },
        )
    };
    for size in [1, 10, 0] {
        for subject in ["REL-PAGES", "REL-NONE"] {
            let got = client
                .list_records(contract_only(subject, size))
                .await
                .unwrap()
                .into_inner();
            assert!(got.records.is_empty(), "{subject} {size}");
            assert!(got.next_page_token.is_empty(), "{subject} {size}");
        }
    }
    // A page ends where the records go on, whoever asks.
    let first = client.list_records(page(2, "")).await.unwrap().into_inner();
    assert!(!first.next_page_token.is_empty());

    // A page too large, or a token kluis did not give: refused, naming the field.
    let status = client.list_records(page(1001, "")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("page_size") && status.message().contains("1000"));
    let good = client
        .list_records(page(1, ""))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    let (at, id) = good.strip_prefix("p1.").unwrap().split_once('.').unwrap();
    for bad in [
        "x".to_owned(),
        format!("p2.{at}.{id}"),
        format!("p1.0{at}.{id}"),
        format!("p1.+{at}.{id}"),
        format!("p1.-{at}.{id}"),
        format!("p1.{at}.{}", id.to_uppercase()),
        format!("p1.{at}.{id}x"),
        format!("p1.{at}"),
        format!("p1.99999999999999999999.{id}"),
        format!("p1.{at}.{id}\0"),
    ] {
        let status = client.list_records(page(10, &bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("page_token"),
            "{bad}: {}",
            status.message()
        );
    }
    // Every page given is on the trail, as a listing; the refused ones never reached the vault.
    let lists = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "list" && e["subject"] == "REL-PAGES")
        .count();
    assert_eq!(lists, 4 + 4 + 3 + 1 + 1);
    server.stop().await;
}

#[tokio::test]
async fn rectification_replaces_the_value_and_delete_removes_the_record() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let mut client = server.client().await;
    client
        .update_record(req(
            server.token(Role::NuisanceOfficer),
            pb::UpdateRecordRequest {
                context: nuisance_ctx(),
                record_id: id.clone(),
                fields: vec![text("phone", "contact", "06-55555555")],
            },
        ))
        .await
        .unwrap();
    let resp = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    assert_eq!(text_of(field(&resp, "phone").unwrap()), "06-55555555");
    // A category cannot silently change.
    let status = client
        .update_record(req(
            server.token(Role::NuisanceOfficer),
            pb::UpdateRecordRequest {
                context: nuisance_ctx(),
                record_id: id.clone(),
                fields: vec![text("phone", "criminal", "x")],
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // Customer service may not delete it; the nuisance officer may.
    let del = |role: Role, context| {
        req(
            server.token(role),
            pb::DeleteRecordRequest {
                context,
                record_id: id.clone(),
            },
        )
    };
    assert_eq!(
        client
            .delete_record(del(Role::CustomerService, ctx("customer-service", "", "")))
            .await
            .err()
            .unwrap()
            .code(),
        Code::PermissionDenied
    );
    client
        .delete_record(del(Role::NuisanceOfficer, nuisance_ctx()))
        .await
        .unwrap();
    let status = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn every_decision_is_audited_without_values() {
    let server = TestServer::start().await;
    let id = nuisance_record(&server).await;
    let _ = get(
        &server,
        server.token(Role::NuisanceOfficer),
        nuisance_ctx(),
        &id,
    )
    .await
    .unwrap();
    let _ = get(
        &server,
        server.token(Role::CustomerService),
        ctx("customer-service", "", ""),
        &id,
    )
    .await
    .err()
    .unwrap();
    let entries = audit_entries(&server);
    let reads: Vec<_> = entries.iter().filter(|e| e["action"] == "read").collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0]["decision"], "allow");
    assert_eq!(reads[0]["principal"], "test-nuisance-officer");
    assert_eq!(reads[0]["roles"][0], "nuisance-officer");
    assert_eq!(reads[0]["purpose"], "nuisance");
    assert_eq!(reads[0]["case_ref"], "N-2026-0042");
    assert_eq!(reads[0]["record"], id);
    assert_eq!(reads[0]["fields"].as_array().unwrap().len(), 2);
    assert_eq!(reads[0]["fields"][0]["policies"][0], "nuisance-officer");
    assert_eq!(reads[1]["decision"], "deny");
    let all = serde_json::to_string(&entries).unwrap();
    assert!(!all.contains(PHONE));
    assert!(!all.contains("stairwell"));
    assert!(matches!(
        server.vault.audit().verify(None).unwrap(),
        kluis::audit::Verification::Intact { .. }
    ));
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.raw_channel().await);
    let resp = health
        .check(HealthCheckRequest {
            service: "kluis.v1.Vault".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.raw_channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"kluis.v1.Vault".to_owned()), "{names:?}");
    assert!(names.contains(&"kluis.v1.Admin".to_owned()), "{names:?}");

    // The older `v1alpha` protocol, which older grpcurl and IDE clients ask for.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut reflection = ServerReflectionClient::new(server.raw_channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("no service list over v1alpha")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"kluis.v1.Vault".to_owned()), "{names:?}");
    }
    server.stop().await;
}

/// Health says `NOT_SERVING` while the audit trail cannot be written (every data call fails
/// then), and `SERVING` again by itself once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_whether_the_audit_trail_can_be_written() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.raw_channel().await);
    let status_of = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let probe = health.clone();
    let wait_for = |want: ServingStatus| {
        let mut health = probe.clone();
        async move {
            for _ in 0..100 {
                let now = health
                    .check(status_of(""))
                    .await
                    .unwrap()
                    .into_inner()
                    .status;
                let vault = health
                    .check(status_of("kluis.v1.Vault"))
                    .await
                    .unwrap()
                    .into_inner()
                    .status;
                if now == want as i32 && vault == want as i32 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("health never became {want:?}");
        }
    };
    assert_eq!(
        health
            .check(status_of(""))
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::Serving as i32
    );
    // The database refuses audit entries (a full disk, say): a data call fails UNAVAILABLE,
    // and health follows.
    let db = rusqlite::Connection::open(server.trail_path()).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit
         BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let status = server
        .client()
        .await
        .put_record(req(
            server.token(Role::CustomerService),
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: "REL-HEALTH".into(),
                fields: vec![text("email", "contact", "h@example.nl")],
                labels: Default::default(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    wait_for(ServingStatus::NotServing).await;
    // The disk has room again: health recovers without a restart, and the trail says so.
    db.execute_batch("DROP TRIGGER no_audit;").unwrap();
    wait_for(ServingStatus::Serving).await;
    assert!(
        audit_entries(&server)
            .iter()
            .any(|e| e["action"] == "audit-available")
    );
    server.stop().await;
}

/// A token scoped to one subject that lists another is refused the same way whether that
/// subject has records or not, and before any of them is read: neither the answer nor its cost
/// tells the one from the other (an outside attack timed 2 ms for a subject without records
/// against 77 ms for one with 5,000, with a data subject's own token).
#[tokio::test]
async fn a_scoped_token_listing_another_subject_is_refused_alike_whether_it_has_records() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        put(
            &server,
            Role::NuisanceOfficer,
            nuisance_ctx(),
            "REL-OTHER",
            vec![text("phone", "contact", PHONE)],
        )
        .await;
    }
    let mut answers = Vec::new();
    for role in [Role::Subject, Role::Contractor] {
        for subject in ["REL-OTHER", "REL-NOBODY"] {
            let status = list_records(&server, server.token(role), nuisance_ctx(), subject)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{role} {subject}");
            answers.push(status.message().to_owned());
        }
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert!(
        answers[0].contains("scoped to one subject"),
        "{}",
        answers[0]
    );
    // On the trail as refused listings.
    let denied = audit_entries(&server)
        .into_iter()
        .filter(|e| e["action"] == "list" && e["decision"] == "deny")
        .filter(|e| e["subject"] == "REL-OTHER" || e["subject"] == "REL-NOBODY")
        .count();
    assert_eq!(denied, 4);
    // Its own subject is listed as before.
    let own = list_records(
        &server,
        server.token(Role::Subject),
        ctx("nuisance", "", ""),
        SCOPED_SUBJECT,
    )
    .await
    .unwrap();
    assert!(own.is_empty());
    server.stop().await;
}
