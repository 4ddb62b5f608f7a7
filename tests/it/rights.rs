//! The people beyond staff, over gRPC: the subject themself, a representative with a mandate,
//! break-glass in an emergency, and an objection that stops a purpose.

use kluis::{domain::Role, pb};
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn a_subject_reads_their_own_data_but_not_an_open_investigation_or_anyone_else() {
    let server = TestServer::start().await;
    let me = SCOPED_SUBJECT;
    let contract = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        me,
        vec![text("email", "contact", "me@example.nl")],
    )
    .await;
    let nuisance = put(
        &server,
        Role::NuisanceOfficer,
        nuisance_ctx(),
        me,
        vec![text("statement", "nuisance-evidence", "noise")],
    )
    .await;
    let other = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        "REL-7777",
        vec![text("email", "contact", "x@example.nl")],
    )
    .await;
    let subject = server.token(Role::Subject).to_owned();
    // Their own data, whatever it was collected for.
    let resp = get(
        &server,
        &subject,
        ctx("customer-service", "", "my own data"),
        &contract,
    )
    .await
    .unwrap();
    assert_eq!(text_of(&resp.fields[0]), "me@example.nl");
    // Not while the nuisance case is open ...
    let status = get(
        &server,
        &subject,
        ctx("customer-service", "", ""),
        &nuisance,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Not which rule kept it back: that would tell an investigation is open.
    assert!(
        !status
            .message()
            .contains("subject-not-during-open-investigation")
            && status.message().contains("you may not read this record"),
        "{}",
        status.message()
    );
    // ... and never anyone else's.
    let status = get(&server, &subject, ctx("customer-service", "", ""), &other)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Once the case is closed, the subject sees it (with a case reference for the special category).
    let mut client = server.client().await;
    client
        .close_record(req(
            server.token(Role::NuisanceOfficer),
            pb::CloseRecordRequest {
                context: nuisance_ctx(),
                record_id: nuisance.clone(),
            },
        ))
        .await
        .unwrap();
    let resp = get(
        &server,
        &subject,
        ctx("customer-service", "SAR-1", "my own file"),
        &nuisance,
    )
    .await
    .unwrap();
    assert_eq!(text_of(&resp.fields[0]), "noise");
    // A subject never writes.
    let status = client
        .put_record(req(
            &subject,
            pb::PutRecordRequest {
                context: ctx("contract", "", ""),
                subject_id: me.into(),
                fields: vec![text("email", "contact", "new@example.nl")],
                labels: Default::default(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn a_representative_reads_within_the_mandate_until_it_ends() {
    let clock = TestClock::at_now();
    let server = TestServer::start_with_clock(clock.clone()).await;
    let me = SCOPED_SUBJECT;
    let id = put(
        &server,
        Role::CustomerService,
        ctx("contract", "", ""),
        me,
        vec![
            text("email", "contact", "me@example.nl"),
            text("name", "identity", "M. de Boer"),
        ],
    )
    .await;
    let rep = server.token(Role::Representative).to_owned();
    let read = || {
        get(
            &server,
            &rep,
            ctx("contract", "", "acting for my mother"),
            &id,
        )
    };
    assert_eq!(
        read().await.err().unwrap().code(),
        Code::PermissionDenied,
        "no mandate yet"
    );

    let mut admin = server.admin().await;
    let po = server.token(Role::PrivacyOfficer);
    let now = clock.now_for_test();
    let mandate = admin
        .grant_mandate(req(
            po,
            pb::GrantMandateRequest {
                subject_id: me.into(),
                representative_id: "test-representative".into(),
                purposes: vec!["contract".into()],
                categories: vec!["contact".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: now + 30 * 86_400,
                    nanos: 0,
                }),
                justification: "signed volmacht 2026-11".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let resp = read().await.unwrap();
    assert_eq!(resp.fields.len(), 1, "contact is in scope");
    assert_eq!(text_of(&resp.fields[0]), "me@example.nl");
    assert!(
        resp.withheld.is_empty(),
        "identity is outside the mandate, and not named to a caller who may not know of it"
    );

    // Expiry takes effect at once ...
    clock.advance(31 * 86_400);
    assert_eq!(
        read().await.err().unwrap().code(),
        Code::PermissionDenied,
        "expired"
    );
    clock.advance(-31 * 86_400);
    read().await.unwrap();
    // ... and so does revocation.
    admin
        .revoke_mandate(req(
            po,
            pb::RevokeMandateRequest {
                mandate_id: mandate.mandate_id,
                justification: "revoked by letter".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        read().await.err().unwrap().code(),
        Code::PermissionDenied,
        "revoked"
    );
    server.stop().await;
}

#[tokio::test]
async fn break_glass_opens_what_the_policy_marks_breakable_and_is_audited() {
    let server = TestServer::start().await;
    let id = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        "REL-BG",
        vec![text("phone", "contact", "06-911")],
    )
    .await;
    let emergency = |role: Role, break_glass: bool, justification: &str| {
        let mut c = ctx("safety", "", justification);
        c.as_mut().unwrap().break_glass = break_glass;
        get(&server, server.token(role), c, &id)
    };
    assert_eq!(
        emergency(Role::NuisanceOfficer, false, "")
            .await
            .err()
            .unwrap()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        emergency(Role::NuisanceOfficer, true, "")
            .await
            .err()
            .unwrap()
            .code(),
        Code::PermissionDenied,
        "break-glass needs a justification"
    );
    let resp = emergency(
        Role::NuisanceOfficer,
        true,
        "resident threatened staff; need to reach the tenant",
    )
    .await
    .unwrap();
    assert_eq!(text_of(&resp.fields[0]), "06-911");
    // Never breakable: the security officer reading data.
    assert_eq!(
        emergency(Role::SecurityOfficer, true, "please")
            .await
            .err()
            .unwrap()
            .code(),
        Code::PermissionDenied
    );
    // Listed for review.
    let mut admin = server.admin().await;
    let mut stream = admin
        .export_audit(req(
            server.token(Role::PrivacyOfficer),
            pb::ExportAuditRequest {
                break_glass_only: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        entries.push(serde_json::from_str::<serde_json::Value>(&e.json).unwrap());
    }
    assert!(entries.iter().all(|e| e["break_glass"] == true));
    let allowed = entries.iter().find(|e| e["decision"] == "allow").unwrap();
    assert_eq!(allowed["principal"], "test-nuisance-officer");
    assert_eq!(
        allowed["justification"],
        "resident threatened staff; need to reach the tenant"
    );
    let policies: Vec<&str> = allowed["fields"][0]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(policies.contains(&"break-glass-safety"), "{policies:?}");
    server.stop().await;
}

#[tokio::test]
async fn after_an_objection_financial_screening_stops_for_that_subject() {
    let server = TestServer::start().await;
    let screening = || ctx("financial-screening", "", "");
    let id = put(
        &server,
        Role::AllocationOfficer,
        screening(),
        "REL-OB",
        vec![text("income", "income", "2100")],
    )
    .await;
    let other = put(
        &server,
        Role::AllocationOfficer,
        screening(),
        "REL-OK",
        vec![text("income", "income", "2500")],
    )
    .await;
    get(
        &server,
        server.token(Role::AllocationOfficer),
        screening(),
        &id,
    )
    .await
    .unwrap();
    let mut admin = server.admin().await;
    let object = |purpose: &str| {
        req(
            server.token(Role::PrivacyOfficer),
            pb::RecordConsentRequest {
                subject_id: "REL-OB".into(),
                purpose: purpose.into(),
                state: "objected".into(),
                justification: "objection letter 2026-12".into(),
            },
        )
    };
    // An objection applies to the screening agency's purpose only.
    assert_eq!(
        admin
            .record_consent(object("contract"))
            .await
            .err()
            .unwrap()
            .code(),
        Code::InvalidArgument
    );
    admin
        .record_consent(object("financial-screening"))
        .await
        .unwrap();
    let status = get(
        &server,
        server.token(Role::AllocationOfficer),
        screening(),
        &id,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("objection-and-withdrawn-consent"),
        "{}",
        status.message()
    );
    get(
        &server,
        server.token(Role::AllocationOfficer),
        screening(),
        &other,
    )
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_contractor_token_works_for_its_job_and_nothing_after_expiry() {
    let server = TestServer::start().await;
    let job = put(
        &server,
        Role::MaintenancePlanner,
        ctx("maintenance", "", ""),
        "REL-JOB",
        vec![
            text("name", "identity", "P. Smit"),
            text("phone", "contact", "06-1234"),
        ],
    )
    .await;
    let mut admin = server.admin().await;
    let issued = admin
        .issue_token(req(
            server.token(Role::SecurityOfficer),
            pb::IssueTokenRequest {
                principal_id: "plumber-22".into(),
                roles: vec!["contractor".into()],
                ttl_seconds: 2,
                scope_subject_id: "REL-JOB".into(),
                justification: "job M-88, leaking tap".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    approve(&server, &issued.token_id).await;
    let resp = get(
        &server,
        &issued.token,
        ctx("maintenance", "M-88", "leaking tap"),
        &job,
    )
    .await
    .unwrap();
    assert_eq!(resp.fields.len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let status = get(
        &server,
        &issued.token,
        ctx("maintenance", "M-88", "leaking tap"),
        &job,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn explain_tells_staff_why_a_field_was_withheld() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let explain = |token: &str, role: &str| {
        req(
            token,
            pb::ExplainDecisionRequest {
                role: role.into(),
                action: "read".into(),
                context: ctx("contract", "", ""),
                record_purpose: String::new(),
                category: "financial".into(),
                field: "iban".into(),
            },
        )
    };
    let own = admin
        .explain_decision(explain(server.token(Role::CustomerService), ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.decision, "deny");
    assert!(own.reason.contains("no policy permits"), "{}", own.reason);
    // Even for the caller's own roles, the question is on the trail.
    let entries = audit_entries(&server);
    let asked = entries
        .iter()
        .filter(|e| e["action"] == "policy-explain" && e["principal"] == "test-customer-service")
        .collect::<Vec<_>>();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["purpose"], "contract");
    let status = admin
        .explain_decision(explain(
            server.token(Role::CustomerService),
            "finance-officer",
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "explaining for another role is for the privacy and security officers"
    );
    let other = admin
        .explain_decision(explain(
            server.token(Role::PrivacyOfficer),
            "finance-officer",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.decision, "allow");
    assert_eq!(
        other.policies[0].id,
        "finance-officer-contract-payment-details"
    );
    assert!(
        other.policies[0]
            .text
            .contains("resource.category == \"financial\""),
        "{}",
        other.policies[0].text
    );
    server.stop().await;
}
